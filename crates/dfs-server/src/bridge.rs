//! Bounded bridges between async byte streams and the synchronous store and cipher.
//!
//! Bytes cross in chunks of [`CHUNK`] (received bodies: in the transport's verified data
//! frames, passed on without a copy) over a channel of [`DEPTH`] slots, so a transfer holds
//! at most about `DEPTH + 2` chunks or frames in memory whatever its size. Async to sync:
//! [`pump`] / [`pump_body`] into a [`ChannelReader`]; sync to async: [`async_reader`], a
//! [`dfs_store::BlockingReader`]. Both directions end with an explicit end marker: a channel
//! that closes without it (a cancelled or panicked task) is an error, never a silently
//! short file.

use std::io::{self, Read};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use dfs_store::BlockingReader;
use dfs_transport::BodyReader;
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::sync::mpsc;

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

/// Streams a blocking reader as an async one, [`CHUNK`] bytes at a time, at most [`DEPTH`]
/// chunks ahead: a steady consumer keeps one blocking-pool thread busy, while a consumer that
/// stops reading (an idle [`FileReader`](crate::FileReader), a slow peer) holds no thread,
/// only the chunks in flight. Ends after the reader's end, or with its error.
pub(crate) fn async_reader<R: Read + Send + 'static>(src: R) -> BlockingReader {
    BlockingReader::new(src, CHUNK, DEPTH)
}

/// A channel pair of the bridge's depth.
pub(crate) fn channel() -> (mpsc::Sender<Item>, mpsc::Receiver<Item>) {
    mpsc::channel(DEPTH)
}

#[cfg(test)]
mod tests {
    use super::*;

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
        let res = tokio::task::spawn_blocking(move || {
            let mut out = Vec::new();
            ChannelReader::new(rx).read_to_end(&mut out)
        })
        .await
        .unwrap();
        assert!(res.is_err());
    }
}
