//! The smallest useful embedding of a `dfs-server` node in a tokio application.
//!
//! ```sh
//! # a node in a temporary directory: store a file, stream it back, stop
//! cargo run --example embed
//! # a long-running node with a persistent root, joining another node; Ctrl-C stops it
//! cargo run --example embed -- ./node-root 127.0.0.1:4001 127.0.0.1:4000 --serve
//! ```
//!
//! Arguments (all optional, in order): root directory, listen address, a bootstrap address,
//! `--serve` to keep running until Ctrl-C. The data key is created in the root on first start.

use anyhow::Result;
use dfs_server::{Config, FileServer, TcpTransport};
use tokio::io::AsyncWriteExt;

#[tokio::main]
async fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let serve = args.iter().any(|a| a == "--serve");
    let mut positional = args.iter().filter(|a| !a.starts_with("--"));
    let temp = tempfile::tempdir()?;
    let root = positional
        .next()
        .map_or_else(|| temp.path().to_path_buf(), Into::into);
    let listen = positional.next().cloned().unwrap_or("127.0.0.1:0".into());
    let bootstrap: Vec<String> = positional.next().cloned().into_iter().collect();

    // 1. Configure and start: the node runs on this runtime, next to the rest of the app.
    let config = Config::builder(&root)
        .listen_addr(listen)
        .bootstrap(bootstrap)
        .build();
    let node = FileServer::start(config, TcpTransport::new()).await?;
    println!("node {} listening on {}", node.node_id(), node.local_addr());

    // 2. Store from any AsyncRead (here a byte slice) and read back as an AsyncRead.
    let receipt = node
        .store_bytes("hello.txt", b"hello from an embedded dfs node\n")
        .await?;
    println!(
        "stored {} bytes, replicas: {:?}",
        receipt.size, receipt.replicas
    );
    let mut reader = node.get("hello.txt").await?;
    tokio::io::copy(&mut reader, &mut tokio::io::stdout()).await?;
    tokio::io::stdout().flush().await?;

    // 3. Optionally keep serving peers until Ctrl-C, then stop gracefully.
    if serve {
        println!("serving; Ctrl-C stops");
        tokio::signal::ctrl_c().await?;
    }
    node.shutdown().await?;
    Ok(())
}
