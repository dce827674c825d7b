//! The pack: small objects appended to a log of segment files (opt-in, see
//! [`StoreBuilder::pack_small_objects`](crate::StoreBuilder::pack_small_objects) and
//! `FORMAT.md`, "Pack").
//!
//! A durable write of a small object as its own file costs two journal commits (the new
//! file, then the rename); an append to a segment whose blocks are already allocated and
//! zero-filled costs one data flush. The pack keeps an in-memory index (key -> record)
//! rebuilt by scanning the segments at open; it takes precedence over object files, which
//! is what makes every ordering below crash-safe (see [`Store`](crate::Store)'s writes).

use std::collections::{BTreeMap, HashMap};
use std::fs::{self, File, OpenOptions};
use std::io::{self, BufReader, ErrorKind, Read};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use crate::error::{Result, StoreError};
use crate::path::MAX_KEY_LEN;

/// Directory under the root holding the segments and the lock file.
pub(crate) const PACK_DIR: &str = "pack";
/// The lock file: one process at a time opens a store that has a pack.
const LOCK_FILE: &str = "lock";
/// First bytes of every segment file.
const SEGMENT_MAGIC: [u8; 8] = *b"dfs-pack";
/// The segment format version this build writes and reads.
const SEGMENT_VERSION: u32 = 1;
/// Segment header: magic, version, reserved.
const SEGMENT_HEADER_LEN: u64 = 16;
/// First bytes of every record.
const RECORD_MAGIC: [u8; 4] = *b"dfsR";
/// Fixed part of a record header (the key and the data follow it).
const RECORD_HEADER_LEN: usize = 72;
const KIND_PUT: u8 = 1;
const KIND_DELETE: u8 = 2;
/// The largest object a pack takes.
pub const MAX_PACKED: u32 = 1 << 20;
/// A segment takes no more appends once it is this long (a record never straddles two).
const SEGMENT_TARGET: u64 = 64 << 20;
/// The active segment is zero-filled ahead of the appends by this much at a time, so an
/// append overwrites allocated blocks and its `fdatasync` flushes data, not metadata.
const EXTEND_STEP: u64 = 1 << 20;

/// Where one live object's record is.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Entry {
    segment: u64,
    /// Offset of the record header in the segment.
    offset: u64,
    key_len: u32,
    len: u32,
    hash: [u8; 32],
    seq: u64,
}

impl Entry {
    fn record_len(&self) -> u64 {
        RECORD_HEADER_LEN as u64 + u64::from(self.key_len) + u64::from(self.len)
    }

    fn data_at(&self) -> u64 {
        self.offset + RECORD_HEADER_LEN as u64 + u64::from(self.key_len)
    }

    /// The object's size.
    pub(crate) fn size(&self) -> u64 {
        u64::from(self.len)
    }

    /// The BLAKE3 hash of the object's bytes.
    pub(crate) fn hash(&self) -> &[u8; 32] {
        &self.hash
    }
}

/// One live object, found in the index.
#[derive(Debug, Clone)]
pub(crate) struct Found {
    pub(crate) entry: Entry,
    pub(crate) file: Arc<File>,
    pub(crate) path: PathBuf,
}

impl Found {
    /// Reads the object's bytes (not verified: the caller hashes them).
    pub(crate) fn read_data(&self, key: &str) -> Result<Vec<u8>> {
        let mut data = vec![0u8; self.entry.len as usize];
        match read_exact_at(&self.file, &mut data, self.entry.data_at()) {
            Ok(()) => Ok(data),
            Err(e) if e.kind() == ErrorKind::UnexpectedEof => Err(StoreError::corrupt(
                &self.path,
                Some(key),
                "pack segment ends inside the object's record",
            )),
            Err(e) => Err(StoreError::io("read", &self.path, e)),
        }
    }
}

#[derive(Debug)]
struct Segment {
    file: Arc<File>,
    path: PathBuf,
    /// Bytes of records in the segment (header excluded).
    used: u64,
    /// Bytes of the records the index points to.
    live: u64,
}

#[derive(Debug)]
struct State {
    index: HashMap<String, Entry>,
    segments: BTreeMap<u64, Segment>,
    /// The segment appended to.
    active: u64,
    /// Where the next record goes in the active segment.
    tail: u64,
    /// Length of the active segment's file (zero-filled past `tail`).
    allocated: u64,
    next_seq: u64,
    /// Damage found while opening: (segment, what), reported by scrubs.
    damage: Vec<(PathBuf, String)>,
}

/// The pack of one store.
#[derive(Debug)]
pub(crate) struct Pack {
    dir: PathBuf,
    fsync: bool,
    /// Objects up to this size are written here (0: the pack only serves what it holds).
    max_object: u32,
    /// Held (locked) for the store's life.
    _lock: File,
    state: Mutex<State>,
    /// The (segment, offset) up to which appends are known durable.
    synced: Mutex<(u64, u64)>,
    /// Set when a write or fsync of a segment failed: what reached the disk is unknown,
    /// so no further append is made until the store is opened again.
    broken: AtomicBool,
}

impl Pack {
    /// Whether `root` has a pack.
    pub(crate) fn exists(root: &Path) -> bool {
        root.join(PACK_DIR).is_dir()
    }

    /// Opens (creating if needed) the pack under `root`: takes the lock, scans every
    /// segment and rebuilds the index.
    pub(crate) fn open(root: &Path, fsync: bool, max_object: u32) -> Result<Pack> {
        let dir = root.join(PACK_DIR);
        let created = !dir.is_dir();
        fs::create_dir_all(&dir).map_err(|e| StoreError::io("create directory", &dir, e))?;
        if created && fsync {
            sync_dir(root)?;
        }
        let lock_path = dir.join(LOCK_FILE);
        let lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(|e| StoreError::io("open", &lock_path, e))?;
        match lock.try_lock() {
            Ok(()) => {}
            Err(fs::TryLockError::WouldBlock) => {
                return Err(StoreError::Locked { path: lock_path });
            }
            Err(fs::TryLockError::Error(e)) => return Err(StoreError::io("lock", lock_path, e)),
        }

        let mut ids = Vec::new();
        for entry in fs::read_dir(&dir).map_err(|e| StoreError::io("list", &dir, e))? {
            let entry = entry.map_err(|e| StoreError::io("list", &dir, e))?;
            let name = entry.file_name();
            if let Some(id) = name.to_str().and_then(parse_segment_name) {
                ids.push(id);
            }
        }
        ids.sort_unstable();

        let mut latest: HashMap<String, (u8, Entry)> = HashMap::new();
        let mut segments = BTreeMap::new();
        let mut damage = Vec::new();
        let mut last_clean = None;
        for (i, &id) in ids.iter().enumerate() {
            let path = dir.join(segment_name(id));
            let file = OpenOptions::new()
                .read(true)
                .write(true)
                .open(&path)
                .map_err(|e| StoreError::io("open", &path, e))?;
            let is_last = i + 1 == ids.len();
            let mut scan = scan_segment(&file, &path, id, is_last)?;
            if let Some(what) = &scan.damage {
                damage.push((path.clone(), what.clone()));
            }
            if scan.foreign {
                continue; // not ours to touch, nor to append to
            }
            if scan.no_header {
                // A writer crashed before the segment's header was durable: no record of
                // it was acknowledged.
                remove_segment(&path)?;
                continue;
            }
            if is_last && !scan.clean_tail && scan.damage.is_none() {
                // Cut what a crash left after the last whole record, so that nothing of
                // it is ever read as records, and appends can go on from there.
                file.set_len(scan.end)
                    .and_then(|()| file.sync_data())
                    .map_err(|e| StoreError::io("truncate the cut end of", &path, e))?;
                scan.clean_tail = true;
                scan.file_len = scan.end;
            }
            for (key, kind, entry) in scan.records {
                match latest.get(&key) {
                    Some((_, old)) if old.seq > entry.seq => {}
                    _ => {
                        latest.insert(key, (kind, entry));
                    }
                }
            }
            if is_last && scan.clean_tail {
                last_clean = Some((id, scan.end, scan.file_len));
            }
            segments.insert(
                id,
                Segment {
                    file: Arc::new(file),
                    path,
                    used: scan.end - SEGMENT_HEADER_LEN.min(scan.end),
                    live: 0,
                },
            );
        }
        let mut next_seq = 0;
        let mut index = HashMap::with_capacity(latest.len());
        for (key, (kind, entry)) in latest {
            next_seq = next_seq.max(entry.seq + 1);
            if kind == KIND_PUT {
                if let Some(segment) = segments.get_mut(&entry.segment) {
                    segment.live += entry.record_len();
                }
                index.insert(key, entry);
            }
        }

        let mut state = State {
            index,
            segments,
            active: 0,
            tail: 0,
            allocated: 0,
            next_seq,
            damage,
        };
        let pack_fsync = fsync;
        match last_clean {
            // Appends go on where the last segment ends (nothing but zeros after it).
            Some((id, end, len)) if end < SEGMENT_TARGET => {
                state.active = id;
                state.tail = end;
                state.allocated = len;
            }
            _ => {
                let id = ids.last().map_or(0, |id| id + 1);
                new_segment(&dir, &mut state, id, pack_fsync)?;
            }
        }
        let synced = (state.active, state.tail);
        Ok(Pack {
            dir,
            fsync,
            max_object,
            _lock: lock,
            state: Mutex::new(state),
            synced: Mutex::new(synced),
            broken: AtomicBool::new(false),
        })
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Objects up to this size go to the pack on write (0: none).
    pub(crate) fn max_object(&self) -> u32 {
        self.max_object
    }

    /// The live record of `key`, if any.
    pub(crate) fn get(&self, key: &str) -> Option<Found> {
        let state = self.state();
        let entry = *state.index.get(key)?;
        let segment = state.segments.get(&entry.segment)?;
        Some(Found {
            entry,
            file: Arc::clone(&segment.file),
            path: segment.path.clone(),
        })
    }

    /// Whether `key` has a live record.
    pub(crate) fn contains(&self, key: &str) -> bool {
        self.state().index.contains_key(key)
    }

    /// Every live object (key, entry, segment path), in no particular order.
    pub(crate) fn snapshot(&self) -> Vec<(String, Found)> {
        let state = self.state();
        state
            .index
            .iter()
            .filter_map(|(key, entry)| {
                let segment = state.segments.get(&entry.segment)?;
                Some((
                    key.clone(),
                    Found {
                        entry: *entry,
                        file: Arc::clone(&segment.file),
                        path: segment.path.clone(),
                    },
                ))
            })
            .collect()
    }

    /// Damage found when the pack was opened.
    pub(crate) fn damage(&self) -> Vec<(PathBuf, String)> {
        self.state().damage.clone()
    }

    fn check_usable(&self) -> Result<()> {
        if self.broken.load(Ordering::SeqCst) {
            return Err(StoreError::io(
                "append to",
                &self.dir,
                io::Error::other(
                    "an earlier write or fsync of the pack failed; open the store again",
                ),
            ));
        }
        Ok(())
    }

    /// Appends `key` -> `data` (whose BLAKE3 is `hash`) and waits until it is durable
    /// (per the store's durability). Until this returns `Ok`, the previous version of the
    /// key stands after a crash.
    pub(crate) fn put(&self, key: &str, data: &[u8], hash: &[u8; 32]) -> Result<()> {
        self.check_usable()?;
        let (segment, end) = {
            let mut state = self.state();
            let seq = state.next_seq;
            let record = encode_record(KIND_PUT, key, seq, data, hash);
            let (segment, offset) = self.append(&mut state, &record)?;
            state.next_seq += 1;
            let entry = Entry {
                segment,
                offset,
                key_len: key.len() as u32,
                len: data.len() as u32,
                hash: *hash,
                seq,
            };
            state.set_live(key, Some(entry));
            (segment, offset + record.len() as u64)
        };
        self.make_durable(segment, end)?;
        self.compact_if_worthwhile()
    }

    /// Appends a deletion of `key` if it has a live record, and waits until it is durable.
    /// Returns whether there was one.
    pub(crate) fn delete(&self, key: &str) -> Result<bool> {
        if !self.contains(key) {
            return Ok(false);
        }
        self.check_usable()?;
        let (segment, end) = {
            let mut state = self.state();
            if !state.index.contains_key(key) {
                return Ok(false);
            }
            let seq = state.next_seq;
            let record = encode_record(KIND_DELETE, key, seq, &[], &[0; 32]);
            let (segment, offset) = self.append(&mut state, &record)?;
            state.next_seq += 1;
            state.set_live(key, None);
            (segment, offset + record.len() as u64)
        };
        self.make_durable(segment, end)?;
        Ok(true)
    }

    /// Removes every record: the segments go, oldest first (so a crash half-way leaves
    /// only newer records, never brings back older ones), and a fresh one starts.
    pub(crate) fn clear(&self) -> Result<()> {
        self.check_usable()?;
        let mut state = self.state();
        let ids: Vec<u64> = state.segments.keys().copied().collect();
        let next = ids.last().map_or(0, |id| id + 1);
        for id in ids {
            if let Some(segment) = state.segments.remove(&id) {
                remove_segment(&segment.path)?;
            }
        }
        state.index.clear();
        state.damage.clear();
        sync_dir(&self.dir)?;
        new_segment(&self.dir, &mut state, next, self.fsync)
            .inspect_err(|_| self.broken.store(true, Ordering::SeqCst))?;
        Ok(())
    }

    /// Rewrites every segment but the active one, oldest first, dropping what is dead.
    pub(crate) fn compact(&self) -> Result<()> {
        self.check_usable()?;
        let mut state = self.state();
        let sealed: Vec<u64> = state
            .segments
            .keys()
            .copied()
            .filter(|&id| id != state.active)
            .collect();
        for id in sealed {
            self.compact_oldest(&mut state, id)?;
        }
        Ok(())
    }

    /// Compacts the oldest sealed segment if the sealed segments hold more dead bytes than
    /// live ones (so the work done stays proportional to the garbage made).
    fn compact_if_worthwhile(&self) -> Result<()> {
        let mut state = self.state();
        let (used, live) = state
            .segments
            .iter()
            .filter(|(id, _)| **id != state.active)
            .fold((0, 0), |(u, l), (_, s)| (u + s.used, l + s.live));
        if used < SEGMENT_TARGET || live * 2 >= used {
            return Ok(());
        }
        let Some(&oldest) = state.segments.keys().next() else {
            return Ok(());
        };
        if oldest == state.active {
            return Ok(());
        }
        self.compact_oldest(&mut state, oldest)
    }

    /// Copies the live records of the oldest segment `id` to the active one (with their
    /// sequence numbers), makes them durable, then removes the segment. Its deletions are
    /// dropped: every record they shadow is in this segment (it is the oldest), dead.
    fn compact_oldest(&self, state: &mut State, id: u64) -> Result<()> {
        debug_assert_eq!(state.segments.keys().next(), Some(&id));
        let Some(segment) = state.segments.get(&id) else {
            return Ok(());
        };
        let (file, path) = (Arc::clone(&segment.file), segment.path.clone());
        let mut live: Vec<(String, Entry)> = state
            .index
            .iter()
            .filter(|(_, e)| e.segment == id)
            .map(|(k, e)| (k.clone(), *e))
            .collect();
        live.sort_by_key(|(_, e)| e.offset);
        for (key, old) in live {
            let mut record = vec![0u8; old.record_len() as usize];
            read_exact_at(&file, &mut record, old.offset)
                .map_err(|e| StoreError::io("read", &path, e))?;
            let (segment, offset) = self.append(state, &record)?;
            let entry = Entry {
                segment,
                offset,
                ..old
            };
            state.set_live(&key, Some(entry));
        }
        // Everything copied is durable before the old copies go. This runs whatever the
        // store's durability: a segment removed ahead of a newer one's deletions could
        // otherwise come back after a crash and revive deleted keys.
        let active = &state.segments[&state.active];
        active.file.sync_data().map_err(|e| {
            self.broken.store(true, Ordering::SeqCst);
            StoreError::io("fsync", &active.path, e)
        })?;
        state.segments.remove(&id);
        state.damage.retain(|(p, _)| *p != path);
        remove_segment(&path)?;
        sync_dir(&self.dir)
    }

    /// Writes `record` at the active segment's tail (rolling to a new segment first if it
    /// would pass the target size); returns (segment, offset). The caller updates the index.
    fn append(&self, state: &mut State, record: &[u8]) -> Result<(u64, u64)> {
        let len = record.len() as u64;
        if state.tail + len > SEGMENT_TARGET && state.tail > SEGMENT_HEADER_LEN {
            self.roll(state)?;
        }
        let active = state.active;
        let segment = &state.segments[&active];
        let (file, path) = (Arc::clone(&segment.file), segment.path.clone());
        let failed = |e: io::Error| {
            self.broken.store(true, Ordering::SeqCst);
            StoreError::io("append to", &path, e)
        };
        // Zero-filled space only pays off for the fdatasync of durable appends; without
        // them the file just grows.
        if self.fsync && state.tail + len > state.allocated {
            let grow = EXTEND_STEP.max(state.tail + len - state.allocated);
            zero_fill(&file, state.allocated, grow).map_err(failed)?;
            state.allocated += grow;
        }
        let offset = state.tail;
        write_all_at(&file, record, offset).map_err(failed)?;
        state.tail += len;
        if let Some(segment) = state.segments.get_mut(&active) {
            segment.used += len;
        }
        Ok((active, offset))
    }

    /// Seals the active segment (made durable first) and starts the next one.
    fn roll(&self, state: &mut State) -> Result<()> {
        // Always, whatever the durability: compaction relies on sealed segments being
        // durable, and it costs one fdatasync per segment.
        let active = &state.segments[&state.active];
        active.file.sync_data().map_err(|e| {
            self.broken.store(true, Ordering::SeqCst);
            StoreError::io("fsync", &active.path, e)
        })?;
        let next = state.active + 1;
        new_segment(&self.dir, state, next, self.fsync)
            .inspect_err(|_| self.broken.store(true, Ordering::SeqCst))
    }

    /// Waits until the append ending at (`segment`, `end`) is durable: one `fdatasync`
    /// covers every append made before it, so concurrent writers share them.
    fn make_durable(&self, segment: u64, end: u64) -> Result<()> {
        if !self.fsync {
            return Ok(());
        }
        let mut synced = self.synced.lock().unwrap_or_else(PoisonError::into_inner);
        if *synced >= (segment, end) {
            return Ok(());
        }
        let (file, path, upto) = {
            let state = self.state();
            if state.active > segment {
                return Ok(()); // sealed since: `roll` made it durable
            }
            let active = &state.segments[&state.active];
            (
                Arc::clone(&active.file),
                active.path.clone(),
                (state.active, state.tail),
            )
        };
        file.sync_data().map_err(|e| {
            self.broken.store(true, Ordering::SeqCst);
            StoreError::io("fsync", &path, e)
        })?;
        *synced = upto;
        Ok(())
    }
}

impl State {
    /// Points `key` at `entry` (or at nothing), keeping the segments' live counts.
    fn set_live(&mut self, key: &str, entry: Option<Entry>) {
        let old = match entry {
            Some(entry) => {
                if let Some(segment) = self.segments.get_mut(&entry.segment) {
                    segment.live += entry.record_len();
                }
                self.index.insert(key.to_owned(), entry)
            }
            None => self.index.remove(key),
        };
        if let Some(old) = old
            && let Some(segment) = self.segments.get_mut(&old.segment)
        {
            segment.live -= old.record_len();
        }
    }
}

fn segment_name(id: u64) -> String {
    format!("{id:016x}.seg")
}

fn parse_segment_name(name: &str) -> Option<u64> {
    let hex = name.strip_suffix(".seg")?;
    if hex.len() != 16 {
        return None;
    }
    u64::from_str_radix(hex, 16).ok()
}

/// Creates segment `id` (header, zero-filled), durably, and makes it the active one.
fn new_segment(dir: &Path, state: &mut State, id: u64, fsync: bool) -> Result<()> {
    let path = dir.join(segment_name(id));
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .open(&path)
        .map_err(|e| StoreError::io("create", &path, e))?;
    let mut header = [0u8; SEGMENT_HEADER_LEN as usize];
    header[0..8].copy_from_slice(&SEGMENT_MAGIC);
    header[8..12].copy_from_slice(&SEGMENT_VERSION.to_le_bytes());
    let init = write_all_at(&file, &header, 0)
        .and_then(|()| {
            if fsync {
                zero_fill(&file, SEGMENT_HEADER_LEN, EXTEND_STEP)
            } else {
                Ok(())
            }
        })
        .and_then(|()| if fsync { file.sync_data() } else { Ok(()) });
    if let Err(e) = init {
        let _ = fs::remove_file(&path);
        return Err(StoreError::io("create", &path, e));
    }
    if fsync {
        sync_dir(dir)?;
    }
    state.segments.insert(
        id,
        Segment {
            file: Arc::new(file),
            path,
            used: 0,
            live: 0,
        },
    );
    state.active = id;
    state.tail = SEGMENT_HEADER_LEN;
    state.allocated = SEGMENT_HEADER_LEN + if fsync { EXTEND_STEP } else { 0 };
    Ok(())
}

fn remove_segment(path: &Path) -> Result<()> {
    match fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == ErrorKind::NotFound => Ok(()),
        Err(e) => Err(StoreError::io("remove", path, e)),
    }
}

/// Encodes one record: header, key, data.
fn encode_record(kind: u8, key: &str, seq: u64, data: &[u8], hash: &[u8; 32]) -> Vec<u8> {
    let mut out = Vec::with_capacity(RECORD_HEADER_LEN + key.len() + data.len());
    out.extend_from_slice(&RECORD_MAGIC);
    out.push(kind);
    out.extend_from_slice(&[0; 3]);
    out.extend_from_slice(&(key.len() as u32).to_le_bytes());
    out.extend_from_slice(&(data.len() as u32).to_le_bytes());
    out.extend_from_slice(&seq.to_le_bytes());
    out.extend_from_slice(hash);
    let check = header_check(&out[..56], key.as_bytes());
    out.extend_from_slice(&check);
    out.extend_from_slice(key.as_bytes());
    out.extend_from_slice(data);
    out
}

/// The first 16 bytes of BLAKE3(header[0..56] || key).
fn header_check(fixed: &[u8], key: &[u8]) -> [u8; 16] {
    let mut hasher = blake3::Hasher::new();
    hasher.update(fixed);
    hasher.update(key);
    let mut check = [0u8; 16];
    check.copy_from_slice(&hasher.finalize().as_bytes()[..16]);
    check
}

/// A decoded record header.
struct RecordHeader {
    kind: u8,
    key_len: u32,
    len: u32,
    seq: u64,
    hash: [u8; 32],
    check: [u8; 16],
}

fn parse_header(h: &[u8; RECORD_HEADER_LEN]) -> Option<RecordHeader> {
    let u32_at = |i: usize| u32::from_le_bytes([h[i], h[i + 1], h[i + 2], h[i + 3]]);
    if h[0..4] != RECORD_MAGIC || h[5..8] != [0; 3] {
        return None;
    }
    let kind = h[4];
    let key_len = u32_at(8);
    let len = u32_at(12);
    let valid_kind = kind == KIND_PUT || (kind == KIND_DELETE && len == 0);
    if !valid_kind || key_len == 0 || key_len as usize > MAX_KEY_LEN || len > MAX_PACKED {
        return None;
    }
    let mut seq = [0u8; 8];
    seq.copy_from_slice(&h[16..24]);
    let mut hash = [0u8; 32];
    hash.copy_from_slice(&h[24..56]);
    let mut check = [0u8; 16];
    check.copy_from_slice(&h[56..72]);
    Some(RecordHeader {
        kind,
        key_len,
        len,
        seq: u64::from_le_bytes(seq),
        hash,
        check,
    })
}

/// What a scan of one segment found.
struct Scan {
    /// (key, kind, entry) of every valid record, in order.
    records: Vec<(String, u8, Entry)>,
    /// Offset just past the last valid record.
    end: u64,
    file_len: u64,
    /// Nothing but zeros after `end`: appends may go on there.
    clean_tail: bool,
    /// Not a pack segment (or a version this build does not read): left alone.
    foreign: bool,
    /// The segment header is missing (a crash while the segment was created).
    no_header: bool,
    damage: Option<String>,
}

/// Reads a segment from the start: every record up to the first invalid header. In the
/// last segment an invalid header, or a final record whose data does not match its hash,
/// is a write cut short by a crash (never acknowledged): the scan ends there. Anywhere
/// else it is damage, reported (the records after it cannot be found).
fn scan_segment(file: &File, path: &Path, id: u64, is_last: bool) -> Result<Scan> {
    let io_err = |e| StoreError::io("read", path, e);
    let file_len = file.metadata().map_err(io_err)?.len();
    let mut reader = BufReader::with_capacity(256 * 1024, file);
    let mut scan = Scan {
        records: Vec::new(),
        end: SEGMENT_HEADER_LEN,
        file_len,
        clean_tail: false,
        foreign: false,
        no_header: false,
        damage: None,
    };
    let mut header = [0u8; SEGMENT_HEADER_LEN as usize];
    let got = read_full(&mut reader, &mut header).map_err(io_err)?;
    if got < header.len() || header == [0; SEGMENT_HEADER_LEN as usize] {
        scan.no_header = true;
        return Ok(scan);
    }
    if header[0..8] != SEGMENT_MAGIC {
        scan.foreign = true;
        scan.damage = Some("not a dfs-store pack segment (bad magic); left alone".into());
        return Ok(scan);
    }
    let version = u32::from_le_bytes([header[8], header[9], header[10], header[11]]);
    if version != SEGMENT_VERSION {
        return Err(StoreError::UnsupportedVersion {
            path: path.to_owned(),
            version: u16::try_from(version).unwrap_or(u16::MAX),
        });
    }
    let mut pos = SEGMENT_HEADER_LEN;
    let mut last_mismatch = false;
    let mut buf = vec![0u8; 64 * 1024];
    // Each iteration reads one record; `break` at the first one that is not whole.
    loop {
        let mut h = [0u8; RECORD_HEADER_LEN];
        let got = read_full(&mut reader, &mut h).map_err(io_err)?;
        let parsed = if got == RECORD_HEADER_LEN {
            parse_header(&h)
        } else {
            None
        };
        let Some(rec) = parsed else {
            let zeros = h[..got].iter().all(|&b| b == 0);
            scan.clean_tail = zeros && rest_is_zero(&mut reader, &mut buf).map_err(io_err)?;
            break;
        };
        let mut key = vec![0u8; rec.key_len as usize];
        if read_full(&mut reader, &mut key).map_err(io_err)? < key.len()
            || header_check(&h[..56], &key) != rec.check
        {
            break;
        }
        let Ok(key) = String::from_utf8(key) else {
            break;
        };
        let data_end = pos + (RECORD_HEADER_LEN + key.len()) as u64 + u64::from(rec.len);
        if data_end > file_len {
            break; // the file ends inside the record's bytes
        }
        if is_last {
            // Only the newest segment can end with a cut append: hash its records' bytes
            // to find one. Elsewhere reads and scrubs check them.
            let mut hasher = blake3::Hasher::new();
            let mut left = rec.len as usize;
            while left > 0 {
                let take = left.min(buf.len());
                let n = read_full(&mut reader, &mut buf[..take]).map_err(io_err)?;
                hasher.update(&buf[..n]);
                if n < take {
                    break;
                }
                left -= n;
            }
            if left > 0 {
                break; // the file shrank under us
            }
            last_mismatch = rec.kind == KIND_PUT && *hasher.finalize().as_bytes() != rec.hash;
        } else {
            reader.seek_relative(i64::from(rec.len)).map_err(io_err)?;
        }
        let entry = Entry {
            segment: id,
            offset: pos,
            key_len: rec.key_len,
            len: rec.len,
            hash: rec.hash,
            seq: rec.seq,
        };
        pos += entry.record_len();
        scan.records.push((key, rec.kind, entry));
        scan.end = pos;
    }
    if scan.clean_tail {
        // A mismatched record followed by nothing stays indexed in a sealed segment
        // (reads report it), but in the newest one it is an append cut short (below).
        if !(is_last && last_mismatch) {
            return Ok(scan);
        }
        scan.clean_tail = false;
    }
    // The scan stopped before the zeros: a cut append, or damage. Valid records further on
    // mean damage (an append is only ever cut at the end): they are left in place, never
    // truncated away, and reported.
    drop(reader);
    if let Some(next) = find_record(file, scan.end + 1, file_len).map_err(io_err)? {
        scan.damage = Some(format!(
            "invalid record at offset {}; the valid records from offset {next} on are not \
             read (left in place)",
            scan.end
        ));
    } else if !is_last {
        scan.damage = Some(format!(
            "the segment ends with an invalid record at offset {}",
            scan.end
        ));
    } else if last_mismatch {
        // The newest segment's final record's bytes never all reached the disk: the
        // write was not acknowledged.
        if let Some((_, _, entry)) = scan.records.pop() {
            scan.end = entry.offset;
        }
    }
    Ok(scan)
}

/// The offset of the first valid record header (magic, fields, header check) at or after
/// `from`, if any.
fn find_record(file: &File, from: u64, file_len: u64) -> io::Result<Option<u64>> {
    const WINDOW: usize = 1 << 20;
    let mut window = vec![0u8; WINDOW];
    let mut at = from;
    while at + (RECORD_HEADER_LEN as u64) <= file_len {
        let n = (file_len - at).min(WINDOW as u64) as usize;
        read_exact_at(file, &mut window[..n], at)?;
        let mut i = 0;
        while let Some(hit) = window[i..n]
            .windows(RECORD_MAGIC.len())
            .position(|w| w == RECORD_MAGIC)
        {
            let offset = at + (i + hit) as u64;
            if is_record_at(file, offset, file_len)? {
                return Ok(Some(offset));
            }
            i += hit + 1;
        }
        // Step back a little so that a magic split across windows is seen.
        at += (n as u64)
            .saturating_sub(RECORD_MAGIC.len() as u64 - 1)
            .max(1);
    }
    Ok(None)
}

/// Whether a record with a valid header (and header check) starts at `offset`.
fn is_record_at(file: &File, offset: u64, file_len: u64) -> io::Result<bool> {
    let mut h = [0u8; RECORD_HEADER_LEN];
    if offset + RECORD_HEADER_LEN as u64 > file_len {
        return Ok(false);
    }
    read_exact_at(file, &mut h, offset)?;
    let Some(rec) = parse_header(&h) else {
        return Ok(false);
    };
    let key_at = offset + RECORD_HEADER_LEN as u64;
    if key_at + u64::from(rec.key_len) > file_len {
        return Ok(false);
    }
    let mut key = vec![0u8; rec.key_len as usize];
    read_exact_at(file, &mut key, key_at)?;
    Ok(header_check(&h[..56], &key) == rec.check)
}

/// Reads until `buf` is full or the end; returns the bytes read.
fn read_full(reader: &mut impl Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match reader.read(&mut buf[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(filled)
}

/// Whether everything left in `reader` is zero.
fn rest_is_zero(reader: &mut impl Read, buf: &mut [u8]) -> io::Result<bool> {
    loop {
        let n = read_full(reader, buf)?;
        if buf[..n].iter().any(|&b| b != 0) {
            return Ok(false);
        }
        if n < buf.len() {
            return Ok(true);
        }
    }
}

fn zero_fill(file: &File, at: u64, len: u64) -> io::Result<()> {
    let zeros = vec![0u8; EXTEND_STEP.min(len) as usize];
    let mut done = 0;
    while done < len {
        let n = (len - done).min(zeros.len() as u64) as usize;
        write_all_at(file, &zeros[..n], at + done)?;
        done += n as u64;
    }
    Ok(())
}

fn sync_dir(dir: &Path) -> Result<()> {
    crate::store::sync_dir(dir)
}

#[cfg(unix)]
fn read_exact_at(file: &File, buf: &mut [u8], offset: u64) -> io::Result<()> {
    std::os::unix::fs::FileExt::read_exact_at(file, buf, offset)
}

#[cfg(unix)]
fn write_all_at(file: &File, buf: &[u8], offset: u64) -> io::Result<()> {
    std::os::unix::fs::FileExt::write_all_at(file, buf, offset)
}

#[cfg(windows)]
fn read_exact_at(file: &File, mut buf: &mut [u8], mut offset: u64) -> io::Result<()> {
    use std::os::windows::fs::FileExt;
    while !buf.is_empty() {
        match file.seek_read(buf, offset) {
            Ok(0) => return Err(io::Error::from(ErrorKind::UnexpectedEof)),
            Ok(n) => {
                buf = &mut buf[n..];
                offset += n as u64;
            }
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

#[cfg(windows)]
fn write_all_at(file: &File, mut buf: &[u8], mut offset: u64) -> io::Result<()> {
    use std::os::windows::fs::FileExt;
    while !buf.is_empty() {
        match file.seek_write(buf, offset) {
            Ok(0) => return Err(io::Error::from(ErrorKind::WriteZero)),
            Ok(n) => {
                buf = &buf[n..];
                offset += n as u64;
            }
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn put(pack: &Pack, key: &str, data: &[u8]) {
        pack.put(key, data, blake3::hash(data).as_bytes()).unwrap();
    }

    fn get(pack: &Pack, key: &str) -> Option<Vec<u8>> {
        let found = pack.get(key)?;
        let data = found.read_data(key).unwrap();
        assert_eq!(blake3::hash(&data).as_bytes(), found.entry.hash());
        Some(data)
    }

    #[test]
    fn records_survive_reopen_and_newest_wins() {
        let dir = tempfile::tempdir().unwrap();
        {
            let pack = Pack::open(dir.path(), true, 4096).unwrap();
            put(&pack, "a", b"one");
            put(&pack, "b", b"two");
            put(&pack, "a", b"three");
            assert!(pack.delete("b").unwrap());
            assert!(!pack.delete("b").unwrap());
            put(&pack, "c", b"");
        }
        let pack = Pack::open(dir.path(), true, 4096).unwrap();
        assert_eq!(get(&pack, "a").unwrap(), b"three");
        assert_eq!(get(&pack, "b"), None);
        assert_eq!(get(&pack, "c").unwrap(), b"");
        // Appends went on in the same segment.
        assert_eq!(pack.state().segments.len(), 1);
        put(&pack, "d", b"four");
        drop(pack);
        let pack = Pack::open(dir.path(), true, 4096).unwrap();
        assert_eq!(get(&pack, "d").unwrap(), b"four");
        assert_eq!(get(&pack, "a").unwrap(), b"three");
        // A delete as the newest record stands too (it has no bytes to check).
        assert!(pack.delete("d").unwrap());
        drop(pack);
        let pack = Pack::open(dir.path(), true, 4096).unwrap();
        assert_eq!(get(&pack, "d"), None);
    }

    #[test]
    fn a_second_open_is_refused_while_the_first_lives() {
        let dir = tempfile::tempdir().unwrap();
        let pack = Pack::open(dir.path(), false, 4096).unwrap();
        let err = Pack::open(dir.path(), false, 4096).unwrap_err();
        assert!(matches!(err, StoreError::Locked { .. }), "{err}");
        drop(pack);
        Pack::open(dir.path(), false, 4096).unwrap();
    }

    #[test]
    fn a_cut_last_record_is_dropped_and_appends_go_to_a_new_segment() {
        let dir = tempfile::tempdir().unwrap();
        let seg = dir.path().join(PACK_DIR).join(segment_name(0));
        let end;
        {
            let pack = Pack::open(dir.path(), false, 4096).unwrap();
            put(&pack, "kept", b"whole");
            end = pack.state().tail;
            put(&pack, "cut", &[7u8; 3000]);
        }
        // Lose the end of the last record's data, as a crash mid-write can.
        let file = OpenOptions::new().write(true).open(&seg).unwrap();
        write_all_at(&file, &[0u8; 100], end + 72 + 3 + 2900).unwrap();
        drop(file);
        let pack = Pack::open(dir.path(), false, 4096).unwrap();
        assert_eq!(get(&pack, "kept").unwrap(), b"whole");
        assert!(pack.get("cut").is_none());
        assert!(pack.damage().is_empty());
        assert_eq!(
            fs::metadata(&seg).unwrap().len(),
            end,
            "the cut record is truncated away"
        );
        put(&pack, "new", b"x");
        drop(pack);
        let pack = Pack::open(dir.path(), false, 4096).unwrap();
        assert_eq!(get(&pack, "new").unwrap(), b"x");
        assert!(pack.get("cut").is_none());
    }

    #[test]
    fn damage_in_a_sealed_segment_is_reported_and_bad_data_never_read_as_good() {
        let dir = tempfile::tempdir().unwrap();
        let seg = dir.path().join(PACK_DIR).join(segment_name(0));
        {
            let pack = Pack::open(dir.path(), false, 4096).unwrap();
            put(&pack, "first", b"aaaa");
            put(&pack, "second", b"bbbb");
            let mut state = pack.state();
            pack.roll(&mut state).unwrap();
        }
        // Flip a data byte of the first record: still indexed, its hash tells.
        let file = OpenOptions::new().write(true).open(&seg).unwrap();
        let data_at = SEGMENT_HEADER_LEN + 72 + 5;
        write_all_at(&file, b"X", data_at).unwrap();
        drop(file);
        let pack = Pack::open(dir.path(), false, 4096).unwrap();
        let found = pack.get("first").unwrap();
        let data = found.read_data("first").unwrap();
        assert_ne!(blake3::hash(&data).as_bytes(), found.entry.hash());
        assert_eq!(get(&pack, "second").unwrap(), b"bbbb");
        drop(pack);
        // Break the first record's header: the segment's records are lost, and reported.
        let file = OpenOptions::new().write(true).open(&seg).unwrap();
        write_all_at(&file, b"Y", SEGMENT_HEADER_LEN + 20).unwrap();
        drop(file);
        let pack = Pack::open(dir.path(), false, 4096).unwrap();
        assert!(pack.get("second").is_none());
        let damage = pack.damage();
        assert_eq!(damage.len(), 1, "{damage:?}");
        assert!(
            damage[0].1.contains("invalid record at offset 16"),
            "{damage:?}"
        );
    }

    #[test]
    fn damage_in_the_newest_segment_with_records_after_it_is_never_truncated() {
        let dir = tempfile::tempdir().unwrap();
        let seg = dir.path().join(PACK_DIR).join(segment_name(0));
        {
            let pack = Pack::open(dir.path(), true, 4096).unwrap();
            for i in 0..10u8 {
                put(&pack, &format!("k{i}"), &[i; 500]);
            }
        }
        let len = fs::metadata(&seg).unwrap().len();
        let before = fs::read(&seg).unwrap();
        // Break the third record's header (bit rot, not a cut append: records follow).
        let third = SEGMENT_HEADER_LEN + 2 * (72 + 2 + 500);
        let file = OpenOptions::new().write(true).open(&seg).unwrap();
        write_all_at(&file, b"Z", third + 30).unwrap();
        drop(file);
        let pack = Pack::open(dir.path(), true, 4096).unwrap();
        assert_eq!(get(&pack, "k1").unwrap(), [1; 500]);
        assert!(
            pack.get("k5").is_none(),
            "records after the damage are not read"
        );
        let damage = pack.damage();
        assert_eq!(damage.len(), 1, "{damage:?}");
        assert_eq!(fs::metadata(&seg).unwrap().len(), len, "nothing truncated");
        assert_ne!(pack.state().active, 0, "appends go to a new segment");
        put(&pack, "new", b"n");
        drop(pack);
        let after = fs::read(&seg).unwrap();
        let differing = before.iter().zip(&after).filter(|(a, b)| a != b).count();
        assert_eq!(differing, 1, "only the flipped byte differs");
        let pack = Pack::open(dir.path(), true, 4096).unwrap();
        assert_eq!(get(&pack, "new").unwrap(), b"n");
        assert_eq!(pack.damage().len(), 1);
    }

    #[test]
    fn compaction_keeps_live_records_and_does_not_revive_deleted_ones() {
        let dir = tempfile::tempdir().unwrap();
        {
            let pack = Pack::open(dir.path(), true, 4096).unwrap();
            put(&pack, "stays", b"1");
            put(&pack, "overwritten", b"old");
            put(&pack, "deleted", b"gone");
            {
                let mut state = pack.state();
                pack.roll(&mut state).unwrap();
            }
            put(&pack, "overwritten", b"new");
            assert!(pack.delete("deleted").unwrap());
            {
                let mut state = pack.state();
                pack.roll(&mut state).unwrap();
            }
            pack.compact().unwrap();
            let state = pack.state();
            assert_eq!(state.segments.len(), 1, "only the active segment is left");
            let active = &state.segments[&state.active];
            assert_eq!(active.live, active.used);
        }
        let pack = Pack::open(dir.path(), true, 4096).unwrap();
        assert_eq!(get(&pack, "stays").unwrap(), b"1");
        assert_eq!(get(&pack, "overwritten").unwrap(), b"new");
        assert_eq!(get(&pack, "deleted"), None);
    }

    #[test]
    fn clear_removes_everything_durably() {
        let dir = tempfile::tempdir().unwrap();
        {
            let pack = Pack::open(dir.path(), true, 4096).unwrap();
            put(&pack, "a", b"1");
            pack.clear().unwrap();
            assert!(pack.get("a").is_none());
            put(&pack, "b", b"2");
        }
        let pack = Pack::open(dir.path(), true, 4096).unwrap();
        assert!(pack.get("a").is_none());
        assert_eq!(get(&pack, "b").unwrap(), b"2");
    }

    #[test]
    fn segments_roll_at_the_target_size() {
        let dir = tempfile::tempdir().unwrap();
        let pack = Pack::open(dir.path(), false, MAX_PACKED).unwrap();
        let big = vec![5u8; MAX_PACKED as usize];
        for i in 0..70 {
            put(&pack, &format!("k{i}"), &big);
        }
        let segments = pack.state().segments.len();
        assert!(segments >= 2, "{segments}");
        drop(pack);
        let pack = Pack::open(dir.path(), false, MAX_PACKED).unwrap();
        for i in 0..70 {
            assert_eq!(get(&pack, &format!("k{i}")).unwrap(), big);
        }
    }

    #[test]
    fn foreign_files_in_the_pack_directory_are_left_alone() {
        let dir = tempfile::tempdir().unwrap();
        fs::create_dir_all(dir.path().join(PACK_DIR)).unwrap();
        let foreign = dir.path().join(PACK_DIR).join(segment_name(3));
        fs::write(&foreign, b"something else entirely").unwrap();
        let pack = Pack::open(dir.path(), false, 4096).unwrap();
        put(&pack, "k", b"v");
        assert_eq!(pack.damage().len(), 1);
        assert_eq!(fs::read(&foreign).unwrap(), b"something else entirely");
        drop(pack);
        let pack = Pack::open(dir.path(), false, 4096).unwrap();
        assert_eq!(get(&pack, "k").unwrap(), b"v");
    }
}
