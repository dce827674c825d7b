//! The handshake and the framed, integrity-protected halves of one authenticated connection.

use std::io::IoSlice;
use std::task::{Context, Poll};
use std::time::Duration;

use futures::StreamExt;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio_util::codec::FramedRead;

use crate::error::{Result, TransportError};
use crate::identity::{NetworkSecret, NodeId, random_bytes};
use crate::wire::{
    ConnKind, Frame, FrameDecoder, FrameKind, FrameSealer, HELLO_FIXED_LEN, HELLO_PREFIX_LEN,
    Hello, PROOF_LEN, SessionKeys,
};

pub(crate) type BoxRead = Box<dyn AsyncRead + Send + Unpin>;
pub(crate) type BoxWrite = Box<dyn AsyncWrite + Send + Unpin>;

/// The reading half: splits the stream into frames (read straight into each frame's buffer)
/// and verifies them as they arrive ([`FrameDecoder`]).
pub(crate) struct FrameReader {
    framed: FramedRead<BoxRead, FrameDecoder>,
}

impl std::fmt::Debug for FrameReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FrameReader").finish_non_exhaustive()
    }
}

impl FrameReader {
    /// The stream is unusable (the caller gave up on it): later reads fail.
    pub(crate) fn set_failed(&mut self) {
        self.framed.decoder_mut().set_failed();
    }

    /// The next verified frame.
    pub(crate) fn poll_next(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Frame>>> {
        self.framed.poll_next_unpin(cx)
    }
}

/// Read buffer of the framed reader (grows to a whole frame when needed).
const READ_BUFFER: usize = 64 * 1024;

/// The writing half: seals and writes whole frames with one vectored write, no copy.
pub(crate) struct FrameWriter {
    io: BoxWrite,
    sealer: FrameSealer,
    /// The remote's maximum payload.
    pub(crate) remote_max: usize,
}

impl std::fmt::Debug for FrameWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FrameWriter")
            .field("sealer", &self.sealer)
            .finish_non_exhaustive()
    }
}

impl FrameWriter {
    pub(crate) async fn write_frame(&mut self, kind: FrameKind, payload: &[u8]) -> Result<()> {
        if payload.len() > self.remote_max {
            return Err(TransportError::FrameTooLarge {
                len: payload.len() as u64,
                max: self.remote_max,
            });
        }
        let (header, tag) = self.sealer.seal(kind, payload)?;
        self.write_sealed(&header, payload, &tag).await
    }

    /// Write a sealed frame: one vectored write, no copy.
    async fn write_sealed(&mut self, header: &[u8], payload: &[u8], tag: &[u8]) -> Result<()> {
        let mut bufs = [
            IoSlice::new(header),
            IoSlice::new(payload),
            IoSlice::new(tag),
        ];
        let mut slices: &mut [IoSlice<'_>] = &mut bufs;
        while !slices.is_empty() {
            let n = self
                .io
                .write_vectored(slices)
                .await
                .map_err(|e| TransportError::io("writing a frame", e))?;
            if n == 0 {
                return Err(TransportError::io(
                    "writing a frame",
                    std::io::ErrorKind::WriteZero.into(),
                ));
            }
            IoSlice::advance_slices(&mut slices, n);
        }
        Ok(())
    }

    pub(crate) async fn flush(&mut self) -> Result<()> {
        self.io
            .flush()
            .await
            .map_err(|e| TransportError::io("flushing a connection", e))
    }

    pub(crate) async fn shutdown(&mut self) -> Result<()> {
        self.io
            .shutdown()
            .await
            .map_err(|e| TransportError::io("closing a connection", e))
    }
}

/// Read the next frame, with a deadline.
pub(crate) async fn next_frame(
    reader: &mut FrameReader,
    timeout: Duration,
) -> Result<Option<Frame>> {
    match tokio::time::timeout(timeout, std::future::poll_fn(|cx| reader.poll_next(cx))).await {
        Err(_) => Err(TransportError::Timeout {
            what: "waiting for a frame",
            after: timeout,
        }),
        Ok(None) => Ok(None),
        Ok(Some(r)) => r.map(Some),
    }
}

/// What we tell the remote about ourselves.
#[derive(Debug, Clone)]
pub(crate) struct Local<'a> {
    pub(crate) node_id: NodeId,
    pub(crate) secret: Option<&'a NetworkSecret>,
    pub(crate) addr: &'a str,
    pub(crate) max_frame_len: usize,
}

/// A connection after a successful handshake.
pub(crate) struct Established {
    pub(crate) remote: Hello,
    pub(crate) reader: FrameReader,
    pub(crate) writer: FrameWriter,
}

impl std::fmt::Debug for Established {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Established")
            .field("remote", &self.remote)
            .finish_non_exhaustive()
    }
}

/// Run the handshake (hellos, proofs) on a raw stream. Timeouts are the caller's.
pub(crate) async fn handshake<S>(
    stream: S,
    local: &Local<'_>,
    kind: ConnKind,
    we_dial: bool,
) -> Result<Established>
where
    S: AsyncRead + AsyncWrite + Send + Unpin + 'static,
{
    let (r, w) = tokio::io::split(stream);
    let mut r: BoxRead = Box::new(r);
    let mut w: BoxWrite = Box::new(w);

    let ours = Hello {
        kind: if we_dial { kind } else { ConnKind::Control },
        auth: local.secret.is_some(),
        node_id: local.node_id,
        nonce: random_bytes(),
        max_frame_len: u32::try_from(local.max_frame_len).unwrap_or(u32::MAX),
        addr: local.addr.to_owned(),
    };
    let our_bytes = ours.encode();
    w.write_all(&our_bytes)
        .await
        .map_err(|e| TransportError::io("sending the hello", e))?;
    w.flush()
        .await
        .map_err(|e| TransportError::io("sending the hello", e))?;

    // Their hello: prefix first, so a version mismatch is reported whatever follows it.
    let mut their_bytes = vec![0u8; HELLO_FIXED_LEN];
    r.read_exact(&mut their_bytes[..HELLO_PREFIX_LEN])
        .await
        .map_err(|e| TransportError::io("reading the hello", e))?;
    let mut prefix = [0u8; HELLO_PREFIX_LEN];
    prefix.copy_from_slice(&their_bytes[..HELLO_PREFIX_LEN]);
    Hello::check_prefix(&prefix)?;
    r.read_exact(&mut their_bytes[HELLO_PREFIX_LEN..])
        .await
        .map_err(|e| TransportError::io("reading the hello", e))?;
    let mut fixed = [0u8; HELLO_FIXED_LEN - HELLO_PREFIX_LEN];
    fixed.copy_from_slice(&their_bytes[HELLO_PREFIX_LEN..]);
    let (mut theirs, addr_len) = Hello::decode_fixed(&fixed)?;
    let mut addr = vec![0u8; addr_len];
    r.read_exact(&mut addr)
        .await
        .map_err(|e| TransportError::io("reading the hello", e))?;
    theirs.set_addr(&addr)?;
    their_bytes.extend_from_slice(&addr);

    // The acceptor's kind byte is always 0 and ignored: the dialer's says what the connection
    // is for.
    match (ours.auth, theirs.auth) {
        (true, false) => {
            return Err(TransportError::AuthFailed {
                reason: "we require a network secret and the remote has none",
            });
        }
        (false, true) => {
            return Err(TransportError::AuthFailed {
                reason: "the remote requires a network secret and we have none",
            });
        }
        _ => {}
    }
    if theirs.max_frame_len < 1024 {
        return Err(TransportError::Handshake {
            reason: format!(
                "remote maximum frame length {} is too small",
                theirs.max_frame_len
            ),
        });
    }

    let keys = if we_dial {
        SessionKeys::derive(local.secret, &our_bytes, &their_bytes, true)
    } else {
        SessionKeys::derive(local.secret, &their_bytes, &our_bytes, false)
    };
    w.write_all(&keys.our_proof)
        .await
        .map_err(|e| TransportError::io("sending the proof", e))?;
    w.flush()
        .await
        .map_err(|e| TransportError::io("sending the proof", e))?;
    let mut proof = [0u8; PROOF_LEN];
    r.read_exact(&mut proof)
        .await
        .map_err(|e| TransportError::io("reading the proof", e))?;
    if !keys.verify_proof(&proof) {
        return Err(TransportError::AuthFailed {
            reason: if local.secret.is_some() {
                "the remote's proof does not match: it does not know the network secret"
            } else {
                "the remote's proof does not match the handshake transcript"
            },
        });
    }

    let reader = FrameReader {
        framed: FramedRead::with_capacity(
            r,
            FrameDecoder::new(keys.recv, local.max_frame_len),
            READ_BUFFER,
        ),
    };
    let writer = FrameWriter {
        io: w,
        sealer: FrameSealer::new(keys.send),
        remote_max: theirs.max_frame_len as usize,
    };
    Ok(Established {
        remote: theirs,
        reader,
        writer,
    })
}
