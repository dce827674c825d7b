//! `dfs-store` against its anchors, measured in the same run:
//!
//! - `store_1GiB`: streaming write (with fsync; `write` and `write_expecting`) and read of
//!   one 1 GiB object, against a plain `std::fs` write + `sync_all` / read of the same
//!   bytes through the same buffers;
//!   reads both from the page cache (hot) and after dropping the file's pages (cold,
//!   `dd iflag=nocache count=0`, skipped if `dd` is missing).
//! - `store_4KiB`: 4 KiB objects, writes/s (fsync on and off) and reads/s, against
//!   `cacache`'s sync API (`write_sync` / `read_sync`; cacache never fsyncs), and the floor
//!   of the prescribed durable write (stage, fsync, rename, fsync the directory) in plain
//!   `std::fs`; each also with small objects packed (`pack_small_objects(64 KiB)`). The
//!   durable writers run first, and `sync` runs before each writer, so no case pays for
//!   the dirty pages of the one before it.
//!
//! After criterion's own output the bench prints the medians, the ratios, the CPU time
//! (user + system, all threads) per 1 GiB iteration and the peak RSS of the process. Size of the big object: `DFS_BENCH_STORE_MIB` (default 1024).
//!
//! ```text
//! cargo bench -p dfs-benches --bench store
//! ```
#![allow(clippy::unwrap_used)] // a failing bench should stop loudly

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::hint::black_box;
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion, SamplingMode, Throughput};
use dfs_store::{Durability, Expected, Store};

/// Buffer the anchor writes with (the store's own write buffer is also 64 KiB).
const WRITE_BUF: usize = 64 * 1024;
/// Buffer both sides read into.
const READ_BUF: usize = 256 * 1024;
/// Samples per benchmark (criterion's minimum, for the 1 GiB cases).
const BIG_SAMPLES: usize = 10;
const SMALL_SAMPLES: usize = 20;
const SMALL: usize = 4096;
/// Objects up to this size are packed in the `dfs-store-pack` cases.
const PACK_LIMIT: u32 = 64 * 1024;
/// Threads of the concurrent 4 KiB write cases.
const WRITERS: usize = 4;
/// The writers measured with `WRITERS` threads too.
const CONCURRENT: [&str; 3] = ["dfs-store-fsync", "dfs-store-pack-fsync", "cacache"];
/// Objects pre-written for the read benchmarks.
const READ_SET: usize = 1000;

/// Per-iteration figures of every sample, per benchmark id, in the order measured.
type Samples = Mutex<BTreeMap<String, Vec<f64>>>;

/// Per-iteration seconds of every sample.
static SAMPLES: Samples = Mutex::new(BTreeMap::new());

fn push(samples: &Samples, id: &str, per_iteration: f64) {
    samples
        .lock()
        .unwrap()
        .entry(id.to_owned())
        .or_default()
        .push(per_iteration);
}

fn record(id: &str, iters: u64, elapsed: Duration) {
    push(&SAMPLES, id, elapsed.as_secs_f64() / iters as f64);
}

/// Per-iteration CPU seconds (user + system, all threads of the process) of every sample,
/// per benchmark id: wall time on 2 shared cores moves with the other jobs' load, the CPU
/// a case costs much less.
static CPU_SAMPLES: Samples = Mutex::new(BTreeMap::new());

fn record_cpu(id: &str, iters: u64, cpu: f64) {
    push(&CPU_SAMPLES, id, cpu / iters as f64);
}

/// User + system CPU seconds of this process so far, all threads (dead ones included),
/// from `/proc/self/stat` (clock ticks, 100 per second on Linux); 0 elsewhere.
fn cpu_seconds() -> f64 {
    let Ok(stat) = fs::read_to_string("/proc/self/stat") else {
        return 0.0;
    };
    // Fields after the parenthesised command name: state is field 3, utime 14, stime 15.
    let Some((_, rest)) = stat.rsplit_once(')') else {
        return 0.0;
    };
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| fields.get(i).and_then(|f| f.parse::<f64>().ok());
    match (ticks(11), ticks(12)) {
        (Some(user), Some(system)) => (user + system) / 100.0,
        _ => 0.0,
    }
}

fn median(mut values: Vec<f64>) -> Option<f64> {
    if values.is_empty() {
        return None;
    }
    values.sort_by(f64::total_cmp);
    let mid = values.len() / 2;
    Some(if values.len().is_multiple_of(2) {
        (values[mid - 1] + values[mid]) / 2.0
    } else {
        values[mid]
    })
}

/// Median of the last `n` samples of `id` in `samples` (criterion runs warm-up first, then
/// exactly `n` samples).
fn median_in(samples: &Samples, id: &str, n: usize) -> Option<f64> {
    let samples = samples.lock().unwrap();
    let all = samples.get(id)?;
    median(all[all.len().saturating_sub(n)..].to_vec())
}

/// Median CPU seconds per iteration of the last `n` samples of `id`.
fn median_cpu_of_last(id: &str, n: usize) -> Option<f64> {
    median_in(&CPU_SAMPLES, id, n)
}

/// Median seconds per iteration of the last `n` samples of `id`.
fn median_of_last(id: &str, n: usize) -> Option<f64> {
    median_in(&SAMPLES, id, n)
}

/// Runs `op` `iters` times, each after an untimed `setup`; records the wall and CPU time
/// under `id` and returns the wall time (for criterion's `iter_custom`).
fn timed(id: &str, iters: u64, mut setup: impl FnMut(), mut op: impl FnMut()) -> Duration {
    let mut total = Duration::ZERO;
    let mut cpu = 0.0;
    for _ in 0..iters {
        setup();
        let start = Instant::now();
        let cpu0 = cpu_seconds();
        op();
        total += start.elapsed();
        cpu += cpu_seconds() - cpu0;
    }
    record(id, iters, total);
    record_cpu(id, iters, cpu);
    total
}

/// An endless pseudo-random byte source (the same for ours and the anchor), `len` bytes.
struct Source {
    pattern: &'static [u8],
    pos: usize,
    left: u64,
}

impl Source {
    fn new(pattern: &'static [u8], len: u64) -> Source {
        Source {
            pattern,
            pos: 0,
            left: len,
        }
    }
}

impl Read for Source {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = buf
            .len()
            .min(self.pattern.len() - self.pos)
            .min(usize::try_from(self.left).unwrap_or(usize::MAX));
        buf[..n].copy_from_slice(&self.pattern[self.pos..self.pos + n]);
        self.pos = (self.pos + n) % self.pattern.len();
        self.left -= n as u64;
        Ok(n)
    }
}

fn pattern() -> &'static [u8] {
    let mut x = 0x9E37_79B9_7F4A_7C15_u64;
    let bytes: Vec<u8> = (0..1 << 20)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect();
    Box::leak(bytes.into_boxed_slice())
}

/// The anchor: plain `std::fs` write through a 64 KiB buffer, then `sync_all`.
fn std_write(path: &Path, mut src: impl Read) -> u64 {
    let mut file = File::create(path).unwrap();
    let mut buf = vec![0u8; WRITE_BUF];
    let mut total = 0;
    loop {
        let n = src.read(&mut buf).unwrap();
        if n == 0 {
            break;
        }
        file.write_all(&buf[..n]).unwrap();
        total += n as u64;
    }
    file.sync_all().unwrap();
    total
}

/// Reads everything into a 256 KiB buffer (same consumer for ours and the anchor).
fn drain(mut r: impl Read, buf: &mut [u8]) -> u64 {
    let mut total = 0;
    loop {
        let n = r.read(buf).unwrap();
        if n == 0 {
            return total;
        }
        black_box(&buf[..n]);
        total += n as u64;
    }
}

/// Drops the page cache of `path` (GNU dd: fadvise DONTNEED on the whole file).
fn drop_cache(path: &Path) -> bool {
    Command::new("dd")
        .arg(format!("if={}", path.display()))
        .args(["iflag=nocache", "count=0", "status=none"])
        .status()
        .is_ok_and(|s| s.success())
}

fn peak_rss_mib() -> Option<f64> {
    let status = fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024.0)
}

fn big(c: &mut Criterion, dir: &Path, pattern: &'static [u8]) -> u64 {
    let mib: u64 = std::env::var("DFS_BENCH_STORE_MIB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1024);
    let size = mib << 20;
    let name = if mib.is_multiple_of(1024) {
        format!("store_{}GiB", mib / 1024)
    } else {
        format!("store_{mib}MiB")
    };
    let store = Store::open(dir.join("big-store")).unwrap();
    let plain = dir.join("big-plain");
    let mut group = c.benchmark_group(&name);
    group
        .sample_size(BIG_SAMPLES)
        .sampling_mode(SamplingMode::Flat)
        .warm_up_time(Duration::from_millis(1))
        .measurement_time(Duration::from_secs(1))
        .throughput(Throughput::Bytes(size));

    let id = format!("{name}/write_fsync/dfs-store");
    group.bench_function(BenchmarkId::new("write_fsync", "dfs-store"), |b| {
        b.iter_custom(|iters| {
            timed(
                &id,
                iters,
                || {
                    store.delete("big").unwrap();
                },
                || {
                    assert_eq!(
                        store.write("big", Source::new(pattern, size)).unwrap(),
                        size
                    );
                },
            )
        })
    });
    // The same write through `write_expecting` (what a server storing a replica does):
    // the store's own hashing pass checks the announced size and hash.
    let expected = {
        let mut hasher = blake3::Hasher::new();
        let mut src = Source::new(pattern, size);
        let mut buf = vec![0u8; READ_BUF];
        loop {
            let n = src.read(&mut buf).unwrap();
            if n == 0 {
                break;
            }
            hasher.update(&buf[..n]);
        }
        Expected::new(size, *hasher.finalize().as_bytes())
    };
    let id = format!("{name}/write_fsync/dfs-store-expecting");
    group.bench_function(
        BenchmarkId::new("write_fsync", "dfs-store-expecting"),
        |b| {
            b.iter_custom(|iters| {
                timed(
                    &id,
                    iters,
                    || {
                        store.delete("big").unwrap();
                    },
                    || {
                        assert_eq!(
                            store
                                .write_expecting("big", Source::new(pattern, size), expected)
                                .unwrap(),
                            size
                        );
                    },
                )
            })
        },
    );
    let id = format!("{name}/write_fsync/std-fs");
    group.bench_function(BenchmarkId::new("write_fsync", "std-fs"), |b| {
        b.iter_custom(|iters| {
            timed(
                &id,
                iters,
                || {
                    let _ = fs::remove_file(&plain);
                },
                || {
                    assert_eq!(std_write(&plain, Source::new(pattern, size)), size);
                },
            )
        })
    });

    // A filter that skips the writes (`-- store_1GiB/read`) still needs both files.
    if !store.has("big").unwrap() {
        assert_eq!(
            store.write("big", Source::new(pattern, size)).unwrap(),
            size
        );
    }
    if !plain.exists() {
        assert_eq!(std_write(&plain, Source::new(pattern, size)), size);
    }
    let mut buf = vec![0u8; READ_BUF];
    let store_file = store.path_of("big").unwrap();
    let cold_ok = drop_cache(&store_file) && drop_cache(&plain);
    for (mode, cold) in [("read_hot", false), ("read_cold", true)] {
        if cold && !cold_ok {
            eprintln!("dd iflag=nocache unavailable: skipping cold reads");
            continue;
        }
        let id = format!("{name}/{mode}/dfs-store");
        group.bench_function(BenchmarkId::new(mode, "dfs-store"), |b| {
            b.iter_custom(|iters| {
                timed(
                    &id,
                    iters,
                    || {
                        if cold {
                            drop_cache(&store_file);
                        }
                    },
                    || {
                        assert_eq!(drain(store.read("big").unwrap(), &mut buf), size);
                    },
                )
            })
        });
        let id = format!("{name}/{mode}/std-fs");
        group.bench_function(BenchmarkId::new(mode, "std-fs"), |b| {
            b.iter_custom(|iters| {
                timed(
                    &id,
                    iters,
                    || {
                        if cold {
                            drop_cache(&plain);
                        }
                    },
                    || {
                        assert_eq!(drain(File::open(&plain).unwrap(), &mut buf), size);
                    },
                )
            })
        });
    }
    group.finish();
    store.delete("big").unwrap();
    let _ = fs::remove_file(&plain);
    size
}

/// A store for the 4 KiB cases under `dir/name`, packing objects up to `pack` bytes.
fn small_store(dir: &Path, name: &str, pack: u32, durability: Durability) -> Store {
    Store::builder(dir.join(name))
        .pack_small_objects(pack)
        .durability(durability)
        .open()
        .unwrap()
}

fn small(c: &mut Criterion, dir: &Path, pattern: &'static [u8]) {
    let data = &pattern[..SMALL];
    let fsync = small_store(dir, "small-fsync", 0, Durability::Fsync);
    let nofsync = small_store(dir, "small-nofsync", 0, Durability::None);
    // The same with small objects packed (`StoreBuilder::pack_small_objects`): appended
    // to a log of segments, one data flush per durable write instead of two journal
    // commits.
    let pack_fsync = small_store(dir, "small-pack-fsync", PACK_LIMIT, Durability::Fsync);
    let pack_nofsync = small_store(dir, "small-pack-nofsync", PACK_LIMIT, Durability::None);
    let cache: PathBuf = dir.join("cacache");
    let mut group = c.benchmark_group("store_4KiB");
    group
        .sample_size(SMALL_SAMPLES)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(3))
        .throughput(Throughput::Elements(1));

    // The floor of the durable write protocol the issue prescribes (stage in `tmp`, write,
    // fsync, rename into place, fsync the directory), in plain `std::fs` into one flat
    // directory: no header, no hashing, no sharded directories to create. No store that
    // follows the protocol writes faster than this.
    let floor = dir.join("floor");
    fs::create_dir_all(floor.join("tmp")).unwrap();
    fs::create_dir_all(floor.join("objects")).unwrap();
    let objects = File::open(floor.join("objects")).unwrap();
    let floor_write = |key: &str| {
        let staged = floor.join("tmp").join(key);
        let mut file = File::create(&staged).unwrap();
        file.write_all(data).unwrap();
        file.sync_data().unwrap();
        drop(file);
        fs::rename(&staged, floor.join("objects").join(key)).unwrap();
        objects.sync_all().unwrap();
    };
    type Writer<'a> = (&'static str, Box<dyn Fn(&str) + Sync + 'a>);
    // Durable writers first, then the ones that leave dirty pages behind.
    let writers: Vec<Writer<'_>> = vec![
        (
            "dfs-store-fsync",
            Box::new(|k| assert_eq!(fsync.write(k, data).unwrap(), SMALL as u64)),
        ),
        (
            "dfs-store-pack-fsync",
            Box::new(|k| assert_eq!(pack_fsync.write(k, data).unwrap(), SMALL as u64)),
        ),
        ("std-fs-floor", Box::new(floor_write)),
        (
            "cacache",
            Box::new(|k| {
                cacache::write_sync(&cache, k, data).unwrap();
            }),
        ),
        (
            "dfs-store-nofsync",
            Box::new(|k| assert_eq!(nofsync.write(k, data).unwrap(), SMALL as u64)),
        ),
        (
            "dfs-store-pack-nofsync",
            Box::new(|k| assert_eq!(pack_nofsync.write(k, data).unwrap(), SMALL as u64)),
        ),
    ];
    let mut counter = 0u64;
    // Every writer alone, then the durable ones and cacache again with WRITERS threads
    // writing at once (each its own keys): concurrent durable appends to the pack share
    // their fdatasyncs.
    let alone = writers.iter().map(|w| (1, w));
    let together = writers
        .iter()
        .filter(|(l, _)| CONCURRENT.contains(l))
        .map(|w| (WRITERS, w));
    for (threads, (label, write)) in alone.chain(together) {
        // Whatever the previous case left dirty is written back now, not during this one.
        settle();
        let case = match threads {
            1 => "write".to_owned(),
            n => format!("write_{n}threads"),
        };
        let id = format!("store_4KiB/{case}/{label}");
        group.bench_function(BenchmarkId::new(&case, *label), |b| {
            b.iter_custom(|iters| {
                let keys: Vec<String> = (0..iters)
                    .map(|_| {
                        counter += 1;
                        format!("object-{counter}")
                    })
                    .collect();
                let per_thread = keys.len().div_ceil(threads).max(1);
                let start = Instant::now();
                if threads == 1 {
                    keys.iter().for_each(|key| write(key));
                } else {
                    std::thread::scope(|scope| {
                        for chunk in keys.chunks(per_thread) {
                            scope.spawn(|| chunk.iter().for_each(|key| write(key)));
                        }
                    });
                }
                let elapsed = start.elapsed();
                record(&id, iters, elapsed);
                elapsed
            })
        });
    }

    // Reads: a fixed set of objects, read round-robin into a fresh Vec (what
    // `cacache::read_sync` returns).
    let read_store = small_store(dir, "small-read", 0, Durability::None);
    let read_pack = small_store(dir, "small-pack-read", PACK_LIMIT, Durability::None);
    let read_cache = dir.join("cacache-read");
    let keys: Vec<String> = (0..READ_SET).map(|i| format!("read-{i}")).collect();
    for key in &keys {
        read_store.write(key, data).unwrap();
        read_pack.write(key, data).unwrap();
        cacache::write_sync(&read_cache, key, data).unwrap();
    }
    for (label, store) in [("dfs-store", &read_store), ("dfs-store-pack", &read_pack)] {
        let id = format!("store_4KiB/read/{label}");
        group.bench_function(BenchmarkId::new("read", label), |b| {
            let mut i = 0;
            b.iter_custom(|iters| {
                let start = Instant::now();
                for _ in 0..iters {
                    let mut reader = store.read(&keys[i % READ_SET]).unwrap();
                    let mut out = Vec::with_capacity(reader.size() as usize);
                    reader.read_to_end(&mut out).unwrap();
                    assert_eq!(black_box(out).len(), SMALL);
                    i += 1;
                }
                let elapsed = start.elapsed();
                record(&id, iters, elapsed);
                elapsed
            })
        });
    }
    let id = "store_4KiB/read/cacache".to_owned();
    group.bench_function(BenchmarkId::new("read", "cacache"), |b| {
        let mut i = 0;
        b.iter_custom(|iters| {
            let start = Instant::now();
            for _ in 0..iters {
                let out = cacache::read_sync(&read_cache, &keys[i % READ_SET]).unwrap();
                assert_eq!(black_box(out).len(), SMALL);
                i += 1;
            }
            let elapsed = start.elapsed();
            record(&id, iters, elapsed);
            elapsed
        })
    });
    group.finish();
}

/// Writes back every dirty page (`sync`), so that one case's leftovers do not slow the
/// next one down.
fn settle() {
    let _ = Command::new("sync").status();
}

fn summary(big_size: u64) {
    let mib = big_size >> 20;
    let name = if mib.is_multiple_of(1024) {
        format!("store_{}GiB", mib / 1024)
    } else {
        format!("store_{mib}MiB")
    };
    println!("\n== dfs-store vs anchors (medians of criterion's samples) ==");
    for mode in ["write_fsync", "read_hot", "read_cold"] {
        let ours = median_of_last(&format!("{name}/{mode}/dfs-store"), BIG_SAMPLES);
        let anchor = median_of_last(&format!("{name}/{mode}/std-fs"), BIG_SAMPLES);
        if let (Some(ours), Some(anchor)) = (ours, anchor) {
            let gbs = |t: f64| big_size as f64 / t / 1e9;
            println!(
                "{name} {mode:<12} dfs-store {:>6.2} GB/s  std::fs {:>6.2} GB/s  ratio {:.2}x",
                gbs(ours),
                gbs(anchor),
                anchor / ours
            );
        }
    }
    println!("CPU (user + system, all threads) per iteration, medians:");
    for (mode, ours) in [
        ("write_fsync", "dfs-store"),
        ("write_fsync", "dfs-store-expecting"),
        ("read_hot", "dfs-store"),
        ("read_cold", "dfs-store"),
    ] {
        let cpu = median_cpu_of_last(&format!("{name}/{mode}/{ours}"), BIG_SAMPLES);
        let anchor = median_cpu_of_last(&format!("{name}/{mode}/std-fs"), BIG_SAMPLES);
        if let (Some(cpu), Some(anchor)) = (cpu, anchor) {
            println!(
                "{name} {mode:<12} {ours:<20} {:>6.0} ms  std::fs {:>6.0} ms  ({:.2}x the CPU)",
                cpu * 1e3,
                anchor * 1e3,
                cpu / anchor
            );
        }
    }
    let expecting = median_of_last(
        &format!("{name}/write_fsync/dfs-store-expecting"),
        BIG_SAMPLES,
    );
    let anchor = median_of_last(&format!("{name}/write_fsync/std-fs"), BIG_SAMPLES);
    if let (Some(ours), Some(anchor)) = (expecting, anchor) {
        println!(
            "{name} write_fsync  write_expecting {:>6.2} GB/s  std::fs {:>6.2} GB/s  ratio {:.2}x",
            big_size as f64 / ours / 1e9,
            big_size as f64 / anchor / 1e9,
            anchor / ours
        );
    }
    let ops =
        |id: &str| median_of_last(&format!("store_4KiB/{id}"), SMALL_SAMPLES).map(|t| 1.0 / t);
    if let Some(cacache) = ops("write/cacache") {
        for label in [
            "dfs-store-fsync",
            "dfs-store-nofsync",
            "dfs-store-pack-fsync",
            "dfs-store-pack-nofsync",
            "std-fs-floor",
        ] {
            if let Some(ours) = ops(&format!("write/{label}")) {
                println!(
                    "store_4KiB write {label:<18} {ours:>9.0} ops/s  cacache {cacache:>9.0} ops/s  ratio {:.2}x",
                    ours / cacache
                );
            }
        }
    }
    let threaded = format!("write_{WRITERS}threads");
    if let Some(cacache) = ops(&format!("{threaded}/cacache")) {
        for label in ["dfs-store-fsync", "dfs-store-pack-fsync"] {
            if let Some(ours) = ops(&format!("{threaded}/{label}")) {
                println!(
                    "store_4KiB {threaded} {label:<22} {ours:>9.0} ops/s  cacache {cacache:>9.0} ops/s  ratio {:.2}x",
                    ours / cacache
                );
            }
        }
    }
    for label in ["dfs-store", "dfs-store-pack"] {
        if let (Some(ours), Some(cacache)) = (ops(&format!("read/{label}")), ops("read/cacache")) {
            println!(
                "store_4KiB read  {label:<22} {ours:>9.0} ops/s  cacache {cacache:>9.0} ops/s  ratio {:.2}x",
                ours / cacache
            );
        }
    }
    if let Some(rss) = peak_rss_mib() {
        println!(
            "peak RSS of the whole bench process (criterion, and the in-memory indexes of the \
             packs holding every 4 KiB object written): {rss:.1} MiB"
        );
    }
}

fn main() {
    let mut c = Criterion::default().configure_from_args();
    let dir = tempfile::Builder::new()
        .prefix("dfs-store-bench")
        .tempdir_in(
            std::env::var_os("DFS_BENCH_DIR").unwrap_or_else(|| std::env::temp_dir().into()),
        )
        .unwrap();
    let pattern = pattern();
    let size = big(&mut c, dir.path(), pattern);
    let big_rss = peak_rss_mib();
    small(&mut c, dir.path(), pattern);
    c.final_summary();
    summary(size);
    if let Some(rss) = big_rss {
        println!("peak RSS after the big-object cases (criterion included): {rss:.1} MiB");
    }
}
