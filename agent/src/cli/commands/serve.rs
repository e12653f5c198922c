use super::super::*;

pub(in crate::cli) async fn run(g: &Global, a: &crate::service::ServeArgs) -> Result<ExitCode> {
    let defaults = crate::service::RepoDefaults {
        store: if g.store.is_some() { Some(store(g)?) } else { None },
        key: match repo_key(g) {
            Ok(k) => Some(k),
            Err(Error::NoCredential) => None,
            Err(e) => return Err(e),
        },
    };
    crate::service::run(a, defaults).await?;
    Ok(ExitCode::SUCCESS)
}
