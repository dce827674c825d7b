//! The `std::io` adapters over the sans-io cipher states.
//!
//! Every cipher direction is a small state machine (`State`): it hands out an input buffer,
//! is told how many bytes were filled, transforms whole units (a CTR buffer, a verified
//! chunk) in place and exposes the result as pending output. The pull (`Read`), push
//! (`Write`) and async adapters only move bytes between that state and their I/O object.

use std::fmt;
use std::io::{self, Read, Write};

use crate::chunked::{OpenState, SealState};
use crate::ctr_cipher::CtrState;
use crate::{CryptoError, Result};

/// One direction of one cipher, as a sans-io state machine.
#[derive(Debug)]
pub(crate) enum State {
    Ctr(Box<CtrState>),
    Seal(Box<SealState>),
    Open(Box<OpenState>),
}

impl State {
    /// Output ready to be handed on.
    pub(crate) fn pending(&self) -> &[u8] {
        match self {
            State::Ctr(s) => s.pending(),
            State::Seal(s) => s.pending(),
            State::Open(s) => s.pending(),
        }
    }

    /// How many output bytes are ready.
    pub(crate) fn pending_len(&self) -> usize {
        match self {
            State::Open(s) => s.pending_len(),
            other => other.pending().len(),
        }
    }

    /// Hands on up to `out.len()` ready output bytes; returns how many.
    pub(crate) fn read_into(&mut self, out: &mut [u8]) -> usize {
        match self {
            State::Open(s) => s.read_into(out),
            other => {
                let pending = other.pending();
                let n = pending.len().min(out.len());
                out[..n].copy_from_slice(&pending[..n]);
                other.consume(n);
                n
            }
        }
    }

    /// `n` bytes of [`State::pending`] were handed on.
    pub(crate) fn consume(&mut self, n: usize) {
        match self {
            State::Ctr(s) => s.consume(n),
            State::Seal(s) => s.consume(n),
            State::Open(s) => s.consume(n),
        }
    }

    /// Where the next input goes; empty while output is pending or after the end.
    pub(crate) fn input(&mut self) -> &mut [u8] {
        match self {
            State::Ctr(s) => s.input(),
            State::Seal(s) => s.input(),
            State::Open(s) => s.input(),
        }
    }

    /// `n > 0` bytes were written to the front of [`State::input`].
    pub(crate) fn filled(&mut self, n: usize) -> Result<()> {
        match self {
            State::Ctr(s) => s.filled(n),
            State::Seal(s) => s.filled(n),
            State::Open(s) => s.filled(n),
        }
    }

    /// The input ended. Only called with no output pending.
    pub(crate) fn finish(&mut self) -> Result<()> {
        match self {
            State::Ctr(s) => s.finish(),
            State::Seal(s) => s.finish(),
            State::Open(s) => s.finish(),
        }
    }

    /// The input ended and all output was handed on.
    pub(crate) fn done(&self) -> bool {
        match self {
            State::Ctr(s) => s.done(),
            State::Seal(s) => s.done(),
            State::Open(s) => s.done(),
        }
    }

    /// How many bytes may be transformed in the caller's own buffer right now (pull path,
    /// no copy), and how many bytes of prefix [`State::direct`] writes before them; `None`
    /// if input must go through [`State::input`].
    pub(crate) fn direct_limit(&self) -> Option<(usize, usize)> {
        match self {
            State::Ctr(s) => s.direct_limit(),
            State::Seal(s) => s.direct_limit(),
            State::Open(_) => None,
        }
    }

    /// Transforms `data[prefix..]` in place (at most the [`State::direct_limit`] limit) and
    /// fills `data[..prefix]`; all of `data` is then output the caller already holds.
    pub(crate) fn direct(&mut self, data: &mut [u8], prefix: usize) {
        match self {
            State::Ctr(s) => s.direct(data, prefix),
            State::Seal(s) => s.direct(data, prefix),
            State::Open(_) => {}
        }
    }
}

/// Copies `reader` into `writer` through a 64 KiB heap buffer (larger than `io::copy`'s, so
/// the keystream and BLAKE3 work on wide batches), returning the bytes copied.
pub(crate) fn copy_wide(mut reader: impl Read, mut writer: impl Write) -> Result<u64> {
    let mut buf = vec![0u8; 64 * 1024];
    let mut total = 0u64;
    loop {
        let n = match reader.read(&mut buf) {
            Ok(0) => return Ok(total),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(CryptoError::from_io(e)),
        };
        writer.write_all(&buf[..n]).map_err(CryptoError::from_io)?;
        total += n as u64;
    }
}

/// A pull-style stream adapter: reading from it yields the encryption (or the verified
/// decryption) of what it reads from the inner reader.
///
/// Returned by [`Cipher::encrypt_reader`](crate::Cipher::encrypt_reader) and
/// [`Cipher::decrypt_reader`](crate::Cipher::decrypt_reader). Cipher errors arrive as an
/// [`io::Error`] wrapping a [`CryptoError`]; recover it with [`CryptoError::from_io`] (or
/// `CryptoError::from`). After such an error the reader only returns
/// [`CryptoError::Poisoned`]. A decrypting reader never returns unverified plaintext.
pub struct StreamReader<R> {
    inner: R,
    state: State,
    poisoned: bool,
}

impl<R> fmt::Debug for StreamReader<R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StreamReader")
            .field("state", &self.state)
            .field("poisoned", &self.poisoned)
            .finish_non_exhaustive()
    }
}

impl<R> StreamReader<R> {
    pub(crate) fn new(inner: R, state: State) -> Self {
        StreamReader {
            inner,
            state,
            poisoned: false,
        }
    }

    /// The inner reader.
    pub fn get_ref(&self) -> &R {
        &self.inner
    }

    /// Unwraps the inner reader (its position is wherever this adapter left it).
    pub fn into_inner(self) -> R {
        self.inner
    }

    fn fail(&mut self, err: CryptoError) -> io::Error {
        self.poisoned = true;
        err.into_io()
    }
}

impl<R: Read> Read for StreamReader<R> {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        if out.is_empty() {
            return Ok(0);
        }
        if self.poisoned {
            return Err(CryptoError::Poisoned.into_io());
        }
        loop {
            if self.state.pending_len() > 0 {
                return Ok(self.state.read_into(out));
            }
            if self.state.done() {
                return Ok(0);
            }
            // Go direct whenever the caller's buffer takes the prefix (a chunk's tag) and at
            // least one byte: the state keeps its own hashing aligned however short the
            // pieces are.
            let direct = self
                .state
                .direct_limit()
                .filter(|&(_, prefix)| out.len() > prefix);
            if let Some((limit, prefix)) = direct {
                let len = (out.len() - prefix).min(limit);
                let n = match self.inner.read(&mut out[prefix..prefix + len]) {
                    Ok(n) => n,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(e) => return Err(e),
                };
                if n > 0 {
                    self.state.direct(&mut out[..prefix + n], prefix);
                    return Ok(prefix + n);
                }
            } else {
                let input = self.state.input();
                let n = match self.inner.read(input) {
                    Ok(n) => n,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(e) => return Err(e),
                };
                if n > 0 {
                    if let Err(e) = self.state.filled(n) {
                        return Err(self.fail(e));
                    }
                    continue;
                }
            }
            if let Err(e) = self.state.finish() {
                return Err(self.fail(e));
            }
        }
    }
}

/// A push-style stream adapter: bytes written to it reach the inner writer encrypted (or
/// decrypted and verified).
///
/// [`StreamWriter::finish`] **must** be called at the end: it writes the final chunk (or
/// checks that the ciphertext was complete) and returns the inner writer. Dropping the writer
/// without `finish` loses buffered data. A decrypting writer only passes verified plaintext
/// on. After any error the writer only returns [`CryptoError::Poisoned`].
pub struct StreamWriter<W> {
    inner: W,
    state: State,
    poisoned: bool,
}

impl<W> fmt::Debug for StreamWriter<W> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StreamWriter")
            .field("state", &self.state)
            .field("poisoned", &self.poisoned)
            .finish_non_exhaustive()
    }
}

impl<W: Write> StreamWriter<W> {
    pub(crate) fn new(inner: W, state: State) -> Self {
        StreamWriter {
            inner,
            state,
            poisoned: false,
        }
    }

    /// The inner writer.
    pub fn get_ref(&self) -> &W {
        &self.inner
    }

    fn drain(&mut self) -> io::Result<()> {
        loop {
            let pending = self.state.pending();
            if pending.is_empty() {
                return Ok(());
            }
            let n = pending.len();
            if let Err(e) = self.inner.write_all(pending) {
                self.poisoned = true;
                return Err(e);
            }
            self.state.consume(n);
        }
    }

    fn check(&self) -> io::Result<()> {
        if self.poisoned {
            return Err(CryptoError::Poisoned.into_io());
        }
        Ok(())
    }

    /// Completes the stream: processes the final chunk, writes all remaining output, flushes
    /// and returns the inner writer. For a decrypting writer this is where a truncated
    /// ciphertext is reported.
    pub fn finish(mut self) -> io::Result<W> {
        self.check()?;
        self.drain()?;
        if let Err(e) = self.state.finish() {
            return Err(e.into_io());
        }
        self.drain()?;
        self.inner.flush()?;
        Ok(self.inner)
    }
}

impl<W: Write> Write for StreamWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.check()?;
        if buf.is_empty() {
            return Ok(0);
        }
        self.drain()?;
        let input = self.state.input();
        let n = input.len().min(buf.len());
        if n == 0 {
            // Only after `finish`, which consumes the writer: unreachable in practice.
            return Err(CryptoError::Poisoned.into_io());
        }
        input[..n].copy_from_slice(&buf[..n]);
        if let Err(e) = self.state.filled(n) {
            self.poisoned = true;
            return Err(e.into_io());
        }
        self.drain()?;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.check()?;
        self.drain()?;
        self.inner.flush()
    }
}
