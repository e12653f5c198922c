//! The engine's client of agent sidecars (`kanister.agent.v1`): the store and key of an
//! action's Profile as a [`pb::RepositoryRef`], the connection (token, optional TLS and client
//! certificate), and the following of an operation's event stream.
//!
//! The repository key and the store credentials travel only inside the gRPC request (over TLS
//! when [`AgentClientConfig::tls`] is set); they never appear in an error, a log or the status.
//! [`AgentClientArgs`] are the coordinator's flags for the client: the token and keys come
//! from files (mounted Secrets), never from a command-line value.

use std::path::{Path, PathBuf};
use std::time::Duration;

use kanister_proto::agent::v1 as pb;
use kanister_proto::agent::v1::agent_service_client::AgentServiceClient;
use tokio_stream::StreamExt as _;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Identity};
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
    /// The client certificate presented to agents that require one (mutual TLS).
    pub identity: Option<AgentIdentity>,
}

/// A client certificate and its key (PEM). `Debug` prints nothing of the key.
#[derive(Clone)]
pub struct AgentIdentity {
    /// Certificate chain (PEM).
    pub cert_pem: Vec<u8>,
    /// Private key (PEM). Secret.
    pub key_pem: Zeroizing<Vec<u8>>,
}

impl std::fmt::Debug for AgentIdentity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AgentIdentity").field("key_pem", &"<redacted>").finish_non_exhaustive()
    }
}

/// The coordinator's flags (each also an environment variable) for reaching agents. Secrets
/// are read from files, typically mounted Secrets: there is no flag taking a token's value.
#[derive(Debug, Clone, clap::Args)]
pub struct AgentClientArgs {
    /// File holding the bearer token sent to agents (the one their --token-file holds)
    #[arg(long, env = "KANISTER_AGENT_TOKEN_FILE", value_name = "FILE")]
    pub agent_token_file: Option<PathBuf>,
    /// CA certificate (PEM) agents' certificates must chain to; turns TLS on
    #[arg(long, env = "KANISTER_AGENT_CA_FILE", value_name = "FILE")]
    pub agent_ca_file: Option<PathBuf>,
    /// Name agents' certificates carry (default: the host of the agent's endpoint, the pod IP)
    #[arg(long, env = "KANISTER_AGENT_TLS_DOMAIN", requires = "agent_ca_file", value_name = "NAME")]
    pub agent_tls_domain: Option<String>,
    /// Client certificate (PEM) for agents that require one (their --tls-client-ca)
    #[arg(
        long,
        env = "KANISTER_AGENT_CLIENT_CERT",
        requires_all = ["agent_client_key", "agent_ca_file"],
        value_name = "FILE"
    )]
    pub agent_client_cert: Option<PathBuf>,
    /// Private key (PEM) of the client certificate
    #[arg(long, env = "KANISTER_AGENT_CLIENT_KEY", requires = "agent_client_cert", value_name = "FILE")]
    pub agent_client_key: Option<PathBuf>,
    /// How long connecting to an agent may take
    #[arg(
        long,
        env = "KANISTER_AGENT_CONNECT_TIMEOUT",
        default_value = "10s",
        value_parser = humantime::parse_duration,
        value_name = "DURATION"
    )]
    pub agent_connect_timeout: Duration,
}

impl AgentClientArgs {
    /// Reads the files the flags name into an [`AgentClientConfig`]. Read once: restart the
    /// coordinator after rotating the token or the certificates.
    pub fn load(&self) -> Result<AgentClientConfig> {
        let token = match &self.agent_token_file {
            None => None,
            Some(path) => {
                let bytes = Zeroizing::new(read_file("token", path)?);
                let text = std::str::from_utf8(&bytes)
                    .map_err(|_| bad_file("token", path, "not UTF-8 text"))?
                    .trim()
                    .to_string();
                if text.is_empty() {
                    return Err(bad_file("token", path, "empty"));
                }
                Some(Zeroizing::new(text))
            }
        };
        let tls = match &self.agent_ca_file {
            None => None,
            Some(ca) => {
                let ca_pem = read_file("CA certificate", ca)?;
                if !ca_pem.windows(27).any(|w| w == b"-----BEGIN CERTIFICATE-----") {
                    return Err(bad_file("CA certificate", ca, "no PEM certificate in it"));
                }
                let identity = match (&self.agent_client_cert, &self.agent_client_key) {
                    (Some(cert), Some(key)) => Some(AgentIdentity {
                        cert_pem: read_file("client certificate", cert)?,
                        key_pem: Zeroizing::new(read_file("client key", key)?),
                    }),
                    _ => None,
                };
                Some(AgentTls { ca_pem, domain: self.agent_tls_domain.clone(), identity })
            }
        };
        Ok(AgentClientConfig { token, tls, connect_timeout: self.agent_connect_timeout })
    }
}

fn read_file(what: &'static str, path: &Path) -> Result<Vec<u8>> {
    std::fs::read(path).map_err(|source| Error::ReadFile { what, path: path.to_path_buf(), source })
}

fn bad_file(what: &'static str, path: &Path, reason: &str) -> Error {
    Error::BadFile { what, path: path.to_path_buf(), reason: reason.into() }
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
    /// A file of the client's settings could not be read.
    #[error("failed to read the agent client's {what} from {}", path.display())]
    ReadFile {
        /// What the file holds (token, CA certificate, ...).
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// A file of the client's settings holds nothing usable.
    #[error("the agent client's {what} file {} is unusable: {reason}", path.display())]
    BadFile {
        /// What the file holds.
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// Why (never its contents).
        reason: String,
    },
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
        if let Some(id) = &tls.identity {
            t = t.identity(Identity::from_pem(&id.cert_pem, &*id.key_pem));
        }
        ep = ep.tls_config(t).map_err(|e| err(e.to_string()))?;
    }
    let channel = ep.connect().await.map_err(|e| err(format!("{e}")))?;
    Ok(AgentServiceClient::with_interceptor(channel, Auth(config.token.clone())))
}

/// The store URL and settings of a Profile, as `kando` maps upstream's `toJson .Profile`, and
/// the repository key (the Profile's key Secret value, as `KANISTER_REPO_KEY` carries it).
pub fn repository_ref(profile: &ProfileParams, key: Zeroizing<Vec<u8>>) -> Result<pb::RepositoryRef> {
    if profile.location.location_type == LocationType::Kopia {
        return Err(Error::Profile("kopia locations are not served by agents".into()));
    }
    // One mapping from a Profile to a store: kando's, from the JSON kando itself would read.
    let go = kanister_profile::GoProfile::parse_with(&profile.upstream_json(), |_| None)
        .and_then(|g| g.store_settings())
        .map_err(|e| Error::Profile(e.0))?;
    let (store_url, opts) = go;
    Ok(pb::RepositoryRef {
        store_url,
        store_options: opts.into_iter().collect(),
        key: Some(pb::repository_ref::Key::RawKey(key.to_vec())),
    })
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
        assert!(!r.store_options.contains_key("retry_timeout"));

        // The Profile's storeOptions reach the agent's store client; nothing but the network
        // settings may go there.
        p.store_options = [("retry_timeout", "2m"), ("max_retries", "1")]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let r = repository_ref(&p, Zeroizing::new(b"k".repeat(64))).unwrap();
        assert_eq!(r.store_options["retry_timeout"], "2m");
        assert_eq!(r.store_options["max_retries"], "1");
        assert_eq!(r.store_options["region"], "us-east-1");
        p.store_options.insert("region".into(), "eu-west-9".into());
        let e = repository_ref(&p, Zeroizing::new(b"k".repeat(64))).unwrap_err().to_string();
        assert!(e.contains("StoreOptions has \"region\""), "{e}");
        p.store_options.clear();
        p.location.location_type = LocationType::Local;
        let e = repository_ref(&p, Zeroizing::new(b"k".repeat(64))).unwrap_err().to_string();
        assert!(e.contains("a local location needs a path"), "{e}");
        assert!(
            format!("{:?}", AgentClientConfig { token: Some(Zeroizing::new("t0k".into())), ..Default::default() })
                .contains("<redacted>")
        );
    }
}
