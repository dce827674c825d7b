//! Load: 64 concurrent clients doing 100 mixed puts and gets each (1 KiB to 4 MiB) against a
//! 3-node cluster of real `dfs serve` processes, through the control socket. Every get is
//! compared with what was put; any error fails the test. Bounded: 6,400 operations, and the
//! whole run under a 10-minute timeout.
//!
//! Run (release, so the figures mean something):
//! `cargo test --release -p dfs-cli --test load -- --ignored --nocapture`

mod common;

use std::time::{Duration, Instant};

use common::*;
use dfs_cli::control::Client;

const CLIENTS: usize = 64;
const OPS_PER_CLIENT: usize = 100;

/// A small deterministic generator for the operation mix.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// 70 % 1-64 KiB, 25 % 64 KiB-1 MiB, 5 % 1-4 MiB (uniform inside each band).
fn pick_size(rng: &mut Rng) -> usize {
    let (lo, hi) = match rng.below(100) {
        0..70 => (1 << 10, 64 << 10),
        70..95 => (64 << 10, 1 << 20),
        _ => (1 << 20, 4 << 20),
    };
    (lo + rng.below(hi - lo + 1)) as usize
}

#[derive(Default)]
struct Stats {
    put: Vec<Duration>,
    get: Vec<Duration>,
    bytes: u64,
    errors: Vec<String>,
}

async fn client(id: usize, put_dir: std::path::PathBuf, get_dir: std::path::PathBuf) -> Stats {
    let mut stats = Stats::default();
    let mut rng = Rng(0x5EED_0000 + id as u64 * 7919);
    let mut put_conn = match Client::connect(&put_dir).await {
        Ok(c) => c,
        Err(err) => {
            stats
                .errors
                .push(format!("client {id}: connect: {}", err.one_line()));
            return stats;
        }
    };
    let mut get_conn = match Client::connect(&get_dir).await {
        Ok(c) => c,
        Err(err) => {
            stats
                .errors
                .push(format!("client {id}: connect: {}", err.one_line()));
            return stats;
        }
    };
    let mut mine: Vec<(String, u64, usize)> = Vec::new();
    for op in 0..OPS_PER_CLIENT {
        if mine.is_empty() || rng.below(2) == 0 {
            let name = format!("load/c{id}/f{op}");
            let seed = (id as u64) << 32 | op as u64;
            let len = pick_size(&mut rng);
            let data = Pattern::bytes(seed, len);
            let start = Instant::now();
            match put_conn
                .put(&name, Some(len as u64), &data[..], |_| {})
                .await
            {
                Ok(info) if info.size == len as u64 => {
                    stats.put.push(start.elapsed());
                    stats.bytes += len as u64;
                    mine.push((name, seed, len));
                }
                Ok(info) => stats
                    .errors
                    .push(format!("{name}: stored {} of {len} bytes", info.size)),
                Err(err) => stats.errors.push(format!("put {name}: {}", err.one_line())),
            }
        } else {
            let (name, seed, len) = mine[rng.below(mine.len() as u64) as usize].clone();
            let mut back = Vec::with_capacity(len);
            let start = Instant::now();
            match get_conn.get(&name, &mut back, |_| {}, |_| {}).await {
                Ok(_) => {
                    stats.get.push(start.elapsed());
                    stats.bytes += len as u64;
                    if back != Pattern::bytes(seed, len) {
                        stats.errors.push(format!("get {name}: bytes differ"));
                    }
                }
                Err(err) => stats.errors.push(format!("get {name}: {}", err.one_line())),
            }
        }
    }
    stats
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[rank.min(sorted.len() - 1)]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

#[test]
#[ignore = "load test: run in release with --ignored --nocapture"]
fn load_64_clients_100_mixed_ops_each() {
    let tmp = tempfile::tempdir().unwrap();
    let keys = keygen(tmp.path(), "load");
    let extra: Vec<&str> = match std::env::var("DFS_LOAD_NO_FSYNC") {
        Ok(_) => vec!["--no-fsync"],
        Err(_) => vec![],
    };
    let a = Node::start(&tmp.path().join("a"), "a", &keys, &[], &extra);
    let b = Node::start(&tmp.path().join("b"), "b", &keys, &[&a], &extra);
    let c = Node::start(&tmp.path().join("c"), "c", &keys, &[&a], &extra);
    for node in [&a, &b, &c] {
        node.wait_peers(2);
    }
    let dirs = [a.data.clone(), b.data.clone(), c.data.clone()];

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let started = Instant::now();
    let all: Vec<Stats> = runtime.block_on(async {
        let tasks: Vec<_> = (0..CLIENTS)
            .map(|i| tokio::spawn(client(i, dirs[i % 3].clone(), dirs[(i + 1) % 3].clone())))
            .collect();
        tokio::time::timeout(Duration::from_secs(600), async {
            let mut out = Vec::new();
            for task in tasks {
                out.push(task.await.unwrap());
            }
            out
        })
        .await
        .expect("load run exceeded 10 minutes")
    });
    let wall = started.elapsed();

    let mut put: Vec<Duration> = all.iter().flat_map(|s| s.put.iter().copied()).collect();
    let mut get: Vec<Duration> = all.iter().flat_map(|s| s.get.iter().copied()).collect();
    let errors: Vec<&String> = all.iter().flat_map(|s| s.errors.iter()).collect();
    let bytes: u64 = all.iter().map(|s| s.bytes).sum();
    let mut every: Vec<Duration> = put.iter().chain(get.iter()).copied().collect();
    put.sort();
    get.sort();
    every.sort();
    let ops = every.len();
    println!(
        "load: {CLIENTS} clients x {OPS_PER_CLIENT} ops, fsync {}: {ops} ok ({} puts, {} gets), {} errors in {:.1} s",
        if extra.is_empty() { "on" } else { "off" },
        put.len(),
        get.len(),
        errors.len(),
        wall.as_secs_f64()
    );
    println!(
        "load: {:.0} ops/s, {:.1} MiB/s of file bytes; latency ms all p50 {:.1} p99 {:.1}; put p50 {:.1} p99 {:.1}; get p50 {:.1} p99 {:.1}",
        ops as f64 / wall.as_secs_f64(),
        bytes as f64 / wall.as_secs_f64() / (1024.0 * 1024.0),
        ms(percentile(&every, 0.50)),
        ms(percentile(&every, 0.99)),
        ms(percentile(&put, 0.50)),
        ms(percentile(&put, 0.99)),
        ms(percentile(&get, 0.50)),
        ms(percentile(&get, 0.99)),
    );
    assert!(
        errors.is_empty(),
        "{} errors, first: {:?}",
        errors.len(),
        &errors[..errors.len().min(5)]
    );
    assert_eq!(ops, CLIENTS * OPS_PER_CLIENT);
}
