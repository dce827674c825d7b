//! Bounded bridges between async byte streams and the synchronous store and cipher.
//!
//! Bytes cross in chunks of [`CHUNK`] (received bodies: in the transport's verified data
//! frames, passed on without a copy) over a channel of [`DEPTH`] slots, so a transfer holds
//! at most about `DEPTH + 2` chunks or frames in memory whatever its size. Both directions end
//! with an explicit end marker: a channel that closes without it (a cancelled or panicked
//! task) is an error, never a silently short file.

use std::io::{self, Read};
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use dfs_transport::BodyReader;
use futures::Stream;
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::sync::mpsc;
use tokio_util::io::StreamReader;

/// Bytes per chunk.
pub(crate) const CHUNK: usize = 256 * 1024;
/// Chunks in flight per transfer.
pub(crate) const DEPTH: usize = 4;

/// One item of a bridge channel: a chunk, the end marker (`Ok(None)`), or an error.
pub(crate) type Item = io::Result<Option<Bytes>>;

/// A synchronous [`Read`] fed by an async producer (see [`pump`]). Use only on the blocking
/// pool. The stream must end with the end marker: a channel closed without it is an error.
pub(crate) struct ChannelReader {
    rx: mpsc::Receiver<Item>,
    current: Bytes,
    done: bool,
}

impl ChannelReader {
    pub(crate) fn new(rx: mpsc::Receiver<Item>) -> Self {
        ChannelReader {
            rx,
            current: Bytes::new(),
            done: false,
        }
    }
}

impl Read for ChannelReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        loop {
            if !self.current.is_empty() {
                let n = buf.len().min(self.current.len());
                let chunk = self.current.split_to(n);
                buf[..n].copy_from_slice(&chunk);
                return Ok(n);
            }
            if self.done {
                return Ok(0);
            }
            match self.rx.blocking_recv() {
                Some(Ok(Some(chunk))) => self.current = chunk,
                Some(Ok(None)) => self.done = true,
                Some(Err(e)) => return Err(e),
                None => {
                    return Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "data source stopped before the end of the stream",
                    ));
                }
            }
        }
    }
}

/// Copies `src` (a caller's data: no timeout, it may be as slow as it likes) into `tx` chunk
/// by chunk, then the end marker. Returns the byte count. If the receiver goes away the copy
/// stops with an error. (Received bodies use [`pump_body`].)
pub(crate) async fn pump<R: AsyncRead + Unpin>(
    mut src: R,
    tx: &mpsc::Sender<Item>,
) -> io::Result<u64> {
    let mut total = 0u64;
    loop {
        let mut buf = BytesMut::with_capacity(CHUNK);
        let n = match src.read_buf(&mut buf).await {
            Ok(n) => n,
            Err(e) => {
                let msg = e.to_string();
                let kind = e.kind();
                let _ = tx.send(Err(io::Error::new(kind, msg))).await;
                return Err(e);
            }
        };
        if n == 0 {
            tx.send(Ok(None)).await.map_err(|_| gone())?;
            return Ok(total);
        }
        total += n as u64;
        tx.send(Ok(Some(buf.freeze()))).await.map_err(|_| gone())?;
    }
}

/// Forwards a received body's verified chunks into `tx` without copying them, then the end
/// marker. Each chunk must arrive within `read_timeout` (when set). Returns the byte count;
/// a failed body sends its error down the channel too, so the consumer never sees a clean
/// end.
pub(crate) async fn pump_body(
    body: &mut BodyReader,
    tx: &mpsc::Sender<Item>,
    read_timeout: Option<Duration>,
) -> io::Result<u64> {
    let total = forward_body(body, tx, read_timeout).await?;
    tx.send(Ok(None)).await.map_err(|_| gone())?;
    Ok(total)
}

/// [`pump_body`] without the end marker: for one of several bodies making up a stream.
pub(crate) async fn forward_body(
    body: &mut BodyReader,
    tx: &mpsc::Sender<Item>,
    read_timeout: Option<Duration>,
) -> io::Result<u64> {
    let mut total = 0u64;
    loop {
        let next = match read_timeout {
            Some(d) => match tokio::time::timeout(d, body.next_chunk()).await {
                Ok(r) => r.map_err(io::Error::other),
                Err(_) => Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!("no data for {d:?}"),
                )),
            },
            None => body.next_chunk().await.map_err(io::Error::other),
        };
        match next {
            Ok(Some(chunk)) => {
                total += chunk.len() as u64;
                tx.send(Ok(Some(chunk))).await.map_err(|_| gone())?;
            }
            Ok(None) => return Ok(total),
            Err(e) => {
                let _ = tx.send(Err(io::Error::new(e.kind(), e.to_string()))).await;
                return Err(e);
            }
        }
    }
}

/// The error of a send to a consumer that went away.
fn gone() -> io::Error {
    io::Error::new(io::ErrorKind::BrokenPipe, "consumer stopped")
}

/// Streams a blocking reader as an async one. Chunks are read on the blocking pool, each
/// only once the channel has room for it: a job keeps reading while there is room and hands
/// the reader back when the channel is full, so a steady consumer keeps one thread busy (no
/// hop per chunk) while a consumer that stops reading (an idle
/// [`FileReader`](crate::FileReader), a slow peer) holds no thread, only the chunks in
/// flight. Ends with the end marker, or the reader's error.
pub(crate) fn async_reader<R: Read + Send + 'static>(src: R) -> StreamReader<ChunkStream, Bytes> {
    let (tx, rx) = channel();
    tokio::spawn(drain(src, tx));
    StreamReader::new(ChunkStream::new(rx))
}

/// How a blocking read job of [`drain`] ended.
enum Job<R> {
    /// The channel is full: wait for room, then run another job with the reader.
    Full(R),
    /// The reader is done but the channel had no room for this last item.
    Last(Item),
    /// Everything was sent, or the consumer went away.
    Done,
}

/// The producer task of [`async_reader`]. Stops quietly when the consumer goes away.
async fn drain<R: Read + Send + 'static>(mut src: R, tx: mpsc::Sender<Item>) {
    loop {
        let Ok(permit) = tx.clone().reserve_owned().await else {
            return;
        };
        let last = match tokio::task::spawn_blocking(move || read_while_room(src, permit)).await {
            Ok(Job::Full(back)) => {
                src = back;
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

/// One blocking job: reads chunks into the channel while it has room (starting with the
/// slot `permit` holds).
fn read_while_room<R: Read>(mut src: R, mut permit: mpsc::OwnedPermit<Item>) -> Job<R> {
    loop {
        let (chunk, result) = read_chunk(&mut src);
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
            // `read_chunk` returns nothing only at the end or on an error.
            (true, None) => return Job::Full(src),
            (false, last) => (permit.send(Ok(Some(chunk))), last),
        };
        permit = match tx.try_reserve_owned() {
            Ok(next) => next,
            Err(mpsc::error::TrySendError::Full(_)) => {
                return match last {
                    Some(last) => Job::Last(last),
                    None => Job::Full(src),
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
/// large). Returns the bytes read, and whether the end was reached or the error.
fn read_chunk(src: &mut impl Read) -> (Bytes, io::Result<bool>) {
    let mut buf = vec![0u8; CHUNK];
    let mut filled = 0;
    let result = loop {
        match src.read(&mut buf[filled..]) {
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
    (Bytes::from(buf), result)
}

/// The async side of a bridge channel: a stream of chunks for
/// [`tokio_util::io::StreamReader`]. A channel closed without the end marker yields an error.
#[derive(Debug)]
pub(crate) struct ChunkStream {
    rx: mpsc::Receiver<Item>,
    done: bool,
}

impl ChunkStream {
    pub(crate) fn new(rx: mpsc::Receiver<Item>) -> Self {
        ChunkStream { rx, done: false }
    }
}

impl Stream for ChunkStream {
    type Item = io::Result<Bytes>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        if self.done {
            return Poll::Ready(None);
        }
        match self.rx.poll_recv(cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(Some(Ok(Some(chunk)))) => Poll::Ready(Some(Ok(chunk))),
            Poll::Ready(Some(Ok(None))) => {
                self.done = true;
                Poll::Ready(None)
            }
            Poll::Ready(Some(Err(e))) => {
                self.done = true;
                Poll::Ready(Some(Err(e)))
            }
            Poll::Ready(None) => {
                self.done = true;
                Poll::Ready(Some(Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "reader task stopped before the end of the stream",
                ))))
            }
        }
    }
}

/// A channel pair of the bridge's depth.
pub(crate) fn channel() -> (mpsc::Sender<Item>, mpsc::Receiver<Item>) {
    mpsc::channel(DEPTH)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt;
    use tokio_util::io::StreamReader;

    #[tokio::test]
    async fn pump_into_channel_reader_round_trip() {
        let data: Vec<u8> = (0..CHUNK * 3 + 17).map(|i| i as u8).collect();
        let (tx, rx) = channel();
        let reader = tokio::task::spawn_blocking(move || {
            let mut out = Vec::new();
            ChannelReader::new(rx).read_to_end(&mut out).map(|_| out)
        });
        let n = pump(&data[..], &tx).await.unwrap();
        assert_eq!(n, data.len() as u64);
        drop(tx);
        assert_eq!(reader.await.unwrap().unwrap(), data);
    }

    #[tokio::test]
    async fn closed_without_end_is_an_error() {
        let (tx, rx) = channel();
        tx.send(Ok(Some(Bytes::from_static(b"abc")))).await.unwrap();
        drop(tx);
        let mut out = Vec::new();
        let err = StreamReader::new(ChunkStream::new(rx))
            .read_to_end(&mut out)
            .await
            .unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::UnexpectedEof);

        let (tx, rx) = channel();
        tx.send(Ok(Some(Bytes::from_static(b"abc")))).await.unwrap();
        drop(tx);
        let res = tokio::task::spawn_blocking(move || {
            let mut out = Vec::new();
            ChannelReader::new(rx).read_to_end(&mut out)
        })
        .await
        .unwrap();
        assert!(res.is_err());
    }

    #[tokio::test]
    async fn async_reader_round_trip_and_errors() {
        let data: Vec<u8> = (0..CHUNK * 2 + 5).map(|i| (i * 7) as u8).collect();
        let mut out = Vec::new();
        async_reader(io::Cursor::new(data.clone()))
            .read_to_end(&mut out)
            .await
            .unwrap();
        assert_eq!(out, data);

        // A source failing after some bytes: the bytes, then its error (never a clean end).
        let failing = Read::chain(io::Cursor::new(vec![1u8; CHUNK + 3]), Broken);
        let mut out = Vec::new();
        let err = async_reader(failing)
            .read_to_end(&mut out)
            .await
            .unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::Other);
        assert_eq!(out.len(), CHUNK + 3);
    }

    struct Broken;

    impl Read for Broken {
        fn read(&mut self, _: &mut [u8]) -> io::Result<usize> {
            Err(io::Error::other("disk on fire"))
        }
    }

    /// Readers nobody reads from hold no blocking thread: with a pool of one, other
    /// blocking work still runs.
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
                .map(|_| async_reader(Read::take(io::repeat(7), 64 * CHUNK as u64)))
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
