//! AES-256-CTR and authenticated-mode throughput (`dfs-crypto`).
//!
//! Groups `ctr/16KiB`, `ctr/64KiB`, `ctr/1MiB`: each iteration moves one buffer of that size.
//! - `keystream`: raw keystream applied in place (`Aes256Ctr::apply_keystream`).
//! - `keystream-ctr-crate`: the RustCrypto `ctr::Ctr128BE<aes::Aes256>` reference, same work.
//! - `blake3-keyed`: keyed BLAKE3 of the buffer alone (what format version 1 of
//!   `Aes256CtrBlake3` paid per byte for its tags).
//! - `polyval` / `polyval-portable`: `dfs_crypto::Polyval` of the buffer (the bulk of
//!   `Aes256CtrBlake3`'s chunk tags and of `dfs-transport`'s frame tags) on the fastest
//!   backend and on the `polyval` crate.
//! - `source-copy`: filling the buffer from the in-memory source alone (the `memcpy` that
//!   every streaming case below pays on top of its cipher work, and `openssl speed` does not).
//! - `stream-encrypt`: a long-lived encrypting reader (Go format) over an in-memory source,
//!   one buffer read per iteration (what `openssl speed -evp aes-256-ctr` measures).
//! - `auth-encrypt` / `auth-decrypt`: the same for `Aes256CtrBlake3` (64 KiB chunks), the
//!   decrypting reader verifying every chunk, over 1 MiB of ciphertext it restarts on
//!   (anchor: `openssl speed -evp aes-256-gcm`).
//!
//! Run: `cargo bench -p dfs-benches --bench ctr` (`-- --quick` for a fast pass);
//! `benches/compare.sh` runs OpenSSL in the same session and prints the ratios.
//!
//! Clock: wall time by default. With `DFS_BENCH_CPU_TIME=1` each sample is timed by the CPU
//! time of the benchmark thread (Linux `/proc/thread-self/schedstat`, 4 ms granularity, so
//! samples are made long: 20 flat samples over 10 s), which is what `openssl speed` reports
//! without `-elapsed`. Use it on a machine shared with other work.

use std::hint::black_box;
use std::io::{self, Read};
use std::time::{Duration, Instant};

use aes::cipher::{KeyIvInit, StreamCipher};
use criterion::{Bencher, Criterion, SamplingMode, Throughput};
use dfs_crypto::{Aes256Ctr, Aes256CtrBlake3, Cipher, Key, Polyval};

const SIZES: [(usize, &str); 3] = [
    (16 * 1024, "16KiB"),
    (64 * 1024, "64KiB"),
    (1024 * 1024, "1MiB"),
];

/// An endless in-memory source: cycles over a fixed buffer with `memcpy`.
struct Cycle {
    data: Vec<u8>,
    position: usize,
}

impl Cycle {
    fn new(len: usize) -> Self {
        Cycle {
            data: (0..len).map(|i| (i * 7 + 3) as u8).collect(),
            position: 0,
        }
    }
}

impl Read for Cycle {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = buf.len().min(self.data.len() - self.position);
        buf[..n].copy_from_slice(&self.data[self.position..self.position + n]);
        self.position = (self.position + n) % self.data.len();
        Ok(n)
    }
}

/// Reads until `buf` is full or the reader ends; returns the bytes read.
fn fill(reader: &mut impl Read, buf: &mut [u8]) -> usize {
    let mut filled = 0;
    while filled < buf.len() {
        match reader.read(&mut buf[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) => panic!("bench reader failed: {e}"),
        }
    }
    filled
}

/// Whether samples are timed by thread CPU time (`DFS_BENCH_CPU_TIME=1`).
fn cpu_clock() -> bool {
    std::env::var_os("DFS_BENCH_CPU_TIME").is_some_and(|v| v == "1")
}

/// Nanoseconds the calling thread has spent on a CPU.
fn thread_cpu_ns() -> u64 {
    std::fs::read_to_string("/proc/thread-self/schedstat")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse().ok())
        .expect("reading /proc/thread-self/schedstat (DFS_BENCH_CPU_TIME=1 needs Linux)")
}

/// Times `iters` calls of `f` with the selected clock.
fn run<R>(b: &mut Bencher<'_>, mut f: impl FnMut() -> R) {
    if cpu_clock() {
        b.iter_custom(|iters| {
            let start = thread_cpu_ns();
            for _ in 0..iters {
                black_box(f());
            }
            Duration::from_nanos(thread_cpu_ns() - start)
        });
    } else {
        b.iter_custom(|iters| {
            let start = Instant::now();
            for _ in 0..iters {
                black_box(f());
            }
            start.elapsed()
        });
    }
}

fn bench_ctr(c: &mut Criterion) {
    let key = Key::from_bytes([0x42; 32]);
    let ctr = Aes256Ctr::new(&key);
    let auth = Aes256CtrBlake3::new(&key);
    let polyval = Polyval::new(&[9; 16]);
    let polyval_portable = Polyval::portable(&[9; 16]);
    eprintln!(
        "dfs-crypto keystream backend: {}, polyval backend: {}",
        ctr.backend(),
        polyval.backend()
    );

    // 1 MiB of authenticated ciphertext for the decrypt benchmark: the footprint of
    // the 1 MiB `Cycle` source the encrypt benchmarks read (cache-resident, like theirs).
    const AUTH_PLAIN: usize = 1024 * 1024;
    let mut sealed = Vec::with_capacity(AUTH_PLAIN + AUTH_PLAIN / 1024 + 64);
    auth.encrypt(
        io::Read::take(Cycle::new(1 << 20), AUTH_PLAIN as u64),
        &mut sealed,
    )
    .expect("encrypt bench input");

    for (size, label) in SIZES {
        let mut group = c.benchmark_group(format!("ctr/{label}"));
        group.throughput(Throughput::Bytes(size as u64));
        if cpu_clock() {
            group
                .sampling_mode(SamplingMode::Flat)
                .sample_size(20)
                .measurement_time(Duration::from_secs(10));
        }
        let mut buf = vec![0u8; size];

        let iv = [0xf0; 16];
        let mut offset = 0u64;
        group.bench_function("keystream", |b| {
            run(b, || {
                ctr.apply_keystream(iv, offset, black_box(&mut buf));
                offset += size as u64;
            })
        });

        let mut reference = ctr::Ctr128BE::<aes::Aes256>::new(&[0x42; 32].into(), &iv.into());
        group.bench_function("keystream-ctr-crate", |b| {
            run(b, || reference.apply_keystream(black_box(&mut buf)))
        });

        let mac_key = [7u8; 32];
        group.bench_function("blake3-keyed", |b| {
            run(b, || blake3::keyed_hash(&mac_key, black_box(&buf)))
        });

        for (name, template) in [
            ("polyval", &polyval),
            ("polyval-portable", &polyval_portable),
        ] {
            group.bench_function(name, |b| {
                run(b, || {
                    let mut hash = template.clone();
                    hash.update_padded(black_box(&buf));
                    hash.finalize()
                })
            });
        }

        let mut source = Cycle::new(1 << 20);
        group.bench_function("source-copy", |b| run(b, || fill(&mut source, &mut buf)));

        let mut reader = ctr
            .encrypt_reader(Cycle::new(1 << 20))
            .expect("encrypt reader");
        group.bench_function("stream-encrypt", |b| run(b, || fill(&mut reader, &mut buf)));

        let mut reader = auth
            .encrypt_reader(Cycle::new(1 << 20))
            .expect("encrypt reader");
        group.bench_function("auth-encrypt", |b| run(b, || fill(&mut reader, &mut buf)));

        let mut reader = auth.decrypt_reader(&sealed[..]);
        group.bench_function("auth-decrypt", |b| {
            run(b, || {
                let mut n = fill(&mut reader, &mut buf);
                while n < size {
                    // End of the prepared ciphertext: start over (header and key derivation, amortized over 1 MiB).
                    reader = auth.decrypt_reader(&sealed[..]);
                    n += fill(&mut reader, &mut buf[n..]);
                }
                n
            })
        });
        group.finish();
    }
}

fn main() {
    let mut criterion = Criterion::default().configure_from_args();
    bench_ctr(&mut criterion);
    criterion.final_summary();
}
