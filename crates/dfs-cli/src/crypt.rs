//! `dfs encrypt` / `dfs decrypt`: streaming file encryption outside a node.

use std::fs::File;
use std::io::{self, BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};

use dfs_crypto::{Aes256Ctr, Aes256CtrBlake3, Cipher, Key};

use crate::cli::CipherKind;
use crate::output::{Output, Partial, Signals, Target};
use crate::{Error, Result};

/// Which way to run the cipher.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Direction {
    Encrypt,
    Decrypt,
}

/// Runs `direction` with the key in `key_file` from `input` (a file, or stdin for `None`/`-`)
/// to `output` (stdout for `None`/`-`, else see [`crate::output`]: a file is written to a
/// temporary file beside it and renamed into place only on success, so a failed decryption
/// leaves nothing; SIGINT or SIGTERM meanwhile removes the temporary file and ends with status
/// 130 or 143).
pub(crate) fn run(
    direction: Direction,
    key_file: &Path,
    kind: CipherKind,
    input: Option<&Path>,
    output: Option<&Path>,
) -> Result<u64> {
    let input = input
        .filter(|p| *p != Path::new("-"))
        .map(Path::to_path_buf);
    let output = output.filter(|p| *p != Path::new("-"));
    // Checked before reading anything: `-o DIR` fails at once.
    let target = output.map(Target::resolve).transpose()?;
    let key = crate::keys::read_key(key_file)?;
    match target {
        Some(target) if !target.is_direct() => to_file(direction, key, kind, input, target),
        Some(target) => {
            // A device, a FIFO or a path under /dev or /proc: written in place, nothing to
            // clean up on a signal.
            let output = target.open(&Partial::default())?;
            let src = open_input(input.as_deref())?;
            convert(direction, &key, kind, src, output)
        }
        None => {
            let src = open_input(input.as_deref())?;
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

/// `input` (stdin for `None`), buffered.
fn open_input(input: Option<&Path>) -> Result<BufReader<Box<dyn Read + Send>>> {
    let src: Box<dyn Read + Send> = match input {
        Some(path) => Box::new(File::open(path).map_err(|source| Error::Io {
            context: format!("cannot read {}", path.display()),
            source,
        })?),
        None => Box::new(io::stdin()),
    };
    Ok(BufReader::with_capacity(256 * 1024, src))
}

/// Runs the cipher from `src` into `output` and commits it.
fn convert(
    direction: Direction,
    key: &Key,
    kind: CipherKind,
    src: impl Read,
    output: Output,
) -> Result<u64> {
    let shown = output.shown().to_path_buf();
    let mut dst = BufWriter::with_capacity(256 * 1024, output);
    let n = apply(direction, key, kind, src, &mut dst)?;
    let output = dst.into_inner().map_err(|err| Error::Io {
        context: format!("cannot write {}", shown.display()),
        source: err.into_error(),
    })?;
    output.commit()?;
    Ok(n)
}

/// Writes a regular file through a temporary file, on a worker thread raced against SIGINT
/// and SIGTERM: on a signal the temporary file is removed at once, even while the worker is
/// blocked reading its input (a FIFO, a terminal), and the command ends with status 130/143.
fn to_file(
    direction: Direction,
    key: Key,
    kind: CipherKind,
    input: Option<PathBuf>,
    target: Target,
) -> Result<u64> {
    crate::client_runtime()?.block_on(async move {
        // Caught before the temporary file exists, so it never outlives the process.
        let mut signals = Signals::new()?;
        let partial = Partial::default();
        // The temporary file is created here, before the worker exists, and `partial` holds
        // it from then on: a signal at any later point finds it and removes it. The worker
        // only opens the input (which may block, e.g. a FIFO) and runs the cipher.
        let output = target.open(&partial)?;
        let (tx, rx) = tokio::sync::oneshot::channel();
        std::thread::Builder::new()
            .name("dfs-crypt".to_owned())
            .spawn(move || {
                let result = open_input(input.as_deref())
                    .and_then(|src| convert(direction, &key, kind, src, output));
                let _ = tx.send(result);
            })
            .map_err(|source| Error::Io {
                context: "cannot start a thread".to_owned(),
                source,
            })?;
        let result = async {
            rx.await.unwrap_or_else(|_| {
                Err(Error::Io {
                    context: "the cipher thread ended without a result".to_owned(),
                    source: io::Error::other("thread panicked"),
                })
            })
        };
        tokio::pin!(result);
        tokio::select! {
            // A finished write wins over a signal that came with it.
            biased;
            result = &mut result => result,
            err = signals.recv() => {
                if partial.remove() {
                    // Too late: the output is complete and in place, the worker is about to
                    // report it.
                    result.await
                } else {
                    Err(err)
                }
            }
        }
    })
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
