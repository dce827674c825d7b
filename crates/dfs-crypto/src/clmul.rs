//! POLYVAL with VPCLMULQDQ on 512-bit registers (x86-64, AVX-512F + AVX-512BW + VPCLMULQDQ +
//! PCLMULQDQ), selected at run time.
//!
//! The `unsafe` here is calling the `#[target_feature]` functions (sound because a
//! [`ClmulKey`] only exists after the features were detected) and unaligned loads within the
//! bounds of the caller's slice. It is differential-tested against the RustCrypto `polyval`
//! crate (the other backend, with its own CLMUL or software code) in `polyval` tests and the
//! proptests in `tests/`.
//!
//! The field: `dot(a, b) = a * b * x^-128` modulo `x^128 + x^127 + x^126 + x^121 + 1`, blocks
//! as little-endian 128-bit polynomials (RFC 8452). Horner's rule `acc = dot(acc ^ X, H)`,
//! unrolled over a batch of [`BATCH`] blocks, becomes `acc = sum dot(X'_i, H_(BATCH - i))`
//! with `X'_0 = X_0 ^ acc` and the powers `H_1 = H`, `H_(k+1) = dot(H_k, H)`; the products
//! are summed unreduced and reduced once per batch.
#![allow(unsafe_code)]

use std::arch::x86_64::{
    __m128i, __m512i, _mm_clmulepi64_si128, _mm_loadu_si128, _mm_set_epi64x, _mm_shuffle_epi32,
    _mm_slli_si128, _mm_srli_si128, _mm_storeu_si128, _mm_xor_si128, _mm512_bslli_epi128,
    _mm512_bsrli_epi128, _mm512_clmulepi64_epi128, _mm512_extracti32x4_epi32, _mm512_loadu_si512,
    _mm512_setzero_si512, _mm512_xor_si512, _mm512_zextsi128_si512,
};

use zeroize::{Zeroize, ZeroizeOnDrop};

/// Blocks per main-loop iteration: 8 registers of 4 blocks, so the products of one batch
/// hide the latency of the previous batch's reduction.
const BATCH: usize = 32;
/// Bytes per main-loop iteration.
const BATCH_BYTES: usize = BATCH * 16;

/// The reduction constant: `x^-64`'s multiplier in the high half (RFC 8452, Appendix A).
const POLY: u128 = 0xc200_0000_0000_0000_0000_0000_0000_0001;

/// The hash key's powers, usable only on a CPU with the required features.
#[derive(Zeroize, ZeroizeOnDrop)]
pub(crate) struct ClmulKey {
    /// `powers[i] = H_(BATCH - i)`: the power block `i` of a batch is multiplied by, so four
    /// consecutive entries load as one register.
    powers: [u128; BATCH],
}

impl ClmulKey {
    /// The key's powers, or `None` if this CPU lacks one of the features.
    pub(crate) fn new(h: &[u8; 16]) -> Option<std::sync::Arc<Self>> {
        let detected = std::arch::is_x86_feature_detected!("avx512f")
            && std::arch::is_x86_feature_detected!("avx512bw")
            && std::arch::is_x86_feature_detected!("vpclmulqdq")
            && std::arch::is_x86_feature_detected!("pclmulqdq");
        if !detected {
            return None;
        }
        // Built in place, so the only copy of the powers is the one wiped on drop.
        let mut key = std::sync::Arc::new(Self { powers: [0; BATCH] });
        let powers = &mut std::sync::Arc::get_mut(&mut key)?.powers;
        let h = zeroize::Zeroizing::new(u128::from_le_bytes(*h));
        let mut power = zeroize::Zeroizing::new(*h);
        for slot in powers.iter_mut().rev() {
            *slot = *power;
            // SAFETY: PCLMULQDQ (and SSE2, part of x86-64) was detected above.
            *power = unsafe { dot_scalar(*power, *h) };
        }
        Some(key)
    }

    /// Absorbs `data` into the accumulator `acc`, the last partial block zero-padded.
    pub(crate) fn update_padded(&self, acc: u128, data: &[u8]) -> u128 {
        // SAFETY: a `ClmulKey` is only constructed after detecting AVX-512F, AVX-512BW,
        // VPCLMULQDQ and PCLMULQDQ on this CPU (`ClmulKey::new`), which is all it enables.
        unsafe { update_padded(&self.powers, acc, data) }
    }
}

#[inline]
#[target_feature(enable = "sse2")]
fn m128(value: u128) -> __m128i {
    _mm_set_epi64x((value >> 64) as i64, value as i64)
}

#[inline]
#[target_feature(enable = "sse2")]
fn u128_of(value: __m128i) -> u128 {
    let mut out = [0u8; 16];
    // SAFETY: `out` is 16 writable bytes; the store is unaligned.
    unsafe { _mm_storeu_si128(out.as_mut_ptr().cast(), value) };
    u128::from_le_bytes(out)
}

/// `(hi * x^128 + lo) * x^-128` modulo the field polynomial: two Montgomery steps of 64 bits.
#[inline]
#[target_feature(enable = "sse2,pclmulqdq")]
fn reduce(lo: __m128i, hi: __m128i) -> __m128i {
    let poly = m128(POLY);
    let t = _mm_clmulepi64_si128::<0x10>(lo, poly);
    let lo = _mm_xor_si128(_mm_shuffle_epi32::<0x4e>(lo), t);
    let t = _mm_clmulepi64_si128::<0x10>(lo, poly);
    let lo = _mm_xor_si128(_mm_shuffle_epi32::<0x4e>(lo), t);
    _mm_xor_si128(hi, lo)
}

/// `dot(a, b)`.
#[inline]
#[target_feature(enable = "sse2,pclmulqdq")]
fn dot(a: __m128i, b: __m128i) -> __m128i {
    let lo = _mm_clmulepi64_si128::<0x00>(a, b);
    let hi = _mm_clmulepi64_si128::<0x11>(a, b);
    let mid = _mm_xor_si128(
        _mm_clmulepi64_si128::<0x01>(a, b),
        _mm_clmulepi64_si128::<0x10>(a, b),
    );
    reduce(
        _mm_xor_si128(lo, _mm_slli_si128::<8>(mid)),
        _mm_xor_si128(hi, _mm_srli_si128::<8>(mid)),
    )
}

#[target_feature(enable = "sse2,pclmulqdq")]
fn dot_scalar(a: u128, b: u128) -> u128 {
    u128_of(dot(m128(a), m128(b)))
}

/// XOR of a register's four 128-bit lanes.
#[inline]
#[target_feature(enable = "avx512f")]
fn fold_lanes(v: __m512i) -> __m128i {
    _mm_xor_si128(
        _mm_xor_si128(
            _mm512_extracti32x4_epi32::<0>(v),
            _mm512_extracti32x4_epi32::<1>(v),
        ),
        _mm_xor_si128(
            _mm512_extracti32x4_epi32::<2>(v),
            _mm512_extracti32x4_epi32::<3>(v),
        ),
    )
}

#[target_feature(enable = "avx512f,avx512bw,vpclmulqdq,pclmulqdq")]
fn update_padded(powers: &[u128; BATCH], acc: u128, data: &[u8]) -> u128 {
    let mut acc = m128(acc);
    let mut batches = data.chunks_exact(BATCH_BYTES);
    if batches.len() > 0 {
        // SAFETY: each load reads 64 bytes of `powers` (512 bytes long) at offsets 0..448.
        let h: [__m512i; BATCH / 4] = std::array::from_fn(|j| unsafe {
            _mm512_loadu_si512(powers.as_ptr().add(4 * j).cast())
        });
        for batch in batches.by_ref() {
            let (mut lo, mut hi, mut mid) = (
                _mm512_setzero_si512(),
                _mm512_setzero_si512(),
                _mm512_setzero_si512(),
            );
            for (j, h) in h.iter().enumerate() {
                // SAFETY: `batch` is BATCH_BYTES = 8 * 64 bytes long; this reads 64 of
                // them at offset 64 * j, j < 8.
                let mut x = unsafe { _mm512_loadu_si512(batch.as_ptr().add(64 * j).cast()) };
                if j == 0 {
                    x = _mm512_xor_si512(x, _mm512_zextsi128_si512(acc));
                }
                lo = _mm512_xor_si512(lo, _mm512_clmulepi64_epi128::<0x00>(x, *h));
                hi = _mm512_xor_si512(hi, _mm512_clmulepi64_epi128::<0x11>(x, *h));
                mid = _mm512_xor_si512(
                    mid,
                    _mm512_xor_si512(
                        _mm512_clmulepi64_epi128::<0x01>(x, *h),
                        _mm512_clmulepi64_epi128::<0x10>(x, *h),
                    ),
                );
            }
            let lo = _mm512_xor_si512(lo, _mm512_bslli_epi128::<8>(mid));
            let hi = _mm512_xor_si512(hi, _mm512_bsrli_epi128::<8>(mid));
            acc = reduce(fold_lanes(lo), fold_lanes(hi));
        }
    }
    // The rest, one block at a time (fewer than BATCH blocks).
    let h1 = m128(powers[BATCH - 1]);
    let mut blocks = batches.remainder().chunks_exact(16);
    for block in blocks.by_ref() {
        // SAFETY: `block` is 16 bytes long.
        let x = unsafe { _mm_loadu_si128(block.as_ptr().cast()) };
        acc = dot(_mm_xor_si128(acc, x), h1);
    }
    let tail = blocks.remainder();
    if !tail.is_empty() {
        let mut block = [0u8; 16];
        block[..tail.len()].copy_from_slice(tail);
        acc = dot(_mm_xor_si128(acc, m128(u128::from_le_bytes(block))), h1);
    }
    u128_of(acc)
}
