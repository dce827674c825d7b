//! The tokio adapters (feature `tokio`): the same sans-io states behind `AsyncRead` and
//! `AsyncWrite`.

use std::fmt;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::CryptoError;
use crate::stream::State;

/// The async twin of [`StreamReader`](crate::StreamReader): reading from it yields the
/// encryption (or verified decryption) of the inner `AsyncRead`.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// use dfs_crypto::{Aes256CtrBlake3, Key};
/// use tokio::io::AsyncReadExt;
///
/// let cipher = Aes256CtrBlake3::new(&Key::generate()?);
/// let mut sealed = Vec::new();
/// cipher.encrypt_async_reader(&b"async bytes"[..])?.read_to_end(&mut sealed).await?;
/// let mut opened = Vec::new();
/// cipher.decrypt_async_reader(&sealed[..]).read_to_end(&mut opened).await?;
/// assert_eq!(opened, b"async bytes");
/// # Ok(())
/// # }
/// ```
pub struct AsyncStreamReader<R> {
    inner: R,
    state: State,
    poisoned: bool,
}

impl<R> fmt::Debug for AsyncStreamReader<R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AsyncStreamReader")
            .field("state", &self.state)
            .field("poisoned", &self.poisoned)
            .finish_non_exhaustive()
    }
}

impl<R> AsyncStreamReader<R> {
    pub(crate) fn new(inner: R, state: State) -> Self {
        AsyncStreamReader {
            inner,
            state,
            poisoned: false,
        }
    }

    /// Unwraps the inner reader.
    pub fn into_inner(self) -> R {
        self.inner
    }
}

impl<R: AsyncRead + Unpin> AsyncRead for AsyncStreamReader<R> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        out: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if out.remaining() == 0 {
            return Poll::Ready(Ok(()));
        }
        if this.poisoned {
            return Poll::Ready(Err(CryptoError::Poisoned.into_io()));
        }
        loop {
            let ready = this.state.pending_len();
            if ready > 0 {
                let n = ready.min(out.remaining());
                let n = this.state.read_into(out.initialize_unfilled_to(n));
                out.advance(n);
                return Poll::Ready(Ok(()));
            }
            if this.state.done() {
                return Poll::Ready(Ok(()));
            }
            let input = this.state.input();
            let mut buf = ReadBuf::new(input);
            ready!(Pin::new(&mut this.inner).poll_read(cx, &mut buf))?;
            let n = buf.filled().len();
            let step = if n > 0 {
                this.state.filled(n)
            } else {
                this.state.finish()
            };
            if let Err(e) = step {
                this.poisoned = true;
                return Poll::Ready(Err(e.into_io()));
            }
        }
    }
}

/// The async twin of [`StreamWriter`](crate::StreamWriter): bytes written to it reach the
/// inner `AsyncWrite` encrypted (or decrypted and verified).
///
/// `shutdown` (`AsyncWriteExt::shutdown`) **must** be called at the end: it processes the
/// final chunk (or reports a truncated ciphertext), then shuts the inner writer down.
pub struct AsyncStreamWriter<W> {
    inner: W,
    state: State,
    finished: bool,
    poisoned: bool,
}

impl<W> fmt::Debug for AsyncStreamWriter<W> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AsyncStreamWriter")
            .field("state", &self.state)
            .field("finished", &self.finished)
            .field("poisoned", &self.poisoned)
            .finish_non_exhaustive()
    }
}

impl<W> AsyncStreamWriter<W> {
    pub(crate) fn new(inner: W, state: State) -> Self {
        AsyncStreamWriter {
            inner,
            state,
            finished: false,
            poisoned: false,
        }
    }

    /// Unwraps the inner writer (call `shutdown` first, or buffered data is lost).
    pub fn into_inner(self) -> W {
        self.inner
    }
}

impl<W: AsyncWrite + Unpin> AsyncStreamWriter<W> {
    fn poll_drain(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        loop {
            let pending = self.state.pending();
            if pending.is_empty() {
                return Poll::Ready(Ok(()));
            }
            match ready!(Pin::new(&mut self.inner).poll_write(cx, pending)) {
                Ok(0) => {
                    self.poisoned = true;
                    return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
                }
                Ok(n) => self.state.consume(n),
                Err(e) => {
                    self.poisoned = true;
                    return Poll::Ready(Err(e));
                }
            }
        }
    }

    fn check(&self) -> io::Result<()> {
        if self.poisoned {
            return Err(CryptoError::Poisoned.into_io());
        }
        Ok(())
    }
}

impl<W: AsyncWrite + Unpin> AsyncWrite for AsyncStreamWriter<W> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        this.check()?;
        if buf.is_empty() {
            return Poll::Ready(Ok(0));
        }
        if this.finished {
            return Poll::Ready(Err(CryptoError::Poisoned.into_io()));
        }
        ready!(this.poll_drain(cx))?;
        let input = this.state.input();
        let n = input.len().min(buf.len());
        input[..n].copy_from_slice(&buf[..n]);
        if let Err(e) = this.state.filled(n) {
            this.poisoned = true;
            return Poll::Ready(Err(e.into_io()));
        }
        Poll::Ready(Ok(n))
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        this.check()?;
        ready!(this.poll_drain(cx))?;
        Pin::new(&mut this.inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        this.check()?;
        ready!(this.poll_drain(cx))?;
        if !this.finished {
            this.finished = true;
            if let Err(e) = this.state.finish() {
                this.poisoned = true;
                return Poll::Ready(Err(e.into_io()));
            }
            ready!(this.poll_drain(cx))?;
        }
        Pin::new(&mut this.inner).poll_shutdown(cx)
    }
}
