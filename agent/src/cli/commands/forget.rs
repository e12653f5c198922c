use super::super::*;

#[derive(Debug, Args)]
pub(in crate::cli) struct ForgetArgs {
    /// Snapshot ids (or unique prefixes)
    #[arg(required = true)]
    pub(in crate::cli) snapshots: Vec<String>,
}

pub(in crate::cli) async fn run(g: &Global, a: &ForgetArgs) -> Result<ExitCode> {
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
    Ok(ExitCode::SUCCESS)
}
