//! AES-256-CTR keystream with VAES on 512-bit registers (x86-64, AVX-512F + AVX-512BW + VAES),
//! selected at run time.
//!
//! With `clmul`, this is the crate's only `unsafe` code: calling the `#[target_feature]`
//! function (sound because a [`VaesKey`] only exists after the features were detected) and
//! unaligned loads and stores within the bounds of the caller's slice. It is
//! differential-tested against the RustCrypto `ctr::Ctr128BE<aes::Aes256>` reference
//! (`keystream` tests, and the proptests in `tests/`), together with the portable path.
#![allow(unsafe_code)]

use std::arch::x86_64::{
    __m128i, __m512i, _mm_set_epi64x, _mm512_add_epi64, _mm512_aesenc_epi128,
    _mm512_aesenclast_epi128, _mm512_broadcast_i32x4, _mm512_loadu_si512, _mm512_mask_storeu_epi8,
    _mm512_maskz_loadu_epi8, _mm512_set_epi64, _mm512_shuffle_epi8, _mm512_storeu_si512,
    _mm512_xor_si512,
};

use zeroize::{Zeroize, ZeroizeOnDrop};

/// Blocks per main-loop iteration: 8 registers of 4 blocks, enough independent work to hide
/// the `vaesenc` latency.
const LANES: usize = 8;
const BLOCKS: usize = LANES * 4;

/// The AES-256 round keys, usable only on a CPU with the required features.
#[derive(Clone, Zeroize, ZeroizeOnDrop)]
pub(crate) struct VaesKey {
    /// The 15 round keys, each a little-endian `u128` of the FIPS-197 byte order.
    round_keys: [u128; 15],
}

impl VaesKey {
    /// Expands `key`, or returns `None` if this CPU lacks AVX-512F, AVX-512BW or VAES.
    pub(crate) fn new(key: &[u8; 32]) -> Option<Self> {
        let detected = std::arch::is_x86_feature_detected!("avx512f")
            && std::arch::is_x86_feature_detected!("avx512bw")
            && std::arch::is_x86_feature_detected!("vaes");
        if !detected {
            return None;
        }
        let mut expanded = crate::key_schedule::expand_aes256(key);
        let round_keys = std::array::from_fn(|i| u128::from_le_bytes(expanded[i]));
        expanded.zeroize();
        Some(VaesKey { round_keys })
    }

    /// See [`CtrKey::apply`](crate::keystream::CtrKey::apply).
    pub(crate) fn apply(&self, counter: u128, data: &mut [u8]) -> u128 {
        // SAFETY: a `VaesKey` is only constructed after detecting AVX-512F, AVX-512BW and
        // VAES on this CPU (`VaesKey::new`), which is all `apply_vaes` enables.
        unsafe { apply_vaes(&self.round_keys, counter, data) }
    }

    /// See [`CtrKey::apply_b2b`](crate::keystream::CtrKey::apply_b2b).
    pub(crate) fn apply_b2b(&self, counter: u128, src: &[u8], dst: &mut [u8]) {
        // SAFETY: as in `apply`: the features were detected when `self` was built.
        unsafe { apply_vaes_b2b(&self.round_keys, counter, src, dst) }
    }
}

#[inline]
#[target_feature(enable = "sse2")]
fn m128(value: u128) -> __m128i {
    _mm_set_epi64x((value >> 64) as i64, value as i64)
}

/// Encrypts four counter blocks held little-endian in `ctr` (one `u128` per lane).
#[inline]
#[target_feature(enable = "avx512f,avx512bw,vaes")]
fn encrypt4(rk: &[__m512i; 15], x: __m512i) -> __m512i {
    let mut x = _mm512_xor_si512(x, rk[0]);
    for key in &rk[1..14] {
        x = _mm512_aesenc_epi128(x, *key);
    }
    _mm512_aesenclast_epi128(x, rk[14])
}

/// The broadcast round keys and constants of one call.
struct Schedule {
    rk: [__m512i; 15],
    bswap: __m512i,
}

#[inline]
#[target_feature(enable = "avx512f,avx512bw,vaes")]
fn schedule(round_keys: &[u128; 15]) -> Schedule {
    Schedule {
        rk: std::array::from_fn(|i| _mm512_broadcast_i32x4(m128(round_keys[i]))),
        // Reverses the bytes of each 128-bit lane: little-endian integer -> big-endian block.
        bswap: _mm512_broadcast_i32x4(m128(0x00010203_04050607_08090a0b_0c0d0e0f)),
    }
}

/// Keystream for the BLOCKS counter blocks starting at `counter`.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,vaes")]
fn keystream_batch(s: &Schedule, counter: u128) -> [__m512i; LANES] {
    let mut ks = [s.rk[0]; LANES];
    let lo = counter as u64;
    if lo <= u64::MAX - BLOCKS as u64 {
        // No carry into the high half within this batch: 64-bit lane adds suffice.
        let hi = (counter >> 64) as i64;
        let lo = lo as i64;
        let base = _mm512_add_epi64(
            _mm512_set_epi64(hi, lo, hi, lo, hi, lo, hi, lo),
            _mm512_set_epi64(0, 3, 0, 2, 0, 1, 0, 0),
        );
        for (i, k) in ks.iter_mut().enumerate() {
            let n = 4 * i as i64;
            let step = _mm512_set_epi64(0, n, 0, n, 0, n, 0, n);
            *k = _mm512_shuffle_epi8(_mm512_add_epi64(base, step), s.bswap);
        }
    } else {
        for (i, k) in ks.iter_mut().enumerate() {
            *k = counter_blocks(counter.wrapping_add(4 * i as u128), s.bswap);
        }
    }
    for k in ks.iter_mut() {
        *k = encrypt4(&s.rk, *k);
    }
    ks
}

/// The mask selecting the first `len <= 64` bytes.
#[inline]
fn byte_mask(len: usize) -> u64 {
    if len >= 64 {
        u64::MAX
    } else {
        (1u64 << len) - 1
    }
}

#[target_feature(enable = "avx512f,avx512bw,vaes")]
fn apply_vaes(round_keys: &[u128; 15], mut counter: u128, data: &mut [u8]) -> u128 {
    let s = schedule(round_keys);
    let mut chunks = data.chunks_exact_mut(BLOCKS * 16);
    for chunk in &mut chunks {
        let ks = keystream_batch(&s, counter);
        for (i, k) in ks.iter().enumerate() {
            let ptr = chunk[i * 64..].as_mut_ptr();
            // SAFETY: `chunk` is exactly BLOCKS * 16 = LANES * 64 bytes, so bytes
            // `i * 64 .. i * 64 + 64` are in bounds for `i < LANES`; unaligned access is
            // what `loadu`/`storeu` are for.
            unsafe {
                let d = _mm512_loadu_si512(ptr as *const __m512i);
                _mm512_storeu_si512(ptr as *mut __m512i, _mm512_xor_si512(d, *k));
            }
        }
        counter = counter.wrapping_add(BLOCKS as u128);
    }

    // Tail: up to BLOCKS * 16 - 1 bytes, 64 at a time with masked loads and stores.
    for part in chunks.into_remainder().chunks_mut(64) {
        let ks = encrypt4(&s.rk, counter_blocks(counter, s.bswap));
        let len = part.len();
        let mask = byte_mask(len);
        let ptr = part.as_mut_ptr();
        // SAFETY: the mask selects only bytes `0..len` of `part`; masked-off bytes are
        // neither read nor written (AVX-512 masked memory operations suppress faults for
        // them).
        unsafe {
            let d = _mm512_maskz_loadu_epi8(mask, ptr as *const i8);
            _mm512_mask_storeu_epi8(ptr as *mut i8, mask, _mm512_xor_si512(d, ks));
        }
        counter = counter.wrapping_add(len.div_ceil(16) as u128);
    }
    counter
}

/// `dst = src XOR keystream`, `src` and `dst` of equal length (checked by the caller).
#[target_feature(enable = "avx512f,avx512bw,vaes")]
fn apply_vaes_b2b(round_keys: &[u128; 15], mut counter: u128, src: &[u8], dst: &mut [u8]) {
    let s = schedule(round_keys);
    let len = src.len().min(dst.len());
    let (src, dst) = (&src[..len], &mut dst[..len]);
    let mut src_chunks = src.chunks_exact(BLOCKS * 16);
    let mut dst_chunks = dst.chunks_exact_mut(BLOCKS * 16);
    for (from, to) in (&mut src_chunks).zip(&mut dst_chunks) {
        let ks = keystream_batch(&s, counter);
        for (i, k) in ks.iter().enumerate() {
            let src_ptr = from[i * 64..].as_ptr();
            let dst_ptr = to[i * 64..].as_mut_ptr();
            // SAFETY: `from` and `to` are exactly LANES * 64 bytes, so bytes
            // `i * 64 .. i * 64 + 64` of each are in bounds for `i < LANES`.
            unsafe {
                let d = _mm512_loadu_si512(src_ptr as *const __m512i);
                _mm512_storeu_si512(dst_ptr as *mut __m512i, _mm512_xor_si512(d, *k));
            }
        }
        counter = counter.wrapping_add(BLOCKS as u128);
    }
    let from_tail = src_chunks.remainder();
    let to_tail = dst_chunks.into_remainder();
    for (from, to) in from_tail.chunks(64).zip(to_tail.chunks_mut(64)) {
        let ks = encrypt4(&s.rk, counter_blocks(counter, s.bswap));
        let part = from.len().min(to.len());
        let mask = byte_mask(part);
        // SAFETY: the mask selects only bytes `0..part` of `from` and `to`, both at least
        // `part` bytes long; masked-off bytes are neither read nor written.
        unsafe {
            let d = _mm512_maskz_loadu_epi8(mask, from.as_ptr() as *const i8);
            _mm512_mask_storeu_epi8(to.as_mut_ptr() as *mut i8, mask, _mm512_xor_si512(d, ks));
        }
        counter = counter.wrapping_add(part.div_ceil(16) as u128);
    }
}

/// Four consecutive big-endian counter blocks starting at `counter`, with full 128-bit carry.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,vaes")]
fn counter_blocks(counter: u128, bswap: __m512i) -> __m512i {
    let c: [u128; 4] = std::array::from_fn(|i| counter.wrapping_add(i as u128));
    let v = _mm512_set_epi64(
        (c[3] >> 64) as i64,
        c[3] as i64,
        (c[2] >> 64) as i64,
        c[2] as i64,
        (c[1] >> 64) as i64,
        c[1] as i64,
        (c[0] >> 64) as i64,
        c[0] as i64,
    );
    _mm512_shuffle_epi8(v, bswap)
}
