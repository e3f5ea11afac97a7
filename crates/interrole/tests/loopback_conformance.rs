//! The loopback transport passes the transport conformance kit.

use std::sync::Arc;

use async_trait::async_trait;
use interrole::Loopback;
use interrole::core::Transport;
use interrole::core::testkit::Harness;

struct LoopbackHarness(Loopback);

#[async_trait]
impl Harness for LoopbackHarness {
    async fn transport(&self) -> Arc<dyn Transport> {
        // Clones share the fabric, as processes share a relay.
        Arc::new(self.0.clone())
    }

    async fn restart_far_end(&self) -> bool {
        self.0.restart();
        true
    }
}

interrole::core::conformance_suite!(loopback, LoopbackHarness(Loopback::new()));
