use super::super::*;

#[derive(Debug, Args)]
pub(in crate::cli) struct PushArgs {
    /// Tag the snapshot (repeatable): --tag namespace=mysql-test --tag action=backup
    #[arg(long = "tag", short = 't', value_name = "K=V")]
    pub(in crate::cli) tags: Vec<String>,
    /// Host name recorded in the snapshot (default: this host)
    #[arg(long)]
    pub(in crate::cli) hostname: Option<String>,
    /// CPU workers (default: all cores)
    #[arg(long)]
    pub(in crate::cli) workers: Option<usize>,
    /// Packs uploaded at once (default: 2 for file://, 4 otherwise)
    #[arg(long)]
    pub(in crate::cli) uploads: Option<usize>,
    /// Store a database dump even when it lacks its tool's end line (by default a stream that
    /// starts like a mysqldump, pg_dump or pg_dumpall dump but was cut off is refused)
    #[arg(long)]
    pub(in crate::cli) accept_incomplete_dump: bool,
    /// Read the stream from this command's stdout; a non-zero exit fails the push and writes no
    /// snapshot. Everything after --exec is the command
    #[arg(long, num_args = 1.., allow_hyphen_values = true, value_name = "CMD", conflicts_with = "input")]
    pub(in crate::cli) exec: Vec<String>,
    /// Read the stream from this file ("-" or nothing: stdin)
    #[arg(value_name = "INPUT")]
    pub(in crate::cli) input: Option<String>,
}

pub(in crate::cli) async fn run(g: &Global, a: &PushArgs) -> Result<ExitCode> {
    let repo = open(g).await?;
    let tags = parse_tags(&a.tags).map_err(|e| Error::io(e, std::io::Error::from(std::io::ErrorKind::InvalidInput)))?;
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
    Ok(ExitCode::SUCCESS)
}
