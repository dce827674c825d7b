//! Async wrappers that run the blocking store on tokio's blocking pool (feature `tokio`).

use std::fmt;
use std::io::{self, Read};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, ReadBuf};
use tokio::sync::mpsc;

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

    /// [`Store::write`] from a blocking reader, on the blocking pool.
    pub async fn write<R: Read + Send + 'static>(&self, key: &str, src: R) -> Result<u64> {
        let key = key.to_owned();
        self.run(move |s| s.write(&key, src)).await
    }

    /// [`Store::write`] from an async reader, bridged with `tokio_util::io::SyncIoBridge`.
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
        let bridge = tokio_util::io::SyncIoBridge::new(src);
        self.write(key, bridge).await
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
        self.run(move |s| s.write_expecting(&key, src, expected))
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
        let bridge = tokio_util::io::SyncIoBridge::new(src);
        self.write_expecting(key, bridge, expected).await
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

/// One item of a reader's channel: a chunk, the end marker (`Ok(None)`, sent only after
/// the object's hash checked out), or the error that ended the read.
type Item = io::Result<Option<Vec<u8>>>;

/// An [`AsyncRead`] over a verified object; see [`AsyncStore::read`].
///
/// Chunks are read on tokio's blocking pool only while the channel has room for them: a
/// blocking job reads while there is room and hands the reader back when the channel is
/// full, so a reader nobody drains holds no thread, only the chunks in flight (at most
/// about six chunks of 64 KiB are in memory at once: four queued, one being read, one being
/// consumed). The stream ends only
/// with an explicit end marker sent after the last read verified the object's hash; a
/// channel that closes without it (a cancelled or panicked task) is an error.
pub struct AsyncObjectReader {
    size: u64,
    rx: mpsc::Receiver<Item>,
    chunk: Vec<u8>,
    pos: usize,
    delivered: u64,
    done: bool,
    failed: bool,
}

impl fmt::Debug for AsyncObjectReader {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AsyncObjectReader")
            .field("size", &self.size)
            .finish_non_exhaustive()
    }
}

impl AsyncObjectReader {
    /// Starts the producer task; must be called inside a tokio runtime.
    fn spawn(reader: ObjectReader) -> AsyncObjectReader {
        let size = reader.size();
        let (tx, rx) = mpsc::channel(READ_AHEAD);
        tokio::spawn(drain(Box::new(reader), tx));
        AsyncObjectReader {
            size,
            rx,
            chunk: Vec::new(),
            pos: 0,
            delivered: 0,
            done: false,
            failed: false,
        }
    }

    /// The object's size in bytes.
    pub fn size(&self) -> u64 {
        self.size
    }
}

/// How one blocking read job of [`drain`] ended.
enum Job {
    /// The channel is full: wait for room, then run another job with the reader.
    Full(Box<ObjectReader>),
    /// The reader is done (end or error) but the channel had no room for this last item.
    Last(Item),
    /// Everything was sent, or the consumer went away.
    Done,
}

/// The producer task of an [`AsyncObjectReader`]: waits (without a thread) for room in the
/// channel, then runs a blocking job that reads while there is room. Stops quietly when the
/// consumer goes away.
async fn drain(mut reader: Box<ObjectReader>, tx: mpsc::Sender<Item>) {
    loop {
        let Ok(permit) = tx.clone().reserve_owned().await else {
            return; // consumer gone
        };
        let last = match tokio::task::spawn_blocking(move || read_while_room(reader, permit)).await
        {
            Ok(Job::Full(back)) => {
                reader = back;
                continue;
            }
            Ok(Job::Done) => return,
            Ok(Job::Last(item)) => item,
            Err(e) => Err(io::Error::other(format!("object reader task failed: {e}"))),
        };
        if let Ok(permit) = tx.reserve().await {
            permit.send(last);
        }
        return;
    }
}

/// One blocking job: reads chunks into the channel while it has room, starting with the
/// slot `permit` holds.
fn read_while_room(mut reader: Box<ObjectReader>, mut permit: mpsc::OwnedPermit<Item>) -> Job {
    loop {
        let (chunk, result) = read_chunk(&mut reader);
        let last = match result {
            Ok(false) => None,
            Ok(true) => Some(Ok(None)),
            Err(e) => Some(Err(e)),
        };
        let (tx, last) = match (chunk.is_empty(), last) {
            (true, Some(last)) => {
                permit.send(last);
                return Job::Done;
            }
            // `read_chunk` returns no bytes only at the end or on an error.
            (true, None) => return Job::Full(reader),
            (false, last) => (permit.send(Ok(Some(chunk))), last),
        };
        permit = match tx.try_reserve_owned() {
            Ok(next) => next,
            Err(mpsc::error::TrySendError::Full(_)) => {
                return match last {
                    Some(last) => Job::Last(last),
                    None => Job::Full(reader),
                };
            }
            Err(mpsc::error::TrySendError::Closed(_)) => return Job::Done,
        };
        if let Some(last) = last {
            permit.send(last);
            return Job::Done;
        }
    }
}

/// Reads up to one whole chunk (fewer only at the end or on an error, to keep channel items
/// large). Returns the bytes read, and whether the end was reached, or the error. The
/// [`ObjectReader`] checks the hash on the read that delivers the last byte, so the end is
/// reported only for a verified object.
fn read_chunk(reader: &mut ObjectReader) -> (Vec<u8>, io::Result<bool>) {
    let mut buf = vec![0u8; CHUNK];
    let mut filled = 0;
    let result = loop {
        match reader.read(&mut buf[filled..]) {
            Ok(0) => break Ok(true),
            Ok(n) => {
                filled += n;
                if filled == buf.len() {
                    break Ok(false);
                }
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => break Err(e),
        }
    };
    buf.truncate(filled);
    (buf, result)
}

impl AsyncRead for AsyncObjectReader {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        while this.pos == this.chunk.len() {
            if this.failed {
                return Poll::Ready(Err(io::Error::other("object read already failed")));
            }
            if this.done {
                return Poll::Ready(Ok(()));
            }
            match this.rx.poll_recv(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(None) => {
                    // The reading task ended without the end marker (it panicked or was
                    // cancelled).
                    this.failed = true;
                    return Poll::Ready(Err(io::Error::other(
                        "object reader task ended before the end of the object",
                    )));
                }
                Poll::Ready(Some(Ok(None))) if this.delivered != this.size => {
                    this.failed = true;
                    return Poll::Ready(Err(io::Error::other(format!(
                        "object reader ended after {} of {} bytes",
                        this.delivered, this.size
                    ))));
                }
                Poll::Ready(Some(Ok(None))) => this.done = true,
                Poll::Ready(Some(Ok(Some(chunk)))) => {
                    this.delivered += chunk.len() as u64;
                    this.chunk = chunk;
                    this.pos = 0;
                }
                Poll::Ready(Some(Err(e))) => {
                    this.failed = true;
                    return Poll::Ready(Err(e));
                }
            }
        }
        let n = buf.remaining().min(this.chunk.len() - this.pos);
        buf.put_slice(&this.chunk[this.pos..this.pos + n]);
        this.pos += n;
        Poll::Ready(Ok(()))
    }
}
