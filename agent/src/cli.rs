//! The `kanister-agent` command line: one function per verb, text for people, `--json` for
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
        command: RepoCommand,
    },
    /// Back up a byte stream (stdin, or a command's stdout) as a snapshot
    Push(PushArgs),
    /// Write a stream snapshot back to stdout or a file, verifying every byte
    Pull(PullArgs),
    /// List snapshots
    Snapshots(SnapshotsArgs),
    /// Delete snapshots (their data goes with the next `prune`)
    Forget(ForgetArgs),
    /// Delete data no snapshot uses, safely next to running backups
    Prune(PruneArgs),
    /// Verify the repository's structure, and with --read-data every byte
    Check(CheckArgs),
    /// Routine maintenance, as the coordinator schedules it: prune, then a structural check
    Maintain(MaintainArgs),
    /// Run the gRPC service (kanister.agent.v1) that the coordinator drives
    Serve(crate::service::ServeArgs),
    /// Back up a directory (a volume) as a snapshot, incrementally from the last one
    Backup(BackupArgs),
    /// Restore a directory snapshot into a target directory, verifying every byte
    Restore(RestoreArgs),
    /// List a directory snapshot's entries without restoring
    Ls(LsArgs),
    /// Write one file of a directory snapshot to stdout
    Cat(CatArgs),
    /// Show paths added, removed and changed between two directory snapshots
    Diff(DiffArgs),
    /// Run one piece of repository work for the coordinator (in its task pods): the request is
    /// read from KANISTER_TASK, the answer printed as the phase output `taskResult`
    #[command(hide = true)]
    Task,
}

#[derive(Debug, Args)]
struct BackupArgs {
    /// The directory to back up (symlinks in it are recorded, never followed)
    path: PathBuf,
    /// Tag the snapshot (repeatable); the parent is the latest snapshot with the same tags and path
    #[arg(long = "tag", short = 't', value_name = "K=V")]
    tags: Vec<String>,
    /// Choose the parent among snapshots carrying these tags (repeatable; they may carry
    /// others), instead of those with exactly the --tag tags
    #[arg(long = "match-tag", value_name = "K=V", conflicts_with = "parent")]
    match_tags: Vec<String>,
    /// Use this snapshot as the parent instead
    #[arg(long)]
    parent: Option<String>,
    /// Create the repository (default parameters) if the store holds none yet: the first
    /// backup to a new location, as task pods make it
    #[arg(long)]
    create: bool,
    /// Also print the result as Kanister phase outputs (`###Phase-output###` lines: backupID,
    /// fileCount, size, phySize), for blueprints and task pods
    #[arg(long)]
    phase_output: bool,
    /// Read every file, even those the parent says are unchanged
    #[arg(long)]
    force: bool,
    /// Host name recorded in the snapshot (default: this host)
    #[arg(long)]
    hostname: Option<String>,
    /// Packs uploaded at once (default: 2 for file://, 4 otherwise)
    #[arg(long)]
    uploads: Option<usize>,
}

#[derive(Debug, Args)]
struct RestoreArgs {
    /// Snapshot id (or a unique prefix)
    snapshot: String,
    /// Target directory (created if missing; existing unrelated files are kept)
    target: PathBuf,
    /// Restore only paths matching this glob, relative to the snapshot's top (repeatable)
    #[arg(long, value_name = "GLOB")]
    include: Vec<String>,
    /// Skip paths matching this glob (repeatable)
    #[arg(long, value_name = "GLOB")]
    exclude: Vec<String>,
    /// Delete files in the target that are not in the snapshot
    #[arg(long)]
    delete: bool,
}

#[derive(Debug, Args)]
struct LsArgs {
    /// Snapshot id (or a unique prefix)
    snapshot: String,
    /// Directory or file inside the snapshot (default: its top)
    #[arg(default_value = "")]
    path: String,
    /// Long format: type, mode, owner, size, mtime
    #[arg(short = 'l', long)]
    long: bool,
}

#[derive(Debug, Args)]
struct CatArgs {
    /// Snapshot id (or a unique prefix)
    snapshot: String,
    /// File inside the snapshot
    path: String,
}

#[derive(Debug, Args)]
struct DiffArgs {
    /// The older snapshot
    first: String,
    /// The newer snapshot
    second: String,
}

#[derive(Debug, Subcommand)]
enum RepoCommand {
    /// Create a repository: a random master key, wrapped by the passphrase or key file
    Init(InitArgs),
    /// Make the index agree with the packs in the store: index packs no index names, drop
    /// entries of packs that are gone, re-index packs whose size changed. Deletes no pack
    RepairIndex {
        /// How long to wait for a running prune to finish
        #[arg(long, default_value = "1m", value_parser = humantime::parse_duration)]
        wait_lock: Duration,
    },
}

#[derive(Debug, Args)]
struct InitArgs {
    /// Average chunk size (min is a quarter, max four times). Fixed for the repository's life
    #[arg(long, default_value = "64KiB", value_parser = parse_size)]
    chunk_size: u64,
    /// Target pack object size
    #[arg(long, default_value = "8MiB", value_parser = parse_size)]
    pack_size: u64,
    /// zstd compression level (1 fastest .. 19 smallest)
    #[arg(long, default_value_t = kanister_repo::config::DEFAULT_COMPRESSION_LEVEL, allow_negative_numbers = true)]
    compression: i32,
}

#[derive(Debug, Args)]
struct PushArgs {
    /// Tag the snapshot (repeatable): --tag namespace=mysql-test --tag action=backup
    #[arg(long = "tag", short = 't', value_name = "K=V")]
    tags: Vec<String>,
    /// Host name recorded in the snapshot (default: this host)
    #[arg(long)]
    hostname: Option<String>,
    /// CPU workers (default: all cores)
    #[arg(long)]
    workers: Option<usize>,
    /// Packs uploaded at once (default: 2 for file://, 4 otherwise)
    #[arg(long)]
    uploads: Option<usize>,
    /// Store a database dump even when it lacks its tool's end line (by default a stream that
    /// starts like a mysqldump, pg_dump or pg_dumpall dump but was cut off is refused)
    #[arg(long)]
    accept_incomplete_dump: bool,
    /// Read the stream from this command's stdout; a non-zero exit fails the push and writes no
    /// snapshot. Everything after --exec is the command
    #[arg(long, num_args = 1.., allow_hyphen_values = true, value_name = "CMD", conflicts_with = "input")]
    exec: Vec<String>,
    /// Read the stream from this file ("-" or nothing: stdin)
    #[arg(value_name = "INPUT")]
    input: Option<String>,
}

#[derive(Debug, Args)]
struct PullArgs {
    /// Snapshot id (or a unique prefix of it)
    snapshot: String,
    /// Where to write: a file (written whole, then renamed into place) or "-" for stdout
    #[arg(default_value = "-")]
    output: String,
    /// Range requests in flight
    #[arg(long, default_value_t = 4)]
    fetches: usize,
}

#[derive(Debug, Args)]
struct SnapshotsArgs {
    /// Only snapshots with this tag (repeatable; all must match)
    #[arg(long = "tag", short = 't', value_name = "K=V")]
    tags: Vec<String>,
    /// Output format
    #[arg(long, short = 'o', default_value = "table", value_parser = ["table", "json"])]
    output: String,
}

#[derive(Debug, Args)]
struct ForgetArgs {
    /// Snapshot ids (or unique prefixes)
    #[arg(required = true)]
    snapshots: Vec<String>,
}

#[derive(Debug, Args)]
struct PruneArgs {
    /// How long unused packs wait between being set aside and deleted
    #[arg(long, default_value = "1h", value_parser = humantime::parse_duration)]
    grace_period: Duration,
    /// Report what would be set aside; change nothing
    #[arg(long)]
    dry_run: bool,
    /// How long to wait for another prune (or index repair) of the repository to finish
    #[arg(long, default_value = "1m", value_parser = humantime::parse_duration)]
    wait_lock: Duration,
}

#[derive(Debug, Args)]
struct MaintainArgs {
    /// How long unused packs wait between being set aside and deleted
    #[arg(long, default_value = "1h", value_parser = humantime::parse_duration)]
    grace_period: Duration,
    /// How long to wait for another maintenance of the repository to finish; past it, this
    /// one is skipped (nothing changed, exit 0, `skipped` says why)
    #[arg(long, default_value = "0s", value_parser = humantime::parse_duration)]
    wait_lock: Duration,
    /// Also print the result as Kanister phase outputs (`###Phase-output###` lines:
    /// bytesFreed, packsDeleted, leftoversDeleted, snapshots, checkErrors, skipped), for task pods
    #[arg(long)]
    phase_output: bool,
}

#[derive(Debug, Args)]
struct CheckArgs {
    /// Download every pack and verify every blob
    #[arg(long)]
    read_data: bool,
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
        Error::Store(crate::store::StoreError::BadUrl {
            url: String::new(),
            reason: "no store given: pass --store URL or set KANISTER_STORE".into(),
        })
    })?;
    let options = g
        .store_options
        .iter()
        .filter(|o| !o.trim().is_empty())
        .map(|o| {
            o.split_once('=').map(|(k, v)| (k.trim().to_string(), v.trim().to_string())).ok_or_else(|| {
                Error::Store(crate::store::StoreError::BadOption {
                    key: o.clone(),
                    reason: "expected key=value".into(),
                })
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
    Repository::at(store(g)?).open(&key).await
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
        Command::Repo { command: RepoCommand::Init(a) } => {
            let key = repo_key(g)?;
            let opts = InitOptions {
                chunker: ChunkerParams::with_average(u32::try_from(a.chunk_size).unwrap_or(u32::MAX)),
                pack_size: u32::try_from(a.pack_size).unwrap_or(u32::MAX),
                compression_level: a.compression,
                ..InitOptions::default()
            };
            let repo = Repository::at(store(g)?).init(&key, &opts).await?;
            let c = repo.config();
            if g.json {
                print_json(&json!({"repository_id": c.id, "store": repo.store().to_string(), "config": c}), false);
            } else {
                println!("created repository {} at {}", c.id, repo.store());
                println!(
                    "  chunks {} average ({} .. {}), packs {}, zstd level {}",
                    human_bytes(c.chunker.avg_size.into()),
                    human_bytes(c.chunker.min_size.into()),
                    human_bytes(c.chunker.max_size.into()),
                    human_bytes(c.pack_size.into()),
                    c.compression_level
                );
                println!("Keep the passphrase or key file safe: without it no backup in this repository can be read.");
            }
        }
        Command::Repo { command: RepoCommand::RepairIndex { wait_lock } } => {
            let repo = open(g).await?;
            let r = crate::repair::repair_index(&repo, *wait_lock).await?;
            if g.json {
                print_json(&serde_json::to_value(&r).expect("report serializes"), false);
            } else {
                println!("indexed {} pack(s) that were in no index", r.packs_indexed);
                for p in &r.missing_packs_dropped {
                    println!("dropped the entries of {p}: the store does not hold it");
                }
                for p in &r.packs_reindexed {
                    println!("re-indexed {p} from its trailer: its size differed from the index");
                }
                for p in &r.unreadable_packs {
                    println!("warning: {p} has an unreadable trailer: run `kanister-agent check --read-data`");
                }
                if r.damaged_indexes_replaced > 0 {
                    println!("replaced {} damaged index object(s)", r.damaged_indexes_replaced);
                }
                if !r.changed() {
                    println!("the index already agrees with the store: nothing changed");
                }
            }
        }
        Command::Push(a) => {
            let repo = open(g).await?;
            let tags = parse_tags(&a.tags)
                .map_err(|e| Error::io(e, std::io::Error::from(std::io::ErrorKind::InvalidInput)))?;
            let remote = !repo.store().to_string().starts_with("file://");
            let mut opts = crate::push::PushOptions { tags, ..Default::default() };
            if let Some(h) = &a.hostname {
                opts.hostname = h.clone();
            }
            if let Some(w) = a.workers {
                opts.workers = w;
            }
            opts.uploads = a.uploads.unwrap_or(if remote { 4 } else { 2 });
            opts.check_dump = !a.accept_incomplete_dump;
            let source = if !a.exec.is_empty() {
                crate::push::Source::Command(a.exec.clone())
            } else {
                match a.input.as_deref() {
                    None | Some("-") => crate::push::Source::Reader(Box::new(std::io::stdin())),
                    Some(path) => crate::push::Source::Reader(Box::new(
                        std::fs::File::open(path).map_err(|e| Error::io(format!("cannot open {path}"), e))?,
                    )),
                }
            };
            let progress = Progress::new();
            let status = StatusLine::start(progress.clone(), "read", g.json);
            let stats = crate::push::push(&repo, source, &opts, progress).await;
            drop(status);
            let stats = stats?;
            if g.json {
                print_json(&serde_json::to_value(&stats).expect("stats serialize"), false);
            } else {
                println!("snapshot {} saved", stats.snapshot_id);
                println!(
                    "  read {} in {:.1}s ({}/s), {} chunks",
                    human_bytes(stats.bytes_read),
                    stats.duration_secs,
                    human_bytes(stats.throughput_bytes_per_sec as u64),
                    stats.chunks
                );
                println!(
                    "  new {} ({:.1}% deduplicated), uploaded {} in {} pack(s)",
                    human_bytes(stats.bytes_new),
                    stats.dedup_ratio * 100.0,
                    human_bytes(stats.bytes_uploaded),
                    stats.packs_uploaded
                );
            }
        }
        Command::Pull(a) => {
            let repo = open(g).await?;
            let id = repo.resolve_snapshot(&a.snapshot).await?;
            let progress = Progress::new();
            let workers = std::thread::available_parallelism().map_or(2, |n| n.get());
            let to_stdout = a.output == "-";
            let stats = if to_stdout {
                crate::pull::pull(&repo, &id, stdout_file()?, a.fetches, workers, progress).await?.0
            } else {
                pull_to_file(&repo, &id, &a.output, a.fetches, workers, progress, g.json).await?
            };
            if g.json {
                print_json(&serde_json::to_value(&stats).expect("stats serialize"), to_stdout);
            } else {
                let msg = format!(
                    "restored snapshot {} ({} in {:.1}s, {}/s)",
                    stats.snapshot_id.short(),
                    human_bytes(stats.bytes_written),
                    stats.duration_secs,
                    human_bytes(stats.throughput_bytes_per_sec as u64)
                );
                if to_stdout { eprintln!("{msg}") } else { println!("{msg}") }
            }
        }
        Command::Snapshots(a) => {
            let repo = open(g).await?;
            let filter = parse_tags(&a.tags)
                .map_err(|e| Error::io(e, std::io::Error::from(std::io::ErrorKind::InvalidInput)))?;
            let mut rows = Vec::new();
            for (id, s) in repo.snapshots().await? {
                match s {
                    Ok(s) if has_tags(&s, &filter) => rows.push((id, s)),
                    Ok(_) => {}
                    Err(e) => tracing::warn!(snapshot = %id, error = %e, "skipping an unreadable snapshot"),
                }
            }
            rows.sort_by(|a, b| a.1.time.cmp(&b.1.time).then(a.0.cmp(&b.0)));
            if g.json || a.output == "json" {
                let list: Vec<_> = rows
                    .iter()
                    .map(|(id, s)| {
                        json!({"id": id, "short_id": id.short(), "time": s.time, "hostname": s.hostname,
                               "tags": s.tags, "size": s.size, "stats": s.stats, "kind": "stream"})
                    })
                    .collect();
                print_json(&json!({ "snapshots": list }), false);
            } else {
                println!("{:<10} {:<21} {:<20} {:>11}  TAGS", "ID", "TIME", "HOST", "SIZE");
                for (id, s) in &rows {
                    let tags: Vec<String> = s.tags.iter().map(|(k, v)| format!("{k}={v}")).collect();
                    let time = format!("{}Z", s.time.get(..19).unwrap_or(&s.time));
                    println!(
                        "{:<10} {:<21} {:<20} {:>11}  {}",
                        id.short(),
                        time,
                        s.hostname,
                        human_bytes(s.size),
                        tags.join(",")
                    );
                }
                println!("{} snapshot(s)", rows.len());
            }
        }
        Command::Forget(a) => {
            let repo = open(g).await?;
            let mut removed = Vec::new();
            for p in &a.snapshots {
                let id = repo.resolve_snapshot(p).await?;
                repo.store().delete(&format!("{}/{id}", crate::repository::SNAPSHOTS)).await?;
                removed.push(id);
            }
            if g.json {
                print_json(&json!({ "removed": removed }), false);
            } else {
                for id in &removed {
                    println!("removed snapshot {}", id.short());
                }
                println!("run `kanister-agent prune` to free the space they used");
            }
        }
        Command::Prune(a) => {
            let repo = open(g).await?;
            let r = crate::prune::prune(
                &repo,
                &crate::prune::PruneOptions { grace: a.grace_period, dry_run: a.dry_run, wait_lock: a.wait_lock },
            )
            .await?;
            if g.json {
                print_json(&serde_json::to_value(&r).expect("report serializes"), false);
            } else {
                let verb = if a.dry_run { "would set aside" } else { "set aside" };
                println!("{verb} {} unused pack(s) ({})", r.packs_set_aside, human_bytes(r.bytes_set_aside));
                println!(
                    "deleted {} pack(s) ({}), restored {}",
                    r.packs_deleted,
                    human_bytes(r.bytes_deleted),
                    r.packs_restored
                );
                if r.packs_waiting > 0 {
                    println!("{} pack(s) waiting: {}", r.packs_waiting, r.waiting_reason.as_deref().unwrap_or(""));
                }
                if r.bytes_unused_in_used_packs > 0 {
                    println!(
                        "{} of unused data remains inside packs still in use",
                        human_bytes(r.bytes_unused_in_used_packs)
                    );
                }
            }
        }
        Command::Serve(a) => {
            let defaults = crate::service::RepoDefaults {
                store: if g.store.is_some() { Some(store(g)?) } else { None },
                key: match repo_key(g) {
                    Ok(k) => Some(k),
                    Err(Error::NoCredential) => None,
                    Err(e) => return Err(e),
                },
            };
            crate::service::run(a, defaults).await?;
        }
        Command::Maintain(a) => {
            let started = std::time::Instant::now();
            let skip = |why: String| -> Result<ExitCode> {
                if a.phase_output {
                    println!("{}", crate::kando::output_line("skipped", &why)?);
                }
                if g.json {
                    print_json(&json!({ "skipped": why }), false);
                } else {
                    println!("skipped: {why}");
                }
                Ok(ExitCode::SUCCESS)
            };
            // Nothing to maintain where no backup was ever made.
            let repo = match open(g).await {
                Err(Error::NotARepository(at)) => return skip(format!("no repository at {at}")),
                r => r?,
            };
            let opts = crate::prune::PruneOptions { grace: a.grace_period, dry_run: false, wait_lock: a.wait_lock };
            let prune = match crate::prune::prune(&repo, &opts).await {
                Err(Error::Busy(who)) => return skip(format!("another maintenance is running: {who}")),
                r => r?,
            };
            let check = crate::check::check(&repo, false).await?;
            let secs = started.elapsed().as_secs_f64();
            if a.phase_output {
                for (key, value) in [
                    ("bytesFreed", (prune.bytes_deleted + prune.bytes_leftovers).to_string()),
                    ("packsDeleted", prune.packs_deleted.to_string()),
                    ("leftoversDeleted", prune.leftovers_deleted.to_string()),
                    ("packsWaiting", prune.packs_waiting.to_string()),
                    ("snapshots", check.snapshots.to_string()),
                    ("checkErrors", check.errors.len().to_string()),
                    ("lockedFrom", prune.locked_from.clone()),
                    ("lockedTo", prune.locked_to.clone()),
                    ("heldFromMs", prune.held_ms.0.to_string()),
                    ("heldToMs", prune.held_ms.1.to_string()),
                ] {
                    println!("{}", crate::kando::output_line(key, &value)?);
                }
            }
            if g.json {
                print_json(&json!({"prune": prune, "check": check, "duration_secs": secs}), false);
            } else {
                println!(
                    "pruned: deleted {} pack(s) ({}), {} leftover(s) ({}); {} set aside, {} waiting",
                    prune.packs_deleted,
                    human_bytes(prune.bytes_deleted),
                    prune.leftovers_deleted,
                    human_bytes(prune.bytes_leftovers),
                    prune.packs_set_aside,
                    prune.packs_waiting
                );
                for p in &check.errors {
                    println!("error: {} {}", p.object, p.problem);
                }
                println!(
                    "checked {} snapshot(s): {} in {secs:.1}s",
                    check.snapshots,
                    if check.ok { "no errors".to_string() } else { format!("{} error(s)", check.errors.len()) }
                );
            }
            if !check.ok {
                return Ok(ExitCode::from(EXIT_DAMAGED));
            }
        }
        Command::Task => {
            let text = std::env::var(crate::task::REQUEST_ENV).map_err(|_| {
                Error::io(
                    format!(
                        "{} is not set: `kanister-agent task` runs in the coordinator's task pods",
                        crate::task::REQUEST_ENV
                    ),
                    std::io::ErrorKind::InvalidInput.into(),
                )
            })?;
            let request = crate::task::decode_request(&text)?;
            let result = crate::task::run(store(g)?, &repo_key(g)?, request).await?;
            println!("{}", crate::task::result_line(&result)?);
        }
        Command::Check(a) => {
            let repo = open(g).await?;
            let r = crate::check::check(&repo, a.read_data).await?;
            if g.json {
                print_json(&serde_json::to_value(&r).expect("report serializes"), false);
            } else {
                for p in &r.warnings {
                    println!("warning: {} {}", p.object, p.problem);
                }
                for p in &r.errors {
                    let snaps = if p.snapshots.is_empty() {
                        String::new()
                    } else {
                        format!(" (affects snapshots {})", p.snapshots.join(", "))
                    };
                    println!("error: {} {}{snaps}", p.object, p.problem);
                }
                println!(
                    "checked {} snapshot(s), {} pack(s), {} blob(s){}: {}",
                    r.snapshots,
                    r.packs,
                    r.blobs,
                    if a.read_data { format!(", read {}", human_bytes(r.bytes_read)) } else { String::new() },
                    if r.ok { "no errors".to_string() } else { format!("{} error(s)", r.errors.len()) }
                );
            }
            if !r.ok {
                return Ok(ExitCode::from(EXIT_DAMAGED));
            }
        }
        Command::Backup(a) => {
            let repo =
                if a.create { Repository::at(store(g)?).open_or_init(&repo_key(g)?).await? } else { open(g).await? };
            let tags = parse_tags(&a.tags)
                .map_err(|e| Error::io(e, std::io::Error::from(std::io::ErrorKind::InvalidInput)))?;
            let remote = !repo.store().to_string().starts_with("file://");
            let mut opts = crate::tree::BackupOptions { tags, force: a.force, ..Default::default() };
            if let Some(h) = &a.hostname {
                opts.hostname = h.clone();
            }
            if let Some(p) = &a.parent {
                opts.parent = Some(repo.resolve_snapshot(p).await?);
            }
            if !a.match_tags.is_empty() {
                opts.parent_tags = Some(
                    parse_tags(&a.match_tags)
                        .map_err(|e| Error::io(e, std::io::Error::from(std::io::ErrorKind::InvalidInput)))?,
                );
            }
            opts.uploads = a.uploads.unwrap_or(if remote { 4 } else { 2 });
            let progress = Progress::new();
            let status = StatusLine::start(progress.clone(), "read", g.json);
            let stats = crate::tree::backup(&repo, &a.path, &opts, progress).await;
            drop(status);
            let stats = stats?;
            if a.phase_output {
                let files = (stats.files_read + stats.files_reused).to_string();
                for (key, value) in [
                    ("backupID", stats.snapshot_id.to_string()),
                    ("fileCount", files),
                    ("size", stats.bytes_total.to_string()),
                    ("phySize", stats.bytes_uploaded.to_string()),
                ] {
                    println!("{}", crate::kando::output_line(key, &value)?);
                }
            }
            if g.json {
                print_json(&serde_json::to_value(&stats).expect("stats serialize"), false);
            } else {
                println!("snapshot {} saved{}", stats.snapshot_id, if stats.partial { " (PARTIAL)" } else { "" });
                if let Some(p) = &stats.parent {
                    println!("  parent {}", p.short());
                }
                println!(
                    "  files: {} read, {} unchanged (not opened), {} new; {} directories",
                    stats.files_read, stats.files_reused, stats.files_new, stats.dirs
                );
                println!(
                    "  {} in files, {} read, {} new, {} uploaded, in {:.1}s",
                    human_bytes(stats.bytes_total),
                    human_bytes(stats.bytes_read),
                    human_bytes(stats.bytes_new),
                    human_bytes(stats.bytes_uploaded),
                    stats.duration_secs
                );
                for w in &stats.warnings {
                    println!("warning: {w}");
                }
                for c in &stats.changed {
                    println!("changed while read: {c}");
                }
                for e in &stats.errors {
                    println!("not backed up: {e}");
                }
            }
            if stats.partial {
                return Ok(ExitCode::from(EXIT_PARTIAL));
            }
        }
        Command::Restore(a) => {
            let repo = open(g).await?;
            let id = repo.resolve_snapshot(&a.snapshot).await?;
            let opts = crate::tree::RestoreOptions {
                include: a.include.clone(),
                exclude: a.exclude.clone(),
                delete: a.delete,
            };
            let progress = Progress::new();
            let status = StatusLine::start(progress.clone(), "wrote", g.json);
            let stats = crate::tree::restore(&repo, &id, &a.target, &opts, progress).await;
            drop(status);
            let stats = stats?;
            if g.json {
                print_json(&serde_json::to_value(&stats).expect("stats serialize"), false);
            } else {
                println!(
                    "restored snapshot {} into {}: {} files, {} directories, {} other, {} in {:.1}s",
                    id.short(),
                    a.target.display(),
                    stats.files,
                    stats.dirs,
                    stats.others,
                    human_bytes(stats.bytes_written),
                    stats.duration_secs
                );
                if stats.deleted > 0 {
                    println!("  deleted {} entries not in the snapshot", stats.deleted);
                }
                for w in &stats.warnings {
                    println!("warning: {w}");
                }
            }
        }
        Command::Ls(a) => {
            let repo = open(g).await?;
            let id = repo.resolve_snapshot(&a.snapshot).await?;
            let nodes = crate::tree::browse::ls(&repo, &id, &a.path).await?;
            if g.json {
                print_json(&json!({ "entries": nodes }), false);
            } else {
                for n in &nodes {
                    if a.long {
                        println!("{}", crate::tree::browse::long_line(n));
                    } else {
                        let slash = if n.kind == kanister_repo::tree::NodeKind::Dir { "/" } else { "" };
                        println!("{}{slash}", crate::tree::display_name(&n.name));
                    }
                }
            }
        }
        Command::Cat(a) => {
            let repo = open(g).await?;
            let id = repo.resolve_snapshot(&a.snapshot).await?;
            let out = crate::tree::browse::cat(&repo, &id, &a.path, stdout_file()?).await?;
            let mut out = out;
            std::io::Write::flush(&mut out).map_err(|e| Error::io("writing the output failed", e))?;
        }
        Command::Diff(a) => {
            let repo = open(g).await?;
            let (x, y) = (repo.resolve_snapshot(&a.first).await?, repo.resolve_snapshot(&a.second).await?);
            let d = crate::tree::browse::diff(&repo, &x, &y).await?;
            if g.json {
                print_json(&serde_json::to_value(&d).expect("diff serializes"), false);
            } else {
                d.added.iter().for_each(|p| println!("+ {p}"));
                d.removed.iter().for_each(|p| println!("- {p}"));
                d.changed.iter().for_each(|p| println!("M {p}"));
                println!("{} added, {} removed, {} changed", d.added.len(), d.removed.len(), d.changed.len());
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

async fn pull_to_file(
    repo: &Repository,
    id: &kanister_repo::SnapshotId,
    path: &str,
    fetches: usize,
    workers: usize,
    progress: Arc<Progress>,
    quiet: bool,
) -> Result<crate::pull::PullStats> {
    // Written under a temporary name and renamed when complete: a failed pull leaves nothing.
    let target = PathBuf::from(path);
    let dir = target.parent().filter(|p| !p.as_os_str().is_empty()).map_or_else(|| PathBuf::from("."), PathBuf::from);
    let name = target.file_name().and_then(|n| n.to_str()).unwrap_or("pull");
    let tmp = dir.join(format!(".{name}.partial-{}", std::process::id()));
    let file = std::fs::File::create(&tmp).map_err(|e| Error::io(format!("cannot create {}", tmp.display()), e))?;
    let status = StatusLine::start(progress.clone(), "wrote", quiet);
    let r =
        crate::pull::pull(repo, id, std::io::BufWriter::with_capacity(1 << 20, file), fetches, workers, progress).await;
    drop(status);
    let finish = || -> Result<crate::pull::PullStats> {
        let (stats, out) = r?;
        let file = out.into_inner().map_err(|e| Error::io("cannot flush the output", e.into_error()))?;
        file.sync_all().map_err(|e| Error::io("cannot flush the output", e))?;
        std::fs::rename(&tmp, &target).map_err(|e| Error::io(format!("cannot rename into {path}"), e))?;
        Ok(stats)
    };
    let res = finish();
    if res.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    res
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
