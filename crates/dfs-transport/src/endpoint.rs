//! [`Endpoint`]: handshakes, one control connection per peer, events, substreams — written once
//! over any [`Transport`].

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::sync::{Notify, mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use crate::conn::{Established, FrameReader, FrameWriter, Local, handshake, next_frame};
use crate::error::{Result, TransportError};
use crate::identity::{NetworkSecret, NodeId};
use crate::substream::Substream;
use crate::transport::{Listener, Transport};
use crate::wire::{ConnKind, FrameKind, MAX_ADDR_LEN, TAG_LEN};

/// Welcome status: accepted.
const WELCOME_OK: u8 = 0;
/// Welcome status: refused, a preferred connection between the two nodes exists.
const WELCOME_DUPLICATE: u8 = 1;
/// Welcome status: refused for another reason (text follows).
const WELCOME_REFUSED: u8 = 2;
/// Close reason: the sender is done.
const CLOSE_DONE: u8 = 0;
/// Close reason: this connection was replaced by another between the same two nodes.
const CLOSE_SUPERSEDED: u8 = 1;

/// Configuration of an [`Endpoint`]; `EndpointConfig::new(node_id)` has sensible defaults.
///
/// ```
/// use std::time::Duration;
/// use dfs_transport::{EndpointConfig, NetworkSecret, NodeId};
/// let config = EndpointConfig::new(NodeId::random())
///     .secret(Some(NetworkSecret::generate()))
///     .max_frame_len(1 << 20)
///     .idle_timeout(Duration::from_secs(30));
/// # let _ = config;
/// ```
#[derive(Debug, Clone)]
pub struct EndpointConfig {
    node_id: NodeId,
    secret: Option<NetworkSecret>,
    advertise_addr: Option<String>,
    max_frame_len: usize,
    data_frame_len: usize,
    handshake_timeout: Duration,
    idle_timeout: Duration,
    keepalive_interval: Duration,
    close_timeout: Duration,
    send_queue: usize,
    event_queue: usize,
    max_pending_handshakes: usize,
    max_inbound_substreams: usize,
    max_peers: usize,
}

impl EndpointConfig {
    /// Defaults: no secret, 1 MiB max frame, 1 MiB data frames, 10 s handshake timeout,
    /// 60 s idle timeout with a keepalive every 15 s, 10 s to drain on close.
    pub fn new(node_id: NodeId) -> Self {
        Self {
            node_id,
            secret: None,
            advertise_addr: None,
            max_frame_len: 1 << 20,
            data_frame_len: 1 << 20,
            handshake_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
            keepalive_interval: Duration::from_secs(15),
            close_timeout: Duration::from_secs(10),
            send_queue: 256,
            event_queue: 1024,
            max_pending_handshakes: 256,
            max_inbound_substreams: 256,
            max_peers: 1024,
        }
    }

    /// The network secret: only nodes with the same secret can connect. `None` (the default)
    /// accepts only nodes without one.
    pub fn secret(mut self, secret: Option<NetworkSecret>) -> Self {
        self.secret = secret;
        self
    }

    /// The address peers should dial us back on (defaults to the listener's bound address;
    /// set it when binding a wildcard address like `0.0.0.0:7000`).
    pub fn advertise_addr(mut self, addr: impl Into<String>) -> Self {
        self.advertise_addr = Some(addr.into());
        self
    }

    /// Largest frame payload we accept (checked before allocating). Default 1 MiB; at least
    /// 1 KiB.
    pub fn max_frame_len(mut self, len: usize) -> Self {
        self.max_frame_len = len;
        self
    }

    /// Size of the data frames bodies are sent in (capped by the remote's maximum).
    /// Default 1 MiB: on loopback, 1 MiB frames move a body ~1.6x faster than 256 KiB ones
    /// (fewer tag computations and wakeups; see `benches/README.md`), and a receiver holds
    /// one maximum-size frame either way.
    pub fn data_frame_len(mut self, len: usize) -> Self {
        self.data_frame_len = len;
        self
    }

    /// Deadline for dialling plus the whole handshake. Default 10 s.
    pub fn handshake_timeout(mut self, t: Duration) -> Self {
        self.handshake_timeout = t;
        self
    }

    /// A control connection on which nothing arrives for this long is dropped as departed; a
    /// substream read or write that makes no progress for this long fails. Default 60 s.
    pub fn idle_timeout(mut self, t: Duration) -> Self {
        self.idle_timeout = t;
        self
    }

    /// How often an otherwise quiet control connection sends a keepalive. Default 15 s; must
    /// be below the idle timeout.
    pub fn keepalive_interval(mut self, t: Duration) -> Self {
        self.keepalive_interval = t;
        self
    }

    /// How long [`Endpoint::close`] waits for queued messages to drain. Default 10 s.
    pub fn close_timeout(mut self, t: Duration) -> Self {
        self.close_timeout = t;
        self
    }

    /// Messages queued per peer before [`Peer::send`] waits. Default 256.
    pub fn send_queue(mut self, n: usize) -> Self {
        self.send_queue = n;
        self
    }

    /// Events queued before the connections producing them wait. Default 1024.
    pub fn event_queue(mut self, n: usize) -> Self {
        self.event_queue = n;
        self
    }

    /// Inbound connections allowed to be in their handshake at once; more are dropped at
    /// once (each pending one ends by the handshake timeout at the latest). Default 256.
    pub fn max_pending_handshakes(mut self, n: usize) -> Self {
        self.max_pending_handshakes = n;
        self
    }

    /// Inbound substreams open at once (welcomed, and not yet dropped by the application);
    /// more are refused at their welcome (the dialler gets [`TransportError::Rejected`]).
    /// Bounds the connections, tasks and frame buffers remote nodes can make this endpoint
    /// hold. Default 256.
    ///
    /// ```
    /// use dfs_transport::{EndpointConfig, NodeId};
    /// let config = EndpointConfig::new(NodeId::random()).max_inbound_substreams(64);
    /// # let _ = config;
    /// ```
    pub fn max_inbound_substreams(mut self, n: usize) -> Self {
        self.max_inbound_substreams = n;
        self
    }

    /// Nodes connected at once; a control connection from one more node is refused at its
    /// welcome (the dialler gets [`TransportError::Rejected`]). Without a network secret
    /// anyone can connect under fresh node ids: this bounds what that costs. Default 1024.
    ///
    /// ```
    /// use dfs_transport::{EndpointConfig, NodeId};
    /// let config = EndpointConfig::new(NodeId::random()).max_peers(64);
    /// # let _ = config;
    /// ```
    pub fn max_peers(mut self, n: usize) -> Self {
        self.max_peers = n;
        self
    }

    /// The node id.
    pub fn node_id(&self) -> NodeId {
        self.node_id
    }

    fn validate(&self) -> Result<()> {
        let bad = |reason: &str| {
            Err(TransportError::Config {
                reason: reason.to_owned(),
            })
        };
        if self.max_frame_len < 1024 || self.max_frame_len > (u32::MAX as usize) - 1 - TAG_LEN {
            return bad("max_frame_len must be between 1 KiB and 4 GiB - 34");
        }
        if self.data_frame_len == 0 || self.data_frame_len > self.max_frame_len {
            return bad("data_frame_len must be between 1 and max_frame_len");
        }
        if self.keepalive_interval.is_zero() || self.keepalive_interval >= self.idle_timeout {
            return bad("keepalive_interval must be non-zero and below idle_timeout");
        }
        if self.handshake_timeout.is_zero() {
            return bad("handshake_timeout must be non-zero");
        }
        if self.send_queue == 0
            || self.event_queue == 0
            || self.max_pending_handshakes == 0
            || self.max_inbound_substreams == 0
            || self.max_peers == 0
        {
            return bad("queue sizes and connection limits must be non-zero");
        }
        if let Some(addr) = &self.advertise_addr {
            check_advertise_addr(addr)?;
        }
        Ok(())
    }
}

/// The handshake carries at most [`MAX_ADDR_LEN`] bytes of address: a longer one is a
/// configuration error, never a truncated (or split mid-character) address.
fn check_advertise_addr(addr: &str) -> Result<()> {
    if addr.len() > MAX_ADDR_LEN {
        return Err(TransportError::Config {
            reason: format!(
                "the advertised address is {} bytes (at most {MAX_ADDR_LEN})",
                addr.len()
            ),
        });
    }
    Ok(())
}

/// Addresses remembered per node for [`Endpoint::connect`] (the first ones found win).
const MAX_ALIASES: usize = 8;

/// Adds `new` addresses to a node's verified `aliases`, without duplicates, up to
/// [`MAX_ALIASES`].
fn add_aliases(aliases: &mut Vec<Arc<str>>, new: impl IntoIterator<Item = Arc<str>>) {
    for addr in new {
        if aliases.len() < MAX_ALIASES && !aliases.contains(&addr) {
            aliases.push(addr);
        }
    }
}

/// A small control message received from a peer; decode it with [`Payload::decode`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Payload(Bytes);

impl Payload {
    /// Decode with postcard.
    ///
    /// # Errors
    /// [`TransportError::Decode`] if the bytes are not a valid `M`.
    pub fn decode<M: DeserializeOwned>(&self) -> Result<M> {
        postcard::from_bytes(&self.0).map_err(|source| TransportError::Decode {
            op: "decode",
            source,
        })
    }

    /// The raw postcard bytes.
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    /// The raw postcard bytes, owned.
    pub fn into_bytes(self) -> Bytes {
        self.0
    }
}

/// Something that happened on an [`Endpoint`].
#[derive(Debug)]
#[non_exhaustive]
#[allow(clippy::large_enum_variant)] // Events are moved a few times each; boxing costs more.
pub enum Event {
    /// A node connected (inbound or outbound). Emitted once per node while it stays connected.
    PeerConnected(Peer),
    /// A node's control connection ended: `reason` is `None` for a clean close.
    PeerDisconnected {
        /// The node.
        id: NodeId,
        /// Why, unless it closed cleanly.
        reason: Option<TransportError>,
    },
    /// A small control message.
    Message {
        /// The sender.
        from: Peer,
        /// The message.
        message: Payload,
    },
    /// The remote opened an exchange with [`Peer::open_stream`].
    Stream {
        /// The remote.
        from: Peer,
        /// The exchange.
        stream: Substream,
    },
}

/// The endpoint's events; `None` after [`Endpoint::close`] once everything is delivered.
///
/// Also a [`futures::Stream`] of [`Event`].
#[derive(Debug)]
pub struct Events {
    rx: mpsc::Receiver<Event>,
}

impl Events {
    /// The next event.
    pub async fn next(&mut self) -> Option<Event> {
        self.rx.recv().await
    }
}

impl futures::Stream for Events {
    type Item = Event;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Event>> {
        self.rx.poll_recv(cx)
    }
}

enum Cmd {
    Frame(FrameKind, Bytes),
    Close(u8),
}

/// What a [`Peer`] handle needs from its endpoint, type-erased over the transport.
trait PeerHost: Send + Sync + 'static {
    fn sender(&self, id: &NodeId) -> Option<(mpsc::Sender<Cmd>, usize)>;
    fn open(
        self: Arc<Self>,
        id: NodeId,
        addr: Arc<str>,
    ) -> Pin<Box<dyn Future<Output = Result<Substream>> + Send>>;
    fn max_frame_len(&self) -> usize;
}

/// A handle to one remote node; cheap to clone, usable from many tasks at once.
///
/// It names the node, not one connection: after a reconnect, old handles work again.
#[derive(Clone)]
pub struct Peer {
    id: NodeId,
    addr: Arc<str>,
    host: Arc<dyn PeerHost>,
}

impl std::fmt::Debug for Peer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Peer")
            .field("id", &self.id)
            .field("addr", &self.addr)
            .finish_non_exhaustive()
    }
}

impl Peer {
    /// The node's id (authenticated when a network secret is configured).
    pub fn id(&self) -> NodeId {
        self.id
    }

    /// The address the node can be dialled back on (from its handshake).
    pub fn addr(&self) -> &str {
        &self.addr
    }

    /// Queue a small control message on the control connection. `Ok` means queued: messages
    /// to one peer arrive in order, and [`Endpoint::close`] drains the queue. Waits while the
    /// queue is full (backpressure).
    ///
    /// # Errors
    /// [`TransportError::Closed`] if the node is not connected; [`TransportError::FrameTooLarge`]
    /// above the maximum frame length (use a substream body for bulk data).
    pub async fn send<M: Serialize>(&self, msg: &M) -> Result<()> {
        let bytes = postcard::to_stdvec(msg).map_err(|source| TransportError::Decode {
            op: "encode",
            source,
        })?;
        let bytes = Bytes::from(bytes);
        // A second try covers a send that caught the queue of a connection being replaced
        // (simultaneous dials): the node is still connected, on the new one.
        for _ in 0..2 {
            let (tx, remote_max) = self.host.sender(&self.id).ok_or(TransportError::Closed)?;
            let max = remote_max.min(self.host.max_frame_len());
            if bytes.len() > max {
                return Err(TransportError::FrameTooLarge {
                    len: bytes.len() as u64,
                    max,
                });
            }
            if tx
                .send(Cmd::Frame(FrameKind::Message, bytes.clone()))
                .await
                .is_ok()
            {
                return Ok(());
            }
        }
        Err(TransportError::Closed)
    }

    /// Open a new exchange with this node on its own authenticated connection.
    pub async fn open_stream(&self) -> Result<Substream> {
        Arc::clone(&self.host)
            .open(self.id, Arc::clone(&self.addr))
            .await
    }

    /// Whether a control connection to the node is up.
    pub fn is_connected(&self) -> bool {
        self.host.sender(&self.id).is_some()
    }
}

struct ConnEntry {
    conn_id: u64,
    /// The address the node advertised (unverified: any node can claim any address).
    addr: Arc<str>,
    /// Addresses we dialled and found this node at (by its handshake), kept across
    /// replaced connections: the only addresses [`Endpoint::connect`] matches to an existing
    /// connection. At most [`MAX_ALIASES`].
    dialed: Vec<Arc<str>>,
    we_dialed: bool,
    remote_max: usize,
    tx: mpsc::Sender<Cmd>,
    cancel: CancellationToken,
    done: mpsc::Receiver<()>,
}

/// A node whose control connection the remote superseded, while the replacement (already
/// registered by the remote) is on its way to us. The node stays connected meanwhile:
/// messages sent to it wait in `tx` and go out on the replacement, in order.
struct Handover {
    addr: Arc<str>,
    dialed: Vec<Arc<str>>,
    remote_max: usize,
    tx: mpsc::Sender<Cmd>,
    rx: mpsc::Receiver<Cmd>,
}

#[derive(Default)]
struct Table {
    peers: HashMap<NodeId, ConnEntry>,
    /// Nodes whose connection was superseded, waiting for the replacement to register.
    superseded: HashMap<NodeId, Handover>,
    closed: bool,
}

enum Registered {
    New,
    Replaced(ConnEntry),
    Kept,
    Closed,
    /// An inbound connection from a new node while `max_peers` nodes are connected.
    Full,
}

struct Shared<T: Transport> {
    transport: T,
    config: EndpointConfig,
    local_addr: String,
    advertise: String,
    table: Mutex<Table>,
    registered: Notify,
    events: Mutex<Option<mpsc::Sender<Event>>>,
    shutdown: CancellationToken,
    next_conn: AtomicU64,
    dial_locks: DialLocks,
    /// Permits for open inbound substreams (`EndpointConfig::max_inbound_substreams`).
    substream_slots: Arc<tokio::sync::Semaphore>,
}

/// An authenticated endpoint: listens, dials, keeps one control connection per remote node,
/// and yields [`Events`]. Cheap to clone.
///
/// ```
/// # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
/// use dfs_transport::{Endpoint, EndpointConfig, Event, MemoryTransport, NodeId};
///
/// let net = MemoryTransport::new();
/// let (a, _a_events) = Endpoint::bind(net.clone(), "mem:0", EndpointConfig::new(NodeId::random())).await?;
/// let (b, mut b_events) = Endpoint::bind(net, "mem:0", EndpointConfig::new(NodeId::random())).await?;
///
/// let peer = a.connect(&b.local_addr()).await?;
/// peer.send(&("hello", 42u32)).await?;
/// loop {
///     match b_events.next().await {
///         Some(Event::Message { from, message }) => {
///             assert_eq!(from.id(), a.node_id());
///             assert_eq!(message.decode::<(String, u32)>()?, ("hello".to_owned(), 42));
///             break;
///         }
///         Some(_) => continue,
///         None => unreachable!(),
///     }
/// }
/// a.close().await;
/// b.close().await;
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// # });
/// ```
///
/// Call [`Endpoint::close`] to shut down gracefully. Dropping the last `Endpoint` handle
/// without it tears everything down abruptly (listener, control connections, event stream).
pub struct Endpoint<T: Transport> {
    shared: Arc<Shared<T>>,
    _teardown: Arc<Teardown>,
}

impl<T: Transport> Clone for Endpoint<T> {
    fn clone(&self) -> Self {
        Self {
            shared: Arc::clone(&self.shared),
            _teardown: Arc::clone(&self._teardown),
        }
    }
}

/// Runs when the last [`Endpoint`] handle is dropped.
struct Teardown(Box<dyn Fn() + Send + Sync>);

impl Drop for Teardown {
    fn drop(&mut self) {
        (self.0)();
    }
}

impl<T: Transport> std::fmt::Debug for Endpoint<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Endpoint")
            .field("node_id", &self.shared.config.node_id)
            .field("local_addr", &self.shared.local_addr)
            .finish_non_exhaustive()
    }
}

fn lock<X>(m: &Mutex<X>) -> MutexGuard<'_, X> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl<T: Transport> Endpoint<T> {
    /// Listen on `listen_addr` (port 0 picks one) and start accepting.
    ///
    /// # Errors
    /// An invalid configuration, or the transport failing to listen.
    pub async fn bind(
        transport: T,
        listen_addr: &str,
        config: EndpointConfig,
    ) -> Result<(Self, Events)> {
        config.validate()?;
        let listener = transport.listen(listen_addr).await?;
        let local_addr = listener.local_addr();
        let advertise = config
            .advertise_addr
            .clone()
            .unwrap_or_else(|| local_addr.clone());
        check_advertise_addr(&advertise)?;
        let (events_tx, rx) = mpsc::channel(config.event_queue);
        let substream_slots = Arc::new(tokio::sync::Semaphore::new(config.max_inbound_substreams));
        let shared = Arc::new(Shared {
            transport,
            config,
            local_addr,
            advertise,
            table: Mutex::new(Table::default()),
            registered: Notify::new(),
            events: Mutex::new(Some(events_tx)),
            shutdown: CancellationToken::new(),
            next_conn: AtomicU64::new(1),
            dial_locks: Mutex::new(HashMap::new()),
            substream_slots,
        });
        tokio::spawn(accept_loop(Arc::clone(&shared), listener));
        let weak = Arc::downgrade(&shared);
        let teardown = Teardown(Box::new(move || {
            if let Some(shared) = weak.upgrade() {
                shared.abort_all();
            }
        }));
        Ok((
            Self {
                shared,
                _teardown: Arc::new(teardown),
            },
            Events { rx },
        ))
    }

    /// The bound address (what [`Endpoint::connect`] on another node should dial).
    pub fn local_addr(&self) -> String {
        self.shared.local_addr.clone()
    }

    /// The address advertised to peers in the handshake.
    pub fn advertise_addr(&self) -> &str {
        &self.shared.advertise
    }

    /// Our node id.
    pub fn node_id(&self) -> NodeId {
        self.shared.config.node_id
    }

    /// Dial and handshake, or return the existing connection to the node at `addr`: one we
    /// dialled at that address before (a node's advertised address is not trusted for this,
    /// since any node can claim any address; a node connected to us only by its own dial is
    /// dialled once, and the duplicate connection resolved as below).
    ///
    /// At most one control connection exists per remote node, even when both sides dial at
    /// once: the connection dialled by the node with the smaller id wins on both sides.
    ///
    /// # Errors
    /// [`TransportError::SelfDial`] for our own address or id; dial, handshake,
    /// authentication and timeout errors.
    pub async fn connect(&self, addr: &str) -> Result<Peer> {
        let shared = &self.shared;
        if addr == shared.local_addr || addr == shared.advertise {
            return Err(TransportError::SelfDial {
                addr: addr.to_owned(),
            });
        }
        if let Some(p) = shared.peer_by_addr(addr) {
            return Ok(p);
        }
        let slot = DialSlot::take(&shared.dial_locks, addr);
        let _serialised = slot.lock.lock().await;
        match shared.peer_by_addr(addr) {
            Some(p) => Ok(p),
            None => Arc::clone(shared).dial_control(addr).await,
        }
    }

    /// The connected node with this id.
    pub fn peer(&self, id: &NodeId) -> Option<Peer> {
        let addr = {
            let table = lock(&self.shared.table);
            match table.peers.get(id) {
                Some(e) => Arc::clone(&e.addr),
                None => Arc::clone(&table.superseded.get(id)?.addr),
            }
        };
        Some(self.shared.peer_handle(*id, addr))
    }

    /// All connected nodes.
    pub fn peers(&self) -> Vec<Peer> {
        let list: Vec<(NodeId, Arc<str>)> = {
            let table = lock(&self.shared.table);
            let live = table.peers.iter().map(|(id, e)| (*id, Arc::clone(&e.addr)));
            let handed_over = table
                .superseded
                .iter()
                .map(|(id, h)| (*id, Arc::clone(&h.addr)));
            live.chain(handed_over).collect()
        };
        list.into_iter()
            .map(|(id, addr)| self.shared.peer_handle(id, addr))
            .collect()
    }

    /// Close the control connection to `id` gracefully (queued messages drain first) and
    /// report [`Event::PeerDisconnected`] with no reason. Returns whether it was connected.
    ///
    /// Use it to drop a misbehaving peer, e.g. one whose messages do not decode.
    /// Messages still arriving on the connection are dropped, and it is closed at the latest
    /// one idle timeout later, even if the peer ignores the close frame.
    pub async fn disconnect(&self, id: &NodeId) -> bool {
        let (entry, handover) = {
            let mut table = lock(&self.shared.table);
            match table.peers.remove(id) {
                Some(entry) => (Some(entry), None),
                None => (None, table.superseded.remove(id)),
            }
        };
        if let Some(entry) = entry {
            let _ = entry.tx.send(Cmd::Close(CLOSE_DONE)).await;
        } else if handover.is_none() {
            return false;
        }
        self.shared
            .emit(Event::PeerDisconnected {
                id: *id,
                reason: None,
            })
            .await;
        true
    }

    /// Close gracefully: stop accepting, let every control connection drain its queued
    /// messages and send a close frame (bounded by the close timeout), then end the event
    /// stream. Each connection keeps reading in the background until the remote closes its
    /// side too (bounded by the idle timeout), so nothing we sent is lost to a TCP reset.
    /// Substreams already handed out are not affected.
    pub async fn close(&self) {
        let shared = &self.shared;
        shared.shutdown.cancel();
        let (entries, handed_over): (Vec<(NodeId, ConnEntry)>, Vec<NodeId>) = {
            let mut table = lock(&shared.table);
            table.closed = true;
            let handed_over = table.superseded.drain().map(|(id, _)| id).collect();
            (table.peers.drain().collect(), handed_over)
        };
        let deadline = tokio::time::Instant::now() + shared.config.close_timeout;
        let mut ids = handed_over;
        let mut waiting = Vec::with_capacity(entries.len());
        for (id, entry) in entries {
            ids.push(id);
            let ConnEntry {
                tx, cancel, done, ..
            } = entry;
            // The queue is drained before the close frame goes out.
            let _ = tokio::time::timeout_at(deadline, tx.send(Cmd::Close(CLOSE_DONE))).await;
            drop(tx);
            waiting.push((cancel, done));
        }
        for (cancel, mut done) in waiting {
            if tokio::time::timeout_at(deadline, done.recv())
                .await
                .is_err()
            {
                cancel.cancel();
            }
        }
        for id in ids {
            shared
                .emit(Event::PeerDisconnected { id, reason: None })
                .await;
        }
        lock(&shared.events).take();
    }
}

impl<T: Transport> Shared<T> {
    /// Abrupt teardown (the last handle was dropped without `close`).
    fn abort_all(&self) {
        self.shutdown.cancel();
        let entries: Vec<ConnEntry> = {
            let mut table = lock(&self.table);
            table.closed = true;
            table.superseded.clear();
            table.peers.drain().map(|(_, e)| e).collect()
        };
        for entry in entries {
            entry.cancel.cancel();
        }
        lock(&self.events).take();
    }

    fn local(&self) -> Local<'_> {
        Local {
            node_id: self.config.node_id,
            secret: self.config.secret.as_ref(),
            addr: &self.advertise,
            max_frame_len: self.config.max_frame_len,
        }
    }

    fn peer_handle(self: &Arc<Self>, id: NodeId, addr: Arc<str>) -> Peer {
        Peer {
            id,
            addr,
            host: Arc::clone(self) as Arc<dyn PeerHost>,
        }
    }

    /// The connected node we found at `addr` when we dialled it. A node's advertised address
    /// is not matched: any node can claim any address, and `connect(addr)` must reach the
    /// node that answers there.
    fn peer_by_addr(self: &Arc<Self>, addr: &str) -> Option<Peer> {
        let found = {
            let table = lock(&self.table);
            let live = table.peers.iter().map(|(id, e)| (id, &e.addr, &e.dialed));
            let handed_over = table
                .superseded
                .iter()
                .map(|(id, h)| (id, &h.addr, &h.dialed));
            live.chain(handed_over)
                .find(|(_, _, dialed)| dialed.iter().any(|d| &**d == addr))
                .map(|(id, a, _)| (*id, Arc::clone(a)))?
        };
        Some(self.peer_handle(found.0, found.1))
    }

    async fn emit(&self, event: Event) {
        let tx = lock(&self.events).clone();
        if let Some(tx) = tx {
            // A dropped `Events` means nobody listens: the event is dropped too.
            let _ = tx.send(event).await;
        }
    }

    fn with_timeout<'a, F, X>(
        &self,
        what: &'static str,
        f: F,
    ) -> impl Future<Output = Result<X>> + 'a
    where
        F: Future<Output = Result<X>> + 'a,
    {
        let after = self.config.handshake_timeout;
        async move {
            match tokio::time::timeout(after, f).await {
                Ok(r) => r,
                Err(_) => Err(TransportError::Timeout { what, after }),
            }
        }
    }

    /// Dial, handshake and read the welcome: the connection, or why the remote refused it
    /// (with its node id).
    async fn dial_established(&self, addr: &str, kind: ConnKind) -> Result<Welcome> {
        let local = self.local();
        self.with_timeout("dialling and handshaking", async {
            let stream = self.transport.dial(addr).await?;
            let mut est = handshake(stream, &local, kind, true).await?;
            let id = est.remote.node_id;
            if id == self.config.node_id {
                return Err(TransportError::SelfDial {
                    addr: addr.to_owned(),
                });
            }
            let welcome = next_frame(&mut est.reader, self.config.handshake_timeout)
                .await?
                .ok_or_else(|| TransportError::Rejected {
                    reason: "the remote closed the connection after the handshake".to_owned(),
                })?;
            if welcome.kind != FrameKind::Welcome || welcome.payload.is_empty() {
                return Err(TransportError::protocol("expected a welcome frame"));
            }
            Ok(match welcome.payload[0] {
                WELCOME_OK => Welcome::Accepted(Box::new(est)),
                WELCOME_DUPLICATE => Welcome::Duplicate(id),
                _ => Welcome::Refused(TransportError::Rejected {
                    reason: String::from_utf8_lossy(&welcome.payload[1..]).into_owned(),
                }),
            })
        })
        .await
    }

    async fn dial_control(self: Arc<Self>, addr: &str) -> Result<Peer> {
        let est = match self.dial_established(addr, ConnKind::Control).await {
            Ok(Welcome::Accepted(est)) => *est,
            Ok(Welcome::Duplicate(id)) => {
                // The remote keeps a connection it prefers, which is registered here too, or
                // is about to be.
                if let Some(p) = self.wait_for_peer(&id).await {
                    // That node answered at `addr`: later `connect(addr)` calls find it
                    // without a dial.
                    if let Some(entry) = lock(&self.table).peers.get_mut(&id) {
                        add_aliases(&mut entry.dialed, [Arc::from(addr)]);
                    }
                    return Ok(p);
                }
                let e = duplicate_rejection();
                debug!(%addr, error = %e, "dial refused");
                return Err(e);
            }
            Ok(Welcome::Refused(e)) => {
                debug!(%addr, error = %e, "dial refused");
                return Err(e);
            }
            Err(e) => {
                debug!(%addr, error = %e, "dial failed");
                return Err(e);
            }
        };
        let id = est.remote.node_id;
        let peer_addr: Arc<str> = Arc::from(est.remote.addr.as_str());
        match self.install(est, Some(Arc::from(addr))).await {
            Some(()) => Ok(self.peer_handle(id, peer_addr)),
            None => {
                // We keep an existing connection to that node.
                let addr = lock(&self.table)
                    .peers
                    .get(&id)
                    .map(|e| Arc::clone(&e.addr));
                addr.map(|a| self.peer_handle(id, a))
                    .ok_or(TransportError::Closed)
            }
        }
    }

    async fn wait_for_peer(self: &Arc<Self>, id: &NodeId) -> Option<Peer> {
        let deadline = tokio::time::Instant::now() + self.config.handshake_timeout;
        loop {
            let notified = self.registered.notified();
            let addr = lock(&self.table).peers.get(id).map(|e| Arc::clone(&e.addr));
            if let Some(addr) = addr {
                return Some(self.peer_handle(*id, addr));
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return None;
            }
        }
    }

    /// Register a control connection and start its tasks. `None` if an existing connection
    /// was kept instead (the new one is closed).
    async fn install(
        self: &Arc<Self>,
        mut est: Established,
        dialed: Option<Arc<str>>,
    ) -> Option<()> {
        let id = est.remote.node_id;
        let we_dialed = dialed.is_some();
        let conn_id = self.next_conn.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = mpsc::channel(self.config.send_queue);
        let (done_tx, done_rx) = mpsc::channel(1);
        let cancel = CancellationToken::new();
        let entry = ConnEntry {
            conn_id,
            addr: Arc::from(est.remote.addr.as_str()),
            dialed: dialed.into_iter().collect(),
            we_dialed,
            remote_max: est.writer.remote_max,
            tx,
            cancel: cancel.clone(),
            done: done_rx,
        };
        let (decision, announce, handover) = self.register(id, entry);
        // After a handover, this connection's writer sends what was queued meanwhile.
        let rx = handover.unwrap_or(rx);
        match decision {
            Registered::Kept | Registered::Closed | Registered::Full => {
                if !we_dialed {
                    let status = match decision {
                        Registered::Kept => vec![WELCOME_DUPLICATE],
                        Registered::Full => {
                            warn!(peer = %id, "too many peers: refusing a control connection");
                            let mut v = vec![WELCOME_REFUSED];
                            v.extend_from_slice(b"too many peers");
                            v
                        }
                        _ => {
                            let mut v = vec![WELCOME_REFUSED];
                            v.extend_from_slice(b"the endpoint is closing");
                            v
                        }
                    };
                    let _ = self
                        .with_timeout("refusing", async {
                            est.writer.write_frame(FrameKind::Welcome, &status).await?;
                            est.writer.flush().await?;
                            est.writer.shutdown().await
                        })
                        .await;
                } else {
                    let _ = self
                        .with_timeout("closing", async {
                            est.writer
                                .write_frame(FrameKind::Close, &[CLOSE_SUPERSEDED])
                                .await?;
                            est.writer.shutdown().await
                        })
                        .await;
                }
                return None;
            }
            Registered::Replaced(old) => {
                debug!(peer = %id, "connection superseded by a newer or preferred one");
                let tx = old.tx;
                tokio::spawn(async move {
                    let _ = tx.send(Cmd::Close(CLOSE_SUPERSEDED)).await;
                });
            }
            Registered::New => {}
        }
        if !we_dialed {
            let r = self
                .with_timeout("welcoming", async {
                    est.writer
                        .write_frame(FrameKind::Welcome, &[WELCOME_OK])
                        .await?;
                    est.writer.flush().await
                })
                .await;
            if let Err(e) = r {
                // The reader task will notice the dead connection and report it.
                debug!(peer = %id, error = %e, "could not send the welcome");
            }
        }
        let peer = self.peer_handle(id, Arc::from(est.remote.addr.as_str()));
        let (closing_tx, closing_rx) = oneshot::channel();
        tokio::spawn(run_writer(
            est.writer,
            rx,
            cancel.clone(),
            self.config.keepalive_interval,
            self.config.idle_timeout,
            WriterSignals {
                _done: done_tx,
                closing: closing_tx,
            },
            id,
        ));
        tokio::spawn(run_reader(
            Arc::clone(self),
            est.reader,
            conn_id,
            peer.clone(),
            cancel,
            closing_rx,
        ));
        if announce {
            self.emit(Event::PeerConnected(peer)).await;
        }
        Some(())
    }

    /// Decide whether a new control connection to `id` is kept (see `ARCHITECTURE.md`):
    /// the connection dialled by the smaller node id is preferred; between two connections
    /// dialled by the same side, the newer wins. Returns whether to announce the peer, and
    /// the queue of a handover this connection completes (its writer must read that one).
    fn register(
        &self,
        id: NodeId,
        mut entry: ConnEntry,
    ) -> (Registered, bool, Option<mpsc::Receiver<Cmd>>) {
        let mut table = lock(&self.table);
        if table.closed {
            return (Registered::Closed, false, None);
        }
        // Checked again here, under the lock that registers: concurrent handshakes all
        // passed the early check in `accept`.
        if !entry.we_dialed
            && table.peers.len() >= self.config.max_peers
            && !table.peers.contains_key(&id)
            && !table.superseded.contains_key(&id)
        {
            return (Registered::Full, false, None);
        }
        let mut handover = table.superseded.remove(&id);
        let was_superseded = handover.is_some();
        let decision = match table.peers.get(&id) {
            None => {
                // The node stayed connected through the handover: keep its queue.
                let queue = handover.take().map(|h| {
                    add_aliases(&mut entry.dialed, h.dialed);
                    entry.tx = h.tx;
                    h.rx
                });
                table.peers.insert(id, entry);
                drop(table);
                self.registered.notify_waiters();
                return (Registered::New, !was_superseded, queue);
            }
            Some(old) => {
                let local_is_smaller = self.config.node_id < id;
                let new_preferred = entry.we_dialed == local_is_smaller;
                if old.we_dialed == entry.we_dialed || new_preferred {
                    add_aliases(&mut entry.dialed, old.dialed.iter().cloned());
                    table
                        .peers
                        .insert(id, entry)
                        .map_or(Registered::New, Registered::Replaced)
                } else {
                    if let Some(old) = table.peers.get_mut(&id) {
                        add_aliases(&mut old.dialed, entry.dialed);
                    }
                    Registered::Kept
                }
            }
        };
        drop(table);
        self.registered.notify_waiters();
        let announce = matches!(decision, Registered::New) && !was_superseded;
        (decision, announce, None)
    }

    /// A control connection's reader ended.
    async fn connection_ended(self: &Arc<Self>, id: NodeId, conn_id: u64, result: Result<u8>) {
        let current = {
            let mut table = lock(&self.table);
            if table.peers.get(&id).is_some_and(|e| e.conn_id == conn_id) {
                let entry = table.peers.remove(&id);
                if let (Ok(CLOSE_SUPERSEDED), Some(e)) = (&result, &entry) {
                    // The node stays connected (see `Handover`) until the replacement
                    // registers or the handshake timeout passes.
                    let (tx, rx) = mpsc::channel(self.config.send_queue);
                    let handover = Handover {
                        addr: Arc::clone(&e.addr),
                        dialed: e.dialed.clone(),
                        remote_max: e.remote_max,
                        tx,
                        rx,
                    };
                    table.superseded.insert(id, handover);
                }
                entry
            } else {
                None
            }
        };
        if current.is_none() {
            return;
        }
        match result {
            Ok(CLOSE_SUPERSEDED) => {
                // The replacement is on its way (registered by the remote already); only if it
                // never arrives is this a departure.
                let deadline = tokio::time::Instant::now() + self.config.handshake_timeout;
                loop {
                    let notified = self.registered.notified();
                    if !lock(&self.table).superseded.contains_key(&id) {
                        return;
                    }
                    if tokio::time::timeout_at(deadline, notified).await.is_err() {
                        break;
                    }
                }
                let handover = lock(&self.table).superseded.remove(&id);
                if handover.is_some() {
                    self.emit(Event::PeerDisconnected { id, reason: None })
                        .await;
                }
            }
            Ok(_) => {
                debug!(peer = %id, "peer closed its connection");
                self.emit(Event::PeerDisconnected { id, reason: None })
                    .await;
            }
            Err(e) => {
                warn!(peer = %id, error = %e, "peer connection ended with an error");
                self.emit(Event::PeerDisconnected {
                    id,
                    reason: Some(e),
                })
                .await;
            }
        }
    }

    /// Answers an inbound connection with a refusing welcome carrying `reason`, and closes it.
    async fn refuse(&self, est: &mut Established, reason: &str) {
        let mut status = vec![WELCOME_REFUSED];
        status.extend_from_slice(reason.as_bytes());
        let _ = self
            .with_timeout("refusing", async {
                est.writer.write_frame(FrameKind::Welcome, &status).await?;
                est.writer.shutdown().await
            })
            .await;
    }

    async fn handle_inbound(
        self: Arc<Self>,
        stream: T::Stream,
        remote: String,
        slot: tokio::sync::OwnedSemaphorePermit,
    ) {
        let local = self.local();
        let result = self
            .with_timeout(
                "handshaking",
                handshake(stream, &local, ConnKind::Control, false),
            )
            .await;
        drop(slot);
        let mut est = match result {
            Ok(est) => est,
            Err(e) => {
                warn!(%remote, error = %e, "inbound handshake failed");
                return;
            }
        };
        let id = est.remote.node_id;
        if id == self.config.node_id {
            warn!(%remote, "refusing a connection from our own node id");
            self.refuse(&mut est, "same node id as the acceptor").await;
            return;
        }
        match est.remote.kind {
            ConnKind::Control => {
                let full = {
                    let table = lock(&self.table);
                    table.peers.len() >= self.config.max_peers && !table.peers.contains_key(&id)
                };
                if full {
                    warn!(%remote, peer = %id, "too many peers: refusing a control connection");
                    self.refuse(&mut est, "too many peers").await;
                    return;
                }
                let _ = self.install(est, None).await;
            }
            ConnKind::Substream => {
                let slot = Arc::clone(&self.substream_slots).try_acquire_owned();
                if self.shutdown.is_cancelled() || slot.is_err() {
                    let reason = if self.shutdown.is_cancelled() {
                        "the endpoint is closing"
                    } else {
                        warn!(peer = %id, "too many open substreams: refusing one");
                        "too many open substreams"
                    };
                    self.refuse(&mut est, reason).await;
                    return;
                }
                let r = self
                    .with_timeout("welcoming", async {
                        est.writer
                            .write_frame(FrameKind::Welcome, &[WELCOME_OK])
                            .await?;
                        est.writer.flush().await
                    })
                    .await;
                if let Err(e) = r {
                    debug!(peer = %id, error = %e, "could not welcome a substream");
                    return;
                }
                let from = self.peer_handle(id, Arc::from(est.remote.addr.as_str()));
                let stream = Substream::new(
                    id,
                    est.reader,
                    est.writer,
                    self.config.idle_timeout,
                    self.config.data_frame_len,
                    slot.ok(),
                );
                self.emit(Event::Stream { from, stream }).await;
            }
        }
    }
}

/// How the remote answered a dial once the handshake was done.
enum Welcome {
    /// The connection is accepted.
    Accepted(Box<Established>),
    /// The remote keeps another control connection with this node (the tie-break).
    Duplicate(NodeId),
    /// The remote refused the connection, for the reason given.
    Refused(TransportError),
}

fn duplicate_rejection() -> TransportError {
    TransportError::Rejected {
        reason: "the remote keeps another connection with us".to_owned(),
    }
}

type DialLocks = Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>;

/// One `connect` call's share of the per-address dial lock. The map entry goes when its last
/// user is done, also when a `connect` future is dropped mid-dial (a timeout or a `select!`).
struct DialSlot<'a> {
    locks: &'a DialLocks,
    addr: &'a str,
    lock: Arc<tokio::sync::Mutex<()>>,
}

impl<'a> DialSlot<'a> {
    fn take(locks: &'a DialLocks, addr: &'a str) -> Self {
        let lock = Arc::clone(lock(locks).entry(addr.to_owned()).or_default());
        DialSlot { locks, addr, lock }
    }
}

impl Drop for DialSlot<'_> {
    fn drop(&mut self) {
        let mut locks = lock(self.locks);
        // Only the map's reference and ours are left: nobody else dials this address.
        if Arc::strong_count(&self.lock) == 2 {
            locks.remove(self.addr);
        }
    }
}

impl<T: Transport> PeerHost for Shared<T> {
    fn sender(&self, id: &NodeId) -> Option<(mpsc::Sender<Cmd>, usize)> {
        let table = lock(&self.table);
        match table.peers.get(id) {
            Some(e) => Some((e.tx.clone(), e.remote_max)),
            None => table
                .superseded
                .get(id)
                .map(|h| (h.tx.clone(), h.remote_max)),
        }
    }

    fn open(
        self: Arc<Self>,
        id: NodeId,
        addr: Arc<str>,
    ) -> Pin<Box<dyn Future<Output = Result<Substream>> + Send>> {
        Box::pin(async move {
            if self.shutdown.is_cancelled() {
                return Err(TransportError::Closed);
            }
            let est = match self.dial_established(&addr, ConnKind::Substream).await? {
                Welcome::Accepted(est) => *est,
                Welcome::Duplicate(_) => return Err(duplicate_rejection()),
                Welcome::Refused(e) => return Err(e),
            };
            if est.remote.node_id != id {
                return Err(TransportError::WrongPeer {
                    expected: id,
                    got: est.remote.node_id,
                });
            }
            Ok(Substream::new(
                id,
                est.reader,
                est.writer,
                self.config.idle_timeout,
                self.config.data_frame_len,
                None,
            ))
        })
    }

    fn max_frame_len(&self) -> usize {
        self.config.max_frame_len
    }
}

async fn accept_loop<T: Transport>(shared: Arc<Shared<T>>, mut listener: T::Listener) {
    let slots = Arc::new(tokio::sync::Semaphore::new(
        shared.config.max_pending_handshakes,
    ));
    loop {
        let accepted = tokio::select! {
            _ = shared.shutdown.cancelled() => break,
            r = listener.accept() => r,
        };
        match accepted {
            Ok((stream, remote)) => {
                let Ok(slot) = Arc::clone(&slots).try_acquire_owned() else {
                    warn!(%remote, "too many pending handshakes: dropping an inbound connection");
                    continue;
                };
                let shared = Arc::clone(&shared);
                tokio::spawn(async move {
                    shared.handle_inbound(stream, remote, slot).await;
                });
            }
            Err(TransportError::Closed) => break,
            Err(e) => {
                warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await; // backoff: e.g. out of file descriptors
            }
        }
    }
    debug!(addr = %shared.local_addr, "listener closed");
}

/// What a control connection's writer tells the others.
struct WriterSignals {
    /// Dropped when the writer ends (`Endpoint::close` waits for it).
    _done: mpsc::Sender<()>,
    /// Sent the close reason right before the close frame goes out: the reader then only
    /// waits, a bounded time, for the remote to close its side too.
    closing: oneshot::Sender<u8>,
}

async fn run_writer(
    mut writer: FrameWriter,
    mut rx: mpsc::Receiver<Cmd>,
    cancel: CancellationToken,
    keepalive: Duration,
    write_timeout: Duration,
    signals: WriterSignals,
    id: NodeId,
) {
    let WriterSignals { _done, closing } = signals;
    let mut reason = CLOSE_DONE;
    let result: Result<()> = async {
        loop {
            let cmd = tokio::select! {
                biased;
                _ = cancel.cancelled() => return Ok(()),
                c = tokio::time::timeout(keepalive, rx.recv()) => c,
            };
            let (kind, payload) = match cmd {
                Err(_) => (FrameKind::Ping, Bytes::new()),
                Ok(None) => break,
                Ok(Some(Cmd::Frame(kind, payload))) => (kind, payload),
                Ok(Some(Cmd::Close(r))) => {
                    reason = r;
                    // No new messages; the queued ones still go out.
                    rx.close();
                    continue;
                }
            };
            write_with_timeout(&mut writer, kind, &payload, write_timeout).await?;
        }
        // The reader now only waits (a bounded time) for the remote to close its side too.
        let _ = closing.send(reason);
        write_with_timeout(&mut writer, FrameKind::Close, &[reason], write_timeout).await?;
        writer.shutdown().await
    }
    .await;
    if let Err(e) = result {
        debug!(peer = %id, error = %e, "control connection writer failed");
        cancel.cancel();
    }
}

async fn write_with_timeout(
    writer: &mut FrameWriter,
    kind: FrameKind,
    payload: &[u8],
    after: Duration,
) -> Result<()> {
    match tokio::time::timeout(after, async {
        writer.write_frame(kind, payload).await?;
        writer.flush().await
    })
    .await
    {
        Ok(r) => r,
        Err(_) => Err(TransportError::Timeout {
            what: "writing to a stalled peer",
            after,
        }),
    }
}

async fn run_reader<T: Transport>(
    shared: Arc<Shared<T>>,
    mut reader: FrameReader,
    conn_id: u64,
    peer: Peer,
    cancel: CancellationToken,
    mut closing: oneshot::Receiver<u8>,
) {
    let idle = shared.config.idle_timeout;
    // Once our writer sent its close frame: why, and until when the remote may take to close
    // its side too (one idle timeout, whatever it keeps sending meanwhile).
    let mut closed_by_us: Option<(u8, tokio::time::Instant)> = None;
    let mut closing_pending = true;
    let result: Result<u8> = loop {
        let wait = match closed_by_us {
            Some((_, deadline)) => deadline.saturating_duration_since(tokio::time::Instant::now()),
            None => idle,
        };
        let frame = tokio::select! {
            // The one-off signals first: a frame read after our close frame went out must
            // see it.
            biased;
            _ = cancel.cancelled() => break Err(TransportError::Closed),
            r = &mut closing, if closing_pending => {
                closing_pending = false;
                if let Ok(reason) = r {
                    closed_by_us = Some((reason, tokio::time::Instant::now() + idle));
                }
                continue;
            }
            f = next_frame(&mut reader, wait) => f,
        };
        match frame {
            Ok(Some(frame)) => match frame.kind {
                // After `disconnect` or `close` (not a handover, whose remote may still be
                // sending what it queued before), the node is gone for the application.
                FrameKind::Message
                    if closed_by_us.is_some_and(|(reason, _)| reason != CLOSE_SUPERSEDED) => {}
                FrameKind::Message => {
                    let event = Event::Message {
                        from: peer.clone(),
                        message: Payload(frame.payload),
                    };
                    tokio::select! {
                        _ = cancel.cancelled() => break Err(TransportError::Closed),
                        () = shared.emit(event) => {}
                    }
                }
                FrameKind::Ping => {}
                FrameKind::Close => break Ok(frame.payload.first().copied().unwrap_or(CLOSE_DONE)),
                other => {
                    break Err(TransportError::protocol(format!(
                        "unexpected {other:?} frame on a control connection"
                    )));
                }
            },
            Ok(None) => {
                break Err(TransportError::io(
                    "the control connection closed without a close frame",
                    std::io::ErrorKind::UnexpectedEof.into(),
                ));
            }
            Err(e) => break Err(e),
        }
    };
    if result.is_err() {
        cancel.cancel();
    }
    shared.connection_ended(peer.id, conn_id, result).await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::MemoryTransport;

    #[tokio::test]
    async fn a_cancelled_connect_leaves_no_dial_lock_behind() {
        let net = MemoryTransport::new();
        // Accepts connections but never answers the handshake.
        let mut silent = net.listen("mem:0").await.unwrap();
        let silent_addr = silent.local_addr();
        let _accepting = tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((stream, _)) = silent.accept().await {
                held.push(stream);
            }
        });
        let (endpoint, _events) =
            Endpoint::bind(net, "mem:0", EndpointConfig::new(NodeId::random()))
                .await
                .unwrap();
        let dial = endpoint.connect(&silent_addr);
        assert!(
            tokio::time::timeout(Duration::from_millis(50), dial)
                .await
                .is_err(),
            "the handshake cannot complete"
        );
        assert!(lock(&endpoint.shared.dial_locks).is_empty());
    }
}
