//! The command line, as parsed by clap.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

/// Store, replicate and fetch encrypted files across dfs nodes.
#[derive(Debug, Parser)]
#[command(
    name = "dfs",
    version,
    about,
    propagate_version = true,
    args_override_self = true
)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The `dfs` subcommands.
#[derive(Debug, Subcommand)]
#[non_exhaustive]
pub enum Command {
    /// Write a fresh data key file and a fresh network secret file (hex, mode 0600).
    Keygen(KeygenArgs),
    /// Run a node until Ctrl-C or SIGTERM.
    Serve(ServeArgs),
    /// Store a file on the cluster through the local node.
    Put(PutArgs),
    /// Fetch a file from the cluster through the local node.
    Get(GetArgs),
    /// Delete a file from the local node (and with --everywhere from its peers).
    Rm(RmArgs),
    /// List the files the local node holds.
    Ls(NodeArgs),
    /// List the peers the local node is connected to.
    Peers(PeersArgs),
    /// Show the local node's status.
    Status(NodeArgs),
    /// Verify every file the local node holds and replace damaged ones from its peers
    /// (fails when one could not be replaced).
    Scrub(NodeArgs),
    /// Push the local node's copy of a file to its peers (e.g. to nodes that joined after
    /// it was stored).
    Replicate(ReplicateArgs),
    /// Encrypt a file (or stdin) with a data key.
    Encrypt(CryptArgs),
    /// Decrypt a file (or stdin) with a data key.
    Decrypt(CryptArgs),
}

/// Arguments of `dfs keygen`.
#[derive(Debug, Args)]
pub struct KeygenArgs {
    /// Where to write the data key (files are encrypted with it).
    #[arg(
        long,
        value_name = "FILE",
        default_value = "data.key",
        env = "DFS_KEY_FILE"
    )]
    pub key_file: PathBuf,
    /// Where to write the network secret (nodes must share it to connect).
    #[arg(
        long,
        value_name = "FILE",
        default_value = "network.secret",
        env = "DFS_SECRET_FILE"
    )]
    pub secret_file: PathBuf,
    /// Replace existing files (files encrypted with an old data key become unreadable).
    #[arg(long)]
    pub force: bool,
}

/// Which node a client command talks to.
#[derive(Debug, Args)]
pub struct NodeArgs {
    /// The node's data directory (its control socket is `DIR/dfs.sock`).
    #[arg(long, short = 'd', value_name = "DIR", env = "DFS_DATA", default_value_os_t = default_data_dir())]
    pub data: PathBuf,
}

/// Arguments of `dfs serve`.
#[derive(Debug, Args)]
pub struct ServeArgs {
    /// The address to listen on for peers (port 0 picks a free port; the real address is
    /// printed in the `listening on ADDR` line).
    #[arg(
        long,
        short = 'l',
        value_name = "ADDR",
        env = "DFS_LISTEN",
        default_value = "127.0.0.1:3000"
    )]
    pub listen: String,
    /// The node's data directory (created if missing).
    #[arg(long, short = 'd', value_name = "DIR", env = "DFS_DATA", default_value_os_t = default_data_dir())]
    pub data: PathBuf,
    /// A node to join at start (repeat, or separate with commas).
    #[arg(long, short = 'b', value_name = "ADDR", value_delimiter = ',')]
    pub bootstrap: Vec<String>,
    /// The data key file (default: DIR/data.key, generated on first start).
    #[arg(long, value_name = "FILE", env = "DFS_KEY_FILE")]
    pub key_file: Option<PathBuf>,
    /// The network secret file; without one the node runs an open network that any node can
    /// join.
    #[arg(long, value_name = "FILE", env = "DFS_SECRET_FILE")]
    pub secret_file: Option<PathBuf>,
    /// How many peers must hold a copy before a put succeeds (default: every connected peer;
    /// 0: this node only).
    #[arg(long, value_name = "N")]
    pub replicas: Option<usize>,
    /// Seconds in-flight client requests get to finish on shutdown before they are aborted.
    #[arg(long, value_name = "SECS", default_value_t = 10)]
    pub grace: u64,
    /// Do not fsync stored files (faster, not crash-safe; for tests and benchmarks).
    #[arg(long)]
    pub no_fsync: bool,
    /// How many peer transfers (replicas received, files sent) the node serves at once,
    /// one peer at most half of them; more wait, then are answered "busy" (default 64, at
    /// most 256).
    #[arg(long, value_name = "N")]
    pub max_incoming_transfers: Option<usize>,
    /// Keep files received from peers whose stored size is at most BYTES (at most 1048576)
    /// in the store's pack of small objects instead of a file each: faster durable writes
    /// of small files, an in-memory index of about 150 bytes per packed file (default 0:
    /// off).
    #[arg(long, value_name = "BYTES", default_value_t = 0,
          value_parser = clap::value_parser!(u32).range(0..=i64::from(dfs_store::MAX_PACKED)))]
    pub pack_small: u32,
}

/// Arguments of `dfs put`.
#[derive(Debug, Args)]
pub struct PutArgs {
    /// The file to store (`-` for stdin, which needs --name).
    #[arg(value_name = "FILE")]
    pub file: PathBuf,
    /// The name to store it under (default: the file's name).
    #[arg(long, short = 'n', value_name = "NAME")]
    pub name: Option<String>,
    /// The node to go through.
    #[command(flatten)]
    pub node: NodeArgs,
}

/// Arguments of `dfs get`.
#[derive(Debug, Args)]
pub struct GetArgs {
    /// The name the file was stored under.
    #[arg(value_name = "NAME")]
    pub name: String,
    /// Where to write it (default or `-`: stdout, unless stdout is a terminal).
    #[arg(long, short = 'o', value_name = "FILE")]
    pub output: Option<PathBuf>,
    /// The node to go through.
    #[command(flatten)]
    pub node: NodeArgs,
}

/// Arguments of `dfs rm`.
#[derive(Debug, Args)]
pub struct RmArgs {
    /// The name the file was stored under.
    #[arg(value_name = "NAME")]
    pub name: String,
    /// Also delete the copies on every connected peer.
    #[arg(long)]
    pub everywhere: bool,
    /// The node to go through.
    #[command(flatten)]
    pub node: NodeArgs,
}

/// Arguments of `dfs replicate`.
#[derive(Debug, Args)]
pub struct ReplicateArgs {
    /// The name the file was stored under.
    #[arg(value_name = "NAME")]
    pub name: String,
    /// The node to go through.
    #[command(flatten)]
    pub node: NodeArgs,
}

/// Arguments of `dfs peers`.
#[derive(Debug, Args)]
pub struct PeersArgs {
    /// Wait until at least N peers are connected (fails after --timeout).
    #[arg(long, value_name = "N")]
    pub wait: Option<u32>,
    /// Seconds to wait for --wait peers (at most 600, the node's limit).
    #[arg(long, value_name = "SECS", default_value_t = 30,
          value_parser = clap::value_parser!(u64).range(0..=600))]
    pub timeout: u64,
    /// The node to ask.
    #[command(flatten)]
    pub node: NodeArgs,
}

/// Arguments of `dfs encrypt` and `dfs decrypt`.
#[derive(Debug, Args)]
pub struct CryptArgs {
    /// The data key file (64 hex digits).
    #[arg(long, short = 'k', value_name = "FILE", env = "DFS_KEY_FILE")]
    pub key_file: PathBuf,
    /// The format: `sealed` (authenticated, what nodes store) or `ctr` (the Go original's
    /// unauthenticated format).
    #[arg(long, short = 'c', value_enum, default_value_t = CipherKind::Sealed)]
    pub cipher: CipherKind,
    /// The input file (default or `-`: stdin).
    #[arg(value_name = "INPUT")]
    pub input: Option<PathBuf>,
    /// The output file (default or `-`: stdout); written atomically.
    #[arg(long, short = 'o', value_name = "FILE")]
    pub output: Option<PathBuf>,
}

/// The file formats of `dfs encrypt` / `dfs decrypt`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
#[non_exhaustive]
pub enum CipherKind {
    /// `IV || AES-256-CTR(plaintext)`, byte-compatible with the Go original; not authenticated.
    Ctr,
    /// AES-256-CTR with a BLAKE3 tag per chunk (`Aes256CtrBlake3`); tampering is detected.
    Sealed,
}

/// The default data directory: `$XDG_DATA_HOME/dfs`, else `$HOME/.local/share/dfs`, else
/// `./dfs-data`.
pub fn default_data_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("XDG_DATA_HOME").filter(|d| !d.is_empty()) {
        return PathBuf::from(dir).join("dfs");
    }
    if let Some(home) = std::env::var_os("HOME").filter(|d| !d.is_empty()) {
        return PathBuf::from(home).join(".local/share/dfs");
    }
    PathBuf::from("dfs-data")
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn clap_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn serve_needs_no_arguments() {
        let cli = Cli::try_parse_from(["dfs", "serve"]).unwrap();
        let Command::Serve(args) = cli.command else {
            panic!("not serve")
        };
        if std::env::var_os("DFS_LISTEN").is_none() {
            assert_eq!(args.listen, "127.0.0.1:3000");
        }
        if std::env::var_os("DFS_DATA").is_none() {
            assert_eq!(args.data, default_data_dir());
        }
        assert!(args.bootstrap.is_empty());
        if std::env::var_os("DFS_KEY_FILE").is_none() {
            assert!(args.key_file.is_none(), "generated in the data directory");
        }
        assert_eq!(
            (args.replicas, args.grace, args.no_fsync),
            (None, 10, false)
        );
    }

    /// The node caps a peers wait at 600 s: a longer one is a usage error, not a silent cap.
    #[test]
    fn peers_timeout_is_bounded_by_the_nodes_limit() {
        assert!(Cli::try_parse_from(["dfs", "peers", "--wait", "1", "--timeout", "600"]).is_ok());
        let err =
            Cli::try_parse_from(["dfs", "peers", "--wait", "1", "--timeout", "601"]).unwrap_err();
        assert_eq!(err.kind(), clap::error::ErrorKind::ValueValidation);
    }

    #[test]
    fn parses_the_documented_forms() {
        let cli = Cli::try_parse_from([
            "dfs",
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--data",
            "/tmp/a",
            "--bootstrap",
            "127.0.0.1:1,127.0.0.1:2",
            "--bootstrap",
            "127.0.0.1:3",
            "--max-incoming-transfers",
            "8",
            "--pack-small",
            "65536",
        ])
        .unwrap();
        let Command::Serve(args) = cli.command else {
            panic!("not serve")
        };
        assert_eq!(
            args.bootstrap,
            ["127.0.0.1:1", "127.0.0.1:2", "127.0.0.1:3"]
        );
        assert_eq!(args.max_incoming_transfers, Some(8));
        assert_eq!(args.pack_small, 65536);
        let serve = |pack: &str| {
            Cli::try_parse_from(["dfs", "serve", "-d", "/tmp/a", "--pack-small", pack])
        };
        assert!(serve("1048576").is_ok());
        assert!(serve("1048577").is_err());
        let cli = Cli::try_parse_from(["dfs", "rm", "x", "--everywhere", "-d", "/tmp/a"]).unwrap();
        assert!(matches!(
            cli.command,
            Command::Rm(RmArgs {
                everywhere: true,
                ..
            })
        ));
        let cli =
            Cli::try_parse_from(["dfs", "decrypt", "-k", "k", "--cipher", "ctr", "in"]).unwrap();
        assert!(matches!(
            cli.command,
            Command::Decrypt(CryptArgs {
                cipher: CipherKind::Ctr,
                ..
            })
        ));
    }
}
