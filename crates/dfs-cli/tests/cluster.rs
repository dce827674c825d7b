//! Three real `dfs serve` processes: put and get through different nodes, the client
//! commands, their exit codes, and the offline `keygen` / `encrypt` / `decrypt` commands.

mod common;

use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::process::Stdio;

use common::*;

#[test]
fn put_and_get_through_different_nodes() {
    let tmp = tempfile::tempdir().unwrap();
    let keys = keygen(tmp.path(), "cluster");
    let a = Node::start(&tmp.path().join("a"), "a", &keys, &[], &["--no-fsync"]);
    let b = Node::start(&tmp.path().join("b"), "b", &keys, &[&a], &["--no-fsync"]);
    // C keeps the small files it receives from peers in its store's pack.
    let c_flags = ["--no-fsync", "--pack-small", "262144"];
    let c = Node::start(&tmp.path().join("c"), "c", &keys, &[&a], &c_flags);
    for node in [&a, &b, &c] {
        node.wait_peers(2);
    }

    // A multi-chunk file through A, read back through B and C.
    let src = tmp.path().join("photo.bin");
    let hash = write_pattern_file(&src, 1, 3 * 1024 * 1024 + 17);
    let stored = a.ok(&["put", src.to_str().unwrap()]);
    assert!(
        stored.contains("stored photo.bin (3145745 bytes)"),
        "{stored}"
    );
    assert!(stored.contains("2 replica(s)"), "{stored}");
    for node in [&b, &c] {
        let out = tmp.path().join(format!("from-{}", node.name));
        node.ok(&["get", "photo.bin", "-o", out.to_str().unwrap()]);
        assert_eq!(hash_file(&out), hash, "bytes via {}", node.name);
    }

    // stdin to stdout, the other way round, including an empty file.
    let data = Pattern::bytes(2, 200_000);
    let mut put = dfs()
        .args([
            "put",
            "-",
            "--name",
            "dir/notes.txt",
            "--data",
            c.data_arg(),
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    put.stdin.take().unwrap().write_all(&data).unwrap();
    let out = put.wait_with_output().unwrap();
    assert!(out.status.success(), "{}", stderr_of(&out));
    let got = a.dfs(&["get", "dir/notes.txt"]);
    assert!(got.status.success(), "{}", stderr_of(&got));
    assert!(got.stdout == data, "stdout bytes differ");
    let empty = tmp.path().join("empty");
    std::fs::write(&empty, b"").unwrap();
    b.ok(&["put", empty.to_str().unwrap()]);
    assert!(c.dfs(&["get", "empty"]).stdout.is_empty());
    // Three objects each: photo.bin and notes.txt as files (stored through C, or large),
    // C's replica of the empty file in its pack.
    assert_eq!(
        [a.object_files(), b.object_files(), c.object_files()],
        [3, 3, 2]
    );

    // ls, peers, status.
    let listed = a.ok(&["ls"]);
    assert!(listed.contains("photo.bin"), "{listed}");
    let peers = b.ok(&["peers"]);
    assert_eq!(peers.lines().count(), 2, "{peers}");
    assert!(
        peers.contains(&a.addr) && peers.contains(&c.addr),
        "{peers}"
    );
    let status = c.ok(&["status"]);
    assert!(status.contains("peers:    2"), "{status}");
    assert!(status.contains(&c.addr), "{status}");
    for node in [&a, &c] {
        let scrub = node.ok(&["scrub"]);
        assert!(scrub.starts_with("checked:  "), "{scrub}");
        assert!(!scrub.contains("checked:  0"), "{scrub}");
    }

    // Unknown names: exit 3 and one line.
    let out = b.dfs(&[
        "get",
        "no-such-file",
        "-o",
        tmp.path().join("x").to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(3), "{}", stderr_of(&out));
    assert_eq!(
        stderr_of(&out).trim().lines().count(),
        1,
        "{}",
        stderr_of(&out)
    );
    assert!(stderr_of(&out).contains("not found"), "{}", stderr_of(&out));
    assert!(!tmp.path().join("x").exists(), "no partial output file");
    let out = b.dfs(&["rm", "no-such-file"]);
    assert_eq!(out.status.code(), Some(3), "{}", stderr_of(&out));

    // rm on one node only, then everywhere.
    c.ok(&["rm", "photo.bin"]);
    let out = tmp.path().join("again");
    c.ok(&["get", "photo.bin", "-o", out.to_str().unwrap()]);
    assert_eq!(hash_file(&out), hash, "re-fetched from a peer");
    let said = a.ok(&["rm", "photo.bin", "--everywhere"]);
    assert!(said.contains("removed photo.bin here and on "), "{said}");
    for node in [&a, &b, &c] {
        let out = node.dfs(&[
            "get",
            "photo.bin",
            "-o",
            tmp.path().join("gone").to_str().unwrap(),
        ]);
        assert_eq!(out.status.code(), Some(3), "{} still has it", node.name);
    }
}

#[test]
fn client_errors_are_one_line_with_distinct_exit_codes() {
    let tmp = tempfile::tempdir().unwrap();
    // No node on this directory.
    let out = run(&["ls", "--data", tmp.path().to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(4));
    let err = stderr_of(&out);
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(err.contains("node unreachable"), "{err}");
    // Unreadable input file.
    let out = run(&[
        "put",
        "/no/such/file",
        "--data",
        tmp.path().to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr_of(&out).contains("cannot read /no/such/file"),
        "{}",
        stderr_of(&out)
    );
    // Bad usage.
    let out = run(&["put", "-", "--data", tmp.path().to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr_of(&out).contains("--name"), "{}", stderr_of(&out));
}

/// `keygen` writes its files where `DFS_KEY_FILE` and `DFS_SECRET_FILE` point, as `serve`
/// and `encrypt` read them from there.
#[test]
fn keygen_follows_the_key_file_variables() {
    let tmp = tempfile::tempdir().unwrap();
    let (key, secret) = (tmp.path().join("env.key"), tmp.path().join("env.secret"));
    let out = dfs()
        .arg("keygen")
        .env("DFS_KEY_FILE", &key)
        .env("DFS_SECRET_FILE", &secret)
        .current_dir(tmp.path())
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr_of(&out));
    assert!(key.is_file() && secret.is_file());
    assert!(!tmp.path().join("data.key").exists());
    assert!(!tmp.path().join("network.secret").exists());
}

#[test]
fn keygen_encrypt_decrypt() {
    let tmp = tempfile::tempdir().unwrap();
    let keys = keygen(tmp.path(), "k");
    for path in [&keys.key, &keys.secret] {
        let mode = std::fs::metadata(path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }
    let out = run(&[
        "keygen",
        "--key-file",
        keys.key.to_str().unwrap(),
        "--secret-file",
        tmp.path().join("s2").to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(2), "refuses to overwrite");

    let plain = tmp.path().join("plain");
    let hash = write_pattern_file(&plain, 7, 1_000_003);
    let key = keys.key.to_str().unwrap();
    for cipher in ["sealed", "ctr"] {
        let enc = tmp.path().join(format!("enc-{cipher}"));
        let dec = tmp.path().join(format!("dec-{cipher}"));
        let out = run(&[
            "encrypt",
            "-k",
            key,
            "--cipher",
            cipher,
            plain.to_str().unwrap(),
            "-o",
            enc.to_str().unwrap(),
        ]);
        assert!(out.status.success(), "{}", stderr_of(&out));
        let enc_len = std::fs::metadata(&enc).unwrap().len();
        if cipher == "ctr" {
            assert_eq!(enc_len, 16 + 1_000_003, "IV || ciphertext, the Go layout");
        } else {
            assert!(enc_len > 1_000_003);
        }
        let out = run(&[
            "decrypt",
            "-k",
            key,
            "--cipher",
            cipher,
            enc.to_str().unwrap(),
            "-o",
            dec.to_str().unwrap(),
        ]);
        assert!(out.status.success(), "{}", stderr_of(&out));
        assert_eq!(hash_file(&dec), hash);
    }

    // stdin -> stdout.
    let data = Pattern::bytes(8, 70_000);
    let mut enc = dfs()
        .args(["encrypt", "-k", key])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = enc.stdin.take().unwrap();
    let feed = data.clone();
    let writer = std::thread::spawn(move || stdin.write_all(&feed).unwrap());
    let sealed = enc.wait_with_output().unwrap();
    writer.join().unwrap();
    assert!(sealed.status.success());
    let sealed_path = tmp.path().join("sealed");
    std::fs::write(&sealed_path, &sealed.stdout).unwrap();
    let out = run(&["decrypt", "-k", key, sealed_path.to_str().unwrap()]);
    assert!(out.status.success(), "{}", stderr_of(&out));
    assert!(out.stdout == data);

    // A wrong key or a flipped bit: exit 5, one line, no output file.
    let other = keygen(tmp.path(), "other");
    let target = tmp.path().join("never");
    let out = run(&[
        "decrypt",
        "-k",
        other.key.to_str().unwrap(),
        sealed_path.to_str().unwrap(),
        "-o",
        target.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(5), "{}", stderr_of(&out));
    assert!(
        stderr_of(&out).contains("authentication failed"),
        "{}",
        stderr_of(&out)
    );
    assert!(!target.exists());
    let mut tampered = sealed.stdout.clone();
    let mid = tampered.len() / 2;
    tampered[mid] ^= 1;
    std::fs::write(&sealed_path, &tampered).unwrap();
    let out = run(&[
        "decrypt",
        "-k",
        key,
        sealed_path.to_str().unwrap(),
        "-o",
        target.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(5), "{}", stderr_of(&out));
    assert!(!target.exists());
    // A malformed key file.
    std::fs::write(tmp.path().join("bad.key"), "zz").unwrap();
    let out = run(&[
        "encrypt",
        "-k",
        tmp.path().join("bad.key").to_str().unwrap(),
        plain.to_str().unwrap(),
        "-o",
        target.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr_of(&out).contains("bad key file"),
        "{}",
        stderr_of(&out)
    );
}

#[test]
fn a_node_whose_bootstrap_is_not_up_yet_joins_when_it_comes_up() {
    let tmp = tempfile::tempdir().unwrap();
    let keys = keygen(tmp.path(), "late");
    // A free port for the late node (released just before it starts).
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let late_addr = format!("127.0.0.1:{port}");
    let b = Node::start(
        &tmp.path().join("b"),
        "b",
        &keys,
        &[],
        &["--no-fsync", "--bootstrap", &late_addr],
    );
    // stderr is read by another thread than the ready line on stdout: wait for it.
    b.log.wait_for("retrying in the background");
    let a = Node::start(
        &tmp.path().join("a"),
        "a",
        &keys,
        &[],
        &["--no-fsync", "--listen", &late_addr],
    );
    assert_eq!(a.addr, late_addr);
    b.wait_peers(1);
    let f = tmp.path().join("f");
    let hash = write_pattern_file(&f, 30, 10_000);
    a.ok(&["put", f.to_str().unwrap()]);
    let out = tmp.path().join("out");
    b.ok(&["get", "f", "-o", out.to_str().unwrap()]);
    assert_eq!(hash_file(&out), hash);
}

/// `dfs encrypt --cipher ctr` is `IV || AES-256-CTR` with a 128-bit big-endian counter, as Go's
/// `cipher.NewCTR`: checked against `openssl enc -aes-256-ctr` (skipped if openssl is missing).
#[test]
fn ctr_output_decrypts_with_openssl() {
    let tmp = tempfile::tempdir().unwrap();
    let keys = keygen(tmp.path(), "go");
    let plain = tmp.path().join("plain");
    let data = Pattern::bytes(40, 100_000);
    std::fs::write(&plain, &data).unwrap();
    let enc = tmp.path().join("enc");
    let out = run(&[
        "encrypt",
        "-k",
        keys.key.to_str().unwrap(),
        "--cipher",
        "ctr",
        plain.to_str().unwrap(),
        "-o",
        enc.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", stderr_of(&out));
    let sealed = std::fs::read(&enc).unwrap();
    let (iv, body) = sealed.split_at(16);
    let body_path = tmp.path().join("body");
    std::fs::write(&body_path, body).unwrap();
    let hex = |bytes: &[u8]| bytes.iter().map(|b| format!("{b:02x}")).collect::<String>();
    let key_hex = std::fs::read_to_string(&keys.key).unwrap();
    let openssl = std::process::Command::new("openssl")
        .args([
            "enc",
            "-d",
            "-aes-256-ctr",
            "-nopad",
            "-K",
            key_hex.trim(),
            "-iv",
            &hex(iv),
            "-in",
        ])
        .arg(&body_path)
        .output();
    match openssl {
        Ok(out) if out.status.success() => assert!(out.stdout == data, "openssl disagrees"),
        Ok(out) => panic!("openssl failed: {}", String::from_utf8_lossy(&out.stderr)),
        Err(err) => eprintln!("skipped: openssl not runnable ({err})"),
    }
}

/// `dfs serve` with no arguments: the default data directory, a data key generated there on
/// first start, an open network (with a warning), and client commands without `--data` find
/// it. Only the port is moved off the default (`DFS_LISTEN`), since 127.0.0.1:3000 may be taken
/// on a shared machine. The default log (no `RUST_LOG`) is one plain line per event.
#[test]
fn serve_alone_runs_on_defaults_and_logs_one_line_per_event() {
    let tmp = tempfile::tempdir().unwrap();
    let xdg = tmp.path().join("xdg");
    let home = tmp.path().join("home");
    let (xdg_s, home_s) = (xdg.to_str().unwrap(), home.to_str().unwrap());
    let data = xdg.join("dfs");
    let a = Node::start_bare(
        &data,
        "a",
        &["serve"],
        &[
            ("XDG_DATA_HOME", Some(xdg_s)),
            ("HOME", Some(home_s)),
            ("DFS_LISTEN", Some("127.0.0.1:0")),
            ("RUST_LOG", None),
        ],
    );
    let key = data.join("data.key");
    assert!(
        key.is_file(),
        "data key generated in the default data directory"
    );
    let mode = std::fs::metadata(&key).unwrap().permissions().mode();
    assert_eq!(mode & 0o077, 0, "data key private: {mode:o}");

    // Client commands with no --data reach the node through the same default.
    let client = |args: &[&str]| {
        dfs()
            .args(args)
            .env("XDG_DATA_HOME", xdg_s)
            .env("HOME", home_s)
            .stdin(Stdio::null())
            .output()
            .unwrap()
    };
    let status = client(&["status"]);
    assert!(status.status.success(), "{}", stderr_of(&status));
    let text = String::from_utf8_lossy(&status.stdout);
    assert!(
        text.contains(&a.addr) && text.contains(data.to_str().unwrap()),
        "{text}"
    );

    // A file large enough for a progress bar: none is drawn, stderr is not a terminal.
    let f = tmp.path().join("f");
    let hash = write_pattern_file(&f, 50, 3 << 20);
    let put = client(&["put", f.to_str().unwrap()]);
    assert!(put.status.success(), "{}", stderr_of(&put));
    assert_eq!(stderr_of(&put), "", "no progress bar on a pipe");
    let back = tmp.path().join("back");
    let get = client(&["get", "f", "-o", back.to_str().unwrap()]);
    assert!(get.status.success(), "{}", stderr_of(&get));
    assert_eq!(
        stderr_of(&get),
        format!("wrote {} ({} bytes)\n", back.display(), 3 << 20),
        "no progress bar on a pipe"
    );
    assert_eq!(hash_file(&back), hash);
    client(&["rm", "f"]);

    // The default log: plain lines (no colour codes on a pipe), `TIME LEVEL message`, one per
    // event.
    a.log.wait_for("deleted \"f\"");
    let log = a.log.contents();
    assert!(!log.contains('\u{1b}'), "no ANSI escapes on a pipe:\n{log}");
    for line in log.lines() {
        let mut words = line.split_whitespace();
        let time = words.next().unwrap_or_default();
        let level = words.next().unwrap_or_default();
        assert!(time.starts_with("20") && time.ends_with('Z'), "{line}");
        assert!(["INFO", "WARN"].contains(&level), "{line}");
    }
    for event in [
        "node ready",
        "open network",
        "stored \"f\"",
        "deleted \"f\"",
    ] {
        assert_eq!(
            log.lines().filter(|l| l.contains(event)).count(),
            1,
            "one line for {event:?}:\n{log}"
        );
    }
}

/// With stderr on a terminal (a pty from `script`), put and get of a large file draw a
/// progress bar; skipped where `script` is missing.
#[test]
fn progress_bars_are_drawn_on_a_terminal() {
    let tmp = tempfile::tempdir().unwrap();
    let keys = keygen(tmp.path(), "k");
    let a = Node::start(&tmp.path().join("a"), "a", &keys, &[], &["--no-fsync"]);
    let f = tmp.path().join("f");
    write_pattern_file(&f, 51, 8 << 20);
    let back = tmp.path().join("back");
    for cmd in [
        format!("{} put {} --data {}", dfs_bin(), f.display(), a.data_arg()),
        format!(
            "{} get f -o {} --data {}",
            dfs_bin(),
            back.display(),
            a.data_arg()
        ),
    ] {
        let out = std::process::Command::new("script")
            .args(["-qec", &cmd, "/dev/null"])
            .stdin(Stdio::null())
            .output();
        let out = match out {
            Ok(out) if out.status.success() => out,
            Ok(out) => panic!("{cmd}: {}", String::from_utf8_lossy(&out.stdout)),
            Err(err) => {
                eprintln!("skipped: `script` not runnable ({err})");
                return;
            }
        };
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            text.contains("/8.00 MiB"),
            "no progress bar for {cmd}:\n{text}"
        );
    }
    assert_eq!(hash_file(&back), hash_file(&f));
}

/// `dfs encrypt` / `dfs decrypt` with each cipher from stdin to stdout (no arguments, and `-`).
#[test]
fn encrypt_and_decrypt_between_stdin_and_stdout() {
    let tmp = tempfile::tempdir().unwrap();
    let keys = keygen(tmp.path(), "k");
    let key = keys.key.to_str().unwrap();
    let data = Pattern::bytes(60, 300_001);
    let pipe = |args: &[&str], input: Vec<u8>| {
        let mut child = dfs()
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut stdin = child.stdin.take().unwrap();
        let writer = std::thread::spawn(move || stdin.write_all(&input).unwrap());
        let out = child.wait_with_output().unwrap();
        writer.join().unwrap();
        assert!(out.status.success(), "{args:?}: {}", stderr_of(&out));
        out.stdout
    };
    for cipher in ["ctr", "sealed"] {
        let enc = pipe(&["encrypt", "-k", key, "--cipher", cipher], data.clone());
        if cipher == "ctr" {
            assert_eq!(enc.len(), 16 + data.len(), "IV || ciphertext");
        }
        assert!(enc.len() > data.len() && enc[16..] != data[..]);
        let dec = pipe(
            &["decrypt", "-k", key, "--cipher", cipher, "-", "-o", "-"],
            enc.clone(),
        );
        assert!(dec == data, "{cipher}: stdin/stdout round trip");
        // And the file form reads what the pipe form wrote.
        let path = tmp.path().join(format!("enc-{cipher}"));
        std::fs::write(&path, &enc).unwrap();
        let out = run(&["decrypt", "-k", key, "-c", cipher, path.to_str().unwrap()]);
        assert!(out.status.success(), "{}", stderr_of(&out));
        assert!(out.stdout == data);
    }
}

/// The README quick start: three nodes (B and C join A), put through A, get through C, stop A
/// with Ctrl-C (SIGINT: graceful, status 0), get again through B, which now only sees C.
#[test]
fn the_readme_quickstart() {
    let tmp = tempfile::tempdir().unwrap();
    let keys = keygen(tmp.path(), "quick");
    let mut a = Node::start(&tmp.path().join("a"), "a", &keys, &[], &[]);
    let b = Node::start(&tmp.path().join("b"), "b", &keys, &[&a], &[]);
    let c = Node::start(&tmp.path().join("c"), "c", &keys, &[&a], &[]);
    for node in [&a, &b, &c] {
        node.wait_peers(2);
    }
    let photo = tmp.path().join("photo.jpg");
    let hash = write_pattern_file(&photo, 70, 1_500_000);
    a.ok(&["put", photo.to_str().unwrap(), "--name", "photo.jpg"]);
    let copy = tmp.path().join("copy.jpg");
    c.ok(&["get", "photo.jpg", "-o", copy.to_str().unwrap()]);
    assert_eq!(hash_file(&copy), hash);

    a.signal("INT");
    assert!(a.wait_exit().success(), "{}", a.log.contents());
    a.log.wait_for("SIGINT received, shutting down");
    a.log.wait_for("stopped");
    assert!(!a.data.join("dfs.sock").exists(), "control socket removed");

    let again = tmp.path().join("again.jpg");
    b.ok(&["get", "photo.jpg", "-o", again.to_str().unwrap()]);
    assert_eq!(hash_file(&again), hash);
    // B notices A is gone (the connection closes); only C is left.
    let deadline = std::time::Instant::now() + DEADLINE;
    loop {
        let peers = b.ok(&["peers"]);
        if peers.lines().count() == 1 {
            assert!(peers.contains(&c.addr), "{peers}");
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "A still listed: {peers}"
        );
        b.log.wait_for("peer left");
    }
}

#[test]
fn replicate_gives_a_late_joiner_a_copy() {
    let tmp = tempfile::tempdir().unwrap();
    let keys = keygen(tmp.path(), "late");
    let mut a = Node::start(&tmp.path().join("a"), "a", &keys, &[], &["--no-fsync"]);
    let src = tmp.path().join("early.bin");
    let hash = write_pattern_file(&src, 7, 1_500_000);
    let stored = a.ok(&["put", src.to_str().unwrap()]);
    assert!(stored.contains("0 replica(s)"), "{stored}");

    let b = Node::start(&tmp.path().join("b"), "b", &keys, &[&a], &["--no-fsync"]);
    a.wait_peers(1);
    let out = a.ok(&["replicate", "early.bin"]);
    assert!(
        out.contains("replicated early.bin (1500000 bytes) to 1 peer(s)"),
        "{out}"
    );
    let missing = a.dfs(&["replicate", "never-stored"]);
    assert_fails_with(&missing, 3, "not found");

    // B answers from its own copy with A gone.
    a.kill9();
    let got = tmp.path().join("from-b");
    b.ok(&["get", "early.bin", "-o", got.to_str().unwrap()]);
    assert_eq!(hash_file(&got), hash);
}
