//! Helpers for the multi-process tests: real `dfs serve` processes on 127.0.0.1, readiness
//! from their ready line, every child killed on drop (also when a test fails).
#![allow(clippy::unwrap_used, clippy::expect_used, dead_code, unreachable_pub)]

use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, ExitStatus, Output, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Condvar, Mutex};
use std::thread;
use std::time::{Duration, Instant};

/// The exit statuses of `dfs`, as `ExitStatus::code` reports them.
pub const EXIT_FAILURE: i32 = dfs_cli::EXIT_FAILURE as i32;
/// Bad command line.
pub const EXIT_USAGE: i32 = dfs_cli::EXIT_USAGE as i32;
/// Unknown name.
pub const EXIT_NOT_FOUND: i32 = dfs_cli::EXIT_NOT_FOUND as i32;
/// Node unreachable.
pub const EXIT_UNREACHABLE: i32 = dfs_cli::EXIT_UNREACHABLE as i32;
/// Wrong data key or network secret.
pub const EXIT_AUTH: i32 = dfs_cli::EXIT_AUTH as i32;

/// How long anything in a test may take before the test fails instead of hanging.
pub const DEADLINE: Duration = Duration::from_secs(120);

pub fn dfs_bin() -> &'static str {
    env!("CARGO_BIN_EXE_dfs")
}

/// A `dfs` command with a clean environment.
pub fn dfs() -> Command {
    let mut cmd = Command::new(dfs_bin());
    for var in ["DFS_DATA", "DFS_LISTEN", "DFS_KEY_FILE", "DFS_SECRET_FILE"] {
        cmd.env_remove(var);
    }
    cmd.env("RUST_LOG", "info");
    cmd
}

/// Runs `dfs ARGS` to completion.
pub fn run(args: &[&str]) -> Output {
    dfs()
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("spawn dfs")
}

pub fn stderr_of(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Asserts that a client command failed with exit status `code` and said so in exactly one
/// line on stderr, `dfs: error: ...`, containing `needle`; returns that line.
pub fn assert_fails_with(out: &Output, code: i32, needle: &str) -> String {
    let err = stderr_of(out);
    assert_eq!(out.status.code(), Some(code), "exit status; stderr: {err}");
    let lines: Vec<&str> = err.lines().collect();
    assert_eq!(lines.len(), 1, "one line on stderr: {err:?}");
    assert!(lines[0].starts_with("dfs: error: "), "{err}");
    assert!(lines[0].contains(needle), "{needle:?} not in {err:?}");
    println!("exit {code}: {}", lines[0]);
    lines[0].to_owned()
}

/// How often [`Log::wait_until`] re-checks a condition that has no event of its own.
const RECHECK: Duration = Duration::from_millis(5);

/// Log text shared with a reader thread, with a condition variable to wait on.
#[derive(Default)]
pub struct Log {
    text: Mutex<String>,
    grew: Condvar,
    /// Set (under the `text` lock) when the reader reached the end of the stream.
    ended: AtomicBool,
}

impl Log {
    fn spawn_reader(self: &Arc<Self>, stream: impl Read + Send + 'static) {
        let log = Arc::clone(self);
        thread::spawn(move || {
            let mut reader = BufReader::new(stream);
            let mut line = String::new();
            while reader.read_line(&mut line).unwrap_or(0) > 0 {
                log.text.lock().unwrap().push_str(&line);
                log.grew.notify_all();
                line.clear();
            }
            let _text = log.text.lock().unwrap();
            log.ended.store(true, Ordering::SeqCst);
            log.grew.notify_all();
        });
    }

    /// Waits until the reader has read the whole stream (the process closed it, e.g. exited),
    /// so [`Log::contents`] is complete.
    pub fn wait_ended(&self) {
        let deadline = Instant::now() + DEADLINE;
        let mut text = self.text.lock().unwrap();
        while !self.ended.load(Ordering::SeqCst) {
            let left = deadline.saturating_duration_since(Instant::now());
            assert!(!left.is_zero(), "the log reader did not finish:\n{text}");
            text = self.grew.wait_timeout(text, left).unwrap().0;
        }
    }

    /// Waits until `ready` returns a value, for conditions outside this process that have no
    /// event to wait on (another process's I/O counters, a file's size): re-checks whenever
    /// this log grows and at least every [`RECHECK`], blocked on the condition variable in
    /// between (no busy spinning). Fails after [`DEADLINE`] with `what`.
    pub fn wait_until<T>(&self, what: &str, mut ready: impl FnMut() -> Option<T>) -> T {
        let deadline = Instant::now() + DEADLINE;
        loop {
            if let Some(value) = ready() {
                return value;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            assert!(!left.is_zero(), "timed out waiting for {what}");
            let text = self.text.lock().unwrap();
            let _ = self.grew.wait_timeout(text, left.min(RECHECK)).unwrap();
        }
    }

    pub fn contents(&self) -> String {
        self.text.lock().unwrap().clone()
    }

    /// Waits until the log contains `needle`.
    pub fn wait_for(&self, needle: &str) {
        let deadline = Instant::now() + DEADLINE;
        let mut text = self.text.lock().unwrap();
        while !text.contains(needle) {
            let left = deadline.saturating_duration_since(Instant::now());
            assert!(
                !left.is_zero(),
                "timed out waiting for {needle:?} in log:\n{text}"
            );
            text = self.grew.wait_timeout(text, left).unwrap().0;
        }
    }
}

/// Files shared by a test's nodes.
pub struct Keys {
    pub key: PathBuf,
    pub secret: PathBuf,
}

pub fn keygen(dir: &Path, tag: &str) -> Keys {
    let keys = Keys {
        key: dir.join(format!("{tag}.key")),
        secret: dir.join(format!("{tag}.secret")),
    };
    let out = run(&[
        "keygen",
        "--key-file",
        keys.key.to_str().unwrap(),
        "--secret-file",
        keys.secret.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "keygen: {}", stderr_of(&out));
    keys
}

/// One `dfs serve` process.
pub struct Node {
    pub name: String,
    pub data: PathBuf,
    pub addr: String,
    args: Vec<String>,
    /// A command (and its arguments) the node is started through, e.g. `unshare -m sh -c ..`,
    /// which must end by `exec`ing the `dfs serve` command line it is given.
    wrapper: Vec<String>,
    /// Environment changes for the `dfs serve` process (`None`: remove the variable).
    envs: Vec<(String, Option<String>)>,
    child: Option<Child>,
    pub log: Arc<Log>,
}

impl Node {
    /// Starts `dfs serve -l 127.0.0.1:0 -d DATA EXTRA...` and waits for its ready line.
    pub fn start(
        data: &Path,
        name: &str,
        keys: &Keys,
        bootstrap: &[&Node],
        extra: &[&str],
    ) -> Node {
        let mut args = Node::start_args(data, keys);
        for node in bootstrap {
            args.push("--bootstrap".to_owned());
            args.push(node.addr.clone());
        }
        args.extend(extra.iter().map(|s| (*s).to_owned()));
        let mut node = Node {
            name: name.to_owned(),
            data: data.to_path_buf(),
            addr: String::new(),
            args,
            wrapper: Vec::new(),
            envs: Vec::new(),
            child: None,
            log: Arc::default(),
        };
        node.spawn();
        node
    }

    /// Like [`Node::start`], with the `dfs serve` command line run through `wrapper`.
    pub fn start_wrapped(data: &Path, name: &str, keys: &Keys, wrapper: &[&str]) -> Node {
        let mut node = Node {
            name: name.to_owned(),
            data: data.to_path_buf(),
            addr: String::new(),
            args: Vec::new(),
            wrapper: wrapper.iter().map(|s| (*s).to_owned()).collect(),
            envs: Vec::new(),
            child: None,
            log: Arc::default(),
        };
        node.args = Node::start_args(data, keys);
        node.spawn();
        node
    }

    /// Starts `dfs ARGS` (a `serve` command line given whole) with environment changes `envs`
    /// (`None` removes a variable); `data` is the data directory client commands are pointed
    /// at by [`Node::dfs`].
    pub fn start_bare(
        data: &Path,
        name: &str,
        args: &[&str],
        envs: &[(&str, Option<&str>)],
    ) -> Node {
        let mut node = Node {
            name: name.to_owned(),
            data: data.to_path_buf(),
            addr: String::new(),
            args: args.iter().map(|s| (*s).to_owned()).collect(),
            wrapper: Vec::new(),
            envs: envs
                .iter()
                .map(|(k, v)| ((*k).to_owned(), v.map(str::to_owned)))
                .collect(),
            child: None,
            log: Arc::default(),
        };
        node.spawn();
        node
    }

    fn start_args(data: &Path, keys: &Keys) -> Vec<String> {
        let mut args = vec!["serve".to_owned()];
        args.extend(serve_args(data, keys));
        args
    }

    fn spawn(&mut self) {
        let (child, addr, log) = spawn_serve(&self.wrapper, &self.envs, &self.args)
            .unwrap_or_else(|log| panic!("node {} did not become ready:\n{log}", self.name));
        self.child = Some(child);
        self.addr = addr;
        self.log = log;
    }

    /// Starts the node again with the same arguments (a fresh port).
    pub fn restart(&mut self) {
        assert!(self.child.is_none(), "node {} is still running", self.name);
        self.spawn();
    }

    /// Starts the node again, joining `bootstrap` instead of its original bootstrap nodes.
    pub fn restart_joining(&mut self, bootstrap: &[&Node]) {
        let mut args: Vec<String> = Vec::new();
        let mut skip = false;
        for arg in &self.args {
            if skip {
                skip = false;
                continue;
            }
            if arg == "--bootstrap" {
                skip = true;
                continue;
            }
            args.push(arg.clone());
        }
        for node in bootstrap {
            args.push("--bootstrap".to_owned());
            args.push(node.addr.clone());
        }
        self.args = args;
        self.restart();
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("node running").id()
    }

    pub fn data_arg(&self) -> &str {
        self.data.to_str().unwrap()
    }

    /// How many objects the node's store keeps as files of their own (the rest are in
    /// its pack, if it has one).
    pub fn object_files(&self) -> usize {
        let mut count = 0;
        let mut stack = vec![self.data.join("store/objects")];
        while let Some(dir) = stack.pop() {
            for entry in std::fs::read_dir(&dir).unwrap() {
                let path = entry.unwrap().path();
                if path.is_dir() {
                    stack.push(path);
                } else {
                    count += 1;
                }
            }
        }
        count
    }

    /// The process's peak resident set size in MiB (`VmHWM`), to check that memory does not
    /// grow with file size.
    pub fn peak_rss_mib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid())).unwrap();
        let line = status
            .lines()
            .find(|l| l.starts_with("VmHWM:"))
            .expect("VmHWM in /proc status");
        let kib: u64 = line
            .split_whitespace()
            .nth(1)
            .and_then(|v| v.parse().ok())
            .expect("VmHWM value");
        kib / 1024
    }

    /// `kill -9`.
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Sends `signal` (e.g. "TERM") to the node.
    pub fn signal(&self, signal: &str) {
        let status = Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(self.pid().to_string())
            .status()
            .expect("run kill");
        assert!(status.success());
    }

    /// Waits for the node to exit by itself.
    pub fn wait_exit(&mut self) -> ExitStatus {
        let child = self.child.take().expect("node running");
        wait_child(child)
    }

    /// Runs `dfs ARGS --data <this node's dir>`.
    pub fn dfs(&self, args: &[&str]) -> Output {
        let mut all: Vec<&str> = args.to_vec();
        all.extend(["--data", self.data_arg()]);
        run(&all)
    }

    /// Like [`Node::dfs`] but asserts success and returns stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        let out = self.dfs(args);
        assert!(
            out.status.success(),
            "dfs {args:?} on {} failed: {}\nnode log:\n{}",
            self.name,
            stderr_of(&out),
            self.log.contents()
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Waits until the node has at least `n` peers.
    pub fn wait_peers(&self, n: usize) {
        self.ok(&["peers", "--wait", &n.to_string(), "--timeout", "60"]);
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// Waits for `child` to exit, killing it and failing after [`DEADLINE`].
pub fn wait_child(child: Child) -> ExitStatus {
    let pid = child.id();
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        let mut child = child;
        let _ = tx.send(child.wait());
    });
    match rx.recv_timeout(DEADLINE) {
        Ok(status) => status.expect("wait"),
        Err(_) => {
            let _ = Command::new("kill").arg("-9").arg(pid.to_string()).status();
            panic!("process {pid} did not exit in time");
        }
    }
}

/// Spawns `dfs ARGS` (a serve), through `wrapper` if not empty, and waits for
/// `listening on ADDR`; on early exit returns the log.
fn spawn_serve(
    wrapper: &[String],
    envs: &[(String, Option<String>)],
    args: &[String],
) -> Result<(Child, String, Arc<Log>), String> {
    let mut cmd = match wrapper.split_first() {
        None => dfs(),
        Some((program, rest)) => {
            let mut cmd = dfs();
            let mut wrapped = Command::new(program);
            wrapped.args(rest).arg(dfs_bin());
            for (key, value) in cmd.get_envs() {
                match value {
                    Some(value) => wrapped.env(key, value),
                    None => wrapped.env_remove(key),
                };
            }
            cmd = wrapped;
            cmd
        }
    };
    for (key, value) in envs {
        match value {
            Some(value) => cmd.env(key, value),
            None => cmd.env_remove(key),
        };
    }
    let mut child = cmd
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn dfs serve");
    let log: Arc<Log> = Arc::default();
    log.spawn_reader(child.stderr.take().expect("stderr"));
    let stdout = child.stdout.take().expect("stdout");
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        let mut lines = BufReader::new(stdout).lines();
        let mut sent = false;
        while let Some(Ok(line)) = lines.next() {
            if !sent && let Some(rest) = line.strip_prefix("listening on ") {
                let addr = rest
                    .split_whitespace()
                    .next()
                    .unwrap_or_default()
                    .to_owned();
                let _ = tx.send(addr);
                sent = true;
            }
        }
        // Dropping `tx` without sending tells the waiter the process ended first.
    });
    match rx.recv_timeout(DEADLINE) {
        Ok(addr) => Ok((child, addr, log)),
        Err(_) => {
            let _ = child.kill();
            let _ = child.wait();
            // Let the stderr reader finish so the log is complete.
            log.wait_ended();
            Err(log.contents())
        }
    }
}

/// Spawns `dfs serve ARGS` expecting it to fail before becoming ready; returns (status, log).
pub fn serve_expect_failure(args: &[&str]) -> (ExitStatus, String) {
    let child = dfs()
        .arg("serve")
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn dfs serve");
    let out = {
        let pid = child.id();
        let (tx, rx) = mpsc::channel();
        thread::spawn(move || {
            let _ = tx.send(child.wait_with_output());
        });
        match rx.recv_timeout(DEADLINE) {
            Ok(out) => out.expect("wait"),
            Err(_) => {
                let _ = Command::new("kill").arg("-9").arg(pid.to_string()).status();
                panic!("dfs serve {args:?} did not exit");
            }
        }
    };
    (out.status, stderr_of(&out))
}

/// Deterministic pseudo-random bytes (xorshift64*), streamable in pieces.
pub struct Pattern {
    state: u64,
}

impl Pattern {
    pub fn new(seed: u64) -> Self {
        Pattern {
            state: seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1,
        }
    }

    pub fn fill(&mut self, buf: &mut [u8]) {
        for chunk in buf.chunks_mut(8) {
            self.state ^= self.state >> 12;
            self.state ^= self.state << 25;
            self.state ^= self.state >> 27;
            let v = self.state.wrapping_mul(0x2545_F491_4F6C_DD1D).to_le_bytes();
            chunk.copy_from_slice(&v[..chunk.len()]);
        }
    }

    pub fn bytes(seed: u64, len: usize) -> Vec<u8> {
        let mut out = vec![0; len];
        Pattern::new(seed).fill(&mut out);
        out
    }
}

/// Writes `len` pattern bytes of `seed` to `path`; returns their BLAKE3 hash.
pub fn write_pattern_file(path: &Path, seed: u64, len: u64) -> blake3::Hash {
    let mut file = std::io::BufWriter::new(std::fs::File::create(path).unwrap());
    let mut hasher = blake3::Hasher::new();
    let mut pattern = Pattern::new(seed);
    let mut buf = vec![0u8; 1 << 20];
    let mut left = len;
    while left > 0 {
        let n = left.min(buf.len() as u64) as usize;
        pattern.fill(&mut buf[..n]);
        file.write_all(&buf[..n]).unwrap();
        hasher.update(&buf[..n]);
        left -= n as u64;
    }
    file.flush().unwrap();
    hasher.finalize()
}

/// Writes `len` pattern bytes of `seed` into a child's stdin, in pieces, adding what was
/// written to `hasher`. Returns `false` (having stopped early) if the pipe breaks, else `true`.
pub fn feed(
    stdin: &mut ChildStdin,
    pattern: &mut Pattern,
    len: u64,
    hasher: &mut blake3::Hasher,
) -> bool {
    let mut buf = vec![0u8; 1 << 20];
    let mut left = len;
    while left > 0 {
        let n = left.min(buf.len() as u64) as usize;
        pattern.fill(&mut buf[..n]);
        if stdin.write_all(&buf[..n]).is_err() {
            return false;
        }
        hasher.update(&buf[..n]);
        left -= n as u64;
    }
    true
}

pub fn hash_file(path: &Path) -> blake3::Hash {
    let mut hasher = blake3::Hasher::new();
    hasher
        .update_reader(std::fs::File::open(path).unwrap())
        .unwrap();
    hasher.finalize()
}

/// The arguments after `dfs serve` for a node on `data` with `keys` (port 0 on 127.0.0.1).
pub fn serve_args(data: &Path, keys: &Keys) -> Vec<String> {
    [
        "--listen",
        "127.0.0.1:0",
        "--data",
        data.to_str().unwrap(),
        "--key-file",
        keys.key.to_str().unwrap(),
        "--secret-file",
        keys.secret.to_str().unwrap(),
    ]
    .iter()
    .map(|s| (*s).to_owned())
    .collect()
}
