//! Opaque object ids, key fingerprints and the identity files a node keeps in its root.

use std::fmt;
use std::fs;
use std::io::Write;
use std::path::Path;

use dfs_crypto::Key;
use dfs_transport::NodeId;
use serde::{Deserialize, Serialize};

use crate::error::{Result, ServerError};

const OBJECT_ID_CONTEXT: &str = "dfs-server 2026-11-24 object id v1";
const FINGERPRINT_CONTEXT: &str = "dfs-server 2026-11-24 key fingerprint v1";

/// The opaque id a file travels under: a keyed BLAKE3 hash of its name.
///
/// The hash key is derived from the data key (`blake3::derive_key`), so only nodes holding
/// the data key can map a name to its id; storage peers learn neither names nor contents.
///
/// ```
/// use dfs_server::{Key, ObjectId};
///
/// let key = Key::from_bytes([7; 32]);
/// let a = ObjectId::for_name(&key, "photos/cat.jpg");
/// assert_eq!(a, ObjectId::for_name(&key, "photos/cat.jpg"));
/// assert_ne!(a, ObjectId::for_name(&Key::from_bytes([8; 32]), "photos/cat.jpg"));
/// assert_eq!(a.to_hex().len(), 64);
/// assert_eq!(ObjectId::from_hex(&a.to_hex()), Some(a));
/// ```
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct ObjectId(pub [u8; 32]);

impl ObjectId {
    /// The id of `name` under `data_key`.
    pub fn for_name(data_key: &Key, name: &str) -> Self {
        let subkey = blake3::derive_key(OBJECT_ID_CONTEXT, data_key.as_bytes());
        ObjectId(*blake3::keyed_hash(&subkey, name.as_bytes()).as_bytes())
    }

    /// 64 lowercase hex digits (also the key the object is stored under).
    pub fn to_hex(&self) -> String {
        hex(&self.0)
    }

    /// Parses 64 hex digits.
    pub fn from_hex(text: &str) -> Option<Self> {
        let bytes = text.as_bytes();
        if bytes.len() != 64 {
            return None;
        }
        let mut out = [0u8; 32];
        for (o, pair) in out.iter_mut().zip(bytes.chunks_exact(2)) {
            let s = std::str::from_utf8(pair).ok()?;
            *o = u8::from_str_radix(s, 16).ok()?;
        }
        Some(ObjectId(out))
    }
}

impl fmt::Display for ObjectId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex(&self.0[..8]))
    }
}

impl fmt::Debug for ObjectId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ObjectId({})", hex(&self.0[..8]))
    }
}

pub(crate) fn hex(bytes: &[u8]) -> String {
    use fmt::Write as _;
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        let _ = write!(out, "{b:02x}");
    }
    out
}

/// A public 16-byte fingerprint of a data key, written in every object header so a node can
/// tell "encrypted under another key" from "damaged".
pub(crate) fn key_fingerprint(key: &Key) -> [u8; 16] {
    let full = blake3::derive_key(FINGERPRINT_CONTEXT, key.as_bytes());
    let mut out = [0u8; 16];
    out.copy_from_slice(&full[..16]);
    out
}

/// Reads `<root>/node.id`, or creates it with a fresh random id.
pub(crate) fn load_or_create_node_id(root: &Path) -> Result<NodeId> {
    let path = root.join("node.id");
    load_or_create(
        &path,
        |text| {
            let id = ObjectId::from_hex(text.trim()).ok_or_else(|| ServerError::BadRootFile {
                path: path.clone(),
                reason: "expected 64 hex digits".to_owned(),
            })?;
            Ok(NodeId(id.0))
        },
        || {
            let mut bytes = [0u8; 32];
            getrandom::fill(&mut bytes).map_err(|e| ServerError::Random {
                reason: e.to_string(),
            })?;
            Ok((NodeId(bytes), zeroize::Zeroizing::new(hex(&bytes))))
        },
    )
}

/// Reads `<root>/data.key`, or generates it.
pub(crate) fn load_or_create_data_key(root: &Path) -> Result<Key> {
    let path = root.join("data.key");
    load_or_create(
        &path,
        |text| {
            Key::from_hex(text).map_err(|e| ServerError::BadRootFile {
                path: path.clone(),
                reason: e.to_string(),
            })
        },
        || {
            let key = Key::generate()?;
            let text = zeroize::Zeroizing::new(key.to_hex());
            Ok((key, text))
        },
    )
}

/// Parses the file at `path`, or creates it from `create`. Creation never replaces a file:
/// when two nodes race to create it, the loser reads and uses the winner's value (so no
/// node runs with a value that is not on disk).
fn load_or_create<T>(
    path: &Path,
    parse: impl Fn(&str) -> Result<T>,
    create: impl FnOnce() -> Result<(T, zeroize::Zeroizing<String>)>,
) -> Result<T> {
    let read = |path: &Path| fs::read_to_string(path);
    match read(path) {
        Ok(text) => parse(&text),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let (value, text) = create()?;
            match write_new_file(path, &text) {
                Ok(()) => Ok(value),
                Err(ServerError::Io { source, .. })
                    if source.kind() == std::io::ErrorKind::AlreadyExists =>
                {
                    let text = read(path).map_err(|source| ServerError::Io {
                        op: "read",
                        path: path.to_path_buf(),
                        source,
                    })?;
                    parse(&text)
                }
                Err(e) => Err(e),
            }
        }
        Err(source) => Err(ServerError::Io {
            op: "read",
            path: path.to_path_buf(),
            source,
        }),
    }
}

/// Writes a new small file atomically (temp file, fsync, link into place without replacing
/// an existing file: `AlreadyExists` then), private to the user on Unix.
fn write_new_file(path: &Path, text: &str) -> Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let io_err = |op: &'static str, source| ServerError::Io {
        op,
        path: path.to_path_buf(),
        source,
    };
    let mut tmp = tempfile::NamedTempFile::new_in(dir).map_err(|e| io_err("create", e))?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        tmp.as_file()
            .set_permissions(fs::Permissions::from_mode(0o600))
            .map_err(|e| io_err("chmod", e))?;
    }
    tmp.write_all(text.as_bytes())
        .and_then(|()| tmp.as_file().sync_all())
        .map_err(|e| io_err("write", e))?;
    tmp.persist_noclobber(path)
        .map_err(|e| io_err("rename", e.error))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_node_that_loses_the_creation_race_uses_the_winners_key() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("data.key");
        let winner = Key::generate().unwrap();
        let loaded = load_or_create(
            &path,
            |text| Ok(Key::from_hex(text).unwrap()),
            || {
                // Another node creates the file between our read and our write.
                write_new_file(&path, &winner.to_hex())?;
                let ours = Key::generate()?;
                let text = zeroize::Zeroizing::new(ours.to_hex());
                Ok((ours, text))
            },
        )
        .unwrap();
        assert_eq!(loaded, winner);
        let on_disk = fs::read_to_string(&path).unwrap();
        assert_eq!(Key::from_hex(&on_disk).unwrap(), winner);
    }

    #[test]
    fn keys_and_ids_persist_across_restarts() {
        let dir = tempfile::tempdir().unwrap();
        let key = load_or_create_data_key(dir.path()).unwrap();
        let id = load_or_create_node_id(dir.path()).unwrap();
        assert_eq!(load_or_create_data_key(dir.path()).unwrap(), key);
        assert_eq!(load_or_create_node_id(dir.path()).unwrap(), id);
    }
}
