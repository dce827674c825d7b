//! Helpers shared by the integration tests.

use std::fs;
use std::path::{Path, PathBuf};

/// Every file under `dir`, recursively.
pub(crate) fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_owned()];
    while let Some(d) = stack.pop() {
        for e in fs::read_dir(&d).expect("read_dir") {
            let e = e.expect("entry");
            if e.file_type().expect("type").is_dir() {
                stack.push(e.path());
            } else {
                out.push(e.path());
            }
        }
    }
    out
}

/// Every file under a store's `root` but its lock file: what writes have left.
#[allow(dead_code)] // not every test binary uses every helper
pub(crate) fn written_under(root: &Path) -> Vec<PathBuf> {
    let lock = root.join("lock");
    files_under(root)
        .into_iter()
        .filter(|f| *f != lock)
        .collect()
}
