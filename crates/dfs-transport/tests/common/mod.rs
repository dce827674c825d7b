//! Helpers shared by the integration tests.
#![allow(dead_code, unreachable_pub, clippy::unwrap_used, clippy::expect_used)]

use std::future::Future;
use std::time::Duration;

use dfs_transport::{
    Endpoint, EndpointConfig, Event, Events, MemoryTransport, NodeId, TcpTransport, Transport,
};

/// A transport under test: how to make a fresh one and which address means "any port".
pub trait Net: Transport {
    fn fresh() -> Self;
    fn any_addr() -> &'static str;
}

impl Net for TcpTransport {
    fn fresh() -> Self {
        TcpTransport::new()
    }
    fn any_addr() -> &'static str {
        "127.0.0.1:0"
    }
}

impl Net for MemoryTransport {
    fn fresh() -> Self {
        MemoryTransport::new()
    }
    fn any_addr() -> &'static str {
        "mem:0"
    }
}

/// Deadline for any single wait in a test.
pub const WAIT: Duration = Duration::from_secs(10);

pub fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("off")),
        )
        .with_test_writer()
        .try_init();
}

pub fn config() -> EndpointConfig {
    EndpointConfig::new(NodeId::random())
}

pub async fn node<T: Net>(net: &T, config: EndpointConfig) -> (Endpoint<T>, Events) {
    Endpoint::bind(net.clone(), T::any_addr(), config)
        .await
        .expect("bind")
}

/// Await `f` or panic after [`WAIT`].
pub async fn within<F: Future>(what: &str, f: F) -> F::Output {
    tokio::time::timeout(WAIT, f)
        .await
        .unwrap_or_else(|_| panic!("timed out waiting for {what}"))
}

/// The next event matching `pick`, skipping others; panics after [`WAIT`].
pub async fn wait_for<X>(
    events: &mut Events,
    what: &str,
    mut pick: impl FnMut(Event) -> Option<X>,
) -> X {
    within(what, async {
        loop {
            let ev = events.next().await.expect("event stream ended");
            if let Some(x) = pick(ev) {
                return x;
            }
        }
    })
    .await
}
