//! `Aes256CtrBlake3` decryption on hostile input, through the pull (`Read`) and push
//! (`Write`) adapters in pieces of fuzzer-chosen sizes:
//!
//! - arbitrary bytes as ciphertext (any version byte, chunk size, length): never panics,
//!   never releases more bytes than it read;
//! - a well-formed ciphertext of fuzzer-chosen plaintext and chunk size, then damaged (a bit
//!   flipped, cut, a byte inserted, two records swapped, a record dropped or repeated): the
//!   damage is always detected, and what was released before the error is a whole-chunk
//!   prefix of the plaintext; undamaged, it decrypts to the plaintext.
#![no_main]

use std::io::{Read, Write};

use dfs_crypto::{Aes256CtrBlake3, Cipher, HEADER_LEN, Key, TAG_LEN};
use libfuzzer_sys::fuzz_target;

/// Decrypts `sealed` reading `step` bytes at a time; the plaintext released and whether the
/// stream ended without error.
fn open_pull(cipher: &Aes256CtrBlake3, sealed: &[u8], step: usize) -> (Vec<u8>, bool) {
    let mut reader = cipher.decrypt_reader(sealed);
    let mut out = Vec::new();
    let mut buf = vec![0u8; step];
    loop {
        match reader.read(&mut buf) {
            Ok(0) => return (out, true),
            Ok(n) => out.extend_from_slice(&buf[..n]),
            Err(_) => return (out, false),
        }
    }
}

/// The same through the push adapter, writing `step` bytes at a time.
fn open_push(cipher: &Aes256CtrBlake3, sealed: &[u8], step: usize) -> (Vec<u8>, bool) {
    let mut writer = cipher.decrypt_writer(Vec::new());
    for piece in sealed.chunks(step) {
        if writer.write_all(piece).is_err() {
            return (writer.get_ref().clone(), false);
        }
    }
    let released = writer.get_ref().clone();
    match writer.finish() {
        Ok(out) => (out, true),
        Err(_) => (released, false),
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&control, rest)) = data.split_first() else {
        return;
    };
    let cipher = Aes256CtrBlake3::new(&Key::from_bytes([0x42; 32]));
    let step = 1 + usize::from(control >> 2) * 37;

    if control & 1 == 0 {
        for (out, _) in [open_pull(&cipher, rest, step), open_push(&cipher, rest, step)] {
            assert!(out.len() <= rest.len());
        }
        return;
    }

    // Damage a well-formed ciphertext: [mutation, position lo, position hi, chunk] || plaintext.
    let Some((&[mutation, lo, hi, chunk], plain)) = rest.split_first_chunk::<4>() else {
        return;
    };
    let chunk_size = 16 * (1 + usize::from(chunk % 8));
    let cipher = cipher.with_chunk_size(chunk_size).unwrap();
    let mut sealed = Vec::new();
    cipher
        .encrypt_reader_with_nonce(plain, [7; 32])
        .read_to_end(&mut sealed)
        .unwrap();
    let original = sealed.clone();
    let position = usize::from(u16::from_le_bytes([lo, hi])) % sealed.len();
    let record = chunk_size + TAG_LEN;
    let records = (sealed.len() - HEADER_LEN).div_ceil(record);
    let index = (position / record) % records;
    let range = |i: usize| {
        let start = HEADER_LEN + i * record;
        start..(start + record).min(original.len())
    };
    match mutation % 7 {
        0 => {}
        1 => sealed[position] ^= 1 << (hi % 8),
        2 => sealed.truncate(position),
        3 => sealed.insert(position, lo),
        4 => {
            // Swap record `index` with the next one (the last may be the shorter).
            if index + 1 < records {
                let (a, b) = (range(index), range(index + 1));
                let mut swapped = original[..a.start].to_vec();
                swapped.extend_from_slice(&original[b.clone()]);
                swapped.extend_from_slice(&original[a]);
                swapped.extend_from_slice(&original[b.end..]);
                sealed = swapped;
            }
        }
        5 => {
            sealed.drain(range(index));
        }
        _ => {
            let copy = original[range(index)].to_vec();
            let at = range(index).end;
            sealed.splice(at..at, copy);
        }
    }

    for (out, ok) in [open_pull(&cipher, &sealed, step), open_push(&cipher, &sealed, step)] {
        if sealed == original {
            assert!(ok, "an intact ciphertext was refused");
            assert_eq!(out, plain);
        } else {
            assert!(!ok, "damage went undetected (mutation {})", mutation % 7);
            assert_eq!(out.len() % chunk_size, 0, "released a partial chunk");
            assert!(out.len() < plain.len().max(1), "released the whole plaintext");
            assert_eq!(out, plain[..out.len()], "released bytes that are not the plaintext");
        }
    }
});
