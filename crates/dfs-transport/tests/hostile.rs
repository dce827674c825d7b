//! A remote that keeps talking after this side disconnected or closed it (its messages are
//! dropped, its connection ends within an idle timeout), and a send refused as too large
//! (the substream stays usable).
#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use common::*;
use dfs_transport::wire::{ConnKind, FrameKind};
use dfs_transport::{Event, NodeId};
use tokio::io::AsyncWriteExt;

fn fast() -> dfs_transport::EndpointConfig {
    config()
        .idle_timeout(Duration::from_millis(800))
        .keepalive_interval(Duration::from_millis(150))
        .handshake_timeout(Duration::from_millis(800))
        .close_timeout(Duration::from_millis(800))
}

/// Keeps sending a message and a ping every 100 ms on `raw` until a write fails (the
/// endpoint dropped the connection); returns how long that took, or `None` if the connection
/// was still writable after `limit`.
async fn pester<S>(raw: &mut RawConn<S>, limit: Duration) -> Option<Duration>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let start = tokio::time::Instant::now();
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    let msg = postcard::to_stdvec(&"still here").unwrap();
    while start.elapsed() < limit {
        tick.tick().await;
        let mut bytes = raw.seal(FrameKind::Message, &msg);
        bytes.extend_from_slice(&raw.seal(FrameKind::Ping, &[]));
        let wrote = async {
            raw.stream.write_all(&bytes).await?;
            raw.stream.flush().await
        }
        .await;
        if wrote.is_err() {
            return Some(start.elapsed());
        }
    }
    None
}

/// Messages from `id` seen on `events` within `window`.
async fn messages_from(events: &mut dfs_transport::Events, id: NodeId, window: Duration) -> usize {
    let mut n = 0;
    let _ = tokio::time::timeout(window, async {
        while let Some(ev) = events.next().await {
            if let Event::Message { from, .. } = ev
                && from.id() == id
            {
                n += 1;
            }
        }
    })
    .await;
    n
}

/// An endpoint with short timeouts, and a raw control connection to it, once it reported
/// the peer connected.
async fn raw_peer_of_a_fast_node<T: Net>() -> (
    dfs_transport::Endpoint<T>,
    dfs_transport::Events,
    RawConn<T::Stream>,
) {
    init_tracing();
    let net = T::fresh();
    let (a, mut a_ev) = node(&net, fast()).await;
    let raw = raw_connect(&net, &a.local_addr(), None, ConnKind::Control).await;
    let id = raw.id;
    wait_for(&mut a_ev, "PeerConnected", |e| {
        matches!(e, Event::PeerConnected(p) if p.id() == id).then_some(())
    })
    .await;
    (a, a_ev, raw)
}

/// `Endpoint::disconnect` is documented as the way to drop a misbehaving peer. A peer that
/// ignores our close frame and keeps talking must neither keep the connection (socket and
/// reader task) alive past the idle timeout, nor keep having its messages delivered after
/// `PeerDisconnected`.
async fn disconnect_really_drops_a_peer_that_keeps_talking<T: Net>() {
    let (a, mut a_ev, mut raw) = raw_peer_of_a_fast_node::<T>().await;
    let id = raw.id;
    assert!(a.disconnect(&id).await);
    wait_for(&mut a_ev, "PeerDisconnected", |e| {
        matches!(e, Event::PeerDisconnected { id: got, .. } if got == id).then_some(())
    })
    .await;
    // The endpoint says goodbye...
    let close = within("the close frame", async {
        loop {
            match raw.read_frame().await {
                Some(f) if f.kind == FrameKind::Close => return true,
                Some(_) => {}
                None => return false,
            }
        }
    })
    .await;
    assert!(close, "no close frame before EOF");

    // ...and the peer carries on regardless.
    let a_events = tokio::spawn(async move {
        let n = messages_from(&mut a_ev, id, Duration::from_secs(3)).await;
        (n, a_ev)
    });
    let dropped_after = pester(&mut raw, Duration::from_secs(3)).await;
    let (delivered, _a_ev) = a_events.await.unwrap();
    assert_eq!(
        delivered, 0,
        "messages of a disconnected peer reached the application"
    );
    assert!(
        dropped_after.is_some(),
        "the disconnected peer's connection is still open 3 s later (idle timeout 0.8 s)"
    );
    a.close().await;
}

/// `Endpoint::close` keeps reading "until the remote closes its side too (bounded by the idle
/// timeout)": a remote that never closes but keeps sending must not keep the connection open.
async fn close_bounds_the_drain_of_a_peer_that_keeps_talking<T: Net>() {
    let (a, _a_ev, mut raw) = raw_peer_of_a_fast_node::<T>().await;
    within("close", a.close()).await;
    let dropped_after = pester(&mut raw, Duration::from_secs(3)).await;
    assert!(
        dropped_after.is_some(),
        "a closed endpoint still holds a connection 3 s later (idle timeout 0.8 s)"
    );
}

/// A message over the remote's maximum frame length is refused before anything is written
/// (`FrameTooLarge`), as `Peer::send` does: the substream stays usable, e.g. to send the
/// error reply a server owes instead of the too-large answer.
async fn an_oversized_message_leaves_the_substream_usable<T: Net>() {
    init_tracing();
    let net = T::fresh();
    let (a, _a_ev) = node(&net, config()).await;
    let (b, mut b_ev) = node(&net, config().max_frame_len(1024).data_frame_len(1024)).await;
    let peer = a.connect(&b.local_addr()).await.unwrap();
    let mut s = peer.open_stream().await.unwrap();
    let err = s.send(&vec![7u8; 4096]).await.unwrap_err();
    assert!(
        matches!(err, dfs_transport::TransportError::FrameTooLarge { .. }),
        "{err}"
    );
    let mut theirs = wait_for(&mut b_ev, "the substream", |e| match e {
        Event::Stream { stream, .. } => Some(stream),
        _ => None,
    })
    .await;
    s.send(&vec![1u8; 16])
        .await
        .expect("a small message after a refused one");
    let got: Vec<u8> = within("the small message", theirs.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(got, vec![1u8; 16]);
    s.finish().await.unwrap();
    a.close().await;
    b.close().await;
}

/// Nodes that finish their handshakes at the same moment are held to `max_peers` too: the
/// limit is checked where the connection is registered, not only before.
async fn max_peers_holds_under_concurrent_handshakes<T: Net>() {
    init_tracing();
    let net = T::fresh();
    let (b, _b_ev) = node(&net, config().max_peers(2)).await;
    let mut clients = Vec::new();
    for _ in 0..24 {
        clients.push(node(&net, config()).await);
    }
    let addr = b.local_addr();
    let dials = clients.iter().map(|(c, _)| {
        let (c, addr) = (c.clone(), addr.clone());
        tokio::spawn(async move { c.connect(&addr).await.is_ok() })
    });
    let joined = within("the dials", futures::future::join_all(dials)).await;
    let accepted = joined.into_iter().filter(|r| *r.as_ref().unwrap()).count();
    assert!(accepted <= 2, "{accepted} nodes connected, max_peers is 2");
    assert!(b.peers().len() <= 2, "{} peers", b.peers().len());
}

macro_rules! hostile {
    ($module:ident, $t:ty) => {
        mod $module {
            #[tokio::test]
            async fn disconnect_really_drops_a_peer_that_keeps_talking() {
                super::disconnect_really_drops_a_peer_that_keeps_talking::<$t>().await;
            }
            #[tokio::test]
            async fn an_oversized_message_leaves_the_substream_usable() {
                super::an_oversized_message_leaves_the_substream_usable::<$t>().await;
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn max_peers_holds_under_concurrent_handshakes() {
                super::max_peers_holds_under_concurrent_handshakes::<$t>().await;
            }
            #[tokio::test]
            async fn close_bounds_the_drain_of_a_peer_that_keeps_talking() {
                super::close_bounds_the_drain_of_a_peer_that_keeps_talking::<$t>().await;
            }
        }
    };
}

hostile!(tcp, dfs_transport::TcpTransport);
hostile!(memory, dfs_transport::MemoryTransport);
