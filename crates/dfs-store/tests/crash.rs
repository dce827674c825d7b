//! Crash safety: a child process (this test binary, re-executed) is killed with SIGKILL in
//! the middle of large writes; the store must reopen clean, with old versions intact and
//! no partial object readable.
//!
//! The child announces on stdout when it is mid-write and then blocks on stdin, so the
//! parent kills it at a known point without sleeping.
#![allow(clippy::unwrap_used)] // tests and their helpers panic on failure

use std::io::{self, BufRead, BufReader, Read, Write};
use std::path::Path;
use std::process::{Child, Command, Stdio};

use dfs_store::Store;

const ROLE: &str = "DFS_STORE_CRASH_CHILD";
const ROOT: &str = "DFS_STORE_CRASH_ROOT";
const MODE: &str = "DFS_STORE_CRASH_MODE";

/// A source that yields `before` bytes of `fill`, prints `MIDWRITE`, then blocks reading
/// stdin (the parent never writes to it) until killed.
struct StallingSource {
    fill: u8,
    left: u64,
    announced: bool,
}

impl Read for StallingSource {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.left == 0 {
            if !self.announced {
                self.announced = true;
                let mut out = io::stdout().lock();
                writeln!(out, "MIDWRITE")?;
                out.flush()?;
            }
            // Blocks until the parent kills us (or closes stdin, which it does not).
            let mut b = [0u8; 1];
            let _ = io::stdin().read(&mut b)?;
            return Ok(0);
        }
        let n = buf.len().min(self.left as usize);
        buf[..n].fill(self.fill);
        self.left -= n as u64;
        Ok(n)
    }
}

/// The child's body; a no-op in the normal test run.
#[test]
fn crash_child() {
    let (Ok(_), Ok(root), Ok(mode)) = (
        std::env::var(ROLE),
        std::env::var(ROOT),
        std::env::var(MODE),
    ) else {
        return;
    };
    if mode == "pack-loop" {
        let store = Store::builder(&root)
            .pack_small_objects(PACK_LIMIT)
            .open()
            .expect("child open");
        for i in 0u64.. {
            let key = format!("loop-{}", i % 8);
            store.write(&key, &versioned(i)[..]).expect("child write");
            println!("COMMITTED {key} {i}");
        }
    }
    let store = Store::open(&root).expect("child open");
    match mode.as_str() {
        // Stall inside one big write after `n` bytes.
        m if m.starts_with("stall:") => {
            let before: u64 = m["stall:".len()..].parse().expect("bytes");
            let _ = store.write(
                "victim",
                StallingSource {
                    fill: 0xEE,
                    left: before,
                    announced: false,
                },
            );
        }
        // Write objects forever, announcing each committed one.
        "loop" => {
            for i in 0u64.. {
                let key = format!("loop-{}", i % 8);
                let data = vec![(i % 251) as u8; 96 * 1024 + (i as usize % 7) * 10_000];
                store.write(&key, &data[..]).expect("child write");
                println!("COMMITTED {key} {i}");
            }
        }
        other => panic!("unknown mode {other}"),
    }
}

/// Objects up to this size are packed in the `pack-loop` child.
const PACK_LIMIT: u32 = 16 * 1024;

/// Version `i` of a `pack-loop` object: `i` (LE) then a fill byte; sizes cycle through
/// packed (below `PACK_LIMIT`) and file-sized ones, so keys move between the two.
fn versioned(i: u64) -> Vec<u8> {
    let size = [100, 4096, 40_000, 16 * 1024, 0x1_0000 + 7][(i % 5) as usize].max(8);
    let mut data = vec![(i % 251) as u8; size];
    data[..8].copy_from_slice(&i.to_le_bytes());
    data
}

fn spawn_child(root: &Path, mode: &str) -> Child {
    Command::new(std::env::current_exe().expect("current exe"))
        .args(["--exact", "crash_child", "--nocapture", "--test-threads=1"])
        .env(ROLE, "1")
        .env(ROOT, root)
        .env(MODE, mode)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn child")
}

/// Reads the child's stdout until a line satisfying `stop` (returns it), or EOF (panics).
/// (libtest prints `test crash_child ... ` before the child's first line, hence the
/// `ends_with`/`contains` matching.)
fn wait_for_line(
    lines: &mut impl Iterator<Item = io::Result<String>>,
    stop: impl Fn(&str) -> bool,
) -> String {
    for line in lines {
        let line = line.expect("child stdout");
        if stop(&line) {
            return line;
        }
    }
    panic!("child exited before the expected output");
}

fn kill9(mut child: Child) {
    child.kill().expect("SIGKILL child"); // SIGKILL on Unix
    child.wait().expect("reap child");
}

fn assert_clean(root: &Path) -> Store {
    let store = Store::open(root).expect("reopen after crash");
    let staging: Vec<_> = std::fs::read_dir(root.join("tmp"))
        .expect("list tmp")
        .collect();
    assert!(staging.is_empty(), "staging not swept: {staging:?}");
    let report = store.scrub();
    assert!(report.is_clean(), "{report:?}");
    store
}

#[test]
fn killed_mid_write_leaves_old_version_and_no_partial_object() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    {
        let store = Store::open(root).unwrap();
        store.write("victim", &vec![0x11u8; 100_000][..]).unwrap();
    }
    // Kill points: before any payload, inside the first buffer, after many buffers.
    for before in [0u64, 1000, 64 * 1024 + 1, 24 << 20] {
        let mut child = spawn_child(root, &format!("stall:{before}"));
        let stdout = child.stdout.take().expect("stdout");
        let mut lines = BufReader::new(stdout).lines();
        wait_for_line(&mut lines, |l| l.ends_with("MIDWRITE"));
        // The child is blocked mid-write: its staging file exists.
        let staged = std::fs::read_dir(root.join("tmp")).unwrap().count();
        assert_eq!(staged, 1, "child should have one staging file");
        kill9(child);

        let store = assert_clean(root);
        let mut out = Vec::new();
        store.read("victim").unwrap().read_to_end(&mut out).unwrap();
        assert_eq!(
            out,
            vec![0x11u8; 100_000],
            "old version intact after crash at {before}"
        );
    }
}

#[test]
fn killed_while_writing_in_a_loop_every_committed_object_is_whole() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    for round in 0..4 {
        let mut child = spawn_child(root, "loop");
        let stdout = child.stdout.take().expect("stdout");
        let mut lines = BufReader::new(stdout).lines();
        // Let it commit a few objects (a different number each round), then kill it
        // wherever it happens to be.
        for _ in 0..(3 + round * 5) {
            wait_for_line(&mut lines, |l| l.contains("COMMITTED "));
        }
        kill9(child);
        let store = assert_clean(root);
        let keys: Vec<String> = store.keys().collect::<Result<_, _>>().unwrap();
        assert!(!keys.is_empty());
        for key in keys {
            let mut reader = store.read(&key).unwrap();
            let size = reader.size();
            let mut out = Vec::new();
            reader.read_to_end(&mut out).unwrap();
            assert_eq!(out.len() as u64, size);
            // Every object is one whole version: a single repeated byte.
            assert!(out.iter().all(|b| *b == out[0]), "mixed object {key}");
        }
    }
}

#[test]
fn killed_while_writing_packed_and_file_objects_every_acknowledged_version_stands() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let mut acknowledged = std::collections::HashMap::new();
    for round in 0..5 {
        let mut child = spawn_child(root, "pack-loop");
        let stdout = child.stdout.take().expect("stdout");
        let mut lines = BufReader::new(stdout).lines();
        for _ in 0..(7 + round * 13) {
            let line = wait_for_line(&mut lines, |l| l.contains("COMMITTED "));
            let mut words = line.rsplit(' ');
            let i: u64 = words.next().unwrap().parse().unwrap();
            let key = words.next().unwrap().to_owned();
            acknowledged.insert(key, i);
        }
        kill9(child);

        let store = Store::builder(root)
            .pack_small_objects(PACK_LIMIT)
            .open()
            .expect("reopen after crash");
        // A kill can cut a write between pages: such a put is voided at open (its
        // previous version stands) and the scrub says so; nothing else may be bad.
        let report = store.scrub();
        for bad in &report.bad {
            assert!(
                bad.error.to_string().contains("voided"),
                "round {round}: {report:?}"
            );
        }
        let mut keys: Vec<String> = store.keys().collect::<Result<_, _>>().unwrap();
        keys.sort();
        let mut unique = keys.clone();
        unique.dedup();
        assert_eq!(keys, unique, "a key listed twice (pack and file)");
        for (key, version) in acknowledged.iter_mut() {
            let last = *version;
            let mut out = Vec::new();
            store.read(key).unwrap().read_to_end(&mut out).unwrap();
            let i = u64::from_le_bytes(out[..8].try_into().unwrap());
            // The last acknowledged version, or the one in flight at the kill.
            assert!(
                i == last || i == last + 8,
                "{key}: version {i}, last acknowledged {last}"
            );
            assert_eq!(out, versioned(i), "{key}: version {i} is not whole");
            *version = i;
        }
    }
}
