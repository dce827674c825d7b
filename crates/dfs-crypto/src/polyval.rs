//! POLYVAL, the universal hash of AES-GCM-SIV: the fast path of the transport's frame tags.

use polyval::universal_hash::UniversalHash;

/// Length of a POLYVAL key and of its output.
pub const POLYVAL_LEN: usize = 16;

/// POLYVAL (RFC 8452, section 3): a universal hash over GF(2^128), fast enough to authenticate
/// bulk data at memory speed.
///
/// **A building block, not a MAC by itself**: the key `H` must stay secret, and the output
/// must not be published as it is. Either encrypt it with a fresh one-time pad per message
/// (a PRF of a never-repeated nonce, as GCM and GCM-SIV do; `dfs-transport`'s frame tags) or
/// use it only as the input of a PRF (hash-then-PRF; [`Aes256CtrBlake3`](crate::Aes256CtrBlake3)'s
/// chunk tags, keyed BLAKE3 of the digest).
///
/// On x86-64 CPUs with AVX-512 and VPCLMULQDQ it runs a hand-written kernel that folds 32
/// blocks per iteration (detected at run time; [`Polyval::backend`] says which); elsewhere the
/// RustCrypto `polyval` crate (its own CLMUL code, or software), against which the kernel is
/// differential-tested.
///
/// ```
/// use dfs_crypto::Polyval;
///
/// // RFC 8452, Appendix A: POLYVAL(H, X_1, X_2).
/// let h = [
///     0x25, 0x62, 0x93, 0x47, 0x58, 0x92, 0x42, 0x76,
///     0x1d, 0x31, 0xf8, 0x26, 0xba, 0x4b, 0x75, 0x7b,
/// ];
/// let x1 = 0x62a2012dbb621740b6df838c66954f4f_u128.to_le_bytes();
/// let x2 = 0x62f3c9d3205fe4bb06d02127dd4da2d1_u128.to_le_bytes();
/// let mut hash = Polyval::new(&h);
/// hash.update_padded(&x1);
/// hash.update_padded(&x2);
/// assert_eq!(hash.finalize(), 0x7eb7e5f56c86b7e5fa1961847bb4a3f7_u128.to_le_bytes());
/// ```
#[derive(Clone)]
pub struct Polyval {
    backend: Backend,
}

#[derive(Clone)]
enum Backend {
    #[cfg(all(target_arch = "x86_64", not(dfs_crypto_portable)))]
    Clmul {
        key: std::sync::Arc<crate::clmul::ClmulKey>,
        /// The running hash (wiped on drop: with known input it reveals as much as `H`).
        acc: zeroize::Zeroizing<u128>,
    },
    Portable(polyval::Polyval),
}

impl std::fmt::Debug for Polyval {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Polyval")
            .field("backend", &self.backend())
            .finish_non_exhaustive()
    }
}

impl Polyval {
    /// A hash under the key `h`, on the fastest backend this CPU supports.
    pub fn new(h: &[u8; POLYVAL_LEN]) -> Self {
        #[cfg(all(target_arch = "x86_64", not(dfs_crypto_portable)))]
        if let Some(key) = crate::clmul::ClmulKey::new(h) {
            return Self {
                backend: Backend::Clmul {
                    key,
                    acc: zeroize::Zeroizing::new(0),
                },
            };
        }
        Self::portable(h)
    }

    /// A hash on the portable backend (the RustCrypto `polyval` crate, which picks its own
    /// CLMUL/PMULL or software code), whatever the CPU.
    pub fn portable(h: &[u8; POLYVAL_LEN]) -> Self {
        Self {
            backend: Backend::Portable(polyval::Polyval::new(&(*h).into())),
        }
    }

    /// The backend in use: `"vpclmulqdq-avx512"` or `"portable"`.
    pub fn backend(&self) -> &'static str {
        match &self.backend {
            #[cfg(all(target_arch = "x86_64", not(dfs_crypto_portable)))]
            Backend::Clmul { .. } => "vpclmulqdq-avx512",
            Backend::Portable(_) => "portable",
        }
    }

    /// Absorbs `data` as whole 16-byte blocks, its last partial block padded with zeros.
    ///
    /// Calls compose like one call over their concatenation as long as every call but the
    /// last passes a multiple of 16 bytes.
    pub fn update_padded(&mut self, data: &[u8]) {
        match &mut self.backend {
            #[cfg(all(target_arch = "x86_64", not(dfs_crypto_portable)))]
            Backend::Clmul { key, acc } => **acc = key.update_padded(**acc, data),
            Backend::Portable(hash) => hash.update_padded(data),
        }
    }

    /// The hash of everything absorbed.
    pub fn finalize(self) -> [u8; POLYVAL_LEN] {
        match self.backend {
            #[cfg(all(target_arch = "x86_64", not(dfs_crypto_portable)))]
            Backend::Clmul { acc, .. } => acc.to_le_bytes(),
            Backend::Portable(hash) => hash.finalize().into(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// RFC 8452, Appendix A: POLYVAL(H, X_1, X_2).
    #[test]
    fn rfc8452_vector_on_both_backends() {
        let h: [u8; 16] = hex("25629347589242761d31f826ba4b757b");
        let x: [u8; 32] = hex("4f4f95668c83dfb6401762bb2d01a262d1a24ddd2721d006bbe45f20d3c9f362");
        let want: [u8; 16] = hex("f7a3b47b846119fae5b7866cf5e5b77e");
        for mut hash in [Polyval::new(&h), Polyval::portable(&h)] {
            hash.update_padded(&x);
            assert_eq!(hash.finalize(), want);
        }
    }

    /// The fast backend against the portable one, for lengths around the batch size and
    /// split into calls at 16-byte boundaries.
    #[test]
    fn backends_agree() {
        let h: [u8; 16] = std::array::from_fn(|i| (i as u8).wrapping_mul(37).wrapping_add(11));
        let data: Vec<u8> = (0..5000u32).map(|i| (i * 7 + i / 255) as u8).collect();
        for len in [0, 1, 15, 16, 17, 511, 512, 513, 1024, 1040, 4999, 5000] {
            for split in [0, 16, 512, 528] {
                let split = split.min(len) / 16 * 16;
                let mut fast = Polyval::new(&h);
                let mut slow = Polyval::portable(&h);
                for hash in [&mut fast, &mut slow] {
                    hash.update_padded(&data[..split]);
                    hash.update_padded(&data[split..len]);
                }
                assert_eq!(fast.finalize(), slow.finalize(), "len {len} split {split}");
            }
        }
    }

    fn hex<const N: usize>(s: &str) -> [u8; N] {
        let v: Vec<u8> = (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect();
        v.try_into().unwrap()
    }
}
