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

use clap::{Args, Parser, Subcommand};

use crate::error::{Error, Result};
use crate::store::{Store, StoreError, StoreOptions};
use kanister_profile::store::BuildError;

pub use kanister_profile::{CREDENTIAL_ENV, GoProfile, KANDO_PATH_TAG as PATH_TAG};
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

fn bad_profile(e: kanister_profile::ProfileError) -> Error {
    Error::Store(StoreError::Settings(BuildError::BadUrl { url: "--profile".into(), reason: e.0 }))
}

/// Parses `--profile`, resolving a credential reference from the process's environment.
pub fn parse_profile(json: &str) -> Result<GoProfile> {
    GoProfile::parse(json).map_err(bad_profile)
}

/// The store `profile` names, with its credentials as store settings (never in the URL).
pub fn profile_store(profile: &GoProfile) -> Result<Store> {
    let (url, options) = profile.store_settings().map_err(bad_profile)?;
    Ok(Store::open(&url, &StoreOptions { options, credentials_file: None })?)
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
            let profile = parse_profile(&a.profile)?;
            let key = kando_key()?;
            let repo = crate::repository::Repository::at(profile_store(&profile)?).open_or_init(&key).await?;
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
        let store = |json: &str| parse_profile(json).and_then(|p| profile_store(&p)).map(|s| s.to_string());
        let s3 = r#"{"Location":{"type":"s3Compliant","bucket":"b","endpoint":"http://minio:9000","prefix":"p","region":""},
            "Credential":{"Type":"keyPair","KeyPair":{"ID":"AK","Secret":"SK"},"Secret":null,"KopiaServerSecret":null},"SkipSSLVerify":false}"#;
        assert_eq!(store(s3).unwrap(), "s3://b/p");
        let local = r#"{"Location":{"type":"local","bucket":"","endpoint":"","prefix":"x","region":"","path":"/backups"},"Credential":null,"SkipSSLVerify":false}"#;
        assert_eq!(store(local).unwrap(), "file:///backups/x");
        let err = store(r#"{"Location":{"type":"kopia"}}"#).unwrap_err().to_string();
        assert!(err.contains("not supported") && err.contains("--profile"), "{err}");
        assert!(parse_profile("{}").is_err());
    }
}
