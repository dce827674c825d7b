//! A model test: random sequences of verbs on a store that packs small objects, compared
//! after every step with a `BTreeMap` of what must be stored. Keys move between the pack and
//! their own files, and the store is reopened, compacted and cleared in between.
#![allow(clippy::unwrap_used)] // tests and their helpers panic on failure

use std::collections::BTreeMap;
use std::fs;
use std::io::{self, Read};
use std::path::{Path, PathBuf};

use dfs_store::{Durability, Expected, Store, StoreError};
use proptest::prelude::*;

/// Objects up to this size are packed; the sizes below straddle it.
const LIMIT: u32 = 64;
const SIZES: [usize; 8] = [0, 1, 63, 64, 65, 200, 4096, 70_000];
const KEYS: [&str; 5] = ["a", "b", "dir/c", "ünï", "a-much-longer-key-0123456789"];

#[derive(Debug, Clone)]
enum Op {
    Write {
        key: usize,
        size: usize,
        fill: u8,
    },
    /// A write whose announced hash is wrong: refused, nothing committed.
    WriteMismatch {
        key: usize,
        size: usize,
    },
    /// A write whose source fails part way: refused, nothing committed.
    WriteFailing {
        key: usize,
        size: usize,
    },
    Delete {
        key: usize,
    },
    Clear,
    Compact,
    /// A compaction cut by a crash after its copies were durable and before the segments
    /// it copied were removed: they are put back, and the store is opened again.
    CompactCut,
    Reopen,
}

fn op() -> impl Strategy<Value = Op> {
    let key = 0..KEYS.len();
    let size = prop::sample::select(SIZES.to_vec());
    prop_oneof![
        8 => (key.clone(), size.clone(), any::<u8>())
            .prop_map(|(key, size, fill)| Op::Write { key, size, fill }),
        1 => (key.clone(), size.clone()).prop_map(|(key, size)| Op::WriteMismatch { key, size }),
        1 => (key.clone(), size).prop_map(|(key, size)| Op::WriteFailing { key, size }),
        3 => key.prop_map(|key| Op::Delete { key }),
        1 => Just(Op::Clear),
        1 => Just(Op::Compact),
        1 => Just(Op::CompactCut),
        2 => Just(Op::Reopen),
    ]
}

fn open(root: &Path, durability: Durability) -> Store {
    Store::builder(root)
        .durability(durability)
        .pack_small_objects(LIMIT)
        .open()
        .unwrap()
}

/// Bytes that differ from one write to the next (size and fill), so a stale version shows.
fn bytes(size: usize, fill: u8) -> Vec<u8> {
    (0..size)
        .map(|i| fill.wrapping_add((i % 251) as u8))
        .collect()
}

/// Yields `good` bytes, then fails.
struct Failing(usize);

impl Read for Failing {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.0 == 0 {
            return Err(io::Error::other("source failed"));
        }
        let n = buf.len().min(self.0);
        buf[..n].fill(7);
        self.0 -= n;
        Ok(n)
    }
}

fn check(store: &Store, model: &BTreeMap<&str, Vec<u8>>) -> Result<(), TestCaseError> {
    for key in KEYS {
        let want = model.get(key);
        prop_assert_eq!(store.has(key).unwrap(), want.is_some(), "has({})", key);
        match want {
            Some(want) => {
                prop_assert_eq!(store.stat(key).unwrap().size(), want.len() as u64);
                let mut got = Vec::new();
                store.read(key).unwrap().read_to_end(&mut got).unwrap();
                prop_assert!(&got == want, "read({}) returned other bytes", key);
            }
            None => {
                let read = store.read(key);
                prop_assert!(
                    matches!(read, Err(StoreError::NotFound { .. })),
                    "read({}) of a missing key: {:?}",
                    key,
                    read
                );
            }
        }
    }
    let mut keys: Vec<String> = store.keys().collect::<Result<_, _>>().unwrap();
    keys.sort();
    let want: Vec<&str> = model.keys().copied().collect();
    prop_assert_eq!(keys, want);
    let objects = store.objects().collect::<Result<Vec<_>, _>>().unwrap();
    prop_assert_eq!(objects.len(), model.len());
    for meta in objects {
        prop_assert_eq!(meta.size(), model[meta.key()].len() as u64);
    }
    let report = store.scrub();
    prop_assert!(report.is_clean(), "scrub: {:?}", report);
    // Every object that small is packed, and the pack's accounting matches: a record is
    // a 72-byte header, the key and the bytes.
    let packed: Vec<(&&str, &Vec<u8>)> = model
        .iter()
        .filter(|(_, v)| v.len() <= LIMIT as usize)
        .collect();
    let stats = store.pack_stats().unwrap();
    prop_assert_eq!(stats.objects, packed.len() as u64);
    let live: usize = packed.iter().map(|(k, v)| 72 + k.len() + v.len()).sum();
    prop_assert_eq!(stats.live_bytes, live as u64);
    prop_assert!(stats.used_bytes >= stats.live_bytes);
    Ok(())
}

fn run(ops: Vec<Op>, durability: Durability) -> Result<(), TestCaseError> {
    let dir = tempfile::tempdir().unwrap();
    let mut store = open(dir.path(), durability);
    let mut model: BTreeMap<&str, Vec<u8>> = BTreeMap::new();
    for op in ops {
        match op {
            Op::Write { key, size, fill } => {
                let data = bytes(size, fill);
                prop_assert_eq!(store.write(KEYS[key], &data[..]).unwrap(), size as u64);
                model.insert(KEYS[key], data);
            }
            Op::WriteMismatch { key, size } => {
                let data = bytes(size, 1);
                let wrong = Expected::new(size as u64, *blake3::hash(b"other").as_bytes());
                let result = store.write_expecting(KEYS[key], &data[..], wrong);
                prop_assert!(
                    matches!(result, Err(StoreError::Mismatch { .. })),
                    "{:?}",
                    result
                );
            }
            Op::WriteFailing { key, size } => {
                let result = store.write(KEYS[key], Failing(size));
                prop_assert!(
                    matches!(result, Err(StoreError::Source { .. })),
                    "{:?}",
                    result
                );
            }
            Op::Delete { key } => {
                let existed = model.remove(KEYS[key]).is_some();
                prop_assert_eq!(store.delete(KEYS[key]).unwrap(), existed);
            }
            Op::Clear => {
                store.clear().unwrap();
                model.clear();
            }
            Op::Compact => {
                store.compact().unwrap();
                let stats = store.pack_stats().unwrap();
                prop_assert_eq!(stats.used_bytes, stats.live_bytes);
            }
            Op::CompactCut => {
                let pack = dir.path().join("pack");
                let before: Vec<(PathBuf, Vec<u8>)> = fs::read_dir(&pack)
                    .unwrap()
                    .map(|e| {
                        let path = e.unwrap().path();
                        let bytes = fs::read(&path).unwrap();
                        (path, bytes)
                    })
                    .collect();
                store.compact().unwrap();
                drop(store);
                for (path, bytes) in before {
                    if !path.exists() {
                        fs::write(path, bytes).unwrap();
                    }
                }
                store = open(dir.path(), durability);
            }
            Op::Reopen => {
                drop(store);
                store = open(dir.path(), durability);
            }
        }
        check(&store, &model)?;
    }
    drop(store);
    check(&open(dir.path(), durability), &model)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    #[test]
    fn verbs_match_a_model(ops in prop::collection::vec(op(), 1..40)) {
        run(ops, Durability::None)?;
    }
}

proptest! {
    // Durable writes take the zero-filled path of the pack (and fsync every step): fewer
    // cases.
    #![proptest_config(ProptestConfig::with_cases(8))]

    #[test]
    fn durable_verbs_match_a_model(ops in prop::collection::vec(op(), 1..25)) {
        run(ops, Durability::Fsync)?;
    }
}
