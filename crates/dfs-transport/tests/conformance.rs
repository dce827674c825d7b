//! The conformance suite: written once, generic over `Transport`, run against every
//! implementation.
#![allow(clippy::unwrap_used)]

mod common;

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use common::*;
use dfs_transport::{Event, NetworkSecret, NodeId, Substream, TransportError};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncRead, AsyncReadExt, ReadBuf};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
enum Msg {
    Hello { name: String, n: u64 },
    Put { key: String, len: u64 },
    Ack { ok: bool },
    Blob(Vec<u8>),
}

/// A deterministic generated body: byte i is a function of i, never held whole in memory.
struct Generated {
    pos: u64,
    len: u64,
    fail_at: Option<u64>,
}

impl Generated {
    fn new(len: u64) -> Self {
        Self {
            pos: 0,
            len,
            fail_at: None,
        }
    }
}

/// The body pattern: byte `i` of a generated body is `pattern()[i % len]`. An odd length, so
/// frame and buffer boundaries never line up with it.
fn pattern() -> &'static [u8] {
    static P: std::sync::OnceLock<Vec<u8>> = std::sync::OnceLock::new();
    P.get_or_init(|| {
        (0..1_048_573u64)
            .map(|i| (i.wrapping_mul(31) ^ (i >> 11)) as u8)
            .collect()
    })
}

impl AsyncRead for Generated {
    fn poll_read(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if let Some(f) = self.fail_at
            && self.pos >= f
        {
            return Poll::Ready(Err(io::Error::other("disk on fire")));
        }
        let end = self.fail_at.unwrap_or(self.len).min(self.len);
        let p = pattern();
        let at = (self.pos % p.len() as u64) as usize;
        let n = (buf.remaining() as u64)
            .min(end - self.pos)
            .min((p.len() - at) as u64) as usize;
        buf.put_slice(&p[at..at + n]);
        self.pos += n as u64;
        Poll::Ready(Ok(()))
    }
}

/// Read a whole body, checking it against the pattern; returns its length.
async fn check_body<R: AsyncRead + Unpin>(mut r: R) -> io::Result<u64> {
    let p = pattern();
    let mut buf = vec![0u8; 64 * 1024];
    let mut pos = 0u64;
    loop {
        let n = r.read(&mut buf).await?;
        if n == 0 {
            return Ok(pos);
        }
        let mut done = 0;
        while done < n {
            let at = ((pos + done as u64) % p.len() as u64) as usize;
            let k = (n - done).min(p.len() - at);
            assert!(
                buf[done..done + k] == p[at..at + k],
                "body differs near byte {}",
                pos + done as u64
            );
            done += k;
        }
        pos += n as u64;
    }
}

async fn next_stream(events: &mut dfs_transport::Events) -> Substream {
    wait_for(events, "an inbound substream", |e| match e {
        Event::Stream { stream, .. } => Some(stream),
        _ => None,
    })
    .await
}

async fn connect_and_message<T: Net>() {
    init_tracing();
    let net = T::fresh();
    let (a, mut a_ev) = node(&net, config()).await;
    let (b, mut b_ev) = node(&net, config()).await;

    let peer = within("connect", a.connect(&b.local_addr())).await.unwrap();
    assert_eq!(peer.id(), b.node_id());
    assert_eq!(peer.addr(), b.local_addr());
    assert!(peer.is_connected());

    let from_a = wait_for(&mut b_ev, "PeerConnected at b", |e| match e {
        Event::PeerConnected(p) => Some(p),
        _ => None,
    })
    .await;
    assert_eq!(from_a.id(), a.node_id());
    assert_eq!(from_a.addr(), a.local_addr());
    wait_for(&mut a_ev, "PeerConnected at a", |e| {
        matches!(e, Event::PeerConnected(_)).then_some(())
    })
    .await;

    for n in 0..50 {
        peer.send(&Msg::Hello {
            name: "a".into(),
            n,
        })
        .await
        .unwrap();
    }
    for n in 0..50 {
        let (from, m) = wait_for(&mut b_ev, "a message", |e| match e {
            Event::Message { from, message } => Some((from, message)),
            _ => None,
        })
        .await;
        assert_eq!(from.id(), a.node_id());
        assert_eq!(
            m.decode::<Msg>().unwrap(),
            Msg::Hello {
                name: "a".into(),
                n
            }
        );
    }
    // And back on the same connection.
    from_a.send(&Msg::Ack { ok: true }).await.unwrap();
    let m = wait_for(&mut a_ev, "the reply", |e| match e {
        Event::Message { message, .. } => Some(message),
        _ => None,
    })
    .await;
    assert_eq!(m.decode::<Msg>().unwrap(), Msg::Ack { ok: true });

    // Connecting again returns the same peer, not a second connection.
    let again = a.connect(&b.local_addr()).await.unwrap();
    assert_eq!(again.id(), b.node_id());
    assert_eq!(a.peers().len(), 1);
    assert_eq!(b.peers().len(), 1);
    assert!(a.peer(&b.node_id()).is_some());

    a.close().await;
    b.close().await;
}

async fn substream_messages_and_body<T: Net>() {
    init_tracing();
    let net = T::fresh();
    let (a, _a_ev) = node(&net, config()).await;
    let (b, mut b_ev) = node(&net, config()).await;
    let peer = a.connect(&b.local_addr()).await.unwrap();

    const LEN: u64 = 3 * 1024 * 1024 + 17;
    let server = tokio::spawn(async move {
        let mut s = next_stream(&mut b_ev).await;
        let put: Msg = s.recv().await.unwrap().unwrap();
        assert_eq!(
            put,
            Msg::Put {
                key: "k".into(),
                len: LEN
            }
        );
        let body = s.recv_body().await.unwrap();
        assert_eq!(body.len(), LEN);
        let mut body = body;
        let got = check_body(&mut body).await.unwrap();
        assert_eq!(got, LEN);
        let mut s = body.into_substream().unwrap();
        s.send(&Msg::Ack { ok: true }).await.unwrap();
        assert_eq!(s.recv::<Msg>().await.unwrap(), None);
        s.finish().await.unwrap();
        b_ev
    });

    let mut s = within("open_stream", peer.open_stream()).await.unwrap();
    assert_eq!(s.peer_id(), b.node_id());
    s.send(&Msg::Put {
        key: "k".into(),
        len: LEN,
    })
    .await
    .unwrap();
    assert_eq!(s.send_body(LEN, Generated::new(LEN)).await.unwrap(), LEN);
    assert_eq!(s.recv::<Msg>().await.unwrap(), Some(Msg::Ack { ok: true }));
    s.finish().await.unwrap();
    within("server side", server).await.unwrap();
    a.close().await;
    b.close().await;
}

async fn empty_body<T: Net>() {
    let net = T::fresh();
    let (a, _a_ev) = node(&net, config()).await;
    let (b, mut b_ev) = node(&net, config()).await;
    let peer = a.connect(&b.local_addr()).await.unwrap();
    let mut s = peer.open_stream().await.unwrap();
    s.send_body(0, tokio::io::empty()).await.unwrap();
    let r = next_stream(&mut b_ev).await.recv_body().await.unwrap();
    assert!(r.is_empty());
    assert_eq!(check_body(r).await.unwrap(), 0);
}

async fn sender_failure_mid_body_is_an_error<T: Net>() {
    init_tracing();
    let net = T::fresh();
    let (a, _a_ev) = node(&net, config()).await;
    let (b, mut b_ev) = node(&net, config()).await;
    let peer = a.connect(&b.local_addr()).await.unwrap();

    // The source fails after 1 MiB of 4 announced.
    let mut s = peer.open_stream().await.unwrap();
    let mut src = Generated::new(4 << 20);
    src.fail_at = Some(1 << 20);
    let sender = tokio::spawn(async move { s.send_body(4 << 20, src).await });
    let r = next_stream(&mut b_ev).await.recv_body().await.unwrap();
    let err = check_body(r).await.unwrap_err();
    let sent = sender.await.unwrap();
    assert!(matches!(sent, Err(TransportError::Io { .. })), "{sent:?}");
    assert_eq!(err.kind(), io::ErrorKind::ConnectionAborted, "{err}");
    assert!(err.to_string().contains("disk on fire"), "{err}");

    // The source ends early, in the first frame and after whole frames went out.
    for got in [1000, (1 << 20) + 1000] {
        let mut s = peer.open_stream().await.unwrap();
        let sender = tokio::spawn(async move { s.send_body(4 << 20, Generated::new(got)).await });
        let r = next_stream(&mut b_ev).await.recv_body().await.unwrap();
        assert!(check_body(r).await.is_err());
        let sent = sender.await.unwrap();
        assert!(
            matches!(sent, Err(TransportError::ShortBody { got: g, .. }) if g == got),
            "{sent:?}"
        );
    }

    // The sender vanishes mid-body (substream dropped).
    let mut s = peer.open_stream().await.unwrap();
    let (mut tx, rx) = tokio::io::duplex(1 << 16);
    let sender = tokio::spawn(async move { s.send_body(4 << 20, rx).await });
    tokio::io::AsyncWriteExt::write_all(&mut tx, &[7u8; 300_000])
        .await
        .unwrap();
    let r = next_stream(&mut b_ev).await.recv_body().await.unwrap();
    sender.abort();
    let _ = sender.await;
    drop(tx);
    let mut r = r;
    let mut sink = Vec::new();
    let err = r.read_to_end(&mut sink).await.unwrap_err();
    assert!(sink.len() < 4 << 20);
    assert!(
        matches!(
            err.kind(),
            io::ErrorKind::UnexpectedEof | io::ErrorKind::ConnectionReset
        ),
        "{err:?}"
    );
    assert!(r.into_substream().is_err());
}

/// A substream frame that carries no progress is a protocol error, not a reason to keep
/// waiting: a `Ping` (substreams carry none) before a message or inside a body, and an
/// empty data frame inside a body. Each would otherwise reset the idle deadline forever.
async fn frames_without_progress_end_the_substream<T: Net>() {
    use dfs_transport::wire::{ConnKind, FrameKind};
    init_tracing();
    let net = T::fresh();
    let (a, mut a_ev) = node(&net, config()).await;
    let protocol_error = |r: std::result::Result<Vec<u8>, TransportError>, what: &str| {
        assert!(
            matches!(&r, Err(TransportError::Protocol { reason }) if reason.contains(what)),
            "{r:?}"
        );
    };

    for filler in [FrameKind::Ping, FrameKind::Data] {
        let mut raw = raw_connect(&net, &a.local_addr(), None, ConnKind::Substream).await;
        let stream = next_stream(&mut a_ev).await;
        raw.send_frame(FrameKind::BodyStart, &10u64.to_be_bytes())
            .await;
        raw.send_frame(filler, &[]).await;
        let mut body = stream.recv_body().await.unwrap();
        let read = within("the body to fail", body.next_chunk()).await;
        let expected = match filler {
            FrameKind::Ping => "Ping",
            _ => "empty data frame",
        };
        protocol_error(
            read.map(|c| c.map(|c| c.to_vec()).unwrap_or_default()),
            expected,
        );
    }

    let mut raw = raw_connect(&net, &a.local_addr(), None, ConnKind::Substream).await;
    let mut stream = next_stream(&mut a_ev).await;
    raw.send_frame(FrameKind::Ping, &[]).await;
    let got = within("the message read to fail", stream.recv::<Msg>()).await;
    protocol_error(got.map(|_| Vec::new()), "Ping");
}

/// A write cut short (here: the caller gives up on a body the remote does not read) may leave
/// half a frame on the wire, so the substream refuses every later write instead of sending
/// frames the remote can only see as corrupt.
async fn a_write_cut_short_poisons_the_substream<T: Net>() {
    init_tracing();
    let net = T::fresh();
    let (a, _a_ev) = node(&net, config()).await;
    let (b, mut b_ev) = node(&net, config()).await;
    let peer = a.connect(&b.local_addr()).await.unwrap();
    let mut s = peer.open_stream().await.unwrap();
    let _remote = next_stream(&mut b_ev).await; // held, never read
    let len = 64u64 << 20;
    // 64 MiB cannot fit in any buffer on the way: the body is still being written when the
    // caller gives up on it.
    let gave_up = tokio::time::timeout(
        std::time::Duration::from_millis(200),
        s.send_body(len, Generated::new(len)),
    )
    .await;
    assert!(gave_up.is_err(), "{gave_up:?}");
    let next = s.send(&Msg::Ack { ok: true }).await;
    assert!(matches!(next, Err(TransportError::Closed)), "{next:?}");
    let body = s.send_body(1, &[1u8][..]).await;
    assert!(matches!(body, Err(TransportError::Closed)), "{body:?}");
}

/// `connect(addr)` reaches the node that answers at `addr`, not a node that merely
/// advertised that address in its handshake; and an advertised address too long for the
/// handshake is refused when binding, never cut.
async fn advertised_addresses_are_not_trusted<T: Net>() {
    use dfs_transport::wire::{ConnKind, MAX_ADDR_LEN};
    init_tracing();
    let net = T::fresh();
    let (b, mut b_ev) = node(&net, config()).await;
    let (c, _c_ev) = node(&net, config()).await;
    let squatter = NodeId::random();
    let _raw = raw_connect_as(
        &net,
        &b.local_addr(),
        None,
        ConnKind::Control,
        squatter,
        &c.local_addr(),
    )
    .await;
    wait_for(&mut b_ev, "the squatter connected", |e| match e {
        Event::PeerConnected(p) if p.id() == squatter => Some(()),
        _ => None,
    })
    .await;
    let peer = b.connect(&c.local_addr()).await.unwrap();
    assert_eq!(peer.id(), c.node_id(), "connect returned the squatter");
    // Found by address from now on, without a new dial.
    let again = b.connect(&c.local_addr()).await.unwrap();
    assert_eq!(again.id(), c.node_id());

    let long = format!("a{}", "\u{e9}".repeat(MAX_ADDR_LEN / 2));
    let refused =
        dfs_transport::Endpoint::bind(net.clone(), T::any_addr(), config().advertise_addr(long))
            .await;
    assert!(
        matches!(&refused, Err(TransportError::Config { reason }) if reason.contains("advertised address")),
        "{:?}",
        refused.map(|_| ())
    );
}

/// An endpoint keeps at most `max_inbound_substreams` inbound substreams open: one more is
/// refused at its welcome, and a slot frees when the application drops a substream. Control
/// connections from more than `max_peers` nodes are refused the same way.
async fn inbound_connections_are_bounded<T: Net>() {
    init_tracing();
    let net = T::fresh();
    let (a, _a_ev) = node(&net, config()).await;
    let limits = config().max_inbound_substreams(2).max_peers(1);
    let (b, mut b_ev) = node(&net, limits).await;
    let peer = a.connect(&b.local_addr()).await.unwrap();
    let (c, _c_ev) = node(&net, config()).await;
    let refused = c.connect(&b.local_addr()).await;
    assert!(
        matches!(&refused, Err(TransportError::Rejected { reason }) if reason.contains("too many peers")),
        "{:?}",
        refused.map(|p| p.id())
    );
    let mut held = Vec::new();
    for _ in 0..2 {
        let _ours = peer.open_stream().await.unwrap();
        held.push(next_stream(&mut b_ev).await);
    }
    let refused = peer.open_stream().await;
    assert!(
        matches!(&refused, Err(TransportError::Rejected { reason }) if reason.contains("too many open substreams")),
        "{refused:?}"
    );
    held.pop();
    let mut s = within("a slot to free", async {
        loop {
            if let Ok(s) = peer.open_stream().await {
                return s;
            }
            tokio::task::yield_now().await;
        }
    })
    .await;
    let mut theirs = next_stream(&mut b_ev).await;
    s.send(&Msg::Ack { ok: true }).await.unwrap();
    assert_eq!(
        theirs.recv::<Msg>().await.unwrap(),
        Some(Msg::Ack { ok: true })
    );
}

/// Every address `connect` found a node at is remembered, across the connections that
/// replace each other: alternating between two addresses of one node dials each once.
async fn connect_remembers_the_addresses_it_found_a_node_at<T: Net>() {
    init_tracing();
    let net = T::fresh();
    let (a, _a_ev) = node(&net, config()).await;
    let (b, _b_ev) = node(&net, config()).await;
    let (via, dials) = relay_counted(&net, b.local_addr()).await;
    for _ in 0..3 {
        assert_eq!(a.connect(&b.local_addr()).await.unwrap().id(), b.node_id());
        assert_eq!(a.connect(&via).await.unwrap().id(), b.node_id());
    }
    assert_eq!(
        dials.load(std::sync::atomic::Ordering::SeqCst),
        1,
        "the relayed address was dialled again"
    );
}

async fn auth_right_secret<T: Net>() {
    let net = T::fresh();
    let secret = NetworkSecret::generate();
    let (a, _a_ev) = node(&net, config().secret(Some(secret.clone()))).await;
    let (b, mut b_ev) = node(&net, config().secret(Some(secret))).await;
    let peer = a.connect(&b.local_addr()).await.unwrap();
    peer.send(&Msg::Ack { ok: true }).await.unwrap();
    let m = wait_for(&mut b_ev, "message", |e| match e {
        Event::Message { message, .. } => Some(message),
        _ => None,
    })
    .await;
    assert_eq!(m.decode::<Msg>().unwrap(), Msg::Ack { ok: true });
    let mut s = peer.open_stream().await.unwrap();
    s.send(&Msg::Blob(vec![1; 100])).await.unwrap();
    let mut r = next_stream(&mut b_ev).await;
    assert_eq!(
        r.recv::<Msg>().await.unwrap(),
        Some(Msg::Blob(vec![1; 100]))
    );
}

async fn auth_refusals<T: Net>() {
    init_tracing();
    let net = T::fresh();
    let (a, _a_ev) = node(&net, config().secret(Some(NetworkSecret::generate()))).await;
    let (b, mut b_ev) = node(&net, config().secret(Some(NetworkSecret::generate()))).await;
    let (c, _c_ev) = node(&net, config()).await;

    // Wrong secret.
    let err = a.connect(&b.local_addr()).await.unwrap_err();
    assert!(matches!(err, TransportError::AuthFailed { .. }), "{err}");
    // No secret vs secret, both ways.
    let err = c.connect(&b.local_addr()).await.unwrap_err();
    assert!(matches!(err, TransportError::AuthFailed { .. }), "{err}");
    let err = b.connect(&c.local_addr()).await.unwrap_err();
    assert!(matches!(err, TransportError::AuthFailed { .. }), "{err}");
    assert!(a.peers().is_empty() && b.peers().is_empty() && c.peers().is_empty());

    // Nothing reached b's application.
    let (d, _d_ev) = node(&net, config().secret(None)).await;
    drop(d);
    let quiet = tokio::time::timeout(std::time::Duration::from_millis(200), b_ev.next()).await;
    assert!(quiet.is_err(), "b saw an event: {quiet:?}");
}

async fn self_dial<T: Net>() {
    let net = T::fresh();
    let (a, _ev) = node(&net, config()).await;
    let err = a.connect(&a.local_addr()).await.unwrap_err();
    assert!(matches!(err, TransportError::SelfDial { .. }), "{err}");
    // A second endpoint with the same node id is refused too.
    let id = a.node_id();
    let (twin, _tev) = node(&net, dfs_transport::EndpointConfig::new(id)).await;
    let err = twin.connect(&a.local_addr()).await.unwrap_err();
    assert!(matches!(err, TransportError::SelfDial { .. }), "{err}");
}

async fn random_ids_differ<T: Net>() {
    assert_ne!(NodeId::random(), NodeId::random());
}

fn fast() -> dfs_transport::EndpointConfig {
    config()
        .idle_timeout(std::time::Duration::from_millis(800))
        .keepalive_interval(std::time::Duration::from_millis(150))
        .handshake_timeout(std::time::Duration::from_millis(800))
}

async fn disconnected(events: &mut dfs_transport::Events, id: NodeId) -> Option<TransportError> {
    wait_for(events, "PeerDisconnected", |e| match e {
        Event::PeerDisconnected { id: got, reason } if got == id => Some(reason),
        _ => None,
    })
    .await
}

async fn departures_are_noticed<T: Net>() {
    init_tracing();
    let net = T::fresh();
    let (a, mut a_ev) = node(&net, fast()).await;

    // Clean close.
    let (b, _b_ev) = node(&net, fast()).await;
    let peer = a.connect(&b.local_addr()).await.unwrap();
    b.close().await;
    assert!(disconnected(&mut a_ev, b.node_id()).await.is_none());
    assert!(!peer.is_connected());
    assert!(matches!(peer.send(&1u8).await, Err(TransportError::Closed)));

    // Abrupt close (no close frame).
    let raw = raw_connect(
        &net,
        &a.local_addr(),
        None,
        dfs_transport::wire::ConnKind::Control,
    )
    .await;
    let id = raw.id;
    wait_for(&mut a_ev, "PeerConnected", |e| {
        matches!(e, Event::PeerConnected(p) if p.id() == id).then_some(())
    })
    .await;
    drop(raw);
    let reason = disconnected(&mut a_ev, id).await;
    assert!(
        matches!(reason, Some(TransportError::Io { .. })),
        "{reason:?}"
    );

    // Idle: connected, then silent (no keepalives) -> dropped after the idle timeout.
    let mut raw = raw_connect(
        &net,
        &a.local_addr(),
        None,
        dfs_transport::wire::ConnKind::Control,
    )
    .await;
    let id = raw.id;
    let reason = disconnected(&mut a_ev, id).await;
    assert!(
        matches!(reason, Some(TransportError::Timeout { .. })),
        "{reason:?}"
    );
    raw.expect_closed().await;

    // Keepalives keep a quiet but healthy connection up past the idle timeout.
    let (c, _c_ev) = node(&net, fast()).await;
    let peer = a.connect(&c.local_addr()).await.unwrap();
    let cid = c.node_id();
    wait_for(&mut a_ev, "PeerConnected", |e| {
        matches!(e, Event::PeerConnected(p) if p.id() == cid).then_some(())
    })
    .await;
    let quiet = tokio::time::timeout(std::time::Duration::from_millis(2000), a_ev.next()).await;
    assert!(
        quiet.is_err(),
        "unexpected event on a quiet connection: {quiet:?}"
    );
    assert!(peer.is_connected());
    a.close().await;
    c.close().await;
}

async fn close_drains_queued_messages<T: Net>() {
    let net = T::fresh();
    let (a, mut a_ev) = node(&net, config()).await;
    let (b, mut b_ev) = node(&net, config()).await;
    let peer = a.connect(&b.local_addr()).await.unwrap();
    for n in 0..2000u64 {
        peer.send(&Msg::Hello {
            name: "x".repeat(100),
            n,
        })
        .await
        .unwrap();
    }
    a.close().await;
    let mut n = 0;
    loop {
        match within("messages then a disconnect", b_ev.next())
            .await
            .unwrap()
        {
            Event::Message { message, .. } => {
                assert_eq!(
                    message.decode::<Msg>().unwrap(),
                    Msg::Hello {
                        name: "x".repeat(100),
                        n
                    }
                );
                n += 1;
            }
            Event::PeerDisconnected { reason, .. } => {
                assert!(reason.is_none(), "{reason:?}");
                break;
            }
            _ => {}
        }
    }
    assert_eq!(n, 2000);
    // a's event stream ends after close.
    within("a's events to end", async {
        while a_ev.next().await.is_some() {}
    })
    .await;
    assert!(a.connect(&b.local_addr()).await.is_err());
    b.close().await;
}

async fn transfers_do_not_block_each_other<T: Net>() {
    let net = T::fresh();
    let (a, _a_ev) = node(&net, config()).await;
    let (b, mut b_ev) = node(&net, config()).await;
    let peer = a.connect(&b.local_addr()).await.unwrap();

    // A big body nobody reads yet: its sender blocks on backpressure.
    const BIG: u64 = 32 << 20;
    let mut big = peer.open_stream().await.unwrap();
    let big_sender = tokio::spawn(async move { big.send_body(BIG, Generated::new(BIG)).await });
    let stalled = next_stream(&mut b_ev).await.recv_body().await.unwrap();

    // Another transfer and control messages still go through, both ways.
    let mut s = peer.open_stream().await.unwrap();
    s.send(&Msg::Put {
        key: "small".into(),
        len: 1000,
    })
    .await
    .unwrap();
    s.send_body(1000, Generated::new(1000)).await.unwrap();
    let mut r = next_stream(&mut b_ev).await;
    assert_eq!(
        r.recv::<Msg>().await.unwrap(),
        Some(Msg::Put {
            key: "small".into(),
            len: 1000
        })
    );
    assert_eq!(
        check_body(r.recv_body().await.unwrap()).await.unwrap(),
        1000
    );
    peer.send(&Msg::Ack { ok: true }).await.unwrap();
    let m = wait_for(&mut b_ev, "a control message", |e| match e {
        Event::Message { message, .. } => Some(message),
        _ => None,
    })
    .await;
    assert_eq!(m.decode::<Msg>().unwrap(), Msg::Ack { ok: true });
    assert!(
        !big_sender.is_finished(),
        "the big body cannot have been sent without a reader"
    );

    // Now drain the big one.
    assert_eq!(within("big body", check_body(stalled)).await.unwrap(), BIG);
    assert_eq!(
        within("big sender", big_sender).await.unwrap().unwrap(),
        BIG
    );
}

async fn simultaneous_dial_keeps_one_connection<T: Net>() {
    init_tracing();
    for _ in 0..10 {
        let net = T::fresh();
        let (a, mut a_ev) = node(&net, config()).await;
        let (b, mut b_ev) = node(&net, config()).await;
        let (a_addr, b_addr) = (a.local_addr(), b.local_addr());
        let (pa, pb) = within("both dials", async {
            tokio::join!(a.connect(&b_addr), b.connect(&a_addr))
        })
        .await;
        let (pa, pb) = (pa.unwrap(), pb.unwrap());
        assert_eq!(pa.id(), b.node_id());
        assert_eq!(pb.id(), a.node_id());
        // Messages flow both ways, in order, through whatever connection won.
        for n in 0..20 {
            pa.send(&Msg::Hello {
                name: "a".into(),
                n,
            })
            .await
            .unwrap();
            pb.send(&Msg::Hello {
                name: "b".into(),
                n,
            })
            .await
            .unwrap();
        }
        for (events, name, other) in [(&mut b_ev, "a", a.node_id()), (&mut a_ev, "b", b.node_id())]
        {
            let mut connected = 0;
            let mut n = 0;
            while n < 20 {
                match within("events", events.next()).await.unwrap() {
                    Event::PeerConnected(p) => {
                        assert_eq!(p.id(), other);
                        connected += 1;
                    }
                    Event::Message { message, .. } => {
                        assert_eq!(
                            message.decode::<Msg>().unwrap(),
                            Msg::Hello {
                                name: name.into(),
                                n
                            }
                        );
                        n += 1;
                    }
                    e => panic!("unexpected {e:?}"),
                }
            }
            assert_eq!(connected, 1);
        }
        // Both sides settle on the same single connection: no departure is reported.
        let quiet = tokio::time::timeout(std::time::Duration::from_millis(100), a_ev.next()).await;
        assert!(quiet.is_err(), "{quiet:?}");
        assert_eq!(a.peers().len(), 1);
        assert_eq!(b.peers().len(), 1);
        a.close().await;
        b.close().await;
    }
}

async fn malformed_input_ends_only_that_connection<T: Net>() {
    use dfs_transport::wire::{ConnKind, FrameKind};
    let (logs, _guard) = capture_logs();
    let net = T::fresh();
    let (a, mut a_ev) = node(&net, fast()).await;
    // A healthy peer stays connected throughout.
    let (good, mut good_ev) = node(&net, fast()).await;
    let good_peer = good.connect(&a.local_addr()).await.unwrap();

    // 4 GiB length prefix.
    let mut raw = raw_connect(&net, &a.local_addr(), None, ConnKind::Control).await;
    raw.send_raw(&[0xff, 0xff, 0xff, 0xff, 2]).await;
    let reason = disconnected(&mut a_ev, raw.id).await;
    assert!(
        matches!(reason, Some(TransportError::FrameTooLarge { len, .. }) if len > 4_000_000_000),
        "{reason:?}"
    );
    raw.expect_closed().await;

    // A forged tag.
    let mut raw = raw_connect(&net, &a.local_addr(), None, ConnKind::Control).await;
    let mut frame = raw.seal(FrameKind::Message, &[1, 2, 3]);
    let last = frame.len() - 1;
    frame[last] ^= 0x80;
    raw.send_raw(&frame).await;
    let reason = disconnected(&mut a_ev, raw.id).await;
    assert!(
        matches!(reason, Some(TransportError::Integrity { seq: 0 })),
        "{reason:?}"
    );

    // A replayed frame.
    let mut raw = raw_connect(&net, &a.local_addr(), None, ConnKind::Control).await;
    let frame = raw.seal(
        FrameKind::Message,
        &postcard::to_stdvec(&Msg::Ack { ok: true }).unwrap(),
    );
    raw.send_raw(&frame).await;
    raw.send_raw(&frame).await;
    let reason = disconnected(&mut a_ev, raw.id).await;
    assert!(
        matches!(reason, Some(TransportError::Integrity { seq: 1 })),
        "{reason:?}"
    );

    // An unknown frame kind, correctly tagged; and a body frame on a control connection.
    let mut raw = raw_connect(&net, &a.local_addr(), None, ConnKind::Control).await;
    let mut frame = bytes::BytesMut::new();
    raw.sealer
        .encode_to(FrameKind::Data, b"x", &mut frame)
        .unwrap();
    raw.send_raw(&frame).await;
    let reason = disconnected(&mut a_ev, raw.id).await;
    assert!(
        matches!(reason, Some(TransportError::Protocol { .. })),
        "{reason:?}"
    );

    // A peer stalling mid-frame.
    let mut raw = raw_connect(&net, &a.local_addr(), None, ConnKind::Control).await;
    let frame = raw.seal(FrameKind::Message, &[0; 100]);
    raw.send_raw(&frame[..50]).await;
    let reason = disconnected(&mut a_ev, raw.id).await;
    assert!(
        matches!(reason, Some(TransportError::Timeout { .. })),
        "{reason:?}"
    );

    // Bad postcard on a substream.
    let mut raw = raw_connect(&net, &a.local_addr(), None, ConnKind::Substream).await;
    raw.send_frame(FrameKind::Message, &[0xff; 12]).await;
    let mut s = next_stream(&mut a_ev).await;
    let err = s.recv::<Msg>().await.unwrap_err();
    assert!(matches!(err, TransportError::Decode { .. }), "{err}");
    assert!(matches!(s.recv::<Msg>().await, Err(TransportError::Closed)));
    drop(s);
    raw.expect_closed().await;

    // Bad postcard on the control connection: the application finds out when decoding.
    let mut raw = raw_connect(&net, &a.local_addr(), None, ConnKind::Control).await;
    raw.send_frame(FrameKind::Message, &[0xff; 12]).await;
    let payload = wait_for(&mut a_ev, "the bad message", |e| match e {
        Event::Message { message, .. } => Some(message),
        _ => None,
    })
    .await;
    assert!(matches!(
        payload.decode::<Msg>(),
        Err(TransportError::Decode { .. })
    ));
    assert!(a.disconnect(&raw.id).await);
    raw.expect_closed().await;

    // Garbage before the handshake.
    let mut s = net.dial(&a.local_addr()).await.unwrap();
    tokio::io::AsyncWriteExt::write_all(&mut s, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n__________________________________________________________________________________").await.unwrap();
    within("the garbage connection to close", async {
        let mut scratch = vec![0u8; 4096];
        loop {
            match s.read(&mut scratch).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    })
    .await;

    // A peer that connects and never says anything: handshake timeout.
    let mut s = net.dial(&a.local_addr()).await.unwrap();
    within("the silent connection to close", async {
        let mut scratch = vec![0u8; 4096];
        loop {
            match s.read(&mut scratch).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    })
    .await;

    // Through all of that, the healthy peer was unaffected.
    assert!(good_peer.is_connected());
    good_peer.send(&Msg::Ack { ok: true }).await.unwrap();
    let m = wait_for(&mut a_ev, "the healthy peer's message", |e| match e {
        Event::Message { message, .. } => Some(message),
        _ => None,
    })
    .await;
    assert_eq!(m.decode::<Msg>().unwrap(), Msg::Ack { ok: true });
    let quiet = tokio::time::timeout(std::time::Duration::from_millis(50), good_ev.next()).await;
    assert!(
        !matches!(quiet, Ok(Some(Event::PeerDisconnected { .. }))),
        "{quiet:?}"
    );

    let text = logs.text();
    for needle in [
        "exceeds the maximum",
        "integrity check",
        "protocol violation",
        "timed out",
        "could not decode",
        "bad magic",
        "inbound handshake failed",
    ] {
        assert!(
            text.contains(needle),
            "no tracing event mentions {needle:?}:\n{text}"
        );
    }
    a.close().await;
    good.close().await;
}

async fn mitm_relay<T: Net>() {
    let secret = NetworkSecret::generate();
    let net = T::fresh();
    let (a, _a_ev) = node(&net, config().secret(Some(secret.clone()))).await;
    // The dialer-to-acceptor bytes start with a's hello (82 + address) and proof (32).
    let handshake_len = (82 + a.advertise_addr().len() + 32) as u64;

    // An honest relay: works.
    let (b, mut b_ev) = node(&net, config().secret(Some(secret.clone()))).await;
    let honest = relay(&net, b.local_addr(), None).await;
    let peer = a.connect(&honest).await.unwrap();
    assert_eq!(peer.id(), b.node_id());
    peer.send(&Msg::Ack { ok: true }).await.unwrap();
    let m = wait_for(&mut b_ev, "a relayed message", |e| match e {
        Event::Message { message, .. } => Some(message),
        _ => None,
    })
    .await;
    assert_eq!(m.decode::<Msg>().unwrap(), Msg::Ack { ok: true });

    // One bit of a message frame altered in flight: b drops the connection, delivers nothing.
    let (c, mut c_ev) = node(&net, config().secret(Some(secret.clone()))).await;
    let evil = relay(
        &net,
        c.local_addr(),
        Some(Tamper {
            conn: 0,
            offset: handshake_len + 7,
        }),
    )
    .await;
    let peer = a.connect(&evil).await.unwrap();
    peer.send(&Msg::Hello {
        name: "pay bob".into(),
        n: 10,
    })
    .await
    .unwrap();
    loop {
        match within("c to notice", c_ev.next()).await.unwrap() {
            Event::PeerConnected(_) => {}
            Event::PeerDisconnected { reason, .. } => {
                assert!(
                    matches!(reason, Some(TransportError::Integrity { .. })),
                    "{reason:?}"
                );
                break;
            }
            e => panic!("tampered traffic reached the application: {e:?}"),
        }
    }

    // One bit of the hello's nonce altered: the proofs no longer match on either side.
    let (d, _d_ev) = node(&net, config().secret(Some(secret.clone()))).await;
    let evil = relay(
        &net,
        d.local_addr(),
        Some(Tamper {
            conn: 0,
            offset: 50,
        }),
    )
    .await;
    let err = a.connect(&evil).await.unwrap_err();
    assert!(matches!(err, TransportError::AuthFailed { .. }), "{err}");

    // One bit deep inside a body altered: the body fails, it never ends "complete". The
    // acceptor advertises the relay, so the substream goes through it too (connection 1).
    let target = std::sync::Arc::new(std::sync::OnceLock::new());
    let evil = relay_later(
        &net,
        target.clone(),
        Some(Tamper {
            conn: 1,
            offset: handshake_len + 100_000,
        }),
    )
    .await;
    let (e, mut e_ev) = node(
        &net,
        config().secret(Some(secret)).advertise_addr(evil.clone()),
    )
    .await;
    target.set(e.local_addr()).unwrap();
    let peer = a.connect(&evil).await.unwrap();
    assert_eq!(peer.addr(), evil);
    let mut s = peer.open_stream().await.unwrap();
    let sender = tokio::spawn(async move { s.send_body(1 << 20, Generated::new(1 << 20)).await });
    let body = next_stream(&mut e_ev).await.recv_body().await.unwrap();
    let err = within("the body to fail", check_body(body))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), io::ErrorKind::InvalidData, "{err}");
    assert!(err.to_string().contains("integrity"), "{err}");
    let _ = sender.await;
}

/// The pattern bytes `pos..pos + n` of a generated body.
fn pattern_at(pos: u64, n: usize) -> Vec<u8> {
    let p = pattern();
    (0..n as u64)
        .map(|i| p[((pos + i) % p.len() as u64) as usize])
        .collect()
}

async fn body_as_chunks<T: Net>() {
    let net = T::fresh();
    let (a, _a_ev) = node(&net, config()).await;
    let (b, mut b_ev) = node(&net, config().data_frame_len(300 * 1024)).await;
    let peer = a.connect(&b.local_addr()).await.unwrap();
    // b sends (300 KiB frames, hashed by the receiver 64 KiB at a time as they arrive), then
    // a message right behind the end frame, which the body reader must leave to the
    // substream.
    const LEN: u64 = 2 * 1024 * 1024 + 5;
    let sender = tokio::spawn(async move {
        let mut s = next_stream(&mut b_ev).await;
        s.send_body(LEN, Generated::new(LEN)).await.unwrap();
        s.send(&Msg::Ack { ok: true }).await.unwrap();
        s.send_body(LEN, Generated::new(LEN)).await.unwrap();
        assert_eq!(s.recv::<Msg>().await.unwrap(), None);
        s.finish().await.unwrap();
    });
    let s = peer.open_stream().await.unwrap();
    let mut body = s.recv_body().await.unwrap();
    // Mixed: a few bytes through AsyncRead, then the rest as chunks, without copies.
    let mut head = [0u8; 1000];
    body.read_exact(&mut head).await.unwrap();
    assert_eq!(head[..], pattern_at(0, 1000)[..]);
    let mut pos = 1000u64;
    let mut chunks = 0;
    while let Some(chunk) = within("a chunk", body.next_chunk()).await.unwrap() {
        assert!(!chunk.is_empty());
        assert!(
            chunk[..] == pattern_at(pos, chunk.len())[..],
            "chunk at {pos}"
        );
        pos += chunk.len() as u64;
        chunks += 1;
    }
    assert_eq!(pos, LEN);
    assert!(chunks >= 7, "{chunks} chunks of at most 300 KiB");
    // Done stays done.
    assert!(body.next_chunk().await.unwrap().is_none());
    let mut s = body.into_substream().unwrap();
    assert_eq!(s.recv::<Msg>().await.unwrap(), Some(Msg::Ack { ok: true }));
    // The second body through the `Stream` impl.
    use futures::StreamExt;
    let mut body = s.recv_body().await.unwrap();
    let mut pos = 0u64;
    while let Some(chunk) = within("a chunk", body.next()).await {
        let chunk = chunk.unwrap();
        assert!(
            chunk[..] == pattern_at(pos, chunk.len())[..],
            "chunk at {pos}"
        );
        pos += chunk.len() as u64;
    }
    assert_eq!(pos, LEN);
    body.into_substream().unwrap().finish().await.unwrap();
    within("the sender", sender).await.unwrap();
    a.close().await;
    b.close().await;
}

/// A raw peer sends a body of `frames` data frames of `frame` bytes on a substream, frame
/// `bad` with one payload bit flipped (the tag no longer matches), then the rest, sealed
/// correctly, and the end frame. Returns the writer (it blocks while the receiver's bounded
/// read-ahead waits) and the substream.
async fn tampered_body<T: Net>(
    net: &T,
    addr: &str,
    events: &mut dfs_transport::Events,
    frames: usize,
    frame: usize,
    bad: usize,
) -> (tokio::task::JoinHandle<()>, Substream) {
    use dfs_transport::wire::{ConnKind, FrameKind};
    let mut raw = raw_connect(net, addr, None, ConnKind::Substream).await;
    let s = next_stream(events).await;
    let len = (frames * frame) as u64;
    let mut wire = raw.seal(FrameKind::BodyStart, &len.to_be_bytes());
    for i in 0..frames {
        let mut f = raw.seal(FrameKind::Data, &pattern_at((i * frame) as u64, frame));
        if i == bad {
            f[5 + frame / 2] ^= 0x01;
        }
        wire.extend_from_slice(&f);
    }
    wire.extend_from_slice(&raw.seal(FrameKind::End, &len.to_be_bytes()));
    let mut stream = raw.stream;
    let writer = tokio::spawn(async move {
        // Fails once the receiver gives up on the body and drops the connection.
        let _ = tokio::io::AsyncWriteExt::write_all(&mut stream, &wire).await;
        let mut scratch = [0u8; 1024];
        while matches!(stream.read(&mut scratch).await, Ok(n) if n > 0) {}
    });
    (writer, s)
}

async fn slow_consumer_is_not_a_stalled_sender<T: Net>() {
    use dfs_transport::wire::{ConnKind, FrameKind};
    const IDLE: std::time::Duration = std::time::Duration::from_millis(400);
    let net = T::fresh();
    let (a, mut a_ev) = node(&net, fast().idle_timeout(IDLE)).await;
    let mut raw = raw_connect(&net, &a.local_addr(), None, ConnKind::Substream).await;
    let s = next_stream(&mut a_ev).await;
    const FRAME: usize = 100 * 1024;
    let (go, gate) = tokio::sync::oneshot::channel::<()>();
    let sender = tokio::spawn(async move {
        raw.send_frame(FrameKind::BodyStart, &(2 * FRAME as u64).to_be_bytes())
            .await;
        raw.send_frame(FrameKind::Data, &pattern_at(0, FRAME)).await;
        // The second frame only once the consumer has finished its work on the first.
        gate.await.unwrap();
        raw.send_frame(FrameKind::Data, &pattern_at(FRAME as u64, FRAME))
            .await;
        raw.send_frame(FrameKind::End, &(2 * FRAME as u64).to_be_bytes())
            .await;
        raw
    });
    let mut body = s.recv_body().await.unwrap();
    let first = within("the first chunk", body.next_chunk())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(first.len(), FRAME);
    // The consumer works on the first chunk for longer than the idle timeout: its own
    // slowness must not count as the sender stalling. The work is simulated by moving the
    // runtime's clock (paused, advanced, resumed), so any timer armed meanwhile fires.
    tokio::time::pause();
    tokio::time::advance(IDLE * 2).await;
    tokio::time::resume();
    go.send(()).unwrap();
    let second = within("the second chunk", body.next_chunk())
        .await
        .unwrap()
        .unwrap();
    assert!(second[..] == pattern_at(FRAME as u64, FRAME)[..]);
    assert!(body.next_chunk().await.unwrap().is_none());
    // A sender that really stalls still times out.
    let mut raw = within("the sender", sender).await.unwrap();
    let s = body.into_substream().unwrap();
    raw.send_frame(FrameKind::BodyStart, &1u64.to_be_bytes())
        .await;
    let mut body = s.recv_body().await.unwrap();
    let err = within("the stall to be noticed", body.next_chunk())
        .await
        .unwrap_err();
    assert!(matches!(err, TransportError::Timeout { .. }), "{err}");
    drop(raw);
    a.close().await;
}

async fn tampered_frame_never_released<T: Net>() {
    let net = T::fresh();
    let (a, mut a_ev) = node(&net, config()).await;
    const FRAME: usize = 100 * 1024;
    for bad in [0usize, 1, 4, 7] {
        // As chunks: exactly the frames before the altered one, then `Integrity`.
        let (writer, s) = tampered_body(&net, &a.local_addr(), &mut a_ev, 8, FRAME, bad).await;
        let mut body = s.recv_body().await.unwrap();
        let mut pos = 0u64;
        let err = loop {
            match within("a chunk", body.next_chunk()).await {
                Ok(Some(chunk)) => {
                    assert!(
                        chunk[..] == pattern_at(pos, chunk.len())[..],
                        "chunk at {pos}"
                    );
                    pos += chunk.len() as u64;
                }
                Ok(None) => panic!("a body with an altered frame ended cleanly"),
                Err(e) => break e,
            }
        };
        // Frame 0 is the body start, so data frame `bad` carries sequence number bad + 1.
        assert!(
            matches!(err, TransportError::Integrity { seq } if seq == bad as u64 + 1),
            "{err}"
        );
        assert_eq!(
            pos,
            (bad * FRAME) as u64,
            "bytes released before the bad frame"
        );
        // It stays failed, and the substream cannot be taken back.
        assert!(body.next_chunk().await.is_err());
        assert!(body.into_substream().is_err());
        within("the raw writer", writer).await.unwrap();

        // Through AsyncRead: the same prefix, then an `InvalidData` error.
        let (writer, s) = tampered_body(&net, &a.local_addr(), &mut a_ev, 8, FRAME, bad).await;
        let mut body = s.recv_body().await.unwrap();
        let mut buf = vec![0u8; 64 * 1024];
        let mut pos = 0u64;
        let err = loop {
            match within("a read", body.read(&mut buf)).await {
                Ok(0) => panic!("a body with an altered frame ended cleanly"),
                Ok(n) => {
                    assert!(buf[..n] == pattern_at(pos, n)[..], "bytes at {pos}");
                    pos += n as u64;
                }
                Err(e) => break e,
            }
        };
        assert_eq!(err.kind(), io::ErrorKind::InvalidData, "{err}");
        assert!(err.to_string().contains("integrity"), "{err}");
        assert_eq!(pos, (bad * FRAME) as u64);
        assert!(body.read(&mut buf).await.is_err());
        drop(body);
        within("the raw writer", writer).await.unwrap();
    }
    a.close().await;
}

async fn drop_without_close_tears_down<T: Net>() {
    let net = T::fresh();
    let (a, mut a_ev) = node(&net, config()).await;
    let (b, mut b_ev) = node(&net, config()).await;
    let a_addr = a.local_addr();
    let a_id = a.node_id();
    let peer = b.connect(&a_addr).await.unwrap();
    wait_for(&mut a_ev, "PeerConnected", |e| {
        matches!(e, Event::PeerConnected(_)).then_some(())
    })
    .await;
    drop(a);
    // The remote notices, a's events end, and a's address no longer answers.
    let reason = disconnected(&mut b_ev, a_id).await;
    assert!(reason.is_some());
    within("a's events to end", async {
        while a_ev.next().await.is_some() {}
    })
    .await;
    assert!(!peer.is_connected());
    within("a refused dial", async {
        assert!(b.connect(&a_addr).await.is_err());
    })
    .await;
}

macro_rules! conformance {
    ($module:ident, $t:ty) => {
        mod $module {

            #[tokio::test]
            async fn connect_and_message() {
                super::connect_and_message::<$t>().await;
            }
            #[tokio::test]
            async fn substream_messages_and_body() {
                super::substream_messages_and_body::<$t>().await;
            }
            #[tokio::test]
            async fn empty_body() {
                super::empty_body::<$t>().await;
            }
            #[tokio::test]
            async fn sender_failure_mid_body_is_an_error() {
                super::sender_failure_mid_body_is_an_error::<$t>().await;
            }
            #[tokio::test]
            async fn auth_right_secret() {
                super::auth_right_secret::<$t>().await;
            }
            #[tokio::test]
            async fn auth_refusals() {
                super::auth_refusals::<$t>().await;
            }
            #[tokio::test]
            async fn self_dial() {
                super::self_dial::<$t>().await;
            }
            #[tokio::test]
            async fn departures_are_noticed() {
                super::departures_are_noticed::<$t>().await;
            }
            #[tokio::test]
            async fn close_drains_queued_messages() {
                super::close_drains_queued_messages::<$t>().await;
            }
            #[tokio::test]
            async fn transfers_do_not_block_each_other() {
                super::transfers_do_not_block_each_other::<$t>().await;
            }
            #[tokio::test]
            async fn simultaneous_dial_keeps_one_connection() {
                super::simultaneous_dial_keeps_one_connection::<$t>().await;
            }
            #[tokio::test]
            async fn malformed_input_ends_only_that_connection() {
                super::malformed_input_ends_only_that_connection::<$t>().await;
            }
            #[tokio::test]
            async fn mitm_relay() {
                super::mitm_relay::<$t>().await;
            }
            #[tokio::test]
            async fn drop_without_close_tears_down() {
                super::drop_without_close_tears_down::<$t>().await;
            }
            #[tokio::test]
            async fn body_as_chunks() {
                super::body_as_chunks::<$t>().await;
            }
            #[tokio::test]
            async fn tampered_frame_never_released() {
                super::tampered_frame_never_released::<$t>().await;
            }
            #[tokio::test]
            async fn slow_consumer_is_not_a_stalled_sender() {
                super::slow_consumer_is_not_a_stalled_sender::<$t>().await;
            }
            #[tokio::test]
            async fn frames_without_progress_end_the_substream() {
                super::frames_without_progress_end_the_substream::<$t>().await;
            }
            #[tokio::test]
            async fn a_write_cut_short_poisons_the_substream() {
                super::a_write_cut_short_poisons_the_substream::<$t>().await;
            }
            #[tokio::test]
            async fn advertised_addresses_are_not_trusted() {
                super::advertised_addresses_are_not_trusted::<$t>().await;
            }
            #[tokio::test]
            async fn inbound_connections_are_bounded() {
                super::inbound_connections_are_bounded::<$t>().await;
            }
            #[tokio::test]
            async fn connect_remembers_the_addresses_it_found_a_node_at() {
                super::connect_remembers_the_addresses_it_found_a_node_at::<$t>().await;
            }
            #[tokio::test]
            async fn random_ids_differ() {
                super::random_ids_differ::<$t>().await;
            }
        }
    };
}

conformance!(tcp, dfs_transport::TcpTransport);
conformance!(memory, dfs_transport::MemoryTransport);
