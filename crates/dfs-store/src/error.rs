//! The crate's error type.

use std::io;
use std::path::PathBuf;

/// Everything that can go wrong in a store operation.
///
/// Match on [`StoreError::NotFound`] to tell a missing key from a failure; every other
/// variant carries the key and/or the path it concerns.
///
/// ```
/// use dfs_store::{Store, StoreError};
///
/// let dir = tempfile::tempdir()?;
/// let store = Store::open(dir.path())?;
/// match store.read("missing") {
///     Err(StoreError::NotFound { key }) => assert_eq!(key, "missing"),
///     other => panic!("expected NotFound, got {other:?}"),
/// }
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// No object is stored under `key`.
    #[error("no object stored under key {key:?}")]
    NotFound {
        /// The key that was looked up.
        key: String,
    },

    /// The key is refused (empty, too long, or not a safe relative path for
    /// [`PlainPath`](crate::PlainPath)). Nothing was written.
    #[error("invalid key {key:?}: {reason}")]
    InvalidKey {
        /// The refused key.
        key: String,
        /// Why it was refused.
        reason: String,
    },

    /// A [`PathTransform`](crate::PathTransform) returned a location the store refuses
    /// (it would leave the root, or contains an unsafe segment). Nothing was written.
    #[error("path transform returned an invalid location for key {key:?}: {reason}")]
    InvalidLocation {
        /// The key that was transformed.
        key: String,
        /// What is wrong with the returned location.
        reason: String,
    },

    /// A configuration value is out of range (for example a [`HashPath`](crate::HashPath)
    /// whose segments do not fit in the hash).
    #[error("invalid configuration: {reason}")]
    InvalidConfig {
        /// What is wrong.
        reason: String,
    },

    /// A file-system operation failed.
    #[error("i/o error while trying to {op} {path}")]
    Io {
        /// What the store was doing (`"create"`, `"fsync"`, `"rename into"`, ...).
        op: &'static str,
        /// The file or directory involved.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: io::Error,
    },

    /// The caller's reader failed while the store was consuming it. Nothing was committed.
    #[error("the source reader failed while writing key {key:?}")]
    Source {
        /// The key being written.
        key: String,
        /// The error the reader returned.
        #[source]
        source: io::Error,
    },

    /// The bytes given to [`Store::write_expecting`](crate::Store::write_expecting) are not
    /// the expected size or do not hash to the expected BLAKE3. Nothing was committed (the
    /// staging file is removed; a previous version of the key is untouched).
    #[error("refused to store key {key:?}: {mismatch}")]
    Mismatch {
        /// The key being written.
        key: String,
        /// How the bytes differ from the expectation.
        mismatch: Mismatch,
    },

    /// [`Store::write_tailed`](crate::Store::write_tailed) was given a [`Tail`](crate::Tail)
    /// that another write already took (a tail follows one write). Nothing was written.
    #[error("cannot write key {key:?}: its Tail already follows another write")]
    TailReused {
        /// The key not written.
        key: String,
    },

    /// The write a [`Follower`](crate::Follower) followed failed: nothing was committed,
    /// and the bytes it handed out must be discarded.
    #[error("the write of key {key:?} being followed failed: {reason}")]
    Abandoned {
        /// The key being written.
        key: String,
        /// Why the write failed.
        reason: String,
    },

    /// A stored file is damaged, truncated, foreign, or holds another key.
    #[error("corrupt object at {path}{}: {reason}", key_suffix(.key))]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// The key it was read for or claims to hold, when known.
        key: Option<String>,
        /// What is wrong.
        reason: String,
    },

    /// Another [`Store`](crate::Store) (in this process or another) has the root open, and
    /// one of the two has a pack: a store with a pack is one `Store`'s alone (see
    /// [`StoreBuilder::pack_small_objects`](crate::StoreBuilder::pack_small_objects)).
    #[error("the store is in use by another Store and one of them has a pack (lock file {path})")]
    Locked {
        /// The lock file.
        path: PathBuf,
    },

    /// A stored file has a format version this build does not read.
    #[error("object at {path} has unsupported format version {version}")]
    UnsupportedVersion {
        /// The file.
        path: PathBuf,
        /// The version found in its header.
        version: u16,
    },

    /// Encryption or decryption failed.
    #[cfg(feature = "crypto")]
    #[error("cipher failed for key {key:?}")]
    Crypto {
        /// The key being written or read.
        key: String,
        /// The cipher's error.
        #[source]
        source: dfs_crypto::CryptoError,
    },

    /// A blocking task of the async wrappers panicked or was cancelled.
    #[cfg(feature = "tokio")]
    #[error("blocking store task failed")]
    Task {
        /// The join error.
        #[source]
        source: tokio::task::JoinError,
    },
}

/// How the bytes of a [`Store::write_expecting`](crate::Store::write_expecting) differ
/// from the [`Expected`](crate::Expected) size and hash; see [`StoreError::Mismatch`].
///
/// ```
/// use dfs_store::Mismatch;
/// let m = Mismatch::Short { expected: 10, got: 4 };
/// assert_eq!(m.to_string(), "the source ended after 4 of the expected 10 bytes");
/// ```
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Mismatch {
    /// The source ended before the expected size.
    #[error("the source ended after {got} of the expected {expected} bytes")]
    Short {
        /// The expected size.
        expected: u64,
        /// Bytes the source yielded.
        got: u64,
    },
    /// The source yields more than the expected size (it is not read further).
    #[error("the source yields more than the expected {expected} bytes")]
    Long {
        /// The expected size.
        expected: u64,
    },
    /// The size is right but the BLAKE3 hash is not.
    #[error("BLAKE3 {} differs from the expected {}", hex(.got), hex(.expected))]
    Hash {
        /// The expected hash.
        expected: [u8; 32],
        /// The hash of the bytes the source yielded.
        got: [u8; 32],
    },
}

fn hex(bytes: &[u8; 32]) -> String {
    blake3::Hash::from(*bytes).to_hex().to_string()
}

fn key_suffix(key: &Option<String>) -> String {
    match key {
        Some(key) => format!(" (key {key:?})"),
        None => String::new(),
    }
}

impl StoreError {
    /// `true` for [`StoreError::NotFound`].
    ///
    /// ```
    /// # let dir = tempfile::tempdir()?;
    /// let store = dfs_store::Store::open(dir.path())?;
    /// assert!(store.stat("nope").unwrap_err().is_not_found());
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn is_not_found(&self) -> bool {
        matches!(self, StoreError::NotFound { .. })
    }

    /// `true` when the error reports damaged stored data ([`StoreError::Corrupt`] or
    /// [`StoreError::UnsupportedVersion`]).
    ///
    /// ```
    /// use dfs_store::StoreError;
    /// let err = StoreError::Corrupt { path: "x".into(), key: None, reason: "bad".into() };
    /// assert!(err.is_corrupt());
    /// ```
    pub fn is_corrupt(&self) -> bool {
        matches!(
            self,
            StoreError::Corrupt { .. } | StoreError::UnsupportedVersion { .. }
        )
    }

    pub(crate) fn io(op: &'static str, path: impl Into<PathBuf>, source: io::Error) -> Self {
        StoreError::Io {
            op,
            path: path.into(),
            source,
        }
    }

    pub(crate) fn corrupt(
        path: impl Into<PathBuf>,
        key: Option<&str>,
        reason: impl Into<String>,
    ) -> Self {
        StoreError::Corrupt {
            path: path.into(),
            key: key.map(str::to_owned),
            reason: reason.into(),
        }
    }

    /// Turns a `std::io::Error` coming out of an [`ObjectReader`](crate::ObjectReader)
    /// back into the store error it carries, if any.
    ///
    /// ```
    /// use std::io::Read;
    /// # let dir = tempfile::tempdir()?;
    /// let store = dfs_store::Store::open(dir.path())?;
    /// store.write("k", &b"data"[..])?;
    /// let mut out = Vec::new();
    /// if let Err(e) = store.read("k")?.read_to_end(&mut out) {
    ///     let _store_err = dfs_store::StoreError::from_io(e);
    /// }
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn from_io(err: io::Error) -> Result<StoreError, io::Error> {
        if err.get_ref().is_some_and(|inner| inner.is::<StoreError>()) {
            match err.into_inner().map(|inner| inner.downcast::<StoreError>()) {
                Some(Ok(store)) => Ok(*store),
                // Unreachable in practice: checked above.
                Some(Err(other)) => Err(io::Error::other(other)),
                None => Err(io::Error::other("empty i/o error")),
            }
        } else {
            Err(err)
        }
    }
}

/// The crate's result type.
pub type Result<T, E = StoreError> = std::result::Result<T, E>;
