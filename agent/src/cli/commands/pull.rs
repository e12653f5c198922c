use super::super::*;

#[derive(Debug, Args)]
pub(in crate::cli) struct PullArgs {
    /// Snapshot id (or a unique prefix of it)
    pub(in crate::cli) snapshot: String,
    /// Where to write: a file (written whole, then renamed into place) or "-" for stdout
    #[arg(default_value = "-")]
    pub(in crate::cli) output: String,
    /// Range requests in flight
    #[arg(long, default_value_t = 4)]
    pub(in crate::cli) fetches: usize,
}

pub(in crate::cli) async fn run(g: &Global, a: &PullArgs) -> Result<ExitCode> {
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
    // No buffer in between: each batch of blobs (up to 2 MiB) is one `writev`.
    let r = crate::pull::pull(repo, id, crate::pull::WritebackFile::new(file), fetches, workers, progress).await;
    drop(status);
    let finish = || -> Result<crate::pull::PullStats> {
        let (stats, file) = r?;
        file.sync().map_err(|e| Error::io("cannot flush the output", e))?;
        std::fs::rename(&tmp, &target).map_err(|e| Error::io(format!("cannot rename into {path}"), e))?;
        Ok(stats)
    };
    let res = finish();
    if res.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    res
}
