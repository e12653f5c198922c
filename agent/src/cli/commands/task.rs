use super::super::*;

pub(in crate::cli) async fn run(g: &Global) -> Result<ExitCode> {
    let text = std::env::var(crate::task::REQUEST_ENV).map_err(|_| {
        Error::io(
            format!(
                "{} is not set: `kanister-agent task` runs in the coordinator's task pods",
                crate::task::REQUEST_ENV
            ),
            std::io::ErrorKind::InvalidInput.into(),
        )
    })?;
    let request = crate::task::decode_request(&text)?;
    let result = crate::task::run(store(g)?, &repo_key(g)?, request).await?;
    println!("{}", crate::task::result_line(&result)?);
    Ok(ExitCode::SUCCESS)
}
