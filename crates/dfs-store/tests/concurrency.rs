//! Concurrent writers and readers of the same and of different keys.
#![allow(clippy::unwrap_used)] // tests and their helpers panic on failure

use std::io::Read;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;

use dfs_store::{Durability, PlainPath, Store};

/// Version `v` of an object: a length and a fill byte that both depend on `v`.
fn version(v: u8) -> Vec<u8> {
    vec![v; 70_000 + v as usize * 1_000]
}

fn check_whole(data: &[u8]) {
    assert!(!data.is_empty());
    let v = data[0];
    assert_eq!(
        data,
        version(v).as_slice(),
        "torn object (starts with version {v})"
    );
}

#[test]
fn same_key_writers_and_readers_see_whole_versions() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(
        Store::builder(dir.path())
            .durability(Durability::None)
            .open()
            .unwrap(),
    );
    store.write("hot", &version(0)[..]).unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let readers: Vec<_> = (0..3)
        .map(|_| {
            let store = Arc::clone(&store);
            let stop = Arc::clone(&stop);
            thread::spawn(move || {
                let mut reads = 0;
                while !stop.load(Ordering::Relaxed) || reads == 0 {
                    let mut out = Vec::new();
                    let mut reader = store.read("hot").unwrap();
                    reader.read_to_end(&mut out).unwrap();
                    assert_eq!(out.len() as u64, reader.size());
                    check_whole(&out);
                    reads += 1;
                }
                reads
            })
        })
        .collect();
    let writers: Vec<_> = (1..=4u8)
        .map(|w| {
            let store = Arc::clone(&store);
            thread::spawn(move || {
                for i in 0..25u8 {
                    let v = w * 25 + i;
                    store.write("hot", &version(v)[..]).unwrap();
                }
            })
        })
        .collect();
    for w in writers {
        w.join().unwrap();
    }
    stop.store(true, Ordering::Relaxed);
    for r in readers {
        assert!(r.join().unwrap() > 0);
    }
    let mut out = Vec::new();
    store.read("hot").unwrap().read_to_end(&mut out).unwrap();
    check_whole(&out);
    assert_eq!(
        std::fs::read_dir(dir.path().join("tmp")).unwrap().count(),
        0
    );
    assert!(store.scrub().is_clean());
}

#[test]
fn different_keys_in_parallel() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(Store::open(dir.path()).unwrap());
    let handles: Vec<_> = (0..4u8)
        .map(|t| {
            let store = Arc::clone(&store);
            thread::spawn(move || {
                for i in 0..20u8 {
                    let key = format!("t{t}/k{i}");
                    let data = version(t.wrapping_mul(20).wrapping_add(i));
                    store.write(&key, &data[..]).unwrap();
                    let mut out = Vec::new();
                    store.read(&key).unwrap().read_to_end(&mut out).unwrap();
                    assert_eq!(out, data);
                }
            })
        })
        .collect();
    for h in handles {
        h.join().unwrap();
    }
    assert_eq!(store.keys().count(), 80);
    assert!(store.scrub().is_clean());
}

#[test]
fn writes_racing_deletes_and_clear_never_fail_spuriously() {
    // Deletes prune directories and clear swaps the objects directory; writers must
    // recreate what they need instead of failing.
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(
        Store::builder(dir.path())
            .transform(PlainPath)
            .durability(Durability::None)
            .open()
            .unwrap(),
    );
    let stop = Arc::new(AtomicBool::new(false));
    let deleter = {
        let store = Arc::clone(&store);
        let stop = Arc::clone(&stop);
        thread::spawn(move || {
            let mut n = 0u32;
            while !stop.load(Ordering::Relaxed) {
                let _ = store.delete(&format!("a/b/k{}", n % 4)).unwrap();
                if n.is_multiple_of(50) {
                    store.clear().unwrap();
                }
                n += 1;
            }
        })
    };
    let writers: Vec<_> = (0..2)
        .map(|t| {
            let store = Arc::clone(&store);
            thread::spawn(move || {
                for i in 0..300u32 {
                    let key = format!("a/b/k{}", (i + t) % 4);
                    store.write(&key, &version((i % 200) as u8)[..]).unwrap();
                }
            })
        })
        .collect();
    for w in writers {
        w.join().unwrap();
    }
    stop.store(true, Ordering::Relaxed);
    deleter.join().unwrap();
    for item in store.keys() {
        let key = item.unwrap();
        let mut out = Vec::new();
        store.read(&key).unwrap().read_to_end(&mut out).unwrap();
        check_whole(&out);
    }
}

/// The same with the default durability: a directory fsync that finds its directory gone
/// (pruned by a delete, or renamed away by a clear, ordered after the write or the
/// removal) is no failure. Two deleters, so deletes race deletes too.
#[test]
fn durable_writes_and_deletes_racing_prunes_and_clear_never_fail_spuriously() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(Store::open_with(dir.path(), PlainPath).unwrap());
    let stop = Arc::new(AtomicBool::new(false));
    let deleters: Vec<_> = (0..2u32)
        .map(|d| {
            let store = Arc::clone(&store);
            let stop = Arc::clone(&stop);
            thread::spawn(move || {
                let mut n = d;
                while !stop.load(Ordering::Relaxed) {
                    let _ = store.delete(&format!("a/b/k{}", n % 4)).unwrap();
                    if d == 0 && n.is_multiple_of(500) {
                        store.clear().unwrap();
                    }
                    n += 1;
                }
            })
        })
        .collect();
    let writers: Vec<_> = (0..2)
        .map(|t| {
            let store = Arc::clone(&store);
            thread::spawn(move || {
                for i in 0..200u32 {
                    let key = format!("a/b/k{}", (i + t) % 4);
                    store.write(&key, &version((i % 200) as u8)[..]).unwrap();
                }
            })
        })
        .collect();
    let written: Vec<_> = writers.into_iter().map(|w| w.join()).collect();
    stop.store(true, Ordering::Relaxed);
    for d in deleters {
        d.join().unwrap();
    }
    for w in written {
        w.unwrap();
    }
}
