//! Key and secret files: `dfs keygen`, and loading them for `serve`, `encrypt`, `decrypt`.
//!
//! Both files hold 64 hex digits and a newline, and are created with mode `0600`.

use std::fs;
use std::io::{self, Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use dfs_crypto::Key;
use zeroize::Zeroizing;

use crate::{Error, Result};

/// The longest key file accepted (a key is 64 hex digits; leave room for whitespace).
const MAX_KEY_FILE_LEN: u64 = 4096;

/// Writes a fresh data key to `key_file` and a fresh network secret to `secret_file`, both
/// mode `0600`. Refuses to replace an existing file unless `force` (replacing a data key makes
/// every file encrypted with the old one unreadable).
///
/// The pair is written together: both files are staged (written and fsynced) first, and
/// without `force` a secret that cannot be put in place takes the new key file away again.
pub(crate) fn keygen(key_file: &Path, secret_file: &Path, force: bool) -> Result<()> {
    let key_target = Target::resolve(key_file)?;
    let secret_target = Target::resolve(secret_file)?;
    if key_target.same_file(&secret_target) {
        return Err(Error::Usage {
            message: format!(
                "the data key and the network secret must go to different files \
                 ({} and {} are the same file)",
                key_file.display(),
                secret_file.display()
            ),
        });
    }
    for target in [&key_target, &secret_target] {
        target.check(force)?;
    }
    let key = Key::generate().map_err(|source| Error::Crypto {
        context: "cannot generate a data key".to_owned(),
        source,
    })?;
    // A network secret has the same shape as a data key: 32 random bytes as 64 hex digits.
    let secret = Key::generate().map_err(|source| Error::Crypto {
        context: "cannot generate a network secret".to_owned(),
        source,
    })?;
    let staged_key = key_target.stage(&Zeroizing::new(key.to_hex()))?;
    let staged_secret = secret_target.stage(&Zeroizing::new(secret.to_hex()))?;
    key_target.persist(staged_key, force)?;
    if let Err(err) = secret_target.persist(staged_secret, force) {
        if !force {
            // Ours alone (persisting refused to replace anything): take it back, so that
            // running the command again works.
            let _ = fs::remove_file(&key_target.path);
        }
        return Err(err);
    }
    key_target.sync_dir()?;
    if secret_target.dir != key_target.dir {
        secret_target.sync_dir()?;
    }
    Ok(())
}

/// Where a key file goes: its directory (canonical) and the path the user gave.
struct Target {
    /// As given, for messages.
    path: PathBuf,
    /// The canonical directory it goes in.
    dir: PathBuf,
    /// The canonical path it will have (through the canonical directory, and through a
    /// symlink at `path` if there is one).
    canonical: PathBuf,
}

impl Target {
    fn resolve(path: &Path) -> Result<Self> {
        let usage = |why: String| Error::Usage {
            message: format!("cannot write {}: {why}", path.display()),
        };
        let Some(name) = path.file_name() else {
            return Err(usage("not a file name".to_owned()));
        };
        let dir = match path.parent() {
            Some(dir) if !dir.as_os_str().is_empty() => dir,
            _ => Path::new("."),
        };
        let dir = fs::canonicalize(dir)
            .map_err(|e| usage(format!("directory {}: {}", dir.display(), no_path(&e))))?;
        let joined = dir.join(name);
        // An existing entry (a symlink included) is identified by what it resolves to.
        let canonical = fs::canonicalize(&joined).unwrap_or(joined);
        Ok(Self {
            path: path.to_path_buf(),
            dir,
            canonical,
        })
    }

    fn same_file(&self, other: &Self) -> bool {
        self.canonical == other.canonical
    }

    /// Refuses a directory always, an existing file unless `force`.
    fn check(&self, force: bool) -> Result<()> {
        match fs::symlink_metadata(&self.path) {
            Ok(meta) if meta.is_dir() => Err(Error::Usage {
                message: format!("cannot write {}: it is a directory", self.path.display()),
            }),
            Ok(_) if !force => Err(Error::Usage {
                message: format!(
                    "{} already exists; refusing to overwrite it (use --force)",
                    self.path.display()
                ),
            }),
            _ => Ok(()),
        }
    }

    fn io_err(&self, source: &io::Error) -> Error {
        Error::Io {
            context: format!("cannot write {}", self.path.display()),
            source: no_path(source),
        }
    }

    /// `hex` and a newline in a fresh file (mode `0600`, fsynced) in the target's directory;
    /// removed again if dropped before [`Target::persist`].
    fn stage(&self, hex: &str) -> Result<tempfile::NamedTempFile> {
        let mut tmp = tempfile::Builder::new()
            .prefix(".dfs-key-")
            .permissions(fs::Permissions::from_mode(0o600))
            .tempfile_in(&self.dir)
            .map_err(|e| self.io_err(&e))?;
        let mut text = Zeroizing::new(String::with_capacity(hex.len() + 1));
        text.push_str(hex);
        text.push('\n');
        tmp.write_all(text.as_bytes())
            .map_err(|e| self.io_err(&e))?;
        tmp.as_file().sync_all().map_err(|e| self.io_err(&e))?;
        Ok(tmp)
    }

    fn persist(&self, tmp: tempfile::NamedTempFile, force: bool) -> Result<()> {
        let to = self.dir.join(self.path.file_name().unwrap_or_default());
        let result = if force {
            tmp.persist(&to).map(drop)
        } else {
            tmp.persist_noclobber(&to).map(drop)
        };
        result.map_err(|err| self.io_err(&err.error))
    }

    /// fsyncs the directory, so the new name survives a crash.
    fn sync_dir(&self) -> Result<()> {
        fs::File::open(&self.dir)
            .and_then(|dir| dir.sync_all())
            .map_err(|e| self.io_err(&e))
    }
}

/// The error without the path `tempfile` adds to its messages (an internal staging name).
fn no_path(err: &io::Error) -> io::Error {
    match err.raw_os_error() {
        Some(code) => io::Error::from_raw_os_error(code),
        None => io::Error::new(err.kind(), err.kind().to_string()),
    }
}

/// Reads a data key file.
pub(crate) fn read_key(path: &Path) -> Result<Key> {
    let text = read_text(path)?;
    Key::from_hex(&text).map_err(|err| Error::KeyFile {
        path: path.to_path_buf(),
        reason: err.to_string(),
    })
}

/// Reads a small secret text file (a key or a network secret), warning if others can read a
/// file that holds a key (a file that is no key fails in the caller, with one message).
pub(crate) fn read_text(path: &Path) -> Result<Zeroizing<String>> {
    let file = fs::File::open(path).map_err(|source| Error::Io {
        context: format!("cannot read key file {}", path.display()),
        source,
    })?;
    let meta = file.metadata().map_err(|source| Error::Io {
        context: format!("cannot read key file {}", path.display()),
        source,
    })?;
    if !meta.is_file() {
        return Err(Error::KeyFile {
            path: path.to_path_buf(),
            reason: "not a regular file".to_owned(),
        });
    }
    let mut text = Zeroizing::new(String::new());
    file.take(MAX_KEY_FILE_LEN + 1)
        .read_to_string(&mut text)
        .map_err(|source| Error::KeyFile {
            path: path.to_path_buf(),
            reason: format!("not a text key file ({source})"),
        })?;
    if text.len() as u64 > MAX_KEY_FILE_LEN {
        return Err(Error::KeyFile {
            path: path.to_path_buf(),
            reason: "too large to be a key file".to_owned(),
        });
    }
    let holds_key = {
        let t = text.trim();
        t.len() == 64 && t.bytes().all(|b| b.is_ascii_hexdigit())
    };
    if holds_key && meta.permissions().mode() & 0o077 != 0 {
        crate::say!(
            "warning: {} is readable by other users; run `chmod 600` on it",
            path.display()
        );
    }
    Ok(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keygen_writes_private_files_that_load_back() {
        let dir = tempfile::tempdir().unwrap();
        let key = dir.path().join("data.key");
        let secret = dir.path().join("network.secret");
        keygen(&key, &secret, false).unwrap();
        for path in [&key, &secret] {
            let mode = fs::metadata(path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600, "{}", path.display());
            assert_eq!(fs::read_to_string(path).unwrap().len(), 65);
        }
        read_key(&key).unwrap();
        read_key(&secret).unwrap();
        let before = fs::read(&key).unwrap();
        let err = keygen(&key, &secret, false).unwrap_err();
        assert!(err.to_string().contains("refusing to overwrite"), "{err}");
        assert_eq!(fs::read(&key).unwrap(), before);
        keygen(&key, &secret, true).unwrap();
        assert_ne!(fs::read(&key).unwrap(), before);
    }

    /// The same file under two spellings, or through a symlink, is refused before anything
    /// is written; an existing entry that is a directory is refused even with `--force`.
    #[test]
    fn keygen_refuses_one_file_for_both() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("sub")).unwrap();
        let key = dir.path().join("k");
        for (secret, force) in [
            (dir.path().join("sub/../k"), false),
            (dir.path().join("sub/../k"), true),
            (dir.path().join("./k"), true),
        ] {
            let err = keygen(&key, &secret, force).unwrap_err();
            assert!(err.to_string().contains("same file"), "{err}");
            assert!(!key.exists());
        }
        fs::write(&key, "old\n").unwrap();
        let link = dir.path().join("link");
        std::os::unix::fs::symlink(&key, &link).unwrap();
        let err = keygen(&key, &link, true).unwrap_err();
        assert!(err.to_string().contains("same file"), "{err}");
        assert_eq!(fs::read_to_string(&key).unwrap(), "old\n");
        let err = keygen(&dir.path().join("k2"), &dir.path().join("sub"), true).unwrap_err();
        assert!(err.to_string().contains("is a directory"), "{err}");
        assert!(!dir.path().join("k2").exists());
    }

    /// A secret file that cannot be created leaves no key file behind (so the command can
    /// simply be run again), and the message names the user's path, not a staging name.
    #[test]
    fn keygen_writes_both_or_neither() {
        let dir = tempfile::tempdir().unwrap();
        let key = dir.path().join("k");
        let err = keygen(&key, &dir.path().join("missing/s"), false).unwrap_err();
        let msg = err.one_line();
        assert!(msg.contains("missing"), "{msg}");
        assert!(!msg.contains(".dfs-key-"), "{msg}");
        assert!(!key.exists());
        let names: Vec<_> = fs::read_dir(dir.path()).unwrap().collect();
        assert!(names.is_empty(), "{names:?}");
        keygen(&key, &dir.path().join("s"), false).unwrap();
    }

    #[test]
    fn a_directory_is_not_a_key_file() {
        let dir = tempfile::tempdir().unwrap();
        let err = read_key(dir.path()).unwrap_err();
        assert!(err.to_string().contains("not a regular file"), "{err}");
    }

    #[test]
    fn bad_key_files_are_clear_errors() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bad.key");
        fs::write(&path, "not hex").unwrap();
        let err = read_key(&path).unwrap_err();
        assert!(err.to_string().contains("bad key file"), "{err}");
        let err = read_key(&dir.path().join("missing")).unwrap_err();
        assert!(
            err.one_line().contains("cannot read key file"),
            "{}",
            err.one_line()
        );
        fs::write(&path, vec![b'a'; 10_000]).unwrap();
        assert!(
            read_key(&path)
                .unwrap_err()
                .to_string()
                .contains("too large")
        );
    }
}
