//! Node configuration and its builder.

use std::path::{Path, PathBuf};
use std::time::Duration;

use dfs_crypto::Key;
use dfs_transport::NetworkSecret;

/// The most [`ConfigBuilder::max_incoming_transfers`] accepts: half of tokio's default
/// blocking pool (512 threads), as each transfer served may hold one of its threads.
pub const MAX_INCOMING_TRANSFERS: usize = 256;

/// How many peers must acknowledge a durable copy before [`store`](crate::FileServer::store)
/// returns.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum Replication {
    /// Every peer connected when the store starts (the Go original's broadcast).
    #[default]
    AllConnected,
    /// Exactly this many peers, chosen by rendezvous hashing of the object id over the
    /// connected peers (a failed peer is replaced by the next candidate).
    Count(usize),
    /// Keep the file on this node only.
    None,
}

/// Where a [`delete`](crate::FileServer::delete) applies.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Scope {
    /// Remove this node's copy only (what the Go original did).
    Local,
    /// Remove this node's copy and ask every connected peer to remove theirs.
    Everywhere,
}

/// A node's configuration; build it with [`Config::builder`].
///
/// ```
/// use std::time::Duration;
/// use dfs_server::{Config, Replication};
///
/// let config = Config::builder("/tmp/dfs-node-a")
///     .listen_addr("127.0.0.1:0")
///     .bootstrap(["127.0.0.1:4000"])
///     .replication(Replication::Count(2))
///     .replication_timeout(Duration::from_secs(30))
///     .build();
/// assert_eq!(config.replication(), Replication::Count(2));
/// assert_eq!(config.bootstrap_addrs(), ["127.0.0.1:4000"]);
/// ```
#[derive(Clone, Debug)]
pub struct Config {
    pub(crate) root: PathBuf,
    pub(crate) listen_addr: String,
    pub(crate) bootstrap: Vec<String>,
    pub(crate) data_key: Option<Key>,
    pub(crate) network_secret: Option<NetworkSecret>,
    pub(crate) replication: Replication,
    pub(crate) replication_timeout: Duration,
    pub(crate) request_timeout: Duration,
    pub(crate) bootstrap_attempts: u32,
    pub(crate) fsync: bool,
    pub(crate) event_capacity: usize,
    pub(crate) max_incoming_transfers: usize,
    pub(crate) pack_small_objects: u32,
}

impl Config {
    /// Starts a builder for a node whose state lives under `root` (created if missing).
    pub fn builder(root: impl Into<PathBuf>) -> ConfigBuilder {
        ConfigBuilder {
            config: Config {
                root: root.into(),
                listen_addr: "127.0.0.1:0".to_owned(),
                bootstrap: Vec::new(),
                data_key: None,
                network_secret: None,
                replication: Replication::AllConnected,
                replication_timeout: Duration::from_secs(120),
                request_timeout: Duration::from_secs(10),
                bootstrap_attempts: 8,
                fsync: true,
                event_capacity: 1024,
                max_incoming_transfers: 64,
                pack_small_objects: 0,
            },
        }
    }

    /// The node's root directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The address the node listens on (as configured; see
    /// [`FileServer::local_addr`](crate::FileServer::local_addr) for the bound one).
    pub fn listen_addr(&self) -> &str {
        &self.listen_addr
    }

    /// The addresses dialled at start.
    pub fn bootstrap_addrs(&self) -> &[String] {
        &self.bootstrap
    }

    /// The replication policy.
    pub fn replication(&self) -> Replication {
        self.replication
    }

    /// How long `store` waits for replica acknowledgements.
    pub fn replication_timeout(&self) -> Duration {
        self.replication_timeout
    }

    /// Per-peer timeout of a `get` request (reply, and each read of the body).
    pub fn request_timeout(&self) -> Duration {
        self.request_timeout
    }

    /// Whether writes are fsynced before they count as durable.
    pub fn fsync(&self) -> bool {
        self.fsync
    }

    /// How many peer requests that move file bytes this node serves at once (a peer holds
    /// at most half of them, at least one).
    pub fn max_incoming_transfers(&self) -> usize {
        self.max_incoming_transfers
    }

    /// Objects received from peers of at most this many stored bytes go to the store's
    /// pack (0: off); see [`ConfigBuilder::pack_small_objects`].
    pub fn pack_small_objects(&self) -> u32 {
        self.pack_small_objects
    }
}

/// Builder of a [`Config`].
#[derive(Debug)]
#[must_use]
pub struct ConfigBuilder {
    config: Config,
}

impl ConfigBuilder {
    /// The address to listen on; default `"127.0.0.1:0"` (a free port). For the memory
    /// transport use `"mem:0"`.
    pub fn listen_addr(mut self, addr: impl Into<String>) -> Self {
        self.config.listen_addr = addr.into();
        self
    }

    /// Addresses of nodes to join at start (dialled with retry and backoff).
    pub fn bootstrap(mut self, addrs: impl IntoIterator<Item = impl Into<String>>) -> Self {
        self.config.bootstrap = addrs.into_iter().map(Into::into).collect();
        self
    }

    /// The data key files are encrypted with. Default: read from `<root>/data.key`, or
    /// generated into it on first start.
    pub fn data_key(mut self, key: Key) -> Self {
        self.config.data_key = Some(key);
        self
    }

    /// The network secret every node must share to connect (`None`: open network).
    pub fn network_secret(mut self, secret: Option<NetworkSecret>) -> Self {
        self.config.network_secret = secret;
        self
    }

    /// The replication policy; default [`Replication::AllConnected`].
    pub fn replication(mut self, replication: Replication) -> Self {
        self.config.replication = replication;
        self
    }

    /// How long `store` waits for the replica acknowledgements, counted from the local
    /// commit; default 120 s. Also how long a node receiving a replica streamed while its
    /// origin writes it waits at least for the origin's next message (origins speak at
    /// least every quarter of their own timeout, at most 5 s apart, and announce it; the
    /// wait is three such intervals if that is longer). `Duration::MAX` means no limit.
    pub fn replication_timeout(mut self, timeout: Duration) -> Self {
        self.config.replication_timeout = timeout;
        self
    }

    /// Per-peer timeout of a `get`: for the reply and for each read of the body; default 10 s.
    /// `Duration::MAX` means no limit.
    pub fn request_timeout(mut self, timeout: Duration) -> Self {
        self.config.request_timeout = timeout;
        self
    }

    /// How many times each bootstrap address is dialled (with exponential backoff) before
    /// giving up; default 8.
    pub fn bootstrap_attempts(mut self, attempts: u32) -> Self {
        self.config.bootstrap_attempts = attempts.max(1);
        self
    }

    /// Whether writes are fsynced before they count as durable; default `true`.
    pub fn fsync(mut self, on: bool) -> Self {
        self.config.fsync = on;
        self
    }

    /// Capacity of the event channel (slow receivers miss the oldest events); default 1024.
    pub fn event_capacity(mut self, capacity: usize) -> Self {
        self.config.event_capacity = capacity.max(1);
        self
    }

    /// How many peer requests that move file bytes (replicas received, files sent to a
    /// fetching peer once it said `Proceed`) this node serves at once; default 64, at least
    /// 1 and at most [`MAX_INCOMING_TRANSFERS`] (256, half of tokio's default blocking
    /// pool): larger values are clamped. Each holds a thread of the blocking pool and a
    /// staging file or an open object for as long as its peer keeps it going.
    ///
    /// One peer may hold at most half of them (at least one) at once, so a single peer
    /// keeping its transfers going cannot take every slot. A request beyond the node's
    /// limit or its peer's share waits for a slot up to the request timeout, then is
    /// answered "busy" (a replicating origin retries later, a fetching peer asks another
    /// holder). Local calls (`store`, `get`) are not counted.
    ///
    /// ```
    /// let config = dfs_server::Config::builder("/tmp/dfs-node")
    ///     .max_incoming_transfers(8) // a peer holds at most 4 of them
    ///     .build();
    /// assert_eq!(config.max_incoming_transfers(), 8);
    /// let clamped = dfs_server::Config::builder("/tmp/dfs-node")
    ///     .max_incoming_transfers(10_000)
    ///     .build();
    /// assert_eq!(clamped.max_incoming_transfers(), dfs_server::MAX_INCOMING_TRANSFERS);
    /// ```
    pub fn max_incoming_transfers(mut self, n: usize) -> Self {
        self.config.max_incoming_transfers = n.clamp(1, MAX_INCOMING_TRANSFERS);
        self
    }

    /// Objects this node receives from peers (replicas, and copies a `get` fetches) whose
    /// stored (encrypted) size is at most `max_size` bytes go to the store's pack of small
    /// objects instead of a file each
    /// ([`dfs_store::StoreBuilder::pack_small_objects`]): one data flush per durable
    /// write, shared by concurrent writers, instead of two journal commits. Default 0
    /// (off); larger values are clamped to [`dfs_store::MAX_PACKED`] (1 MiB). Files stored
    /// through this node (which replicas follow as they are written) keep a file each.
    /// The pack's index lives in memory, about 150 bytes per packed object.
    ///
    /// With a pack, the store's root is locked exclusively for as long as the node's
    /// store is open: until [`FileServer::shutdown`](crate::FileServer::shutdown) returns
    /// (clones of the handle may live on), or, without `shutdown`, until the last handle
    /// is dropped and the node's tasks, cancelled then, have ended. A node started on the
    /// same root before then fails with [`dfs_store::StoreError::Locked`]. (Without a
    /// pack, nothing in `dfs-server` stops two nodes from sharing a root by mistake;
    /// `dfs serve` locks its data directory itself.)
    ///
    /// ```
    /// let config = dfs_server::Config::builder("/tmp/dfs-node")
    ///     .pack_small_objects(64 * 1024)
    ///     .build();
    /// assert_eq!(config.pack_small_objects(), 64 * 1024);
    /// ```
    pub fn pack_small_objects(mut self, max_size: u32) -> Self {
        self.config.pack_small_objects = max_size.min(dfs_store::MAX_PACKED);
        self
    }

    /// Finishes the configuration.
    pub fn build(self) -> Config {
        self.config
    }
}
