use super::super::*;

#[derive(Debug, Args)]
pub(in crate::cli) struct DiffArgs {
    /// The older snapshot
    pub(in crate::cli) first: String,
    /// The newer snapshot
    pub(in crate::cli) second: String,
}

pub(in crate::cli) async fn run(g: &Global, a: &DiffArgs) -> Result<ExitCode> {
    let repo = open(g).await?;
    let (x, y) = (repo.resolve_snapshot(&a.first).await?, repo.resolve_snapshot(&a.second).await?);
    let d = crate::tree::browse::diff(&repo, &x, &y).await?;
    if g.json {
        print_json(&serde_json::to_value(&d).expect("diff serializes"), false);
    } else {
        d.added.iter().for_each(|p| println!("+ {p}"));
        d.removed.iter().for_each(|p| println!("- {p}"));
        d.changed.iter().for_each(|p| println!("M {p}"));
        println!("{} added, {} removed, {} changed", d.added.len(), d.removed.len(), d.changed.len());
    }
    Ok(ExitCode::SUCCESS)
}
