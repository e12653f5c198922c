use super::super::*;

#[derive(Debug, Args)]
pub(in crate::cli) struct RestoreArgs {
    /// Snapshot id (or a unique prefix)
    pub(in crate::cli) snapshot: String,
    /// Target directory (created if missing; existing unrelated files are kept)
    pub(in crate::cli) target: PathBuf,
    /// Restore only paths matching this glob, relative to the snapshot's top (repeatable)
    #[arg(long, value_name = "GLOB")]
    pub(in crate::cli) include: Vec<String>,
    /// Skip paths matching this glob (repeatable)
    #[arg(long, value_name = "GLOB")]
    pub(in crate::cli) exclude: Vec<String>,
    /// Delete files in the target that are not in the snapshot
    #[arg(long)]
    pub(in crate::cli) delete: bool,
}

pub(in crate::cli) async fn run(g: &Global, a: &RestoreArgs) -> Result<ExitCode> {
    let repo = open(g).await?;
    let id = repo.resolve_snapshot(&a.snapshot).await?;
    let opts = crate::tree::RestoreOptions { include: a.include.clone(), exclude: a.exclude.clone(), delete: a.delete };
    let progress = Progress::new();
    let status = StatusLine::start(progress.clone(), "wrote", g.json);
    let stats = crate::tree::restore(&repo, &id, &a.target, &opts, progress).await;
    drop(status);
    let stats = stats?;
    if g.json {
        print_json(&serde_json::to_value(&stats).expect("stats serialize"), false);
    } else {
        println!(
            "restored snapshot {} into {}: {} files, {} directories, {} other, {} in {:.1}s \
             (the last {:.1}s waiting for the disk)",
            id.short(),
            a.target.display(),
            stats.files,
            stats.dirs,
            stats.others,
            human_bytes(stats.bytes_written),
            stats.duration_secs,
            stats.sync_secs
        );
        if stats.deleted > 0 {
            println!("  deleted {} entries not in the snapshot", stats.deleted);
        }
        for w in &stats.warnings {
            println!("warning: {w}");
        }
    }
    Ok(ExitCode::SUCCESS)
}
