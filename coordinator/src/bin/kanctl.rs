//! `kanctl`: the command line of Kanister (see [`kanister_coordinator::kanctl`]).

use std::io::IsTerminal as _;
use std::process::ExitCode;

use clap::Parser as _;
use kanister_coordinator::kanctl::{self, Cli, Io};

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    let _ = rustls::crypto::ring::default_provider().install_default();
    let (mut out, mut err) = (std::io::stdout(), std::io::stderr());
    let live = err.is_terminal();
    let mut io = Io { out: &mut out, err: &mut err, live };
    match kanctl::run(cli, std::env::var("KANCTL_TOKEN").ok(), &mut io).await {
        Ok(outcome) => ExitCode::from(outcome.exit_code()),
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(1)
        }
    }
}
