use super::super::*;

#[derive(Debug, Args)]
pub(in crate::cli) struct BackupArgs {
    /// The directory to back up (symlinks in it are recorded, never followed)
    pub(in crate::cli) path: PathBuf,
    /// Tag the snapshot (repeatable); the parent is the latest snapshot with the same tags and path
    #[arg(long = "tag", short = 't', value_name = "K=V")]
    pub(in crate::cli) tags: Vec<String>,
    /// Choose the parent among snapshots carrying these tags (repeatable; they may carry
    /// others), instead of those with exactly the --tag tags
    #[arg(long = "match-tag", value_name = "K=V", conflicts_with = "parent")]
    pub(in crate::cli) match_tags: Vec<String>,
    /// Use this snapshot as the parent instead
    #[arg(long)]
    pub(in crate::cli) parent: Option<String>,
    /// Create the repository (default parameters) if the store holds none yet: the first
    /// backup to a new location, as task pods make it
    #[arg(long)]
    pub(in crate::cli) create: bool,
    /// Also print the result as Kanister phase outputs (`###Phase-output###` lines: backupID,
    /// fileCount, size, phySize), for blueprints and task pods
    #[arg(long)]
    pub(in crate::cli) phase_output: bool,
    /// Read every file, even those the parent says are unchanged
    #[arg(long)]
    pub(in crate::cli) force: bool,
    /// Host name recorded in the snapshot (default: this host)
    #[arg(long)]
    pub(in crate::cli) hostname: Option<String>,
    /// Packs uploaded at once (default: 2 for file://, 4 otherwise)
    #[arg(long)]
    pub(in crate::cli) uploads: Option<usize>,
}

pub(in crate::cli) async fn run(g: &Global, a: &BackupArgs) -> Result<ExitCode> {
    let repo = if a.create {
        with_cache(g, Repository::at(store(g)?).open_or_init(&repo_key(g)?).await?)
    } else {
        open(g).await?
    };
    let tags = parse_tags(&a.tags).map_err(|e| Error::io(e, std::io::Error::from(std::io::ErrorKind::InvalidInput)))?;
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
    Ok(ExitCode::SUCCESS)
}
