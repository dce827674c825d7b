//! The client commands: `put`, `get`, `rm`, `ls`, `peers`, `status`.

use std::io::IsTerminal;
use std::path::Path;
use std::time::Duration;

use indicatif::{ProgressBar, ProgressStyle};
use tokio::io::{AsyncRead, AsyncWriteExt, BufWriter};

use crate::cli::{GetArgs, NodeArgs, PeersArgs, PutArgs, ReplicateArgs, RmArgs};
use crate::control::{Client, RemoteError, RemoteErrorKind, RemovedInfo};
use crate::output::{Output, Partial, Signals, Stdout, Target};
use crate::{Error, Result};

/// Bodies smaller than this get no progress bar.
const PROGRESS_MIN: u64 = 1 << 20;

/// A byte progress bar on stderr, hidden when stderr is not a terminal or the body is small.
fn progress_bar(len: Option<u64>) -> ProgressBar {
    if !std::io::stderr().is_terminal() || len.is_some_and(|n| n < PROGRESS_MIN) {
        return ProgressBar::hidden();
    }
    match len {
        Some(len) => {
            let bar = ProgressBar::new(len);
            if let Ok(style) = ProgressStyle::with_template(
                "{bar:40.cyan/blue} {bytes}/{total_bytes} {binary_bytes_per_sec} eta {eta}",
            ) {
                bar.set_style(style);
            }
            bar
        }
        None => {
            let bar = ProgressBar::new_spinner();
            if let Ok(style) =
                ProgressStyle::with_template("{spinner} {bytes} {binary_bytes_per_sec}")
            {
                bar.set_style(style);
            }
            bar.enable_steady_tick(Duration::from_millis(200));
            bar
        }
    }
}

pub(crate) async fn put(args: PutArgs) -> Result<()> {
    let from_stdin = args.file == Path::new("-");
    let name = match (&args.name, from_stdin) {
        (Some(name), _) => name.clone(),
        (None, true) => {
            return Err(Error::Usage {
                message: "`dfs put -` reads stdin and needs --name NAME".to_owned(),
            });
        }
        (None, false) => match args.file.file_name() {
            Some(name) => match name.to_str() {
                Some(name) => name.to_owned(),
                None => {
                    return Err(Error::Usage {
                        message: format!(
                            "the name of {} is not UTF-8; pass --name",
                            args.file.display()
                        ),
                    });
                }
            },
            None => {
                return Err(Error::Usage {
                    message: format!("{} has no file name; pass --name", args.file.display()),
                });
            }
        },
    };
    // The node would refuse the name only after the whole upload: check it first.
    crate::control::daemon::check_name(&name).map_err(|why| Error::Usage {
        message: format!("bad file name {name:?}: {why}"),
    })?;
    let (body, size): (Box<dyn AsyncRead + Unpin + Send>, Option<u64>) = if from_stdin {
        (Box::new(tokio::io::stdin()), None)
    } else {
        let read_err = |source| Error::Io {
            context: format!("cannot read {}", args.file.display()),
            source,
        };
        let file = tokio::fs::File::open(&args.file).await.map_err(read_err)?;
        let meta = file.metadata().await.map_err(read_err)?;
        if meta.is_dir() {
            return Err(Error::Usage {
                message: format!("{} is a directory", args.file.display()),
            });
        }
        (Box::new(file), Some(meta.len()))
    };
    let mut client = Client::connect(&args.node.data).await?;
    let bar = progress_bar(size);
    let stored = client.put(&name, size, body, |n| bar.set_position(n)).await;
    bar.finish_and_clear();
    let stored = stored?;
    let mut out = Stdout::new();
    out.line(format_args!(
        "stored {} ({} bytes) on {} and {} replica(s)",
        stored.name,
        stored.size,
        short(client.node_id()),
        stored.replicas.len()
    ))?;
    out.flush()
}

pub(crate) async fn get(args: GetArgs) -> Result<()> {
    let output = args.output.filter(|p| p != Path::new("-"));
    match output {
        None => {
            let mut client = Client::connect(&args.node.data).await?;
            let stdout = std::io::stdout();
            if stdout.is_terminal() {
                return Err(Error::Usage {
                    message:
                        "refusing to write file data to a terminal; use -o FILE or redirect stdout"
                            .to_owned(),
                });
            }
            let mut dst = BufWriter::with_capacity(256 * 1024, tokio::io::stdout());
            download(&mut client, &args.name, &mut dst).await?;
            dst.flush().await.map_err(|source| Error::Io {
                context: "cannot write to stdout".to_owned(),
                source,
            })?;
        }
        Some(path) => {
            // Checked before connecting: `-o DIR` fails at once.
            let target = Target::resolve(&path)?;
            let written = if target.is_direct() {
                // Nothing to clean up: a signal ends the process as usual.
                let output = target.open(&Partial::default())?;
                let mut client = Client::connect(&args.node.data).await?;
                download_to(&mut client, &args.name, output).await?
            } else {
                // Caught before the temporary file exists, so it never outlives the process.
                let mut signals = Signals::new()?;
                let partial = Partial::default();
                let fetch = async {
                    // The temporary file first: an unwritable directory fails before the node
                    // is asked for anything.
                    let output = target.open(&partial)?;
                    let mut client = Client::connect(&args.node.data).await?;
                    download_to(&mut client, &args.name, output).await
                };
                tokio::pin!(fetch);
                tokio::select! {
                    // A finished write wins over a signal that came with it.
                    biased;
                    written = &mut fetch => written?,
                    err = signals.recv() => {
                        if !partial.remove() {
                            return Err(err);
                        }
                        // Too late: the output is complete and in place.
                        fetch.await?
                    }
                }
            };
            crate::say!("wrote {} ({written} bytes)", path.display());
        }
    }
    Ok(())
}

async fn download<W: tokio::io::AsyncWrite + Unpin>(
    client: &mut Client,
    name: &str,
    dst: W,
) -> Result<u64> {
    let bar = ProgressBar::hidden();
    let shown = std::cell::RefCell::new(bar);
    let result = client
        .get(
            name,
            dst,
            |size| {
                shown.replace(progress_bar(Some(size)));
            },
            |n| shown.borrow().set_position(n),
        )
        .await;
    shown.borrow().finish_and_clear();
    result
}

/// Downloads into `output` and commits it (a temporary file is renamed into place only when
/// complete).
async fn download_to(client: &mut Client, name: &str, output: Output) -> Result<u64> {
    let io_err = |source| Error::Io {
        context: format!("cannot write {}", output.shown().display()),
        source,
    };
    let file = output.file().try_clone().map_err(io_err)?;
    let mut dst = BufWriter::with_capacity(256 * 1024, tokio::fs::File::from_std(file));
    let written = download(client, name, &mut dst).await?;
    dst.flush().await.map_err(io_err)?;
    drop(dst);
    output.commit()?;
    Ok(written)
}

pub(crate) async fn rm(args: RmArgs) -> Result<()> {
    let mut client = Client::connect(&args.node.data).await?;
    let removed = client.remove(&args.name, args.everywhere).await?;
    let mut out = Stdout::new();
    out.line(format_args!(
        "{}",
        removed_message(&args.name, args.everywhere, &removed)
    ))?;
    out.flush()
}

/// What `dfs rm` prints: where copies were found and removed.
fn removed_message(name: &str, everywhere: bool, removed: &RemovedInfo) -> String {
    let peers = match removed.peers.len() {
        1 => "1 peer".to_owned(),
        n => format!("{n} peers"),
    };
    match (everywhere, removed.local, removed.peers.is_empty()) {
        (false, ..) => format!("removed {name}"),
        (true, true, true) => format!("removed {name} here; no connected peer had a copy"),
        (true, true, false) => format!("removed {name} here and on {peers}"),
        (true, false, _) => format!("removed {name} on {peers}; this node had no copy"),
    }
}

pub(crate) async fn replicate(args: ReplicateArgs) -> Result<()> {
    let mut client = Client::connect(&args.node.data).await?;
    let stored = client.replicate(&args.name).await?;
    let mut out = Stdout::new();
    out.line(format_args!(
        "replicated {} ({} bytes) to {} peer(s)",
        stored.name,
        stored.size,
        stored.replicas.len()
    ))?;
    out.flush()
}

pub(crate) async fn ls(args: NodeArgs) -> Result<()> {
    let mut client = Client::connect(&args.data).await?;
    let mut files = client.list().await?;
    files.sort_by(|a, b| a.name.cmp(&b.name).then_with(|| a.id.cmp(&b.id)));
    let mut out = Stdout::new();
    for file in files {
        match file.name {
            Some(name) => out.line(format_args!("{:>12}  {name}", file.size))?,
            None => out.line(format_args!(
                "{:>12}  <replica {}>",
                file.size,
                short(&file.id)
            ))?,
        }
    }
    out.flush()
}

pub(crate) async fn peers(args: PeersArgs) -> Result<()> {
    let mut client = Client::connect(&args.node.data).await?;
    let wait = args.wait.map(|n| (n, Duration::from_secs(args.timeout)));
    let peers = client.peers(wait).await?;
    let mut out = Stdout::new();
    for peer in &peers {
        out.line(format_args!("{}  {}", peer.id, peer.addr))?;
    }
    out.flush()?;
    if let Some(n) = args.wait
        && peers.len() < n as usize
    {
        return Err(Error::Remote(crate::control::RemoteError::new(
            crate::control::RemoteErrorKind::Network,
            format!(
                "only {} of {n} peers connected after {}s",
                peers.len(),
                args.timeout
            ),
        )));
    }
    Ok(())
}

pub(crate) async fn status(args: NodeArgs) -> Result<()> {
    let mut client = Client::connect(&args.data).await?;
    let s = client.status().await?;
    let mut out = Stdout::new();
    out.line(format_args!("node:     {}", s.node_id))?;
    out.line(format_args!("listen:   {}", s.listen_addr))?;
    out.line(format_args!("data:     {}", s.data_dir))?;
    out.line(format_args!("peers:    {}", s.peers))?;
    out.line(format_args!(
        "files:    {} ({} bytes)",
        s.files, s.stored_bytes
    ))?;
    out.line(format_args!("uptime:   {}s", s.uptime_secs))?;
    out.line(format_args!("version:  {}", s.version))?;
    out.flush()
}

pub(crate) async fn scrub(args: NodeArgs) -> Result<()> {
    let mut client = Client::connect(&args.data).await?;
    let s = client.scrub().await?;
    let mut out = Stdout::new();
    out.line(format_args!("checked:  {}", s.checked))?;
    for id in &s.repaired {
        out.line(format_args!("repaired: {}", short(id)))?;
    }
    out.flush()?;
    for what in &s.unrepaired {
        crate::say!("damaged:  {what}");
    }
    if s.unrepaired.is_empty() {
        Ok(())
    } else {
        Err(Error::Remote(RemoteError::new(
            RemoteErrorKind::Other,
            format!(
                "{} damaged file(s) could not be replaced from any peer",
                s.unrepaired.len()
            ),
        )))
    }
}

/// The first 16 characters of a hex id.
fn short(id: &str) -> &str {
    id.get(..16).unwrap_or(id)
}
