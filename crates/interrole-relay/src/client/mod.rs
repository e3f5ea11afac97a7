//! The clients (feature `client`): the multicast [`RelayTransport`] that carries a bus over the
//! relay, and the Hybrid Connections [`hc`] listener and sender. Both run on tokio, use rustls
//! for `wss`, and sign a fresh token for every connection when given a key.

mod clock;
mod dial;
pub mod hc;
mod multicast;
mod relay;
mod settings;

pub use dial::{Io, Ws};
pub use multicast::{RelayOptions, RelayTransport};
pub use relay::Relay;
pub use settings::{ConfigError, ConfigErrorKind, Credentials, Endpoint, Tls};
