//! Every failure the issue names, through real processes: unknown name, node unreachable,
//! wrong data key, disk full, file unreadable (a wrong network secret: `faults.rs`). Each
//! must end with a non-zero exit status and exactly one clear line on stderr
//! (`dfs: error: ...`).
#![allow(clippy::unwrap_used)] // Helpers outside #[test] fns; a panic is how a test fails.

mod common;

use std::fs::OpenOptions;
use std::io::Write;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::thread;

use common::*;

/// `/dev/full` opened for writing: every write fails with ENOSPC, like a full disk.
fn dev_full() -> Stdio {
    Stdio::from(OpenOptions::new().write(true).open("/dev/full").unwrap())
}

#[test]
fn unknown_name() {
    let tmp = tempfile::tempdir().unwrap();
    let keys = keygen(tmp.path(), "k");
    let a = Node::start(&tmp.path().join("a"), "a", &keys, &[], &["--no-fsync"]);
    let out = tmp.path().join("out");
    let line = assert_fails_with(
        &a.dfs(&["get", "no-such-file", "-o", out.to_str().unwrap()]),
        EXIT_NOT_FOUND,
        "not found",
    );
    assert!(line.contains("no-such-file"), "{line}");
    assert!(!out.exists(), "no output file for a failed get");
    assert_fails_with(
        &a.dfs(&["get", "no-such-file"]),
        EXIT_NOT_FOUND,
        "not found",
    );
    assert_fails_with(&a.dfs(&["rm", "no-such-file"]), EXIT_NOT_FOUND, "not found");
}

#[test]
fn node_unreachable() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().to_str().unwrap();
    let file = tmp.path().join("f");
    std::fs::write(&file, b"x").unwrap();
    let out = tmp.path().join("out");
    for args in [
        vec!["ls"],
        vec!["status"],
        vec!["peers"],
        vec!["get", "f", "-o", out.to_str().unwrap()],
        vec!["rm", "f"],
        vec!["put", file.to_str().unwrap()],
    ] {
        let mut all = args.clone();
        all.extend(["--data", dir]);
        assert_fails_with(&run(&all), EXIT_UNREACHABLE, "node unreachable");
    }
}

/// A name the node would refuse is refused before anything is uploaded (here: before
/// connecting, as no node runs), as are non-UTF-8 file names taken as the name.
#[test]
fn bad_names_fail_before_the_upload() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().to_str().unwrap();
    let file = tmp.path().join("f");
    std::fs::write(&file, b"x").unwrap();
    let f = file.to_str().unwrap();
    assert_fails_with(
        &run(&["put", f, "--name", "a\nb", "--data", dir]),
        EXIT_USAGE,
        "control characters",
    );
    assert_fails_with(
        &run(&["put", f, "--name", "", "--data", dir]),
        EXIT_USAGE,
        "empty",
    );
    let odd = tmp.path().join(std::ffi::OsStr::from_bytes(b"bad\xffname"));
    std::fs::write(&odd, b"x").unwrap();
    let out = dfs()
        .arg("put")
        .arg(&odd)
        .args(["--data", dir])
        .output()
        .unwrap();
    assert_fails_with(&out, EXIT_USAGE, "not UTF-8");
}

#[test]
fn bad_bootstrap_address_is_a_usage_error() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("n");
    for bad in [
        "garbage::::",
        "no-port",
        "host:",
        "host:0",
        "host:99999",
        ":7000",
        "::1:7000",
    ] {
        let line = assert_fails_with(
            &run(&[
                "serve",
                "--listen",
                "127.0.0.1:0",
                "--bootstrap",
                bad,
                "--data",
                data.to_str().unwrap(),
            ]),
            EXIT_USAGE,
            "bad --bootstrap address",
        );
        assert!(line.contains(bad), "{line}");
    }
}

#[test]
fn bad_listen_address_is_a_usage_error() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("n");
    let line = assert_fails_with(
        &run(&[
            "serve",
            "--listen",
            "nonsense",
            "--data",
            data.to_str().unwrap(),
        ]),
        EXIT_USAGE,
        "bad --listen address",
    );
    assert!(line.contains("nonsense"), "{line}");
}

#[test]
fn wrong_data_key() {
    let tmp = tempfile::tempdir().unwrap();
    let keys = keygen(tmp.path(), "k");
    let other = keygen(tmp.path(), "other");

    // Offline: a sealed file decrypted with another key.
    let plain = tmp.path().join("plain");
    write_pattern_file(&plain, 1, 100_000);
    let sealed = tmp.path().join("sealed");
    let out = run(&[
        "encrypt",
        "-k",
        keys.key.to_str().unwrap(),
        plain.to_str().unwrap(),
        "-o",
        sealed.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", stderr_of(&out));
    let target = tmp.path().join("never");
    assert_fails_with(
        &run(&[
            "decrypt",
            "-k",
            other.key.to_str().unwrap(),
            sealed.to_str().unwrap(),
            "-o",
            target.to_str().unwrap(),
        ]),
        EXIT_AUTH,
        "authentication failed",
    );
    assert!(!target.exists());

    // A node restarted with another data key than the one its files were stored with.
    let data = tmp.path().join("a");
    let mut a = Node::start(&data, "a", &keys, &[], &["--no-fsync"]);
    a.ok(&["put", plain.to_str().unwrap()]);
    a.signal("TERM");
    assert!(a.wait_exit().success());
    let rekeyed = Keys {
        key: other.key.clone(),
        secret: keys.secret.clone(),
    };
    let a = Node::start(&data, "a", &rekeyed, &[], &["--no-fsync"]);
    let out = tmp.path().join("out");
    let line = assert_fails_with(
        &a.dfs(&["get", "plain", "-o", out.to_str().unwrap()]),
        EXIT_AUTH,
        "wrong data key",
    );
    assert!(line.contains("--key-file"), "{line}");
    assert!(!out.exists());
    assert_fails_with(&a.dfs(&["rm", "plain"]), EXIT_AUTH, "wrong data key");
    // A name the node never held is still plainly not found.
    assert_fails_with(
        &a.dfs(&["get", "other", "-o", out.to_str().unwrap()]),
        EXIT_NOT_FOUND,
        "not found",
    );
    assert!(!out.exists());
}

#[test]
fn disk_full_on_the_client() {
    let tmp = tempfile::tempdir().unwrap();
    let keys = keygen(tmp.path(), "k");
    let a = Node::start(&tmp.path().join("a"), "a", &keys, &[], &["--no-fsync"]);
    let f = tmp.path().join("f");
    write_pattern_file(&f, 2, 1 << 20);
    a.ok(&["put", f.to_str().unwrap()]);

    let out = dfs()
        .args(["get", "f", "--data", a.data_arg()])
        .stdin(Stdio::null())
        .stdout(dev_full())
        .output()
        .unwrap();
    assert_fails_with(&out, EXIT_FAILURE, "No space left on device");

    let out = dfs()
        .args([
            "encrypt",
            "-k",
            keys.key.to_str().unwrap(),
            f.to_str().unwrap(),
        ])
        .stdin(Stdio::null())
        .stdout(dev_full())
        .output()
        .unwrap();
    assert_fails_with(&out, EXIT_FAILURE, "No space left on device");
    // The node is unaffected.
    let back = tmp.path().join("back");
    a.ok(&["get", "f", "-o", back.to_str().unwrap()]);
    assert_eq!(hash_file(&back), hash_file(&f));
}

/// Whether this process may mount a tmpfs in a private mount namespace (root with
/// `CAP_SYS_ADMIN`); the node-side disk-full test needs it.
fn can_mount_tmpfs(dir: &std::path::Path) -> bool {
    Command::new("unshare")
        .args(["-m", "sh", "-c", "mount -t tmpfs -o size=1m tmpfs \"$0\""])
        .arg(dir)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

#[test]
fn disk_full_on_the_node() {
    let tmp = tempfile::tempdir().unwrap();
    let keys = keygen(tmp.path(), "k");
    let data = tmp.path().join("a");
    let store = data.join("store");
    std::fs::create_dir_all(&store).unwrap();
    if !can_mount_tmpfs(&store) {
        eprintln!("skipped: cannot mount a tmpfs here (needs root in a mount namespace)");
        return;
    }
    // The node's store (only) on a 2 MiB tmpfs, in the node's own mount namespace; its
    // control socket stays on the shared filesystem.
    let a = Node::start_wrapped(
        &data,
        "a",
        &keys,
        &[
            "unshare",
            "-m",
            "sh",
            "-c",
            "mount -t tmpfs -o size=2m tmpfs \"$0\"/store && exec \"$@\"",
            data.to_str().unwrap(),
        ],
    );
    let big = tmp.path().join("big");
    write_pattern_file(&big, 3, 4 << 20);
    assert_fails_with(
        &a.dfs(&["put", big.to_str().unwrap()]),
        EXIT_FAILURE,
        "disk full on the node",
    );
    // Nothing is left behind, and the node keeps serving what fits.
    assert!(!a.ok(&["ls"]).contains("big"));
    let small = tmp.path().join("small");
    let hash = write_pattern_file(&small, 4, 100_000);
    a.ok(&["put", small.to_str().unwrap()]);
    let back = tmp.path().join("back");
    a.ok(&["get", "small", "-o", back.to_str().unwrap()]);
    assert_eq!(hash_file(&back), hash);
}

#[test]
fn file_unreadable() {
    let tmp = tempfile::tempdir().unwrap();
    let keys = keygen(tmp.path(), "k");
    let a = Node::start(&tmp.path().join("a"), "a", &keys, &[], &["--no-fsync"]);
    let missing = tmp.path().join("missing");
    assert_fails_with(
        &a.dfs(&["put", missing.to_str().unwrap()]),
        EXIT_FAILURE,
        &format!("cannot read {}", missing.display()),
    );
    assert_fails_with(
        &a.dfs(&["put", tmp.path().to_str().unwrap(), "--name", "d"]),
        EXIT_USAGE,
        "is a directory",
    );
    assert_fails_with(
        &run(&[
            "encrypt",
            "-k",
            keys.key.to_str().unwrap(),
            missing.to_str().unwrap(),
        ]),
        EXIT_FAILURE,
        "cannot read",
    );
    assert_fails_with(
        &run(&["encrypt", "-k", missing.to_str().unwrap(), "/dev/null"]),
        EXIT_FAILURE,
        "cannot read key file",
    );
    // Permission denied (root reads anything: checked only when the mode is honoured).
    let locked = tmp.path().join("locked");
    std::fs::write(&locked, b"secret").unwrap();
    std::fs::set_permissions(&locked, std::fs::Permissions::from_mode(0o000)).unwrap();
    if std::fs::read(&locked).is_err() {
        assert_fails_with(
            &a.dfs(&["put", locked.to_str().unwrap()]),
            EXIT_FAILURE,
            "Permission denied",
        );
    } else {
        eprintln!("permission case skipped: running as root");
    }
    assert!(a.ok(&["ls"]).trim().is_empty(), "nothing was stored");
}

/// The mode bits of `path` (following links).
fn mode(path: &Path) -> u32 {
    std::fs::metadata(path).unwrap().permissions().mode() & 0o7777
}

/// Names in `dir` starting with `.dfs-partial-`.
fn partials(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(".dfs-partial-"))
        .collect()
}

/// `-o` writes into what is there: a device stays a device, a link stays a link (its target
/// is written), a new file gets the umask's mode and a replaced one keeps its own; for
/// `encrypt`, `decrypt` and `get`.
#[test]
fn output_goes_into_the_target() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let keys = keygen(dir, "k");
    let key = keys.key.to_str().unwrap();
    let plain = dir.join("plain");
    let hash = write_pattern_file(&plain, 5, 300_000);
    let plain = plain.to_str().unwrap();
    // `dfs <op> -k KEY <input> -o <output>`, which must succeed.
    let crypt_into = |op: &str, input: &Path, output: &Path| {
        let out = run(&[
            op,
            "-k",
            key,
            input.to_str().unwrap(),
            "-o",
            output.to_str().unwrap(),
        ]);
        assert!(out.status.success(), "{}", stderr_of(&out));
    };
    let is_symlink = |path: &Path| {
        std::fs::symlink_metadata(path)
            .unwrap()
            .file_type()
            .is_symlink()
    };

    // A character device (as root the old rename replaced /dev/null with a regular file). A
    // private copy of /dev/null (`mknod`, root only) so that a regression cannot break the
    // machine's; `/dev/null` itself only when that is not possible.
    let null = dir.join("null");
    let null = if mknod_null(&null) {
        null
    } else {
        Path::new("/dev/null").to_path_buf()
    };
    let out = run(&["encrypt", "-k", key, plain, "-o", null.to_str().unwrap()]);
    assert!(out.status.success(), "{}", stderr_of(&out));
    let is_device = |path: &Path| {
        std::fs::symlink_metadata(path)
            .unwrap()
            .file_type()
            .is_char_device()
    };
    assert!(is_device(&null), "{} replaced", null.display());

    // A FIFO: written into, streaming, and still a FIFO.
    let fifo = dir.join("fifo");
    mkfifo(&fifo);
    let reader = {
        let fifo = fifo.clone();
        thread::spawn(move || std::fs::read(fifo).unwrap())
    };
    let out = run(&["encrypt", "-k", key, plain, "-o", fifo.to_str().unwrap()]);
    assert!(out.status.success(), "{}", stderr_of(&out));
    assert!(
        std::fs::symlink_metadata(&fifo)
            .unwrap()
            .file_type()
            .is_fifo()
    );
    let through_fifo = reader.join().unwrap();

    // A new file: 0666 less this process's umask (which the child inherits), like any file.
    let probe = dir.join("probe");
    std::fs::File::create(&probe).unwrap();
    let sealed = dir.join("sealed");
    let out = run(&["encrypt", "-k", key, plain, "-o", sealed.to_str().unwrap()]);
    assert!(out.status.success(), "{}", stderr_of(&out));
    assert_eq!(mode(&sealed), mode(&probe));
    assert_eq!(through_fifo.len() as u64, sealed.metadata().unwrap().len());

    // Through a symlink to an existing file of mode 0640: the target is replaced, keeps its
    // mode, and the link stays a link.
    let real = dir.join("real");
    std::fs::write(&real, b"old").unwrap();
    std::fs::set_permissions(&real, std::fs::Permissions::from_mode(0o640)).unwrap();
    let link = dir.join("link");
    std::os::unix::fs::symlink("real", &link).unwrap();
    crypt_into("decrypt", &sealed, &link);
    assert!(is_symlink(&link));
    assert_eq!(std::fs::read_link(&link).unwrap(), Path::new("real"));
    assert_eq!(hash_file(&real), hash);
    assert_eq!(mode(&real), 0o640);

    // A dangling link: the file is created where it points.
    let sub = dir.join("sub");
    std::fs::create_dir(&sub).unwrap();
    let dangling = dir.join("dangling");
    std::os::unix::fs::symlink("sub/made", &dangling).unwrap();
    crypt_into("decrypt", &sealed, &dangling);
    assert!(is_symlink(&dangling));
    assert_eq!(hash_file(&sub.join("made")), hash);

    // The same through a node's `get`.
    let a = Node::start(&dir.join("a"), "a", &keys, &[], &["--no-fsync"]);
    a.ok(&["put", plain]);
    a.ok(&["get", "plain", "-o", null.to_str().unwrap()]);
    assert!(is_device(&null), "{} replaced", null.display());
    std::fs::write(&real, b"old").unwrap();
    a.ok(&["get", "plain", "-o", link.to_str().unwrap()]);
    assert!(
        std::fs::symlink_metadata(&link)
            .unwrap()
            .file_type()
            .is_symlink()
    );
    assert_eq!(hash_file(&real), hash);
    assert_eq!(mode(&real), 0o640);
    let fresh = dir.join("fresh");
    a.ok(&["get", "plain", "-o", fresh.to_str().unwrap()]);
    assert_eq!(mode(&fresh), mode(&probe));
    assert!(partials(dir).is_empty());
}

/// `-o DIR` is a usage error found before anything else: before connecting to a node (none
/// runs here: not "unreachable") and before reading the key or the input (both missing here).
#[test]
fn output_to_a_directory_fails_first() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().to_str().unwrap();
    let missing = tmp.path().join("missing");
    assert_output_refused(dir, dir, missing.to_str().unwrap(), "is a directory");
}

/// `get`, `encrypt` and `decrypt` with `-o TARGET` all fail at once with status 2 and
/// `needle`: before connecting (no node runs on `data`) and before reading the key or the
/// input (`missing` does not exist).
fn assert_output_refused(target: &str, data: &str, missing: &str, needle: &str) {
    assert_fails_with(
        &run(&["get", "f", "-o", target, "--data", data]),
        EXIT_USAGE,
        needle,
    );
    for cmd in ["encrypt", "decrypt"] {
        assert_fails_with(
            &run(&[cmd, "-k", missing, missing, "-o", target]),
            EXIT_USAGE,
            needle,
        );
    }
}

/// Creates a character device like /dev/null at `path` (`mknod`: root only); whether it could.
fn mknod_null(path: &Path) -> bool {
    Command::new("mknod")
        .arg(path)
        .args(["c", "1", "3"])
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Creates a FIFO with `mkfifo`.
fn mkfifo(path: &Path) {
    let status = Command::new("mkfifo").arg(path).status().unwrap();
    assert!(status.success(), "mkfifo {}", path.display());
}

/// Opens `fifo` for writing, which returns once a reader has opened it; fails after
/// [`DEADLINE`] instead of hanging.
fn open_fifo_writer(fifo: &Path) -> std::fs::File {
    let (tx, rx) = mpsc::channel();
    let path = fifo.to_path_buf();
    thread::spawn(move || {
        let _ = tx.send(OpenOptions::new().write(true).open(path));
    });
    rx.recv_timeout(DEADLINE)
        .expect("the reader never opened the FIFO")
        .unwrap()
}

/// SIGTERM or SIGINT while `encrypt -o FILE` is writing: the temporary file is removed, no
/// output appears and the status is 143 or 130. The input is a FIFO this test holds open:
/// `dfs` creates its temporary file before it opens the input, so once our open of the FIFO
/// returns the partial file exists (checked), and the command is blocked mid-stream.
#[test]
fn signal_removes_the_partial_output() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let keys = keygen(dir, "k");
    let fifo = dir.join("fifo");
    mkfifo(&fifo);
    let out_dir = dir.join("out");
    std::fs::create_dir(&out_dir).unwrap();
    let out = out_dir.join("sealed");
    for (signal, code) in [("TERM", 143), ("INT", 130)] {
        let child = dfs()
            .args([
                "encrypt",
                "-k",
                keys.key.to_str().unwrap(),
                fifo.to_str().unwrap(),
                "-o",
                out.to_str().unwrap(),
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut writer = open_fifo_writer(&fifo);
        // More than the input buffer: the cipher has read and written some of it.
        writer.write_all(&Pattern::bytes(6, 1 << 20)).unwrap();
        assert_eq!(partials(&out_dir).len(), 1, "a partial file while writing");
        let output = signal_and_wait(child, signal);
        drop(writer);
        let line = assert_fails_with(&output, code, "interrupted by SIG");
        assert!(line.contains(&format!("SIG{signal}")), "{line}");
        assert!(partials(&out_dir).is_empty(), "partial file left behind");
        assert!(!out.exists());
    }
}

/// SIGTERM or SIGINT during `get -o FILE`: the temporary file is removed and the status is
/// 143 or 130. The test plays the node: it listens on the control socket and never answers,
/// so `get` (which creates its temporary file before it connects) is stuck mid-command once
/// the connection is accepted.
#[test]
fn signal_during_get_removes_the_partial_output() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    std::fs::create_dir(&data).unwrap();
    let listener =
        std::os::unix::net::UnixListener::bind(data.join(dfs_cli::control::SOCKET_FILE)).unwrap();
    let out_dir = tmp.path().join("out");
    std::fs::create_dir(&out_dir).unwrap();
    let out = out_dir.join("got");
    let (accepted_tx, accepted) = mpsc::channel();
    thread::spawn(move || {
        // Hold every connection open (unanswered) until the test ends.
        let mut held = Vec::new();
        for conn in listener.incoming() {
            held.push(conn.unwrap());
            if accepted_tx.send(()).is_err() {
                break;
            }
        }
    });
    for (signal, code) in [("TERM", 143), ("INT", 130)] {
        let child = dfs()
            .args(["get", "f", "-o", out.to_str().unwrap(), "--data"])
            .arg(&data)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        accepted
            .recv_timeout(DEADLINE)
            .expect("get never connected");
        assert_eq!(partials(&out_dir).len(), 1, "a partial file while fetching");
        let output = signal_and_wait(child, signal);
        let line = assert_fails_with(&output, code, &format!("interrupted by SIG{signal}"));
        assert!(line.contains("partial output was removed"), "{line}");
        assert!(partials(&out_dir).is_empty(), "partial file left behind");
        assert!(!out.exists());
    }
}

/// Whether process `pid` has installed a handler for SIGINT (`SigCgt` in its status), or
/// has ended.
fn catches_sigint(pid: u32) -> bool {
    let Ok(status) = std::fs::read_to_string(format!("/proc/{pid}/status")) else {
        return true;
    };
    if status
        .lines()
        .any(|l| l.starts_with("State:") && l.contains('Z'))
    {
        return true;
    }
    status
        .lines()
        .find_map(|l| l.strip_prefix("SigCgt:"))
        .and_then(|mask| u64::from_str_radix(mask.trim(), 16).ok())
        .is_some_and(|mask| mask & 0b10 != 0)
}

/// A signal right after `encrypt -o FILE` installs its handlers, many times over: no
/// `.dfs-partial-*` file is ever left behind. The temporary file used to be created on the
/// worker thread, so a signal handled just after the thread was spawned removed nothing and
/// the worker then created and leaked it. The fix creates it before the thread exists, so no
/// interleaving can leak it; this loop is the (probabilistic) regression check. The signal
/// comes from a shell's builtin `kill` started beforehand, released the moment the handler
/// shows in `/proc/PID/status` (polled: the event has no other signal). The input is a FIFO
/// nobody writes: the command waits there until the signal.
///
/// Ignored by default: it is a stress loop (200 processes, polling `/proc`), and once, on a
/// heavily loaded 2-core machine, one of its runs did not exit within the deadline (not
/// reproduced since; to be investigated). Run it with
/// `cargo test -p dfs-cli --test failures -- --ignored early_signals`.
#[test]
#[ignore = "stress loop of racing signals; run with --ignored"]
fn early_signals_leave_no_partial_output() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let keys = keygen(dir, "k");
    let fifo = dir.join("fifo");
    mkfifo(&fifo);
    let out_dir = dir.join("out");
    std::fs::create_dir(&out_dir).unwrap();
    let out = out_dir.join("sealed");
    let (mut caught, mut killed) = (0, 0);
    for _ in 0..200 {
        let child = dfs()
            .args(["encrypt", "-k", keys.key.to_str().unwrap()])
            .arg(&fifo)
            .arg("-o")
            .arg(&out)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let mut killer = Command::new("sh")
            .args(["-c", "read _ && kill -INT \"$0\"", &child.id().to_string()])
            .stdin(Stdio::piped())
            .spawn()
            .unwrap();
        let start = std::time::Instant::now();
        while !catches_sigint(child.id()) {
            assert!(start.elapsed() < DEADLINE, "no SIGINT handler");
        }
        killer.stdin.take().unwrap().write_all(b"go\n").unwrap();
        assert!(wait_child(killer).success());
        let status = wait_child(child);
        match status.code() {
            Some(130) => caught += 1,
            None => killed += 1,
            other => panic!("unexpected status {other:?}"),
        }
        assert!(partials(&out_dir).is_empty(), "partial file left behind");
        assert!(!out.exists());
    }
    println!("{caught} caught (status 130), {killed} killed before the handlers");
}

/// `-o /dev/stdout`, `-o /proc/self/fd/2` (here: a log file opened for appending, like a
/// shell's `>>`) append to that file: it is neither replaced nor overwritten from its start.
#[test]
fn output_under_dev_appends_to_what_is_there() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let keys = keygen(dir, "k");
    let key = keys.key.to_str().unwrap();
    let plain = dir.join("plain");
    write_pattern_file(&plain, 7, 100_000);
    let sealed = dir.join("sealed");
    let out = run(&[
        "encrypt",
        "-k",
        key,
        plain.to_str().unwrap(),
        "-o",
        sealed.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", stderr_of(&out));
    let expected = std::fs::read(&plain).unwrap();

    for (path, fd) in [("/dev/stdout", 1), ("/proc/self/fd/2", 2)] {
        let log = dir.join(format!("log{fd}"));
        std::fs::write(&log, b"old log\n").unwrap();
        let ino = std::os::unix::fs::MetadataExt::ino(&std::fs::metadata(&log).unwrap());
        let append = || Stdio::from(OpenOptions::new().append(true).open(&log).unwrap());
        let mut cmd = dfs();
        cmd.args(["decrypt", "-k", key])
            .arg(&sealed)
            .args(["-o", path])
            .stdin(Stdio::null());
        if fd == 1 {
            cmd.stdout(append()).stderr(Stdio::null());
        } else {
            cmd.stdout(Stdio::null()).stderr(append());
        }
        let status = cmd.status().unwrap();
        assert!(status.success(), "{path}: {status:?}");
        let written = std::fs::read(&log).unwrap();
        assert_eq!(&written[..8], b"old log\n", "{path}: overwritten");
        assert!(written[8..] == expected[..], "{path}: wrong contents");
        let after = std::os::unix::fs::MetadataExt::ino(&std::fs::metadata(&log).unwrap());
        assert_eq!(after, ino, "{path}: replaced");
        assert!(partials(dir).is_empty());
    }
}

/// `-o SOCKET` is a usage error up front (a socket cannot be opened for writing).
#[test]
fn output_to_a_socket_is_a_usage_error() {
    let tmp = tempfile::tempdir().unwrap();
    let socket = tmp.path().join("sock");
    let _listener = std::os::unix::net::UnixListener::bind(&socket).unwrap();
    let socket = socket.to_str().unwrap();
    let missing = tmp.path().join("missing");
    let missing = missing.to_str().unwrap();
    assert_output_refused(socket, missing, missing, "is a socket");
}

/// A replaced file keeps its owner and group along with its mode (like `cp -p`): as root,
/// replacing a setuid file of `nobody` (uid 65534) gave a setuid-root file. Needs root to
/// give a file away; otherwise skipped (the mode rule without the owner: unit-tested).
#[test]
fn replaced_file_keeps_its_owner() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let keys = keygen(dir, "k");
    let plain = dir.join("plain");
    write_pattern_file(&plain, 8, 10_000);
    let victim = dir.join("victim");
    std::fs::write(&victim, b"old").unwrap();
    if std::os::unix::fs::chown(&victim, Some(65534), Some(65534)).is_err() {
        eprintln!("owner case skipped: not root");
        return;
    }
    std::fs::set_permissions(&victim, std::fs::Permissions::from_mode(0o4755)).unwrap();
    let out = run(&[
        "encrypt",
        "-k",
        keys.key.to_str().unwrap(),
        plain.to_str().unwrap(),
        "-o",
        victim.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", stderr_of(&out));
    let meta = std::fs::metadata(&victim).unwrap();
    use std::os::unix::fs::MetadataExt;
    assert_eq!((meta.uid(), meta.gid()), (65534, 65534));
    assert_eq!(mode(&victim), 0o4755);
    assert!(meta.len() > 10_000, "the new contents");

    // Not root: `nobody` replacing its own setuid file keeps the bit (a write by a process
    // without CAP_FSETID clears setuid, so the mode is set after the last write).
    use std::os::unix::process::CommandExt;
    for path in [dir, keys.key.as_path(), victim.as_path()] {
        std::os::unix::fs::chown(path, Some(65534), Some(65534)).unwrap();
    }
    // (A chown clears setuid: set it again.)
    std::fs::set_permissions(&victim, std::fs::Permissions::from_mode(0o4755)).unwrap();
    let out = dfs()
        .args(["encrypt", "-k", keys.key.to_str().unwrap()])
        .arg(&plain)
        .arg("-o")
        .arg(&victim)
        .uid(65534)
        .gid(65534)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr_of(&out));
    assert_eq!(mode(&victim), 0o4755, "setuid kept by its own user");
}

/// stdout closed by its reader (`dfs put - | true`): the file is stored, the line is dropped
/// quietly and the status is 0 (it was a panic, status 101). The pipe's read end is closed
/// before `put` can print: it prints only after its stdin ends, which we close afterwards.
#[test]
fn closed_stdout_is_not_an_error() {
    let tmp = tempfile::tempdir().unwrap();
    let keys = keygen(tmp.path(), "k");
    let a = Node::start(&tmp.path().join("a"), "a", &keys, &[], &["--no-fsync"]);
    let mut child = dfs()
        .args(["put", "-", "--name", "piped", "--data", a.data_arg()])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stdout.take());
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(b"hello through a pipe").unwrap();
    drop(stdin);
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    let out = rx
        .recv_timeout(DEADLINE)
        .expect("put did not exit")
        .unwrap();
    assert!(
        out.status.success(),
        "status {:?}: {}",
        out.status,
        stderr_of(&out)
    );
    assert!(stderr_of(&out).is_empty(), "{}", stderr_of(&out));
    assert!(a.ok(&["ls"]).contains("piped"));
}

/// Sends `SIG<signal>` to `child` and waits (up to the deadline) for it to exit.
fn signal_and_wait(child: std::process::Child, signal: &str) -> std::process::Output {
    let status = Command::new("kill")
        .arg(format!("-{signal}"))
        .arg(child.id().to_string())
        .status()
        .unwrap();
    assert!(status.success());
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    rx.recv_timeout(DEADLINE)
        .expect("dfs did not exit on the signal")
        .unwrap()
}
