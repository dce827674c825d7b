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

fn byte_at(i: u64) -> u8 {
    (i.wrapping_mul(31) ^ (i >> 11)) as u8
}

impl AsyncRead for Generated {
    fn poll_read(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if let Some(f) = self.fail_at {
            if self.pos >= f {
                return Poll::Ready(Err(io::Error::other("disk on fire")));
            }
        }
        let end = self.fail_at.unwrap_or(self.len).min(self.len);
        let n = (buf.remaining() as u64).min(end - self.pos) as usize;
        let start = self.pos;
        let dst = buf.initialize_unfilled_to(n);
        for (k, b) in dst.iter_mut().enumerate() {
            *b = byte_at(start + k as u64);
        }
        buf.advance(n);
        self.pos += n as u64;
        Poll::Ready(Ok(()))
    }
}

/// Read a whole body, checking it against [`byte_at`]; returns its length.
async fn check_body<R: AsyncRead + Unpin>(mut r: R) -> io::Result<u64> {
    let mut buf = vec![0u8; 64 * 1024];
    let mut pos = 0u64;
    loop {
        let n = r.read(&mut buf).await?;
        if n == 0 {
            return Ok(pos);
        }
        for (k, b) in buf[..n].iter().enumerate() {
            assert_eq!(*b, byte_at(pos + k as u64), "byte {}", pos + k as u64);
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

    // The source ends early.
    let mut s = peer.open_stream().await.unwrap();
    let sent = s.send_body(4 << 20, Generated::new(1000)).await;
    assert!(
        matches!(sent, Err(TransportError::ShortBody { got: 1000, .. })),
        "{sent:?}"
    );
    let r = next_stream(&mut b_ev).await.recv_body().await.unwrap();
    assert!(check_body(r).await.is_err());

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
            async fn random_ids_differ() {
                super::random_ids_differ::<$t>().await;
            }
        }
    };
}

conformance!(tcp, dfs_transport::TcpTransport);
conformance!(memory, dfs_transport::MemoryTransport);
