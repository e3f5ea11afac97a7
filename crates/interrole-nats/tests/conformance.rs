//! The NATS transport passes the transport conformance kit against a real `nats-server`.

mod common;

use std::sync::Arc;

use async_trait::async_trait;
use interrole_core::Transport;
use interrole_core::testkit::Harness;
use interrole_nats::{Durable, NatsOptions, NatsTransport};
use tokio::sync::Mutex;

struct NatsHarness {
    server: Mutex<common::NatsServer>,
    url: String,
    durable: bool,
}

#[async_trait]
impl Harness for NatsHarness {
    async fn transport(&self) -> Arc<dyn Transport> {
        let mut options = NatsOptions::new(&self.url);
        if self.durable {
            options = options.with_durable(Durable::default());
        }
        Arc::new(NatsTransport::new(options))
    }

    async fn restart_far_end(&self) -> bool {
        let mut s = self.server.lock().await;
        tokio::task::block_in_place(|| s.restart());
        true
    }
}

/// The kit's checks, each `#[ignore = "needs nats-server"]` (run with `cargo test -- --ignored`).
macro_rules! checks {
    ($mode:ident, $durable:expr; $($check:ident),*) => {
        mod $mode {
            use super::*;
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                #[ignore = "needs nats-server"]
                async fn $check() {
                    let name = concat!(stringify!($mode), "::", stringify!($check));
                    let server = if $durable {
                        common::NatsServer::start_js(name)
                    } else {
                        common::NatsServer::start(name)
                    };
                    let harness = NatsHarness {
                        url: server.url(),
                        server: Mutex::new(server),
                        durable: $durable,
                    };
                    interrole_core::testkit::$check(&harness).await;
                }
            )*
        }
    };
}

checks!(core, false;
    multicast_reaches_every_listener_once,
    per_sender_order,
    directed_delivery,
    closed_connection_receives_nothing,
    reconnect_after_far_end_restart,
    payload_limits
);

checks!(durable, true;
    multicast_reaches_every_listener_once,
    per_sender_order,
    directed_delivery,
    closed_connection_receives_nothing,
    reconnect_after_far_end_restart,
    payload_limits
);
