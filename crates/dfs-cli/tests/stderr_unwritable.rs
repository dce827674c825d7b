//! stderr that cannot be written (`2>/dev/full`, a closed pipe): `dfs` still does its work and
//! ends with the status the work deserves, never status 101 from a panic in `eprintln!` (the
//! stderr twin of `failures.rs`'s `closed_stdout_is_not_an_error`).
#![allow(clippy::unwrap_used)]

mod common;

use std::fs::OpenOptions;
use std::os::unix::fs::PermissionsExt;
use std::process::{Output, Stdio};

use common::*;

/// Every write to it fails with ENOSPC.
fn dev_full() -> Stdio {
    Stdio::from(OpenOptions::new().write(true).open("/dev/full").unwrap())
}

/// A pipe whose read end is already closed: every write fails with EPIPE.
fn closed_pipe() -> Stdio {
    let (reader, writer) = std::io::pipe().unwrap();
    drop(reader);
    Stdio::from(writer)
}

fn run_with_stderr(args: &[&str], stderr: Stdio) -> Output {
    dfs()
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(stderr)
        .output()
        .unwrap()
}

#[test]
fn keygen_succeeds_when_stderr_is_unwritable() {
    let tmp = tempfile::tempdir().unwrap();
    for (i, stderr) in [dev_full(), closed_pipe()].into_iter().enumerate() {
        let key = tmp.path().join(format!("k{i}"));
        let secret = tmp.path().join(format!("s{i}"));
        let out = run_with_stderr(
            &[
                "keygen",
                "--key-file",
                key.to_str().unwrap(),
                "--secret-file",
                secret.to_str().unwrap(),
            ],
            stderr,
        );
        assert!(key.exists() && secret.exists());
        assert_eq!(
            out.status.code(),
            Some(0),
            "keys written, status {:?}",
            out.status
        );
    }
}

/// A key file others may read gets a warning on stderr; an unwritable stderr must not turn
/// the warning into a crash that skips the work.
#[test]
fn encrypt_with_a_shared_key_succeeds_when_stderr_is_unwritable() {
    let tmp = tempfile::tempdir().unwrap();
    let keys = keygen(tmp.path(), "k");
    std::fs::set_permissions(&keys.key, std::fs::Permissions::from_mode(0o644)).unwrap();
    let plain = tmp.path().join("plain");
    std::fs::write(&plain, b"some bytes").unwrap();
    let sealed = tmp.path().join("sealed");
    let out = run_with_stderr(
        &[
            "encrypt",
            "-k",
            keys.key.to_str().unwrap(),
            plain.to_str().unwrap(),
            "-o",
            sealed.to_str().unwrap(),
        ],
        dev_full(),
    );
    assert_eq!(out.status.code(), Some(0), "status {:?}", out.status);
    assert!(sealed.exists(), "the output was never written");
}

/// A failure keeps its own exit status when its message cannot be printed.
#[test]
fn failure_keeps_its_status_when_stderr_is_unwritable() {
    let tmp = tempfile::tempdir().unwrap();
    let missing = tmp.path().join("no-such-key");
    let out = run_with_stderr(
        &["decrypt", "-k", missing.to_str().unwrap(), "whatever"],
        closed_pipe(),
    );
    assert_eq!(
        out.status.code(),
        Some(EXIT_FAILURE),
        "status {:?}",
        out.status
    );
    let out = run_with_stderr(
        &[
            "ls",
            "--data",
            tmp.path().join("nothing-here").to_str().unwrap(),
        ],
        dev_full(),
    );
    assert_eq!(
        out.status.code(),
        Some(EXIT_UNREACHABLE),
        "status {:?}",
        out.status
    );
}

/// `get -o FILE` writes the file and then says so on stderr: the status is 0.
#[test]
fn get_succeeds_when_stderr_is_unwritable() {
    let tmp = tempfile::tempdir().unwrap();
    let keys = keygen(tmp.path(), "k");
    let a = Node::start(&tmp.path().join("a"), "a", &keys, &[], &["--no-fsync"]);
    let plain = tmp.path().join("plain");
    std::fs::write(&plain, b"fetched later").unwrap();
    a.ok(&["put", plain.to_str().unwrap()]);
    let target = tmp.path().join("out");
    let out = run_with_stderr(
        &[
            "get",
            "plain",
            "-o",
            target.to_str().unwrap(),
            "--data",
            a.data_arg(),
        ],
        dev_full(),
    );
    assert_eq!(std::fs::read(&target).unwrap(), b"fetched later");
    assert_eq!(out.status.code(), Some(0), "status {:?}", out.status);
}

/// A node whose log cannot be written (its logger died: stderr is a closed pipe) keeps
/// serving and stops cleanly on SIGTERM; it used to die with status 101 at its first log line
/// (`tracing-subscriber` reports its own write errors with `eprintln!`, which panics).
#[test]
fn serve_runs_when_its_log_cannot_be_written() {
    use std::io::{BufRead, BufReader};
    let tmp = tempfile::tempdir().unwrap();
    let keys = keygen(tmp.path(), "k");
    let data = tmp.path().join("a");
    for stderr in [closed_pipe(), dev_full()] {
        let mut child = dfs()
            .arg("serve")
            .args(serve_args(&data, &keys))
            .arg("--no-fsync")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(stderr)
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let mut child = KillOnDrop(Some(child));
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if line.starts_with("listening on ") {
                    let _ = tx.send(line);
                }
            }
        });
        let ready = rx.recv_timeout(DEADLINE);
        if ready.is_err() {
            let status = wait_child(child.take());
            panic!("no ready line; the node ended with {status:?}");
        }
        let plain = tmp.path().join("plain");
        std::fs::write(&plain, b"logged nowhere").unwrap();
        let put = run(&[
            "put",
            plain.to_str().unwrap(),
            "--data",
            data.to_str().unwrap(),
        ]);
        assert!(put.status.success(), "put: {}", stderr_of(&put));
        let status = run(&["status", "--data", data.to_str().unwrap()]);
        assert!(status.status.success(), "status: {}", stderr_of(&status));
        let child = child.take();
        let kill = std::process::Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status()
            .unwrap();
        assert!(kill.success());
        let status = wait_child(child);
        assert_eq!(status.code(), Some(0), "the node ended with {status:?}");
    }
}

/// Kills the node if the test fails while it runs.
struct KillOnDrop(Option<std::process::Child>);

impl KillOnDrop {
    fn take(&mut self) -> std::process::Child {
        self.0.take().expect("the node was taken already")
    }
}

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        if let Some(mut child) = self.0.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}
