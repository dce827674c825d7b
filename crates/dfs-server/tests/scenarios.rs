//! End-to-end scenarios, each written once generic over the transport and run over both
//! `MemoryTransport` and `TcpTransport`. Nothing sleeps: every wait is on an event or a
//! condition with a deadline, and every test runs under one overall timeout.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::io;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use dfs_server::wire::{Envelope, Message};
use dfs_server::{
    Config, FileServer, Key, MemoryTransport, NetworkSecret, NodeId, Replication, Scope,
    ServerError, ServerEvent, TcpTransport, Transport,
};
use dfs_transport::{Endpoint, EndpointConfig, Event, Substream};
use tempfile::TempDir;
use tokio::io::{AsyncRead, AsyncReadExt, ReadBuf};
use tokio::sync::broadcast;

/// Deadline for any single wait.
const WAIT: Duration = Duration::from_secs(20);
/// Deadline for a whole test.
const TEST: Duration = Duration::from_secs(120);

// ---------------------------------------------------------------------------------------
// Harness
// ---------------------------------------------------------------------------------------

trait Net: Clone + Send + Sync + 'static {
    type T: Transport;
    fn transport(&self) -> Self::T;
    fn listen(&self) -> &'static str;
}

#[derive(Clone)]
struct Mem(MemoryTransport);

impl Net for Mem {
    type T = MemoryTransport;
    fn transport(&self) -> MemoryTransport {
        self.0.clone()
    }
    fn listen(&self) -> &'static str {
        "mem:0"
    }
}

#[derive(Clone)]
struct Tcp;

impl Net for Tcp {
    type T = TcpTransport;
    fn transport(&self) -> TcpTransport {
        TcpTransport::new()
    }
    fn listen(&self) -> &'static str {
        "127.0.0.1:0"
    }
}

/// Runs `$name(net)` over both transports, under the test deadline.
macro_rules! both_transports {
    ($($name:ident),* $(,)?) => {$(
        mod $name {
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn memory() {
                let net = super::Mem(dfs_server::MemoryTransport::new());
                tokio::time::timeout(super::TEST, super::$name(net))
                    .await
                    .expect("test deadline passed");
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn tcp() {
                tokio::time::timeout(super::TEST, super::$name(super::Tcp))
                    .await
                    .expect("test deadline passed");
            }
        }
    )*};
}

fn config(
    net: &impl Net,
    dir: &Path,
    key: &Key,
    bootstrap: &[String],
) -> dfs_server::ConfigBuilder {
    Config::builder(dir)
        .listen_addr(net.listen())
        .data_key(key.clone())
        .bootstrap(bootstrap.iter().cloned())
        .fsync(false)
        .request_timeout(Duration::from_secs(5))
        .replication_timeout(Duration::from_secs(600))
}

fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
}

async fn start<N: Net>(net: &N, dir: &Path, key: &Key, bootstrap: &[String]) -> FileServer<N::T> {
    init_tracing();
    FileServer::start(config(net, dir, key, bootstrap).build(), net.transport())
        .await
        .expect("node starts")
}

/// Two meshed nodes sharing `key`, in fresh directories (`a` bootstraps `b`).
async fn pair<N: Net>(net: &N, key: &Key) -> (Vec<TempDir>, FileServer<N::T>, FileServer<N::T>) {
    let d = dirs(2);
    let a = start(net, d[0].path(), key, &[]).await;
    let b = start(net, d[1].path(), key, &[a.local_addr()]).await;
    mesh(&[&a, &b]).await;
    (d, a, b)
}

/// Waits until every node sees all the others.
async fn mesh<T: Transport>(nodes: &[&FileServer<T>]) {
    for node in nodes {
        node.wait_for_peers(nodes.len() - 1, WAIT)
            .await
            .expect("full mesh");
    }
}

/// Waits (on events) until `cond` holds.
async fn wait_until<T: Transport>(node: &FileServer<T>, what: &str, cond: impl Fn() -> bool) {
    let mut events = node.events();
    let deadline = tokio::time::Instant::now() + WAIT;
    while !cond() {
        match tokio::time::timeout_at(deadline, events.recv()).await {
            Err(_) => panic!("timed out waiting for {what}"),
            Ok(Err(broadcast::error::RecvError::Closed)) => panic!("events closed ({what})"),
            Ok(_) => {}
        }
    }
}

/// Waits for an event matching `pred`.
async fn wait_event(
    events: &mut broadcast::Receiver<ServerEvent>,
    what: &str,
    pred: impl Fn(&ServerEvent) -> bool,
) -> ServerEvent {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        match tokio::time::timeout_at(deadline, events.recv()).await {
            Err(_) => panic!("timed out waiting for {what}"),
            Ok(Ok(event)) if pred(&event) => return event,
            Ok(Err(broadcast::error::RecvError::Closed)) => panic!("events closed ({what})"),
            Ok(_) => {}
        }
    }
}

fn pattern(seed: u64, len: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(len);
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(len);
    out
}

fn dirs(n: usize) -> Vec<TempDir> {
    (0..n).map(|_| tempfile::tempdir().unwrap()).collect()
}

/// Every regular file under `dir`.
fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
            } else {
                out.push(path);
            }
        }
    }
    out
}

/// The object files of a node's store.
fn object_files(root: &Path) -> Vec<PathBuf> {
    files_under(&root.join("store").join("objects"))
}

fn flip_middle_byte(path: &Path) {
    let mut bytes = std::fs::read(path).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x55;
    std::fs::write(path, bytes).unwrap();
}

/// A deterministic generated stream of `len` bytes (for big files without big buffers).
struct Generated {
    left: u64,
    x: u64,
}

impl Generated {
    fn new(len: u64) -> Self {
        Generated {
            left: len,
            x: 0x2545_F491_4F6C_DD1D,
        }
    }
}

impl AsyncRead for Generated {
    fn poll_read(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let n = (buf.remaining() as u64).min(self.left) as usize / 8 * 8;
        let n = if n == 0 {
            (self.left as usize).min(buf.remaining())
        } else {
            n
        };
        let mut chunk = vec![0u8; n];
        for word in chunk.chunks_mut(8) {
            self.x ^= self.x << 13;
            self.x ^= self.x >> 7;
            self.x ^= self.x << 17;
            let bytes = self.x.to_le_bytes();
            word.copy_from_slice(&bytes[..word.len()]);
        }
        buf.put_slice(&chunk);
        self.left -= n as u64;
        Poll::Ready(Ok(()))
    }
}

async fn hash_stream(mut r: impl AsyncRead + Unpin) -> (u64, blake3::Hash) {
    let mut hasher = blake3::Hasher::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut total = 0u64;
    loop {
        let n = r.read(&mut buf).await.unwrap();
        if n == 0 {
            return (total, hasher.finalize());
        }
        total += n as u64;
        hasher.update(&buf[..n]);
    }
}

// ---------------------------------------------------------------------------------------
// The Go original's three scenarios
// ---------------------------------------------------------------------------------------

both_transports!(
    go_four_nodes_five_files,
    go_multi_hop,
    go_five_nodes_stop_wipe_restart,
    concurrent_stores_and_gets,
    peer_killed_mid_transfer,
    corrupting_peer,
    lying_peer,
    fetch_never_overwrites_a_newer_store,
    damaged_local_copy_is_fetched_again,
    replication_retries_and_reports_failing_peers,
    wrong_network_secret,
    different_data_key,
    delete_everywhere_and_replication_policies,
    replicate_to_late_joiners,
    replicas_follow_the_local_write,
    failed_local_write_commits_no_replica,
    slow_source_keeps_followed_replicas_alive,
    followed_puts_are_checked_against_their_trailer,
    incoming_transfers_are_bounded,
    parked_offers_are_bounded,
    a_holder_refusing_after_proceed_is_heard,
    queued_offers_hold_no_transfer_slot,
    unbounded_timeouts,
    failed_name_write_keeps_the_old_copy,
    one_peer_gets_half_the_transfer_slots,
    shutdown_drains_in_flight_store,
    big_file_across_nodes,
    small_copies_from_peers_go_to_the_pack,
    a_packed_replica_damaged_while_down_is_fetched_again,
    a_packing_node_restarts_while_a_clone_of_its_handle_lives,
    a_node_dropped_with_a_parked_offer_frees_its_root,
    healing_never_revives_an_object_deleted_meanwhile,
    healing_does_not_settle_for_the_version_it_has,
);

/// Starts a node that keeps the small objects it receives from peers in its store's pack.
async fn start_packing<N: Net>(
    net: &N,
    dir: &Path,
    key: &Key,
    bootstrap: Vec<String>,
) -> dfs_server::Result<FileServer<N::T>> {
    init_tracing();
    let config = config(net, dir, key, &bootstrap)
        .pack_small_objects(64 * 1024)
        .build();
    FileServer::start(config, net.transport()).await
}

/// Two meshed packing nodes sharing `key`, in fresh directories (`a` bootstraps `b`).
async fn packing_pair<N: Net>(
    net: &N,
    key: &Key,
) -> (Vec<TempDir>, FileServer<N::T>, FileServer<N::T>) {
    let d = dirs(2);
    let a = start_packing(net, d[0].path(), key, vec![]).await.unwrap();
    let b = start_packing(net, d[1].path(), key, vec![a.local_addr()])
        .await
        .unwrap();
    mesh(&[&a, &b]).await;
    (d, a, b)
}

/// With `pack_small_objects`, the small objects a node receives from peers (replicas, and
/// copies `get` fetches) go to its store's pack, large ones to files; all read back, also
/// after a restart, and verify clean.
async fn small_copies_from_peers_go_to_the_pack<N: Net>(net: N) {
    let key = Key::generate().unwrap();
    let (d, a, b) = packing_pair(&net, &key).await;
    let (small, large) = (pattern(1, 10_000), pattern(2, 300_000));
    for (name, data) in [("small", &small), ("large", &large)] {
        let receipt = a.store_bytes(name, data).await.unwrap();
        assert_eq!(receipt.replicas, vec![b.node_id()]);
    }
    // The origin's own writes are files (replicas follow them as they are written).
    assert_eq!(object_files(d[0].path()).len(), 2);
    // B holds the small replica in its pack, the large one as a file.
    assert_eq!(object_files(d[1].path()).len(), 1);
    assert_eq!(b.get_bytes("small").await.unwrap(), small);
    assert_eq!(b.get_bytes("large").await.unwrap(), large);
    // A copy fetched back into A goes to A's pack.
    a.delete("small", Scope::Local).await.unwrap();
    assert_eq!(a.get_bytes("small").await.unwrap(), small);
    assert_eq!(object_files(d[0].path()).len(), 1);
    a.shutdown().await.unwrap();
    b.shutdown().await.unwrap();

    // After a restart (the pack's lock was let go), B serves both on its own.
    let b = start_packing(&net, d[1].path(), &key, vec![])
        .await
        .unwrap();
    assert_eq!(b.get_bytes("small").await.unwrap(), small);
    assert_eq!(b.get_bytes("large").await.unwrap(), large);
    b.shutdown().await.unwrap();
    let store = dfs_store::Store::open(d[1].path().join("store")).unwrap();
    assert_eq!(store.pack_stats().unwrap().objects, 1);
    assert!(store.scrub().is_clean());
}

/// `shutdown` closes the store, so a node with a pack (whose root is locked while its store
/// is open) starts again on the same root even while a clone of the old handle lives on.
async fn a_packing_node_restarts_while_a_clone_of_its_handle_lives<N: Net>(net: N) {
    let key = Key::generate().unwrap();
    let d = dirs(1);
    let a = start_packing(&net, d[0].path(), &key, vec![])
        .await
        .unwrap();
    a.store_bytes("doc", b"hello").await.unwrap();
    let other = a.clone();
    a.shutdown().await.unwrap();
    let err = other.get_bytes("doc").await.unwrap_err();
    assert!(matches!(err, ServerError::ShuttingDown), "{err}");
    let again = start_packing(&net, d[0].path(), &key, vec![])
        .await
        .unwrap();
    assert_eq!(again.get_bytes("doc").await.unwrap(), b"hello");
    drop(other);
    again.shutdown().await.unwrap();
}

/// A node whose caller drops the last handle without `shutdown` stops at once, also while
/// a peer holds one of its `Get` offers (which waits up to 10 minutes for `Proceed`): the
/// offer's stream ends, and a packing node can start again on the same root.
async fn a_node_dropped_with_a_parked_offer_frees_its_root<N: Net>(net: N) {
    let key = Key::generate().unwrap();
    let d = dirs(1);
    let a = start_packing(&net, d[0].path(), &key, vec![])
        .await
        .unwrap();
    a.store_bytes("doc", b"hello").await.unwrap();
    let doc = a.object_id("doc");
    let (_raw, peer) = raw_peer(&net, &a).await;
    let mut offer = peer.open_stream().await.unwrap();
    offer
        .send(&Envelope::new(Message::Get { id: doc }))
        .await
        .unwrap();
    let found = offer.recv::<Envelope>().await.unwrap().unwrap().message;
    assert!(matches!(found, Message::Found { .. }), "{found:?}");

    drop(a);
    let ended = tokio::time::timeout(WAIT, offer.recv::<Envelope>())
        .await
        .expect("the parked offer outlived its node's last handle");
    assert!(!matches!(ended, Ok(Some(_))), "{ended:?}");
    // The root's lock goes with the node's last task, just after the offer's stream ends.
    let deadline = tokio::time::Instant::now() + WAIT;
    let again = loop {
        match start_packing(&net, d[0].path(), &key, vec![]).await {
            Ok(node) => break node,
            Err(ServerError::Store(e))
                if matches!(e, dfs_store::StoreError::Locked { .. })
                    && tokio::time::Instant::now() < deadline =>
            {
                tokio::task::yield_now().await;
            }
            Err(e) => panic!("the root stayed locked: {e}"),
        }
    };
    assert_eq!(again.get_bytes("doc").await.unwrap(), b"hello");
    again.shutdown().await.unwrap();
}

/// Flips a byte in the middle of the bytes of `object`'s newest record in the pack of the
/// node whose root is `root` (a stopped node; the record holds more than 5,000 bytes).
fn damage_newest_packed_record(root: &Path, object: dfs_server::ObjectId) {
    let id = object.to_hex();
    let seg = files_under(&root.join("store/pack"))
        .into_iter()
        .find(|p| p.extension().is_some_and(|e| e == "seg"))
        .unwrap();
    let mut bytes = std::fs::read(&seg).unwrap();
    // After the record's key, the hex id.
    let at = bytes
        .windows(id.len())
        .rposition(|w| w == id.as_bytes())
        .unwrap();
    bytes[at + id.len() + 5_000] ^= 0x40;
    std::fs::write(&seg, &bytes).unwrap();
}

/// A packed replica whose newest version rots while its node is down: at the next start
/// the store cannot tell it from a write a crash cut short, so the older version stands,
/// but the store names the key (until it is written again, also across restarts), and the
/// node fetches the newest copy as soon as a peer joins.
async fn a_packed_replica_damaged_while_down_is_fetched_again<N: Net>(net: N) {
    let key = Key::generate().unwrap();
    let (d, a, b) = packing_pair(&net, &key).await;
    let (v1, v2) = (pattern(6, 10_000), pattern(7, 10_000));
    a.store_bytes("doc", &v1).await.unwrap();
    let receipt = a.store_bytes("doc", &v2).await.unwrap();
    assert_eq!(b.get_bytes("doc").await.unwrap(), v2);
    b.shutdown().await.unwrap();

    damage_newest_packed_record(d[1].path(), receipt.object);

    // Alone, the node serves the older version; `scrub` names the object but cannot
    // replace it.
    let b = start_packing(&net, d[1].path(), &key, vec![])
        .await
        .unwrap();
    assert_eq!(b.get_bytes("doc").await.unwrap(), v1);
    let report = b.scrub().await.unwrap();
    assert!(report.repaired.is_empty(), "{report:?}");
    assert_eq!(report.unrepaired.len(), 1, "{report:?}");
    assert_eq!(report.unrepaired[0].0, Some(receipt.object), "{report:?}");
    // A peer joins: the node fetches the newest copy by itself.
    b.connect(&a.local_addr()).await.unwrap();
    let deadline = tokio::time::Instant::now() + WAIT;
    while b.get_bytes("doc").await.unwrap() != v2 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the lost write was never fetched again"
        );
        tokio::task::yield_now().await;
    }
    assert!(b.scrub().await.unwrap().unrepaired.is_empty());
    b.shutdown().await.unwrap();
    let b = start_packing(&net, d[1].path(), &key, vec![])
        .await
        .unwrap();
    assert_eq!(b.get_bytes("doc").await.unwrap(), v2);
    let report = b.scrub().await.unwrap();
    assert!(
        report.repaired.is_empty() && report.unrepaired.is_empty(),
        "{report:?}"
    );
    b.shutdown().await.unwrap();
    a.shutdown().await.unwrap();
}

/// The next `Get` a bare endpoint is asked (other events and requests are skipped).
async fn next_get(events: &mut dfs_transport::Events) -> (Substream, dfs_server::ObjectId) {
    loop {
        let event = tokio::time::timeout(WAIT, events.next())
            .await
            .expect("timed out waiting for a Get")
            .expect("endpoint events ended");
        let Event::Stream { mut stream, .. } = event else {
            continue;
        };
        if let Ok(Some(Envelope {
            message: Message::Get { id },
            ..
        })) = stream.recv::<Envelope>().await
        {
            return (stream, id);
        }
    }
}

/// The heal task works from the list of lost writes it read when its pass began: an object
/// of that list deleted while the task was still fetching an earlier one is no longer lost,
/// so it must not be fetched again (that would revive a deleted object, or replace a newer
/// local store with a peer's copy).
async fn healing_never_revives_an_object_deleted_meanwhile<N: Net>(net: N) {
    let key = Key::generate().unwrap();
    let (d, a, b) = packing_pair(&net, &key).await;
    let mut docs: Vec<(String, dfs_server::ObjectId)> = (0..3)
        .map(|i| {
            let name = format!("doc{i}");
            let id = a.object_id(&name);
            (name, id)
        })
        .collect();
    // The heal task goes through them in this order.
    docs.sort_by_key(|(_, id)| id.to_hex());
    for (i, (name, _)) in docs.iter().enumerate() {
        a.store_bytes(name, &pattern(60 + i as u64, 10_000))
            .await
            .unwrap();
        a.store_bytes(name, &pattern(70 + i as u64, 10_000))
            .await
            .unwrap();
    }
    // Only the bare peer below is ever asked for the first one (and it holds its answer).
    a.delete(&docs[0].0, Scope::Local).await.unwrap();
    b.shutdown().await.unwrap();
    // B loses the newest write of all three (their records rot while it is down).
    let seg = files_under(&d[1].path().join("store/pack"))
        .into_iter()
        .find(|p| p.extension().is_some_and(|e| e == "seg"))
        .unwrap();
    let mut bytes = std::fs::read(&seg).unwrap();
    for (_, id) in &docs {
        let hex = id.to_hex();
        let at = bytes
            .windows(hex.len())
            .rposition(|w| w == hex.as_bytes())
            .unwrap();
        bytes[at + hex.len() + 5_000] ^= 0x40;
    }
    std::fs::write(&seg, &bytes).unwrap();

    let config = config(&net, d[1].path(), &key, &[])
        .pack_small_objects(64 * 1024)
        .request_timeout(WAIT)
        .build();
    let b = FileServer::start(config, net.transport()).await.unwrap();
    let ((_endpoint, mut raw_events), _peer) = raw_peer(&net, &b).await;
    // The heal pass began (a peer joined): it is fetching the first object.
    let (mut first, id) = next_get(&mut raw_events).await;
    assert_eq!(id, docs[0].1);
    // Meanwhile the second one is deleted here, and a peer holding it joins.
    assert!(b.delete(&docs[1].0, Scope::Local).await.unwrap().local);
    b.connect(&a.local_addr()).await.unwrap();
    first.send(&Envelope::new(Message::NotFound)).await.unwrap();
    // The pass goes on; once the third object is asked for, it is done with the second.
    loop {
        let (mut s, id) = next_get(&mut raw_events).await;
        let _ = s.send(&Envelope::new(Message::NotFound)).await;
        let _ = s.finish().await;
        if id == docs[2].1 {
            break;
        }
    }
    assert!(
        !b.has(&docs[1].0).await.unwrap(),
        "the heal task fetched again an object deleted since its pass began"
    );
    b.shutdown().await.unwrap();
    a.shutdown().await.unwrap();
}

/// A peer that only holds the version a node's lost write replaced (it was down when the
/// newer one was stored) offers exactly the copy the node still has: the heal task must not
/// take that as the repair (the lost write would be forgotten, and the newest copy never
/// fetched), but wait for a peer with another copy.
async fn healing_does_not_settle_for_the_version_it_has<N: Net>(net: N) {
    let key = Key::generate().unwrap();
    let (d, a, b) = packing_pair(&net, &key).await;
    let (v1, v2) = (pattern(80, 10_000), pattern(81, 10_000));
    a.store_bytes("doc", &v1).await.unwrap();
    let receipt = a.store_bytes("doc", &v2).await.unwrap();
    b.shutdown().await.unwrap();
    damage_newest_packed_record(d[1].path(), receipt.object);
    let id = receipt.object.to_hex();
    // What B is left with: v1, as stored (what a peer that missed v2 would offer).
    let old = {
        let store = dfs_store::Store::open(d[1].path().join("store")).unwrap();
        assert_eq!(store.lost_writes(), std::slice::from_ref(&id));
        let mut old = Vec::new();
        std::io::Read::read_to_end(&mut store.read(&id).unwrap(), &mut old).unwrap();
        old
    };

    let b = start_packing(&net, d[1].path(), &key, vec![])
        .await
        .unwrap();
    let ((_endpoint, mut raw_events), _peer) = raw_peer(&net, &b).await;
    let (mut s, asked) = next_get(&mut raw_events).await;
    assert_eq!(asked, receipt.object);
    let (size, hash) = (old.len() as u64, *blake3::hash(&old).as_bytes());
    s.send(&Envelope::new(Message::Found { size, hash }))
        .await
        .unwrap();
    let reply = tokio::time::timeout(WAIT, s.recv::<Envelope>())
        .await
        .expect("the offer was neither taken nor dropped");
    if let Ok(Some(Envelope {
        message: Message::Proceed,
        ..
    })) = reply
    {
        s.send_body(size, &old[..]).await.unwrap();
        let _ = s.recv::<Envelope>().await;
        panic!("the heal task took the version it already had as the newest");
    }
    // A holder of the newest copy joins: that is the one fetched.
    b.connect(&a.local_addr()).await.unwrap();
    let deadline = tokio::time::Instant::now() + WAIT;
    while b.get_bytes("doc").await.unwrap() != v2 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the lost write was never fetched again"
        );
        tokio::task::yield_now().await;
    }
    b.shutdown().await.unwrap();
    a.shutdown().await.unwrap();
}

/// (1) 4 nodes, 5 files of 1 KiB stored on the bootstrap node, all read back (also after
/// the bootstrap node dropped its copy, and from every other node).
async fn go_four_nodes_five_files<N: Net>(net: N) {
    let key = Key::generate().unwrap();
    let d = dirs(4);
    let boot = start(&net, d[0].path(), &key, &[]).await;
    let mut nodes = vec![boot.clone()];
    for dir in &d[1..] {
        nodes.push(start(&net, dir.path(), &key, &[boot.local_addr()]).await);
    }
    mesh(&nodes.iter().collect::<Vec<_>>()).await;

    for i in 0..5 {
        let name = format!("picture_{i}.png");
        let data = pattern(i, 1024);
        let receipt = boot.store_bytes(&name, &data).await.unwrap();
        assert_eq!(receipt.size, 1024);
        assert_eq!(receipt.replicas.len(), 3, "every peer acknowledged");
        assert_eq!(boot.get_bytes(&name).await.unwrap(), data);

        boot.delete(&name, Scope::Local).await.unwrap();
        assert!(!boot.has(&name).await.unwrap());
        assert_eq!(boot.get_bytes(&name).await.unwrap(), data, "fetched back");
        assert!(boot.has(&name).await.unwrap());
    }
    for node in &nodes[1..] {
        for i in 0..5 {
            let name = format!("picture_{i}.png");
            assert!(node.has(&name).await.unwrap());
            assert_eq!(node.get_bytes(&name).await.unwrap(), pattern(i, 1024));
        }
    }
    for node in nodes {
        node.shutdown().await.unwrap();
    }
}

/// (2) Multi-hop: A bootstraps, C joins and stores a file, B joins knowing only A, A deletes
/// its copy, B gets the file from C.
async fn go_multi_hop<N: Net>(net: N) {
    let key = Key::generate().unwrap();
    let d = dirs(3);
    let a = start(&net, d[0].path(), &key, &[]).await;
    let c = start(&net, d[2].path(), &key, &[a.local_addr()]).await;
    mesh(&[&a, &c]).await;
    let data = pattern(42, 10_000);
    let receipt = c.store_bytes("coolPicture.jpg", &data).await.unwrap();
    assert_eq!(receipt.replicas, vec![a.node_id()]);

    let b = start(&net, d[1].path(), &key, &[a.local_addr()]).await;
    mesh(&[&a, &b, &c]).await; // b learned c through a
    a.delete("coolPicture.jpg", Scope::Local).await.unwrap();
    assert!(!b.has("coolPicture.jpg").await.unwrap());

    let mut events = b.events();
    assert_eq!(b.get_bytes("coolPicture.jpg").await.unwrap(), data);
    let c_id = c.node_id();
    wait_event(
        &mut events,
        "fetched from c",
        |e| matches!(e, ServerEvent::Fetched { from, .. } if *from == c_id),
    )
    .await;
    for node in [a, b, c] {
        node.shutdown().await.unwrap();
    }
}

/// (3) 5 nodes: store files, read each from every node, stop one node and wipe its data,
/// delete a file on its origin node, read it from the others, restart the stopped node and
/// read everything from it.
async fn go_five_nodes_stop_wipe_restart<N: Net>(net: N) {
    let key = Key::generate().unwrap();
    let mut d = dirs(5);
    let mut nodes = vec![start(&net, d[0].path(), &key, &[]).await];
    let boot_addr = nodes[0].local_addr();
    for dir in &d[1..] {
        nodes.push(start(&net, dir.path(), &key, std::slice::from_ref(&boot_addr)).await);
    }
    mesh(&nodes.iter().collect::<Vec<_>>()).await;

    let files: Vec<(String, Vec<u8>)> = (0..5)
        .map(|i| {
            (
                format!("dir_{i}/file_{i}"),
                pattern(100 + i, 3000 + i as usize * 777),
            )
        })
        .collect();
    for (i, (name, data)) in files.iter().enumerate() {
        let receipt = nodes[i].store_bytes(name, data).await.unwrap();
        assert_eq!(receipt.replicas.len(), 4);
    }
    for node in &nodes {
        for (name, data) in &files {
            assert_eq!(&node.get_bytes(name).await.unwrap(), data);
        }
    }

    // Stop node 4 and wipe its data.
    let stopped = nodes.pop().unwrap();
    let stopped_id = stopped.node_id();
    stopped.shutdown().await.unwrap();
    d.pop().unwrap().close().unwrap();
    for node in &nodes {
        wait_until(node, "node 4 left", || {
            !node.peers().iter().any(|p| p.id == stopped_id)
        })
        .await;
    }

    // Delete file 0 on its origin node; the others still serve it.
    nodes[0].delete(&files[0].0, Scope::Local).await.unwrap();
    assert!(!nodes[0].has(&files[0].0).await.unwrap());
    for node in &nodes[1..] {
        assert_eq!(node.get_bytes(&files[0].0).await.unwrap(), files[0].1);
    }

    // Restart node 4 from scratch; it reads everything from the others.
    let fresh = tempfile::tempdir().unwrap();
    let restarted = start(&net, fresh.path(), &key, &[boot_addr]).await;
    assert_ne!(restarted.node_id(), stopped_id, "wiped root, new identity");
    nodes.push(restarted.clone());
    mesh(&nodes.iter().collect::<Vec<_>>()).await;
    for (name, data) in &files {
        assert!(!restarted.has(name).await.unwrap());
        assert_eq!(&restarted.get_bytes(name).await.unwrap(), data);
    }
    assert_eq!(nodes[0].get_bytes(&files[0].0).await.unwrap(), files[0].1);
    for node in nodes {
        node.shutdown().await.unwrap();
    }
}

// ---------------------------------------------------------------------------------------
// Beyond the original
// ---------------------------------------------------------------------------------------

/// 32 concurrent stores of different and equal names, then 32 concurrent gets (on a node
/// that has to fetch every one of them, several of the same name at once).
async fn concurrent_stores_and_gets<N: Net>(net: N) {
    let key = Key::generate().unwrap();
    let d = dirs(4);
    let a = start(&net, d[0].path(), &key, &[]).await;
    let b = start(&net, d[1].path(), &key, &[a.local_addr()]).await;
    let c = start(&net, d[2].path(), &key, &[a.local_addr()]).await;
    mesh(&[&a, &b, &c]).await;
    let nodes = [a.clone(), b.clone(), c.clone()];

    let name_of = |i: usize| {
        if i < 16 {
            format!("distinct/{i}")
        } else {
            "same".to_owned()
        }
    };
    let data_of = |i: usize| pattern(1000 + i as u64, 64 * 1024 + i * 101);
    let stores: Vec<_> = (0..32)
        .map(|i| {
            let node = nodes[i % 3].clone();
            tokio::spawn(async move { node.store_bytes(&name_of(i), &data_of(i)).await })
        })
        .collect();
    for task in stores {
        let receipt = task.await.unwrap().unwrap();
        assert_eq!(receipt.replicas.len(), 2);
    }

    let late = start(&net, d[3].path(), &key, &[a.local_addr()]).await;
    mesh(&[&a, &b, &c, &late]).await;
    let same_variants: Vec<Vec<u8>> = (16..32).map(data_of).collect();
    let gets: Vec<_> = (0..32)
        .map(|i| {
            let node = if i % 2 == 0 {
                late.clone()
            } else {
                nodes[(i + 1) % 3].clone()
            };
            tokio::spawn(async move { (i, node.get_bytes(&name_of(i)).await) })
        })
        .collect();
    for task in gets {
        let (i, got) = task.await.unwrap();
        let got = got.unwrap();
        if i < 16 {
            assert_eq!(got, data_of(i));
        } else {
            assert!(same_variants.contains(&got), "a whole version of \"same\"");
        }
    }
    for node in [a, b, c, late] {
        node.shutdown().await.unwrap();
    }
}

/// What a rogue node serves after offering an object.
#[derive(Clone)]
enum RogueBody {
    /// Announces this many bytes, sends half of them and dies (closes its endpoint).
    DiesHalfway(u64),
    /// Sends these bytes whole, announced with their true length and BLAKE3 hash: a liar
    /// that passes every check but the cipher's.
    Lies(Arc<Vec<u8>>),
    /// Sends these (genuine) bytes, but only once `release` is notified; notifies
    /// `proceeded` when the requester said `Proceed`.
    Gated {
        bytes: Arc<Vec<u8>>,
        proceeded: Arc<tokio::sync::Notify>,
        release: Arc<tokio::sync::Notify>,
    },
}

/// A rogue node speaking the wire protocol: it offers every requested object and serves
/// `body`.
async fn spawn_rogue<T: Transport>(
    transport: T,
    listen: &str,
    victim: &str,
    body: RogueBody,
) -> (NodeId, Arc<AtomicUsize>) {
    let id = NodeId::random();
    let (endpoint, mut events) = Endpoint::bind(transport, listen, EndpointConfig::new(id))
        .await
        .unwrap();
    endpoint.connect(victim).await.unwrap();
    let served = Arc::new(AtomicUsize::new(0));
    let counter = Arc::clone(&served);
    tokio::spawn(async move {
        while let Some(event) = events.next().await {
            let Event::Stream { mut stream, .. } = event else {
                continue;
            };
            let endpoint = endpoint.clone();
            let counter = Arc::clone(&counter);
            let body = body.clone();
            tokio::spawn(async move {
                let Ok(Some(Envelope {
                    message: Message::Get { .. },
                    ..
                })) = stream.recv::<Envelope>().await
                else {
                    return;
                };
                let (size, hash) = match &body {
                    RogueBody::DiesHalfway(size) => (*size, [7; 32]),
                    RogueBody::Lies(bytes) | RogueBody::Gated { bytes, .. } => {
                        (bytes.len() as u64, *blake3::hash(bytes).as_bytes())
                    }
                };
                let offer = Envelope::new(Message::Found { size, hash });
                stream.send(&offer).await.unwrap();
                let Ok(Some(Envelope {
                    message: Message::Proceed,
                    ..
                })) = stream.recv::<Envelope>().await
                else {
                    return;
                };
                counter.fetch_add(1, Ordering::SeqCst);
                match body {
                    RogueBody::DiesHalfway(size) => {
                        let half = vec![0xA5u8; (size / 2) as usize];
                        let dying = (&half[..]).chain(Failing);
                        let _ = stream.send_body(size, dying).await;
                        endpoint.close().await;
                    }
                    RogueBody::Lies(bytes) => {
                        let _ = stream.send_body(size, &bytes[..]).await;
                        let _ = stream.finish().await;
                    }
                    RogueBody::Gated {
                        bytes,
                        proceeded,
                        release,
                    } => {
                        proceeded.notify_one();
                        release.notified().await;
                        let _ = stream.send_body(size, &bytes[..]).await;
                        let _ = stream.finish().await;
                    }
                }
            });
        }
    });
    (id, served)
}

/// A replica peer speaking the wire protocol: it takes every `Put` (or `PutFollow`) whole and answers
/// with an error for its first `refusals` attempts, then `Stored` (or, when `silent`, never
/// answers at all). Counts the attempts.
async fn spawn_flaky_replica<T: Transport>(
    transport: T,
    listen: &str,
    victim: &str,
    refusals: usize,
    silent: bool,
) -> (NodeId, Arc<AtomicUsize>) {
    let id = NodeId::random();
    let (endpoint, mut events) = Endpoint::bind(transport, listen, EndpointConfig::new(id))
        .await
        .unwrap();
    endpoint.connect(victim).await.unwrap();
    let attempts = Arc::new(AtomicUsize::new(0));
    let counter = Arc::clone(&attempts);
    tokio::spawn(async move {
        let _endpoint = endpoint;
        while let Some(event) = events.next().await {
            let Event::Stream { mut stream, .. } = event else {
                continue;
            };
            let counter = Arc::clone(&counter);
            tokio::spawn(async move {
                let mut sink = Vec::new();
                let mut stream = match stream.recv::<Envelope>().await {
                    Ok(Some(Envelope {
                        message: Message::Put { .. },
                        ..
                    })) => {
                        let mut body = stream.recv_body().await.unwrap();
                        body.read_to_end(&mut sink).await.unwrap();
                        body.into_substream().unwrap()
                    }
                    // Streamed while the origin writes it: parts, then the trailer.
                    Ok(Some(Envelope {
                        message: Message::PutFollow { .. },
                        ..
                    })) => loop {
                        match stream.recv::<Envelope>().await.unwrap().unwrap().message {
                            Message::Part => {
                                let mut body = stream.recv_body().await.unwrap();
                                body.read_to_end(&mut sink).await.unwrap();
                                stream = body.into_substream().unwrap();
                            }
                            Message::PutEnd { .. } => break stream,
                            other => panic!("unexpected {other:?}"),
                        }
                    },
                    _ => return,
                };
                let attempt = counter.fetch_add(1, Ordering::SeqCst);
                if silent {
                    // Hold the exchange open without a word until the origin gives up.
                    let _ = stream.recv::<Envelope>().await;
                    return;
                }
                let reply = if attempt < refusals {
                    Message::Error {
                        message: format!("busy (attempt {})", attempt + 1),
                    }
                } else {
                    Message::Stored
                };
                stream.send(&Envelope::new(reply)).await.unwrap();
                let _ = stream.finish().await;
            });
        }
    });
    (id, attempts)
}

/// A reader that fails: the rogue's body source dies.
struct Failing;

impl AsyncRead for Failing {
    fn poll_read(
        self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        _buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Poll::Ready(Err(io::Error::new(
            io::ErrorKind::ConnectionReset,
            "peer died",
        )))
    }
}

/// A peer dying mid-transfer: alone it makes the get fail with nothing committed; beside a
/// good holder, the get falls back and returns the right bytes.
async fn peer_killed_mid_transfer<N: Net>(net: N) {
    let key = Key::generate().unwrap();
    let d = dirs(2);
    let holder = FileServer::start(
        config(&net, d[0].path(), &key, &[])
            .replication(Replication::None)
            .build(),
        net.transport(),
    )
    .await
    .unwrap();
    let getter = start(&net, d[1].path(), &key, &[holder.local_addr()]).await;
    mesh(&[&holder, &getter]).await;
    let data = pattern(9, 3 << 20);
    let receipt = holder.store_bytes("big.bin", &data).await.unwrap();
    assert!(receipt.replicas.is_empty());
    assert!(!getter.has("big.bin").await.unwrap());

    // Part 1: only the rogue claims "ghost.bin": the get fails, nothing is committed.
    let (rogue, served) = spawn_rogue(
        net.transport(),
        net.listen(),
        &getter.local_addr(),
        RogueBody::DiesHalfway(1 << 20),
    )
    .await;
    wait_until(&getter, "rogue connected", || {
        getter.peers().iter().any(|p| p.id == rogue)
    })
    .await;
    let err = getter.get_bytes("ghost.bin").await.unwrap_err();
    assert!(matches!(err, ServerError::FetchFailed { .. }), "{err}");
    assert_eq!(served.load(Ordering::SeqCst), 1);
    assert!(!getter.has("ghost.bin").await.unwrap());
    assert!(getter.list().await.unwrap().is_empty(), "no partial object");

    // Part 2: a new rogue and the real holder both offer: the right bytes either way.
    let (rogue, _served) = spawn_rogue(
        net.transport(),
        net.listen(),
        &getter.local_addr(),
        RogueBody::DiesHalfway(receipt.stored_size),
    )
    .await;
    wait_until(&getter, "second rogue connected", || {
        getter.peers().iter().any(|p| p.id == rogue)
    })
    .await;
    assert_eq!(getter.get_bytes("big.bin").await.unwrap(), data);
    for node in [holder, getter] {
        node.shutdown().await.unwrap();
    }
}

/// Peers whose stored copy was damaged on disk: their store refuses to serve it whole, the
/// fetch skips them, nothing partial is committed; a good copy elsewhere is found.
async fn corrupting_peer<N: Net>(net: N) {
    let key = Key::generate().unwrap();
    let d = dirs(4);
    let a = start(&net, d[0].path(), &key, &[]).await;
    let b = start(&net, d[1].path(), &key, &[a.local_addr()]).await;
    let c = start(&net, d[2].path(), &key, &[a.local_addr()]).await;
    mesh(&[&a, &b, &c]).await;
    let data = pattern(5, 1 << 20);
    a.store_bytes("doc.pdf", &data).await.unwrap();
    a.delete("doc.pdf", Scope::Local).await.unwrap();
    let b_file = object_files(d[1].path()).pop().unwrap();
    let c_file = object_files(d[2].path()).pop().unwrap();
    flip_middle_byte(&b_file);
    flip_middle_byte(&c_file);

    let late = start(&net, d[3].path(), &key, &[a.local_addr()]).await;
    mesh(&[&a, &b, &c, &late]).await;
    let err = late.get_bytes("doc.pdf").await.unwrap_err();
    assert!(
        matches!(err, ServerError::FetchFailed { attempts: 2, .. }),
        "{err}"
    );
    assert!(!late.has("doc.pdf").await.unwrap());
    assert!(late.list().await.unwrap().is_empty(), "no partial object");

    flip_middle_byte(&c_file); // c's copy is good again, b's is still damaged
    assert_eq!(late.get_bytes("doc.pdf").await.unwrap(), data);
    for node in [a, b, c, late] {
        node.shutdown().await.unwrap();
    }
}

/// A peer serving a tampered copy under a hash it computed itself passes the transfer
/// checks; the cipher's authentication still refuses it before anything is committed.
async fn lying_peer<N: Net>(net: N) {
    let key = Key::generate().unwrap();
    let d = dirs(2);
    // The genuine object as its holder stored it, with one ciphertext byte flipped.
    let data = pattern(11, 300 * 1024);
    let mut object = stored_object(&net, d[0].path(), &key, "memo.txt", &data).await;
    let mid = object.len() / 2;
    object[mid] ^= 0x01;

    let getter = start(&net, d[1].path(), &key, &[]).await;
    let (rogue, served) = spawn_rogue(
        net.transport(),
        net.listen(),
        &getter.local_addr(),
        RogueBody::Lies(Arc::new(object)),
    )
    .await;
    wait_until(&getter, "rogue connected", || {
        getter.peers().iter().any(|p| p.id == rogue)
    })
    .await;
    let err = getter.get_bytes("memo.txt").await.unwrap_err();
    assert!(matches!(err, ServerError::FetchFailed { .. }), "{err}");
    assert_eq!(served.load(Ordering::SeqCst), 1);
    assert!(!getter.has("memo.txt").await.unwrap());
    assert!(getter.list().await.unwrap().is_empty(), "nothing committed");
    getter.shutdown().await.unwrap();
}

/// The stored bytes of `name` on a node that stored it under `key` (the node is stopped).
async fn stored_object<N: Net>(net: &N, dir: &Path, key: &Key, name: &str, data: &[u8]) -> Vec<u8> {
    let holder = FileServer::start(
        config(net, dir, key, &[])
            .replication(Replication::None)
            .build(),
        net.transport(),
    )
    .await
    .unwrap();
    let receipt = holder.store_bytes(name, data).await.unwrap();
    holder.shutdown().await.unwrap();
    let store = dfs_store::Store::open(dir.join("store")).unwrap();
    let mut object = Vec::new();
    let mut reader = store.read(&receipt.object.to_hex()).unwrap();
    std::io::Read::read_to_end(&mut reader, &mut object).unwrap();
    object
}

/// A fetch that started before a local store of the same name must not commit its older
/// copy over the newer one: the store waits for the fetch, and the newer version stays.
async fn fetch_never_overwrites_a_newer_store<N: Net>(net: N) {
    let key = Key::generate().unwrap();
    let d = dirs(2);
    let old = stored_object(&net, d[0].path(), &key, "doc", b"version 1").await;
    let getter = FileServer::start(
        config(&net, d[1].path(), &key, &[])
            .replication(Replication::None)
            .build(),
        net.transport(),
    )
    .await
    .unwrap();
    let proceeded = Arc::new(tokio::sync::Notify::new());
    let release = Arc::new(tokio::sync::Notify::new());
    let (rogue, _) = spawn_rogue(
        net.transport(),
        net.listen(),
        &getter.local_addr(),
        RogueBody::Gated {
            bytes: Arc::new(old),
            proceeded: Arc::clone(&proceeded),
            release: Arc::clone(&release),
        },
    )
    .await;
    wait_until(&getter, "rogue connected", || {
        getter.peers().iter().any(|p| p.id == rogue)
    })
    .await;
    let fetching = {
        let getter = getter.clone();
        tokio::spawn(async move { getter.get_bytes("doc").await })
    };
    tokio::time::timeout(WAIT, proceeded.notified())
        .await
        .expect("the getter asked the rogue for the body");
    let storing = {
        let getter = getter.clone();
        tokio::spawn(async move { getter.store_bytes("doc", b"version 2").await })
    };
    release.notify_one();
    // The get returns one whole version: the fetched one, or the store's if that committed
    // (right after the fetch) before the get opened the local copy.
    let got = fetching.await.unwrap().unwrap();
    assert!(got == b"version 1" || got == b"version 2", "{got:?}");
    storing.await.unwrap().unwrap();
    assert_eq!(getter.get_bytes("doc").await.unwrap(), b"version 2");
    getter.shutdown().await.unwrap();
}

/// A local copy whose headers are damaged (the store's, or the cipher's under an intact
/// store hash) counts as missing for `get`: a good copy is fetched from a peer and replaces
/// it. With no peer to ask, `get` reports the damage, not "not found".
async fn damaged_local_copy_is_fetched_again<N: Net>(net: N) {
    let key = Key::generate().unwrap();
    let (d, a, b) = pair(&net, &key).await;
    let data = pattern(5, 100_000);
    let receipt = a.store_bytes("report.pdf", &data).await.unwrap();
    assert_eq!(receipt.replicas, vec![b.node_id()]);
    let id = receipt.object.to_hex();
    let store = dfs_store::Store::open(d[1].path().join("store")).unwrap();
    let path = store.path_of(&id).unwrap();
    let flip_first_byte = || {
        let mut bytes = std::fs::read(&path).unwrap();
        bytes[0] ^= 0xFF;
        std::fs::write(&path, &bytes).unwrap();
    };

    flip_first_byte();
    assert_eq!(b.get_bytes("report.pdf").await.unwrap(), data);

    // The cipher's magic (after the 24-byte object header), rewritten with a valid store hash.
    let mut object = Vec::new();
    std::io::Read::read_to_end(&mut store.read(&id).unwrap(), &mut object).unwrap();
    object[24] ^= 0xFF;
    store.write(&id, &object[..]).unwrap();
    assert_eq!(b.get_bytes("report.pdf").await.unwrap(), data);

    // The fetched copy replaced the damaged one: it reads even with the peer gone.
    a.shutdown().await.unwrap();
    assert_eq!(b.get_bytes("report.pdf").await.unwrap(), data);
    flip_first_byte();
    let err = b.get_bytes("report.pdf").await.unwrap_err();
    assert!(
        matches!(&err, ServerError::Store(e) if e.is_corrupt()),
        "the damage, not NotFound: {err}"
    );
    b.shutdown().await.unwrap();
}

/// A peer that fails a replica is retried when no other candidate is left; one that keeps
/// failing is named, with its reason, in `ReplicationIncomplete`, and the local copy stays.
async fn replication_retries_and_reports_failing_peers<N: Net>(net: N) {
    let key = Key::generate().unwrap();
    let d = dirs(1);
    let origin = start(&net, d[0].path(), &key, &[]).await;
    let (once, once_attempts) = spawn_flaky_replica(
        net.transport(),
        net.listen(),
        &origin.local_addr(),
        1,
        false,
    )
    .await;
    wait_until(&origin, "flaky replica connected", || {
        origin.peers().len() == 1
    })
    .await;
    let receipt = origin
        .store_bytes("retried", b"second time lucky")
        .await
        .unwrap();
    assert_eq!(receipt.replicas, vec![once]);
    assert_eq!(once_attempts.load(Ordering::SeqCst), 2);

    let (never, never_attempts) = spawn_flaky_replica(
        net.transport(),
        net.listen(),
        &origin.local_addr(),
        usize::MAX,
        false,
    )
    .await;
    wait_until(&origin, "refusing replica connected", || {
        origin.peers().len() == 2
    })
    .await;
    let err = origin.store_bytes("refused", b"abc").await.unwrap_err();
    match &err {
        ServerError::ReplicationIncomplete {
            wanted: 2,
            acked,
            failed,
            ..
        } => {
            assert_eq!(acked, &vec![once]);
            assert_eq!(failed.len(), 1, "{err}");
            assert_eq!(failed[0].0, never);
            assert!(failed[0].1.contains("busy (attempt 3)"), "{err}");
        }
        other => panic!("expected ReplicationIncomplete, got {other}"),
    }
    assert!(err.to_string().contains("busy (attempt 3)"), "{err}");
    assert_eq!(never_attempts.load(Ordering::SeqCst), 3);
    assert_eq!(origin.get_bytes("refused").await.unwrap(), b"abc");
    origin.shutdown().await.unwrap();

    // A peer that takes the body and never answers is named once the deadline passes.
    let d = dirs(1);
    let origin = FileServer::start(
        config(&net, d[0].path(), &key, &[])
            .replication_timeout(Duration::from_secs(1))
            .build(),
        net.transport(),
    )
    .await
    .unwrap();
    let (silent, _) =
        spawn_flaky_replica(net.transport(), net.listen(), &origin.local_addr(), 0, true).await;
    wait_until(&origin, "silent replica connected", || {
        origin.peers().len() == 1
    })
    .await;
    let err = origin.store_bytes("unanswered", b"xyz").await.unwrap_err();
    match &err {
        ServerError::ReplicationIncomplete { acked, failed, .. } => {
            assert!(acked.is_empty());
            assert_eq!(failed.len(), 1, "{err}");
            assert_eq!(failed[0].0, silent);
            assert!(failed[0].1.contains("no acknowledgement within"), "{err}");
        }
        other => panic!("expected ReplicationIncomplete, got {other}"),
    }
    origin.shutdown().await.unwrap();
}

/// Nodes with another (or no) network secret cannot connect.
async fn wrong_network_secret<N: Net>(net: N) {
    let key = Key::generate().unwrap();
    let secret = NetworkSecret::generate();
    let d = dirs(4);
    let with = |dir: &Path, secret: Option<NetworkSecret>, boot: &[String]| {
        config(&net, dir, &key, boot)
            .network_secret(secret)
            .bootstrap_attempts(1)
            .build()
    };
    let a = FileServer::start(
        with(d[0].path(), Some(secret.clone()), &[]),
        net.transport(),
    )
    .await
    .unwrap();
    let b = FileServer::start(
        with(d[1].path(), Some(secret.clone()), &[a.local_addr()]),
        net.transport(),
    )
    .await
    .unwrap();
    mesh(&[&a, &b]).await;
    for (dir, other) in [
        (d[2].path(), Some(NetworkSecret::generate())),
        (d[3].path(), None),
    ] {
        let x = FileServer::start(with(dir, other, &[]), net.transport())
            .await
            .unwrap();
        let err = x.connect(&a.local_addr()).await.unwrap_err();
        assert!(matches!(err, ServerError::Transport(_)), "{err}");
        assert!(x.peers().is_empty());
        assert!(!a.peers().iter().any(|p| p.id == x.node_id()));
        x.shutdown().await.unwrap();
    }
    let receipt = a
        .store_bytes("secret.txt", b"for members only")
        .await
        .unwrap();
    assert_eq!(receipt.replicas, vec![b.node_id()]);
    for node in [a, b] {
        node.shutdown().await.unwrap();
    }
}

/// A node with another data key stores and serves ciphertext under opaque ids, but cannot
/// read (or even address) the files.
async fn different_data_key<N: Net>(net: N) {
    let key = Key::generate().unwrap();
    let other_key = Key::generate().unwrap();
    let d = dirs(4);
    let a = start(&net, d[0].path(), &key, &[]).await;
    let b = start(&net, d[1].path(), &key, &[a.local_addr()]).await;
    let x = start(&net, d[2].path(), &other_key, &[a.local_addr()]).await;
    mesh(&[&a, &b, &x]).await;
    let data = b"top secret plaintext, repeated: top secret plaintext".repeat(100);
    let receipt = a.store_bytes("plans/secret.txt", &data).await.unwrap();
    assert_eq!(receipt.replicas.len(), 2);

    // x holds an opaque blob: no name, no plaintext on its disk.
    let listed = x.list().await.unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].name, None);
    assert_eq!(listed[0].id, receipt.object.to_hex());
    for file in files_under(d[2].path()) {
        let bytes = std::fs::read(&file).unwrap();
        assert!(
            !bytes.windows(10).any(|w| w == b"top secret"),
            "plaintext on x's disk"
        );
        assert!(
            !bytes.windows(6).any(|w| w == b"secret"),
            "name on x's disk"
        );
    }
    let err = x.get_bytes("plans/secret.txt").await.unwrap_err();
    assert!(matches!(err, ServerError::NotFound { .. }), "{err}");

    // Only x holds it now; a node with the right key reads it through x.
    a.delete("plans/secret.txt", Scope::Local).await.unwrap();
    b.delete("plans/secret.txt", Scope::Local).await.unwrap();
    let late = start(&net, d[3].path(), &key, &[x.local_addr()]).await;
    mesh(&[&a, &b, &x, &late]).await;
    let mut events = late.events();
    assert_eq!(late.get_bytes("plans/secret.txt").await.unwrap(), data);
    let x_id = x.node_id();
    wait_event(
        &mut events,
        "fetched from x",
        |e| matches!(e, ServerEvent::Fetched { from, .. } if *from == x_id),
    )
    .await;
    for node in [a, b, x, late] {
        node.shutdown().await.unwrap();
    }
}

/// `Scope::Everywhere`, `Replication::Count` and `Replication::None`, the event stream.
async fn delete_everywhere_and_replication_policies<N: Net>(net: N) {
    let key = Key::generate().unwrap();
    let d = dirs(4);
    let a = FileServer::start(
        config(&net, d[0].path(), &key, &[])
            .replication(Replication::Count(2))
            .build(),
        net.transport(),
    )
    .await
    .unwrap();
    let mut others = Vec::new();
    for dir in &d[1..] {
        others.push(start(&net, dir.path(), &key, &[a.local_addr()]).await);
    }
    let all: Vec<_> = std::iter::once(&a).chain(others.iter()).collect();
    mesh(&all).await;

    let mut events = a.events();
    let receipt = a.store_bytes("two-copies", b"abc").await.unwrap();
    assert_eq!(receipt.replicas.len(), 2);
    wait_event(
        &mut events,
        "stored event",
        |e| matches!(e, ServerEvent::FileStored { name, size: 3, .. } if name == "two-copies"),
    )
    .await;
    let mut holders = 0;
    for node in &others {
        if node.has("two-copies").await.unwrap() {
            holders += 1;
            assert!(receipt.replicas.contains(&node.node_id()));
        }
    }
    assert_eq!(holders, 2);

    let wanted = a.store_bytes("everywhere", b"xyz").await;
    assert!(wanted.is_ok());
    let report = a.delete("two-copies", Scope::Everywhere).await.unwrap();
    assert!(report.local);
    let mut held = report.peers.clone();
    held.sort_by_key(|id| id.to_hex());
    let mut want = receipt.replicas.clone();
    want.sort_by_key(|id| id.to_hex());
    assert_eq!(held, want, "the report names the peers that held a copy");
    a.delete("everywhere", Scope::Everywhere).await.unwrap();
    // Nobody holds it any more: with peers connected, the report says so.
    let again = a.delete("two-copies", Scope::Everywhere).await.unwrap();
    assert!(!again.found(), "{again:?}");
    for node in all.iter() {
        assert!(!node.has("two-copies").await.unwrap());
        assert!(!node.has("everywhere").await.unwrap());
    }
    let err = others[0].get_bytes("two-copies").await.unwrap_err();
    assert!(matches!(err, ServerError::NotFound { .. }), "{err}");

    // Too many replicas wanted: the local copy is kept, the error names who acked.
    let dir = tempfile::tempdir().unwrap();
    let greedy = FileServer::start(
        config(&net, dir.path(), &key, &[a.local_addr()])
            .replication(Replication::Count(10))
            .build(),
        net.transport(),
    )
    .await
    .unwrap();
    greedy.wait_for_peers(4, WAIT).await.unwrap();
    let err = greedy.store_bytes("greedy", b"1").await.unwrap_err();
    assert!(
        matches!(&err, ServerError::ReplicationIncomplete { wanted: 10, acked, .. } if acked.len() == 4),
        "{err}"
    );
    assert!(greedy.has("greedy").await.unwrap());

    let solo_dir = tempfile::tempdir().unwrap();
    let solo = FileServer::start(
        config(&net, solo_dir.path(), &key, &[a.local_addr()])
            .replication(Replication::None)
            .build(),
        net.transport(),
    )
    .await
    .unwrap();
    solo.wait_for_peers(5, WAIT).await.unwrap();
    let receipt = solo.store_bytes("mine", b"only here").await.unwrap();
    assert!(receipt.replicas.is_empty());
    assert!(!a.has("mine").await.unwrap());
    assert_eq!(a.get_bytes("mine").await.unwrap(), b"only here");

    for node in [greedy, solo, a].into_iter().chain(others) {
        node.shutdown().await.unwrap();
    }
}

/// `replicate` pushes a stored file to peers that joined after it was stored; it refuses a
/// missing file, and a damaged copy reaches no peer.
async fn replicate_to_late_joiners<N: Net>(net: N) {
    let key = Key::generate().unwrap();
    let d = dirs(3);
    let a = start(&net, d[0].path(), &key, &[]).await;
    let data = pattern(11, 300_000);
    let alone = a.store_bytes("early", &data).await.unwrap();
    assert!(alone.replicas.is_empty());
    let damaged = a
        .store_bytes("damaged", &pattern(12, 200_000))
        .await
        .unwrap();

    let b = start(&net, d[1].path(), &key, &[a.local_addr()]).await;
    let c = start(&net, d[2].path(), &key, &[a.local_addr()]).await;
    mesh(&[&a, &b, &c]).await;
    assert!(!b.has("early").await.unwrap());

    let receipt = a.replicate("early").await.unwrap();
    assert_eq!(
        (receipt.size, receipt.stored_size),
        (alone.size, alone.stored_size)
    );
    assert_eq!(receipt.object, alone.object);
    let mut replicas = receipt.replicas.clone();
    replicas.sort();
    let mut expected = vec![b.node_id(), c.node_id()];
    expected.sort();
    assert_eq!(replicas, expected);
    a.shutdown().await.unwrap();
    // Local hits now: A is gone.
    assert_eq!(b.get_bytes("early").await.unwrap(), data);
    assert_eq!(c.get_bytes("early").await.unwrap(), data);

    let err = b.replicate("never-stored").await.unwrap_err();
    assert!(matches!(err, ServerError::NotFound { .. }), "{err}");

    // A copy damaged mid-file is caught as it streams: no peer commits it.
    let store = dfs_store::Store::open(d[0].path().join("store")).unwrap();
    flip_middle_byte(&store.path_of(&damaged.object.to_hex()).unwrap());
    let a = start(&net, d[0].path(), &key, &[b.local_addr()]).await;
    mesh(&[&a, &b, &c]).await;
    let err = a.replicate("damaged").await.unwrap_err();
    assert!(
        matches!(&err, ServerError::ReplicationIncomplete { acked, failed, .. }
            if acked.is_empty() && failed.len() == 2),
        "{err}"
    );
    assert!(!b.has("damaged").await.unwrap());
    assert!(!c.has("damaged").await.unwrap());

    for node in [a, b, c] {
        node.shutdown().await.unwrap();
    }
}

/// A source that yields `first`, then waits for the test: `true` ends it, `false` fails it.
struct Gated {
    first: Vec<u8>,
    at: usize,
    gate: tokio::sync::oneshot::Receiver<bool>,
}

impl Gated {
    fn new(first: Vec<u8>) -> (Self, tokio::sync::oneshot::Sender<bool>) {
        let (open, gate) = tokio::sync::oneshot::channel();
        (Gated { first, at: 0, gate }, open)
    }
}

impl AsyncRead for Gated {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if this.at < this.first.len() {
            let n = buf.remaining().min(this.first.len() - this.at);
            buf.put_slice(&this.first[this.at..this.at + n]);
            this.at += n;
            return Poll::Ready(Ok(()));
        }
        match Pin::new(&mut this.gate).poll(cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(Ok(true)) => Poll::Ready(Ok(())),
            Poll::Ready(_) => Poll::Ready(Err(io::Error::other("source failed"))),
        }
    }
}

/// What the watching replica saw of one `PutFollow`.
#[derive(Debug)]
enum Seen {
    Part(u64),
    /// A keep-alive.
    Waiting,
    /// The trailer arrived and matched the bytes (`true`) or not.
    End(bool),
    /// The exchange ended without a trailer.
    Cut,
}

/// A replica that reports every part of a followed put as it arrives, checks the trailer
/// against the bytes, and acknowledges.
async fn spawn_watching_replica<T: Transport>(
    transport: T,
    listen: &str,
    origin: &str,
) -> (NodeId, tokio::sync::mpsc::UnboundedReceiver<Seen>) {
    let id = NodeId::random();
    let (endpoint, mut events) = Endpoint::bind(transport, listen, EndpointConfig::new(id))
        .await
        .unwrap();
    endpoint.connect(origin).await.unwrap();
    let (seen, watch) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        let _endpoint = endpoint;
        while let Some(event) = events.next().await {
            let Event::Stream { mut stream, .. } = event else {
                continue;
            };
            let seen = seen.clone();
            tokio::spawn(async move {
                let Ok(Some(Envelope {
                    message: Message::PutFollow { .. },
                    ..
                })) = stream.recv::<Envelope>().await
                else {
                    return;
                };
                let mut hasher = blake3::Hasher::new();
                let mut len = 0u64;
                loop {
                    match stream.recv::<Envelope>().await {
                        Ok(Some(Envelope {
                            message: Message::Part,
                            ..
                        })) => {
                            let mut body = stream.recv_body().await.unwrap();
                            let mut part = Vec::new();
                            if body.read_to_end(&mut part).await.is_err() {
                                let _ = seen.send(Seen::Cut);
                                return;
                            }
                            hasher.update(&part);
                            len += part.len() as u64;
                            let _ = seen.send(Seen::Part(part.len() as u64));
                            stream = body.into_substream().unwrap();
                        }
                        Ok(Some(Envelope {
                            message: Message::Waiting,
                            ..
                        })) => {
                            let _ = seen.send(Seen::Waiting);
                        }
                        Ok(Some(Envelope {
                            message: Message::PutEnd { size, hash },
                            ..
                        })) => {
                            let good = size == len && hash == *hasher.finalize().as_bytes();
                            let _ = seen.send(Seen::End(good));
                            let reply = Envelope::new(Message::Stored);
                            stream.send(&reply).await.unwrap();
                            let _ = stream.finish().await;
                            return;
                        }
                        _ => {
                            let _ = seen.send(Seen::Cut);
                            return;
                        }
                    }
                }
            });
        }
    });
    (id, watch)
}

async fn next_seen(watch: &mut tokio::sync::mpsc::UnboundedReceiver<Seen>) -> Seen {
    tokio::time::timeout(WAIT, watch.recv())
        .await
        .expect("the replica saw nothing in time")
        .expect("replica gone")
}

/// `store` streams each replica from the local file while the local write runs: the
/// replica has several parts before the source has even ended; the trailer carries the
/// committed size and hash. A source failing mid-way leaves the replica without a trailer.
async fn replicas_follow_the_local_write<N: Net>(net: N) {
    let key = Key::generate().unwrap();
    let d = dirs(1);
    let origin = start(&net, d[0].path(), &key, &[]).await;
    let (replica, mut watch) =
        spawn_watching_replica(net.transport(), net.listen(), &origin.local_addr()).await;
    wait_until(&origin, "replica connected", || origin.peers().len() == 1).await;

    for fail in [false, true] {
        let (source, gate) = Gated::new(pattern(21 + u64::from(fail), 10 << 20));
        let storing = {
            let origin = origin.clone();
            tokio::spawn(async move { origin.store("followed", source).await })
        };
        // 8 MiB of parts arrive while the source still holds back its end.
        let mut early = 0;
        while early < 8 << 20 {
            match next_seen(&mut watch).await {
                Seen::Part(n) => early += n,
                Seen::Waiting => {}
                other => panic!("{other:?} before the source ended"),
            }
        }
        assert!(!storing.is_finished());
        gate.send(!fail).unwrap();
        let outcome = loop {
            match next_seen(&mut watch).await {
                Seen::Part(_) | Seen::Waiting => {}
                other => break other,
            }
        };
        let stored = storing.await.unwrap();
        if fail {
            assert!(matches!(outcome, Seen::Cut), "{outcome:?}");
            assert!(
                matches!(stored, Err(ServerError::Source { .. })),
                "{stored:?}"
            );
            // The version stored before is untouched.
            let kept = origin.get_bytes("followed").await.unwrap();
            assert!(kept == pattern(21, 10 << 20));
        } else {
            assert!(matches!(outcome, Seen::End(true)), "{outcome:?}");
            assert_eq!(stored.unwrap().replicas, vec![replica]);
        }
    }
    origin.shutdown().await.unwrap();
}

/// A local write that fails after replicas started following it commits nothing on them,
/// and a later store of the name replicates whole.
async fn failed_local_write_commits_no_replica<N: Net>(net: N) {
    let key = Key::generate().unwrap();
    let (d, a, b) = pair(&net, &key).await;
    let (source, gate) = Gated::new(pattern(22, 9 << 20));
    let storing = {
        let a = a.clone();
        tokio::spawn(async move { a.store("broken", source).await })
    };
    // B has staged parts of it when the source fails.
    let staging = d[1].path().join("store").join("tmp");
    poll_until("B staging parts", || staged_bytes(&staging) >= 4 << 20).await;
    gate.send(false).unwrap();
    let err = storing.await.unwrap().unwrap_err();
    assert!(matches!(err, ServerError::Source { .. }), "{err}");
    assert!(!a.has("broken").await.unwrap());
    assert!(!b.has("broken").await.unwrap());
    poll_until("B dropping its staging file", || {
        files_under(&staging).is_empty()
    })
    .await;
    assert!(!b.has("broken").await.unwrap());

    let data = pattern(23, 5 << 20);
    let receipt = a.store_bytes("broken", &data).await.unwrap();
    assert_eq!(receipt.replicas, vec![b.node_id()]);
    a.shutdown().await.unwrap();
    assert_eq!(b.get_bytes("broken").await.unwrap(), data);
    b.shutdown().await.unwrap();
}

/// Bytes in the staging files under `dir`.
fn staged_bytes(dir: &Path) -> u64 {
    files_under(dir)
        .iter()
        .filter_map(|f| std::fs::metadata(f).ok())
        .map(|m| m.len())
        .sum()
}

/// Polls `cond` (a file-system condition no event announces), yielding in between, until
/// it holds or the deadline passes.
async fn poll_until(what: &str, cond: impl Fn() -> bool) {
    let deadline = tokio::time::Instant::now() + WAIT;
    while !cond() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::task::yield_now().await;
    }
}

/// A source yielding `first`, then (when `trickle` is set) 16 KiB on each tick of an
/// interval, until the test ends it (`true`) or fails it: the shape of a slow client.
struct Paced {
    gated: Gated,
    trickle: Option<tokio::time::Interval>,
}

impl AsyncRead for Paced {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        let filled = buf.filled().len();
        match Pin::new(&mut this.gated).poll_read(cx, buf) {
            Poll::Pending => {}
            ready => return ready,
        }
        debug_assert_eq!(buf.filled().len(), filled);
        let ticked = match &mut this.trickle {
            Some(tick) => tick.poll_tick(cx).is_ready(),
            None => false,
        };
        if !ticked {
            return Poll::Pending;
        }
        let n = buf.remaining().min(16 << 10);
        buf.put_slice(&vec![0x5A; n]);
        Poll::Ready(Ok(()))
    }
}

/// A source silent (or trickling too slowly to fill a part) for longer than the peers'
/// replication timeout: the origin's keep-alives keep the followed replicas going (the
/// peer's staging file survives the whole pause) and the store completes on every peer.
async fn slow_source_keeps_followed_replicas_alive<N: Net>(net: N) {
    let key = Key::generate().unwrap();
    for trickle in [false, true] {
        let d = dirs(2);
        let short = Duration::from_secs(2);
        let node = |dir: &Path, boot: &[String]| {
            FileServer::start(
                config(&net, dir, &key, boot)
                    .replication_timeout(short)
                    .build(),
                net.transport(),
            )
        };
        let a = node(d[0].path(), &[]).await.unwrap();
        let b = node(d[1].path(), &[a.local_addr()]).await.unwrap();
        let (watcher, mut watch) =
            spawn_watching_replica(net.transport(), net.listen(), &a.local_addr()).await;
        wait_until(&a, "both replicas connected", || a.peers().len() == 2).await;

        let (gated, gate) = Gated::new(pattern(24, 1 << 20));
        let trickle = trickle.then(|| tokio::time::interval(Duration::from_millis(100)));
        let source = Paced { gated, trickle };
        let storing = {
            let a = a.clone();
            tokio::spawn(async move { a.store("slow", source).await })
        };
        // B's staging file once parts arrived; it must outlive B's 2 s wait.
        let staging = d[1].path().join("store").join("tmp");
        poll_until("B staging parts", || staged_bytes(&staging) > 0).await;
        let staged = files_under(&staging);
        // Messages for well over B's 2 s wait (at least one each 0.5 s).
        let mut heard = 0;
        while heard < 8 {
            match next_seen(&mut watch).await {
                Seen::Part(_) | Seen::Waiting => heard += 1,
                other => panic!("{other:?} before the source ended"),
            }
        }
        assert!(!storing.is_finished());
        assert_eq!(files_under(&staging), staged, "B gave up and started over");
        gate.send(true).unwrap();
        let mut replicas = storing.await.unwrap().unwrap().replicas;
        replicas.sort();
        let mut expected = vec![b.node_id(), watcher];
        expected.sort();
        assert_eq!(replicas, expected);
        let original = a.get_bytes("slow").await.unwrap();
        a.shutdown().await.unwrap();
        assert!(b.get_bytes("slow").await.unwrap() == original);
        b.shutdown().await.unwrap();
    }
}

/// How a test origin ends a followed put.
enum Ending {
    Trailer([u8; 32]),
    /// Drops the exchange.
    Cut,
    /// Says nothing more.
    Silent,
}

/// One node configured by `configure`, and a bare endpoint connected to it that speaks
/// the wire protocol by hand (the endpoint and its events are returned to keep them open).
async fn node_and_raw_peer<N: Net>(
    net: &N,
    configure: impl FnOnce(dfs_server::ConfigBuilder) -> dfs_server::ConfigBuilder,
) -> (
    Vec<TempDir>,
    FileServer<N::T>,
    (Endpoint<N::T>, dfs_transport::Events),
    dfs_transport::Peer,
) {
    let key = Key::generate().unwrap();
    let d = dirs(1);
    let node = FileServer::start(
        configure(config(net, d[0].path(), &key, &[])).build(),
        net.transport(),
    )
    .await
    .unwrap();
    let (raw, peer) = raw_peer(net, &node).await;
    (d, node, raw, peer)
}

/// A bare endpoint (no file server behind it) connected to `node`, for tests that speak
/// the wire protocol themselves.
async fn raw_peer<N: Net>(
    net: &N,
    node: &FileServer<N::T>,
) -> ((Endpoint<N::T>, dfs_transport::Events), dfs_transport::Peer) {
    let (endpoint, events) = Endpoint::bind(
        net.transport(),
        net.listen(),
        EndpointConfig::new(NodeId::random()),
    )
    .await
    .unwrap();
    let peer = endpoint.connect(&node.local_addr()).await.unwrap();
    ((endpoint, events), peer)
}

/// A node receiving a followed put commits it only with a matching trailer: a wrong hash
/// is refused (and said so to the origin), a stream cut before its trailer leaves nothing,
/// an origin silent for longer than the replication timeout is told so, and shutdown is not
/// held up by an origin that keeps saying `Waiting`.
async fn followed_puts_are_checked_against_their_trailer<N: Net>(net: N) {
    let (d, b, _raw, peer) =
        node_and_raw_peer(&net, |c| c.replication_timeout(Duration::from_secs(1))).await;
    let data = pattern(25, 3 << 20);
    let right = *blake3::hash(&data).as_bytes();
    let send = |ending: Ending, id: u8| {
        let (peer, data) = (peer.clone(), data.clone());
        async move {
            let mut s = peer.open_stream().await.unwrap();
            let id = dfs_server::ObjectId([id; 32]);
            let keepalive_ms = 100;
            s.send(&Envelope::new(Message::PutFollow { id, keepalive_ms }))
                .await
                .unwrap();
            for chunk in data.chunks(1 << 20) {
                s.send(&Envelope::new(Message::Part)).await.unwrap();
                s.send_body(chunk.len() as u64, chunk).await.unwrap();
                s.send(&Envelope::new(Message::Waiting)).await.unwrap();
            }
            match ending {
                Ending::Trailer(hash) => {
                    let size = data.len() as u64;
                    s.send(&Envelope::new(Message::PutEnd { size, hash }))
                        .await
                        .unwrap();
                }
                Ending::Cut => return None,
                Ending::Silent => {}
            }
            Some(s.recv::<Envelope>().await.unwrap().unwrap().message)
        }
    };
    let wrong = send(Ending::Trailer([9; 32]), 1).await;
    assert!(
        matches!(&wrong, Some(Message::Error { message }) if message.contains("BLAKE3")),
        "{wrong:?}"
    );
    assert!(send(Ending::Cut, 2).await.is_none());
    let staging = d[0].path().join("store").join("tmp");
    poll_until("the cut stream's staging file removed", || {
        files_under(&staging).is_empty()
    })
    .await;
    let silent = send(Ending::Silent, 3).await;
    assert!(
        matches!(&silent, Some(Message::Error { message }) if message.contains("nothing from the origin")),
        "{silent:?}"
    );
    assert!(b.list().await.unwrap().is_empty(), "nothing committed");

    let stored = send(Ending::Trailer(right), 4).await;
    assert!(matches!(stored, Some(Message::Stored)), "{stored:?}");
    let listed = b.list().await.unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].id, dfs_server::ObjectId([4; 32]).to_hex());

    // An origin that only ever says `Waiting` does not hold up shutdown.
    let mut s = peer.open_stream().await.unwrap();
    let id = dfs_server::ObjectId([5; 32]);
    s.send(&Envelope::new(Message::PutFollow {
        id,
        keepalive_ms: 100,
    }))
    .await
    .unwrap();
    s.send(&Envelope::new(Message::Waiting)).await.unwrap();
    let chatter = tokio::spawn(async move {
        let mut every = tokio::time::interval(Duration::from_millis(100));
        loop {
            every.tick().await;
            if s.send(&Envelope::new(Message::Waiting)).await.is_err() {
                return;
            }
        }
    });
    b.shutdown().await.unwrap();
    chatter.abort();
}

/// A node serves at most `max_incoming_transfers` peer transfers at once: while its one
/// slot is held by a followed put whose origin holds back the trailer, a get is still
/// answered `Found` (an offer holds no slot), but its `Proceed` waits and is answered
/// "busy" after the request timeout; once the put ends, the next request is served.
async fn incoming_transfers_are_bounded<N: Net>(net: N) {
    let (d, b, _raw, peer) = node_and_raw_peer(&net, |c| {
        c.max_incoming_transfers(1)
            .replication(Replication::None)
            .request_timeout(Duration::from_millis(500))
    })
    .await;
    b.store_bytes("held", b"a file b holds").await.unwrap();
    let held = b.object_id("held");
    let data = pattern(26, 1 << 20);
    let (size, hash) = (data.len() as u64, *blake3::hash(&data).as_bytes());

    let mut first = peer.open_stream().await.unwrap();
    let id = dfs_server::ObjectId([1; 32]);
    first
        .send(&Envelope::new(Message::PutFollow {
            id,
            keepalive_ms: 100,
        }))
        .await
        .unwrap();
    first.send(&Envelope::new(Message::Part)).await.unwrap();
    first.send_body(size, &data[..]).await.unwrap();
    let staging = d[0].path().join("store").join("tmp");
    poll_until("the first put staged", || !files_under(&staging).is_empty()).await;

    let get = |id: dfs_server::ObjectId| {
        let peer = peer.clone();
        async move {
            let mut s = peer.open_stream().await.unwrap();
            s.send(&Envelope::new(Message::Get { id })).await.unwrap();
            let reply = s.recv::<Envelope>().await.unwrap().unwrap().message;
            (s, reply)
        }
    };
    let (mut s, offer) = get(held).await;
    assert!(matches!(offer, Message::Found { .. }), "{offer:?}");
    s.send(&Envelope::new(Message::Proceed)).await.unwrap();
    let busy = s.recv::<Envelope>().await.unwrap().unwrap().message;
    assert!(
        matches!(&busy, Message::Error { message } if message.contains("busy")),
        "{busy:?}"
    );

    first
        .send(&Envelope::new(Message::PutEnd { size, hash }))
        .await
        .unwrap();
    let stored = first.recv::<Envelope>().await.unwrap().unwrap().message;
    assert!(matches!(stored, Message::Stored), "{stored:?}");
    let (_, found) = get(id).await;
    assert!(
        matches!(found, Message::Found { size: got, .. } if got == size),
        "{found:?}"
    );
    b.shutdown().await.unwrap();
}

/// A node with one transfer slot, no replication and a short request timeout, and a bare
/// peer connected to it (see [`node_and_raw_peer`]).
async fn one_slot_holder<N: Net>(
    net: &N,
) -> (
    Vec<TempDir>,
    FileServer<N::T>,
    (Endpoint<N::T>, dfs_transport::Events),
    dfs_transport::Peer,
) {
    node_and_raw_peer(net, |c| {
        c.max_incoming_transfers(1)
            .replication(Replication::None)
            .request_timeout(Duration::from_millis(500))
    })
    .await
}

/// Sends `Get{id}` on a fresh substream to `peer`; returns the substream and the reply.
async fn ask_get(peer: &dfs_transport::Peer, id: dfs_server::ObjectId) -> (Substream, Message) {
    let mut s = peer.open_stream().await.unwrap();
    s.send(&Envelope::new(Message::Get { id })).await.unwrap();
    let reply = s.recv::<Envelope>().await.unwrap().unwrap().message;
    (s, reply)
}

/// A fetching node asks every holder at once and keeps the offers it does not take yet:
/// an offer (`Found`) holds no transfer slot and no open object, so with one slot, an
/// offer never taken does not keep a second requester from being served, and a
/// requester's `Proceed` is served only while the object is still the one offered (else
/// `Error`, and the requester takes another offer).
async fn queued_offers_hold_no_transfer_slot<N: Net>(net: N) {
    let (_d, b, _raw, peer) = one_slot_holder(&net).await;
    let data = pattern(27, (1 << 20) + 5);
    let receipt = b.store_bytes("offered", &data).await.unwrap();
    let id = receipt.object;
    let offer = || async {
        match ask_get(&peer, id).await {
            (s, Message::Found { size, hash }) => (s, size, hash),
            (_, other) => panic!("expected an offer, got {other:?}"),
        }
    };
    // An offer never taken (a fetch downloading from another holder meanwhile): it holds
    // no transfer slot, so the node's only one serves the next offer.
    let mut queued = vec![offer().await];
    let (mut s, size, hash) = offer().await;
    assert_eq!(size, receipt.stored_size);
    s.send(&Envelope::new(Message::Proceed)).await.unwrap();
    let body = s.recv_body().await.unwrap();
    let (got, got_hash) = hash_stream(body).await;
    assert_eq!((got, *got_hash.as_bytes()), (size, hash));

    // Stored again after the offer: the offered copy is gone, so is the offer.
    let (mut stale, _, _) = queued.pop().unwrap();
    b.store_bytes("offered", b"another version").await.unwrap();
    stale.send(&Envelope::new(Message::Proceed)).await.unwrap();
    let changed = stale.recv::<Envelope>().await.unwrap().unwrap().message;
    assert!(
        matches!(&changed, Message::Error { message } if message.contains("changed")),
        "{changed:?}"
    );
    drop(queued);
    b.shutdown().await.unwrap();
}

/// The `Get` offers a node keeps open for their requester's `Proceed` are bounded: with one
/// transfer slot, a peer holding its share of parked offers (2) is answered "busy" for a
/// third, while another peer's `Get` is still offered the copy.
async fn parked_offers_are_bounded<N: Net>(net: N) {
    let (_d, b, _raw, peer) = one_slot_holder(&net).await;
    let receipt = b.store_bytes("offered", &pattern(28, 4096)).await.unwrap();
    let id = receipt.object;
    let mut parked = Vec::new();
    for _ in 0..2 {
        let (s, reply) = ask_get(&peer, id).await;
        assert!(matches!(reply, Message::Found { .. }), "{reply:?}");
        parked.push(s);
    }
    let (_s, third) = ask_get(&peer, id).await;
    assert!(
        matches!(&third, Message::Error { message } if message.contains("busy") && message.contains("offers")),
        "{third:?}"
    );
    let (other, _other_events) = Endpoint::bind(
        net.transport(),
        net.listen(),
        EndpointConfig::new(NodeId::random()),
    )
    .await
    .unwrap();
    let other_peer = other.connect(&b.local_addr()).await.unwrap();
    let (_s, offered) = ask_get(&other_peer, id).await;
    assert!(matches!(offered, Message::Found { .. }), "{offered:?}");
    drop(parked);
    b.shutdown().await.unwrap();
}

/// A holder that answers `Error` instead of the body after `Proceed` (busy, or its copy
/// changed since its offer) is heard: the failed fetch reports the holder's reason.
async fn a_holder_refusing_after_proceed_is_heard<N: Net>(net: N) {
    let key = Key::generate().unwrap();
    let d = dirs(1);
    let a = start(&net, d[0].path(), &key, &[]).await;
    let (holder, mut events) = Endpoint::bind(
        net.transport(),
        net.listen(),
        EndpointConfig::new(NodeId::random()),
    )
    .await
    .unwrap();
    holder.connect(&a.local_addr()).await.unwrap();
    a.wait_for_peers(1, WAIT).await.unwrap();
    let serve = tokio::spawn(async move {
        while let Some(event) = events.next().await {
            let Event::Stream { mut stream, .. } = event else {
                continue;
            };
            let asked = stream.recv::<Envelope>().await.unwrap().unwrap();
            assert!(matches!(asked.message, Message::Get { .. }), "{asked:?}");
            let found = Message::Found {
                size: 10,
                hash: [0; 32],
            };
            stream.send(&Envelope::new(found)).await.unwrap();
            let proceed = stream.recv::<Envelope>().await.unwrap().unwrap();
            assert!(matches!(proceed.message, Message::Proceed), "{proceed:?}");
            let message = "busy: serving 1 transfers already (try again later)".to_owned();
            stream
                .send(&Envelope::new(Message::Error { message }))
                .await
                .unwrap();
            let _ = stream.finish().await;
            return;
        }
    });
    let err = a.get_bytes("wanted").await.unwrap_err();
    assert!(err.to_string().contains("serving 1 transfers"), "{err}");
    serve.await.unwrap();
    a.shutdown().await.unwrap();
}

/// `Duration::MAX` as a timeout means "no timeout": a store and a `replicate` with a
/// replica, and a wait for peers, with every configured timeout that long.
async fn unbounded_timeouts<N: Net>(net: N) {
    let key = Key::generate().unwrap();
    let d = dirs(2);
    let node = |dir: &Path, boot: &[String]| {
        FileServer::start(
            config(&net, dir, &key, boot)
                .replication_timeout(Duration::MAX)
                .request_timeout(Duration::MAX)
                .build(),
            net.transport(),
        )
    };
    let a = node(d[0].path(), &[]).await.unwrap();
    let b = node(d[1].path(), &[a.local_addr()]).await.unwrap();
    a.wait_for_peers(1, Duration::MAX).await.unwrap();
    b.wait_for_peers(1, Duration::MAX).await.unwrap();
    let data = pattern(28, 100_000);
    let receipt = a.store_bytes("forever", &data).await.unwrap();
    assert_eq!(receipt.replicas, [b.node_id()]);
    let again = a.replicate("forever").await.unwrap();
    assert_eq!(again.replicas, [b.node_id()]);
    a.shutdown().await.unwrap();
    assert!(b.get_bytes("forever").await.unwrap() == data);
    b.shutdown().await.unwrap();
}

/// A store whose name cannot be recorded fails before anything is committed: the old copy
/// stays, here and on the replica (which never gets the trailer), and `list` and `get`
/// still work; once the name can be written again, the store goes through everywhere.
async fn failed_name_write_keeps_the_old_copy<N: Net>(net: N) {
    let key = Key::generate().unwrap();
    let (d, a, b) = pair(&net, &key).await;
    let receipt = a.store_bytes("x", b"old").await.unwrap();
    assert_eq!(receipt.replicas, [b.node_id()]);
    let name_file = d[0].path().join("names").join(a.object_id("x").to_hex());
    std::fs::remove_file(&name_file).unwrap();
    std::fs::create_dir(&name_file).unwrap(); // the name file cannot be replaced now
    let failed = a.store_bytes("x", b"new").await;
    assert!(failed.is_err(), "{failed:?}");
    assert_eq!(a.get_bytes("x").await.unwrap(), b"old");
    assert_eq!(b.get_bytes("x").await.unwrap(), b"old");
    let listed = a.list().await.unwrap();
    assert_eq!(listed.len(), 1, "{listed:?}");

    std::fs::remove_dir(&name_file).unwrap();
    let receipt = a.store_bytes("x", b"new").await.unwrap();
    assert_eq!(receipt.replicas, [b.node_id()]);
    assert_eq!(a.get_bytes("x").await.unwrap(), b"new");
    assert_eq!(b.get_bytes("x").await.unwrap(), b"new");
    let listed = a.list().await.unwrap();
    assert_eq!(listed[0].name.as_deref(), Some("x"));
    a.shutdown().await.unwrap();
    b.shutdown().await.unwrap();
}

/// One peer holds at most half of `max_incoming_transfers` at once: with 4 slots, a peer
/// keeping 2 followed puts going is told "busy" for a third, while another peer's `Put`
/// is still served; once one of its puts ends, the first peer gets a slot again.
async fn one_peer_gets_half_the_transfer_slots<N: Net>(net: N) {
    let (d, b, _raw, greedy) = node_and_raw_peer(&net, |c| {
        c.max_incoming_transfers(4)
            .request_timeout(Duration::from_millis(500))
            .replication_timeout(Duration::from_secs(1))
    })
    .await;
    let data = pattern(29, 100_000);
    let (size, hash) = (data.len() as u64, *blake3::hash(&data).as_bytes());
    let staging = d[0].path().join("store").join("tmp");
    // A followed put that has sent a part, its origin announcing a long keep-alive.
    let follow = |id: u8, keepalive_ms: u32| {
        let (peer, data) = (greedy.clone(), data.clone());
        async move {
            let mut s = peer.open_stream().await.unwrap();
            let id = dfs_server::ObjectId([id; 32]);
            s.send(&Envelope::new(Message::PutFollow { id, keepalive_ms }))
                .await
                .unwrap();
            s.send(&Envelope::new(Message::Part)).await.unwrap();
            s.send_body(data.len() as u64, &data[..]).await.unwrap();
            s
        }
    };
    let mut held = vec![follow(1, 60_000).await, follow(2, 60_000).await];
    poll_until("two followed puts staged", || {
        files_under(&staging).len() == 2
    })
    .await;
    // (Without the share it would get a slot, then be dropped for silence after 1 s.)
    let mut third = follow(3, 100).await;
    let busy = third.recv::<Envelope>().await.unwrap().unwrap().message;
    assert!(
        matches!(&busy, Message::Error { message } if message.contains("busy")),
        "{busy:?}"
    );

    let (other, _events) = Endpoint::bind(
        net.transport(),
        net.listen(),
        EndpointConfig::new(NodeId::random()),
    )
    .await
    .unwrap();
    let put = |peer: dfs_transport::Peer, id: u8| {
        let data = data.clone();
        async move {
            let mut s = peer.open_stream().await.unwrap();
            let id = dfs_server::ObjectId([id; 32]);
            s.send(&Envelope::new(Message::Put { id, size, hash }))
                .await
                .unwrap();
            s.send_body(size, &data[..]).await.unwrap();
            s.recv::<Envelope>().await.unwrap().unwrap().message
        }
    };
    let honest = other.connect(&b.local_addr()).await.unwrap();
    let stored = put(honest, 4).await;
    assert!(matches!(stored, Message::Stored), "{stored:?}");

    let mut done = held.pop().unwrap();
    done.send(&Envelope::new(Message::PutEnd { size, hash }))
        .await
        .unwrap();
    let stored = done.recv::<Envelope>().await.unwrap().unwrap().message;
    assert!(matches!(stored, Message::Stored), "{stored:?}");
    let stored = put(greedy.clone(), 5).await;
    assert!(matches!(stored, Message::Stored), "{stored:?}");
    drop(held);
    b.shutdown().await.unwrap();
}

/// Stores a big generated file on A (replicated to B as it is written... after it is
/// written), and a third node C fetches and decrypts it, streaming all the way.
async fn big_file_across_nodes<N: Net>(net: N) {
    big_file(net, 256 << 20).await;
}

async fn big_file<N: Net>(net: N, len: u64) {
    let key = Key::generate().unwrap();
    let d = dirs(3);
    let a = start(&net, d[0].path(), &key, &[]).await;
    let b = start(&net, d[1].path(), &key, &[a.local_addr()]).await;
    mesh(&[&a, &b]).await;
    let receipt = a.store("big.iso", Generated::new(len)).await.unwrap();
    assert_eq!(receipt.size, len);
    assert_eq!(receipt.replicas, vec![b.node_id()]);
    let expected = hash_stream(Generated::new(len)).await;

    let c = start(&net, d[2].path(), &key, &[a.local_addr()]).await;
    mesh(&[&a, &b, &c]).await;
    let reader = c.get("big.iso").await.unwrap();
    assert_eq!(reader.len(), len);
    assert_eq!(hash_stream(reader).await, expected);
    for node in [a, b, c] {
        node.shutdown().await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "4 GiB on disk three times; run by hand"]
async fn four_gib_across_nodes_tcp() {
    big_file(Tcp, 4 << 30).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_refuses_new_work() {
    let key = Key::generate().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let net = Mem(MemoryTransport::new());
    let a = start(&net, dir.path(), &key, &[]).await;
    let handle = a.clone();
    a.shutdown().await.unwrap();
    let err = handle.store_bytes("late", b"x").await.unwrap_err();
    assert!(matches!(err, ServerError::ShuttingDown), "{err}");
    // The node id and data key persist in the root.
    let again = FileServer::start(
        Config::builder(dir.path()).listen_addr("mem:0").build(),
        net.transport(),
    )
    .await
    .unwrap();
    assert_eq!(again.node_id(), handle.node_id());
    again.shutdown().await.unwrap();
}

/// `shutdown` lets an in-flight store (here: mid-replication) finish; a failing source
/// stores nothing.
async fn shutdown_drains_in_flight_store<N: Net>(net: N) {
    let key = Key::generate().unwrap();
    let (_dirs, a, b) = pair(&net, &key).await;

    let err = a
        .store("broken", (&b"half a file"[..]).chain(Failing))
        .await
        .unwrap_err();
    assert!(matches!(err, ServerError::Source { .. }), "{err}");
    assert!(!a.has("broken").await.unwrap());
    assert!(a.list().await.unwrap().is_empty());

    let mut events = a.events();
    let storing = {
        let a = a.clone();
        tokio::spawn(async move { a.store("in-flight", Generated::new(32 << 20)).await })
    };
    // The local copy is written; replication to b is under way when shutdown starts.
    wait_event(&mut events, "local write done", |e| {
        matches!(e, ServerEvent::FileStored { .. })
    })
    .await;
    a.clone().shutdown().await.unwrap();
    let receipt = storing.await.unwrap().unwrap();
    assert_eq!(receipt.replicas, vec![b.node_id()]);
    assert!(b.has("in-flight").await.unwrap());
    let err = a.get_bytes("in-flight").await.unwrap_err();
    assert!(matches!(err, ServerError::ShuttingDown), "{err}");
    b.shutdown().await.unwrap();
}

/// A damaged or foreign file in the store does not hide the good objects from `list`.
#[tokio::test]
async fn list_skips_damaged_objects() {
    let net = Mem(MemoryTransport::new());
    let key = Key::generate().unwrap();
    let d = dirs(1);
    let node = start(&net, d[0].path(), &key, &[]).await;
    node.store_bytes("good.txt", b"fine").await.unwrap();
    node.store_bytes("bad.txt", b"doomed").await.unwrap();
    let bad = dfs_store::Store::open(d[0].path().join("store"))
        .unwrap()
        .path_of(&node.object_id("bad.txt").to_hex())
        .unwrap();
    std::fs::write(&bad, b"not an object").unwrap();
    let listed = node.list().await.unwrap();
    assert_eq!(listed.len(), 1, "{listed:?}");
    assert_eq!(listed[0].name.as_deref(), Some("good.txt"));
    node.shutdown().await.unwrap();
}

/// A file written with another chunk size (same data key) reads back with its true length:
/// the length comes from the chunk size the ciphertext records, not the reader's own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn other_chunk_size_reports_the_true_length() {
    let net = Mem(MemoryTransport::new());
    let key = Key::generate().unwrap();
    let d = dirs(2);
    let small_chunks = dfs_server::Aes256CtrBlake3::new(&key)
        .with_chunk_size(1024)
        .unwrap();
    let writer = FileServer::start_with(
        config(&net, d[0].path(), &key, &[]).build(),
        net.transport(),
        dfs_store::HashPath::default(),
        small_chunks,
    )
    .await
    .unwrap();
    let reader = start(&net, d[1].path(), &key, &[writer.local_addr()]).await;
    mesh(&[&writer, &reader]).await;
    let data = pattern(9, 200_000);
    writer.store_bytes("odd.bin", &data).await.unwrap();
    let file = reader.get("odd.bin").await.unwrap();
    assert_eq!(file.len(), data.len() as u64);
    drop(file);
    assert_eq!(reader.get_bytes("odd.bin").await.unwrap(), data);
    for node in [writer, reader] {
        node.shutdown().await.unwrap();
    }
}

/// `scrub` finds a copy damaged mid-file (which a read would only catch at its end) and
/// replaces it with a verified copy from a peer; with no peer to ask, it reports it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scrub_repairs_damaged_copies_from_peers() {
    let net = Mem(MemoryTransport::new());
    let key = Key::generate().unwrap();
    let (d, a, b) = pair(&net, &key).await;
    let data = pattern(21, 700_000);
    let receipt = a.store_bytes("ledger.db", &data).await.unwrap();
    a.store_bytes("other.txt", b"untouched").await.unwrap();
    let flip = |dir: &Path| {
        let path = dfs_store::Store::open(dir.join("store"))
            .unwrap()
            .path_of(&receipt.object.to_hex())
            .unwrap();
        let mut bytes = std::fs::read(&path).unwrap();
        let mid = bytes.len() / 2;
        bytes[mid] ^= 0x40;
        std::fs::write(&path, &bytes).unwrap();
    };
    flip(d[1].path());
    let report = b.scrub().await.unwrap();
    assert_eq!(report.checked, 2);
    assert_eq!(report.repaired, vec![receipt.object]);
    assert!(report.is_clean(), "{report:?}");
    assert!(b.scrub().await.unwrap().repaired.is_empty());
    a.shutdown().await.unwrap();
    assert_eq!(b.get_bytes("ledger.db").await.unwrap(), data);

    // Alone, B cannot replace it: reported, left in place.
    flip(d[1].path());
    let report = b.scrub().await.unwrap();
    assert!(report.repaired.is_empty());
    assert_eq!(report.unrepaired.len(), 1, "{report:?}");
    assert_eq!(report.unrepaired[0].0, Some(receipt.object));
    assert!(b.has("ledger.db").await.unwrap());
    b.shutdown().await.unwrap();
}

/// Concurrent `get`s of a file nobody has ask the peers in parallel (the object's lock is
/// taken only once a copy is offered): the peer here answers only once it holds all four
/// requests at once, so serialised gets would each time out instead of hearing "not found".
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_misses_ask_peers_in_parallel() {
    const GETS: usize = 4;
    let net = Mem(MemoryTransport::new());
    let key = Key::generate().unwrap();
    let d = dirs(1);
    let node = start(&net, d[0].path(), &key, &[]).await;
    let id = NodeId::random();
    let (endpoint, mut events) =
        Endpoint::bind(net.transport(), net.listen(), EndpointConfig::new(id))
            .await
            .unwrap();
    endpoint.connect(&node.local_addr()).await.unwrap();
    let all_asked = Arc::new(tokio::sync::Barrier::new(GETS));
    tokio::spawn(async move {
        let _endpoint = endpoint;
        while let Some(event) = events.next().await {
            let Event::Stream { mut stream, .. } = event else {
                continue;
            };
            let all_asked = Arc::clone(&all_asked);
            tokio::spawn(async move {
                if let Ok(Some(Envelope {
                    message: Message::Get { .. },
                    ..
                })) = stream.recv::<Envelope>().await
                {
                    all_asked.wait().await;
                    let _ = stream.send(&Envelope::new(Message::NotFound)).await;
                    let _ = stream.finish().await;
                }
            });
        }
    });
    wait_until(&node, "gathering peer connected", || {
        node.peers().iter().any(|p| p.id == id)
    })
    .await;
    let gets: Vec<_> = (0..GETS)
        .map(|_| {
            let node = node.clone();
            tokio::spawn(async move { node.get_bytes("nowhere").await })
        })
        .collect();
    for get in gets {
        let err = get.await.unwrap().unwrap_err();
        assert!(matches!(err, ServerError::NotFound { .. }), "{err}");
    }
    node.shutdown().await.unwrap();
}

// ---------------------------------------------------------------------------------------
// Review: deletes racing replication and fetches
// ---------------------------------------------------------------------------------------

both_transports!(
    delete_everywhere_during_a_store_leaves_no_replica,
    a_busy_holder_is_not_reported_as_not_found,
);

/// Two nodes; `b` serves one transfer at a time (a request waits 2 s for it). `a`'s gated
/// store of "big" holds that slot; returns the gate and the running store.
async fn busy_replica<N: Net>(
    net: &N,
) -> (
    Vec<TempDir>,
    FileServer<N::T>,
    FileServer<N::T>,
    tokio::sync::oneshot::Sender<bool>,
    tokio::task::JoinHandle<dfs_server::Result<dfs_server::Receipt>>,
) {
    let key = Key::generate().unwrap();
    let d = dirs(2);
    let a = start(net, d[0].path(), &key, &[]).await;
    let b = FileServer::start(
        config(net, d[1].path(), &key, &[a.local_addr()])
            .max_incoming_transfers(1)
            .request_timeout(Duration::from_secs(2))
            .build(),
        net.transport(),
    )
    .await
    .unwrap();
    mesh(&[&a, &b]).await;
    let (gated, gate) = Gated::new(pattern(40, 64 << 10));
    let big = {
        let a = a.clone();
        tokio::spawn(async move { a.store("big", gated).await })
    };
    // B's only slot is taken once the followed put staged its first part.
    let staging = d[1].path().join("store").join("tmp");
    poll_until("big staged on b", || staged_bytes(&staging) > 0).await;
    (d, a, b, gate, big)
}

/// A `delete(Everywhere)` that completes while a store of the same name is still
/// replicating (its replica waiting for a transfer slot on the peer) must not be undone by
/// that replica: afterwards no node may hold the file, and `get` must say `NotFound`.
async fn delete_everywhere_during_a_store_leaves_no_replica<N: Net>(net: N) {
    let (_d, a, b, gate, big) = busy_replica(&net).await;
    let mut events = a.events();
    let storing = {
        let a = a.clone();
        tokio::spawn(async move { a.store_bytes("y", b"soon deleted").await })
    };
    wait_event(
        &mut events,
        "y stored locally",
        |e| matches!(e, ServerEvent::FileStored { name, .. } if name == "y"),
    )
    .await;
    let report = a.delete("y", Scope::Everywhere).await.unwrap();
    assert!(report.local, "{report:?}");
    gate.send(true).unwrap();
    big.await.unwrap().unwrap();
    let stored = storing.await.unwrap();
    // Whatever the store reports, the delete completed after the local commit: nobody
    // may hold "y" now.
    assert!(!a.has("y").await.unwrap());
    assert!(
        !b.has("y").await.unwrap(),
        "b holds a file deleted everywhere (store said {stored:?})"
    );
    let got = a.get_bytes("y").await;
    assert!(
        matches!(got, Err(ServerError::NotFound { .. })),
        "deleted file revived: {got:?}"
    );
    a.shutdown().await.unwrap();
    b.shutdown().await.unwrap();
}

/// A peer that could not be asked (here: a holder answering "busy", as a node past its
/// offer limit does) might hold the file: a `get` that heard "not found" only from the
/// others must not say `NotFound` ("no connected peer holds the file").
async fn a_busy_holder_is_not_reported_as_not_found<N: Net>(net: N) {
    let (_d, a, (_endpoint, mut raw_events), _peer) = node_and_raw_peer(&net, |c| c).await;
    let dir = tempfile::tempdir().unwrap();
    let b = start(
        &net,
        dir.path(),
        &Key::generate().unwrap(),
        &[a.local_addr()],
    )
    .await;
    wait_until(&a, "two peers", || a.peers().len() == 2).await;
    let getting = {
        let a = a.clone();
        tokio::spawn(async move { a.get_bytes("held by a busy peer").await })
    };
    let (mut s, _) = next_get(&mut raw_events).await;
    s.send(&Envelope::new(Message::Error {
        message: "busy: holding 8 offers already (try again later)".to_owned(),
    }))
    .await
    .unwrap();
    let got = getting.await.unwrap();
    assert!(
        !matches!(got, Err(ServerError::NotFound { .. })),
        "a busy holder reported as NotFound: {got:?}"
    );
    a.shutdown().await.unwrap();
    b.shutdown().await.unwrap();
}
