//! The NATS transport passes the transport conformance kit against a real `nats-server`.

mod common;

use std::sync::Arc;

use async_trait::async_trait;
use interrole_core::Transport;
use interrole_core::testkit::Harness;
use interrole_nats::{NatsOptions, NatsTransport};
use tokio::sync::Mutex;

struct NatsHarness {
    server: Mutex<common::NatsServer>,
    url: String,
}

#[async_trait]
impl Harness for NatsHarness {
    async fn transport(&self) -> Arc<dyn Transport> {
        Arc::new(NatsTransport::new(NatsOptions::new(&self.url)))
    }

    async fn restart_far_end(&self) -> bool {
        let mut s = self.server.lock().await;
        tokio::task::block_in_place(|| s.restart());
        true
    }
}

/// The kit's checks, each skipped (with a message) when nats-server is not installed.
macro_rules! checks {
    ($($check:ident),*) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $check() {
                let Some(server) = common::NatsServer::start(stringify!($check)) else { return };
                let harness = NatsHarness { url: server.url(), server: Mutex::new(server) };
                interrole_core::testkit::$check(&harness).await;
            }
        )*
    };
}

checks!(
    multicast_reaches_every_listener_once,
    per_sender_order,
    directed_delivery,
    closed_connection_receives_nothing,
    reconnect_after_far_end_restart,
    payload_limits
);
