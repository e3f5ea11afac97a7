//! The relay wire protocol of [interrole](https://docs.rs/interrole), and its clients.
//!
//! - **Without features** (the default), this crate is the protocol alone, as a pure library:
//!   no sockets, no runtime, no async, only values in and values or bytes out. The relay
//!   server and any other implementation of the protocol build on this part.
//! - **With feature `client`**, it adds the `client` module: the multicast transport that
//!   carries a bus over a relay, and the Hybrid Connections listener and sender. These open TCP
//!   connections (WebSockets, with rustls for `wss`), spawn tasks and need a tokio runtime.
//!
//! The interrole relay speaks two things on one port: **Hybrid Connections**, the Azure Relay
//! protocol, faithfully enough that the official clients work against it (a listener's control
//! channel, a rendezvous per sender), and **multicast**, interrole's extension in the same URL
//! space, where every event a publisher sends on a path reaches every subscriber of that path.
//! This crate holds the parts both the relay server and its clients need:
//!
//! - [`sas`]: shared access signatures, the tokens that authorize every handshake: build, parse,
//!   verify against a [`KeySet`](sas::KeySet) with rights and path scopes;
//! - [`url`]: relay addresses (`/$hc/{path}?sb-hc-action=..`): parse a handshake's request target,
//!   build rendezvous addresses;
//! - [`control`]: the JSON control messages of a listener's control channel (`accept`,
//!   `request`, `response`, `renewToken`);
//! - [`frame`]: the binary frames of the multicast extension (PUBLISH, ACK, REJECT, RESUME,
//!   EVENT, MISSED), described byte by byte in `docs/protocol.md`.
//!
//! How a relay admits a handshake:
//!
//! ```
//! use interrole_relay::sas::{Access, KeySet, Rights, SasError, SasKey, SharedAccessSignature};
//! use interrole_relay::url::{Action, RelayAddress, UrlLimits};
//!
//! /// Checks a handshake; on failure, the HTTP status to answer.
//! fn admit(target: &str, host: &str, keys: &KeySet, now: u64) -> Result<RelayAddress, u16> {
//!     let address = RelayAddress::parse(target, &UrlLimits::default())
//!         .map_err(|e| e.http_status())?; // 400, 404 or 414
//!     if let Some(right) = address.action().required_right() {
//!         // (A real relay also looks at the `ServiceBusAuthorization` header.)
//!         let token = address.token().ok_or_else(|| SasError::missing().http_status())?;
//!         let token = SharedAccessSignature::parse(token).map_err(|e| e.http_status())?;
//!         let access = Access::new(address.path(), right, now).with_host(host);
//!         keys.verify(&token, &access).map_err(|e| e.http_status())?; // 401 or 403
//!     }
//!     Ok(address)
//! }
//!
//! let keys = KeySet::new().with(SasKey::new("publisher", "s3cret", Rights::SEND));
//! let token = SharedAccessSignature::sign(
//!     "publisher", "s3cret", "https://relay.example/orders", 1_700_003_600);
//! let target = RelayAddress::new(Action::Publish, "orders")?
//!     .with_id("worker-1")
//!     .with_token(token.to_string())
//!     .to_request_target();
//!
//! let address = admit(&target, "relay.example", &keys, 1_700_000_000).unwrap();
//! assert_eq!((address.action(), address.id()), (Action::Publish, Some("worker-1")));
//! // The same handshake, an hour and a bit later:
//! assert_eq!(admit(&target, "relay.example", &keys, 1_700_004_000).unwrap_err(), 401);
//! // Subscribing needs the Listen right, which this key lacks:
//! let subscribe = target.replace("action=publish", "action=subscribe");
//! assert_eq!(admit(&subscribe, "relay.example", &keys, 1_700_000_000).unwrap_err(), 403);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! ## Bad input
//!
//! Every decoder here (tokens, request targets, control JSON, frames) takes untrusted input: it
//! never panics, checks lengths against explicit limits before allocating, and fails with an
//! error whose `kind()` is a small `Copy` enum. Each error says how to answer: an HTTP status for
//! handshakes ([`sas::SasError::http_status`], [`url::UrlError::http_status`]) or a WebSocket close
//! code for established connections ([`control::ControlErrorKind::close_code`],
//! [`frame::FrameError::close_code`]). Only the offending connection is affected.
//!
//! ## Compatibility
//!
//! Tokens, addresses and control messages follow Azure Relay and are liberal in what they accept
//! (see each module's *Tolerance* notes). Multicast messages start with a version byte
//! ([`frame::VERSION`]); a relay refuses versions it does not read with close code 4002
//! ([`frame::CloseCode::UnsupportedVersion`]) rather than guessing.

#[cfg(feature = "client")]
pub mod client;
pub mod control;
pub mod frame;
#[doc(hidden)]
pub mod http;
mod pct;
pub mod sas;
pub mod url;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn public_types_are_send_and_sync() {
        fn check<T: Send + Sync + 'static>() {}
        check::<sas::SharedAccessSignature>();
        check::<sas::KeySet>();
        check::<sas::SasError>();
        check::<url::RelayAddress>();
        check::<url::UrlError>();
        check::<control::ControlMessage>();
        check::<control::ControlError>();
        check::<frame::Frame>();
        check::<frame::SharedFrame>();
        check::<frame::MessageBuilder>();
        check::<frame::FrameError>();
    }
}
