//! The tokio adapters with inner readers and writers that return `Pending` between tiny
//! pieces (partial polls), for both ciphers, across chunk boundaries.
#![cfg(feature = "tokio")]

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use dfs_crypto::{Aes256Ctr, Aes256CtrBlake3, Cipher, CryptoError, Key};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};

/// Returns `Pending` (after waking) every other poll, else at most `step` bytes.
struct Trickle {
    data: Vec<u8>,
    pos: usize,
    step: usize,
    pend: bool,
}

impl AsyncRead for Trickle {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        self.pend = !self.pend;
        if self.pend {
            cx.waker().wake_by_ref();
            return Poll::Pending;
        }
        let n = self
            .step
            .min(buf.remaining())
            .min(self.data.len() - self.pos);
        let pos = self.pos;
        buf.put_slice(&self.data[pos..pos + n]);
        self.pos += n;
        Poll::Ready(Ok(()))
    }
}

/// Accepts at most `step` bytes per write, `Pending` every other poll.
struct TrickleSink {
    out: Vec<u8>,
    step: usize,
    pend: bool,
}

impl AsyncWrite for TrickleSink {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.pend = !self.pend;
        if self.pend {
            cx.waker().wake_by_ref();
            return Poll::Pending;
        }
        let n = self.step.min(buf.len());
        self.out.extend_from_slice(&buf[..n]);
        Poll::Ready(Ok(n))
    }
    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

fn trickle(data: &[u8], step: usize) -> Trickle {
    Trickle {
        data: data.to_vec(),
        pos: 0,
        step,
        pend: false,
    }
}

fn sink(step: usize) -> TrickleSink {
    TrickleSink {
        out: Vec::new(),
        step,
        pend: false,
    }
}

async fn read_in(mut r: impl AsyncRead + Unpin, step: usize) -> io::Result<Vec<u8>> {
    let mut out = Vec::new();
    let mut buf = vec![0u8; step];
    loop {
        let n = r.read(&mut buf).await?;
        if n == 0 {
            return Ok(out);
        }
        out.extend_from_slice(&buf[..n]);
    }
}

#[tokio::test]
async fn sealed_round_trips_with_partial_polls() {
    let key = Key::from_bytes([9; 32]);
    for chunk in [16usize, 32, 48, 1024] {
        let c = Aes256CtrBlake3::new(&key).with_chunk_size(chunk).unwrap();
        for len in [
            0usize,
            1,
            15,
            16,
            17,
            chunk - 1,
            chunk,
            chunk + 1,
            3 * chunk,
            3 * chunk + 5,
        ] {
            let data: Vec<u8> = (0..len).map(|i| (i * 7 + 3) as u8).collect();
            for step in [1usize, 3, 33, 100] {
                let sealed = read_in(
                    c.encrypt_async_reader(trickle(&data, step)).unwrap(),
                    step + 2,
                )
                .await
                .unwrap();
                assert_eq!(
                    sealed.len() as u64,
                    c.ciphertext_len(len as u64),
                    "chunk {chunk} len {len} step {step}"
                );
                let mut sync_open = Vec::new();
                c.decrypt(&sealed[..], &mut sync_open).unwrap();
                assert_eq!(sync_open, data);
                let opened = read_in(c.decrypt_async_reader(trickle(&sealed, step)), step + 1)
                    .await
                    .unwrap();
                assert_eq!(opened, data, "chunk {chunk} len {len} step {step}");

                let mut w = c.encrypt_async_writer(sink(step)).unwrap();
                for piece in data.chunks(step + 2) {
                    w.write_all(piece).await.unwrap();
                }
                w.shutdown().await.unwrap();
                let sealed2 = w.into_inner().out;
                let mut back = Vec::new();
                c.decrypt(&sealed2[..], &mut back).unwrap();
                assert_eq!(back, data);

                let mut w = c.decrypt_async_writer(sink(step));
                for piece in sealed2.chunks(step) {
                    w.write_all(piece).await.unwrap();
                }
                w.shutdown().await.unwrap();
                assert_eq!(w.into_inner().out, data);

                // Truncated by one byte: an error, never a clean end.
                if !sealed.is_empty() {
                    let cut = &sealed[..sealed.len() - 1];
                    let r = read_in(c.decrypt_async_reader(trickle(cut, step)), step + 1).await;
                    assert!(r.is_err(), "truncation accepted: chunk {chunk} len {len}");
                    let mut w = c.decrypt_async_writer(sink(step));
                    let r = async {
                        w.write_all(cut).await?;
                        w.shutdown().await
                    }
                    .await;
                    let err = r.unwrap_err();
                    let _ = CryptoError::from(err);
                }
            }
        }
    }
}

#[tokio::test]
async fn ctr_round_trips_with_partial_polls() {
    let c = Aes256Ctr::new(&Key::from_bytes([5; 32]));
    for len in [0usize, 1, 15, 16, 17, 1000] {
        let data: Vec<u8> = (0..len).map(|i| (i * 11) as u8).collect();
        for step in [1usize, 7, 64] {
            let sealed = read_in(c.encrypt_async_reader(trickle(&data, step)).unwrap(), step)
                .await
                .unwrap();
            let opened = read_in(c.decrypt_async_reader(trickle(&sealed, step)), step + 3)
                .await
                .unwrap();
            assert_eq!(opened, data);
            let mut w = c.decrypt_async_writer(sink(step));
            for piece in sealed.chunks(step) {
                w.write_all(piece).await.unwrap();
            }
            w.shutdown().await.unwrap();
            assert_eq!(w.into_inner().out, data);
        }
    }
}
