//! `transport`: a 1 GiB body between two `TcpTransport` endpoints on 127.0.0.1 (handshake with a
//! network secret, every frame integrity-checked) against a plain tokio TCP copy of the same
//! bytes; small request/response round trips against a plain TCP ping-pong. Prints p50/p99
//! round-trip latencies after the criterion groups.

use std::time::{Duration, Instant};

use criterion::{Criterion, Throughput, criterion_group};
use dfs_transport::{
    Endpoint, EndpointConfig, Event, Events, NetworkSecret, NodeId, Peer, TcpTransport,
};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::runtime::Runtime;

const BODY: u64 = 1 << 30;
const READ_BUF: usize = 256 * 1024;

#[derive(Serialize, Deserialize)]
struct Req {
    key: [u8; 32],
    offset: u64,
}

#[derive(Serialize, Deserialize)]
struct Resp {
    found: bool,
    len: u64,
}

fn runtime() -> Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime")
}

/// The same source for both contenders: `len` bytes of 0x5a, no allocation per byte.
fn source(len: u64) -> impl AsyncRead + Unpin + Send + 'static {
    tokio::io::repeat(0x5a).take(len)
}

async fn drain<R: AsyncRead + Unpin>(mut r: R) -> u64 {
    let mut buf = vec![0u8; READ_BUF];
    let mut total = 0u64;
    loop {
        let n = r.read(&mut buf).await.expect("read");
        if n == 0 {
            return total;
        }
        total += n as u64;
    }
}

async fn endpoints(
    data_frame_len: usize,
) -> (Endpoint<TcpTransport>, Endpoint<TcpTransport>, Events, Peer) {
    let secret = NetworkSecret::generate();
    let config = || {
        EndpointConfig::new(NodeId::random())
            .secret(Some(secret.clone()))
            .data_frame_len(data_frame_len)
    };
    let (a, _a_events) = Endpoint::bind(TcpTransport::new(), "127.0.0.1:0", config())
        .await
        .expect("bind a");
    let (b, b_events) = Endpoint::bind(TcpTransport::new(), "127.0.0.1:0", config())
        .await
        .expect("bind b");
    let peer = a.connect(&b.local_addr()).await.expect("connect");
    (a, b, b_events, peer)
}

async fn next_stream(events: &mut Events) -> dfs_transport::Substream {
    loop {
        match events.next().await.expect("events") {
            Event::Stream { stream, .. } => return stream,
            _ => continue,
        }
    }
}

async fn plain_tcp_copy(listener: &TcpListener, addr: std::net::SocketAddr) -> u64 {
    let sender = tokio::spawn(async move {
        let mut s = TcpStream::connect(addr).await.expect("connect");
        s.set_nodelay(true).expect("nodelay");
        tokio::io::copy(&mut source(BODY), &mut s)
            .await
            .expect("copy");
        s.shutdown().await.expect("shutdown");
    });
    let (s, _) = listener.accept().await.expect("accept");
    let got = drain(s).await;
    sender.await.expect("sender");
    got
}

/// Drain a body through `BodyReader::next_chunk` (verified frames, no copy).
async fn drain_chunks(mut body: dfs_transport::BodyReader) -> u64 {
    let mut total = 0u64;
    while let Some(chunk) = body.next_chunk().await.expect("chunk") {
        total += chunk.len() as u64;
    }
    total
}

/// How the receiver consumes the body.
#[derive(Clone, Copy)]
enum Read {
    /// `AsyncRead` into a 256 KiB buffer, as the plain copy does.
    Buffer,
    /// `next_chunk`: the verified frame payloads themselves.
    Chunks,
}

async fn endpoint_body(peer: &Peer, events: &mut Events, read: Read) -> u64 {
    let peer = peer.clone();
    let sender = tokio::spawn(async move {
        let mut s = peer.open_stream().await.expect("open");
        s.send_body(BODY, source(BODY)).await.expect("send_body");
        s.finish().await.expect("finish");
    });
    let body = next_stream(events)
        .await
        .recv_body()
        .await
        .expect("recv_body");
    let got = match read {
        Read::Buffer => drain(body).await,
        Read::Chunks => drain_chunks(body).await,
    };
    sender.await.expect("sender");
    got
}

fn body_1gib(c: &mut Criterion) {
    let rt = runtime();
    let mut g = c.benchmark_group("transport_1gib");
    g.sample_size(10)
        .measurement_time(Duration::from_secs(20))
        .throughput(Throughput::Bytes(BODY));

    let listener = rt
        .block_on(TcpListener::bind("127.0.0.1:0"))
        .expect("listen");
    let addr = listener.local_addr().expect("addr");
    g.bench_function("plain_tokio_tcp_copy", |b| {
        b.iter_custom(|iters| {
            rt.block_on(async {
                let start = Instant::now();
                for _ in 0..iters {
                    assert_eq!(plain_tcp_copy(&listener, addr).await, BODY);
                }
                start.elapsed()
            })
        })
    });

    for (name, frame, read) in [
        ("endpoint_body_integrity", 1 << 20, Read::Buffer),
        ("endpoint_body_integrity_chunks", 1 << 20, Read::Chunks),
        (
            "endpoint_body_integrity_256kib_frames",
            256 * 1024,
            Read::Buffer,
        ),
    ] {
        let (_a, _b, mut events, peer) = rt.block_on(endpoints(frame));
        g.bench_function(name, |b| {
            b.iter_custom(|iters| {
                rt.block_on(async {
                    let start = Instant::now();
                    for _ in 0..iters {
                        assert_eq!(endpoint_body(&peer, &mut events, read).await, BODY);
                    }
                    start.elapsed()
                })
            })
        });
    }
    g.finish();

    // CPU cost next to wall time: on a loaded machine the ratio of CPU seconds is the steadier
    // figure. Process user+system time per transfer. Skipped with TRANSPORT_BENCH_NO_CPU set
    // (e.g. to profile one function alone).
    if std::env::var_os("TRANSPORT_BENCH_NO_CPU").is_some() {
        return;
    }
    let (_a, _b, mut events, peer) = rt.block_on(endpoints(1 << 20));
    let (_c, _d, mut events_256k, peer_256k) = rt.block_on(endpoints(256 * 1024));
    // Interleaved (plain, endpoint, chunks, ..., plain, ...) so that load from other jobs
    // drifting during the run weighs on all of them alike.
    const ROUNDS: u32 = 5;
    let names = [
        "plain_tokio_tcp_copy",
        "endpoint_body_integrity",
        "endpoint_body_integrity_chunks",
        "endpoint_body_integrity_256kib_chunks",
    ];
    let mut totals = [(0.0f64, 0.0f64); 4];
    for _ in 0..ROUNDS {
        for (i, name) in names.iter().enumerate() {
            let (cpu0, wall0) = (cpu_seconds(), Instant::now());
            let got = rt.block_on(async {
                match i {
                    0 => plain_tcp_copy(&listener, addr).await,
                    1 => endpoint_body(&peer, &mut events, Read::Buffer).await,
                    2 => endpoint_body(&peer, &mut events, Read::Chunks).await,
                    _ => endpoint_body(&peer_256k, &mut events_256k, Read::Chunks).await,
                }
            });
            assert_eq!(got, BODY, "{name}");
            totals[i].0 += cpu_seconds() - cpu0;
            totals[i].1 += wall0.elapsed().as_secs_f64();
        }
    }
    println!(
        "transport_1gib CPU cost ({ROUNDS} x 1 GiB each, interleaved, user+system of the whole process):"
    );
    for (name, (cpu, wall)) in names.iter().zip(totals) {
        println!(
            "  {name:<38} {:.2} CPU-s/GiB, {:.2} wall-s/GiB",
            cpu / f64::from(ROUNDS),
            wall / f64::from(ROUNDS)
        );
    }
}

/// User + system CPU seconds of this process so far (Linux; 0 elsewhere).
fn cpu_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // Fields after the parenthesised command name; utime and stime are the 12th and 13th.
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest.split_whitespace().collect())
        .unwrap_or_default();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    // Linux reports clock ticks of 1/100 s on every mainstream configuration.
    (ticks(11) + ticks(12)) / 100.0
}

/// One request/response on an open substream.
async fn substream_rtt(client: &mut dfs_transport::Substream) {
    client
        .send(&Req {
            key: [1; 32],
            offset: 7,
        })
        .await
        .expect("send");
    let r: Resp = client.recv().await.expect("recv").expect("reply");
    assert!(r.found);
}

async fn substream_pair(
    peer: &Peer,
    events: &mut Events,
) -> (dfs_transport::Substream, tokio::task::JoinHandle<()>) {
    let client = peer.open_stream().await.expect("open");
    let mut server = next_stream(events).await;
    let task = tokio::spawn(async move {
        while let Ok(Some(req)) = server.recv::<Req>().await {
            server
                .send(&Resp {
                    found: true,
                    len: req.offset,
                })
                .await
                .expect("reply");
        }
    });
    (client, task)
}

async fn tcp_pair() -> (TcpStream, tokio::task::JoinHandle<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("listen");
    let addr = listener.local_addr().expect("addr");
    let client = TcpStream::connect(addr).await.expect("connect");
    client.set_nodelay(true).expect("nodelay");
    let (mut server, _) = listener.accept().await.expect("accept");
    server.set_nodelay(true).expect("nodelay");
    let task = tokio::spawn(async move {
        let mut buf = [0u8; 41];
        while server.read_exact(&mut buf).await.is_ok() {
            if server.write_all(&buf[..9]).await.is_err() {
                return;
            }
        }
    });
    (client, task)
}

/// Same sizes as the postcard messages (41 and ~3 bytes), raw.
async fn tcp_rtt(client: &mut TcpStream) {
    client.write_all(&[1u8; 41]).await.expect("write");
    let mut buf = [0u8; 9];
    client.read_exact(&mut buf).await.expect("read");
}

async fn control_rtt(peer: &Peer, a_events: &mut Events) {
    peer.send(&Req {
        key: [1; 32],
        offset: 7,
    })
    .await
    .expect("send");
    loop {
        if let Event::Message { .. } = a_events.next().await.expect("events") {
            return;
        }
    }
}

/// Control-message echo: `b` answers every message from `a` on the control connection.
async fn control_pair() -> (Endpoint<TcpTransport>, Endpoint<TcpTransport>, Events, Peer) {
    let secret = NetworkSecret::generate();
    let config = || EndpointConfig::new(NodeId::random()).secret(Some(secret.clone()));
    let (a, a_events) = Endpoint::bind(TcpTransport::new(), "127.0.0.1:0", config())
        .await
        .expect("bind a");
    let (b, mut b_events) = Endpoint::bind(TcpTransport::new(), "127.0.0.1:0", config())
        .await
        .expect("bind b");
    let peer = a.connect(&b.local_addr()).await.expect("connect");
    tokio::spawn(async move {
        while let Some(ev) = b_events.next().await {
            if let Event::Message { from, message } = ev {
                let req: Req = message.decode().expect("decode");
                from.send(&Resp {
                    found: true,
                    len: req.offset,
                })
                .await
                .expect("reply");
            }
        }
    });
    (a, b, a_events, peer)
}

fn round_trips(c: &mut Criterion) {
    let rt = runtime();
    let mut g = c.benchmark_group("transport_rtt");
    g.throughput(Throughput::Elements(1));

    let (mut tcp, _t) = rt.block_on(tcp_pair());
    g.bench_function("plain_tcp_ping_pong", |b| {
        b.iter_custom(|iters| {
            rt.block_on(async {
                let start = Instant::now();
                for _ in 0..iters {
                    tcp_rtt(&mut tcp).await;
                }
                start.elapsed()
            })
        })
    });

    let (_a, _b, mut events, peer) = rt.block_on(endpoints(256 * 1024));
    let (mut client, _s) = rt.block_on(substream_pair(&peer, &mut events));
    g.bench_function("substream_request_response", |b| {
        b.iter_custom(|iters| {
            rt.block_on(async {
                let start = Instant::now();
                for _ in 0..iters {
                    substream_rtt(&mut client).await;
                }
                start.elapsed()
            })
        })
    });

    let (_ca, _cb, mut a_events, cpeer) = rt.block_on(control_pair());
    g.bench_function("control_message_request_response", |b| {
        b.iter_custom(|iters| {
            rt.block_on(async {
                let start = Instant::now();
                for _ in 0..iters {
                    control_rtt(&cpeer, &mut a_events).await;
                }
                start.elapsed()
            })
        })
    });
    g.finish();

    // Latency percentiles (criterion reports means/medians of batches, not tails).
    const N: usize = 20_000;
    let pct = |mut v: Vec<Duration>| {
        v.sort_unstable();
        (v[v.len() / 2], v[v.len() * 99 / 100])
    };
    let (tcp_lat, sub_lat, ctl_lat) = rt.block_on(async {
        let mut t = Vec::with_capacity(N);
        let mut s = Vec::with_capacity(N);
        let mut c = Vec::with_capacity(N);
        for _ in 0..N {
            let i = Instant::now();
            tcp_rtt(&mut tcp).await;
            t.push(i.elapsed());
            let i = Instant::now();
            substream_rtt(&mut client).await;
            s.push(i.elapsed());
            let i = Instant::now();
            control_rtt(&cpeer, &mut a_events).await;
            c.push(i.elapsed());
        }
        (pct(t), pct(s), pct(c))
    });
    println!("transport_rtt latency over {N} round trips each (interleaved):");
    println!(
        "  plain_tcp_ping_pong               p50 {:?} p99 {:?}",
        tcp_lat.0, tcp_lat.1
    );
    println!(
        "  substream_request_response        p50 {:?} p99 {:?}",
        sub_lat.0, sub_lat.1
    );
    println!(
        "  control_message_request_response  p50 {:?} p99 {:?}",
        ctl_lat.0, ctl_lat.1
    );
}

/// `TRANSPORT_BENCH_ONLY=<plain|read|chunks|chunks_256k>`: only that 1 GiB transfer,
/// `TRANSPORT_BENCH_ROUNDS` times (default 5), with its CPU and wall time per GiB, and no
/// criterion (to profile or `perf stat` one case alone).
fn only(case: &str) {
    let rounds: u32 = std::env::var("TRANSPORT_BENCH_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(5);
    let rt = runtime();
    let listener = rt
        .block_on(TcpListener::bind("127.0.0.1:0"))
        .expect("listen");
    let addr = listener.local_addr().expect("addr");
    let frame = if case == "chunks_256k" {
        256 * 1024
    } else {
        1 << 20
    };
    let (_a, _b, mut events, peer) = rt.block_on(endpoints(frame));
    let (cpu0, wall0) = (cpu_seconds(), Instant::now());
    for _ in 0..rounds {
        let got = rt.block_on(async {
            match case {
                "plain" => plain_tcp_copy(&listener, addr).await,
                "read" => endpoint_body(&peer, &mut events, Read::Buffer).await,
                "chunks" | "chunks_256k" => endpoint_body(&peer, &mut events, Read::Chunks).await,
                other => panic!("TRANSPORT_BENCH_ONLY: unknown case {other}"),
            }
        });
        assert_eq!(got, BODY, "{case}");
    }
    println!(
        "{case}: {rounds} x 1 GiB, {:.3} CPU-s/GiB, {:.3} wall-s/GiB",
        (cpu_seconds() - cpu0) / f64::from(rounds),
        wall0.elapsed().as_secs_f64() / f64::from(rounds)
    );
    // Per thread (Linux schedstat, whole process lifetime, setup included): seconds on a CPU
    // and seconds runnable but waiting for one (other jobs' load), per GiB.
    if std::env::var_os("TRANSPORT_BENCH_THREADS").is_some() {
        let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
            return;
        };
        for task in tasks.flatten() {
            let path = task.path();
            let name = std::fs::read_to_string(path.join("comm")).unwrap_or_default();
            let stat = std::fs::read_to_string(path.join("schedstat")).unwrap_or_default();
            let v: Vec<f64> = stat
                .split_whitespace()
                .filter_map(|x| x.parse().ok())
                .collect();
            if let [run, wait, ..] = v[..]
                && run > 1e7
            {
                println!(
                    "  thread {:<16} {:.3} CPU-s/GiB, {:.3} s/GiB waiting for a CPU",
                    name.trim(),
                    run / 1e9 / f64::from(rounds),
                    wait / 1e9 / f64::from(rounds)
                );
            }
        }
    }
}

criterion_group!(benches, body_1gib, round_trips);

fn main() {
    if let Some(case) = std::env::var_os("TRANSPORT_BENCH_ONLY") {
        only(&case.to_string_lossy());
        return;
    }
    benches();
    Criterion::default().configure_from_args().final_summary();
}
