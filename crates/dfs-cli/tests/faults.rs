//! Faults with real processes: a wrong network secret, garbage on the peer port, SIGTERM in
#![allow(clippy::unwrap_used)] // Helpers outside #[test] fns; a panic is how a test fails.
//! the middle of a put, `kill -9` in the middle of a transfer.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Child, Stdio};

use common::*;

/// `<data>/store/tmp` (the store's staging area) holds no leftovers.
fn assert_no_staging_leftovers(node: &Node) {
    let tmp = node.data.join("store").join("tmp");
    if let Ok(entries) = std::fs::read_dir(&tmp) {
        let left: Vec<_> = entries.map(|e| e.unwrap().file_name()).collect();
        assert!(
            left.is_empty(),
            "staging leftovers on {}: {left:?}",
            node.name
        );
    }
}

/// `dfs put - --name NAME` through `node`, with stdin left open for the test to feed.
fn start_put(node: &Node, name: &str) -> Child {
    dfs()
        .args(["put", "-", "--name", name, "--data", node.data_arg()])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

fn finish(child: Child) -> std::process::Output {
    child.wait_with_output().unwrap()
}

fn get_hash(node: &Node, name: &str, dir: &Path) -> blake3::Hash {
    let out = dir.join(format!("got-{}-{name}", node.name));
    node.ok(&["get", name, "-o", out.to_str().unwrap()]);
    let hash = hash_file(&out);
    std::fs::remove_file(&out).unwrap();
    hash
}

#[test]
fn a_node_with_the_wrong_network_secret_cannot_join_and_says_so() {
    let tmp = tempfile::tempdir().unwrap();
    let keys = keygen(tmp.path(), "net");
    let other = keygen(tmp.path(), "other");
    let a = Node::start(&tmp.path().join("a"), "a", &keys, &[], &["--no-fsync"]);

    let c_dir = tmp.path().join("c");
    let (status, log) = serve_expect_failure(&[
        "--listen",
        "127.0.0.1:0",
        "--data",
        c_dir.to_str().unwrap(),
        "--key-file",
        keys.key.to_str().unwrap(),
        "--secret-file",
        other.secret.to_str().unwrap(),
        "--bootstrap",
        &a.addr,
    ]);
    assert_eq!(status.code(), Some(5), "{log}");
    // `serve` logs on stderr too; its failure is one `dfs: error:` line, the last one.
    let errors: Vec<&str> = log
        .lines()
        .filter(|l| l.starts_with("dfs: error: "))
        .collect();
    assert_eq!(errors.len(), 1, "{log}");
    assert_eq!(log.lines().last(), Some(errors[0]), "{log}");
    assert!(
        errors[0].contains(&format!("cannot join the network at {}", a.addr)),
        "{log}"
    );
    assert!(errors[0].contains("network secret"), "{log}");
    assert!(errors[0].contains("--secret-file"), "{log}");

    // No secret at all against a node that has one.
    let (status, log) = serve_expect_failure(&[
        "--listen",
        "127.0.0.1:0",
        "--data",
        c_dir.to_str().unwrap(),
        "--bootstrap",
        &a.addr,
    ]);
    assert_eq!(status.code(), Some(5), "{log}");
    assert!(log.contains("requires a network secret"), "{log}");

    // A is untouched: no peers, still serving.
    assert_eq!(a.ok(&["peers"]).trim(), "");
    let b = Node::start(&tmp.path().join("b"), "b", &keys, &[&a], &["--no-fsync"]);
    b.wait_peers(1);
    let f = tmp.path().join("f");
    let hash = write_pattern_file(&f, 3, 100_000);
    b.ok(&["put", f.to_str().unwrap()]);
    assert_eq!(get_hash(&a, "f", tmp.path()), hash);
}

#[test]
fn a_second_node_on_the_same_data_directory_is_refused_and_the_first_keeps_serving() {
    let tmp = tempfile::tempdir().unwrap();
    let keys = keygen(tmp.path(), "net");
    let a = Node::start(&tmp.path().join("a"), "a", &keys, &[], &["--no-fsync"]);
    let (status, log) = serve_expect_failure(&[
        "--listen",
        "127.0.0.1:0",
        "--data",
        a.data_arg(),
        "--key-file",
        keys.key.to_str().unwrap(),
        "--secret-file",
        keys.secret.to_str().unwrap(),
    ]);
    assert!(!status.success(), "{log}");
    assert!(
        log.contains("already running on this data directory"),
        "{log}"
    );
    // The first node's control socket survived the attempt.
    let f = tmp.path().join("f");
    let hash = write_pattern_file(&f, 4, 10_000);
    a.ok(&["put", f.to_str().unwrap()]);
    assert_eq!(get_hash(&a, "f", tmp.path()), hash);
}

#[test]
fn garbage_and_half_handshakes_leave_the_node_serving() {
    let tmp = tempfile::tempdir().unwrap();
    let keys = keygen(tmp.path(), "net");
    let a = Node::start(&tmp.path().join("a"), "a", &keys, &[], &["--no-fsync"]);

    let mut junk: Vec<Vec<u8>> = vec![
        b"GET / HTTP/1.1\r\nHost: dfs\r\n\r\n".to_vec(),
        Pattern::bytes(9, 256 * 1024),
        vec![0xff; 64],
        b"dfs-wire".to_vec(),
    ];
    let mut hello = b"dfs-wire".to_vec();
    hello.extend_from_slice(&[0, 1]);
    hello.extend_from_slice(&Pattern::bytes(10, 40));
    junk.push(hello.clone());
    for bytes in &junk {
        let mut s = TcpStream::connect(&a.addr).unwrap();
        // The node may hang up before reading everything: that is fine.
        let _ = s.write_all(bytes);
        let _ = s.shutdown(std::net::Shutdown::Write);
    }
    // Half handshakes kept open while the cluster keeps working.
    let mut held = Vec::new();
    for bytes in [&b"dfs-wire"[..], &hello[..], &b""[..]] {
        let mut s = TcpStream::connect(&a.addr).unwrap();
        s.write_all(bytes).unwrap();
        held.push(s);
    }

    let b = Node::start(&tmp.path().join("b"), "b", &keys, &[&a], &["--no-fsync"]);
    let c = Node::start(&tmp.path().join("c"), "c", &keys, &[&a], &["--no-fsync"]);
    a.wait_peers(2);
    let f = tmp.path().join("f");
    let hash = write_pattern_file(&f, 4, 2 * 1024 * 1024);
    c.ok(&["put", f.to_str().unwrap()]);
    assert_eq!(get_hash(&a, "f", tmp.path()), hash);
    assert_eq!(get_hash(&b, "f", tmp.path()), hash);
    assert!(a.ok(&["status"]).contains("peers:    2"));

    // The held connections are closed by the node eventually, never answered with data that
    // is not a handshake; either way the node is still up.
    for mut s in held {
        let _ = s.set_read_timeout(Some(std::time::Duration::from_millis(1)));
        let mut buf = [0u8; 1];
        let _ = s.read(&mut buf);
    }
    assert!(
        !a.log.contents().contains("panicked"),
        "{}",
        a.log.contents()
    );
}

#[test]
fn sigterm_during_a_put_lets_it_finish_within_the_grace_period() {
    let tmp = tempfile::tempdir().unwrap();
    let keys = keygen(tmp.path(), "net");
    let mut a = Node::start(&tmp.path().join("a"), "a", &keys, &[], &["--grace", "120"]);
    let b = Node::start(&tmp.path().join("b"), "b", &keys, &[&a], &["--no-fsync"]);
    a.wait_peers(1);

    let mut put = start_put(&a, "big");
    let mut stdin = put.stdin.take().unwrap();
    let mut pattern = Pattern::new(5);
    let mut hasher = blake3::Hasher::new();
    // 8 MiB is far more than every buffer between here and the node's store: once it is
    // written, the node is in the middle of storing it.
    assert!(feed(&mut stdin, &mut pattern, 8 << 20, &mut hasher));
    a.signal("TERM");
    a.log.wait_for("SIGTERM received");
    assert!(feed(&mut stdin, &mut pattern, 8 << 20, &mut hasher));
    drop(stdin);
    let out = finish(put);
    assert!(
        out.status.success(),
        "put: {}\nnode:\n{}",
        stderr_of(&out),
        a.log.contents()
    );
    let status = a.wait_exit();
    assert!(status.success(), "{}", a.log.contents());
    assert!(!a.data.join("dfs.sock").exists(), "control socket removed");

    let hash = hasher.finalize();
    assert_eq!(
        get_hash(&b, "big", tmp.path()),
        hash,
        "replicated before the shutdown"
    );
    a.restart_joining(&[&b]);
    assert_no_staging_leftovers(&a);
    assert_eq!(get_hash(&a, "big", tmp.path()), hash);
}

#[test]
fn sigterm_during_a_put_that_does_not_finish_stores_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let keys = keygen(tmp.path(), "net");
    let mut a = Node::start(&tmp.path().join("a"), "a", &keys, &[], &["--grace", "1"]);
    let b = Node::start(&tmp.path().join("b"), "b", &keys, &[&a], &["--no-fsync"]);
    a.wait_peers(1);
    let keep = tmp.path().join("keep");
    let keep_hash = write_pattern_file(&keep, 6, 300_000);
    a.ok(&["put", keep.to_str().unwrap()]);

    let mut put = start_put(&a, "cut");
    let mut stdin = put.stdin.take().unwrap();
    let mut hasher = blake3::Hasher::new();
    assert!(feed(&mut stdin, &mut Pattern::new(7), 8 << 20, &mut hasher));
    a.signal("TERM");
    // The upload never ends: after the grace period the node aborts it and exits cleanly.
    let status = a.wait_exit();
    assert!(status.success(), "{}", a.log.contents());
    // The log is read by its own thread, which may still be catching up with the exit.
    a.log.wait_for("aborting");
    drop(stdin);
    let out = finish(put);
    assert!(!out.status.success());
    assert_eq!(
        stderr_of(&out).trim().lines().count(),
        1,
        "{}",
        stderr_of(&out)
    );

    a.restart_joining(&[&b]);
    assert_no_staging_leftovers(&a);
    assert!(!a.ok(&["ls"]).contains("cut"));
    let out = a.dfs(&["get", "cut", "-o", tmp.path().join("x").to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(3), "{}", stderr_of(&out));
    assert_eq!(get_hash(&a, "keep", tmp.path()), keep_hash);
    assert_eq!(get_hash(&b, "keep", tmp.path()), keep_hash);
}

/// `kill -9` the node receiving a `size`-byte upload half-way; the others keep serving, the
/// whole file then goes through another node, and the killed node, restarted, has no partial
/// object, serves what it had and fetches the new file from its peers.
fn kill9_in_the_middle_of_a_transfer(size: u64) {
    let tmp = tempfile::tempdir().unwrap();
    let keys = keygen(tmp.path(), "net");
    let mut a = Node::start(&tmp.path().join("a"), "a", &keys, &[], &[]);
    let b = Node::start(&tmp.path().join("b"), "b", &keys, &[&a], &[]);
    let c = Node::start(&tmp.path().join("c"), "c", &keys, &[&a], &[]);
    for node in [&a, &b, &c] {
        node.wait_peers(2);
    }
    let small = tmp.path().join("small");
    let small_hash = write_pattern_file(&small, 11, 500_000);
    a.ok(&["put", small.to_str().unwrap()]);

    let mut put = start_put(&a, "big");
    let mut stdin = put.stdin.take().unwrap();
    assert!(feed(
        &mut stdin,
        &mut Pattern::new(12),
        size / 2,
        &mut blake3::Hasher::new()
    ));
    a.kill9();
    drop(stdin);
    let out = finish(put);
    assert!(
        !out.status.success(),
        "the put through the killed node must fail"
    );
    assert_eq!(
        stderr_of(&out).trim().lines().count(),
        1,
        "{}",
        stderr_of(&out)
    );

    for node in [&b, &c] {
        assert_eq!(get_hash(node, "small", tmp.path()), small_hash);
    }
    let big = tmp.path().join("big");
    let big_hash = write_pattern_file(&big, 13, size);
    b.ok(&["put", big.to_str().unwrap()]);
    std::fs::remove_file(&big).unwrap();
    assert_eq!(get_hash(&c, "big", tmp.path()), big_hash);

    a.restart_joining(&[&b, &c]);
    a.wait_peers(2);
    assert_no_staging_leftovers(&a);
    let listed = a.ok(&["ls"]);
    assert!(
        listed.contains("small") && !listed.contains("big"),
        "{listed}"
    );
    assert_eq!(get_hash(&a, "small", tmp.path()), small_hash);
    assert_eq!(
        get_hash(&a, "big", tmp.path()),
        big_hash,
        "fetched from the peers"
    );

    // Streaming: no node's memory grew with the file (b received, stored and replicated it,
    // c stored and served it, a fetched it).
    for node in [&a, &b, &c] {
        let peak = node.peak_rss_mib();
        println!(
            "{}: peak RSS {peak} MiB for a {} MiB file",
            node.name,
            size >> 20
        );
        assert!(peak < 96, "{} peaked at {peak} MiB", node.name);
    }
}

#[test]
fn kill9_in_the_middle_of_a_256_mib_transfer() {
    kill9_in_the_middle_of_a_transfer(256 << 20);
}

/// Bytes the process has read so far (`rchar` in `/proc/PID/io`: files and sockets).
fn bytes_read(pid: u32) -> u64 {
    let io = std::fs::read_to_string(format!("/proc/{pid}/io")).unwrap();
    io.lines()
        .find_map(|l| l.strip_prefix("rchar:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap()
}

/// `kill -9` the peer serving a 256 MiB fetch half-way while another peer holds the file too:
/// the get still succeeds (from the other holder), nothing partial is left, and the killed
/// node, restarted, serves what it had.
#[test]
fn kill9_of_a_sender_mid_fetch_fails_over_to_another_holder() {
    let size: u64 = 256 << 20;
    let tmp = tempfile::tempdir().unwrap();
    let keys = keygen(tmp.path(), "net");
    let mut a = Node::start(&tmp.path().join("a"), "a", &keys, &[], &["--no-fsync"]);
    let mut c = Node::start(&tmp.path().join("c"), "c", &keys, &[&a], &["--no-fsync"]);
    a.wait_peers(1);
    let big = tmp.path().join("big");
    let hash = write_pattern_file(&big, 31, size);
    let stored = a.ok(&["put", big.to_str().unwrap()]);
    assert!(stored.contains("1 replica(s)"), "{stored}");
    std::fs::remove_file(&big).unwrap();
    // B joins later: it has no copy and must fetch one from A or C.
    let b = Node::start(
        &tmp.path().join("b"),
        "b",
        &keys,
        &[&a, &c],
        &["--no-fsync"],
    );
    b.wait_peers(2);

    let before = [bytes_read(a.pid()), bytes_read(c.pid())];
    let out_path = tmp.path().join("out");
    let get = dfs()
        .args(["get", "big", "-o", out_path.to_str().unwrap()])
        .args(["--data", b.data_arg()])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // The sender is the holder that has read a quarter of the file so far.
    let sender = b
        .log
        .wait_until("a holder to send a quarter of the file", || {
            let read = [bytes_read(a.pid()), bytes_read(c.pid())];
            (0..2).find(|&i| read[i] - before[i] > size / 4)
        });
    let (killed, other) = if sender == 0 {
        (&mut a, &c)
    } else {
        (&mut c, &a)
    };
    println!(
        "killed {} mid-fetch; {} holds the other copy",
        killed.name, other.name
    );
    killed.kill9();
    let out = finish(get);
    assert!(
        out.status.success(),
        "get: {}
b:
{}",
        stderr_of(&out),
        b.log.contents()
    );
    assert_eq!(hash_file(&out_path), hash);
    // It really was cut off mid-body and the copy came from the other holder.
    b.log.wait_for("fetch from peer failed, trying the next");
    b.log.wait_for("fetched \"big\" (");
    assert_no_staging_leftovers(&b);
    assert!(b.ok(&["ls"]).contains("big"));

    killed.restart_joining(&[&b]);
    assert_no_staging_leftovers(killed);
    assert_eq!(get_hash(killed, "big", tmp.path()), hash);
}

/// Waits until `node`'s store has a non-empty staging file (a transfer into it is under way).
fn wait_for_staging_bytes(node: &Node) {
    let tmp = node.data.join("store").join("tmp");
    let what = format!("a transfer into {}", node.name);
    node.log.wait_until(&what, || {
        std::fs::read_dir(&tmp)
            .into_iter()
            .flatten()
            .flatten()
            .any(|e| e.metadata().is_ok_and(|m| m.is_file() && m.len() > 1 << 20))
            .then_some(())
    });
}

#[test]
fn kill9_of_the_only_sender_mid_fetch_commits_nothing_and_recovers() {
    let tmp = tempfile::tempdir().unwrap();
    let keys = keygen(tmp.path(), "net");
    // A alone stores the file: it is the only holder.
    let mut a = Node::start(&tmp.path().join("a"), "a", &keys, &[], &["--no-fsync"]);
    let big = tmp.path().join("big");
    let hash = write_pattern_file(&big, 21, 48 << 20);
    a.ok(&["put", big.to_str().unwrap()]);
    std::fs::remove_file(&big).unwrap();
    let b = Node::start(&tmp.path().join("b"), "b", &keys, &[&a], &["--no-fsync"]);
    b.wait_peers(1);

    // B fetches it from A; A dies half-way.
    let get = dfs()
        .args(["get", "big", "-o", tmp.path().join("out").to_str().unwrap()])
        .args(["--data", b.data_arg()])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    wait_for_staging_bytes(&b);
    a.kill9();
    let out = finish(get);
    assert!(!out.status.success(), "no holder left: the get must fail");
    assert_eq!(
        stderr_of(&out).trim().lines().count(),
        1,
        "{}",
        stderr_of(&out)
    );
    assert!(!tmp.path().join("out").exists(), "no partial output file");
    assert_no_staging_leftovers(&b);
    assert!(!b.ok(&["ls"]).contains("big"), "nothing partial committed");

    // A comes back with what it had; the get now succeeds through B.
    a.restart_joining(&[&b]);
    b.wait_peers(1);
    assert_eq!(get_hash(&a, "big", tmp.path()), hash);
    assert_eq!(get_hash(&b, "big", tmp.path()), hash);
}

/// Whether `name` is a control socket staging directory's (`.ds` and 3 letters or digits).
fn is_staging_name(name: &str) -> bool {
    name.len() == 6
        && name.starts_with(".ds")
        && name[3..].bytes().all(|b| b.is_ascii_alphanumeric())
}

/// The control socket staging directories in `data`.
fn staging_dirs(data: &Path) -> Vec<String> {
    std::fs::read_dir(data)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| is_staging_name(n))
        .collect()
}

/// What this checks from outside: the socket's mode at the ready line under umask `000`, and
/// that its staging directory is gone. That the socket is never accessible before (it is
/// bound in a `0700` directory, made `0600`, then renamed into place) is by construction in
/// `bind_socket`; no test observes the staging window.
#[test]
fn the_control_socket_is_0600_at_the_ready_line_even_under_umask_000() {
    use std::os::unix::fs::{FileTypeExt, PermissionsExt};
    let tmp = tempfile::tempdir().unwrap();
    let keys = keygen(tmp.path(), "net");
    let data = tmp.path().join("a");
    std::fs::create_dir(&data).unwrap();
    std::fs::set_permissions(&data, std::fs::Permissions::from_mode(0o755)).unwrap();
    // `sh` sets the umask and execs `dfs serve` (its path is `$0`, the arguments follow).
    let a = Node::start_wrapped(
        &data,
        "a",
        &keys,
        &["sh", "-c", "umask 000; exec \"$0\" \"$@\""],
    );
    let meta = std::fs::symlink_metadata(data.join("dfs.sock")).unwrap();
    assert!(meta.file_type().is_socket());
    assert_eq!(
        meta.permissions().mode() & 0o777,
        0o600,
        "socket mode at the ready line"
    );
    // The private directory it was bound in is gone.
    let left = staging_dirs(&data);
    assert!(left.is_empty(), "{left:?}");
    a.log.wait_for("accessible to other users (mode 0755)");
    assert_eq!(
        a.log
            .contents()
            .matches("accessible to other users")
            .count(),
        1
    );
    a.ok(&["status"]);
}

/// The longest data directory whose `DATA/dfs.sock` fits a socket address (107 bytes) serves:
/// the socket's staging path is no longer than its final one. One byte more fails cleanly.
#[test]
fn a_data_directory_of_the_longest_socket_path_serves() {
    const MAX_SOCKET_PATH: usize = 107; // `sun_path` is 108 bytes with the NUL.
    let tmp = tempfile::tempdir().unwrap();
    let keys = keygen(tmp.path(), "net");
    let data_len = MAX_SOCKET_PATH - "/dfs.sock".len();
    let base = tmp.path().to_str().unwrap().len() + 1;
    assert!(base + 1 < data_len, "temporary directory path too long");
    let data = tmp.path().join("d".repeat(data_len - base));
    assert_eq!(
        data.join("dfs.sock").to_str().unwrap().len(),
        MAX_SOCKET_PATH
    );
    std::fs::create_dir(&data).unwrap();
    let a = Node::start(&data, "a", &keys, &[], &[]);
    a.ok(&["status"]);
    assert!(staging_dirs(&data).is_empty());
    drop(a);

    // One byte longer: no socket path fits. The node stops (exit 1) with a clear error, and
    // leaves neither a socket nor a staging directory behind.
    let data = tmp.path().join("d".repeat(data_len - base + 1));
    std::fs::create_dir(&data).unwrap();
    let args = serve_args(&data, &keys);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let (status, log) = serve_expect_failure(&args);
    assert_eq!(status.code(), Some(1), "{log}");
    assert!(log.contains("cannot create the control socket"), "{log}");
    assert!(!data.join("dfs.sock").exists());
    assert!(staging_dirs(&data).is_empty());
}

/// A staging directory left by a node killed while binding its socket is removed at the next
/// start; entries that only look like one are left alone.
#[test]
fn a_staging_directory_left_by_a_killed_start_is_swept() {
    let tmp = tempfile::tempdir().unwrap();
    let keys = keygen(tmp.path(), "net");
    let data = tmp.path().join("a");
    std::fs::create_dir(&data).unwrap();
    // What a killed start leaves: a `0700` directory holding a socket named `s`.
    let stale = data.join(".dsAb1");
    std::fs::create_dir(&stale).unwrap();
    drop(std::os::unix::net::UnixListener::bind(stale.join("s")).unwrap());
    let empty = data.join(".ds9z0");
    std::fs::create_dir(&empty).unwrap();
    // Not ours: a longer name, a file inside, a symlink with the name.
    let longer = data.join(".dsAb12");
    std::fs::create_dir(&longer).unwrap();
    let full = data.join(".dsKep");
    std::fs::create_dir(&full).unwrap();
    std::fs::write(full.join("keep"), b"precious").unwrap();
    let elsewhere = tempfile::tempdir().unwrap();
    let link = data.join(".dsLnk");
    std::os::unix::fs::symlink(elsewhere.path(), &link).unwrap();

    let a = Node::start(&data, "a", &keys, &[], &[]);
    a.ok(&["status"]);
    assert!(!stale.exists());
    assert!(!empty.exists());
    assert!(longer.is_dir());
    assert_eq!(std::fs::read(full.join("keep")).unwrap(), b"precious");
    assert!(
        std::fs::symlink_metadata(&link)
            .unwrap()
            .file_type()
            .is_symlink()
    );
    assert!(elsewhere.path().is_dir());
    let mut left = staging_dirs(&data);
    left.sort();
    assert_eq!(left, [".dsKep", ".dsLnk"]);
}

/// A data directory every user may write is refused, sticky bit or not (they could replace
/// the control socket, or create one while no node runs); `0700` starts.
#[test]
fn a_data_directory_every_user_can_write_is_refused() {
    use std::os::unix::fs::PermissionsExt;
    let tmp = tempfile::tempdir().unwrap();
    let keys = keygen(tmp.path(), "net");
    let data = tmp.path().join("a");
    std::fs::create_dir(&data).unwrap();
    let args = serve_args(&data, &keys);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    for mode in [0o777, 0o1777] {
        std::fs::set_permissions(&data, std::fs::Permissions::from_mode(mode)).unwrap();
        let (status, log) = serve_expect_failure(&args);
        assert_eq!(status.code(), Some(EXIT_USAGE), "{log}");
        assert!(
            log.contains(&format!("is writable by every user (mode {mode:04o})")),
            "{log}"
        );
        assert!(!data.join("dfs.sock").exists());
    }
    std::fs::set_permissions(&data, std::fs::Permissions::from_mode(0o700)).unwrap();
    let a = Node::start(&data, "a", &keys, &[], &[]);
    a.ok(&["status"]);
}

#[test]
fn a_file_in_the_way_of_the_control_socket_is_refused_not_deleted() {
    let tmp = tempfile::tempdir().unwrap();
    let keys = keygen(tmp.path(), "net");
    let data = tmp.path().join("a");
    std::fs::create_dir(&data).unwrap();
    let path = data.join("dfs.sock");
    std::fs::write(&path, b"precious").unwrap();
    let args = serve_args(&data, &keys);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let (status, log) = serve_expect_failure(&args);
    assert_eq!(status.code(), Some(EXIT_USAGE), "{log}");
    assert!(log.contains("is not a socket"), "{log}");
    assert_eq!(std::fs::read(&path).unwrap(), b"precious");

    // A stale socket (its node gone) is replaced.
    std::fs::remove_file(&path).unwrap();
    drop(std::os::unix::net::UnixListener::bind(&path).unwrap());
    assert!(path.exists());
    let a = Node::start(&data, "a", &keys, &[], &["--no-fsync"]);
    a.ok(&["status"]);
}

#[test]
fn rm_everywhere_of_a_name_nobody_has_is_not_found() {
    let tmp = tempfile::tempdir().unwrap();
    let keys = keygen(tmp.path(), "net");
    let a = Node::start(&tmp.path().join("a"), "a", &keys, &[], &["--no-fsync"]);
    let out = a.dfs(&["rm", "nobody-has-it", "--everywhere"]);
    assert_eq!(
        out.status.code(),
        Some(EXIT_NOT_FOUND),
        "{}",
        stderr_of(&out)
    );
    let f = tmp.path().join("f");
    write_pattern_file(&f, 8, 1000);
    a.ok(&["put", f.to_str().unwrap()]);
    let said = a.ok(&["rm", "f", "--everywhere"]);
    assert!(
        said.contains("removed f here; no connected peer had a copy"),
        "{said}"
    );
    let out = a.dfs(&["rm", "f", "--everywhere"]);
    assert_eq!(
        out.status.code(),
        Some(EXIT_NOT_FOUND),
        "{}",
        stderr_of(&out)
    );
    // With a peer connected, the peers' answers decide: a name only the peer holds is
    // removed (exit 0), and once nobody holds it, it is not found.
    let b = Node::start(&tmp.path().join("b"), "b", &keys, &[&a], &["--no-fsync"]);
    a.wait_peers(1);
    b.ok(&["put", f.to_str().unwrap()]);
    a.ok(&["rm", "f"]);
    let said = a.ok(&["rm", "f", "--everywhere"]);
    assert!(
        said.contains("removed f on 1 peer; this node had no copy"),
        "{said}"
    );
    assert!(
        b.dfs(&["get", "f", "-o", tmp.path().join("g").to_str().unwrap()])
            .status
            .code()
            == Some(EXIT_NOT_FOUND)
    );
    let out = a.dfs(&["rm", "f", "--everywhere"]);
    assert_eq!(
        out.status.code(),
        Some(EXIT_NOT_FOUND),
        "{}",
        stderr_of(&out)
    );
    assert!(
        stderr_of(&out).contains("nor on any connected peer"),
        "{}",
        stderr_of(&out)
    );
}

#[test]
fn sigint_while_joining_a_silent_bootstrap_node_stops_before_the_ready_line() {
    let tmp = tempfile::tempdir().unwrap();
    let keys = keygen(tmp.path(), "net");
    // Accepts TCP connections and never says a word.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = silent.local_addr().unwrap().to_string();
    let mut args = serve_args(&tmp.path().join("a"), &keys);
    args.extend(["--bootstrap".to_owned(), addr]);
    let child = dfs()
        .arg("serve")
        .args(&args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id();
    // Once the node has dialled the silent address, it is inside its join.
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(silent.accept().map(|(stream, _)| stream));
    });
    let held = match rx.recv_timeout(DEADLINE) {
        Ok(accepted) => accepted.unwrap(),
        Err(_) => {
            let _ = std::process::Command::new("kill")
                .args(["-9", &pid.to_string()])
                .status();
            panic!("the node never dialled its bootstrap address");
        }
    };
    let sent = std::process::Command::new("kill")
        .args(["-INT", &pid.to_string()])
        .status()
        .unwrap();
    assert!(sent.success());
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    // Before the fix the join ran into its 10 s connect timeout, then printed the ready line
    // and exited with status 0 (the signal was handled only after it).
    let out = match rx.recv_timeout(DEADLINE) {
        Ok(out) => out.unwrap(),
        Err(_) => {
            let _ = std::process::Command::new("kill")
                .args(["-9", &pid.to_string()])
                .status();
            panic!("SIGINT during startup was not acted on");
        }
    };
    drop(held);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = stderr_of(&out);
    assert!(!out.status.success(), "{stderr}");
    assert!(!stdout.contains("listening on"), "{stdout}");
    assert!(stderr.contains("SIGINT received while joining"), "{stderr}");
}

#[test]
fn a_second_signal_during_the_grace_period_stops_at_once() {
    let tmp = tempfile::tempdir().unwrap();
    let keys = keygen(tmp.path(), "net");
    let mut a = Node::start(&tmp.path().join("a"), "a", &keys, &[], &["--grace", "3600"]);
    let mut put = start_put(&a, "cut");
    let mut stdin = put.stdin.take().unwrap();
    let mut hasher = blake3::Hasher::new();
    assert!(feed(&mut stdin, &mut Pattern::new(9), 8 << 20, &mut hasher));
    a.signal("TERM");
    a.log.wait_for("control connection(s) to finish");
    a.signal("INT");
    let status = a.wait_exit();
    assert!(!status.success(), "{}", a.log.contents());
    a.log.wait_for("second signal");
    drop(stdin);
    assert!(!finish(put).status.success());
    assert!(!a.data.join("dfs.sock").exists(), "control socket removed");
}

/// A client does not talk to a socket served by another user (someone who could put a socket
/// at the data directory's path would otherwise receive its files). Root only: the test runs
/// a node as `nobody` (uid 65534) and connects to it as root.
#[test]
fn a_client_refuses_a_node_of_another_user() {
    use std::io::BufRead;
    use std::os::unix::process::CommandExt;
    let me = std::fs::metadata("/proc/self").map(|m| std::os::unix::fs::MetadataExt::uid(&m));
    if me.ok() != Some(0) {
        eprintln!("skipped: needs root to run a node as another user");
        return;
    }
    const NOBODY: u32 = 65534;
    let tmp = tempfile::tempdir().unwrap();
    std::os::unix::fs::chown(tmp.path(), Some(NOBODY), Some(NOBODY)).unwrap();
    let keys = keygen(tmp.path(), "net");
    for file in [&keys.key, &keys.secret] {
        std::os::unix::fs::chown(file, Some(NOBODY), Some(NOBODY)).unwrap();
    }
    let data = tmp.path().join("a");
    let mut child = dfs()
        .arg("serve")
        .args(serve_args(&data, &keys))
        .uid(NOBODY)
        .gid(NOBODY)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if line.contains("listening on") {
                let _ = tx.send(());
            }
        }
    });
    let ready = rx.recv_timeout(DEADLINE);
    let out = dfs()
        .args(["status", "--data"])
        .arg(&data)
        .output()
        .unwrap();
    let _ = child.kill();
    let _ = child.wait();
    ready.expect("the node of another user never became ready");
    let err = stderr_of(&out);
    assert_eq!(out.status.code(), Some(EXIT_FAILURE), "{err}");
    assert!(err.contains("refusing to talk to"), "{err}");
    assert!(err.contains(&format!("uid {NOBODY}")), "{err}");
}
