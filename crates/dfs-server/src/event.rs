//! Events a node reports to embedders and tests.

use dfs_transport::NodeId;

use crate::id::ObjectId;

/// Something that happened on a node; receive them with
/// [`FileServer::events`](crate::FileServer::events).
///
/// Names appear only on the node that knows them (the one that stored or fetched the file);
/// storage peers only ever see the opaque [`ObjectId`].
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum ServerEvent {
    /// A connection to a peer was established (after the authenticated handshake).
    PeerJoined {
        /// The peer's node id.
        id: NodeId,
        /// The address it can be dialled on.
        addr: String,
    },
    /// A peer's connection closed.
    PeerLeft {
        /// The peer's node id.
        id: NodeId,
    },
    /// This node stored a file given to [`store`](crate::FileServer::store) (local copy
    /// durable; replication follows).
    FileStored {
        /// The file name.
        name: String,
        /// Its opaque id.
        object: ObjectId,
        /// Plaintext size in bytes.
        size: u64,
    },
    /// A peer acknowledged a durable replica of a file this node stored.
    Replicated {
        /// The file name.
        name: String,
        /// The peer.
        peer: NodeId,
    },
    /// This node durably stored an opaque replica sent by a peer.
    ReplicaStored {
        /// The object's id.
        object: ObjectId,
        /// The sending peer.
        from: NodeId,
        /// Stored (ciphertext) size in bytes.
        size: u64,
    },
    /// This node fetched, verified and committed a file from a peer.
    Fetched {
        /// The file name.
        name: String,
        /// The peer that served it.
        from: NodeId,
        /// Stored (ciphertext) size in bytes.
        size: u64,
    },
    /// An object was deleted from this node.
    Deleted {
        /// The object's id.
        object: ObjectId,
        /// The name, when this node knows it.
        name: Option<String>,
        /// The peer that asked for the delete (`None`: this node's own call).
        by: Option<NodeId>,
    },
}
