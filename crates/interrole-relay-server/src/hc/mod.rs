//! Hybrid Connections one-to-one: listeners' control channels, WebSocket senders handed to a
//! listener through a rendezvous, and plain HTTP requests relayed inline on the control channel
//! (`docs/protocol.md` §1 "Addresses and handshakes" and §2 "Hybrid Connections control
//! messages").
//!
//! ## Listeners
//!
//! `sb-hc-action=listen` (Listen right) upgrades to the control channel, which stays open; the
//! relay pings it every half idle timeout. A path holds at most `max_hc_listeners_per_path`
//! listeners: one more is refused **403** with the description `MaximumListenersPerEndpoint`
//! (a quota error: 403, not 404, so that the official clients keep retrying). Text messages are
//! parsed with [`ControlMessage::parse`](interrole_relay::control::ControlMessage::parse) (64 KiB limit): `renewToken` replaces the channel's
//! token (a token that does not verify closes **1008**), `response` answers an HTTP request,
//! unknown kinds are ignored, malformed JSON closes **1008** and an oversized message **1009**.
//! Token expiry closes **1008**, shutdown **1001**.
//!
//! ## Senders and the rendezvous
//!
//! `sb-hc-action=connect` (Send right) on the listener's path, optionally followed by a suffix
//! and application parameters, is handed to one listener chosen at random (xorshift seeded by
//! [`RandomState`](std::collections::hash_map::RandomState)): the relay sends it an `accept` whose address is
//! `ws[s]://{the listener's Host}/$hc/{sender path}?{app params&}sb-hc-action=accept&sb-hc-id={id}`
//! and holds the sender's upgrade unanswered. No listener on the path or a prefix of it: **404**.
//!
//! - The listener opens the address (no token): the sender gets 101 and the listener 101, both
//!   with the subprotocol the listener asked for on the rendezvous, and the two WebSockets are
//!   spliced message for message. A close from one side closes the other with the same code
//!   (1000 when the close carried none); a side that drops without a close closes the other
//!   with **1001**; shutdown closes both with 1001.
//! - The listener opens the address with `sb-hc-statusCode`/`sb-hc-statusDescription` (or the
//!   unprefixed spelling): it is answered **410 Gone** and the sender's upgrade fails with that
//!   status and description.
//! - Nothing happens within `accept_timeout_secs` (default 20, below the clients' 70 s connect
//!   timeout): the sender gets **504 Gateway Timeout**.
//! - The chosen listener's control channel goes away (or its queue is full): the accept is sent
//!   to another listener of the path, with the same id, within the same deadline; when none is
//!   left the sender gets **500**.
//!
//! A rendezvous address is single use and valid while its sender waits: an unknown, used or
//! expired id is answered **404**. A sender's `sb-hc-id` that is already waiting is refused
//! **400**.
//!
//! ## HTTP senders
//!
//! A request without `$hc` (Send right, token in `sb-hc-token`, `ServiceBusAuthorization` or
//! `Authorization`) goes to a random listener of its path. A body of at most 64 KiB travels
//! inline: a `request` control message with `body: true`, then one binary message. A larger body
//! (up to `max_message_bytes`; **413** over it) sends only `{"request":{"address":..}}`; the
//! listener opens that address (`sb-hc-action=request`, no token, single use: otherwise **404**)
//! and receives the whole request there. The listener answers with a `response` (and one binary
//! body message) on the control channel, or on the request's rendezvous, which it may open for
//! an inline request too (a response too large for the channel); the relay then closes the
//! rendezvous with 1000 (1008 when what it read was not a response). The response becomes the
//! HTTP response, with a `Via` header. No listener: **502**; no response within
//! `request_timeout_secs`: **504** with a JSON error body; the listener gone meanwhile: **502**.
//! Request bodies come with `Content-Length` or chunked (decoded before relaying by
//! `interrole_relay::http::ChunkedDecoder`, trailers dropped; a bad chunk **400**, trailers over
//! 64 KiB **431**; another transfer coding: **501**).
//!
//! ## Files
//!
//! [`directory`] holds the listeners by path and what waits for them by id; [`listen`] serves a
//! listener's control channel; [`rendezvous`] hands a sender to a listener and [`splice`]s them;
//! [`request`] relays plain HTTP; [`peer`] says what a listener is told about its peers.

mod directory;
mod listen;
mod peer;
mod rendezvous;
mod request;
mod splice;

use std::net::SocketAddr;

use interrole_relay::url::{Action, RelayAddress};
use tokio::sync::watch;

pub(crate) use directory::Directory;

use crate::conn::Conn;
use crate::ctx::Ctx;
use crate::handshake::{self, Refusal};
use crate::http::Head;
use crate::metrics::Reason;

/// Serves every Hybrid Connections action and plain HTTP.
pub(crate) async fn serve(
    mut stream: Conn,
    peer: SocketAddr,
    head: Head,
    address: RelayAddress,
    ctx: &Ctx,
    directory: &Directory,
    shutdown: watch::Receiver<bool>,
) {
    let (a, d) = (&address, directory);
    match address.action() {
        Action::Listen => listen::serve(stream, peer, head, a, ctx, d, shutdown).await,
        Action::Connect => rendezvous::connect(stream, peer, head, a, ctx, d, shutdown).await,
        Action::Accept => rendezvous::accept(stream, peer, head, a, ctx, d).await,
        Action::Request => request::request_rendezvous(stream, peer, head, a, ctx, d).await,
        Action::Http => request::http_request(stream, peer, head, a, ctx, d, shutdown).await,
        action => {
            let why = format!("action {action} is not served by this relay");
            let refusal = Refusal::new(404, Reason::BadAddress, why);
            handshake::refuse(&mut stream, peer, ctx, refusal).await;
        }
    }
}
