//! Builds an `object_store` client from a store URL and settings: the one place that decides
//! what a URL, its settings and a Profile's network options mean, for the agent's store and for
//! the coordinator's Profile probe alike. Nothing is contacted here.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use object_store::ObjectStore;
use object_store::prefix::PrefixStore;

/// Why a store URL or setting cannot be used. Messages never hold a credential.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BuildError {
    /// The URL is not one the store client understands.
    #[error("invalid store URL {url:?}: {reason}")]
    BadUrl {
        /// The URL as given (credentials removed).
        url: String,
        /// What is wrong, and the fix.
        reason: String,
    },
    /// A configuration key or value was rejected.
    #[error("invalid store setting {key:?}: {reason}")]
    BadOption {
        /// The key.
        key: String,
        /// Why it was rejected.
        reason: String,
    },
}

/// A store client and how to show it.
#[derive(Debug)]
pub struct Built {
    /// The client, rooted at the URL's prefix.
    pub store: Arc<dyn ObjectStore>,
    /// The URL without credentials.
    pub display: String,
    /// For `file://`: the directory.
    pub local_root: Option<PathBuf>,
}

/// The client for `url` (`file:///path`, `s3://bucket/prefix`, `az://container/prefix`,
/// `gs://bucket/prefix`) with `credentials` (say, from a mounted file), then the URL's query,
/// then `options` as settings (a later one wins): object_store's keys, and the network settings
/// [`NETWORK_OPTION_KEYS`]. A `file://` directory that does not exist yet gives an empty
/// in-memory store (`repo init` creates the directory).
pub fn build(url: &str, credentials: Vec<(String, String)>, options: &[(String, String)]) -> Result<Built, BuildError> {
    // object_store's HTTP client needs a process-wide TLS provider: ring, the only one
    // built in. Installing it here serves every caller (CLI, service, the coordinator).
    let _ = rustls::crypto::ring::default_provider().install_default();
    let parsed = url::Url::parse(url).map_err(|e| {
        bad_url(
            url,
            format!("{e}; expected file:///path, s3://bucket/prefix, az://container/prefix or gs://bucket/prefix"),
        )
    })?;
    let mut settings = credentials;
    settings.extend(parsed.query_pairs().map(|(k, v)| (k.to_ascii_lowercase(), v.into_owned())));
    settings.extend(options.iter().map(|(k, v)| (k.to_ascii_lowercase(), v.clone())));
    let prefix = parsed.path().trim_matches('/').to_string();
    let host = parsed.host_str().unwrap_or_default().to_string();
    let mut display = format!("{}://{}{}", parsed.scheme(), host, parsed.path());
    let wants_http = settings.iter().any(|(k, v)| k.contains("endpoint") && v.starts_with("http://"));
    let (retry, client) = network_settings(&mut settings)?;

    let (inner, local_root): (Arc<dyn ObjectStore>, Option<PathBuf>) = match parsed.scheme() {
        "file" => {
            if !host.is_empty() && host != "localhost" {
                return Err(bad_url(
                    url,
                    "a file URL needs three slashes and an absolute path: file:///var/backups/repo",
                ));
            }
            let root = PathBuf::from(parsed.path());
            display = format!("file://{}", root.display());
            let fs: Arc<dyn ObjectStore> = match object_store::local::LocalFileSystem::new_with_prefix(&root) {
                Ok(fs) => Arc::new(fs.with_fsync(true)),
                // The directory does not exist yet: `repo init` creates it.
                Err(_) => Arc::new(object_store::memory::InMemory::new()),
            };
            (fs, Some(root))
        }
        "s3" | "s3a" => {
            if host.is_empty() {
                return Err(bad_url(url, "missing bucket: s3://bucket/prefix"));
            }
            let mut b = object_store::aws::AmazonS3Builder::from_env()
                .with_bucket_name(&host)
                .with_retry(retry)
                .with_client_options(client.clone());
            if wants_http {
                b = b.with_allow_http(true);
            }
            let shown = settings.clone();
            if let Some(provider) = assume_role(&mut settings, &client)? {
                b = b.with_credentials(provider);
            }
            b = configure(b, &settings, |b, k, v| b.with_config(k, v))?;
            (Arc::new(b.build().map_err(|e| bad_url(url, redact_settings(&e.to_string(), &shown)))?), None)
        }
        "az" | "azure" | "abfs" => {
            if host.is_empty() {
                return Err(bad_url(url, "missing container: az://container/prefix"));
            }
            let mut b = object_store::azure::MicrosoftAzureBuilder::from_env()
                .with_container_name(&host)
                .with_retry(retry)
                .with_client_options(client);
            if wants_http {
                b = b.with_allow_http(true);
            }
            b = configure(b, &settings, |b, k, v| b.with_config(k, v))?;
            (Arc::new(b.build().map_err(|e| bad_url(url, redact_settings(&e.to_string(), &settings)))?), None)
        }
        "gs" | "gcs" => {
            if host.is_empty() {
                return Err(bad_url(url, "missing bucket: gs://bucket/prefix"));
            }
            let http = settings.iter().any(|(k, v)| k.contains("base_url") && v.starts_with("http://"));
            let mut b = object_store::gcp::GoogleCloudStorageBuilder::from_env()
                .with_bucket_name(&host)
                .with_retry(retry)
                .with_client_options(client.with_allow_http(http));
            b = configure(b, &settings, |b, k, v| b.with_config(k, v))?;
            (Arc::new(b.build().map_err(|e| bad_url(url, redact_settings(&e.to_string(), &settings)))?), None)
        }
        other => {
            return Err(bad_url(url, format!("unknown scheme {other:?}; use file://, s3://, az:// or gs://")));
        }
    };
    let inner: Arc<dyn ObjectStore> = if prefix.is_empty() || local_root.is_some() {
        inner
    } else {
        Arc::new(PrefixStore::new(inner, prefix.as_str()))
    };
    Ok(Built { store: inner, display, local_root })
}

/// The credential provider for a role to assume (`aws_role_arn`, upstream's Secret key `role`),
/// which then signs every request: the key pair in the settings only signs the STS call. Without
/// a key pair, object_store assumes the role with the pod's web identity token (IRSA) when the
/// environment names one. A role with neither is refused: falling back to whatever credentials
/// the pod has would be a silent change of identity.
fn assume_role(
    settings: &mut Vec<(String, String)>,
    client: &object_store::ClientOptions,
) -> Result<Option<object_store::aws::AwsCredentialProvider>, BuildError> {
    let take = |settings: &mut Vec<(String, String)>, keys: &[&str]| {
        let mut found = None;
        settings.retain(|(k, v)| {
            let hit = keys.contains(&k.as_str());
            if hit {
                found = Some(v.clone());
            }
            !hit
        });
        found.filter(|v| !v.is_empty())
    };
    let get = |settings: &[(String, String)], keys: &[&str]| {
        settings.iter().rev().find(|(k, _)| keys.contains(&k.as_str())).map(|(_, v)| v.clone())
    };
    let Some(role) = take(settings, &["aws_role_arn", "role_arn"]) else { return Ok(None) };
    let sts_endpoint = take(settings, &["aws_endpoint_url_sts", "endpoint_url_sts"]);
    let env = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
    let id = take(settings, &["aws_access_key_id", "access_key_id"]).or_else(|| env("AWS_ACCESS_KEY_ID"));
    let secret =
        take(settings, &["aws_secret_access_key", "secret_access_key"]).or_else(|| env("AWS_SECRET_ACCESS_KEY"));
    let token = take(settings, &["aws_session_token", "aws_token", "session_token", "token"]);
    let (Some(key_id), Some(secret_key)) = (id, secret) else {
        if env("AWS_WEB_IDENTITY_TOKEN_FILE").is_some() {
            settings.push(("aws_role_arn".into(), role));
            if let Some(e) = sts_endpoint {
                settings.push(("aws_endpoint_url_sts".into(), e));
            }
            return Ok(None);
        }
        return Err(BuildError::BadOption {
            key: "aws_role_arn".into(),
            reason: format!(
                "the role {role} is to be assumed, but there is nothing to assume it with: put \
                 aws_access_key_id and aws_secret_access_key in the Profile's Secret beside \"role\", or give \
                 the pod a web identity (IRSA)"
            ),
        });
    };
    let region = get(settings, &["aws_region", "region", "aws_default_region", "default_region"])
        .or_else(|| env("AWS_REGION"))
        .unwrap_or_else(|| "us-east-1".into());
    // An S3-compatible server (SeaweedFS, MinIO, Ceph) serves STS at its S3 endpoint.
    let endpoint = sts_endpoint
        .or_else(|| get(settings, &["aws_endpoint", "aws_endpoint_url", "endpoint_url", "endpoint"]))
        .unwrap_or_else(|| format!("https://sts.{region}.amazonaws.com"));
    let mut options = client.clone().with_allow_http(endpoint.starts_with("http://"));
    for (k, v) in settings.iter() {
        if let Ok(key) = k.parse::<object_store::ClientConfigKey>() {
            options = options.with_config(key, v);
        }
    }
    use object_store::client::HttpConnector;
    let http = object_store::client::ReqwestConnector::default()
        .connect(&options)
        .map_err(|e| BuildError::BadOption { key: "aws_endpoint_url_sts".into(), reason: e.to_string() })?;
    let base = object_store::aws::AwsCredential { key_id, secret_key, token };
    Ok(Some(Arc::new(crate::sts::AssumeRole::new(http, base, role, endpoint, region))))
}

fn bad_url(url: &str, reason: impl Into<String>) -> BuildError {
    BuildError::BadUrl { url: redact_url(url), reason: redact_text(&reason.into(), url) }
}

/// A store URL fit to print: no password, and every query value replaced (a query may carry
/// `aws_secret_access_key=...`), the keys kept so the message still says what was given.
pub fn redact_url(url: &str) -> String {
    let Ok(mut u) = url::Url::parse(url) else {
        // Not even a URL: show only what precedes a query or credentials.
        let cut = url.find(['?', '@']).unwrap_or(url.len());
        return format!("{}{}", &url[..cut], if cut < url.len() { "<redacted>" } else { "" });
    };
    if u.password().is_some() {
        let _ = u.set_password(Some("redacted"));
    }
    if u.query().is_some() {
        let keys: Vec<String> = u.query_pairs().map(|(k, _)| format!("{k}=<redacted>")).collect();
        u.set_query(Some(&keys.join("&")));
    }
    u.to_string()
}

/// `text` with the values of credential settings removed (a builder's error may quote them,
/// and they may come from the URL, a file or the environment).
fn redact_settings(text: &str, settings: &[(String, String)]) -> String {
    let mut out = text.to_string();
    let credential = |k: &str| {
        ["secret", "key", "token", "password", "sas", "credential", "signature"].iter().any(|w| k.contains(w))
    };
    for (_, v) in settings.iter().filter(|(k, v)| credential(k) && v.len() >= 4) {
        out = out.replace(v.as_str(), "<redacted>");
    }
    out
}

/// `text` with every query value and password of `url` removed (an error message of a
/// builder may quote them).
fn redact_text(text: &str, url: &str) -> String {
    let Ok(u) = url::Url::parse(url) else { return text.to_string() };
    let mut out = text.to_string();
    let secrets = u.query_pairs().map(|(_, v)| v.into_owned()).chain(u.password().map(str::to_string));
    for v in secrets.filter(|v| v.len() >= 4) {
        out = out.replace(&v, "<redacted>");
    }
    out
}

/// Applies `key=value` settings to an object_store builder through its `with_config`, naming a
/// key the builder does not know.
fn configure<B, K>(mut b: B, settings: &[(String, String)], with: impl Fn(B, K, &str) -> B) -> Result<B, BuildError>
where
    K: std::str::FromStr<Err = object_store::Error>,
{
    for (k, v) in settings {
        let key = k
            .parse()
            .map_err(|e: object_store::Error| BuildError::BadOption { key: k.clone(), reason: e.to_string() })?;
        b = with(b, key, v);
    }
    Ok(b)
}

/// How long a dead endpoint may keep a command waiting: connecting 5 s, each read 15 s, a whole
/// request 5 min (a pack upload over a slow link), and retries with backoff for 30 s in all.
/// object_store's own defaults retried for 3 minutes without a word. Settable per store:
/// `connect_timeout`, `read_timeout`, `timeout` (object_store's keys) and `max_retries`,
/// `retry_timeout` (ours), e.g. `--store-option retry_timeout=2m`.
pub const DEFAULT_RETRY_TIMEOUT: Duration = Duration::from_secs(30);

pub use crate::{NETWORK_OPTION_KEYS, check_network_option};

fn network_settings(
    settings: &mut Vec<(String, String)>,
) -> Result<(object_store::RetryConfig, object_store::ClientOptions), BuildError> {
    let mut retry =
        object_store::RetryConfig { max_retries: 4, retry_timeout: DEFAULT_RETRY_TIMEOUT, ..Default::default() };
    let mut take = |key: &str| settings.iter().position(|(k, _)| k == key).map(|i| settings.remove(i).1);
    if let Some(v) = take("max_retries") {
        retry.max_retries = v.parse().map_err(|_| BuildError::BadOption {
            key: "max_retries".into(),
            reason: format!("{v:?} is not a count"),
        })?;
    }
    if let Some(v) = take("retry_timeout") {
        retry.retry_timeout = humantime::parse_duration(&v)
            .map_err(|e| BuildError::BadOption { key: "retry_timeout".into(), reason: format!("{v:?}: {e}") })?;
    }
    let client = object_store::ClientOptions::new()
        .with_connect_timeout(Duration::from_secs(5))
        .with_read_timeout(Duration::from_secs(15))
        .with_timeout(Duration::from_secs(300));
    Ok((retry, client))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn a_role_takes_the_key_pair_out_of_the_stores_own_settings() {
        // As `build` does first.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let mut settings = s(&[
            ("endpoint", "http://127.0.0.1:8333"),
            ("aws_access_key_id", "AK"),
            ("aws_secret_access_key", "SK"),
            ("aws_role_arn", "arn:aws:iam::1:role/r"),
        ]);
        let provider = assume_role(&mut settings, &object_store::ClientOptions::new()).unwrap();
        let shown = format!("{provider:?}");
        assert!(shown.contains("arn:aws:iam::1:role/r") && shown.contains("http://127.0.0.1:8333"), "{shown}");
        assert!(!shown.contains("SK"), "the secret in {shown}");
        // The key pair signs only the STS call: the store itself never sees it.
        assert_eq!(settings, s(&[("endpoint", "http://127.0.0.1:8333")]));
    }

    #[test]
    fn no_role_changes_nothing_and_a_role_without_credentials_is_refused() {
        let mut settings = s(&[("aws_access_key_id", "AK"), ("aws_secret_access_key", "SK")]);
        assert!(assume_role(&mut settings, &object_store::ClientOptions::new()).unwrap().is_none());
        assert_eq!(settings.len(), 2);
        if std::env::var_os("AWS_ACCESS_KEY_ID").is_none() && std::env::var_os("AWS_WEB_IDENTITY_TOKEN_FILE").is_none()
        {
            let e = build("s3://b/p", Vec::new(), &s(&[("aws_role_arn", "arn:aws:iam::1:role/r")])).unwrap_err();
            let e = e.to_string();
            assert!(e.contains("aws_role_arn") && e.contains("nothing to assume it with"), "{e}");
        }
    }
}
