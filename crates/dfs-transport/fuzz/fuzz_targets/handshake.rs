//! The handshake on arbitrary bytes: the hello parser and proof check directly, and a real
//! `Endpoint` (memory transport) receiving the bytes as an inbound connection. Never panics;
//! the endpoint refuses the connection and stays usable.
#![no_main]

use std::sync::OnceLock;
use std::time::Duration;

use dfs_transport::wire::{Hello, SessionKeys};
use dfs_transport::{Endpoint, EndpointConfig, MemoryTransport, NetworkSecret, NodeId, Transport};
use libfuzzer_sys::fuzz_target;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

struct World {
    rt: tokio::runtime::Runtime,
    net: MemoryTransport,
    addr: String,
    _endpoint: Endpoint<MemoryTransport>,
}

fn world() -> &'static World {
    static W: OnceLock<World> = OnceLock::new();
    W.get_or_init(|| {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        let net = MemoryTransport::new();
        let config = EndpointConfig::new(NodeId([1; 32]))
            .secret(Some(NetworkSecret::from_bytes([2; 32])))
            .handshake_timeout(Duration::from_millis(200));
        let (endpoint, events) = rt
            .block_on(Endpoint::bind(net.clone(), "mem:0", config))
            .expect("bind");
        drop(events);
        let addr = endpoint.local_addr();
        World { rt, net, addr, _endpoint: endpoint }
    })
}

fuzz_target!(|data: &[u8]| {
    // Direct: parse, derive, verify.
    if let Ok((hello, used)) = Hello::decode(data) {
        assert!(used <= data.len());
        assert_eq!(Hello::decode(&hello.encode()).map(|(h, _)| h).ok(), Some(hello));
        let keys = SessionKeys::derive(None, &data[..used], data, false);
        let mut proof = [0u8; 32];
        let tail = &data[used..];
        proof[..tail.len().min(32)].copy_from_slice(&tail[..tail.len().min(32)]);
        let _ = keys.verify_proof(&proof);
    }
    // Through a live endpoint: it must answer with its hello and then drop us.
    let w = world();
    w.rt.block_on(async {
        let mut s = w.net.dial(&w.addr).await.expect("dial");
        let _ = s.write_all(data).await;
        let _ = s.shutdown().await;
        let mut sink = Vec::new();
        let read = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut sink)).await;
        assert!(read.is_ok(), "the endpoint kept a bad connection open");
    });
});
