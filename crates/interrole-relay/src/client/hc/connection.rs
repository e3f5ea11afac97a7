//! A WebSocket sender waiting for a listener: [`HcConnection`], to accept or reject.

use std::fmt;
use std::sync::Arc;

use super::error::{HcError, Opening};
use super::open::{GRACE, handshake, open_url};
use crate::client::dial::{DialError, Ws};
use crate::client::relay::Relay;
use crate::control::{self, Headers, RemoteEndpoint};
use crate::url::{RelayAddress, UrlLimits};

/// A WebSocket sender waiting for the listener: [accept](HcConnection::accept) it (a WebSocket
/// to the sender, spliced through the relay) or [reject](HcConnection::reject) it. Dropping it
/// leaves the sender waiting until the relay gives up (504 after about 20 s).
pub struct HcConnection {
    relay: Arc<Relay>,
    accept: control::Accept,
    path: String,
    query: String,
}

impl HcConnection {
    /// A sender offered to the listener of `listener_path` on `relay`.
    pub(super) fn new(relay: Arc<Relay>, listener_path: &str, accept: control::Accept) -> Self {
        let limits = UrlLimits::default().with_max_target(usize::MAX);
        let (path, query) = RelayAddress::parse(&accept.address, &limits)
            .map(|a| (a.path().to_owned(), a.app_query()))
            .unwrap_or_else(|_| (listener_path.to_owned(), String::new()));
        Self {
            relay,
            accept,
            path,
            query,
        }
    }

    /// The connection's id: the sender's `sb-hc-id`, or one the relay made up.
    pub fn id(&self) -> &str {
        &self.accept.id
    }

    /// The rendezvous address, as the relay sent it.
    pub fn address(&self) -> &str {
        &self.accept.address
    }

    /// The path the sender connected to, decoded: the listener's path, followed by the sender's
    /// suffix if it gave one (`hyco/room/1`).
    pub fn path(&self) -> &str {
        &self.path
    }

    /// The sender's application query parameters as it sent them (without the relay's `sb-hc-*`
    /// parameters), joined by `&`; empty when there are none.
    pub fn query(&self) -> &str {
        &self.query
    }

    /// The sender's handshake headers, as the relay passed them on (look names up with
    /// [`control::header`]).
    pub fn connect_headers(&self) -> &Headers {
        &self.accept.connect_headers
    }

    /// Where the sender connected from, when the relay says.
    pub fn remote_endpoint(&self) -> Option<&RemoteEndpoint> {
        self.accept.remote_endpoint.as_ref()
    }

    /// Accepts the sender: opens the rendezvous and returns the WebSocket, whose messages the
    /// relay splices to and from the sender's. Chooses the first subprotocol the sender offered
    /// (`Sec-WebSocket-Protocol`), if any.
    ///
    /// # Errors
    /// An [`HcError`]: [`NotFound`](super::error::HcErrorKind::NotFound) (404) when the rendezvous
    /// expired or the sender went away, a transient kind when the relay cannot be reached.
    ///
    /// # Cancel safety
    ///
    /// This method is **not** cancel safe: dropping the future loses the sender, and the call
    /// cannot be repeated (`self` was moved into it, and the rendezvous address is single
    /// use). If the rendezvous handshake had not reached the relay, the sender waits until the
    /// relay gives up on the listener (504 after about 20 s). If it had, the relay answers the
    /// sender 101 and its WebSocket is closed at once (1001 or 1011), as the listener's side is
    /// gone.
    pub async fn accept(self) -> Result<Ws, HcError> {
        let offered = control::header(&self.accept.connect_headers, "Sec-WebSocket-Protocol")
            .and_then(|p| p.split(',').map(str::trim).find(|p| !p.is_empty()))
            .map(str::to_owned);
        self.accept_with_protocol(offered.as_deref()).await
    }

    /// Accepts the sender with this subprotocol (one the sender offered), or none.
    ///
    /// # Errors
    /// As [`HcConnection::accept`].
    ///
    /// # Cancel safety
    ///
    /// Not cancel safe, as [`HcConnection::accept`]: a dropped call loses the sender.
    pub async fn accept_with_protocol(self, protocol: Option<&str>) -> Result<Ws, HcError> {
        let relay = &self.relay;
        open_url(
            relay,
            &self.accept.address,
            protocol,
            relay.connect_timeout(),
            Opening::Rendezvous,
        )
        .await
    }

    /// Rejects the sender: its handshake fails with `status` (100 to 599) and `description`.
    ///
    /// # Errors
    /// [`Protocol`](super::error::HcErrorKind::Protocol) for a status outside 100 to 599; as
    /// [`HcConnection::accept`] when the relay cannot be told.
    ///
    /// # Cancel safety
    ///
    /// This method is **not** cancel safe, and cannot be repeated (`self` was moved into it). If
    /// the future is dropped before the reject handshake reached the relay, the sender is not
    /// told `status`: it waits until the relay gives up on the listener (504 after about
    /// 20 s). If the handshake had reached the relay, the rejection stands; only the closing
    /// of the reject connection is cut short.
    pub async fn reject(self, status: u16, description: &str) -> Result<(), HcError> {
        if !(100..=599).contains(&status) {
            return Err(HcError::protocol(format!(
                "reject status {status}: use 100 to 599"
            )));
        }
        let url = crate::url::reject_address(&self.accept.address, status, description);
        let relay = &self.relay;
        match handshake(relay, &url, None, relay.connect_timeout()).await? {
            // The relay answers a reject 410 Gone.
            Err(DialError::Refused { status, .. })
                if status == 410 || (200..300).contains(&status) =>
            {
                Ok(())
            }
            Err(e) => Err(HcError::dial(e, Opening::Rendezvous)),
            Ok(mut ws) => {
                let _ = tokio::time::timeout(GRACE, ws.close(None)).await;
                Ok(())
            }
        }
    }
}

impl fmt::Debug for HcConnection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HcConnection")
            .field("id", &self.accept.id)
            .field("path", &self.path)
            .field("query", &self.query)
            .field("remote_endpoint", &self.accept.remote_endpoint)
            .finish_non_exhaustive()
    }
}
