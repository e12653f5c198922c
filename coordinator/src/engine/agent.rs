//! The engine's client of agent sidecars (`kanister.agent.v1`): the store and key of an
//! action's Profile as a [`pb::RepositoryRef`], the connection (token, optional TLS), and the
//! following of an operation's event stream.
//!
//! The repository key and the store credentials travel only inside the gRPC request (over TLS
//! when [`AgentClientConfig::tls`] is set); they never appear in an error, a log or the status.

use std::time::Duration;

use kanister_proto::agent::v1 as pb;
use kanister_proto::agent::v1::agent_service_client::AgentServiceClient;
use tokio_stream::StreamExt as _;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Certificate, Channel, ClientTlsConfig};
use zeroize::Zeroizing;

use crate::crd::profile::LocationType;
use crate::render::params::ProfileParams;

/// How the engine reaches agents.
#[derive(Clone, Default)]
pub struct AgentClientConfig {
    /// Bearer token sent to agents (`authorization: Bearer ...`). Secret.
    pub token: Option<Zeroizing<String>>,
    /// TLS: the CA certificate (PEM) agents' certificates are checked against. Without it the
    /// connection is plain HTTP/2.
    pub tls: Option<AgentTls>,
    /// How long connecting may take; zero means 10 seconds.
    pub connect_timeout: Duration,
}

/// TLS settings of the agent client.
#[derive(Debug, Clone, Default)]
pub struct AgentTls {
    /// CA certificate (PEM).
    pub ca_pem: Vec<u8>,
    /// The name the agents' certificates carry (default: the host of the endpoint).
    pub domain: Option<String>,
}

impl std::fmt::Debug for AgentClientConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AgentClientConfig")
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .field("tls", &self.tls)
            .field("connect_timeout", &self.connect_timeout)
            .finish()
    }
}

/// Errors of calls to an agent. Messages carry no secret.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The agent could not be reached.
    #[error("failed to connect to the agent at {endpoint}: {message}")]
    Connect {
        /// The endpoint.
        endpoint: String,
        /// Why.
        message: String,
    },
    /// The agent refused the request or the operation failed.
    #[error("agent operation {op_id} failed: {code:?}: {message}")]
    Operation {
        /// The operation id.
        op_id: String,
        /// The gRPC code.
        code: tonic::Code,
        /// The agent's message.
        message: String,
    },
    /// The operation's stream ended without a result.
    #[error("agent operation {0} ended without a result")]
    NoResult(String),
    /// The Profile cannot be used by agents.
    #[error("the profile cannot be used by an agent: {0}")]
    Profile(String),
}

impl Error {
    fn operation(op_id: &str, status: &tonic::Status) -> Self {
        Error::Operation { op_id: op_id.into(), code: status.code(), message: status.message().into() }
    }
}

/// The result type of this module.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Adds the bearer token to every request. `Debug` prints nothing of the token.
#[derive(Clone)]
pub struct Auth(Option<Zeroizing<String>>);

impl std::fmt::Debug for Auth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Auth(<redacted>)")
    }
}

impl tonic::service::Interceptor for Auth {
    fn call(&mut self, mut req: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(t) = &self.0 {
            let value = format!("Bearer {}", t.as_str())
                .parse()
                .map_err(|_| tonic::Status::invalid_argument("the agent token is not a valid header value"))?;
            req.metadata_mut().insert("authorization", value);
        }
        Ok(req)
    }
}

/// A connected agent client.
pub type Client = AgentServiceClient<InterceptedService<Channel, Auth>>;

/// Connects to the agent at `endpoint` (`http://host:port`; `https` is used with TLS).
pub async fn connect(endpoint: &str, config: &AgentClientConfig) -> Result<Client> {
    let err = |message: String| Error::Connect { endpoint: endpoint.into(), message };
    let url = match (&config.tls, endpoint.strip_prefix("http://")) {
        (Some(_), Some(rest)) => format!("https://{rest}"),
        _ => endpoint.to_string(),
    };
    let timeout = if config.connect_timeout.is_zero() { Duration::from_secs(10) } else { config.connect_timeout };
    let mut ep = Channel::from_shared(url).map_err(|e| err(e.to_string()))?.connect_timeout(timeout);
    if let Some(tls) = &config.tls {
        let mut t = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(&tls.ca_pem));
        if let Some(d) = &tls.domain {
            t = t.domain_name(d.clone());
        }
        ep = ep.tls_config(t).map_err(|e| err(e.to_string()))?;
    }
    let channel = ep.connect().await.map_err(|e| err(format!("{e}")))?;
    Ok(AgentServiceClient::with_interceptor(channel, Auth(config.token.clone())))
}

/// The store URL and settings of a Profile, as `kando` maps upstream's `toJson .Profile`, and
/// the repository key (the Profile's key Secret value, as `KANISTER_REPO_KEY` carries it).
pub fn repository_ref(profile: &ProfileParams, key: Zeroizing<Vec<u8>>) -> Result<pb::RepositoryRef> {
    let l = &profile.location;
    let prefix = l.prefix.trim_matches('/');
    let mut opts = std::collections::HashMap::new();
    let endpoint = if l.endpoint.is_empty() || l.endpoint.contains("://") {
        l.endpoint.clone()
    } else {
        format!("https://{}", l.endpoint)
    };
    let kp = profile.credential.key_pair.as_ref();
    let secret = |keys: &[&str]| {
        let s = profile.credential.secret.as_ref()?;
        keys.iter().find_map(|k| s.data.get(*k).map(|v| String::from_utf8_lossy(v).into_owned()))
    };
    let store_url = match l.location_type {
        LocationType::S3Compliant => {
            if !endpoint.is_empty() {
                opts.insert("endpoint".to_string(), endpoint);
            }
            opts.insert("region".into(), if l.region.is_empty() { "us-east-1".into() } else { l.region.clone() });
            let (id, key) = match kp {
                Some(kp) => (Some(kp.id.clone()), Some(kp.secret.clone())),
                None => (
                    secret(&["aws_access_key_id", "access_key_id"]),
                    secret(&["aws_secret_access_key", "secret_access_key"]),
                ),
            };
            if let (Some(id), Some(key)) = (id, key) {
                opts.insert("aws_access_key_id".into(), id);
                opts.insert("aws_secret_access_key".into(), key);
            }
            format!("s3://{}/{prefix}", l.bucket)
        }
        LocationType::Gcs => {
            if !endpoint.is_empty() {
                opts.insert("base_url".into(), endpoint);
            }
            let key = kp.map(|kp| kp.secret.clone()).or_else(|| secret(&["service-account.json"]));
            if let Some(k) = key.filter(|k| !k.is_empty()) {
                opts.insert("google_service_account_key".into(), k);
            }
            format!("gs://{}/{prefix}", l.bucket)
        }
        LocationType::Azure => {
            let (account, key) = match kp {
                Some(kp) => (Some(kp.id.clone()), Some(kp.secret.clone())),
                None => (
                    secret(&["azure_storage_account_id", "azure_storage_account_name"]),
                    secret(&["azure_storage_key", "azure_storage_account_key"]),
                ),
            };
            if let Some(a) = account {
                opts.insert("azure_storage_account_name".into(), a);
            }
            if let Some(k) = key {
                opts.insert("azure_storage_account_key".into(), k);
            }
            if !endpoint.is_empty() {
                opts.insert("azure_storage_endpoint".into(), endpoint);
            }
            format!("az://{}/{prefix}", l.bucket)
        }
        LocationType::Local => {
            let dir = l
                .path
                .clone()
                .filter(|p| !p.is_empty())
                .ok_or_else(|| Error::Profile("a local location needs a path".into()))?;
            format!("file://{}/{prefix}", dir.trim_end_matches('/'))
        }
        LocationType::Kopia => return Err(Error::Profile("kopia locations are not served by agents".into())),
    };
    if profile.skip_ssl_verify {
        opts.insert("allow_invalid_certificates".into(), "true".into());
    }
    Ok(pb::RepositoryRef { store_url, store_options: opts, key: Some(pb::repository_ref::Key::RawKey(key.to_vec())) })
}

/// Follows an operation's events to its result, handing every progress to `on_progress`.
pub async fn follow(
    op_id: &str,
    mut stream: tonic::Streaming<pb::OperationEvent>,
    mut on_progress: impl FnMut(&pb::Progress),
) -> Result<pb::OperationResult> {
    while let Some(event) = stream.next().await {
        let event = event.map_err(|s| Error::operation(op_id, &s))?;
        if let Some(p) = &event.progress {
            on_progress(p);
        }
        if let Some(r) = event.result {
            return Ok(r);
        }
    }
    Err(Error::NoResult(op_id.into()))
}

/// Starts an operation and maps a refusal.
pub fn refused(op_id: &str, status: &tonic::Status) -> Error {
    Error::operation(op_id, status)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::render::params::{CredentialParams, KeyPairParams};

    #[test]
    fn s3_profiles_map_to_urls_and_settings() {
        let mut p = ProfileParams::default();
        p.location.bucket = "b".into();
        p.location.prefix = "/x/y/".into();
        p.location.endpoint = "minio:9000".into();
        p.credential = CredentialParams {
            key_pair: Some(KeyPairParams { id: "id".into(), secret: "s3cret".into() }),
            ..Default::default()
        };
        let r = repository_ref(&p, Zeroizing::new(b"k".repeat(64))).unwrap();
        assert_eq!(r.store_url, "s3://b/x/y");
        assert_eq!(r.store_options["endpoint"], "https://minio:9000");
        assert_eq!(r.store_options["region"], "us-east-1");
        assert_eq!(r.store_options["aws_secret_access_key"], "s3cret");
        assert!(
            format!("{:?}", AgentClientConfig { token: Some(Zeroizing::new("t0k".into())), ..Default::default() })
                .contains("<redacted>")
        );
    }
}
