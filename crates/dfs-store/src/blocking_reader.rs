//! An [`AsyncRead`] over any blocking [`Read`], read on tokio's blocking pool without pinning a
//! thread (feature `tokio`).

use std::fmt;
use std::io::{self, Read};
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, ReadBuf};
use tokio::sync::mpsc;

/// One item of the channel: a chunk, the end marker (`Ok(None)`, sent only after the reader
/// reported its end), or the error that ended the read.
type Item = io::Result<Option<Vec<u8>>>;

/// Streams a blocking [`Read`] (a verified [`ObjectReader`](crate::ObjectReader), a decrypting
/// reader over one, a file) into async code.
///
/// Chunks are read on tokio's blocking pool only while there is room for them: a blocking
/// job reads while fewer than `depth` chunks wait for the consumer and hands the reader back
/// when they fill up, so a steady consumer keeps one thread busy (no hop per chunk) while a
/// reader nobody drains holds no thread, only the chunks in flight (at most `depth + 2` chunks
/// in memory: queued, being read, being consumed). The stream ends only with an explicit end
/// marker sent after the reader's end; a reading task that stops without it (cancelled,
/// panicked) is an error, never a silently short stream. A reader's error is delivered after
/// the bytes read before it.
///
/// ```
/// use dfs_store::BlockingReader;
/// use tokio::io::AsyncReadExt;
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> std::io::Result<()> {
/// let blocking = std::io::Cursor::new(vec![7u8; 100_000]);
/// let mut reader = BlockingReader::new(blocking, 64 * 1024, 4);
/// let mut out = Vec::new();
/// reader.read_to_end(&mut out).await?;
/// assert_eq!(out, vec![7u8; 100_000]);
/// # Ok(())
/// # }
/// ```
pub struct BlockingReader {
    rx: mpsc::Receiver<Item>,
    chunk: Vec<u8>,
    pos: usize,
    done: bool,
    failed: bool,
}

impl fmt::Debug for BlockingReader {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BlockingReader")
            .field("done", &self.done)
            .field("failed", &self.failed)
            .finish_non_exhaustive()
    }
}

impl BlockingReader {
    /// Starts reading `reader` in chunks of `chunk_size` bytes, at most `depth` chunks ahead
    /// of the consumer (both at least 1). Must be called inside a tokio runtime.
    pub fn new<R: Read + Send + 'static>(reader: R, chunk_size: usize, depth: usize) -> Self {
        let (tx, rx) = mpsc::channel(depth.max(1));
        tokio::spawn(drain(reader, chunk_size.max(1), tx));
        BlockingReader {
            rx,
            chunk: Vec::new(),
            pos: 0,
            done: false,
            failed: false,
        }
    }
}

/// How one blocking read job of [`drain`] ended.
enum Job<R> {
    /// The channel is full: wait for room, then run another job with the reader.
    Full(R),
    /// The reader is done (end or error) but the channel had no room for this last item.
    Last(Item),
    /// Everything was sent, or the consumer went away.
    Done,
}

/// The producer task: waits (without a thread) for room in the channel, then runs a blocking
/// job that reads while there is room. Stops quietly when the consumer goes away.
async fn drain<R: Read + Send + 'static>(mut reader: R, chunk_size: usize, tx: mpsc::Sender<Item>) {
    loop {
        let Ok(permit) = tx.clone().reserve_owned().await else {
            return; // consumer gone
        };
        let job = move || read_while_room(reader, chunk_size, permit);
        let last = match tokio::task::spawn_blocking(job).await {
            Ok(Job::Full(back)) => {
                reader = back;
                continue;
            }
            Ok(Job::Done) => return,
            Ok(Job::Last(item)) => item,
            Err(e) => Err(io::Error::other(format!("reader task failed: {e}"))),
        };
        if let Ok(permit) = tx.reserve().await {
            permit.send(last);
        }
        return;
    }
}

/// One blocking job: reads chunks into the channel while it has room, starting with the slot
/// `permit` holds.
fn read_while_room<R: Read>(
    mut reader: R,
    chunk_size: usize,
    mut permit: mpsc::OwnedPermit<Item>,
) -> Job<R> {
    loop {
        let (chunk, result) = read_chunk(&mut reader, chunk_size);
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
/// large). Returns the bytes read, and whether the end was reached, or the error.
fn read_chunk(reader: &mut impl Read, chunk_size: usize) -> (Vec<u8>, io::Result<bool>) {
    let mut buf = vec![0u8; chunk_size];
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

impl AsyncRead for BlockingReader {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        while this.pos == this.chunk.len() {
            if this.failed {
                return Poll::Ready(Err(io::Error::other("the read already failed")));
            }
            if this.done {
                return Poll::Ready(Ok(()));
            }
            match this.rx.poll_recv(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(None) => {
                    this.failed = true;
                    return Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "the reading task stopped before the end of the stream",
                    )));
                }
                Poll::Ready(Some(Ok(None))) => this.done = true,
                Poll::Ready(Some(Ok(Some(chunk)))) => {
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;
    use tokio::io::AsyncReadExt;

    const CHUNK: usize = 64 * 1024;

    struct Broken;

    impl Read for Broken {
        fn read(&mut self, _: &mut [u8]) -> io::Result<usize> {
            Err(io::Error::other("disk on fire"))
        }
    }

    struct Panics;

    impl Read for Panics {
        fn read(&mut self, _: &mut [u8]) -> io::Result<usize> {
            panic!("reader bug")
        }
    }

    #[tokio::test]
    async fn round_trip_and_errors() {
        let data: Vec<u8> = (0..CHUNK * 2 + 5).map(|i| (i * 7) as u8).collect();
        let mut out = Vec::new();
        BlockingReader::new(io::Cursor::new(data.clone()), CHUNK, 2)
            .read_to_end(&mut out)
            .await
            .unwrap();
        assert_eq!(out, data);

        // A source failing after some bytes: the bytes, then its error (never a clean end).
        let failing = Read::chain(io::Cursor::new(vec![1u8; CHUNK + 3]), Broken);
        let mut out = Vec::new();
        let err = BlockingReader::new(failing, CHUNK, 2)
            .read_to_end(&mut out)
            .await
            .unwrap_err();
        assert!(err.to_string().contains("disk on fire"), "{err}");
        assert_eq!(out.len(), CHUNK + 3);

        // A reader that panics ends the stream with an error too.
        let mut out = Vec::new();
        let err = BlockingReader::new(Panics, CHUNK, 2)
            .read_to_end(&mut out)
            .await
            .unwrap_err();
        assert!(err.to_string().contains("reader task failed"), "{err}");
    }

    /// Readers nobody reads from hold no blocking thread: with a pool of one, other blocking
    /// work still runs.
    #[test]
    fn idle_readers_hold_no_blocking_thread() {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .max_blocking_threads(1)
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let idle: Vec<_> = (0..4)
                .map(|_| {
                    BlockingReader::new(Read::take(io::repeat(7), 64 * CHUNK as u64), CHUNK, 2)
                })
                .collect();
            let other = tokio::task::spawn_blocking(|| 42);
            let got = tokio::time::timeout(Duration::from_secs(20), other)
                .await
                .expect("the blocking pool is not held by idle readers")
                .unwrap();
            assert_eq!(got, 42);
            drop(idle);
        });
    }
}
