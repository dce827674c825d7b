//! Key and secret files: `dfs keygen`, and loading them for `serve`, `encrypt`, `decrypt`.
//!
//! Both files hold 64 hex digits and a newline, and are created with mode `0600`.

use std::fs;
use std::io::{Read, Write};
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
pub(crate) fn keygen(key_file: &Path, secret_file: &Path, force: bool) -> Result<()> {
    if key_file == secret_file {
        return Err(Error::Usage {
            message: "the data key and the network secret must go to different files".to_owned(),
        });
    }
    if !force {
        for path in [key_file, secret_file] {
            if path.exists() {
                return Err(Error::Usage {
                    message: format!(
                        "{} already exists; refusing to overwrite it (use --force)",
                        path.display()
                    ),
                });
            }
        }
    }
    let key = Key::generate().map_err(|source| Error::Crypto {
        context: "cannot generate a data key".to_owned(),
        source,
    })?;
    write_secret_file(key_file, &Zeroizing::new(key.to_hex()), force)?;
    // A network secret has the same shape as a data key: 32 random bytes as 64 hex digits.
    let secret = Key::generate().map_err(|source| Error::Crypto {
        context: "cannot generate a network secret".to_owned(),
        source,
    })?;
    write_secret_file(secret_file, &Zeroizing::new(secret.to_hex()), force)?;
    Ok(())
}

/// Writes `hex` and a newline to `path` atomically with mode `0600`.
fn write_secret_file(path: &Path, hex: &str, force: bool) -> Result<()> {
    let io_err = |source| Error::Io {
        context: format!("cannot write {}", path.display()),
        source,
    };
    let dir = match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir.to_path_buf(),
        _ => PathBuf::from("."),
    };
    // NamedTempFile is created 0600 and removed again if anything below fails.
    let mut tmp = tempfile::Builder::new()
        .prefix(".dfs-key-")
        .permissions(fs::Permissions::from_mode(0o600))
        .tempfile_in(&dir)
        .map_err(io_err)?;
    let mut text = Zeroizing::new(String::with_capacity(hex.len() + 1));
    text.push_str(hex);
    text.push('\n');
    tmp.write_all(text.as_bytes()).map_err(io_err)?;
    tmp.as_file().sync_all().map_err(io_err)?;
    if force {
        tmp.persist(path).map_err(|err| io_err(err.error))?;
    } else {
        tmp.persist_noclobber(path)
            .map_err(|err| io_err(err.error))?;
    }
    Ok(())
}

/// Reads a data key file.
pub(crate) fn read_key(path: &Path) -> Result<Key> {
    let text = read_text(path)?;
    Key::from_hex(&text).map_err(|err| Error::KeyFile {
        path: path.to_path_buf(),
        reason: err.to_string(),
    })
}

/// Reads a small secret text file (a key or a network secret), warning if others can read it.
pub(crate) fn read_text(path: &Path) -> Result<Zeroizing<String>> {
    let file = fs::File::open(path).map_err(|source| Error::Io {
        context: format!("cannot read key file {}", path.display()),
        source,
    })?;
    if let Ok(meta) = file.metadata()
        && meta.permissions().mode() & 0o077 != 0
    {
        eprintln!(
            "warning: {} is readable by other users; run `chmod 600` on it",
            path.display()
        );
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
