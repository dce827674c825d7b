//! The node side of the control socket: accepts client connections and drives a [`Backend`].

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use futures::channel::mpsc;
use futures::{SinkExt, Stream, StreamExt};
use tokio::io::AsyncRead;
use tokio::net::{UnixListener, UnixStream};
use tokio::task::JoinSet;
use tokio_util::io::StreamReader;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::{
    CHUNK_LEN, Channel, FileEntry, NodeStatus, PROTOCOL_VERSION, PeerEntry, RemoteError,
    RemoteErrorKind, RemovedInfo, Request, Response, ScrubSummary, StoredInfo, fill,
};

/// The body of an upload as the backend sees it: plaintext bytes that end (EOF) only after the
/// client's `End` frame; a client that aborts, disconnects or is cut off by shutdown turns into
/// an `io::Error` instead, so a partial body can never be stored as a complete one.
pub(crate) type UploadBody = StreamReader<UploadChunks, Bytes>;

/// What the control socket needs from a node. Implemented for `FileServer` (and a test double).
pub(crate) trait Backend: Clone + Send + Sync + 'static {
    /// A plaintext file body being read out of the node.
    type Body: AsyncRead + Send + Unpin + 'static;

    fn node_id(&self) -> String;
    fn put(
        &self,
        name: &str,
        body: UploadBody,
    ) -> impl Future<Output = Result<StoredInfo, RemoteError>> + Send;
    fn get(
        &self,
        name: &str,
    ) -> impl Future<Output = Result<(u64, Self::Body), RemoteError>> + Send;
    fn remove(
        &self,
        name: &str,
        everywhere: bool,
    ) -> impl Future<Output = Result<RemovedInfo, RemoteError>> + Send;
    fn list(&self) -> impl Future<Output = Result<Vec<FileEntry>, RemoteError>> + Send;
    /// The connected peers once at least `wait_for` are connected or `timeout` passed.
    fn peers(
        &self,
        wait_for: usize,
        timeout: Duration,
    ) -> impl Future<Output = Vec<PeerEntry>> + Send;
    fn status(&self) -> impl Future<Output = Result<NodeStatus, RemoteError>> + Send;
    fn scrub(&self) -> impl Future<Output = Result<ScrubSummary, RemoteError>> + Send;
    fn replicate(&self, name: &str)
    -> impl Future<Output = Result<StoredInfo, RemoteError>> + Send;
}

/// Which local users may drive the node through the control socket, checked with the
/// peer credentials (`SO_PEERCRED`) of every accepted connection. The socket's `0600` mode
/// already keeps others out; this holds even if the socket or its directory is made
/// accessible by mistake.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct PeerPolicy {
    /// The node's own user id.
    pub(crate) owner: u32,
    /// Whether root (uid 0) is accepted too.
    pub(crate) allow_root: bool,
}

impl PeerPolicy {
    /// The node's user and root: what `dfs serve` uses.
    pub(crate) fn owner_and_root(owner: u32) -> Self {
        PeerPolicy {
            owner,
            allow_root: true,
        }
    }

    /// Whether a client running as `uid` may use the control socket.
    pub(crate) fn allows(self, uid: u32) -> bool {
        uid == self.owner || (self.allow_root && uid == 0)
    }
}

/// Whether the client on `stream` may use the socket under `policy`: `Err` holds the
/// [`RemoteErrorKind::PermissionDenied`] error to send it. Logs a warning on refusal.
fn admit(stream: &UnixStream, policy: PeerPolicy) -> Result<(), RemoteError> {
    match stream.peer_cred() {
        Ok(cred) if policy.allows(cred.uid()) => Ok(()),
        Ok(cred) => {
            warn!(
                uid = cred.uid(),
                pid = ?cred.pid(),
                "refused a control connection from another user (uid {}; the node runs as uid {})",
                cred.uid(),
                policy.owner
            );
            Err(RemoteError::new(
                RemoteErrorKind::PermissionDenied,
                format!(
                    "permission denied: this node serves only its own user (uid {}){}, \
                     not uid {}",
                    policy.owner,
                    if policy.allow_root { " and root" } else { "" },
                    cred.uid()
                ),
            ))
        }
        Err(err) => {
            warn!("refused a control connection: cannot read its peer credentials: {err}");
            Err(RemoteError::new(
                RemoteErrorKind::PermissionDenied,
                "permission denied: the node cannot tell which user this client runs as",
            ))
        }
    }
}

/// How long a refused client's error frame may take to send.
const REFUSE_TIMEOUT: Duration = Duration::from_secs(1);

/// Tells a refused client why, without reading anything it sent, and closes the connection.
/// The frame is queued before the close, so the client reads it even if its own `Hello` then
/// fails to send (see `Client::connect_socket`).
async fn refuse(stream: UnixStream, err: RemoteError) {
    let mut ch = Channel::new(stream);
    let _ = tokio::time::timeout(REFUSE_TIMEOUT, ch.send(&Response::Error(err))).await;
}

/// Longest wait a client may ask for in `Request::Peers`.
const MAX_PEER_WAIT: Duration = Duration::from_secs(600);

/// Serves the control socket until `stop` is cancelled, then lets in-flight requests finish for
/// up to `grace` (or until `abort` is cancelled) before aborting them (an aborted upload
/// stores nothing). Read-only requests (`List`, `Peers`, `Status`) end at `stop` at once:
/// nothing is lost by cutting them short. Connections from users `policy` does not allow get
/// one [`RemoteErrorKind::PermissionDenied`] error frame and are closed, their requests unread.
pub(crate) async fn run<B: Backend>(
    listener: UnixListener,
    backend: B,
    stop: CancellationToken,
    abort: CancellationToken,
    grace: Duration,
    policy: PeerPolicy,
) {
    let mut conns = JoinSet::new();
    loop {
        tokio::select! {
            () = stop.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    if let Err(err) = admit(&stream, policy) {
                        conns.spawn(refuse(stream, err));
                        continue;
                    }
                    conns.spawn(serve_connection(stream, backend.clone(), stop.clone(), abort.clone()));
                }
                Err(err) => {
                    warn!("control socket accept failed: {err}");
                    // Errors like EMFILE repeat at once: a short pause instead of a hot loop.
                    tokio::time::sleep(Duration::from_millis(50)).await; // backoff
                }
            },
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
        }
    }
    drop(listener);
    if !conns.is_empty() {
        info!(
            "waiting up to {:?} for {} control connection(s) to finish",
            grace,
            conns.len()
        );
    }
    let drained =
        tokio::time::timeout(grace, async { while conns.join_next().await.is_some() {} }).await;
    if drained.is_err() {
        warn!(
            "aborting {} in-flight control request(s) after the grace period",
            conns.len()
        );
        abort.cancel();
        while conns.join_next().await.is_some() {}
    }
}

/// Why an upload body stopped before its `End` frame.
enum PumpError {
    Disconnected,
    ClientAbort(String),
    ShuttingDown,
    Protocol(String),
}

async fn serve_connection<B: Backend>(
    stream: UnixStream,
    backend: B,
    stop: CancellationToken,
    abort: CancellationToken,
) {
    let mut ch = Channel::new(stream);
    let hello = tokio::select! {
        () = stop.cancelled() => return,
        msg = ch.recv::<Request>() => msg,
    };
    match hello {
        Ok(Some(Request::Hello { version })) if version == PROTOCOL_VERSION => {}
        Ok(Some(Request::Hello { version })) => {
            let msg = format!(
                "control protocol version mismatch: client speaks {version}, node speaks {PROTOCOL_VERSION}"
            );
            let _ = ch
                .send(&Response::Error(RemoteError::new(
                    RemoteErrorKind::Protocol,
                    msg,
                )))
                .await;
            return;
        }
        Ok(None) => return,
        Ok(Some(_)) | Err(_) => {
            let err = RemoteError::new(RemoteErrorKind::Protocol, "expected a Hello frame first");
            let _ = ch.send(&Response::Error(err)).await;
            return;
        }
    }
    let hello = Response::Hello {
        version: PROTOCOL_VERSION,
        node_id: backend.node_id(),
    };
    if ch.send(&hello).await.is_err() {
        return;
    }
    loop {
        let request = tokio::select! {
            () = stop.cancelled() => return,
            msg = ch.recv::<Request>() => msg,
        };
        let request = match request {
            Ok(Some(request)) => request,
            Ok(None) => return,
            Err(err) => {
                debug!("control connection closed: {err}");
                return;
            }
        };
        if handle_request(&mut ch, &backend, request, &stop, &abort)
            .await
            .is_err()
        {
            return;
        }
    }
}

/// Handles one request. `Err(())` means the connection must be closed. Requests that change
/// nothing end at `stop`; the others run until done or `abort`.
async fn handle_request<B: Backend>(
    ch: &mut Channel<UnixStream>,
    backend: &B,
    request: Request,
    stop: &CancellationToken,
    abort: &CancellationToken,
) -> Result<(), ()> {
    let reply = match request {
        Request::Put { name, size } => return handle_put(ch, backend, name, size, abort).await,
        Request::Get { name } => return handle_get(ch, backend, name, abort).await,
        Request::Remove { name, everywhere } => tokio::select! {
            () = abort.cancelled() => Err(shutting_down()),
            res = backend.remove(&name, everywhere) => res.map(Response::Removed),
        },
        Request::List => {
            let listed = tokio::select! {
                () = stop.cancelled() => Err(shutting_down()),
                res = backend.list() => res,
            };
            return match listed {
                Ok(files) => send_listing(ch, files, abort).await,
                Err(err) => send_or_abort(ch, &Response::Error(err), abort).await,
            };
        }
        Request::Peers {
            wait_for,
            timeout_ms,
        } => {
            let wait = Duration::from_millis(timeout_ms).min(MAX_PEER_WAIT);
            let wanted = usize::try_from(wait_for.unwrap_or(0)).unwrap_or(usize::MAX);
            tokio::select! {
                () = stop.cancelled() => Err(shutting_down()),
                peers = backend.peers(wanted, wait) => Ok(Response::Peers(peers)),
            }
        }
        Request::Status => tokio::select! {
            () = stop.cancelled() => Err(shutting_down()),
            res = backend.status() => res.map(Response::Status),
        },
        Request::Scrub => tokio::select! {
            () = abort.cancelled() => Err(shutting_down()),
            res = backend.scrub() => res.map(Response::Scrubbed),
        },
        Request::Replicate { name } => tokio::select! {
            () = abort.cancelled() => Err(shutting_down()),
            res = backend.replicate(&name) => res.map(Response::Stored),
        },
        Request::Hello { .. } | Request::Chunk(_) | Request::End | Request::Abort { .. } => {
            let err = RemoteError::new(
                RemoteErrorKind::Protocol,
                "unexpected frame outside an upload",
            );
            let _ = ch.send(&Response::Error(err)).await;
            return Err(());
        }
    };
    let reply = reply.unwrap_or_else(Response::Error);
    send_or_abort(ch, &reply, abort).await
}

/// Sends `msg` unless `abort` comes first: a client that stopped reading (its output piped
/// into a pager that nobody scrolls) must not keep the node from shutting down.
async fn send_or_abort(
    ch: &mut Channel<UnixStream>,
    msg: &Response,
    abort: &CancellationToken,
) -> Result<(), ()> {
    tokio::select! {
        () = abort.cancelled() => Err(()),
        sent = ch.send(msg) => sent.map_err(|_| ()),
    }
}

/// Roughly how many bytes of entries go into one [`Response::Files`] frame: far below
/// [`super::MAX_FRAME_LEN`] even with one more entry of the longest name.
const LISTING_BATCH: usize = 256 * 1024;

/// Sends a listing as [`Response::Files`] frames that each fit in a control frame, then
/// [`Response::End`] (a node with thousands of files has a listing larger than one frame).
async fn send_listing(
    ch: &mut Channel<UnixStream>,
    files: Vec<FileEntry>,
    abort: &CancellationToken,
) -> Result<(), ()> {
    let mut batch = Vec::new();
    let mut bytes = 0;
    let mut sent_any = false;
    for file in files {
        bytes += file.name.as_ref().map_or(0, String::len) + file.id.len() + 16;
        batch.push(file);
        if bytes >= LISTING_BATCH {
            send_or_abort(ch, &Response::Files(std::mem::take(&mut batch)), abort).await?;
            bytes = 0;
            sent_any = true;
        }
    }
    // At least one `Files` (an empty listing is one empty batch).
    if !batch.is_empty() || !sent_any {
        send_or_abort(ch, &Response::Files(batch), abort).await?;
    }
    send_or_abort(ch, &Response::End, abort).await
}

/// The longest file name accepted, in bytes.
const MAX_NAME_LEN: usize = 4096;

/// Names are opaque to the cluster (peers see a keyed hash), but must be printable text.
pub(crate) fn check_name(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("a file name cannot be empty".to_owned());
    }
    if name.len() > MAX_NAME_LEN {
        return Err(format!("a file name is at most {MAX_NAME_LEN} bytes"));
    }
    if name.chars().any(char::is_control) {
        return Err("a file name cannot contain control characters".to_owned());
    }
    Ok(())
}

fn shutting_down() -> RemoteError {
    RemoteError::new(
        RemoteErrorKind::ShuttingDown,
        "the node is shutting down; request not completed",
    )
}

async fn handle_put<B: Backend>(
    ch: &mut Channel<UnixStream>,
    backend: &B,
    name: String,
    size: Option<u64>,
    abort: &CancellationToken,
) -> Result<(), ()> {
    debug!(name, ?size, "upload started");
    if let Err(reason) = check_name(&name) {
        // Drain the body the client is already sending, then refuse.
        let (tx, rx) = mpsc::channel::<UploadItem>(1);
        drop(rx);
        return match pump_upload(ch, tx, abort).await {
            Ok(()) | Err(PumpError::ClientAbort(_)) => {
                let err = RemoteError::new(RemoteErrorKind::InvalidArgument, reason);
                ch.send(&Response::Error(err)).await.map_err(|_| ())
            }
            Err(_) => Err(()),
        };
    }
    // A small queue: memory stays bounded by a few chunks whatever the file size.
    let (tx, rx) = mpsc::channel::<UploadItem>(4);
    let body = StreamReader::new(UploadChunks::new(rx));
    let store = backend.put(&name, body);
    let pump = pump_upload(ch, tx, abort);
    let (stored, pumped) = tokio::join!(store, pump);
    let reply = match (stored, pumped) {
        (_, Err(PumpError::Disconnected)) => {
            info!(
                name,
                "upload aborted: the client disconnected; nothing stored"
            );
            return Err(());
        }
        (_, Err(PumpError::ClientAbort(reason))) => {
            info!(
                name,
                "upload aborted by the client ({reason}); nothing stored"
            );
            RemoteError::new(RemoteErrorKind::Aborted, "upload aborted").into()
        }
        (_, Err(PumpError::ShuttingDown)) => {
            info!(name, "upload aborted by shutdown; nothing stored");
            let _ = ch.send(&Response::Error(shutting_down())).await;
            return Err(());
        }
        (_, Err(PumpError::Protocol(reason))) => {
            let err = RemoteError::new(RemoteErrorKind::Protocol, reason);
            let _ = ch.send(&Response::Error(err)).await;
            return Err(());
        }
        (Ok(info), Ok(())) => Response::Stored(info),
        (Err(err), Ok(())) => Response::Error(err),
    };
    send_or_abort(ch, &reply, abort).await
}

impl From<RemoteError> for Response {
    fn from(err: RemoteError) -> Self {
        Response::Error(err)
    }
}

/// One item on the queue between the socket and the backend's [`UploadBody`].
#[derive(Debug)]
pub(crate) enum UploadItem {
    Chunk(Bytes),
    End,
    Fail(io::Error),
}

/// The stream behind [`UploadBody`]: ends cleanly only on [`UploadItem::End`]; a queue closed
/// without it (the pump stopped for any reason) is an error, so truncation cannot pass as EOF.
#[derive(Debug)]
pub(crate) struct UploadChunks {
    rx: mpsc::Receiver<UploadItem>,
    state: UploadState,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum UploadState {
    Open,
    Ended,
    Failed,
}

impl UploadChunks {
    pub(crate) fn new(rx: mpsc::Receiver<UploadItem>) -> Self {
        UploadChunks {
            rx,
            state: UploadState::Open,
        }
    }
}

impl Stream for UploadChunks {
    type Item = io::Result<Bytes>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        match self.state {
            UploadState::Open => {}
            UploadState::Ended => return Poll::Ready(None),
            // Keep failing: a reader that retries must never see a clean EOF after an error.
            UploadState::Failed => {
                return Poll::Ready(Some(Err(io::Error::new(
                    io::ErrorKind::ConnectionAborted,
                    "the upload failed",
                ))));
            }
        }
        let item = match self.rx.poll_next_unpin(cx) {
            Poll::Pending => return Poll::Pending,
            Poll::Ready(item) => item,
        };
        Poll::Ready(match item {
            Some(UploadItem::Chunk(bytes)) => Some(Ok(bytes)),
            Some(UploadItem::End) => {
                self.state = UploadState::Ended;
                None
            }
            Some(UploadItem::Fail(err)) => {
                self.state = UploadState::Failed;
                Some(Err(err))
            }
            None => {
                self.state = UploadState::Failed;
                Some(Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "upload ended without its End frame",
                )))
            }
        })
    }
}

/// Moves upload chunks from the socket into the backend's body until `End`. If the backend
/// stops reading (it failed), keeps draining until `End` so the client gets the error reply.
async fn pump_upload(
    ch: &mut Channel<UnixStream>,
    mut tx: mpsc::Sender<UploadItem>,
    abort: &CancellationToken,
) -> Result<(), PumpError> {
    let mut backend_gone = false;
    let failure = loop {
        let msg = tokio::select! {
            () = abort.cancelled() => break PumpError::ShuttingDown,
            msg = ch.recv::<Request>() => msg,
        };
        match msg {
            Ok(Some(Request::Chunk(bytes))) => {
                if !backend_gone && !bytes.is_empty() {
                    let sent = tokio::select! {
                        () = abort.cancelled() => break PumpError::ShuttingDown,
                        sent = tx.send(UploadItem::Chunk(bytes)) => sent,
                    };
                    backend_gone = sent.is_err();
                }
            }
            Ok(Some(Request::End)) => {
                // The one way the body reaches a clean EOF.
                let _ = tx.send(UploadItem::End).await;
                return Ok(());
            }
            Ok(Some(Request::Abort { reason })) => break PumpError::ClientAbort(reason),
            Ok(Some(other)) => {
                break PumpError::Protocol(format!("unexpected frame during an upload: {other:?}"));
            }
            Ok(None) | Err(_) => break PumpError::Disconnected,
        }
    };
    let reason = match &failure {
        PumpError::Disconnected => "the client disconnected mid-upload".to_owned(),
        PumpError::ClientAbort(reason) => format!("the client aborted the upload: {reason}"),
        PumpError::ShuttingDown => "the node is shutting down".to_owned(),
        PumpError::Protocol(reason) => reason.clone(),
    };
    // Best effort to pass the reason on; if the queue is full, dropping `tx` still ends the
    // body with an error (see `UploadChunks`).
    // (Not `Interrupted`: readers retry that kind.)
    let _ = tx.try_send(UploadItem::Fail(io::Error::new(
        io::ErrorKind::ConnectionAborted,
        reason,
    )));
    Err(failure)
}

async fn handle_get<B: Backend>(
    ch: &mut Channel<UnixStream>,
    backend: &B,
    name: String,
    abort: &CancellationToken,
) -> Result<(), ()> {
    let found = tokio::select! {
        () = abort.cancelled() => Err(shutting_down()),
        found = backend.get(&name) => found,
    };
    let (size, mut body) = match found {
        Ok(found) => found,
        Err(err) => return send_or_abort(ch, &Response::Error(err), abort).await,
    };
    send_or_abort(ch, &Response::Found { size }, abort).await?;
    let mut sent = 0u64;
    loop {
        let mut buf = BytesMut::with_capacity(CHUNK_LEN);
        let filled = tokio::select! {
            () = abort.cancelled() => Err(shutting_down()),
            filled = fill(&mut body, &mut buf) => filled.map_err(|err| read_error(&name, &err)),
        };
        match filled {
            Ok(0) => break,
            Ok(n) => {
                sent += n as u64;
                if send_or_abort(ch, &Response::Chunk(buf.freeze()), abort)
                    .await
                    .is_err()
                {
                    debug!(
                        name,
                        "client went away (or stopped reading) during a download"
                    );
                    return Err(());
                }
            }
            Err(err) => {
                warn!(name, "download failed after {sent} bytes: {err}");
                let _ = send_or_abort(ch, &Response::Error(err), abort).await;
                return Err(());
            }
        }
    }
    if sent != size {
        let err = RemoteError::new(
            RemoteErrorKind::Other,
            format!("body of {name:?} had {sent} bytes, announced {size}"),
        );
        let _ = send_or_abort(ch, &Response::Error(err), abort).await;
        return Err(());
    }
    send_or_abort(ch, &Response::End, abort).await
}

fn read_error(name: &str, err: &io::Error) -> RemoteError {
    RemoteError::new(
        RemoteErrorKind::Other,
        format!("reading {name:?} failed: {err}"),
    )
}
