//! Replication between two `dfs-server` nodes on loopback TCP, against each stage alone.
//!
//! Group `cluster/<size>` (default 256 MiB; `DFS_BENCH_MIB=1024` for the 1 GiB target), each
//! iteration moves the whole file once:
//! - `stage-disk-write-fsync`: `std::fs` write of the bytes plus `sync_all` (anchor).
//! - `stage-auth-encrypt`: `Aes256CtrBlake3` encryption of the bytes into a sink (anchor).
//! - `stage-loopback-tcp`: plain tokio TCP copy of the bytes over 127.0.0.1 (anchor).
//! - `two-disk-writes-fsync-at-once`: two such `std::fs` writes in two threads at once, the
//!   least a store with one replica on the same disk must do (a reference, not a stage).
//! - `fetch-a-to-b`: node B gets a file only node A holds: A streams its stored ciphertext,
//!   B stages, verifies (length, BLAKE3, key fingerprint), fsyncs and commits it.
//! - `store-replicated`: `store` on A with one replica on B: encrypt + local fsynced write,
//!   streamed to B from the local file while it is written; B fsyncs and acknowledges.
//! - `replicate-a-to-b`: `replicate` on A of the file it holds to B, which does not hold
//!   it: A streams its stored ciphertext (verified as read), B verifies (length, BLAKE3,
//!   key fingerprint), fsyncs, commits and acknowledges.
//!
//! Run: `cargo bench -p dfs-benches --bench cluster` (`DFS_BENCH_MIB=1024` for 1 GiB).

use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use dfs_crypto::{Aes256CtrBlake3, Cipher, Key};
use dfs_server::{Config, FileServer, Replication, Scope, TcpTransport};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt, ReadBuf};
use tokio::runtime::Runtime;

fn size() -> u64 {
    std::env::var("DFS_BENCH_MIB")
        .ok()
        .and_then(|v| v.parse::<u64>().ok())
        .unwrap_or(256)
        << 20
}

/// A generated stream of `left` bytes (cheap, incompressible enough).
struct Gen {
    left: u64,
    block: Vec<u8>,
    at: usize,
}

impl Gen {
    fn new(left: u64) -> Self {
        let mut x = 0x9e37_79b9_7f4a_7c15_u64;
        let block = (0..1_048_573)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect();
        Gen { left, block, at: 0 }
    }

    fn next_slice(&mut self, max: usize) -> &[u8] {
        let n = max.min(self.left as usize).min(self.block.len() - self.at);
        let start = self.at;
        self.at = (self.at + n) % self.block.len();
        self.left -= n as u64;
        &self.block[start..start + n]
    }
}

impl std::io::Read for Gen {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let slice = self.next_slice(buf.len());
        let n = slice.len();
        buf[..n].copy_from_slice(slice);
        Ok(n)
    }
}

impl AsyncRead for Gen {
    fn poll_read(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let slice = self.next_slice(buf.remaining());
        let owned = slice.to_vec();
        buf.put_slice(&owned);
        Poll::Ready(Ok(()))
    }
}

fn runtime() -> Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime")
}

async fn node(dir: &std::path::Path, key: &Key, boot: &[String]) -> FileServer<TcpTransport> {
    FileServer::start(
        Config::builder(dir)
            .data_key(key.clone())
            .bootstrap(boot.iter().cloned())
            .replication(Replication::AllConnected)
            .replication_timeout(Duration::from_secs(600))
            .request_timeout(Duration::from_secs(60))
            .build(),
        TcpTransport::new(),
    )
    .await
    .expect("node starts")
}

fn bench(c: &mut Criterion) {
    let len = size();
    let label = format!("{}MiB", len >> 20);
    let mut group = c.benchmark_group(format!("cluster/{label}"));
    group.sample_size(10);
    group.measurement_time(Duration::from_secs(20));
    group.warm_up_time(Duration::from_secs(1));
    group.throughput(Throughput::Bytes(len));

    let scratch = tempfile::tempdir().expect("tempdir");
    let write_plain = |path: &std::path::Path| {
        let mut file = std::fs::File::create(path).expect("create");
        std::io::copy(&mut Gen::new(len), &mut file).expect("write");
        file.sync_all().expect("fsync");
    };
    group.bench_function("stage-disk-write-fsync", |b| {
        let path = scratch.path().join("plain.bin");
        b.iter(|| write_plain(&path));
    });
    // Not a stage: what a store with one replica on the same disk must do at least.
    group.bench_function("two-disk-writes-fsync-at-once", |b| {
        let paths = [0, 1].map(|i| scratch.path().join(format!("plain{i}.bin")));
        b.iter(|| {
            std::thread::scope(|s| {
                for path in &paths {
                    s.spawn(|| write_plain(path));
                }
            });
        });
    });

    let key = Key::generate().expect("key");
    group.bench_function("stage-auth-encrypt", |b| {
        let cipher = Aes256CtrBlake3::new(&key);
        b.iter(|| {
            cipher
                .encrypt(Gen::new(len), std::io::sink())
                .expect("encrypt")
        });
    });

    let rt = runtime();
    group.bench_function("stage-loopback-tcp", |b| {
        b.iter_custom(|iters| {
            rt.block_on(async {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
                        .await
                        .expect("bind");
                    let addr = listener.local_addr().expect("addr");
                    let started = Instant::now();
                    let server = tokio::spawn(async move {
                        let (mut s, _) = listener.accept().await.expect("accept");
                        let mut buf = vec![0u8; 256 * 1024];
                        let mut got = 0u64;
                        loop {
                            let n = s.read(&mut buf).await.expect("read");
                            if n == 0 {
                                return got;
                            }
                            got += n as u64;
                        }
                    });
                    let mut client = tokio::net::TcpStream::connect(addr).await.expect("dial");
                    tokio::io::copy(&mut Gen::new(len), &mut client)
                        .await
                        .expect("send");
                    client.shutdown().await.expect("shutdown");
                    assert_eq!(server.await.expect("server"), len);
                    total += started.elapsed();
                }
                total
            })
        });
    });

    let dirs = [
        tempfile::tempdir().expect("tempdir"),
        tempfile::tempdir().expect("tempdir"),
    ];
    let (a, b_node) = rt.block_on(async {
        let a = node(dirs[0].path(), &key, &[]).await;
        let b = node(dirs[1].path(), &key, &[a.local_addr()]).await;
        b.wait_for_peers(1, Duration::from_secs(10))
            .await
            .expect("connected");
        (a, b)
    });

    group.bench_function("store-replicated", |bench| {
        bench.iter_custom(|iters| {
            rt.block_on(async {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    let started = Instant::now();
                    let receipt = a.store("bench.bin", Gen::new(len)).await.expect("store");
                    total += started.elapsed();
                    assert_eq!(receipt.replicas.len(), 1);
                }
                total
            })
        });
    });

    group.bench_function("replicate-a-to-b", |bench| {
        bench.iter_custom(|iters| {
            rt.block_on(time_copies_to(&b_node, iters, || async {
                let receipt = a.replicate("bench.bin").await.expect("replicate");
                assert_eq!(receipt.replicas, vec![b_node.node_id()]);
            }))
        });
    });

    group.bench_function("fetch-a-to-b", |bench| {
        bench.iter_custom(|iters| {
            rt.block_on(time_copies_to(&b_node, iters, || async {
                let reader = b_node.get("bench.bin").await.expect("fetch");
                assert_eq!(reader.len(), len);
            }))
        });
    });
    group.finish();

    rt.block_on(async {
        a.shutdown().await.expect("shutdown");
        b_node.shutdown().await.expect("shutdown");
    });
}

/// Total time of `iters` runs of `copy`, each after `b` dropped its copy of the file.
async fn time_copies_to<F, Fut>(b: &FileServer<TcpTransport>, iters: u64, copy: F) -> Duration
where
    F: Fn() -> Fut,
    Fut: Future<Output = ()>,
{
    let mut total = Duration::ZERO;
    for _ in 0..iters {
        b.delete("bench.bin", Scope::Local).await.expect("delete");
        let started = Instant::now();
        copy().await;
        total += started.elapsed();
    }
    total
}

criterion_group!(benches, bench);
criterion_main!(benches);
