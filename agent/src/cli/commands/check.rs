use super::super::*;

#[derive(Debug, Args)]
pub(in crate::cli) struct CheckArgs {
    /// Download every pack and verify every blob
    #[arg(long)]
    pub(in crate::cli) read_data: bool,
}

pub(in crate::cli) async fn run(g: &Global, a: &CheckArgs) -> Result<ExitCode> {
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
    Ok(ExitCode::SUCCESS)
}
