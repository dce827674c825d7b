//! Large objects: memory stays flat whatever the size. Ignored in the normal run (it
//! writes and reads 2 GiB); run with
//! `cargo test -p dfs-store --release --test big -- --ignored`.
#![allow(clippy::unwrap_used)] // tests and their helpers panic on failure

use std::io::{self, Read};

use dfs_store::Store;

/// Peak resident set size of this process in KiB (Linux), if known.
fn peak_rss_kib() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

#[test]
#[ignore = "writes and reads 2 GiB"]
fn two_gib_round_trip_with_flat_memory() {
    const SIZE: u64 = 2 << 30;
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    assert_eq!(
        store.write("big", io::repeat(0x5A).take(SIZE)).unwrap(),
        SIZE
    );
    let mut reader = store.read("big").unwrap();
    assert_eq!(reader.size(), SIZE);
    let mut buf = vec![0u8; 256 * 1024];
    let mut total = 0u64;
    loop {
        let n = reader.read(&mut buf).unwrap();
        if n == 0 {
            break;
        }
        assert!(buf[..n].iter().all(|b| *b == 0x5A));
        total += n as u64;
    }
    assert_eq!(total, SIZE);
    store.verify("big").unwrap();
    if let Some(peak) = peak_rss_kib() {
        eprintln!("peak RSS: {peak} KiB");
        assert!(peak < 64 * 1024, "peak RSS {peak} KiB >= 64 MiB");
    }
}
