//! What connection tasks wait on besides their sockets: a token's expiry, the server's shutdown,
//! and the grace a closing connection gets.

use std::time::{Duration, Instant};

use tokio::sync::watch;

/// How long a connection's last writes (its close frame, a closing handshake) may take before
/// its socket is dropped.
pub(crate) const CLOSE_GRACE: Duration = Duration::from_secs(5);

/// Resolves at `at`; never when there is no `at` (a token without expiry).
pub(crate) async fn until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at.into()).await,
        None => std::future::pending().await,
    }
}

/// Resolves once the server shuts down (or is gone).
pub(crate) async fn shutdown(shutdown: &mut watch::Receiver<bool>) {
    let _ = shutdown.wait_for(|s| *s).await;
}
