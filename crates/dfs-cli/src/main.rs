//! The `dfs` command; see the `dfs_cli` crate docs.
#![forbid(unsafe_code)]

use std::io::Write;
use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let cli = dfs_cli::cli::Cli::parse();
    match dfs_cli::run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            // Never `eprintln!`: it panics (status 101) when stderr cannot be written.
            let _ = writeln!(std::io::stderr(), "dfs: error: {}", err.one_line());
            ExitCode::from(err.exit_code())
        }
    }
}
