//! The local name index: which opaque ids this node knows the names of.
//!
//! One small file per object, `<root>/names/<id hex>`, holding the name. Only the node that
//! stored or fetched a file writes its name; storage peers never learn it. A name is
//! recorded before its object is committed (it only labels an id, so a name whose object
//! never came is harmless: `list` and `get` go by the objects), written through a temporary
//! file `.tmp-<pid>-<random>` that `open` sweeps when its process is gone.

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
    /// Opens (creates) the index in `dir`, removing temporary files left by processes that
    /// are gone.
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

    /// Removes the temporary files of writers that are gone (a crash between creating one
    /// and renaming it); those of live processes, this one included, stay.
    fn sweep(&self) -> Result<()> {
        let list_err = |source| ServerError::Io {
            op: "list",
            path: self.dir.clone(),
            source,
        };
        for entry in fs::read_dir(&self.dir).map_err(list_err)? {
            let entry = entry.map_err(list_err)?;
            let name = entry.file_name();
            let Some(rest) = name.to_str().and_then(|n| n.strip_prefix(TMP_PREFIX)) else {
                continue;
            };
            let owner = rest
                .strip_prefix('-')
                .and_then(|r| r.split('-').next())
                .and_then(|pid| pid.parse::<u32>().ok());
            if owner.is_some_and(process_alive) || !entry.file_type().is_ok_and(|t| t.is_file()) {
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
        if fs::read(&path).is_ok_and(|old| old == name.as_bytes()) {
            return Ok(());
        }
        let err = |op, source| ServerError::Io {
            op,
            path: path.clone(),
            source,
        };
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

/// Whether a process with this id is running (its temporary files are kept).
fn process_alive(pid: u32) -> bool {
    if pid == std::process::id() {
        return true;
    }
    if cfg!(target_os = "linux") {
        Path::new("/proc").join(pid.to_string()).exists()
    } else {
        // No portable liveness check in std: only this process's files are known live.
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn open_sweeps_temporary_files_of_dead_writers_only() {
        let dir = tempfile::tempdir().unwrap();
        let names = dir.path().join("names");
        fs::create_dir_all(&names).unwrap();
        let id = ObjectId([3; 32]);
        let mine = format!("{TMP_PREFIX}-{}-abc", std::process::id());
        // An earlier version's tempfile name, and a writer no longer running.
        for stale in [".tmpA1b2C3", ".tmp-4294967295-xyz", mine.as_str()] {
            fs::write(names.join(stale), b"half").unwrap();
        }
        fs::write(names.join(id.to_hex()), b"kept").unwrap();
        let index = NameIndex::open(names.clone(), true).unwrap();
        let mut left: Vec<String> = fs::read_dir(&names)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        left.sort();
        let mut expected = vec![id.to_hex(), mine];
        expected.sort();
        assert_eq!(left, expected);
        assert_eq!(index.get(&id.to_hex()).as_deref(), Some("kept"));
        index.put(&id, "renamed").unwrap();
        assert_eq!(index.get(&id.to_hex()).as_deref(), Some("renamed"));
    }
}
