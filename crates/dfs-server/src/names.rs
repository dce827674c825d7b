//! The local name index: which opaque ids this node knows the names of.
//!
//! One small file per object, `<root>/names/<id hex>`, holding the name. Only the node that
//! stored or fetched a file writes its name; storage peers never learn it.

use std::fs;
use std::io::{ErrorKind, Write};
use std::path::PathBuf;

use crate::error::{Result, ServerError};
use crate::id::ObjectId;

#[derive(Debug, Clone)]
pub(crate) struct NameIndex {
    dir: PathBuf,
}

impl NameIndex {
    pub(crate) fn open(dir: PathBuf) -> Result<Self> {
        fs::create_dir_all(&dir).map_err(|source| ServerError::Io {
            op: "create directory",
            path: dir.clone(),
            source,
        })?;
        Ok(NameIndex { dir })
    }

    fn path(&self, id: &ObjectId) -> PathBuf {
        self.dir.join(id.to_hex())
    }

    /// Records `name` for `id` (atomically replaces an older entry).
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
        let mut tmp = tempfile::NamedTempFile::new_in(&self.dir).map_err(|e| err("create", e))?;
        tmp.write_all(name.as_bytes())
            .map_err(|e| err("write", e))?;
        tmp.persist(&path).map_err(|e| err("rename", e.error))?;
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
