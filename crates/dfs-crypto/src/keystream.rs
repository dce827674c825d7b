//! The AES-256-CTR keystream core shared by both ciphers.
//!
//! The counter is the whole 16-byte block read as one big-endian 128-bit integer, wrapping
//! modulo 2^128 (Go's `crypto/cipher.NewCTR`, RustCrypto's `Ctr128BE`). Keystream is produced
//! in bulk: a batch of counter blocks is generated, encrypted with one `encrypt_blocks` call
//! (the `aes` crate picks AES-NI or its constant-time software backend at run time) and XORed
//! into the data 16 bytes at a time. On x86-64 CPUs with VAES and AVX-512F, a hand-written
//! backend (`vaes` module) processes 32 blocks per iteration in 512-bit registers.

use aes::Aes256;
use aes::cipher::{BlockCipherEncrypt, KeyInit};

/// Blocks per batch on the portable path (1 KiB of keystream on the stack).
const BATCH_BLOCKS: usize = 64;

/// An expanded AES-256 key ready to produce CTR keystream.
#[derive(Clone)]
pub(crate) struct CtrKey {
    aes: Aes256,
    #[cfg(all(target_arch = "x86_64", not(dfs_crypto_portable)))]
    vaes: Option<crate::vaes::VaesKey>,
}

impl std::fmt::Debug for CtrKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CtrKey")
            .field("backend", &self.backend())
            .finish_non_exhaustive()
    }
}

impl CtrKey {
    /// Expands `key`, selecting the fastest backend this CPU supports.
    pub(crate) fn new(key: &[u8; 32]) -> Self {
        CtrKey {
            aes: Aes256::new(&(*key).into()),
            #[cfg(all(target_arch = "x86_64", not(dfs_crypto_portable)))]
            vaes: crate::vaes::VaesKey::new(key),
        }
    }

    /// Expands `key` for the portable path only (bulk `encrypt_blocks`), never the VAES
    /// backend. Used by tests and benches to compare the paths.
    #[cfg_attr(not(test), allow(dead_code))]
    pub(crate) fn new_portable(key: &[u8; 32]) -> Self {
        CtrKey {
            aes: Aes256::new(&(*key).into()),
            #[cfg(all(target_arch = "x86_64", not(dfs_crypto_portable)))]
            vaes: None,
        }
    }

    /// The name of the backend in use.
    pub(crate) fn backend(&self) -> &'static str {
        #[cfg(all(target_arch = "x86_64", not(dfs_crypto_portable)))]
        if self.vaes.is_some() {
            return "vaes-avx512";
        }
        "aes-crate-bulk"
    }

    /// XORs the keystream starting at block `counter` into `data`. A final partial block
    /// uses the first bytes of its keystream block. Returns the counter after the last
    /// (possibly partial) block.
    pub(crate) fn apply(&self, counter: u128, data: &mut [u8]) -> u128 {
        #[cfg(all(target_arch = "x86_64", not(dfs_crypto_portable)))]
        if let Some(vaes) = &self.vaes {
            return vaes.apply(counter, data);
        }
        self.apply_portable(counter, data)
    }

    /// `dst = src XOR keystream` starting at block `counter`; `src` and `dst` have the same
    /// length.
    pub(crate) fn apply_b2b(&self, counter: u128, src: &[u8], dst: &mut [u8]) {
        debug_assert_eq!(src.len(), dst.len());
        #[cfg(all(target_arch = "x86_64", not(dfs_crypto_portable)))]
        if let Some(vaes) = &self.vaes {
            return vaes.apply_b2b(counter, src, dst);
        }
        let len = src.len().min(dst.len());
        dst[..len].copy_from_slice(&src[..len]);
        self.apply_portable(counter, &mut dst[..len]);
    }

    fn apply_portable(&self, mut counter: u128, data: &mut [u8]) -> u128 {
        let mut keystream = [aes::Block::default(); BATCH_BLOCKS];
        for chunk in data.chunks_mut(BATCH_BLOCKS * 16) {
            let blocks = chunk.len().div_ceil(16);
            let keystream = &mut keystream[..blocks];
            for block in keystream.iter_mut() {
                *block = counter.to_be_bytes().into();
                counter = counter.wrapping_add(1);
            }
            self.aes.encrypt_blocks(keystream);
            xor_in_place(chunk, aes::Block::slice_as_flattened(keystream));
        }
        counter
    }
}

/// `data[i] ^= keystream[i]`, 16 bytes at a time; `keystream` is at least as long as `data`.
fn xor_in_place(data: &mut [u8], keystream: &[u8]) {
    let mut data_blocks = data.chunks_exact_mut(16);
    let mut ks_blocks = keystream.chunks_exact(16);
    for (d, k) in (&mut data_blocks).zip(&mut ks_blocks) {
        let (Ok(dv), Ok(kv)) = (<[u8; 16]>::try_from(&*d), <[u8; 16]>::try_from(k)) else {
            continue; // unreachable: both are 16-byte chunks
        };
        d.copy_from_slice(&(u128::from_ne_bytes(dv) ^ u128::from_ne_bytes(kv)).to_ne_bytes());
    }
    let tail = data_blocks.into_remainder();
    let ks_tail = ks_blocks.next().unwrap_or(ks_blocks.remainder());
    for (d, k) in tail.iter_mut().zip(ks_tail) {
        *d ^= k;
    }
}

/// The keystream bytes from a byte position to the end of its block: empty when the position
/// is block-aligned.
struct Head {
    block: [u8; 16],
    start: usize,
    end: usize,
}

impl Head {
    /// The head of the keystream at byte `position` (of the keystream that begins at counter
    /// block zero), at most `len` bytes, and the counter of the first whole block after it.
    fn at(key: &CtrKey, position: u64, len: usize) -> (Head, u128) {
        let counter = u128::from(position / 16);
        let skip = (position % 16) as usize;
        let mut head = Head {
            block: [0; 16],
            start: skip,
            end: skip,
        };
        if skip == 0 {
            return (head, counter);
        }
        key.apply(counter, &mut head.block);
        head.end = (skip + len).min(16);
        (head, counter + 1)
    }

    fn bytes(&self) -> &[u8] {
        &self.block[self.start..self.end]
    }
}

/// `dst = src XOR keystream`, where `src` starts at byte `position` of the keystream that
/// begins at counter block zero.
pub(crate) fn xor_at(key: &CtrKey, position: u64, src: &[u8], dst: &mut [u8]) {
    let len = src.len().min(dst.len());
    let (head, counter) = Head::at(key, position, len);
    let n = head.bytes().len();
    for ((d, s), k) in dst[..n].iter_mut().zip(&src[..n]).zip(head.bytes()) {
        *d = s ^ k;
    }
    key.apply_b2b(counter, &src[n..len], &mut dst[n..len]);
}

/// XORs into `data` the keystream from byte `position` on (of the keystream that begins at
/// counter block zero).
pub(crate) fn apply_at(key: &CtrKey, position: u64, data: &mut [u8]) {
    let (head, counter) = Head::at(key, position, data.len());
    let n = head.bytes().len();
    for (d, k) in data[..n].iter_mut().zip(head.bytes()) {
        *d ^= k;
    }
    key.apply(counter, &mut data[n..]);
}

/// A byte-granular CTR stream: a key, a starting counter block and a byte position.
#[derive(Clone, Debug)]
pub(crate) struct CtrStream {
    key: CtrKey,
    start: u128,
    /// Byte position in the keystream: a `u128`, so a stream (or a seek near `u64::MAX`)
    /// cannot overflow it; the 128-bit counter goes on past 2^64 bytes.
    position: u128,
}

impl CtrStream {
    pub(crate) fn new(key: CtrKey, iv: [u8; 16]) -> Self {
        CtrStream {
            key,
            start: u128::from_be_bytes(iv),
            position: 0,
        }
    }

    /// Moves to byte `position` of the keystream.
    pub(crate) fn seek(&mut self, position: u64) {
        self.position = u128::from(position);
    }

    /// XORs the next `data.len()` bytes of keystream into `data`.
    pub(crate) fn apply(&mut self, mut data: &mut [u8]) {
        let offset = (self.position % 16) as usize;
        let mut counter = self.start.wrapping_add(self.position / 16);
        self.position += data.len() as u128;
        if offset != 0 {
            let mut ks = [0u8; 16];
            self.key.apply(counter, &mut ks);
            let n = data.len().min(16 - offset);
            let (head, rest) = data.split_at_mut(n);
            for (d, k) in head.iter_mut().zip(&ks[offset..]) {
                *d ^= k;
            }
            data = rest;
            counter = counter.wrapping_add(1);
        }
        self.key.apply(counter, data);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ctr::cipher::{KeyIvInit, StreamCipher, StreamCipherSeek};
    use proptest::prelude::*;

    type Reference = ctr::Ctr128BE<aes::Aes256>;

    fn reference(key: &[u8; 32], iv: [u8; 16], offset: u64, data: &mut [u8]) {
        let mut cipher = Reference::new(&(*key).into(), &iv.into());
        cipher.seek(offset);
        cipher.apply_keystream(data);
    }

    fn check(key: [u8; 32], iv: [u8; 16], offset: u64, data: &[u8]) {
        let mut expected = data.to_vec();
        reference(&key, iv, offset, &mut expected);
        for ctr_key in [CtrKey::new(&key), CtrKey::new_portable(&key)] {
            let mut stream = CtrStream::new(ctr_key, iv);
            stream.seek(offset);
            let mut got = data.to_vec();
            stream.apply(&mut got);
            assert_eq!(got, expected, "backend {}", stream.key.backend());
        }
    }

    #[test]
    fn counter_wraps_past_two_to_the_64_and_128() {
        let key = [7u8; 32];
        let data = vec![0xa5; 4096 + 7];
        // Low 64 bits about to carry into the high half.
        let mut iv = [0u8; 16];
        iv[..8].copy_from_slice(&[0x12; 8]);
        iv[8..].copy_from_slice(&(u64::MAX - 5).to_be_bytes());
        check(key, iv, 0, &data);
        check(key, iv, 33, &data);
        // The whole 128-bit counter wraps to zero.
        check(key, [0xff; 16], 0, &data);
        check(key, [0xff; 16], 5, &data);
    }

    proptest! {
        #[test]
        fn matches_ctr_crate(
            key in any::<[u8; 32]>(),
            iv in any::<[u8; 16]>(),
            offset in 0u64..10_000,
            data in proptest::collection::vec(any::<u8>(), 0..5000),
        ) {
            check(key, iv, offset, &data);
        }

        #[test]
        fn out_of_place_matches_ctr_crate(
            key in any::<[u8; 32]>(),
            position in 0u64..5000,
            data in proptest::collection::vec(any::<u8>(), 0..5000),
        ) {
            let mut expected = data.clone();
            reference(&key, [0; 16], position, &mut expected);
            for ctr_key in [CtrKey::new(&key), CtrKey::new_portable(&key)] {
                let mut got = vec![0u8; data.len()];
                xor_at(&ctr_key, position, &data, &mut got);
                prop_assert_eq!(&got, &expected);
            }
        }

        #[test]
        fn in_place_matches_ctr_crate(
            key in any::<[u8; 32]>(),
            position in 0u64..5000,
            data in proptest::collection::vec(any::<u8>(), 0..5000),
        ) {
            let mut expected = data.clone();
            reference(&key, [0; 16], position, &mut expected);
            for ctr_key in [CtrKey::new(&key), CtrKey::new_portable(&key)] {
                let mut got = data.clone();
                apply_at(&ctr_key, position, &mut got);
                prop_assert_eq!(&got, &expected);
            }
        }

        #[test]
        fn matches_ctr_crate_in_pieces(
            key in any::<[u8; 32]>(),
            iv in any::<[u8; 16]>(),
            data in proptest::collection::vec(any::<u8>(), 0..3000),
            cuts in proptest::collection::vec(0usize..700, 0..8),
        ) {
            let mut expected = data.clone();
            reference(&key, iv, 0, &mut expected);
            let mut stream = CtrStream::new(CtrKey::new(&key), iv);
            let mut got = data.clone();
            let mut rest = &mut got[..];
            for cut in cuts {
                let (head, tail) = rest.split_at_mut(cut.min(rest.len()));
                stream.apply(head);
                rest = tail;
            }
            stream.apply(rest);
            prop_assert_eq!(got, expected);
        }
    }
}
