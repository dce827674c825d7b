//! The main demo: three `dfs-server` nodes on loopback TCP in one process.
//!
//! Node A stores a few files (one of 64 MiB), encrypted and replicated to B and C; C reads
//! them back; A is stopped; C drops its copies and fetches everything again from B over the
//! network. Every read is checked against a BLAKE3 of the original, and a short report with
//! throughput and peak memory is printed.
//!
//! ```sh
//! cargo run --release --example cluster
//! ```

use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, ensure};
use dfs_server::{Config, FileServer, Key, Scope, TcpTransport};
use tokio::io::{AsyncRead, AsyncReadExt, ReadBuf};

const MIB: u64 = 1024 * 1024;

/// The files stored: (name, size).
const FILES: [(&str, u64); 4] = [
    ("notes/hello.txt", 1024),
    ("photos/cat.jpg", 300 * 1024),
    ("music/track.flac", 8 * MIB),
    ("video/holiday.mp4", 64 * MIB),
];

/// A deterministic generated stream (xorshift), so big files need no big buffers.
struct Generated {
    left: u64,
    state: u64,
}

impl Generated {
    fn new(seed: u64, len: u64) -> Self {
        Generated {
            left: len,
            state: seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1,
        }
    }
}

impl AsyncRead for Generated {
    fn poll_read(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let n = (buf.remaining() as u64).min(self.left) as usize;
        let mut chunk = vec![0u8; n];
        for word in chunk.chunks_mut(8) {
            self.state ^= self.state << 13;
            self.state ^= self.state >> 7;
            self.state ^= self.state << 17;
            word.copy_from_slice(&self.state.to_le_bytes()[..word.len()]);
        }
        buf.put_slice(&chunk);
        self.left -= n as u64;
        Poll::Ready(Ok(()))
    }
}

async fn blake3_of(mut reader: impl AsyncRead + Unpin) -> Result<(u64, blake3::Hash)> {
    let mut hasher = blake3::Hasher::new();
    let mut buf = vec![0u8; 256 * 1024];
    let mut total = 0;
    loop {
        let n = reader.read(&mut buf).await?;
        if n == 0 {
            return Ok((total, hasher.finalize()));
        }
        total += n as u64;
        hasher.update(&buf[..n]);
    }
}

fn mib_per_s(bytes: u64, elapsed: Duration) -> f64 {
    bytes as f64 / MIB as f64 / elapsed.as_secs_f64().max(1e-9)
}

/// Peak resident memory of this process (Linux), in MiB.
fn peak_rss_mib() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024.0)
}

async fn node(
    dir: &std::path::Path,
    key: &Key,
    bootstrap: &[String],
) -> Result<FileServer<TcpTransport>> {
    let config = Config::builder(dir)
        .listen_addr("127.0.0.1:0")
        .data_key(key.clone())
        .bootstrap(bootstrap.iter().cloned())
        .fsync(std::env::var_os("DFS_NO_FSYNC").is_none())
        .build();
    Ok(FileServer::start(config, TcpTransport::new()).await?)
}

/// Reads every file from `node`, checks it, and returns (bytes, elapsed).
async fn read_all(
    node: &FileServer<TcpTransport>,
    expected: &[blake3::Hash],
    rows: &mut Vec<String>,
    label: &str,
) -> Result<()> {
    for ((name, size), want) in FILES.iter().zip(expected) {
        let started = Instant::now();
        let reader = node.get(name).await?;
        let (len, hash) = blake3_of(reader).await?;
        let elapsed = started.elapsed();
        ensure!(
            len == *size && hash == *want,
            "{name}: wrong bytes from {label}"
        );
        rows.push(format!(
            "{label:<28} {name:<20} {:>9.1} MiB {:>8.1} ms {:>8.1} MiB/s",
            *size as f64 / MIB as f64,
            elapsed.as_secs_f64() * 1e3,
            mib_per_s(*size, elapsed)
        ));
    }
    Ok(())
}

#[tokio::main]
async fn main() -> Result<()> {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .try_init();
    let key = Key::generate()?;
    let dirs = [
        tempfile::tempdir()?,
        tempfile::tempdir()?,
        tempfile::tempdir()?,
    ];

    let a = node(dirs[0].path(), &key, &[]).await?;
    let b = node(dirs[1].path(), &key, &[a.local_addr()]).await?;
    let c = node(dirs[2].path(), &key, &[a.local_addr()]).await?;
    for n in [&a, &b, &c] {
        n.wait_for_peers(2, Duration::from_secs(10))
            .await
            .context("forming the cluster")?;
    }
    println!(
        "cluster: A {} ({}), B {} ({}), C {} ({})",
        a.node_id(),
        a.local_addr(),
        b.node_id(),
        b.local_addr(),
        c.node_id(),
        c.local_addr()
    );

    let mut rows = Vec::new();
    let mut expected = Vec::new();
    for (i, (name, size)) in FILES.iter().enumerate() {
        expected.push(blake3_of(Generated::new(i as u64, *size)).await?.1);
        let started = Instant::now();
        let receipt = a.store(name, Generated::new(i as u64, *size)).await?;
        let elapsed = started.elapsed();
        ensure!(receipt.replicas.len() == 2, "{name}: expected 2 replicas");
        rows.push(format!(
            "{:<28} {name:<20} {:>9.1} MiB {:>8.1} ms {:>8.1} MiB/s",
            "store on A (+2 replicas)",
            *size as f64 / MIB as f64,
            elapsed.as_secs_f64() * 1e3,
            mib_per_s(*size, elapsed)
        ));
    }

    read_all(&c, &expected, &mut rows, "get on C (local replica)").await?;

    let a_id = a.node_id();
    a.shutdown().await?;
    let mut events = c.events();
    while c.peers().iter().any(|p| p.id == a_id) {
        tokio::time::timeout(Duration::from_secs(10), events.recv())
            .await
            .context("waiting for C to notice A left")??;
    }
    for (name, _) in FILES {
        c.delete(name, Scope::Local).await?;
    }
    read_all(&c, &expected, &mut rows, "get on C (fetched from B)").await?;

    println!(
        "\n{:<28} {:<20} {:>13} {:>11} {:>14}",
        "step", "file", "size", "time", "throughput"
    );
    for row in rows {
        println!("{row}");
    }
    println!(
        "\nA stopped; C fetched every file again from B. All bytes verified (BLAKE3).\n\
         peak RSS: {}",
        peak_rss_mib().map_or("n/a".to_owned(), |m| format!("{m:.1} MiB"))
    );
    b.shutdown().await?;
    c.shutdown().await?;
    Ok(())
}
