//! Damaged, truncated, extended and foreign files: always an error, never a panic, never
//! silently wrong bytes.
#![allow(clippy::unwrap_used)] // tests and their helpers panic on failure

use std::fs::{self, OpenOptions};
use std::io::{ErrorKind, Read, Write};
use std::path::Path;

use dfs_store::{PlainPath, Store, StoreError};

const HEADER: u64 = 88;

fn flip(path: &Path, offset: u64, mask: u8) {
    let mut bytes = fs::read(path).unwrap();
    bytes[offset as usize] ^= mask;
    fs::write(path, bytes).unwrap();
}

/// Reads the whole object; returns the bytes delivered and the final outcome.
fn read_outcome(store: &Store, key: &str) -> (Vec<u8>, Result<(), StoreError>) {
    let mut reader = match store.read(key) {
        Ok(r) => r,
        Err(e) => return (Vec::new(), Err(e)),
    };
    let mut out = Vec::new();
    match reader.read_to_end(&mut out) {
        Ok(_) => (out, Ok(())),
        Err(e) => {
            assert_eq!(e.kind(), ErrorKind::InvalidData);
            (out, Err(StoreError::from_io(e).unwrap()))
        }
    }
}

fn data(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i * 31 % 251) as u8).collect()
}

#[test]
fn payload_bit_flips_are_detected_before_the_end() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    for len in [1usize, 1000, 200_000] {
        let key = format!("k{len}");
        let original = data(len);
        store.write(&key, &original[..]).unwrap();
        let path = store.path_of(&key).unwrap();
        let key_len = key.len() as u64;
        for pos in [0, len as u64 / 2, len as u64 - 1] {
            let offset = HEADER + key_len + pos;
            flip(&path, offset, 0x10);
            let (delivered, outcome) = read_outcome(&store, &key);
            let err = outcome.expect_err("flip must be detected");
            assert!(err.is_corrupt(), "{err:?}");
            assert!(
                delivered.len() < len,
                "the complete object was never delivered"
            );
            // Bytes before the end may be delivered (the hash is only known at the end),
            // but the read never completes successfully.
            assert!(store.verify(&key).unwrap_err().is_corrupt());
            // The error repeats on later reads of the same reader.
            let mut reader = store.read(&key).unwrap();
            let mut sink = Vec::new();
            assert!(reader.read_to_end(&mut sink).is_err());
            assert!(reader.read(&mut [0u8; 16]).is_err());
            flip(&path, offset, 0x10);
            store.verify(&key).unwrap();
        }
    }
}

#[test]
fn header_damage_every_byte_is_detected_at_open() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    store.write("key", &data(500)[..]).unwrap();
    let path = store.path_of("key").unwrap();
    for offset in 0..HEADER + 3 {
        flip(&path, offset, 0x01);
        let err = store.read("key").unwrap_err();
        assert!(err.is_corrupt(), "offset {offset}: {err:?}");
        assert!(store.stat("key").is_err());
        flip(&path, offset, 0x01);
    }
    store.verify("key").unwrap();
}

#[test]
fn truncation_and_extension_are_detected() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let original = data(100_000);
    store.write("k", &original[..]).unwrap();
    let path = store.path_of("k").unwrap();
    let full = fs::read(&path).unwrap();
    for cut in [
        0,
        1,
        50,
        HEADER as usize,
        HEADER as usize + 1,
        full.len() / 2,
        full.len() - 1,
    ] {
        fs::write(&path, &full[..cut]).unwrap();
        let err = store.read("k").unwrap_err();
        assert!(err.is_corrupt(), "cut {cut}: {err:?}");
    }
    let mut longer = full.clone();
    longer.extend_from_slice(b"extra");
    fs::write(&path, &longer).unwrap();
    assert!(store.read("k").unwrap_err().is_corrupt());
    // Truncated after the reader was opened: detected at the end of the stream.
    fs::write(&path, &full).unwrap();
    let mut reader = store.read("k").unwrap();
    OpenOptions::new()
        .write(true)
        .open(&path)
        .unwrap()
        .set_len(full.len() as u64 - 10)
        .unwrap();
    let mut out = Vec::new();
    let err = reader.read_to_end(&mut out).unwrap_err();
    assert!(StoreError::from_io(err).unwrap().is_corrupt());
}

#[test]
fn foreign_and_swapped_files() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open_with(dir.path(), PlainPath).unwrap();
    // A foreign file where an object would be.
    let objects = dir.path().join("objects");
    fs::write(objects.join("foreign"), b"just some file somebody put here").unwrap();
    fs::write(objects.join("empty"), b"").unwrap();
    assert!(store.read("foreign").unwrap_err().is_corrupt());
    assert!(store.read("empty").unwrap_err().is_corrupt());
    // A valid object copied to another key's place: refused, it holds another key.
    store.write("a", &b"contents of a"[..]).unwrap();
    fs::copy(objects.join("a"), objects.join("b")).unwrap();
    let err = store.read("b").unwrap_err();
    assert!(err.to_string().contains("holds key \"a\""), "{err}");
    // An unsupported version.
    store.write("v", &b"x"[..]).unwrap();
    let mut bytes = fs::read(objects.join("v")).unwrap();
    bytes[8] = 9;
    fs::write(objects.join("v"), bytes).unwrap();
    assert!(matches!(
        store.read("v").unwrap_err(),
        StoreError::UnsupportedVersion { version: 9, .. }
    ));
    // A directory where an object would be.
    fs::create_dir(objects.join("adir")).unwrap();
    assert!(store.read("adir").unwrap_err().is_not_found());
}

#[test]
fn scrub_reports_every_bad_object_and_listing_goes_on() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    for i in 0..20 {
        store.write(&format!("k{i}"), &data(1000 + i)[..]).unwrap();
    }
    // Damage three different ways.
    let p1 = store.path_of("k1").unwrap();
    flip(&p1, HEADER + 2 + 500, 0xFF);
    let p2 = store.path_of("k2").unwrap();
    let bytes = fs::read(&p2).unwrap();
    fs::write(&p2, &bytes[..bytes.len() - 3]).unwrap();
    let p3 = store.path_of("k3").unwrap();
    flip(&p3, 20, 0x04);
    // A foreign file and a misplaced copy.
    fs::write(dir.path().join("objects/stray.txt"), b"hello").unwrap();
    let misplaced = p1.parent().unwrap().join("0000");
    fs::copy(store.path_of("k4").unwrap(), &misplaced).unwrap();

    let report = store.scrub();
    assert_eq!(report.checked, 22);
    let mut bad: Vec<_> = report.bad.iter().map(|b| b.path.clone()).collect();
    bad.sort();
    let mut expected = vec![p1, p2, p3, dir.path().join("objects/stray.txt"), misplaced];
    expected.sort();
    assert_eq!(bad, expected);
    for b in &report.bad {
        assert!(b.error.is_corrupt(), "{:?}", b.error);
    }
    // Listing yields errors for the bad headers and keys for the rest.
    let (ok, err): (Vec<_>, Vec<_>) = store.keys().partition(Result::is_ok);
    assert_eq!(ok.len() + err.len(), 22);
    assert_eq!(
        err.len(),
        3,
        "truncated k2 and flipped-payload k1 still list; the rest don't"
    );
}

#[test]
fn garbage_files_never_panic() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open_with(dir.path(), PlainPath).unwrap();
    store.write("good", &b"hello world"[..]).unwrap();
    let good = fs::read(dir.path().join("objects/good")).unwrap();
    let path = dir.path().join("objects/x");
    // Deterministic pseudo-random damage: many variants of a valid file.
    let mut seed = 0x1234_5678_u64;
    for round in 0..500 {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        let mut bytes = good.clone();
        match round % 3 {
            0 => bytes.truncate((seed % good.len() as u64) as usize),
            1 => {
                let i = (seed % bytes.len() as u64) as usize;
                bytes[i] = (seed >> 32) as u8;
            }
            _ => {
                bytes = (0..(seed % 200))
                    .map(|i| (seed >> (i % 56)) as u8)
                    .collect()
            }
        }
        let mut f = fs::File::create(&path).unwrap();
        f.write_all(&bytes).unwrap();
        drop(f);
        let _ = store.read("x").map(|mut r| r.read_to_end(&mut Vec::new()));
        let _ = store.stat("x");
        let _ = store.scrub();
        let _ = store.keys().count();
    }
}

#[test]
fn large_objects_hashed_on_a_helper_thread_detect_damage_too() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let len = (3 << 20) + 12_345;
    let original = data(len);
    store.write("big", &original[..]).unwrap();
    // Clean reads with several caller buffer sizes.
    for chunk in [1usize, 8 * 1024, 300_000, 4 << 20] {
        let mut reader = store.read("big").unwrap();
        let mut out = Vec::with_capacity(len);
        let mut buf = vec![0u8; chunk];
        if chunk == 1 {
            // Byte-at-a-time over the first 100 KiB, then the rest in bulk.
            for _ in 0..100_000 {
                assert_eq!(reader.read(&mut buf).unwrap(), 1);
                out.push(buf[0]);
            }
        }
        loop {
            let n = reader.read(&mut buf).unwrap();
            if n == 0 {
                break;
            }
            out.extend_from_slice(&buf[..n]);
        }
        assert!(out == original, "chunk {chunk}");
    }
    let path = store.path_of("big").unwrap();
    for pos in [0u64, len as u64 / 2, len as u64 - 1] {
        let offset = HEADER + 3 + pos;
        flip(&path, offset, 0x40);
        let (delivered, outcome) = read_outcome(&store, "big");
        assert!(outcome.unwrap_err().is_corrupt());
        assert!(delivered.len() < len);
        assert!(store.verify("big").unwrap_err().is_corrupt());
        flip(&path, offset, 0x40);
    }
    store.verify("big").unwrap();
    // A reader dropped half-way does not hang or leak a blocked thread.
    let mut reader = store.read("big").unwrap();
    let mut buf = vec![0u8; 1 << 20];
    reader.read_exact(&mut buf).unwrap();
    drop(reader);
}

/// A FIFO where an object would be: not found (and listed as a foreign file), never a
/// read or stat blocked forever waiting for a writer of the FIFO.
#[cfg(unix)]
#[test]
fn a_fifo_where_an_object_would_be_never_blocks() {
    let dir = tempfile::tempdir().unwrap();
    let fifo = dir.path().join("objects/k");
    let store = std::sync::Arc::new(Store::open_with(dir.path(), PlainPath).unwrap());
    if !std::process::Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .is_ok_and(|s| s.success())
    {
        return; // no mkfifo here
    }
    let (tx, rx) = std::sync::mpsc::channel();
    let reader = {
        let store = std::sync::Arc::clone(&store);
        std::thread::spawn(move || {
            let read = store.read("k").map(drop);
            let stat = store.stat("k").map(drop);
            let verify = store.verify("k");
            tx.send((read, stat, verify)).unwrap();
        })
    };
    let Ok((read, stat, verify)) = rx.recv_timeout(std::time::Duration::from_secs(30)) else {
        // Let the blocked open go, so the test ends, then fail.
        let _ = fs::OpenOptions::new().write(true).open(&fifo);
        panic!("a read blocked on a FIFO");
    };
    reader.join().unwrap();
    assert!(read.unwrap_err().is_not_found());
    assert!(stat.unwrap_err().is_not_found());
    assert!(verify.unwrap_err().is_not_found());
    assert!(!store.has("k").unwrap());
    assert!(store.scrub().bad.len() == 1);
}
