//! Where client commands put their output: `-o PATH` for `get`, `encrypt` and `decrypt`
//! ([`Target`]), the signals that abort such a write ([`Signals`]), and stdout lines that end
//! quietly when the reader has gone ([`Stdout`]).
//!
//! `-o PATH` writes *into* what is at `PATH`:
//!
//! - a character or block device, a FIFO or a socket is opened and written directly, streaming
//!   (no temporary file, no rename: `-o /dev/null` stays `/dev/null`);
//! - a regular file, or a path that does not exist yet, is written to a temporary file
//!   `.dfs-partial-*` beside it, renamed into place only when complete; a symbolic link is
//!   followed to its final target first, so the temporary file goes beside the target and the
//!   link stays a link;
//! - a new file gets the usual permissions (`0666` less the umask); a replaced file keeps its
//!   mode;
//! - a directory is refused up front ([`Error::Usage`]), before anything is read or fetched.

use std::fs::{File, OpenOptions, Permissions};
use std::io::{self, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};

use tempfile::TempPath;
use tokio::signal::unix::{Signal, SignalKind, signal};

use crate::error::{EXIT_SIGINT, EXIT_SIGTERM};
use crate::{Error, Result};

/// Symbolic links followed before giving up (Linux's own limit).
const MAX_LINKS: usize = 40;

/// A checked `-o PATH`: what is there and how it will be written.
#[derive(Debug)]
pub(crate) struct Target {
    /// The path as the user gave it, for messages.
    shown: PathBuf,
    kind: Kind,
}

#[derive(Debug)]
enum Kind {
    /// Not a regular file (device, FIFO, socket): opened and written in place.
    Direct(PathBuf),
    /// A regular file or nothing yet at `dest` (symlinks resolved): temporary file + rename.
    Replace {
        dest: PathBuf,
        /// The mode of the file being replaced (`None`: a new file).
        mode: Option<Permissions>,
    },
}

impl Target {
    /// Checks `path` without creating or opening anything: a directory is a usage error.
    pub(crate) fn resolve(path: &Path) -> Result<Target> {
        let shown = path.to_path_buf();
        let io_err = |source| Error::Io {
            context: format!("cannot write {}", path.display()),
            source,
        };
        let kind = match std::fs::metadata(path) {
            Ok(meta) if meta.is_dir() => {
                return Err(Error::Usage {
                    message: format!("-o {}: is a directory", path.display()),
                });
            }
            // The kernel follows any links (also /proc's magic ones) when it is opened.
            Ok(meta) if !meta.is_file() => Kind::Direct(path.to_path_buf()),
            Ok(meta) => Kind::Replace {
                dest: std::fs::canonicalize(path).map_err(io_err)?,
                mode: Some(meta.permissions()),
            },
            Err(err) if err.kind() == io::ErrorKind::NotFound => Kind::Replace {
                // Nothing there, or a dangling link: the file is created where it points.
                dest: follow_links(path).map_err(io_err)?,
                mode: None,
            },
            Err(err) => return Err(io_err(err)),
        };
        Ok(Target { shown, kind })
    }

    /// Whether the output is written in place (no temporary file to clean up on a signal).
    pub(crate) fn is_direct(&self) -> bool {
        matches!(self.kind, Kind::Direct(_))
    }

    /// Opens the output for writing: the target itself, or a new temporary file beside it
    /// that `partial` owns (and removes when [`Partial::remove`] is called or it is dropped
    /// without [`Output::commit`]).
    pub(crate) fn open(&self, partial: &Partial) -> Result<Output> {
        match &self.kind {
            Kind::Direct(path) => {
                let file = OpenOptions::new()
                    .write(true)
                    .open(path)
                    .map_err(|source| self.io_err(source))?;
                Ok(Output {
                    file,
                    replace: None,
                    shown: self.shown.clone(),
                })
            }
            Kind::Replace { dest, mode } => {
                let dir = match dest.parent() {
                    Some(dir) if !dir.as_os_str().is_empty() => dir,
                    _ => Path::new("."),
                };
                let mut builder = tempfile::Builder::new();
                builder.prefix(".dfs-partial-");
                // A new file: 0666 less the umask (the syscall applies it). A replaced file:
                // private until its own mode is set below, before anything is written.
                builder.permissions(Permissions::from_mode(match mode {
                    None => 0o666,
                    Some(_) => 0o600,
                }));
                let tmp = builder
                    .tempfile_in(dir)
                    .map_err(|source| self.io_err(source))?;
                let (file, path) = tmp.into_parts();
                if let Some(mode) = mode {
                    file.set_permissions(mode.clone())
                        .map_err(|source| self.io_err(source))?;
                }
                partial.hold(path)?;
                Ok(Output {
                    file,
                    replace: Some((partial.clone(), dest.clone())),
                    shown: self.shown.clone(),
                })
            }
        }
    }

    fn io_err(&self, source: io::Error) -> Error {
        Error::Io {
            context: format!("cannot write {}", self.shown.display()),
            source,
        }
    }
}

/// `path` with every symbolic link at its end followed (the parent directories are left as
/// they are: the rename happens in the directory the last link points into).
fn follow_links(path: &Path) -> io::Result<PathBuf> {
    let mut path = path.to_path_buf();
    for _ in 0..MAX_LINKS {
        match std::fs::symlink_metadata(&path) {
            Ok(meta) if meta.file_type().is_symlink() => {
                let target = std::fs::read_link(&path)?;
                path = match path.parent() {
                    Some(dir) if target.is_relative() => dir.join(target),
                    _ => target,
                };
            }
            Ok(_) => return Ok(path),
            Err(err) if err.kind() == io::ErrorKind::NotFound => return Ok(path),
            Err(err) => return Err(err),
        }
    }
    Err(io::Error::other("too many levels of symbolic links"))
}

/// The temporary file of an output being written, shared between the writer and whoever
/// handles a signal: [`Partial::remove`] deletes it and makes a later commit fail, so the
/// output is either renamed into place or removed, never both and never left behind.
#[derive(Clone, Debug, Default)]
pub(crate) struct Partial(Arc<Mutex<PartialState>>);

#[derive(Debug, Default)]
struct PartialState {
    removed: bool,
    tmp: Option<TempPath>,
}

impl Partial {
    fn hold(&self, tmp: TempPath) -> Result<()> {
        let mut state = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        if state.removed {
            // Dropping `tmp` deletes the file.
            return Err(interrupted_while_writing());
        }
        state.tmp = Some(tmp);
        Ok(())
    }

    /// Deletes the temporary file, if any, and makes any later commit fail.
    pub(crate) fn remove(&self) {
        let mut state = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        state.removed = true;
        // Dropping the `TempPath` deletes the file.
        state.tmp = None;
    }
}

fn interrupted_while_writing() -> Error {
    Error::Io {
        context: "output removed".to_owned(),
        source: io::Error::new(io::ErrorKind::Interrupted, "interrupted"),
    }
}

/// An open `-o` output.
#[derive(Debug)]
pub(crate) struct Output {
    file: File,
    /// For a temporary file: who holds it and the path it is renamed to.
    replace: Option<(Partial, PathBuf)>,
    shown: PathBuf,
}

impl Output {
    /// The path as given on the command line.
    pub(crate) fn shown(&self) -> &Path {
        &self.shown
    }

    /// The file to write to.
    pub(crate) fn file(&self) -> &File {
        &self.file
    }

    /// Finishes the output: a temporary file is synced and renamed over the target.
    pub(crate) fn commit(self) -> Result<()> {
        let io_err = |source| Error::Io {
            context: format!("cannot write {}", self.shown.display()),
            source,
        };
        let Some((partial, dest)) = &self.replace else {
            return Ok(());
        };
        self.file.sync_all().map_err(io_err)?;
        // Holding the lock while renaming: a signal either comes first (nothing is renamed)
        // or after (the output is complete).
        let mut state = partial.0.lock().unwrap_or_else(PoisonError::into_inner);
        let tmp = match state.tmp.take() {
            Some(tmp) if !state.removed => tmp,
            _ => return Err(interrupted_while_writing()),
        };
        tmp.persist(dest).map_err(|err| io_err(err.error))?;
        Ok(())
    }
}

impl Write for Output {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.file.write(buf)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.file.flush()
    }
}

/// SIGINT and SIGTERM, caught from creation on (the handlers are installed by [`Signals::new`],
/// not when first awaited). Must be created inside a tokio runtime.
#[derive(Debug)]
pub(crate) struct Signals {
    interrupt: Signal,
    terminate: Signal,
}

impl Signals {
    /// Installs the handlers.
    pub(crate) fn new() -> Result<Signals> {
        let install = |kind| {
            signal(kind).map_err(|source| Error::Io {
                context: "cannot install signal handlers".to_owned(),
                source,
            })
        };
        Ok(Signals {
            interrupt: install(SignalKind::interrupt())?,
            terminate: install(SignalKind::terminate())?,
        })
    }

    /// Waits for either signal; the error to end the command with (status 130 or 143).
    pub(crate) async fn recv(&mut self) -> Error {
        tokio::select! {
            _ = self.interrupt.recv() => Error::Interrupted { signal: "SIGINT", status: EXIT_SIGINT },
            _ = self.terminate.recv() => Error::Interrupted { signal: "SIGTERM", status: EXIT_SIGTERM },
        }
    }
}

/// Lines on stdout. When the reader has gone (`EPIPE`, e.g. `dfs ls | head -1`), the rest is
/// dropped quietly and the command still succeeds, like most Unix tools; any other write error
/// is an [`Error::Io`].
#[derive(Debug)]
pub(crate) struct Stdout {
    out: io::StdoutLock<'static>,
    closed: bool,
}

impl Stdout {
    /// Locks stdout.
    pub(crate) fn new() -> Stdout {
        Stdout {
            out: io::stdout().lock(),
            closed: false,
        }
    }

    /// Writes one line.
    pub(crate) fn line(&mut self, args: std::fmt::Arguments<'_>) -> Result<()> {
        if self.closed {
            return Ok(());
        }
        let result = writeln!(self.out, "{args}");
        self.check(result)
    }

    /// Flushes what is buffered.
    pub(crate) fn flush(mut self) -> Result<()> {
        if self.closed {
            return Ok(());
        }
        let result = self.out.flush();
        self.check(result)
    }

    fn check(&mut self, result: io::Result<()>) -> Result<()> {
        match result {
            Ok(()) => Ok(()),
            Err(err) if err.kind() == io::ErrorKind::BrokenPipe => {
                self.closed = true;
                Ok(())
            }
            Err(source) => Err(Error::Io {
                context: "cannot write to stdout".to_owned(),
                source,
            }),
        }
    }
}
