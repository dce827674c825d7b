//! The object header (see `FORMAT.md`).

use std::path::Path;

use crate::error::{Result, StoreError};
use crate::path::MAX_KEY_LEN;

/// First bytes of every object file.
pub(crate) const MAGIC: [u8; 8] = *b"dfs-obj\0";
/// The one format version this build writes and reads.
pub(crate) const VERSION: u16 = 1;
/// Size of the fixed part of the header (before the key bytes).
pub(crate) const FIXED_LEN: usize = 88;

/// The decoded fixed header.
#[derive(Debug, Clone)]
pub(crate) struct Header {
    pub(crate) key: String,
    pub(crate) payload_len: u64,
    pub(crate) payload_hash: [u8; 32],
}

impl Header {
    /// Total header length (fixed part + key).
    pub(crate) fn len(&self) -> u64 {
        (FIXED_LEN + self.key.len()) as u64
    }

    /// Encodes the fixed part (88 bytes); the key bytes follow it on disk.
    pub(crate) fn encode_fixed(key: &str, payload_len: u64, payload_hash: &[u8; 32]) -> [u8; 88] {
        let mut out = [0u8; FIXED_LEN];
        out[0..8].copy_from_slice(&MAGIC);
        out[8..10].copy_from_slice(&VERSION.to_le_bytes());
        // 10..12: flags, zero in version 1.
        out[12..16].copy_from_slice(&(key.len() as u32).to_le_bytes());
        out[16..24].copy_from_slice(&payload_len.to_le_bytes());
        out[24..56].copy_from_slice(payload_hash);
        let mut hasher = blake3::Hasher::new();
        hasher.update(&out[0..56]);
        hasher.update(key.as_bytes());
        out[56..88].copy_from_slice(hasher.finalize().as_bytes());
        out
    }

    /// Parses the fixed part. Returns the key length still to read.
    pub(crate) fn parse_fixed(fixed: &[u8], path: &Path) -> Result<FixedParsed> {
        if fixed.len() < FIXED_LEN {
            return Err(StoreError::corrupt(
                path,
                None,
                format!("file is {} bytes, shorter than a header", fixed.len()),
            ));
        }
        if fixed[0..8] != MAGIC {
            return Err(StoreError::corrupt(
                path,
                None,
                "not a dfs-store object (bad magic)",
            ));
        }
        let version = u16::from_le_bytes([fixed[8], fixed[9]]);
        if version != VERSION {
            return Err(StoreError::UnsupportedVersion {
                path: path.to_owned(),
                version,
            });
        }
        let flags = u16::from_le_bytes([fixed[10], fixed[11]]);
        let key_len = u32::from_le_bytes([fixed[12], fixed[13], fixed[14], fixed[15]]) as usize;
        if flags != 0 || key_len == 0 || key_len > MAX_KEY_LEN {
            return Err(StoreError::corrupt(path, None, "damaged header"));
        }
        let mut len8 = [0u8; 8];
        len8.copy_from_slice(&fixed[16..24]);
        let mut payload_hash = [0u8; 32];
        payload_hash.copy_from_slice(&fixed[24..56]);
        let mut header_hash = [0u8; 32];
        header_hash.copy_from_slice(&fixed[56..88]);
        Ok(FixedParsed {
            key_len,
            payload_len: u64::from_le_bytes(len8),
            payload_hash,
            header_hash,
        })
    }
}

/// The fixed header fields, before the key has been read and the header hash checked.
#[derive(Debug)]
pub(crate) struct FixedParsed {
    pub(crate) key_len: usize,
    pub(crate) payload_len: u64,
    pub(crate) payload_hash: [u8; 32],
    header_hash: [u8; 32],
}

impl FixedParsed {
    /// Checks the header hash over the fixed fields and `key_bytes`, then decodes the key.
    pub(crate) fn finish(self, fixed: &[u8], key_bytes: &[u8], path: &Path) -> Result<Header> {
        let mut hasher = blake3::Hasher::new();
        hasher.update(&fixed[0..56]);
        hasher.update(key_bytes);
        // blake3::Hash compares in constant time.
        if hasher.finalize() != blake3::Hash::from(self.header_hash) {
            return Err(StoreError::corrupt(
                path,
                None,
                "damaged header (header hash mismatch)",
            ));
        }
        let key = std::str::from_utf8(key_bytes)
            .map_err(|_| StoreError::corrupt(path, None, "stored key is not UTF-8"))?
            .to_owned();
        Ok(Header {
            key,
            payload_len: self.payload_len,
            payload_hash: self.payload_hash,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        let fixed = Header::encode_fixed("key", 42, &[7; 32]);
        let parsed = Header::parse_fixed(&fixed, Path::new("x")).unwrap();
        assert_eq!(parsed.key_len, 3);
        let header = parsed.finish(&fixed, b"key", Path::new("x")).unwrap();
        assert_eq!(header.key, "key");
        assert_eq!(header.payload_len, 42);
        assert_eq!(header.payload_hash, [7; 32]);
        assert_eq!(header.len(), 91);
    }

    #[test]
    fn any_flipped_bit_is_refused() {
        let mut bytes = Header::encode_fixed("key", 42, &[7; 32]).to_vec();
        bytes.extend_from_slice(b"key");
        for bit in 0..bytes.len() * 8 {
            let mut damaged = bytes.clone();
            damaged[bit / 8] ^= 1 << (bit % 8);
            let result = Header::parse_fixed(&damaged[..FIXED_LEN], Path::new("x")).and_then(|p| {
                let key_len = p.key_len.min(damaged.len() - FIXED_LEN);
                p.finish(
                    &damaged[..FIXED_LEN],
                    &damaged[FIXED_LEN..FIXED_LEN + key_len],
                    Path::new("x"),
                )
            });
            assert!(result.is_err(), "bit {bit} flip accepted");
        }
    }
}
