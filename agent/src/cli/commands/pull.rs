use super::super::*;

#[derive(Debug, Args)]
pub(in crate::cli) struct PullArgs {
    /// Snapshot id (or a unique prefix of it)
    pub(in crate::cli) snapshot: String,
    /// Where to write: a file (written whole, then renamed into place; through a symlink, the
    /// file it leads to), a named pipe, or "-" (or /dev/stdout) for standard output
    #[arg(default_value = "-")]
    pub(in crate::cli) output: String,
    /// Range requests in flight to an object store; from a local disk, 4 times as many reads
    /// (each waits for the disk on a thread of its own)
    #[arg(long, default_value_t = 4)]
    pub(in crate::cli) fetches: usize,
}

pub(in crate::cli) async fn run(g: &Global, a: &PullArgs) -> Result<ExitCode> {
    let repo = open(g).await?;
    let id = repo.resolve_snapshot(&a.snapshot).await?;
    let progress = Progress::new();
    let workers = std::thread::available_parallelism().map_or(2, |n| n.get());
    // `-` or `/dev/stdout`: the data goes to standard output, and the report to standard error.
    let to_stdout = crate::pull::is_stdout(&a.output);
    let stats = if to_stdout {
        crate::pull::pull_to_stdout(&repo, &id, a.fetches, workers, progress).await?
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
    let status = StatusLine::start(progress.clone(), "wrote", quiet);
    let r = crate::pull::pull_to_path(repo, id, std::path::Path::new(path), fetches, workers, progress).await;
    drop(status);
    r
}
