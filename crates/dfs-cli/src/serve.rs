//! `dfs serve`: a `FileServer` over TCP, the control socket, logs and graceful shutdown.

use std::io::{IsTerminal, Write};
use std::os::unix::fs::{DirBuilderExt, FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use dfs_server::{
    Config, FileReader, FileServer, NetworkSecret, ObjectId, Replication, Scope, ServerError,
    ServerEvent, TcpTransport,
};
use dfs_transport::TransportError;
use tokio::net::UnixListener;
use tokio::signal::unix::{Signal, SignalKind, signal};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use crate::cli::ServeArgs;
use crate::control::daemon::{self, Backend, UploadBody};
use crate::control::{
    self, FileEntry, NodeStatus, PeerEntry, RemoteError, RemoteErrorKind, RemovedInfo,
    ScrubSummary, StoredInfo,
};
use crate::error::one_line;
use crate::{Error, Result};

/// First delay between bootstrap attempts; doubles up to [`RETRY_MAX`].
const RETRY_START: Duration = Duration::from_millis(200);
const RETRY_MAX: Duration = Duration::from_secs(10);
/// How long one attempt to join a bootstrap node may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

type Server = FileServer<TcpTransport>;

/// Runs a node until SIGINT or SIGTERM.
pub(crate) async fn serve(args: ServeArgs) -> Result<()> {
    init_tracing();
    check_listen(&args.listen).await?;
    for addr in &args.bootstrap {
        check_bootstrap(addr)?;
    }
    let data = args.data.clone();
    prepare_data_dir(&data)?;
    refuse_if_others_can_write(&data)?;
    warn_if_data_dir_is_open(&data);
    // Held until this function returns: one `dfs serve` per data directory.
    let _lock = lock_data_dir(&data)?;
    let socket = control::socket_path(&data);
    claim_socket(&socket).await?;
    let key = args
        .key_file
        .as_deref()
        .map(crate::keys::read_key)
        .transpose()?;
    let secret = args.secret_file.as_deref().map(read_secret).transpose()?;
    if secret.is_none() {
        warn!("no --secret-file: this node runs an open network that any node can join");
    }
    // Signals are registered before anything can be announced, so none is lost.
    let mut sigint = signal(SignalKind::interrupt()).map_err(signal_err)?;
    let mut sigterm = signal(SignalKind::terminate()).map_err(signal_err)?;

    let mut builder = Config::builder(&data)
        .listen_addr(args.listen.clone())
        .network_secret(secret)
        .fsync(!args.no_fsync)
        .pack_small_objects(args.pack_small);
    if let Some(key) = key {
        builder = builder.data_key(key);
    }
    if let Some(n) = args.max_incoming_transfers {
        builder = builder.max_incoming_transfers(n);
    }
    if let Some(n) = args.replicas {
        builder = builder.replication(if n == 0 {
            Replication::None
        } else {
            Replication::Count(n)
        });
    }
    // Startup (opening the store, dialling bootstrap nodes) races the signals: Ctrl-C
    // before the ready line stops the node at once, without announcing it.
    let started = tokio::select! {
        started = Server::start(builder.build(), TcpTransport::new()) => started,
        _ = sigint.recv() => return Err(interrupted("SIGINT", "before the node started")),
        _ = sigterm.recv() => return Err(interrupted("SIGTERM", "before the node started")),
    };
    let server = started
        .map_err(|err| node_err(format!("cannot start the node in {}", data.display()), err))?;
    tokio::spawn(log_events(server.events()));

    let stop = CancellationToken::new();
    let (fatal_tx, mut fatal_rx) = mpsc::channel::<Error>(1);
    let joined = tokio::select! {
        joined = join(&server, &args.bootstrap, &stop, &fatal_tx) => joined,
        _ = sigint.recv() => Err(interrupted("SIGINT", "while joining the network")),
        _ = sigterm.recv() => Err(interrupted("SIGTERM", "while joining the network")),
    };
    // From here on the node runs: every failure must stop it cleanly (see `abandon`).
    let bound = joined.and_then(|()| bind_socket(&socket));
    let (listener, owner) = match bound {
        Ok(bound) => bound,
        Err(err) => return Err(abandon(server, &stop, &mut sigint, &mut sigterm, err).await),
    };
    let node = Node {
        server: server.clone(),
        data_dir: data.clone(),
        started: Instant::now(),
    };
    let abort = CancellationToken::new();
    let control = tokio::spawn(daemon::run(
        listener,
        node,
        stop.clone(),
        abort.clone(),
        Duration::from_secs(args.grace),
        daemon::PeerPolicy::owner_and_root(owner),
    ));

    let addr = server.local_addr();
    info!(node = %server.node_id(), %addr, socket = %socket.display(), "node ready");
    // The ready line scripts and tests wait for: the real address (port 0 resolved).
    let mut stdout = std::io::stdout().lock();
    let _ = writeln!(
        stdout,
        "listening on {addr} node {} control {}",
        server.node_id().to_hex(),
        socket.display()
    );
    let _ = stdout.flush();
    drop(stdout);

    let outcome = tokio::select! {
        _ = sigint.recv() => { info!("SIGINT received, shutting down"); Ok(()) }
        _ = sigterm.recv() => { info!("SIGTERM received, shutting down"); Ok(()) }
        Some(err) = fatal_rx.recv() => { error!("{}", err.one_line()); Err(err) }
    };
    stop.cancel();
    let mut control = control;
    let second = tokio::select! {
        _ = &mut control => None,
        _ = sigint.recv() => Some("SIGINT"),
        _ = sigterm.recv() => Some("SIGTERM"),
    };
    if let Some(signal) = second {
        // A second signal aborts at once: in-flight requests get "shutting down" (an
        // aborted upload stores nothing) and the FileServer is not drained.
        warn!("second signal: aborting in-flight requests and stopping now");
        abort.cancel();
        let _ = control.await;
        let _ = std::fs::remove_file(&socket);
        return Err(interrupted(signal, "again during shutdown"));
    }
    let _ = std::fs::remove_file(&socket);
    let shutdown = tokio::select! {
        done = server.shutdown() => Ok(done),
        _ = sigint.recv() => Err("SIGINT"),
        _ = sigterm.recv() => Err("SIGTERM"),
    };
    match shutdown {
        Ok(done) => {
            done.map_err(|err| node_err("the node did not shut down cleanly".to_owned(), err))?;
        }
        Err(signal) => {
            warn!("second signal: stopping without waiting for the node to drain");
            return Err(interrupted(signal, "again during shutdown"));
        }
    }
    info!("stopped");
    outcome
}

/// Stops a node that started but cannot go on (joining or binding the control socket
/// failed): cancels its background tasks and shuts the server down (a further signal
/// abandons the clean shutdown); returns `err`, the failure to report.
async fn abandon(
    server: Server,
    stop: &CancellationToken,
    sigint: &mut Signal,
    sigterm: &mut Signal,
    err: Error,
) -> Error {
    stop.cancel();
    tokio::select! {
        done = server.shutdown() => {
            if let Err(e) = done {
                warn!("the node did not shut down cleanly: {}", one_line(&e));
            }
        }
        _ = sigint.recv() => {}
        _ = sigterm.recv() => {}
    }
    err
}

/// The error `serve` ends with when a signal cuts startup or shutdown short (status 1).
fn interrupted(signal: &str, when: &str) -> Error {
    Error::Io {
        context: format!("{signal} received {when}: stopped"),
        source: std::io::Error::new(std::io::ErrorKind::Interrupted, "interrupted by a signal"),
    }
}

fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_target(false)
        // A log line that cannot be written is dropped: by default `tracing-subscriber`
        // reports it with `eprintln!`, which panics when stderr is what failed (a logger
        // that died, `2>/dev/full`), killing the node at its next log line.
        .log_internal_errors(false)
        .compact()
        .try_init();
}

fn signal_err(source: std::io::Error) -> Error {
    Error::Io {
        context: "cannot install the signal handlers".to_owned(),
        source,
    }
}

fn node_err(context: String, err: ServerError) -> Error {
    Error::Node {
        context,
        source: Box::new(err),
    }
}

/// A `--listen` value that is no address is a usage error naming it (exit 2), not a failure
/// deep inside the node's start.
async fn check_listen(addr: &str) -> Result<()> {
    let bad = |why: String| Error::Usage {
        message: format!("bad --listen address {addr:?}: {why}"),
    };
    match tokio::net::lookup_host(addr).await {
        Ok(mut addrs) => match addrs.next() {
            Some(_) => Ok(()),
            None => Err(bad("it resolves to no address".to_owned())),
        },
        Err(e) => Err(bad(e.to_string())),
    }
}

/// A `--bootstrap` value that cannot be an address (`HOST:PORT`, `[IPV6]:PORT`) is a usage
/// error naming it (exit 2), rather than dialled in the background forever. A name is not
/// resolved here: one that does not resolve yet (DNS not up) is retried like an
/// unreachable node.
fn check_bootstrap(addr: &str) -> Result<()> {
    let bad = |why: &str| Error::Usage {
        message: format!("bad --bootstrap address {addr:?}: {why}"),
    };
    let Some((host, port)) = addr.rsplit_once(':') else {
        return Err(bad("expected HOST:PORT"));
    };
    if port.parse::<u16>().map_or(true, |p| p == 0) {
        return Err(bad("the port must be a number from 1 to 65535"));
    }
    let bracketed = host.len() > 2 && host.starts_with('[') && host.ends_with(']');
    if host.is_empty() || (host.contains(':') && !bracketed) {
        return Err(bad("expected HOST:PORT (an IPv6 address in brackets)"));
    }
    Ok(())
}

fn read_secret(path: &Path) -> Result<NetworkSecret> {
    let text = crate::keys::read_text(path)?;
    NetworkSecret::from_hex(&text).map_err(|err| Error::KeyFile {
        path: path.to_path_buf(),
        reason: one_line(&err),
    })
}

/// Creates the data directory (mode 0700) if it is missing.
fn prepare_data_dir(data: &Path) -> Result<()> {
    if data.is_dir() {
        return Ok(());
    }
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(data)
        .map_err(|source| Error::Io {
            context: format!("cannot create the data directory {}", data.display()),
            source,
        })
}

/// Takes an exclusive lock on `<data>/serve.lock` (released by the OS when the process
/// ends, even by `kill -9`), so that two nodes never share a data directory or remove each
/// other's control socket.
fn lock_data_dir(data: &Path) -> Result<std::fs::File> {
    let path = data.join("serve.lock");
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|source| Error::Io {
            context: format!("cannot open the lock file {}", path.display()),
            source,
        })?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(std::fs::TryLockError::WouldBlock) => Err(Error::Usage {
            message: format!(
                "another dfs serve is already running on this data directory ({})",
                data.display()
            ),
        }),
        Err(std::fs::TryLockError::Error(source)) => Err(Error::Io {
            context: format!("cannot lock {}", path.display()),
            source,
        }),
    }
}

/// Fails if a live node already owns `socket`; removes a stale socket left by a crash. Anything
/// else at that path (a regular file, a directory, a symlink) is refused, never removed.
/// Also removes the staging directories (see [`bind_socket`]) a node killed while binding left
/// next to it. Runs under the data directory lock, so no other node is binding there.
async fn claim_socket(socket: &Path) -> Result<()> {
    sweep_staging_dirs(socket.parent().unwrap_or(Path::new(".")));
    let Ok(meta) = std::fs::symlink_metadata(socket) else {
        return Ok(());
    };
    if !meta.file_type().is_socket() {
        return Err(not_a_socket(socket));
    }
    if tokio::net::UnixStream::connect(socket).await.is_ok() {
        return Err(Error::Usage {
            message: format!(
                "another dfs serve is already running on this data directory (control socket {})",
                socket.display()
            ),
        });
    }
    std::fs::remove_file(socket).map_err(|source| Error::Io {
        context: format!(
            "cannot remove the stale control socket {}",
            socket.display()
        ),
        source,
    })
}

fn not_a_socket(socket: &Path) -> Error {
    Error::Usage {
        message: format!(
            "{} exists and is not a socket: refusing to replace it (move it away; \
             `dfs serve` puts its control socket there)",
            socket.display()
        ),
    }
}

/// The control socket is staged in a directory named this prefix followed by
/// [`STAGING_RAND_LEN`] random ASCII letters and digits, as a socket named [`STAGED_SOCKET`].
const STAGING_PREFIX: &str = ".ds";
/// The random part of a staging directory's name.
const STAGING_RAND_LEN: usize = 3;
/// The staged socket's name inside its staging directory.
const STAGED_SOCKET: &str = "s";

// A socket path is limited to 107 bytes (`sun_path`): the staged path `DATA/.dsXYZ/s` must be
// no longer than the final `DATA/dfs.sock`, or a data directory whose final path fits would
// fail to bind.
const _: () = assert!(
    STAGING_PREFIX.len() + STAGING_RAND_LEN + 1 + STAGED_SOCKET.len() <= control::SOCKET_FILE.len()
);

/// Whether `name` is exactly a staging directory name (see [`STAGING_PREFIX`]).
fn is_staging_name(name: &std::ffi::OsStr) -> bool {
    let Some(name) = name.to_str() else {
        return false;
    };
    name.len() == STAGING_PREFIX.len() + STAGING_RAND_LEN
        && name.starts_with(STAGING_PREFIX)
        && name[STAGING_PREFIX.len()..]
            .bytes()
            .all(|b| b.is_ascii_alphanumeric())
}

/// Removes the staging directories a node killed between creating one and renaming its socket
/// away left in `data`. Only exact staging names that are real directories holding nothing but
/// a socket named [`STAGED_SOCKET`] are removed; anything else is left alone (with a
/// warning). Failures are logged, never fatal: a leftover only costs a name.
fn sweep_staging_dirs(data: &Path) {
    let Ok(entries) = std::fs::read_dir(data) else {
        return;
    };
    let me = rustix::process::geteuid().as_raw();
    for entry in entries.flatten() {
        if !is_staging_name(&entry.file_name()) {
            continue;
        }
        let dir = entry.path();
        // `file_type` does not follow symlinks: a symlink with a staging name is left alone,
        // and so is a directory of another user's (only ours are ever left by a node).
        if !entry.file_type().is_ok_and(|t| t.is_dir()) {
            continue;
        }
        if !entry
            .metadata()
            .is_ok_and(|m| std::os::unix::fs::MetadataExt::uid(&m) == me)
        {
            continue;
        }
        let Ok(inside) = std::fs::read_dir(&dir) else {
            continue;
        };
        let inside: Vec<_> = inside.flatten().collect();
        let only_our_socket = match inside.as_slice() {
            [] => true,
            [one] => {
                one.file_name() == STAGED_SOCKET && one.file_type().is_ok_and(|t| t.is_socket())
            }
            _ => false,
        };
        if !only_our_socket {
            warn!(
                "leaving {} alone: named like a control socket staging directory, but holds \
                 other files",
                dir.display()
            );
            continue;
        }
        if let [socket] = inside.as_slice() {
            let _ = std::fs::remove_file(socket.path());
        }
        match std::fs::remove_dir(&dir) {
            Ok(()) => info!("removed {}, left by an interrupted start", dir.display()),
            Err(err) => warn!(
                "cannot remove {} (left by an interrupted start?): {err}",
                dir.display()
            ),
        }
    }
}

/// Binds the control socket and restricts it to the node's user before anyone can connect:
/// it is bound inside a fresh private (`0700`) staging directory next to its final path (see
/// [`STAGING_PREFIX`]; the staged path is no longer than the final one), made `0600`, and
/// only then renamed into place. Returns the listener and the node's user id (the process's
/// effective uid), whom the control socket serves (see [`daemon::PeerPolicy`]).
///
/// The paths used here cannot be swapped by another user: [`refuse_if_others_can_write`]
/// made sure not every user can rename or replace entries of the data directory (its group
/// can, with a warning), and the staging directory is created fresh (`mkdir` fails on any existing
/// name, symlinks included).
fn bind_socket(socket: &Path) -> Result<(UnixListener, u32)> {
    let io_err = |source| Error::Io {
        context: format!("cannot create the control socket {}", socket.display()),
        source,
    };
    let parent = socket.parent().unwrap_or(Path::new("."));
    let private = tempfile::Builder::new()
        .prefix(STAGING_PREFIX)
        .rand_bytes(STAGING_RAND_LEN)
        .permissions(std::fs::Permissions::from_mode(0o700))
        .tempdir_in(parent)
        .map_err(io_err)?;
    // The umask can only have removed bits; make sure the owner may use it.
    std::fs::set_permissions(private.path(), std::fs::Permissions::from_mode(0o700))
        .map_err(io_err)?;
    // The process's own user, not the directory's owner as read back through its path (which
    // follows symlinks, and is wrong on root-squashed NFS).
    let owner = rustix::process::geteuid().as_raw();
    let staged = private.path().join(STAGED_SOCKET);
    let listener = UnixListener::bind(&staged).map_err(io_err)?;
    std::fs::set_permissions(&staged, std::fs::Permissions::from_mode(0o600)).map_err(io_err)?;
    // `claim_socket` cleared the path and the data directory lock keeps other nodes away;
    // refuse (rather than replace) whatever appeared there since.
    if let Ok(meta) = std::fs::symlink_metadata(socket)
        && !meta.file_type().is_socket()
    {
        return Err(not_a_socket(socket));
    }
    std::fs::rename(&staged, socket).map_err(io_err)?;
    // `private` is removed on drop; the listener keeps serving under the new name.
    Ok((listener, owner))
}

/// Refuses a data directory that any user may write (`o+w`, sticky or not); warns when its
/// group may (`g+w`, no `+t`).
///
/// Whoever may write it can put their own socket at `dfs.sock` (replacing ours without the
/// sticky bit, or simply creating it while no node runs, sticky bit or not), and clients
/// would hand them their files. Clients refuse a socket served by another user
/// (`Client::connect_socket` checks the node's credentials), but a node should not run
/// where that is the only defence. A group-writable directory is only a warning: under the
/// common umask `002` with per-user groups, `mkdir` makes every directory group-writable by a
/// group holding only its owner, and the clients' check covers the rest.
fn refuse_if_others_can_write(data: &Path) -> Result<()> {
    let meta = std::fs::metadata(data).map_err(|source| Error::Io {
        context: format!("cannot read the data directory {}", data.display()),
        source,
    })?;
    let mode = meta.permissions().mode() & 0o7777;
    let sticky = mode & 0o1000 != 0;
    if mode & 0o002 != 0 {
        return Err(Error::Usage {
            message: format!(
                "the data directory {} is writable by every user (mode {mode:04o}): they could \
                 replace its control socket; `chmod 700` it",
                data.display()
            ),
        });
    }
    if mode & 0o020 != 0 && !sticky {
        warn!(
            "the data directory {} is writable by its group (mode {mode:04o}): its members \
             could replace the control socket; `chmod 700` it",
            data.display()
        );
    }
    Ok(())
}

/// Logs one warning when other users may enter or read the data directory.
fn warn_if_data_dir_is_open(data: &Path) {
    if let Ok(meta) = std::fs::metadata(data) {
        let mode = meta.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            warn!(
                "the data directory {} is accessible to other users (mode {mode:04o}); \
                 `chmod 700` it",
                data.display()
            );
        }
    }
}

/// Whether `err` says the remote does not share our network secret.
fn is_auth_failure(err: &ServerError) -> bool {
    matches!(
        err,
        ServerError::Transport(TransportError::AuthFailed { .. })
    )
}

fn wrong_secret(addr: &str, err: &ServerError) -> Error {
    Error::WrongSecret {
        addr: addr.to_owned(),
        reason: one_line(err),
    }
}

/// Dials every bootstrap address once. An authentication failure is fatal (a wrong network
/// secret never fixes itself); an unreachable address is retried in the background.
async fn join(
    server: &Server,
    addrs: &[String],
    stop: &CancellationToken,
    fatal: &mpsc::Sender<Error>,
) -> Result<()> {
    let attempts = futures::future::join_all(
        addrs
            .iter()
            .map(|addr| async move { (addr, connect(server, addr).await) }),
    )
    .await;
    for (addr, attempt) in attempts {
        match attempt {
            Ok(peer) => info!("joined {addr} (node {})", peer.id),
            Err(err) if is_auth_failure(&err) => return Err(wrong_secret(addr, &err)),
            Err(err) => {
                warn!(
                    "cannot reach {addr} yet ({}); retrying in the background",
                    one_line(&err)
                );
                tokio::spawn(retry_join(
                    server.clone(),
                    addr.clone(),
                    stop.clone(),
                    fatal.clone(),
                ));
            }
        }
    }
    Ok(())
}

/// `FileServer::connect` bounded by [`CONNECT_TIMEOUT`] (a black-holed address must not
/// delay the ready line for minutes).
async fn connect(server: &Server, addr: &str) -> Result<dfs_server::PeerInfo, ServerError> {
    match tokio::time::timeout(CONNECT_TIMEOUT, server.connect(addr)).await {
        Ok(result) => result,
        Err(_) => Err(ServerError::Timeout {
            what: format!("connecting to {addr}"),
        }),
    }
}

async fn retry_join(
    server: Server,
    addr: String,
    stop: CancellationToken,
    fatal: mpsc::Sender<Error>,
) {
    let mut delay = RETRY_START;
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(delay) => {} // backoff between bootstrap attempts
        }
        match connect(&server, &addr).await {
            Ok(peer) => {
                info!("joined {addr} (node {})", peer.id);
                return;
            }
            Err(err) if is_auth_failure(&err) => {
                let _ = fatal.send(wrong_secret(&addr, &err)).await;
                return;
            }
            Err(ServerError::ShuttingDown) => return,
            Err(err) => {
                tracing::debug!("cannot reach {addr} yet: {}", one_line(&err));
                delay = (delay * 2).min(RETRY_MAX);
            }
        }
    }
}

/// One readable log line per server event.
async fn log_events(mut events: tokio::sync::broadcast::Receiver<ServerEvent>) {
    use tokio::sync::broadcast::error::RecvError;
    loop {
        let event = match events.recv().await {
            Ok(event) => event,
            Err(RecvError::Lagged(n)) => {
                warn!("{n} server events were not logged (too many at once)");
                continue;
            }
            Err(RecvError::Closed) => return,
        };
        match event {
            // The server logs peers joining and leaving itself.
            ServerEvent::PeerJoined { .. } | ServerEvent::PeerLeft { .. } => {}
            ServerEvent::FileStored { name, size, .. } => info!("stored {name:?} ({size} bytes)"),
            ServerEvent::Replicated { name, peer } => info!("replicated {name:?} to peer {peer}"),
            ServerEvent::ReplicaStored { object, from, size } => {
                info!("stored replica {object} ({size} bytes) from peer {from}");
            }
            ServerEvent::Fetched { name, from, size } => {
                info!("fetched {name:?} ({size} bytes) from peer {from}");
            }
            ServerEvent::Deleted { object, name, by } => {
                let what = name.map_or_else(|| format!("object {object}"), |n| format!("{n:?}"));
                match by {
                    Some(peer) => info!("deleted {what} at the request of peer {peer}"),
                    None => info!("deleted {what}"),
                }
            }
            other => info!("{other:?}"),
        }
    }
}

/// The control socket's view of the node.
#[derive(Clone, Debug)]
struct Node {
    server: Server,
    data_dir: PathBuf,
    started: Instant,
}

impl Node {
    /// A [`RemoteErrorKind::WrongKey`] error when this node holds a file named `name` under
    /// another object id than its data key gives that name: the file was stored here with
    /// another data key (the node was restarted with another `--key-file`). Only asked after
    /// a "not found", so the cost of listing the store is paid on that path alone.
    async fn under_another_key(&self, name: &str) -> Option<RemoteError> {
        let ours = self.server.object_id(name).to_hex();
        let files = self.server.list().await.ok()?;
        files
            .iter()
            .any(|f| f.name.as_deref() == Some(name) && f.id != ours)
            .then(|| {
                RemoteError::new(
                    RemoteErrorKind::WrongKey,
                    format!(
                        "wrong data key: this node holds {name:?} encrypted under another data key \
                         (start it with the --key-file the file was stored with)"
                    ),
                )
            })
    }
}

/// Maps a server error to what the client is told.
fn remote(err: &ServerError) -> RemoteError {
    let kind = match err {
        ServerError::NotFound { .. } => RemoteErrorKind::NotFound,
        ServerError::WrongKey { .. } => RemoteErrorKind::WrongKey,
        ServerError::ShuttingDown => RemoteErrorKind::ShuttingDown,
        ServerError::Source { .. } => RemoteErrorKind::Aborted,
        ServerError::ReplicationIncomplete { .. }
        | ServerError::DeleteIncomplete { .. }
        | ServerError::FetchFailed { .. }
        | ServerError::Remote { .. }
        | ServerError::Timeout { .. }
        | ServerError::Transport(_) => RemoteErrorKind::Network,
        _ if is_disk_full(err) => RemoteErrorKind::DiskFull,
        ServerError::Store(dfs_store::StoreError::InvalidKey { .. }) => {
            RemoteErrorKind::InvalidArgument
        }
        _ => RemoteErrorKind::Other,
    };
    let mut message = one_line(err);
    if kind == RemoteErrorKind::DiskFull {
        message = format!("disk full on the node: {message}");
    }
    RemoteError::new(kind, message)
}

fn is_disk_full(err: &(dyn std::error::Error + 'static)) -> bool {
    let mut current = Some(err);
    while let Some(err) = current {
        if let Some(io) = err.downcast_ref::<std::io::Error>()
            && (io.kind() == std::io::ErrorKind::StorageFull || io.raw_os_error() == Some(28))
        {
            return true;
        }
        current = err.source();
    }
    false
}

impl Backend for Node {
    type Body = FileReader;

    fn node_id(&self) -> String {
        self.server.node_id().to_hex()
    }

    async fn put(&self, name: &str, body: UploadBody) -> Result<StoredInfo, RemoteError> {
        let receipt = self
            .server
            .store(name, body)
            .await
            .map_err(|err| remote(&err))?;
        Ok(StoredInfo {
            name: receipt.name,
            size: receipt.size,
            replicas: receipt.replicas.iter().map(|id| id.to_hex()).collect(),
        })
    }

    async fn replicate(&self, name: &str) -> Result<StoredInfo, RemoteError> {
        match self.server.replicate(name).await {
            Ok(receipt) => Ok(StoredInfo {
                name: receipt.name,
                size: receipt.size,
                replicas: receipt.replicas.iter().map(|id| id.to_hex()).collect(),
            }),
            Err(err @ ServerError::NotFound { .. }) => Err(self
                .under_another_key(name)
                .await
                .unwrap_or_else(|| remote(&err))),
            Err(err) => Err(remote(&err)),
        }
    }

    async fn get(&self, name: &str) -> Result<(u64, FileReader), RemoteError> {
        match self.server.get(name).await {
            Ok(reader) => Ok((reader.len(), reader)),
            Err(err @ ServerError::NotFound { .. }) => Err(self
                .under_another_key(name)
                .await
                .unwrap_or_else(|| remote(&err))),
            Err(err) => Err(remote(&err)),
        }
    }

    async fn remove(&self, name: &str, everywhere: bool) -> Result<RemovedInfo, RemoteError> {
        let scope = if everywhere {
            Scope::Everywhere
        } else {
            Scope::Local
        };
        let report = self
            .server
            .delete(name, scope)
            .await
            .map_err(|err| remote(&err))?;
        if report.found() {
            return Ok(RemovedInfo {
                local: report.local,
                peers: report.peers.iter().map(|id| id.to_hex()).collect(),
            });
        }
        Err(self.under_another_key(name).await.unwrap_or_else(|| {
            RemoteError::new(
                RemoteErrorKind::NotFound,
                if everywhere {
                    format!("file {name:?} not found on this node nor on any connected peer")
                } else {
                    format!("file {name:?} not found on this node")
                },
            )
        }))
    }

    async fn list(&self) -> Result<Vec<FileEntry>, RemoteError> {
        let files = self.server.list().await.map_err(|err| remote(&err))?;
        Ok(files
            .into_iter()
            .map(|f| FileEntry {
                name: f.name,
                id: f.id,
                size: f.size,
            })
            .collect())
    }

    async fn peers(&self, wait_for: usize, timeout: Duration) -> Vec<PeerEntry> {
        if wait_for > 0 {
            // A timeout is not an error here: the caller compares the count.
            let _ = self.server.wait_for_peers(wait_for, timeout).await;
        }
        self.server
            .peers()
            .into_iter()
            .map(|p| PeerEntry {
                id: p.id.to_hex(),
                addr: p.addr,
            })
            .collect()
    }

    async fn status(&self) -> Result<NodeStatus, RemoteError> {
        let files = self.server.list().await.map_err(|err| remote(&err))?;
        Ok(NodeStatus {
            node_id: self.server.node_id().to_hex(),
            listen_addr: self.server.local_addr(),
            data_dir: self.data_dir.display().to_string(),
            peers: self.server.peers().len() as u64,
            files: files.len() as u64,
            stored_bytes: files.iter().map(|f| f.size).sum(),
            uptime_secs: self.started.elapsed().as_secs(),
            version: env!("CARGO_PKG_VERSION").to_owned(),
        })
    }

    async fn scrub(&self) -> Result<ScrubSummary, RemoteError> {
        let report = self.server.scrub().await.map_err(|err| remote(&err))?;
        Ok(ScrubSummary {
            checked: report.checked,
            repaired: report.repaired.iter().map(ObjectId::to_hex).collect(),
            unrepaired: report
                .unrepaired
                .iter()
                .map(|(id, why)| match id {
                    Some(id) => format!("{}: {why}", id.to_hex()),
                    None => why.clone(),
                })
                .collect(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_errors_map_to_client_error_kinds_and_exit_codes() {
        let cases = [
            (
                ServerError::NotFound { name: "x".into() },
                RemoteErrorKind::NotFound,
                crate::EXIT_NOT_FOUND,
            ),
            (
                ServerError::WrongKey { name: "x".into() },
                RemoteErrorKind::WrongKey,
                crate::EXIT_AUTH,
            ),
            (
                ServerError::Io {
                    op: "write",
                    path: "/data/store/tmp/1.tmp".into(),
                    source: std::io::Error::from_raw_os_error(28),
                },
                RemoteErrorKind::DiskFull,
                crate::EXIT_FAILURE,
            ),
            (
                ServerError::ShuttingDown,
                RemoteErrorKind::ShuttingDown,
                crate::EXIT_FAILURE,
            ),
        ];
        for (err, kind, code) in cases {
            let remote = remote(&err);
            assert_eq!(remote.kind, kind, "{err}");
            assert!(!remote.message.contains('\n'));
            assert_eq!(Error::Remote(remote).exit_code(), code, "{err}");
        }
        let full = remote(&ServerError::Io {
            op: "write",
            path: "/d".into(),
            source: std::io::Error::from_raw_os_error(28),
        });
        assert!(
            full.message.starts_with("disk full on the node"),
            "{}",
            full.message
        );
    }
}
