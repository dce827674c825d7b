//! The crate's error type.

use std::io;

/// Errors from encryption, decryption and key handling.
///
/// Errors raised inside the [`std::io::Read`]/[`std::io::Write`] adapters travel as an
/// [`io::Error`] wrapping a `CryptoError` (see [`CryptoError::from_io`]); the provided
/// [`Cipher::encrypt`](crate::Cipher::encrypt)/[`Cipher::decrypt`](crate::Cipher::decrypt)
/// unwrap them again, so callers can match on the typed variant.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CryptoError {
    /// The underlying reader or writer failed.
    #[error("i/o error during encryption or decryption")]
    Io {
        /// The underlying error.
        #[source]
        source: io::Error,
    },

    /// The ciphertext is shorter than its header.
    #[error("ciphertext header is too short: got {got} bytes, need {expected}")]
    ShortHeader {
        /// Bytes available before the end of the input.
        got: usize,
        /// The header length of this format.
        expected: usize,
    },

    /// The header does not belong to this format (bad magic, reserved bits set, bad chunk size).
    #[error("bad ciphertext header: {reason}")]
    BadHeader {
        /// What is wrong with the header.
        reason: &'static str,
    },

    /// The header names a format version this crate cannot read.
    #[error("unsupported ciphertext format version {version}")]
    UnsupportedVersion {
        /// The version byte found in the header.
        version: u8,
    },

    /// A chunk failed verification: wrong key, modified, reordered, spliced or cut ciphertext.
    #[error("authentication failed at chunk {chunk} (wrong key or modified ciphertext)")]
    Authentication {
        /// Index of the first chunk that failed (0-based).
        chunk: u64,
    },

    /// The ciphertext ends before its final chunk: it was truncated.
    #[error("ciphertext is truncated: chunk {chunk} is missing or incomplete")]
    Truncated {
        /// Index of the first missing or incomplete chunk (0-based).
        chunk: u64,
    },

    /// Bytes follow the authenticated final chunk.
    #[error("unexpected data after the final chunk {chunk}")]
    TrailingData {
        /// Index of the final chunk (0-based).
        chunk: u64,
    },

    /// No plaintext encrypts to a ciphertext of this length.
    #[error("no plaintext encrypts to a ciphertext of {ciphertext_len} bytes")]
    InvalidLength {
        /// The impossible ciphertext length.
        ciphertext_len: u64,
    },

    /// A chunk size outside the supported range.
    #[error(
        "invalid chunk size {chunk_size}: must be a multiple of 16 between 16 and {max}",
        max = crate::MAX_CHUNK_SIZE
    )]
    InvalidChunkSize {
        /// The rejected chunk size.
        chunk_size: u64,
    },

    /// A key could not be parsed.
    #[error("invalid key: {reason}")]
    InvalidKey {
        /// What is wrong with the key text.
        reason: &'static str,
    },

    /// The stream already failed (an earlier call returned the error); it cannot continue.
    #[error("stream already failed earlier; it cannot be used further")]
    Poisoned,

    /// The operating system's random number generator failed.
    #[error("operating system random number generator failed: {source}")]
    Random {
        /// The error from `getrandom`.
        source: getrandom::Error,
    },
}

impl CryptoError {
    /// Wraps this error in an [`io::Error`] (kind chosen from the variant), as the
    /// `Read`/`Write` adapters return it.
    pub fn into_io(self) -> io::Error {
        match self {
            CryptoError::Io { source } => source,
            CryptoError::ShortHeader { .. } | CryptoError::Truncated { .. } => {
                io::Error::new(io::ErrorKind::UnexpectedEof, self)
            }
            CryptoError::Authentication { .. }
            | CryptoError::BadHeader { .. }
            | CryptoError::UnsupportedVersion { .. }
            | CryptoError::TrailingData { .. }
            | CryptoError::InvalidLength { .. } => io::Error::new(io::ErrorKind::InvalidData, self),
            CryptoError::InvalidChunkSize { .. } | CryptoError::InvalidKey { .. } => {
                io::Error::new(io::ErrorKind::InvalidInput, self)
            }
            other => io::Error::other(other),
        }
    }

    /// Recovers the typed error from an [`io::Error`] produced by one of this crate's
    /// adapters; any other `io::Error` becomes [`CryptoError::Io`].
    pub fn from_io(err: io::Error) -> Self {
        if !err.get_ref().is_some_and(|inner| inner.is::<CryptoError>()) {
            return CryptoError::Io { source: err };
        }
        let kind = err.kind();
        match err
            .into_inner()
            .map(|inner| inner.downcast::<CryptoError>())
        {
            Some(Ok(typed)) => *typed,
            Some(Err(other)) => CryptoError::Io {
                source: io::Error::new(kind, other),
            },
            // `get_ref` returned `Some`, so this cannot happen; keep the kind anyway.
            None => CryptoError::Io {
                source: io::Error::from(kind),
            },
        }
    }
}

impl From<io::Error> for CryptoError {
    fn from(err: io::Error) -> Self {
        CryptoError::from_io(err)
    }
}

impl From<CryptoError> for io::Error {
    fn from(err: CryptoError) -> Self {
        err.into_io()
    }
}

impl From<getrandom::Error> for CryptoError {
    fn from(source: getrandom::Error) -> Self {
        CryptoError::Random { source }
    }
}

/// `Result` with [`CryptoError`].
pub type Result<T, E = CryptoError> = std::result::Result<T, E>;
