//! Time helpers both clients use: Unix time for token expiries, and a timer that may be unset.

use std::time::{SystemTime, UNIX_EPOCH};

use tokio::time::Instant;

/// Seconds since the Unix epoch.
pub(crate) fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Sleeps until `at`; never resolves when there is no `at` (a timer that is not set, as one
/// branch of a `select!`).
pub(crate) async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}
