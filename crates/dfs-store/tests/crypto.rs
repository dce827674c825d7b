//! Encrypted writes and reads (feature `crypto`).
#![cfg(feature = "crypto")]
#![allow(clippy::unwrap_used)] // tests and their helpers panic on failure

use std::fs;
use std::io::{self, Read};

use dfs_crypto::{Aes256Ctr, Aes256CtrBlake3, Cipher, Key};
use dfs_store::{Store, StoreError};

fn round_trip<C: Cipher>(cipher: &C) {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    for len in [0usize, 1, 65_536, 300_001] {
        let data: Vec<u8> = (0..len).map(|i| (i % 253) as u8).collect();
        let key = format!("k{len}");
        assert_eq!(
            store.write_encrypted(&key, &data[..], cipher).unwrap(),
            len as u64
        );
        let meta = store.stat(&key).unwrap();
        assert_eq!(meta.size(), cipher.ciphertext_len(len as u64));
        // Stored bytes are not the plaintext.
        if len > 16 {
            let raw = fs::read(meta.path()).unwrap();
            assert!(!raw.windows(16).any(|w| w == &data[..16]));
        }
        store.verify(&key).unwrap();
        let mut reader = store.read_decrypted(&key, cipher).unwrap();
        assert_eq!(reader.size(), len as u64);
        assert_eq!(reader.key(), key);
        let mut out = Vec::new();
        reader.read_to_end(&mut out).unwrap();
        assert_eq!(out, data);
    }
}

#[test]
fn aes256ctr_round_trip() {
    round_trip(&Aes256Ctr::new(&Key::generate().unwrap()));
}

#[test]
fn authenticated_round_trip() {
    round_trip(&Aes256CtrBlake3::new(&Key::generate().unwrap()));
}

#[test]
fn damaged_ciphertext_never_decrypts_successfully() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let key = Key::generate().unwrap();
    let ctr = Aes256Ctr::new(&key);
    let auth = Aes256CtrBlake3::new(&key);
    let data = vec![42u8; 200_000];
    store.write_encrypted("ctr", &data[..], &ctr).unwrap();
    store.write_encrypted("auth", &data[..], &auth).unwrap();
    for k in ["ctr", "auth"] {
        let path = store.path_of(k).unwrap();
        let mut bytes = fs::read(&path).unwrap();
        let i = bytes.len() - 1000;
        bytes[i] ^= 0x80;
        fs::write(&path, bytes).unwrap();
    }
    let mut out = Vec::new();
    assert!(
        store
            .read_decrypted("ctr", &ctr)
            .unwrap()
            .read_to_end(&mut out)
            .is_err()
    );
    out.clear();
    assert!(
        store
            .read_decrypted("auth", &auth)
            .unwrap()
            .read_to_end(&mut out)
            .is_err()
    );
}

#[test]
fn wrong_key_fails_for_authenticated_cipher() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let right = Aes256CtrBlake3::new(&Key::generate().unwrap());
    let wrong = Aes256CtrBlake3::new(&Key::generate().unwrap());
    store.write_encrypted("k", &b"secret"[..], &right).unwrap();
    let mut out = Vec::new();
    assert!(
        store
            .read_decrypted("k", &wrong)
            .unwrap()
            .read_to_end(&mut out)
            .is_err()
    );
}

#[test]
fn missing_key_and_failing_source() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let cipher = Aes256Ctr::new(&Key::generate().unwrap());
    assert!(
        store
            .read_decrypted("nope", &cipher)
            .unwrap_err()
            .is_not_found()
    );
    struct Broken;
    impl Read for Broken {
        fn read(&mut self, _: &mut [u8]) -> io::Result<usize> {
            Err(io::Error::other("boom"))
        }
    }
    let err = store.write_encrypted("k", Broken, &cipher).unwrap_err();
    assert!(
        matches!(err, StoreError::Source { .. } | StoreError::Crypto { .. }),
        "{err:?}"
    );
    assert!(!store.has("k").unwrap());
}
