//! The local name index: which opaque ids this node knows the names of.
//!
//! One small file per object, `<root>/names/<id hex>`, holding the name. Only the node that
//! stored or fetched a file writes its name; storage peers never learn it. A name is
//! recorded before its object is committed (it only labels an id, so a name whose object
//! never came is harmless: `list` and `get` go by the objects), written through a temporary
//! file `.tmp-<pid>-<random>` that the next `open` sweeps if a crash left it behind.

use std::fs::{self, File};
use std::io::{ErrorKind, Write};
use std::path::{Path, PathBuf};

use crate::error::{Result, ServerError};
use crate::id::ObjectId;

/// How every temporary file of the index starts (also tempfile's own default prefix, used
/// by earlier versions).
const TMP_PREFIX: &str = ".tmp";

#[derive(Debug, Clone)]
pub(crate) struct NameIndex {
    dir: PathBuf,
    /// Whether name files and the directory are fsynced (`Config::fsync`).
    fsync: bool,
}

impl NameIndex {
    /// Opens (creates) the index in `dir`, removing temporary files a crash left behind.
    pub(crate) fn open(dir: PathBuf, fsync: bool) -> Result<Self> {
        fs::create_dir_all(&dir).map_err(|source| ServerError::Io {
            op: "create directory",
            path: dir.clone(),
            source,
        })?;
        let index = NameIndex { dir, fsync };
        index.sweep()?;
        Ok(index)
    }

    fn path(&self, id: &ObjectId) -> PathBuf {
        self.dir.join(id.to_hex())
    }

    /// Removes every temporary file (a crash between creating one and renaming it). Only
    /// one node runs on a root (as for the store), and this index has written nothing yet,
    /// so none belongs to a live writer; going by pid would keep the files of a crashed
    /// earlier run whose pid is reused (every run of a container is pid 1).
    fn sweep(&self) -> Result<()> {
        let list_err = |source| ServerError::Io {
            op: "list",
            path: self.dir.clone(),
            source,
        };
        for entry in fs::read_dir(&self.dir).map_err(list_err)? {
            let entry = entry.map_err(list_err)?;
            let name = entry.file_name();
            let temporary = name.to_str().is_some_and(|n| n.starts_with(TMP_PREFIX));
            if !temporary || !entry.file_type().is_ok_and(|t| t.is_file()) {
                continue;
            }
            let path = entry.path();
            match fs::remove_file(&path) {
                Ok(()) => {}
                Err(e) if e.kind() == ErrorKind::NotFound => {}
                Err(source) => {
                    return Err(ServerError::Io {
                        op: "remove stale temporary file",
                        path,
                        source,
                    });
                }
            }
        }
        Ok(())
    }

    /// Records `name` for `id` (atomically replaces an older entry; durably when the index
    /// fsyncs).
    pub(crate) fn put(&self, id: &ObjectId, name: &str) -> Result<()> {
        let path = self.path(id);
        let err = |op, source| ServerError::Io {
            op,
            path: path.clone(),
            source,
        };
        if fs::read(&path).is_ok_and(|old| old == name.as_bytes()) {
            // Already recorded, but maybe not yet durably (an earlier put whose directory
            // fsync failed).
            if self.fsync {
                File::open(&path)
                    .and_then(|f| f.sync_all())
                    .map_err(|e| err("fsync", e))?;
                sync_dir(&self.dir).map_err(|e| err("fsync directory", e))?;
            }
            return Ok(());
        }
        let mut tmp = tempfile::Builder::new()
            .prefix(&format!("{TMP_PREFIX}-{}-", std::process::id()))
            .tempfile_in(&self.dir)
            .map_err(|e| err("create", e))?;
        tmp.write_all(name.as_bytes())
            .map_err(|e| err("write", e))?;
        if self.fsync {
            tmp.as_file().sync_all().map_err(|e| err("fsync", e))?;
        }
        tmp.persist(&path).map_err(|e| err("rename", e.error))?;
        if self.fsync {
            sync_dir(&self.dir).map_err(|e| err("fsync directory", e))?;
        }
        Ok(())
    }

    /// The name recorded for the object stored under `key`, if any.
    pub(crate) fn get(&self, key: &str) -> Option<String> {
        let id = ObjectId::from_hex(key)?;
        fs::read_to_string(self.path(&id)).ok()
    }

    /// Forgets `id`.
    pub(crate) fn remove(&self, id: &ObjectId) -> Result<()> {
        let path = self.path(id);
        match fs::remove_file(&path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(()),
            Err(source) => Err(ServerError::Io {
                op: "remove",
                path,
                source,
            }),
        }
    }
}

/// Makes a rename in `dir` durable.
fn sync_dir(dir: &Path) -> std::io::Result<()> {
    File::open(dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn open_sweeps_every_temporary_file() {
        let dir = tempfile::tempdir().unwrap();
        let names = dir.path().join("names");
        fs::create_dir_all(&names).unwrap();
        let id = ObjectId([3; 32]);
        // An earlier version's tempfile name, a writer no longer running, and one with this
        // process's pid (a crashed earlier run of a container is pid 1 again).
        let reused_pid = format!("{TMP_PREFIX}-{}-abc", std::process::id());
        for stale in [".tmpA1b2C3", ".tmp-4294967295-xyz", reused_pid.as_str()] {
            fs::write(names.join(stale), b"half").unwrap();
        }
        fs::write(names.join(id.to_hex()), b"kept").unwrap();
        let index = NameIndex::open(names.clone(), true).unwrap();
        let left: Vec<String> = fs::read_dir(&names)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        assert_eq!(left, vec![id.to_hex()]);
        assert_eq!(index.get(&id.to_hex()).as_deref(), Some("kept"));
        index.put(&id, "renamed").unwrap();
        assert_eq!(index.get(&id.to_hex()).as_deref(), Some("renamed"));
    }
}
