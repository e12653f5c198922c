use super::super::*;

#[derive(Debug, Args)]
pub(in crate::cli) struct LsArgs {
    /// Snapshot id (or a unique prefix)
    pub(in crate::cli) snapshot: String,
    /// Directory or file inside the snapshot (default: its top)
    #[arg(default_value = "")]
    pub(in crate::cli) path: String,
    /// Long format: type, mode, owner, size, mtime
    #[arg(short = 'l', long)]
    pub(in crate::cli) long: bool,
}

pub(in crate::cli) async fn run(g: &Global, a: &LsArgs) -> Result<ExitCode> {
    let repo = open(g).await?;
    let id = repo.resolve_snapshot(&a.snapshot).await?;
    let nodes = crate::tree::browse::ls(&repo, &id, &a.path).await?;
    if g.json {
        print_json(&json!({ "entries": nodes }), false);
    } else {
        for n in &nodes {
            if a.long {
                println!("{}", crate::tree::browse::long_line(n));
            } else {
                let slash = if n.kind == kanister_repo::tree::NodeKind::Dir { "/" } else { "" };
                println!("{}{slash}", crate::tree::display_name(&n.name));
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}
