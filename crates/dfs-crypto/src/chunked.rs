//! `Aes256CtrBlake3`: chunked AES-256-CTR + keyed BLAKE3, encrypt-then-MAC.
//!
//! The byte-level format is specified in `FORMAT.md`.

use std::io::{Read, Write};

use zeroize::Zeroizing;

use crate::keystream::CtrKey;
use crate::stream::{State, StreamReader, StreamWriter};
use crate::{Cipher, CryptoError, Key, Polyval, Result};

/// Magic bytes that start every [`Aes256CtrBlake3`] ciphertext.
pub const MAGIC: [u8; 4] = *b"DFSC";
/// The format version this crate writes. It reads this one and version 1 (whose tags hash
/// the whole chunk with keyed BLAKE3; see `FORMAT.md`).
pub const VERSION: u8 = 2;
/// Length of the random nonce in the header.
pub const NONCE_LEN: usize = 32;
/// Length of the header: magic, version, 3 reserved bytes, chunk size, nonce.
pub const HEADER_LEN: usize = 4 + 1 + 3 + 4 + NONCE_LEN;
/// Length of the BLAKE3 tag after every chunk.
pub const TAG_LEN: usize = 32;
/// The default chunk size: 64 KiB of plaintext per chunk.
pub const DEFAULT_CHUNK_SIZE: usize = 64 * 1024;
/// The largest chunk size accepted (it bounds a decryptor's memory).
pub const MAX_CHUNK_SIZE: usize = 4 * 1024 * 1024;

const CONTEXT_ENC_V1: &str = "dfs-crypto 2026-11 Aes256CtrBlake3 v1 chunk encryption key";
const CONTEXT_MAC_V1: &str = "dfs-crypto 2026-11 Aes256CtrBlake3 v1 chunk authentication key";
const CONTEXT_ENC_V2: &str = "dfs-crypto 2026-12 Aes256CtrBlake3 v2 chunk encryption key";
const CONTEXT_MAC_V2: &str = "dfs-crypto 2026-12 Aes256CtrBlake3 v2 chunk authentication key";
const CONTEXT_HASH_V2: &str = "dfs-crypto 2026-12 Aes256CtrBlake3 v2 chunk hash key";

/// Push-path input buffer: plaintext bytes encrypted per `Write::write` at most.
const INPUT_BUF: usize = 64 * 1024;

/// The server's default cipher: authenticated, chunked AES-256-CTR with a keyed BLAKE3 tag
/// per chunk (encrypt-then-MAC), in the spirit of age's STREAM construction.
///
/// A ciphertext is a 44-byte header (magic, version, chunk size, random 32-byte nonce)
/// followed by chunks of `chunk_size` plaintext bytes (the last one shorter, possibly empty),
/// each followed by a 32-byte tag. Per-file keys are derived from the key and the whole
/// header with `blake3::derive_key`. Each tag is keyed BLAKE3 over the chunk's digest (POLYVAL
/// of its ciphertext under a secret per-file key, a universal hash that runs several times
/// faster than BLAKE3), the chunk index and a last-chunk flag.
/// A flipped bit, truncation, reordered, dropped or spliced chunks and appended bytes are all
/// detected, and decryption releases only verified chunks. See `FORMAT.md` for the bytes.
///
/// ```
/// use dfs_crypto::{Aes256CtrBlake3, Cipher, CryptoError, Key};
///
/// let cipher = Aes256CtrBlake3::new(&Key::generate()?);
/// let mut sealed = Vec::new();
/// cipher.encrypt(&b"attack at dawn"[..], &mut sealed)?;
/// assert_eq!(sealed.len() as u64, cipher.ciphertext_len(14));
///
/// let mut opened = Vec::new();
/// cipher.decrypt(&sealed[..], &mut opened)?;
/// assert_eq!(opened, b"attack at dawn");
///
/// sealed[50] ^= 1; // tamper
/// let err = cipher.decrypt(&sealed[..], &mut Vec::new()).unwrap_err();
/// assert!(matches!(err, CryptoError::Authentication { chunk: 0 }));
/// # Ok::<(), CryptoError>(())
/// ```
#[derive(Clone)]
pub struct Aes256CtrBlake3 {
    key: Key,
    chunk_size: usize,
}

impl std::fmt::Debug for Aes256CtrBlake3 {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Aes256CtrBlake3")
            .field("chunk_size", &self.chunk_size)
            .finish_non_exhaustive()
    }
}

impl Aes256CtrBlake3 {
    /// Creates the cipher for `key` with the default 64 KiB chunks.
    pub fn new(key: &Key) -> Self {
        Aes256CtrBlake3 {
            key: key.clone(),
            chunk_size: DEFAULT_CHUNK_SIZE,
        }
    }

    /// Sets the plaintext bytes per chunk used when encrypting (a multiple of 16 from 16 to
    /// [`MAX_CHUNK_SIZE`]). Decryption reads the chunk size from the header, so any valid
    /// ciphertext decrypts whatever this is set to; only [`Cipher::ciphertext_len`] and
    /// [`Cipher::plaintext_len`] assume it.
    pub fn with_chunk_size(mut self, chunk_size: usize) -> Result<Self> {
        validate_chunk_size(chunk_size as u64)?;
        self.chunk_size = chunk_size;
        Ok(self)
    }

    /// The plaintext bytes per chunk used when encrypting.
    pub fn chunk_size(&self) -> usize {
        self.chunk_size
    }

    fn header(&self, nonce: [u8; NONCE_LEN]) -> [u8; HEADER_LEN] {
        let mut header = [0u8; HEADER_LEN];
        header[..4].copy_from_slice(&MAGIC);
        header[4] = VERSION;
        // Fits: validated to at most MAX_CHUNK_SIZE.
        header[8..12].copy_from_slice(&(self.chunk_size as u32).to_le_bytes());
        header[12..].copy_from_slice(&nonce);
        header
    }

    fn seal_state(&self) -> Result<State> {
        let mut nonce = [0u8; NONCE_LEN];
        getrandom::fill(&mut nonce)?;
        Ok(self.seal_state_with_nonce(nonce))
    }

    fn seal_state_with_nonce(&self, nonce: [u8; NONCE_LEN]) -> State {
        let header = self.header(nonce);
        let core = ChunkCore::new(&self.key, &header, self.chunk_size);
        State::Seal(Box::new(SealState::new(header, core)))
    }

    /// Decryption state for the push path (plaintext pending in the buffer).
    fn open_state(&self) -> State {
        State::Open(Box::new(OpenState::new(self.key.clone(), false)))
    }

    /// Decryption state for the pull path (decrypts into the caller's buffer).
    fn open_state_pull(&self) -> State {
        State::Open(Box::new(OpenState::new(self.key.clone(), true)))
    }

    /// An encrypting reader with a caller-chosen nonce.
    ///
    /// **Hazardous**: reusing a nonce with the same key and chunk size reuses the keystream.
    /// Meant for test vectors; [`Cipher::encrypt_reader`] draws a random nonce.
    pub fn encrypt_reader_with_nonce<R: Read>(
        &self,
        src: R,
        nonce: [u8; NONCE_LEN],
    ) -> StreamReader<R> {
        StreamReader::new(src, self.seal_state_with_nonce(nonce))
    }

    /// A push-style encrypting writer. [`StreamWriter::finish`] writes the final chunk and
    /// must be called.
    pub fn encrypt_writer<W: Write>(&self, dst: W) -> Result<StreamWriter<W>> {
        Ok(StreamWriter::new(dst, self.seal_state()?))
    }

    /// A push-style decrypting writer: only verified plaintext reaches `dst`.
    /// [`StreamWriter::finish`] verifies the final chunk (and reports truncation).
    pub fn decrypt_writer<W: Write>(&self, dst: W) -> StreamWriter<W> {
        StreamWriter::new(dst, self.open_state())
    }

    /// The async (tokio) encrypting reader.
    #[cfg(feature = "tokio")]
    pub fn encrypt_async_reader<R: tokio::io::AsyncRead + Unpin>(
        &self,
        src: R,
    ) -> Result<crate::AsyncStreamReader<R>> {
        Ok(crate::AsyncStreamReader::new(src, self.seal_state()?))
    }

    /// The async (tokio) verifying decrypting reader.
    #[cfg(feature = "tokio")]
    pub fn decrypt_async_reader<R: tokio::io::AsyncRead + Unpin>(
        &self,
        src: R,
    ) -> crate::AsyncStreamReader<R> {
        crate::AsyncStreamReader::new(src, self.open_state_pull())
    }

    /// The async (tokio) encrypting writer; `shutdown` writes the final chunk.
    #[cfg(feature = "tokio")]
    pub fn encrypt_async_writer<W: tokio::io::AsyncWrite + Unpin>(
        &self,
        dst: W,
    ) -> Result<crate::AsyncStreamWriter<W>> {
        Ok(crate::AsyncStreamWriter::new(dst, self.seal_state()?))
    }

    /// The async (tokio) verifying decrypting writer; `shutdown` verifies the final chunk.
    #[cfg(feature = "tokio")]
    pub fn decrypt_async_writer<W: tokio::io::AsyncWrite + Unpin>(
        &self,
        dst: W,
    ) -> crate::AsyncStreamWriter<W> {
        crate::AsyncStreamWriter::new(dst, self.open_state())
    }
}

fn validate_chunk_size(chunk_size: u64) -> Result<()> {
    if chunk_size < 16 || chunk_size > MAX_CHUNK_SIZE as u64 || !chunk_size.is_multiple_of(16) {
        return Err(CryptoError::InvalidChunkSize { chunk_size });
    }
    Ok(())
}

/// The plaintext length of a ciphertext of `ciphertext_len` bytes in `chunk_size` chunks.
fn plaintext_len(chunk_size: usize, ciphertext_len: u64) -> Result<u64> {
    let invalid = CryptoError::InvalidLength { ciphertext_len };
    let body = ciphertext_len
        .checked_sub(HEADER_LEN as u64)
        .ok_or(CryptoError::InvalidLength { ciphertext_len })?;
    let record = (chunk_size + TAG_LEN) as u64;
    let full = body / record;
    let rest = body % record;
    match (full, rest) {
        (0, 0) => Err(invalid),
        (_, 0) => Ok(full * chunk_size as u64),
        (0, r) if r >= TAG_LEN as u64 => Ok(r - TAG_LEN as u64),
        // A short final chunk after full ones must hold at least one byte.
        (f, r) if r > TAG_LEN as u64 => Ok(f * chunk_size as u64 + r - TAG_LEN as u64),
        _ => Err(invalid),
    }
}

/// Checks a header's magic, version and reserved bytes; returns its chunk size.
fn header_chunk_size(header: &[u8; HEADER_LEN]) -> Result<usize> {
    if header[..4] != MAGIC {
        return Err(CryptoError::BadHeader {
            reason: "bad magic (not an Aes256CtrBlake3 ciphertext)",
        });
    }
    if !(1..=VERSION).contains(&header[4]) {
        return Err(CryptoError::UnsupportedVersion { version: header[4] });
    }
    if header[5..8] != [0, 0, 0] {
        return Err(CryptoError::BadHeader {
            reason: "reserved bytes are not zero",
        });
    }
    let chunk_size = u32::from_le_bytes([header[8], header[9], header[10], header[11]]);
    validate_chunk_size(u64::from(chunk_size)).map_err(|_| CryptoError::BadHeader {
        reason: "chunk size is not a multiple of 16 in the supported range",
    })?;
    Ok(chunk_size as usize)
}

impl Cipher for Aes256CtrBlake3 {
    type EncryptReader<R: Read> = StreamReader<R>;
    type DecryptReader<R: Read> = StreamReader<R>;

    fn ciphertext_len(&self, plaintext_len: u64) -> u64 {
        let chunks = plaintext_len.div_ceil(self.chunk_size as u64).max(1);
        (HEADER_LEN as u64)
            .saturating_add(plaintext_len)
            .saturating_add(chunks.saturating_mul(TAG_LEN as u64))
    }

    fn plaintext_len(&self, ciphertext_len: u64) -> Result<u64> {
        plaintext_len(self.chunk_size, ciphertext_len)
    }

    fn header_len(&self) -> usize {
        HEADER_LEN
    }

    fn plaintext_len_of(&self, header: &[u8], ciphertext_len: u64) -> Result<u64> {
        let header: &[u8; HEADER_LEN] = header
            .get(..HEADER_LEN)
            .and_then(|h| h.try_into().ok())
            .ok_or(CryptoError::InvalidLength { ciphertext_len })?;
        plaintext_len(header_chunk_size(header)?, ciphertext_len)
    }

    fn encrypt_reader<R: Read>(&self, src: R) -> Result<StreamReader<R>> {
        Ok(StreamReader::new(src, self.seal_state()?))
    }

    fn decrypt_reader<R: Read>(&self, src: R) -> StreamReader<R> {
        StreamReader::new(src, self.open_state_pull())
    }

    fn encrypt(&self, src: impl Read, dst: impl Write) -> Result<u64> {
        crate::stream::copy_wide(self.encrypt_reader(src)?, dst)
    }

    fn decrypt(&self, src: impl Read, dst: impl Write) -> Result<u64> {
        crate::stream::copy_wide(self.decrypt_reader(src), dst)
    }
}

/// The chunk-level core: per-file keys and the seal/open operations on one chunk.
pub(crate) struct ChunkCore {
    ctr: CtrKey,
    mac_key: Zeroizing<[u8; 32]>,
    /// Version 1: tags hash the whole chunk with BLAKE3 (no digest, `hash` unused).
    v1: bool,
    /// POLYVAL under the file's hash key, never updated: every chunk's digest starts from a
    /// clone.
    hash: Polyval,
    chunk_size: usize,
    /// Index of the next chunk.
    index: u64,
}

impl std::fmt::Debug for ChunkCore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChunkCore")
            .field("version", &if self.v1 { 1 } else { 2 })
            .field("chunk_size", &self.chunk_size)
            .field("index", &self.index)
            .finish_non_exhaustive()
    }
}

impl ChunkCore {
    /// The per-file keys for a `header` whose version [`header_chunk_size`] accepted.
    fn new(key: &Key, header: &[u8; HEADER_LEN], chunk_size: usize) -> Self {
        let mut ikm = Zeroizing::new([0u8; 32 + HEADER_LEN]);
        ikm[..32].copy_from_slice(key.as_bytes());
        ikm[32..].copy_from_slice(header);
        let v1 = header[4] == 1;
        let (enc, mac) = if v1 {
            (CONTEXT_ENC_V1, CONTEXT_MAC_V1)
        } else {
            (CONTEXT_ENC_V2, CONTEXT_MAC_V2)
        };
        let enc_key = Zeroizing::new(blake3::derive_key(enc, &ikm[..]));
        let mac_key = Zeroizing::new(blake3::derive_key(mac, &ikm[..]));
        let derived = Zeroizing::new(blake3::derive_key(CONTEXT_HASH_V2, &ikm[..]));
        let mut hash_key = Zeroizing::new([0u8; 16]);
        hash_key.copy_from_slice(&derived[..16]);
        ChunkCore {
            ctr: CtrKey::new(&enc_key),
            mac_key,
            v1,
            hash: Polyval::new(&hash_key),
            chunk_size,
            index: 0,
        }
    }

    /// A fresh digest for the next chunk (version 2).
    fn digest(&self) -> ChunkDigest {
        ChunkDigest::new(self.hash.clone())
    }

    /// The tag of a whole chunk.
    fn tag(&self, index: u64, last: bool, ciphertext: &[u8]) -> blake3::Hash {
        if self.v1 {
            // Version 1: the ciphertext first, so BLAKE3 hashes it at full SIMD width from
            // byte 0; the fixed-size suffix keeps the encoding injective.
            let mut hasher = blake3::Hasher::new_keyed(&self.mac_key);
            hasher.update(ciphertext);
            hasher.update(&index.to_le_bytes());
            hasher.update(&[u8::from(last)]);
            return hasher.finalize();
        }
        let mut digest = self.digest();
        digest.update(ciphertext);
        self.tag_of_digest(index, last, &digest.finalize())
    }

    /// Version 2: the tag of a chunk with this digest.
    fn tag_of_digest(&self, index: u64, last: bool, digest: &[u8; 16]) -> blake3::Hash {
        let mut input = Zeroizing::new([0u8; 16 + 8 + 1]);
        input[..16].copy_from_slice(digest);
        input[16..24].copy_from_slice(&index.to_le_bytes());
        input[24] = u8::from(last);
        blake3::keyed_hash(&self.mac_key, &input[..])
    }

    fn counter(&self, index: u64) -> u128 {
        u128::from(index) * (self.chunk_size as u128 / 16)
    }

    /// Checks `record`'s tag for chunk `self.index` (constant-time comparison).
    fn verify(&self, record: &[u8], last: bool) -> bool {
        let (body, tag) = record.split_at(record.len() - TAG_LEN);
        let Ok(tag) = <[u8; TAG_LEN]>::try_from(tag) else {
            return false;
        };
        self.tag(self.index, last, body) == blake3::Hash::from_bytes(tag)
    }

    /// Accepts the body of a `record` whose tag [`ChunkCore::verify`] accepted: decrypts it in
    /// place if `decrypt` (else the caller decrypts it on the way out), moves to the next
    /// chunk, and returns the body length.
    fn release(&mut self, record: &mut [u8], decrypt: bool) -> usize {
        let len = record.len() - TAG_LEN;
        if decrypt {
            self.ctr.apply(self.counter(self.index), &mut record[..len]);
        }
        self.index += 1;
        len
    }
}

/// The running digest of one chunk's ciphertext (format version 2):
/// `POLYVAL(H, pad16(ciphertext) || LE64(length) || LE64(0))`, fed in pieces of any size.
struct ChunkDigest {
    hash: Polyval,
    /// Bytes fed so far.
    len: u64,
    /// The last `len % 16` bytes fed, not absorbed yet (ciphertext, so nothing secret).
    partial: [u8; 16],
}

impl ChunkDigest {
    fn new(hash: Polyval) -> Self {
        ChunkDigest {
            hash,
            len: 0,
            partial: [0; 16],
        }
    }

    fn update(&mut self, mut data: &[u8]) {
        let held = (self.len % 16) as usize;
        self.len += data.len() as u64;
        if held > 0 {
            let take = (16 - held).min(data.len());
            self.partial[held..held + take].copy_from_slice(&data[..take]);
            data = &data[take..];
            if held + take < 16 {
                return;
            }
            self.hash.update_padded(&self.partial);
        }
        let whole = data.len() - data.len() % 16;
        self.hash.update_padded(&data[..whole]);
        self.partial[..data.len() - whole].copy_from_slice(&data[whole..]);
    }

    /// The digest (secret: it is only ever hashed into the tag).
    fn finalize(mut self) -> Zeroizing<[u8; 16]> {
        let held = (self.len % 16) as usize;
        if held > 0 {
            self.hash.update_padded(&self.partial[..held]);
        }
        let mut lengths = [0u8; 16];
        lengths[..8].copy_from_slice(&self.len.to_le_bytes());
        self.hash.update_padded(&lengths);
        Zeroizing::new(self.hash.finalize())
    }
}

/// Encryption state (always the current format version). Encryption streams: plaintext is
/// encrypted in place (in the caller's buffer on the pull path, else in a buffer of the
/// state's), its ciphertext fed to the chunk's digest and released before the chunk is
/// complete (the tag follows the chunk). A full chunk's tag waits until more input arrives
/// (then it is not the last chunk) or the input ends (it is).
pub(crate) struct SealState {
    header: [u8; HEADER_LEN],
    header_pos: usize,
    core: ChunkCore,
    /// Digest of the current chunk's ciphertext so far.
    digest: ChunkDigest,
    /// Plaintext bytes of the current chunk encrypted so far.
    in_chunk: usize,
    /// A finished tag waiting to be output (before any buffered bytes).
    tag: [u8; TAG_LEN],
    tag_pos: usize,
    /// Push path: input is encrypted here, and `buf[out_start..out_end]` is output still to
    /// be handed on. Allocated on first use.
    buf: Vec<u8>,
    out_start: usize,
    out_end: usize,
    eof: bool,
}

impl std::fmt::Debug for SealState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Not the buffer: it may hold plaintext between `input` and `filled`.
        f.debug_struct("SealState")
            .field("core", &self.core)
            .field("in_chunk", &self.in_chunk)
            .field("pending", &self.pending().len())
            .field("eof", &self.eof)
            .finish_non_exhaustive()
    }
}

impl SealState {
    fn new(header: [u8; HEADER_LEN], core: ChunkCore) -> Self {
        SealState {
            header,
            header_pos: 0,
            digest: core.digest(),
            core,
            in_chunk: 0,
            tag: [0; TAG_LEN],
            tag_pos: TAG_LEN,
            buf: Vec::new(),
            out_start: 0,
            out_end: 0,
            eof: false,
        }
    }

    pub(crate) fn pending(&self) -> &[u8] {
        if self.header_pos < HEADER_LEN {
            &self.header[self.header_pos..]
        } else if self.tag_pos < TAG_LEN {
            &self.tag[self.tag_pos..]
        } else {
            &self.buf[self.out_start..self.out_end]
        }
    }

    pub(crate) fn consume(&mut self, n: usize) {
        if self.header_pos < HEADER_LEN {
            self.header_pos += n;
        } else if self.tag_pos < TAG_LEN {
            self.tag_pos += n;
        } else {
            self.out_start += n;
        }
    }

    /// Plaintext bytes the current chunk still takes, or `None` if it is full (the next byte
    /// starts a new chunk).
    fn chunk_room(&self) -> Option<usize> {
        Some(self.core.chunk_size - self.in_chunk).filter(|&room| room > 0)
    }

    /// Closes the current chunk: its tag becomes pending output.
    fn close_chunk(&mut self, last: bool) {
        let digest = std::mem::replace(&mut self.digest, self.core.digest()).finalize();
        self.tag = *self
            .core
            .tag_of_digest(self.core.index, last, &digest)
            .as_bytes();
        self.tag_pos = 0;
        self.core.index += 1;
        self.in_chunk = 0;
    }

    /// Encrypts `data`, the next plaintext bytes of the current chunk, in place.
    fn seal(&mut self, data: &mut [u8]) {
        let position = self.core.index * self.core.chunk_size as u64 + self.in_chunk as u64;
        crate::keystream::apply_at(&self.core.ctr, position, data);
        self.digest.update(data);
        self.in_chunk += data.len();
    }

    /// Bytes the caller may encrypt in its own buffer right now, if any, and how many bytes
    /// of prefix (the previous chunk's tag) [`SealState::direct`] then writes before them.
    pub(crate) fn direct_limit(&self) -> Option<(usize, usize)> {
        if self.eof || !self.pending().is_empty() {
            return None;
        }
        Some(match self.chunk_room() {
            // The current chunk is full: new bytes close it, so its tag goes first.
            None => (self.core.chunk_size, TAG_LEN),
            Some(room) => (room, 0),
        })
    }

    /// Encrypts `data[prefix..]` in place (at most the limit of
    /// [`SealState::direct_limit`]), writing the closed chunk's tag to `data[..prefix]`.
    pub(crate) fn direct(&mut self, data: &mut [u8], prefix: usize) {
        let (head, body) = data.split_at_mut(prefix);
        if prefix > 0 {
            self.close_chunk(false);
            head.copy_from_slice(&self.tag);
            self.tag_pos = TAG_LEN;
        }
        self.seal(body);
    }

    pub(crate) fn input(&mut self) -> &mut [u8] {
        if self.eof || !self.pending().is_empty() {
            return &mut [];
        }
        if self.buf.is_empty() {
            self.buf = vec![0; self.core.chunk_size.min(INPUT_BUF)];
        }
        // A full chunk: the next bytes start a new one.
        let room = self.chunk_room().unwrap_or(self.core.chunk_size);
        let len = room.min(self.buf.len());
        &mut self.buf[..len]
    }

    pub(crate) fn filled(&mut self, n: usize) -> Result<()> {
        if self.chunk_room().is_none() {
            self.close_chunk(false);
        }
        let mut buf = std::mem::take(&mut self.buf);
        self.seal(&mut buf[..n]);
        self.buf = buf;
        self.out_start = 0;
        self.out_end = n;
        Ok(())
    }

    pub(crate) fn finish(&mut self) -> Result<()> {
        if !self.eof {
            self.eof = true;
            self.close_chunk(true);
        }
        Ok(())
    }

    pub(crate) fn done(&self) -> bool {
        self.eof && self.pending().is_empty()
    }
}

/// How many bytes past a record the decryptor reads. One byte is enough to know the record is
/// not the last; 64 keep the bulk reads into the record buffer cache-line aligned (the
/// lookahead bytes move to the front, the next read lands right after them). At most one
/// record (exactly one at chunk size 32): the carried bytes start the next record and are
/// verified with it, by the next `filled` or by `finish`.
fn lookahead(chunk_size: usize) -> usize {
    if chunk_size + TAG_LEN >= 64 { 64 } else { 1 }
}

/// Decryption state: header in, then `chunk_size + TAG_LEN + lookahead` bytes in, verified plaintext
/// out. Nothing is output before its chunk's tag has been checked.
pub(crate) struct OpenState {
    key: Key,
    header: [u8; HEADER_LEN],
    header_pos: usize,
    core: Option<ChunkCore>,
    buf: Vec<u8>,
    fill: usize,
    out_start: usize,
    out_end: usize,
    /// Bytes after the released record (`buf[record..record + carry]`) that start the next
    /// one; moved to the front once the output is drained.
    carry: usize,
    eof: bool,
    /// Pull path: keep verified ciphertext in `buf` and decrypt it straight into the
    /// caller's buffer in [`OpenState::read_into`] (one copy fewer). `pending` is then
    /// ciphertext and must not be handed on.
    lazy: bool,
    /// Plaintext stream position of `buf[0]` of the released chunk.
    chunk_start: u64,
}

impl std::fmt::Debug for OpenState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Not the buffer: it holds verified plaintext on the push path.
        f.debug_struct("OpenState")
            .field("core", &self.core)
            .field("header_pos", &self.header_pos)
            .field("fill", &self.fill)
            .field("pending", &self.pending_len())
            .field("eof", &self.eof)
            .finish_non_exhaustive()
    }
}

impl OpenState {
    fn new(key: Key, lazy: bool) -> Self {
        OpenState {
            lazy,
            chunk_start: 0,
            key,
            header: [0; HEADER_LEN],
            header_pos: 0,
            core: None,
            buf: Vec::new(),
            fill: 0,
            out_start: 0,
            out_end: 0,
            carry: 0,
            eof: false,
        }
    }

    /// Verified plaintext ready to be handed on (push path only).
    pub(crate) fn pending(&self) -> &[u8] {
        debug_assert!(!self.lazy || self.out_start == self.out_end);
        if self.lazy {
            return &[];
        }
        &self.buf[self.out_start..self.out_end]
    }

    pub(crate) fn pending_len(&self) -> usize {
        self.out_end - self.out_start
    }

    /// Hands on up to `out.len()` bytes of verified plaintext, decrypting them into `out` on
    /// the lazy path.
    pub(crate) fn read_into(&mut self, out: &mut [u8]) -> usize {
        let n = out.len().min(self.pending_len());
        let src = &self.buf[self.out_start..self.out_start + n];
        if self.lazy {
            if let Some(core) = &self.core {
                let position = self.chunk_start + self.out_start as u64;
                crate::keystream::xor_at(&core.ctr, position, src, &mut out[..n]);
            }
        } else {
            out[..n].copy_from_slice(src);
        }
        self.consume(n);
        n
    }

    pub(crate) fn consume(&mut self, n: usize) {
        self.out_start += n;
        if self.out_start == self.out_end {
            self.out_start = 0;
            self.out_end = 0;
            if self.carry > 0 {
                if let Some(core) = &self.core {
                    let record = core.chunk_size + TAG_LEN;
                    self.buf.copy_within(record..record + self.carry, 0);
                }
                self.fill = self.carry;
                self.carry = 0;
            }
        }
    }

    pub(crate) fn input(&mut self) -> &mut [u8] {
        if self.eof {
            return &mut [];
        }
        let Some(core) = &self.core else {
            return &mut self.header[self.header_pos..];
        };
        if self.out_start < self.out_end {
            return &mut [];
        }
        let end = core.chunk_size + TAG_LEN + lookahead(core.chunk_size);
        &mut self.buf[self.fill..end]
    }

    fn parse_header(&mut self) -> Result<()> {
        let chunk_size = header_chunk_size(&self.header)?;
        self.core = Some(ChunkCore::new(&self.key, &self.header, chunk_size));
        self.buf = vec![0; chunk_size + TAG_LEN + lookahead(chunk_size)];
        Ok(())
    }

    pub(crate) fn filled(&mut self, n: usize) -> Result<()> {
        let Some(core) = &mut self.core else {
            self.header_pos += n;
            if self.header_pos == HEADER_LEN {
                self.parse_header()?;
            }
            return Ok(());
        };
        self.fill += n;
        let record = core.chunk_size + TAG_LEN;
        if self.fill > record {
            // More bytes follow, so this chunk must not be the last one.
            let chunk = &mut self.buf[..record];
            if !core.verify(chunk, false) {
                return Err(if core.verify(chunk, true) {
                    CryptoError::TrailingData { chunk: core.index }
                } else {
                    CryptoError::Authentication { chunk: core.index }
                });
            }
            self.chunk_start = core.index * core.chunk_size as u64;
            let len = core.release(chunk, !self.lazy);
            self.carry = self.fill - record;
            self.fill = 0;
            self.out_start = 0;
            self.out_end = len;
        }
        Ok(())
    }

    pub(crate) fn finish(&mut self) -> Result<()> {
        if self.eof {
            return Ok(());
        }
        self.eof = true;
        let Some(core) = &mut self.core else {
            return Err(CryptoError::ShortHeader {
                got: self.header_pos,
                expected: HEADER_LEN,
            });
        };
        if self.fill < TAG_LEN {
            return Err(CryptoError::Truncated { chunk: core.index });
        }
        let record = &mut self.buf[..self.fill];
        if core.verify(record, true) {
            self.chunk_start = core.index * core.chunk_size as u64;
            let len = core.release(record, !self.lazy);
            self.fill = 0;
            self.out_start = 0;
            self.out_end = len;
            Ok(())
        } else if record.len() == core.chunk_size + TAG_LEN && core.verify(record, false) {
            Err(CryptoError::Truncated {
                chunk: core.index + 1,
            })
        } else {
            Err(CryptoError::Authentication { chunk: core.index })
        }
    }

    pub(crate) fn done(&self) -> bool {
        self.eof && self.pending_len() == 0
    }
}

#[cfg(test)]
mod tests {
    use polyval::universal_hash::UniversalHash;

    use super::*;

    /// `FORMAT.md`'s digest, straight from the `polyval` crate.
    fn reference_digest(h: &[u8; 16], chunk: &[u8]) -> [u8; 16] {
        let mut lengths = [0u8; 16];
        lengths[..8].copy_from_slice(&(chunk.len() as u64).to_le_bytes());
        let mut hash = polyval::Polyval::new(&(*h).into());
        hash.update_padded(chunk);
        hash.update_padded(&lengths);
        hash.finalize().into()
    }

    /// A chunk fed to `ChunkDigest` in pieces of any sizes (empty ones, single bytes, pieces
    /// that end inside a block and pieces that complete one) has the digest of the whole.
    #[test]
    fn digest_of_any_split_is_the_digest_of_the_whole() {
        let h: [u8; 16] = std::array::from_fn(|i| (i as u8).wrapping_mul(29) ^ 0x5c);
        let data: Vec<u8> = (0..3000u32).map(|i| (i * 31 + i / 7) as u8).collect();
        let steps: [&[usize]; 6] = [
            &[1],
            &[0, 3, 15, 1, 16, 17],
            &[7, 9],
            &[16],
            &[513, 0, 511, 2],
            &[1000],
        ];
        for len in [0, 1, 15, 16, 17, 31, 32, 33, 511, 512, 513, 1000, 3000] {
            let want = reference_digest(&h, &data[..len]);
            for pattern in steps {
                let mut digest = ChunkDigest::new(Polyval::new(&h));
                let mut pos = 0;
                for &step in pattern.iter().cycle() {
                    if pos == len {
                        break;
                    }
                    let end = (pos + step).min(len);
                    digest.update(&data[pos..end]);
                    pos = end;
                }
                assert_eq!(*digest.finalize(), want, "len {len} steps {pattern:?}");
            }
        }
    }

    /// Without the length block a chunk and its zero-extension inside the last block would
    /// have one digest; with it they differ.
    #[test]
    fn the_length_block_separates_zero_extensions() {
        let h = [0x5a_u8; 16];
        let mut bare = polyval::Polyval::new(&h.into());
        bare.update_padded(&[1, 2, 3]);
        let mut extended = polyval::Polyval::new(&h.into());
        extended.update_padded(&[1, 2, 3, 0]);
        assert_eq!(bare.finalize(), extended.finalize());
        assert_ne!(
            reference_digest(&h, &[1, 2, 3]),
            reference_digest(&h, &[1, 2, 3, 0])
        );
        let digest = |chunk: &[u8]| {
            let mut d = ChunkDigest::new(Polyval::new(&h));
            d.update(chunk);
            *d.finalize()
        };
        assert_ne!(digest(&[1, 2, 3]), digest(&[1, 2, 3, 0]));
    }
}
