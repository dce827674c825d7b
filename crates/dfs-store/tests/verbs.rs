//! One test (or more) per verb.
#![allow(clippy::unwrap_used)] // tests and their helpers panic on failure

mod common;

use std::fs;
use std::io::{self, Read};

use dfs_store::{Durability, HashPath, PathKey, PathTransform, PlainPath, Store, StoreError};

fn read_all(store: &Store<impl PathTransform>, key: &str) -> Vec<u8> {
    let mut out = Vec::new();
    store
        .read(key)
        .expect("open")
        .read_to_end(&mut out)
        .expect("read");
    out
}

#[test]
fn open_creates_layout() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("a/b/store");
    let store = Store::open(&root).unwrap();
    assert!(root.join("objects").is_dir());
    assert!(root.join("tmp").is_dir());
    assert_eq!(store.root(), root);
    // Reopening an existing store is fine and keeps its objects.
    store.write("k", &b"v"[..]).unwrap();
    drop(store);
    let store = Store::open(&root).unwrap();
    assert_eq!(read_all(&store, "k"), b"v");
}

#[test]
fn write_read_round_trip_sizes() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    for len in [0usize, 1, 100, 65_535, 65_536, 65_537, 300_000] {
        let data: Vec<u8> = (0..len).map(|i| (i * 7 % 256) as u8).collect();
        let key = format!("obj-{len}");
        assert_eq!(store.write(&key, &data[..]).unwrap(), len as u64);
        let reader = store.read(&key).unwrap();
        assert_eq!(reader.size(), len as u64);
        assert_eq!(reader.key(), key);
        assert_eq!(read_all(&store, &key), data);
    }
    // Nothing is left in staging.
    assert_eq!(fs::read_dir(dir.path().join("tmp")).unwrap().count(), 0);
}

#[test]
fn read_with_tiny_buffers() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let data: Vec<u8> = (0..100_000u32).map(|i| i as u8).collect();
    store.write("k", &data[..]).unwrap();
    let mut reader = store.read("k").unwrap();
    let mut out = Vec::new();
    let mut buf = [0u8; 7];
    loop {
        let n = reader.read(&mut buf).unwrap();
        if n == 0 {
            break;
        }
        out.extend_from_slice(&buf[..n]);
    }
    assert_eq!(out, data);
}

#[test]
fn overwrite_replaces_whole_object() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    store.write("k", &vec![1u8; 200_000][..]).unwrap();
    store.write("k", &b"short"[..]).unwrap();
    assert_eq!(read_all(&store, "k"), b"short");
    assert_eq!(store.keys().count(), 1);
}

#[test]
fn not_found_everywhere() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    assert!(matches!(store.read("nope"), Err(StoreError::NotFound { key }) if key == "nope"));
    assert!(store.stat("nope").unwrap_err().is_not_found());
    assert!(store.verify("nope").unwrap_err().is_not_found());
    assert!(!store.has("nope").unwrap());
    assert!(!store.delete("nope").unwrap());
}

#[test]
fn has_stat() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    store.write("k", &b"12345"[..]).unwrap();
    assert!(store.has("k").unwrap());
    let meta = store.stat("k").unwrap();
    assert_eq!(meta.key(), "k");
    assert_eq!(meta.size(), 5);
    assert_eq!(meta.hash(), blake3::hash(b"12345").as_bytes());
    assert_eq!(meta.path(), store.path_of("k").unwrap());
}

#[test]
fn delete_prunes_only_empty_dirs() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open_with(dir.path(), PlainPath).unwrap();
    store.write("a/b/c/one", &b"1"[..]).unwrap();
    store.write("a/b/two", &b"2"[..]).unwrap();
    store.write("a/x/three", &b"3"[..]).unwrap();
    assert!(store.delete("a/b/c/one").unwrap());
    let objects = dir.path().join("objects");
    assert!(!objects.join("a/b/c").exists(), "empty dir pruned");
    assert!(objects.join("a/b/two").is_file(), "sibling kept");
    assert!(objects.join("a/x/three").is_file(), "unrelated kept");
    assert!(store.delete("a/b/two").unwrap());
    assert!(!objects.join("a/b").exists());
    assert!(objects.join("a/x/three").is_file());
    assert!(store.delete("a/x/three").unwrap());
    assert!(!objects.join("a").exists());
    assert!(objects.is_dir(), "objects dir itself is never pruned");
    // Works again after pruning.
    store.write("a/b/c/one", &b"1"[..]).unwrap();
    assert_eq!(read_all(&store, "a/b/c/one"), b"1");
}

#[test]
fn delete_hash_layout_keeps_other_objects() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    for i in 0..50 {
        store.write(&format!("k{i}"), &b"x"[..]).unwrap();
    }
    for i in 0..25 {
        assert!(store.delete(&format!("k{i}")).unwrap());
    }
    let mut keys: Vec<String> = store.keys().collect::<Result<_, _>>().unwrap();
    keys.sort();
    let mut expected: Vec<String> = (25..50).map(|i| format!("k{i}")).collect();
    expected.sort();
    assert_eq!(keys, expected);
    for i in 25..50 {
        store.verify(&format!("k{i}")).unwrap();
    }
}

#[test]
fn clear_removes_everything() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    for i in 0..10 {
        store.write(&format!("k{i}"), &b"x"[..]).unwrap();
    }
    store.clear().unwrap();
    assert_eq!(store.keys().count(), 0);
    assert!(!store.has("k1").unwrap());
    assert_eq!(fs::read_dir(dir.path().join("tmp")).unwrap().count(), 0);
    store.write("k1", &b"again"[..]).unwrap();
    assert_eq!(read_all(&store, "k1"), b"again");
}

#[test]
fn keys_and_objects_list_everything() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let mut expected = Vec::new();
    for i in 0..100 {
        let key = format!("dir/{i}/file name ✓");
        store.write(&key, &vec![0u8; i][..]).unwrap();
        expected.push(key);
    }
    expected.sort();
    let mut keys: Vec<String> = store.keys().collect::<Result<_, _>>().unwrap();
    keys.sort();
    assert_eq!(keys, expected);
    let total: u64 = store.objects().map(|m| m.unwrap().size()).sum();
    assert_eq!(total, (0..100).sum::<u64>());
}

#[test]
fn verify_and_scrub_clean() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    for i in 0..5 {
        store
            .write(&format!("k{i}"), &vec![i as u8; 100_000][..])
            .unwrap();
        store.verify(&format!("k{i}")).unwrap();
    }
    let report = store.scrub();
    assert_eq!(report.checked, 5);
    assert!(report.is_clean(), "{report:?}");
}

#[test]
fn durability_none_still_atomic_and_readable() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::builder(dir.path())
        .durability(Durability::None)
        .open()
        .unwrap();
    store.write("k", &b"v"[..]).unwrap();
    assert_eq!(read_all(&store, "k"), b"v");
    assert!(store.delete("k").unwrap());
    store.clear().unwrap();
}

#[test]
fn invalid_keys_write_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open_with(dir.path().join("root"), PlainPath).unwrap();
    let long = "x".repeat(5000);
    for key in [
        "", "/abs", "a/../b", "..", ".", "a/./b", "a//b", "a/", "..\\x", "a\0b", "a\nb", "C:x",
        &long,
    ] {
        let err = store.write(key, &b"data"[..]).unwrap_err();
        assert!(
            matches!(err, StoreError::InvalidKey { .. }),
            "{key:?}: {err:?}"
        );
        assert!(store.read(key).is_err());
        assert!(store.has(key).is_err());
        assert!(store.delete(key).is_err());
    }
    assert!(common::written_under(&dir.path().join("root")).is_empty());
    // Hash layout: only empty and over-long keys are refused.
    let hashed = Store::open(dir.path().join("hashed")).unwrap();
    assert!(hashed.write("", &b""[..]).is_err());
    assert!(hashed.write(&long, &b""[..]).is_err());
    hashed.write("../../etc/passwd\0", &b"ok"[..]).unwrap();
    assert_eq!(read_all(&hashed, "../../etc/passwd\0"), b"ok");
}

/// A transform that returns whatever it was built with.
#[derive(Debug)]
struct Evil(Vec<String>, String);

impl PathTransform for Evil {
    fn transform(&self, _key: &str) -> dfs_store::Result<PathKey> {
        // Build it the only public way, then smuggle bad segments through a trait object
        // of our own making: `PathKey::new` refuses, so an evil transform can only return
        // an error or a valid location.
        PathKey::new(self.0.clone(), self.1.clone()).map_err(|e| StoreError::InvalidLocation {
            key: "?".into(),
            reason: e.to_string(),
        })
    }
}

#[test]
fn user_transforms_are_revalidated() {
    let dir = tempfile::tempdir().unwrap();
    for (dirs, file) in [
        (vec![".."], "x"),
        (vec!["ok"], ".."),
        (vec!["/etc"], "x"),
        (vec![""], "x"),
        (vec!["a"], ""),
    ] {
        let store = Store::open_with(
            dir.path().join("root"),
            Evil(dirs.iter().map(|s| s.to_string()).collect(), file.into()),
        )
        .unwrap();
        assert!(store.write("k", &b"x"[..]).is_err());
    }
    assert!(common::written_under(&dir.path().join("root")).is_empty());
    assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 1);
}

#[test]
fn hash_path_layout_and_config() {
    let layout = HashPath::new(4, 3).unwrap();
    let loc = layout.transform("key").unwrap();
    let hex = blake3::hash(b"key").to_hex().to_string();
    assert_eq!(loc.dirs(), [&hex[0..4], &hex[4..8], &hex[8..12]]);
    assert_eq!(loc.file_name(), hex);
    assert!(HashPath::new(0, 1).is_err());
    assert!(HashPath::new(65, 1).is_err());
    assert!(HashPath::new(8, 8).is_ok());
    let flat = HashPath::new(1, 0).unwrap();
    assert!(flat.transform("k").unwrap().dirs().is_empty());
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open_with(dir.path(), layout).unwrap();
    store.write("key", &b"v"[..]).unwrap();
    assert!(
        dir.path()
            .join("objects")
            .join(&hex[0..4])
            .join(&hex[4..8])
            .join(&hex[8..12])
            .join(&hex)
            .is_file()
    );
}

#[test]
fn plain_path_conflicts_are_errors_not_losses() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open_with(dir.path(), PlainPath).unwrap();
    store.write("a", &b"file"[..]).unwrap();
    assert!(store.write("a/b", &b"under a file"[..]).is_err());
    store.write("d/e", &b"deep"[..]).unwrap();
    assert!(store.write("d", &b"over a dir"[..]).is_err());
    assert_eq!(read_all(&store, "a"), b"file");
    assert_eq!(read_all(&store, "d/e"), b"deep");
    // Looking below a file is "not found", not an I/O error.
    assert!(!store.has("a/b").unwrap());
    assert!(store.read("a/b").unwrap_err().is_not_found());
    assert!(!store.delete("a/b").unwrap());
    assert_eq!(fs::read_dir(dir.path().join("tmp")).unwrap().count(), 0);
}

/// A source that yields some bytes then fails.
struct Failing(usize);

impl Read for Failing {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.0 == 0 {
            return Err(io::Error::new(
                io::ErrorKind::StorageFull,
                "no space left on device",
            ));
        }
        let n = buf.len().min(self.0);
        buf[..n].fill(9);
        self.0 -= n;
        Ok(n)
    }
}

#[test]
fn failing_source_commits_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    store.write("k", &b"previous"[..]).unwrap();
    for after in [0, 10, 200_000] {
        let err = store.write("k", Failing(after)).unwrap_err();
        match err {
            StoreError::Source { key, source } => {
                assert_eq!(key, "k");
                assert_eq!(source.kind(), io::ErrorKind::StorageFull);
            }
            other => panic!("unexpected {other:?}"),
        }
        assert_eq!(read_all(&store, "k"), b"previous");
        assert!(!store.has("other").unwrap());
        assert!(store.write("other", Failing(after)).is_err());
        assert!(!store.has("other").unwrap());
    }
    assert_eq!(fs::read_dir(dir.path().join("tmp")).unwrap().count(), 0);
}

#[test]
fn store_and_reader_are_send_sync_static() {
    fn send_sync<T: Send + Sync>() {}
    fn send_static<T: Send + 'static>() {}
    send_sync::<Store>();
    send_sync::<Store<PlainPath>>();
    send_static::<dfs_store::ObjectReader>();
    send_static::<dfs_store::Keys>();
    send_sync::<StoreError>();
}

#[test]
fn errors_have_context() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open_with(dir.path(), PlainPath).unwrap();
    let msg = store.write("../x", &b""[..]).unwrap_err().to_string();
    assert!(msg.contains("../x"), "{msg}");
    let msg = store.read("missing").unwrap_err().to_string();
    assert!(msg.contains("missing"), "{msg}");
}

/// `PlainPath` on a case-insensitive file system (macOS, Windows): `Photo` and `photo`
/// are one file. Simulated on any file system by a transform that folds case.
#[derive(Debug)]
struct CaseInsensitive;

impl PathTransform for CaseInsensitive {
    fn transform(&self, key: &str) -> dfs_store::Result<PathKey> {
        PlainPath.transform(&key.to_lowercase())
    }
}

#[test]
fn keys_sharing_a_file_never_replace_or_delete_each_other() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open_with(dir.path(), CaseInsensitive).unwrap();
    store.write("dir/photo", &b"lower"[..]).unwrap();
    // Writing the other key must not replace the stored object...
    let err = store.write("dir/Photo", &b"upper"[..]).unwrap_err();
    assert!(
        matches!(&err, StoreError::InvalidKey { key, .. } if key == "dir/Photo"),
        "{err:?}"
    );
    assert_eq!(read_all(&store, "dir/photo"), b"lower");
    // ...nor deleting it remove it: nothing is stored under that key.
    assert!(!store.delete("dir/PHOTO").unwrap());
    assert_eq!(read_all(&store, "dir/photo"), b"lower");
    assert!(store.read("dir/PHOTO").is_err());
    assert_eq!(fs::read_dir(dir.path().join("tmp")).unwrap().count(), 0);
    // The key's own verbs still work.
    store.write("dir/photo", &b"again"[..]).unwrap();
    assert_eq!(read_all(&store, "dir/photo"), b"again");
    assert!(store.delete("dir/photo").unwrap());
    // A misplaced copy of another key's object (at a location not its own) is no
    // object of that key: the location's key may replace it.
    store.write("x", &b"x"[..]).unwrap();
    fs::copy(dir.path().join("objects/x"), dir.path().join("objects/y")).unwrap();
    store.write("y", &b"y"[..]).unwrap();
    assert_eq!(read_all(&store, "y"), b"y");
}

/// A `PlainPath` key whose file would be too long a path for the system is refused up
/// front as an invalid key: no late I/O error after the source was staged, no empty
/// directories left behind, and looking it up is "invalid", not an I/O failure.
#[test]
fn keys_too_long_for_a_path_are_refused_up_front() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open_with(dir.path(), PlainPath).unwrap();
    let segment = "s".repeat(255);
    let key = vec![segment.as_str(); 16].join("/"); // 4095 bytes, under MAX_KEY_LEN
    let invalid = |r: Result<_, StoreError>| matches!(r, Err(StoreError::InvalidKey { .. }));
    assert!(invalid(store.write(&key, &b"v"[..]).map(drop)));
    assert!(invalid(store.read(&key).map(drop)));
    assert!(invalid(store.has(&key).map(drop)));
    assert!(invalid(store.delete(&key).map(drop)));
    assert_eq!(fs::read_dir(dir.path().join("objects")).unwrap().count(), 0);
    assert_eq!(fs::read_dir(dir.path().join("tmp")).unwrap().count(), 0);
}
