//! The 256-bit secret key.

use std::fmt;
use std::str::FromStr;

use zeroize::{Zeroize, ZeroizeOnDrop};

use crate::{CryptoError, Result};

/// Length of a [`Key`] in bytes.
pub const KEY_LEN: usize = 32;

/// A 256-bit secret key.
///
/// `Debug` never shows the bytes, the bytes are zeroized on drop, and equality is checked in
/// constant time. Key files hold the key as 64 hex digits ([`Key::to_hex`], [`Key::from_hex`]).
///
/// ```
/// use dfs_crypto::Key;
///
/// let key = Key::generate()?;
/// let text = key.to_hex();
/// assert_eq!(text.len(), 64);
/// assert_eq!(Key::from_hex(&text)?, key);
/// assert_eq!(format!("{key:?}"), "Key(..)");
/// # Ok::<(), dfs_crypto::CryptoError>(())
/// ```
#[derive(Clone, Zeroize, ZeroizeOnDrop)]
pub struct Key([u8; KEY_LEN]);

impl Key {
    /// Generates a fresh key from the operating system's random number generator.
    pub fn generate() -> Result<Self> {
        let mut key = Key([0; KEY_LEN]);
        getrandom::fill(&mut key.0)?;
        Ok(key)
    }

    /// Wraps 32 raw key bytes.
    pub fn from_bytes(bytes: [u8; KEY_LEN]) -> Self {
        Key(bytes)
    }

    /// Parses 64 hex digits (either case); surrounding ASCII whitespace (a key file's trailing
    /// newline) is ignored.
    pub fn from_hex(text: &str) -> Result<Self> {
        let text = text.trim_ascii().as_bytes();
        if text.len() != 2 * KEY_LEN {
            return Err(CryptoError::InvalidKey {
                reason: "expected exactly 64 hex digits",
            });
        }
        let mut key = Key([0; KEY_LEN]);
        for (out, pair) in key.0.iter_mut().zip(text.chunks_exact(2)) {
            let (Some(hi), Some(lo)) = (hex_value(pair[0]), hex_value(pair[1])) else {
                return Err(CryptoError::InvalidKey {
                    reason: "non-hex character",
                });
            };
            *out = (hi << 4) | lo;
        }
        Ok(key)
    }

    /// Formats the key as 64 lowercase hex digits. The returned `String` holds the secret:
    /// zeroize it (or wrap it in [`zeroize::Zeroizing`]) when done.
    pub fn to_hex(&self) -> String {
        const DIGITS: &[u8; 16] = b"0123456789abcdef";
        let mut out = String::with_capacity(2 * KEY_LEN);
        for byte in self.0 {
            out.push(char::from(DIGITS[usize::from(byte >> 4)]));
            out.push(char::from(DIGITS[usize::from(byte & 0x0f)]));
        }
        out
    }

    /// The raw key bytes.
    pub fn as_bytes(&self) -> &[u8; KEY_LEN] {
        &self.0
    }
}

fn hex_value(digit: u8) -> Option<u8> {
    match digit {
        b'0'..=b'9' => Some(digit - b'0'),
        b'a'..=b'f' => Some(digit - b'a' + 10),
        b'A'..=b'F' => Some(digit - b'A' + 10),
        _ => None,
    }
}

impl FromStr for Key {
    type Err = CryptoError;

    fn from_str(text: &str) -> Result<Self> {
        Key::from_hex(text)
    }
}

impl From<[u8; KEY_LEN]> for Key {
    fn from(bytes: [u8; KEY_LEN]) -> Self {
        Key(bytes)
    }
}

impl fmt::Debug for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Key(..)")
    }
}

impl PartialEq for Key {
    /// Constant-time comparison.
    fn eq(&self, other: &Self) -> bool {
        let diff = self
            .0
            .iter()
            .zip(other.0.iter())
            .fold(0u8, |acc, (a, b)| acc | (a ^ b));
        std::hint::black_box(diff) == 0
    }
}

impl Eq for Key {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_round_trip_and_errors() {
        let key = Key::from_bytes(std::array::from_fn(|i| i as u8 * 7));
        let hex = key.to_hex();
        assert_eq!(Key::from_hex(&hex).unwrap(), key);
        assert_eq!(
            Key::from_hex(&format!("  {}\n", hex.to_uppercase())).unwrap(),
            key
        );
        assert_eq!(hex.parse::<Key>().unwrap(), key);
        assert!(matches!(
            Key::from_hex(&hex[1..]),
            Err(CryptoError::InvalidKey { .. })
        ));
        let bad = format!("g{}", &hex[1..]);
        assert!(matches!(
            Key::from_hex(&bad),
            Err(CryptoError::InvalidKey { .. })
        ));
        assert!(matches!(
            Key::from_hex(""),
            Err(CryptoError::InvalidKey { .. })
        ));
        // Multi-byte UTF-8 must not panic.
        let utf8 = format!("é{}", &hex[2..]);
        assert!(Key::from_hex(&utf8).is_err());
    }

    #[test]
    fn debug_redacts_and_generate_differs() {
        let a = Key::generate().unwrap();
        let b = Key::generate().unwrap();
        assert_ne!(a, b);
        let shown = format!("{a:?}");
        assert_eq!(shown, "Key(..)");
        assert!(!shown.contains(&a.to_hex()[..8]));
    }
}
