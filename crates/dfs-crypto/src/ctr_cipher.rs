//! `Aes256Ctr`: the Go original's unauthenticated format.

use std::io::{Read, Write};

use crate::keystream::{CtrKey, CtrStream};
use crate::stream::{State, StreamReader, StreamWriter};
use crate::{Cipher, CryptoError, Key, Result};

/// Length of the IV that starts every [`Aes256Ctr`] ciphertext.
pub const IV_LEN: usize = 16;

/// Buffer used by the push-style writers and the pull path when it cannot work in place.
const CTR_BUF: usize = 64 * 1024;

/// AES-256-CTR in the Go original's format: `IV (16 random bytes) || AES-256-CTR(plaintext)`,
/// the whole 16-byte block a big-endian 128-bit counter starting at the IV (Go's
/// `crypto/cipher.NewCTR`). Files written by the Go `BasicCrypto.Encrypt` decrypt here and
/// the other way round.
///
/// **Unauthenticated**: the ciphertext is malleable (flipping a ciphertext bit flips the same
/// plaintext bit) and truncation goes unnoticed. Use it to read and write the Go format;
/// use [`Aes256CtrBlake3`](crate::Aes256CtrBlake3) for anything new.
///
/// ```
/// use dfs_crypto::{Aes256Ctr, Cipher, Key};
///
/// let cipher = Aes256Ctr::new(&Key::generate()?);
/// let mut sealed = Vec::new();
/// cipher.encrypt(&b"hello"[..], &mut sealed)?;
/// assert_eq!(sealed.len() as u64, cipher.ciphertext_len(5));
/// let mut opened = Vec::new();
/// cipher.decrypt(&sealed[..], &mut opened)?;
/// assert_eq!(opened, b"hello");
/// # Ok::<(), dfs_crypto::CryptoError>(())
/// ```
#[derive(Clone)]
pub struct Aes256Ctr {
    key: CtrKey,
}

impl std::fmt::Debug for Aes256Ctr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Aes256Ctr")
            .field("backend", &self.key.backend())
            .finish_non_exhaustive()
    }
}

impl Aes256Ctr {
    /// Creates the cipher for `key`, choosing the fastest AES backend the CPU supports.
    pub fn new(key: &Key) -> Self {
        Aes256Ctr {
            key: CtrKey::new(key.as_bytes()),
        }
    }

    /// The name of the keystream backend chosen at run time (for logs and benches).
    pub fn backend(&self) -> &'static str {
        self.key.backend()
    }

    /// An encrypting reader with a caller-chosen IV.
    ///
    /// **Hazardous**: reusing an IV with the same key reveals the XOR of the plaintexts. Meant
    /// for test vectors; [`Cipher::encrypt_reader`] draws a random IV.
    pub fn encrypt_reader_with_iv<R: Read>(&self, src: R, iv: [u8; IV_LEN]) -> StreamReader<R> {
        StreamReader::new(
            src,
            State::Ctr(Box::new(CtrState::encrypt(self.key.clone(), iv))),
        )
    }

    /// A push-style encrypting writer: plaintext written to it reaches `dst` as ciphertext.
    /// Call [`StreamWriter::finish`] at the end (it writes the IV even for empty plaintext).
    pub fn encrypt_writer<W: Write>(&self, dst: W) -> Result<StreamWriter<W>> {
        Ok(StreamWriter::new(
            dst,
            State::Ctr(Box::new(CtrState::encrypt(self.key.clone(), random_iv()?))),
        ))
    }

    /// A push-style decrypting writer: ciphertext written to it reaches `dst` as plaintext.
    /// [`StreamWriter::finish`] reports a ciphertext shorter than its IV.
    pub fn decrypt_writer<W: Write>(&self, dst: W) -> StreamWriter<W> {
        StreamWriter::new(
            dst,
            State::Ctr(Box::new(CtrState::decrypt(self.key.clone()))),
        )
    }

    /// The async (tokio) encrypting reader.
    #[cfg(feature = "tokio")]
    pub fn encrypt_async_reader<R: tokio::io::AsyncRead + Unpin>(
        &self,
        src: R,
    ) -> Result<crate::AsyncStreamReader<R>> {
        Ok(crate::AsyncStreamReader::new(
            src,
            State::Ctr(Box::new(CtrState::encrypt(self.key.clone(), random_iv()?))),
        ))
    }

    /// The async (tokio) decrypting reader.
    #[cfg(feature = "tokio")]
    pub fn decrypt_async_reader<R: tokio::io::AsyncRead + Unpin>(
        &self,
        src: R,
    ) -> crate::AsyncStreamReader<R> {
        crate::AsyncStreamReader::new(
            src,
            State::Ctr(Box::new(CtrState::decrypt(self.key.clone()))),
        )
    }

    /// The async (tokio) encrypting writer; `shutdown` completes the stream.
    #[cfg(feature = "tokio")]
    pub fn encrypt_async_writer<W: tokio::io::AsyncWrite + Unpin>(
        &self,
        dst: W,
    ) -> Result<crate::AsyncStreamWriter<W>> {
        Ok(crate::AsyncStreamWriter::new(
            dst,
            State::Ctr(Box::new(CtrState::encrypt(self.key.clone(), random_iv()?))),
        ))
    }

    /// The async (tokio) decrypting writer; `shutdown` checks the stream is complete.
    #[cfg(feature = "tokio")]
    pub fn decrypt_async_writer<W: tokio::io::AsyncWrite + Unpin>(
        &self,
        dst: W,
    ) -> crate::AsyncStreamWriter<W> {
        crate::AsyncStreamWriter::new(
            dst,
            State::Ctr(Box::new(CtrState::decrypt(self.key.clone()))),
        )
    }

    /// XORs the keystream for counter block `iv`, starting `offset` bytes into the stream,
    /// into `data` (the raw CTR primitive, no header). Encryption and decryption are the same.
    pub fn apply_keystream(&self, iv: [u8; IV_LEN], offset: u64, data: &mut [u8]) {
        let mut stream = CtrStream::new(self.key.clone(), iv);
        stream.seek(offset);
        stream.apply(data);
    }
}

fn random_iv() -> Result<[u8; IV_LEN]> {
    let mut iv = [0u8; IV_LEN];
    getrandom::fill(&mut iv)?;
    Ok(iv)
}

impl Cipher for Aes256Ctr {
    type EncryptReader<R: Read> = StreamReader<R>;
    type DecryptReader<R: Read> = StreamReader<R>;

    fn ciphertext_len(&self, plaintext_len: u64) -> u64 {
        plaintext_len.saturating_add(IV_LEN as u64)
    }

    fn plaintext_len(&self, ciphertext_len: u64) -> Result<u64> {
        ciphertext_len
            .checked_sub(IV_LEN as u64)
            .ok_or(CryptoError::InvalidLength { ciphertext_len })
    }

    fn encrypt_reader<R: Read>(&self, src: R) -> Result<StreamReader<R>> {
        Ok(self.encrypt_reader_with_iv(src, random_iv()?))
    }

    fn decrypt_reader<R: Read>(&self, src: R) -> StreamReader<R> {
        StreamReader::new(
            src,
            State::Ctr(Box::new(CtrState::decrypt(self.key.clone()))),
        )
    }

    fn encrypt(&self, src: impl Read, dst: impl Write) -> Result<u64> {
        crate::stream::copy_wide(self.encrypt_reader(src)?, dst)
    }

    fn decrypt(&self, src: impl Read, dst: impl Write) -> Result<u64> {
        crate::stream::copy_wide(self.decrypt_reader(src), dst)
    }
}

/// The sans-io state of a Go-format CTR stream (either direction).
pub(crate) struct CtrState {
    encrypt: bool,
    iv: [u8; IV_LEN],
    /// Encrypt: IV bytes already output. Decrypt: IV bytes already read.
    iv_pos: usize,
    key: CtrKey,
    stream: Option<CtrStream>,
    buf: Vec<u8>,
    out_start: usize,
    out_end: usize,
    eof: bool,
}

impl std::fmt::Debug for CtrState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Not the buffer: it holds plaintext (before encryption, after decryption).
        f.debug_struct("CtrState")
            .field("encrypt", &self.encrypt)
            .field("iv_pos", &self.iv_pos)
            .field("pending", &(self.out_end - self.out_start))
            .field("eof", &self.eof)
            .finish_non_exhaustive()
    }
}

impl CtrState {
    fn encrypt(key: CtrKey, iv: [u8; IV_LEN]) -> Self {
        CtrState {
            encrypt: true,
            iv,
            iv_pos: 0,
            stream: Some(CtrStream::new(key.clone(), iv)),
            key,
            buf: Vec::new(),
            out_start: 0,
            out_end: 0,
            eof: false,
        }
    }

    fn decrypt(key: CtrKey) -> Self {
        CtrState {
            encrypt: false,
            iv: [0; IV_LEN],
            iv_pos: 0,
            stream: None,
            key,
            buf: Vec::new(),
            out_start: 0,
            out_end: 0,
            eof: false,
        }
    }

    pub(crate) fn pending(&self) -> &[u8] {
        if self.encrypt && self.iv_pos < IV_LEN {
            &self.iv[self.iv_pos..]
        } else {
            &self.buf[self.out_start..self.out_end]
        }
    }

    pub(crate) fn consume(&mut self, n: usize) {
        if self.encrypt && self.iv_pos < IV_LEN {
            self.iv_pos += n;
        } else {
            self.out_start += n;
        }
    }

    pub(crate) fn input(&mut self) -> &mut [u8] {
        if self.eof {
            return &mut [];
        }
        if !self.encrypt && self.iv_pos < IV_LEN {
            return &mut self.iv[self.iv_pos..];
        }
        if self.out_start < self.out_end {
            return &mut [];
        }
        if self.buf.is_empty() {
            self.buf = vec![0; CTR_BUF];
        }
        &mut self.buf[..]
    }

    pub(crate) fn filled(&mut self, n: usize) -> Result<()> {
        if !self.encrypt && self.iv_pos < IV_LEN {
            self.iv_pos += n;
            if self.iv_pos == IV_LEN {
                self.stream = Some(CtrStream::new(self.key.clone(), self.iv));
            }
            return Ok(());
        }
        if let Some(stream) = &mut self.stream {
            stream.apply(&mut self.buf[..n]);
        }
        self.out_start = 0;
        self.out_end = n;
        Ok(())
    }

    pub(crate) fn finish(&mut self) -> Result<()> {
        self.eof = true;
        if !self.encrypt && self.iv_pos < IV_LEN {
            return Err(CryptoError::ShortHeader {
                got: self.iv_pos,
                expected: IV_LEN,
            });
        }
        Ok(())
    }

    pub(crate) fn done(&self) -> bool {
        self.eof && self.pending().is_empty()
    }

    pub(crate) fn direct_limit(&self) -> Option<(usize, usize)> {
        (!self.eof && self.pending().is_empty() && self.stream.is_some()).then_some((usize::MAX, 0))
    }

    pub(crate) fn direct(&mut self, data: &mut [u8], _prefix: usize) {
        if let Some(stream) = &mut self.stream {
            stream.apply(data);
        }
    }
}
