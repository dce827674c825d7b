//! The pack (`StoreBuilder::pack_small_objects`): every verb over packed objects and over
//! keys that move between the pack and their own files, reopening, the lock, damage, and
//! concurrent writers and readers.
#![allow(clippy::unwrap_used)] // tests and their helpers panic on failure

mod common;

use std::fs;
use std::io::{self, ErrorKind, Read};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;

use dfs_store::{Durability, Expected, Mismatch, PlainPath, Store, StoreError};

const LIMIT: u32 = 16 * 1024;

fn open(root: &Path) -> Store {
    Store::builder(root)
        .pack_small_objects(LIMIT)
        .open()
        .unwrap()
}

fn read_all(store: &Store, key: &str) -> Vec<u8> {
    let mut out = Vec::new();
    let mut reader = store.read(key).unwrap();
    reader.read_to_end(&mut out).unwrap();
    assert_eq!(out.len() as u64, reader.size());
    out
}

fn sorted_keys(store: &Store) -> Vec<String> {
    let mut keys: Vec<String> = store.keys().collect::<Result<_, _>>().unwrap();
    keys.sort();
    keys
}

fn in_pack(store: &Store, key: &str) -> bool {
    store
        .stat(key)
        .unwrap()
        .path()
        .starts_with(store.root().join("pack"))
}

fn object_files(root: &Path) -> Vec<PathBuf> {
    common::files_under(&root.join("objects"))
}

fn segments(root: &Path) -> Vec<PathBuf> {
    let mut segs: Vec<PathBuf> = fs::read_dir(root.join("pack"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "seg"))
        .collect();
    segs.sort();
    segs
}

#[test]
fn small_objects_go_to_the_pack_and_large_ones_to_files() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let limit = LIMIT as usize;
    for (key, len) in [
        ("empty", 0),
        ("one", 1),
        ("at-limit", limit),
        ("over", limit + 1),
    ] {
        let data = vec![len as u8; len];
        assert_eq!(store.write(key, &data[..]).unwrap(), len as u64);
        assert_eq!(read_all(&store, key), data);
        let meta = store.stat(key).unwrap();
        assert_eq!(meta.size(), len as u64);
        assert_eq!(meta.hash(), blake3::hash(&data).as_bytes());
        assert_eq!(in_pack(&store, key), len <= limit, "{key}");
        assert!(store.has(key).unwrap());
        store.verify(key).unwrap();
    }
    assert_eq!(object_files(dir.path()).len(), 1);
    assert_eq!(sorted_keys(&store), ["at-limit", "empty", "one", "over"]);
    let sizes: u64 = store.objects().map(|m| m.unwrap().size()).sum();
    assert_eq!(sizes, (1 + limit + limit + 1) as u64);
    let report = store.scrub();
    assert_eq!(report.checked, 4);
    assert!(report.is_clean(), "{report:?}");
}

#[test]
fn a_key_moving_between_pack_and_file_has_one_version_and_no_leftovers() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let small = b"small".to_vec();
    let large = vec![9u8; LIMIT as usize * 3];
    store.write("k", &small[..]).unwrap();
    store.write("k", &large[..]).unwrap();
    assert_eq!(read_all(&store, "k"), large);
    assert!(!in_pack(&store, "k"));
    store.write("k", &small[..]).unwrap();
    assert_eq!(read_all(&store, "k"), small);
    assert!(in_pack(&store, "k"));
    assert!(object_files(dir.path()).is_empty(), "the file was removed");
    assert_eq!(sorted_keys(&store), ["k"]);
    drop(store);

    // Reopened, the same; then deleted, gone from both.
    let store = open(dir.path());
    assert_eq!(read_all(&store, "k"), small);
    store.write("k", &large[..]).unwrap();
    drop(store);
    let store = open(dir.path());
    assert_eq!(read_all(&store, "k"), large);
    assert!(store.delete("k").unwrap());
    assert!(!store.delete("k").unwrap());
    assert!(!store.has("k").unwrap());
    assert!(matches!(store.read("k"), Err(StoreError::NotFound { .. })));
    drop(store);
    let store = open(dir.path());
    assert!(!store.has("k").unwrap());
    assert!(sorted_keys(&store).is_empty());
}

#[test]
fn a_shadowed_file_is_never_read_listed_or_scrubbed_and_goes_on_delete() {
    let dir = tempfile::tempdir().unwrap();
    // What a crash between a packed write and the removal of the key's file leaves: an
    // older file under a live pack record.
    let plain = Store::open(dir.path()).unwrap();
    plain.write("k", &b"older, in a file"[..]).unwrap();
    let file = plain.path_of("k").unwrap();
    let older = fs::read(&file).unwrap();
    drop(plain);
    let store = open(dir.path());
    store.write("k", &b"newer, packed"[..]).unwrap();
    drop(store);
    fs::create_dir_all(file.parent().unwrap()).unwrap();
    fs::write(&file, &older).unwrap();

    let store = open(dir.path());
    assert_eq!(read_all(&store, "k"), b"newer, packed");
    assert_eq!(sorted_keys(&store), ["k"]);
    let report = store.scrub();
    assert_eq!(report.checked, 2);
    assert!(report.is_clean(), "{report:?}");
    // Deleting removes the file first: nothing older comes back.
    assert!(store.delete("k").unwrap());
    assert!(!file.exists());
    assert!(!store.has("k").unwrap());
}

#[test]
fn a_store_opened_without_the_option_reads_the_pack_and_writes_files() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    store.write("a", &b"packed a"[..]).unwrap();
    store.write("b", &b"packed b"[..]).unwrap();
    drop(store);
    let store = Store::open(dir.path()).unwrap();
    assert_eq!(read_all(&store, "a"), b"packed a");
    store.write("a", &b"a as a file"[..]).unwrap();
    assert!(!in_pack(&store, "a"));
    store.write("c", &b"c"[..]).unwrap();
    assert!(!in_pack(&store, "c"));
    assert_eq!(sorted_keys(&store), ["a", "b", "c"]);
    drop(store);
    let store = open(dir.path());
    assert_eq!(read_all(&store, "a"), b"a as a file");
    assert_eq!(read_all(&store, "b"), b"packed b");
}

#[test]
fn one_store_at_a_time_opens_a_pack() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let err = open_err(dir.path());
    assert!(matches!(err, StoreError::Locked { .. }), "{err}");
    assert!(err.to_string().contains("in use by another Store"), "{err}");
    // Without the option too: the root has a pack.
    assert!(matches!(
        Store::open(dir.path()),
        Err(StoreError::Locked { .. })
    ));
    drop(store);
    open(dir.path());
}

fn open_err(root: &Path) -> StoreError {
    Store::builder(root)
        .pack_small_objects(LIMIT)
        .open()
        .unwrap_err()
}

#[test]
fn a_limit_over_one_mib_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let err = Store::builder(dir.path())
        .pack_small_objects(dfs_store::MAX_PACKED + 1)
        .open()
        .unwrap_err();
    assert!(matches!(err, StoreError::InvalidConfig { .. }), "{err}");
    assert!(!dir.path().join("pack").exists());
}

#[test]
fn checked_and_failed_writes_commit_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    store.write("k", &b"original"[..]).unwrap();
    let body = b"replica";
    let good = Expected::new(7, *blake3::hash(body).as_bytes());
    let err = store
        .write_expecting("k", &b"replicA"[..], good)
        .unwrap_err();
    assert!(matches!(
        err,
        StoreError::Mismatch {
            mismatch: Mismatch::Hash { .. },
            ..
        }
    ));
    let err = store
        .write_expecting("k", &b"replica and more"[..], good)
        .unwrap_err();
    assert!(matches!(
        err,
        StoreError::Mismatch {
            mismatch: Mismatch::Long { .. },
            ..
        }
    ));
    let err = store.write_expecting("k", &b"repl"[..], good).unwrap_err();
    assert!(matches!(
        err,
        StoreError::Mismatch {
            mismatch: Mismatch::Short { .. },
            ..
        }
    ));
    let late = store
        .write_expecting_later("k", &body[..], || Err(io::Error::other("no trailer")))
        .unwrap_err();
    assert!(matches!(late, StoreError::Source { .. }), "{late}");

    /// Fails after yielding some bytes.
    struct Broken(usize);
    impl Read for Broken {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            if self.0 == 0 {
                return Err(io::Error::other("source broke"));
            }
            let n = self.0.min(buf.len());
            buf[..n].fill(1);
            self.0 -= n;
            Ok(n)
        }
    }
    let err = store.write("k", Broken(100)).unwrap_err();
    assert!(matches!(err, StoreError::Source { .. }), "{err}");
    // Nothing of those was stored: the original stands, also after a reopen.
    assert_eq!(read_all(&store, "k"), b"original");
    drop(store);
    let store = open(dir.path());
    assert_eq!(read_all(&store, "k"), b"original");
    store.write_expecting("k", &body[..], good).unwrap();
    assert_eq!(read_all(&store, "k"), body);
}

#[test]
fn damaged_packed_bytes_are_an_error_never_wrong_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let big = |store: &Store| {
        // 65 MiB of other objects: the segment holding the victim is sealed.
        for i in 0..65 {
            store
                .write(&format!("filler-{i}"), &vec![i as u8; 1 << 20][..])
                .unwrap();
        }
    };
    let store = Store::builder(dir.path())
        .pack_small_objects(dfs_store::MAX_PACKED)
        .durability(Durability::None)
        .open()
        .unwrap();
    let data: Vec<u8> = (0..3000u32).map(|i| (i % 251) as u8).collect();
    store.write("victim", &data[..]).unwrap();
    store.write("bystander", &b"fine"[..]).unwrap();
    big(&store);
    drop(store);
    let sealed = segments(dir.path()).remove(0);
    // The victim's record is the first: 16-byte segment header, 72-byte record header,
    // 6 bytes of key, then its data.
    let mut bytes = fs::read(&sealed).unwrap();
    bytes[16 + 72 + 6 + 1500] ^= 0x40;
    fs::write(&sealed, bytes).unwrap();

    let store = open(dir.path());
    let mut reader = store.read("victim").unwrap();
    let mut out = Vec::new();
    let err = reader.read_to_end(&mut out).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidData);
    assert!(matches!(
        StoreError::from_io(err),
        Ok(StoreError::Corrupt { .. })
    ));
    assert!(
        out.len() < data.len(),
        "the damaged object was delivered whole"
    );
    assert!(matches!(
        store.verify("victim"),
        Err(StoreError::Corrupt { .. })
    ));
    assert_eq!(read_all(&store, "bystander"), b"fine");
    let report = store.scrub();
    assert_eq!(report.bad.len(), 1, "{report:?}");
    assert_eq!(report.bad[0].key.as_deref(), Some("victim"));
    // Overwriting the damaged object repairs the key.
    store.write("victim", &data[..]).unwrap();
    assert_eq!(read_all(&store, "victim"), data);
}

/// A store whose newest segment holds "k" = "older", then a newer put of "k" whose bytes
/// were damaged.
fn damaged_newest_put() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    store.write("k", &b"older"[..]).unwrap();
    store.write("k", &vec![5u8; 3000][..]).unwrap();
    drop(store);
    let seg = segments(dir.path()).pop().unwrap();
    let mut bytes = fs::read(&seg).unwrap();
    // Second record: after the first (72 + 1 + 5 bytes), its header and 1-byte key.
    bytes[16 + 78 + 73 + 1000] ^= 1;
    fs::write(&seg, bytes).unwrap();
    dir
}

#[test]
fn damage_in_the_newest_segment_counts_as_a_cut_write_and_is_reported() {
    // Indistinguishable from a write a crash cut short: the previous version stands, and
    // scrubs name the key (so a caller can fetch a good copy, say from a replica), across
    // reopens, until the key is written again or deleted.
    let dir = damaged_newest_put();
    let check = |store: &Store| {
        assert_eq!(read_all(store, "k"), b"older");
        assert_eq!(store.lost_writes(), ["k"]);
        let report = store.scrub();
        assert_eq!(report.bad.len(), 1, "{report:?}");
        assert_eq!(report.bad[0].key.as_deref(), Some("k"));
        assert!(report.bad[0].error.is_corrupt());
        assert!(
            report.bad[0].error.to_string().contains("voided"),
            "{report:?}"
        );
    };
    check(&open(dir.path()));
    check(&open(dir.path()));

    let big = vec![6u8; 20_000];
    for what in ["packed write", "file write", "delete"] {
        let dir = damaged_newest_put();
        let store = open(dir.path());
        match what {
            "packed write" => assert_eq!(store.write("k", &b"newest"[..]).unwrap(), 6),
            "file write" => assert_eq!(store.write("k", &big[..]).unwrap(), 20_000),
            _ => assert!(store.delete("k").unwrap()),
        }
        assert!(store.scrub().is_clean(), "after a {what}");
        assert!(store.lost_writes().is_empty(), "after a {what}");
        drop(store);
        let store = open(dir.path());
        assert!(store.scrub().is_clean(), "after a {what} and a reopen");
        assert!(
            store.lost_writes().is_empty(),
            "after a {what} and a reopen"
        );
        assert_eq!(store.has("k").unwrap(), what != "delete");
    }
}

/// A put voided at open that is older than its key's live version (or delete) lost
/// nothing: never reported, at any open.
#[test]
fn a_voided_put_older_than_the_live_version_is_not_reported() {
    for then in ["write", "delete"] {
        let dir = tempfile::tempdir().unwrap();
        let store = open(dir.path());
        store.write("k", &vec![5u8; 3000][..]).unwrap();
        if then == "delete" {
            assert!(store.delete("k").unwrap());
        } else {
            store.write("k", &b"newest"[..]).unwrap();
        }
        drop(store);
        let seg = segments(dir.path()).pop().unwrap();
        let mut bytes = fs::read(&seg).unwrap();
        bytes[16 + 73 + 1000] ^= 1; // the first record's bytes
        fs::write(&seg, bytes).unwrap();
        for _ in 0..2 {
            let store = open(dir.path());
            assert!(store.scrub().is_clean(), "{then}");
            assert!(store.lost_writes().is_empty(), "{then}");
            assert_eq!(store.has("k").unwrap(), then == "write");
        }
    }
}

/// The report of a lost write outlives a compaction of the segment holding its void (the
/// void is copied), also across a reopen.
#[test]
fn a_lost_write_is_still_reported_after_compaction_and_a_reopen() {
    let dir = damaged_newest_put();
    let store = open(dir.path());
    assert_eq!(store.scrub().bad.len(), 1);
    store.compact().unwrap();
    assert_eq!(store.scrub().bad.len(), 1);
    assert_eq!(store.lost_writes(), ["k"]);
    drop(store);
    let store = open(dir.path());
    assert_eq!(store.lost_writes(), ["k"]);
    assert_eq!(read_all(&store, "k"), b"older");
    let report = store.scrub();
    assert_eq!(report.bad.len(), 1, "{report:?}");
    assert_eq!(report.bad[0].key.as_deref(), Some("k"));
    // Compacting again settles: the void's small copy is all that is dead, and it stays.
    let settled = segments(dir.path());
    store.compact().unwrap();
    assert_eq!(segments(dir.path()), settled);
    assert_eq!(store.scrub().bad.len(), 1);
    store.write("k", &b"again"[..]).unwrap();
    store.compact().unwrap();
    drop(store);
    let store = open(dir.path());
    assert!(store.scrub().is_clean());
    let stats = store.pack_stats().unwrap();
    assert_eq!(
        stats.live_bytes, stats.used_bytes,
        "the void went with its report"
    );
}

#[test]
fn a_truncated_or_garbage_segment_never_panics() {
    let dir = tempfile::tempdir().unwrap();
    {
        let store = open(dir.path());
        for i in 0..50 {
            store
                .write(&format!("k{i}"), &vec![i as u8; 100 + i * 37][..])
                .unwrap();
        }
    }
    let seg = segments(dir.path()).pop().unwrap();
    let full = fs::read(&seg).unwrap();
    // The only segment, cut anywhere (as a crash can leave the newest one).
    let only = |bytes: &[u8]| {
        for seg in segments(dir.path()) {
            fs::remove_file(seg).unwrap();
        }
        fs::write(&seg, bytes).unwrap();
    };
    for cut in [0usize, 7, 16, 17, 88, 1000, 2500] {
        only(&full[..cut]);
        let store = open(dir.path());
        // Whatever survived reads back whole; nothing else is listed.
        for key in sorted_keys(&store) {
            let i: usize = key[1..].parse().unwrap();
            assert_eq!(read_all(&store, &key), vec![i as u8; 100 + i * 37]);
        }
        assert!(store.scrub().is_clean());
        drop(store);
    }
    for seed in 0..8u8 {
        let garbage: Vec<u8> = (0..5000u32)
            .map(|i| (i as u8).wrapping_mul(seed | 1).wrapping_add(seed))
            .collect();
        let mut bytes = full.clone();
        bytes[16..16 + garbage.len()].copy_from_slice(&garbage);
        only(&bytes);
        let store = open(dir.path());
        let _ = store.scrub();
        let _ = store.keys().count();
        drop(store);
    }
}

#[test]
fn clear_empties_both_and_the_store_stays_usable() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    store.write("small", &b"s"[..]).unwrap();
    store.write("large", &vec![1u8; 100_000][..]).unwrap();
    store.clear().unwrap();
    assert!(sorted_keys(&store).is_empty());
    assert!(!store.has("small").unwrap());
    store.write("after", &b"a"[..]).unwrap();
    drop(store);
    let store = open(dir.path());
    assert_eq!(sorted_keys(&store), ["after"]);
}

#[test]
fn overwrites_and_deletes_are_compacted_away() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::builder(dir.path())
        .pack_small_objects(dfs_store::MAX_PACKED)
        .durability(Durability::None)
        .open()
        .unwrap();
    let big = vec![3u8; 1 << 20];
    // 200 MiB of records over 4 keys: the sealed segments are mostly dead.
    for i in 0..200 {
        store.write(&format!("k{}", i % 4), &big[..]).unwrap();
    }
    store.delete("k3").unwrap();
    let on_disk = |root: &Path| -> u64 {
        segments(root)
            .iter()
            .map(|p| fs::metadata(p).unwrap().len())
            .sum()
    };
    assert!(
        on_disk(dir.path()) < 140 << 20,
        "compaction kept up: {} MiB",
        on_disk(dir.path()) >> 20
    );
    store.compact().unwrap();
    assert!(
        on_disk(dir.path()) < 70 << 20,
        "{} MiB",
        on_disk(dir.path()) >> 20
    );
    assert_eq!(sorted_keys(&store), ["k0", "k1", "k2"]);
    drop(store);
    let store = open(dir.path());
    assert_eq!(sorted_keys(&store), ["k0", "k1", "k2"]);
    for key in ["k0", "k1", "k2"] {
        assert_eq!(read_all(&store, key), big);
    }
    assert!(store.scrub().is_clean());
}

#[test]
fn plain_paths_and_encryption_work_packed() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::builder(dir.path())
        .transform(PlainPath)
        .pack_small_objects(LIMIT)
        .open()
        .unwrap();
    store.write("docs/a.txt", &b"a"[..]).unwrap();
    assert!(store.has("docs/a.txt").unwrap());
    assert!(!dir.path().join("objects/docs/a.txt").exists());
    assert!(matches!(
        store.write("../escape", &b"x"[..]),
        Err(StoreError::InvalidLocation { .. } | StoreError::InvalidKey { .. })
    ));
    let cipher = dfs_crypto::Aes256Ctr::new(&dfs_crypto::Key::generate().unwrap());
    store
        .write_encrypted("docs/secret", &b"attack at dawn"[..], &cipher)
        .unwrap();
    let mut plain = String::new();
    store
        .read_decrypted("docs/secret", &cipher)
        .unwrap()
        .read_to_string(&mut plain)
        .unwrap();
    assert_eq!(plain, "attack at dawn");
}

/// Version `v` of the contended key: packed or a file depending on `v`, with a length and
/// fill that both depend on it.
fn version(v: u8) -> Vec<u8> {
    let len = if v.is_multiple_of(2) {
        100 + usize::from(v) * 10
    } else {
        LIMIT as usize + 1000 + usize::from(v) * 100
    };
    vec![v; len]
}

#[test]
fn concurrent_writers_of_one_key_across_pack_and_files_leave_one_whole_version() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(open(dir.path()));
    store.write("hot", &version(0)[..]).unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let readers: Vec<_> = (0..2)
        .map(|_| {
            let (store, stop) = (Arc::clone(&store), Arc::clone(&stop));
            thread::spawn(move || {
                let mut reads = 0;
                while !stop.load(Ordering::Relaxed) || reads == 0 {
                    let out = read_all(&store, "hot");
                    assert_eq!(out, version(out[0]), "torn or mixed object");
                    assert!(store.has("hot").unwrap());
                    reads += 1;
                }
                reads
            })
        })
        .collect();
    let writers: Vec<_> = (0..4u8)
        .map(|w| {
            let store = Arc::clone(&store);
            thread::spawn(move || {
                for i in 0..30u8 {
                    store.write("hot", &version(w * 30 + i)[..]).unwrap();
                    // Other keys, packed, alongside: they share fsyncs.
                    store.write(&format!("w{w}-{i}"), &[w, i][..]).unwrap();
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
    let last = read_all(&store, "hot");
    assert_eq!(last, version(last[0]));
    let keys = sorted_keys(&store);
    assert_eq!(keys.len(), 1 + 4 * 30);
    assert_eq!(
        object_files(dir.path()).len(),
        usize::from(last[0] % 2 == 1),
        "no file is left beside a packed version"
    );
    drop(store);
    let store = open(dir.path());
    assert_eq!(read_all(&store, "hot"), last);
    for w in 0..4u8 {
        for i in 0..30u8 {
            assert_eq!(read_all(&store, &format!("w{w}-{i}")), [w, i]);
        }
    }
    assert!(store.scrub().is_clean());
}

#[test]
fn a_foreign_file_in_the_pack_directory_is_reported_not_touched() {
    let dir = tempfile::tempdir().unwrap();
    drop(open(dir.path()));
    let foreign = dir.path().join("pack").join("00000000000000aa.seg");
    fs::write(&foreign, b"not a segment at all").unwrap();
    let store = open(dir.path());
    store.write("k", &b"v"[..]).unwrap();
    let report = store.scrub();
    assert_eq!(report.bad.len(), 1, "{report:?}");
    assert_eq!(report.bad[0].path, foreign);
    assert_eq!(fs::read(&foreign).unwrap(), b"not a segment at all");
    // A segment of a later format version is refused, not misread.
    drop(store);
    let mut future = fs::read(segments(dir.path())[0].clone()).unwrap();
    future[8] = 9;
    let newer = dir.path().join("pack").join("00000000000000f0.seg");
    fs::write(&newer, future).unwrap();
    let err = open_err(dir.path());
    assert!(
        matches!(err, StoreError::UnsupportedVersion { version: 9, .. }),
        "{err}"
    );
    fs::remove_file(newer).unwrap();
    assert_eq!(read_all(&open(dir.path()), "k"), b"v");
}

#[test]
fn a_segment_whose_header_was_zeroed_is_reported_and_kept() {
    let dir = tempfile::tempdir().unwrap();
    {
        let store = open(dir.path());
        store.write("a", &b"1"[..]).unwrap();
        store.write("b", &b"2"[..]).unwrap();
    }
    let seg = segments(dir.path()).pop().unwrap();
    let mut bytes = fs::read(&seg).unwrap();
    bytes[..16].fill(0);
    fs::write(&seg, &bytes).unwrap();
    let store = open(dir.path());
    assert!(seg.exists(), "a segment with records is never removed");
    assert_eq!(fs::read(&seg).unwrap(), bytes);
    let report = store.scrub();
    assert_eq!(report.bad.len(), 1, "{report:?}");
    assert_eq!(report.bad[0].path, seg);
}

#[test]
fn odd_segment_names_never_panic_or_confuse_the_open() {
    let dir = tempfile::tempdir().unwrap();
    drop(open(dir.path()));
    let pack = dir.path().join("pack");
    // Not the canonical spelling of an id: not a segment.
    fs::write(pack.join("000000000000000A.seg"), b"x").unwrap();
    fs::write(pack.join("+00000000000000a.seg"), b"x").unwrap();
    let store = open(dir.path());
    store.write("k", &b"v"[..]).unwrap();
    assert!(store.scrub().is_clean());
    drop(store);
    // The last id: no id after it, a typed error rather than an overflow.
    fs::write(pack.join("ffffffffffffffff.seg"), b"not ours").unwrap();
    match Store::builder(dir.path()).pack_small_objects(LIMIT).open() {
        Ok(store) => assert_eq!(read_all(&store, "k"), b"v"),
        Err(e) => assert!(e.to_string().contains("exhausted"), "{e}"),
    }
}

#[test]
fn a_directory_or_link_named_like_a_segment_is_reported_and_left_alone() {
    let dir = tempfile::tempdir().unwrap();
    open(dir.path()).write("k", &b"v"[..]).unwrap();
    let pack = dir.path().join("pack");
    fs::create_dir(pack.join("00000000000000aa.seg")).unwrap();
    #[cfg(unix)]
    std::os::unix::fs::symlink(
        segments(dir.path())[0].clone(),
        pack.join("00000000000000ab.seg"),
    )
    .unwrap();
    let store = open(dir.path());
    assert_eq!(read_all(&store, "k"), b"v");
    store.write("k2", &b"v2"[..]).unwrap();
    let bad: Vec<String> = store
        .scrub()
        .bad
        .iter()
        .map(|b| b.error.to_string())
        .collect();
    assert!(
        bad.iter().all(|b| b.contains("not a regular file")) && !bad.is_empty(),
        "{bad:?}"
    );
    drop(store);
    let store = open(dir.path());
    assert_eq!(read_all(&store, "k2"), b"v2");
    assert!(pack.join("00000000000000aa.seg").is_dir());
}

#[test]
fn a_key_moving_during_a_listing_is_listed_once() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let large = vec![1u8; LIMIT as usize + 1];
    store.write("moves-in", &large[..]).unwrap();
    store.write("moves-out", &b"small"[..]).unwrap();
    store.write("stays", &b"s"[..]).unwrap();
    let keys = store.keys();
    store.write("moves-in", &b"now small"[..]).unwrap();
    store.write("moves-out", &large[..]).unwrap();
    let mut listed: Vec<String> = keys.collect::<Result<_, _>>().unwrap();
    listed.sort();
    assert_eq!(listed, ["moves-in", "moves-out", "stays"]);
}

#[test]
fn segments_a_clear_left_behind_never_come_back() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    store.write("old", &b"cleared"[..]).unwrap();
    let old = segments(dir.path());
    let saved: Vec<(PathBuf, Vec<u8>)> = old
        .iter()
        .map(|p| (p.clone(), fs::read(p).unwrap()))
        .collect();
    store.clear().unwrap();
    store.write("new", &b"after"[..]).unwrap();
    drop(store);
    // As if the clear had crashed before removing the old segments.
    for (path, bytes) in saved {
        fs::write(path, bytes).unwrap();
    }
    let store = open(dir.path());
    assert_eq!(sorted_keys(&store), ["new"]);
    assert!(!store.has("old").unwrap());
    for path in old {
        assert!(!path.exists(), "{} was not removed", path.display());
    }
}

/// A store packing objects up to 1 MiB, without fsync (fast to fill).
fn open_big(root: &Path) -> Store {
    Store::builder(root)
        .pack_small_objects(dfs_store::MAX_PACKED)
        .durability(Durability::None)
        .open()
        .unwrap()
}

/// Writes 65 MiB of `filler-*` objects: the segment written to before is sealed.
fn fill(store: &Store) {
    for i in 0..65 {
        store
            .write(&format!("filler-{i}"), &vec![i as u8; 1 << 20][..])
            .unwrap();
    }
}

#[test]
fn a_file_holding_the_next_segment_id_never_stops_the_writes() {
    let dir = tempfile::tempdir().unwrap();
    open_big(dir.path()).write("a", &b"1"[..]).unwrap();
    let foreign = dir.path().join("pack/0000000000000001.seg");
    fs::write(&foreign, b"not ours").unwrap();
    let store = open_big(dir.path());
    fill(&store);
    store.clear().unwrap();
    store.write("b", &b"2"[..]).unwrap();
    drop(store);
    assert_eq!(fs::read(&foreign).unwrap(), b"not ours");
    let store = open_big(dir.path());
    assert_eq!(sorted_keys(&store), ["b"]);
}

#[test]
fn compaction_keeps_a_damaged_object_damaged_never_an_older_version() {
    let dir = tempfile::tempdir().unwrap();
    let older = vec![1u8; (1 << 20) + 1];
    // v1 as its own file (too large for the pack), then v2 packed, then the v1 file put
    // back as a crash right after the packed write would have left it.
    let store = open_big(dir.path());
    store.write("k", &older[..]).unwrap();
    let file = store.path_of("k").unwrap();
    let v1 = fs::read(&file).unwrap();
    store.write("k", &b"v2, packed"[..]).unwrap();
    fill(&store);
    for i in 0..65 {
        store.delete(&format!("filler-{i}")).unwrap();
    }
    drop(store);
    fs::create_dir_all(file.parent().unwrap()).unwrap();
    fs::write(&file, v1).unwrap();
    // Damage v2's bytes in the sealed segment.
    let seg = segments(dir.path()).remove(0);
    let mut bytes = fs::read(&seg).unwrap();
    let at = bytes.windows(10).position(|w| w == b"v2, packed").unwrap();
    bytes[at] ^= 1;
    fs::write(&seg, bytes).unwrap();

    let store = open_big(dir.path());
    let corrupt = |store: &Store| {
        let mut out = Vec::new();
        let err = store.read("k").unwrap().read_to_end(&mut out).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::InvalidData, "{err}");
    };
    corrupt(&store);
    store.compact().unwrap();
    corrupt(&store);
    drop(store);
    let store = open_big(dir.path());
    corrupt(&store);
    assert_eq!(store.scrub().bad.len(), 1);
}

#[test]
fn compacting_a_clearing_segment_leaves_foreign_files_alone() {
    let dir = tempfile::tempdir().unwrap();
    fs::create_dir_all(dir.path().join("pack")).unwrap();
    let foreign = dir.path().join("pack/0000000000000000.seg");
    fs::write(&foreign, b"someone else's").unwrap();
    let store = open_big(dir.path());
    store.write("k", &b"v"[..]).unwrap();
    store.clear().unwrap();
    store.write("k", &b"after"[..]).unwrap();
    fill(&store);
    store.compact().unwrap();
    assert_eq!(fs::read(&foreign).unwrap(), b"someone else's");
    assert_eq!(read_all(&store, "k"), b"after");
}

#[test]
fn a_store_with_a_pack_and_one_without_never_share_a_root() {
    let dir = tempfile::tempdir().unwrap();
    let plain = Store::open(dir.path()).unwrap();
    let second = Store::open(dir.path()).unwrap();
    assert!(matches!(open_err(dir.path()), StoreError::Locked { .. }));
    assert!(!dir.path().join("pack").exists());
    drop((plain, second));
    let packed = open(dir.path());
    assert!(matches!(
        Store::open(dir.path()),
        Err(StoreError::Locked { .. })
    ));
    drop(packed);
    Store::open(dir.path()).unwrap();
}

/// A compaction cut by a crash after its copies were durable, before the segment it
/// copied was removed, leaves two records with one seq. Writes acknowledged after the next
/// open are newer than both and must survive the open after that.
#[test]
fn writes_after_an_interrupted_compaction_survive_the_next_open() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    store.write("k", &b"old"[..]).unwrap();
    store.write("x", &b"1"[..]).unwrap();
    store.write("x", &b"2"[..]).unwrap();
    let first = segments(dir.path()).remove(0);
    let saved = fs::read(&first).unwrap();
    store.compact().unwrap();
    drop(store);
    assert!(!first.exists());
    fs::write(&first, saved).unwrap();

    let store = open(dir.path());
    assert_eq!(read_all(&store, "k"), b"old");
    store.write("k", &b"new"[..]).unwrap();
    assert!(store.delete("x").unwrap());
    drop(store);
    let store = open(dir.path());
    assert_eq!(read_all(&store, "k"), b"new");
    assert!(!store.has("x").unwrap());
    assert!(store.scrub().is_clean());
}

/// An automatic compaction that fails (here: its sealed segment was cut short behind the
/// store's back) never fails the write that ran it; it is reported by `scrub`, writes try
/// again once 64 MiB more were appended, and `compact` returns the error itself.
#[test]
fn a_failed_automatic_compaction_is_reported_and_writes_go_on() {
    let dir = tempfile::tempdir().unwrap();
    let store = open_big(dir.path());
    store.write("keep", &b"kept"[..]).unwrap();
    // Two sealed segments, all dead but "keep".
    let filler = vec![7u8; 1 << 20];
    for i in 0..130 {
        store.write(&format!("filler-{i}"), &filler[..]).unwrap();
    }
    for i in 0..130 {
        store.delete(&format!("filler-{i}")).unwrap();
    }
    let first = segments(dir.path()).remove(0);
    let saved = fs::read(&first).unwrap();
    fs::OpenOptions::new()
        .write(true)
        .open(&first)
        .unwrap()
        .set_len(50)
        .unwrap();
    store.write("x", &b"1"[..]).unwrap(); // runs the compaction, which fails
    store.write("y", &b"2"[..]).unwrap();
    let report = store.scrub();
    let failed: Vec<String> = report
        .bad
        .iter()
        .map(|b| b.error.to_string())
        .filter(|e| e.contains("automatic compaction failed"))
        .collect();
    assert_eq!(failed.len(), 1, "{report:?}");
    assert!(first.exists());
    assert_eq!(read_all(&store, "y"), b"2");

    // Mended (the same file, so the store's open handle sees it): small writes do not try
    // again, the first after 64 MiB more does, and it succeeds.
    fs::write(&first, &saved).unwrap();
    store.write("z", &b"3"[..]).unwrap();
    assert!(first.exists(), "not tried again yet");
    for i in 0..65 {
        store.write(&format!("more-{i}"), &filler[..]).unwrap();
    }
    assert!(!first.exists(), "compacted away");
    assert!(store.scrub().is_clean());
    assert_eq!(read_all(&store, "keep"), b"kept");

    // An explicit compaction reports its failure itself.
    let newest_sealed = segments(dir.path()).remove(0);
    store.write("w", &b"4"[..]).unwrap();
    fs::OpenOptions::new()
        .write(true)
        .open(&newest_sealed)
        .unwrap()
        .set_len(50)
        .unwrap();
    assert!(store.compact().is_err());
}

/// Compactions run in batches, letting the lock go in between: writers, deleters and
/// readers racing them always see their own last acknowledged version, before and after
/// a reopen.
#[test]
fn compactions_racing_writes_and_deletes_keep_every_acknowledged_version() {
    const THREADS: usize = 3;
    const KEYS: usize = 150;
    const ROUNDS: usize = 6;
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(open_big(dir.path()));
    let done = Arc::new(AtomicBool::new(false));
    let compactor = {
        let (store, done) = (Arc::clone(&store), Arc::clone(&done));
        thread::spawn(move || {
            let mut runs = 0;
            while !done.load(Ordering::SeqCst) || runs == 0 {
                store.compact().unwrap();
                runs += 1;
            }
            runs
        })
    };
    let value = |t: usize, k: usize, round: usize| -> Option<Vec<u8>> {
        // Every third version is a delete; sizes vary so records move around.
        (!(t + k + round).is_multiple_of(3)).then(|| vec![(t * 31 + k + round) as u8; 8000 + k])
    };
    let writers: Vec<_> = (0..THREADS)
        .map(|t| {
            let store = Arc::clone(&store);
            thread::spawn(move || {
                for round in 0..ROUNDS {
                    for k in 0..KEYS {
                        let key = format!("t{t}-k{k}");
                        match value(t, k, round) {
                            Some(v) => {
                                store.write(&key, &v[..]).unwrap();
                                assert_eq!(read_all(&store, &key), v, "{key}");
                            }
                            None => {
                                store.delete(&key).unwrap();
                                assert!(!store.has(&key).unwrap(), "{key}");
                            }
                        }
                    }
                }
            })
        })
        .collect();
    for w in writers {
        w.join().unwrap();
    }
    done.store(true, Ordering::SeqCst);
    assert!(compactor.join().unwrap() > 0);
    let check = |store: &Store| {
        for t in 0..THREADS {
            for k in 0..KEYS {
                let key = format!("t{t}-k{k}");
                match value(t, k, ROUNDS - 1) {
                    Some(v) => assert_eq!(read_all(store, &key), v, "{key}"),
                    None => assert!(!store.has(&key).unwrap(), "{key}"),
                }
            }
        }
        assert!(store.scrub().is_clean());
    };
    check(&store);
    drop(Arc::into_inner(store).unwrap());
    check(&open_big(dir.path()));
}

/// A directory or a FIFO with a segment's name, older than a clearing segment: compacting
/// the clearing segment (which removes the older segments a clear left behind) leaves
/// them alone, and never blocks on the FIFO.
#[test]
fn compacting_a_clearing_segment_skips_directories_and_fifos() {
    for kind in ["dir", "fifo"] {
        let dir = tempfile::tempdir().unwrap();
        let pack = dir.path().join("pack");
        fs::create_dir_all(&pack).unwrap();
        let odd = pack.join("0000000000000000.seg");
        if kind == "dir" {
            fs::create_dir(&odd).unwrap();
        } else if !std::process::Command::new("mkfifo")
            .arg(&odd)
            .status()
            .is_ok_and(|s| s.success())
        {
            continue; // no mkfifo here
        }
        let store = Arc::new(open_big(dir.path()));
        store.write("k", &b"v"[..]).unwrap();
        store.clear().unwrap();
        store.write("k", &b"after"[..]).unwrap();
        fill(&store);
        let (tx, rx) = std::sync::mpsc::channel();
        let compactor = {
            let store = Arc::clone(&store);
            thread::spawn(move || tx.send(store.compact().and_then(|()| store.compact())))
        };
        match rx.recv_timeout(std::time::Duration::from_secs(60)) {
            Ok(result) => result.unwrap(),
            Err(_) => {
                // Let the blocked open go, so the test ends, then fail.
                let _ = fs::OpenOptions::new().write(true).open(&odd);
                panic!("compaction blocked on a {kind} with a segment's name");
            }
        }
        compactor.join().unwrap().unwrap(); // the send succeeded
        assert_eq!(read_all(&store, "k"), b"after");
        assert!(fs::symlink_metadata(&odd).is_ok(), "{kind} left alone");
    }
}

/// Writers, deleters, clears, compactions, listings and scrubs all at once (objects
/// large enough that compactions copy in several batches); once all stop, the pack's
/// accounting matches what it holds, each key is listed once, scrub is clean, and a reopen
/// shows the same contents.
#[test]
fn compactions_racing_clears_listings_and_writes_stay_consistent() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(open_big(dir.path()));
    let stop = Arc::new(AtomicBool::new(false));
    let background = |work: fn(&Store)| {
        let (store, stop) = (Arc::clone(&store), Arc::clone(&stop));
        thread::spawn(move || {
            while !stop.load(Ordering::SeqCst) {
                work(&store);
            }
        })
    };
    let compactor = background(|store| store.compact().unwrap());
    let lister = background(|store| {
        let mut keys: Vec<String> = store.keys().filter_map(Result::ok).collect();
        let n = keys.len();
        keys.sort();
        keys.dedup();
        assert_eq!(keys.len(), n, "a key listed twice");
        for bad in store.scrub().bad {
            // An object removed while the scrub went by is fine; damage is not.
            let gone = matches!(
                &bad.error,
                StoreError::Io { source, .. } if source.kind() == ErrorKind::NotFound
            ) || bad.error.is_not_found();
            assert!(gone, "{}", bad.error);
        }
    });
    let writers: Vec<_> = (0..2)
        .map(|t| {
            let store = Arc::clone(&store);
            thread::spawn(move || {
                for round in 0..30 {
                    if t == 0 && round % 10 == 5 {
                        store.clear().unwrap();
                    }
                    for k in 0..30 {
                        let key = format!("t{t}-{k}");
                        if (k + round) % 4 == 0 {
                            store.delete(&key).unwrap();
                            continue;
                        }
                        let v = vec![(round * 7 + k) as u8; 100_000 + k * 1000];
                        store.write(&key, &v[..]).unwrap();
                        // A clear may have removed it since; nothing else may change it.
                        if let Ok(mut reader) = store.read(&key) {
                            let mut out = Vec::new();
                            reader.read_to_end(&mut out).unwrap();
                            assert!(out == v, "{key}");
                        }
                    }
                }
            })
        })
        .collect();
    for w in writers {
        w.join().unwrap();
    }
    stop.store(true, Ordering::SeqCst);
    compactor.join().unwrap();
    lister.join().unwrap();

    let contents = |store: &Store| -> Vec<(String, Vec<u8>)> {
        sorted_keys(store)
            .into_iter()
            .map(|k| {
                let v = read_all(store, &k);
                (k, v)
            })
            .collect()
    };
    let before = contents(&store);
    let stats = store.pack_stats().unwrap();
    let live: usize = before.iter().map(|(k, v)| 72 + k.len() + v.len()).sum();
    assert_eq!(stats.objects as usize, before.len());
    assert_eq!(stats.live_bytes, live as u64, "{stats:?}");
    assert!(stats.live_bytes <= stats.used_bytes);
    assert!(store.scrub().is_clean());
    drop(Arc::into_inner(store).unwrap());
    let store = open_big(dir.path());
    assert!(contents(&store) == before, "the reopened store differs");
    assert!(store.scrub().is_clean());
}

/// A key whose own file would be too long a path (`PlainPath`, a long key) still fits the
/// pack when its object is small: written, read, listed and deleted there like any other,
/// also once the store was moved under a longer root (its packed objects stay readable).
/// Only a write that needs the file is refused.
#[test]
fn small_objects_under_keys_too_long_for_a_path_live_in_the_pack() {
    let dir = tempfile::tempdir().unwrap();
    let open_plain = |root: &Path| {
        Store::builder(root)
            .transform(PlainPath)
            .pack_small_objects(LIMIT)
            .open()
            .unwrap()
    };
    let root = dir.path().join("r");
    let segment = "s".repeat(255);
    let long = vec![segment.as_str(); 16].join("/"); // 4095 bytes, under MAX_KEY_LEN
    // 4000 bytes: a file path under `r` fits, one under a 200-byte longer root does not.
    let moved = {
        let mut key = vec![segment.as_str(); 15].join("/");
        key.push('/');
        key.push_str(&"m".repeat(4000 - key.len()));
        key
    };
    {
        let store = open_plain(&root);
        store
            .write(&moved, &b"written before the move"[..])
            .unwrap();
    }
    let longer = dir.path().join("l".repeat(200));
    fs::rename(&root, &longer).unwrap();
    let store = open_plain(&longer);
    let mut out = Vec::new();
    store.read(&moved).unwrap().read_to_end(&mut out).unwrap();
    assert_eq!(out, b"written before the move");
    assert!(store.has(&moved).unwrap());

    store.write(&long, &b"small"[..]).unwrap();
    let mut out = Vec::new();
    store.read(&long).unwrap().read_to_end(&mut out).unwrap();
    assert_eq!(out, b"small");
    assert_eq!(store.stat(&long).unwrap().size(), 5);
    assert!(store.has(&long).unwrap());
    let err = store
        .write(&long, &[7u8; LIMIT as usize + 1][..])
        .unwrap_err();
    assert!(matches!(err, StoreError::InvalidKey { .. }), "{err:?}");
    assert!(store.delete(&long).unwrap());
    assert!(!store.has(&long).unwrap());
    assert!(store.read(&long).unwrap_err().is_not_found());
    assert!(store.delete(&moved).unwrap());
    assert!(!store.delete(&moved).unwrap());
    assert_eq!(store.keys().count(), 0);
    assert_eq!(fs::read_dir(longer.join("tmp")).unwrap().count(), 0);
}
