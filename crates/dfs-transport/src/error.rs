//! The crate's error type.

use std::io;
use std::time::Duration;

/// Everything that can go wrong in `dfs-transport`.
///
/// A bad peer (garbage, oversized frames, bad postcard, a forged frame, a stall) ends only the
/// connection it arrived on, with one of these errors; the endpoint and all other connections
/// carry on.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TransportError {
    /// An I/O operation failed.
    #[error("{context}: {source}")]
    Io {
        /// What was being done.
        context: &'static str,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
    /// An address could not be parsed or used.
    #[error("invalid address {addr:?}: {reason}")]
    InvalidAddress {
        /// The address as given.
        addr: String,
        /// Why it is invalid.
        reason: String,
    },
    /// A deadline passed.
    #[error("timed out after {after:?} while {what}")]
    Timeout {
        /// What was being waited for.
        what: &'static str,
        /// The configured limit.
        after: Duration,
    },
    /// The remote did not start with the dfs-transport magic bytes: not a dfs peer.
    #[error("bad magic {got:02x?}: the remote does not speak the dfs transport protocol")]
    BadMagic {
        /// The first bytes the remote sent.
        got: [u8; 8],
    },
    /// The remote speaks another protocol version.
    #[error("protocol version mismatch: ours is {ours}, the remote's is {theirs}")]
    VersionMismatch {
        /// Our version.
        ours: u16,
        /// The remote's version.
        theirs: u16,
    },
    /// Mutual authentication failed (wrong or missing network secret).
    #[error("authentication failed: {reason}")]
    AuthFailed {
        /// What did not match (never anything about the secret itself).
        reason: &'static str,
    },
    /// The handshake was malformed.
    #[error("malformed handshake: {reason}")]
    Handshake {
        /// What was wrong.
        reason: String,
    },
    /// A frame announced a length above the configured maximum (checked before allocating).
    #[error("frame of {len} bytes exceeds the maximum of {max} bytes")]
    FrameTooLarge {
        /// The announced (or attempted) payload length.
        len: u64,
        /// The maximum payload length.
        max: usize,
    },
    /// A message could not be encoded or decoded with postcard.
    #[error("could not {op} a message: {source}")]
    Decode {
        /// `"encode"` or `"decode"`.
        op: &'static str,
        /// The postcard error.
        #[source]
        source: postcard::Error,
    },
    /// A frame failed its integrity check: altered, injected, dropped or reordered on the path.
    #[error("frame {seq} failed its integrity check (altered, injected, dropped or reordered)")]
    Integrity {
        /// The sequence number the frame was expected to carry.
        seq: u64,
    },
    /// The remote broke the protocol (an unexpected or malformed frame).
    #[error("protocol violation: {reason}")]
    Protocol {
        /// What was wrong.
        reason: String,
    },
    /// The sender aborted a body; the bytes received so far are not a complete body.
    #[error("body aborted by the sender: {reason}")]
    Aborted {
        /// The sender's reason.
        reason: String,
    },
    /// A body source ended before its announced length.
    #[error("body ended after {got} of {expected} announced bytes")]
    ShortBody {
        /// Bytes actually available.
        got: u64,
        /// Bytes announced.
        expected: u64,
    },
    /// The remote refused the connection after authenticating it.
    #[error("connection refused by the remote: {reason}")]
    Rejected {
        /// The remote's reason.
        reason: String,
    },
    /// The connection (or the endpoint) is closed.
    #[error("connection closed")]
    Closed,
    /// An attempt to connect to ourselves.
    #[error("refusing to connect to ourselves at {addr}")]
    SelfDial {
        /// The address dialled.
        addr: String,
    },
    /// The dialled node is not the one expected.
    #[error("expected node {expected}, the remote is {got}")]
    WrongPeer {
        /// The node we wanted.
        expected: crate::NodeId,
        /// The node that answered.
        got: crate::NodeId,
    },
    /// A configuration value is out of range.
    #[error("invalid configuration: {reason}")]
    Config {
        /// What is wrong.
        reason: String,
    },
}

impl TransportError {
    pub(crate) fn io(context: &'static str, source: io::Error) -> Self {
        Self::Io { context, source }
    }

    pub(crate) fn protocol(reason: impl Into<String>) -> Self {
        Self::Protocol {
            reason: reason.into(),
        }
    }

    /// The `io::ErrorKind` this error maps to in `AsyncRead` implementations.
    pub(crate) fn io_kind(&self) -> io::ErrorKind {
        match self {
            Self::Io { source, .. } => source.kind(),
            Self::Timeout { .. } => io::ErrorKind::TimedOut,
            Self::Aborted { .. } => io::ErrorKind::ConnectionAborted,
            Self::Closed => io::ErrorKind::ConnectionReset,
            _ => io::ErrorKind::InvalidData,
        }
    }

    /// Map to an `io::Error` (for `AsyncRead` implementations), keeping `self` as the source.
    pub(crate) fn into_io(self) -> io::Error {
        io::Error::new(self.io_kind(), self)
    }
}

impl From<io::Error> for TransportError {
    fn from(source: io::Error) -> Self {
        Self::Io {
            context: "connection i/o",
            source,
        }
    }
}

/// The crate's result type.
pub type Result<T, E = TransportError> = std::result::Result<T, E>;
