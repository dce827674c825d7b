//! `Store::write_expecting`: the store's own hashing pass checks a caller-supplied size and
//! BLAKE3 hash, and nothing is committed on a mismatch.
#![allow(clippy::unwrap_used)] // tests and their helpers panic on failure

mod common;

use std::io::{self, Read};

use dfs_store::{Durability, Expected, Mismatch, Store, StoreError};

/// Sizes around the one-shot / streamed boundary (64 KiB) and past several pipeline
/// buffers.
const SIZES: [usize; 7] = [0, 1, 4096, 65_535, 65_536, 65_537, 1_100_000];

fn data(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i * 31 % 251) as u8).collect()
}

fn expected(bytes: &[u8]) -> Expected {
    Expected::new(bytes.len() as u64, *blake3::hash(bytes).as_bytes())
}

fn stores(dir: &std::path::Path) -> [Store; 2] {
    [
        Store::open(dir.join("fsync")).unwrap(),
        Store::builder(dir.join("nofsync"))
            .durability(Durability::None)
            .open()
            .unwrap(),
    ]
}

/// Nothing staged, nothing committed under `key` beyond `previous`.
fn assert_untouched(store: &Store, key: &str, previous: Option<&[u8]>) {
    assert!(
        common::files_under(&store.root().join("tmp")).is_empty(),
        "staging file left behind"
    );
    match previous {
        None => assert!(!store.has(key).unwrap()),
        Some(bytes) => {
            let mut out = Vec::new();
            store.read(key).unwrap().read_to_end(&mut out).unwrap();
            assert!(out == bytes, "previous version changed");
        }
    }
}

fn mismatch(err: StoreError) -> Mismatch {
    match err {
        StoreError::Mismatch { mismatch, .. } => mismatch,
        other => panic!("expected a Mismatch, got {other:?}"),
    }
}

#[test]
fn matching_bytes_are_stored() {
    let dir = tempfile::tempdir().unwrap();
    for store in stores(dir.path()) {
        for len in SIZES {
            let bytes = data(len);
            let key = format!("k{len}");
            let n = store
                .write_expecting(&key, &bytes[..], expected(&bytes))
                .unwrap();
            assert_eq!(n, len as u64);
            let meta = store.stat(&key).unwrap();
            assert_eq!(meta.size(), len as u64);
            assert_eq!(meta.hash(), blake3::hash(&bytes).as_bytes());
            store.verify(&key).unwrap();
            // Same file bytes as a plain write.
            store.write("plain", &bytes[..]).unwrap();
            let ours = std::fs::read(store.path_of(&key).unwrap()).unwrap();
            let plain = std::fs::read(store.path_of("plain").unwrap()).unwrap();
            assert_eq!(ours.len() - key.len(), plain.len() - "plain".len(), "{len}");
            assert!(
                ours[88 + key.len()..] == plain[88 + 5..],
                "payload differs at {len}"
            );
            assert_eq!(
                ours[16..56],
                plain[16..56],
                "size/hash fields differ at {len}"
            );
        }
        assert!(common::files_under(&store.root().join("tmp")).is_empty());
    }
}

#[test]
fn wrong_hash_is_refused_and_old_version_kept() {
    let dir = tempfile::tempdir().unwrap();
    for store in stores(dir.path()) {
        for len in SIZES.into_iter().filter(|&l| l > 0) {
            let bytes = data(len);
            let key = format!("k{len}");
            let old = b"old version".to_vec();
            store.write(&key, &old[..]).unwrap();
            let mut damaged = bytes.clone();
            damaged[len / 2] ^= 0x40;
            let want = expected(&bytes);
            let err = store.write_expecting(&key, &damaged[..], want).unwrap_err();
            assert!(err.to_string().contains(&key), "{err}");
            match mismatch(err) {
                Mismatch::Hash { expected, got } => {
                    assert_eq!(expected, want.hash);
                    assert_eq!(&got, blake3::hash(&damaged).as_bytes());
                }
                other => panic!("{other:?}"),
            }
            assert_untouched(&store, &key, Some(&old));
        }
    }
}

#[test]
fn short_source_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    for store in stores(dir.path()) {
        for len in SIZES.into_iter().filter(|&l| l > 0) {
            let bytes = data(len);
            let key = format!("k{len}");
            let err = store
                .write_expecting(&key, &bytes[..len - 1], expected(&bytes))
                .unwrap_err();
            assert_eq!(
                mismatch(err),
                Mismatch::Short {
                    expected: len as u64,
                    got: len as u64 - 1
                }
            );
            assert_untouched(&store, &key, None);
        }
    }
}

/// An endless source that counts what it hands out.
struct Endless {
    given: u64,
}

impl Read for Endless {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        buf.fill(7);
        self.given += buf.len() as u64;
        Ok(buf.len())
    }
}

#[test]
fn long_source_is_refused_without_draining_it() {
    let dir = tempfile::tempdir().unwrap();
    for store in stores(dir.path()) {
        for len in SIZES {
            let bytes = data(len);
            let key = format!("k{len}");
            // One byte too many.
            let mut longer = bytes.clone();
            longer.push(0);
            let err = store
                .write_expecting(&key, &longer[..], expected(&bytes))
                .unwrap_err();
            assert_eq!(
                mismatch(err),
                Mismatch::Long {
                    expected: len as u64
                }
            );
            assert_untouched(&store, &key, None);
            // A source that never ends: at most one byte past the size is taken.
            let mut endless = Endless { given: 0 };
            let err = store
                .write_expecting(&key, &mut endless, expected(&bytes))
                .unwrap_err();
            assert!(matches!(mismatch(err), Mismatch::Long { .. }));
            assert!(
                endless.given <= len as u64 + 1,
                "{} > {len} + 1",
                endless.given
            );
            assert_untouched(&store, &key, None);
        }
    }
}

#[test]
fn failing_source_is_a_source_error() {
    struct Failing;
    impl Read for Failing {
        fn read(&mut self, _: &mut [u8]) -> io::Result<usize> {
            Err(io::Error::new(io::ErrorKind::ConnectionReset, "peer gone"))
        }
    }
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let err = store
        .write_expecting("k", Failing, Expected::new(10, [0; 32]))
        .unwrap_err();
    assert!(matches!(err, StoreError::Source { .. }), "{err:?}");
    assert_untouched(&store, "k", None);
}
