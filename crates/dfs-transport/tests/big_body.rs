//! A body larger than 4 GiB streamed from a generated reader between two TCP endpoints, with
//! memory staying flat. Slow, so ignored by default; run it with
//! `cargo test -p dfs-transport --release --test big_body -- --ignored --nocapture`.
#![allow(clippy::unwrap_used)]

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use dfs_transport::{Endpoint, EndpointConfig, Event, NetworkSecret, NodeId, TcpTransport};
use tokio::io::{AsyncRead, AsyncReadExt, ReadBuf};

/// Byte `i` is `(i * 7 + i / 4093) as u8`, produced in blocks without holding the body.
struct Generated {
    pos: u64,
    len: u64,
}

fn fill(pos: u64, dst: &mut [u8]) {
    for (k, b) in dst.iter_mut().enumerate() {
        let i = pos + k as u64;
        *b = (i.wrapping_mul(7) + i / 4093) as u8;
    }
}

impl AsyncRead for Generated {
    fn poll_read(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let n = (buf.remaining() as u64).min(self.len - self.pos) as usize;
        fill(self.pos, buf.initialize_unfilled_to(n));
        buf.advance(n);
        self.pos += n as u64;
        Poll::Ready(Ok(()))
    }
}

fn peak_rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "streams 4 GiB + 1 byte; run once in release"]
async fn body_over_4_gib_streams_in_bounded_memory() {
    const LEN: u64 = (4 << 30) + 1;
    let secret = NetworkSecret::generate();
    let config = || EndpointConfig::new(NodeId::random()).secret(Some(secret.clone()));
    let (a, _a_ev) = Endpoint::bind(TcpTransport::new(), "127.0.0.1:0", config())
        .await
        .unwrap();
    let (b, mut b_ev) = Endpoint::bind(TcpTransport::new(), "127.0.0.1:0", config())
        .await
        .unwrap();
    let peer = a.connect(&b.local_addr()).await.unwrap();
    let before = peak_rss_kib();
    let started = std::time::Instant::now();

    let mut s = peer.open_stream().await.unwrap();
    let sender =
        tokio::spawn(async move { s.send_body(LEN, Generated { pos: 0, len: LEN }).await });
    let mut body = loop {
        if let Some(Event::Stream { stream, .. }) = b_ev.next().await {
            break stream.recv_body().await.unwrap();
        }
    };
    assert_eq!(body.len(), LEN);
    let mut buf = vec![0u8; 256 * 1024];
    let mut expect = vec![0u8; 256 * 1024];
    let mut pos = 0u64;
    loop {
        let n = body.read(&mut buf).await.unwrap();
        if n == 0 {
            break;
        }
        fill(pos, &mut expect[..n]);
        assert!(buf[..n] == expect[..n], "body differs near byte {pos}");
        pos += n as u64;
    }
    assert_eq!(pos, LEN);
    assert_eq!(sender.await.unwrap().unwrap(), LEN);
    let secs = started.elapsed().as_secs_f64();
    let grew = peak_rss_kib().saturating_sub(before);
    println!(
        "streamed {LEN} bytes in {secs:.1} s ({:.0} MiB/s, generation and checking included); peak RSS grew by {grew} KiB",
        LEN as f64 / secs / (1 << 20) as f64
    );
    assert!(grew < 64 * 1024, "peak RSS grew by {grew} KiB");
    body.into_substream().unwrap().finish().await.unwrap();
}
