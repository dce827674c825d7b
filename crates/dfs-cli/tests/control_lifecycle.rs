//! `dfs serve` shutdown and the control protocol against clients that misbehave or ask for
//! more than one frame holds: a download whose client stopped reading, a listing larger than a
//! frame.
#![allow(clippy::unwrap_used)] // Helpers outside #[test] fns; a panic is how a test fails.

mod common;

use std::path::Path;
use std::pin::Pin;
use std::sync::mpsc;
use std::task::{Context, Poll};
use std::thread;
use std::time::Duration;

use common::*;
use dfs_cli::control::Client;

/// A writer that never accepts a byte: a client whose output (a pipe into `less`, a stalled
/// consumer) stopped draining, so it stops reading the control socket too.
struct Stalled;

impl tokio::io::AsyncWrite for Stalled {
    fn poll_write(
        self: Pin<&mut Self>,
        _: &mut Context<'_>,
        _: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Poll::Pending
    }
    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Pending
    }
    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Pending
    }
}

/// Starts `get name` on `data` in a thread of its own whose output never drains; returns once
/// the node has announced the file (it is then sending the body), with the thread's handle
/// (it ends when the node closes the connection).
fn start_stalled_get(data: &Path, name: &str) -> thread::JoinHandle<()> {
    let (found_tx, found_rx) = mpsc::channel();
    let data = data.to_path_buf();
    let name = name.to_owned();
    let handle = thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let mut client = Client::connect(&data).await.unwrap();
            let _ = client
                .get(&name, Stalled, |size| found_tx.send(size).unwrap(), |_| {})
                .await;
        });
    });
    found_rx
        .recv_timeout(DEADLINE)
        .expect("the node announces the file");
    handle
}

/// Waits up to `limit` for `node` to exit (without reaping it); `false` if it is still
/// running then (the guard kills it).
fn exits_within(node: &Node, limit: Duration) -> bool {
    let pid = node.pid();
    let deadline = std::time::Instant::now() + limit;
    node.log.wait_until("the node to exit", || {
        // Our unreaped child: a zombie (or gone) once it exited.
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok();
        if stat.is_none_or(|s| {
            s.rsplit(')')
                .next()
                .and_then(|r| r.split_whitespace().next())
                == Some("Z")
        }) {
            Some(true)
        } else if std::time::Instant::now() > deadline {
            Some(false)
        } else {
            None
        }
    })
}

/// A 32 MiB file on a fresh node started with `extra`.
fn node_with_big_file(tmp: &Path, extra: &[&str]) -> Node {
    let keys = keygen(tmp, "net");
    let mut args = vec!["--no-fsync"];
    args.extend_from_slice(extra);
    let a = Node::start(&tmp.join("a"), "a", &keys, &[], &args);
    let f = tmp.join("big");
    write_pattern_file(&f, 1, 32 << 20);
    a.ok(&["put", f.to_str().unwrap()]);
    a
}

/// SIGTERM while a client is downloading but no longer reading: after `--grace` the node
/// aborts the download like any other in-flight request and exits (0), removing its socket.
#[test]
fn sigterm_during_a_download_whose_client_stopped_reading_ends_after_the_grace_period() {
    let tmp = tempfile::tempdir().unwrap();
    let mut a = node_with_big_file(tmp.path(), &["--grace", "1"]);
    let _client = start_stalled_get(&a.data, "big");
    a.signal("TERM");
    a.log.wait_for("control connection(s) to finish");
    assert!(
        exits_within(&a, Duration::from_secs(30)),
        "the node did not stop 30 s after SIGTERM with --grace 1:\n{}",
        a.log.contents()
    );
    let status = a.wait_exit();
    assert!(status.success(), "{}", a.log.contents());
    assert!(!a.data.join("dfs.sock").exists(), "control socket removed");
}

/// The same with a long grace period and a second signal, which must stop the node at once.
#[test]
fn a_second_signal_stops_a_node_whose_download_client_stopped_reading() {
    let tmp = tempfile::tempdir().unwrap();
    let mut a = node_with_big_file(tmp.path(), &["--grace", "3600"]);
    let _client = start_stalled_get(&a.data, "big");
    a.signal("TERM");
    a.log.wait_for("control connection(s) to finish");
    a.signal("INT");
    a.log.wait_for("second signal");
    assert!(
        exits_within(&a, Duration::from_secs(30)),
        "the node did not stop 30 s after a second signal:\n{}",
        a.log.contents()
    );
    let status = a.wait_exit();
    assert!(!status.success(), "{}", a.log.contents());
    assert!(!a.data.join("dfs.sock").exists(), "control socket removed");
}

/// `dfs ls` of a node whose listing does not fit in one control frame (1 MiB): 300 files
/// with names of 4000 bytes (4096 are allowed), or about 12,000 files of ordinary names.
#[test]
fn ls_of_a_listing_larger_than_one_frame_lists_everything() {
    let tmp = tempfile::tempdir().unwrap();
    let keys = keygen(tmp.path(), "net");
    let a = Node::start(&tmp.path().join("a"), "a", &keys, &[], &["--no-fsync"]);
    const FILES: usize = 300;
    let names: Vec<String> = (0..FILES)
        .map(|i| format!("{i:04}-{}", "n".repeat(4000)))
        .collect();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let mut client = Client::connect(&a.data).await.unwrap();
        for name in &names {
            client.put(name, Some(1), &b"x"[..], |_| {}).await.unwrap();
        }
    });
    let out = a.dfs(&["ls"]);
    assert!(out.status.success(), "ls: {}", stderr_of(&out));
    let listed = String::from_utf8_lossy(&out.stdout);
    assert_eq!(listed.lines().count(), FILES);
    for name in &names {
        assert!(listed.contains(name.as_str()));
    }
    // `status` counts the same files.
    assert!(
        a.ok(&["status"]).contains(&format!("files:    {FILES} ")),
        "{}",
        a.ok(&["status"])
    );
}
