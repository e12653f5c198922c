//! `kanister-agent`: the data mover's command line. See `kanister-agent --help`.

use std::process::ExitCode;

fn main() -> ExitCode {
    kanister_agent::cli::main()
}
