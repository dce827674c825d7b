//! Async wrappers (feature `tokio`).
#![cfg(feature = "tokio")]
#![allow(clippy::unwrap_used)] // tests and their helpers panic on failure

use std::time::Duration;

use dfs_store::{AsyncStore, Expected, Mismatch, Store, StoreError};
use tokio::io::AsyncReadExt;
use tokio::time::timeout;

const LIMIT: Duration = Duration::from_secs(30);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn async_verbs() {
    timeout(LIMIT, async {
        let dir = tempfile::tempdir().unwrap();
        let store = AsyncStore::new(Store::open(dir.path()).unwrap());
        let data: Vec<u8> = (0..500_000u32).map(|i| i as u8).collect();
        assert_eq!(
            store
                .write("k", std::io::Cursor::new(data.clone()))
                .await
                .unwrap(),
            500_000
        );
        assert!(store.has("k").await.unwrap());
        assert_eq!(store.stat("k").await.unwrap().size(), 500_000);
        let mut reader = store.read("k").await.unwrap();
        assert_eq!(reader.size(), 500_000);
        let mut out = Vec::new();
        reader.read_to_end(&mut out).await.unwrap();
        assert_eq!(out, data);
        store.verify("k").await.unwrap();
        assert!(store.scrub().await.unwrap().is_clean());
        let body: &'static [u8] = b"from an AsyncRead";
        store.write_async("a", body).await.unwrap();
        let mut keys = store.keys().await.unwrap();
        keys.sort();
        assert_eq!(keys, ["a", "k"]);
        assert!(store.delete("k").await.unwrap());
        store.clear().await.unwrap();
        assert!(store.keys().await.unwrap().is_empty());
        assert!(store.read("k").await.unwrap_err().is_not_found());
    })
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn async_read_reports_corruption() {
    timeout(LIMIT, async {
        let dir = tempfile::tempdir().unwrap();
        let store = AsyncStore::new(Store::open(dir.path()).unwrap());
        store
            .write("k", std::io::Cursor::new(vec![1u8; 300_000]))
            .await
            .unwrap();
        let path = store.blocking().path_of("k").unwrap();
        let mut bytes = std::fs::read(&path).unwrap();
        let last = bytes.len() - 1;
        bytes[last] ^= 1;
        std::fs::write(&path, bytes).unwrap();
        let mut reader = store.read("k").await.unwrap();
        let mut out = Vec::new();
        assert!(reader.read_to_end(&mut out).await.is_err());
        assert!(out.len() < 300_000);
        // Dropping a reader early stops its background task (no hang).
        let reader = store.read("k").await.unwrap();
        drop(reader);
    })
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn async_write_expecting() {
    timeout(LIMIT, async {
        let dir = tempfile::tempdir().unwrap();
        let store = AsyncStore::new(Store::open(dir.path()).unwrap());
        let data: Vec<u8> = (0..300_000u32).map(|i| (i % 253) as u8).collect();
        let expected = Expected::new(data.len() as u64, *blake3::hash(&data).as_bytes());
        let n = store
            .write_expecting("k", std::io::Cursor::new(data.clone()), expected)
            .await
            .unwrap();
        assert_eq!(n, data.len() as u64);
        assert_eq!(store.stat("k").await.unwrap().hash(), &expected.hash);

        let short: &'static [u8] = &[1, 2, 3];
        let err = store
            .write_async_expecting("s", short, expected)
            .await
            .unwrap_err();
        assert!(
            matches!(
                err,
                StoreError::Mismatch {
                    mismatch: Mismatch::Short { got: 3, .. },
                    ..
                }
            ),
            "{err:?}"
        );
        assert!(!store.has("s").await.unwrap());

        let mut damaged = data.clone();
        damaged[1000] ^= 1;
        let err = store
            .write_expecting("k", std::io::Cursor::new(damaged), expected)
            .await
            .unwrap_err();
        assert!(
            matches!(
                err,
                StoreError::Mismatch {
                    mismatch: Mismatch::Hash { .. },
                    ..
                }
            ),
            "{err:?}"
        );
        store.verify("k").await.unwrap();
        assert_eq!(store.stat("k").await.unwrap().hash(), &expected.hash);
    })
    .await
    .unwrap();
}

/// A reader nobody drains must not hold a blocking-pool thread: with a pool of one thread,
/// other blocking work still runs while a 4 MiB object's reader sits unread, and the
/// reader still delivers the whole verified object afterwards.
#[test]
fn undrained_reader_holds_no_blocking_thread() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .max_blocking_threads(1)
        .enable_time()
        .build()
        .unwrap();
    rt.block_on(async {
        let dir = tempfile::tempdir().unwrap();
        let store = AsyncStore::new(Store::open(dir.path()).unwrap());
        let data: Vec<u8> = (0..4u32 << 20).map(|i| (i % 251) as u8).collect();
        store
            .write("big", std::io::Cursor::new(data.clone()))
            .await
            .unwrap();
        let mut reader = store.read("big").await.unwrap();
        let other = timeout(Duration::from_secs(10), tokio::task::spawn_blocking(|| 42))
            .await
            .expect("the blocking pool is still held by an undrained reader")
            .unwrap();
        assert_eq!(other, 42);
        let mut out = Vec::new();
        timeout(LIMIT, reader.read_to_end(&mut out))
            .await
            .unwrap()
            .unwrap();
        assert!(out == data, "the object read back differs");
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn async_verbs_over_a_pack() {
    timeout(LIMIT, async {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::builder(dir.path())
            .pack_small_objects(4096)
            .open()
            .unwrap();
        let store = AsyncStore::new(store);
        let body: &'static [u8] = b"packed, written from an AsyncRead";
        store.write_async("small", body).await.unwrap();
        let large = vec![3u8; 10_000];
        store
            .write("large", std::io::Cursor::new(large.clone()))
            .await
            .unwrap();
        let mut out = Vec::new();
        store
            .read("small")
            .await
            .unwrap()
            .read_to_end(&mut out)
            .await
            .unwrap();
        assert_eq!(out, body);
        let meta = store.stat("small").await.unwrap();
        assert!(meta.path().starts_with(dir.path().join("pack")));
        store.write_async("small", &b"v2"[..]).await.unwrap();
        store.compact().await.unwrap();
        let mut keys = store.keys().await.unwrap();
        keys.sort();
        assert_eq!(keys, ["large", "small"]);
        assert!(store.delete("small").await.unwrap());
        assert!(!store.has("small").await.unwrap());
        assert!(store.scrub().await.unwrap().is_clean());
    })
    .await
    .unwrap();
}

/// Dropping the future of a write cancels it: the blocking job must not go on reading
/// the source and commit later, over the newer version the caller wrote since, and its
/// staging file goes.
#[test]
fn a_dropped_write_future_commits_nothing_later() {
    use tokio::io::AsyncWriteExt;
    let dir = tempfile::tempdir().unwrap();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let store = AsyncStore::new(Store::open(dir.path()).unwrap());
    rt.block_on(async {
        let (mut tx, rx) = tokio::io::duplex(1024);
        let mut write = Box::pin(store.write_async("k", rx));
        // Once this returns, the write has taken all but 1 KiB of it from the source.
        tokio::select! {
            r = &mut write => panic!("the write ended early: {r:?}"),
            r = tx.write_all(&[1u8; 256 * 1024]) => r.unwrap(),
        }
        drop(write); // cancelled (a timeout, a closed connection, ...)
        store.write("k", &b"newer version"[..]).await.unwrap();
        // The cancelled write's source goes on to its end (or finds nobody reading it).
        let _ = tx.write_all(&[2u8; 1000]).await;
        drop(tx);
    });
    // Waits for the blocking jobs, the cancelled write's among them.
    rt.shutdown_timeout(Duration::from_secs(60));
    let mut out = Vec::new();
    use std::io::Read;
    store
        .blocking()
        .read("k")
        .unwrap()
        .read_to_end(&mut out)
        .unwrap();
    assert!(
        out == b"newer version",
        "the cancelled write committed {} bytes over the newer version",
        out.len()
    );
    assert_eq!(
        std::fs::read_dir(dir.path().join("tmp")).unwrap().count(),
        0
    );
}
