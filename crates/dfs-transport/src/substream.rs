//! [`Substream`]: one exchange of messages and bodies on its own authenticated connection, and
//! [`BodyReader`], an incoming body as an `AsyncRead`.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::{Buf, Bytes};
use futures::Stream;
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::io::{AsyncRead, AsyncReadExt, ReadBuf};
use tokio::time::{Instant, Sleep};

use crate::conn::{FrameReader, FrameWriter, next_frame};
use crate::error::{Result, TransportError};
use crate::identity::NodeId;
use crate::wire::{Frame, FrameKind, MAX_REASON_LEN, parse_u64, u64_payload};

/// One exchange with a peer: an ordered, bidirectional, authenticated channel carrying
/// messages and bodies. It runs on its own connection, so it never blocks the control
/// connection or other substreams, and TCP's flow control is its backpressure.
///
/// Obtained from [`Peer::open_stream`](crate::Peer::open_stream) or
/// [`Event::Stream`](crate::Event::Stream). Call [`Substream::finish`] when done; dropping it
/// instead closes the connection abruptly, which the remote sees as an error.
pub struct Substream {
    peer_id: NodeId,
    reader: FrameReader,
    writer: FrameWriter,
    timeout: Duration,
    data_frame_len: usize,
    remote_finished: bool,
    /// Set after the remote broke the protocol (bad frame, bad postcard): the substream is
    /// over, every later call fails.
    broken: bool,
    /// Set while a write (a message, a whole body, the finish) is under way, and left set if
    /// it failed, timed out or was cancelled (its future dropped): a frame may then be
    /// half-written, so every later write fails instead of going out on a desynchronised
    /// stream (reads still work). A body that ended in an abort counts as failed too.
    writing: bool,
    /// An inbound substream's place under `EndpointConfig::max_inbound_substreams`,
    /// released when the substream (or the body reader holding it) is dropped.
    _slot: Option<tokio::sync::OwnedSemaphorePermit>,
}

impl std::fmt::Debug for Substream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Substream")
            .field("peer_id", &self.peer_id)
            .field("remote_finished", &self.remote_finished)
            .finish_non_exhaustive()
    }
}

impl Substream {
    pub(crate) fn new(
        peer_id: NodeId,
        reader: FrameReader,
        writer: FrameWriter,
        timeout: Duration,
        data_frame_len: usize,
        slot: Option<tokio::sync::OwnedSemaphorePermit>,
    ) -> Self {
        let data_frame_len = data_frame_len.min(writer.remote_max).max(1);
        Self {
            peer_id,
            reader,
            writer,
            timeout,
            data_frame_len,
            remote_finished: false,
            broken: false,
            writing: false,
            _slot: slot,
        }
    }

    /// The remote node's id.
    pub fn peer_id(&self) -> NodeId {
        self.peer_id
    }

    /// Send one message (postcard-encoded; at most the remote's maximum frame length).
    pub async fn send<M: Serialize>(&mut self, msg: &M) -> Result<()> {
        let bytes = postcard::to_stdvec(msg).map_err(|source| TransportError::Decode {
            op: "encode",
            source,
        })?;
        // Refused before anything is written, so the substream stays usable.
        if bytes.len() > self.writer.remote_max {
            return Err(TransportError::FrameTooLarge {
                len: bytes.len() as u64,
                max: self.writer.remote_max,
            });
        }
        self.begin_write()?;
        let result = async {
            self.write(FrameKind::Message, &bytes).await?;
            self.flush().await
        }
        .await;
        self.end_write(result)
    }

    /// Starts one write operation: refused if an earlier one did not complete.
    fn begin_write(&mut self) -> Result<()> {
        if self.broken || self.writing {
            return Err(TransportError::Closed);
        }
        self.writing = true;
        Ok(())
    }

    /// Ends a write operation begun with [`Substream::begin_write`]: only success makes the
    /// substream writable again.
    fn end_write<T>(&mut self, result: Result<T>) -> Result<T> {
        if result.is_ok() {
            self.writing = false;
        }
        result
    }

    /// Receive the next message; `Ok(None)` once the remote finished the substream cleanly.
    ///
    /// # Errors
    /// A closed connection without a clean finish, a timeout, a bad frame or bad postcard
    /// ([`TransportError::Decode`]). Any error ends the substream: later calls fail with
    /// [`TransportError::Closed`].
    pub async fn recv<M: DeserializeOwned>(&mut self) -> Result<Option<M>> {
        if self.remote_finished {
            return Ok(None);
        }
        let result = self.recv_inner().await;
        if let Err(e) = &result {
            self.broken = true;
            tracing::warn!(peer = %self.peer_id, error = %e, "substream failed");
        }
        result
    }

    /// The next message. A substream carries no `Ping` (PROTOCOL.md section 3): one would
    /// keep a read alive without progress, so it is an error like any unexpected frame.
    async fn recv_inner<M: DeserializeOwned>(&mut self) -> Result<Option<M>> {
        let frame = self.next().await?;
        match frame.kind {
            FrameKind::Close => {
                self.remote_finished = true;
                Ok(None)
            }
            FrameKind::Message => {
                postcard::from_bytes(&frame.payload)
                    .map(Some)
                    .map_err(|source| TransportError::Decode {
                        op: "decode",
                        source,
                    })
            }
            other => Err(TransportError::protocol(format!(
                "expected a message, got a {other:?} frame"
            ))),
        }
    }

    /// Stream exactly `len` bytes of `body` as data frames, then an end frame. Returns `len`.
    ///
    /// Memory stays at one data frame whatever `len` is; the remote's reading speed paces us.
    ///
    /// # Errors
    /// If `body` fails or ends before `len` bytes, an abort frame carrying the reason is sent
    /// (so the remote sees an error, never a short body) and the error is returned.
    pub async fn send_body<R: AsyncRead + Unpin>(&mut self, len: u64, body: R) -> Result<u64> {
        self.begin_write()?;
        let result = self.send_body_inner(len, body).await;
        self.end_write(result)
    }

    async fn send_body_inner<R: AsyncRead + Unpin>(
        &mut self,
        len: u64,
        mut body: R,
    ) -> Result<u64> {
        self.write(FrameKind::BodyStart, &u64_payload(len)).await?;
        // One frame buffer: filled from the source, then sealed (hashed) and written in place.
        let frame_len =
            usize::try_from(len).map_or(self.data_frame_len, |l| l.min(self.data_frame_len));
        let mut buf = vec![0u8; frame_len];
        let mut sent: u64 = 0;
        while sent < len {
            let want = usize::try_from(len - sent).map_or(buf.len(), |r| r.min(buf.len()));
            let filled = match fill(&mut body, &mut buf[..want]).await {
                Ok(n) => n,
                Err((e, partial)) => {
                    let err = match e {
                        Some(e) => {
                            self.abort(&format!("the sender's body source failed: {e}"))
                                .await;
                            TransportError::io("reading the body source", e)
                        }
                        None => {
                            let err = TransportError::ShortBody {
                                got: sent + partial as u64,
                                expected: len,
                            };
                            self.abort(&err.to_string()).await;
                            err
                        }
                    };
                    return Err(err);
                }
            };
            self.write(FrameKind::Data, &buf[..filled]).await?;
            sent += filled as u64;
        }
        self.write(FrameKind::End, &u64_payload(len)).await?;
        self.flush().await?;
        Ok(len)
    }

    /// Take the incoming body the remote is sending with [`Substream::send_body`].
    ///
    /// # Errors
    /// If the next frame is not the start of a body (a message, a finish, a closed
    /// connection, a timeout).
    pub async fn recv_body(mut self) -> Result<BodyReader> {
        let result = self.recv_body_start().await;
        match result {
            Ok(len) => Ok(BodyReader::new(self, len)),
            Err(e) => {
                tracing::warn!(peer = %self.peer_id, error = %e, "substream failed");
                Err(e)
            }
        }
    }

    /// Take the incoming body, or the message the remote sent instead of one (e.g. a refusal
    /// explaining why there is no body), with the substream to continue.
    ///
    /// # Errors
    /// As [`Substream::recv_body`], for anything but a body or a message (a message that is
    /// not a valid `M` is [`TransportError::Decode`]).
    pub async fn recv_body_or_message<M: DeserializeOwned>(mut self) -> Result<BodyOrMessage<M>> {
        let result = async {
            let frame = self.next().await?;
            if frame.kind == FrameKind::Message {
                return postcard::from_bytes(&frame.payload)
                    .map(BodyStartOr::Message)
                    .map_err(|source| TransportError::Decode {
                        op: "decode",
                        source,
                    });
            }
            self.body_start(frame).map(BodyStartOr::Body)
        }
        .await;
        match result {
            Ok(BodyStartOr::Body(len)) => Ok(BodyOrMessage::Body(BodyReader::new(self, len))),
            Ok(BodyStartOr::Message(m)) => Ok(BodyOrMessage::Message(m, self)),
            Err(e) => {
                self.broken = true;
                tracing::warn!(peer = %self.peer_id, error = %e, "substream failed");
                Err(e)
            }
        }
    }

    async fn recv_body_start(&mut self) -> Result<u64> {
        let frame = self.next().await?;
        self.body_start(frame)
    }

    /// The announced length of a body starting with `frame`, or why it does not start one.
    fn body_start(&mut self, frame: Frame) -> Result<u64> {
        match frame.kind {
            FrameKind::BodyStart => parse_u64(&frame.payload, "body start"),
            FrameKind::Close => {
                self.remote_finished = true;
                Err(TransportError::protocol(
                    "the remote finished the substream instead of sending a body",
                ))
            }
            other => Err(TransportError::protocol(format!(
                "expected a body, got a {other:?} frame"
            ))),
        }
    }

    /// Finish gracefully: flush, tell the remote we are done, close our sending side.
    ///
    /// # Errors
    /// If the close cannot be delivered — unless the remote had already finished, in which
    /// case there is nobody left to tell and this succeeds.
    pub async fn finish(mut self) -> Result<()> {
        let result = async {
            self.begin_write()?;
            self.write(FrameKind::Close, &[0]).await?;
            self.flush().await?;
            self.writer.shutdown().await
        }
        .await;
        match result {
            Err(_) if self.remote_finished => Ok(()),
            r => r,
        }
    }

    async fn next(&mut self) -> Result<Frame> {
        if self.broken {
            return Err(TransportError::Closed);
        }
        match next_frame(&mut self.reader, self.timeout).await? {
            Some(frame) => Ok(frame),
            None => Err(TransportError::io(
                "the connection closed without finishing the substream",
                io::ErrorKind::UnexpectedEof.into(),
            )),
        }
    }

    async fn write(&mut self, kind: FrameKind, payload: &[u8]) -> Result<()> {
        if self.broken {
            return Err(TransportError::Closed);
        }
        match tokio::time::timeout(self.timeout, self.writer.write_frame(kind, payload)).await {
            Ok(r) => r,
            Err(_) => Err(TransportError::Timeout {
                what: "writing a frame",
                after: self.timeout,
            }),
        }
    }

    async fn flush(&mut self) -> Result<()> {
        match tokio::time::timeout(self.timeout, self.writer.flush()).await {
            Ok(r) => r,
            Err(_) => Err(TransportError::Timeout {
                what: "flushing",
                after: self.timeout,
            }),
        }
    }

    /// Best effort: the error being reported matters more than a failure to report it.
    async fn abort(&mut self, reason: &str) {
        let mut end = reason.len().min(MAX_REASON_LEN);
        while !reason.is_char_boundary(end) {
            end -= 1;
        }
        if self
            .write(FrameKind::Abort, &reason.as_bytes()[..end])
            .await
            .is_ok()
        {
            let _ = self.flush().await;
        }
    }
}

/// Fill `buf` completely from `body`; on failure, the error (`None` if the body ended first)
/// and how many bytes were read.
async fn fill<R: AsyncRead + Unpin>(
    body: &mut R,
    buf: &mut [u8],
) -> Result<usize, (Option<io::Error>, usize)> {
    let mut filled = 0;
    while filled < buf.len() {
        match body.read(&mut buf[filled..]).await {
            Ok(0) => return Err((None, filled)),
            Ok(n) => filled += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err((Some(e), filled)),
        }
    }
    Ok(filled)
}

#[derive(Debug)]
enum BodyState {
    Reading,
    Done,
    Failed {
        kind: io::ErrorKind,
        message: String,
    },
}

/// What [`Substream::recv_body_or_message`] received.
#[derive(Debug)]
pub enum BodyOrMessage<M> {
    /// A body, as [`Substream::recv_body`] gives it.
    Body(BodyReader),
    /// A message instead of a body, and the substream to continue with.
    Message(M, Substream),
}

/// A body's announced length or a message, before the substream is handed on.
enum BodyStartOr<M> {
    Body(u64),
    Message(M),
}

/// An incoming body: exactly the announced bytes, verified frame by frame, as an `AsyncRead`
/// or as a [`Stream`] of verified chunks ([`BodyReader::next_chunk`]: no copy).
///
/// EOF (the end of the stream) comes only after the sender's end frame; an abort, a short
/// body, a closed connection, a stall or a bad frame is an error (for `AsyncRead` an
/// `io::Error` whose source is a [`TransportError`]). After EOF, [`BodyReader::into_substream`]
/// gives the substream back to continue the exchange.
///
/// Frames are verified as they arrive (a large frame's payload is hashed in pieces right
/// after each read, while still in cache) and read only as the consumer asks for more, so a
/// body holds one frame in memory besides the chunk the consumer holds, and TCP's flow control
/// paces the sender. A frame's bytes are released only after it passed verification, so an
/// altered frame never yields data: it fails the body.
pub struct BodyReader {
    stream: Substream,
    len: u64,
    received: u64,
    /// Verified bytes not yet handed out (the rest of a chunk after a short `poll_read`).
    chunk: Bytes,
    state: BodyState,
    deadline: Pin<Box<Sleep>>,
    /// A chunk was handed out since the deadline was last armed: the idle timeout counts from
    /// the consumer's next wait, not from before its own (maybe slow) work.
    rearm: bool,
}

impl std::fmt::Debug for BodyReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BodyReader")
            .field("len", &self.len)
            .field("received", &self.received)
            .field("state", &self.state)
            .finish_non_exhaustive()
    }
}

impl BodyReader {
    fn new(stream: Substream, len: u64) -> Self {
        let deadline = Box::pin(tokio::time::sleep_until(Instant::now() + stream.timeout));
        Self {
            stream,
            len,
            received: 0,
            chunk: Bytes::new(),
            state: BodyState::Reading,
            deadline,
            rearm: false,
        }
    }

    /// The announced length.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// Whether the announced length is zero.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The remote node's id.
    pub fn peer_id(&self) -> NodeId {
        self.stream.peer_id
    }

    /// The next verified chunk of the body (a data frame's payload, or what a short
    /// `poll_read` left of one), without copying it; `Ok(None)` after the sender's end frame.
    ///
    /// Can be mixed with reads through `AsyncRead`.
    ///
    /// # Errors
    /// As the reads: an abort ([`TransportError::Aborted`]), a short body, a closed
    /// connection, a stall ([`TransportError::Timeout`]), an altered frame
    /// ([`TransportError::Integrity`]). The first error is returned as it happened; later
    /// calls fail with an [`TransportError::Io`] repeating it.
    pub async fn next_chunk(&mut self) -> Result<Option<Bytes>> {
        std::future::poll_fn(|cx| self.poll_chunk(cx))
            .await
            .transpose()
    }

    /// The substream back, once the body was read to EOF.
    ///
    /// # Errors
    /// [`TransportError::Protocol`] if the body was not read to its end (or failed).
    pub fn into_substream(self) -> Result<Substream> {
        match self.state {
            BodyState::Done if self.chunk.is_empty() => Ok(self.stream),
            _ => Err(TransportError::protocol(
                "the body was not read to its end before taking the substream back",
            )),
        }
    }

    /// Record the body's failure (the first error ends it for good).
    fn fail(&mut self, err: TransportError) -> TransportError {
        tracing::warn!(peer = %self.stream.peer_id, error = %err, "incoming body failed");
        self.state = BodyState::Failed {
            kind: err.io_kind(),
            message: err.to_string(),
        };
        self.chunk = Bytes::new();
        self.stream.broken = true;
        self.stream.reader.set_failed();
        err
    }

    /// The next verified chunk, or the body's end or failure.
    fn poll_chunk(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Bytes>>> {
        loop {
            if !self.chunk.is_empty() {
                self.rearm = true;
                return Poll::Ready(Some(Ok(std::mem::take(&mut self.chunk))));
            }
            match &self.state {
                BodyState::Done => return Poll::Ready(None),
                BodyState::Failed { kind, message } => {
                    return Poll::Ready(Some(Err(TransportError::io(
                        "the body failed earlier",
                        io::Error::new(*kind, message.clone()),
                    ))));
                }
                BodyState::Reading => {}
            }
            let result = match self.stream.reader.poll_next(cx) {
                Poll::Pending => {
                    // Waiting for the network.
                    if std::mem::take(&mut self.rearm) {
                        let timeout = self.stream.timeout;
                        self.deadline.as_mut().reset(Instant::now() + timeout);
                    }
                    ready!(self.deadline.as_mut().poll(cx));
                    Err(TransportError::Timeout {
                        what: "waiting for body data",
                        after: self.stream.timeout,
                    })
                }
                Poll::Ready(Some(Ok(frame))) => {
                    let timeout = self.stream.timeout;
                    self.deadline.as_mut().reset(Instant::now() + timeout);
                    self.on_frame(frame)
                }
                Poll::Ready(Some(Err(e))) => Err(e),
                Poll::Ready(None) => Err(TransportError::io(
                    "the connection closed in the middle of a body",
                    io::ErrorKind::UnexpectedEof.into(),
                )),
            };
            if let Err(e) = result {
                return Poll::Ready(Some(Err(self.fail(e))));
            }
        }
    }

    fn on_frame(&mut self, frame: Frame) -> Result<()> {
        match frame.kind {
            FrameKind::Data => {
                let n = frame.payload.len() as u64;
                if n == 0 {
                    // It would reset the idle deadline without progress.
                    return Err(TransportError::protocol("empty data frame inside a body"));
                }
                if n > self.len - self.received {
                    return Err(TransportError::protocol(format!(
                        "body longer than its announced {} bytes",
                        self.len
                    )));
                }
                self.received += n;
                self.chunk = frame.payload;
            }
            FrameKind::End => {
                let total = parse_u64(&frame.payload, "end")?;
                if self.received != self.len || total != self.len {
                    return Err(TransportError::ShortBody {
                        got: self.received,
                        expected: self.len,
                    });
                }
                self.state = BodyState::Done;
            }
            FrameKind::Abort => {
                return Err(TransportError::Aborted {
                    reason: String::from_utf8_lossy(&frame.payload).into_owned(),
                });
            }
            other => {
                return Err(TransportError::protocol(format!(
                    "unexpected {other:?} frame inside a body"
                )));
            }
        }
        Ok(())
    }
}

impl Stream for BodyReader {
    type Item = Result<Bytes>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.get_mut().poll_chunk(cx)
    }
}

impl AsyncRead for BodyReader {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if buf.remaining() == 0 {
            return Poll::Ready(Ok(()));
        }
        if let BodyState::Failed { kind, message } = &this.state {
            return Poll::Ready(Err(io::Error::new(*kind, message.clone())));
        }
        let mut chunk = match ready!(this.poll_chunk(cx)) {
            None => return Poll::Ready(Ok(())),
            Some(Err(e)) => return Poll::Ready(Err(e.into_io())),
            Some(Ok(chunk)) => chunk,
        };
        let n = buf.remaining().min(chunk.len());
        buf.put_slice(&chunk[..n]);
        chunk.advance(n);
        this.chunk = chunk;
        Poll::Ready(Ok(()))
    }
}
