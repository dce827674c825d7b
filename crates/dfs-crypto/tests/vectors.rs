//! Known-answer tests: NIST SP 800-38A F.5.5 (CTR-AES256) and the Go format.
#![allow(clippy::unwrap_used)]

use dfs_crypto::{Aes256Ctr, Cipher, CryptoError, Key};

fn unhex(s: &str) -> Vec<u8> {
    let s: String = s.split_whitespace().collect();
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}

const NIST_KEY: &str = "603deb1015ca71be2b73aef0857d77811f352c073b6108d72d9810a30914dff4";
const NIST_IV: &str = "f0f1f2f3f4f5f6f7f8f9fafbfcfdfeff";
const NIST_PLAINTEXT: &str = "6bc1bee22e409f96e93d7e117393172a ae2d8a571e03ac9c9eb76fac45af8e51
                              30c81c46a35ce411e5fbc1191a0a52ef f69f2445df4f9b17ad2b417be66c3710";
const NIST_CIPHERTEXT: &str = "601ec313775789a5b7a7f504bbf3d228 f443e3ca4d62b59aca84e990cacaf5c5
                               2b0930daa23de94ce87017ba2d84988d dfc9c58db67aada613c2dd08457941a6";

fn nist_cipher() -> Aes256Ctr {
    Aes256Ctr::new(&Key::from_hex(NIST_KEY).unwrap())
}

fn iv() -> [u8; 16] {
    unhex(NIST_IV).try_into().unwrap()
}

#[test]
fn nist_sp800_38a_f55_ctr_aes256_encrypt() {
    let cipher = nist_cipher();
    let mut data = unhex(NIST_PLAINTEXT);
    cipher.apply_keystream(iv(), 0, &mut data);
    assert_eq!(data, unhex(NIST_CIPHERTEXT));
}

#[test]
fn nist_sp800_38a_f55_ctr_aes256_decrypt_at_offsets() {
    let cipher = nist_cipher();
    let expected = unhex(NIST_PLAINTEXT);
    let ciphertext = unhex(NIST_CIPHERTEXT);
    for offset in 0..ciphertext.len() {
        let mut data = ciphertext[offset..].to_vec();
        cipher.apply_keystream(iv(), offset as u64, &mut data);
        assert_eq!(data, expected[offset..], "offset {offset}");
    }
}

/// A file in the Go original's format (`BasicCrypto.Encrypt`: IV || CTR body) built from the
/// NIST vector: the IV is the NIST initial counter block.
#[test]
fn go_format_file_decrypts() {
    let cipher = nist_cipher();
    let mut file = unhex(NIST_IV);
    file.extend(unhex(NIST_CIPHERTEXT));
    let mut plain = Vec::new();
    let n = cipher.decrypt(&file[..], &mut plain).unwrap();
    assert_eq!(n, 64);
    assert_eq!(plain, unhex(NIST_PLAINTEXT));
    assert_eq!(cipher.plaintext_len(file.len() as u64).unwrap(), 64);
}

#[test]
fn go_format_file_is_written() {
    let cipher = nist_cipher();
    let plain = unhex(NIST_PLAINTEXT);
    let mut file = Vec::new();
    std::io::copy(
        &mut cipher.encrypt_reader_with_iv(&plain[..], iv()),
        &mut file,
    )
    .unwrap();
    let mut expected = unhex(NIST_IV);
    expected.extend(unhex(NIST_CIPHERTEXT));
    assert_eq!(file, expected);
}

#[test]
fn go_format_short_header() {
    let cipher = nist_cipher();
    for len in 0..16 {
        let err = cipher
            .decrypt(&vec![0u8; len][..], &mut Vec::new())
            .unwrap_err();
        assert!(
            matches!(err, CryptoError::ShortHeader { got, expected: 16 } if got == len),
            "{err:?}"
        );
        assert!(cipher.plaintext_len(len as u64).is_err());
    }
    // An IV alone is the empty plaintext.
    let mut out = Vec::new();
    assert_eq!(cipher.decrypt(&[0u8; 16][..], &mut out).unwrap(), 0);
}
