//! Hybrid Connections clients: a listener ([`HcListener`]) that keeps a control channel open and
//! receives WebSocket senders and HTTP requests, and a sender ([`HcSender`]) that connects to a
//! listener or sends it an HTTP request. They speak the Azure Relay Hybrid Connections protocol
//! (`docs/protocol.md` §1–§2), so they work with the interrole relay (`ws://`, `wss://`) and with
//! Azure Relay (`sb://{namespace}.servicebus.windows.net` and a shared access key).
//!
//! ```no_run
//! use interrole_relay::client::hc::{HcListener, HcSender, Incoming};
//! use interrole_relay::client::{Credentials, Relay};
//! use interrole_relay::control::Headers;
//!
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! let relay = Relay::connect_to("ws://127.0.0.1:9400", Credentials::key("root", "s3cret"))?;
//! let listener = HcListener::bind(relay.clone(), "hyco").await?;
//! tokio::spawn(async move {
//!     // `accept` fails once the listener is closed or its credentials are refused.
//!     while let Ok(incoming) = listener.accept().await {
//!         match incoming {
//!             Incoming::Connection(c) if c.path() == "hyco" => {
//!                 let _ws = c.accept().await; // a WebSocket to the sender
//!             }
//!             Incoming::Connection(c) => {
//!                 let _ = c.reject(404, "no such room").await;
//!             }
//!             Incoming::Request(r) => {
//!                 let _ = r.respond(200, Headers::new(), "hello").await;
//!             }
//!         }
//!     }
//! });
//!
//! let sender = HcSender::new(relay, "hyco");
//! let response = sender.request("GET", "/greeting?lang=en", &Headers::new(), "").await?;
//! assert_eq!((response.status, &response.body[..]), (200, &b"hello"[..]));
//! let _ws = sender.connect().await?;
//! # Ok(()) }
//! ```
//!
//! ## The control channel
//!
//! [`HcListener::bind`] opens the control channel (`sb-hc-action=listen`) and fails with that
//! first attempt's error. From then on a task owns the channel: it turns `accept` and `request`
//! control messages into [`Incoming`] items, sends `response` messages, pings the relay every
//! [`PING_INTERVAL`] and declares the channel lost when nothing (not even a pong) was heard for
//! three intervals. Items wait in a bounded queue (256); when it is full, a sender is rejected
//! with 503 and a request answered 503, so that a slow application never stalls the channel.
//!
//! ## Reconnecting
//!
//! A lost channel (a network error, a close from the relay, the keep-alive timeout, a relay
//! restart; Azure Relay drops every listener once a day) is re-opened after
//! the delays of a [`RetryPolicy`] (by default 0, 1, 2, 5, 10, 30 s, then every 30 s, as the
//! official clients do; [`HcListener::bind_with_retry`] sets another); the delays start over once
//! a channel has stayed up for 10 s, and a policy whose budget runs out ends the listener. Meanwhile
//! [`HcListener::status`] is [`ListenerStatus::Reconnecting`] with the last error, and the
//! pending [`HcListener::accept`] keeps waiting. An error that is not
//! [transient](HcError::is_transient) ends the listener: a handshake refused for good, 401 (bad
//! or expired credentials), 403 (no Listen right; but 403 `MaximumListenersPerEndpoint`, a
//! quota, is [`ListenerLimit`](HcErrorKind::ListenerLimit) and retried), 404 (no such hybrid
//! connection) and other 4xx answers, or a certificate that does not verify.
//! [`HcListener::accept`] then returns that error, once the items already queued have been
//! taken, and the status is [`ListenerStatus::Closed`] with it.
//!
//! ## Errors
//!
//! Every call fails with an [`HcError`]: a [kind](HcErrorKind) to match, the HTTP
//! [status](HcError::status) when a handshake was refused, and the cause as its source. The
//! kind says whether retrying may help ([`HcErrorKind::is_transient`]); a 404 is
//! [`NoListener`](HcErrorKind::NoListener) (transient) for a sender but
//! [`NotFound`](HcErrorKind::NotFound) (fatal) for a listener or a rendezvous.
//!
//! ## Tokens
//!
//! With [`Credentials::Key`] every connection carries a fresh token, and the listener sends a
//! `renewToken` on its control channel when 80 % of the token's lifetime has passed, so the
//! relay never closes the channel for an expired token. A fixed [`Credentials::Token`] is not
//! renewed: when it expires the relay closes the channel (1008), re-opening it is refused with
//! 401, and the listener ends.
//!
//! ## HTTP
//!
//! [`HcSender::request`] sends a plain HTTP/1.1 request (`https://host/{path}..`, or `http` for
//! a `ws://` relay) with the token in the `ServiceBusAuthorization` header; the relay hands it
//! to a listener. A listener receives small requests inline on the control channel (with the
//! body in the following binary message) and fetches those over 64 KiB from the request's
//! rendezvous address; [`HcRequest::respond`] answers on the control channel, or on the
//! rendezvous when the request came through one or the response body is over 64 KiB. Bodies are
//! buffered whole, not streamed.
//!
//! ## Cancel safety
//!
//! [`HcListener::bind`], [`HcListener::bind_with_retry`] and [`HcListener::accept`] are cancel
//! safe. [`HcListener::close`] still closes when its future is dropped, but a second call does
//! not wait. The calls that answer a peer or reach one are not: a dropped
//! [`HcConnection::accept`], [`HcConnection::reject`] or [`HcRequest::respond`] loses its
//! answer and cannot be repeated, and the relay still offers a dropped [`HcSender::connect`] to
//! a listener and delivers a dropped [`HcSender::request`] once it has it whole. Each method's
//! `# Cancel safety` section says exactly what happens. (Their own timeouts end them the same
//! way, with an error that says so.)
//!
//! [`Credentials::Key`]: super::Credentials::Key
//! [`Credentials::Token`]: super::Credentials::Token
//! [`RetryPolicy`]: interrole_core::RetryPolicy

mod connection;
mod error;
mod listener;
mod open;
mod request;
mod response;
mod sender;

pub use connection::HcConnection;
pub use error::{HcError, HcErrorKind};
pub use listener::{HcListener, Incoming, ListenerStatus, PING_INTERVAL};
pub use request::HcRequest;
pub use response::HcResponse;
pub use sender::HcSender;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn public_types_are_send_and_sync() {
        fn check<T: Send + Sync + 'static>() {}
        check::<HcListener>();
        check::<HcSender>();
        check::<HcResponse>();
        check::<ListenerStatus>();
        check::<HcError>();
        fn send<T: Send + 'static>() {}
        send::<Incoming>();
    }
}
