//! AES-256-CTR and authenticated-mode throughput (`dfs-crypto`).
//!
//! Groups `ctr/16KiB`, `ctr/64KiB`, `ctr/1MiB`: each iteration moves one buffer of that size.
//! - `keystream`: raw keystream applied in place (`Aes256Ctr::apply_keystream`).
//! - `keystream-ctr-crate`: the RustCrypto `ctr::Ctr128BE<aes::Aes256>` reference, same work.
//! - `blake3-keyed`: keyed BLAKE3 of the buffer alone (the MAC's share of the auth modes).
//! - `stream-encrypt`: a long-lived encrypting reader (Go format) over an in-memory source,
//!   one buffer read per iteration (what `openssl speed -evp aes-256-ctr` measures).
//! - `auth-encrypt` / `auth-decrypt`: the same for `Aes256CtrBlake3` (64 KiB chunks), the
//!   decrypting reader verifying every chunk (anchor: `openssl speed -evp aes-256-gcm`).
//!
//! Run: `cargo bench -p dfs-benches --bench ctr` (`-- --quick` for a fast pass);
//! `benches/compare.sh` runs OpenSSL in the same session and prints the ratios.

use std::hint::black_box;
use std::io::{self, Read};

use aes::cipher::{KeyIvInit, StreamCipher};
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use dfs_crypto::{Aes256Ctr, Aes256CtrBlake3, Cipher, Key};

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

/// A finite in-memory source that restarts (with a new reader) when drained.
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

fn bench_ctr(c: &mut Criterion) {
    let key = Key::from_bytes([0x42; 32]);
    let ctr = Aes256Ctr::new(&key);
    let auth = Aes256CtrBlake3::new(&key);
    eprintln!("dfs-crypto keystream backend: {}", ctr.backend());

    // 32 MiB of authenticated ciphertext for the decrypt benchmark.
    const AUTH_PLAIN: usize = 32 * 1024 * 1024;
    let mut sealed = Vec::with_capacity(AUTH_PLAIN + AUTH_PLAIN / 1024 + 64);
    auth.encrypt(
        io::Read::take(Cycle::new(1 << 20), AUTH_PLAIN as u64),
        &mut sealed,
    )
    .expect("encrypt bench input");

    for (size, label) in SIZES {
        let mut group = c.benchmark_group(format!("ctr/{label}"));
        group.throughput(Throughput::Bytes(size as u64));
        let mut buf = vec![0u8; size];

        let iv = [0xf0; 16];
        let mut offset = 0u64;
        group.bench_function("keystream", |b| {
            b.iter(|| {
                ctr.apply_keystream(iv, offset, black_box(&mut buf));
                offset += size as u64;
            })
        });

        let mut reference = ctr::Ctr128BE::<aes::Aes256>::new(&[0x42; 32].into(), &iv.into());
        group.bench_function("keystream-ctr-crate", |b| {
            b.iter(|| reference.apply_keystream(black_box(&mut buf)))
        });

        let mac_key = [7u8; 32];
        group.bench_function("blake3-keyed", |b| {
            b.iter(|| blake3::keyed_hash(&mac_key, black_box(&buf)))
        });

        let mut reader = ctr
            .encrypt_reader(Cycle::new(1 << 20))
            .expect("encrypt reader");
        group.bench_function("stream-encrypt", |b| {
            b.iter(|| black_box(fill(&mut reader, &mut buf)))
        });

        let mut reader = auth
            .encrypt_reader(Cycle::new(1 << 20))
            .expect("encrypt reader");
        group.bench_function("auth-encrypt", |b| {
            b.iter(|| black_box(fill(&mut reader, &mut buf)))
        });

        let mut reader = auth.decrypt_reader(&sealed[..]);
        group.bench_function("auth-decrypt", |b| {
            b.iter(|| {
                let n = fill(&mut reader, &mut buf);
                if n < size {
                    reader = auth.decrypt_reader(&sealed[..]);
                }
                black_box(n)
            })
        });
        group.finish();
    }
}

criterion_group!(benches, bench_ctr);
criterion_main!(benches);
