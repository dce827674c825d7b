//! Authenticates fetched ciphertext while it streams into the store, so that a copy the
//! cipher rejects is never committed.
//!
//! The store's own BLAKE3 check only proves that the bytes are the ones the serving peer
//! announced; a peer that lies consistently (or stored damage under a fresh hash) passes it.
//! [`Verified`] tees the ciphertext to a thread that decrypts it into a sink with the node's
//! cipher and, at end of stream, turns a failed verdict into a read error, which makes the
//! store discard its staging file instead of committing.

use std::io::{self, Read};
use std::sync::Arc;
use std::sync::mpsc::{self, Receiver, SyncSender};
use std::thread::JoinHandle;

use dfs_crypto::{Cipher, CryptoError};

/// Chunks in flight to the verifying thread (each at most one store read buffer).
const IN_FLIGHT: usize = 4;

/// A reader that passes bytes through and fails at end of stream (or as soon as the damage
/// is found) unless `cipher` authenticates them.
pub(crate) struct Verified<R> {
    inner: R,
    tx: Option<SyncSender<Vec<u8>>>,
    verifier: Option<JoinHandle<Result<u64, CryptoError>>>,
}

impl<R: Read> Verified<R> {
    /// Starts the verifying thread for ciphertext read through `inner`.
    pub(crate) fn new<C: Cipher>(inner: R, cipher: Arc<C>) -> io::Result<Self> {
        let (tx, rx) = mpsc::sync_channel(IN_FLIGHT);
        let verifier = std::thread::Builder::new()
            .name("dfs-verify".to_owned())
            .spawn(move || cipher.decrypt(Chunks::new(rx), io::sink()))?;
        Ok(Verified {
            inner,
            tx: Some(tx),
            verifier: Some(verifier),
        })
    }

    /// Ends the verifier's input and waits for its verdict.
    fn verdict(&mut self) -> io::Result<()> {
        self.tx = None;
        let Some(handle) = self.verifier.take() else {
            return Ok(());
        };
        match handle.join() {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) => Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("fetched copy failed authentication: {e}"),
            )),
            Err(_) => Err(io::Error::other("the verifying thread panicked")),
        }
    }
}

impl<R: Read> Read for Verified<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        if n == 0 {
            self.verdict()?;
            return Ok(0);
        }
        if let Some(tx) = &self.tx
            && tx.send(buf[..n].to_vec()).is_err()
        {
            // The verifier stopped before the end: it found the damage.
            self.verdict()?;
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "fetched copy failed authentication",
            ));
        }
        Ok(n)
    }
}

/// The verifier's side: the teed chunks as a `Read`, ending when the sender is dropped.
struct Chunks {
    rx: Receiver<Vec<u8>>,
    chunk: Vec<u8>,
    pos: usize,
}

impl Chunks {
    fn new(rx: Receiver<Vec<u8>>) -> Self {
        Chunks {
            rx,
            chunk: Vec::new(),
            pos: 0,
        }
    }
}

impl Read for Chunks {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while self.pos == self.chunk.len() {
            match self.rx.recv() {
                Ok(next) => {
                    self.chunk = next;
                    self.pos = 0;
                }
                Err(_) => return Ok(0),
            }
        }
        let n = buf.len().min(self.chunk.len() - self.pos);
        buf[..n].copy_from_slice(&self.chunk[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use dfs_crypto::{Aes256CtrBlake3, Key};

    fn sealed(plain: &[u8]) -> (Arc<Aes256CtrBlake3>, Vec<u8>) {
        let cipher = Aes256CtrBlake3::new(&Key::generate().unwrap());
        let mut out = Vec::new();
        cipher.encrypt(plain, &mut out).unwrap();
        (Arc::new(cipher), out)
    }

    #[test]
    fn passes_authentic_bytes_through() {
        let plain: Vec<u8> = (0..300_000u32).map(|i| i as u8).collect();
        let (cipher, ct) = sealed(&plain);
        let mut out = Vec::new();
        Verified::new(&ct[..], cipher)
            .unwrap()
            .read_to_end(&mut out)
            .unwrap();
        assert_eq!(out, ct);
    }

    #[test]
    fn fails_on_a_flipped_bit_before_end_of_stream_is_reported() {
        let (cipher, mut ct) = sealed(&[7u8; 200_000]);
        let mid = ct.len() / 2;
        ct[mid] ^= 1;
        let mut out = Vec::new();
        let err = Verified::new(&ct[..], cipher)
            .unwrap()
            .read_to_end(&mut out)
            .unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
    }

    #[test]
    fn fails_on_truncation() {
        let (cipher, ct) = sealed(&[1u8; 100_000]);
        let short = &ct[..ct.len() - 1];
        let mut out = Vec::new();
        let err = Verified::new(short, cipher)
            .unwrap()
            .read_to_end(&mut out)
            .unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
    }
}
