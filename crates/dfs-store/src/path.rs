//! Key -> on-disk location: the [`PathTransform`] seam and its two implementations.

use std::fmt;
use std::path::PathBuf;

use crate::error::{Result, StoreError};

/// The longest key the store accepts, in bytes.
pub const MAX_KEY_LEN: usize = 4096;

/// The longest single path segment (directory or file name) accepted, in bytes.
pub const MAX_SEGMENT_LEN: usize = 255;

/// The most directory levels a location may have.
pub const MAX_DEPTH: usize = 64;

/// A location relative to the store's object directory: directory segments and a file
/// name (the "file identifier" of the Go original).
///
/// Build one with [`PathKey::new`]; the store re-validates every location a transform
/// returns, so a `PathKey` can never point outside the root.
///
/// ```
/// use dfs_store::PathKey;
///
/// let loc = PathKey::new(["ab", "cd"], "abcdef")?;
/// assert_eq!(loc.dirs(), ["ab", "cd"]);
/// assert_eq!(loc.file_name(), "abcdef");
/// assert_eq!(loc.to_path_buf(), std::path::Path::new("ab/cd/abcdef"));
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct PathKey {
    dirs: Vec<String>,
    file: String,
}

impl fmt::Debug for PathKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PathKey({:?})", self.to_path_buf())
    }
}

impl PathKey {
    /// Builds a location from directory segments and a file name, checking every segment
    /// with [`check_segment`].
    ///
    /// ```
    /// use dfs_store::PathKey;
    /// assert!(PathKey::new(["a"], "b").is_ok());
    /// assert!(PathKey::new([".."], "b").is_err());
    /// assert!(PathKey::new(Vec::<String>::new(), "").is_err());
    /// ```
    pub fn new<I, S>(dirs: I, file: impl Into<String>) -> Result<PathKey, InvalidSegment>
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        let loc = PathKey {
            dirs: dirs.into_iter().map(Into::into).collect(),
            file: file.into(),
        };
        loc.validate()?;
        Ok(loc)
    }

    /// The directory segments, outermost first.
    ///
    /// ```
    /// let loc = dfs_store::PathKey::new(["x"], "y")?;
    /// assert_eq!(loc.dirs().len(), 1);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn dirs(&self) -> &[String] {
        &self.dirs
    }

    /// The file name.
    ///
    /// ```
    /// let loc = dfs_store::PathKey::new(["x"], "y")?;
    /// assert_eq!(loc.file_name(), "y");
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn file_name(&self) -> &str {
        &self.file
    }

    /// The relative path `dir/dir/.../file`.
    ///
    /// ```
    /// let loc = dfs_store::PathKey::new(["x", "y"], "z")?;
    /// assert_eq!(loc.to_path_buf(), std::path::PathBuf::from("x/y/z"));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn to_path_buf(&self) -> PathBuf {
        let mut path: PathBuf = self.dirs.iter().collect();
        path.push(&self.file);
        path
    }

    /// Re-checks every segment (the store calls this on whatever a transform returns).
    pub(crate) fn validate(&self) -> Result<(), InvalidSegment> {
        if self.dirs.len() > MAX_DEPTH {
            return Err(InvalidSegment {
                segment: String::new(),
                reason: "too many directory levels",
            });
        }
        for segment in self.dirs.iter().chain(std::iter::once(&self.file)) {
            check_segment(segment)?;
        }
        Ok(())
    }
}

/// Why a path segment was refused by [`check_segment`].
///
/// ```
/// let err = dfs_store::check_segment("..").unwrap_err();
/// assert_eq!(err.segment, "..");
/// println!("{err}");
/// ```
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("segment {segment:?} refused: {reason}")]
pub struct InvalidSegment {
    /// The refused segment.
    pub segment: String,
    /// Why.
    pub reason: &'static str,
}

/// Checks that `segment` is a safe single path component on every platform: not empty,
/// not `.` or `..`, no `/` or `\`, no NUL or other control character, no `:` (a Windows
/// drive or stream separator), not longer than [`MAX_SEGMENT_LEN`] bytes.
///
/// ```
/// use dfs_store::check_segment;
/// assert!(check_segment("photo.jpg").is_ok());
/// for bad in ["", ".", "..", "a/b", "a\\b", "a\0b", "tab\t", "C:"] {
///     assert!(check_segment(bad).is_err(), "{bad:?}");
/// }
/// ```
pub fn check_segment(segment: &str) -> Result<(), InvalidSegment> {
    let refuse = |reason| {
        Err(InvalidSegment {
            segment: segment.to_owned(),
            reason,
        })
    };
    if segment.is_empty() {
        return refuse("empty segment");
    }
    if segment == "." || segment == ".." {
        return refuse("`.` and `..` are not allowed");
    }
    if segment.len() > MAX_SEGMENT_LEN {
        return refuse("segment longer than 255 bytes");
    }
    for c in segment.chars() {
        if c == '/' || c == '\\' {
            return refuse("path separator inside a segment");
        }
        if c == ':' {
            return refuse("`:` is not allowed (Windows drive/stream separator)");
        }
        if c.is_control() {
            return refuse("NUL or control character");
        }
    }
    Ok(())
}

/// Checks the rules every key obeys whatever the transform: not empty, at most
/// [`MAX_KEY_LEN`] bytes.
pub(crate) fn check_key(key: &str) -> Result<()> {
    if key.is_empty() {
        return Err(StoreError::InvalidKey {
            key: key.to_owned(),
            reason: "empty key".into(),
        });
    }
    if key.len() > MAX_KEY_LEN {
        return Err(StoreError::InvalidKey {
            key: key.chars().take(64).collect::<String>() + "...",
            reason: format!("key is {} bytes, the maximum is {MAX_KEY_LEN}", key.len()),
        });
    }
    Ok(())
}

/// Maps a key to its location under the store's object directory.
///
/// Implementations must be deterministic (the same key always gives the same location)
/// and should map different keys to different locations. The store re-validates every
/// returned [`PathKey`], so a buggy transform gets an error, never a write outside the root.
///
/// A user-written transform:
///
/// ```
/// use dfs_store::{PathKey, PathTransform, Store, StoreError};
///
/// /// Keys like "user/42" go under a directory named after their first part.
/// #[derive(Debug)]
/// struct ByPrefix;
///
/// impl PathTransform for ByPrefix {
///     fn transform(&self, key: &str) -> Result<PathKey, StoreError> {
///         let (dir, file) = key.split_once('/').unwrap_or(("misc", key));
///         PathKey::new([dir], file).map_err(|e| StoreError::InvalidKey {
///             key: key.to_owned(),
///             reason: e.to_string(),
///         })
///     }
/// }
///
/// let dir = tempfile::tempdir()?;
/// let store = Store::open_with(dir.path(), ByPrefix)?;
/// store.write("user/42", &b"hello"[..])?;
/// assert!(dir.path().join("objects/user/42").is_file());
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub trait PathTransform: Send + Sync + 'static {
    /// The location of `key`, or an error if the key is not acceptable.
    fn transform(&self, key: &str) -> Result<PathKey>;
}

/// Content-addressed layout: the BLAKE3 hash of the key in hex, the first
/// `depth` groups of `width` hex characters as directories and the whole hex hash as the
/// file name.
///
/// The default (`width` 2, `depth` 2) gives 256 directories of 256 directories: at
/// 10 million objects about 150 files per leaf directory.
///
/// ```
/// use dfs_store::{HashPath, PathTransform};
///
/// let loc = HashPath::default().transform("hello")?;
/// let hex = blake3::hash(b"hello").to_hex().to_string();
/// assert_eq!(loc.dirs(), [&hex[0..2], &hex[2..4]]);
/// assert_eq!(loc.file_name(), hex);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HashPath {
    width: usize,
    depth: usize,
}

impl Default for HashPath {
    fn default() -> Self {
        HashPath { width: 2, depth: 2 }
    }
}

impl HashPath {
    /// A layout with `depth` directory levels of `width` hex characters each.
    /// `width` must be at least 1 and `width * depth` at most 64 (the hex hash length).
    ///
    /// ```
    /// use dfs_store::{HashPath, PathTransform};
    /// let layout = HashPath::new(3, 1)?;
    /// assert_eq!(layout.transform("k")?.dirs()[0].len(), 3);
    /// assert!(HashPath::new(0, 2).is_err());
    /// assert!(HashPath::new(6, 20).is_err());
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn new(width: usize, depth: usize) -> Result<HashPath> {
        if width == 0 && depth > 0 {
            return Err(StoreError::InvalidConfig {
                reason: "HashPath segment width must be at least 1".into(),
            });
        }
        if width.saturating_mul(depth) > 64 {
            return Err(StoreError::InvalidConfig {
                reason: format!(
                    "HashPath width {width} x depth {depth} exceeds the 64 hex characters of the hash"
                ),
            });
        }
        Ok(HashPath { width, depth })
    }

    /// Segment width in hex characters.
    ///
    /// ```
    /// assert_eq!(dfs_store::HashPath::default().width(), 2);
    /// ```
    pub fn width(&self) -> usize {
        self.width
    }

    /// Number of directory levels.
    ///
    /// ```
    /// assert_eq!(dfs_store::HashPath::default().depth(), 2);
    /// ```
    pub fn depth(&self) -> usize {
        self.depth
    }
}

impl PathTransform for HashPath {
    fn transform(&self, key: &str) -> Result<PathKey> {
        let hex = blake3::hash(key.as_bytes()).to_hex();
        let hex = hex.as_str();
        let dirs = (0..self.depth)
            .map(|i| hex[i * self.width..(i + 1) * self.width].to_owned())
            .collect();
        Ok(PathKey {
            dirs,
            file: hex.to_owned(),
        })
    }
}

/// Plain layout: the key is the relative path, `/`-separated.
///
/// Keys are validated: empty keys, empty segments (`a//b`, trailing `/`), `.` and `..`,
/// absolute paths, `\`, `:`, NUL and control characters are refused with
/// [`StoreError::InvalidKey`] and nothing is written.
///
/// ```
/// use dfs_store::{PathTransform, PlainPath};
///
/// assert_eq!(PlainPath.transform("photos/2024/cat.jpg")?.to_path_buf(),
///            std::path::Path::new("photos/2024/cat.jpg"));
/// for bad in ["", "/etc/passwd", "a/../../b", "..\\x", "a//b", "nul\0"] {
///     assert!(PlainPath.transform(bad).is_err(), "{bad:?}");
/// }
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PlainPath;

impl PathTransform for PlainPath {
    fn transform(&self, key: &str) -> Result<PathKey> {
        check_key(key)?;
        let invalid = |reason: String| StoreError::InvalidKey {
            key: key.to_owned(),
            reason,
        };
        if key.starts_with('/') {
            return Err(invalid("absolute paths are not allowed".into()));
        }
        let mut segments: Vec<String> = key.split('/').map(str::to_owned).collect();
        let file = segments.pop().unwrap_or_default();
        PathKey::new(segments, file).map_err(|e| invalid(e.to_string()))
    }
}
