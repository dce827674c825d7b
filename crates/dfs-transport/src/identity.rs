//! Node identities and the network secret.

use std::fmt;
use std::str::FromStr;

use zeroize::{Zeroize, ZeroizeOnDrop};

use crate::error::{Result, TransportError};

/// A node's 32-byte identity. `Debug`/`Display` print a short hex prefix; [`NodeId::to_hex`]
/// the whole.
///
/// ```
/// use dfs_transport::NodeId;
/// let id = NodeId([0xab; 32]);
/// assert_eq!(id.to_string(), "abababababababab");
/// assert_eq!(id.to_hex().parse::<NodeId>().unwrap(), id);
/// ```
#[derive(
    Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
pub struct NodeId(pub [u8; 32]);

impl NodeId {
    /// A fresh random id from the OS RNG.
    ///
    /// # Panics
    /// If the operating system's random source fails (nothing sensible can continue then).
    pub fn random() -> Self {
        Self(random_bytes())
    }

    /// The full 64-character lowercase hex form.
    pub fn to_hex(&self) -> String {
        hex_encode(&self.0)
    }
}

impl fmt::Display for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex_encode(&self.0[..8]))
    }
}

impl fmt::Debug for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "NodeId({self})")
    }
}

impl FromStr for NodeId {
    type Err = TransportError;

    /// Parse the 64-character hex form.
    fn from_str(s: &str) -> Result<Self> {
        hex_decode_32(s)
            .map(Self)
            .ok_or_else(|| TransportError::Config {
                reason: "a node id is 64 hex characters".to_owned(),
            })
    }
}

/// The pre-shared network secret: only nodes that know it may connect to each other.
///
/// 32 bytes; use [`NetworkSecret::generate`] (a low-entropy secret weakens authentication).
/// Zeroized on drop; `Debug` never prints the bytes.
///
/// ```
/// use dfs_transport::NetworkSecret;
/// let s = NetworkSecret::generate();
/// let again = NetworkSecret::from_hex(&s.to_hex()).unwrap();
/// assert_eq!(s.as_bytes(), again.as_bytes());
/// assert_eq!(format!("{s:?}"), "NetworkSecret(..)");
/// ```
#[derive(Clone, Zeroize, ZeroizeOnDrop)]
pub struct NetworkSecret([u8; 32]);

impl NetworkSecret {
    /// From raw bytes.
    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        Self(bytes)
    }

    /// From 64 hex characters.
    pub fn from_hex(hex: &str) -> Result<Self> {
        hex_decode_32(hex.trim())
            .map(Self)
            .ok_or_else(|| TransportError::Config {
                reason: "a network secret is 64 hex characters".to_owned(),
            })
    }

    /// The 64-character hex form (handle with care: this is the secret).
    pub fn to_hex(&self) -> String {
        hex_encode(&self.0)
    }

    /// A fresh random secret from the OS RNG.
    ///
    /// # Panics
    /// If the operating system's random source fails.
    pub fn generate() -> Self {
        Self(random_bytes())
    }

    /// The raw bytes.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }
}

impl fmt::Debug for NetworkSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("NetworkSecret(..)")
    }
}

#[allow(clippy::expect_used)]
pub(crate) fn random_bytes() -> [u8; 32] {
    let mut b = [0u8; 32];
    getrandom::fill(&mut b).expect("the operating system's random source failed");
    b
}

fn hex_encode(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(char::from(DIGITS[usize::from(b >> 4)]));
        s.push(char::from(DIGITS[usize::from(b & 15)]));
    }
    s
}

fn hex_decode_32(s: &str) -> Option<[u8; 32]> {
    let bytes = s.as_bytes();
    if bytes.len() != 64 {
        return None;
    }
    let nibble = |c: u8| {
        char::from(c)
            .to_digit(16)
            .and_then(|d| u8::try_from(d).ok())
    };
    let mut out = [0u8; 32];
    for (i, pair) in bytes.chunks_exact(2).enumerate() {
        out[i] = (nibble(pair[0])? << 4) | nibble(pair[1])?;
    }
    Some(out)
}
