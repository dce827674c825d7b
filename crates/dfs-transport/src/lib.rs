#![doc = include_str!("../README.md")]
#![forbid(unsafe_code)]

mod conn;
mod endpoint;
mod error;
mod identity;
mod substream;
mod transport;
pub mod wire;

pub use endpoint::{Endpoint, EndpointConfig, Event, Events, Payload, Peer};
pub use error::{Result, TransportError};
pub use identity::{NetworkSecret, NodeId};
pub use substream::{BodyOrMessage, BodyReader, Substream};
pub use transport::{
    Listener, MemoryListener, MemoryTransport, TcpListenerHandle, TcpTransport, Transport,
};
