//! The `kanister-agent` command line: the flags, and one file per verb (`commands/`); text for people, `--json` for
//! scripts and the coordinator (exactly one JSON object on stdout, or on stderr when stdout
//! carries the data).

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use kanister_repo::chunker::ChunkerParams;
use serde_json::json;

use crate::error::{Error, Result};
use crate::progress::{Progress, human_bytes};
use crate::repository::{InitOptions, RepoKey, Repository, has_tags, parse_tags};
use crate::store::{Store, StoreOptions};
use kanister_profile::store::BuildError;

mod commands;

/// The Kanister data mover: deduplicated, compressed, encrypted backups of database dumps into
/// object stores.
///
/// A repository lives in a store (file:///path, s3://bucket/prefix, az://container/prefix,
/// gs://bucket/prefix). Its key comes from KANISTER_REPO_PASSWORD, --password-file or
/// --key-file; never from the command line, and there is no default.
///
/// Example:
///   export KANISTER_STORE=file:///var/backups/repo KANISTER_REPO_PASSWORD=...
///   kanister-agent repo init
///   kanister-agent push --tag db=shop --exec mysqldump --single-transaction shop
///   kanister-agent snapshots
///   kanister-agent pull 1a2b3c4d | mysql shop
#[derive(Debug, Parser)]
#[command(name = "kanister-agent", version, verbatim_doc_comment, max_term_width = 100)]
pub struct Cli {
    #[command(flatten)]
    global: Global,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Args)]
struct Global {
    /// Repository location: file:///path, s3://bucket/prefix, az://container/prefix or
    /// gs://bucket/prefix
    #[arg(long, short = 's', env = "KANISTER_STORE", global = true, value_name = "URL")]
    store: Option<String>,
    /// Store setting as key=value (repeatable), e.g. endpoint=http://127.0.0.1:9000,
    /// region=us-east-1, use_emulator=true. Keys are object_store's (aws_*, azure_*, google_*)
    #[arg(
        long = "store-option",
        env = "KANISTER_STORE_OPTIONS",
        value_delimiter = ',',
        global = true,
        value_name = "K=V"
    )]
    store_options: Vec<String>,
    /// File of key=value lines with store settings and credentials (e.g. a mounted Secret with
    /// aws_access_key_id and aws_secret_access_key)
    #[arg(long, env = "KANISTER_STORE_CREDENTIALS", global = true, value_name = "FILE")]
    store_credentials: Option<PathBuf>,
    /// File holding the repository passphrase (or set KANISTER_REPO_PASSWORD)
    #[arg(long, env = "KANISTER_REPO_PASSWORD_FILE", global = true, value_name = "FILE")]
    password_file: Option<PathBuf>,
    /// File holding a raw repository key of at least 16 bytes, e.g. a Kubernetes Secret
    #[arg(long, env = "KANISTER_REPO_KEY_FILE", global = true, value_name = "FILE")]
    key_file: Option<PathBuf>,
    /// Directory of the local index cache: the repository's index as sorted files, so that a
    /// backup or restore needs little memory however large the repository grows. Rebuilt from
    /// the repository whenever it does not match [default: $XDG_CACHE_HOME/kanister or
    /// ~/.cache/kanister; without either, the index is held in memory]
    #[arg(long, env = "KANISTER_CACHE_DIR", global = true, value_name = "DIR")]
    cache_dir: Option<PathBuf>,
    /// Print one JSON object with the result instead of text
    #[arg(long, global = true)]
    json: bool,
    /// More log output (-v info, -vv debug); RUST_LOG overrides
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    verbose: u8,
    /// Log format on stderr
    #[arg(long, env = "KANISTER_LOG_FORMAT", global = true, default_value = "text", value_parser = ["text", "json"])]
    log_format: String,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Create and repair repositories
    Repo {
        #[command(subcommand)]
        command: commands::repo::RepoCommand,
    },
    /// Back up a byte stream (stdin, or a command's stdout) as a snapshot
    Push(commands::push::PushArgs),
    /// Write a stream snapshot back to stdout or a file, verifying every byte
    Pull(commands::pull::PullArgs),
    /// List snapshots
    Snapshots(commands::snapshots::SnapshotsArgs),
    /// Delete snapshots (their data goes with the next `prune`)
    Forget(commands::forget::ForgetArgs),
    /// Delete data no snapshot uses, safely next to running backups
    Prune(commands::prune::PruneArgs),
    /// Verify the repository's structure, and with --read-data every byte
    Check(commands::check::CheckArgs),
    /// Routine maintenance, as the coordinator schedules it: prune, then a structural check
    Maintain(commands::maintain::MaintainArgs),
    /// Run the gRPC service (kanister.agent.v1) that the coordinator drives
    Serve(crate::service::ServeArgs),
    /// Back up a directory (a volume) as a snapshot, incrementally from the last one
    Backup(commands::backup::BackupArgs),
    /// Restore a directory snapshot into a target directory, verifying every byte
    Restore(commands::restore::RestoreArgs),
    /// List a directory snapshot's entries without restoring
    Ls(commands::ls::LsArgs),
    /// Write one file of a directory snapshot to stdout
    Cat(commands::cat::CatArgs),
    /// Show paths added, removed and changed between two directory snapshots
    Diff(commands::diff::DiffArgs),
    /// Run one piece of repository work for the coordinator (in its task pods): the request is
    /// read from KANISTER_TASK, the answer printed as the phase output `taskResult`
    #[command(hide = true)]
    Task,
}

/// Parses `128KiB`, `8MiB`, `1G`, `4096`.
fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: u64 =
        num.parse().map_err(|_| format!("invalid size {s:?}: expected a number with an optional unit, e.g. 128KiB"))?;
    let mult = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" | "kib" => 1 << 10,
        "m" | "mb" | "mib" => 1 << 20,
        "g" | "gb" | "gib" => 1 << 30,
        u => return Err(format!("invalid size unit {u:?} in {s:?}: use KiB, MiB or GiB")),
    };
    Ok(n * mult)
}

/// Exit code when `check` finds damage.
const EXIT_DAMAGED: u8 = 3;
/// Exit code when `backup` wrote a partial snapshot (some paths could not be read).
const EXIT_PARTIAL: u8 = 3;

/// Entry point of the binary.
pub fn main() -> ExitCode {
    // Called as `kando` (a link to this binary in the tools image), or `kanister-agent kando ...`:
    // upstream's in-pod helper.
    let mut args: Vec<std::ffi::OsString> = std::env::args_os().collect();
    let called_as_kando = args.first().and_then(|a| std::path::Path::new(a).file_name()).is_some_and(|n| n == "kando");
    if !called_as_kando && args.get(1).is_some_and(|a| a == "kando") {
        args.remove(0);
    }
    if called_as_kando || args.first().is_some_and(|a| a == "kando") {
        return run_kando(args);
    }
    let cli = Cli::parse();
    init_tracing(&cli.global);
    let _ = rustls::crypto::ring::default_provider().install_default();
    // CPU work runs on the blocking pool. Few threads there keep glibc's per-thread malloc
    // arenas few: with tokio's default of 512, a restore's peak RSS tripled.
    let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
    let rt = match tokio::runtime::Builder::new_multi_thread().max_blocking_threads(cores * 2 + 2).enable_all().build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(run(cli)) {
        Ok(code) => code,
        Err(e) => report(&e),
    }
}

fn run_kando(args: Vec<std::ffi::OsString>) -> ExitCode {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into());
    tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).compact().init();
    let _ = rustls::crypto::ring::default_provider().install_default();
    let rt = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(crate::kando::run(args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => report(&e),
    }
}

/// Prints an error with its causes and a hint; the exit code for failures.
fn report(e: &Error) -> ExitCode {
    // One line: the error and each cause whose text it does not already hold (an S3 error
    // repeated itself over nine lines).
    eprintln!("error: {}", crate::error::error_chain(e));
    if let Some(h) = e.hint() {
        eprintln!("hint: {h}");
    }
    ExitCode::FAILURE
}

/// Standard output for data ([`crate::pull::stdout_file`]).
fn stdout_file() -> Result<std::fs::File> {
    crate::pull::stdout_file().map_err(|e| Error::io("cannot write to stdout", e))
}

fn init_tracing(g: &Global) {
    // object_store's retries are announced ("... backing off for 2 seconds, retry 1 of 4"), so a
    // slow or dead endpoint never looks like a hang.
    let default = match g.verbose {
        0 => "warn,object_store::client::retry=info",
        1 => "info,kanister_agent=info",
        _ => "debug",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| default.into());
    let b = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    if g.log_format == "json" {
        b.json().init();
    } else {
        b.compact().init();
    }
}

fn store(g: &Global) -> Result<Store> {
    let url = g.store.as_deref().ok_or_else(|| {
        Error::Store(
            BuildError::BadUrl {
                url: String::new(),
                reason: "no store given: pass --store URL or set KANISTER_STORE".into(),
            }
            .into(),
        )
    })?;
    let options = g
        .store_options
        .iter()
        .filter(|o| !o.trim().is_empty())
        .map(|o| {
            o.split_once('=').map(|(k, v)| (k.trim().to_string(), v.trim().to_string())).ok_or_else(|| {
                Error::Store(BuildError::BadOption { key: o.clone(), reason: "expected key=value".into() }.into())
            })
        })
        .collect::<Result<Vec<_>>>()?;
    Ok(Store::open(url, &StoreOptions { options, credentials_file: g.store_credentials.clone() })?)
}

fn repo_key(g: &Global) -> Result<RepoKey> {
    RepoKey::from_files_or_env(g.key_file.as_deref(), g.password_file.as_deref())
}

async fn open(g: &Global) -> Result<Repository> {
    let key = repo_key(g)?;
    Ok(with_cache(g, Repository::at(store(g)?).open(&key).await?))
}

/// The repository with `--cache-dir` applied (the environment's default otherwise).
fn with_cache(g: &Global, repo: Repository) -> Repository {
    match &g.cache_dir {
        Some(dir) => repo.with_cache_root(Some(dir.clone())),
        None => repo,
    }
}

/// Prints a live status line on a terminal until dropped.
struct StatusLine(Option<tokio::task::JoinHandle<()>>);

impl StatusLine {
    fn start(progress: Arc<Progress>, verb: &'static str, quiet: bool) -> Self {
        if quiet || !std::io::stderr().is_terminal() {
            return StatusLine(None);
        }
        StatusLine(Some(tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(250));
            loop {
                tick.tick().await;
                let s = progress.snapshot();
                let eta = s.eta_secs().map(|e| format!("  ETA {:.0}s", e)).unwrap_or_default();
                eprint!(
                    "\r\x1b[2K{verb} {}  new {}  store {}  {}/s{eta}",
                    human_bytes(s.bytes_read),
                    human_bytes(s.bytes_new),
                    human_bytes(s.bytes_stored),
                    human_bytes(s.rate() as u64)
                );
            }
        })))
    }
}

impl Drop for StatusLine {
    fn drop(&mut self) {
        if let Some(h) = self.0.take() {
            h.abort();
            eprint!("\r\x1b[2K");
        }
    }
}

fn print_json(v: &serde_json::Value, to_stderr: bool) {
    let s = serde_json::to_string(v).expect("JSON serializes");
    if to_stderr { eprintln!("{s}") } else { println!("{s}") }
}

async fn run(cli: Cli) -> Result<ExitCode> {
    let g = &cli.global;
    match &cli.command {
        Command::Repo { command } => commands::repo::run(g, command).await,
        Command::Push(a) => commands::push::run(g, a).await,
        Command::Pull(a) => commands::pull::run(g, a).await,
        Command::Snapshots(a) => commands::snapshots::run(g, a).await,
        Command::Forget(a) => commands::forget::run(g, a).await,
        Command::Prune(a) => commands::prune::run(g, a).await,
        Command::Serve(a) => commands::serve::run(g, a).await,
        Command::Maintain(a) => commands::maintain::run(g, a).await,
        Command::Task => commands::task::run(g).await,
        Command::Check(a) => commands::check::run(g, a).await,
        Command::Backup(a) => commands::backup::run(g, a).await,
        Command::Restore(a) => commands::restore::run(g, a).await,
        Command::Ls(a) => commands::ls::run(g, a).await,
        Command::Cat(a) => commands::cat::run(g, a).await,
        Command::Diff(a) => commands::diff::run(g, a).await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse() {
        assert_eq!(parse_size("128KiB").unwrap(), 128 << 10);
        assert_eq!(parse_size("8MiB").unwrap(), 8 << 20);
        assert_eq!(parse_size("4096").unwrap(), 4096);
        assert!(parse_size("12 parsecs").is_err());
        assert!(parse_size("MiB").is_err());
    }

    #[test]
    fn cli_is_well_formed() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }

    #[test]
    fn exec_takes_the_rest_of_the_line() {
        let c =
            Cli::try_parse_from(["kanister-agent", "push", "--tag", "a=b", "--exec", "mysqldump", "-h", "db", "--all"])
                .unwrap();
        let Command::Push(p) = c.command else { panic!("not push") };
        assert_eq!(p.exec, ["mysqldump", "-h", "db", "--all"]);
        assert_eq!(p.tags, ["a=b"]);
    }
}
