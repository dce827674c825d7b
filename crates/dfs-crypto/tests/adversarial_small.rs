//! Exhaustive damage at the smallest chunk sizes (where the lookahead is 1 byte or a whole
//! record), through the pull adapter with tiny reads and the push adapter with tiny writes.

use std::io::{Read, Write};

use dfs_crypto::{Aes256CtrBlake3, Cipher, CryptoError, Key};

fn open_pull(
    c: &Aes256CtrBlake3,
    sealed: &[u8],
    step: usize,
) -> (Result<(), CryptoError>, Vec<u8>) {
    let mut r = c.decrypt_reader(sealed);
    let mut out = Vec::new();
    let mut buf = vec![0u8; step];
    loop {
        match r.read(&mut buf) {
            Ok(0) => return (Ok(()), out),
            Ok(n) => out.extend_from_slice(&buf[..n]),
            Err(e) => return (Err(CryptoError::from(e)), out),
        }
    }
}

fn open_push(
    c: &Aes256CtrBlake3,
    sealed: &[u8],
    step: usize,
) -> (Result<(), CryptoError>, Vec<u8>) {
    let mut out = Vec::new();
    let mut w = c.decrypt_writer(&mut out);
    for piece in sealed.chunks(step.max(1)) {
        if let Err(e) = w.write_all(piece) {
            drop(w);
            return (Err(CryptoError::from(e)), out);
        }
    }
    let r = w.finish().map(drop).map_err(CryptoError::from);
    (r, out)
}

#[test]
fn every_cut_and_extension_at_small_chunk_sizes() {
    let key = Key::from_bytes([3; 32]);
    for chunk in [16usize, 32, 48] {
        let c = Aes256CtrBlake3::new(&key).with_chunk_size(chunk).unwrap();
        for len in [
            0usize,
            1,
            chunk - 1,
            chunk,
            chunk + 1,
            2 * chunk,
            3 * chunk + 7,
        ] {
            let plain: Vec<u8> = (0..len).map(|i| (i * 13 + 1) as u8).collect();
            let mut sealed = Vec::new();
            c.encrypt(&plain[..], &mut sealed).unwrap();
            for step in [1usize, 5, 16, 17, 64, 200] {
                let (r, out) = open_pull(&c, &sealed, step);
                r.unwrap();
                assert_eq!(out, plain);
                let (r, out) = open_push(&c, &sealed, step);
                r.unwrap();
                assert_eq!(out, plain);
                let mut variants: Vec<Vec<u8>> = (0..sealed.len())
                    .map(|cut| sealed[..cut].to_vec())
                    .collect();
                for extra in 1..=80usize {
                    let mut v = sealed.clone();
                    v.extend(std::iter::repeat_n(0u8, extra));
                    variants.push(v);
                    let mut v = sealed.clone();
                    v.extend_from_slice(&sealed[44..(44 + extra).min(sealed.len())]);
                    variants.push(v);
                }
                for bad in &variants {
                    if bad == &sealed {
                        continue;
                    }
                    for (name, (r, out)) in [
                        ("pull", open_pull(&c, bad, step)),
                        ("push", open_push(&c, bad, step)),
                    ] {
                        assert!(
                            r.is_err(),
                            "{name}: chunk {chunk} len {len} step {step} bad len {} accepted",
                            bad.len()
                        );
                        assert!(
                            out.len() % chunk == 0 && out.len() <= plain.len(),
                            "{name}: partial chunk released"
                        );
                        assert_eq!(out, plain[..out.len()], "{name}");
                    }
                }
            }
        }
    }
}
