use super::super::*;

#[derive(Debug, Args)]
pub(in crate::cli) struct SnapshotsArgs {
    /// Only snapshots with this tag (repeatable; all must match)
    #[arg(long = "tag", short = 't', value_name = "K=V")]
    pub(in crate::cli) tags: Vec<String>,
    /// Output format
    #[arg(long, short = 'o', default_value = "table", value_parser = ["table", "json"])]
    pub(in crate::cli) output: String,
}

pub(in crate::cli) async fn run(g: &Global, a: &SnapshotsArgs) -> Result<ExitCode> {
    let repo = open(g).await?;
    let filter =
        parse_tags(&a.tags).map_err(|e| Error::io(e, std::io::Error::from(std::io::ErrorKind::InvalidInput)))?;
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
    Ok(ExitCode::SUCCESS)
}
