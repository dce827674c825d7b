//! The file server: local store, replication, fetch, membership.

use std::collections::HashSet;
use std::fmt;
use std::io::{self, Read};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::task::{Context, Poll};
use std::time::Duration;

use dfs_crypto::{Aes256CtrBlake3, Cipher, Key};
use dfs_store::{
    BlockingReader, Durability, Expected, Follower, HashPath, Next, ObjectReader, PathTransform,
    Store, Tail,
};
use dfs_transport::{
    BodyOrMessage, BodyReader, Endpoint, EndpointConfig, Event, Events, NodeId, Peer, Substream,
    Transport,
};
use futures::StreamExt;
use futures::stream::FuturesUnordered;
use tokio::io::{AsyncRead, ReadBuf};
use tokio::sync::{broadcast, mpsc, oneshot, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tokio_util::task::task_tracker::TaskTrackerToken;
use tracing::{debug, info, warn};

use crate::bridge::{self, ChannelReader};
use crate::config::{Config, Replication, Scope};
use crate::error::{Result, ServerError};
use crate::event::ServerEvent;
use crate::id::{self, ObjectId};
use crate::locks::{ObjectLocks, Outgoing, Sending};
use crate::membership::{Learned, MAX_LIST, Membership};
use crate::names::NameIndex;
use crate::object::{self, HeaderCheck};
use crate::slots::{Refused, Slot, TransferSlots};
use crate::verify::Verified;
use crate::wire::{Envelope, Message, PROTOCOL_VERSION, PeerAddr};

/// How long a serving node keeps an announced body ready for a requester that has not yet
/// said `Proceed` (the requester drops the exchange when it picked another peer).
const PROCEED_WAIT: Duration = Duration::from_secs(600);
/// `Get` offers a node keeps open per transfer slot (`Config::max_incoming_transfers`); the
/// endpoint admits twice as many inbound substreams (at least 256).
const OFFERS_PER_TRANSFER: usize = 4;
/// First bootstrap retry delay; doubles up to [`BACKOFF_MAX`].
const BACKOFF_START: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(5);
/// How many times a node learned through peer exchange is dialled.
const LEARNED_ATTEMPTS: u32 = 6;
/// Attempts to replicate to one peer before it counts as failed (when no other candidate
/// is left to try instead).
const REPLICA_ATTEMPTS: u32 = 3;
/// How often the membership repair loop looks for known but unconnected nodes.
const REPAIR_EVERY: Duration = Duration::from_secs(1);

/// A peer-to-peer encrypted file server node.
///
/// Generic over the [`Transport`] (TCP, in-memory, ...), the store's [`PathTransform`] and
/// the [`Cipher`] files are encrypted with. Cheap to clone: clones are handles to one node.
/// It runs inside the caller's tokio runtime and never prints (it logs with `tracing`).
///
/// Stop it with [`shutdown`](FileServer::shutdown), which lets in-flight work finish.
/// Dropping the last handle instead stops it at once: its tasks are cancelled (transfers in
/// flight fail on the peers' side) and the store closes as they end.
///
/// See the crate documentation for an example.
pub struct FileServer<T: Transport, P: PathTransform = HashPath, C: Cipher = Aes256CtrBlake3> {
    inner: Arc<Inner<T, P, C>>,
    /// Shared by the caller's handles only (the node's tasks hold `inner` alone).
    last: Arc<LastHandle<T, P, C>>,
}

impl<T: Transport, P: PathTransform, C: Cipher> Clone for FileServer<T, P, C> {
    fn clone(&self) -> Self {
        FileServer {
            inner: Arc::clone(&self.inner),
            last: Arc::clone(&self.last),
        }
    }
}

/// Stops the node when the caller's last handle goes without `shutdown`, even while its
/// tasks still hold it (a parked `Get` offer waits up to 10 minutes for its requester):
/// they are cancelled, and the store (with a pack, its root's lock) goes when they end.
struct LastHandle<T: Transport, P: PathTransform, C: Cipher>(Weak<Inner<T, P, C>>);

impl<T: Transport, P: PathTransform, C: Cipher> Drop for LastHandle<T, P, C> {
    fn drop(&mut self) {
        if let Some(inner) = self.0.upgrade() {
            inner.abandon();
        }
    }
}

impl<T: Transport, P: PathTransform, C: Cipher> fmt::Debug for FileServer<T, P, C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FileServer")
            .field("node_id", &self.inner.node_id)
            .field("addr", &self.inner.endpoint.local_addr())
            .field("root", &self.inner.config.root)
            .finish_non_exhaustive()
    }
}

/// What [`FileServer::store`] and [`FileServer::replicate`] return: the file is durable
/// locally and on `replicas`.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Receipt {
    /// The file name.
    pub name: String,
    /// The opaque id it travels and is stored under.
    pub object: ObjectId,
    /// Plaintext size in bytes.
    pub size: u64,
    /// Stored (encrypted) size in bytes, on this node and on every replica.
    pub stored_size: u64,
    /// The peers that acknowledged a durable copy.
    pub replicas: Vec<NodeId>,
}

/// What [`FileServer::scrub`] checked and did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct ScrubReport {
    /// Objects checked.
    pub checked: u64,
    /// Damaged objects replaced by a verified copy from a peer.
    pub repaired: Vec<ObjectId>,
    /// Damaged files no peer replaced, with the reason; they stay on disk as they are. The
    /// id is `None` when the damage hides which object the file was.
    pub unrepaired: Vec<(Option<ObjectId>, String)>,
}

impl ScrubReport {
    /// `true` when nothing damaged is left.
    pub fn is_clean(&self) -> bool {
        self.unrepaired.is_empty()
    }
}

/// An object held by this node; see [`FileServer::list`].
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct FileInfo {
    /// The name, when this node stored or fetched the file itself (storage peers only hold
    /// opaque ids).
    pub name: Option<String>,
    /// The opaque id as 64 hex digits (the store key).
    pub id: String,
    /// Stored (encrypted) size in bytes.
    pub size: u64,
}

/// What [`FileServer::delete`] found and removed.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct DeleteReport {
    /// Whether this node held a copy (now removed).
    pub local: bool,
    /// The peers that held a copy and removed it ([`Scope::Everywhere`] only).
    pub peers: Vec<NodeId>,
}

impl DeleteReport {
    /// Whether any copy was found: `false` means nobody asked had the file.
    pub fn found(&self) -> bool {
        self.local || !self.peers.is_empty()
    }
}

/// A connected peer; see [`FileServer::peers`].
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct PeerInfo {
    /// The peer's node id.
    pub id: NodeId,
    /// The address it can be dialled on.
    pub addr: String,
}

/// The plaintext of a file, streamed and decrypted from the local copy as it is read.
///
/// Memory stays bounded whatever the file size. The authenticated cipher only releases
/// verified bytes: damage shows up as an `io::Error` from `read`, never as wrong bytes.
#[derive(Debug)]
pub struct FileReader {
    inner: BlockingReader,
    len: u64,
}

impl FileReader {
    /// The plaintext length in bytes.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// Whether the file is empty.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

impl AsyncRead for FileReader {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

/// The node's store, and a signal that fires when it is dropped.
struct OpenStore<P: PathTransform> {
    store: Store<P>,
    _closed: oneshot::Sender<()>,
}

impl<P: PathTransform> std::ops::Deref for OpenStore<P> {
    type Target = Store<P>;

    fn deref(&self) -> &Store<P> {
        &self.store
    }
}

struct Inner<T: Transport, P: PathTransform, C: Cipher> {
    config: Config,
    node_id: NodeId,
    data_key: Key,
    fingerprint: [u8; 16],
    endpoint: Endpoint<T>,
    /// Taken at the end of `shutdown`, so the store (and with a pack its root's lock) goes
    /// even while clones of the handle live on.
    store: Mutex<Option<Arc<OpenStore<P>>>>,
    /// Fires once the last reference to the store is gone (a blocking call that was
    /// running when `shutdown` began holds one): `shutdown` waits for it.
    store_closed: Mutex<Option<oneshot::Receiver<()>>>,
    cipher: Arc<C>,
    names: NameIndex,
    events: broadcast::Sender<ServerEvent>,
    tracker: TaskTracker,
    cancel: CancellationToken,
    /// Stops the driver; cancelled only when the last handle is dropped without `shutdown`
    /// (after `shutdown` the driver ends with the endpoint's event stream).
    dropped: CancellationToken,
    closing: AtomicBool,
    background: Mutex<Vec<JoinHandle<()>>>,
    /// Every node heard of (connected, or named by a peer) and the dials in flight,
    /// bounded. The repair loop redials the ones not connected; an address that keeps
    /// failing is forgotten.
    membership: Mutex<Membership>,
    /// Orders local writes, fetch commits, incoming replicas and deletes of one object.
    objects: ObjectLocks,
    /// The replications this node has in flight, per object (stopped and waited for by a
    /// `delete(Everywhere)` before it asks the peers).
    outgoing: Outgoing,
    /// Slots for peer requests that move file bytes (`Config::max_incoming_transfers`, a
    /// share of them per peer).
    incoming: TransferSlots,
    /// Slots for `Get` offers waiting for the requester's `Proceed` (twice
    /// `Config::max_incoming_transfers`, a share of them per peer).
    offers: TransferSlots,
    /// Opens a stored object's plaintext with `cipher` (built where the cipher's reader is
    /// known to be `Send`, so reads can move between blocking-pool threads).
    decryptor: Decryptor,
}

/// The reader a [`Cipher`] decrypts a stored object from: the cipher's header, read ahead
/// to learn the plaintext length, then the rest of the verified store reader.
pub type StoredCiphertext = io::Chain<io::Cursor<Vec<u8>>, ObjectReader>;

/// Stored object -> (plaintext reader, plaintext length), given the name and object key.
type Decryptor =
    Box<dyn Fn(ObjectReader, &str, &str) -> Result<(Box<dyn io::Read + Send>, u64)> + Send + Sync>;

impl<T: Transport, P: PathTransform, C: Cipher> Inner<T, P, C> {
    /// The caller's last handle is gone without `shutdown`: refuse new requests, cancel
    /// the tasks, stop the driver and close the endpoint (in the background, when a runtime
    /// is still around). Does nothing after `shutdown` began, or a second time.
    fn abandon(&self) {
        if self.closing.swap(true, Ordering::SeqCst) {
            return;
        }
        self.cancel.cancel();
        self.dropped.cancel();
        if let Ok(handle) = tokio::runtime::Handle::try_current() {
            let endpoint = self.endpoint.clone();
            handle.spawn(async move { endpoint.close().await });
        }
    }
}

impl<T: Transport, P: PathTransform, C: Cipher> Drop for Inner<T, P, C> {
    fn drop(&mut self) {
        self.abandon();
    }
}

impl<T: Transport> FileServer<T> {
    /// Starts a node with the default path layout ([`HashPath`]) and the authenticated
    /// cipher ([`Aes256CtrBlake3`]) under the config's data key.
    pub async fn start(config: Config, transport: T) -> Result<Self> {
        let key = resolve_key(&config).await?;
        let cipher = Aes256CtrBlake3::new(&key);
        Self::start_inner(config, key, transport, HashPath::default(), cipher).await
    }
}

impl<T: Transport, P: PathTransform, C: Cipher> FileServer<T, P, C> {
    /// Starts a node with a custom path layout and cipher. The config's data key still
    /// derives the opaque ids and the key fingerprint; `cipher` should use the same key.
    pub async fn start_with(config: Config, transport: T, paths: P, cipher: C) -> Result<Self>
    where
        C::DecryptReader<StoredCiphertext>: Send + 'static,
    {
        let key = resolve_key(&config).await?;
        Self::start_inner(config, key, transport, paths, cipher).await
    }

    async fn start_inner(
        config: Config,
        data_key: Key,
        transport: T,
        paths: P,
        cipher: C,
    ) -> Result<Self>
    where
        C::DecryptReader<StoredCiphertext>: Send + 'static,
    {
        let root = config.root.clone();
        let durability = if config.fsync {
            Durability::Fsync
        } else {
            Durability::None
        };
        let pack = config.pack_small_objects;
        let (node_id, store, names) = tokio::task::spawn_blocking(move || -> Result<_> {
            std::fs::create_dir_all(&root).map_err(|source| ServerError::Io {
                op: "create directory",
                path: root.clone(),
                source,
            })?;
            let node_id = id::load_or_create_node_id(&root)?;
            let store = Store::builder(root.join("store"))
                .transform(paths)
                .durability(durability)
                .pack_small_objects(pack)
                .open()?;
            let names = NameIndex::open(root.join("names"), durability == Durability::Fsync)?;
            Ok((node_id, store, names))
        })
        .await??;

        // Requests waiting for a slot and offers waiting for `Proceed` keep their substreams
        // open: leave room for them, so a node past its limits answers "busy" rather than
        // refusing connections.
        let endpoint_config = EndpointConfig::new(node_id)
            .secret(config.network_secret.clone())
            .max_inbound_substreams(
                (2 * OFFERS_PER_TRANSFER * config.max_incoming_transfers).max(256),
            );
        let (endpoint, events) =
            Endpoint::bind(transport, &config.listen_addr, endpoint_config).await?;
        let (event_tx, _) = broadcast::channel(config.event_capacity);
        let cipher = Arc::new(cipher);
        let fingerprint = id::key_fingerprint(&data_key);
        let decryptor: Decryptor = {
            let cipher = Arc::clone(&cipher);
            Box::new(move |reader: ObjectReader, name: &str, key: &str| {
                let stored = reader.size();
                let (plain, len) =
                    object::decrypting(&*cipher, &fingerprint, name, key, stored, reader)?;
                Ok((Box::new(plain) as Box<dyn io::Read + Send>, len))
            })
        };
        let (closed_tx, closed_rx) = oneshot::channel();
        let inner = Arc::new(Inner {
            fingerprint,
            decryptor,
            data_key,
            node_id,
            endpoint,
            store: Mutex::new(Some(Arc::new(OpenStore {
                store,
                _closed: closed_tx,
            }))),
            store_closed: Mutex::new(Some(closed_rx)),
            cipher,
            names,
            events: event_tx,
            tracker: TaskTracker::new(),
            cancel: CancellationToken::new(),
            dropped: CancellationToken::new(),
            closing: AtomicBool::new(false),
            background: Mutex::new(Vec::new()),
            membership: Mutex::new(Membership::default()),
            objects: ObjectLocks::default(),
            outgoing: Outgoing::default(),
            incoming: TransferSlots::new(config.max_incoming_transfers),
            offers: TransferSlots::with_share(
                OFFERS_PER_TRANSFER * config.max_incoming_transfers,
                OFFERS_PER_TRANSFER * config.max_incoming_transfers / 2,
            ),
            config,
        });
        info!(node = %node_id, addr = %inner.endpoint.local_addr(), "file server started");

        let driver = tokio::spawn(drive(Arc::downgrade(&inner), events, inner.dropped.clone()));
        inner.add_background(driver);
        let repairer = tokio::spawn(repair(Arc::downgrade(&inner), inner.cancel.clone()));
        inner.add_background(repairer);
        let healer = tokio::spawn(heal(Arc::downgrade(&inner), inner.cancel.clone()));
        inner.add_background(healer);

        // One attempt at every bootstrap address now (so a reachable bootstrap node is
        // connected when `start` returns); failures keep retrying in the background.
        let first = futures::future::join_all(inner.config.bootstrap.iter().map(|addr| {
            let endpoint = inner.endpoint.clone();
            async move { (addr.clone(), endpoint.connect(addr).await) }
        }))
        .await;
        for (addr, result) in first {
            if let Err(e) = result {
                debug!(%addr, error = %e, "bootstrap attempt failed, retrying with backoff");
                let joining = join(
                    Arc::downgrade(&inner),
                    addr,
                    None,
                    inner.config.bootstrap_attempts.saturating_sub(1),
                    true,
                    inner.cancel.clone(),
                );
                let task = tokio::spawn(async move {
                    joining.await;
                });
                inner.add_background(task);
            }
        }
        let last = Arc::new(LastHandle(Arc::downgrade(&inner)));
        Ok(FileServer { inner, last })
    }

    /// This node's id (random, persisted in `<root>/node.id`).
    pub fn node_id(&self) -> NodeId {
        self.inner.node_id
    }

    /// The dialable listen address (with the real port when the config said port 0).
    pub fn local_addr(&self) -> String {
        self.inner.endpoint.local_addr()
    }

    /// The node's configuration.
    pub fn config(&self) -> &Config {
        &self.inner.config
    }

    /// The opaque id `name` is stored under on every node sharing this node's data key.
    pub fn object_id(&self, name: &str) -> ObjectId {
        ObjectId::for_name(&self.inner.data_key, name)
    }

    /// Stores everything `data` yields under `name`: encrypted while written locally
    /// (atomically, durably), and streamed from the local file to the replica peers while
    /// it is written (each peer checks the committed size and hash before its own commit,
    /// so a failed local write leaves nothing on any peer).
    ///
    /// Returns once the local copy is durable and the [`Replication`] policy is met, with a
    /// receipt naming the peers that acknowledged a durable copy. If too few did within the
    /// replication timeout (counted from the local commit) the error is
    /// [`ServerError::ReplicationIncomplete`]; the local copy is kept either way. Storing a
    /// name again replaces the file.
    pub async fn store(
        &self,
        name: &str,
        data: impl AsyncRead + Send + Unpin + 'static,
    ) -> Result<Receipt> {
        let _token = self.inner.begin()?;
        let object = self.object_id(name);
        // Replicas follow the local write as it reaches the staging file.
        let (following, committed) = Following::new();
        let sending = Arc::new(Sending::default());
        let local = async {
            let _object = self.inner.objects.lock(object).await;
            // From now on a delete of this version stops its replicas (see `delete`).
            self.inner.outgoing.register(object, &sending);
            let tail = following.tail.clone();
            let (size, stored_size) = self
                .inner
                .write_local(name, object, data, Some(tail))
                .await?;
            let _ = committed.send(true);
            self.inner.emit(ServerEvent::FileStored {
                name: name.to_owned(),
                object,
                size,
            });
            debug!(%name, %object, size, "stored locally");
            Ok::<_, ServerError>((size, stored_size))
        };
        let replicate = self
            .inner
            .replicate(name, object, Some(&following), &sending);
        let (mut local, mut replicate) = (std::pin::pin!(local), std::pin::pin!(replicate));
        let mut replicated = None;
        let written = loop {
            tokio::select! {
                written = &mut local => break written,
                done = &mut replicate, if replicated.is_none() => replicated = Some(done),
            }
        };
        // A failed local write drops the replicas in flight: none can commit without the
        // trailer that only a committed local copy sends.
        let (size, stored_size) = written?;
        let replicas = match replicated {
            Some(done) => done?,
            None => replicate.await?,
        };
        Ok(Receipt {
            name: name.to_owned(),
            object,
            size,
            stored_size,
            replicas,
        })
    }

    /// Pushes this node's copy of `name` to peers per the [`Replication`] policy, as
    /// [`store`](Self::store) does: each replica streams from the local file and is
    /// acknowledged once durable. Use it to bring a file onto peers that joined
    /// after it was stored, or to retry after [`ServerError::ReplicationIncomplete`].
    ///
    /// Errors: [`ServerError::NotFound`] when this node holds no copy, the damage error when
    /// its copy is damaged (nothing is sent; [`scrub`](Self::scrub) repairs it), and
    /// [`ServerError::ReplicationIncomplete`] as for `store`. The receipt's sizes are the
    /// copy's when the call began; if a `store` of the same name commits meanwhile, peers
    /// may get the newer version (each copy sent is whole and verified).
    ///
    /// ```no_run
    /// # async fn demo(node: dfs_server::FileServer<dfs_transport::TcpTransport>) -> dfs_server::Result<()> {
    /// // A node joined: give it a copy of the report too.
    /// let receipt = node.replicate("report.pdf").await?;
    /// println!("held by {} peers", receipt.replicas.len());
    /// # Ok(()) }
    /// ```
    pub async fn replicate(&self, name: &str) -> Result<Receipt> {
        let _token = self.inner.begin()?;
        let object = self.object_id(name);
        // Opening the local copy checks it exists, is ours and is not visibly damaged; the
        // replicas then re-read it, verified by the store as it streams. (The lock makes the
        // two sizes one version's; it is not held while peers are sent to, as two nodes
        // replicating one object to each other would then wait on each other.)
        let sending = Arc::new(Sending::default());
        let (size, stored_size) = {
            let _object = self.inner.objects.lock(object).await;
            self.inner.outgoing.register(object, &sending);
            let size = match self.inner.open_local_checked(name, object).await? {
                Local::Found(reader) => reader.len(),
                Local::Missing => {
                    return Err(ServerError::NotFound {
                        name: name.to_owned(),
                    });
                }
                Local::Damaged(e) => return Err(e),
            };
            let key = object.to_hex();
            let store = self.inner.store()?;
            let meta = tokio::task::spawn_blocking(move || store.stat(&key)).await??;
            (size, meta.size())
        };
        let replicas = self.inner.replicate(name, object, None, &sending).await?;
        Ok(Receipt {
            name: name.to_owned(),
            object,
            size,
            stored_size,
            replicas,
        })
    }

    /// [`store`](Self::store) of a byte slice.
    pub async fn store_bytes(&self, name: &str, data: &[u8]) -> Result<Receipt> {
        self.store(name, io::Cursor::new(data.to_vec())).await
    }

    /// Opens `name` for reading: the local copy if there is one, else the first peer that
    /// has it streams it into a staged local copy, which is verified (size, BLAKE3 hash,
    /// key fingerprint) and committed before reading starts. Peers are asked concurrently;
    /// a peer that times out, dies mid-transfer or serves damaged bytes is skipped for the
    /// next one, and nothing partial is ever committed.
    ///
    /// Errors: [`ServerError::NotFound`] when nobody has it, [`ServerError::WrongKey`] when
    /// it was encrypted under another data key, [`ServerError::FetchFailed`] when every
    /// holder failed (`attempts: 0` when no peer offered a copy but some did not answer:
    /// timed out, busy or gone, so the file may exist).
    pub async fn get(&self, name: &str) -> Result<FileReader> {
        let _token = self.inner.begin()?;
        let object = self.object_id(name);
        let damage = match self.inner.open_local_checked(name, object).await? {
            Local::Found(reader) => return Ok(reader),
            Local::Missing => None,
            Local::Damaged(e) => Some(e),
        };
        match (self.inner.fetch(name, Purpose::Get, object).await, damage) {
            (Ok(()), _) => {}
            // No peer offered a copy (none has it, or none answered): the damage is the
            // news, not "not found".
            (
                Err(ServerError::NotFound { .. } | ServerError::FetchFailed { attempts: 0, .. }),
                Some(damage),
            ) => return Err(damage),
            (Err(e), _) => return Err(e),
        }
        self.inner
            .open_local(name, object)
            .await?
            .ok_or_else(|| ServerError::NotFound {
                name: name.to_owned(),
            })
    }

    /// [`get`](Self::get) into memory.
    pub async fn get_bytes(&self, name: &str) -> Result<Vec<u8>> {
        use tokio::io::AsyncReadExt;
        let mut reader = self.get(name).await?;
        let mut out = Vec::with_capacity(usize::try_from(reader.len()).unwrap_or(0));
        reader
            .read_to_end(&mut out)
            .await
            .map_err(|source| ServerError::Io {
                op: "read file",
                path: name.into(),
                source,
            })?;
        Ok(out)
    }

    /// Whether this node holds a local copy of `name`.
    pub async fn has(&self, name: &str) -> Result<bool> {
        let key = self.object_id(name).to_hex();
        let store = self.inner.store()?;
        Ok(tokio::task::spawn_blocking(move || store.has(&key)).await??)
    }

    /// Deletes `name` from this node ([`Scope::Local`]) or from this node and every
    /// connected peer ([`Scope::Everywhere`]; peers that do not confirm in time are named in
    /// [`ServerError::DeleteIncomplete`]). Deleting a missing file is not an error: the
    /// report says who held a copy ([`DeleteReport::found`]).
    ///
    /// ```
    /// # use dfs_server::{Config, FileServer, Key, MemoryTransport, Scope};
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// # let dir = tempfile::tempdir()?;
    /// # let node = FileServer::start(
    /// #     Config::builder(dir.path()).listen_addr("mem:0").data_key(Key::generate()?).build(),
    /// #     MemoryTransport::new(),
    /// # )
    /// # .await?;
    /// node.store_bytes("a.txt", b"hi").await?;
    /// let report = node.delete("a.txt", Scope::Everywhere).await?;
    /// assert!(report.local && report.found());
    /// assert!(!node.delete("a.txt", Scope::Everywhere).await?.found());
    /// # Ok(()) }
    /// ```
    pub async fn delete(&self, name: &str, scope: Scope) -> Result<DeleteReport> {
        let _token = self.inner.begin()?;
        let object = self.object_id(name);
        let everywhere = scope == Scope::Everywhere;
        let (local, sending) = self
            .inner
            .delete_local(object, Some(name.to_owned()), None, everywhere)
            .await?;
        let peers = if everywhere {
            // Replicas of this object still on their way from this node are stopped, or,
            // past their trailer, waited for: one committed after the peer's delete would
            // revive the file there.
            let deadline = deadline_after(self.inner.config.replication_timeout);
            let mut unsettled = Vec::new();
            for sending in sending {
                for peer in sending.settled(deadline).await {
                    if !unsettled.contains(&peer) {
                        unsettled.push(peer);
                    }
                }
            }
            match self.inner.delete_remote(name, object).await {
                Ok(held) if unsettled.is_empty() => held,
                Ok(_) => {
                    return Err(ServerError::DeleteIncomplete {
                        name: name.to_owned(),
                        failed: unsettled,
                    });
                }
                Err(ServerError::DeleteIncomplete { name, mut failed }) => {
                    for peer in unsettled {
                        if !failed.contains(&peer) {
                            failed.push(peer);
                        }
                    }
                    return Err(ServerError::DeleteIncomplete { name, failed });
                }
                Err(e) => return Err(e),
            }
        } else {
            Vec::new()
        };
        Ok(DeleteReport { local, peers })
    }

    /// The objects this node holds (its own files and opaque replicas).
    pub async fn list(&self) -> Result<Vec<FileInfo>> {
        let store = self.inner.store()?;
        let names = self.inner.names.clone();
        tokio::task::spawn_blocking(move || -> Result<Vec<FileInfo>> {
            let mut out = Vec::new();
            for meta in store.objects() {
                // One damaged file must not hide the others (`scrub` reports it).
                let meta = match meta {
                    Ok(meta) => meta,
                    Err(e) => {
                        warn!(error = %e, "skipping unreadable object in list");
                        continue;
                    }
                };
                out.push(FileInfo {
                    name: names.get(meta.key()),
                    id: meta.key().to_owned(),
                    size: meta.size(),
                });
            }
            Ok(out)
        })
        .await?
    }

    /// Verifies every local object (its BLAKE3 hash, end to end) and replaces each damaged
    /// one with a verified copy fetched from a peer, as `get` would fetch it: size, hash, key
    /// fingerprint and the cipher's own authentication are checked before the copy is
    /// committed. A damaged object nobody can replace (no peer has it, or it is encrypted
    /// under another data key so a replacement cannot be authenticated here) is reported
    /// and left as it is.
    ///
    /// Reads every stored byte: run it from time to time, not on every request.
    pub async fn scrub(&self) -> Result<ScrubReport> {
        let _token = self.inner.begin()?;
        let store = self.inner.store()?;
        let found = tokio::task::spawn_blocking(move || store.scrub()).await?;
        let mut report = ScrubReport {
            checked: found.checked,
            ..ScrubReport::default()
        };
        for bad in found.bad {
            let Some(object) = bad.key.as_deref().and_then(ObjectId::from_hex) else {
                report.unrepaired.push((
                    None,
                    format!(
                        "{}: {} (which object it was is unknown)",
                        bad.path.display(),
                        bad.error
                    ),
                ));
                continue;
            };
            warn!(%object, error = %bad.error, "damaged object; fetching a replacement");
            match self.inner.replace(object).await {
                Ok(()) => report.repaired.push(object),
                Err(e) => report
                    .unrepaired
                    .push((Some(object), format!("{}; no replacement: {e}", bad.error))),
            }
        }
        Ok(report)
    }

    /// The currently connected peers.
    pub fn peers(&self) -> Vec<PeerInfo> {
        self.inner
            .endpoint
            .peers()
            .into_iter()
            .filter(Peer::is_connected)
            .map(|p| PeerInfo {
                id: p.id(),
                addr: p.addr().to_owned(),
            })
            .collect()
    }

    /// A receiver of this node's [`ServerEvent`]s from now on.
    pub fn events(&self) -> broadcast::Receiver<ServerEvent> {
        self.inner.events.subscribe()
    }

    /// Waits until at least `n` peers are connected, or fails after `within`.
    pub async fn wait_for_peers(&self, n: usize, within: Duration) -> Result<()> {
        let mut events = self.events();
        let deadline = deadline_after(within);
        loop {
            let have = self.peers().len();
            if have >= n {
                return Ok(());
            }
            match tokio::time::timeout_at(deadline, events.recv()).await {
                Err(_) => {
                    return Err(ServerError::Timeout {
                        what: format!("waiting for {n} peers (have {have})"),
                    });
                }
                Ok(Err(broadcast::error::RecvError::Closed)) => {
                    return Err(ServerError::ShuttingDown);
                }
                Ok(_) => {}
            }
        }
    }

    /// Dials `addr` (and exchanges peers with it). Useful to join a network after start.
    pub async fn connect(&self, addr: &str) -> Result<PeerInfo> {
        let peer = self.inner.endpoint.connect(addr).await?;
        Ok(PeerInfo {
            id: peer.id(),
            addr: peer.addr().to_owned(),
        })
    }

    /// Stops the node gracefully: refuses new operations, lets in-flight stores, gets and
    /// incoming replicas finish, then closes every connection and the store (so another
    /// node may open its root at once). Other clones of this handle get
    /// [`ServerError::ShuttingDown`] afterwards.
    pub async fn shutdown(self) -> Result<()> {
        let FileServer { inner, last } = self;
        inner.closing.store(true, Ordering::SeqCst);
        drop(last);
        inner.cancel.cancel();
        inner.tracker.close();
        inner.tracker.wait().await;
        // The driver keeps draining transport events while the endpoint closes.
        inner.endpoint.close().await;
        inner.dropped.cancel();
        let tasks = std::mem::take(&mut *lock(&inner.background));
        for task in tasks {
            if let Err(e) = task.await
                && e.is_panic()
            {
                warn!(error = %e, "background task panicked");
            }
        }
        // Every task is done: the store closes now, whatever clones of this handle remain,
        // once any blocking call still holding it (one a caller gave up waiting for, say)
        // has returned.
        let closed = lock(&inner.store_closed).take();
        let store = lock(&inner.store).take();
        if let Some(store) = store {
            let running = Arc::strong_count(&store) - 1;
            drop(store);
            if running > 0 {
                debug!(running, "waiting for store calls still running");
            }
        }
        if let Some(closed) = closed {
            let _ = closed.await; // the sender goes with the store
        }
        info!(node = %inner.node_id, "file server stopped");
        Ok(())
    }
}

/// Removes the name just recorded for `object` when a write of it failed and no older copy
/// is there either (the name only labels an object; this keeps the index tidy). The caller
/// holds the object's lock.
fn forget_unused_name<P: PathTransform>(store: &Store<P>, names: &NameIndex, object: &ObjectId) {
    if matches!(store.has(&object.to_hex()), Ok(false)) {
        let _ = names.remove(object);
    }
}

/// `d` from now: a configured duration too long to add to the clock (`Duration::MAX`, say,
/// for "no timeout") means a deadline in the far future rather than a panic.
fn deadline_after(d: Duration) -> Instant {
    let now = Instant::now();
    now.checked_add(d).unwrap_or_else(|| now + FAR_FUTURE)
}

/// What [`deadline_after`] gives for durations the clock cannot add: about 30 years.
const FAR_FUTURE: Duration = Duration::from_secs(30 * 365 * 86_400);

fn lock<X>(m: &Mutex<X>) -> std::sync::MutexGuard<'_, X> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

async fn resolve_key(config: &Config) -> Result<Key> {
    if let Some(key) = &config.data_key {
        return Ok(key.clone());
    }
    let root = config.root.clone();
    tokio::task::spawn_blocking(move || {
        std::fs::create_dir_all(&root).map_err(|source| ServerError::Io {
            op: "create directory",
            path: root.clone(),
            source,
        })?;
        id::load_or_create_data_key(&root)
    })
    .await?
}

impl<T: Transport, P: PathTransform, C: Cipher> Inner<T, P, C> {
    fn add_background(&self, task: JoinHandle<()>) {
        let mut tasks = lock(&self.background);
        tasks.retain(|t| !t.is_finished());
        tasks.push(task);
    }

    /// Replaces the local copy of `object` (damaged, or its newest write lost) with a
    /// verified copy from a peer.
    async fn replace(self: &Arc<Self>, object: ObjectId) -> Result<()> {
        let _object = self.objects.lock(object).await;
        self.replace_locked(object, None).await
    }

    /// Fetches again `object` if its newest write is still lost once its lock is held
    /// (`Ok(false)` when not: written or deleted since the list was read, so a copy from a
    /// peer would replace a newer local write or revive a deleted object).
    async fn heal_one(self: &Arc<Self>, object: ObjectId) -> Result<bool> {
        let _object = self.objects.lock(object).await;
        let key = object.to_hex();
        let store = self.store()?;
        if !store.lost_writes().contains(&key) {
            return Ok(false);
        }
        // The version the lost write replaced, if any: a peer offering that copy (one that
        // missed the newer write) has nothing newer, and taking it would end the report.
        let stat = tokio::task::spawn_blocking(move || store.stat(&key)).await?;
        let except = match stat {
            Ok(meta) => Some((meta.size(), *meta.hash())),
            Err(e) if e.is_not_found() => None,
            Err(e) => return Err(e.into()),
        };
        self.replace_locked(object, except).await.map(|()| true)
    }

    /// [`replace`](Self::replace), the caller holding the object's lock.
    async fn replace_locked(
        self: &Arc<Self>,
        object: ObjectId,
        except: Option<(u64, [u8; 32])>,
    ) -> Result<()> {
        let name = self.names.get(&object.to_hex());
        let label = name.clone().unwrap_or_else(|| object.to_hex());
        let purpose = Purpose::Repair {
            remember: name.is_some(),
            except,
        };
        self.fetch(&label, purpose, object).await
    }

    /// The store, until `shutdown` has finished.
    fn store(&self) -> Result<Arc<OpenStore<P>>> {
        lock(&self.store).clone().ok_or(ServerError::ShuttingDown)
    }

    fn begin(&self) -> Result<TaskTrackerToken> {
        let token = self.tracker.token();
        if self.closing.load(Ordering::SeqCst) {
            return Err(ServerError::ShuttingDown);
        }
        Ok(token)
    }

    fn emit(&self, event: ServerEvent) {
        let _ = self.events.send(event);
    }

    /// Encrypts `data` into the local store; returns (plaintext, stored) sizes.
    async fn write_local(
        &self,
        name: &str,
        object: ObjectId,
        data: impl AsyncRead + Unpin,
        tail: Option<Tail>,
    ) -> Result<(u64, u64)> {
        let (tx, rx) = bridge::channel();
        let store = self.store()?;
        let cipher = Arc::clone(&self.cipher);
        let names = self.names.clone();
        let fingerprint = self.fingerprint;
        let key = object.to_hex();
        let owned_name = name.to_owned();
        let writer = tokio::task::spawn_blocking(move || -> Result<u64> {
            // The name first: once the object is committed the store has succeeded (and its
            // replicas get their trailer), so nothing may fail after that.
            names.put(&object, &owned_name)?;
            let src = ChannelReader::new(rx);
            let written = object::encrypting(&*cipher, &fingerprint, src).and_then(|reader| {
                Ok(match &tail {
                    Some(tail) => store.write_tailed(&key, reader, tail)?,
                    None => store.write(&key, reader)?,
                })
            });
            if written.is_err() {
                forget_unused_name(&store, &names, &object);
            }
            written
        });
        let pumped = bridge::pump(data, &tx).await;
        drop(tx);
        let written = writer.await?;
        match pumped {
            Err(e) if e.kind() != io::ErrorKind::BrokenPipe => Err(ServerError::Source {
                name: name.to_owned(),
                source: e,
            }),
            Ok(size) => Ok((size, written?)),
            Err(e) => Err(written.err().unwrap_or(ServerError::Source {
                name: name.to_owned(),
                source: e,
            })),
        }
    }

    /// Streams the local object to the replica peers per the policy: from the committed
    /// local file, or, given `following`, from the local write as it happens. The
    /// replication timeout counts from the local commit.
    async fn replicate(
        self: &Arc<Self>,
        name: &str,
        object: ObjectId,
        following: Option<&Following>,
        sending: &Arc<Sending>,
    ) -> Result<Vec<NodeId>> {
        let mut peers: Vec<Peer> = self
            .endpoint
            .peers()
            .into_iter()
            .filter(Peer::is_connected)
            .collect();
        let wanted = match self.config.replication {
            Replication::None => return Ok(Vec::new()),
            Replication::AllConnected => peers.len(),
            Replication::Count(n) => {
                // Rendezvous hashing: a stable, per-object order of candidates.
                peers.sort_by_cached_key(|p| {
                    let mut h = blake3::Hasher::new();
                    h.update(&object.0);
                    h.update(&p.id().0);
                    std::cmp::Reverse(*h.finalize().as_bytes())
                });
                n
            }
        };
        if wanted == 0 {
            return Ok(Vec::new());
        }
        let mut candidates = peers.into_iter();
        let mut running = FuturesUnordered::new();
        // Peers with an attempt in flight.
        let mut pending = HashSet::new();
        for peer in candidates.by_ref().take(wanted) {
            pending.insert(peer.id());
            running.push(self.replicate_one(peer, object, 1, following.cloned(), sending));
        }
        let timeout = self.config.replication_timeout;
        let mut committed = following.map(|f| f.committed.clone());
        let mut deadline = match committed {
            Some(_) => None,
            None => Some(deadline_after(timeout)),
        };
        let mut acked = Vec::new();
        let mut failed: Vec<(NodeId, String)> = Vec::new();
        while acked.len() < wanted {
            let next = match (deadline, &mut committed) {
                (Some(deadline), _) => tokio::time::timeout_at(deadline, running.next()).await,
                (None, Some(committed)) => tokio::select! {
                    next = running.next() => Ok(next),
                    done = committed.wait_for(|done| *done) => {
                        // The clock starts at the commit (or now, if the store gave up).
                        let _ = done;
                        deadline = Some(deadline_after(timeout));
                        continue;
                    }
                },
                (None, None) => Ok(running.next().await),
            };
            if let Ok(Some((peer, _, _))) = &next {
                pending.remove(&peer.id());
            }
            match next {
                Err(_) => {
                    warn!(%name, "replication timed out");
                    for id in pending.drain() {
                        failed.retain(|(f, _)| *f != id);
                        failed.push((id, format!("no acknowledgement within {timeout:?}")));
                    }
                    break;
                }
                Ok(None) => break,
                Ok(Some((peer, _, Ok(())))) => {
                    let peer = peer.id();
                    debug!(%name, %peer, "replica acknowledged");
                    failed.retain(|(id, _)| *id != peer);
                    acked.push(peer);
                    self.emit(ServerEvent::Replicated {
                        name: name.to_owned(),
                        peer,
                    });
                }
                Ok(Some((peer, attempt, Err(e)))) => {
                    warn!(%name, peer = %peer.id(), attempt, error = %e, "replication to peer failed");
                    failed.retain(|(id, _)| *id != peer.id());
                    failed.push((peer.id(), e.to_string()));
                    // An untried candidate first; else the same peer again after a backoff
                    // (a failed dial, a busy peer), while time is left.
                    // (Replicas travel on connections of their own: no need for the control
                    // connection to be up.)
                    if let Some(next) = candidates.next() {
                        pending.insert(next.id());
                        running.push(self.replicate_one(
                            next,
                            object,
                            1,
                            following.cloned(),
                            sending,
                        ));
                    } else if attempt < REPLICA_ATTEMPTS {
                        pending.insert(peer.id());
                        let again = following.cloned();
                        running.push(self.replicate_one(peer, object, attempt + 1, again, sending));
                    }
                }
            }
        }
        if acked.len() < wanted {
            return Err(ServerError::ReplicationIncomplete {
                name: name.to_owned(),
                wanted,
                acked,
                failed,
            });
        }
        Ok(acked)
    }

    /// Sends the local object to one peer (the committed file, or following the local
    /// write) and waits for its durable-write ack. Attempt number `attempt` (from 1) waits
    /// a backoff first.
    fn replicate_one(
        self: &Arc<Self>,
        peer: Peer,
        object: ObjectId,
        attempt: u32,
        following: Option<Following>,
        sending: &Arc<Sending>,
    ) -> impl Future<Output = (Peer, u32, Result<()>)> + Send + 'static {
        let this = Arc::clone(self);
        // Counted from now, so a delete waits for it (see `FileServer::delete`).
        let counted = sending.attempt(peer.id());
        let void = sending.void.clone();
        async move {
            let _counted = counted;
            let voided = |peer: &Peer| ServerError::Remote {
                peer: peer.id(),
                message: "not sent: the file was deleted on this node meanwhile".to_owned(),
            };
            if attempt > 1 {
                let backoff = BACKOFF_START * 2u32.pow(attempt - 2);
                tokio::select! {
                    () = this.cancel.cancelled() => {
                        return (peer, attempt, Err(ServerError::ShuttingDown));
                    }
                    () = void.cancelled() => {}
                    () = tokio::time::sleep(backoff) => {} // backoff before a retry
                }
            }
            if void.is_cancelled() {
                let e = voided(&peer);
                return (peer, attempt, Err(e));
            }
            let id = peer.id();
            let result = async {
                let mut s = match following {
                    Some(following) => {
                        let keepalive = (this.config.replication_timeout / 4).min(KEEPALIVE);
                        let mut s = peer.open_stream().await?;
                        let keepalive_ms = u32::try_from(keepalive.as_millis()).unwrap_or(u32::MAX);
                        s.send(&Envelope::new(Message::PutFollow {
                            id: object,
                            keepalive_ms,
                        }))
                        .await?;
                        following.send(&mut s, keepalive, &void).await?;
                        s
                    }
                    None => {
                        let (size, hash, body) = this.open_stored(object).await?;
                        let mut s = peer.open_stream().await?;
                        // Once the body goes, the peer may commit it: not after a delete.
                        if void.is_cancelled() {
                            return Err(voided(&peer));
                        }
                        s.send(&Envelope::new(Message::Put {
                            id: object,
                            size,
                            hash,
                        }))
                        .await?;
                        s.send_body(size, body).await?;
                        s
                    }
                };
                match s.recv::<Envelope>().await? {
                    Some(Envelope {
                        message: Message::Stored,
                        ..
                    }) => {
                        let _ = s.finish().await;
                        Ok(())
                    }
                    Some(Envelope {
                        message: Message::Error { message },
                        ..
                    }) => Err(ServerError::Remote { peer: id, message }),
                    other => Err(ServerError::Remote {
                        peer: id,
                        message: format!("unexpected reply {other:?}"),
                    }),
                }
            }
            .await;
            (peer, attempt, result)
        }
    }

    /// Opens the stored bytes of `object` as an async reader (verified by the store as it
    /// streams). Returns (size, BLAKE3 hash, reader).
    async fn open_stored(&self, object: ObjectId) -> Result<(u64, [u8; 32], BlockingReader)> {
        let key = object.to_hex();
        let store = self.store()?;
        let reader = tokio::task::spawn_blocking(move || store.read(&key)).await??;
        let (size, hash) = (reader.size(), *reader.hash());
        Ok((size, hash, bridge::async_reader(reader)))
    }

    /// [`open_local`](Self::open_local), telling a copy found damaged when opened (store
    /// header, object header, cipher header) from a missing one, so that `get` fetches a
    /// good copy, whose commit replaces the damaged one.
    async fn open_local_checked(self: &Arc<Self>, name: &str, object: ObjectId) -> Result<Local> {
        match self.open_local(name, object).await {
            Ok(Some(reader)) => Ok(Local::Found(reader)),
            Ok(None) => Ok(Local::Missing),
            Err(e) if is_damage(&e) => {
                warn!(%name, %object, error = %e, "local copy is damaged; fetching another");
                Ok(Local::Damaged(e))
            }
            Err(e) => Err(e),
        }
    }

    /// The local copy of `name` as a decrypting reader, if there is one.
    async fn open_local(
        self: &Arc<Self>,
        name: &str,
        object: ObjectId,
    ) -> Result<Option<FileReader>> {
        let key = object.to_hex();
        let this = Arc::clone(self);
        let owned_name = name.to_owned();
        let opened = tokio::task::spawn_blocking(move || {
            let reader = match this.store()?.read(&key) {
                Ok(r) => r,
                Err(e) if e.is_not_found() => return Ok(None),
                Err(e) => return Err(ServerError::from(e)),
            };
            (this.decryptor)(reader, &owned_name, &key).map(Some)
        })
        .await??;
        Ok(opened.map(|(plain, len)| FileReader {
            inner: bridge::async_reader(plain),
            len,
        }))
    }

    /// Fetches `object` from the first peer that has it and delivers a verified copy.
    /// `name` labels errors and events. For [`Purpose::Get`] the object's lock is taken
    /// once a peer offers a copy (not while peers are asked, so concurrent misses run in
    /// parallel), and a copy committed meanwhile by a store or another fetch ends the fetch.
    async fn fetch(self: &Arc<Self>, name: &str, purpose: Purpose, object: ObjectId) -> Result<()> {
        let peers: Vec<Peer> = self
            .endpoint
            .peers()
            .into_iter()
            .filter(Peer::is_connected)
            .collect();
        if peers.is_empty() {
            return Err(ServerError::NotFound {
                name: name.to_owned(),
            });
        }
        // Ask everyone at once; offers queue up in arrival order.
        let (offer_tx, mut offers) = mpsc::channel(peers.len());
        let timeout = self.config.request_timeout;
        for peer in peers {
            let offer_tx = offer_tx.clone();
            let cancel = self.cancel.clone();
            tokio::spawn(async move {
                let id = peer.id();
                let ask = async {
                    let mut s = peer.open_stream().await?;
                    s.send(&Envelope::new(Message::Get { id: object })).await?;
                    match s.recv::<Envelope>().await? {
                        Some(Envelope {
                            message: Message::Found { size, hash },
                            ..
                        }) => Ok(Some((s, size, hash))),
                        Some(Envelope {
                            message: Message::NotFound,
                            ..
                        }) => Ok(None),
                        other => Err(ServerError::Remote {
                            peer: id,
                            message: format!("unexpected reply {other:?}"),
                        }),
                    }
                };
                let result = tokio::select! {
                    () = cancel.cancelled() => Err(ServerError::ShuttingDown),
                    r = tokio::time::timeout(timeout, ask) => r.unwrap_or_else(|_| {
                        Err(ServerError::Timeout { what: format!("reply from {id}") })
                    }),
                };
                let _ = offer_tx.send((id, result)).await;
            });
        }
        drop(offer_tx);
        let mut attempts = 0;
        let mut last: Option<ServerError> = None;
        let mut errors = 0;
        // `locked`: `None` until this fetch holds the object's lock; `Some(None)` when the
        // caller holds it (a repair).
        let (remember, mut locked, except) = match purpose {
            Purpose::Get => (true, None, None),
            Purpose::Repair { remember, except } => (remember, Some(None), except),
        };
        while let Some((peer, offer)) = offers.recv().await {
            match offer {
                Ok(Some((_, size, hash))) if except == Some((size, hash)) => {
                    debug!(%name, %peer, "offers the copy this node has; declined");
                }
                Ok(Some((s, size, hash))) => {
                    if locked.is_none() {
                        locked = Some(Some(self.objects.lock(object).await));
                        if let Local::Found(_) = self.open_local_checked(name, object).await? {
                            debug!(%name, "committed by someone else while asking peers");
                            return Ok(());
                        }
                    }
                    attempts += 1;
                    match self.download(name, remember, object, s, size, hash).await {
                        Ok(()) => {
                            info!(%name, %peer, size, "fetched");
                            self.emit(ServerEvent::Fetched {
                                name: name.to_owned(),
                                from: peer,
                                size,
                            });
                            return Ok(());
                        }
                        Err(e) => {
                            warn!(%name, %peer, error = %e, "fetch from peer failed, trying the next");
                            last = Some(e);
                        }
                    }
                }
                Ok(None) => {}
                Err(e) => {
                    debug!(%name, %peer, error = %e, "peer did not answer");
                    errors += 1;
                    if last.is_none() {
                        last = Some(e);
                    }
                }
            }
        }
        match last {
            Some(e @ ServerError::WrongKey { .. }) => Err(e),
            Some(e) if attempts > 0 => Err(ServerError::FetchFailed {
                name: name.to_owned(),
                attempts,
                last: e.to_string(),
            }),
            // A peer that did not answer (timed out, busy, gone) may hold it: not "not
            // found".
            Some(e) if errors > 0 => Err(ServerError::FetchFailed {
                name: name.to_owned(),
                attempts: 0,
                last: e.to_string(),
            }),
            _ => Err(ServerError::NotFound {
                name: name.to_owned(),
            }),
        }
    }

    /// Receives one offered body into the store, committing only a verified copy.
    async fn download(
        &self,
        name: &str,
        remember: bool,
        object: ObjectId,
        mut s: Substream,
        size: u64,
        hash: [u8; 32],
    ) -> Result<()> {
        let timeout = self.config.request_timeout;
        let peer = s.peer_id();
        s.send(&Envelope::new(Message::Proceed)).await?;
        // A holder that can no longer serve its offer (busy, or its copy changed) answers
        // `Error` instead of the body.
        let reply = tokio::time::timeout(timeout, s.recv_body_or_message::<Envelope>())
            .await
            .map_err(|_| ServerError::Timeout {
                what: format!("body from {peer}"),
            })?
            .map_err(|e| ServerError::Remote {
                peer,
                message: format!("no body after Proceed: {e}"),
            })?;
        let mut body: BodyReader = match reply {
            BodyOrMessage::Body(body) => body,
            BodyOrMessage::Message(
                Envelope {
                    message: Message::Error { message },
                    ..
                },
                _,
            ) => return Err(ServerError::Remote { peer, message }),
            BodyOrMessage::Message(other, _) => {
                return Err(ServerError::Remote {
                    peer,
                    message: format!("expected a body after Proceed, got {:?}", other.message),
                });
            }
        };
        if body.len() != size {
            return Err(ServerError::Remote {
                peer,
                message: format!("announced {size} bytes but sent a body of {}", body.len()),
            });
        }
        let (tx, rx) = bridge::channel();
        let store = self.store()?;
        let names = self.names.clone();
        let fingerprint = self.fingerprint;
        let cipher = Arc::clone(&self.cipher);
        let key = object.to_hex();
        let owned_name = name.to_owned();
        let writer = tokio::task::spawn_blocking(move || -> Result<u64> {
            let mut src = ChannelReader::new(rx);
            let head = object::read_header(&mut src).map_err(|e| ServerError::BadObject {
                id: key.clone(),
                reason: format!("cannot read header: {e}"),
            })?;
            match object::check_header(&head, &fingerprint) {
                HeaderCheck::Ours => {}
                HeaderCheck::OtherKey => {
                    return Err(ServerError::WrongKey { name: owned_name });
                }
                HeaderCheck::Invalid(reason) => {
                    return Err(ServerError::BadObject {
                        id: key,
                        reason: reason.to_owned(),
                    });
                }
            }
            // The cipher authenticates the ciphertext as it streams in: a copy it rejects
            // fails the store's read at the end, so it is never committed.
            let src = Verified::new(src, cipher).map_err(|source| ServerError::Io {
                op: "start verifier",
                path: key.clone().into(),
                source,
            })?;
            // The name before the commit, as for a local store.
            if remember {
                names.put(&object, &owned_name)?;
            }
            // The store's own hashing pass checks the announced size and hash.
            let written = store.write_expecting(
                &key,
                io::Cursor::new(head).chain(src),
                Expected::new(size, hash),
            );
            if written.is_err() && remember {
                forget_unused_name(&store, &names, &object);
            }
            Ok(written?)
        });
        let pumped = bridge::pump_body(&mut body, &tx, Some(timeout)).await;
        drop(tx);
        let written = writer.await?;
        match (pumped, written) {
            (_, Err(e)) => Err(e),
            (Err(e), Ok(_)) => Err(ServerError::Io {
                op: "receive body",
                path: name.into(),
                source: e,
            }),
            (Ok(_), Ok(_)) => Ok(()),
        }
    }

    /// Deletes the local copy; with `stop_sending`, also voids this node's replications of
    /// the object in flight (returned, to be waited for).
    async fn delete_local(
        &self,
        object: ObjectId,
        name: Option<String>,
        by: Option<NodeId>,
        stop_sending: bool,
    ) -> Result<(bool, Vec<Arc<Sending>>)> {
        let _object = self.objects.lock(object).await;
        let sending = if stop_sending {
            self.outgoing.void(&object)
        } else {
            Vec::new()
        };
        let key = object.to_hex();
        let store = self.store()?;
        let names = self.names.clone();
        let existed = tokio::task::spawn_blocking(move || -> Result<bool> {
            let existed = store.delete(&key)?;
            names.remove(&object)?;
            Ok(existed)
        })
        .await??;
        if existed {
            self.emit(ServerEvent::Deleted { object, name, by });
        }
        Ok((existed, sending))
    }

    /// Asks every connected peer to delete `object`; the peers that held it.
    async fn delete_remote(&self, name: &str, object: ObjectId) -> Result<Vec<NodeId>> {
        let timeout = self.config.request_timeout;
        let asks = self
            .endpoint
            .peers()
            .into_iter()
            .filter(Peer::is_connected)
            .map(|peer| async move {
                let id = peer.id();
                let ask = async {
                    let mut s = peer.open_stream().await?;
                    s.send(&Envelope::new(Message::Delete { id: object }))
                        .await?;
                    match s.recv::<Envelope>().await? {
                        Some(Envelope {
                            message: Message::Deleted { existed },
                            ..
                        }) => {
                            let _ = s.finish().await;
                            Ok(existed)
                        }
                        other => Err(ServerError::Remote {
                            peer: id,
                            message: format!("unexpected reply {other:?}"),
                        }),
                    }
                };
                let result = tokio::time::timeout(timeout, ask)
                    .await
                    .unwrap_or_else(|_| {
                        Err(ServerError::Timeout {
                            what: format!("delete on {id}"),
                        })
                    });
                (id, result)
            });
        let results = futures::future::join_all(asks).await;
        let mut held = Vec::new();
        let mut failed = Vec::new();
        for (id, result) in results {
            match result {
                Ok(true) => held.push(id),
                Ok(false) => {}
                Err(e) => {
                    warn!(%name, peer = %id, error = %e, "remote delete failed");
                    failed.push(id);
                }
            }
        }
        if failed.is_empty() {
            Ok(held)
        } else {
            Err(ServerError::DeleteIncomplete {
                name: name.to_owned(),
                failed,
            })
        }
    }

    // ---- serving peers ----

    async fn serve(self: Arc<Self>, from: Peer, mut s: Substream) {
        let first = tokio::time::timeout(self.config.request_timeout, s.recv::<Envelope>()).await;
        let envelope = match first {
            Ok(Ok(Some(envelope))) => envelope,
            Ok(Ok(None)) => return,
            Ok(Err(e)) => {
                debug!(peer = %from.id(), error = %e, "bad request");
                return;
            }
            Err(_) => {
                debug!(peer = %from.id(), "request timed out");
                return;
            }
        };
        if envelope.version != PROTOCOL_VERSION {
            let _ = s
                .send(&Envelope::new(Message::Error {
                    message: format!(
                        "unsupported protocol version {} (this node speaks {PROTOCOL_VERSION})",
                        envelope.version
                    ),
                }))
                .await;
            return;
        }
        // (A `Get` takes its slot only once the requester says `Proceed`: see `serve_get`.)
        let _slot = match &envelope.message {
            Message::Put { .. } | Message::PutFollow { .. } => {
                match self.transfer_slot(from.id()).await {
                    Ok(slot) => Some(slot),
                    Err(message) => return refuse(s, from.id(), message).await,
                }
            }
            _ => None,
        };
        let result = match envelope.message {
            Message::Put { id, size, hash } => self.serve_put(from.id(), s, id, size, hash).await,
            Message::PutFollow { id, keepalive_ms } => {
                let keepalive = Duration::from_millis(keepalive_ms.into());
                self.serve_put_follow(from.id(), s, id, keepalive).await
            }
            Message::Get { id } => self.serve_get(from.id(), s, id).await,
            Message::Delete { id } => self.serve_delete(from.id(), s, id).await,
            other => {
                let _ = s
                    .send(&Envelope::new(Message::Error {
                        message: format!("unexpected request {other:?}"),
                    }))
                    .await;
                Ok(())
            }
        };
        if let Err(e) = result {
            debug!(peer = %from.id(), error = %e, "request failed");
        }
    }

    /// Waits for a free transfer slot for a request of `peer`: below the node's
    /// `Config::max_incoming_transfers` and the peer's share of them (at most the request
    /// timeout; shutdown ends the wait), or says why there is none.
    async fn transfer_slot(&self, peer: NodeId) -> std::result::Result<Slot<'_>, String> {
        self.slot(
            &self.incoming,
            "serving",
            "transfers",
            peer,
            self.config.request_timeout,
        )
        .await
    }

    /// Waits up to `wait` for one of `slots` for `peer` (shutdown ends the wait), or says why
    /// there is none ("busy: {doing} ... {what}").
    async fn slot<'a>(
        &self,
        slots: &'a TransferSlots,
        doing: &str,
        what: &str,
        peer: NodeId,
        wait: Duration,
    ) -> std::result::Result<Slot<'a>, String> {
        let deadline = deadline_after(wait);
        tokio::select! {
            () = self.cancel.cancelled() => Err("this node is shutting down".to_owned()),
            slot = slots.acquire(peer, deadline) => slot.map_err(|refused| match refused {
                Refused::Closed => "this node is shutting down".to_owned(),
                Refused::Node(limit) => {
                    format!("busy: {doing} {limit} {what} already (try again later)")
                }
                Refused::PeerShare(share) => format!(
                    "busy: {doing} this peer's share of {share} {what} already \
                     (try again later)"
                ),
            }),
        }
    }

    async fn serve_put(
        &self,
        from: NodeId,
        s: Substream,
        object: ObjectId,
        size: u64,
        hash: [u8; 32],
    ) -> Result<()> {
        let mut body = s.recv_body().await?;
        if body.len() != size {
            return Err(ServerError::Remote {
                peer: from,
                message: "body length differs from the announced size".to_owned(),
            });
        }
        let _object = self.objects.lock(object).await;
        let (tx, rx) = bridge::channel();
        let store = self.store()?;
        let key = object.to_hex();
        let writer = tokio::task::spawn_blocking(move || {
            store.write_expecting(&key, ChannelReader::new(rx), Expected::new(size, hash))
        });
        let pumped = bridge::pump_body(&mut body, &tx, Some(self.config.request_timeout)).await;
        drop(tx);
        let written = writer.await?;
        self.answer_put(from, object, body.into_substream().ok(), pumped, written)
            .await
    }

    /// Receives a replica streamed while its origin writes it (`PutFollow`): `Part` bodies
    /// into the store's staging file, then `PutEnd`'s size and hash, checked before the
    /// commit. The origin's next message (a part, `Waiting` or the trailer) must come within
    /// the replication timeout, or three of the origin's keep-alive intervals if longer (at
    /// most [`MAX_FOLLOW_SILENCE`]), each read within a part within the request timeout;
    /// shutdown ends the wait. The object's lock
    /// is held throughout, as for any replica, so a delete or store of the object on this
    /// node is ordered before or after it, never overtaken by its commit.
    async fn serve_put_follow(
        &self,
        from: NodeId,
        s: Substream,
        object: ObjectId,
        keepalive: Duration,
    ) -> Result<()> {
        let _object = self.objects.lock(object).await;
        let (tx, rx) = bridge::channel();
        let trailer = Arc::new(Mutex::new(None::<Expected>));
        let writer = {
            let (store, key) = (self.store()?, object.to_hex());
            let trailer = Arc::clone(&trailer);
            tokio::task::spawn_blocking(move || {
                store.write_expecting_later(&key, ChannelReader::new(rx), move || {
                    lock(&trailer).take().ok_or_else(|| {
                        io::Error::other("the stream ended without its size and hash")
                    })
                })
            })
        };
        let mut s = Some(s);
        let received = async {
            let mut total = 0u64;
            loop {
                // (Put back after every message; only a transport failure leaves it out.)
                let sub = s
                    .as_mut()
                    .ok_or_else(|| io::Error::other("substream lost"))?;
                let wait = (3 * keepalive)
                    .min(MAX_FOLLOW_SILENCE)
                    .max(self.config.replication_timeout);
                let next = tokio::select! {
                    () = self.cancel.cancelled() => {
                        return Err(io::Error::other("this node is shutting down"));
                    }
                    next = tokio::time::timeout(wait, sub.recv::<Envelope>()) => next,
                };
                let next = next
                    .map_err(|_| {
                        io::Error::new(
                            io::ErrorKind::TimedOut,
                            format!("nothing from the origin for {wait:?}"),
                        )
                    })?
                    .map_err(io::Error::other)?;
                match next.map(|e| e.message) {
                    Some(Message::Part) => {
                        let sub = s.take().ok_or_else(|| io::Error::other("substream lost"))?;
                        let request = self.config.request_timeout;
                        let mut body = tokio::time::timeout(request, sub.recv_body())
                            .await
                            .map_err(|_| {
                                io::Error::new(
                                    io::ErrorKind::TimedOut,
                                    format!("no part body for {request:?}"),
                                )
                            })?
                            .map_err(io::Error::other)?;
                        total += bridge::forward_body(&mut body, &tx, Some(request)).await?;
                        s = Some(body.into_substream().map_err(io::Error::other)?);
                    }
                    Some(Message::Waiting) => {}
                    Some(Message::PutEnd { size, hash }) => {
                        *lock(&trailer) = Some(Expected::new(size, hash));
                        tx.send(Ok(None))
                            .await
                            .map_err(|_| io::Error::other("the store stopped reading"))?;
                        return Ok(total);
                    }
                    other => {
                        return Err(io::Error::new(
                            io::ErrorKind::InvalidData,
                            format!("unexpected {other:?} in a followed put"),
                        ));
                    }
                }
            }
        }
        .await;
        drop(tx); // without the end marker after a failure: the write fails, nothing commits
        let written = writer.await?;
        self.answer_put(from, object, s, received, written).await
    }

    /// Answers a replica's sender (`Stored` or `Error`, when the substream is still
    /// usable) and reports the outcome.
    async fn answer_put(
        &self,
        from: NodeId,
        object: ObjectId,
        s: Option<Substream>,
        received: io::Result<u64>,
        written: dfs_store::Result<u64>,
    ) -> Result<()> {
        // The cause first: a receiving failure explains the store's (which only saw its
        // source end), unless the store stopped first (then receiving found nobody reading).
        let cause = match (&received, &written) {
            (Ok(_), Ok(_)) => None,
            (Err(e), Err(w)) if e.kind() == io::ErrorKind::BrokenPipe => Some(w.to_string()),
            (Err(e), _) => Some(e.to_string()),
            (_, Err(w)) => Some(w.to_string()),
        };
        let reply = match cause {
            None => Message::Stored,
            Some(message) => Message::Error { message },
        };
        if let Some(mut s) = s {
            s.send(&Envelope::new(reply)).await?;
            let _ = s.finish().await;
        }
        let size = written?;
        received.map_err(|source| ServerError::Io {
            op: "receive replica",
            path: object.to_hex().into(),
            source,
        })?;
        debug!(%object, peer = %from, size, "replica stored");
        self.emit(ServerEvent::ReplicaStored { object, from, size });
        Ok(())
    }

    /// Answers a `Get`: `Found{size, hash}` from the object's header (nothing is kept open
    /// while the requester decides), then, on `Proceed`, a transfer slot and the body. The
    /// requester asks every holder at once and keeps the offers it does not take yet, so an
    /// offer must cost nothing but its substream. The object opened after `Proceed` must
    /// still be the one offered (same size and hash); else, or when no slot frees up in
    /// time, the answer is an `Error` and the requester takes another offer.
    async fn serve_get(&self, from: NodeId, mut s: Substream, object: ObjectId) -> Result<()> {
        let key = object.to_hex();
        let store = self.store()?;
        let stat = tokio::task::spawn_blocking(move || store.stat(&key)).await?;
        let (size, hash) = match stat {
            Ok(meta) => (meta.size(), *meta.hash()),
            Err(e) if e.is_not_found() => {
                s.send(&Envelope::new(Message::NotFound)).await?;
                let _ = s.finish().await;
                return Ok(());
            }
            Err(e) => {
                let _ = s
                    .send(&Envelope::new(Message::Error {
                        message: e.to_string(),
                    }))
                    .await;
                return Err(e.into());
            }
        };
        // An offer waits for the requester's `Proceed` holding no transfer slot, but a
        // substream: offers are bounded too (OFFERS_PER_TRANSFER per transfer slot, half of
        // them per peer, half the endpoint's inbound substreams in all), so parked offers
        // cannot use up the substreams every peer needs.
        let wait = self.config.request_timeout;
        let offer = match self
            .slot(&self.offers, "holding", "offers", from, wait)
            .await
        {
            Ok(offer) => offer,
            Err(message) => {
                refuse(s, from, message).await;
                return Ok(());
            }
        };
        s.send(&Envelope::new(Message::Found { size, hash }))
            .await?;
        let next = tokio::select! {
            () = self.cancel.cancelled() => return Ok(()),
            next = tokio::time::timeout(PROCEED_WAIT, s.recv::<Envelope>()) => next,
        };
        match next {
            Ok(Ok(Some(Envelope {
                message: Message::Proceed,
                ..
            }))) => {}
            // The requester took another peer's copy (or went away).
            _ => return Ok(()),
        }
        drop(offer);
        // At most half the requester's own timeout, so that it hears "busy" rather than
        // timing out itself.
        let wait = self.config.request_timeout / 2;
        let _slot = match self
            .slot(&self.incoming, "serving", "transfers", from, wait)
            .await
        {
            Ok(slot) => slot,
            Err(message) => {
                refuse(s, from, message).await;
                return Ok(());
            }
        };
        let key = object.to_hex();
        let store = self.store()?;
        let opened = tokio::task::spawn_blocking(move || store.read(&key)).await?;
        let refusal = match &opened {
            Ok(reader) if reader.size() == size && *reader.hash() == hash => None,
            Ok(_) => Some("the object changed since it was offered".to_owned()),
            Err(e) if e.is_not_found() => {
                Some("the object is gone since it was offered".to_owned())
            }
            Err(e) => Some(e.to_string()),
        };
        if let Some(message) = refusal {
            debug!(peer = %from, %object, %message, "offer withdrawn");
            let _ = s.send(&Envelope::new(Message::Error { message })).await;
            let _ = s.finish().await;
            return opened.map(drop).map_err(ServerError::from);
        }
        let reader = opened?;
        s.send_body(size, bridge::async_reader(reader)).await?;
        let _ = s.finish().await;
        Ok(())
    }

    async fn serve_delete(&self, from: NodeId, mut s: Substream, object: ObjectId) -> Result<()> {
        let existed = match self.delete_local(object, None, Some(from), false).await {
            Ok((existed, _)) => existed,
            Err(e) => {
                let _ = s
                    .send(&Envelope::new(Message::Error {
                        message: e.to_string(),
                    }))
                    .await;
                return Err(e);
            }
        };
        s.send(&Envelope::new(Message::Deleted { existed })).await?;
        let _ = s.finish().await;
        Ok(())
    }

    // ---- membership ----

    fn on_connected(self: &Arc<Self>, peer: Peer) {
        let id = peer.id();
        info!(node = %self.node_id, peer = %id, addr = %peer.addr(), "peer joined");
        lock(&self.membership).connected(id, peer.addr());
        self.emit(ServerEvent::PeerJoined {
            id,
            addr: peer.addr().to_owned(),
        });
        let others: Vec<Peer> = self
            .endpoint
            .peers()
            .into_iter()
            .filter(|p| p.id() != id && p.is_connected())
            .collect();
        let hello = Envelope::new(Message::Hello {
            peers: others
                .iter()
                .map(|p| PeerAddr {
                    id: p.id(),
                    addr: p.addr().to_owned(),
                })
                .collect(),
        });
        let news = Envelope::new(Message::Peers {
            peers: vec![PeerAddr {
                id,
                addr: peer.addr().to_owned(),
            }],
        });
        let this = Arc::clone(self);
        self.tracker.spawn(async move {
            if let Err(e) = peer.send(&hello).await {
                debug!(peer = %id, error = %e, "hello failed");
                this.drop_dead(id, &hello).await;
            }
            for other in others {
                if let Err(e) = other.send(&news).await {
                    debug!(peer = %other.id(), error = %e, "peer announcement failed");
                    this.drop_dead(other.id(), &news).await;
                }
            }
        });
    }

    /// A send of `message` to `id` failed: drop the connection so the departure is reported
    /// and the repair loop dials the node again. But first send once more on the node's
    /// current connection: the failed send may have caught the queue of a connection the
    /// transport had just replaced (simultaneous dials), and dropping would then cut the
    /// healthy replacement.
    async fn drop_dead(&self, id: NodeId, message: &Envelope) {
        if let Some(peer) = self.endpoint.peer(&id)
            && peer.send(message).await.is_ok()
        {
            debug!(peer = %id, "a send failed on a replaced connection; the current one works");
            return;
        }
        if self.endpoint.disconnect(&id).await {
            debug!(peer = %id, "dropped a dead connection");
        }
    }

    /// Tells every connected peer every node this one is connected to (membership
    /// anti-entropy; also how a dead connection is found: its send fails).
    fn gossip(self: &Arc<Self>) {
        let peers = self.endpoint.peers();
        let list: Vec<PeerAddr> = peers
            .iter()
            .map(|p| PeerAddr {
                id: p.id(),
                addr: p.addr().to_owned(),
            })
            .collect();
        for peer in peers {
            let message = Envelope::new(Message::Peers {
                peers: list.iter().filter(|p| p.id != peer.id()).cloned().collect(),
            });
            let this = Arc::clone(self);
            self.tracker.spawn(async move {
                if let Err(e) = peer.send(&message).await {
                    debug!(peer = %peer.id(), error = %e, "gossip failed");
                    this.drop_dead(peer.id(), &message).await;
                }
            });
        }
    }

    fn on_peer_list(self: &Arc<Self>, peers: Vec<PeerAddr>) {
        for p in peers.into_iter().take(MAX_LIST) {
            let is_self = p.id == self.node_id;
            if self.endpoint.peer(&p.id).is_some_and(|x| x.is_connected()) {
                continue;
            }
            if lock(&self.membership).learn(&p, is_self) == Learned::Skip {
                continue;
            }
            let this = Arc::clone(self);
            let task = tokio::spawn(async move {
                let joined = join(
                    Arc::downgrade(&this),
                    p.addr.clone(),
                    Some(p.id),
                    LEARNED_ATTEMPTS,
                    false,
                    this.cancel.clone(),
                )
                .await;
                lock(&this.membership).dial_ended(&p, joined);
            });
            self.add_background(task);
        }
    }
}

/// Bytes per `Part` of a replica that follows the local write.
const FOLLOW_PART: u64 = 4 << 20;
/// Longest silence of an origin streaming a followed replica (see [`Following::send`]).
const KEEPALIVE: Duration = Duration::from_secs(5);
/// The most a node waits for the next message of a followed replica, whatever keep-alive
/// interval its origin announces.
const MAX_FOLLOW_SILENCE: Duration = Duration::from_secs(600);

/// A local write that replicas follow while it happens ([`Store::write_tailed`]).
#[derive(Clone)]
struct Following {
    tail: Tail,
    /// Bumped by the writer on every change of the tail.
    progress: watch::Receiver<u64>,
    /// `true` once the local copy is committed.
    committed: watch::Receiver<bool>,
}

impl Following {
    /// A fresh tail, and the sender that marks the local commit.
    fn new() -> (Following, watch::Sender<bool>) {
        let (bump, progress) = watch::channel(0u64);
        let tail = Tail::with_notify(move || bump.send_modify(|n| *n = n.wrapping_add(1)));
        let (done, committed) = watch::channel(false);
        let following = Following {
            tail,
            progress,
            committed,
        };
        (following, done)
    }

    /// Sends the bytes as they reach the local file, as `Part` bodies of up to
    /// [`FOLLOW_PART`], then `PutEnd` with the committed size and hash once the store is
    /// complete (its name recorded, then the local commit). Waits for progress without holding a
    /// thread; when nothing new came for `keepalive`, sends what there is, or `Waiting`, so
    /// the peer can tell a slow source from a dead origin. A failed local write is an error
    /// here (the peer then never gets the trailer, so it commits nothing).
    async fn send(
        mut self,
        s: &mut Substream,
        keepalive: Duration,
        void: &CancellationToken,
    ) -> Result<()> {
        let peer = s.peer_id();
        let voided = || ServerError::Remote {
            peer,
            message: "not sent: the file was deleted on this node meanwhile".to_owned(),
        };
        let mut follower: Follower = self.tail.follow();
        let mut idle = false;
        // The peer must hear from us by then: reset by every message sent, not by progress
        // (a trickling source moves the tail often yet may take long to fill a part).
        let mut speak_by = deadline_after(keepalive);
        loop {
            self.progress.borrow_and_update();
            let next = if idle {
                follower.try_next_available(FOLLOW_PART)?
            } else {
                follower.try_next(FOLLOW_PART)?
            };
            match next {
                Some(Next::Bytes(segment)) => {
                    idle = false;
                    // (A part cut short commits nothing: the peer needs the trailer.)
                    let sent = async {
                        s.send(&Envelope::new(Message::Part)).await?;
                        s.send_body(segment.len(), bridge::async_reader(segment))
                            .await
                    };
                    tokio::select! {
                        () = void.cancelled() => return Err(voided()),
                        sent = sent => drop(sent?),
                    }
                    speak_by = deadline_after(keepalive);
                }
                Some(Next::End { size, hash }) => {
                    // The object is committed (its name was recorded before); the store is
                    // done once `committed` says so.
                    if self.committed.wait_for(|done| *done).await.is_err() {
                        return Err(ServerError::Remote {
                            peer: s.peer_id(),
                            message: "not sent: the local store failed".to_owned(),
                        });
                    }
                    // Checked right before the trailer, never while it is sent: a delete
                    // from now on waits for this attempt's answer.
                    if void.is_cancelled() {
                        return Err(voided());
                    }
                    s.send(&Envelope::new(Message::PutEnd { size, hash }))
                        .await?;
                    return Ok(());
                }
                None if idle => {
                    let waiting = Envelope::new(Message::Waiting);
                    tokio::select! {
                        () = void.cancelled() => return Err(voided()),
                        sent = s.send(&waiting) => sent?,
                    }
                    idle = false;
                    speak_by = deadline_after(keepalive);
                }
                None => {
                    // (The tail, which owns the sender, lives as long as `self`.)
                    let progress = self.progress.changed();
                    idle = tokio::select! {
                        () = void.cancelled() => return Err(voided()),
                        waited = tokio::time::timeout_at(speak_by, progress) => waited.is_err(),
                    };
                }
            }
        }
    }
}

/// What [`Inner::open_local_checked`] found.
enum Local {
    Found(FileReader),
    Missing,
    /// A local copy that fails its header checks, with the error.
    Damaged(ServerError),
}

/// Why [`Inner::fetch`] runs.
#[derive(Clone, Copy)]
enum Purpose {
    /// For `get`: takes the object's lock itself, records the name.
    Get,
    /// For `scrub` and the heal task: the caller holds the lock; `remember` records the
    /// name; offers of the stored copy `(size, hash)` in `except` are declined (the heal
    /// task's local copy is sound but older than the write it lost).
    Repair {
        remember: bool,
        except: Option<(u64, [u8; 32])>,
    },
}

/// Whether `e` reports a damaged local object (as opposed to a missing one or an I/O
/// failure).
fn is_damage(e: &ServerError) -> bool {
    match e {
        ServerError::Store(e) => e.is_corrupt(),
        ServerError::BadObject { .. } => true,
        _ => false,
    }
}

/// Answers a peer's request with `Error(message)` and finishes the substream (best effort:
/// the peer may be gone).
async fn refuse(mut s: Substream, peer: NodeId, message: String) {
    debug!(%peer, %message, "request refused");
    let _ = s.send(&Envelope::new(Message::Error { message })).await;
    let _ = s.finish().await;
}

/// The event loop: membership and incoming requests. Runs until the endpoint's event stream
/// ends (after `Endpoint::close`) or the node is dropped.
async fn drive<T: Transport, P: PathTransform, C: Cipher>(
    inner: Weak<Inner<T, P, C>>,
    mut events: Events,
    cancel: CancellationToken,
) {
    // Peers already warned about for speaking another protocol version.
    let mut other_versions = HashSet::new();
    loop {
        let event = tokio::select! {
            () = cancel.cancelled() => break,
            event = events.next() => match event {
                Some(event) => event,
                None => break,
            },
        };
        let Some(inner) = inner.upgrade() else { break };
        match event {
            Event::PeerConnected(peer) => inner.on_connected(peer),
            Event::PeerDisconnected { id, reason } => {
                let reason = reason.map_or_else(|| "closed".to_owned(), |e| e.to_string());
                info!(node = %inner.node_id, peer = %id, %reason, "peer left");
                lock(&inner.membership).disconnected(&id);
                other_versions.remove(&id);
                inner.emit(ServerEvent::PeerLeft { id });
            }
            Event::Message { .. } if inner.closing.load(Ordering::SeqCst) => {}
            Event::Message { from, message } => match message.decode::<Envelope>() {
                Ok(Envelope {
                    version: PROTOCOL_VERSION,
                    message: Message::Hello { peers } | Message::Peers { peers },
                }) => inner.on_peer_list(peers),
                Ok(Envelope { version, .. }) if version != PROTOCOL_VERSION => {
                    if !other_versions.insert(from.id()) {
                        continue;
                    }
                    warn!(
                        peer = %from.id(),
                        version,
                        "peer speaks another dfs-server protocol version \
                         (this node speaks {PROTOCOL_VERSION}): its messages are ignored"
                    );
                }
                Ok(other) => {
                    debug!(peer = %from.id(), message = ?other, "ignored control message");
                }
                Err(e) => debug!(peer = %from.id(), error = %e, "undecodable control message"),
            },
            Event::Stream { from, stream } => {
                if inner.closing.load(Ordering::SeqCst) {
                    debug!(peer = %from.id(), "shutting down: request refused");
                    drop(stream);
                } else {
                    let this = Arc::clone(&inner);
                    inner.tracker.spawn(this.serve(from, stream));
                }
            }
            _ => {}
        }
    }
}

/// Redials known nodes that are not connected (a connection lost in a simultaneous-dial
/// race, a peer that restarted), until shutdown.
async fn repair<T: Transport, P: PathTransform, C: Cipher>(
    inner: Weak<Inner<T, P, C>>,
    cancel: CancellationToken,
) {
    let mut tick = tokio::time::interval(REPAIR_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = cancel.cancelled() => return,
            _ = tick.tick() => {}
        }
        let Some(inner) = inner.upgrade() else { return };
        if inner.closing.load(Ordering::SeqCst) {
            return;
        }
        inner.gossip();
        let missing: Vec<PeerAddr> = lock(&inner.membership)
            .missing()
            .into_iter()
            .filter(|p| !inner.endpoint.peer(&p.id).is_some_and(|p| p.is_connected()))
            .collect();
        if !missing.is_empty() {
            debug!(count = missing.len(), "redialling known peers");
            inner.on_peer_list(missing);
        }
    }
}

/// Fetches again from peers the objects whose newest write the store lost (a packed write
/// voided at open: cut by a crash, or damaged while the node was down), so the node does
/// not serve their previous version until someone runs `scrub`. Tries at start and each
/// time a peer joins, until no such object is left (fetched, or written or deleted since).
async fn heal<T: Transport, P: PathTransform, C: Cipher>(
    inner: Weak<Inner<T, P, C>>,
    cancel: CancellationToken,
) {
    let Some(mut joins) = inner.upgrade().map(|inner| inner.events.subscribe()) else {
        return;
    };
    loop {
        let Some(this) = inner.upgrade() else { return };
        let Ok(store) = this.store() else { return };
        let lost = store.lost_writes();
        drop(store);
        if lost.is_empty() {
            return;
        }
        if this.endpoint.peers().iter().any(Peer::is_connected) {
            for object in lost.iter().filter_map(|key| ObjectId::from_hex(key)) {
                let replaced = tokio::select! {
                    () = cancel.cancelled() => return,
                    replaced = this.heal_one(object) => replaced,
                };
                match replaced {
                    Ok(true) => {
                        info!(%object, "fetched again an object whose newest write was lost")
                    }
                    Ok(false) => debug!(%object, "written or deleted since its write was lost"),
                    Err(e) => {
                        debug!(%object, error = %e, "an object whose newest write was lost: no copy yet")
                    }
                }
            }
        }
        drop(this);
        loop {
            let event = tokio::select! {
                () = cancel.cancelled() => return,
                event = joins.recv() => event,
            };
            match event {
                Ok(ServerEvent::PeerJoined { .. })
                | Err(broadcast::error::RecvError::Lagged(_)) => break,
                Ok(_) => {}
                Err(broadcast::error::RecvError::Closed) => return,
            }
        }
    }
}

/// Dials `addr` until connected, at most `attempts` times, with exponential backoff between
/// attempts (the first one waits first when `wait_first`). Stops early when the node `id`
/// is connected some other way.
async fn join<T: Transport, P: PathTransform, C: Cipher>(
    inner: Weak<Inner<T, P, C>>,
    addr: String,
    id: Option<NodeId>,
    attempts: u32,
    wait_first: bool,
    cancel: CancellationToken,
) -> bool {
    let mut delay = BACKOFF_START;
    for attempt in 0..attempts {
        if wait_first || attempt > 0 {
            tokio::select! {
                () = cancel.cancelled() => return false,
                () = tokio::time::sleep(delay) => {} // backoff between connection attempts
            }
            delay = (delay * 2).min(BACKOFF_MAX);
        }
        let Some(endpoint) = inner.upgrade().map(|i| i.endpoint.clone()) else {
            return false;
        };
        if let Some(id) = id
            && endpoint.peer(&id).is_some_and(|p| p.is_connected())
        {
            return true;
        }
        let result = tokio::select! {
            () = cancel.cancelled() => return false,
            r = endpoint.connect(&addr) => r,
        };
        match result {
            Ok(peer) => {
                if let Some(id) = id
                    && peer.id() != id
                {
                    // The address now belongs to another node (the one named restarted with
                    // a new id, or the list was stale): keep that connection, stop dialling.
                    debug!(%addr, expected = %id, got = %peer.id(), "another node answered");
                    return false;
                }
                debug!(%addr, peer = %peer.id(), "connected");
                return true;
            }
            Err(e) => debug!(%addr, attempt, error = %e, "connection attempt failed"),
        }
    }
    warn!(%addr, attempts, "giving up on peer address");
    false
}

#[cfg(test)]
mod tests {
    fn is_send_sync<X: Send + Sync + 'static>() {}

    #[test]
    fn handles_are_send_and_sync() {
        is_send_sync::<super::FileServer<dfs_transport::MemoryTransport>>();
        is_send_sync::<super::FileReader>();
    }
}
