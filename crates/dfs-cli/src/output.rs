//! Where client commands put their output: `-o PATH` for `get`, `encrypt` and `decrypt`
//! ([`Target`]), the signals that abort such a write ([`Signals`]), and stdout lines that end
//! quietly when the reader has gone ([`Stdout`]).
//!
//! `-o PATH` writes *into* what is at `PATH`:
//!
//! - a path under `/dev` or `/proc` (`/dev/stdout`, `/dev/stderr`, `/dev/fd/N`,
//!   `/proc/self/fd/N`, `/dev/null`, also reached through a symbolic link) is opened for
//!   appending and written directly, whatever it is: never replaced, never created (so
//!   `-o /dev/stderr 2>>log` appends to `log`);
//! - a character or block device or a FIFO is opened and written directly, streaming (no
//!   temporary file, no rename, no truncation: `-o /dev/null` stays `/dev/null`); if it has
//!   become a regular file by the time it is opened, nothing is written and the command fails;
//! - a regular file, or a path that does not exist yet, is written to a temporary file
//!   `.dfs-partial-*` beside it, renamed into place only when complete; a symbolic link is
//!   followed to its final target first, so the temporary file goes beside the target and the
//!   link stays a link;
//! - a new file gets the usual permissions (`0666` less the umask); a replaced file keeps its
//!   mode, owner and group (like `cp -p`); when its owner and group cannot be kept (not root),
//!   the new file is the writer's and loses any setuid and setgid bits;
//! - a directory or a Unix socket (which cannot be opened) is refused up front
//!   ([`Error::Usage`]), before anything is read or fetched.

use std::fs::{File, OpenOptions, Permissions};
use std::io::{self, Write};
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
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
    /// Under `/dev` or `/proc`: opened for appending and written in place, whatever it is.
    Append(PathBuf),
    /// A device or FIFO: opened and written in place, refused if it is a regular file by then.
    Direct(PathBuf),
    /// A regular file or nothing yet at `dest` (symlinks resolved): temporary file + rename.
    Replace {
        dest: PathBuf,
        /// The file being replaced (`None`: a new file).
        old: Option<Kept>,
    },
}

/// What a replaced file passes on to its replacement.
#[derive(Clone, Copy, Debug)]
struct Kept {
    /// Permission bits, setuid, setgid and sticky included.
    mode: u32,
    uid: u32,
    gid: u32,
}

impl Target {
    /// Checks `path` without creating or opening anything: a directory or a socket is a usage
    /// error; a path under `/dev` or `/proc` with nothing there is an I/O error (not found).
    pub(crate) fn resolve(path: &Path) -> Result<Target> {
        let shown = path.to_path_buf();
        let io_err = |source| Error::Io {
            context: format!("cannot write {}", path.display()),
            source,
        };
        let (followed, special) = follow_links(path).map_err(io_err)?;
        let kind = match std::fs::metadata(path) {
            Ok(meta) if meta.is_dir() => {
                return Err(Error::Usage {
                    message: format!("-o {}: is a directory", path.display()),
                });
            }
            Ok(meta) if meta.file_type().is_socket() => {
                return Err(Error::Usage {
                    message: format!(
                        "-o {}: is a socket, which cannot be written to",
                        path.display()
                    ),
                });
            }
            // The kernel follows any links (also /proc's magic ones) when it is opened.
            Ok(_) if special => Kind::Append(path.to_path_buf()),
            Ok(meta) if !meta.is_file() => Kind::Direct(path.to_path_buf()),
            Ok(meta) => Kind::Replace {
                dest: std::fs::canonicalize(path).map_err(io_err)?,
                old: Some(Kept {
                    mode: meta.mode() & 0o7777,
                    uid: meta.uid(),
                    gid: meta.gid(),
                }),
            },
            Err(err) if err.kind() == io::ErrorKind::NotFound && special => {
                return Err(io_err(io::Error::new(
                    io::ErrorKind::NotFound,
                    "no such file (dfs creates no files under /dev or /proc)",
                )));
            }
            Err(err) if err.kind() == io::ErrorKind::NotFound => Kind::Replace {
                // Nothing there, or a dangling link: the file is created where it points.
                dest: followed,
                old: None,
            },
            Err(err) => return Err(io_err(err)),
        };
        Ok(Target { shown, kind })
    }

    /// Whether the output is written in place (no temporary file to clean up on a signal).
    pub(crate) fn is_direct(&self) -> bool {
        !matches!(self.kind, Kind::Replace { .. })
    }

    /// Opens the output for writing: the target itself, or a new temporary file beside it
    /// that `partial` owns (and removes when [`Partial::remove`] is called or it is dropped
    /// without [`Output::commit`]).
    pub(crate) fn open(&self, partial: &Partial) -> Result<Output> {
        let file = match &self.kind {
            Kind::Append(path) => OpenOptions::new()
                .append(true)
                .open(path)
                .map_err(|source| self.io_err(source))?,
            Kind::Direct(path) => {
                // No truncation: if a regular file took the device's place since `resolve`,
                // the check below refuses it before anything is written.
                let file = OpenOptions::new()
                    .write(true)
                    .open(path)
                    .map_err(|source| self.io_err(source))?;
                let meta = file.metadata().map_err(|source| self.io_err(source))?;
                if meta.is_file() {
                    return Err(self.io_err(io::Error::other(
                        "it became a regular file after it was checked; nothing was written",
                    )));
                }
                file
            }
            Kind::Replace { dest, old } => return self.open_temporary(partial, dest, *old),
        };
        Ok(Output {
            file,
            replace: None,
            kept: None,
            shown: self.shown.clone(),
        })
    }

    /// A new temporary file beside `dest`, held by `partial`; it gets `old`'s owner and mode
    /// when committed.
    fn open_temporary(&self, partial: &Partial, dest: &Path, old: Option<Kept>) -> Result<Output> {
        let dir = match dest.parent() {
            Some(dir) if !dir.as_os_str().is_empty() => dir,
            _ => Path::new("."),
        };
        let mut builder = tempfile::Builder::new();
        builder.prefix(".dfs-partial-");
        // A new file: 0666 less the umask (the syscall applies it). A replaced file: private
        // until it is complete; its owner and mode are set at the commit, after the last
        // write (a write by a process without CAP_FSETID clears setuid and setgid).
        builder.permissions(Permissions::from_mode(match old {
            None => 0o666,
            Some(_) => 0o600,
        }));
        // Without the path `tempfile` adds to its errors: an internal staging name that never
        // existed, not the user's (as `keygen` does).
        let tmp = builder
            .tempfile_in(dir)
            .map_err(|source| self.io_err(without_path(&source)))?;
        let (file, path) = tmp.into_parts();
        // Held at once: removed on a signal or an error from here on.
        partial.hold(path)?;
        Ok(Output {
            file,
            replace: Some((partial.clone(), dest.to_path_buf())),
            kept: old,
            shown: self.shown.clone(),
        })
    }

    fn io_err(&self, source: io::Error) -> Error {
        Error::Io {
            context: format!("cannot write {}", self.shown.display()),
            source,
        }
    }
}

/// `err` without the path `tempfile` appends to its messages.
fn without_path(err: &io::Error) -> io::Error {
    match err.raw_os_error() {
        Some(code) => io::Error::from_raw_os_error(code),
        None => io::Error::new(err.kind(), err.kind().to_string()),
    }
}

/// The mode a replacement file gets from the file it replaces: the same, but without setuid
/// and setgid when it could not be given the old owner and group (a setuid program must not
/// change hands, e.g. from `nobody` to `root`, with new contents).
fn kept_mode(mode: u32, owner_kept: bool) -> u32 {
    if owner_kept {
        mode & 0o7777
    } else {
        mode & 0o7777 & !0o6000
    }
}

/// `path` with every symbolic link at its end followed (the parent directories are left as
/// they are: the rename happens in the directory the last link points into), and whether the
/// path or a link on the way is in `/dev` or `/proc` (its directory resolved).
fn follow_links(path: &Path) -> io::Result<(PathBuf, bool)> {
    let mut path = path.to_path_buf();
    let mut special = false;
    for _ in 0..MAX_LINKS {
        special = special || in_dev_or_proc(&path);
        match std::fs::symlink_metadata(&path) {
            Ok(meta) if meta.file_type().is_symlink() => {
                let target = std::fs::read_link(&path)?;
                path = match path.parent() {
                    Some(dir) if target.is_relative() => dir.join(target),
                    _ => target,
                };
            }
            Ok(_) => return Ok((path, special)),
            Err(err) if err.kind() == io::ErrorKind::NotFound => return Ok((path, special)),
            Err(err) => return Err(err),
        }
    }
    Err(io::Error::other("too many levels of symbolic links"))
}

/// Whether the directory of `path`, all links resolved, is `/dev` or `/proc` or below (but
/// not `/dev/shm`).
fn in_dev_or_proc(path: &Path) -> bool {
    let dir = match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    };
    std::fs::canonicalize(dir).is_ok_and(|dir| {
        // `/dev/shm` holds ordinary files (a tmpfs): those are written like any other.
        (dir.starts_with("/dev") && !dir.starts_with("/dev/shm")) || dir.starts_with("/proc")
    })
}

/// The temporary file of an output being written, shared between the writer and whoever
/// handles a signal: [`Partial::remove`] deletes it and makes a later commit fail, so the
/// output is either renamed into place or removed, never both and never left behind.
#[derive(Clone, Debug, Default)]
pub(crate) struct Partial(Arc<Mutex<PartialState>>);

#[derive(Debug, Default)]
struct PartialState {
    removed: bool,
    /// Renamed into place: complete, nothing left to remove.
    committed: bool,
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

    /// Deletes the temporary file, if any, and makes any later commit fail. Returns `true`
    /// when it is too late: the output was already renamed into place, complete.
    #[must_use]
    pub(crate) fn remove(&self) -> bool {
        let mut state = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        if state.committed {
            return true;
        }
        state.removed = true;
        // Dropping the `TempPath` deletes the file.
        state.tmp = None;
        false
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
    /// The owner and mode of the file it replaces, given to it at the commit.
    kept: Option<Kept>,
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
        if let Some(old) = &self.kept {
            // After the last write, so no write clears the bits; the owner first, as a
            // chown may clear setuid/setgid too.
            let owner_kept =
                std::os::unix::fs::fchown(&self.file, Some(old.uid), Some(old.gid)).is_ok();
            self.file
                .set_permissions(Permissions::from_mode(kept_mode(old.mode, owner_kept)))
                .map_err(io_err)?;
        }
        self.file.sync_all().map_err(io_err)?;
        // Holding the lock while renaming: a signal either comes first (nothing is renamed)
        // or after (the output is complete).
        let mut state = partial.0.lock().unwrap_or_else(PoisonError::into_inner);
        let tmp = match state.tmp.take() {
            Some(tmp) if !state.removed => tmp,
            _ => return Err(interrupted_while_writing()),
        };
        tmp.persist(dest).map_err(|err| io_err(err.error))?;
        state.committed = true;
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

#[cfg(test)]
mod tests {
    use super::*;

    /// Names in `dir` starting with `.dfs-partial-`.
    fn partials(dir: &Path) -> usize {
        std::fs::read_dir(dir)
            .unwrap()
            .filter(|e| {
                e.as_ref()
                    .unwrap()
                    .file_name()
                    .to_string_lossy()
                    .starts_with(".dfs-partial-")
            })
            .count()
    }

    #[test]
    fn setuid_and_setgid_are_dropped_only_with_the_owner() {
        assert_eq!(kept_mode(0o4755, true), 0o4755);
        assert_eq!(kept_mode(0o2750, true), 0o2750);
        assert_eq!(kept_mode(0o4755, false), 0o755);
        assert_eq!(kept_mode(0o6775, false), 0o775);
        // The sticky bit and the permissions stay.
        assert_eq!(kept_mode(0o1640, false), 0o1640);
        assert_eq!(kept_mode(0o100644, false), 0o644);
    }

    /// A device that is a regular file by the time it is opened (swapped after `resolve`):
    /// refused, and not one byte of the file is touched.
    #[test]
    fn direct_target_turned_regular_file_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("was-a-device");
        std::fs::write(&path, b"precious").unwrap();
        let target = Target {
            shown: path.clone(),
            kind: Kind::Direct(path.clone()),
        };
        let err = target.open(&Partial::default()).unwrap_err();
        assert!(matches!(err, Error::Io { .. }), "{err:?}");
        assert!(
            err.one_line().contains("regular file"),
            "{}",
            err.one_line()
        );
        assert_eq!(std::fs::read(&path).unwrap(), b"precious");
    }

    /// Paths under /dev or /proc, given so or reached through a link, are appended to; a
    /// missing one is not created; sockets and directories are usage errors. Nothing here
    /// opens or writes anything.
    #[test]
    fn dev_and_proc_are_written_in_place_and_never_created() {
        let dir = tempfile::tempdir().unwrap();
        // A descriptor of our own (the harness's stdout and stderr may be anything).
        let log = File::create(dir.path().join("log")).unwrap();
        let fd = std::os::fd::AsRawFd::as_raw_fd(&log);
        let by_fd = [format!("/proc/self/fd/{fd}"), format!("/dev/fd/{fd}")];
        for path in by_fd.iter().map(String::as_str).chain(["/dev/null"]) {
            let target = Target::resolve(Path::new(path)).unwrap();
            assert!(matches!(target.kind, Kind::Append(_)), "{path}: {target:?}");
        }
        let link = dir.path().join("link");
        std::os::unix::fs::symlink(&by_fd[1], &link).unwrap();
        let target = Target::resolve(&link).unwrap();
        assert!(matches!(target.kind, Kind::Append(_)), "{target:?}");

        // Except `/dev/shm`, a tmpfs of ordinary files.
        if Path::new("/dev/shm").is_dir() {
            assert!(!in_dev_or_proc(Path::new("/dev/shm/dfs-output-test")));
        }

        let missing = Target::resolve(Path::new("/proc/self/fd/987654")).unwrap_err();
        assert!(
            matches!(&missing, Error::Io { source, .. } if source.kind() == io::ErrorKind::NotFound)
        );
        let dangling = dir.path().join("dangling");
        std::os::unix::fs::symlink("/proc/self/fd/987654", &dangling).unwrap();
        assert!(matches!(Target::resolve(&dangling), Err(Error::Io { .. })));

        let socket = dir.path().join("sock");
        let _listener = std::os::unix::net::UnixListener::bind(&socket).unwrap();
        let err = Target::resolve(&socket).unwrap_err();
        assert!(matches!(err, Error::Usage { .. }), "{err:?}");
        assert!(err.one_line().contains("is a socket"), "{}", err.one_line());
        assert!(matches!(
            Target::resolve(dir.path()),
            Err(Error::Usage { .. })
        ));
    }

    /// A signal handled after the rename learns that the output is complete and in place; one
    /// handled before it removes the temporary file and makes the commit fail.
    #[test]
    fn remove_after_commit_reports_the_output_complete() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("out");
        let target = Target::resolve(&path).unwrap();

        let partial = Partial::default();
        let mut output = target.open(&partial).unwrap();
        output.write_all(b"complete").unwrap();
        output.commit().unwrap();
        assert!(partial.remove(), "the commit is reported");
        assert_eq!(std::fs::read(&path).unwrap(), b"complete");
        assert_eq!(partials(dir.path()), 0);

        std::fs::remove_file(&path).unwrap();
        let partial = Partial::default();
        let mut output = target.open(&partial).unwrap();
        output.write_all(b"partial").unwrap();
        assert_eq!(partials(dir.path()), 1);
        assert!(!partial.remove());
        assert_eq!(partials(dir.path()), 0);
        assert!(output.commit().is_err());
        assert!(!path.exists());
    }
}
