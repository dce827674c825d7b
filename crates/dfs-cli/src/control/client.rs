//! The client side of the control socket.

use std::path::{Path, PathBuf};

use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::net::UnixStream;

use super::{
    CHUNK_LEN, Channel, FileEntry, NodeStatus, PROTOCOL_VERSION, PeerEntry, RemovedInfo, Request,
    Response, ScrubSummary, StoredInfo, fill, socket_path,
};
use crate::{Error, Result};

/// A connection to a running node's control socket.
///
/// One request at a time; a connection can be reused for any number of requests.
///
/// ```no_run
/// # async fn demo() -> dfs_cli::Result<()> {
/// use dfs_cli::control::Client;
///
/// let mut client = Client::connect(std::path::Path::new("/var/lib/dfs")).await?;
/// let stored = client.put("hello.txt", Some(5), &b"hello"[..], |_| {}).await?;
/// assert_eq!(stored.size, 5);
/// let mut back = Vec::new();
/// client.get("hello.txt", &mut back, |_| {}, |_| {}).await?;
/// assert_eq!(back, b"hello");
/// # Ok(()) }
/// ```
#[derive(Debug)]
pub struct Client {
    ch: Channel<UnixStream>,
    node_id: String,
    socket: PathBuf,
}

impl Client {
    /// Connects to the node whose data directory is `data_dir`.
    pub async fn connect(data_dir: &Path) -> Result<Client> {
        Client::connect_socket(&socket_path(data_dir)).await
    }

    /// Connects to the control socket at `socket`.
    pub async fn connect_socket(socket: &Path) -> Result<Client> {
        let stream =
            UnixStream::connect(socket)
                .await
                .map_err(|source| Error::NodeUnreachable {
                    socket: socket.to_path_buf(),
                    source,
                })?;
        // Only a node of our own user (or root) may receive our requests and files: a socket
        // someone else put at this path (in a directory others may write) is not our node.
        let me = rustix::process::geteuid().as_raw();
        let node = stream.peer_cred().map_err(|source| Error::Io {
            context: format!("cannot check who serves {}", socket.display()),
            source,
        })?;
        if !node_may_serve(node.uid(), me) {
            return Err(Error::Io {
                context: format!(
                    "refusing to talk to {}: it is served by uid {}, not by you (uid {me}) or root",
                    socket.display(),
                    node.uid()
                ),
                source: std::io::ErrorKind::PermissionDenied.into(),
            });
        }
        let mut ch = Channel::new(stream);
        let hello = ch
            .send(&Request::Hello {
                version: PROTOCOL_VERSION,
            })
            .await;
        if let Err(err) = hello {
            // A node that refuses this client answers before reading anything and closes the
            // connection, so the `Hello` can fail to send (broken pipe); its reason may still
            // be waiting to be read.
            return match ch.recv::<Response>().await {
                Ok(Some(Response::Error(remote))) => Err(Error::Remote(remote)),
                _ => Err(err.into()),
            };
        }
        match ch.recv::<Response>().await? {
            Some(Response::Hello { version, node_id }) if version == PROTOCOL_VERSION => {
                Ok(Client {
                    ch,
                    node_id,
                    socket: socket.to_path_buf(),
                })
            }
            Some(Response::Hello { version, .. }) => Err(Error::Protocol {
                reason: format!(
                    "the node speaks control protocol {version}, this dfs speaks {PROTOCOL_VERSION}"
                ),
            }),
            Some(Response::Error(err)) => Err(Error::Remote(err)),
            Some(other) => Err(unexpected(&other)),
            None => Err(Error::Protocol {
                reason: "the node closed the control connection during the hello".to_owned(),
            }),
        }
    }

    /// The id (hex) of the node this client talks to.
    pub fn node_id(&self) -> &str {
        &self.node_id
    }

    /// The control socket this client is connected to.
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// Stores `body` under `name`, streaming it in chunks. `size` is informational. `progress`
    /// is called with the total bytes sent so far. Returns once the node (and its replicas)
    /// have the file durably.
    pub async fn put<R: AsyncRead + Unpin>(
        &mut self,
        name: &str,
        size: Option<u64>,
        mut body: R,
        mut progress: impl FnMut(u64),
    ) -> Result<StoredInfo> {
        self.ch
            .send(&Request::Put {
                name: name.to_owned(),
                size,
            })
            .await?;
        let mut sent = 0u64;
        loop {
            let mut buf = BytesMut::with_capacity(CHUNK_LEN);
            let n = match fill(&mut body, &mut buf).await {
                Ok(n) => n,
                Err(source) => {
                    let reason = format!("reading the input failed: {source}");
                    // Best effort: the node discards the partial upload either way.
                    let _ = self.ch.send(&Request::Abort { reason }).await;
                    let _ = self.ch.recv::<Response>().await;
                    return Err(Error::Io {
                        context: format!("cannot read the data for {name:?}"),
                        source,
                    });
                }
            };
            if n == 0 {
                break;
            }
            sent += n as u64;
            if let Err(err) = self.ch.send(&Request::Chunk(buf.freeze())).await {
                return Err(self.reason_for_broken_upload(err).await);
            }
            progress(sent);
        }
        if let Err(err) = self.ch.send(&Request::End).await {
            return Err(self.reason_for_broken_upload(err).await);
        }
        match self.ch.recv::<Response>().await? {
            Some(Response::Stored(info)) => Ok(info),
            Some(Response::Error(err)) => Err(Error::Remote(err)),
            Some(other) => Err(unexpected(&other)),
            None => Err(closed("before confirming the upload")),
        }
    }

    /// When sending fails mid-upload, the node may have said why before closing.
    async fn reason_for_broken_upload(&mut self, err: super::ChannelError) -> Error {
        match self.ch.recv::<Response>().await {
            Ok(Some(Response::Error(remote))) => Error::Remote(remote),
            _ => Error::from(err),
        }
    }

    /// Fetches `name` into `dst`, streaming. `on_size` is called once with the announced size
    /// before any byte is written, `progress` with the total bytes written so far. Returns the
    /// bytes written; an error means the body is incomplete (and `dst` holds a prefix).
    pub async fn get<W: AsyncWrite + Unpin>(
        &mut self,
        name: &str,
        mut dst: W,
        on_size: impl FnOnce(u64),
        mut progress: impl FnMut(u64),
    ) -> Result<u64> {
        self.ch
            .send(&Request::Get {
                name: name.to_owned(),
            })
            .await?;
        let size = match self.ch.recv::<Response>().await? {
            Some(Response::Found { size }) => size,
            Some(Response::Error(err)) => return Err(Error::Remote(err)),
            Some(other) => return Err(unexpected(&other)),
            None => return Err(closed("before answering the get")),
        };
        on_size(size);
        let mut written = 0u64;
        loop {
            match self.ch.recv::<Response>().await? {
                Some(Response::Chunk(bytes)) => {
                    dst.write_all(&bytes).await.map_err(|source| Error::Io {
                        context: format!("cannot write the data of {name:?}"),
                        source,
                    })?;
                    written += bytes.len() as u64;
                    progress(written);
                }
                Some(Response::End) => break,
                Some(Response::Error(err)) => return Err(Error::Remote(err)),
                Some(other) => return Err(unexpected(&other)),
                None => return Err(closed("in the middle of the download")),
            }
        }
        dst.flush().await.map_err(|source| Error::Io {
            context: format!("cannot write the data of {name:?}"),
            source,
        })?;
        if written != size {
            return Err(Error::Protocol {
                reason: format!("the node announced {size} bytes but sent {written}"),
            });
        }
        Ok(written)
    }

    /// Deletes `name` on the node, and on every connected peer when `everywhere`; says where
    /// copies were found.
    pub async fn remove(&mut self, name: &str, everywhere: bool) -> Result<RemovedInfo> {
        let request = Request::Remove {
            name: name.to_owned(),
            everywhere,
        };
        match self.call(&request).await? {
            Response::Removed(info) => Ok(info),
            other => Err(unexpected(&other)),
        }
    }

    /// The node's local files.
    pub async fn list(&mut self) -> Result<Vec<FileEntry>> {
        let mut files = match self.call(&Request::List).await? {
            Response::Files(files) => files,
            other => return Err(unexpected(&other)),
        };
        // More batches until `End` (a listing may be larger than one frame).
        loop {
            match self.ch.recv::<Response>().await? {
                Some(Response::Files(more)) => files.extend(more),
                Some(Response::End) => return Ok(files),
                Some(Response::Error(err)) => return Err(Error::Remote(err)),
                Some(other) => return Err(unexpected(&other)),
                None => return Err(closed("in the middle of the listing")),
            }
        }
    }

    /// The node's connected peers; with `wait`, first waits until at least `n` peers are
    /// connected or the duration passes (then returns whatever is connected).
    pub async fn peers(
        &mut self,
        wait: Option<(u32, std::time::Duration)>,
    ) -> Result<Vec<PeerEntry>> {
        let request = Request::Peers {
            wait_for: wait.map(|(n, _)| n),
            timeout_ms: wait
                .map(|(_, d)| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
                .unwrap_or(0),
        };
        match self.call(&request).await? {
            Response::Peers(peers) => Ok(peers),
            other => Err(unexpected(&other)),
        }
    }

    /// The node's status.
    pub async fn status(&mut self) -> Result<NodeStatus> {
        match self.call(&Request::Status).await? {
            Response::Status(status) => Ok(status),
            other => Err(unexpected(&other)),
        }
    }

    /// Verify every object on the node and replace damaged ones from its peers.
    pub async fn scrub(&mut self) -> Result<ScrubSummary> {
        match self.call(&Request::Scrub).await? {
            Response::Scrubbed(summary) => Ok(summary),
            other => Err(unexpected(&other)),
        }
    }

    /// Pushes the node's copy of `name` to its peers.
    pub async fn replicate(&mut self, name: &str) -> Result<StoredInfo> {
        let request = Request::Replicate {
            name: name.to_owned(),
        };
        match self.call(&request).await? {
            Response::Stored(stored) => Ok(stored),
            other => Err(unexpected(&other)),
        }
    }

    async fn call(&mut self, request: &Request) -> Result<Response> {
        self.ch.send(request).await?;
        match self.ch.recv::<Response>().await? {
            Some(Response::Error(err)) => Err(Error::Remote(err)),
            Some(response) => Ok(response),
            None => Err(closed("before answering")),
        }
    }
}

fn unexpected(response: &Response) -> Error {
    let shown = format!("{response:?}");
    let shown: String = shown.chars().take(80).collect();
    Error::Protocol {
        reason: format!("unexpected answer from the node: {shown}"),
    }
}

fn closed(when: &str) -> Error {
    Error::Protocol {
        reason: format!("the node closed the control connection {when}"),
    }
}

/// Whether a node running as `node` may serve a client running as `me`: the same user, or
/// root (a node run by root serves everyone who can open its socket).
fn node_may_serve(node: u32, me: u32) -> bool {
    node == me || node == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_our_user_or_root_may_serve_us() {
        assert!(node_may_serve(1000, 1000));
        assert!(node_may_serve(0, 1000));
        assert!(node_may_serve(0, 0));
        assert!(!node_may_serve(1001, 1000));
        assert!(
            !node_may_serve(1000, 0),
            "root's client does not talk to a user's node"
        );
    }
}
