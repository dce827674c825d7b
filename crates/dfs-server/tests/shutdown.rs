//! `shutdown` closes the store before it returns, also while a blocking store call started
//! earlier (here: `has` on a clone of the handle) is still running, so a node whose store
//! has a pack (its root locked while open) can start again on the same root at once.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, mpsc};

use dfs_server::{
    Aes256CtrBlake3, Config, FileServer, HashPath, Key, MemoryTransport, PathTransform,
};

/// `HashPath`, but once armed, the next lookup says so and waits to be released. Its drop
/// (with the store that owns it) is recorded.
struct Gated {
    armed: Arc<AtomicBool>,
    entered: Mutex<mpsc::Sender<()>>,
    release: Mutex<mpsc::Receiver<()>>,
    dropped: Arc<AtomicBool>,
}

impl Drop for Gated {
    fn drop(&mut self) {
        self.dropped.store(true, Ordering::SeqCst);
    }
}

impl PathTransform for Gated {
    fn transform(&self, key: &str) -> dfs_store::Result<dfs_store::PathKey> {
        if self.armed.swap(false, Ordering::SeqCst) {
            let _ = self.entered.lock().unwrap().send(());
            let _ = self.release.lock().unwrap().recv();
        }
        HashPath::default().transform(key)
    }
}

fn config(dir: &Path, key: &Key) -> Config {
    Config::builder(dir)
        .listen_addr("mem:0")
        .data_key(key.clone())
        .fsync(false)
        .pack_small_objects(64 * 1024)
        .build()
}

/// Sends every line the node logs to a channel.
#[derive(Clone)]
struct Lines(mpsc::Sender<String>);

impl std::io::Write for Lines {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let _ = self.0.send(String::from_utf8_lossy(buf).into_owned());
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_waits_for_a_running_store_call_then_the_root_is_free() {
    let (lines_tx, lines) = mpsc::channel();
    tracing_subscriber::fmt()
        .with_env_filter("dfs_server=debug")
        .with_writer(move || Lines(lines_tx.clone()))
        .init();
    let dir = tempfile::tempdir().unwrap();
    let key = Key::generate().unwrap();
    let net = MemoryTransport::new();
    let armed = Arc::new(AtomicBool::new(false));
    let (entered_tx, entered) = mpsc::channel();
    let (release, release_rx) = mpsc::channel();
    let dropped = Arc::new(AtomicBool::new(false));
    let paths = Gated {
        armed: Arc::clone(&armed),
        entered: Mutex::new(entered_tx),
        release: Mutex::new(release_rx),
        dropped: Arc::clone(&dropped),
    };
    let cipher = Aes256CtrBlake3::new(&key);
    let a = FileServer::start_with(config(dir.path(), &key), net.clone(), paths, cipher)
        .await
        .unwrap();
    a.store_bytes("doc", b"hello").await.unwrap();

    // A clone's `has` is inside its blocking store call when `shutdown` begins.
    let other = a.clone();
    armed.store(true, Ordering::SeqCst);
    let has = tokio::spawn(async move { other.has("doc").await });
    tokio::task::spawn_blocking(move || entered.recv().unwrap())
        .await
        .unwrap();
    // The call is released once `shutdown` says it waits for it; a `shutdown` that
    // returned first would leave the store open behind it.
    let mut shutdown = tokio::spawn(a.shutdown());
    let waiting = tokio::task::spawn_blocking(move || {
        lines
            .iter()
            .any(|line| line.contains("waiting for store calls still running"))
    });
    tokio::select! {
        finished = &mut shutdown => {
            finished.unwrap().unwrap();
            assert!(dropped.load(Ordering::SeqCst), "shutdown returned with the store open");
        }
        seen = waiting => {
            assert!(seen.unwrap());
            // The store call still holds the store, so `shutdown` cannot have returned.
            tokio::task::yield_now().await;
            assert!(!shutdown.is_finished(), "shutdown returned with the store open");
            release.send(()).unwrap();
            shutdown.await.unwrap().unwrap();
            assert!(dropped.load(Ordering::SeqCst));
        }
    }

    // `shutdown` returned: the store is closed (its path transform went with it) and its
    // root free.
    assert!(
        dropped.load(Ordering::SeqCst),
        "the store outlived shutdown"
    );
    let again = FileServer::start(config(dir.path(), &key), net.clone())
        .await
        .unwrap();
    assert_eq!(again.get_bytes("doc").await.unwrap(), b"hello");
    assert!(has.await.unwrap().unwrap());
    again.shutdown().await.unwrap();
}
