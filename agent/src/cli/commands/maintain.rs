use super::super::*;

#[derive(Debug, Args)]
pub(in crate::cli) struct MaintainArgs {
    /// How long unused packs wait between being set aside and deleted
    #[arg(long, default_value = "1h", value_parser = humantime::parse_duration)]
    pub(in crate::cli) grace_period: Duration,
    /// How long to wait for another maintenance of the repository to finish; past it, this
    /// one is skipped (nothing changed, exit 0, `skipped` says why)
    #[arg(long, default_value = "0s", value_parser = humantime::parse_duration)]
    pub(in crate::cli) wait_lock: Duration,
    /// Also print the result as Kanister phase outputs (`###Phase-output###` lines:
    /// bytesFreed, packsDeleted, leftoversDeleted, snapshots, checkErrors, skipped), for task pods
    #[arg(long)]
    pub(in crate::cli) phase_output: bool,
}

pub(in crate::cli) async fn run(g: &Global, a: &MaintainArgs) -> Result<ExitCode> {
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
    Ok(ExitCode::SUCCESS)
}
