//! Property tests: HashPath round-trips any key; PlainPath never escapes the root.
#![allow(clippy::unwrap_used)] // tests and their helpers panic on failure

mod common;

use std::fs;
use std::io::Read;
use std::path::{Component, Path};

use dfs_store::{Durability, HashPath, PathTransform, PlainPath, Store};
use proptest::prelude::*;

fn fast_store<P: PathTransform>(root: &Path, transform: P) -> Store<P> {
    Store::builder(root)
        .transform(transform)
        .durability(Durability::None)
        .open()
        .expect("open store")
}

/// Building blocks for adversarial keys.
fn adversarial_key() -> impl Strategy<Value = String> {
    let piece = prop_oneof![
        Just("..".to_string()),
        Just(".".to_string()),
        Just("/".to_string()),
        Just("\\".to_string()),
        Just("..\\".to_string()),
        Just("../".to_string()),
        Just("C:".to_string()),
        Just("\0".to_string()),
        Just("\n".to_string()),
        Just("\u{2024}\u{2024}".to_string()), // one-dot leaders look like ".."
        Just("\u{ff0e}\u{ff0e}".to_string()), // fullwidth full stops
        Just("\u{2215}".to_string()),         // division slash
        Just("\u{2044}".to_string()),         // fraction slash
        Just("\u{202e}".to_string()),         // right-to-left override
        Just("~".to_string()),
        Just("tmp".to_string()),
        Just("objects".to_string()),
        "[a-z]{1,8}",
        "\\PC{1,4}",
        "[a-z]{250,300}",
    ];
    prop::collection::vec(piece, 1..12).prop_map(|pieces| pieces.concat())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 128, ..ProptestConfig::default() })]

    #[test]
    fn hash_path_round_trips_any_key(key in "\\PC{1,200}", width in 1usize..5, depth in 0usize..4) {
        let layout = HashPath::new(width, depth).unwrap();
        let a = layout.transform(&key).unwrap();
        let b = layout.transform(&key).unwrap();
        prop_assert_eq!(&a, &b);
        prop_assert_eq!(a.dirs().len(), depth);
        for d in a.dirs() {
            prop_assert_eq!(d.len(), width);
            prop_assert!(d.chars().all(|c| c.is_ascii_hexdigit()));
        }
        let dir = tempfile::tempdir().unwrap();
        let store = fast_store(dir.path(), layout);
        store.write(&key, key.as_bytes()).unwrap();
        let mut reader = store.read(&key).unwrap();
        prop_assert_eq!(reader.key(), key.as_str());
        let mut out = Vec::new();
        reader.read_to_end(&mut out).unwrap();
        prop_assert_eq!(&out, key.as_bytes());
        let keys: Vec<String> = store.keys().collect::<Result<_, _>>().unwrap();
        prop_assert_eq!(keys, vec![key.clone()]);
    }

    #[test]
    fn hash_path_different_keys_different_files(a in "\\PC{1,50}", b in "\\PC{1,50}") {
        prop_assume!(a != b);
        let t = HashPath::default();
        prop_assert_ne!(t.transform(&a).unwrap(), t.transform(&b).unwrap());
    }

    #[test]
    fn plain_path_never_escapes(key in adversarial_key()) {
        let outer = tempfile::tempdir().unwrap();
        let root = outer.path().join("root");
        let store = fast_store(&root, PlainPath);
        match PlainPath.transform(&key) {
            Ok(loc) => {
                // Only normal components, no separators hidden in a segment.
                for c in loc.to_path_buf().components() {
                    prop_assert!(matches!(c, Component::Normal(_)), "{:?}", c);
                }
                let path = store.path_of(&key).unwrap();
                prop_assert!(path.starts_with(root.join("objects")));
                let _ = store.write(&key, &b"x"[..]);
            }
            Err(_) => {
                prop_assert!(store.write(&key, &b"x"[..]).is_err());
                prop_assert!(store.path_of(&key).is_err());
            }
        }
        // Whatever happened, nothing exists outside the root...
        let outside: Vec<_> = fs::read_dir(outer.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
        prop_assert_eq!(outside, vec![std::ffi::OsString::from("root")]);
        // ...and everything inside is under objects/ (tmp is empty), but the root's lock.
        for f in common::files_under(&root) {
            prop_assert!(f.starts_with(root.join("objects")) || f == root.join("lock"), "{:?}", f);
        }
    }

    #[test]
    fn plain_path_keys_round_trip(segments in prop::collection::vec("[a-zA-Z0-9 _.-]{1,20}", 1..5)) {
        let key = segments.join("/");
        prop_assume!(segments.iter().all(|s| s != "." && s != ".."));
        let dir = tempfile::tempdir().unwrap();
        let store = fast_store(dir.path(), PlainPath);
        store.write(&key, &b"v"[..]).unwrap();
        prop_assert!(dir.path().join("objects").join(&key).is_file());
        let keys: Vec<String> = store.keys().collect::<Result<_, _>>().unwrap();
        prop_assert_eq!(keys, vec![key.clone()]);
        prop_assert!(store.delete(&key).unwrap());
        prop_assert_eq!(fs::read_dir(dir.path().join("objects")).unwrap().count(), 0);
    }
}
