//! The pack: small objects appended to a log of segment files (opt-in, see
//! [`StoreBuilder::pack_small_objects`](crate::StoreBuilder::pack_small_objects) and
//! `FORMAT.md`, "Pack").
//!
//! A durable write of a small object as its own file costs two journal commits (the new
//! file, then the rename); an append to a segment whose blocks are already allocated and
//! zero-filled costs one data flush. The pack keeps an in-memory index (key -> record)
//! rebuilt by scanning the segments at open; it takes precedence over object files, which
//! is what makes every ordering in [`Store`](crate::Store)'s writes crash-safe.

use std::collections::{BTreeMap, HashMap};
use std::fs::{self, File, OpenOptions};
use std::io::{self, BufReader, ErrorKind, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError, TryLockError};

use crate::error::{Result, StoreError};
use crate::path::MAX_KEY_LEN;
use crate::store::read_up_to;

/// Directory under the root holding the segments.
pub(crate) const PACK_DIR: &str = "pack";
/// Suffix compaction gives a damaged segment it sets aside instead of removing.
const DAMAGED_SUFFIX: &str = ".damaged";
/// First bytes of every segment file.
const SEGMENT_MAGIC: [u8; 8] = *b"dfs-pack";
/// The segment format version this build writes and reads.
const SEGMENT_VERSION: u32 = 1;
/// Segment header: magic, version, flags.
const SEGMENT_HEADER_LEN: u64 = 16;
/// Segment flag: every older segment is cleared (`Store::clear`).
const FLAG_CLEARS: u32 = 1;
/// First bytes of every record.
const RECORD_MAGIC: [u8; 4] = *b"dfsR";
/// Fixed part of a record header (the key and the data follow it).
const RECORD_HEADER_LEN: usize = 72;
const KIND_PUT: u8 = 1;
const KIND_DELETE: u8 = 2;
/// A put found cut short when the pack was opened, voided so it is never read.
const KIND_VOID: u8 = 3;
/// Record flag (byte 5): copied by compaction from an older segment, where it was durable.
const FLAG_COPIED: u8 = 1;
/// The largest object a pack takes: the most
/// [`StoreBuilder::pack_small_objects`](crate::StoreBuilder::pack_small_objects) accepts.
///
/// ```
/// assert_eq!(dfs_store::MAX_PACKED, 1 << 20);
/// ```
pub const MAX_PACKED: u32 = 1 << 20;
/// A segment takes no more appends once it is this long (a record never straddles two).
const SEGMENT_TARGET: u64 = 64 << 20;
/// A compaction copies this many bytes of records at most under one hold of the state
/// lock, so reads and writes wait at most that long for it.
const COMPACT_BATCH: u64 = 1 << 20;
/// A compaction flushes its copies with no lock held after this many bytes.
const COMPACT_FLUSH: u64 = 8 << 20;
/// With fsync, the active segment is zero-filled ahead of the appends by this much at a
/// time, so an append overwrites allocated blocks and its `fdatasync` flushes data, not
/// metadata.
const EXTEND_STEP: u64 = 1 << 20;

/// The size of a store's pack, from [`Store::pack_stats`](crate::Store::pack_stats).
///
/// Writes compact the oldest sealed segment once the sealed segments hold 64 MiB or more
/// and less than half of it is live; [`Store::compact`](crate::Store::compact) rewrites
/// everything at once, leaving `live_bytes == used_bytes` (but for the small records that
/// keep a lost write reported by scrubs until its key is written again).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct PackStats {
    /// Packed objects.
    pub objects: u64,
    /// Segment files in use.
    pub segments: u64,
    /// Bytes of records in the segments (headers, keys and objects, dead ones included).
    pub used_bytes: u64,
    /// Bytes of the live records: what a full compaction keeps.
    pub live_bytes: u64,
}

/// A file of the pack, the key concerned if known, and what is wrong, reported by scrubs.
type Damage = (PathBuf, Option<String>, String);

/// Where one object's record is: 32 bytes per packed object in memory, besides its key.
/// The object's hash is read from the record's header when needed.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Entry {
    segment: u64,
    seq: u64,
    /// Offset of the record header in the segment (segments stay far below 4 GiB).
    offset: u32,
    len: u32,
    key_len: u16,
    /// A delete record (only while the pack is opened: the index holds live puts).
    deleted: bool,
}

impl Entry {
    fn record_len(&self) -> u64 {
        RECORD_HEADER_LEN as u64 + u64::from(self.key_len) + u64::from(self.len)
    }

    fn offset(&self) -> u64 {
        u64::from(self.offset)
    }

    /// The object's size.
    pub(crate) fn size(&self) -> u64 {
        u64::from(self.len)
    }
}

/// A packed object's record, read whole and checked: its header's hash and its bytes.
#[derive(Debug)]
pub(crate) struct Record {
    /// The BLAKE3 hash the bytes must have (from the header; the caller checks the bytes).
    pub(crate) hash: [u8; 32],
    /// Header, key and bytes: the object's bytes start at `data_start`.
    pub(crate) bytes: Vec<u8>,
    pub(crate) data_start: usize,
}

/// One live object, found in the index.
#[derive(Debug, Clone)]
pub(crate) struct Found {
    pub(crate) entry: Entry,
    pub(crate) file: Arc<File>,
    pub(crate) path: PathBuf,
}

impl Found {
    /// Reads `len` bytes of the record from its start.
    fn read_prefix(&self, key: &str, len: usize) -> Result<Vec<u8>> {
        let mut bytes = vec![0u8; len];
        match read_exact_at(&self.file, &mut bytes, self.entry.offset()) {
            Ok(()) => Ok(bytes),
            Err(e) if e.kind() == ErrorKind::UnexpectedEof => Err(StoreError::corrupt(
                &self.path,
                Some(key),
                "pack segment ends inside the object's record",
            )),
            Err(e) => Err(StoreError::io("read", &self.path, e)),
        }
    }

    /// Checks the header and key at the start of `bytes`; returns the object's hash.
    fn check_header(&self, key: &str, bytes: &[u8]) -> Result<[u8; 32]> {
        match put_header(bytes, key) {
            Some(rec) if rec.len == self.entry.len => Ok(rec.hash),
            _ => Err(StoreError::corrupt(
                &self.path,
                Some(key),
                format!(
                    "the pack record at offset {} is damaged (header)",
                    self.entry.offset
                ),
            )),
        }
    }

    /// The object's hash, from its record's (checked) header.
    pub(crate) fn hash(&self, key: &str) -> Result<[u8; 32]> {
        let bytes = self.read_prefix(key, RECORD_HEADER_LEN + key.len())?;
        self.check_header(key, &bytes)
    }

    /// Reads the object's record whole; checks its header (the caller hashes the bytes).
    pub(crate) fn read(&self, key: &str) -> Result<Record> {
        let bytes = self.read_prefix(key, self.entry.record_len() as usize)?;
        let hash = self.check_header(key, &bytes)?;
        Ok(Record {
            hash,
            bytes,
            data_start: RECORD_HEADER_LEN + key.len(),
        })
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
    /// Its header says every older segment is cleared.
    clears: bool,
    /// Damage found in it at open (records after the damage are not read).
    damaged: bool,
}

#[derive(Debug)]
struct State {
    index: HashMap<String, Entry>,
    segments: BTreeMap<u64, Segment>,
    /// The segment appended to.
    active: u64,
    /// Where the next record goes in the active segment.
    tail: u64,
    /// Length of the active segment's file (zero-filled past `tail` with fsync).
    allocated: u64,
    next_seq: u64,
    /// The id of the next segment: after every segment file listed at open, ours or not.
    next_id: u64,
    /// Damage found while opening, reported by scrubs.
    damage: Vec<Damage>,
    /// Why the last automatic compaction failed, and `appended` then: reported by scrubs,
    /// and writes try again only after [`SEGMENT_TARGET`] more bytes were appended (a
    /// failure can cost a segment's worth of reads), or [`Pack::compact`] does.
    compaction_failed: Option<(String, u64)>,
    /// Bytes appended since the pack was opened.
    appended: u64,
    /// Keys whose newest put was voided (key -> its seq, the segment of the void record),
    /// reported by scrubs until the key is written or deleted again. Compaction copies
    /// these voids, so the report outlives their segment.
    lost: HashMap<String, (u64, u64)>,
}

impl State {
    /// `key` was written or deleted: what was reported about an earlier version of it no
    /// longer stands.
    fn superseded(&mut self, key: &str) {
        if !self.lost.is_empty() {
            self.lost.remove(key);
        }
    }

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

    /// The seq for the next record (`u64::MAX` is never written).
    fn seq(&self, dir: &Path) -> Result<u64> {
        if self.next_seq == u64::MAX {
            return Err(StoreError::corrupt(
                dir,
                None,
                "pack sequence numbers are exhausted",
            ));
        }
        Ok(self.next_seq)
    }

    /// The active segment's file and path.
    fn active(&self) -> Result<(Arc<File>, PathBuf)> {
        match self.segments.get(&self.active) {
            Some(segment) => Ok((Arc::clone(&segment.file), segment.path.clone())),
            None => Err(StoreError::io(
                "append to",
                PathBuf::from(segment_name(self.active)),
                io::Error::other("the pack has no active segment after an earlier failure"),
            )),
        }
    }
}

/// The group commit's state.
#[derive(Debug)]
struct SyncState {
    /// The (segment, offset) up to which appends are known durable.
    durable: (u64, u64),
    /// A writer is in `fdatasync` for everything appended before it started.
    flushing: bool,
}

/// The pack of one store.
#[derive(Debug)]
pub(crate) struct Pack {
    dir: PathBuf,
    fsync: bool,
    /// Objects up to this size are written here (0: the pack only serves what it holds).
    max_object: u32,
    state: Mutex<State>,
    /// Group commit: what is durable, and whether a writer is flushing for the others.
    sync: Mutex<SyncState>,
    /// Notified when a flush ends.
    flushed: Condvar,
    /// Set when a write or fsync of a segment failed: what reached the disk is unknown,
    /// so no append is acknowledged any more until the store is opened again.
    broken: AtomicBool,
    /// Held by a compaction: one at a time (writes skip theirs while one runs).
    compacting: Mutex<()>,
}

impl Pack {
    /// Whether `root` has a pack.
    pub(crate) fn exists(root: &Path) -> bool {
        root.join(PACK_DIR).is_dir()
    }

    /// Opens (creating if needed) the pack under `root`: scans every segment and rebuilds
    /// the index. The caller holds the root's lock exclusively.
    pub(crate) fn open(root: &Path, fsync: bool, max_object: u32) -> Result<Pack> {
        let dir = root.join(PACK_DIR);
        let created = !dir.is_dir();
        fs::create_dir_all(&dir).map_err(|e| StoreError::io("create directory", &dir, e))?;
        if created && fsync {
            sync_dir(root)?;
        }
        let (ids, mut damage) = list_segments(&dir)?;
        // New segments take ids after every segment file, ours or not.
        let highest = ids.last().copied();

        // Headers first: the newest segment that clears everything older hides those
        // (a clear that removed them only in part); they go now.
        let mut headers = Vec::with_capacity(ids.len());
        let mut floor = 0;
        for id in ids {
            let path = dir.join(segment_name(id));
            // A directory, link or device with a segment's name is not ours to open.
            match fs::symlink_metadata(&path) {
                Ok(meta) if meta.is_file() => {}
                Ok(_) => {
                    let what = "not a regular file, with a segment's name; left alone";
                    damage.push((path, None, what.to_owned()));
                    continue;
                }
                Err(e) => return Err(StoreError::io("stat", &path, e)),
            }
            let file = OpenOptions::new()
                .read(true)
                .write(true)
                .open(&path)
                .map_err(|e| StoreError::io("open", &path, e))?;
            match read_segment_header(&file, &path)? {
                Header::Ours { clears } => {
                    if clears {
                        floor = id;
                    }
                    headers.push((id, path, file, clears));
                }
                Header::Empty => remove_file(&path)?,
                Header::Damaged(what) | Header::Foreign(what) => {
                    damage.push((path, None, what));
                }
            }
        }
        let mut removed = false;
        headers.retain(|(id, path, _, _)| {
            let keep = *id >= floor;
            removed |= !keep && remove_file(path).is_ok();
            keep
        });
        if removed {
            sync_dir(&dir)?;
        }

        let mut index: HashMap<String, Entry> = HashMap::new();
        let mut segments: BTreeMap<u64, Segment> = BTreeMap::new();
        let mut resume = None;
        // Puts found cut short (key, seq, segment), voided at this open or an earlier one.
        let mut voided: Vec<(String, u64, u64)> = Vec::new();
        let count = headers.len();
        for (i, (id, path, file, clears)) in headers.into_iter().enumerate() {
            // The newest segment (where an append can have been cut short) is the last of
            // ours only if no other file took a later id (say one a crash left empty
            // while the next segment was created, after this one was made durable).
            let newest = i + 1 == count && Some(id) == highest;
            let mut scan = scan_segment(&file, &path, id, newest, &mut index)?;
            for (key, entry) in std::mem::take(&mut scan.ties) {
                let Some(held) = index.get(&key).copied() else {
                    continue;
                };
                // A later record of this segment replaced both copies: nothing to decide.
                if held.seq != entry.seq {
                    continue;
                }
                // The held copy is in an earlier segment, or earlier in this one.
                let held_file = if held.segment == id {
                    Some(&file)
                } else {
                    segments.get(&held.segment).map(|s| &*s.file)
                };
                let keep_held = held_file.is_some_and(|f| record_is_whole(f, &key, &held));
                if !keep_held && record_is_whole(&file, &key, &entry) {
                    index.insert(key, entry);
                }
            }
            if let Some(what) = &scan.damage {
                damage.push((path.clone(), None, what.clone()));
            }
            voided.extend(
                std::mem::take(&mut scan.voids)
                    .into_iter()
                    .map(|(key, seq)| (key, seq, id)),
            );
            if newest {
                for (key, entry, _) in &scan.mismatched {
                    voided.push((key.clone(), entry.seq, id));
                }
                recover_newest(&file, &path, &mut scan)?;
                if scan.clean_tail {
                    resume = Some((id, scan.end, scan.file_len));
                }
            }
            segments.insert(
                id,
                Segment {
                    file: Arc::new(file),
                    path,
                    used: scan.end - SEGMENT_HEADER_LEN.min(scan.end),
                    live: 0,
                    clears,
                    damaged: scan.damage.is_some(),
                },
            );
        }
        // A void newer than its key's live version (or delete) stands for a write that may
        // be lost (cut by a crash, or its bytes damaged): reported until the key is written
        // or deleted again, so that a caller can fetch a good copy (say, from a replica).
        let mut next_seq = 0;
        let mut lost: HashMap<String, (u64, u64)> = HashMap::new();
        for (key, seq, segment) in voided {
            next_seq = next_seq.max(seq + 1);
            let newer = index.get(&key).is_none_or(|live| live.seq < seq);
            if newer && lost.get(&key).is_none_or(|&(other, _)| other < seq) {
                lost.insert(key, (seq, segment));
            }
        }
        index.retain(|_, entry| {
            next_seq = next_seq.max(entry.seq + 1);
            !entry.deleted
        });
        index.shrink_to_fit();
        for entry in index.values() {
            if let Some(segment) = segments.get_mut(&entry.segment) {
                segment.live += entry.record_len();
            }
        }
        let next_id = match highest {
            Some(id) => next_id(id, &dir)?,
            None => 0,
        };
        let mut state = State {
            index,
            segments,
            active: 0,
            tail: 0,
            allocated: 0,
            next_seq,
            next_id,
            damage,
            compaction_failed: None,
            appended: 0,
            lost,
        };
        match resume {
            // Appends go on where the newest segment ends (nothing but zeros after it), if
            // no other file took a later id.
            Some((id, end, len)) if end < SEGMENT_TARGET && Some(id) == highest => {
                state.active = id;
                state.tail = end;
                state.allocated = len;
            }
            _ => new_segment(&dir, &mut state, fsync, false)?,
        }
        let durable = (state.active, state.tail);
        Ok(Pack {
            dir,
            fsync,
            max_object,
            state: Mutex::new(state),
            sync: Mutex::new(SyncState {
                durable,
                flushing: false,
            }),
            flushed: Condvar::new(),
            broken: AtomicBool::new(false),
            compacting: Mutex::new(()),
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

    /// The pack's size and garbage.
    pub(crate) fn stats(&self) -> PackStats {
        let state = self.state();
        let (used_bytes, live_bytes) = state
            .segments
            .values()
            .fold((0, 0), |(u, l), s| (u + s.used, l + s.live));
        PackStats {
            objects: state.index.len() as u64,
            segments: state.segments.len() as u64,
            used_bytes,
            live_bytes,
        }
    }

    /// The keys of the lost writes still reported, sorted.
    pub(crate) fn lost_writes(&self) -> Vec<String> {
        let mut keys: Vec<String> = self.state().lost.keys().cloned().collect();
        keys.sort_unstable();
        keys
    }

    /// Damage found when the pack was opened, the lost writes still reported, and a failed
    /// automatic compaction.
    pub(crate) fn damage(&self) -> Vec<Damage> {
        let state = self.state();
        let mut damage = state.damage.clone();
        for (key, &(seq, segment)) in &state.lost {
            let path = state
                .segments
                .get(&segment)
                .map_or_else(|| self.dir.clone(), |s| s.path.clone());
            let what = format!(
                "a put of key {key:?} (seq {seq}) did not reach the disk whole and was voided \
                 when the store was opened (a write cut short by a crash, or damage): the key's \
                 previous version (or none) stands until it is written or deleted again"
            );
            damage.push((path, Some(key.clone()), what));
        }
        if let Some((e, _)) = &state.compaction_failed {
            let what = format!(
                "automatic compaction failed ({e}); writes try it again once 64 MiB more \
                 were appended (Store::compact at once)"
            );
            damage.push((self.dir.clone(), None, what));
        }
        damage
    }

    pub(crate) fn check_usable(&self) -> Result<()> {
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

    /// Takes no further append until the store is opened again (what reached the disk is
    /// unknown).
    pub(crate) fn stop_appends(&self) {
        self.broken.store(true, Ordering::SeqCst);
    }

    /// Marks the pack broken and returns the error.
    fn fail(&self, op: &'static str, path: &Path, e: io::Error) -> StoreError {
        self.broken.store(true, Ordering::SeqCst);
        StoreError::io(op, path, e)
    }

    /// Appends `key` -> `data` (whose BLAKE3 is `hash`) and waits until it is durable
    /// (per the store's durability, or in any case with `flush`). Until this returns `Ok`,
    /// the previous version of the key stands after a crash.
    pub(crate) fn put(&self, key: &str, data: &[u8], hash: &[u8; 32], flush: bool) -> Result<()> {
        let (segment, end) = {
            let mut state = self.state();
            let seq = state.seq(&self.dir)?;
            let record = encode_record(KIND_PUT, key, seq, data, hash);
            let (segment, offset) = self.append(&mut state, &record)?;
            state.next_seq = seq + 1; // at most u64::MAX: see `State::seq`
            let entry = Entry {
                segment,
                seq,
                offset,
                len: data.len() as u32,
                key_len: key.len() as u16,
                deleted: false,
            };
            state.set_live(key, Some(entry));
            state.superseded(key);
            (segment, u64::from(offset) + record.len() as u64)
        };
        self.make_durable(segment, end, flush)
    }

    /// Appends a deletion of `key` if it has a live record, and waits until it is durable.
    /// Returns whether there was one.
    pub(crate) fn delete(&self, key: &str) -> Result<bool> {
        let (segment, end, existed) = {
            let mut state = self.state();
            let existed = state.index.contains_key(key);
            // A key with a reported lost write gets a delete record even with nothing
            // live: it is newer than the voided put, so the report ends for good.
            let reported = state.lost.contains_key(key);
            if !existed && !reported {
                return Ok(false);
            }
            let seq = state.seq(&self.dir)?;
            let record = encode_record(KIND_DELETE, key, seq, &[], &[0; 32]);
            let (segment, offset) = self.append(&mut state, &record)?;
            state.next_seq = seq + 1;
            state.set_live(key, None);
            state.superseded(key);
            (segment, u64::from(offset) + record.len() as u64, existed)
        };
        self.make_durable(segment, end, false)?;
        Ok(existed)
    }

    /// Removes every record at once: a new segment flagged as clearing every older one is
    /// made durable (from then on a reopen ignores, and removes, the older segments), then
    /// the older segments are removed.
    pub(crate) fn clear(&self) -> Result<()> {
        self.check_usable()?;
        let mut state = self.state();
        let old: Vec<(u64, Segment)> = std::mem::take(&mut state.segments).into_iter().collect();
        if let Err(e) = new_segment(&self.dir, &mut state, true, true) {
            // Whether the clearing segment's entry reached the disk is unknown: a crash
            // could still make it clear everything, so nothing more is acknowledged.
            self.broken.store(true, Ordering::SeqCst);
            state.segments.extend(old);
            return Err(e);
        }
        state.index.clear();
        state.damage.clear();
        state.lost.clear();
        state.compaction_failed = None;
        for (_, segment) in old {
            // What is left behind is removed by the next open (the clearing flag).
            let _ = remove_file(&segment.path);
        }
        // Best effort too: the removals only reclaim space.
        let _ = sync_dir(&self.dir);
        Ok(())
    }

    /// Rewrites every segment, oldest first, dropping what is dead (the active one is
    /// sealed first if it holds anything dead).
    pub(crate) fn compact(&self) -> Result<()> {
        self.check_usable()?;
        let _compacting = self
            .compacting
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let sealed: Vec<u64> = {
            let mut state = self.state();
            state.compaction_failed = None;
            // The active segment too, if it holds anything dead (other than the void
            // records keeping lost writes reported, which a compaction would only copy
            // again): sealed first.
            let active = state.active;
            let kept: u64 = state
                .lost
                .iter()
                .filter(|(_, (_, segment))| *segment == active)
                .map(|(key, _)| (RECORD_HEADER_LEN + key.len()) as u64)
                .sum();
            let active_dead = state
                .segments
                .get(&active)
                .is_some_and(|s| s.live + kept < s.used);
            if active_dead {
                self.roll(&mut state)?;
            }
            let active = state.active;
            state
                .segments
                .keys()
                .copied()
                .filter(|&id| id != active)
                .collect()
        };
        for id in sealed {
            self.compact_segment(id)?;
        }
        Ok(())
    }

    /// Compacts the oldest sealed segment if the sealed segments hold more dead bytes than
    /// live ones (so the work done stays proportional to the garbage made), unless a
    /// compaction is running already. Run by writes once they are done: a failure is
    /// recorded for scrubs (and stops these compactions until [`Pack::compact`]), never
    /// returned (a failed fsync in it stops further appends).
    pub(crate) fn compact_if_worthwhile(&self) {
        let _compacting = match self.compacting.try_lock() {
            Ok(guard) => guard,
            Err(TryLockError::Poisoned(poisoned)) => poisoned.into_inner(),
            Err(TryLockError::WouldBlock) => return,
        };
        // Recorded while `compacting` is held, so a `compact` that clears the record
        // never runs between this failure and its record.
        if let Err(e) = self.compact_if_worthwhile_inner()
            && self.check_usable().is_ok()
        {
            let mut state = self.state();
            state.compaction_failed = Some((e.to_string(), state.appended));
        }
    }

    fn compact_if_worthwhile_inner(&self) -> Result<()> {
        let oldest = {
            let mut state = self.state();
            if let Some((_, at)) = &state.compaction_failed {
                if state.appended < at.saturating_add(SEGMENT_TARGET) {
                    return Ok(());
                }
                state.compaction_failed = None; // tried again now
            }
            let (used, live) = state
                .segments
                .iter()
                .filter(|(id, _)| **id != state.active)
                .fold((0, 0), |(u, l), (_, s)| (u + s.used, l + s.live));
            if used < SEGMENT_TARGET || live * 2 >= used {
                return Ok(());
            }
            match state.segments.keys().next() {
                Some(&oldest) if oldest != state.active => oldest,
                _ => return Ok(()),
            }
        };
        self.compact_segment(oldest)
    }

    /// Copies the live records of the oldest segment `id` to the active one (with their
    /// sequence numbers), makes them durable, then removes the segment (a damaged one is
    /// set aside as `<name>.damaged` instead, for whoever investigates). Its deletions are
    /// dropped: every record they shadow is in this segment (it is the oldest), dead.
    ///
    /// The caller holds `compacting`. The state lock is taken for [`COMPACT_BATCH`] bytes
    /// of copies at a time, so reads and writes go on in between: a record overwritten or
    /// deleted meanwhile is dead and not copied.
    fn compact_segment(&self, id: u64) -> Result<()> {
        self.check_usable()?;
        let (file, path, live) = {
            let state = self.state();
            let Some(segment) = state.segments.get(&id) else {
                return Ok(());
            };
            let mut live: Vec<(String, Entry)> = state
                .index
                .iter()
                .filter(|(_, e)| e.segment == id)
                .map(|(k, e)| (k.clone(), *e))
                .collect();
            live.sort_by_key(|(_, e)| e.offset);
            (Arc::clone(&segment.file), segment.path.clone(), live)
        };
        let mut live = live.into_iter().peekable();
        let mut unflushed = 0;
        loop {
            let mut state = self.state();
            let Some(segment) = state.segments.get(&id) else {
                return Ok(()); // cleared meanwhile
            };
            let (clears, damaged) = (segment.clears, segment.damaged);
            let mut copied = 0;
            while copied < COMPACT_BATCH {
                let Some((key, old)) = live.next() else { break };
                // Still the key's live record? (Overwritten or deleted since: dead.)
                let current = state.index.get(&key);
                if current.is_none_or(|e| e.segment != id || e.offset != old.offset) {
                    continue;
                }
                let mut record = vec![0u8; old.record_len() as usize];
                read_exact_at(&file, &mut record, old.offset())
                    .map_err(|e| StoreError::io("read", &path, e))?;
                // A new header from what the index knows (key, seq, length) and the stored
                // hash, flagged as a copy; the bytes as they are: a damaged object stays
                // damaged, and is never voided as a cut write once its copy is newest.
                let mut hash = [0u8; 32];
                hash.copy_from_slice(&record[24..56]);
                let header =
                    encode_header_flagged(KIND_PUT, FLAG_COPIED, &key, old.seq, old.len, &hash);
                record[..RECORD_HEADER_LEN].copy_from_slice(&header);
                record[RECORD_HEADER_LEN..][..key.len()].copy_from_slice(key.as_bytes());
                let (segment, offset) = self.append(&mut state, &record)?;
                let entry = Entry {
                    segment,
                    offset,
                    ..old
                };
                state.set_live(&key, Some(entry));
                copied += old.record_len();
            }
            unflushed += copied;
            if live.peek().is_none() && unflushed < COMPACT_FLUSH {
                self.copy_lost_voids(&mut state, id)?;
                return self.finish_compaction(&mut state, id, &path, clears, damaged);
            }
            // The lock is let go between batches. What they copied is flushed with no lock
            // held, every so often, so the flushes under the lock (a roll, the end) are
            // short.
            if unflushed >= COMPACT_FLUSH {
                let (active, active_path) = state.active()?;
                drop(state);
                active
                    .sync_data()
                    .map_err(|e| self.fail("fsync", &active_path, e))?;
                unflushed = 0;
            }
        }
    }

    /// Copies the void records in segment `id` that stand for lost writes still reported
    /// ([`State::lost`]): header and key only, flagged as copies, with their seq.
    fn copy_lost_voids(&self, state: &mut State, id: u64) -> Result<()> {
        let held: Vec<(String, u64)> = state
            .lost
            .iter()
            .filter(|(_, (_, segment))| *segment == id)
            .map(|(key, (seq, _))| (key.clone(), *seq))
            .collect();
        for (key, seq) in held {
            let mut record =
                encode_header_flagged(KIND_VOID, FLAG_COPIED, &key, seq, 0, &[0; 32]).to_vec();
            record.extend_from_slice(key.as_bytes());
            let (segment, _) = self.append(state, &record)?;
            state.lost.insert(key, (seq, segment));
        }
        Ok(())
    }

    /// The end of [`Pack::compact_segment`], under the state lock: the copies are made
    /// durable, then segment `id` goes.
    fn finish_compaction(
        &self,
        state: &mut State,
        id: u64,
        path: &Path,
        clears: bool,
        damaged: bool,
    ) -> Result<()> {
        // Everything copied is durable before the old copies go. This runs whatever the
        // store's durability: a segment removed ahead of a newer one's deletions could
        // otherwise come back after a crash and revive deleted keys. (Copies in a segment
        // sealed since were made durable by the roll.)
        let (active, active_path) = state.active()?;
        active
            .sync_data()
            .map_err(|e| self.fail("fsync", &active_path, e))?;
        if clears {
            // Its flag hides older segments a clear left behind: they go first (files
            // that are not our segments stay, as everywhere).
            let (ids, _) = list_segments(&self.dir)?;
            for older in ids.into_iter().filter(|&older| older < id) {
                let older = self.dir.join(segment_name(older));
                // Not a regular file (a directory, link or FIFO): not ours, left alone.
                let regular =
                    fs::symlink_metadata(&older).map_err(|e| StoreError::io("stat", &older, e))?;
                if !regular.is_file() {
                    continue;
                }
                let file = File::open(&older).map_err(|e| StoreError::io("open", &older, e))?;
                if let Header::Ours { .. } = read_segment_header(&file, &older)? {
                    remove_file(&older)?;
                }
            }
            sync_dir(&self.dir)?;
        }
        // Untracked only once it is gone: a segment left on disk but forgotten could
        // bring back keys whose deletes a later compaction drops.
        if damaged {
            let aside = self
                .dir
                .join(format!("{}{DAMAGED_SUFFIX}", segment_name(id)));
            fs::rename(path, &aside).map_err(|e| StoreError::io("set aside", path, e))?;
            for (p, _, _) in &mut state.damage {
                if *p == path {
                    p.clone_from(&aside);
                }
            }
        } else {
            remove_file(path)?;
        }
        state.segments.remove(&id);
        sync_dir(&self.dir)
    }

    /// Writes `record` at the active segment's tail (rolling to a new segment first if it
    /// would pass the target size); returns (segment, offset). The caller updates the index.
    fn append(&self, state: &mut State, record: &[u8]) -> Result<(u64, u32)> {
        // Checked under the state lock: no append follows a failure.
        self.check_usable()?;
        let len = record.len() as u64;
        if state.tail + len > SEGMENT_TARGET && state.tail > SEGMENT_HEADER_LEN {
            self.roll(state)?;
        }
        let (file, path) = state.active()?;
        // Zero-filled space only pays off for the fdatasync of durable appends; without
        // them the file just grows.
        if self.fsync && state.tail + len > state.allocated {
            let grow = EXTEND_STEP.max(state.tail + len - state.allocated);
            zero_fill(&file, state.allocated, grow)
                .map_err(|e| self.fail("append to", &path, e))?;
            state.allocated += grow;
        }
        let offset = state.tail;
        // Segments end near SEGMENT_TARGET (64 MiB): offsets always fit.
        let short = u32::try_from(offset).map_err(|_| {
            self.fail(
                "append to",
                &path,
                io::Error::other("segment offset past 4 GiB"),
            )
        })?;
        write_all_at(&file, record, offset).map_err(|e| self.fail("append to", &path, e))?;
        state.tail += len;
        state.appended += len;
        let active = state.active;
        if let Some(segment) = state.segments.get_mut(&active) {
            segment.used += len;
        }
        Ok((active, short))
    }

    /// Seals the active segment (made durable first) and starts the next one.
    fn roll(&self, state: &mut State) -> Result<()> {
        // Always, whatever the durability: compaction relies on sealed segments being
        // durable, and it costs one fdatasync per segment.
        let (file, path) = state.active()?;
        file.sync_data().map_err(|e| self.fail("fsync", &path, e))?;
        new_segment(&self.dir, state, self.fsync, false)
            .inspect_err(|_| self.broken.store(true, Ordering::SeqCst))
    }

    /// Waits until the append ending at (`segment`, `end`) is durable. One writer at a
    /// time flushes, for every append made before its flush starts; the others wait for
    /// it (without holding a lock), then return, or one of them flushes what came since.
    /// Without fsync, only with `flush`.
    fn make_durable(&self, segment: u64, end: u64, flush: bool) -> Result<()> {
        if !self.fsync && !flush {
            return Ok(());
        }
        let lock = || self.sync.lock().unwrap_or_else(PoisonError::into_inner);
        let mut sync = lock();
        loop {
            // After a failed fsync a second one may report success for pages that were
            // never written: nothing waiting is acknowledged any more.
            self.check_usable()?;
            if sync.durable >= (segment, end) {
                return Ok(());
            }
            if !sync.flushing {
                break;
            }
            sync = self
                .flushed
                .wait(sync)
                .unwrap_or_else(PoisonError::into_inner);
        }
        let (file, path, upto) = {
            let state = self.state();
            if state.active > segment {
                return Ok(()); // sealed since: `roll` made it durable
            }
            let (file, path) = state.active()?;
            (file, path, (state.active, state.tail))
        };
        sync.flushing = true;
        drop(sync);
        let flushed = file.sync_data();
        if flushed.is_err() {
            self.broken.store(true, Ordering::SeqCst);
        }
        let mut sync = lock();
        sync.flushing = false;
        if flushed.is_ok() {
            sync.durable = sync.durable.max(upto);
        }
        drop(sync);
        self.flushed.notify_all();
        flushed.map_err(|e| StoreError::io("fsync", &path, e))
    }
}

/// The segment ids in `dir`, ascending, and the damaged segments compaction set aside.
fn list_segments(dir: &Path) -> Result<(Vec<u64>, Vec<Damage>)> {
    let mut ids = Vec::new();
    let mut aside = Vec::new();
    for entry in fs::read_dir(dir).map_err(|e| StoreError::io("list", dir, e))? {
        let entry = entry.map_err(|e| StoreError::io("list", dir, e))?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        if let Some(id) = parse_segment_name(name) {
            ids.push(id);
        } else if name
            .strip_suffix(DAMAGED_SUFFIX)
            .and_then(parse_segment_name)
            .is_some()
        {
            aside.push((
                entry.path(),
                None,
                "a damaged segment set aside by compaction (its readable records were kept)"
                    .to_owned(),
            ));
        }
    }
    ids.sort_unstable();
    Ok((ids, aside))
}

fn segment_name(id: u64) -> String {
    format!("{id:016x}.seg")
}

/// The id of a segment file name, which must be exactly what [`segment_name`] makes.
fn parse_segment_name(name: &str) -> Option<u64> {
    let hex = name.strip_suffix(".seg")?;
    let id = u64::from_str_radix(hex, 16).ok()?;
    (segment_name(id) == name).then_some(id)
}

/// The id after `id`.
fn next_id(id: u64, dir: &Path) -> Result<u64> {
    id.checked_add(1).ok_or_else(|| {
        StoreError::corrupt(
            dir.join(segment_name(id)),
            None,
            "pack segment ids are exhausted",
        )
    })
}

/// What a segment file's first 16 bytes say.
enum Header {
    /// A segment of this format.
    Ours { clears: bool },
    /// Nothing but zeros, or a cut header and nothing after it: a crash while it was
    /// created.
    Empty,
    /// Zeros where the header should be, but not only zeros after it.
    Damaged(String),
    /// Another magic: not a segment, left alone.
    Foreign(String),
}

fn read_segment_header(file: &File, path: &Path) -> Result<Header> {
    let io_err = |e| StoreError::io("read", path, e);
    let mut reader = BufReader::with_capacity(64 * 1024, file);
    reader.seek(SeekFrom::Start(0)).map_err(io_err)?;
    let mut header = [0u8; SEGMENT_HEADER_LEN as usize];
    let got = read_up_to(&mut reader, &mut header).map_err(io_err)?;
    if header[..got].iter().all(|&b| b == 0) {
        let mut buf = vec![0u8; 64 * 1024];
        return Ok(if rest_is_zero(&mut reader, &mut buf).map_err(io_err)? {
            Header::Empty
        } else {
            Header::Damaged("the segment header is zeros but records follow; left alone".into())
        });
    }
    if got < header.len() && SEGMENT_MAGIC.starts_with(&header[..got.min(8)]) {
        return Ok(Header::Empty); // its creation was cut short: no record in it
    }
    if got < header.len() || header[0..8] != SEGMENT_MAGIC {
        return Ok(Header::Foreign(
            "not a dfs-store pack segment (bad magic); left alone".into(),
        ));
    }
    let u32_at =
        |i: usize| u32::from_le_bytes([header[i], header[i + 1], header[i + 2], header[i + 3]]);
    let version = u32_at(8);
    let flags = u32_at(12);
    if version != SEGMENT_VERSION {
        return Err(StoreError::UnsupportedVersion {
            path: path.to_owned(),
            version: u16::try_from(version).unwrap_or(u16::MAX),
        });
    }
    if flags & !FLAG_CLEARS != 0 {
        return Err(StoreError::corrupt(
            path,
            None,
            format!("segment flags {flags:#x} include some this build does not know"),
        ));
    }
    Ok(Header::Ours {
        clears: flags & FLAG_CLEARS != 0,
    })
}

/// Creates the next segment (header, zero-filled with fsync), durably, and makes it the
/// active one.
fn new_segment(dir: &Path, state: &mut State, fsync: bool, clears: bool) -> Result<()> {
    let id = state.next_id;
    let following = next_id(id, dir)?;
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
    let flags = if clears { FLAG_CLEARS } else { 0 };
    header[12..16].copy_from_slice(&flags.to_le_bytes());
    let prefill = if fsync { EXTEND_STEP } else { 0 };
    let init = write_all_at(&file, &header, 0)
        .and_then(|()| zero_fill(&file, SEGMENT_HEADER_LEN, prefill))
        .and_then(|()| file.sync_data());
    if let Err(e) = init
        .map_err(|e| StoreError::io("create", &path, e))
        .and_then(|()| sync_dir(dir))
    {
        let _ = fs::remove_file(&path);
        return Err(e);
    }
    state.segments.insert(
        id,
        Segment {
            file: Arc::new(file),
            path,
            used: 0,
            live: 0,
            clears,
            damaged: false,
        },
    );
    state.active = id;
    state.next_id = following;
    state.tail = SEGMENT_HEADER_LEN;
    state.allocated = SEGMENT_HEADER_LEN + prefill;
    Ok(())
}

fn remove_file(path: &Path) -> Result<()> {
    match fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == ErrorKind::NotFound => Ok(()),
        Err(e) => Err(StoreError::io("remove", path, e)),
    }
}

/// Encodes one record: header, key, data.
fn encode_record(kind: u8, key: &str, seq: u64, data: &[u8], hash: &[u8; 32]) -> Vec<u8> {
    let mut out = Vec::with_capacity(RECORD_HEADER_LEN + key.len() + data.len());
    out.extend_from_slice(&encode_header(kind, key, seq, data.len() as u32, hash));
    out.extend_from_slice(key.as_bytes());
    out.extend_from_slice(data);
    out
}

fn encode_header(
    kind: u8,
    key: &str,
    seq: u64,
    len: u32,
    hash: &[u8; 32],
) -> [u8; RECORD_HEADER_LEN] {
    encode_header_flagged(kind, 0, key, seq, len, hash)
}

fn encode_header_flagged(
    kind: u8,
    flags: u8,
    key: &str,
    seq: u64,
    len: u32,
    hash: &[u8; 32],
) -> [u8; RECORD_HEADER_LEN] {
    let mut h = [0u8; RECORD_HEADER_LEN];
    h[0..4].copy_from_slice(&RECORD_MAGIC);
    h[4] = kind;
    h[5] = flags;
    h[8..12].copy_from_slice(&(key.len() as u32).to_le_bytes());
    h[12..16].copy_from_slice(&len.to_le_bytes());
    h[16..24].copy_from_slice(&seq.to_le_bytes());
    h[24..56].copy_from_slice(hash);
    let check = header_check(&h[..56], key.as_bytes());
    h[56..72].copy_from_slice(&check);
    h
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
    copied: bool,
    key_len: u32,
    len: u32,
    seq: u64,
    hash: [u8; 32],
    check: [u8; 16],
}

fn parse_header(h: &[u8; RECORD_HEADER_LEN]) -> Option<RecordHeader> {
    let u32_at = |i: usize| u32::from_le_bytes([h[i], h[i + 1], h[i + 2], h[i + 3]]);
    if h[0..4] != RECORD_MAGIC || h[5] & !FLAG_COPIED != 0 || h[6..8] != [0; 2] {
        return None;
    }
    let kind = h[4];
    let key_len = u32_at(8);
    let len = u32_at(12);
    let valid_kind = matches!(kind, KIND_PUT | KIND_VOID) || (kind == KIND_DELETE && len == 0);
    if !valid_kind || key_len == 0 || key_len as usize > MAX_KEY_LEN || len > MAX_PACKED {
        return None;
    }
    let mut seq = [0u8; 8];
    seq.copy_from_slice(&h[16..24]);
    let seq = u64::from_le_bytes(seq);
    if seq == u64::MAX {
        return None; // never written: the next seq would not fit
    }
    let mut hash = [0u8; 32];
    hash.copy_from_slice(&h[24..56]);
    let mut check = [0u8; 16];
    check.copy_from_slice(&h[56..72]);
    Some(RecordHeader {
        kind,
        copied: h[5] & FLAG_COPIED != 0,
        key_len,
        len,
        seq,
        hash,
        check,
    })
}

/// What a scan of one segment found.
struct Scan {
    /// Offset just past the last valid record.
    end: u64,
    file_len: u64,
    /// Nothing but zeros after `end`: appends may go on there.
    clean_tail: bool,
    /// Puts of the newest segment whose bytes do not match their hash (key, entry, the
    /// hash in the header), not applied to the index.
    mismatched: Vec<(String, Entry, [u8; 32])>,
    /// Records with the same seq as the one the index holds for their key.
    ties: Vec<(String, Entry)>,
    /// Void records (key, seq): puts an earlier open found cut short.
    voids: Vec<(String, u64)>,
    damage: Option<String>,
}

/// Reads a segment's records, from after its header up to the first that is not whole,
/// into `index` (for each key the highest seq wins; a delete stays as a `deleted` entry).
/// Only in the newest segment are the records' bytes hashed (`mismatched`); where the scan
/// stops before the trailing zeros, valid records further on make it damage (an append is
/// only ever cut at the end), and so does any stop in an older segment.
fn scan_segment(
    file: &File,
    path: &Path,
    id: u64,
    newest: bool,
    index: &mut HashMap<String, Entry>,
) -> Result<Scan> {
    let io_err = |e| StoreError::io("read", path, e);
    let file_len = file.metadata().map_err(io_err)?.len();
    let mut reader = BufReader::with_capacity(256 * 1024, file);
    reader
        .seek(SeekFrom::Start(SEGMENT_HEADER_LEN))
        .map_err(io_err)?;
    let mut scan = Scan {
        end: SEGMENT_HEADER_LEN,
        file_len,
        clean_tail: false,
        mismatched: Vec::new(),
        ties: Vec::new(),
        voids: Vec::new(),
        damage: None,
    };
    let mut pos = SEGMENT_HEADER_LEN;
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let mut h = [0u8; RECORD_HEADER_LEN];
        let got = read_up_to(&mut reader, &mut h).map_err(io_err)?;
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
        if read_up_to(&mut reader, &mut key).map_err(io_err)? < key.len()
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
        let mut mismatch = false;
        if newest && rec.kind == KIND_PUT {
            let mut hasher = blake3::Hasher::new();
            let mut left = rec.len as usize;
            while left > 0 {
                let take = left.min(buf.len());
                let n = read_up_to(&mut reader, &mut buf[..take]).map_err(io_err)?;
                if n == 0 {
                    break;
                }
                hasher.update(&buf[..n]);
                left -= n;
            }
            if left > 0 {
                break; // the file shrank under us
            }
            mismatch = *hasher.finalize().as_bytes() != rec.hash;
        } else {
            reader.seek_relative(i64::from(rec.len)).map_err(io_err)?;
        }
        let Ok(offset) = u32::try_from(pos) else {
            break; // not a segment this store wrote (they end near 64 MiB)
        };
        let entry = Entry {
            segment: id,
            seq: rec.seq,
            offset,
            len: rec.len,
            key_len: rec.key_len as u16,
            deleted: rec.kind == KIND_DELETE,
        };
        pos += entry.record_len();
        scan.end = pos;
        if rec.kind == KIND_VOID {
            scan.voids.push((key, rec.seq));
            continue;
        }
        if mismatch && !rec.copied {
            scan.mismatched.push((key, entry, rec.hash));
            continue;
        }
        match index.get(&key) {
            // Equal seqs: copies of one record by compactions a crash interrupted (one of
            // them possibly cut short); the caller keeps one whose bytes check out.
            Some(old) if old.seq == entry.seq => scan.ties.push((key, entry)),
            Some(old) if old.seq > entry.seq => {}
            _ => {
                index.insert(key, entry);
            }
        }
    }
    if scan.clean_tail {
        return Ok(scan);
    }
    drop(reader);
    if let Some(next) = find_record(file, scan.end + 1, file_len).map_err(io_err)? {
        scan.damage = Some(format!(
            "invalid record at offset {}; the valid records from offset {next} on are not \
             read (left in place)",
            scan.end
        ));
    } else if !newest {
        scan.damage = Some(format!(
            "the segment ends with an invalid record at offset {}",
            scan.end
        ));
    }
    Ok(scan)
}

/// Whether the put record `entry` of `key` in `file` has a valid header for that key and
/// bytes that match its hash.
fn record_is_whole(file: &File, key: &str, entry: &Entry) -> bool {
    let mut bytes = vec![0u8; entry.record_len() as usize];
    if read_exact_at(file, &mut bytes, entry.offset()).is_err() {
        return false;
    }
    let data = &bytes[RECORD_HEADER_LEN + key.len()..];
    put_header(&bytes, key).is_some_and(|rec| *blake3::hash(data).as_bytes() == rec.hash)
}

/// The header at the start of `bytes` (header and key, at least) if it is a valid put
/// record of `key`: it parses, its key is `key`, and its header check matches.
fn put_header(bytes: &[u8], key: &str) -> Option<RecordHeader> {
    let mut h = [0u8; RECORD_HEADER_LEN];
    h.copy_from_slice(bytes.get(..RECORD_HEADER_LEN)?);
    let stored_key = bytes.get(RECORD_HEADER_LEN..RECORD_HEADER_LEN + key.len())?;
    let rec = parse_header(&h)?;
    let valid = rec.kind == KIND_PUT
        && rec.key_len as usize == key.len()
        && stored_key == key.as_bytes()
        && header_check(&h[..56], stored_key) == rec.check;
    valid.then_some(rec)
}

/// Recovers the newest segment after a crash: puts whose bytes do not match their hash
/// were cut short (every acknowledged append was fsynced whole, and with it everything
/// before it), so they are voided on disk and dropped, and the older version of their key
/// stands (reported in `damage` with the key, and at later opens until the key is written
/// again: the same bytes could be damage); an end cut inside a record is truncated away,
/// so appends can go on there.
fn recover_newest(file: &File, path: &Path, scan: &mut Scan) -> Result<()> {
    let fixed = |e| StoreError::io("recover the cut end of", path, e);
    for (key, entry, hash) in &scan.mismatched {
        let void = encode_header(KIND_VOID, key, entry.seq, entry.len, hash);
        write_all_at(file, &void, entry.offset()).map_err(fixed)?;
    }
    if !scan.mismatched.is_empty() {
        file.sync_data().map_err(fixed)?;
    }
    scan.mismatched.clear();
    if !scan.clean_tail && scan.damage.is_none() {
        file.set_len(scan.end)
            .and_then(|()| file.sync_data())
            .map_err(fixed)?;
        scan.clean_tail = true;
        scan.file_len = scan.end;
    }
    Ok(())
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

/// Whether everything left in `reader` is zero.
fn rest_is_zero(reader: &mut impl Read, buf: &mut [u8]) -> io::Result<bool> {
    loop {
        let n = read_up_to(reader, buf)?;
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
        pack.put(key, data, blake3::hash(data).as_bytes(), false)
            .unwrap();
        pack.compact_if_worthwhile(); // as the store does
    }

    fn get(pack: &Pack, key: &str) -> Option<Vec<u8>> {
        let found = pack.get(key)?;
        let record = found.read(key).unwrap();
        let data = record.bytes[record.data_start..].to_vec();
        assert_eq!(blake3::hash(&data).as_bytes(), &record.hash);
        assert_eq!(found.hash(key).unwrap(), record.hash);
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
    fn cut_appends_are_voided_or_truncated_and_the_older_version_stands() {
        let dir = tempfile::tempdir().unwrap();
        let seg = dir.path().join(PACK_DIR).join(segment_name(0));
        let (cut_at, tail);
        {
            let pack = Pack::open(dir.path(), true, 4096).unwrap();
            put(&pack, "k", b"acknowledged");
            cut_at = pack.state().tail;
            put(&pack, "k", &[7u8; 3000]);
            put(&pack, "other", b"whole");
            tail = pack.state().tail;
            // A header that never got its key and bytes.
            let state = pack.state();
            let file = &state.segments[&0].file;
            write_all_at(
                file,
                &encode_header(KIND_PUT, "late", 99, 10, &[1; 32]),
                tail,
            )
            .unwrap();
        }
        // Lose a page of the middle record's bytes, as a crash before its fdatasync can,
        // while the record after it reached the disk whole.
        let file = OpenOptions::new().write(true).open(&seg).unwrap();
        write_all_at(&file, &[0u8; 100], cut_at + 72 + 1 + 2000).unwrap();
        drop(file);
        let pack = Pack::open(dir.path(), true, 4096).unwrap();
        assert_eq!(get(&pack, "k").unwrap(), b"acknowledged");
        assert_eq!(get(&pack, "other").unwrap(), b"whole");
        assert!(pack.get("late").is_none());
        let damage = pack.damage();
        assert_eq!(
            damage.len(),
            1,
            "the voided put is reported, once: {damage:?}"
        );
        assert!(damage[0].2.contains("\"k\""), "{damage:?}");
        assert_eq!(
            fs::metadata(&seg).unwrap().len(),
            tail,
            "the cut end is truncated"
        );
        assert_eq!(pack.state().active, 0, "appends go on in the same segment");
        put(&pack, "new", b"x");
        // Sealed, the voided record is still never read (the bytes of sealed segments
        // are not checked at open).
        {
            let mut state = pack.state();
            pack.roll(&mut state).unwrap();
        }
        drop(pack);
        let pack = Pack::open(dir.path(), true, 4096).unwrap();
        assert_eq!(get(&pack, "new").unwrap(), b"x");
        assert_eq!(get(&pack, "k").unwrap(), b"acknowledged");
        // The lost write of "k" is still reported, by key, until "k" is written again.
        let damage = pack.damage();
        assert_eq!(damage.len(), 1, "{damage:?}");
        assert_eq!(damage[0].1.as_deref(), Some("k"));
        put(&pack, "k", b"again");
        assert!(pack.damage().is_empty());
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
        let record = found.read("first").unwrap();
        let data = &record.bytes[record.data_start..];
        assert_ne!(blake3::hash(data).as_bytes(), &record.hash);
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
            damage[0].2.contains("invalid record at offset 16"),
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

    /// A segment file made by hand: header, then `records`.
    fn write_segment(dir: &Path, id: u64, records: &[&[u8]]) {
        fs::create_dir_all(dir.join(PACK_DIR)).unwrap();
        let mut bytes = SEGMENT_MAGIC.to_vec();
        bytes.extend_from_slice(&SEGMENT_VERSION.to_le_bytes());
        bytes.extend_from_slice(&0u32.to_le_bytes());
        for record in records {
            bytes.extend_from_slice(record);
        }
        fs::write(dir.join(PACK_DIR).join(segment_name(id)), bytes).unwrap();
    }

    #[test]
    fn of_two_copies_with_one_seq_the_whole_one_is_read() {
        let data = [9u8; 3000];
        let hash = *blake3::hash(&data).as_bytes();
        let copy = |bytes: &[u8]| {
            let mut record =
                encode_header_flagged(KIND_PUT, FLAG_COPIED, "k", 5, 3000, &hash).to_vec();
            record.extend_from_slice(b"k");
            record.extend_from_slice(bytes);
            record
        };
        let (whole, cut) = (copy(&data), copy(&[0u8; 3000]));
        let later = encode_record(KIND_PUT, "other", 6, b"x", blake3::hash(b"x").as_bytes());
        // A copy cut short by a crash before a later compaction made a whole one, in
        // either order of segments.
        for (first, second) in [(&cut, &whole), (&whole, &cut)] {
            let dir = tempfile::tempdir().unwrap();
            write_segment(dir.path(), 0, &[first]);
            write_segment(dir.path(), 1, &[second, &later]);
            let pack = Pack::open(dir.path(), true, 4096).unwrap();
            assert_eq!(get(&pack, "k").unwrap(), data);
            assert_eq!(get(&pack, "other").unwrap(), b"x");
        }
    }

    #[test]
    fn a_record_claiming_the_last_seq_is_not_read() {
        let dir = tempfile::tempdir().unwrap();
        let seg = dir.path().join(PACK_DIR).join(segment_name(0));
        drop(Pack::open(dir.path(), false, 4096).unwrap());
        let file = OpenOptions::new().write(true).open(&seg).unwrap();
        let record = encode_record(KIND_PUT, "k", u64::MAX, b"v", blake3::hash(b"v").as_bytes());
        write_all_at(&file, &record, SEGMENT_HEADER_LEN).unwrap();
        drop(file);
        let pack = Pack::open(dir.path(), false, 4096).unwrap();
        assert!(pack.get("k").is_none());
        put(&pack, "k", b"newer");
        drop(pack);
        let pack = Pack::open(dir.path(), false, 4096).unwrap();
        assert_eq!(get(&pack, "k").unwrap(), b"newer");
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
