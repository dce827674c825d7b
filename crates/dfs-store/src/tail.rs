//! Following a write while it happens: [`Tail`] and [`Follower`].
//!
//! A write given a [`Tail`] ([`Store::write_tailed`](crate::Store::write_tailed)) publishes
//! how far its payload has reached the staging file; [`Follower`]s read those bytes back from
//! the file (positional reads on their own, so any number follow independently) while the
//! write goes on, and learn the final size and BLAKE3 hash once the object is committed. A
//! replica can so stream from the local file as it is written, instead of after.

use std::fmt;
use std::fs::File;
use std::io::{self, Read};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};

use crate::error::{Result, StoreError};

/// The published progress of one write, shared with its followers.
///
/// Create one, hand [`follow`](Tail::follow)ers to whoever streams the bytes, and pass the
/// tail to [`Store::write_tailed`](crate::Store::write_tailed). A tail follows one write;
/// a second write given the same tail is refused.
///
/// ```
/// use std::io::Read;
/// use dfs_store::{Next, Store, Tail};
/// # let dir = tempfile::tempdir()?;
/// let store = Store::open(dir.path())?;
/// let tail = Tail::new();
/// let mut follower = tail.follow();
/// let copier = std::thread::spawn(move || -> std::io::Result<Vec<u8>> {
///     let mut copy = Vec::new();
///     loop {
///         match follower.next(1 << 20).map_err(std::io::Error::other)? {
///             Next::Bytes(mut segment) => {
///                 segment.read_to_end(&mut copy)?;
///             }
///             Next::End { size, .. } => {
///                 assert_eq!(size, copy.len() as u64);
///                 return Ok(copy);
///             }
///         }
///     }
/// });
/// let data = vec![7u8; 3 << 20];
/// store.write_tailed("big", &data[..], &tail)?;
/// assert_eq!(copier.join().unwrap()?, data);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Clone)]
pub struct Tail {
    shared: Arc<Shared>,
}

struct Shared {
    state: Mutex<State>,
    changed: Condvar,
    notify: Option<Box<dyn Fn() + Send + Sync>>,
}

#[derive(Default)]
struct State {
    /// A write took this tail.
    claimed: bool,
    /// The key written, once the write started.
    key: Option<String>,
    /// A read handle on the staging file, once the write started.
    file: Option<Arc<File>>,
    /// Where the payload starts in the file.
    offset: u64,
    /// Payload bytes in the file so far.
    written: u64,
    end: Option<End>,
}

enum End {
    Committed { size: u64, hash: [u8; 32] },
    Failed(String),
}

impl fmt::Debug for Tail {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = self.shared.lock();
        f.debug_struct("Tail")
            .field("key", &state.key)
            .field("written", &state.written)
            .field("ended", &state.end.is_some())
            .finish_non_exhaustive()
    }
}

impl Default for Tail {
    fn default() -> Self {
        Tail::new()
    }
}

impl Shared {
    /// The state; a panic elsewhere while holding the lock leaves consistent data (every
    /// update is a plain assignment), so a poisoned lock is used as is.
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn update(&self, f: impl FnOnce(&mut State)) {
        f(&mut self.lock());
        self.changed.notify_all();
        if let Some(notify) = &self.notify {
            notify();
        }
    }
}

impl Tail {
    /// A tail for one write, not started yet.
    pub fn new() -> Tail {
        Tail::build(None)
    }

    /// A tail that also calls `notify` after every change (more bytes written, the write
    /// committed or failed), for followers that wait without blocking a thread, e.g. on an
    /// async notification, and poll [`Follower::try_next`]. `notify` runs on the writing
    /// thread: keep it short.
    pub fn with_notify(notify: impl Fn() + Send + Sync + 'static) -> Tail {
        Tail::build(Some(Box::new(notify)))
    }

    fn build(notify: Option<Box<dyn Fn() + Send + Sync>>) -> Tail {
        Tail {
            shared: Arc::new(Shared {
                state: Mutex::new(State::default()),
                changed: Condvar::new(),
                notify,
            }),
        }
    }

    /// A reader of the write's payload from its first byte, usable before the write starts.
    pub fn follow(&self) -> Follower {
        Follower {
            shared: Arc::clone(&self.shared),
            pos: 0,
        }
    }

    /// Takes this tail for a write; false if a write already took it.
    pub(crate) fn claim(&self) -> bool {
        !std::mem::replace(&mut self.shared.lock().claimed, true)
    }

    /// Starts following the (claimed) write of `key` whose payload begins at `offset` in
    /// `file`.
    pub(crate) fn start(&self, key: &str, file: File, offset: u64) {
        self.shared.update(|s| {
            s.key = Some(key.to_owned());
            s.file = Some(Arc::new(file));
            s.offset = offset;
        });
    }

    /// `written` payload bytes are in the file.
    pub(crate) fn advance(&self, written: u64) {
        self.shared.update(|s| s.written = written);
    }

    /// The write ended: committed as `size` bytes hashing to `hash`, or failed.
    pub(crate) fn end(&self, outcome: std::result::Result<(u64, [u8; 32]), String>) {
        self.shared.update(|s| {
            if s.end.is_none() {
                s.end = Some(match outcome {
                    Ok((size, hash)) => {
                        s.written = size;
                        End::Committed { size, hash }
                    }
                    Err(reason) => End::Failed(reason),
                });
            }
        });
    }
}

/// What a [`Follower`] got next.
#[derive(Debug)]
pub enum Next {
    /// Payload bytes already in the file, in order after the previous segment.
    Bytes(Segment),
    /// The object is committed: `size` payload bytes in all, whose BLAKE3 hash (as the
    /// store records it) is `hash`. Every byte was handed out in earlier segments.
    End {
        /// Payload size.
        size: u64,
        /// BLAKE3 of the payload.
        hash: [u8; 32],
    },
}

/// Reads a followed write's payload as it reaches the file (see [`Tail`]).
pub struct Follower {
    shared: Arc<Shared>,
    pos: u64,
}

impl fmt::Debug for Follower {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Follower")
            .field("pos", &self.pos)
            .finish_non_exhaustive()
    }
}

impl Follower {
    /// Blocks until `max` more payload bytes are in the file or the write ended, and
    /// returns those bytes (at most `max`) as a [`Segment`], or [`Next::End`] once all were
    /// handed out and the object is committed.
    ///
    /// Errors: [`StoreError::Abandoned`] when the write failed (nothing was committed, so
    /// the bytes read so far must be discarded).
    pub fn next(&mut self, max: u64) -> Result<Next> {
        let shared = Arc::clone(&self.shared);
        let mut state = shared.lock();
        loop {
            if let Some(next) = ready(&state, &mut self.pos, max, max)? {
                return Ok(next);
            }
            state = shared
                .changed
                .wait(state)
                .unwrap_or_else(std::sync::PoisonError::into_inner);
        }
    }

    /// [`next`](Self::next) without blocking: `None` while fewer than `max` new bytes are
    /// written and the write goes on.
    pub fn try_next(&mut self, max: u64) -> Result<Option<Next>> {
        let shared = Arc::clone(&self.shared);
        let state = shared.lock();
        ready(&state, &mut self.pos, max, max)
    }

    /// [`try_next`](Self::try_next) that does not wait for `max` bytes: whatever is written
    /// and not handed out yet (up to `max`), the end, or `None` when there is nothing new.
    /// For flushing a slow write's bytes from time to time.
    pub fn try_next_available(&mut self, max: u64) -> Result<Option<Next>> {
        let shared = Arc::clone(&self.shared);
        let state = shared.lock();
        ready(&state, &mut self.pos, 1, max)
    }
}

/// What a follower at `pos` gets next once `want` new bytes are written (or the write
/// ended), at most `max`, if anything yet; advances `pos` past a segment.
fn ready(state: &State, pos: &mut u64, want: u64, max: u64) -> Result<Option<Next>> {
    let (want, max) = (want.max(1), max.max(1));
    let unread = state.written.saturating_sub(*pos);
    match &state.end {
        Some(End::Failed(reason)) => {
            return Err(StoreError::Abandoned {
                key: state.key.clone().unwrap_or_default(),
                reason: reason.clone(),
            });
        }
        Some(End::Committed { size, hash }) if unread == 0 => {
            return Ok(Some(Next::End {
                size: *size,
                hash: *hash,
            }));
        }
        Some(End::Committed { .. }) => {}
        None if unread < want.min(max) => return Ok(None),
        None => {}
    }
    let Some(file) = &state.file else {
        return Ok(None); // not started (an ended write always started)
    };
    let len = unread.min(max);
    let segment = Segment {
        file: Arc::clone(file),
        at: state.offset + *pos,
        left: len,
    };
    *pos += len;
    Ok(Some(Next::Bytes(segment)))
}

/// Payload bytes already written to the file, read back with positional reads.
pub struct Segment {
    file: Arc<File>,
    at: u64,
    left: u64,
}

impl fmt::Debug for Segment {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Segment")
            .field("left", &self.left)
            .finish_non_exhaustive()
    }
}

impl Segment {
    /// Bytes left in this segment.
    pub fn len(&self) -> u64 {
        self.left
    }

    /// Whether every byte was read.
    pub fn is_empty(&self) -> bool {
        self.left == 0
    }
}

impl Read for Segment {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let want = buf
            .len()
            .min(usize::try_from(self.left).unwrap_or(usize::MAX));
        if want == 0 {
            return Ok(0);
        }
        let n = read_at(&self.file, &mut buf[..want], self.at)?;
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "the followed file is shorter than what was written to it",
            ));
        }
        self.at += n as u64;
        self.left -= n as u64;
        Ok(n)
    }
}

#[cfg(unix)]
fn read_at(file: &File, buf: &mut [u8], at: u64) -> io::Result<usize> {
    std::os::unix::fs::FileExt::read_at(file, buf, at)
}

#[cfg(windows)]
fn read_at(file: &File, buf: &mut [u8], at: u64) -> io::Result<usize> {
    std::os::windows::fs::FileExt::seek_read(file, buf, at)
}

#[cfg(not(any(unix, windows)))]
fn read_at(_: &File, _: &mut [u8], _: u64) -> io::Result<usize> {
    Err(io::Error::new(
        io::ErrorKind::Unsupported,
        "following a write needs positional reads, which this platform lacks",
    ))
}
