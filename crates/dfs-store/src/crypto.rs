//! Encrypted writes and reads through any [`Cipher`] (feature `crypto`).

use std::fmt;
use std::io::{self, Read};

use dfs_crypto::Cipher;

use crate::error::{Result, StoreError};
use crate::path::PathTransform;
use crate::store::{ObjectReader, Store};

impl<P: PathTransform> Store<P> {
    /// Encrypts everything `src` yields with `cipher` while storing it under `key`, and
    /// returns the number of plaintext bytes consumed.
    ///
    /// Streaming: memory does not grow with the size. The stored bytes (and the BLAKE3
    /// integrity hash) are the ciphertext, so [`Store::stat`] reports
    /// `cipher.ciphertext_len(plaintext)` and [`Store::verify`] works without the key.
    /// Atomicity and durability are those of [`Store::write`].
    ///
    /// ```
    /// use std::io::Read;
    /// use dfs_crypto::{Aes256CtrBlake3, Cipher, Key};
    ///
    /// # let dir = tempfile::tempdir()?;
    /// let store = dfs_store::Store::open(dir.path())?;
    /// let cipher = Aes256CtrBlake3::new(&Key::generate()?);
    /// assert_eq!(store.write_encrypted("secret", &b"attack at dawn"[..], &cipher)?, 14);
    /// assert_eq!(store.stat("secret")?.size(), cipher.ciphertext_len(14));
    ///
    /// let mut plain = String::new();
    /// store.read_decrypted("secret", &cipher)?.read_to_string(&mut plain)?;
    /// assert_eq!(plain, "attack at dawn");
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn write_encrypted<C: Cipher>(&self, key: &str, src: impl Read, cipher: &C) -> Result<u64> {
        let mut counted = Counting {
            inner: src,
            count: 0,
        };
        let encrypting =
            cipher
                .encrypt_reader(&mut counted)
                .map_err(|source| StoreError::Crypto {
                    key: key.to_owned(),
                    source,
                })?;
        self.write(key, encrypting)?;
        Ok(counted.count)
    }

    /// Opens `key` for a streaming decrypting read with `cipher`.
    ///
    /// Two checks run as the bytes stream: the store's BLAKE3 hash of the stored
    /// ciphertext, and whatever the cipher verifies itself (an authenticated cipher
    /// releases only verified chunks). A failure of either is an `io::Error` from `read`;
    /// no wrong plaintext is ever returned as a complete, successful read.
    ///
    /// ```
    /// use std::io::Read;
    /// use dfs_crypto::{Aes256Ctr, Key};
    ///
    /// # let dir = tempfile::tempdir()?;
    /// let store = dfs_store::Store::open(dir.path())?;
    /// let cipher = Aes256Ctr::new(&Key::generate()?);
    /// store.write_encrypted("k", &b"hello"[..], &cipher)?;
    /// let mut reader = store.read_decrypted("k", &cipher)?;
    /// assert_eq!(reader.size(), 5);
    /// let mut out = Vec::new();
    /// reader.read_to_end(&mut out)?;
    /// assert_eq!(out, b"hello");
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn read_decrypted<C: Cipher>(&self, key: &str, cipher: &C) -> Result<DecryptingReader<C>> {
        let reader = self.read(key)?;
        let size = cipher
            .plaintext_len(reader.size())
            .map_err(|source| StoreError::Crypto {
                key: key.to_owned(),
                source,
            })?;
        Ok(DecryptingReader {
            key: key.to_owned(),
            size,
            inner: cipher.decrypt_reader(reader),
        })
    }
}

/// A streaming reader of decrypted plaintext; see [`Store::read_decrypted`].
///
/// It owns the object's file; it is `Send` whenever the cipher's decrypting reader is.
pub struct DecryptingReader<C: Cipher> {
    key: String,
    size: u64,
    inner: C::DecryptReader<ObjectReader>,
}

impl<C: Cipher> DecryptingReader<C> {
    /// The plaintext size in bytes.
    ///
    /// ```
    /// use dfs_crypto::{Aes256CtrBlake3, Key};
    /// # let dir = tempfile::tempdir()?;
    /// # let store = dfs_store::Store::open(dir.path())?;
    /// let cipher = Aes256CtrBlake3::new(&Key::generate()?);
    /// store.write_encrypted("k", &[0u8; 1000][..], &cipher)?;
    /// assert_eq!(store.read_decrypted("k", &cipher)?.size(), 1000);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn size(&self) -> u64 {
        self.size
    }

    /// The key being read.
    pub fn key(&self) -> &str {
        &self.key
    }

    /// The cipher's decrypting reader over the verified object bytes.
    pub fn into_inner(self) -> C::DecryptReader<ObjectReader> {
        self.inner
    }
}

impl<C: Cipher> fmt::Debug for DecryptingReader<C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DecryptingReader")
            .field("key", &self.key)
            .field("size", &self.size)
            .finish_non_exhaustive()
    }
}

impl<C: Cipher> Read for DecryptingReader<C> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.inner.read(buf)
    }
}

/// Counts the plaintext bytes the cipher pulls from the caller's reader.
struct Counting<R> {
    inner: R,
    count: u64,
}

impl<R: Read> Read for Counting<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.count += n as u64;
        Ok(n)
    }
}
