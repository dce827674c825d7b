//! The wire format, exposed for tests, fuzzing and other implementations: the handshake's
//! [`Hello`], key derivation, and the integrity-protected frame codec ([`FrameDecoder`],
//! [`FrameSealer`]). `PROTOCOL.md` describes every byte.
//!
//! Applications use [`Endpoint`](crate::Endpoint) and never need this module.

use std::sync::Arc;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use dfs_crypto::Polyval;
use tokio_util::codec::{Decoder, LengthDelimitedCodec};

use crate::error::{Result, TransportError};
use crate::identity::{NetworkSecret, NodeId};

/// The first 8 bytes either side sends.
pub const MAGIC: [u8; 8] = *b"dfs-wire";
/// The protocol version (bytes 8..10 of the hello, big-endian). Version 2 changed the frame
/// tag from keyed BLAKE3 (32 bytes) to POLYVAL under a one-time pad (16 bytes).
pub const VERSION: u16 = 2;
/// Length of the hello's prefix that every version keeps: magic and version.
pub const HELLO_PREFIX_LEN: usize = 10;
/// Length of a hello without the address (versions 1 and 2).
pub const HELLO_FIXED_LEN: usize = 82;
/// Longest advertised address accepted in a hello.
pub const MAX_ADDR_LEN: usize = 1024;
/// Length of the authentication proof either side sends after the hellos.
pub const PROOF_LEN: usize = 32;
/// Length of a frame's integrity tag.
pub const TAG_LEN: usize = 16;
/// Length of a frame's header: 4-byte length, 1-byte kind.
pub const HEADER_LEN: usize = 5;
/// Longest abort reason sent.
pub const MAX_REASON_LEN: usize = 1024;

/// What a connection is for (byte 10 of the hello).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum ConnKind {
    /// The one long-lived control connection between two nodes.
    Control = 0,
    /// A connection carrying one exchange ([`Substream`](crate::Substream)).
    Substream = 1,
}

/// Frame kinds (the first byte after the length).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum FrameKind {
    /// Acceptor to dialer, first frame: 0 = accepted, else refused with a UTF-8 reason.
    Welcome = 1,
    /// A postcard-encoded application message.
    Message = 2,
    /// A body follows: payload is its length, u64 big-endian.
    BodyStart = 3,
    /// Body bytes.
    Data = 4,
    /// The body is complete: payload is its length, u64 big-endian.
    End = 5,
    /// The body is abandoned: payload is a UTF-8 reason.
    Abort = 6,
    /// Keepalive; empty.
    Ping = 7,
    /// The sender will send nothing more: 1-byte reason code (0 = done, 1 = superseded).
    Close = 8,
}

impl FrameKind {
    /// Parse a kind byte.
    pub fn from_byte(b: u8) -> Option<Self> {
        Some(match b {
            1 => Self::Welcome,
            2 => Self::Message,
            3 => Self::BodyStart,
            4 => Self::Data,
            5 => Self::End,
            6 => Self::Abort,
            7 => Self::Ping,
            8 => Self::Close,
            _ => return None,
        })
    }
}

/// How much of a frame must have arrived before the decoder reserves room for all of it.
const RESERVE_AFTER: usize = 64 * 1024;

/// The hello either side sends first (see `PROTOCOL.md`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hello {
    /// What the connection is for.
    pub kind: ConnKind,
    /// Whether the sender requires a network secret.
    pub auth: bool,
    /// The sender's node id.
    pub node_id: NodeId,
    /// 32 fresh random bytes: the sender's challenge.
    pub nonce: [u8; 32],
    /// The largest frame payload the sender accepts.
    pub max_frame_len: u32,
    /// The address the sender can be dialled back on.
    pub addr: String,
}

impl Hello {
    /// Encode (version [`VERSION`]). An address longer than [`MAX_ADDR_LEN`] bytes is cut
    /// at the last character boundary within it, so the remote's UTF-8 check still passes;
    /// `Endpoint::bind` refuses such an address, so an endpoint never sends one.
    pub fn encode(&self) -> Vec<u8> {
        let addr = self.addr.as_bytes();
        let mut addr_len = addr.len().min(MAX_ADDR_LEN);
        while !self.addr.is_char_boundary(addr_len) {
            addr_len -= 1;
        }
        let mut out = Vec::with_capacity(HELLO_FIXED_LEN + addr_len);
        out.extend_from_slice(&MAGIC);
        out.extend_from_slice(&VERSION.to_be_bytes());
        out.push(self.kind as u8);
        out.push(u8::from(self.auth));
        out.extend_from_slice(&self.node_id.0);
        out.extend_from_slice(&self.nonce);
        out.extend_from_slice(&self.max_frame_len.to_be_bytes());
        out.extend_from_slice(&u16::try_from(addr_len).unwrap_or(u16::MAX).to_be_bytes());
        out.extend_from_slice(&addr[..addr_len]);
        out
    }

    /// Check the prefix (magic and version) of a hello.
    pub fn check_prefix(prefix: &[u8; HELLO_PREFIX_LEN]) -> Result<()> {
        let mut magic = [0u8; 8];
        magic.copy_from_slice(&prefix[..8]);
        if magic != MAGIC {
            return Err(TransportError::BadMagic { got: magic });
        }
        let theirs = u16::from_be_bytes([prefix[8], prefix[9]]);
        if theirs != VERSION {
            return Err(TransportError::VersionMismatch {
                ours: VERSION,
                theirs,
            });
        }
        Ok(())
    }

    /// Parse the fixed part after the prefix (bytes 10..82); returns the hello without its
    /// address and the address length still to read.
    pub fn decode_fixed(fixed: &[u8; HELLO_FIXED_LEN - HELLO_PREFIX_LEN]) -> Result<(Self, usize)> {
        let mut b = &fixed[..];
        let kind = match b.get_u8() {
            0 => ConnKind::Control,
            1 => ConnKind::Substream,
            k => {
                return Err(TransportError::Handshake {
                    reason: format!("unknown connection kind {k}"),
                });
            }
        };
        let auth = match b.get_u8() {
            0 => false,
            1 => true,
            a => {
                return Err(TransportError::Handshake {
                    reason: format!("unknown authentication mode {a}"),
                });
            }
        };
        let mut node_id = [0u8; 32];
        b.copy_to_slice(&mut node_id);
        let mut nonce = [0u8; 32];
        b.copy_to_slice(&mut nonce);
        let max_frame_len = b.get_u32();
        let addr_len = usize::from(b.get_u16());
        if addr_len > MAX_ADDR_LEN {
            return Err(TransportError::Handshake {
                reason: format!("advertised address of {addr_len} bytes (max {MAX_ADDR_LEN})"),
            });
        }
        let hello = Self {
            kind,
            auth,
            node_id: NodeId(node_id),
            nonce,
            max_frame_len,
            addr: String::new(),
        };
        Ok((hello, addr_len))
    }

    /// Set the address from its raw bytes (must be UTF-8).
    pub fn set_addr(&mut self, raw: &[u8]) -> Result<()> {
        self.addr = std::str::from_utf8(raw)
            .map_err(|_| TransportError::Handshake {
                reason: "advertised address is not UTF-8".to_owned(),
            })?
            .to_owned();
        Ok(())
    }

    /// Decode a whole hello from a buffer; returns it and the bytes it used.
    pub fn decode(bytes: &[u8]) -> Result<(Self, usize)> {
        let short = || TransportError::Handshake {
            reason: "hello truncated".to_owned(),
        };
        let prefix: &[u8; HELLO_PREFIX_LEN] = bytes
            .get(..HELLO_PREFIX_LEN)
            .and_then(|p| p.try_into().ok())
            .ok_or_else(short)?;
        Self::check_prefix(prefix)?;
        let fixed: &[u8; HELLO_FIXED_LEN - HELLO_PREFIX_LEN] = bytes
            .get(HELLO_PREFIX_LEN..HELLO_FIXED_LEN)
            .and_then(|p| p.try_into().ok())
            .ok_or_else(short)?;
        let (mut hello, addr_len) = Self::decode_fixed(fixed)?;
        let end = HELLO_FIXED_LEN + addr_len;
        hello.set_addr(bytes.get(HELLO_FIXED_LEN..end).ok_or_else(short)?)?;
        Ok((hello, end))
    }
}

/// Keys and proofs of one connection, derived from both hellos and the network secret.
#[derive(Clone)]
pub struct SessionKeys {
    /// Key of the frames we send (give it to exactly one [`FrameSealer`]).
    pub send: [u8; 32],
    /// Key of the frames we receive.
    pub recv: [u8; 32],
    /// The proof we send.
    pub our_proof: [u8; 32],
    /// The proof we expect.
    pub their_proof: blake3::Hash,
}

impl std::fmt::Debug for SessionKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SessionKeys(..)")
    }
}

impl SessionKeys {
    /// Derive from the encoded dialer and acceptor hellos (see `PROTOCOL.md`).
    pub fn derive(
        secret: Option<&NetworkSecret>,
        dialer_hello: &[u8],
        acceptor_hello: &[u8],
        we_dial: bool,
    ) -> Self {
        let base = match secret {
            Some(s) => blake3::derive_key("dfs-transport v1 network secret", s.as_bytes()),
            None => blake3::derive_key("dfs-transport v1 open network", &[]),
        };
        let mut t = blake3::Hasher::new_derive_key("dfs-transport v1 transcript");
        t.update(&(dialer_hello.len() as u64).to_be_bytes());
        t.update(dialer_hello);
        t.update(&(acceptor_hello.len() as u64).to_be_bytes());
        t.update(acceptor_hello);
        let transcript = t.finalize();
        let sub = |label: &[u8]| -> [u8; 32] {
            let mut h = blake3::Hasher::new_keyed(&base);
            h.update(label);
            h.update(transcript.as_bytes());
            *h.finalize().as_bytes()
        };
        let proof_d = sub(b"proof dialer");
        let proof_a = sub(b"proof acceptor");
        let key_d = sub(b"frames dialer to acceptor");
        let key_a = sub(b"frames acceptor to dialer");
        if we_dial {
            Self {
                send: key_d,
                recv: key_a,
                our_proof: proof_d,
                their_proof: blake3::Hash::from_bytes(proof_a),
            }
        } else {
            Self {
                send: key_a,
                recv: key_d,
                our_proof: proof_a,
                their_proof: blake3::Hash::from_bytes(proof_d),
            }
        }
    }

    /// Check the remote's proof in constant time.
    pub fn verify_proof(&self, theirs: &[u8; 32]) -> bool {
        // blake3::Hash's PartialEq is constant-time.
        blake3::Hash::from_bytes(*theirs) == self.their_proof
    }
}

/// The frame-tag keys of one direction of one connection, derived from its frame key:
/// POLYVAL's hash key (with its precomputed powers) and the key of the per-frame pads.
///
/// `tag = POLYVAL(H, pad16(payload) || LE64(payload length) || kind || 0^7)
///        XOR BLAKE3-keyed(pad_key, BE64(seq))[..16]`: a Wegman-Carter MAC (GMAC's shape), the
/// sequence number as its never-repeated nonce. See `PROTOCOL.md`.
struct FrameMac {
    /// A fresh hash under `H`, cloned for every frame.
    hash: Polyval,
    pad_key: zeroize::Zeroizing<[u8; 32]>,
}

impl FrameMac {
    fn new(key: &[u8; 32]) -> Arc<Self> {
        let h = zeroize::Zeroizing::new(blake3::derive_key("dfs-transport v2 frame hash key", key));
        let h16: zeroize::Zeroizing<[u8; 16]> =
            zeroize::Zeroizing::new(std::array::from_fn(|i| h[i]));
        Arc::new(Self {
            hash: Polyval::new(&h16),
            pad_key: zeroize::Zeroizing::new(blake3::derive_key(
                "dfs-transport v2 frame pad key",
                key,
            )),
        })
    }

    /// A hash to feed the payload to, in multiples of 16 bytes but for the last call.
    fn hasher(&self) -> Polyval {
        self.hash.clone()
    }

    /// The tag of a frame whose whole payload (`payload_len` bytes) went into `hash`.
    fn finish(&self, mut hash: Polyval, kind: u8, seq: u64, payload_len: usize) -> [u8; TAG_LEN] {
        let mut last = [0u8; 16];
        last[..8].copy_from_slice(&(payload_len as u64).to_le_bytes());
        last[8] = kind;
        hash.update_padded(&last);
        let mut tag = hash.finalize();
        let pad = blake3::keyed_hash(&self.pad_key, &seq.to_be_bytes());
        for (t, p) in tag.iter_mut().zip(pad.as_bytes()) {
            *t ^= p;
        }
        tag
    }

    fn tag(&self, kind: u8, seq: u64, payload: &[u8]) -> [u8; TAG_LEN] {
        let mut hash = self.hasher();
        hash.update_padded(payload);
        self.finish(hash, kind, seq, payload.len())
    }
}

/// One verified frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    /// Its kind.
    pub kind: FrameKind,
    /// Its payload.
    pub payload: Bytes,
}

/// Seals outgoing frames: computes each frame's header and tag, counting sequence numbers.
///
/// Exactly one sealer per frame key (one direction of one connection): the sequence number
/// is the tag's nonce, and two frames sealed under the same key and number would reveal
/// enough to forge tags. That is why a sealer cannot be cloned.
pub struct FrameSealer {
    mac: Arc<FrameMac>,
    seq: u64,
}

impl std::fmt::Debug for FrameSealer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FrameSealer")
            .field("seq", &self.seq)
            .finish_non_exhaustive()
    }
}

impl FrameSealer {
    /// The sealer for one direction of one connection; create only one per `key`.
    pub fn new(key: [u8; 32]) -> Self {
        Self {
            mac: FrameMac::new(&key),
            seq: 0,
        }
    }

    /// Header and tag of the next frame: the frame on the wire is
    /// `header || payload || tag`.
    ///
    /// # Errors
    /// [`TransportError::FrameTooLarge`] if the frame cannot be described by a 32-bit length.
    pub fn seal(
        &mut self,
        kind: FrameKind,
        payload: &[u8],
    ) -> Result<([u8; HEADER_LEN], [u8; TAG_LEN])> {
        let len = u32::try_from(1 + payload.len() + TAG_LEN).map_err(|_| {
            TransportError::FrameTooLarge {
                len: payload.len() as u64,
                max: u32::MAX as usize - 1 - TAG_LEN,
            }
        })?;
        let mut header = [0u8; HEADER_LEN];
        header[..4].copy_from_slice(&len.to_be_bytes());
        header[4] = kind as u8;
        let t = self.mac.tag(kind as u8, self.seq, payload);
        self.seq += 1;
        Ok((header, t))
    }

    /// Seal a frame into a buffer (convenient for tests and small frames).
    ///
    /// # Errors
    /// As [`FrameSealer::seal`].
    pub fn encode_to(&mut self, kind: FrameKind, payload: &[u8], dst: &mut BytesMut) -> Result<()> {
        let (header, tag) = self.seal(kind, payload)?;
        dst.reserve(HEADER_LEN + payload.len() + TAG_LEN);
        dst.put_slice(&header);
        dst.put_slice(payload);
        dst.put_slice(&tag);
        Ok(())
    }
}

/// A frame as it came off the wire, split from the byte stream but **not yet verified**: its
/// kind byte and payload must not be acted upon until [`FrameVerifier::verify`] accepted it.
///
/// Produced by [`FrameSplitter`]; the sequence number is the one the frame must carry, counted
/// by the splitter, so frames can be verified on other threads and in any order while their
/// contents are still released in sequence.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnverifiedFrame {
    /// The sequence number the frame is expected to carry.
    pub seq: u64,
    /// The kind byte as received (unverified, maybe unknown).
    pub kind: u8,
    /// The payload as received.
    pub payload: Bytes,
    /// The tag as received.
    pub tag: [u8; TAG_LEN],
}

/// Checks the tags of one direction of one connection (cheap to clone and to send to another
/// thread).
#[derive(Clone)]
pub struct FrameVerifier {
    mac: Arc<FrameMac>,
}

impl std::fmt::Debug for FrameVerifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("FrameVerifier(..)")
    }
}

impl FrameVerifier {
    /// A verifier for one direction of one connection.
    pub fn new(key: [u8; 32]) -> Self {
        Self {
            mac: FrameMac::new(&key),
        }
    }

    /// Check a frame's tag (in constant time) against its sequence number, then its kind.
    ///
    /// # Errors
    /// [`TransportError::Integrity`] if the tag does not match, [`TransportError::Protocol`]
    /// for an authentic frame of an unknown kind.
    pub fn verify(&self, frame: UnverifiedFrame) -> Result<Frame> {
        let expected = self.mac.tag(frame.kind, frame.seq, &frame.payload);
        Self::check(frame, expected)
    }

    /// [`FrameVerifier::verify`] with the first `hashed` payload bytes already fed to `hasher`
    /// (a keyed hasher from [`FrameVerifier::hasher`]), e.g. while the frame was arriving.
    fn verify_rest(
        &self,
        frame: UnverifiedFrame,
        mut hasher: Polyval,
        hashed: usize,
    ) -> Result<Frame> {
        hasher.update_padded(&frame.payload[hashed..]);
        let expected = self
            .mac
            .finish(hasher, frame.kind, frame.seq, frame.payload.len());
        Self::check(frame, expected)
    }

    fn hasher(&self) -> Polyval {
        self.mac.hasher()
    }

    fn check(frame: UnverifiedFrame, expected: [u8; TAG_LEN]) -> Result<Frame> {
        if !constant_time_eq::constant_time_eq_16(&frame.tag, &expected) {
            return Err(TransportError::Integrity { seq: frame.seq });
        }
        let kind = FrameKind::from_byte(frame.kind).ok_or_else(|| {
            TransportError::protocol(format!("unknown frame kind {}", frame.kind))
        })?;
        Ok(Frame {
            kind,
            payload: frame.payload,
        })
    }
}

/// Splits incoming bytes into [`UnverifiedFrame`]s: a [`LengthDelimitedCodec`] with the
/// maximum enforced before anything is allocated, numbering the frames. No cryptography; pair
/// it with a [`FrameVerifier`] (as [`FrameDecoder`] does).
///
/// The buffer it is given grows to hold the whole frame being received, so a reader fills the
/// frame's own buffer directly, and each frame's payload is split off without copying.
#[derive(Debug)]
pub struct FrameSplitter {
    inner: LengthDelimitedCodec,
    seq: u64,
    max_payload: usize,
    failed: bool,
}

impl FrameSplitter {
    /// A splitter accepting payloads of at most `max_payload` bytes.
    pub fn new(max_payload: usize) -> Self {
        let inner = LengthDelimitedCodec::builder()
            .length_field_length(4)
            .big_endian()
            .max_frame_length(max_payload.saturating_add(1 + TAG_LEN))
            .new_codec();
        Self {
            inner,
            seq: 0,
            max_payload,
            failed: false,
        }
    }

    /// Mark the stream as failed (e.g. after a frame failed verification elsewhere): every
    /// later call errors.
    pub fn set_failed(&mut self) {
        self.failed = true;
    }

    /// The whole length (prefix included) of the frame at the front of `src`, checked
    /// against the maximum; `None` until its length prefix arrived.
    fn frame_len(&self, src: &BytesMut) -> Result<Option<usize>> {
        if src.len() < 4 {
            return Ok(None);
        }
        let len = u64::from(u32::from_be_bytes([src[0], src[1], src[2], src[3]]));
        let overhead = (1 + TAG_LEN) as u64;
        if len < overhead {
            return Err(TransportError::protocol(format!(
                "frame length {len} is shorter than kind and tag"
            )));
        }
        if len - overhead > self.max_payload as u64 {
            return Err(TransportError::FrameTooLarge {
                len: len - overhead,
                max: self.max_payload,
            });
        }
        // Checked against the maximum above, so this fits in memory as configured.
        Ok(Some(4 + len as usize))
    }

    fn decode_inner(&mut self, src: &mut BytesMut) -> Result<Option<UnverifiedFrame>> {
        let Some(whole) = self.frame_len(src)? else {
            return Ok(None);
        };
        if src.len() < whole {
            // Room for the rest of this frame (the length is already bounded by the maximum),
            // and the codec below is only ever handed whole frames. A large frame gets its
            // whole length only once its first RESERVE_AFTER bytes are here, so a peer cannot
            // make a connection hold a maximum-size buffer by sending a length prefix alone
            // (it costs one copy of those first bytes per large frame).
            let room = if src.len() >= RESERVE_AFTER {
                whole
            } else {
                whole.min(RESERVE_AFTER)
            };
            src.reserve(room - src.len());
            return Ok(None);
        }
        let Some(mut frame) = self
            .inner
            .decode(src)
            .map_err(|e| TransportError::io("decoding a frame", e))?
        else {
            return Ok(None);
        };
        let tag_bytes = frame.split_off(frame.len() - TAG_LEN);
        let kind = frame[0];
        frame.advance(1);
        let mut tag = [0u8; TAG_LEN];
        tag.copy_from_slice(&tag_bytes);
        let seq = self.seq;
        self.seq += 1;
        Ok(Some(UnverifiedFrame {
            seq,
            kind,
            payload: frame.freeze(),
            tag,
        }))
    }
}

impl Decoder for FrameSplitter {
    type Item = UnverifiedFrame;
    type Error = TransportError;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<UnverifiedFrame>> {
        if self.failed {
            return Err(TransportError::protocol("decoding after an earlier error"));
        }
        let result = self.decode_inner(src);
        if result.is_err() {
            self.failed = true;
        }
        result
    }

    fn decode_eof(&mut self, buf: &mut BytesMut) -> Result<Option<UnverifiedFrame>> {
        match self.decode(buf)? {
            Some(frame) => Ok(Some(frame)),
            None if buf.is_empty() => Ok(None),
            None => {
                self.failed = true;
                Err(TransportError::io(
                    "connection closed in the middle of a frame",
                    std::io::ErrorKind::UnexpectedEof.into(),
                ))
            }
        }
    }
}

/// Payloads at least this long are hashed while they arrive, [`HASH_STEP`] bytes at a time,
/// right after the bytes were read (still in cache), instead of in one pass at the end.
const HASH_AHEAD_MIN: usize = 64 * 1024;
/// Unit of the incremental hashing: a multiple of POLYVAL's 16-byte block (so the pieces
/// compose) and of its 512-byte batch.
const HASH_STEP: usize = 64 * 1024;

/// Decodes and verifies incoming frames: a [`FrameSplitter`] (the maximum enforced before
/// anything is allocated), then the tag checked against the expected sequence number as a
/// [`FrameVerifier`] would.
///
/// A large frame's payload is hashed as it arrives (whenever another 64 KiB came in), while
/// those bytes are still in cache, so the check at the frame's end only hashes the rest; the
/// frame (its kind included) is still only released once its tag matched.
#[derive(Debug)]
pub struct FrameDecoder {
    splitter: FrameSplitter,
    verifier: FrameVerifier,
    /// The keyed hasher of the frame being received and how many of its payload bytes it
    /// has seen.
    partial: Option<(Polyval, usize)>,
}

impl FrameDecoder {
    /// A decoder for one direction of one connection.
    pub fn new(key: [u8; 32], max_payload: usize) -> Self {
        Self {
            splitter: FrameSplitter::new(max_payload),
            verifier: FrameVerifier::new(key),
            partial: None,
        }
    }

    /// Mark the stream as failed (e.g. after the caller gave up on it): every later call
    /// errors.
    pub fn set_failed(&mut self) {
        self.splitter.set_failed();
        self.partial = None;
    }

    /// Hash what arrived of the incomplete frame at the front of `src` (whole `HASH_STEP`s).
    fn hash_ahead(&mut self, src: &BytesMut, whole: usize) {
        let payload_end = whole - TAG_LEN;
        if payload_end - HEADER_LEN < HASH_AHEAD_MIN {
            return;
        }
        let arrived = src.len().min(payload_end);
        let (hasher, hashed) = self
            .partial
            .get_or_insert_with(|| (self.verifier.hasher(), 0));
        let start = HEADER_LEN + *hashed;
        let steps = arrived.saturating_sub(start) / HASH_STEP;
        if steps > 0 {
            let end = start + steps * HASH_STEP;
            hasher.update_padded(&src[start..end]);
            *hashed += end - start;
        }
    }

    fn check(&mut self, frame: Option<UnverifiedFrame>) -> Result<Option<Frame>> {
        let partial = self.partial.take();
        let Some(frame) = frame else {
            return Ok(None);
        };
        let result = match partial {
            Some((hasher, hashed)) => self.verifier.verify_rest(frame, hasher, hashed),
            None => self.verifier.verify(frame),
        };
        if result.is_err() {
            self.splitter.set_failed();
        }
        result.map(Some)
    }

    fn decode_frame(&mut self, src: &mut BytesMut, eof: bool) -> Result<Option<Frame>> {
        // A bad header is reported by the splitter below.
        if !self.splitter.failed
            && let Ok(Some(whole)) = self.splitter.frame_len(src)
            && src.len() < whole
        {
            self.hash_ahead(src, whole);
        }
        let frame = if eof {
            self.splitter.decode_eof(src)
        } else {
            self.splitter.decode(src)
        };
        match frame {
            Ok(None) => Ok(None),
            Ok(frame) => self.check(frame),
            Err(e) => {
                self.partial = None;
                Err(e)
            }
        }
    }
}

impl Decoder for FrameDecoder {
    type Item = Frame;
    type Error = TransportError;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<Frame>> {
        self.decode_frame(src, false)
    }

    fn decode_eof(&mut self, buf: &mut BytesMut) -> Result<Option<Frame>> {
        self.decode_frame(buf, true)
    }
}

/// A u64 payload (body lengths).
pub(crate) fn u64_payload(v: u64) -> [u8; 8] {
    v.to_be_bytes()
}

/// Parse a u64 payload.
pub(crate) fn parse_u64(payload: &[u8], what: &str) -> Result<u64> {
    let b: [u8; 8] = payload
        .try_into()
        .map_err(|_| TransportError::protocol(format!("{what} frame must carry 8 bytes")))?;
    Ok(u64::from_be_bytes(b))
}
