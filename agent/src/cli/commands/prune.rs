use super::super::*;

#[derive(Debug, Args)]
pub(in crate::cli) struct PruneArgs {
    /// How long unused packs wait between being set aside and deleted
    #[arg(long, default_value = "1h", value_parser = humantime::parse_duration)]
    pub(in crate::cli) grace_period: Duration,
    /// Report what would be set aside; change nothing
    #[arg(long)]
    pub(in crate::cli) dry_run: bool,
    /// How long to wait for another prune (or index repair) of the repository to finish
    #[arg(long, default_value = "1m", value_parser = humantime::parse_duration)]
    pub(in crate::cli) wait_lock: Duration,
}

pub(in crate::cli) async fn run(g: &Global, a: &PruneArgs) -> Result<ExitCode> {
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
            println!("{} of unused data remains inside packs still in use", human_bytes(r.bytes_unused_in_used_packs));
        }
    }
    Ok(ExitCode::SUCCESS)
}
