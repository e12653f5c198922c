//! `kando`: upstream Kanister's in-pod helper, answered by the agent, so blueprints written for
//! upstream keep working and get deduplication and encryption without a changed line.
//!
//! Upstream's flags, short forms and defaults:
//!
//! - `kando location push -p/--profile JSON [-s/--path P] [-o/--output-name N] (FILE|-)` stores a
//!   stream as a snapshot tagged `kando.path=P` in the repository under the Profile's bucket and
//!   prefix (created on first use), and prints the phase output `N` (default `kandoOutput`):
//!   upstream's Kopia snapshot JSON, `{"id":..,"logicalSize":..,"physicalSize":..}`.
//! - `kando location pull -p JSON [-s P] [-k/--kopia-snapshot S] (FILE|-)` writes snapshot `S`
//!   (that JSON, or a bare id), else the newest pushed at `P`.
//! - `kando location delete -p JSON [-s P] [-k S]` forgets snapshot `S`, else every snapshot
//!   pushed at `P`.
//! - `-p` and `-s` may also come before the verb (`kando location -p JSON push ...`), and
//!   `-v/--verbosity` anywhere, as upstream's persistent flags.
//! - `kando output KEY VALUE` prints the phase-output line the coordinator parses; an empty key
//!   or one with other than letters, digits and `_` is refused, as upstream.
//! - `kando chronicle`, `kando stream` and `kando process` fail, naming what to use instead.
//!
//! First- and second-generation blueprints both work: blueprint-v2's `--output-name
//! kopiaOutput` then `--kopia-snapshot "{{ .ArtifactsIn.backup.KopiaSnapshot }}"` round-trips
//! the JSON above. A Profile of `type: kopia` (a Kopia repository server) is not supported:
//! point the Profile at the object store instead; the same blueprint then works unchanged.
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

use clap::{Parser, Subcommand};

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
    /// Log level (debug, info, warn, error, fatal, panic), as upstream
    #[arg(short = 'v', long, global = true, default_value = "warn")]
    verbosity: String,
    #[command(subcommand)]
    command: KandoCommand,
}

/// Upstream's name of push's output when `--output-name` is not given.
pub const DEFAULT_OUTPUT_NAME: &str = "kandoOutput";

#[derive(Debug, Subcommand)]
enum KandoCommand {
    /// Push, pull and delete from object storage
    Location {
        /// Pass a Profile as a JSON string: `{{ toJson .Profile }}` (required)
        #[arg(short = 'p', long, global = true)]
        profile: Option<String>,
        /// Specify a path suffix (optional)
        #[arg(short = 's', long, global = true, default_value = "")]
        path: String,
        #[command(subcommand)]
        command: LocationCommand,
    },
    /// Create phase output with given key:value: `###Phase-output###: {"key":..,"value":..}`
    Output {
        /// Output name: letters, digits and underscores
        key: String,
        /// Output value
        value: String,
    },
    /// Not supported here: upstream's periodic streams (see the error for what to use)
    #[command(disable_help_flag = true)]
    Chronicle {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true, hide = true)]
        args: Vec<String>,
    },
    /// Not supported here: upstream's kopia data streams (see the error for what to use)
    #[command(disable_help_flag = true)]
    Stream {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true, hide = true)]
        args: Vec<String>,
    },
    /// Not supported here: upstream's process server (see the error for what to use)
    #[command(disable_help_flag = true)]
    Process {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true, hide = true)]
        args: Vec<String>,
    },
}

#[derive(Debug, Subcommand)]
enum LocationCommand {
    /// Push a source file or stdin stream ("-") to the Profile's object storage
    Push {
        /// Specify a name to be used for the output produced by kando
        #[arg(short = 'o', long, default_value = DEFAULT_OUTPUT_NAME)]
        output_name: String,
        /// The file to push, or "-" for stdin
        #[arg(default_value = "-")]
        source: String,
    },
    /// Pull from the Profile's object storage to a file or stdout ("-")
    Pull {
        /// The snapshot a push reported (its output's JSON, or the bare id); default: the newest
        /// pushed at --path
        #[arg(short = 'k', long)]
        kopia_snapshot: Option<String>,
        /// The file to write, or "-" for stdout
        #[arg(default_value = "-")]
        target: String,
    },
    /// Delete artifacts from the Profile's object storage
    Delete {
        /// Delete only this snapshot (its output's JSON, or the bare id); default: everything
        /// pushed at --path
        #[arg(short = 'k', long)]
        kopia_snapshot: Option<String>,
    },
}

/// What `kando location push` reports as its output, with upstream's field names (a Kopia
/// `SnapshotInfo`), so that blueprint-v2's `--kopia-snapshot "{{ .ArtifactsIn.x.KopiaSnapshot }}"`
/// hands it back unchanged.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SnapshotInfo {
    /// The snapshot id.
    pub id: String,
    /// Bytes pushed.
    pub logical_size: i64,
    /// Bytes uploaded to the store.
    #[serde(default)]
    pub physical_size: i64,
}

/// The snapshot id in a `--kopia-snapshot` value: upstream's JSON (`{"id": ...}`) or a bare id.
pub fn snapshot_id_of(value: &str) -> Result<String> {
    let bad = |why: String| {
        Error::io(
            format!("invalid --kopia-snapshot {why}: pass the output of `kando location push`"),
            std::io::Error::from(std::io::ErrorKind::InvalidInput),
        )
    };
    let value = value.trim();
    let id = if value.starts_with('{') {
        serde_json::from_str::<SnapshotInfo>(value).map_err(|e| bad(format!("({e})")))?.id
    } else {
        value.to_string()
    };
    if id.is_empty() || !id.chars().all(|c| c.is_ascii_hexdigit()) {
        return Err(bad("(no snapshot id in it)".into()));
    }
    Ok(id)
}

/// The error for an upstream subcommand this kando does not implement, naming what to use.
fn not_supported(command: &str) -> Error {
    let instead = match command {
        "chronicle" => {
            "run the command in a KubeTask and pipe its output into `kando location push --profile ... --path ... -` \
             (and `kando location pull` to read it back)"
        }
        "stream" => "pipe the file into `kando location push --profile ... --path ... -`",
        _ => "run the command directly in the KubeTask or KubeExec phase",
    };
    Error::io(
        format!("`kando {command}` is not supported by this kando: {instead}"),
        std::io::Error::from(std::io::ErrorKind::Unsupported),
    )
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
    if key.is_empty() {
        return Err(Error::io(
            "invalid output key: it must not be empty",
            std::io::Error::from(std::io::ErrorKind::InvalidInput),
        ));
    }
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
    let (profile, path, command) = match k.command {
        KandoCommand::Output { key, value } => {
            println!("{}", output_line(&key, &value)?);
            return Ok(());
        }
        KandoCommand::Chronicle { .. } => return Err(not_supported("chronicle")),
        KandoCommand::Stream { .. } => return Err(not_supported("stream")),
        KandoCommand::Process { .. } => return Err(not_supported("process")),
        KandoCommand::Location { profile, path, command } => (profile, path, command),
    };
    let profile = match profile.as_deref() {
        Some(p) if !p.is_empty() => parse_profile(p)?,
        _ => {
            return Err(Error::io(
                "Please provide the --profile flag: `--profile '{{ toJson .Profile }}'`",
                std::io::Error::from(std::io::ErrorKind::InvalidInput),
            ));
        }
    };
    let key = kando_key()?;
    let repo = crate::repository::Repository::at(profile_store(&profile)?).open_or_init(&key).await?;
    let progress = crate::progress::Progress::new();
    match command {
        LocationCommand::Push { output_name, source } => {
            // The output name is checked before the data moves, not after.
            output_line(&output_name, "")?;
            let input: Box<dyn std::io::Read + Send> = if source == "-" {
                Box::new(std::io::stdin())
            } else {
                Box::new(std::fs::File::open(&source).map_err(|e| Error::io(format!("cannot open {source}"), e))?)
            };
            let mut opts = crate::push::PushOptions::default();
            opts.tags.insert(PATH_TAG.into(), path.clone());
            let stats = crate::push::push(&repo, crate::push::Source::Reader(input), &opts, progress).await?;
            eprintln!("pushed {} bytes to {path:?} as snapshot {}", stats.bytes_read, stats.snapshot_id.short());
            let info = SnapshotInfo {
                id: stats.snapshot_id.to_string(),
                logical_size: i64::try_from(stats.bytes_read).unwrap_or(i64::MAX),
                physical_size: i64::try_from(stats.bytes_uploaded).unwrap_or(i64::MAX),
            };
            let json = serde_json::to_string(&info).expect("snapshot info serializes");
            println!("{}", output_line(&output_name, &json)?);
        }
        LocationCommand::Pull { kopia_snapshot, target } => {
            let id = match kopia_snapshot.as_deref().filter(|s| !s.is_empty()) {
                Some(s) => repo.resolve_snapshot(&snapshot_id_of(s)?).await?,
                None => {
                    let found = pushed_at(&repo, &path).await?;
                    found
                        .last()
                        .map(|(id, _)| *id)
                        .ok_or_else(|| Error::SnapshotNotFound(format!("{path:?} (nothing was pushed at this path)")))?
                }
            };
            let workers = std::thread::available_parallelism().map_or(2, |n| n.get());
            // `-` and `/dev/stdout` included (see `pull::is_stdout`).
            crate::pull::pull_to_path(&repo, &id, std::path::Path::new(&target), 4, workers, progress).await?;
        }
        LocationCommand::Delete { kopia_snapshot } => match kopia_snapshot.as_deref().filter(|s| !s.is_empty()) {
            Some(s) => {
                let id = snapshot_id_of(s)?;
                let (removed, absent) = repo.forget(std::slice::from_ref(&id)).await?;
                if absent.is_empty() {
                    eprintln!("deleted snapshot {}; its data goes with the next prune", removed.join(", "));
                } else {
                    eprintln!("snapshot {id} was already deleted");
                }
            }
            None => {
                let n = delete_at(&repo, &path).await?;
                eprintln!("deleted {n} snapshot(s) at {path:?}; their data goes with the next prune");
            }
        },
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
        let empty = output_line("", "v").unwrap_err().to_string();
        assert!(empty.contains("must not be empty"), "{empty}");
    }

    /// Every flag of upstream's kando, long and short, before and after the verb, and the
    /// defaults.
    #[test]
    fn flags_are_upstreams() {
        let parse = |args: &str| {
            Kando::try_parse_from(std::iter::once("kando").chain(args.split_whitespace())).map(|k| k.command)
        };
        let location = |args: &str| match parse(args).unwrap_or_else(|e| panic!("{args}: {e}")) {
            KandoCommand::Location { profile, path, command } => (profile, path, command),
            other => panic!("{args}: {other:?}"),
        };
        for args in [
            "location push --profile P --path /x --output-name out -",
            "location push -p P -s /x -o out -",
            "location -p P -s /x push -o out -",
            "-v debug location push -p P --path=/x --output-name=out -",
        ] {
            let (profile, path, command) = location(args);
            assert_eq!((profile.as_deref(), path.as_str()), (Some("P"), "/x"), "{args}");
            assert!(
                matches!(&command, LocationCommand::Push { output_name, source } if output_name == "out" && source == "-"),
                "{args}: {command:?}"
            );
        }
        // Defaults: no path (""), output `kandoOutput`, stdin/stdout, newest / everything.
        let (_, path, command) = location("location push -p P -");
        assert_eq!(path, "");
        assert!(matches!(command, LocationCommand::Push { output_name, .. } if output_name == DEFAULT_OUTPUT_NAME));
        assert_eq!(DEFAULT_OUTPUT_NAME, "kandoOutput");
        let (_, _, command) = location("location pull -p P");
        assert!(matches!(command, LocationCommand::Pull { kopia_snapshot: None, target } if target == "-"));
        for args in ["location pull -p P -s /x -k S out.sql", "location pull --profile P --kopia-snapshot S out.sql"] {
            let (_, _, command) = location(args);
            assert!(
                matches!(&command, LocationCommand::Pull { kopia_snapshot: Some(k), target } if k == "S" && target == "out.sql"),
                "{args}: {command:?}"
            );
        }
        for args in ["location delete -p P -k S", "location delete --profile P --kopia-snapshot S"] {
            let (_, _, command) = location(args);
            assert!(matches!(&command, LocationCommand::Delete { kopia_snapshot: Some(k) } if k == "S"), "{args}");
        }
        let (_, _, command) = location("location delete -p P -s /x");
        assert!(matches!(command, LocationCommand::Delete { kopia_snapshot: None }));
        assert!(
            matches!(parse("output k v").unwrap(), KandoCommand::Output { key, value } if key == "k" && value == "v")
        );
        assert!(parse("output k").is_err(), "output takes two arguments");
        for (args, name) in [
            ("chronicle push -p /p -s /s -- mysqldump", "chronicle"),
            ("stream push -d /data -f f -", "stream"),
            ("process client list", "process"),
        ] {
            let command = parse(args).unwrap_or_else(|e| panic!("{args}: {e}"));
            let err = match command {
                KandoCommand::Chronicle { .. } => not_supported("chronicle"),
                KandoCommand::Stream { .. } => not_supported("stream"),
                KandoCommand::Process { .. } => not_supported("process"),
                other => panic!("{args}: {other:?}"),
            };
            let err = err.to_string();
            assert!(err.contains(&format!("`kando {name}` is not supported by this kando: ")), "{err}");
            assert!(err.contains("kando location push") || err.contains("directly"), "names no alternative: {err}");
        }
    }

    #[test]
    fn kopia_snapshot_takes_upstreams_json_or_a_bare_id() {
        let id = "ab".repeat(32);
        let json = serde_json::to_string(&SnapshotInfo { id: id.clone(), logical_size: 5, physical_size: 3 }).unwrap();
        assert_eq!(json, format!(r#"{{"id":"{id}","logicalSize":5,"physicalSize":3}}"#));
        assert_eq!(snapshot_id_of(&json).unwrap(), id);
        assert_eq!(snapshot_id_of(&format!(" {id}\n")).unwrap(), id);
        assert_eq!(snapshot_id_of(r#"{"id":"abc","logicalSize":1}"#).unwrap(), "abc");
        for bad in ["", "{}", "{not json", r#"{"id":"../etc"}"#, "snap shot"] {
            let e = snapshot_id_of(bad).unwrap_err().to_string();
            assert!(e.contains("--kopia-snapshot"), "{bad}: {e}");
        }
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
