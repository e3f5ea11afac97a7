//! The clients (feature `client`): the multicast [`RelayTransport`] that carries a bus over the
//! relay, and the Hybrid Connections [`hc`] listener and sender. Both run on tokio, use rustls
//! for `wss`, and sign a fresh token for every connection when given a key.

mod connect;
pub mod hc;
mod multicast;

pub use connect::{ConfigError, Credentials, Endpoint, Io, Relay, Tls, Ws};

pub use multicast::{RelayOptions, RelayTransport};
