//! Using `dfs-store` on its own, the way a crates.io user would: stream an object in,
//! stream it back out verified, list, scrub, delete, an encrypted round trip, and many
//! small objects in the pack.
//!
//! ```text
//! cargo run --release -p dfs-examples --example store_only -- [SIZE_MIB] [ROOT]
//! ```
//!
//! `SIZE_MIB` (default 64) is the size of the streamed object; `ROOT` (default: a
//! temporary directory) is the store root. Memory stays flat whatever the size; check with
//! `/usr/bin/time -v target/release/examples/store_only 1024`.

use std::io::{self, Read};
use std::time::Instant;

use anyhow::{Context, bail};
use dfs_crypto::{Aes256CtrBlake3, Key};
use dfs_store::{PlainPath, Store, StoreError};

/// A deterministic byte stream of `left` bytes (no buffer of the whole size anywhere).
struct Counter {
    next: u8,
    left: u64,
}

impl Read for Counter {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = buf
            .len()
            .min(usize::try_from(self.left).unwrap_or(usize::MAX));
        for b in &mut buf[..n] {
            *b = self.next;
            self.next = self.next.wrapping_add(1);
        }
        self.left -= n as u64;
        Ok(n)
    }
}

fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let mib: u64 = match args.next() {
        Some(arg) => arg.parse().context("SIZE_MIB must be a number")?,
        None => 64,
    };
    let temp = tempfile::tempdir()?;
    let root = args
        .next()
        .map_or_else(|| temp.path().to_owned(), Into::into);
    let size = mib << 20;

    // Default layout: BLAKE3 of the key, two levels of 2-hex-digit directories.
    let store = Store::open(&root)?;
    let started = Instant::now();
    let written = store.write(
        "videos/holiday.mp4",
        Counter {
            next: 0,
            left: size,
        },
    )?;
    let write_time = started.elapsed();

    let started = Instant::now();
    let mut reader = store.read("videos/holiday.mp4")?;
    let mut buf = vec![0u8; 256 * 1024];
    let (mut total, mut expected) = (0u64, 0u8);
    loop {
        let n = reader.read(&mut buf)?; // an error here means damaged bytes on disk
        if n == 0 {
            break;
        }
        for b in &buf[..n] {
            if *b != expected {
                bail!("unexpected byte at offset {total}");
            }
            expected = expected.wrapping_add(1);
            total += 1;
        }
    }
    let read_time = started.elapsed();
    let rate = |secs: f64| size as f64 / secs / 1e6;
    println!(
        "wrote {written} bytes in {write_time:.2?} ({:.0} MB/s, fsynced); read back {total} verified bytes in {read_time:.2?} ({:.0} MB/s)",
        rate(write_time.as_secs_f64()),
        rate(read_time.as_secs_f64()),
    );

    // Listing reads the keys back from the object headers.
    store.write("notes/todo.txt", &b"buy milk"[..])?;
    let mut keys = store.keys().collect::<Result<Vec<_>, _>>()?;
    keys.sort();
    println!("keys: {keys:?}");
    for meta in store.objects() {
        let meta = meta?;
        println!("  {} = {} bytes", meta.key(), meta.size());
    }

    // A whole-store scrub re-hashes every object.
    let report = store.scrub();
    println!(
        "scrub: {} objects checked, {} bad",
        report.checked,
        report.bad.len()
    );

    // Encrypted, still streaming both ways.
    let cipher = Aes256CtrBlake3::new(&Key::generate()?);
    store.write_encrypted("secret", &b"the cake is a lie"[..], &cipher)?;
    let mut plain = String::new();
    store
        .read_decrypted("secret", &cipher)?
        .read_to_string(&mut plain)?;
    println!("decrypted: {plain:?}");

    // Deleting removes that object only.
    store.delete("videos/holiday.mp4")?;
    match store.read("videos/holiday.mp4") {
        Err(StoreError::NotFound { key }) => println!("{key:?} deleted"),
        other => bail!("expected NotFound, got {other:?}"),
    }

    // Plain layout: keys are relative paths, and unsafe ones are refused.
    let plain_store = Store::open_with(root.join("plain"), PlainPath)?;
    plain_store.write("reports/2024/q1.csv", &b"a,b\n1,2\n"[..])?;
    match plain_store.write("../../etc/passwd", &b"x"[..]) {
        Err(refused) => println!("refused: {refused}"),
        Ok(_) => bail!("an escaping key was accepted"),
    }

    // Many small durable objects: the pack appends them to a log of segments instead of
    // a file each (one data flush per write instead of two journal commits).
    let packed = Store::builder(root.join("packed"))
        .pack_small_objects(64 * 1024)
        .open()?;
    let started = Instant::now();
    for i in 0..1000 {
        packed.write(&format!("thumbs/{i}.jpg"), &[i as u8; 4096][..])?;
    }
    let took = started.elapsed();
    let stats = packed.pack_stats().context("a pack")?;
    println!(
        "packed: 1000 durable 4 KiB writes in {took:.2?}; {} objects in {} segment(s), {} bytes",
        stats.objects, stats.segments, stats.used_bytes
    );
    Ok(())
}
