//! `FORMAT.md` is the specification: an independent implementation of it (built from the
//! RustCrypto `ctr` crate and `blake3` directly) must agree with the crate byte for byte, and
//! the test vectors printed in `FORMAT.md` must match.
#![allow(clippy::unwrap_used)]

use std::io::{self, Read};

use ctr::cipher::{KeyIvInit, StreamCipher};
use dfs_crypto::{Aes256CtrBlake3, Cipher, CryptoError, HEADER_LEN, Key};
use polyval::universal_hash::UniversalHash;
use proptest::prelude::*;

const FORMAT: &str = include_str!("../FORMAT.md");

/// The format, implemented from `FORMAT.md` without using the crate: version 2 (what the crate
/// writes) or version 1 (which it still reads).
fn reference_seal(
    version: u8,
    key: &[u8; 32],
    nonce: &[u8; 32],
    chunk_size: u32,
    plain: &[u8],
) -> Vec<u8> {
    let mut header = Vec::new();
    header.extend_from_slice(b"DFSC");
    header.push(version);
    header.extend_from_slice(&[0, 0, 0]);
    header.extend_from_slice(&chunk_size.to_le_bytes());
    header.extend_from_slice(nonce);
    assert_eq!(header.len(), 44);

    let mut ikm = key.to_vec();
    ikm.extend_from_slice(&header);
    let (enc_context, mac_context) = match version {
        1 => (
            "dfs-crypto 2026-11 Aes256CtrBlake3 v1 chunk encryption key",
            "dfs-crypto 2026-11 Aes256CtrBlake3 v1 chunk authentication key",
        ),
        _ => (
            "dfs-crypto 2026-12 Aes256CtrBlake3 v2 chunk encryption key",
            "dfs-crypto 2026-12 Aes256CtrBlake3 v2 chunk authentication key",
        ),
    };
    let enc_key = blake3::derive_key(enc_context, &ikm);
    let mac_key = blake3::derive_key(mac_context, &ikm);
    let hash_key: [u8; 16] =
        blake3::derive_key("dfs-crypto 2026-12 Aes256CtrBlake3 v2 chunk hash key", &ikm)[..16]
            .try_into()
            .unwrap();
    // One CTR stream over the whole plaintext, counter block starting at zero.
    let mut body = plain.to_vec();
    ctr::Ctr128BE::<aes::Aes256>::new(&enc_key.into(), &[0u8; 16].into())
        .apply_keystream(&mut body);

    let mut out = header;
    let chunks: Vec<&[u8]> = if body.is_empty() {
        vec![&[]]
    } else {
        body.chunks(chunk_size as usize).collect()
    };
    for (index, chunk) in chunks.iter().enumerate() {
        let last = index + 1 == chunks.len();
        let mut mac = blake3::Hasher::new_keyed(&mac_key);
        if version == 1 {
            mac.update(chunk);
        } else {
            let mut lengths = [0u8; 16];
            lengths[..8].copy_from_slice(&(chunk.len() as u64).to_le_bytes());
            let mut digest = polyval::Polyval::new(&hash_key.into());
            digest.update_padded(chunk);
            digest.update_padded(&lengths);
            mac.update(&digest.finalize());
        }
        mac.update(&(index as u64).to_le_bytes());
        mac.update(&[u8::from(last)]);
        out.extend_from_slice(chunk);
        out.extend_from_slice(mac.finalize().as_bytes());
    }
    out
}

fn crate_seal(key: &[u8; 32], nonce: [u8; 32], chunk_size: u32, plain: &[u8]) -> Vec<u8> {
    let cipher = Aes256CtrBlake3::new(&Key::from_bytes(*key))
        .with_chunk_size(chunk_size as usize)
        .unwrap();
    let mut out = Vec::new();
    cipher
        .encrypt_reader_with_nonce(plain, nonce)
        .read_to_end(&mut out)
        .unwrap();
    out
}

#[test]
fn independent_implementation_agrees() {
    let key: [u8; 32] = std::array::from_fn(|i| i as u8 * 3);
    let nonce: [u8; 32] = std::array::from_fn(|i| 200 - i as u8);
    for chunk_size in [16u32, 48, 64 * 1024] {
        for len in [0usize, 1, 15, 16, 17, 47, 48, 49, 96, 100, 1000] {
            let plain: Vec<u8> = (0..len).map(|i| (i * 5) as u8).collect();
            assert_eq!(
                crate_seal(&key, nonce, chunk_size, &plain),
                reference_seal(2, &key, &nonce, chunk_size, &plain),
                "chunk {chunk_size} len {len}"
            );
        }
    }
}

/// A source that returns at most `step` bytes per read.
struct Trickle<'a> {
    data: &'a [u8],
    step: usize,
}

impl Read for Trickle<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = buf.len().min(self.step);
        self.data.read(&mut buf[..n])
    }
}

/// Reads `reader` to the end, `step` bytes at a time into one reused buffer.
fn read_in_steps(mut reader: impl Read, step: usize) -> Vec<u8> {
    let mut out = Vec::new();
    let mut buf = vec![0u8; step];
    loop {
        match reader.read(&mut buf).unwrap() {
            0 => return out,
            n => out.extend_from_slice(&buf[..n]),
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    /// The encrypting reader hashes in blocks of its own, whatever the sizes of the caller's
    /// reads and of the source's: the bytes must not depend on either, including for chunks
    /// longer than a block or not a multiple of one.
    #[test]
    fn reader_agrees_with_reference_for_any_read_sizes(
        chunk_size in prop_oneof![Just(16u32), Just(1024), Just(65536), Just(100_000), Just(196_608)],
        len in 0usize..400_000,
        read_step in prop_oneof![Just(16384usize), Just(65536), Just(65568), 1usize..48, 1usize..70_000],
        source_step in prop_oneof![Just(usize::MAX), 1usize..48, 1usize..70_000],
    ) {
        let key: [u8; 32] = std::array::from_fn(|i| i as u8 ^ 0x5a);
        let nonce: [u8; 32] = std::array::from_fn(|i| i as u8);
        let plain: Vec<u8> = (0..len).map(|i| (i * 7 + i / 251) as u8).collect();
        // Keep tiny steps to short inputs so the suite stays fast.
        let read_step = if read_step < 64 && len > 20_000 { read_step + 4093 } else { read_step };
        let source_step = if source_step < 64 && len > 20_000 { source_step + 4093 } else { source_step };
        let cipher = Aes256CtrBlake3::new(&Key::from_bytes(key))
            .with_chunk_size(chunk_size as usize)
            .unwrap();
        let source = Trickle { data: &plain, step: source_step };
        let sealed = read_in_steps(cipher.encrypt_reader_with_nonce(source, nonce), read_step);
        prop_assert!(sealed == reference_seal(2, &key, &nonce, chunk_size, &plain));
    }
}

/// Version 1 ciphertexts (written by earlier releases) still decrypt, for any read sizes,
/// and fail like version 2 ones when damaged.
#[test]
fn version_1_still_decrypts() {
    let key: [u8; 32] = std::array::from_fn(|i| i as u8 * 7);
    let nonce: [u8; 32] = std::array::from_fn(|i| 99 ^ i as u8);
    let cipher = Aes256CtrBlake3::new(&Key::from_bytes(key));
    for chunk_size in [16u32, 48, 64 * 1024] {
        for len in [0usize, 1, 15, 16, 17, 47, 48, 49, 96, 100, 1000, 200_000] {
            let plain: Vec<u8> = (0..len).map(|i| (i * 13 + i / 253) as u8).collect();
            let sealed = reference_seal(1, &key, &nonce, chunk_size, &plain);
            for step in [1000, 65536 + 45] {
                let opened = read_in_steps(cipher.decrypt_reader(&sealed[..]), step);
                assert_eq!(opened, plain, "chunk {chunk_size} len {len} step {step}");
            }
            let mut flipped = sealed.clone();
            let last = flipped.len() - 1;
            flipped[last] ^= 0x10;
            let err = cipher.decrypt(&flipped[..], &mut Vec::new()).unwrap_err();
            assert!(matches!(err, CryptoError::Authentication { .. }), "{err:?}");
        }
    }
}

/// Decrypts `sealed` with `decrypt` and with the pull adapter, which must agree.
fn open(cipher: &Aes256CtrBlake3, sealed: &[u8]) -> (Result<u64, CryptoError>, Vec<u8>) {
    let mut out = Vec::new();
    let result = cipher.decrypt(sealed, &mut out);
    let mut pulled = Vec::new();
    let pull = cipher.decrypt_reader(sealed).read_to_end(&mut pulled);
    assert_eq!(pulled, out);
    assert_eq!(pull.is_ok(), result.is_ok());
    (result, out)
}

/// Both versions classify damage as `FORMAT.md`'s Decryption section says, and release only
/// the verified whole chunks before it.
#[test]
fn damage_is_classified_alike_in_both_versions() {
    let key = [9u8; 32];
    let nonce = [5u8; 32];
    let cipher = Aes256CtrBlake3::new(&Key::from_bytes(key));
    const C: usize = 32;
    const RECORD: usize = C + 32;
    for version in [1u8, 2] {
        let plain: Vec<u8> = (0..2 * C as u8).collect();
        let sealed = reference_seal(version, &key, &nonce, C as u32, &plain);
        assert_eq!(open(&cipher, &sealed).1, plain);
        // Cut at the chunk boundary, or inside the final record's tag.
        for cut in [HEADER_LEN + RECORD, HEADER_LEN + RECORD + 31] {
            let (result, out) = open(&cipher, &sealed[..cut]);
            assert!(
                matches!(result, Err(CryptoError::Truncated { chunk: 1 })),
                "v{version} cut {cut}: {result:?}"
            );
            assert!(out.is_empty() || out == plain[..C], "v{version}");
        }
        // Appended bytes.
        let mut longer = sealed.clone();
        longer.push(0);
        let (result, out) = open(&cipher, &longer);
        assert!(
            matches!(result, Err(CryptoError::TrailingData { chunk: 1 })),
            "v{version}: {result:?}"
        );
        assert_eq!(out, plain[..C]);
        // Swapped records.
        let mut swapped = sealed.clone();
        let (first, second) = swapped[HEADER_LEN..].split_at_mut(RECORD);
        first.swap_with_slice(&mut second[..RECORD]);
        let (result, out) = open(&cipher, &swapped);
        assert!(
            matches!(result, Err(CryptoError::Authentication { chunk: 0 })),
            "v{version}: {result:?}"
        );
        assert!(out.is_empty());

        // A short final chunk (3 bytes) zero-extended, or cut by a byte, under its tag.
        let plain: Vec<u8> = (0..C as u8 + 3).collect();
        let sealed = reference_seal(version, &key, &nonce, C as u32, &plain);
        let tag_at = sealed.len() - 32;
        for (what, body) in [
            ("extended", [&sealed[..tag_at], &[0]].concat()),
            ("cut", sealed[..tag_at - 1].to_vec()),
        ] {
            let damaged = [&body[..], &sealed[tag_at..]].concat();
            let (result, out) = open(&cipher, &damaged);
            assert!(
                matches!(result, Err(CryptoError::Authentication { chunk: 1 })),
                "v{version} {what}: {result:?}"
            );
            assert_eq!(out, plain[..C], "v{version} {what}");
        }
    }
}

/// Relabelling a file's version (either way) changes every derived key, so no tag verifies:
/// a version-2 file cannot be read under version 1's rules, nor the reverse.
#[test]
fn relabelled_version_fails_authentication() {
    let key: [u8; 32] = std::array::from_fn(|i| i as u8);
    let nonce = [7u8; 32];
    let cipher = Aes256CtrBlake3::new(&Key::from_bytes(key));
    let plain = vec![0x42u8; 3000];
    for (version, relabel) in [(1u8, 2u8), (2, 1)] {
        let mut sealed = reference_seal(version, &key, &nonce, 1024, &plain);
        sealed[4] = relabel;
        let err = cipher.decrypt(&sealed[..], &mut Vec::new()).unwrap_err();
        assert!(
            matches!(err, CryptoError::Authentication { chunk: 0 }),
            "v{version} as v{relabel}: {err:?}"
        );
    }
}

/// The value after `label` on its line in the `FORMAT.md` test vector for `version`, plus any
/// continuation lines that are pure hex.
fn field(version: u8, label: &str) -> String {
    let heading = format!("## Test vector, version {version}");
    let start = FORMAT
        .find(&heading)
        .unwrap_or_else(|| panic!("no {heading:?} in FORMAT.md"));
    let vector = &FORMAT[start..];
    let mut lines = vector
        .lines()
        .skip_while(|l| !l.trim_start().starts_with(label));
    let first = lines
        .next()
        .unwrap_or_else(|| panic!("no {label} in FORMAT.md"));
    let mut value = first.trim_start()[label.len()..].trim().to_string();
    for line in lines {
        let line = line.trim();
        if line.is_empty() || !line.chars().all(|c| c.is_ascii_hexdigit()) {
            break;
        }
        value.push_str(line);
    }
    value
}

fn unhex(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}

#[test]
fn format_md_test_vectors() {
    for version in [2, 1] {
        let key: [u8; 32] = unhex(&field(version, "key:")).try_into().unwrap();
        let nonce: [u8; 32] = unhex(&field(version, "nonce:")).try_into().unwrap();
        let chunk_size: u32 = field(version, "chunk size:").parse().unwrap();
        let plain = field(version, "plaintext:");
        let plain = plain.trim_matches('"').as_bytes();
        let expected = unhex(&field(version, "ciphertext:"));

        let reference = reference_seal(version, &key, &nonce, chunk_size, plain);
        if version == dfs_crypto::VERSION {
            assert_eq!(crate_seal(&key, nonce, chunk_size, plain), reference);
        }
        if reference != expected {
            let hex: String = reference.iter().map(|b| format!("{b:02x}")).collect();
            panic!("FORMAT.md's version {version} ciphertext differs from the spec:\n{hex}");
        }
        let cipher = Aes256CtrBlake3::new(&Key::from_bytes(key));
        let mut out = Vec::new();
        cipher.decrypt(&expected[..], &mut out).unwrap();
        assert_eq!(out, plain);
    }
}
