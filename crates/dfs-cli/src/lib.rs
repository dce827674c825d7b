#![doc = include_str!("../README.md")]
#![forbid(unsafe_code)]

/// `eprintln!` that never panics: a message that cannot be written to stderr (`2>/dev/full`,
/// a closed pipe) is dropped, and the command still ends with the status its work deserves.
macro_rules! say {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stderr(), $($arg)*);
    }};
}
pub(crate) use say;

pub mod cli;
mod commands;
pub mod control;
mod crypt;
mod error;
mod keys;
mod output;
mod serve;

pub use error::{
    EXIT_AUTH, EXIT_FAILURE, EXIT_NOT_FOUND, EXIT_OK, EXIT_UNREACHABLE, EXIT_USAGE, Error, Result,
};

use cli::{Cli, Command};

/// Runs one `dfs` command to completion.
///
/// ```no_run
/// use clap::Parser;
/// let cli = dfs_cli::cli::Cli::parse_from(["dfs", "keygen", "--key-file", "/tmp/k", "--secret-file", "/tmp/s"]);
/// dfs_cli::run(cli)?;
/// # Ok::<(), dfs_cli::Error>(())
/// ```
pub fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Keygen(args) => {
            keys::keygen(&args.key_file, &args.secret_file, args.force)?;
            say!(
                "wrote data key {} and network secret {} (mode 0600; keep them private)",
                args.key_file.display(),
                args.secret_file.display()
            );
            Ok(())
        }
        Command::Encrypt(args) => crypt::run(
            crypt::Direction::Encrypt,
            &args.key_file,
            args.cipher,
            args.input.as_deref(),
            args.output.as_deref(),
        )
        .map(drop),
        Command::Decrypt(args) => crypt::run(
            crypt::Direction::Decrypt,
            &args.key_file,
            args.cipher,
            args.input.as_deref(),
            args.output.as_deref(),
        )
        .map(drop),
        Command::Serve(args) => {
            build_runtime(tokio::runtime::Builder::new_multi_thread())?.block_on(serve::serve(args))
        }
        Command::Put(args) => client_runtime()?.block_on(commands::put(args)),
        Command::Get(args) => client_runtime()?.block_on(commands::get(args)),
        Command::Rm(args) => client_runtime()?.block_on(commands::rm(args)),
        Command::Ls(args) => client_runtime()?.block_on(commands::ls(args)),
        Command::Peers(args) => client_runtime()?.block_on(commands::peers(args)),
        Command::Status(args) => client_runtime()?.block_on(commands::status(args)),
        Command::Scrub(args) => client_runtime()?.block_on(commands::scrub(args)),
        Command::Replicate(args) => client_runtime()?.block_on(commands::replicate(args)),
    }
}

/// The runtime of a short client command (and of `encrypt`/`decrypt`): one thread.
pub(crate) fn client_runtime() -> Result<tokio::runtime::Runtime> {
    build_runtime(tokio::runtime::Builder::new_current_thread())
}

fn build_runtime(mut builder: tokio::runtime::Builder) -> Result<tokio::runtime::Runtime> {
    builder.enable_all().build().map_err(|source| Error::Io {
        context: "cannot start the async runtime".to_owned(),
        source,
    })
}
