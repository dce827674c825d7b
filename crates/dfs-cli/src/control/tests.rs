//! The control protocol against an in-memory backend over a real Unix socket.

use std::collections::HashMap;
use std::io::Cursor;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use super::daemon::{self, Backend, UploadBody};
use super::*;
use crate::Error;

#[derive(Clone, Default)]
struct MemBackend {
    files: Arc<Mutex<HashMap<String, Vec<u8>>>>,
    failed_puts: Arc<Mutex<Vec<String>>>,
    upload_started: Arc<Notify>,
    /// Notified when a `peers` call with a wait starts (it then never ends by itself).
    peers_waiting: Arc<Notify>,
}

impl Backend for MemBackend {
    type Body = Cursor<Vec<u8>>;

    fn node_id(&self) -> String {
        "ab".repeat(32)
    }

    async fn put(&self, name: &str, mut body: UploadBody) -> Result<StoredInfo, RemoteError> {
        if name.starts_with("reject/") {
            return Err(RemoteError::new(
                RemoteErrorKind::InvalidArgument,
                "rejected by the backend",
            ));
        }
        self.upload_started.notify_one();
        let mut data = Vec::new();
        match body.read_to_end(&mut data).await {
            Ok(_) => {
                let size = data.len() as u64;
                self.files.lock().unwrap().insert(name.to_owned(), data);
                Ok(StoredInfo {
                    name: name.to_owned(),
                    size,
                    replicas: vec![],
                })
            }
            Err(err) => {
                self.failed_puts.lock().unwrap().push(name.to_owned());
                Err(RemoteError::new(RemoteErrorKind::Other, err.to_string()))
            }
        }
    }

    async fn get(&self, name: &str) -> Result<(u64, Self::Body), RemoteError> {
        match self.files.lock().unwrap().get(name) {
            Some(data) => Ok((data.len() as u64, Cursor::new(data.clone()))),
            None => Err(RemoteError::new(
                RemoteErrorKind::NotFound,
                format!("{name:?} not found"),
            )),
        }
    }

    async fn remove(&self, name: &str, _everywhere: bool) -> Result<RemovedInfo, RemoteError> {
        match self.files.lock().unwrap().remove(name) {
            Some(_) => Ok(RemovedInfo {
                local: true,
                peers: Vec::new(),
            }),
            None => Err(RemoteError::new(RemoteErrorKind::NotFound, "not found")),
        }
    }

    async fn list(&self) -> Result<Vec<FileEntry>, RemoteError> {
        Ok(self
            .files
            .lock()
            .unwrap()
            .iter()
            .map(|(name, data)| FileEntry {
                name: Some(name.clone()),
                id: name.clone(),
                size: data.len() as u64,
            })
            .collect())
    }

    async fn peers(&self, wait_for: usize, _timeout: Duration) -> Vec<PeerEntry> {
        if wait_for > 0 {
            self.peers_waiting.notify_one();
            std::future::pending::<()>().await;
        }
        vec![PeerEntry {
            id: "cd".repeat(32),
            addr: "127.0.0.1:1".to_owned(),
        }]
    }

    async fn status(&self) -> Result<NodeStatus, RemoteError> {
        Ok(NodeStatus {
            node_id: self.node_id(),
            listen_addr: "127.0.0.1:2".to_owned(),
            data_dir: "/x".to_owned(),
            peers: 1,
            files: self.files.lock().unwrap().len() as u64,
            stored_bytes: 0,
            uptime_secs: 0,
            version: "test".to_owned(),
        })
    }

    async fn scrub(&self) -> Result<ScrubSummary, RemoteError> {
        Ok(ScrubSummary {
            checked: self.files.lock().unwrap().len() as u64,
            repaired: Vec::new(),
            unrepaired: Vec::new(),
        })
    }

    async fn replicate(&self, name: &str) -> Result<StoredInfo, RemoteError> {
        match self.files.lock().unwrap().get(name) {
            Some(data) => Ok(StoredInfo {
                name: name.to_owned(),
                size: data.len() as u64,
                replicas: Vec::new(),
            }),
            None => Err(RemoteError::new(RemoteErrorKind::NotFound, "no such file")),
        }
    }
}

struct Harness {
    _dir: tempfile::TempDir,
    socket: std::path::PathBuf,
    backend: MemBackend,
    stop: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

/// The user id the tests run as.
fn own_uid(dir: &Path) -> u32 {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(dir).unwrap().uid()
}

fn start(grace: Duration) -> Harness {
    start_with(grace, None)
}

/// Like [`start`], serving only `policy` (default: the tests' own user and root).
fn start_with(grace: Duration, policy: Option<daemon::PeerPolicy>) -> Harness {
    let dir = tempfile::tempdir().unwrap();
    let policy = policy.unwrap_or_else(|| daemon::PeerPolicy::owner_and_root(own_uid(dir.path())));
    let socket = socket_path(dir.path());
    let listener = UnixListener::bind(&socket).unwrap();
    let backend = MemBackend::default();
    let stop = CancellationToken::new();
    let task = tokio::spawn(daemon::run(
        listener,
        backend.clone(),
        stop.clone(),
        CancellationToken::new(),
        grace,
        policy,
    ));
    Harness {
        _dir: dir,
        socket,
        backend,
        stop,
        task,
    }
}

fn pattern(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i * 31 % 251) as u8).collect()
}

async fn within<F: std::future::Future>(f: F) -> F::Output {
    tokio::time::timeout(Duration::from_secs(20), f)
        .await
        .expect("timed out")
}

#[tokio::test]
async fn every_request_round_trips() {
    within(async {
        let h = start(Duration::from_secs(5));
        let mut client = Client::connect_socket(&h.socket).await.unwrap();
        assert_eq!(client.node_id(), "ab".repeat(32));
        let data = pattern(3 * CHUNK_LEN + 17);
        let mut last = 0;
        let stored = client
            .put("a/b.bin", Some(data.len() as u64), &data[..], |n| last = n)
            .await
            .unwrap();
        assert_eq!(stored.size, data.len() as u64);
        assert_eq!(last, data.len() as u64);
        client
            .put("empty", Some(0), &b""[..], |_| {})
            .await
            .unwrap();

        let mut back = Vec::new();
        let mut announced = 0;
        let n = client
            .get("a/b.bin", &mut back, |s| announced = s, |_| {})
            .await
            .unwrap();
        assert_eq!((n, announced), (data.len() as u64, data.len() as u64));
        assert_eq!(back, data);
        let mut back = Vec::new();
        assert_eq!(
            client
                .get("empty", &mut back, |_| {}, |_| {})
                .await
                .unwrap(),
            0
        );

        let err = client
            .get("nope", Vec::new(), |_| {}, |_| {})
            .await
            .unwrap_err();
        assert_eq!(err.exit_code(), crate::EXIT_NOT_FOUND, "{err}");
        let err = client.put("", None, &b"x"[..], |_| {}).await.unwrap_err();
        assert!(err.to_string().contains("cannot be empty"), "{err}");
        let big = pattern(2 * CHUNK_LEN);
        let err = client
            .put("a\nb", None, &big[..], |_| {})
            .await
            .unwrap_err();
        assert!(err.to_string().contains("control characters"), "{err}");
        // The backend fails before reading: the rest of the body is drained, then refused.
        let err = client
            .put("reject/x", None, &big[..], |_| {})
            .await
            .unwrap_err();
        assert!(err.to_string().contains("rejected by the backend"), "{err}");

        assert_eq!(client.list().await.unwrap().len(), 2);
        assert_eq!(client.peers(None).await.unwrap().len(), 1);
        assert_eq!(client.status().await.unwrap().files, 2);
        client.remove("empty", false).await.unwrap();
        assert!(client.remove("empty", false).await.is_err());
        assert_eq!(client.list().await.unwrap().len(), 1);
        // The connection is still usable after errors.
        assert_eq!(client.status().await.unwrap().files, 1);

        h.stop.cancel();
        h.task.await.unwrap();
    })
    .await;
}

#[tokio::test]
async fn a_client_vanishing_mid_upload_stores_nothing() {
    within(async {
        let h = start(Duration::from_secs(5));
        let mut raw = Channel::new(UnixStream::connect(&h.socket).await.unwrap());
        raw.send(&Request::Hello {
            version: PROTOCOL_VERSION,
        })
        .await
        .unwrap();
        let _: Option<Response> = raw.recv().await.unwrap();
        raw.send(&Request::Put {
            name: "cut".into(),
            size: Some(1 << 20),
        })
        .await
        .unwrap();
        raw.send(&Request::Chunk(Bytes::from(pattern(1000))))
            .await
            .unwrap();
        h.backend.upload_started.notified().await;
        drop(raw);
        // The backend sees an error, never a clean EOF.
        let mut client = Client::connect_socket(&h.socket).await.unwrap();
        let err = client
            .get("cut", Vec::new(), |_| {}, |_| {})
            .await
            .unwrap_err();
        assert!(matches!(
            err,
            Error::Remote(RemoteError {
                kind: RemoteErrorKind::NotFound,
                ..
            })
        ));
        h.stop.cancel();
        h.task.await.unwrap();
        assert_eq!(*h.backend.failed_puts.lock().unwrap(), ["cut"]);
    })
    .await;
}

#[tokio::test]
async fn shutdown_aborts_an_unfinished_upload_after_the_grace_period() {
    within(async {
        let h = start(Duration::ZERO);
        let mut raw = Channel::new(UnixStream::connect(&h.socket).await.unwrap());
        raw.send(&Request::Hello {
            version: PROTOCOL_VERSION,
        })
        .await
        .unwrap();
        let _: Option<Response> = raw.recv().await.unwrap();
        raw.send(&Request::Put {
            name: "slow".into(),
            size: None,
        })
        .await
        .unwrap();
        raw.send(&Request::Chunk(Bytes::from(pattern(1000))))
            .await
            .unwrap();
        h.backend.upload_started.notified().await;
        h.stop.cancel();
        let reply: Option<Response> = raw.recv().await.unwrap();
        match reply {
            Some(Response::Error(err)) => assert_eq!(err.kind, RemoteErrorKind::ShuttingDown),
            other => panic!("unexpected {other:?}"),
        }
        h.task.await.unwrap();
        assert!(h.backend.files.lock().unwrap().is_empty());
        assert_eq!(*h.backend.failed_puts.lock().unwrap(), ["slow"]);
    })
    .await;
}

#[tokio::test]
async fn garbage_and_bad_versions_do_not_disturb_the_node() {
    within(async {
        let h = start(Duration::from_secs(5));
        // Garbage bytes, an oversized frame header, and a half frame.
        for junk in [
            &b"GET / HTTP/1.1\r\n\r\n"[..],
            &[0xff, 0xff, 0xff, 0xff, 1, 2],
            &[0, 0, 0, 9, 1],
        ] {
            let mut s = UnixStream::connect(&h.socket).await.unwrap();
            s.write_all(junk).await.unwrap();
            s.shutdown().await.unwrap();
            let mut rest = Vec::new();
            let _ = s.read_to_end(&mut rest).await;
        }
        let mut raw = Channel::new(UnixStream::connect(&h.socket).await.unwrap());
        raw.send(&Request::Hello { version: 999 }).await.unwrap();
        match raw.recv::<Response>().await.unwrap() {
            Some(Response::Error(err)) => assert!(err.message.contains("version"), "{err}"),
            other => panic!("unexpected {other:?}"),
        }
        let mut client = Client::connect_socket(&h.socket).await.unwrap();
        client.put("ok", None, &b"fine"[..], |_| {}).await.unwrap();
        h.stop.cancel();
        h.task.await.unwrap();
    })
    .await;
}

#[tokio::test]
async fn a_missing_socket_is_node_unreachable() {
    let dir = tempfile::tempdir().unwrap();
    let err = Client::connect(Path::new(dir.path())).await.unwrap_err();
    assert_eq!(err.exit_code(), crate::EXIT_UNREACHABLE);
    assert!(
        err.one_line().contains("node unreachable"),
        "{}",
        err.one_line()
    );
}

#[test]
fn the_peer_policy_admits_the_owner_and_root_only() {
    let policy = daemon::PeerPolicy::owner_and_root(1000);
    assert!(policy.allows(1000));
    assert!(policy.allows(0));
    assert!(!policy.allows(1001));
    assert!(!policy.allows(65534));
    let strict = daemon::PeerPolicy {
        owner: 1000,
        allow_root: false,
    };
    assert!(strict.allows(1000));
    assert!(!strict.allows(0));
}

#[tokio::test]
async fn a_client_of_another_user_is_refused_with_permission_denied() {
    within(async {
        // Nobody here is the owner, and root is not admitted: the tests' own user (root in
        // some containers) stands for "another user".
        let dir = tempfile::tempdir().unwrap();
        let owner = own_uid(dir.path()).wrapping_add(1);
        let policy = daemon::PeerPolicy {
            owner,
            allow_root: false,
        };
        let h = start_with(Duration::from_secs(5), Some(policy));
        // The node answers before reading the client's `Hello` and closes: whichever comes
        // first, the client reports the refusal, never a broken pipe. The node keeps serving
        // (and refusing).
        for _ in 0..20 {
            match Client::connect_socket(&h.socket).await {
                Err(Error::Remote(err)) => {
                    assert_eq!(err.kind, RemoteErrorKind::PermissionDenied);
                    assert!(err.message.starts_with("permission denied"), "{err}");
                    assert!(err.message.contains(&format!("uid {owner}")), "{err}");
                    assert_eq!(Error::Remote(err).exit_code(), crate::EXIT_FAILURE);
                }
                other => panic!("unexpected {other:?}"),
            }
        }
        // A raw client that sends nothing still reads the refusal.
        let stream = tokio::net::UnixStream::connect(&h.socket).await.unwrap();
        let mut ch = Channel::new(stream);
        match ch.recv::<Response>().await {
            Ok(Some(Response::Error(err))) => {
                assert_eq!(err.kind, RemoteErrorKind::PermissionDenied);
            }
            other => panic!("unexpected {other:?}"),
        }
        assert!(matches!(ch.recv::<Response>().await, Ok(None)));
        h.stop.cancel();
        h.task.await.unwrap();
    })
    .await;
}

#[tokio::test]
async fn a_pending_peers_wait_ends_at_stop_without_the_grace_period() {
    within(async {
        // A grace period far beyond `within`'s deadline: only cancelling at stop passes.
        let h = start(Duration::from_secs(3600));
        let mut client = Client::connect_socket(&h.socket).await.unwrap();
        let waiting = h.backend.peers_waiting.notified();
        let request =
            tokio::spawn(async move { client.peers(Some((5, Duration::from_secs(600)))).await });
        waiting.await;
        h.stop.cancel();
        h.task.await.unwrap();
        match request.await.unwrap() {
            Err(Error::Remote(err)) => assert_eq!(err.kind, RemoteErrorKind::ShuttingDown),
            other => panic!("unexpected {other:?}"),
        }
    })
    .await;
}
