//! The crate's error type.

use std::io;
use std::path::PathBuf;

use dfs_transport::NodeId;

/// Everything a [`FileServer`](crate::FileServer) operation can fail with.
///
/// Match on [`ServerError::NotFound`] and [`ServerError::WrongKey`] to tell "nobody has it"
/// and "it exists but this node cannot decrypt it" from failures.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ServerError {
    /// Neither this node nor any connected peer holds the file. (A node with another data
    /// key cannot even address a file: its name maps to a different opaque id.)
    #[error(
        "file {name:?} not found on this node or any connected peer \
         (files stored under another data key cannot be addressed with this one)"
    )]
    NotFound {
        /// The file name.
        name: String,
    },

    /// The file exists but was encrypted under another data key.
    #[error("file {name:?} was encrypted with a different data key; this node cannot decrypt it")]
    WrongKey {
        /// The file name.
        name: String,
    },

    /// Fewer peers than required acknowledged a durable copy in time. The local copy is
    /// stored and durable.
    #[error(
        "file {name:?} stored locally but only {} of {wanted} replicas acknowledged{}",
        acked.len(),
        failure_list(failed)
    )]
    ReplicationIncomplete {
        /// The file name.
        name: String,
        /// How many acknowledgements were required.
        wanted: usize,
        /// The peers that did acknowledge.
        acked: Vec<NodeId>,
        /// The peers that were tried and failed, with the last reason of each.
        failed: Vec<(NodeId, String)>,
    },

    /// Some connected peers did not confirm a network-wide delete. The local copy is gone.
    #[error("file {name:?} deleted locally but {} peers did not confirm", failed.len())]
    DeleteIncomplete {
        /// The file name.
        name: String,
        /// The peers that failed or timed out.
        failed: Vec<NodeId>,
    },

    /// Every peer that had the file failed to deliver a verified copy (died mid-transfer,
    /// timed out, or served corrupt bytes). Nothing was committed.
    #[error(
        "file {name:?}: {attempts} peers had it but none delivered a verified copy; last error: {last}"
    )]
    FetchFailed {
        /// The file name.
        name: String,
        /// How many peers were tried.
        attempts: usize,
        /// The last peer's error.
        last: String,
    },

    /// A peer answered with an error or broke the protocol.
    #[error("peer {peer}: {message}")]
    Remote {
        /// The peer.
        peer: NodeId,
        /// What it said or did.
        message: String,
    },

    /// Something did not happen in time.
    #[error("timed out {what}")]
    Timeout {
        /// What was awaited.
        what: String,
    },

    /// A stored object is not in this server's object format.
    #[error("object {id} is not a dfs-server object: {reason}")]
    BadObject {
        /// The object's store key.
        id: String,
        /// What is wrong.
        reason: String,
    },

    /// The server is shutting down (or was shut down) and takes no new work.
    #[error("the file server is shutting down")]
    ShuttingDown,

    /// A file in the node's root (node id, data key) is malformed.
    #[error("malformed file {path}: {reason}")]
    BadRootFile {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },

    /// The operating system's random number generator failed.
    #[error("random number generator failed: {reason}")]
    Random {
        /// The generator's message.
        reason: String,
    },

    /// A file-system operation of the server itself failed.
    #[error("i/o error while trying to {op} {path}")]
    Io {
        /// What the server was doing.
        op: &'static str,
        /// The path involved.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: io::Error,
    },

    /// Reading the caller's data failed; nothing was committed.
    #[error("reading the data to store for {name:?} failed")]
    Source {
        /// The file name.
        name: String,
        /// The reader's error.
        #[source]
        source: io::Error,
    },

    /// A background task panicked or was cancelled.
    #[error("internal task failed: {reason}")]
    Task {
        /// What happened.
        reason: String,
    },

    /// The store failed.
    #[error(transparent)]
    Store(#[from] dfs_store::StoreError),

    /// The transport failed.
    #[error(transparent)]
    Transport(#[from] dfs_transport::TransportError),

    /// The cipher failed.
    #[error(transparent)]
    Crypto(#[from] dfs_crypto::CryptoError),
}

impl From<tokio::task::JoinError> for ServerError {
    fn from(err: tokio::task::JoinError) -> Self {
        ServerError::Task {
            reason: err.to_string(),
        }
    }
}

/// `Result` with [`ServerError`].
pub type Result<T, E = ServerError> = std::result::Result<T, E>;

/// `; peer X: reason; ...` for an error message, or nothing.
fn failure_list(failed: &[(NodeId, String)]) -> String {
    failed
        .iter()
        .map(|(peer, reason)| format!("; peer {peer}: {reason}"))
        .collect()
}
