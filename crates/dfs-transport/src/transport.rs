//! The raw byte-stream layer: [`Transport`] and [`Listener`], and the two implementations.

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex, PoisonError};

use tokio::io::{AsyncRead, AsyncWrite, DuplexStream};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;

use crate::error::{Result, TransportError};

/// A way to open raw, reliable, ordered byte streams: listen, accept, dial.
///
/// Knows nothing of framing, handshakes or peers; everything above the raw stream is written
/// once in [`Endpoint`](crate::Endpoint) and works over any implementation.
pub trait Transport: Clone + Send + Sync + 'static {
    /// A connected byte stream.
    type Stream: AsyncRead + AsyncWrite + Send + Unpin + 'static;
    /// A bound listener yielding [`Self::Stream`]s.
    type Listener: Listener<Stream = Self::Stream>;

    /// Bind a listener. Port 0 picks a free port; [`Listener::local_addr`] reports it.
    fn listen(&self, addr: &str) -> impl Future<Output = Result<Self::Listener>> + Send;

    /// Open a stream to a listening address.
    fn dial(&self, addr: &str) -> impl Future<Output = Result<Self::Stream>> + Send;
}

/// A bound listener. Dropping it stops listening.
pub trait Listener: Send + 'static {
    /// The stream type accepted.
    type Stream;

    /// Wait for the next inbound stream; yields it with the remote's address.
    fn accept(&mut self) -> impl Future<Output = Result<(Self::Stream, String)>> + Send;

    /// The real bound address (`"127.0.0.1:0"` becomes `"127.0.0.1:40123"`).
    fn local_addr(&self) -> String;
}

// ---------------------------------------------------------------------------------------------
// TCP
// ---------------------------------------------------------------------------------------------

/// [`Transport`] over tokio TCP. Addresses are `"ip:port"` (or `"host:port"` when dialling).
///
/// Streams have `TCP_NODELAY` set: frames are written whole, so Nagle only adds latency.
#[derive(Debug, Clone, Copy, Default)]
pub struct TcpTransport;

impl TcpTransport {
    /// A TCP transport.
    pub fn new() -> Self {
        Self
    }
}

/// A bound TCP listener.
#[derive(Debug)]
pub struct TcpListenerHandle {
    inner: TcpListener,
    local: String,
}

impl Transport for TcpTransport {
    type Stream = TcpStream;
    type Listener = TcpListenerHandle;

    fn listen(&self, addr: &str) -> impl Future<Output = Result<Self::Listener>> + Send {
        let addr = addr.to_owned();
        async move {
            let inner = TcpListener::bind(&addr)
                .await
                .map_err(|e| TransportError::io("binding a TCP listener", e))?;
            let local = inner
                .local_addr()
                .map_err(|e| TransportError::io("reading the bound address", e))?
                .to_string();
            Ok(TcpListenerHandle { inner, local })
        }
    }

    fn dial(&self, addr: &str) -> impl Future<Output = Result<Self::Stream>> + Send {
        let addr = addr.to_owned();
        async move {
            let stream = TcpStream::connect(&addr)
                .await
                .map_err(|e| TransportError::io("dialling a TCP address", e))?;
            // Best effort: a failure only costs latency.
            let _ = stream.set_nodelay(true);
            Ok(stream)
        }
    }
}

impl Listener for TcpListenerHandle {
    type Stream = TcpStream;

    async fn accept(&mut self) -> Result<(TcpStream, String)> {
        let (stream, remote) = self
            .inner
            .accept()
            .await
            .map_err(|e| TransportError::io("accepting a TCP connection", e))?;
        let _ = stream.set_nodelay(true);
        Ok((stream, remote.to_string()))
    }

    fn local_addr(&self) -> String {
        self.local.clone()
    }
}

// ---------------------------------------------------------------------------------------------
// Memory
// ---------------------------------------------------------------------------------------------

/// Buffer of each direction of an in-memory stream.
const MEMORY_PIPE_BUFFER: usize = 256 * 1024;
/// Inbound streams a memory listener queues before `dial` waits.
const MEMORY_BACKLOG: usize = 128;

type Inbound = (DuplexStream, String);

#[derive(Debug, Default)]
struct Hub {
    listeners: HashMap<u64, mpsc::Sender<Inbound>>,
    next_port: u64,
}

impl Hub {
    fn fresh_port(&mut self) -> u64 {
        loop {
            self.next_port = self.next_port.wrapping_add(1).max(1);
            if !self.listeners.contains_key(&self.next_port) {
                return self.next_port;
            }
        }
    }
}

/// In-process [`Transport`] with the same semantics as TCP, for fast, deterministic tests.
///
/// Each `MemoryTransport::new()` is its own hub (clones share it), so parallel tests cannot
/// collide. Addresses are `"mem:N"`; `"mem:0"` picks a free port.
///
/// ```
/// # tokio_test_block_on(async {
/// use dfs_transport::{Listener, MemoryTransport, Transport};
/// use tokio::io::{AsyncReadExt, AsyncWriteExt};
///
/// let t = MemoryTransport::new();
/// let mut listener = t.listen("mem:0").await?;
/// let addr = listener.local_addr();
/// let mut a = t.dial(&addr).await?;
/// let (mut b, _remote) = listener.accept().await?;
/// a.write_all(b"hi").await?;
/// let mut buf = [0; 2];
/// b.read_exact(&mut buf).await?;
/// assert_eq!(&buf, b"hi");
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// # });
/// # fn tokio_test_block_on<F: std::future::Future>(f: F) -> F::Output {
/// #     tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(f)
/// # }
/// ```
#[derive(Debug, Clone, Default)]
pub struct MemoryTransport {
    hub: Arc<Mutex<Hub>>,
}

impl MemoryTransport {
    /// A transport with a fresh, private hub.
    pub fn new() -> Self {
        Self::default()
    }

    fn hub(&self) -> std::sync::MutexGuard<'_, Hub> {
        self.hub.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

fn parse_mem_addr(addr: &str) -> Result<u64> {
    let invalid = |reason: &str| TransportError::InvalidAddress {
        addr: addr.to_owned(),
        reason: reason.to_owned(),
    };
    let port = addr
        .strip_prefix("mem:")
        .ok_or_else(|| invalid("memory addresses look like \"mem:N\""))?;
    port.parse::<u64>()
        .map_err(|_| invalid("the port after \"mem:\" is not a number"))
}

/// A bound in-memory listener; dropping it frees its port.
#[derive(Debug)]
pub struct MemoryListener {
    port: u64,
    rx: mpsc::Receiver<Inbound>,
    hub: Arc<Mutex<Hub>>,
}

impl Drop for MemoryListener {
    fn drop(&mut self) {
        let mut hub = self.hub.lock().unwrap_or_else(PoisonError::into_inner);
        hub.listeners.remove(&self.port);
    }
}

impl Transport for MemoryTransport {
    type Stream = DuplexStream;
    type Listener = MemoryListener;

    fn listen(&self, addr: &str) -> impl Future<Output = Result<Self::Listener>> + Send {
        let result = parse_mem_addr(addr).and_then(|wanted| {
            let mut hub = self.hub();
            let port = if wanted == 0 {
                hub.fresh_port()
            } else if hub.listeners.contains_key(&wanted) {
                return Err(TransportError::io(
                    "binding a memory listener",
                    std::io::Error::from(std::io::ErrorKind::AddrInUse),
                ));
            } else {
                wanted
            };
            let (tx, rx) = mpsc::channel(MEMORY_BACKLOG);
            hub.listeners.insert(port, tx);
            Ok(MemoryListener {
                port,
                rx,
                hub: Arc::clone(&self.hub),
            })
        });
        std::future::ready(result)
    }

    fn dial(&self, addr: &str) -> impl Future<Output = Result<Self::Stream>> + Send {
        let found = parse_mem_addr(addr).and_then(|port| {
            let mut hub = self.hub();
            let tx = hub.listeners.get(&port).cloned().ok_or_else(|| {
                TransportError::io(
                    "dialling a memory address",
                    std::io::Error::from(std::io::ErrorKind::ConnectionRefused),
                )
            })?;
            let local_port = hub.fresh_port();
            Ok((tx, local_port))
        });
        async move {
            let (tx, local_port) = found?;
            let (ours, theirs) = tokio::io::duplex(MEMORY_PIPE_BUFFER);
            tx.send((theirs, format!("mem:{local_port}")))
                .await
                .map_err(|_| {
                    TransportError::io(
                        "dialling a memory address",
                        std::io::Error::from(std::io::ErrorKind::ConnectionRefused),
                    )
                })?;
            Ok(ours)
        }
    }
}

impl Listener for MemoryListener {
    type Stream = DuplexStream;

    async fn accept(&mut self) -> Result<(DuplexStream, String)> {
        self.rx.recv().await.ok_or(TransportError::Closed)
    }

    fn local_addr(&self) -> String {
        format!("mem:{}", self.port)
    }
}
