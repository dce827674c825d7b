//! The server's object format: a small header, then the cipher's output.
//!
//! ```text
//! "DFSOBJ" (6) | version u8 = 1 | reserved u8 = 0 | key fingerprint (16) | ciphertext
//! ```
//!
//! The fingerprint (public, derived from the data key with `blake3::derive_key`) lets a node
//! tell "encrypted under another data key" ([`ServerError::WrongKey`]) from damage, and lets a
//! fetching node refuse a foreign blob before committing it.

use std::io::{self, Read};

use dfs_crypto::Cipher;

use crate::error::{Result, ServerError};

const MAGIC: [u8; 6] = *b"DFSOBJ";
const VERSION: u8 = 1;
/// Length of the object header.
pub(crate) const HEADER_LEN: usize = 24;

/// Builds the header for data encrypted under the key with `fingerprint`.
pub(crate) fn header(fingerprint: &[u8; 16]) -> [u8; HEADER_LEN] {
    let mut out = [0u8; HEADER_LEN];
    out[..6].copy_from_slice(&MAGIC);
    out[6] = VERSION;
    out[8..].copy_from_slice(fingerprint);
    out
}

/// What a header says.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum HeaderCheck {
    /// Ours: same key.
    Ours,
    /// A valid header under another key.
    OtherKey,
    /// Not a header of this format.
    Invalid(&'static str),
}

/// Checks a header against our key fingerprint.
pub(crate) fn check_header(bytes: &[u8; HEADER_LEN], fingerprint: &[u8; 16]) -> HeaderCheck {
    if bytes[..6] != MAGIC {
        return HeaderCheck::Invalid("bad magic");
    }
    if bytes[6] != VERSION {
        return HeaderCheck::Invalid("unsupported object version");
    }
    if bytes[7] != 0 {
        return HeaderCheck::Invalid("reserved byte set");
    }
    if bytes[8..] != fingerprint[..] {
        return HeaderCheck::OtherKey;
    }
    HeaderCheck::Ours
}

/// Reads exactly a header from `src` (an `UnexpectedEof` error if it is shorter).
pub(crate) fn read_header(src: &mut impl Read) -> io::Result<[u8; HEADER_LEN]> {
    let mut out = [0u8; HEADER_LEN];
    src.read_exact(&mut out)?;
    Ok(out)
}

/// The stored bytes of `plaintext`: header then ciphertext, as a pull-style reader.
pub(crate) fn encrypting<C: Cipher, R: Read>(
    cipher: &C,
    fingerprint: &[u8; 16],
    plaintext: R,
) -> Result<impl Read + use<C, R>> {
    let head = io::Cursor::new(header(fingerprint));
    Ok(head.chain(cipher.encrypt_reader(plaintext)?))
}

/// A stored object's ciphertext: the cipher's header (read ahead to learn the plaintext
/// length), then the rest of the object.
pub(crate) type Prefixed<R> = io::Chain<io::Cursor<Vec<u8>>, R>;

/// Checks the header of stored bytes `src` and returns the plaintext reader and length. The
/// length follows the parameters the ciphertext records (see [`Cipher::plaintext_len_of`]).
pub(crate) fn decrypting<C: Cipher, R: Read>(
    cipher: &C,
    fingerprint: &[u8; 16],
    name: &str,
    id: &str,
    stored_len: u64,
    mut src: R,
) -> Result<(C::DecryptReader<Prefixed<R>>, u64)> {
    let bad = |reason: String| ServerError::BadObject {
        id: id.to_owned(),
        reason,
    };
    let head = read_header(&mut src).map_err(|e| bad(format!("cannot read header: {e}")))?;
    match check_header(&head, fingerprint) {
        HeaderCheck::Ours => {}
        HeaderCheck::OtherKey => {
            return Err(ServerError::WrongKey {
                name: name.to_owned(),
            });
        }
        HeaderCheck::Invalid(reason) => return Err(bad(reason.to_owned())),
    }
    let mut cipher_header = vec![0u8; cipher.header_len()];
    src.read_exact(&mut cipher_header)
        .map_err(|e| bad(format!("cannot read the cipher header: {e}")))?;
    let len = cipher
        .plaintext_len_of(&cipher_header, stored_len - HEADER_LEN as u64)
        .map_err(|e| bad(format!("cipher header: {e}")))?;
    Ok((
        cipher.decrypt_reader(io::Cursor::new(cipher_header).chain(src)),
        len,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_checks() {
        let fp = [3u8; 16];
        let h = header(&fp);
        assert_eq!(check_header(&h, &fp), HeaderCheck::Ours);
        assert_eq!(check_header(&h, &[4u8; 16]), HeaderCheck::OtherKey);
        let mut bad = h;
        bad[0] ^= 1;
        assert!(matches!(check_header(&bad, &fp), HeaderCheck::Invalid(_)));
        let mut bad = h;
        bad[6] = 2;
        assert!(matches!(check_header(&bad, &fp), HeaderCheck::Invalid(_)));
    }
}
