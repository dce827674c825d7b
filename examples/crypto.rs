//! `dfs-crypto` on its own: streams a generated 256 MiB plaintext through both ciphers
//! (encrypt, then decrypt and verify) in constant memory and prints the throughput.
//!
//! ```sh
//! cargo run --release --example crypto
//! ```

use std::io::{self, Read, Write};
use std::time::Instant;

use dfs_crypto::{Aes256Ctr, Aes256CtrBlake3, Cipher, Key};

/// Total plaintext streamed through each cipher.
const TOTAL: u64 = 256 * 1024 * 1024;

/// Length of the repeating plaintext pattern (a prime, so it never lines up with chunks).
const PATTERN_LEN: usize = 1_048_573;

/// A pseudo-random pattern (xorshift; not secret) that the plaintext repeats.
fn pattern() -> Vec<u8> {
    let mut state = 0x9e37_79b9_7f4a_7c15_u64;
    (0..PATTERN_LEN)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state as u8
        })
        .collect()
}

/// A deterministic plaintext generator: `len` bytes, never held in memory at once.
struct Generated<'a> {
    pattern: &'a [u8],
    position: u64,
    len: u64,
}

impl<'a> Generated<'a> {
    fn new(pattern: &'a [u8], len: u64) -> Self {
        Generated {
            pattern,
            position: 0,
            len,
        }
    }
}

impl Read for Generated<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let offset = (self.position % PATTERN_LEN as u64) as usize;
        let left = usize::try_from(self.len - self.position).unwrap_or(usize::MAX);
        let n = buf.len().min(left).min(PATTERN_LEN - offset);
        buf[..n].copy_from_slice(&self.pattern[offset..offset + n]);
        self.position += n as u64;
        Ok(n)
    }
}

/// A sink that checks it receives exactly the generated plaintext.
struct Verify<'a> {
    pattern: &'a [u8],
    position: u64,
}

impl Write for Verify<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let offset = (self.position % PATTERN_LEN as u64) as usize;
        let n = buf.len().min(PATTERN_LEN - offset);
        if buf[..n] != self.pattern[offset..offset + n] {
            return Err(io::Error::other(format!(
                "decrypted bytes differ near offset {}",
                self.position
            )));
        }
        self.position += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

fn gib_per_s(bytes: u64, seconds: f64) -> f64 {
    bytes as f64 / seconds / (1024.0 * 1024.0 * 1024.0)
}

fn run<C: Cipher>(
    name: &str,
    cipher: &C,
    pattern: &[u8],
) -> Result<(), Box<dyn std::error::Error>> {
    // 1. Encrypt only: generated plaintext -> encrypting reader -> sink.
    let start = Instant::now();
    let written = cipher.encrypt(Generated::new(pattern, TOTAL), io::sink())?;
    let encrypt = start.elapsed().as_secs_f64();
    assert_eq!(written, cipher.ciphertext_len(TOTAL));

    // 2. Round trip: plaintext -> encrypting reader -> decrypting reader -> verifying sink.
    let start = Instant::now();
    let encrypted = cipher.encrypt_reader(Generated::new(pattern, TOTAL))?;
    let mut verify = Verify {
        pattern,
        position: 0,
    };
    let read = cipher.decrypt(encrypted, &mut verify)?;
    let round_trip = start.elapsed().as_secs_f64();
    assert_eq!(read, TOTAL);
    assert_eq!(verify.position, TOTAL);

    println!(
        "{name:<16} encrypt {:>6.2} GiB/s   encrypt+decrypt+verify {:>6.2} GiB/s   ({} MiB, ciphertext {} bytes)",
        gib_per_s(TOTAL, encrypt),
        gib_per_s(TOTAL, round_trip),
        TOTAL / (1024 * 1024),
        written,
    );
    Ok(())
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let key = Key::generate()?;
    let pattern = pattern();
    println!("dfs crypto demo: streaming a generated 256 MiB plaintext through each cipher");
    println!("(the plaintext generator and the verifying sink are included in the timings)");
    let ctr = Aes256Ctr::new(&key);
    println!("AES backend: {}", ctr.backend());
    run("Aes256Ctr", &ctr, &pattern)?;
    run("Aes256CtrBlake3", &Aes256CtrBlake3::new(&key), &pattern)?;
    Ok(())
}
