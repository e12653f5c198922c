//! `kando`: upstream Kanister's in-pod helper, answered by the agent, so blueprints written for
//! upstream keep working and get deduplication and encryption without a changed line.
//!
//! - `kando location push --profile JSON --path P [--output-name N] (FILE|-)` stores a stream
//!   as a snapshot tagged `kando.path=P` in the repository under the profile's bucket and
//!   prefix (created on first use).
//! - `kando location pull --profile JSON --path P (FILE|-)` writes the newest such snapshot.
//! - `kando location delete --profile JSON --path P` forgets every snapshot at that path.
//! - `kando output KEY VALUE` prints the phase-output line the coordinator parses.
//!
//! `--profile` takes `{{ toJson .Profile }}` exactly as upstream renders it: `Location` with
//! lower-case keys (`type`, `bucket`, `endpoint`, `prefix`, `region`, and `path` for our
//! local type), `Credential` with Go field names (`Type`, `KeyPair{ID,Secret}`, `Secret` as a
//! Kubernetes Secret with base64 `data`), `SkipSSLVerify`. The repository key comes from the
//! environment (`KANISTER_REPO_KEY`, the raw key from the Secret the coordinator keeps per
//! Profile, or the agent's usual `KANISTER_REPO_PASSWORD` / key-file variables), never from
//! an argument.
//!
//! # Credentials by reference
//! Upstream's `--profile '{{ toJson .Profile }}'` puts the store's secret key on kando's
//! command line, where every process of the node can read it (`/proc/*/cmdline`). In the
//! arguments of functions whose pod the coordinator creates (`KubeTask`, `PrepareData`,
//! `MultiContainerRun`), the coordinator therefore renders `toJson .Profile` with the
//! credential's secret values left out (`KeyPair.Secret` empty, `Secret` without `data`) and a
//! reference added, `"Credential": {..., "FromEnv": "KANISTER_PROFILE_CREDENTIAL"}`; the task
//! pod gets that variable from a Secret in its namespace, holding the whole `Credential` as
//! upstream renders it. `kando` replaces the credential by the variable's ([`CREDENTIAL_ENV`]);
//! a reference to an unset variable is an error that says so. Only this `kando` understands
//! the reference: templates that ask for a value directly (`{{ .Profile.Credential.KeyPair.Secret
//! }}`) still get it, and `KubeExec` (whose pod's environment cannot be changed) renders the
//! values as upstream.

use std::collections::BTreeMap;

use base64::Engine;
use clap::{Args, Parser, Subcommand};
use serde::Deserialize;

use crate::error::{Error, Result};
use crate::store::{Store, StoreError, StoreOptions};

/// The environment variable holding a Profile's `Credential` (upstream's JSON, with the secret
/// values) for a `--profile` that references it (`"Credential": {"FromEnv": ...}`).
pub const CREDENTIAL_ENV: &str = "KANISTER_PROFILE_CREDENTIAL";

/// Tag that addresses a kando push.
pub const PATH_TAG: &str = "kando.path";
/// Prefix of the phase-output protocol line.
pub const OUTPUT_MARKER: &str = "###Phase-output###:";

/// Upstream's in-pod helper, answered by the Kanister agent.
#[derive(Debug, Parser)]
#[command(name = "kando", version, max_term_width = 100)]
pub struct Kando {
    #[command(subcommand)]
    command: KandoCommand,
}

#[derive(Debug, Subcommand)]
enum KandoCommand {
    /// Push, pull and delete data at a location named by a Profile
    Location {
        #[command(subcommand)]
        command: LocationCommand,
    },
    /// Print a phase output for the coordinator: `###Phase-output###: {"key":..,"value":..}`
    Output {
        /// Output name: letters, digits and underscores
        key: String,
        /// Output value
        value: String,
    },
}

#[derive(Debug, Subcommand)]
enum LocationCommand {
    /// Store a stream (a file, or "-" for stdin) at a path
    Push(LocationArgs),
    /// Write the stream last pushed at a path to a file, or "-" for stdout
    Pull(LocationArgs),
    /// Delete what was pushed at a path
    Delete(LocationArgs),
}

#[derive(Debug, Args)]
struct LocationArgs {
    /// The Profile as JSON: `{{ toJson .Profile }}`
    #[arg(long, short = 's')]
    profile: String,
    /// Path of the data inside the location
    #[arg(long)]
    path: String,
    /// Print the snapshot id as a phase output with this name (push)
    #[arg(long)]
    output_name: Option<String>,
    /// Data source (push) or destination (pull); "-" for stdin/stdout
    #[arg(default_value = "-")]
    file: String,
}

/// `{{ toJson .Profile }}` as upstream renders it.
#[derive(Debug, Deserialize)]
pub struct GoProfile {
    /// Where.
    #[serde(rename = "Location")]
    pub location: GoLocation,
    /// With which credentials.
    #[serde(rename = "Credential", default)]
    pub credential: Option<GoCredential>,
    /// Accept any TLS certificate.
    #[serde(rename = "SkipSSLVerify", default)]
    pub skip_ssl_verify: bool,
    /// Our addition: the Profile's `storeOptions` (how the store client waits and retries;
    /// only [`crate::store::NETWORK_OPTION_KEYS`]).
    #[serde(rename = "StoreOptions", default)]
    pub store_options: std::collections::BTreeMap<String, String>,
}

/// `Location`: Go JSON tags, lower case.
#[derive(Debug, Deserialize)]
pub struct GoLocation {
    /// `s3Compliant`, `gcs`, `azure` or `local`.
    #[serde(rename = "type")]
    pub location_type: String,
    /// Bucket (S3, GCS) or container (Azure).
    #[serde(default)]
    pub bucket: String,
    /// Endpoint URL.
    #[serde(default)]
    pub endpoint: String,
    /// Prefix inside the bucket.
    #[serde(default)]
    pub prefix: String,
    /// Region.
    #[serde(default)]
    pub region: String,
    /// Directory (local).
    #[serde(default)]
    pub path: Option<String>,
}

/// `Credential`: Go field names.
#[derive(Debug, Deserialize)]
pub struct GoCredential {
    /// `keyPair` or `secret`.
    #[serde(rename = "Type", default)]
    pub credential_type: String,
    /// Id and secret.
    #[serde(rename = "KeyPair", default)]
    pub key_pair: Option<GoKeyPair>,
    /// A Kubernetes Secret.
    #[serde(rename = "Secret", default)]
    pub secret: Option<GoSecret>,
    /// Ours: the environment variable holding the whole credential (with its secret values),
    /// which then replaces this one ([`GoProfile::parse_with`]).
    #[serde(rename = "FromEnv", default)]
    pub from_env: Option<String>,
}

/// `KeyPair`.
#[derive(Deserialize)]
pub struct GoKeyPair {
    /// Access key id / account name / project.
    #[serde(rename = "ID", default)]
    pub id: String,
    /// The secret.
    #[serde(rename = "Secret", default)]
    pub secret: String,
}

impl std::fmt::Debug for GoKeyPair {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GoKeyPair").field("id", &self.id).field("secret", &"<redacted>").finish()
    }
}

/// A Kubernetes Secret as JSON (`data` values base64).
#[derive(Deserialize)]
pub struct GoSecret {
    /// Its data.
    #[serde(default)]
    pub data: BTreeMap<String, String>,
}

impl std::fmt::Debug for GoSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GoSecret").field("keys", &self.data.keys().collect::<Vec<_>>()).finish()
    }
}

fn bad_profile(reason: impl Into<String>) -> Error {
    Error::Store(StoreError::BadUrl { url: "--profile".into(), reason: reason.into() })
}

impl GoProfile {
    /// Parses `--profile`, resolving a credential reference from the process's environment.
    pub fn parse(json: &str) -> Result<Self> {
        Self::parse_with(json, |name| std::env::var(name).ok())
    }

    /// Parses `--profile`; a credential given by reference (`"FromEnv": VAR`) is replaced by
    /// the credential JSON `env(VAR)` returns.
    pub fn parse_with(json: &str, env: impl Fn(&str) -> Option<String>) -> Result<Self> {
        let mut profile: GoProfile = serde_json::from_str(json)
            .map_err(|e| bad_profile(format!("not a Profile as `{{{{ toJson .Profile }}}}` renders it: {e}")))?;
        let reference = profile.credential.as_ref().and_then(|c| c.from_env.clone()).filter(|v| !v.is_empty());
        if let Some(var) = reference {
            let text = env(&var).filter(|t| !t.is_empty()).ok_or_else(|| {
                bad_profile(format!(
                    "its credential is a reference to the environment variable {var}, which is not set: the \
                     coordinator sets it in the task pods it creates (KubeTask, PrepareData, MultiContainerRun) \
                     from a Secret; elsewhere render the Profile with its values"
                ))
            })?;
            let credential: GoCredential = serde_json::from_str(&text).map_err(|e| {
                bad_profile(format!("the environment variable {var} does not hold a Profile credential as JSON: {e}"))
            })?;
            profile.credential = Some(GoCredential { from_env: None, ..credential });
        }
        Ok(profile)
    }

    fn secret_value(&self, keys: &[&str]) -> Option<String> {
        let s = self.credential.as_ref()?.secret.as_ref()?;
        keys.iter().find_map(|k| {
            let v = s.data.get(*k)?;
            let bytes = base64::engine::general_purpose::STANDARD.decode(v).ok()?;
            String::from_utf8(bytes).ok()
        })
    }

    fn key_pair(&self) -> Option<&GoKeyPair> {
        self.credential.as_ref()?.key_pair.as_ref()
    }

    /// The store this profile names, with its credentials as store settings (never in the URL).
    pub fn store(&self) -> Result<Store> {
        let (url, options) = self.store_settings()?;
        Ok(Store::open(&url, &StoreOptions { options, credentials_file: None })?)
    }

    /// The store URL and settings this Profile names: the one mapping from a Profile to a store,
    /// which the coordinator also uses for the repository references it sends the agents.
    /// Settings hold the credentials: secret.
    pub fn store_settings(&self) -> Result<(String, Vec<(String, String)>)> {
        let l = &self.location;
        let prefix = l.prefix.trim_matches('/');
        let mut opts: Vec<(String, String)> = Vec::new();
        let endpoint = if l.endpoint.is_empty() || l.endpoint.contains("://") {
            l.endpoint.clone()
        } else {
            format!("https://{}", l.endpoint)
        };
        let url = match l.location_type.as_str() {
            "s3Compliant" | "s3" => {
                if !endpoint.is_empty() {
                    opts.push(("endpoint".into(), endpoint));
                }
                opts.push(("region".into(), if l.region.is_empty() { "us-east-1".into() } else { l.region.clone() }));
                let (id, secret) = match self.key_pair() {
                    Some(kp) => (Some(kp.id.clone()), Some(kp.secret.clone())),
                    None => (
                        self.secret_value(&["aws_access_key_id", "access_key_id"]),
                        self.secret_value(&["aws_secret_access_key", "secret_access_key"]),
                    ),
                };
                if let (Some(id), Some(secret)) = (id, secret) {
                    opts.push(("aws_access_key_id".into(), id));
                    opts.push(("aws_secret_access_key".into(), secret));
                }
                format!("s3://{}/{prefix}", l.bucket)
            }
            "gcs" => {
                if !endpoint.is_empty() {
                    opts.push(("base_url".into(), endpoint));
                }
                let key = self
                    .key_pair()
                    .map(|kp| kp.secret.clone())
                    .or_else(|| self.secret_value(&["service-account.json"]));
                if let Some(k) = key.filter(|k| !k.is_empty()) {
                    opts.push(("google_service_account_key".into(), k));
                }
                format!("gs://{}/{prefix}", l.bucket)
            }
            "azure" => {
                let (account, key) = match self.key_pair() {
                    Some(kp) => (Some(kp.id.clone()), Some(kp.secret.clone())),
                    None => (
                        self.secret_value(&["azure_storage_account_id", "azure_storage_account_name"]),
                        self.secret_value(&["azure_storage_key", "azure_storage_account_key"]),
                    ),
                };
                if let Some(a) = account {
                    opts.push(("azure_storage_account_name".into(), a));
                }
                if let Some(k) = key {
                    opts.push(("azure_storage_account_key".into(), k));
                }
                if !endpoint.is_empty() {
                    opts.push(("azure_storage_endpoint".into(), endpoint));
                }
                format!("az://{}/{prefix}", l.bucket)
            }
            "local" => {
                let dir = l
                    .path
                    .clone()
                    .filter(|p| !p.is_empty())
                    .ok_or_else(|| bad_profile("a local location needs a path"))?;
                format!("file://{}/{prefix}", dir.trim_end_matches('/'))
            }
            other => {
                return Err(bad_profile(format!(
                    "location type {other:?} is not supported: use s3Compliant, gcs, azure or local"
                )));
            }
        };
        if self.skip_ssl_verify {
            opts.push(("allow_invalid_certificates".into(), "true".into()));
        }
        for (k, v) in &self.store_options {
            crate::store::check_network_option(k, v).map_err(|e| bad_profile(format!("StoreOptions {e}")))?;
            opts.push((k.clone(), v.clone()));
        }
        Ok((url, opts))
    }
}

/// Validates an output key as upstream does (`^[a-zA-Z0-9_]*$`).
pub fn output_line(key: &str, value: &str) -> Result<String> {
    if !key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
        return Err(Error::io(
            format!("invalid output key {key:?}: use letters, digits and underscores only"),
            std::io::Error::from(std::io::ErrorKind::InvalidInput),
        ));
    }
    Ok(format!("{OUTPUT_MARKER} {}", serde_json::json!({"key": key, "value": value})))
}

/// The repository key for kando: the agent's usual chain (key file, passphrase file,
/// `KANISTER_REPO_KEY`, `KANISTER_REPO_PASSWORD`).
fn kando_key() -> Result<crate::repository::RepoKey> {
    let path = |v: &str| std::env::var_os(v).map(std::path::PathBuf::from);
    let (key_file, password_file) = (path("KANISTER_REPO_KEY_FILE"), path("KANISTER_REPO_PASSWORD_FILE"));
    crate::repository::RepoKey::from_files_or_env(key_file.as_deref(), password_file.as_deref())
}

/// The snapshots pushed at `path` (tag `kando.path`), oldest first, with their times.
pub async fn pushed_at(
    repo: &crate::repository::Repository,
    path: &str,
) -> Result<Vec<(kanister_repo::SnapshotId, String)>> {
    let mut found: Vec<(kanister_repo::SnapshotId, String)> = repo
        .snapshots()
        .await?
        .into_iter()
        .filter_map(|(id, s)| {
            s.ok().filter(|s| s.tags.get(PATH_TAG).map(String::as_str) == Some(path)).map(|s| (id, s.time))
        })
        .collect();
    found.sort_by(|a, b| a.1.cmp(&b.1));
    Ok(found)
}

/// Forgets every snapshot pushed at `path` (`kando location delete`, `LocationDelete`);
/// returns how many. Their data goes with the next prune.
pub async fn delete_at(repo: &crate::repository::Repository, path: &str) -> Result<usize> {
    let found = pushed_at(repo, path).await?;
    let ids: Vec<String> = found.iter().map(|(id, _)| id.to_string()).collect();
    repo.forget(&ids).await?;
    Ok(found.len())
}

/// Runs kando with `args` (argv, program name first).
pub async fn run(args: Vec<std::ffi::OsString>) -> Result<()> {
    let k = Kando::parse_from(args);
    match k.command {
        KandoCommand::Output { key, value } => {
            println!("{}", output_line(&key, &value)?);
        }
        KandoCommand::Location { command } => {
            let (a, verb) = match &command {
                LocationCommand::Push(a) => (a, "push"),
                LocationCommand::Pull(a) => (a, "pull"),
                LocationCommand::Delete(a) => (a, "delete"),
            };
            let profile = GoProfile::parse(&a.profile)?;
            let key = kando_key()?;
            let repo = crate::repository::Repository::at(profile.store()?).open_or_init(&key).await?;
            let progress = crate::progress::Progress::new();
            match verb {
                "push" => {
                    let source: Box<dyn std::io::Read + Send> = if a.file == "-" {
                        Box::new(std::io::stdin())
                    } else {
                        Box::new(
                            std::fs::File::open(&a.file)
                                .map_err(|e| Error::io(format!("cannot open {}", a.file), e))?,
                        )
                    };
                    let mut opts = crate::push::PushOptions::default();
                    opts.tags.insert(PATH_TAG.into(), a.path.clone());
                    let stats = crate::push::push(&repo, crate::push::Source::Reader(source), &opts, progress).await?;
                    eprintln!(
                        "pushed {} bytes to {} as snapshot {}",
                        stats.bytes_read,
                        a.path,
                        stats.snapshot_id.short()
                    );
                    if let Some(name) = &a.output_name {
                        println!("{}", output_line(name, &stats.snapshot_id.to_string())?);
                    }
                }
                "pull" => {
                    let found = pushed_at(&repo, &a.path).await?;
                    let (id, _) = found.last().ok_or_else(|| {
                        Error::SnapshotNotFound(format!("{} (nothing was pushed at this path)", a.path))
                    })?;
                    let workers = std::thread::available_parallelism().map_or(2, |n| n.get());
                    if a.file == "-" {
                        crate::pull::pull(
                            &repo,
                            id,
                            crate::pull::stdout_file().map_err(|e| Error::io("cannot write to stdout", e))?,
                            4,
                            workers,
                            progress,
                        )
                        .await?;
                    } else {
                        let f = std::fs::File::create(&a.file)
                            .map_err(|e| Error::io(format!("cannot create {}", a.file), e))?;
                        let (_, f) =
                            crate::pull::pull(&repo, id, std::io::BufWriter::new(f), 4, workers, progress).await?;
                        f.into_inner().map_err(|e| Error::io("cannot flush the output", e.into_error()))?;
                    }
                }
                _ => {
                    let n = delete_at(&repo, &a.path).await?;
                    eprintln!("deleted {n} snapshot(s) at {}; their data goes with the next prune", a.path);
                }
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn output_lines_follow_the_protocol() {
        assert_eq!(
            output_line("backup_id", "x\"y").unwrap(),
            r#"###Phase-output###: {"key":"backup_id","value":"x\"y"}"#
        );
        assert!(output_line("bad-key", "v").is_err());
    }

    #[test]
    fn upstream_profile_json_maps_to_stores() {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let s3 = r#"{"Location":{"type":"s3Compliant","bucket":"b","endpoint":"http://minio:9000","prefix":"p","region":""},
            "Credential":{"Type":"keyPair","KeyPair":{"ID":"AK","Secret":"SK"},"Secret":null,"KopiaServerSecret":null},"SkipSSLVerify":false}"#;
        let p = GoProfile::parse(s3).unwrap();
        assert_eq!(p.store().unwrap().to_string(), "s3://b/p");
        assert!(!format!("{p:?}").contains("SK"), "secrets must not print");
        let local = r#"{"Location":{"type":"local","bucket":"","endpoint":"","prefix":"x","region":"","path":"/backups"},"Credential":null,"SkipSSLVerify":false}"#;
        assert_eq!(GoProfile::parse(local).unwrap().store().unwrap().to_string(), "file:///backups/x");
        let err = GoProfile::parse(r#"{"Location":{"type":"kopia"}}"#).unwrap().store().unwrap_err().to_string();
        assert!(err.contains("not supported"), "{err}");
        assert!(GoProfile::parse("{}").is_err());

        // Our StoreOptions: the network settings reach the store; anything else is refused.
        let with = |opts: &str| {
            let json = local
                .replace(r#""SkipSSLVerify":false}"#, &format!(r#""SkipSSLVerify":false,"StoreOptions":{opts}}}"#));
            GoProfile::parse(&json).unwrap().store().map(|s| s.to_string()).map_err(|e| e.to_string())
        };
        assert_eq!(with(r#"{"retry_timeout":"2m","max_retries":"1"}"#).unwrap(), "file:///backups/x");
        let e = with(r#"{"retry_timeout":"soon"}"#).unwrap_err();
        assert!(e.contains("retry_timeout"), "{e}");
        let e = with(r#"{"aws_secret_access_key":"hunter2"}"#).unwrap_err();
        assert!(e.contains("takes only connect_timeout") && !e.contains("hunter2"), "{e}");
    }

    #[test]
    fn credentials_by_reference_come_from_the_environment() {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let referenced = r#"{"Location":{"type":"s3Compliant","bucket":"b","endpoint":"http://minio:9000","prefix":"p","region":""},
            "Credential":{"Type":"keyPair","KeyPair":{"ID":"AK","Secret":""},"Secret":null,"KopiaServerSecret":null,
            "FromEnv":"KANISTER_PROFILE_CREDENTIAL"},"SkipSSLVerify":false}"#;
        let value =
            r#"{"Type":"keyPair","KeyPair":{"ID":"AK","Secret":"SK-from-env"},"Secret":null,"KopiaServerSecret":null}"#;
        let env = |name: &str| (name == CREDENTIAL_ENV).then(|| value.to_string());
        let p = GoProfile::parse_with(referenced, env).unwrap();
        assert_eq!(p.key_pair().map(|kp| kp.secret.as_str()), Some("SK-from-env"));
        assert!(p.credential.as_ref().unwrap().from_env.is_none());
        assert_eq!(p.store().unwrap().to_string(), "s3://b/p");
        // Unset, or set to something else: clear errors naming the variable.
        let err = GoProfile::parse_with(referenced, |_| None).unwrap_err().to_string();
        assert!(err.contains(CREDENTIAL_ENV) && err.contains("not set"), "{err}");
        let err = GoProfile::parse_with(referenced, |_| Some("nope".into())).unwrap_err().to_string();
        assert!(err.contains(CREDENTIAL_ENV), "{err}");
        // Secret credentials by reference too: the data comes from the variable.
        let secret = r#"{"Location":{"type":"s3Compliant","bucket":"b","prefix":"p"},
            "Credential":{"Type":"secret","KeyPair":null,"Secret":{"metadata":{"name":"s"}},"FromEnv":"V"}}"#;
        let full = r#"{"Type":"secret","Secret":{"metadata":{"name":"s"},"data":{"aws_access_key_id":"QUs=","aws_secret_access_key":"U0s="}}}"#;
        let p = GoProfile::parse_with(secret, |n| (n == "V").then(|| full.to_string())).unwrap();
        assert_eq!(p.secret_value(&["aws_secret_access_key"]).as_deref(), Some("SK"));
    }
}
