#![doc = include_str!("../README.md")]
#![forbid(unsafe_code)]
#![cfg_attr(docsrs, feature(doc_cfg))]

mod error;
mod format;
mod pack;
mod path;
mod store;
mod tail;

#[cfg(feature = "crypto")]
mod crypto;

#[cfg(feature = "tokio")]
mod async_store;
#[cfg(feature = "tokio")]
mod blocking_reader;

pub use error::{Mismatch, Result, StoreError};
pub use pack::{MAX_PACKED, PackStats};
pub use path::{
    HashPath, InvalidSegment, MAX_DEPTH, MAX_KEY_LEN, MAX_SEGMENT_LEN, PathKey, PathTransform,
    PlainPath, check_segment,
};
pub use store::{
    BadObject, DEFAULT_ROOT, Durability, Expected, Keys, ObjectMeta, ObjectReader, Objects,
    ScrubReport, Store, StoreBuilder,
};
pub use tail::{Follower, Next, Segment, Tail};

#[cfg(feature = "crypto")]
pub use crypto::DecryptingReader;

#[cfg(feature = "tokio")]
pub use async_store::{AsyncObjectReader, AsyncStore};
#[cfg(feature = "tokio")]
pub use blocking_reader::BlockingReader;
