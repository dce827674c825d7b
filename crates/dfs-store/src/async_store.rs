//! Async wrappers that run the blocking store on tokio's blocking pool (feature `tokio`).

use std::fmt;
use std::future::Future;
use std::io::{self, Read};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use tokio::io::{AsyncRead, ReadBuf};
use tokio::sync::oneshot;

use crate::blocking_reader::BlockingReader;

use crate::error::{Result, StoreError};
use crate::path::{HashPath, PathTransform};
use crate::store::{Expected, ObjectMeta, ObjectReader, ScrubReport, Store};

/// Chunks a reader task may run ahead of the consumer.
const READ_AHEAD: usize = 4;
/// Size of each chunk handed to the async side.
const CHUNK: usize = 64 * 1024;

/// A [`Store`] for async code: every operation runs on tokio's blocking pool.
///
/// Cheap to clone (an `Arc` inside). Must be used inside a tokio runtime.
///
/// ```
/// use dfs_store::{AsyncStore, Store};
/// use tokio::io::AsyncReadExt;
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// # let dir = tempfile::tempdir()?;
/// let store = AsyncStore::new(Store::open(dir.path())?);
/// store.write("k", &b"hello"[..]).await?;
/// let mut reader = store.read("k").await?;
/// let mut out = String::new();
/// reader.read_to_string(&mut out).await?;
/// assert_eq!(out, "hello");
/// # Ok(())
/// # }
/// ```
pub struct AsyncStore<P: PathTransform = HashPath> {
    inner: Arc<Store<P>>,
}

impl<P: PathTransform> Clone for AsyncStore<P> {
    fn clone(&self) -> Self {
        AsyncStore {
            inner: Arc::clone(&self.inner),
        }
    }
}

impl<P: PathTransform + fmt::Debug> fmt::Debug for AsyncStore<P> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("AsyncStore").field(&self.inner).finish()
    }
}

impl<P: PathTransform> From<Arc<Store<P>>> for AsyncStore<P> {
    fn from(inner: Arc<Store<P>>) -> Self {
        AsyncStore { inner }
    }
}

impl<P: PathTransform> AsyncStore<P> {
    /// Wraps a store.
    pub fn new(store: Store<P>) -> Self {
        AsyncStore {
            inner: Arc::new(store),
        }
    }

    /// The shared blocking store (for work you run on the blocking pool yourself).
    pub fn blocking(&self) -> &Arc<Store<P>> {
        &self.inner
    }

    async fn run<T, F>(&self, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&Store<P>) -> Result<T> + Send + 'static,
    {
        let store = Arc::clone(&self.inner);
        tokio::task::spawn_blocking(move || f(&store))
            .await
            .map_err(|source| StoreError::Task { source })?
    }

    /// Runs a write of `src` on the blocking pool, cancelled if this future is dropped: the
    /// source then fails its next read, so the write commits nothing (unless it was already
    /// past its source's end) and its staging file goes at once. Without this, the blocking
    /// job would go on and commit later, maybe over a newer version written since.
    async fn run_write<R, F>(&self, src: R, f: F) -> Result<u64>
    where
        R: Read + Send + 'static,
        F: FnOnce(&Store<P>, Cancellable<R>) -> Result<u64> + Send + 'static,
    {
        let (_alive, cancelled) = oneshot::channel::<()>();
        let src = Cancellable {
            inner: src,
            cancelled,
        };
        self.run(move |s| f(s, src)).await
    }

    /// [`Store::write`] from a blocking reader, on the blocking pool. Dropping the future
    /// cancels the write: the store reads no further from `src` and commits nothing.
    pub async fn write<R: Read + Send + 'static>(&self, key: &str, src: R) -> Result<u64> {
        let key = key.to_owned();
        self.run_write(src, move |s, src| s.write(&key, src)).await
    }

    /// [`Store::write`] from an async reader, bridged with `tokio_util::io::SyncIoBridge`.
    /// Dropping the future cancels the write, even while `src` has nothing to read: nothing
    /// is committed.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// # let dir = tempfile::tempdir()?;
    /// let store = dfs_store::AsyncStore::new(dfs_store::Store::open(dir.path())?);
    /// let body: &'static [u8] = b"streamed";
    /// assert_eq!(store.write_async("k", body).await?, 8);
    /// # Ok(())
    /// # }
    /// ```
    pub async fn write_async<R>(&self, key: &str, src: R) -> Result<u64>
    where
        R: AsyncRead + Unpin + Send + 'static,
    {
        let (alive, cancelled) = oneshot::channel::<()>();
        let bridge = tokio_util::io::SyncIoBridge::new(AsyncCancellable {
            inner: src,
            cancelled,
            done: false,
        });
        let written = self.write(key, bridge).await;
        drop(alive);
        written
    }

    /// [`Store::write_expecting`] from a blocking reader, on the blocking pool: stores the
    /// bytes only if they are exactly `expected.size` bytes hashing to `expected.hash`
    /// ([`StoreError::Mismatch`] otherwise, nothing committed).
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// # let dir = tempfile::tempdir()?;
    /// use dfs_store::{AsyncStore, Expected, Store};
    /// let store = AsyncStore::new(Store::open(dir.path())?);
    /// let expected = Expected::new(5, *blake3::hash(b"hello").as_bytes());
    /// assert_eq!(store.write_expecting("k", &b"hello"[..], expected).await?, 5);
    /// assert!(store.write_expecting("k", &b"hell"[..], expected).await.is_err());
    /// # Ok(())
    /// # }
    /// ```
    pub async fn write_expecting<R: Read + Send + 'static>(
        &self,
        key: &str,
        src: R,
        expected: Expected,
    ) -> Result<u64> {
        let key = key.to_owned();
        self.run_write(src, move |s, src| s.write_expecting(&key, src, expected))
            .await
    }

    /// [`Store::write_expecting`] from an async reader, bridged with
    /// `tokio_util::io::SyncIoBridge`.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// # let dir = tempfile::tempdir()?;
    /// use dfs_store::{AsyncStore, Expected, Store};
    /// let store = AsyncStore::new(Store::open(dir.path())?);
    /// let body: &'static [u8] = b"streamed";
    /// let expected = Expected::new(8, *blake3::hash(body).as_bytes());
    /// assert_eq!(store.write_async_expecting("k", body, expected).await?, 8);
    /// # Ok(())
    /// # }
    /// ```
    pub async fn write_async_expecting<R>(
        &self,
        key: &str,
        src: R,
        expected: Expected,
    ) -> Result<u64>
    where
        R: AsyncRead + Unpin + Send + 'static,
    {
        let (alive, cancelled) = oneshot::channel::<()>();
        let bridge = tokio_util::io::SyncIoBridge::new(AsyncCancellable {
            inner: src,
            cancelled,
            done: false,
        });
        let written = self.write_expecting(key, bridge, expected).await;
        drop(alive);
        written
    }

    /// [`Store::read`] as an [`AsyncRead`]: verified chunks stream through a small bounded
    /// channel (memory does not grow with the object), read on the blocking pool only while
    /// the channel has room, so a reader nobody drains holds no blocking thread.
    pub async fn read(&self, key: &str) -> Result<AsyncObjectReader> {
        let key = key.to_owned();
        let reader = self.run(move |s| s.read(&key)).await?;
        Ok(AsyncObjectReader::spawn(reader))
    }

    /// [`Store::read`], opened on the blocking pool, returning the blocking reader.
    pub async fn read_blocking(&self, key: &str) -> Result<ObjectReader> {
        let key = key.to_owned();
        self.run(move |s| s.read(&key)).await
    }

    /// [`Store::has`].
    pub async fn has(&self, key: &str) -> Result<bool> {
        let key = key.to_owned();
        self.run(move |s| s.has(&key)).await
    }

    /// [`Store::stat`].
    pub async fn stat(&self, key: &str) -> Result<ObjectMeta> {
        let key = key.to_owned();
        self.run(move |s| s.stat(&key)).await
    }

    /// [`Store::delete`].
    pub async fn delete(&self, key: &str) -> Result<bool> {
        let key = key.to_owned();
        self.run(move |s| s.delete(&key)).await
    }

    /// [`Store::clear`].
    pub async fn clear(&self) -> Result<()> {
        self.run(|s| s.clear()).await
    }

    /// [`Store::compact`].
    pub async fn compact(&self) -> Result<()> {
        self.run(|s| s.compact()).await
    }

    /// [`Store::verify`].
    pub async fn verify(&self, key: &str) -> Result<()> {
        let key = key.to_owned();
        self.run(move |s| s.verify(&key)).await
    }

    /// [`Store::scrub`].
    pub async fn scrub(&self) -> Result<ScrubReport> {
        self.run(|s| Ok(s.scrub())).await
    }

    /// All keys, collected (memory grows with the number of keys, not their sizes); the
    /// first unreadable entry is an error. For a streaming walk, iterate
    /// [`Store::keys`] on the blocking pool.
    pub async fn keys(&self) -> Result<Vec<String>> {
        self.run(|s| s.keys().collect()).await
    }
}

/// The error a cancelled write's source fails with.
fn cancelled() -> io::Error {
    io::Error::other("the write was cancelled (its future was dropped)")
}

/// A blocking source that fails once the future of its write was dropped (the sender of
/// `cancelled` with it).
struct Cancellable<R> {
    inner: R,
    cancelled: oneshot::Receiver<()>,
}

impl<R: Read> Read for Cancellable<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.cancelled.try_recv() == Err(oneshot::error::TryRecvError::Closed) {
            return Err(cancelled());
        }
        self.inner.read(buf)
    }
}

/// An async source that fails once the future of its write was dropped, also while it
/// waits for bytes (the closed channel wakes it).
struct AsyncCancellable<R> {
    inner: R,
    cancelled: oneshot::Receiver<()>,
    /// `cancelled` resolved (it is not polled again).
    done: bool,
}

impl<R: AsyncRead + Unpin> AsyncRead for AsyncCancellable<R> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if this.done || Pin::new(&mut this.cancelled).poll(cx).is_ready() {
            this.done = true;
            return Poll::Ready(Err(cancelled()));
        }
        Pin::new(&mut this.inner).poll_read(cx, buf)
    }
}

/// An [`AsyncRead`] over a verified object; see [`AsyncStore::read`].
///
/// A [`BlockingReader`] over the object's [`ObjectReader`]: chunks of 64 KiB are read on
/// tokio's blocking pool only while at most four wait for the consumer, so a reader nobody
/// drains holds no thread, only the chunks in flight. The [`ObjectReader`] checks the
/// object's hash on the read that delivers its last byte, so the stream ends cleanly only
/// for a verified object; and it must end after exactly [`size`](Self::size) bytes.
pub struct AsyncObjectReader {
    size: u64,
    inner: BlockingReader,
    delivered: u64,
}

impl fmt::Debug for AsyncObjectReader {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AsyncObjectReader")
            .field("size", &self.size)
            .finish_non_exhaustive()
    }
}

impl AsyncObjectReader {
    /// Starts the reading task; must be called inside a tokio runtime.
    fn spawn(reader: ObjectReader) -> AsyncObjectReader {
        AsyncObjectReader {
            size: reader.size(),
            inner: BlockingReader::new(reader, CHUNK, READ_AHEAD),
            delivered: 0,
        }
    }

    /// The object's size in bytes.
    pub fn size(&self) -> u64 {
        self.size
    }
}

impl AsyncRead for AsyncObjectReader {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        let before = buf.filled().len();
        ready!(Pin::new(&mut this.inner).poll_read(cx, buf))?;
        let n = buf.filled().len() - before;
        this.delivered += n as u64;
        if n == 0 && buf.remaining() > 0 && this.delivered != this.size {
            return Poll::Ready(Err(io::Error::other(format!(
                "object reader ended after {} of {} bytes",
                this.delivered, this.size
            ))));
        }
        Poll::Ready(Ok(()))
    }
}
