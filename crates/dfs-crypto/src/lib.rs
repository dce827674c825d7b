#![doc = include_str!("../README.md")]
#![cfg_attr(docsrs, feature(doc_cfg))]
#![deny(unsafe_code)]

use std::io::{self, Read, Write};

#[cfg(feature = "tokio")]
mod async_io;
mod chunked;
#[cfg(all(target_arch = "x86_64", not(dfs_crypto_portable)))]
mod clmul;
mod ctr_cipher;
mod error;
mod key;
#[cfg(all(target_arch = "x86_64", not(dfs_crypto_portable)))]
mod key_schedule;
mod keystream;
mod polyval;
mod stream;
#[cfg(all(target_arch = "x86_64", not(dfs_crypto_portable)))]
mod vaes;

#[cfg(feature = "tokio")]
pub use async_io::{AsyncStreamReader, AsyncStreamWriter};
pub use chunked::{
    Aes256CtrBlake3, DEFAULT_CHUNK_SIZE, HEADER_LEN, MAGIC, MAX_CHUNK_SIZE, NONCE_LEN, TAG_LEN,
    VERSION,
};
pub use ctr_cipher::{Aes256Ctr, IV_LEN};
pub use error::{CryptoError, Result};
pub use key::{KEY_LEN, Key};
pub use polyval::{POLYVAL_LEN, Polyval};
pub use stream::{StreamReader, StreamWriter};

/// A streaming cipher: the seam `dfs-store` and `dfs-server` are generic over.
///
/// Implementations stream in both directions with bounded memory: the pull-style adapters
/// ([`Cipher::encrypt_reader`], [`Cipher::decrypt_reader`]) wrap a reader, and the provided
/// [`Cipher::encrypt`] / [`Cipher::decrypt`] copy a reader into a writer. Errors from the
/// adapters are `io::Error`s wrapping a [`CryptoError`]; `encrypt`/`decrypt` return the typed
/// error.
///
/// ```
/// use dfs_crypto::{Aes256CtrBlake3, Cipher, Key};
///
/// fn round_trip<C: Cipher>(cipher: &C, data: &[u8]) -> dfs_crypto::Result<Vec<u8>> {
///     let mut sealed = Vec::new();
///     let written = cipher.encrypt(data, &mut sealed)?;
///     assert_eq!(written, cipher.ciphertext_len(data.len() as u64));
///     assert_eq!(cipher.plaintext_len(written)?, data.len() as u64);
///     let mut opened = Vec::new();
///     cipher.decrypt(&sealed[..], &mut opened)?;
///     Ok(opened)
/// }
///
/// let cipher = Aes256CtrBlake3::new(&Key::generate()?);
/// assert_eq!(round_trip(&cipher, b"some bytes")?, b"some bytes");
/// # Ok::<(), dfs_crypto::CryptoError>(())
/// ```
pub trait Cipher: Send + Sync + 'static {
    /// An encrypting reader: reads plaintext from `R`, yields ciphertext.
    type EncryptReader<R: Read>: Read;
    /// A decrypting reader: reads ciphertext from `R`, yields plaintext (verified, for an
    /// authenticated cipher).
    type DecryptReader<R: Read>: Read;

    /// The exact ciphertext length for a plaintext of `plaintext_len` bytes.
    fn ciphertext_len(&self, plaintext_len: u64) -> u64;

    /// The exact plaintext length for a ciphertext of `ciphertext_len` bytes,
    /// or [`CryptoError::InvalidLength`] if no plaintext encrypts to that length.
    fn plaintext_len(&self, ciphertext_len: u64) -> Result<u64, CryptoError>;

    /// How many leading ciphertext bytes [`plaintext_len_of`](Self::plaintext_len_of) needs
    /// (the cipher's header; 0 when the length depends on the ciphertext length alone).
    fn header_len(&self) -> usize {
        0
    }

    /// The exact plaintext length of a ciphertext of `ciphertext_len` bytes that begins
    /// with `header` (its first [`header_len`](Self::header_len) bytes). Unlike
    /// [`plaintext_len`](Self::plaintext_len), this honours parameters the ciphertext
    /// records, such as the chunk size of [`Aes256CtrBlake3`], which its writer may have
    /// chosen differently from this instance.
    ///
    /// ```
    /// use dfs_crypto::{Aes256CtrBlake3, Cipher, Key};
    ///
    /// let key = Key::generate()?;
    /// let writer = Aes256CtrBlake3::new(&key).with_chunk_size(1024)?;
    /// let mut sealed = Vec::new();
    /// writer.encrypt(&[7u8; 5000][..], &mut sealed)?;
    /// let reader = Aes256CtrBlake3::new(&key); // default chunk size
    /// let header = &sealed[..reader.header_len()];
    /// assert_eq!(reader.plaintext_len_of(header, sealed.len() as u64)?, 5000);
    /// # Ok::<(), dfs_crypto::CryptoError>(())
    /// ```
    ///
    /// # Errors
    /// [`CryptoError::InvalidLength`] as for `plaintext_len`; a header the cipher cannot
    /// parse is the error decryption would report.
    fn plaintext_len_of(&self, header: &[u8], ciphertext_len: u64) -> Result<u64, CryptoError> {
        let _ = header;
        self.plaintext_len(ciphertext_len)
    }

    /// Wraps `src` so that reading from the result yields the ciphertext of `src`
    /// (fails only if the OS random number generator fails).
    fn encrypt_reader<R: Read>(&self, src: R) -> Result<Self::EncryptReader<R>, CryptoError>;

    /// Wraps `src` so that reading from the result yields verified plaintext. The header is
    /// read and checked on the first read.
    fn decrypt_reader<R: Read>(&self, src: R) -> Self::DecryptReader<R>;

    /// Encrypts all of `src` into `dst`, returning the ciphertext bytes written.
    fn encrypt(&self, src: impl Read, mut dst: impl Write) -> Result<u64, CryptoError> {
        let mut reader = self.encrypt_reader(src)?;
        Ok(io::copy(&mut reader, &mut dst)?)
    }

    /// Decrypts all of `src` into `dst`, returning the plaintext bytes written. For an
    /// authenticated cipher, only verified chunks reach `dst`; on error, `dst` holds a
    /// verified prefix of the plaintext.
    fn decrypt(&self, src: impl Read, mut dst: impl Write) -> Result<u64, CryptoError> {
        let mut reader = self.decrypt_reader(src);
        Ok(io::copy(&mut reader, &mut dst)?)
    }
}
