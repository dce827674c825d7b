//! Helpers shared by the integration tests.
#![allow(dead_code, unreachable_pub, clippy::unwrap_used, clippy::expect_used)]

use std::future::Future;
use std::time::Duration;

use dfs_transport::{
    Endpoint, EndpointConfig, Event, Events, MemoryTransport, NodeId, TcpTransport, Transport,
};

/// A transport under test: how to make a fresh one and which address means "any port".
pub trait Net: Transport {
    fn fresh() -> Self;
    fn any_addr() -> &'static str;
}

impl Net for TcpTransport {
    fn fresh() -> Self {
        TcpTransport::new()
    }
    fn any_addr() -> &'static str {
        "127.0.0.1:0"
    }
}

impl Net for MemoryTransport {
    fn fresh() -> Self {
        MemoryTransport::new()
    }
    fn any_addr() -> &'static str {
        "mem:0"
    }
}

/// Deadline for any single wait in a test.
pub const WAIT: Duration = Duration::from_secs(10);

pub fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("off")),
        )
        .with_test_writer()
        .try_init();
}

pub fn config() -> EndpointConfig {
    EndpointConfig::new(NodeId::random())
}

pub async fn node<T: Net>(net: &T, config: EndpointConfig) -> (Endpoint<T>, Events) {
    Endpoint::bind(net.clone(), T::any_addr(), config)
        .await
        .expect("bind")
}

/// Await `f` or panic after [`WAIT`].
pub async fn within<F: Future>(what: &str, f: F) -> F::Output {
    tokio::time::timeout(WAIT, f)
        .await
        .unwrap_or_else(|_| panic!("timed out waiting for {what}"))
}

/// The next event matching `pick`, skipping others; panics after [`WAIT`].
pub async fn wait_for<X>(
    events: &mut Events,
    what: &str,
    mut pick: impl FnMut(Event) -> Option<X>,
) -> X {
    within(what, async {
        loop {
            let ev = events.next().await.expect("event stream ended");
            if let Some(x) = pick(ev) {
                return x;
            }
        }
    })
    .await
}

// ---------------------------------------------------------------------------------------------
// A hand-driven client: completes the real handshake with the public `wire` pieces, then lets
// the test write whatever bytes it likes.
// ---------------------------------------------------------------------------------------------

use bytes::BytesMut;
use dfs_transport::NetworkSecret;
use dfs_transport::wire::{
    ConnKind, Frame, FrameDecoder, FrameKind, FrameSealer, HELLO_FIXED_LEN, HELLO_PREFIX_LEN,
    Hello, SessionKeys,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_util::codec::Decoder;

pub struct RawConn<S> {
    pub stream: S,
    pub sealer: FrameSealer,
    pub decoder: FrameDecoder,
    pub buf: BytesMut,
    pub remote: Hello,
    pub id: NodeId,
}

pub async fn read_hello<S: tokio::io::AsyncRead + Unpin>(s: &mut S) -> (Hello, Vec<u8>) {
    let mut bytes = vec![0u8; HELLO_FIXED_LEN];
    s.read_exact(&mut bytes).await.expect("hello");
    let fixed: &[u8; HELLO_FIXED_LEN - HELLO_PREFIX_LEN] =
        bytes[HELLO_PREFIX_LEN..].try_into().expect("fixed");
    let (mut hello, addr_len) = Hello::decode_fixed(fixed).expect("decode hello");
    let mut addr = vec![0u8; addr_len];
    s.read_exact(&mut addr).await.expect("hello addr");
    hello.set_addr(&addr).expect("utf-8");
    bytes.extend_from_slice(&addr);
    (hello, bytes)
}

/// Dial `addr` and complete a handshake by hand as a fresh node; reads the welcome.
pub async fn raw_connect<T: Net>(
    net: &T,
    addr: &str,
    secret: Option<&NetworkSecret>,
    kind: ConnKind,
) -> RawConn<T::Stream> {
    raw_connect_as(net, addr, secret, kind, NodeId::random(), "raw-client").await
}

/// [`raw_connect`] claiming node id `id` and the dial-back address `advertise`.
pub async fn raw_connect_as<T: Net>(
    net: &T,
    addr: &str,
    secret: Option<&NetworkSecret>,
    kind: ConnKind,
    id: NodeId,
    advertise: &str,
) -> RawConn<T::Stream> {
    let mut stream = net.dial(addr).await.expect("dial");
    let ours = Hello {
        kind,
        auth: secret.is_some(),
        node_id: id,
        nonce: NodeId::random().0,
        max_frame_len: 1 << 20,
        addr: advertise.to_owned(),
    };
    let our_bytes = ours.encode();
    stream.write_all(&our_bytes).await.expect("write hello");
    let (remote, their_bytes) = read_hello(&mut stream).await;
    let keys = SessionKeys::derive(secret, &our_bytes, &their_bytes, true);
    stream
        .write_all(&keys.our_proof)
        .await
        .expect("write proof");
    let mut proof = [0u8; 32];
    stream.read_exact(&mut proof).await.expect("read proof");
    assert!(keys.verify_proof(&proof), "acceptor's proof");
    let mut raw = RawConn {
        stream,
        sealer: FrameSealer::new(keys.send),
        decoder: FrameDecoder::new(keys.recv, 1 << 20),
        buf: BytesMut::new(),
        remote,
        id,
    };
    let welcome = raw.read_frame().await.expect("welcome");
    assert_eq!(welcome.kind, FrameKind::Welcome);
    assert_eq!(&welcome.payload[..], &[0]);
    raw
}

impl<S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin> RawConn<S> {
    /// Seal a frame into bytes (not sent).
    pub fn seal(&mut self, kind: FrameKind, payload: &[u8]) -> BytesMut {
        let mut out = BytesMut::new();
        self.sealer
            .encode_to(kind, payload, &mut out)
            .expect("seal");
        out
    }

    pub async fn send_raw(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).await.expect("send raw");
        self.stream.flush().await.expect("flush");
    }

    pub async fn send_frame(&mut self, kind: FrameKind, payload: &[u8]) {
        let b = self.seal(kind, payload);
        self.send_raw(&b).await;
    }

    /// The next verified frame, `None` at EOF (or on a read error).
    pub async fn read_frame(&mut self) -> Option<Frame> {
        loop {
            if let Some(f) = self.decoder.decode(&mut self.buf).expect("valid frame") {
                return Some(f);
            }
            match self.stream.read_buf(&mut self.buf).await {
                Ok(0) | Err(_) => return None,
                Ok(_) => {}
            }
        }
    }

    /// Read (skipping frames) until the remote closes the connection; panics after [`WAIT`].
    pub async fn expect_closed(&mut self) {
        within("the remote to drop the connection", async {
            let mut scratch = vec![0u8; 64 * 1024];
            loop {
                match self.stream.read(&mut scratch).await {
                    Ok(0) | Err(_) => return,
                    Ok(_) => {}
                }
            }
        })
        .await;
    }
}

// ---------------------------------------------------------------------------------------------
// A man-in-the-middle relay that can alter one byte in flight.
// ---------------------------------------------------------------------------------------------

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use dfs_transport::Listener;

/// Which byte to flip: in connection number `conn` (0-based, in accept order), at `offset` of
/// the dialer-to-acceptor direction.
#[derive(Debug, Clone, Copy)]
pub struct Tamper {
    pub conn: usize,
    pub offset: u64,
}

/// Start a relay in front of `target`; returns the relay's address.
pub async fn relay<T: Net>(net: &T, target: String, tamper: Option<Tamper>) -> String {
    let cell = Arc::new(std::sync::OnceLock::new());
    cell.set(target).expect("fresh cell");
    relay_later(net, cell, tamper).await
}

/// A relay whose target is set after it is bound (so the target can advertise the relay).
pub async fn relay_later<T: Net>(
    net: &T,
    target: Arc<std::sync::OnceLock<String>>,
    tamper: Option<Tamper>,
) -> String {
    relay_inner(net, target, tamper).await.0
}

/// A relay in front of `target`, and the number of connections it has accepted.
pub async fn relay_counted<T: Net>(net: &T, target: String) -> (String, Arc<AtomicUsize>) {
    let cell = Arc::new(std::sync::OnceLock::new());
    cell.set(target).expect("fresh cell");
    relay_inner(net, cell, None).await
}

async fn relay_inner<T: Net>(
    net: &T,
    target: Arc<std::sync::OnceLock<String>>,
    tamper: Option<Tamper>,
) -> (String, Arc<AtomicUsize>) {
    let mut listener = net.listen(T::any_addr()).await.expect("relay listen");
    let addr = listener.local_addr();
    let net = net.clone();
    let count = Arc::new(AtomicUsize::new(0));
    let accepted = Arc::clone(&count);
    tokio::spawn(async move {
        while let Ok((inbound, _)) = listener.accept().await {
            let n = count.fetch_add(1, Ordering::SeqCst);
            let target = target.get().expect("relay target set").clone();
            let Ok(outbound) = net.dial(&target).await else {
                return;
            };
            let flip = tamper.filter(|t| t.conn == n).map(|t| t.offset);
            tokio::spawn(pump(inbound, outbound, flip));
        }
    });
    (addr, accepted)
}

async fn pump<S>(a: S, b: S, flip: Option<u64>)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (mut ar, mut aw) = tokio::io::split(a);
    let (mut br, mut bw) = tokio::io::split(b);
    let up = async move {
        let mut buf = vec![0u8; 16 * 1024];
        let mut pos = 0u64;
        loop {
            let n = match ar.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            if let Some(f) = flip
                && f >= pos
                && f < pos + n as u64
            {
                buf[(f - pos) as usize] ^= 0x01;
            }
            pos += n as u64;
            if bw.write_all(&buf[..n]).await.is_err() {
                break;
            }
        }
        let _ = bw.shutdown().await;
    };
    let down = async move {
        let _ = tokio::io::copy(&mut br, &mut aw).await;
        let _ = aw.shutdown().await;
    };
    tokio::join!(up, down);
}

// ---------------------------------------------------------------------------------------------
// Capturing `tracing` output.
// ---------------------------------------------------------------------------------------------

#[derive(Clone, Default)]
pub struct Captured(Arc<std::sync::Mutex<Vec<u8>>>);

impl Captured {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }
}

impl std::io::Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Capture this thread's `tracing` events (tests run on a current-thread runtime, so spawned
/// tasks log here too) until the guard is dropped.
pub fn capture_logs() -> (Captured, tracing::subscriber::DefaultGuard) {
    let captured = Captured::default();
    let writer = captured.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new("dfs_transport=debug"))
        .with_ansi(false)
        .with_writer(move || writer.clone())
        .finish();
    (captured, tracing::subscriber::set_default(subscriber))
}
