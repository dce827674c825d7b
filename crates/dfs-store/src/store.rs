//! [`Store`]: the verbs, atomic writes, verified reads, listing and scrubbing.

use std::collections::HashSet;
use std::fmt;
use std::fs::{self, File, OpenOptions};
use std::io::{self, BufReader, ErrorKind, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, RwLock, mpsc};

use crate::error::{Mismatch, Result, StoreError};
use crate::format::{FIXED_LEN, Header};
use crate::pack::{Found, MAX_PACKED, Pack, PackStats};
use crate::path::{HashPath, PathKey, PathTransform, check_key};
use crate::tail::Tail;

/// The root folder [`Store::open_default`] uses, relative to the working directory.
pub const DEFAULT_ROOT: &str = "dfs-store";

/// Name of the directory under the root holding the objects.
const OBJECTS_DIR: &str = "objects";
/// Name of the staging directory under the root (same file system, so rename is atomic).
const TMP_DIR: &str = "tmp";
/// The root's lock file (see [`lock_root`]).
const LOCK_FILE: &str = "lock";
/// Copy buffer for writes and the most a reader buffers.
const CHUNK: usize = 64 * 1024;
/// How often a commit is retried when a concurrent delete/clear pruned its directory.
const COMMIT_ATTEMPTS: usize = 32;
/// Paths of this many bytes or more are refused (`PATH_MAX` on Linux, with its NUL).
const MAX_PATH_LEN: usize = 4096;

/// Whether writes are flushed to stable storage before they are reported done.
///
/// ```
/// use dfs_store::{Durability, Store};
/// # let dir = tempfile::tempdir()?;
/// let fast = Store::builder(dir.path()).durability(Durability::None).open()?;
/// assert_eq!(fast.durability(), Durability::None);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum Durability {
    /// fsync the object and its directory (and any directory created for it, or created
    /// by a concurrent writer whose fsync of its parent has not succeeded yet) before
    /// `write` returns; `delete` and `clear` fsync the directories they change. The default.
    #[default]
    Fsync,
    /// No fsync: a write is atomic (readers never see a partial object, a crash never
    /// leaves one) but may be lost if the machine goes down shortly after it.
    None,
}

/// Options for opening a [`Store`]; start with [`Store::builder`].
///
/// ```
/// use dfs_store::{Durability, PlainPath, Store};
/// # let dir = tempfile::tempdir()?;
/// let store = Store::builder(dir.path())
///     .transform(PlainPath)
///     .durability(Durability::Fsync)
///     .open()?;
/// store.write("docs/readme.txt", &b"hi"[..])?;
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug, Clone)]
pub struct StoreBuilder<P = HashPath> {
    root: PathBuf,
    transform: P,
    durability: Durability,
    pack: u32,
}

impl<P: PathTransform> StoreBuilder<P> {
    /// Uses `transform` to map keys to locations.
    pub fn transform<Q: PathTransform>(self, transform: Q) -> StoreBuilder<Q> {
        StoreBuilder {
            root: self.root,
            transform,
            durability: self.durability,
            pack: self.pack,
        }
    }

    /// Sets the durability of writes (default [`Durability::Fsync`]).
    pub fn durability(mut self, durability: Durability) -> Self {
        self.durability = durability;
        self
    }

    /// Stores objects of at most `max_size` bytes (up to 1 MiB) in the pack: an append-only
    /// log of segment files under `<root>/pack`, instead of one file each. Off by default.
    ///
    /// A durable write of a small object as its own file costs two journal commits (the
    /// file, then its rename); an append to the pack costs one data flush, and concurrent
    /// writers share their flushes. Larger objects, and every
    /// [`write_tailed`](Store::write_tailed), still go to their own files; every verb
    /// sees both. The price: the pack's index lives in memory (about 150 bytes per packed
    /// object with 20-byte keys: 145 MiB for a million, which took 0.8-0.9 s to open, as
    /// opening reads every record header and the newest segment whole), and only one
    /// `Store` (one process) at a time can open a root that has a pack
    /// ([`StoreError::Locked`]). Space of overwritten and deleted packed objects is
    /// reclaimed as segments fill ([`Store::compact`] does it at once). The layout is in
    /// `FORMAT.md`, "Pack".
    ///
    /// `0` means off (the default). A store whose root has a pack always reads it, with or
    /// without this option; with it off, writes go to files (and a write or delete of a
    /// packed key still appends to the pack).
    ///
    /// A packed object is held whole in memory while it is written and while it is read
    /// (at most `max_size` bytes). With [`PlainPath`](crate::PlainPath), keys where one is
    /// a directory of the other (`a` and `a/b`) can both be stored while the shorter one
    /// is packed; a later write of it as its own file then fails (without a pack the
    /// second key is refused up front).
    ///
    /// ```
    /// use dfs_store::Store;
    /// # let dir = tempfile::tempdir()?;
    /// let store = Store::builder(dir.path()).pack_small_objects(16 * 1024).open()?;
    /// store.write("small", &b"packed"[..])?;
    /// store.write("large", &vec![7u8; 100_000][..])?;
    /// assert!(store.stat("small")?.path().starts_with(dir.path().join("pack")));
    /// assert!(store.stat("large")?.path().starts_with(dir.path().join("objects")));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn pack_small_objects(mut self, max_size: u32) -> Self {
        self.pack = max_size;
        self
    }

    /// Creates the root if needed, sweeps staging files left by crashed writers and opens
    /// the store.
    pub fn open(self) -> Result<Store<P>> {
        if self.pack > MAX_PACKED {
            return Err(StoreError::InvalidConfig {
                reason: format!(
                    "pack_small_objects({}): the largest packed object is {MAX_PACKED} bytes",
                    self.pack
                ),
            });
        }
        let root = self.root;
        let objects = root.join(OBJECTS_DIR);
        let tmp = root.join(TMP_DIR);
        // The directories created here (missing ancestors of the root included): with
        // Durability::Fsync their parents are fsynced, so the store itself is durable
        // before its first write is acknowledged.
        let mut created = Vec::new();
        for dir in [&root, &objects, &tmp] {
            let missing = dir
                .ancestors()
                .take_while(|d| !d.as_os_str().is_empty() && !d.exists());
            let missing: Vec<PathBuf> = missing.map(Path::to_path_buf).collect();
            fs::create_dir_all(dir).map_err(|e| StoreError::io("create directory", dir, e))?;
            created.extend(missing);
        }
        let fsync = self.durability == Durability::Fsync;
        let mut packed = self.pack > 0 || Pack::exists(&root);
        // A store with a pack is one `Store`'s alone; others share the root.
        let mut lock = lock_root(&root, packed)?;
        if !packed && Pack::exists(&root) {
            // Another `Store` made the pack between the look and the lock.
            drop(lock);
            packed = true;
            lock = lock_root(&root, true)?;
        }
        let pack = if packed {
            Some(Pack::open(&root, fsync, self.pack)?)
        } else {
            None
        };
        let store = Store {
            root,
            objects,
            tmp,
            transform: self.transform,
            durability: self.durability,
            unsynced_dirs: UnsyncedDirs::default(),
            dirs: RwLock::new(()),
            pack: pack.map(|pack| Packed {
                pack: Arc::new(pack),
                stripes: std::array::from_fn(|_| Mutex::new(())),
            }),
            _lock: lock,
            #[cfg(test)]
            fail_writes_after: None,
            #[cfg(test)]
            dir_syncs: Mutex::default(),
        };
        if store.durability == Durability::Fsync {
            let mut parents: Vec<&Path> = created
                .iter()
                .map(|d| match d.parent() {
                    Some(p) if !p.as_os_str().is_empty() => p,
                    _ => Path::new("."),
                })
                .collect();
            parents.sort();
            parents.dedup();
            for parent in parents {
                store.sync_dir(parent)?;
            }
        }
        store.sweep_staging()?;
        Ok(store)
    }
}

/// A crash-safe, streaming, integrity-checked object store rooted at a directory.
///
/// Keys are strings; `P` maps them to files under `<root>/objects`. Every object file
/// carries its key and a BLAKE3 hash of its bytes (see `FORMAT.md`); reads verify the hash
/// as they stream. Writes stage into `<root>/tmp` and rename into place, so readers and
/// crashes only ever see whole objects.
///
/// `Store` is `Send + Sync`: share one through an `Arc` across threads.
///
/// ```
/// use std::io::Read;
/// use dfs_store::Store;
///
/// let dir = tempfile::tempdir()?;
/// let store = Store::open(dir.path())?;
/// assert_eq!(store.write("greeting", &b"hello"[..])?, 5);
/// let mut reader = store.read("greeting")?;
/// assert_eq!(reader.size(), 5);
/// let mut text = String::new();
/// reader.read_to_string(&mut text)?;
/// assert_eq!(text, "hello");
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub struct Store<P: PathTransform = HashPath> {
    root: PathBuf,
    objects: PathBuf,
    tmp: PathBuf,
    transform: P,
    durability: Durability,
    unsynced_dirs: UnsyncedDirs,
    /// Held shared by a commit from creating its directories to its rename, exclusively
    /// while a delete prunes directories or a clear swaps `objects/`: so within a store a
    /// commit never finds its directories removed under it (the retries are left for
    /// other processes), however busy the deletes.
    dirs: RwLock<()>,
    pack: Option<Packed>,
    /// `<root>/lock`, held for the store's life: shared, or exclusive with a pack.
    _lock: File,
    #[cfg(test)]
    pub(crate) fail_writes_after: Option<u64>,
    #[cfg(test)]
    pub(crate) dir_syncs: Mutex<DirSyncs>,
}

/// The pack of a store, with the locks that order a key's moves between the pack and its
/// object file.
///
/// The pack takes precedence: a key with a live pack record is that record, whatever file
/// may sit at its path. So a packed write is durable in the pack *before* the key's file
/// is removed, a file write is committed *before* the key's pack record is deleted, and a
/// delete removes the file *before* the pack record: a crash between two steps leaves the
/// previous version or the new one, never neither, never an older one. Each key's steps
/// (and the lookups of readers) run under one of `stripes`, picked by the key's hash, so
/// concurrent writers of one key cannot interleave them.
#[derive(Debug)]
struct Packed {
    pack: Arc<Pack>,
    stripes: [Mutex<()>; 64],
}

impl Packed {
    /// Every stripe, in order (nothing else takes more than one).
    fn lock_all(&self) -> Vec<MutexGuard<'_, ()>> {
        self.stripes
            .iter()
            .map(|s| s.lock().unwrap_or_else(PoisonError::into_inner))
            .collect()
    }

    fn lock(&self, key: &str) -> MutexGuard<'_, ()> {
        let h = blake3::hash(key.as_bytes());
        let stripe = usize::from(h.as_bytes()[0]) % self.stripes.len();
        self.stripes[stripe]
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }
}

/// Directories this store created (with [`Durability::Fsync`]) whose parent has not been
/// fsynced successfully since: until it is, the directory itself (and every object under
/// it) could vanish in a crash on a file system without a journal. A commit whose path
/// goes through such a directory fsyncs its parent itself before reporting success (see
/// [`Store::commit`]). A directory is recorded, under the lock, *before* it is created, so
/// no other writer can see it on disk without also finding the record.
#[derive(Debug, Default)]
struct UnsyncedDirs {
    set: Mutex<HashSet<PathBuf>>,
    /// Whether `set` may be non-empty (written under the lock): all the commit hot path reads.
    any: AtomicBool,
}

impl UnsyncedDirs {
    fn lock(&self) -> MutexGuard<'_, HashSet<PathBuf>> {
        self.set.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Whether any directory may be waiting for its parent's fsync.
    fn any(&self) -> bool {
        self.any.load(Ordering::SeqCst)
    }

    /// Records `dir`, then creates it (both under the lock). A record that turns out to be
    /// needless (`dir` existed and nobody had recorded it, or creating it failed) is
    /// dropped again.
    fn create(&self, dir: &Path) -> io::Result<()> {
        let mut set = self.lock();
        let fresh = set.insert(dir.to_path_buf());
        self.any.store(true, Ordering::SeqCst);
        let result = fs::create_dir(dir);
        if result.is_err() && fresh {
            set.remove(dir);
            self.any.store(!set.is_empty(), Ordering::SeqCst);
        }
        result
    }

    /// The recorded directories among `leaf` and its ancestors inside `objects`.
    fn on_path(&self, leaf: &Path, objects: &Path) -> Vec<PathBuf> {
        let set = self.lock();
        leaf.ancestors()
            .take_while(|d| d.starts_with(objects))
            .filter(|d| set.contains(*d))
            .map(Path::to_path_buf)
            .collect()
    }

    /// Drops `dir`'s record: its parent was fsynced after it was created.
    fn synced(&self, dir: &Path) {
        let mut set = self.lock();
        set.remove(dir);
        self.any.store(!set.is_empty(), Ordering::SeqCst);
    }
}

/// Test-only record of the directory fsyncs a store's commits did, with one injectable
/// failure.
#[cfg(test)]
#[derive(Debug, Default)]
pub(crate) struct DirSyncs {
    /// Directories fsynced successfully, in order.
    pub(crate) done: Vec<PathBuf>,
    /// The next fsync of this directory fails (once).
    pub(crate) fail: Option<PathBuf>,
    /// Right before the next fsync of this directory, it and its contents are removed
    /// (once): another thread's delete that emptied and pruned it meanwhile.
    pub(crate) pruned_first: Option<PathBuf>,
}

impl<P: PathTransform + fmt::Debug> fmt::Debug for Store<P> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Store")
            .field("root", &self.root)
            .field("transform", &self.transform)
            .field("durability", &self.durability)
            .finish()
    }
}

impl Store<HashPath> {
    /// Opens (creating if needed) a store at `root` with the default [`HashPath`] layout
    /// and [`Durability::Fsync`].
    ///
    /// ```
    /// # let dir = tempfile::tempdir()?;
    /// let store = dfs_store::Store::open(dir.path().join("my-store"))?;
    /// assert!(dir.path().join("my-store/objects").is_dir());
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn open(root: impl AsRef<Path>) -> Result<Store<HashPath>> {
        Store::builder(root).open()
    }

    /// Opens a store at [`DEFAULT_ROOT`] in the current directory.
    ///
    /// ```no_run
    /// let store = dfs_store::Store::open_default()?;
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn open_default() -> Result<Store<HashPath>> {
        Store::open(DEFAULT_ROOT)
    }

    /// A builder to choose the transform and durability.
    ///
    /// ```
    /// # let dir = tempfile::tempdir()?;
    /// let store = dfs_store::Store::builder(dir.path()).open()?;
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn builder(root: impl AsRef<Path>) -> StoreBuilder<HashPath> {
        StoreBuilder {
            root: root.as_ref().to_owned(),
            transform: HashPath::default(),
            durability: Durability::default(),
            pack: 0,
        }
    }
}

impl<P: PathTransform> Store<P> {
    /// Opens (creating if needed) a store at `root` with the given transform.
    ///
    /// ```
    /// use dfs_store::{PlainPath, Store};
    /// # let dir = tempfile::tempdir()?;
    /// let store = Store::open_with(dir.path(), PlainPath)?;
    /// store.write("a/b.txt", &b"x"[..])?;
    /// assert!(dir.path().join("objects/a/b.txt").is_file());
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn open_with(root: impl AsRef<Path>, transform: P) -> Result<Store<P>> {
        Store::builder(root).transform(transform).open()
    }

    /// The root directory.
    ///
    /// ```
    /// # let dir = tempfile::tempdir()?;
    /// let store = dfs_store::Store::open(dir.path())?;
    /// assert_eq!(store.root(), dir.path());
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The path transform.
    ///
    /// ```
    /// # let dir = tempfile::tempdir()?;
    /// let store = dfs_store::Store::open(dir.path())?;
    /// assert_eq!(store.transform().width(), 2);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn transform(&self) -> &P {
        &self.transform
    }

    /// The configured durability.
    ///
    /// ```
    /// # let dir = tempfile::tempdir()?;
    /// let store = dfs_store::Store::open(dir.path())?;
    /// assert_eq!(store.durability(), dfs_store::Durability::Fsync);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn durability(&self) -> Durability {
        self.durability
    }

    /// The file that holds (or would hold) `key` as its own file, after validating the key
    /// and the transform's output. A packed object lives in a pack segment instead:
    /// [`ObjectMeta::path`] (from [`Store::stat`]) names the file that holds it.
    ///
    /// ```
    /// # let dir = tempfile::tempdir()?;
    /// let store = dfs_store::Store::open_with(dir.path(), dfs_store::PlainPath)?;
    /// assert_eq!(store.path_of("a/b")?, dir.path().join("objects/a/b"));
    /// assert!(store.path_of("../escape").is_err());
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn path_of(&self, key: &str) -> Result<PathBuf> {
        Ok(self.locate(key)?.1)
    }

    /// `key`'s location, refused when its file would be too long a path (see
    /// [`Store::check_path_len`]).
    fn locate(&self, key: &str) -> Result<(PathKey, PathBuf)> {
        let (loc, path) = self.locate_any(key)?;
        Self::check_path_len(key, &path)?;
        Ok((loc, path))
    }

    /// `key`'s location, whatever its length: with a pack, a small object of a key whose
    /// file would be too long a path lives in the pack all the same.
    fn locate_any(&self, key: &str) -> Result<(PathKey, PathBuf)> {
        check_key(key)?;
        let loc = self.transform.transform(key)?;
        loc.validate().map_err(|e| StoreError::InvalidLocation {
            key: key.to_owned(),
            reason: e.to_string(),
        })?;
        let path = self.objects.join(loc.to_path_buf());
        Ok((loc, path))
    }

    /// Longer paths fail every system call (ENAMETOOLONG): a key whose file would be one
    /// is refused up front, instead of failing late, after the source was staged and
    /// directories created.
    fn check_path_len(key: &str, path: &Path) -> Result<()> {
        if path.as_os_str().len() >= MAX_PATH_LEN {
            return Err(StoreError::InvalidKey {
                key: key.to_owned(),
                reason: format!(
                    "its file would be {} bytes long, the longest path is {} bytes",
                    path.as_os_str().len(),
                    MAX_PATH_LEN - 1
                ),
            });
        }
        Ok(())
    }

    /// Whether `path` (a location found by [`Store::locate_any`]) can hold a file.
    fn can_be_a_file(path: &Path) -> bool {
        path.as_os_str().len() < MAX_PATH_LEN
    }

    /// Refuses to write `key` where another key's object lives: a transform that maps two
    /// keys to one location (or `PlainPath` on a case- or normalization-insensitive file
    /// system, where `a` and `A` are one file) must not let a write of one replace the
    /// other. A file at `path` that holds another key whose own location is elsewhere is
    /// a misplaced copy, not that key's object, and may be replaced.
    fn check_not_taken(&self, key: &str, path: &Path) -> Result<()> {
        match self.owner_elsewhere(key, path) {
            Some(other) => Err(StoreError::InvalidKey {
                key: key.to_owned(),
                reason: format!(
                    "its location {} holds the object of key {other:?} (the two keys map to one file)",
                    path.display()
                ),
            }),
            None => Ok(()),
        }
    }

    /// The other key whose object `path` (a location of `key`) holds, if the file there is
    /// an object of another key that maps to this very location.
    fn owner_elsewhere(&self, key: &str, path: &Path) -> Option<String> {
        let other = header_key(path)?;
        if other == key {
            return None;
        }
        match self.locate(&other) {
            Ok((_, its)) if its == path => Some(other),
            _ => None,
        }
    }

    /// Stores everything `src` yields under `key`, replacing any previous object, and
    /// returns the number of bytes stored.
    ///
    /// The bytes stream through a 64 KiB buffer into a staging file under `<root>/tmp`,
    /// which is fsynced (per [`Durability`]) and renamed into place; the directory is
    /// then fsynced. On an error before the rename the staging file is removed and the
    /// previous version, if any, is untouched; if only the final directory fsync fails,
    /// the new version is in place but may not survive a crash. Concurrent writers of one
    /// key: one whole version wins. (With [`StoreBuilder::pack_small_objects`], an object
    /// that small is appended to the pack instead, as durably and with the same
    /// guarantees: a failed append leaves the previous version, a failed flush may leave
    /// the new one readable until the store is opened again, and no further write is
    /// acknowledged.)
    ///
    /// ```
    /// # let dir = tempfile::tempdir()?;
    /// let store = dfs_store::Store::open(dir.path())?;
    /// let file = std::io::repeat(7).take(1 << 20);
    /// # use std::io::Read;
    /// assert_eq!(store.write("big", file)?, 1 << 20);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn write(&self, key: &str, src: impl Read) -> Result<u64> {
        self.write_inner(key, src, None, None, None).map(|(n, _)| n)
    }

    /// Stores everything `src` yields under `key`, like [`Store::write`], but only if it
    /// is exactly `expected.size` bytes whose BLAKE3 hash is `expected.hash`; returns the
    /// size.
    ///
    /// The check rides on the hashing the store does anyway (no second pass over the
    /// bytes). A source that yields more than `expected.size` bytes is refused as soon as
    /// the extra byte arrives (at most one byte past the size is consumed); a short source
    /// or a different hash is refused at the end. On any mismatch the error is
    /// [`StoreError::Mismatch`], the staging file is removed and nothing is committed: a
    /// previous version of `key`, if any, is untouched. `expected.hash` is the hash the
    /// store records for the object ([`ObjectMeta::hash`], [`ObjectReader::hash`]), so a
    /// replica can be checked against the hash its origin store reported.
    ///
    /// ```
    /// use dfs_store::{Expected, Mismatch, Store, StoreError};
    /// # let dir = tempfile::tempdir()?;
    /// let store = Store::open(dir.path())?;
    /// let body = b"replica bytes";
    /// let expected = Expected::new(body.len() as u64, *blake3::hash(body).as_bytes());
    /// assert_eq!(store.write_expecting("k", &body[..], expected)?, 13);
    ///
    /// // Damaged in transit: refused, and the stored version stays as it was.
    /// let err = store.write_expecting("k", &b"replica bytez"[..], expected).unwrap_err();
    /// assert!(matches!(err, StoreError::Mismatch { mismatch: Mismatch::Hash { .. }, .. }));
    /// assert_eq!(store.stat("k")?.hash(), &expected.hash);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn write_expecting(&self, key: &str, src: impl Read, expected: Expected) -> Result<u64> {
        self.write_inner(key, src, Some(expected), None, None)
            .map(|(n, _)| n)
    }

    /// Stores everything `src` yields under `key`, like [`Store::write_expecting`], but
    /// learns the expected size and hash only once `src` has ended: `expected` is called
    /// then, before anything is committed (for a source whose trailer carries them, such
    /// as a replica streamed while its origin was still writing it). An error from
    /// `expected` fails the write as [`StoreError::Source`]; a mismatch as
    /// [`StoreError::Mismatch`]. Either way nothing is committed.
    ///
    /// ```
    /// use dfs_store::{Expected, Store};
    /// # let dir = tempfile::tempdir()?;
    /// let store = Store::open(dir.path())?;
    /// let body = b"streamed bytes";
    /// let trailer = Expected::new(14, *blake3::hash(body).as_bytes());
    /// assert_eq!(store.write_expecting_later("k", &body[..], || Ok(trailer))?, 14);
    ///
    /// let gone = || Err(std::io::Error::other("sender vanished before its trailer"));
    /// assert!(store.write_expecting_later("k2", &body[..], gone).is_err());
    /// assert!(!store.has("k2")?);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn write_expecting_later(
        &self,
        key: &str,
        src: impl Read,
        expected: impl FnOnce() -> io::Result<Expected>,
    ) -> Result<u64> {
        self.write_inner(key, src, None, Some(Box::new(expected)), None)
            .map(|(n, _)| n)
    }

    /// Stores everything `src` yields under `key`, like [`Store::write`], publishing its
    /// progress to `tail`: [`Follower`](crate::Follower)s read the payload back from the
    /// staging file while it is written, and get the final size and hash once the object
    /// is committed (or [`StoreError::Abandoned`] if the write fails). See [`Tail`].
    pub fn write_tailed(&self, key: &str, src: impl Read, tail: &Tail) -> Result<u64> {
        /// Fails the followers if the write stops without reporting (a panic).
        struct EndOnDrop<'a>(&'a Tail);
        impl Drop for EndOnDrop<'_> {
            fn drop(&mut self) {
                self.0.end(Err("the write stopped".to_owned()));
            }
        }
        if !tail.claim() {
            return Err(StoreError::TailReused {
                key: key.to_owned(),
            });
        }
        let _guard = EndOnDrop(tail);
        let result = self.write_inner(key, src, None, None, Some(tail));
        tail.end(match &result {
            Ok((n, hash)) => Ok((*n, *hash.as_bytes())),
            Err(e) => Err(e.to_string()),
        });
        result.map(|(n, _)| n)
    }

    fn write_inner<'a>(
        &self,
        key: &str,
        mut src: impl Read,
        expected: Option<Expected>,
        later: Option<LateExpectation<'a>>,
        tail: Option<&'a Tail>,
    ) -> Result<(u64, blake3::Hash)> {
        let (loc, final_path) = self.locate_any(key)?;
        let Some(packed) = &self.pack else {
            return self.write_file(key, (loc, final_path), src, expected, later, tail);
        };
        let limit = u64::from(packed.pack.max_object());
        let fits = |size: u64| size <= limit && limit > 0;
        if tail.is_some() || !expected.is_none_or(|e| fits(e.size)) {
            return self.write_file(key, (loc, final_path), src, expected, later, tail);
        }
        // Take up to one byte past what the pack holds (or past the expected size).
        let take = expected.map_or(limit, |e| e.size).saturating_add(1);
        let mut head = Vec::new();
        if let Err(source) = (&mut src).take(take).read_to_end(&mut head) {
            return Err(StoreError::Source {
                key: key.to_owned(),
                source,
            });
        }
        let size = head.len() as u64;
        if !fits(size) {
            let src = io::Cursor::new(head).chain(src);
            return self.write_file(key, (loc, final_path), src, expected, later, tail);
        }
        let hash = blake3::hash(&head);
        let opts = WriteOpts {
            key,
            path: &final_path,
            expected,
            later: std::cell::Cell::new(later),
            tail: None,
            early_sync: false,
        };
        opts.check(size, &hash)?;
        let order = packed.lock(key);
        // The pack record shadows the key's file from now on, which is then removed (one
        // left behind, say by a crash right here, is never read). Even without fsync, the
        // record is flushed first (else a crash could keep the removal and lose the
        // record, and with it both versions) and the removal after it (else a crash after
        // a later delete of the key, once durable, could bring the file back). If the
        // removal fails, whether it is durable is unknown: the write fails and the pack
        // takes no further append (no delete can then become durable ahead of it) until
        // the store is opened again, when the pack record shadows the file anyway.
        let shadows = fs::symlink_metadata(&final_path).is_ok_and(|m| m.is_file());
        if shadows {
            self.check_not_taken(key, &final_path)?;
        }
        packed.pack.put(key, &head, hash.as_bytes(), shadows)?;
        if shadows && let Err(e) = self.remove_file_object(key, &final_path, true) {
            packed.pack.stop_appends();
            return Err(e);
        }
        drop(order);
        // With the key's lock let go: a compaction takes a while.
        packed.pack.compact_if_worthwhile();
        Ok((size, hash))
    }

    /// Writes `src` as `key`'s own object file (staged, fsynced, renamed into place).
    fn write_file<'a>(
        &self,
        key: &str,
        (loc, final_path): (PathKey, PathBuf),
        mut src: impl Read,
        expected: Option<Expected>,
        later: Option<LateExpectation<'a>>,
        tail: Option<&'a Tail>,
    ) -> Result<(u64, blake3::Hash)> {
        Self::check_path_len(key, &final_path)?;
        self.check_not_taken(key, &final_path)?;
        let mut staging = Staging::create(&self.tmp)?;
        if let Some(tail) = tail {
            let reader = File::open(&staging.path)
                .map_err(|e| StoreError::io("open for followers", &staging.path, e))?;
            tail.start(key, reader, (FIXED_LEN + key.len()) as u64);
        }
        let opts = WriteOpts {
            key,
            path: &staging.path,
            expected,
            later: std::cell::Cell::new(later),
            tail,
            early_sync: self.durability == Durability::Fsync,
        };
        let written = {
            #[cfg(test)]
            let result = match self.fail_writes_after {
                Some(limit) => write_object(
                    &mut FailAfter {
                        inner: &mut staging.file,
                        left: limit,
                    },
                    &mut src,
                    &opts,
                ),
                None => write_object(&mut staging.file, &mut src, &opts),
            };
            #[cfg(not(test))]
            let result = write_object(&mut staging.file, &mut src, &opts);
            result?
        };
        drop(opts); // it borrows the staging path
        if self.durability == Durability::Fsync {
            staging
                .file
                .sync_all()
                .map_err(|e| StoreError::io("fsync", &staging.path, e))?;
        }
        let _order = self.pack.as_ref().map(|packed| packed.lock(key));
        // A key moving out of the pack: its record goes once the file is durable, even
        // without fsync (else a crash could keep the deletion and lose the file).
        let moving = self
            .pack
            .as_ref()
            .is_some_and(|packed| packed.pack.get(key).is_some());
        let sync = self.durability == Durability::Fsync || moving;
        if moving && self.durability != Durability::Fsync {
            staging
                .file
                .sync_all()
                .map_err(|e| StoreError::io("fsync", &staging.path, e))?;
        }
        self.commit(&mut staging, &loc, &final_path, sync)?;
        if let Some(packed) = &self.pack {
            // The file is durable: now the older pack record may go.
            packed.pack.delete(key)?;
        }
        Ok(written)
    }

    /// Renames the staged file into place, creating directories as needed, and with
    /// `sync` fsyncs the directory (and any on the path not yet known to be durable).
    fn commit(
        &self,
        staging: &mut Staging,
        loc: &PathKey,
        final_path: &Path,
        sync: bool,
    ) -> Result<()> {
        let parent = final_path.parent().unwrap_or(&self.objects);
        let dirs = self.dirs.read().unwrap_or_else(PoisonError::into_inner);
        let mut attempt = 0;
        loop {
            attempt += 1;
            // A concurrent delete (pruning) or clear can remove directories between their
            // creation and the rename: on NotFound, create them again and retry.
            let retry = attempt < COMMIT_ATTEMPTS;
            if !parent.is_dir() {
                match self.create_dirs(loc, sync) {
                    Ok(()) => {}
                    Err((_, e)) if retry && e.kind() == ErrorKind::NotFound => continue,
                    Err((dir, e)) => return Err(StoreError::io("create directory", dir, e)),
                }
            }
            match fs::rename(&staging.path, final_path) {
                Ok(()) => {
                    staging.committed = true;
                    break;
                }
                Err(e) if retry && e.kind() == ErrorKind::NotFound => {}
                Err(e) => return Err(StoreError::io("rename into", final_path, e)),
            }
        }
        drop(dirs);
        if sync && self.durability != Durability::Fsync {
            // Without fsync no directory on the path is known to be durable (none was
            // recorded in `unsynced_dirs`): each one, up to the root.
            let mut dir = Some(parent);
            while let Some(d) = dir {
                self.sync_dir_unless_gone(d)?;
                if d == self.root {
                    break;
                }
                dir = d.parent();
            }
        } else if sync {
            // A directory gone by now was pruned by a delete of this object, or renamed
            // away by a clear, both ordered after this write (and fsyncing their change).
            self.sync_dir_unless_gone(parent)?;
            // A directory on the path may have been created by another writer that has not
            // fsynced its parent yet (or failed to): the object is durable only once it is.
            if self.unsynced_dirs.any() {
                for dir in self.unsynced_dirs.on_path(parent, &self.objects) {
                    let up = dir.parent().unwrap_or(&self.root);
                    self.sync_dir_unless_gone(up)?;
                    self.unsynced_dirs.synced(&dir);
                }
            }
        }
        Ok(())
    }

    /// Creates the objects directory and the directories of `loc`, with `fsync` fsyncing
    /// the parent of each one created (each new directory stays recorded in
    /// `unsynced_dirs` until that fsync succeeds). Errors carry the directory concerned.
    fn create_dirs(&self, loc: &PathKey, fsync: bool) -> Result<(), (PathBuf, io::Error)> {
        let mut dir = self.objects.clone();
        let mut parent = self.root.clone();
        for segment in std::iter::once(None).chain(loc.dirs().iter().map(Some)) {
            if let Some(segment) = segment {
                parent.clone_from(&dir);
                dir.push(segment);
            }
            let created = if fsync {
                self.unsynced_dirs.create(&dir)
            } else {
                fs::create_dir(&dir)
            };
            match created {
                Ok(()) => {
                    if fsync {
                        self.sync_dir_io(&parent).map_err(|e| (parent.clone(), e))?;
                        self.unsynced_dirs.synced(&dir);
                    }
                }
                Err(e) if e.kind() == ErrorKind::AlreadyExists => {}
                Err(e) => return Err((dir, e)),
            }
        }
        Ok(())
    }

    /// [`Store::sync_dir`], where a directory that no longer exists was pruned (or renamed
    /// away by a clear) meanwhile: its nearest existing ancestor is fsynced instead, which
    /// makes that removal, and so the change made in the directory, durable (the pruning
    /// delete fsyncs nothing without [`Durability::Fsync`]).
    fn sync_dir_unless_gone(&self, dir: &Path) -> Result<()> {
        let mut dir = dir;
        loop {
            match self.sync_dir_io(dir) {
                Err(e) if e.kind() == ErrorKind::NotFound && dir != self.root => {
                    match dir.parent() {
                        Some(up) => dir = up,
                        None => return Ok(()),
                    }
                }
                Err(e) => return Err(StoreError::io("fsync directory", dir, e)),
                Ok(()) => return Ok(()),
            }
        }
    }

    /// fsyncs a directory for a commit (through the test hook in tests).
    fn sync_dir(&self, dir: &Path) -> Result<()> {
        self.sync_dir_io(dir)
            .map_err(|e| StoreError::io("fsync directory", dir, e))
    }

    fn sync_dir_io(&self, dir: &Path) -> io::Result<()> {
        #[cfg(test)]
        {
            let mut hook = self
                .dir_syncs
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            if hook.fail.as_deref() == Some(dir) {
                hook.fail = None;
                return Err(io::Error::other("injected: directory fsync failed"));
            }
            if hook.pruned_first.as_deref() == Some(dir) {
                hook.pruned_first = None;
                fs::remove_dir_all(dir)?;
            }
            sync_dir_io(dir)?;
            hook.done.push(dir.to_path_buf());
            Ok(())
        }
        #[cfg(not(test))]
        sync_dir_io(dir)
    }

    /// Opens `key` for a streaming, verified read.
    ///
    /// The header is checked now (magic, version, header hash, stored key, file length);
    /// the payload's BLAKE3 hash is checked as the bytes stream, and a mismatch is an
    /// error from the `read` call that would deliver the last bytes, so no caller ever
    /// sees a complete but wrong object. The reader owns its file (`Send + 'static`).
    ///
    /// ```
    /// use std::io::Read;
    /// # let dir = tempfile::tempdir()?;
    /// let store = dfs_store::Store::open(dir.path())?;
    /// store.write("k", &b"value"[..])?;
    /// let mut reader = store.read("k")?;
    /// assert_eq!(reader.size(), 5);
    /// let mut out = Vec::new();
    /// reader.read_to_end(&mut out)?;
    /// assert_eq!(out, b"value");
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn read(&self, key: &str) -> Result<ObjectReader> {
        if let Some(packed) = &self.pack {
            let (_, path) = self.locate_any(key)?;
            let order = packed.lock(key);
            if let Some(found) = packed.pack.get(key) {
                drop(order);
                return ObjectReader::packed(key, found);
            }
            if !Self::can_be_a_file(&path) {
                return Err(StoreError::NotFound {
                    key: key.to_owned(),
                });
            }
            let (file, header) = open_object(&path, Some(key))?;
            drop(order);
            return Ok(ObjectReader::new(Body::File(file), header, path));
        }
        let (_, path) = self.locate(key)?;
        let (file, header) = open_object(&path, Some(key))?;
        Ok(ObjectReader::new(Body::File(file), header, path))
    }

    /// Whether `key` has an object, packed or in its own file (it is not read or verified).
    ///
    /// ```
    /// # let dir = tempfile::tempdir()?;
    /// let store = dfs_store::Store::open(dir.path())?;
    /// assert!(!store.has("k")?);
    /// store.write("k", &b""[..])?;
    /// assert!(store.has("k")?);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn has(&self, key: &str) -> Result<bool> {
        let (_, path) = match &self.pack {
            Some(_) => self.locate_any(key)?,
            None => self.locate(key)?,
        };
        let _order = self.pack.as_ref().map(|packed| packed.lock(key));
        if self.pack.as_ref().is_some_and(|p| p.pack.contains(key)) {
            return Ok(true);
        }
        if !Self::can_be_a_file(&path) {
            return Ok(false);
        }
        match fs::metadata(&path) {
            Ok(meta) => Ok(meta.is_file()),
            Err(e) if is_absent(&e) => Ok(false),
            Err(e) => Err(StoreError::io("stat", path, e)),
        }
    }

    /// Size and hash of `key`'s object, from its (checked) header.
    ///
    /// ```
    /// # let dir = tempfile::tempdir()?;
    /// let store = dfs_store::Store::open(dir.path())?;
    /// store.write("k", &b"value"[..])?;
    /// let meta = store.stat("k")?;
    /// assert_eq!((meta.key(), meta.size()), ("k", 5));
    /// assert_eq!(meta.hash(), blake3::hash(b"value").as_bytes());
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn stat(&self, key: &str) -> Result<ObjectMeta> {
        let (_, path) = match &self.pack {
            Some(_) => self.locate_any(key)?,
            None => self.locate(key)?,
        };
        let _order = self.pack.as_ref().map(|packed| packed.lock(key));
        if let Some(found) = self.pack.as_ref().and_then(|p| p.pack.get(key)) {
            return ObjectMeta::packed(key, &found);
        }
        if !Self::can_be_a_file(&path) {
            return Err(StoreError::NotFound {
                key: key.to_owned(),
            });
        }
        let (_, header) = open_object(&path, Some(key))?;
        Ok(ObjectMeta::from_header(header, path))
    }

    /// Removes `key`'s object and prunes the directories this leaves empty (never
    /// anything else). Returns `false` if there was nothing to remove.
    ///
    /// ```
    /// # let dir = tempfile::tempdir()?;
    /// let store = dfs_store::Store::open(dir.path())?;
    /// store.write("k", &b"v"[..])?;
    /// assert!(store.delete("k")?);
    /// assert!(!store.delete("k")?);
    /// assert!(!store.has("k")?);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn delete(&self, key: &str) -> Result<bool> {
        let Some(packed) = &self.pack else {
            let (_, path) = self.locate(key)?;
            return self.remove_file_object(key, &path, false);
        };
        let (_, path) = self.locate_any(key)?;
        let _order = packed.lock(key);
        // The file first: were the pack record deleted first, a crash in between would
        // bring back the older version the file may hold.
        let file = Self::can_be_a_file(&path) && self.remove_file_object(key, &path, false)?;
        let record = packed.pack.delete(key)?;
        Ok(file || record)
    }

    /// Removes `key`'s object file at `path` and prunes the directories this leaves empty;
    /// the last directory changed is fsynced with [`Durability::Fsync`] or `sync`. The
    /// object of another key that maps to the same file is left alone (`false`).
    fn remove_file_object(&self, key: &str, path: &Path, sync: bool) -> Result<bool> {
        match fs::metadata(path) {
            Ok(meta) if meta.is_file() => {}
            Ok(_) => return Ok(false),
            Err(e) if is_absent(&e) => return Ok(false),
            Err(e) => return Err(StoreError::io("stat", path, e)),
        }
        if self.owner_elsewhere(key, path).is_some() {
            return Ok(false);
        }
        match fs::remove_file(path) {
            Ok(()) => {}
            Err(e) if is_absent(&e) => return Ok(false),
            Err(e) => return Err(StoreError::io("remove", path, e)),
        }
        // Prune now-empty directories up to (not including) the objects directory.
        let dirs = self.dirs.write().unwrap_or_else(PoisonError::into_inner);
        let mut dir = path.parent();
        let mut last_changed = dir.map(Path::to_path_buf);
        while let Some(d) = dir {
            if d == self.objects || !d.starts_with(&self.objects) {
                break;
            }
            if fs::remove_dir(d).is_err() {
                break; // not empty (or already gone): stop pruning
            }
            dir = d.parent();
            last_changed = dir.map(Path::to_path_buf);
        }
        drop(dirs);
        if (sync || self.durability == Durability::Fsync)
            && let Some(d) = last_changed
        {
            // Gone: a concurrent delete pruned it, or a clear renamed `objects/` away,
            // after this removal (without fsync, that delete synced nothing): its nearest
            // existing ancestor is fsynced instead.
            self.sync_dir_unless_gone(&d)?;
        }
        Ok(true)
    }

    /// Removes every object (staging files of in-flight writes are left alone).
    ///
    /// The objects directory is renamed away in one step, so readers see either the old
    /// store or an empty one, then removed.
    ///
    /// ```
    /// # let dir = tempfile::tempdir()?;
    /// let store = dfs_store::Store::open(dir.path())?;
    /// store.write("a", &b"1"[..])?;
    /// store.write("b", &b"2"[..])?;
    /// store.clear()?;
    /// assert_eq!(store.keys().count(), 0);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn clear(&self) -> Result<()> {
        // With a pack, every key's lock: readers see the old store or an empty one.
        let all = self.pack.as_ref().map(Packed::lock_all);
        if let Some(packed) = &self.pack {
            // A pack that takes no append could not be cleared: touch nothing.
            packed.pack.check_usable()?;
        }
        let graveyard = self.tmp.join(staging_name("clear"));
        let dirs = self.dirs.write().unwrap_or_else(PoisonError::into_inner);
        match fs::rename(&self.objects, &graveyard) {
            Ok(()) => {}
            Err(e) if e.kind() == ErrorKind::NotFound => {}
            Err(e) => return Err(StoreError::io("rename away", &self.objects, e)),
        }
        let fsync = self.durability == Durability::Fsync;
        // Recorded like any directory a write creates: a write landing in the new
        // `objects/` before the root's fsync below succeeds fsyncs the root itself.
        let created = if fsync {
            self.unsynced_dirs.create(&self.objects)
        } else {
            fs::create_dir(&self.objects)
        };
        match created {
            Ok(()) => {}
            Err(e) if e.kind() == ErrorKind::AlreadyExists => {}
            Err(e) => return Err(StoreError::io("create directory", &self.objects, e)),
        }
        drop(dirs);
        if fsync {
            self.sync_dir(&self.root)?;
            self.unsynced_dirs.synced(&self.objects);
        }
        if let Some(packed) = &self.pack {
            packed.pack.clear()?;
        }
        drop(all);
        // A write committing at the very moment of the swap may still land in the old
        // directory (its path lookup passed `objects` before the rename): such a write is
        // ordered before the clear, and its file makes `remove_dir_all` race. Retry; if a
        // leftover remains, it sits in `tmp/` and a later `open` sweeps it.
        for attempt in 1..=COMMIT_ATTEMPTS {
            match fs::remove_dir_all(&graveyard) {
                Ok(()) => return Ok(()),
                Err(e) if e.kind() == ErrorKind::NotFound => return Ok(()),
                Err(e) if e.kind() == ErrorKind::DirectoryNotEmpty => {
                    if attempt == COMMIT_ATTEMPTS {
                        return Ok(());
                    }
                }
                Err(e) => return Err(StoreError::io("remove", graveyard, e)),
            }
        }
        Ok(())
    }

    /// Iterates over the stored keys (read back from the object headers), in no
    /// particular order. Damaged or foreign files yield an `Err` item and iteration
    /// goes on. Without a pack, memory stays bounded by the directory depth, not the
    /// object count; with one, a listing holds a copy of the pack's index and every key it
    /// has yielded (so that a key moving between the pack and a file is listed once).
    ///
    /// ```
    /// # let dir = tempfile::tempdir()?;
    /// let store = dfs_store::Store::open(dir.path())?;
    /// store.write("a", &b"1"[..])?;
    /// store.write("b", &b"2"[..])?;
    /// let mut keys = store.keys().collect::<Result<Vec<_>, _>>()?;
    /// keys.sort();
    /// assert_eq!(keys, ["a", "b"]);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn keys(&self) -> Keys {
        Keys {
            inner: self.objects(),
        }
    }

    /// Iterates over the stored objects' metadata (key, size, hash), like [`Store::keys`].
    ///
    /// ```
    /// # let dir = tempfile::tempdir()?;
    /// let store = dfs_store::Store::open(dir.path())?;
    /// store.write("a", &b"123"[..])?;
    /// let total: u64 = store.objects().map(|m| m.map(|m| m.size())).sum::<Result<u64, _>>()?;
    /// assert_eq!(total, 3);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn objects(&self) -> Objects {
        let (packed, pack) = match &self.pack {
            Some(p) => (p.pack.snapshot(), Some(Arc::clone(&p.pack))),
            None => (Vec::new(), None),
        };
        Objects {
            packed: packed.into_iter(),
            pack,
            seen: HashSet::new(),
            walker: Walker::new(&self.objects),
            late: None,
        }
    }

    /// Rewrites the pack's segments at once, reclaiming the space of overwritten and
    /// deleted packed objects (writes do this gradually on their own, once segments are
    /// sealed). Without a pack, does nothing.
    ///
    /// ```
    /// # let dir = tempfile::tempdir()?;
    /// let store = dfs_store::Store::builder(dir.path()).pack_small_objects(4096).open()?;
    /// store.write("k", &b"v1"[..])?;
    /// store.write("k", &b"v2"[..])?;
    /// store.compact()?;
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn compact(&self) -> Result<()> {
        match &self.pack {
            Some(packed) => packed.pack.compact(),
            None => Ok(()),
        }
    }

    /// The pack's size and how much of it is dead (overwritten or deleted objects, which
    /// compaction reclaims), without I/O; `None` without a pack.
    ///
    /// ```
    /// # let dir = tempfile::tempdir()?;
    /// let store = dfs_store::Store::builder(dir.path()).pack_small_objects(4096).open()?;
    /// store.write("k", &b"v1"[..])?;
    /// store.write("k", &b"v2"[..])?;
    /// let stats = store.pack_stats().expect("a pack");
    /// assert_eq!(stats.objects, 1);
    /// assert!(stats.live_bytes * 2 == stats.used_bytes);
    /// store.compact()?;
    /// let stats = store.pack_stats().expect("a pack");
    /// assert_eq!(stats.live_bytes, stats.used_bytes);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn pack_stats(&self) -> Option<PackStats> {
        self.pack.as_ref().map(|packed| packed.pack.stats())
    }

    /// Keys whose newest write this store lost, sorted, without I/O: a put to the pack
    /// that had not reached the disk whole was voided when the store was opened (a write a
    /// crash cut short, or damage while the store was closed), so the key reads as its
    /// previous version, or not at all. A key stays listed, and in every
    /// [`scrub`](Store::scrub) report, until it is written or deleted again; a caller with
    /// replicas elsewhere can fetch the newest copy. Always empty without a pack (writing
    /// a file is atomic).
    ///
    /// ```
    /// # let dir = tempfile::tempdir()?;
    /// let store = dfs_store::Store::builder(dir.path()).pack_small_objects(4096).open()?;
    /// store.write("k", &b"v"[..])?;
    /// assert!(store.lost_writes().is_empty());
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn lost_writes(&self) -> Vec<String> {
        self.pack
            .as_ref()
            .map_or_else(Vec::new, |packed| packed.pack.lost_writes())
    }

    /// Reads `key`'s whole object and checks its hash.
    ///
    /// ```
    /// # let dir = tempfile::tempdir()?;
    /// let store = dfs_store::Store::open(dir.path())?;
    /// store.write("k", &b"v"[..])?;
    /// store.verify("k")?;
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn verify(&self, key: &str) -> Result<()> {
        self.read(key)?.verify()
    }

    /// Verifies every object in the store and reports each bad one (damaged, truncated,
    /// foreign, or stored at the wrong location for its key). Never stops at the first.
    ///
    /// ```
    /// # let dir = tempfile::tempdir()?;
    /// let store = dfs_store::Store::open(dir.path())?;
    /// store.write("a", &b"1"[..])?;
    /// let report = store.scrub();
    /// assert_eq!(report.checked, 1);
    /// assert!(report.is_clean());
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn scrub(&self) -> ScrubReport {
        let mut report = ScrubReport::default();
        if let Some(packed) = &self.pack {
            for (path, key, reason) in packed.pack.damage() {
                report.checked += 1;
                let error = StoreError::corrupt(&path, key.as_deref(), reason);
                report.bad.push(BadObject { path, key, error });
            }
            for (key, found) in packed.pack.snapshot() {
                report.checked += 1;
                let path = found.path.clone();
                if let Err(error) = ObjectReader::packed(&key, found).and_then(|r| r.verify()) {
                    report.bad.push(BadObject {
                        path,
                        key: Some(key),
                        error,
                    });
                }
            }
        }
        for item in Walker::new(&self.objects) {
            report.checked += 1;
            let path = match item {
                Ok(path) => path,
                Err(error) => {
                    let path = match &error {
                        StoreError::Io { path, .. } | StoreError::Corrupt { path, .. } => {
                            path.clone()
                        }
                        _ => self.objects.clone(),
                    };
                    report.bad.push(BadObject {
                        path,
                        key: None,
                        error,
                    });
                    continue;
                }
            };
            if let Err((key, error)) = self.check_one(&path) {
                report.bad.push(BadObject { path, key, error });
            }
        }
        report
    }

    /// Scrubs one file: header, location, content hash.
    fn check_one(&self, path: &Path) -> Result<(), (Option<String>, StoreError)> {
        let (file, header) = open_object(path, None).map_err(|e| (None, e))?;
        let key = header.key.clone();
        if self.pack.as_ref().is_some_and(|p| p.pack.contains(&key)) {
            return Ok(()); // an older version the key's pack record shadows: never read
        }
        match self.locate(&key) {
            Ok((_, expected)) if expected == path => {}
            _ => {
                let error = StoreError::corrupt(
                    path,
                    Some(&key),
                    "object is not at the location its key maps to",
                );
                return Err((Some(key), error));
            }
        }
        ObjectReader::new(Body::File(file), header, path.to_owned())
            .verify()
            .map_err(|e| (Some(key), e))
    }

    /// Removes staging files and clear-graveyards left by processes that are gone.
    fn sweep_staging(&self) -> Result<()> {
        let entries = fs::read_dir(&self.tmp).map_err(|e| StoreError::io("list", &self.tmp, e))?;
        for entry in entries {
            let entry = entry.map_err(|e| StoreError::io("list", &self.tmp, e))?;
            let name = entry.file_name();
            let owner = name.to_str().and_then(|n| n.split('.').next());
            if owner.is_some_and(owner_is_live) {
                continue; // an in-flight write of a live process (maybe this one)
            }
            let path = entry.path();
            let is_dir = entry.file_type().is_ok_and(|t| t.is_dir());
            let result = if is_dir {
                fs::remove_dir_all(&path)
            } else {
                fs::remove_file(&path)
            };
            match result {
                Ok(()) => {}
                Err(e) if e.kind() == ErrorKind::NotFound => {}
                Err(e) => return Err(StoreError::io("remove stale staging file", path, e)),
            }
        }
        Ok(())
    }
}

/// "No such object": the file is missing, or a path component is a file (`PlainPath`
/// key `a/b` when `a` is an object).
fn is_absent(e: &io::Error) -> bool {
    matches!(e.kind(), ErrorKind::NotFound | ErrorKind::NotADirectory)
}

/// Creates (if needed) and locks `<root>/lock`: exclusively for a store with a pack (whose
/// index lives in this `Store`), shared otherwise, so a `Store` without a pack and one with
/// it never open one root at once.
fn lock_root(root: &Path, exclusive: bool) -> Result<File> {
    let path = root.join(LOCK_FILE);
    let lock = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|e| StoreError::io("open", &path, e))?;
    let locked = if exclusive {
        lock.try_lock()
    } else {
        lock.try_lock_shared()
    };
    match locked {
        Ok(()) => Ok(lock),
        Err(fs::TryLockError::WouldBlock) => Err(StoreError::Locked { path }),
        Err(fs::TryLockError::Error(e)) => Err(StoreError::io("lock", path, e)),
    }
}

/// This process's mark in staging names: its pid and a token drawn once per process, so
/// that a process with the pid of a crashed one (every run of a container is pid 1) sweeps
/// that run's files instead of keeping them as its own.
fn owner_mark() -> &'static str {
    static MARK: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    MARK.get_or_init(|| format!("{}-{:08x}", std::process::id(), random_u64() as u32))
}

/// Whether the writer a staging name's first field (`<pid>-<token>`, or `<pid>` from
/// earlier versions) names may still be running.
fn owner_is_live(owner: &str) -> bool {
    if owner == owner_mark() {
        return true;
    }
    match owner
        .split('-')
        .next()
        .and_then(|pid| pid.parse::<u32>().ok())
    {
        // Another process with this pid, now gone.
        Some(pid) if pid == std::process::id() => false,
        Some(pid) => process_alive(pid),
        None => false,
    }
}

/// Whether another process with this id is running.
fn process_alive(pid: u32) -> bool {
    if cfg!(target_os = "linux") {
        Path::new("/proc").join(pid.to_string()).exists()
    } else {
        // No portable liveness check in std: only this process's files are known live.
        false
    }
}

/// `<pid>-<token>.<random>.<suffix>`: unique, and tells the sweep whose file it is.
fn staging_name(suffix: &str) -> String {
    format!("{}.{:016x}.{suffix}", owner_mark(), random_u64())
}

fn random_u64() -> u64 {
    getrandom::u64().unwrap_or_else(|_| {
        // Fall back to the clock: uniqueness is still ensured by `create_new`.
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0)
    })
}

/// fsyncs a directory so renames and creations in it are durable.
pub(crate) fn sync_dir(dir: &Path) -> Result<()> {
    sync_dir_io(dir).map_err(|e| StoreError::io("fsync directory", dir, e))
}

fn sync_dir_io(dir: &Path) -> io::Result<()> {
    if cfg!(unix) {
        File::open(dir)?.sync_all()
    } else {
        // Directories cannot be opened (or fsynced) portably elsewhere.
        Ok(())
    }
}

/// A staging file, removed on drop unless committed.
struct Staging {
    path: PathBuf,
    file: File,
    committed: bool,
}

impl Staging {
    fn create(tmp: &Path) -> Result<Staging> {
        let mut attempt = 0;
        loop {
            let path = tmp.join(staging_name("tmp"));
            match OpenOptions::new()
                .read(true)
                .write(true)
                .create_new(true)
                .open(&path)
            {
                Ok(file) => {
                    return Ok(Staging {
                        path,
                        file,
                        committed: false,
                    });
                }
                Err(e) if e.kind() == ErrorKind::AlreadyExists && attempt < 4 => attempt += 1,
                Err(e) => return Err(StoreError::io("create staging file", path, e)),
            }
        }
    }
}

impl Drop for Staging {
    fn drop(&mut self) {
        if !self.committed {
            // Best effort: a leftover is swept by the next `open`.
            let _ = fs::remove_file(&self.path);
        }
    }
}

/// Test-only sink that fails with "no space left" after `left` bytes.
#[cfg(test)]
pub(crate) struct FailAfter<'a> {
    pub(crate) inner: &'a mut File,
    pub(crate) left: u64,
}

#[cfg(test)]
impl Write for FailAfter<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if self.left == 0 {
            return Err(io::Error::new(
                ErrorKind::StorageFull,
                "injected: disk full",
            ));
        }
        let n = buf.len().min(self.left as usize);
        let n = self.inner.write(&buf[..n])?;
        self.left -= n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

#[cfg(test)]
impl SyncHandle for FailAfter<'_> {
    fn sync_handle(&self) -> Option<File> {
        self.inner.sync_handle()
    }
}

#[cfg(test)]
impl Seek for FailAfter<'_> {
    fn seek(&mut self, pos: SeekFrom) -> io::Result<u64> {
        self.inner.seek(pos)
    }
}

/// Reads from `src` until `buf` is full or EOF; returns the bytes read.
fn fill(src: &mut impl Read, buf: &mut [u8], key: &str) -> Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match src.read(&mut buf[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(source) => {
                return Err(StoreError::Source {
                    key: key.to_owned(),
                    source,
                });
            }
        }
    }
    Ok(filled)
}

/// The expectation of [`Store::write_expecting_later`], asked for at the end.
type LateExpectation<'a> = Box<dyn FnOnce() -> io::Result<Expected> + 'a>;

/// What a write needs to know besides its sink and source.
struct WriteOpts<'a> {
    key: &'a str,
    /// The staging file (for error messages).
    path: &'a Path,
    /// Size and hash the caller expects ([`Store::write_expecting`]).
    expected: Option<Expected>,
    /// Size and hash the caller will tell at the end ([`Store::write_expecting_later`]).
    later: std::cell::Cell<Option<LateExpectation<'a>>>,
    /// Where to publish progress ([`Store::write_tailed`]).
    tail: Option<&'a Tail>,
    /// Push written bytes to disk on a helper thread while the write goes on (large
    /// objects, `Durability::Fsync`), so the final fsync has little left to do.
    early_sync: bool,
}

impl WriteOpts<'_> {
    fn io_err(&self, op: &'static str) -> impl Fn(io::Error) -> StoreError + '_ {
        move |e| StoreError::io(op, self.path, e)
    }

    fn mismatch(&self, mismatch: Mismatch) -> StoreError {
        StoreError::Mismatch {
            key: self.key.to_owned(),
            mismatch,
        }
    }

    /// Checks the final size and hash against the expectation, if any.
    fn check(&self, total: u64, hash: &blake3::Hash) -> Result<()> {
        let expected = match self.later.take() {
            Some(later) => Some(later().map_err(|source| StoreError::Source {
                key: self.key.to_owned(),
                source,
            })?),
            None => self.expected,
        };
        let Some(expected) = expected else {
            return Ok(());
        };
        if total < expected.size {
            return Err(self.mismatch(Mismatch::Short {
                expected: expected.size,
                got: total,
            }));
        }
        if total > expected.size {
            return Err(self.mismatch(Mismatch::Long {
                expected: expected.size,
            }));
        }
        // blake3::Hash compares in constant time.
        if *hash != blake3::Hash::from(expected.hash) {
            return Err(self.mismatch(Mismatch::Hash {
                expected: expected.hash,
                got: *hash.as_bytes(),
            }));
        }
        Ok(())
    }

    /// The most bytes to take from the source: one past the expected size, so that a
    /// longer source is noticed without draining it.
    fn limit(&self) -> u64 {
        self.expected.map_or(u64::MAX, |e| e.size.saturating_add(1))
    }

    /// `written` payload bytes are in the staging file.
    fn advance(&self, written: u64) {
        if let Some(tail) = self.tail {
            tail.advance(written);
        }
    }
}

/// A sink the store can hand a second handle of to a helper thread that fsyncs early.
trait SyncHandle {
    /// A handle to `fdatasync` from another thread, if the sink is a file.
    fn sync_handle(&self) -> Option<File>;
}

impl SyncHandle for File {
    fn sync_handle(&self) -> Option<File> {
        self.try_clone().ok()
    }
}

#[cfg(test)]
impl SyncHandle for io::Cursor<Vec<u8>> {
    fn sync_handle(&self) -> Option<File> {
        None
    }
}

/// Writes header + key + payload from `src` into `w`; returns the payload length and hash.
///
/// Small payloads (< one buffer) go out in a single write with the final header; larger
/// ones get a placeholder header that is patched once the hash is known (or, when the
/// caller gave the expected size and hash, the final header straight away: a mismatch is
/// never committed anyway).
fn write_object<W: Write + Seek + SyncHandle>(
    w: &mut W,
    src: &mut impl Read,
    opts: &WriteOpts<'_>,
) -> Result<(u64, blake3::Hash)> {
    let key = opts.key;
    let io_err = opts.io_err("write");
    let mut src = src.take(opts.limit());
    let mut first = vec![0u8; CHUNK];
    let n = fill(&mut src, &mut first, key)?;
    if n < CHUNK {
        let payload = &first[..n];
        let hash = blake3::hash(payload);
        opts.check(n as u64, &hash)?;
        let fixed = Header::encode_fixed(key, n as u64, hash.as_bytes());
        let mut out = Vec::with_capacity(FIXED_LEN + key.len() + n);
        out.extend_from_slice(&fixed);
        out.extend_from_slice(key.as_bytes());
        out.extend_from_slice(payload);
        w.write_all(&out).map_err(io_err)?;
        opts.advance(n as u64);
        return Ok((n as u64, hash));
    }
    let mut head = match opts.expected {
        Some(e) => Header::encode_fixed(key, e.size, &e.hash).to_vec(),
        None => vec![0u8; FIXED_LEN],
    };
    head.extend_from_slice(key.as_bytes());
    w.write_all(&head).map_err(&io_err)?;
    let (total, hash) = stream_hashed(w, &mut src, first, n, opts)?;
    opts.check(total, &hash)?;
    if opts.expected.is_none() {
        let fixed = Header::encode_fixed(key, total, hash.as_bytes());
        w.seek(SeekFrom::Start(0)).map_err(&io_err)?;
        w.write_all(&fixed).map_err(&io_err)?;
    }
    Ok((total, hash))
}

/// Buffers in flight between the writing thread and the hashing thread.
const PIPELINE_BUFFERS: usize = 3;
/// Size of each pipeline buffer.
const PIPELINE_CHUNK: usize = 256 * 1024;
/// With early syncing on, the writer asks the sync thread for an `fdatasync` each time
/// this many more bytes have been written (requests coalesce while one runs).
const EARLY_SYNC_EVERY: u64 = if cfg!(test) { 1 << 20 } else { 32 << 20 };

/// A buffer shared (read-only) by the writer and the hasher, and its valid length.
type Shared = (Arc<Vec<u8>>, usize);

/// Writes `first[..n]` and the rest of `src` to `w` while a helper thread hashes the same
/// buffers, so hashing overlaps the copy into the page cache. With `opts.early_sync`, a
/// second helper (started once the object passes [`EARLY_SYNC_EVERY`]) `fdatasync`s the
/// file as it grows, so the disk writes overlap the copy too instead of all waiting for
/// the final fsync. Memory: a few fixed buffers.
fn stream_hashed<W: Write + SyncHandle>(
    w: &mut W,
    src: &mut impl Read,
    first: Vec<u8>,
    n: usize,
    opts: &WriteOpts<'_>,
) -> Result<(u64, blake3::Hash)> {
    let key = opts.key;
    let io_err = opts.io_err("write");
    std::thread::scope(|scope| {
        let (to_hasher, hasher_rx) = mpsc::channel::<Shared>();
        let (free_tx, free_rx) = mpsc::channel::<Arc<Vec<u8>>>();
        let hasher = scope.spawn(move || {
            let mut hasher = blake3::Hasher::new();
            for (buf, len) in hasher_rx {
                hasher.update(&buf[..len]);
                // Hand the buffer back for reuse; the writer may be gone on error.
                let _ = free_tx.send(buf);
            }
            hasher.finalize()
        });
        // Early syncing: `None` until started, and never started if the sink is no file.
        let mut syncer = None;
        let mut sync_possible = opts.early_sync;
        let mut unsynced = 0u64;
        let first = Arc::new(first);
        let _ = to_hasher.send((Arc::clone(&first), n));
        w.write_all(&first[..n]).map_err(&io_err)?;
        drop(first);
        let mut total = n as u64;
        opts.advance(total);
        let mut spare = PIPELINE_BUFFERS;
        loop {
            if let Some(e) = opts.expected
                && total > e.size
            {
                // Refused before the rest of an over-long source is read or written.
                return Err(opts.mismatch(Mismatch::Long { expected: e.size }));
            }
            // A buffer nobody else holds: a fresh one, or one the hasher is done with
            // (the writer dropped its own handle before asking for the next buffer).
            let mut buf = if spare > 0 {
                spare -= 1;
                Arc::new(vec![0u8; PIPELINE_CHUNK])
            } else {
                match free_rx.recv() {
                    Ok(buf) => buf,
                    Err(_) => break, // hasher gone: reported by the join below
                }
            };
            // Unique here (see above), so this never copies.
            let bytes = Arc::make_mut(&mut buf);
            if bytes.len() < PIPELINE_CHUNK {
                bytes.resize(PIPELINE_CHUNK, 0); // the 64 KiB first buffer, grown once
            }
            let n = loop {
                match src.read(bytes) {
                    Err(e) if e.kind() == ErrorKind::Interrupted => {}
                    Ok(n) => break n,
                    Err(source) => {
                        return Err(StoreError::Source {
                            key: key.to_owned(),
                            source,
                        });
                    }
                }
            };
            if n == 0 {
                break;
            }
            let _ = to_hasher.send((Arc::clone(&buf), n));
            w.write_all(&buf[..n]).map_err(&io_err)?;
            total += n as u64;
            opts.advance(total);
            if sync_possible {
                unsynced += n as u64;
                if unsynced >= EARLY_SYNC_EVERY {
                    unsynced = 0;
                    if syncer.is_none() {
                        match w.sync_handle() {
                            Some(file) => syncer = Some(spawn_syncer(scope, file)),
                            None => sync_possible = false,
                        }
                    }
                    if let Some((kick, _)) = &syncer {
                        // If the syncer stopped on an error, its join below reports it.
                        let _ = kick.send(());
                    }
                }
            }
        }
        drop(to_hasher);
        let hash = hasher.join().map_err(|_| {
            StoreError::io(
                "hash",
                opts.path,
                io::Error::other("hashing thread panicked"),
            )
        })?;
        if let Some((kick, handle)) = syncer {
            drop(kick);
            // A failed early sync fails the write: the error may not be reported again
            // by the final fsync (the handles share one open file description).
            handle
                .join()
                .unwrap_or_else(|_| Err(io::Error::other("sync thread panicked")))
                .map_err(opts.io_err("fsync"))?;
        }
        Ok((total, hash))
    })
}

/// The early-sync helper: `fdatasync`s `file` each time it is kicked (coalescing kicks
/// that arrive while a sync runs) until the sender is dropped; stops at the first error.
fn spawn_syncer<'scope>(
    scope: &'scope std::thread::Scope<'scope, '_>,
    file: File,
) -> (
    mpsc::Sender<()>,
    std::thread::ScopedJoinHandle<'scope, io::Result<()>>,
) {
    let (kick, kicked) = mpsc::channel::<()>();
    let handle = scope.spawn(move || {
        while kicked.recv().is_ok() {
            while kicked.try_recv().is_ok() {}
            file.sync_data()?;
        }
        Ok(())
    });
    (kick, handle)
}

/// Opens an object file, checks its header and length, and (if `key` is given) that it
/// holds that key. Leaves the reader positioned at the payload.
fn open_object(path: &Path, key: Option<&str>) -> Result<(BufReader<File>, Header)> {
    // Opened without blocking: a FIFO someone left in the root would otherwise block the
    // open until a writer comes, forever (it is refused below as not a regular file).
    let file = match open_nonblocking(path) {
        Ok(file) => file,
        Err(e) if is_absent(&e) => {
            return Err(match key {
                Some(key) => StoreError::NotFound {
                    key: key.to_owned(),
                },
                None => StoreError::io("open", path, e),
            });
        }
        Err(e) => return Err(StoreError::io("open", path, e)),
    };
    let meta = file
        .metadata()
        .map_err(|e| StoreError::io("stat", path, e))?;
    if !meta.is_file() {
        return Err(match key {
            Some(key) => StoreError::NotFound {
                key: key.to_owned(),
            },
            None => StoreError::corrupt(path, None, "not a regular file"),
        });
    }
    let file_len = meta.len();
    let capacity = (file_len as usize).clamp(FIXED_LEN, CHUNK);
    let mut reader = BufReader::with_capacity(capacity, file);
    let mut fixed = [0u8; FIXED_LEN];
    let got = read_up_to(&mut reader, &mut fixed).map_err(|e| StoreError::io("read", path, e))?;
    let with_key = |e: StoreError| match (e, key) {
        (StoreError::Corrupt { path, reason, .. }, Some(k)) => StoreError::Corrupt {
            path,
            key: Some(k.to_owned()),
            reason,
        },
        (e, _) => e,
    };
    let parsed = Header::parse_fixed(&fixed[..got], path).map_err(with_key)?;
    let mut key_bytes = vec![0u8; parsed.key_len];
    let got =
        read_up_to(&mut reader, &mut key_bytes).map_err(|e| StoreError::io("read", path, e))?;
    if got < key_bytes.len() {
        return Err(with_key(StoreError::corrupt(
            path,
            None,
            "truncated inside the header",
        )));
    }
    let header = parsed.finish(&fixed, &key_bytes, path).map_err(with_key)?;
    let expected_len = header.len().checked_add(header.payload_len);
    if expected_len != Some(file_len) {
        return Err(StoreError::corrupt(
            path,
            Some(key.unwrap_or(&header.key)),
            format!(
                "file is {file_len} bytes but its header says {} (truncated or extended)",
                header.len().saturating_add(header.payload_len)
            ),
        ));
    }
    if let Some(key) = key
        && header.key != key
    {
        return Err(StoreError::corrupt(
            path,
            Some(key),
            format!("file holds key {:?}", header.key),
        ));
    }
    Ok((reader, header))
}

/// The key the object file at `path` holds, if it is a regular file with a valid header
/// (its length and payload unchecked).
fn header_key(path: &Path) -> Option<String> {
    let mut file = open_nonblocking(path).ok()?;
    if !file.metadata().ok()?.is_file() {
        return None;
    }
    let mut fixed = [0u8; FIXED_LEN];
    if read_up_to(&mut file, &mut fixed).ok()? < FIXED_LEN {
        return None;
    }
    let parsed = Header::parse_fixed(&fixed, path).ok()?;
    let mut key_bytes = vec![0u8; parsed.key_len];
    if read_up_to(&mut file, &mut key_bytes).ok()? < key_bytes.len() {
        return None;
    }
    Some(parsed.finish(&fixed, &key_bytes, path).ok()?.key)
}

/// Opens `path` for reading with `O_NONBLOCK`, so that opening a FIFO does not wait for a
/// writer (reads of a regular file are unaffected).
#[cfg(unix)]
fn open_nonblocking(path: &Path) -> io::Result<File> {
    use std::os::unix::fs::OpenOptionsExt;
    OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)
}

/// Elsewhere a plain open (no FIFOs to block on).
#[cfg(not(unix))]
fn open_nonblocking(path: &Path) -> io::Result<File> {
    File::open(path)
}

/// Reads until `buf` is full or the end; returns the bytes read.
pub(crate) fn read_up_to(r: &mut impl Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match r.read(&mut buf[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(filled)
}

/// The size and BLAKE3 hash a write must produce; see [`Store::write_expecting`].
///
/// `hash` is the hash of the stored bytes, the one [`ObjectMeta::hash`] reports (for an
/// object written with `write_encrypted`, the hash of the ciphertext).
///
/// ```
/// let body = b"abc";
/// let expected = dfs_store::Expected::new(3, *blake3::hash(body).as_bytes());
/// assert_eq!(expected.size, 3);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Expected {
    /// Exact number of bytes the source must yield.
    pub size: u64,
    /// BLAKE3 hash those bytes must have.
    pub hash: [u8; 32],
}

impl Expected {
    /// An expectation of `size` bytes hashing to `hash`.
    pub fn new(size: u64, hash: [u8; 32]) -> Expected {
        Expected { size, hash }
    }
}

/// Metadata of a stored object, from its header.
///
/// ```
/// # let dir = tempfile::tempdir()?;
/// let store = dfs_store::Store::open(dir.path())?;
/// store.write("k", &b"abc"[..])?;
/// let meta = store.stat("k")?;
/// assert_eq!(meta.size(), 3);
/// assert!(meta.path().starts_with(dir.path()));
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectMeta {
    key: String,
    size: u64,
    hash: [u8; 32],
    path: PathBuf,
}

impl ObjectMeta {
    fn from_header(header: Header, path: PathBuf) -> ObjectMeta {
        ObjectMeta {
            key: header.key,
            size: header.payload_len,
            hash: header.payload_hash,
            path,
        }
    }

    fn packed(key: &str, found: &Found) -> Result<ObjectMeta> {
        Ok(ObjectMeta {
            key: key.to_owned(),
            size: found.entry.size(),
            hash: found.hash(key)?,
            path: found.path.clone(),
        })
    }

    /// The key.
    pub fn key(&self) -> &str {
        &self.key
    }

    /// The stored size in bytes (the payload, without the header).
    pub fn size(&self) -> u64 {
        self.size
    }

    /// The BLAKE3 hash of the stored bytes.
    pub fn hash(&self) -> &[u8; 32] {
        &self.hash
    }

    /// The object's file: its own, or the pack segment holding it (see
    /// [`StoreBuilder::pack_small_objects`]; a packed object moves to another segment
    /// when its segment is compacted, so that path is only good for a while).
    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// A streaming reader over one object's bytes that verifies their BLAKE3 hash.
///
/// Owns its file: `Send + 'static`, so it can move into `spawn_blocking` or another
/// thread. Returned by [`Store::read`]. If the bytes on disk do not match the stored hash
/// (or the file is cut short), the `read` call that would deliver the final bytes fails
/// with an `io::Error` of kind `InvalidData` wrapping a [`StoreError::Corrupt`]
/// (recover it with [`StoreError::from_io`]), and every later call fails the same way.
///
/// ```
/// use std::io::Read;
/// # let dir = tempfile::tempdir()?;
/// let store = dfs_store::Store::open(dir.path())?;
/// store.write("k", &b"0123456789"[..])?;
/// let reader = store.read("k")?;
/// let handle = std::thread::spawn(move || {
///     let mut reader = reader;
///     let mut s = String::new();
///     reader.read_to_string(&mut s).map(|_| s)
/// });
/// assert_eq!(handle.join().unwrap()?, "0123456789");
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub struct ObjectReader {
    file: Body,
    verifier: Verifier,
    size: u64,
    remaining: u64,
    expected: [u8; 32],
    key: String,
    path: PathBuf,
    failed: Option<String>,
}

impl fmt::Debug for ObjectReader {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ObjectReader")
            .field("key", &self.key)
            .field("path", &self.path)
            .field("size", &self.size)
            .field("remaining", &self.remaining)
            .finish_non_exhaustive()
    }
}

/// Where an [`ObjectReader`]'s bytes come from.
enum Body {
    /// The object's own file, past its header.
    File(BufReader<File>),
    /// A packed object's record, read whole (at most 1 MiB and the header), positioned at
    /// the object's bytes, which are verified as they are handed out.
    Packed(io::Cursor<Vec<u8>>),
}

impl Read for Body {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Body::File(file) => file.read(buf),
            Body::Packed(bytes) => bytes.read(buf),
        }
    }
}

impl ObjectReader {
    fn packed(key: &str, found: Found) -> Result<ObjectReader> {
        let record = found.read(key)?;
        let header = Header {
            key: key.to_owned(),
            payload_len: found.entry.size(),
            payload_hash: record.hash,
        };
        let mut bytes = io::Cursor::new(record.bytes);
        bytes.set_position(record.data_start as u64);
        Ok(ObjectReader::new(Body::Packed(bytes), header, found.path))
    }

    fn new(file: Body, header: Header, path: PathBuf) -> ObjectReader {
        ObjectReader {
            file,
            verifier: Verifier::new(header.payload_len),
            size: header.payload_len,
            remaining: header.payload_len,
            expected: header.payload_hash,
            key: header.key,
            path,
            failed: None,
        }
    }

    /// The object's size in bytes.
    ///
    /// ```
    /// # let dir = tempfile::tempdir()?;
    /// # let store = dfs_store::Store::open(dir.path())?;
    /// store.write("k", &b"abc"[..])?;
    /// assert_eq!(store.read("k")?.size(), 3);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn size(&self) -> u64 {
        self.size
    }

    /// The key this object is stored under.
    ///
    /// ```
    /// # let dir = tempfile::tempdir()?;
    /// # let store = dfs_store::Store::open(dir.path())?;
    /// store.write("k", &b"abc"[..])?;
    /// assert_eq!(store.read("k")?.key(), "k");
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn key(&self) -> &str {
        &self.key
    }

    /// The BLAKE3 hash the bytes must match.
    ///
    /// ```
    /// # let dir = tempfile::tempdir()?;
    /// # let store = dfs_store::Store::open(dir.path())?;
    /// store.write("k", &b"abc"[..])?;
    /// assert_eq!(store.read("k")?.hash(), blake3::hash(b"abc").as_bytes());
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn hash(&self) -> &[u8; 32] {
        &self.expected
    }

    /// Reads the rest of the object, discarding it, and checks the hash.
    ///
    /// ```
    /// # let dir = tempfile::tempdir()?;
    /// # let store = dfs_store::Store::open(dir.path())?;
    /// store.write("k", &b"abc"[..])?;
    /// store.read("k")?.verify()?;
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn verify(mut self) -> Result<()> {
        let mut buf = vec![0u8; CHUNK.min(self.remaining.max(1) as usize)];
        loop {
            match self.read(&mut buf) {
                Ok(0) => return Ok(()),
                Ok(_) => {}
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => {
                    return Err(StoreError::from_io(e)
                        .unwrap_or_else(|e| StoreError::io("read", &self.path, e)));
                }
            }
        }
    }

    fn corrupt(&self, reason: &str) -> io::Error {
        io::Error::new(
            ErrorKind::InvalidData,
            StoreError::corrupt(&self.path, Some(&self.key), reason),
        )
    }
}

impl Read for ObjectReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if let Some(reason) = &self.failed {
            return Err(self.corrupt(reason));
        }
        if self.remaining == 0 || buf.is_empty() {
            return Ok(0);
        }
        let want = buf
            .len()
            .min(usize::try_from(self.remaining).unwrap_or(usize::MAX));
        let n = self.file.read(&mut buf[..want])?;
        if n == 0 {
            let reason = format!("file ends {} bytes early", self.remaining);
            let err = self.corrupt(&reason);
            self.failed = Some(reason);
            return Err(err);
        }
        if let Err(e) = self.verifier.update(&buf[..n]) {
            self.failed = Some(e.to_string());
            return Err(self.corrupt(&e.to_string()));
        }
        self.remaining -= n as u64;
        if self.remaining == 0 {
            let reason = match self.verifier.finish() {
                Ok(hash) if hash == blake3::Hash::from(self.expected) => None,
                Ok(_) => Some("content hash mismatch (bytes on disk are damaged)".to_owned()),
                Err(e) => Some(format!("could not check the content hash: {e}")),
            };
            if let Some(reason) = reason {
                let err = self.corrupt(&reason);
                self.failed = Some(reason);
                return Err(err);
            }
        }
        Ok(n)
    }
}

/// Objects at least this large are hashed on a helper thread while they are read.
const PIPELINE_MIN: u64 = 1 << 20;

/// Hashes the bytes an [`ObjectReader`] delivers: inline for small objects, on a helper
/// thread (fed copies through a few reusable buffers) for large ones, so hashing overlaps
/// the reads on a second core.
enum Verifier {
    Inline(Box<blake3::Hasher>),
    Pipelined(Pipeline),
    Finished,
}

struct Pipeline {
    current: Vec<u8>,
    to_hasher: mpsc::Sender<Vec<u8>>,
    free: mpsc::Receiver<Vec<u8>>,
    spare: usize,
    handle: std::thread::JoinHandle<blake3::Hash>,
}

impl Verifier {
    fn new(size: u64) -> Verifier {
        if size < PIPELINE_MIN {
            return Verifier::Inline(Box::default());
        }
        let (to_hasher, rx) = mpsc::channel::<Vec<u8>>();
        let (free_tx, free) = mpsc::channel::<Vec<u8>>();
        let spawned = std::thread::Builder::new()
            .name("dfs-store-hash".into())
            .spawn(move || {
                let mut hasher = blake3::Hasher::new();
                for mut buf in rx {
                    hasher.update(&buf);
                    buf.clear();
                    // The reader may be gone already; then the buffer is just freed.
                    let _ = free_tx.send(buf);
                }
                hasher.finalize()
            });
        match spawned {
            Ok(handle) => Verifier::Pipelined(Pipeline {
                current: Vec::with_capacity(PIPELINE_CHUNK),
                to_hasher,
                free,
                spare: PIPELINE_BUFFERS,
                handle,
            }),
            // No thread to be had: hash inline.
            Err(_) => Verifier::Inline(Box::default()),
        }
    }

    fn hasher_gone() -> io::Error {
        io::Error::other("the hashing thread of an object reader stopped")
    }

    fn update(&mut self, mut bytes: &[u8]) -> io::Result<()> {
        match self {
            Verifier::Inline(hasher) => {
                hasher.update(bytes);
                Ok(())
            }
            Verifier::Pipelined(p) => {
                while !bytes.is_empty() {
                    let take = (PIPELINE_CHUNK - p.current.len()).min(bytes.len());
                    p.current.extend_from_slice(&bytes[..take]);
                    bytes = &bytes[take..];
                    if p.current.len() == PIPELINE_CHUNK {
                        let next = if p.spare > 0 {
                            p.spare -= 1;
                            Vec::with_capacity(PIPELINE_CHUNK)
                        } else {
                            p.free.recv().map_err(|_| Verifier::hasher_gone())?
                        };
                        let full = std::mem::replace(&mut p.current, next);
                        p.to_hasher
                            .send(full)
                            .map_err(|_| Verifier::hasher_gone())?;
                    }
                }
                Ok(())
            }
            Verifier::Finished => Err(io::Error::other("object already fully read")),
        }
    }

    fn finish(&mut self) -> io::Result<blake3::Hash> {
        match std::mem::replace(self, Verifier::Finished) {
            Verifier::Inline(hasher) => Ok(hasher.finalize()),
            Verifier::Pipelined(p) => {
                if !p.current.is_empty() {
                    p.to_hasher
                        .send(p.current)
                        .map_err(|_| Verifier::hasher_gone())?;
                }
                drop(p.to_hasher);
                p.handle.join().map_err(|_| Verifier::hasher_gone())
            }
            Verifier::Finished => Err(io::Error::other("object already fully read")),
        }
    }
}

/// Iterator over stored keys; see [`Store::keys`].
#[derive(Debug)]
pub struct Keys {
    inner: Objects,
}

impl Iterator for Keys {
    type Item = Result<String>;

    fn next(&mut self) -> Option<Self::Item> {
        self.inner.next().map(|item| item.map(|meta| meta.key))
    }
}

/// Iterator over stored objects' metadata; see [`Store::objects`].
///
/// With a pack, a key that exists throughout the iteration is listed exactly once, even
/// if it moves between the pack and its own file meanwhile: the pack's objects when the
/// iteration started come first, then the object files (but those of keys already
/// listed, or now in the pack), then the keys packed since and not listed yet.
pub struct Objects {
    /// The pack's objects when the iteration started.
    packed: std::vec::IntoIter<(String, Found)>,
    pack: Option<Arc<Pack>>,
    /// Keys listed so far (with a pack only).
    seen: HashSet<String>,
    walker: Walker,
    /// After the walk: the keys packed since the iteration started.
    late: Option<std::vec::IntoIter<(String, Found)>>,
}

impl fmt::Debug for Objects {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Objects")
            .field("packed_left", &self.packed.len())
            .field("walker", &self.walker)
            .finish()
    }
}

impl Iterator for Objects {
    type Item = Result<ObjectMeta>;

    fn next(&mut self) -> Option<Self::Item> {
        if let Some((key, found)) = self.packed.next() {
            let meta = ObjectMeta::packed(&key, &found);
            self.seen.insert(key);
            return Some(meta);
        }
        if let Some(late) = &mut self.late {
            for (key, found) in late.by_ref() {
                if self.seen.insert(key.clone()) {
                    return Some(ObjectMeta::packed(&key, &found));
                }
            }
            return None;
        }
        loop {
            let Some(item) = self.walker.next() else {
                let pack = self.pack.as_ref()?;
                self.late = Some(pack.snapshot().into_iter());
                return self.next();
            };
            let path = match item {
                Ok(path) => path,
                Err(e) => return Some(Err(e)),
            };
            return match open_object(&path, None) {
                // Deleted since the directory was read: not an object any more.
                Err(StoreError::Io { ref source, .. }) if is_absent(source) => continue,
                Ok((_, header)) if self.pack.is_some() => {
                    let pack = self.pack.as_ref()?;
                    // Listed from the pack already, or packed since (the late pass lists
                    // it): either way this file is an older version the pack shadows.
                    if self.seen.contains(&header.key) || pack.contains(&header.key) {
                        continue;
                    }
                    self.seen.insert(header.key.clone());
                    Some(Ok(ObjectMeta::from_header(header, path)))
                }
                opened => Some(opened.map(|(_, header)| ObjectMeta::from_header(header, path))),
            };
        }
    }
}

/// Depth-first walk yielding regular files (and errors for anything else).
#[derive(Debug)]
struct Walker {
    stack: Vec<(PathBuf, Option<fs::ReadDir>)>,
}

impl Walker {
    fn new(root: &Path) -> Walker {
        Walker {
            stack: vec![(root.to_owned(), None)],
        }
    }
}

impl Iterator for Walker {
    type Item = Result<PathBuf>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            let (dir, entries) = self.stack.last_mut()?;
            let entries = match entries {
                Some(entries) => entries,
                None => match fs::read_dir(&*dir) {
                    Ok(read) => entries.insert(read),
                    Err(e) => {
                        let dir = dir.clone();
                        self.stack.pop();
                        if e.kind() == ErrorKind::NotFound {
                            continue; // removed concurrently (delete pruning, clear)
                        }
                        return Some(Err(StoreError::io("list", dir, e)));
                    }
                },
            };
            let entry = match entries.next() {
                None => {
                    self.stack.pop();
                    continue;
                }
                Some(Err(e)) => {
                    let dir = dir.clone();
                    self.stack.pop();
                    return Some(Err(StoreError::io("list", dir, e)));
                }
                Some(Ok(entry)) => entry,
            };
            let path = entry.path();
            match entry.file_type() {
                Ok(t) if t.is_dir() => self.stack.push((path, None)),
                Ok(t) if t.is_file() => return Some(Ok(path)),
                Ok(_) => {
                    return Some(Err(StoreError::corrupt(
                        path,
                        None,
                        "not a regular file or directory",
                    )));
                }
                Err(e) => return Some(Err(StoreError::io("stat", path, e))),
            }
        }
    }
}

/// The result of [`Store::scrub`].
///
/// ```
/// # let dir = tempfile::tempdir()?;
/// # let store = dfs_store::Store::open(dir.path())?;
/// let report = store.scrub();
/// for bad in &report.bad {
///     eprintln!("{}: {}", bad.path.display(), bad.error);
/// }
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug, Default)]
#[non_exhaustive]
pub struct ScrubReport {
    /// What was examined: each object file, each packed object, and each pack file
    /// found damaged.
    pub checked: u64,
    /// Every file that failed a check.
    pub bad: Vec<BadObject>,
}

impl ScrubReport {
    /// `true` when no bad object was found.
    pub fn is_clean(&self) -> bool {
        self.bad.is_empty()
    }
}

/// One bad file found by [`Store::scrub`].
#[derive(Debug)]
#[non_exhaustive]
pub struct BadObject {
    /// The file.
    pub path: PathBuf,
    /// The key its header names, when the header could be read.
    pub key: Option<String>,
    /// What is wrong.
    pub error: StoreError,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts(key: &str, expected: Option<Expected>) -> WriteOpts<'_> {
        WriteOpts {
            key,
            path: Path::new("x"),
            expected,
            later: std::cell::Cell::new(None),
            tail: None,
            early_sync: false,
        }
    }

    fn staging_files(store: &Store) -> usize {
        fs::read_dir(store.root().join(TMP_DIR)).unwrap().count()
    }

    /// Takes the directory fsyncs recorded so far.
    fn dir_syncs<P: PathTransform>(store: &Store<P>) -> Vec<PathBuf> {
        std::mem::take(&mut store.dir_syncs.lock().unwrap().done)
    }

    #[test]
    fn a_directory_whose_parent_fsync_failed_is_synced_by_the_next_writer() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open_with(dir.path(), crate::PlainPath).unwrap();
        store.dir_syncs.lock().unwrap().done.clear(); // those of `open` itself
        let objects = dir.path().join(OBJECTS_DIR);
        let (ab, cd) = (objects.join("ab"), objects.join("ab/cd"));

        // W1 creates objects/ab (fsyncing objects/) and objects/ab/cd, whose parent fsync
        // fails: W1's write fails, the directory stays, recorded as not yet durable.
        store.dir_syncs.lock().unwrap().fail = Some(ab.clone());
        let err = store.write("ab/cd/one", &b"1"[..]).unwrap_err();
        assert!(
            matches!(&err, StoreError::Io { path, source, .. }
                if *path == ab && source.to_string().contains("injected")),
            "{err:?}"
        );
        assert!(cd.is_dir());
        assert_eq!(dir_syncs(&store), std::slice::from_ref(&objects));
        assert!(store.unsynced_dirs.any());

        // W2, same leaf: nothing to create, but it must fsync objects/ab itself.
        store.write("ab/cd/two", &b"2"[..]).unwrap();
        assert_eq!(dir_syncs(&store), [cd.clone(), ab.clone()]);
        assert!(!store.unsynced_dirs.any());
        assert!(store.unsynced_dirs.lock().is_empty());

        // Once that succeeded, writers are back to the common case: their leaf only.
        store.write("ab/cd/three", &b"3"[..]).unwrap();
        assert_eq!(dir_syncs(&store), std::slice::from_ref(&cd));
        // A new leaf: its parent is fsynced by its creator, and the record dropped.
        store.write("ab/ef/four", &b"4"[..]).unwrap();
        assert_eq!(dir_syncs(&store), [ab.clone(), objects.join("ab/ef")]);
        assert!(!store.unsynced_dirs.any());
        assert_eq!(store.keys().count(), 3);

        // clear() recreates objects/ and fsyncs the root; if that fails, the next write
        // (which recreates the tree below) fsyncs the root itself.
        store.dir_syncs.lock().unwrap().fail = Some(dir.path().to_path_buf());
        assert!(store.clear().is_err());
        assert!(store.unsynced_dirs.any());
        store.write("ab/cd/five", &b"5"[..]).unwrap();
        let synced = dir_syncs(&store);
        assert_eq!(synced.last(), Some(&dir.path().to_path_buf()), "{synced:?}");
        assert!(!store.unsynced_dirs.any());
    }

    #[test]
    fn a_directory_still_being_synced_by_its_creator_is_synced_by_others_too() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open_with(dir.path(), crate::PlainPath).unwrap();
        store.dir_syncs.lock().unwrap().done.clear(); // those of `open` itself
        let objects = dir.path().join(OBJECTS_DIR);
        let (ab, cd) = (objects.join("ab"), objects.join("ab/cd"));
        fs::create_dir(&ab).unwrap();
        // W1 has created objects/ab/cd and not fsynced objects/ab yet.
        store.unsynced_dirs.create(&cd).unwrap();
        // Recording a directory that exists and nobody recorded is undone.
        assert!(store.unsynced_dirs.create(&ab).is_err());
        assert_eq!(
            store.unsynced_dirs.on_path(&cd, &objects),
            std::slice::from_ref(&cd)
        );

        store.write("ab/cd/k", &b"v"[..]).unwrap();
        assert_eq!(dir_syncs(&store), [cd.clone(), ab.clone()]);
        assert!(!store.unsynced_dirs.any());
    }

    #[test]
    fn no_directory_records_without_fsync() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::builder(dir.path())
            .transform(crate::PlainPath)
            .durability(Durability::None)
            .open()
            .unwrap();
        store.write("ab/cd/k", &b"v"[..]).unwrap();
        assert!(!store.unsynced_dirs.any());
        assert!(dir_syncs(&store).is_empty());
    }

    /// Without fsync, a key moving out of the pack into its own file gets a durable file
    /// (and every directory up to the root) before the pack record goes, and a key moving
    /// into the pack has its file's removal made durable; other writes sync nothing.
    #[test]
    fn without_fsync_a_key_leaving_the_pack_is_made_durable_first() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::builder(dir.path())
            .transform(crate::PlainPath)
            .durability(Durability::None)
            .pack_small_objects(16)
            .open()
            .unwrap();
        store.write("ab/cd/k", &b"small"[..]).unwrap();
        store.write("ab/cd/other", &[1u8; 100][..]).unwrap();
        assert!(dir_syncs(&store).is_empty());
        store.write("ab/cd/k", &[2u8; 100][..]).unwrap();
        let up_to_root = [
            store.objects.join("ab/cd"),
            store.objects.join("ab"),
            store.objects.clone(),
            store.root.clone(),
        ];
        assert_eq!(dir_syncs(&store), up_to_root);
        store.write("ab/cd/k", &[3u8; 100][..]).unwrap();
        assert!(dir_syncs(&store).is_empty());
        store.write("ab/cd/k", &b"small again"[..]).unwrap();
        assert_eq!(dir_syncs(&store), [store.objects.join("ab/cd")]);
        store.write("ab/cd/k", &[3u8; 100][..]).unwrap();
        dir_syncs(&store);
        let mut read = Vec::new();
        store
            .read("ab/cd/k")
            .unwrap()
            .read_to_end(&mut read)
            .unwrap();
        assert_eq!(read, [3u8; 100]);
    }

    /// Without fsync, a key moving into the pack needs its file's removal durable. When
    /// the directory to fsync is pruned meanwhile by another thread's delete (which, without
    /// fsync, syncs nothing), the removal is durable only once the directory that lost
    /// the pruned one is fsynced: skipping the fsync would let a crash bring the file back
    /// (and after a later durable delete of the key, revive that older version).
    #[test]
    fn a_removal_whose_directory_was_pruned_meanwhile_is_still_made_durable() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::builder(dir.path())
            .transform(crate::PlainPath)
            .durability(Durability::None)
            .pack_small_objects(16)
            .open()
            .unwrap();
        store.write("ab/k", &[1u8; 100][..]).unwrap();
        store.write("ab/other", &[1u8; 100][..]).unwrap();
        dir_syncs(&store);
        // `ab` keeps `other` when `k` leaves it, so `ab` is the directory to fsync; a
        // delete of `other` prunes it first.
        store.dir_syncs.lock().unwrap().pruned_first = Some(store.objects.join("ab"));
        store.write("ab/k", &b"small"[..]).unwrap();
        assert!(!store.objects.join("ab").exists());
        assert_eq!(
            dir_syncs(&store),
            std::slice::from_ref(&store.objects),
            "no fsync made the removal of ab/k (with ab) durable"
        );
    }

    /// A packed write whose removal of the replaced file fails (here its directory fsync)
    /// fails, and the pack takes no further append: no delete of the key can become
    /// durable while the removal may not be.
    #[test]
    fn a_failed_removal_of_a_replaced_file_stops_the_pack() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::builder(dir.path())
            .transform(crate::PlainPath)
            .pack_small_objects(16)
            .open()
            .unwrap();
        store.write("ab/k", &[1u8; 100][..]).unwrap();
        store.write("ab/other", &[1u8; 100][..]).unwrap();
        store.dir_syncs.lock().unwrap().fail = Some(store.objects.join("ab"));
        assert!(store.write("ab/k", &b"small"[..]).is_err());
        assert!(store.delete("ab/k").is_err());
        assert!(store.write("x", &b"y"[..]).is_err());
        // Nor can it be cleared: nothing is touched.
        assert!(store.clear().is_err());
        assert!(store.objects.join("ab/other").is_file());
        drop(store);
        let store = Store::builder(dir.path())
            .pack_small_objects(16)
            .transform(crate::PlainPath)
            .open()
            .unwrap();
        let mut read = Vec::new();
        store.read("ab/k").unwrap().read_to_end(&mut read).unwrap();
        assert_eq!(read, b"small");
        assert!(store.delete("ab/k").unwrap());
    }

    #[test]
    fn disk_full_small_write_leaves_nothing_and_keeps_old_version() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = Store::open(dir.path()).unwrap();
        store.write("k", &b"old version"[..]).unwrap();
        store.fail_writes_after = Some(10);
        let err = store.write("k", &b"new version!"[..]).unwrap_err();
        match &err {
            StoreError::Io { source, .. } => assert_eq!(source.kind(), ErrorKind::StorageFull),
            other => panic!("unexpected {other:?}"),
        }
        assert_eq!(staging_files(&store), 0);
        store.fail_writes_after = None;
        let mut out = String::new();
        store.read("k").unwrap().read_to_string(&mut out).unwrap();
        assert_eq!(out, "old version");
    }

    #[test]
    fn disk_full_mid_stream_and_at_header_patch() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = Store::open(dir.path()).unwrap();
        let big = vec![5u8; 3 * CHUNK + 17];
        // Fails in the middle of the payload, and exactly when the header is patched
        // (every payload byte already written).
        for limit in [CHUNK as u64 + 100, (FIXED_LEN + 1 + big.len()) as u64] {
            store.fail_writes_after = Some(limit);
            let err = store.write("k", &big[..]).unwrap_err();
            assert!(matches!(err, StoreError::Io { .. }), "{err:?}");
            assert_eq!(staging_files(&store), 0);
            assert!(!store.has("k").unwrap());
        }
        store.fail_writes_after = None;
        assert_eq!(store.write("k", &big[..]).unwrap(), big.len() as u64);
        store.verify("k").unwrap();
    }

    #[test]
    fn write_object_small_and_streamed_agree() {
        // The one-shot path and the patched-header path produce the same bytes.
        for len in [0, 1, CHUNK - 1, CHUNK, CHUNK + 1, 2 * CHUNK] {
            let data: Vec<u8> = (0..len).map(|i| (i % 251) as u8).collect();
            let mut out = io::Cursor::new(Vec::new());
            let (n, _) = write_object(&mut out, &mut &data[..], &opts("key", None)).unwrap();
            assert_eq!(n, len as u64);
            let bytes = out.into_inner();
            let mut expected =
                Header::encode_fixed("key", len as u64, blake3::hash(&data).as_bytes()).to_vec();
            expected.extend_from_slice(b"key");
            expected.extend_from_slice(&data);
            assert!(bytes == expected, "len {len}");
        }
    }

    #[test]
    fn write_object_with_expectation_writes_the_same_bytes() {
        for len in [0, 1, CHUNK - 1, CHUNK, CHUNK + 1, 5 * PIPELINE_CHUNK + 3] {
            let data: Vec<u8> = (0..len).map(|i| (i % 251) as u8).collect();
            let mut plain = io::Cursor::new(Vec::new());
            write_object(&mut plain, &mut &data[..], &opts("key", None)).unwrap();
            let expected = Expected::new(len as u64, *blake3::hash(&data).as_bytes());
            let mut checked = io::Cursor::new(Vec::new());
            let (n, _) =
                write_object(&mut checked, &mut &data[..], &opts("key", Some(expected))).unwrap();
            assert_eq!(n, len as u64);
            assert!(plain.into_inner() == checked.into_inner(), "len {len}");
        }
    }

    #[test]
    fn early_sync_runs_and_a_failure_mid_write_leaves_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = Store::open(dir.path()).unwrap();
        // Several EARLY_SYNC_EVERY (1 MiB under test) periods.
        let big: Vec<u8> = (0..5 * EARLY_SYNC_EVERY as usize + 999)
            .map(|i| (i % 241) as u8)
            .collect();
        assert_eq!(store.write("k", &big[..]).unwrap(), big.len() as u64);
        store.verify("k").unwrap();
        // Disk full after the early syncs have started.
        store.fail_writes_after = Some(3 * EARLY_SYNC_EVERY);
        let err = store.write("k2", &big[..]).unwrap_err();
        assert!(matches!(err, StoreError::Io { .. }), "{err:?}");
        assert_eq!(staging_files(&store), 0);
        assert!(!store.has("k2").unwrap());
    }

    /// Yields `left` bytes in uneven pieces, with an `Interrupted` error between pieces.
    struct Jittery {
        left: usize,
        step: usize,
        interrupt: bool,
    }

    impl Read for Jittery {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            self.interrupt = !self.interrupt;
            if self.interrupt {
                return Err(io::Error::new(ErrorKind::Interrupted, "signal"));
            }
            self.step = self.step * 7 % 10_007 + 1;
            let n = buf.len().min(self.left).min(self.step);
            for (i, b) in buf[..n].iter_mut().enumerate() {
                *b = ((self.left - i) % 256) as u8;
            }
            self.left -= n;
            Ok(n)
        }
    }

    #[test]
    fn pipelined_write_handles_uneven_and_interrupted_sources() {
        let len = 3 * PIPELINE_CHUNK + 12_345;
        let expected: Vec<u8> = (0..len).map(|i| ((len - i) % 256) as u8).collect();
        let mut out = io::Cursor::new(Vec::new());
        let mut src = Jittery {
            left: len,
            step: 1,
            interrupt: false,
        };
        let (n, _) = write_object(&mut out, &mut src, &opts("k", None)).unwrap();
        assert_eq!(n, len as u64);
        let bytes = out.into_inner();
        let header = Header::encode_fixed("k", len as u64, blake3::hash(&expected).as_bytes());
        assert_eq!(&bytes[..FIXED_LEN], &header[..]);
        assert_eq!(&bytes[FIXED_LEN + 1..], &expected[..]);
    }

    #[test]
    fn open_makes_the_directories_it_creates_durable() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("a").join("b");
        let store = Store::open(&root).unwrap();
        let mut synced = store.dir_syncs.lock().unwrap().done.clone();
        synced.sort();
        let mut expected = vec![dir.path().to_path_buf(), dir.path().join("a"), root.clone()];
        expected.sort();
        assert_eq!(synced, expected);
        drop(store);
        let again = Store::open(&root).unwrap();
        assert!(
            again.dir_syncs.lock().unwrap().done.is_empty(),
            "nothing created, nothing synced"
        );
        let relaxed = Store::builder(dir.path().join("c"))
            .durability(Durability::None)
            .open()
            .unwrap();
        assert!(relaxed.dir_syncs.lock().unwrap().done.is_empty());
    }

    #[test]
    fn sweep_keeps_live_and_removes_dead() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let tmp = store.root().join(TMP_DIR);
        let live = tmp.join(staging_name("tmp"));
        fs::write(&live, b"in flight").unwrap();
        // pid 4294967295 cannot exist on Linux (pid_max <= 2^22).
        let dead = tmp.join("4294967295-0a0b0c0d.00.tmp");
        fs::write(&dead, b"crashed").unwrap();
        // Earlier runs with this process's pid (a container's pid 1 every time), with
        // another token or in the earlier format without one.
        let pid = std::process::id();
        let reused = [format!("{pid}-x.00.tmp"), format!("{pid}.00.tmp")].map(|n| tmp.join(n));
        for path in &reused {
            fs::write(path, b"crashed").unwrap();
        }
        let junk = tmp.join("junk");
        fs::create_dir(&junk).unwrap();
        fs::write(junk.join("x"), b"x").unwrap();
        drop(store);
        let _store = Store::open(dir.path()).unwrap();
        assert!(live.exists());
        if cfg!(target_os = "linux") {
            assert!(!dead.exists());
        }
        assert!(reused.iter().all(|p| !p.exists()));
        assert!(!junk.exists());
    }
}
