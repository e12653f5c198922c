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
                .with_client_options(client);
            if wants_http {
                b = b.with_allow_http(true);
            }
            b = configure(b, &settings, |b, k, v| b.with_config(k, v))?;
            (Arc::new(b.build().map_err(|e| bad_url(url, redact_settings(&e.to_string(), &settings)))?), None)
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
