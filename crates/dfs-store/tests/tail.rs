//! `Store::write_tailed` (followers read a write back while it happens) and
//! `Store::write_expecting_later` (the expectation arrives after the bytes).
#![allow(clippy::unwrap_used)] // tests and their helpers panic on failure

mod common;

use std::io::{self, Read};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc;
use std::thread;

use dfs_store::{Expected, Follower, Mismatch, Next, Store, StoreError, Tail};

/// Sizes around the one-shot / streamed boundary (64 KiB) and past several pipeline buffers.
const SIZES: [usize; 6] = [0, 1, 65_535, 65_536, 65_537, 3_000_001];

fn data(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i * 31 % 251) as u8).collect()
}

/// Everything a follower hands out, and the end it reports.
fn drain(mut follower: Follower, max: u64) -> dfs_store::Result<(Vec<u8>, u64, [u8; 32])> {
    let mut copy = Vec::new();
    loop {
        match follower.next(max)? {
            Next::Bytes(mut segment) => {
                assert!(segment.len() <= max);
                segment.read_to_end(&mut copy).unwrap();
                assert!(segment.is_empty());
            }
            Next::End { size, hash } => return Ok((copy, size, hash)),
        }
    }
}

#[test]
fn followers_read_every_byte_and_the_committed_hash() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    for len in SIZES {
        let bytes = data(len);
        let tail = Tail::new();
        let followers: Vec<_> = [1u64, 4096, 1 << 20]
            .into_iter()
            .map(|max| {
                let follower = tail.follow();
                thread::spawn(move || drain(follower, max))
            })
            .collect();
        assert_eq!(
            store.write_tailed("k", &bytes[..], &tail).unwrap(),
            len as u64
        );
        let meta = store.stat("k").unwrap();
        for follower in followers {
            let (copy, size, hash) = follower.join().unwrap().unwrap();
            assert_eq!(copy, bytes, "len {len}");
            assert_eq!(size, len as u64);
            assert_eq!(&hash, meta.hash());
        }
        // A follower that starts after the write still gets it all.
        let (copy, _, _) = drain(tail.follow(), 1 << 16).unwrap();
        assert_eq!(copy, bytes);
    }
}

/// A source that hands out `first` bytes, then waits for a go-ahead, then fails or ends.
struct Gated {
    first: Vec<u8>,
    gate: mpsc::Receiver<bool>,
}

impl Read for Gated {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if !self.first.is_empty() {
            let n = buf.len().min(self.first.len());
            buf[..n].copy_from_slice(&self.first[..n]);
            self.first.drain(..n);
            return Ok(n);
        }
        match self.gate.recv() {
            Ok(true) => Ok(0),
            _ => Err(io::Error::other("source broke")),
        }
    }
}

#[test]
fn followers_see_bytes_before_the_write_ends_and_nothing_after_a_failure() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(Store::open(dir.path()).unwrap());
    for fail in [false, true] {
        let key = if fail { "fails" } else { "ends" };
        let bytes = data(1 << 20);
        let notified = Arc::new(AtomicUsize::new(0));
        let counter = Arc::clone(&notified);
        let tail = Tail::with_notify(move || {
            counter.fetch_add(1, Ordering::SeqCst);
        });
        let mut follower = tail.follow();
        assert!(follower.try_next(1).unwrap().is_none(), "not started yet");
        let (go, gate) = mpsc::channel();
        let writer = {
            let (store, tail, first) = (Arc::clone(&store), tail.clone(), bytes.clone());
            thread::spawn(move || store.write_tailed(key, Gated { first, gate }, &tail))
        };
        // The whole first part reaches the follower while the writer waits on its source.
        let mut early = Vec::new();
        while early.len() < bytes.len() {
            match follower.next(1).unwrap() {
                Next::Bytes(mut segment) => {
                    segment.read_to_end(&mut early).unwrap();
                }
                Next::End { .. } => panic!("ended before the source did"),
            }
        }
        assert_eq!(early, bytes);
        assert!(follower.try_next(1).unwrap().is_none(), "nothing new yet");
        assert!(notified.load(Ordering::SeqCst) > 0);
        go.send(!fail).unwrap();
        let written = writer.join().unwrap();
        if fail {
            assert!(matches!(written, Err(StoreError::Source { .. })));
            let err = follower.next(1).unwrap_err();
            assert!(
                matches!(&err, StoreError::Abandoned { key: k, .. } if k == key),
                "{err}"
            );
            assert!(!store.has(key).unwrap());
        } else {
            assert_eq!(written.unwrap(), bytes.len() as u64);
            let Next::End { size, hash } = follower.next(1).unwrap() else {
                panic!("bytes after the end")
            };
            assert_eq!(size, bytes.len() as u64);
            assert_eq!(hash, *blake3::hash(&bytes).as_bytes());
        }
    }
}

#[test]
fn a_tail_follows_one_write() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(Store::open(dir.path()).unwrap());
    let tail = Tail::new();
    store.write_tailed("a", &b"one"[..], &tail).unwrap();
    let err = store.write_tailed("b", &b"two"[..], &tail).unwrap_err();
    assert!(
        matches!(&err, StoreError::TailReused { key } if key == "b"),
        "{err}"
    );
    assert!(!store.has("b").unwrap());
    assert_eq!(drain(tail.follow(), 8).unwrap().0, b"one");

    // Refused while the first write is still running, without failing it.
    let tail = Tail::new();
    let (go, gate) = mpsc::channel();
    let first = data(100_000);
    let writer = {
        let (store, tail, first) = (Arc::clone(&store), tail.clone(), first.clone());
        thread::spawn(move || store.write_tailed("c", Gated { first, gate }, &tail))
    };
    let mut follower = tail.follow();
    let Next::Bytes(_) = follower.next(1).unwrap() else {
        panic!("no bytes")
    };
    let err = store.write_tailed("d", &b"two"[..], &tail).unwrap_err();
    assert!(matches!(err, StoreError::TailReused { .. }), "{err}");
    go.send(true).unwrap();
    assert_eq!(writer.join().unwrap().unwrap(), 100_000);
    let (copy, _, _) = drain(tail.follow(), 1 << 20).unwrap();
    assert_eq!(copy, first);
}

#[test]
fn late_expectations_are_checked_before_the_commit() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    for len in SIZES {
        let bytes = data(len);
        let right = Expected::new(len as u64, *blake3::hash(&bytes).as_bytes());
        assert_eq!(
            store
                .write_expecting_later("k", &bytes[..], || Ok(right))
                .unwrap(),
            len as u64
        );
        assert_eq!(store.stat("k").unwrap().hash(), &right.hash);

        let other = data(len + 1);
        let wrong_hash = Expected::new(len as u64, *blake3::hash(&other).as_bytes());
        let longer = Expected::new(len as u64 + 1, right.hash);
        for (expected, is) in [(wrong_hash, "hash"), (longer, "short")] {
            let err = store
                .write_expecting_later("fresh", &bytes[..], || Ok(expected))
                .unwrap_err();
            let StoreError::Mismatch { mismatch, .. } = &err else {
                panic!("{err}")
            };
            match is {
                "hash" => assert!(matches!(mismatch, Mismatch::Hash { .. }), "{err}"),
                _ => assert!(matches!(mismatch, Mismatch::Short { .. }), "{err}"),
            }
            assert!(!store.has("fresh").unwrap());
        }
        let err = store
            .write_expecting_later("fresh", &bytes[..], || Err(io::Error::other("no trailer")))
            .unwrap_err();
        assert!(matches!(err, StoreError::Source { .. }), "{err}");
        assert!(!store.has("fresh").unwrap());
        assert!(
            common::files_under(&store.root().join("tmp")).is_empty(),
            "staging file left behind"
        );
    }
}

#[test]
fn try_next_waits_for_max_and_try_next_available_does_not() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(Store::open(dir.path()).unwrap());
    let tail = Tail::new();
    let (go, gate) = mpsc::channel();
    let first = data(100_000);
    let writer = {
        let (store, tail, first) = (Arc::clone(&store), tail.clone(), first.clone());
        thread::spawn(move || store.write_tailed("k", Gated { first, gate }, &tail))
    };
    // Once one follower got all 100,000 bytes, another sees them only when it asks for
    // what is available.
    let Next::Bytes(segment) = tail.follow().next(100_000).unwrap() else {
        panic!("no bytes")
    };
    assert_eq!(segment.len(), 100_000);
    let mut other = tail.follow();
    assert!(other.try_next(1 << 20).unwrap().is_none());
    let Some(Next::Bytes(mut segment)) = other.try_next_available(1 << 20).unwrap() else {
        panic!("nothing available")
    };
    let mut got = Vec::new();
    segment.read_to_end(&mut got).unwrap();
    assert_eq!(got, first);
    assert!(other.try_next_available(1 << 20).unwrap().is_none());
    go.send(true).unwrap();
    writer.join().unwrap().unwrap();
    assert!(matches!(
        other.try_next_available(1 << 20).unwrap(),
        Some(Next::End { size: 100_000, .. })
    ));
}
