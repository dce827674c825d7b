//! Streaming ciphers for dfs (work in progress: the implementations land next).
#![forbid(unsafe_code)]

use std::io::{self, Read, Write};

/// Errors from encryption, decryption and key handling.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CryptoError {
    /// The underlying reader or writer failed.
    #[error("i/o error during encryption or decryption")]
    Io(#[from] io::Error),
}

/// A streaming cipher: the seam `dfs-store` and `dfs-server` are generic over.
pub trait Cipher: Send + Sync + 'static {
    /// An encrypting reader: reads plaintext from `R`, yields ciphertext.
    type EncryptReader<R: Read>: Read;
    /// A decrypting reader: reads ciphertext from `R`, yields plaintext.
    type DecryptReader<R: Read>: Read;

    /// The exact ciphertext length for a plaintext of `plaintext_len` bytes.
    fn ciphertext_len(&self, plaintext_len: u64) -> u64;

    /// The exact plaintext length for a ciphertext of `ciphertext_len` bytes,
    /// or an error if no plaintext encrypts to that length.
    fn plaintext_len(&self, ciphertext_len: u64) -> Result<u64, CryptoError>;

    /// Wraps `src` so that reading from the result yields the ciphertext of `src`.
    fn encrypt_reader<R: Read>(&self, src: R) -> Result<Self::EncryptReader<R>, CryptoError>;

    /// Wraps `src` so that reading from the result yields verified plaintext.
    fn decrypt_reader<R: Read>(&self, src: R) -> Self::DecryptReader<R>;

    /// Encrypts all of `src` into `dst`, returning the ciphertext bytes written.
    fn encrypt(&self, src: impl Read, mut dst: impl Write) -> Result<u64, CryptoError> {
        let mut reader = self.encrypt_reader(src)?;
        Ok(io::copy(&mut reader, &mut dst)?)
    }

    /// Decrypts all of `src` into `dst`, returning the plaintext bytes written.
    fn decrypt(&self, src: impl Read, mut dst: impl Write) -> Result<u64, CryptoError> {
        let mut reader = self.decrypt_reader(src);
        Ok(io::copy(&mut reader, &mut dst)?)
    }
}
