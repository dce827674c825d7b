//! `dfs encrypt` / `dfs decrypt`: streaming file encryption outside a node.

use std::fs::File;
use std::io::{self, BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};

use dfs_crypto::{Aes256Ctr, Aes256CtrBlake3, Cipher, Key};

use crate::cli::CipherKind;
use crate::{Error, Result};

/// Which way to run the cipher.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Direction {
    Encrypt,
    Decrypt,
}

/// Runs `direction` with the key in `key_file` from `input` (a file, or stdin for `None`/`-`)
/// to `output` (a file, or stdout for `None`/`-`). A file output is written to a temporary file
/// beside it and renamed into place only on success, so a failed decryption leaves nothing.
pub(crate) fn run(
    direction: Direction,
    key_file: &Path,
    kind: CipherKind,
    input: Option<&Path>,
    output: Option<&Path>,
) -> Result<u64> {
    let key = crate::keys::read_key(key_file)?;
    let input = input.filter(|p| *p != Path::new("-"));
    let output = output.filter(|p| *p != Path::new("-"));
    let src: Box<dyn Read> = match input {
        Some(path) => Box::new(File::open(path).map_err(|source| Error::Io {
            context: format!("cannot read {}", path.display()),
            source,
        })?),
        None => Box::new(io::stdin().lock()),
    };
    let src = BufReader::with_capacity(256 * 1024, src);
    match output {
        Some(path) => {
            let dir = match path.parent() {
                Some(dir) if !dir.as_os_str().is_empty() => dir.to_path_buf(),
                _ => PathBuf::from("."),
            };
            let io_err = |source| Error::Io {
                context: format!("cannot write {}", path.display()),
                source,
            };
            let tmp = tempfile::Builder::new()
                .prefix(".dfs-partial-")
                .tempfile_in(&dir)
                .map_err(io_err)?;
            let mut dst = BufWriter::with_capacity(256 * 1024, tmp);
            let n = apply(direction, &key, kind, src, &mut dst)?;
            let tmp = dst.into_inner().map_err(|err| io_err(err.into_error()))?;
            tmp.as_file().sync_all().map_err(io_err)?;
            tmp.persist(path).map_err(|err| io_err(err.error))?;
            Ok(n)
        }
        None => {
            let mut dst = BufWriter::with_capacity(256 * 1024, io::stdout().lock());
            let n = apply(direction, &key, kind, src, &mut dst)?;
            dst.flush().map_err(|source| Error::Io {
                context: "cannot write to stdout".to_owned(),
                source,
            })?;
            Ok(n)
        }
    }
}

fn apply(
    direction: Direction,
    key: &Key,
    kind: CipherKind,
    src: impl Read,
    dst: impl Write,
) -> Result<u64> {
    match kind {
        CipherKind::Ctr => apply_with(direction, &Aes256Ctr::new(key), src, dst),
        CipherKind::Sealed => apply_with(direction, &Aes256CtrBlake3::new(key), src, dst),
    }
}

fn apply_with<C: Cipher>(
    direction: Direction,
    cipher: &C,
    src: impl Read,
    dst: impl Write,
) -> Result<u64> {
    let result = match direction {
        Direction::Encrypt => cipher.encrypt(src, dst),
        Direction::Decrypt => cipher.decrypt(src, dst),
    };
    result.map_err(|source| Error::Crypto {
        context: match direction {
            Direction::Encrypt => "encryption failed".to_owned(),
            Direction::Decrypt => "decryption failed".to_owned(),
        },
        source,
    })
}
