//! `Aes256Ctr::apply_keystream` at any `u64` offset: the keystream of a 128-bit counter does
//! not end where byte offsets stop fitting in a `u64`, and no offset may panic.

use dfs_crypto::{Aes256Ctr, Key};

/// CTR: the keystream from byte `o` under IV `v` is the keystream from byte `o - 16m` under
/// IV `v + m` (the 128-bit counter, wrapping).
fn shifted(c: &Aes256Ctr, iv: [u8; 16], offset: u64, len: usize) -> Vec<u8> {
    let m = offset / 16;
    let iv2 = u128::from_be_bytes(iv)
        .wrapping_add(u128::from(m))
        .to_be_bytes();
    let mut out = vec![0u8; len];
    c.apply_keystream(iv2, offset - 16 * m, &mut out);
    out
}

#[test]
fn offsets_near_u64_max_do_not_panic_and_are_right() {
    let c = Aes256Ctr::new(&Key::from_bytes([1; 32]));
    for iv in [[0x33u8; 16], [0xff; 16], [0; 16]] {
        for offset in [
            u64::MAX,
            u64::MAX - 1,
            u64::MAX - 4,
            u64::MAX - 15,
            u64::MAX - 16,
        ] {
            for len in [1usize, 2, 16, 40] {
                let mut got = vec![0u8; len];
                c.apply_keystream(iv, offset, &mut got);
                assert_eq!(
                    got,
                    shifted(&c, iv, offset, len),
                    "offset {offset} len {len}"
                );
            }
        }
    }
}
