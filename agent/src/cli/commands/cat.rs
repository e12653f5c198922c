use super::super::*;

#[derive(Debug, Args)]
pub(in crate::cli) struct CatArgs {
    /// Snapshot id (or a unique prefix)
    pub(in crate::cli) snapshot: String,
    /// File inside the snapshot
    pub(in crate::cli) path: String,
}

pub(in crate::cli) async fn run(g: &Global, a: &CatArgs) -> Result<ExitCode> {
    let repo = open(g).await?;
    let id = repo.resolve_snapshot(&a.snapshot).await?;
    let out = crate::tree::browse::cat(&repo, &id, &a.path, stdout_file()?).await?;
    let mut out = out;
    std::io::Write::flush(&mut out).map_err(|e| Error::io("writing the output failed", e))?;
    Ok(ExitCode::SUCCESS)
}
