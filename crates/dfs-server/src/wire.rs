//! The server's wire protocol, exposed for tests and other implementations (carried by
//! `dfs-transport` frames, postcard-encoded).
//!
//! Every message travels in an [`Envelope`] naming the protocol version, so a node can
//! refuse a peer speaking another version with a clear error instead of misreading it.
//!
//! Control connection (`Peer::send`): [`Message::Hello`] once per new connection (the sender's
//! known peers), then [`Message::Peers`] whenever the sender learns of new nodes.
//!
//! Exchanges (one substream each, opened by the requester):
//! - replicate a stored file: `Put` + body → `Stored` (after the durable write) or `Error`;
//! - replicate while storing: `PutFollow`, then `Part` + body as often as the origin's local
//!   write has new bytes (`Waiting` when it has had none for a while), then `PutEnd` with
//!   the size and hash → `Stored` or `Error`;
//! - fetch: `Get` → `Found` or `NotFound`; after `Found` the requester sends `Proceed` and
//!   receives the body (or drops the substream to decline), or `Error` when the holder can
//!   no longer serve that offer (busy, or its copy changed or is gone since);
//! - delete: `Delete` → `Deleted`.

use dfs_transport::NodeId;
use serde::{Deserialize, Serialize};

use crate::id::ObjectId;

/// The version of this protocol.
pub const PROTOCOL_VERSION: u16 = 2;

/// A versioned wire message.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Envelope {
    /// The sender's protocol version ([`PROTOCOL_VERSION`]).
    pub version: u16,
    /// The message.
    pub message: Message,
}

impl Envelope {
    /// Wraps `message` with this build's protocol version.
    pub fn new(message: Message) -> Self {
        Envelope {
            version: PROTOCOL_VERSION,
            message,
        }
    }
}

/// A peer's identity and the address it can be dialled on.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerAddr {
    /// The peer's node id.
    pub id: NodeId,
    /// Where it can be dialled.
    pub addr: String,
}

/// One protocol message.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[allow(missing_docs)] // fields are described on their variants
pub enum Message {
    /// First control message on a new connection: the `peers` the sender knows.
    Hello { peers: Vec<PeerAddr> },
    /// Newly learned `peers` (peer exchange).
    Peers { peers: Vec<PeerAddr> },
    /// Store blob `id`; a body of `size` bytes whose BLAKE3 hash is `hash` follows.
    Put {
        id: ObjectId,
        size: u64,
        hash: [u8; 32],
    },
    /// The blob is durably stored.
    Stored,
    /// Do you hold blob `id`?
    Get { id: ObjectId },
    /// Yes: `size` bytes whose BLAKE3 hash is `hash`.
    Found { size: u64, hash: [u8; 32] },
    /// No.
    NotFound,
    /// Send the body you announced.
    Proceed,
    /// Remove blob `id`.
    Delete { id: ObjectId },
    /// Done; `existed` tells whether there was a copy.
    Deleted { existed: bool },
    /// The request failed, with a human-readable `message`.
    Error { message: String },
    /// Store blob `id`, streamed while the sender writes it: `Part`s follow, then `PutEnd`.
    /// The sender says something at least every `keepalive_ms` milliseconds (`Waiting` if
    /// it has nothing new).
    PutFollow { id: ObjectId, keepalive_ms: u32 },
    /// The next bytes of a `PutFollow` blob follow as a body.
    Part,
    /// The `PutFollow` blob is complete: `size` bytes in all, whose BLAKE3 hash is `hash`.
    PutEnd { size: u64, hash: [u8; 32] },
    /// The `PutFollow` origin is still writing: nothing new yet (a keep-alive).
    Waiting,
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn any_message() -> impl Strategy<Value = Message> {
        let id = any::<[u8; 32]>().prop_map(ObjectId);
        let peer = (any::<[u8; 32]>(), ".{0,40}").prop_map(|(id, addr)| PeerAddr {
            id: NodeId(id),
            addr,
        });
        prop_oneof![
            prop::collection::vec(peer.clone(), 0..5).prop_map(|peers| Message::Hello { peers }),
            prop::collection::vec(peer, 0..5).prop_map(|peers| Message::Peers { peers }),
            (id.clone(), any::<u64>(), any::<[u8; 32]>())
                .prop_map(|(id, size, hash)| Message::Put { id, size, hash }),
            Just(Message::Stored),
            id.clone().prop_map(|id| Message::Get { id }),
            (any::<u64>(), any::<[u8; 32]>())
                .prop_map(|(size, hash)| Message::Found { size, hash }),
            Just(Message::NotFound),
            Just(Message::Proceed),
            id.clone().prop_map(|id| Message::Delete { id }),
            any::<bool>().prop_map(|existed| Message::Deleted { existed }),
            ".{0,80}".prop_map(|message| Message::Error { message }),
            (id, any::<u32>())
                .prop_map(|(id, keepalive_ms)| Message::PutFollow { id, keepalive_ms }),
            Just(Message::Part),
            (any::<u64>(), any::<[u8; 32]>())
                .prop_map(|(size, hash)| Message::PutEnd { size, hash }),
            Just(Message::Waiting),
        ]
    }

    proptest! {
        #[test]
        fn round_trip(version in any::<u16>(), message in any_message()) {
            let env = Envelope { version, message };
            let bytes = postcard::to_stdvec(&env).unwrap();
            let back: Envelope = postcard::from_bytes(&bytes).unwrap();
            prop_assert_eq!(back, env);
        }

        #[test]
        fn damaged_bytes_never_panic(message in any_message(), cut in any::<usize>(), flip in any::<(usize, u8)>()) {
            let mut bytes = postcard::to_stdvec(&Envelope::new(message)).unwrap();
            let at = flip.0 % bytes.len();
            bytes[at] ^= flip.1;
            let _ = postcard::from_bytes::<Envelope>(&bytes);
            bytes.truncate(cut % (bytes.len() + 1));
            let _ = postcard::from_bytes::<Envelope>(&bytes);
        }
    }
}
