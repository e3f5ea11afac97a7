//! What every handshake and connection shares: the configuration, the keys, the counters.

use std::sync::Arc;

use interrole_relay::sas::KeySet;
use tokio_rustls::TlsAcceptor;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

use crate::config::Config;
use crate::metrics::Metrics;

/// What every connection shares.
pub(crate) struct Ctx {
    pub(crate) config: Arc<Config>,
    pub(crate) keys: KeySet,
    pub(crate) metrics: Arc<Metrics>,
    pub(crate) ws_config: WebSocketConfig,
    /// Set when the port serves TLS.
    pub(crate) tls: Option<TlsAcceptor>,
}
