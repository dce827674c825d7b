//! The crate's error type and the exit codes it maps to.

use std::io;
use std::path::PathBuf;

use crate::control::{ChannelError, RemoteError, RemoteErrorKind};

/// Everything that can go wrong in a `dfs` command.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// No node answers on the control socket.
    #[error(
        "node unreachable: cannot connect to {} (is `dfs serve` running with this --data directory?)",
        socket.display()
    )]
    NodeUnreachable {
        /// The control socket tried.
        socket: PathBuf,
        /// Why the connection failed.
        #[source]
        source: io::Error,
    },

    /// The node answered with an error.
    #[error(transparent)]
    Remote(RemoteError),

    /// The control channel broke.
    #[error(transparent)]
    Channel(#[from] ChannelError),

    /// The node said something that makes no sense here.
    #[error("control protocol error: {reason}")]
    Protocol {
        /// What was wrong.
        reason: String,
    },

    /// A local file could not be read or written.
    #[error("{context}")]
    Io {
        /// What was being done (names the file).
        context: String,
        /// The underlying error.
        #[source]
        source: io::Error,
    },

    /// A key or secret file is missing or malformed.
    #[error("bad key file {}: {reason}", path.display())]
    KeyFile {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },

    /// Encryption or decryption failed.
    #[error("{context}")]
    Crypto {
        /// What was being done.
        context: String,
        /// The underlying error.
        #[source]
        source: dfs_crypto::CryptoError,
    },

    /// A peer rejected this node's network secret (or the other way round).
    #[error(
        "cannot join the network at {addr}: {reason} (do both nodes use the same --secret-file?)"
    )]
    WrongSecret {
        /// The peer's address.
        addr: String,
        /// The handshake's complaint.
        reason: String,
    },

    /// The arguments do not make sense together.
    #[error("{message}")]
    Usage {
        /// What to fix.
        message: String,
    },

    /// A client command writing `-o FILE` was stopped by SIGINT or SIGTERM; its temporary
    /// file was removed.
    #[error("interrupted by {signal}; the partial output was removed")]
    Interrupted {
        /// The signal's name.
        signal: &'static str,
        /// The exit status: 128 + the signal's number.
        status: u8,
    },

    /// The node could not be started or failed while running.
    #[error("{context}")]
    Node {
        /// What was being done.
        context: String,
        /// The underlying error.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync + 'static>,
    },
}

/// `Result` with this crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Exit status: success.
pub const EXIT_OK: u8 = 0;
/// Exit status: any failure not listed below.
pub const EXIT_FAILURE: u8 = 1;
/// Exit status: bad command line (also what clap uses).
pub const EXIT_USAGE: u8 = 2;
/// Exit status: the named file does not exist in reach.
pub const EXIT_NOT_FOUND: u8 = 3;
/// Exit status: no node answers on the control socket.
pub const EXIT_UNREACHABLE: u8 = 4;
/// Exit status: wrong data key or wrong network secret (authentication failed).
pub const EXIT_AUTH: u8 = 5;
/// Exit status: stopped by SIGINT (128 + 2).
pub(crate) const EXIT_SIGINT: u8 = 130;
/// Exit status: stopped by SIGTERM (128 + 15).
pub(crate) const EXIT_SIGTERM: u8 = 143;

impl Error {
    /// The process exit status for this error.
    ///
    /// ```
    /// use dfs_cli::{Error, EXIT_USAGE};
    /// let err = Error::Usage { message: "no".into() };
    /// assert_eq!(err.exit_code(), EXIT_USAGE);
    /// ```
    pub fn exit_code(&self) -> u8 {
        match self {
            Error::NodeUnreachable { .. } => EXIT_UNREACHABLE,
            Error::Remote(err) => match err.kind {
                RemoteErrorKind::NotFound => EXIT_NOT_FOUND,
                RemoteErrorKind::WrongKey => EXIT_AUTH,
                _ => EXIT_FAILURE,
            },
            Error::Crypto { source, .. } if is_auth_failure(source) => EXIT_AUTH,
            Error::WrongSecret { .. } => EXIT_AUTH,
            Error::Usage { .. } => EXIT_USAGE,
            Error::Interrupted { status, .. } => *status,
            _ => EXIT_FAILURE,
        }
    }

    /// The error and all its sources on one line, `: `-separated, without repeats.
    ///
    /// ```
    /// use dfs_cli::Error;
    /// let err = Error::Io {
    ///     context: "cannot read big.iso".into(),
    ///     source: std::io::Error::other("permission denied"),
    /// };
    /// assert_eq!(err.one_line(), "cannot read big.iso: permission denied");
    /// ```
    pub fn one_line(&self) -> String {
        one_line(self)
    }
}

/// Formats `err` and its source chain on one line, skipping a source whose text the previous
/// message already contains (many errors repeat their source in their own message).
pub(crate) fn one_line(err: &(dyn std::error::Error + 'static)) -> String {
    let mut line = err.to_string();
    let mut source = err.source();
    while let Some(err) = source {
        let text = err.to_string();
        if !text.is_empty() && !line.contains(&text) {
            line.push_str(": ");
            line.push_str(&text);
        }
        source = err.source();
    }
    line.replace('\n', " ")
}

fn is_auth_failure(err: &dfs_crypto::CryptoError) -> bool {
    matches!(err, dfs_crypto::CryptoError::Authentication { .. })
}
