//! `-o` into a directory that does not exist: the one error line names the user's path, not
//! the internal `.dfs-partial-*` staging name (which never existed), as `keygen` already does.
#![allow(clippy::unwrap_used)]

mod common;

use common::*;

#[test]
fn missing_output_directory_names_the_users_path_only() {
    let tmp = tempfile::tempdir().unwrap();
    let keys = keygen(tmp.path(), "k");
    let plain = tmp.path().join("plain");
    std::fs::write(&plain, b"x").unwrap();
    let target = tmp.path().join("no-such-dir/out");
    let line = assert_fails_with(
        &run(&[
            "encrypt",
            "-k",
            keys.key.to_str().unwrap(),
            plain.to_str().unwrap(),
            "-o",
            target.to_str().unwrap(),
        ]),
        EXIT_FAILURE,
        "no-such-dir/out",
    );
    assert!(!line.contains(".dfs-partial-"), "{line}");
}
