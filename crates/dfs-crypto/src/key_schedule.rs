//! The AES-256 key expansion (FIPS-197 section 5.2) for the hand-written VAES backend.

/// The AES S-box, computed from its definition (multiplicative inverse in GF(2^8) followed by
/// the affine transform) rather than typed in.
fn sbox() -> [u8; 256] {
    let mut sbox = [0u8; 256];
    let (mut p, mut q) = (1u8, 1u8);
    loop {
        // p *= 3
        p ^= (p << 1) ^ if p & 0x80 != 0 { 0x1b } else { 0 };
        // q /= 3
        q ^= q << 1;
        q ^= q << 2;
        q ^= q << 4;
        if q & 0x80 != 0 {
            q ^= 0x09;
        }
        let x = q ^ q.rotate_left(1) ^ q.rotate_left(2) ^ q.rotate_left(3) ^ q.rotate_left(4);
        sbox[usize::from(p)] = x ^ 0x63;
        if p == 1 {
            break;
        }
    }
    sbox[0] = 0x63;
    sbox
}

/// The 15 round keys of AES-256 for `key`, each in FIPS-197 byte order.
pub(crate) fn expand_aes256(key: &[u8; 32]) -> [[u8; 16]; 15] {
    let sbox = sbox();
    let sub = |w: [u8; 4]| w.map(|b| sbox[usize::from(b)]);
    let mut words = [[0u8; 4]; 60];
    for (i, word) in words.iter_mut().take(8).enumerate() {
        word.copy_from_slice(&key[4 * i..4 * i + 4]);
    }
    let mut rcon = 1u8;
    for i in 8..60 {
        let mut temp = words[i - 1];
        if i % 8 == 0 {
            temp.rotate_left(1);
            temp = sub(temp);
            temp[0] ^= rcon;
            rcon = (rcon << 1) ^ if rcon & 0x80 != 0 { 0x1b } else { 0 };
        } else if i % 8 == 4 {
            temp = sub(temp);
        }
        words[i] = std::array::from_fn(|j| words[i - 8][j] ^ temp[j]);
    }
    let round_keys = std::array::from_fn(|r| {
        let mut rk = [0u8; 16];
        for (j, word) in words[4 * r..4 * r + 4].iter().enumerate() {
            rk[4 * j..4 * j + 4].copy_from_slice(word);
        }
        rk
    });
    zeroize::Zeroize::zeroize(&mut words);
    round_keys
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sbox_known_values() {
        let s = sbox();
        assert_eq!(s[0x00], 0x63);
        assert_eq!(s[0x01], 0x7c);
        assert_eq!(s[0x53], 0xed);
        assert_eq!(s[0xff], 0x16);
    }

    /// FIPS-197 appendix A.3: the last round key of the example AES-256 expansion.
    #[test]
    fn fips197_a3_expansion() {
        let key: [u8; 32] = std::array::from_fn(|i| {
            [
                0x60, 0x3d, 0xeb, 0x10, 0x15, 0xca, 0x71, 0xbe, 0x2b, 0x73, 0xae, 0xf0, 0x85, 0x7d,
                0x77, 0x81, 0x1f, 0x35, 0x2c, 0x07, 0x3b, 0x61, 0x08, 0xd7, 0x2d, 0x98, 0x10, 0xa3,
                0x09, 0x14, 0xdf, 0xf4,
            ][i]
        });
        let rk = expand_aes256(&key);
        assert_eq!(rk[0][..], key[..16]);
        assert_eq!(rk[1][..], key[16..]);
        // w[56..60] = fe4890d1 e6188d0b 046df344 706c631e
        assert_eq!(
            rk[14],
            [
                0xfe, 0x48, 0x90, 0xd1, 0xe6, 0x18, 0x8d, 0x0b, 0x04, 0x6d, 0xf3, 0x44, 0x70, 0x6c,
                0x63, 0x1e
            ]
        );
    }
}
