//! The interrole relay server, as a library: the `interrole-relay` binary is a thin wrapper.
//!
//! The relay serves, on one port, Azure Relay Hybrid Connections one-to-one (listeners, WebSocket
//! senders handed to a listener through a rendezvous, and small plain HTTP requests), multicast
//! publish/subscribe over WebSockets (interrole's extension of the same URL space,
//! `docs/protocol.md`), a health endpoint (`GET /healthz`) and Prometheus metrics
//! (`GET /metrics`). Every handshake but a rendezvous is authorized with a shared access
//! signature checked against the configured keys.
//!
//! ```no_run
//! use interrole_relay_server::{Config, Server};
//!
//! # async fn run() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
//! let config = Config {
//!     listen: "127.0.0.1:0".parse()?,
//!     ..Config::default()
//! };
//! let server = Server::bind(config).await?;
//! println!("listening on {}", server.local_addr());
//! server.shutdown().await;
//! # Ok(()) }
//! ```
//!
//! ## Delivery
//!
//! An event published on a path reaches every subscriber of the path except the publisher's
//! own instance, or only its target for a directed event, in per-sender order. Each path keeps a
//! bounded replay window that a reconnecting subscriber resumes from.
//!
//! ## Slow consumers
//!
//! Each subscriber has a bounded send queue. When it is full, the configured policy applies to
//! that subscriber alone: drop the oldest queued events and send MISSED, or close with 4000.
//! Publishing never waits for a subscriber.
//!
//! ## Closing
//!
//! [`Server::shutdown`] stops accepting, closes WebSockets with 1001 and waits for them up to
//! the configured shutdown timeout.
//!
//! ## Hybrid Connections
//!
//! A sender is handed to one listener of its path, chosen at random; the listener has the
//! configured accept timeout to open or reject the rendezvous (the sender gets 504 after it). A
//! path holds at most `max_hc_listeners_per_path` listeners (one more is refused 403). Plain HTTP
//! requests travel inline on a listener's control channel, or over a request rendezvous past
//! 64 KiB (502 without a listener, 504 after the request timeout).
//!
//! ## TLS
//!
//! With `[tls] cert` and `key` (PEM files; `--tls-cert`/`--tls-key`), the port serves TLS only
//! (rustls), everything else unchanged over it, and rendezvous addresses say `wss://`. A failed
//! TLS handshake (plain text on the port, say) closes that connection alone and is counted as
//! the rejection reason `tls`; the TLS handshake and the request head together must finish
//! within the handshake timeout. Without TLS, a TLS terminator in front that sets
//! `X-Forwarded-Proto: https` also gets `wss://` rendezvous addresses.
//!
//! HTTP request bodies come with `Content-Length` or chunked; a chunked body is decoded, then
//! relayed whole (bodies are buffered up to the message limit, not streamed).

pub mod config;
mod conn;
mod ctx;
mod error;
mod handshake;
mod hc;
mod http;
pub mod metrics;
mod multicast;
mod server;
mod wait;
mod ws;

pub use config::{
    Config, ConfigError, DEFAULT_CONFIG_TOML, KeyConfig, SlowConsumerPolicy, TlsConfig,
};
pub use error::StartError;
pub use metrics::Metrics;
pub use server::{Server, ShutdownHandle};

#[cfg(test)]
mod tests {
    #[test]
    fn public_types_are_send_and_sync() {
        fn check<T: Send + Sync + 'static>() {}
        check::<crate::Server>();
        check::<crate::ShutdownHandle>();
        check::<crate::Config>();
        check::<crate::Metrics>();
    }
}
