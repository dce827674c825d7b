//! The control socket: how `dfs` client commands reach a running node.
//!
//! `dfs serve` binds a Unix domain socket named [`SOCKET_FILE`] inside its data directory, mode
//! `0600` from the start (it is bound in a fresh `0700` directory, restricted, then renamed into
//! place), so only the node's user may drive the node: filesystem permissions are the access
//! control, no secret travels. Every accepted connection's peer credentials are checked as
//! well: a client running as another user (other than root) gets one [`Response::Error`] of
//! kind [`RemoteErrorKind::PermissionDenied`], its requests unread, and is disconnected.
//! Client commands (`dfs put`, `get`, `rm`, `ls`, `peers`, `status`, `scrub`, `replicate`) take
//! the same `--data DIR` as `serve` to find the socket.
//!
//! On the socket, each frame is a 4-byte big-endian length followed by a
//! [postcard](https://docs.rs/postcard)-encoded [`Request`] (client to node) or [`Response`]
//! (node to client); frames longer than [`MAX_FRAME_LEN`] are refused. A connection starts with
//! a [`Request::Hello`] / [`Response::Hello`] exchange (protocol version check) and then carries
//! any number of requests, one at a time. File bodies travel as [`Request::Chunk`] /
//! [`Response::Chunk`] frames of at most [`CHUNK_LEN`] bytes closed by an explicit `End`
//! frame, so neither side ever holds a whole file in memory, and a body cut short (a client
//! killed mid-upload, a node shutting down) can never be mistaken for a complete one.
//!
//! [`Client`] is the client side, used by the `dfs` commands and usable from Rust.

mod client;
pub(crate) mod daemon;

use std::io;
use std::path::{Path, PathBuf};

use bytes::Bytes;
use futures::{SinkExt, StreamExt};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_util::codec::{Framed, LengthDelimitedCodec};

pub use client::Client;

/// The name of the control socket inside a node's data directory.
pub const SOCKET_FILE: &str = "dfs.sock";

/// The control protocol version; client and node must agree.
pub const PROTOCOL_VERSION: u32 = 4;

/// The largest control frame accepted, in bytes.
pub const MAX_FRAME_LEN: usize = 1 << 20;

/// The largest file-body chunk sent in one frame, in bytes.
pub const CHUNK_LEN: usize = 64 * 1024;

/// The control socket path of the node whose data directory is `data_dir`.
///
/// ```
/// use std::path::Path;
/// assert_eq!(
///     dfs_cli::control::socket_path(Path::new("/var/lib/dfs")),
///     Path::new("/var/lib/dfs/dfs.sock"),
/// );
/// ```
pub fn socket_path(data_dir: &Path) -> PathBuf {
    data_dir.join(SOCKET_FILE)
}

/// A message from a client to its node.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub enum Request {
    /// First frame of every connection.
    Hello {
        /// The client's [`PROTOCOL_VERSION`].
        version: u32,
    },
    /// Store a file: followed by [`Request::Chunk`] frames and one [`Request::End`] (or
    /// [`Request::Abort`]); answered by [`Response::Stored`] or [`Response::Error`].
    Put {
        /// The file's name in the cluster.
        name: String,
        /// The body length when known in advance (for logs only; the `End` frame decides).
        size: Option<u64>,
    },
    /// A piece of a [`Request::Put`] body.
    Chunk(Bytes),
    /// The [`Request::Put`] body is complete.
    End,
    /// The client gives up on the [`Request::Put`] body; nothing is stored.
    Abort {
        /// Why, for the node's log.
        reason: String,
    },
    /// Fetch a file: answered by [`Response::Found`], [`Response::Chunk`]s and
    /// [`Response::End`], or by [`Response::Error`].
    Get {
        /// The file's name in the cluster.
        name: String,
    },
    /// Delete a file: answered by [`Response::Removed`] or [`Response::Error`].
    Remove {
        /// The file's name in the cluster.
        name: String,
        /// Also ask every connected peer to delete its copy.
        everywhere: bool,
    },
    /// List the node's local files: answered by one or more [`Response::Files`] (each fits
    /// in a frame) and [`Response::End`] (version 4; it used to be a single `Files`, which
    /// failed once the listing outgrew [`MAX_FRAME_LEN`]), or by [`Response::Error`].
    List,
    /// List connected peers: answered by [`Response::Peers`].
    Peers {
        /// First wait until at least this many peers are connected (or the timeout passes).
        wait_for: Option<u32>,
        /// How long to wait for `wait_for` peers, in milliseconds.
        timeout_ms: u64,
    },
    /// The node's status: answered by [`Response::Status`].
    Status,
    /// Verify every local object and replace damaged ones from peers: answered by
    /// [`Response::Scrubbed`].
    Scrub,
    /// Push the node's copy of a file to its peers per its replication policy: answered
    /// by [`Response::Stored`] (added in version 2).
    Replicate {
        /// The file's name in the cluster.
        name: String,
    },
}

/// A message from a node to a client.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub enum Response {
    /// Answer to [`Request::Hello`].
    Hello {
        /// The node's [`PROTOCOL_VERSION`].
        version: u32,
        /// The node's id (hex).
        node_id: String,
    },
    /// The file was stored (locally, and on the replicas named).
    Stored(StoredInfo),
    /// The requested file exists; `size` plaintext bytes follow as chunks.
    Found {
        /// Plaintext length.
        size: u64,
    },
    /// A piece of a [`Response::Found`] body.
    Chunk(Bytes),
    /// The body (or the listing) is complete.
    End,
    /// The file was deleted where it says (version 3; it used to carry nothing).
    Removed(RemovedInfo),
    /// Some of the node's local files (the listing ends with [`Response::End`]).
    Files(Vec<FileEntry>),
    /// The connected peers.
    Peers(Vec<PeerEntry>),
    /// The node's status.
    Status(NodeStatus),
    /// What a scrub checked and did.
    Scrubbed(ScrubSummary),
    /// The request failed.
    Error(RemoteError),
}

/// What a node says about a stored file.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredInfo {
    /// The file's name.
    pub name: String,
    /// Plaintext bytes stored.
    pub size: u64,
    /// Ids (hex) of the peers that acknowledged a durable copy.
    pub replicas: Vec<String>,
}

/// Where a deleted file's copies were found (and removed).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RemovedInfo {
    /// Whether the node itself held a copy.
    pub local: bool,
    /// Ids (hex) of the peers that held a copy and removed it (only for `everywhere`).
    pub peers: Vec<String>,
}

/// One local file of a node.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileEntry {
    /// The file's name, when the node knows it (a replica held for a peer has only an id).
    pub name: Option<String>,
    /// The opaque object id.
    pub id: String,
    /// Stored size in bytes.
    pub size: u64,
}

/// One connected peer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerEntry {
    /// The peer's node id (hex).
    pub id: String,
    /// The address the peer can be dialled on.
    pub addr: String,
}

/// What a node's scrub checked and did.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ScrubSummary {
    /// Objects checked.
    pub checked: u64,
    /// Ids (hex) of damaged objects replaced by verified copies from peers.
    pub repaired: Vec<String>,
    /// Damaged files nothing replaced, each with the reason.
    pub unrepaired: Vec<String>,
}

/// A node's status.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeStatus {
    /// The node's id (hex).
    pub node_id: String,
    /// The address the node listens on for peers.
    pub listen_addr: String,
    /// The node's data directory.
    pub data_dir: String,
    /// Connected peers.
    pub peers: u64,
    /// Local files (own and replicas).
    pub files: u64,
    /// Total stored bytes of the local files.
    pub stored_bytes: u64,
    /// Seconds since the node started.
    pub uptime_secs: u64,
    /// The `dfs` version the node runs.
    pub version: String,
}

/// Why a request failed, as reported by the node.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[error("{message}")]
pub struct RemoteError {
    /// The class of failure.
    pub kind: RemoteErrorKind,
    /// One human-readable line.
    pub message: String,
}

impl RemoteError {
    /// A new error of `kind`.
    pub fn new(kind: RemoteErrorKind, message: impl Into<String>) -> Self {
        RemoteError {
            kind,
            message: message.into(),
        }
    }
}

/// Classes of [`RemoteError`], so clients can map them to exit codes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub enum RemoteErrorKind {
    /// No node in reach has the file.
    NotFound,
    /// The file exists but cannot be decrypted with this node's data key.
    WrongKey,
    /// The name (or another argument) is not acceptable.
    InvalidArgument,
    /// The node is shutting down; the request was not completed.
    ShuttingDown,
    /// The client aborted or broke off the request.
    Aborted,
    /// The node's disk is full.
    DiskFull,
    /// The peer-to-peer layer failed (replication incomplete, network errors).
    Network,
    /// The client broke the control protocol.
    Protocol,
    /// Anything else.
    Other,
    /// The client's user may not use this node's control socket (sent before the `Hello`
    /// exchange, then the node closes the connection). Added after protocol version 2 was
    /// released, without a version change: it is only ever sent to clients that are refused
    /// anyway, and a client that does not know it reports a malformed frame instead.
    PermissionDenied,
}

/// Errors of the control channel itself.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ChannelError {
    /// Reading or writing the socket failed.
    #[error("control socket i/o failed")]
    Io {
        /// The underlying error.
        #[source]
        source: io::Error,
    },
    /// A frame did not decode.
    #[error("malformed control frame")]
    Decode {
        /// The underlying error.
        #[source]
        source: postcard::Error,
    },
    /// A message did not encode.
    #[error("control message does not encode")]
    Encode {
        /// The underlying error.
        #[source]
        source: postcard::Error,
    },
}

/// A framed, postcard-encoded message channel over a byte stream.
#[derive(Debug)]
pub(crate) struct Channel<S> {
    framed: Framed<S, LengthDelimitedCodec>,
}

impl<S: AsyncRead + AsyncWrite + Unpin> Channel<S> {
    pub(crate) fn new(stream: S) -> Self {
        let codec = LengthDelimitedCodec::builder()
            .max_frame_length(MAX_FRAME_LEN)
            .new_codec();
        Channel {
            framed: Framed::new(stream, codec),
        }
    }

    /// Sends one message and flushes it.
    pub(crate) async fn send<M: Serialize>(&mut self, msg: &M) -> Result<(), ChannelError> {
        let frame = postcard::to_stdvec(msg).map_err(|source| ChannelError::Encode { source })?;
        self.framed
            .send(Bytes::from(frame))
            .await
            .map_err(|source| ChannelError::Io { source })
    }

    /// Receives one message; `Ok(None)` when the other side closed the connection cleanly.
    pub(crate) async fn recv<M: DeserializeOwned>(&mut self) -> Result<Option<M>, ChannelError> {
        match self.framed.next().await {
            None => Ok(None),
            Some(Err(source)) => Err(ChannelError::Io { source }),
            Some(Ok(frame)) => postcard::from_bytes(&frame)
                .map(Some)
                .map_err(|source| ChannelError::Decode { source }),
        }
    }
}

/// Reads until `buf` is full or `body` ends (the chunking of streamed bodies, both ways);
/// returns the bytes read.
async fn fill<R: AsyncRead + Unpin>(body: &mut R, buf: &mut bytes::BytesMut) -> io::Result<usize> {
    use tokio::io::AsyncReadExt;
    let mut total = 0;
    while buf.len() < buf.capacity() {
        let n = body.read_buf(buf).await?;
        if n == 0 {
            break;
        }
        total += n;
    }
    Ok(total)
}

#[cfg(test)]
mod tests;
