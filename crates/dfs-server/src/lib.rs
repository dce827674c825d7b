#![doc = include_str!("../README.md")]
#![forbid(unsafe_code)]
#![cfg_attr(docsrs, feature(doc_cfg))]

mod bridge;
mod config;
mod error;
mod event;
mod id;
mod locks;
mod membership;
mod names;
mod object;
mod server;
mod slots;
mod verify;
pub mod wire;

pub use config::{Config, ConfigBuilder, MAX_INCOMING_TRANSFERS, Replication, Scope};
pub use error::{Result, ServerError};
pub use event::ServerEvent;
pub use id::ObjectId;
pub use server::{
    DeleteReport, FileInfo, FileReader, FileServer, PeerInfo, Receipt, ScrubReport,
    StoredCiphertext,
};

pub use dfs_crypto::{Aes256Ctr, Aes256CtrBlake3, Cipher, Key};
pub use dfs_store::{HashPath, PathTransform};
pub use dfs_transport::{MemoryTransport, NetworkSecret, NodeId, TcpTransport, Transport};
