//! Every way of damaging an `Aes256CtrBlake3` ciphertext is detected with a typed error, and
//! decryption never releases unverified plaintext.
#![allow(clippy::unwrap_used)]

use std::io::{Read, Write};

use dfs_crypto::{Aes256Ctr, Aes256CtrBlake3, Cipher, CryptoError, HEADER_LEN, Key, TAG_LEN};
use proptest::prelude::*;

const CHUNK: usize = 32;
const RECORD: usize = CHUNK + TAG_LEN;

fn cipher() -> Aes256CtrBlake3 {
    Aes256CtrBlake3::new(&Key::from_bytes([1; 32]))
        .with_chunk_size(CHUNK)
        .unwrap()
}

fn plaintext(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i * 13 + 1) as u8).collect()
}

fn seal(cipher: &Aes256CtrBlake3, data: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    cipher.encrypt(data, &mut out).unwrap();
    out
}

/// Decrypts with the provided `decrypt`, through a `StreamReader` and through a
/// `StreamWriter`; all three must fail the same way and release only a verified prefix.
fn open_err(cipher: &Aes256CtrBlake3, sealed: &[u8], plain: &[u8]) -> CryptoError {
    let mut out = Vec::new();
    let err = cipher.decrypt(sealed, &mut out).unwrap_err();
    assert!(out.len().is_multiple_of(CHUNK), "released a partial chunk");
    assert_eq!(
        out,
        plain[..out.len()],
        "released bytes that are not the plaintext"
    );

    let mut out2 = Vec::new();
    let io_err = cipher
        .decrypt_reader(sealed)
        .read_to_end(&mut out2)
        .unwrap_err();
    assert_eq!(
        format!("{:?}", CryptoError::from(io_err)),
        format!("{err:?}")
    );
    assert_eq!(out2, out);

    let mut writer = cipher.decrypt_writer(Vec::new());
    let result = writer
        .write_all(sealed)
        .and_then(|()| writer.finish().map(drop));
    let io_err = result.unwrap_err();
    assert_eq!(
        format!("{:?}", CryptoError::from(io_err)),
        format!("{err:?}")
    );
    err
}

#[test]
fn flipped_bit_in_each_chunk() {
    let c = cipher();
    let plain = plaintext(3 * CHUNK + 5);
    let sealed = seal(&c, &plain);
    for pos in HEADER_LEN..sealed.len() {
        let mut bad = sealed.clone();
        bad[pos] ^= 0x10;
        let chunk = ((pos - HEADER_LEN) / RECORD) as u64;
        let err = open_err(&c, &bad, &plain);
        assert!(
            matches!(err, CryptoError::Authentication { chunk: c } if c == chunk),
            "pos {pos}: {err:?}"
        );
    }
}

#[test]
fn header_damage() {
    let c = cipher();
    let plain = plaintext(50);
    let sealed = seal(&c, &plain);
    for pos in 0..HEADER_LEN {
        let mut bad = sealed.clone();
        bad[pos] ^= 0x01;
        let err = open_err(&c, &bad, &plain);
        let ok = match pos {
            0..4 => matches!(err, CryptoError::BadHeader { .. }),
            // 2 ^ 1: a version from the future.
            4 => matches!(err, CryptoError::UnsupportedVersion { version: 3 }),
            5..8 => matches!(err, CryptoError::BadHeader { .. }),
            // Chunk size: 32 ^ 1 = 33 is not a multiple of 16; higher bytes give a multiple
            // of 16 that is out of range or wrong, so the tags fail.
            8..12 => matches!(
                err,
                CryptoError::BadHeader { .. } | CryptoError::Authentication { chunk: 0 }
            ),
            _ => matches!(err, CryptoError::Authentication { chunk: 0 }),
        };
        assert!(ok, "pos {pos}: {err:?}");
    }
}

#[test]
fn wrong_version() {
    let c = cipher();
    let plain = plaintext(10);
    let sealed = seal(&c, &plain);
    // Version 1 is still read: relabelling to it fails the tags instead (`tests/format.rs`).
    for version in [0, 3, 0x80, 0xff] {
        let mut bad = sealed.clone();
        bad[4] = version;
        let err = open_err(&c, &bad, &plain);
        assert!(
            matches!(err, CryptoError::UnsupportedVersion { version: v } if v == version),
            "{err:?}"
        );
    }
}

#[test]
fn short_header() {
    let c = cipher();
    let plain = plaintext(10);
    let sealed = seal(&c, &plain);
    for len in 0..HEADER_LEN {
        let err = open_err(&c, &sealed[..len], &plain);
        assert!(
            matches!(err, CryptoError::ShortHeader { got, expected: HEADER_LEN } if got == len),
            "{err:?}"
        );
    }
}

#[test]
fn every_truncation() {
    let c = cipher();
    let plain = plaintext(3 * CHUNK + 7);
    let sealed = seal(&c, &plain);
    for len in HEADER_LEN..sealed.len() {
        let err = open_err(&c, &sealed[..len], &plain);
        let body = len - HEADER_LEN;
        if body.is_multiple_of(RECORD) {
            // Cut at a chunk boundary: the stream lacks its final chunk.
            let missing = (body / RECORD) as u64;
            assert!(
                matches!(err, CryptoError::Truncated { chunk } if chunk == missing),
                "len {len}: {err:?}"
            );
        } else {
            assert!(
                matches!(
                    err,
                    CryptoError::Truncated { .. } | CryptoError::Authentication { .. }
                ),
                "len {len}: {err:?}"
            );
        }
    }
}

#[test]
fn truncated_to_a_full_final_looking_chunk() {
    // Plaintext of exactly two chunks: dropping the second leaves a full first record that
    // is not marked last.
    let c = cipher();
    let plain = plaintext(2 * CHUNK);
    let sealed = seal(&c, &plain);
    let err = open_err(&c, &sealed[..HEADER_LEN + RECORD], &plain);
    assert!(
        matches!(err, CryptoError::Truncated { chunk: 1 }),
        "{err:?}"
    );
}

#[test]
fn reordered_chunks() {
    let c = cipher();
    let plain = plaintext(3 * CHUNK + 1);
    let sealed = seal(&c, &plain);
    let mut bad = sealed.clone();
    let (a, b) = (HEADER_LEN, HEADER_LEN + RECORD);
    let first = sealed[a..a + RECORD].to_vec();
    bad.copy_within(b..b + RECORD, a);
    bad[b..b + RECORD].copy_from_slice(&first);
    let err = open_err(&c, &bad, &plain);
    assert!(
        matches!(err, CryptoError::Authentication { chunk: 0 }),
        "{err:?}"
    );
}

#[test]
fn dropped_chunk() {
    let c = cipher();
    let plain = plaintext(3 * CHUNK + 1);
    let sealed = seal(&c, &plain);
    let mut bad = sealed[..HEADER_LEN + RECORD].to_vec();
    bad.extend_from_slice(&sealed[HEADER_LEN + 2 * RECORD..]);
    let err = open_err(&c, &bad, &plain);
    assert!(
        matches!(err, CryptoError::Authentication { chunk: 1 }),
        "{err:?}"
    );
}

#[test]
fn chunk_spliced_from_another_file() {
    let c = cipher();
    let plain = plaintext(3 * CHUNK + 1);
    let sealed = seal(&c, &plain);
    // Same key, same plaintext, different nonce.
    let other = seal(&c, &plain);
    let mut bad = sealed.clone();
    let at = HEADER_LEN + RECORD;
    bad[at..at + RECORD].copy_from_slice(&other[at..at + RECORD]);
    let err = open_err(&c, &bad, &plain);
    assert!(
        matches!(err, CryptoError::Authentication { chunk: 1 }),
        "{err:?}"
    );
    // Whole tail of another file after our first chunk.
    let mut bad = sealed[..at].to_vec();
    bad.extend_from_slice(&other[at..]);
    let err = open_err(&c, &bad, &plain);
    assert!(
        matches!(err, CryptoError::Authentication { chunk: 1 }),
        "{err:?}"
    );
}

#[test]
fn appended_bytes() {
    let c = cipher();
    // Full final chunk: the appended bytes are reported as trailing data.
    let plain = plaintext(2 * CHUNK);
    let sealed = seal(&c, &plain);
    for extra in [1usize, 5, TAG_LEN, RECORD, 3 * RECORD] {
        let mut bad = sealed.clone();
        bad.extend(std::iter::repeat_n(0xaa, extra));
        let err = open_err(&c, &bad, &plain);
        assert!(
            matches!(err, CryptoError::TrailingData { chunk: 1 }),
            "{extra}: {err:?}"
        );
    }
    // Short final chunk: the extra bytes change its length, so its tag fails.
    let plain = plaintext(2 * CHUNK + 3);
    let sealed = seal(&c, &plain);
    for extra in [1usize, 5, 40] {
        let mut bad = sealed.clone();
        bad.extend(std::iter::repeat_n(0, extra));
        let err = open_err(&c, &bad, &plain);
        assert!(
            matches!(
                err,
                CryptoError::Authentication { chunk: 2 } | CryptoError::TrailingData { chunk: 2 }
            ),
            "{extra}: {err:?}"
        );
    }
    // A second complete file appended after the first.
    let mut bad = sealed.clone();
    bad.extend_from_slice(&seal(&c, b"more"));
    assert!(open_err(&c, &bad, &plain).to_string().contains("chunk 2"));
}

#[test]
fn wrong_key() {
    let plain = plaintext(100);
    let sealed = seal(&cipher(), &plain);
    let other = Aes256CtrBlake3::new(&Key::from_bytes([2; 32]));
    let err = other.decrypt(&sealed[..], &mut Vec::new()).unwrap_err();
    assert!(
        matches!(err, CryptoError::Authentication { chunk: 0 }),
        "{err:?}"
    );
}

#[test]
fn empty_plaintext_is_one_authenticated_chunk() {
    let c = cipher();
    let sealed = seal(&c, b"");
    assert_eq!(sealed.len(), HEADER_LEN + TAG_LEN);
    let err = open_err(&c, &sealed[..HEADER_LEN], b"");
    assert!(
        matches!(err, CryptoError::Truncated { chunk: 0 }),
        "{err:?}"
    );
}

#[test]
fn poisoned_after_error() {
    let c = cipher();
    let plain = plaintext(100);
    let mut sealed = seal(&c, &plain);
    sealed[HEADER_LEN] ^= 1;
    let mut reader = c.decrypt_reader(&sealed[..]);
    let mut buf = [0u8; 16];
    assert!(reader.read(&mut buf).is_err());
    let again = CryptoError::from(reader.read(&mut buf).unwrap_err());
    assert!(matches!(again, CryptoError::Poisoned), "{again:?}");
}

#[test]
fn plaintext_len_rejects_impossible_lengths() {
    let c = cipher();
    for len in 0..(HEADER_LEN + 4 * RECORD) as u64 {
        match c.plaintext_len(len) {
            Ok(p) => assert_eq!(c.ciphertext_len(p), len),
            Err(e) => assert!(matches!(e, CryptoError::InvalidLength { .. })),
        }
    }
}

#[test]
fn ctr_is_malleable_as_documented() {
    let c = Aes256Ctr::new(&Key::from_bytes([3; 32]));
    let mut sealed = Vec::new();
    c.encrypt(&b"pay 100"[..], &mut sealed).unwrap();
    sealed[16 + 4] ^= b'1' ^ b'9';
    let mut out = Vec::new();
    c.decrypt(&sealed[..], &mut out).unwrap();
    assert_eq!(out, b"pay 900");
}

#[cfg(feature = "tokio")]
#[tokio::test]
async fn async_adapters_detect_tampering() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let c = cipher();
    let plain = plaintext(200);
    let mut sealed = Vec::new();
    let mut w = c.encrypt_async_writer(&mut sealed).unwrap();
    w.write_all(&plain).await.unwrap();
    w.shutdown().await.unwrap();
    let mut out = Vec::new();
    c.decrypt_async_reader(&sealed[..])
        .read_to_end(&mut out)
        .await
        .unwrap();
    assert_eq!(out, plain);

    sealed[HEADER_LEN + RECORD + 3] ^= 4;
    let mut out = Vec::new();
    let err = c
        .decrypt_async_reader(&sealed[..])
        .read_to_end(&mut out)
        .await
        .unwrap_err();
    assert!(matches!(
        CryptoError::from(err),
        CryptoError::Authentication { chunk: 1 }
    ));
    assert_eq!(out, plain[..CHUNK]);

    let mut sink = Vec::new();
    let mut w = c.decrypt_async_writer(&mut sink);
    let result = async {
        w.write_all(&sealed[..sealed.len() - 1]).await?;
        w.shutdown().await
    }
    .await;
    assert!(result.is_err());
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 128, ..ProptestConfig::default() })]

    /// Random damage (bit flips, cuts, insertions) never panics and never decrypts.
    #[test]
    fn random_damage_is_always_an_error(
        len in 0usize..200,
        flips in proptest::collection::vec((any::<prop::sample::Index>(), 1u8..=255), 0..3),
        cut in proptest::option::of(any::<prop::sample::Index>()),
        insert in proptest::option::of((any::<prop::sample::Index>(), any::<u8>())),
    ) {
        let c = cipher();
        let plain = plaintext(len);
        let sealed = seal(&c, &plain);
        let mut bad = sealed.clone();
        for (at, mask) in &flips {
            let i = at.index(bad.len());
            bad[i] ^= mask;
        }
        if let Some(at) = cut {
            bad.truncate(at.index(bad.len()));
        }
        if let Some((at, byte)) = insert {
            let i = at.index(bad.len() + 1);
            bad.insert(i, byte);
        }
        prop_assume!(bad != sealed);
        let mut out = Vec::new();
        let result = c.decrypt(&bad[..], &mut out);
        prop_assert!(result.is_err());
        prop_assert_eq!(&out[..], &plain[..out.len()]);
    }
}
