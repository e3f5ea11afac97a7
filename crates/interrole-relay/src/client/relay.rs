//! A [`Relay`]: where it is, the credentials and the TLS trust, shared by the multicast
//! transport and the Hybrid Connections clients; and the WebSocket every multicast connection
//! and listener control channel starts with.

use std::time::Duration;

use interrole_core::{TransportError, TransportErrorKind};
use tokio_tungstenite::tungstenite::{self, client::IntoClientRequest, protocol::WebSocketConfig};

use super::dial::{self, DialError, Ws};
use super::settings::{ConfigError, Credentials, Endpoint, Tls};
use crate::url::{Action, RelayAddress, UrlError};

/// A relay: where it is, the credentials, and TLS trust. Shared by the multicast transport and
/// the Hybrid Connections clients.
///
/// (Not the relay server, which is the `interrole-relay-server` crate: this is a client's
/// address book entry for one.)
#[derive(Debug, Clone)]
pub struct Relay {
    endpoint: Endpoint,
    credentials: Credentials,
    tls: Option<Tls>,
    connect_timeout: Duration,
}

impl Relay {
    /// A relay at `endpoint`, reached with `credentials`; `wss` trusts the web PKI.
    pub fn new(endpoint: Endpoint, credentials: Credentials) -> Self {
        Self {
            endpoint,
            credentials,
            tls: None,
            connect_timeout: Duration::from_secs(10),
        }
    }

    /// Parses the URL (see [`Endpoint::parse`]).
    ///
    /// # Errors
    /// As [`Endpoint::parse`].
    pub fn connect_to(url: &str, credentials: Credentials) -> Result<Self, ConfigError> {
        Ok(Self::new(Endpoint::parse(url)?, credentials))
    }

    /// Trusts these certificates for `wss` instead of the web PKI.
    pub fn with_tls(mut self, tls: Tls) -> Self {
        self.tls = Some(tls);
        self
    }

    /// How long the TCP, TLS and WebSocket handshakes may take together. Default 10 s.
    pub fn with_connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// The endpoint.
    pub fn endpoint(&self) -> &Endpoint {
        &self.endpoint
    }

    /// The credentials.
    pub fn credentials(&self) -> &Credentials {
        &self.credentials
    }

    /// The request target of `action` on `path` for instance `id`, with a fresh token; and when
    /// the token expires.
    ///
    /// # Errors
    /// `Protocol` when `path` is not a valid relay path.
    pub fn target(
        &self,
        action: Action,
        path: &str,
        id: Option<&str>,
    ) -> Result<(String, Option<u64>), TransportError> {
        self.address(action, path, id).map_err(|e| {
            TransportError::new(
                TransportErrorKind::Protocol,
                format!("relay path `{path}`: {e}"),
            )
        })
    }

    /// As [`Relay::target`], failing with the reason the path is not valid.
    pub(crate) fn address(
        &self,
        action: Action,
        path: &str,
        id: Option<&str>,
    ) -> Result<(String, Option<u64>), UrlError> {
        let mut address = RelayAddress::new(action, path)?;
        if let Some(id) = id {
            address = address.with_id(id);
        }
        let mut expiry = None;
        if let Some((token, exp)) = self.credentials.token(&self.endpoint.resource(path)) {
            address = address.with_token(token);
            expiry = exp;
        }
        Ok((address.to_request_target(), expiry))
    }

    /// Opens a WebSocket to `target` (a request target from [`Relay::target`] or a rendezvous
    /// address), within the connect timeout.
    ///
    /// # Errors
    /// A transient [`TransportError`] when the relay cannot be reached or answers 5xx;
    /// `Unauthorized` (401), `Forbidden` (403), `NoListener` (404), `Protocol` for other refusals.
    ///
    /// # Cancel safety
    ///
    /// Dropping the future drops the connection being made (TCP, TLS, WebSocket handshake) and
    /// nothing is left on this side; `open_ws` may be called again with a target from
    /// [`Relay::target`] (its token is not used up). The relay, though, may already have acted
    /// on the handshake request if it was sent before the drop: it sees the socket close as the
    /// client leaving, the same as a connection closed right after opening. What that means
    /// depends on the target: a listener's control channel or a multicast publisher or
    /// subscriber goes away (and a new connection of the same instance replaces it anyway); a
    /// Hybrid Connections sender (`sb-hc-action=connect`) is still offered to a listener (see
    /// `HcSender::connect`); a rendezvous address is single use, so an abandoned accept of it
    /// cannot be repeated (see `HcConnection::accept`).
    pub async fn open_ws(
        &self,
        target_or_url: &str,
        config: WebSocketConfig,
    ) -> Result<Ws, TransportError> {
        self.dial_ws(target_or_url, config)
            .await
            .map_err(transport_error)
    }

    /// As [`Relay::open_ws`], failing with what went wrong.
    pub(crate) async fn dial_ws(
        &self,
        target_or_url: &str,
        config: WebSocketConfig,
    ) -> Result<Ws, DialError> {
        let url = if target_or_url.contains("://") {
            target_or_url.to_string()
        } else {
            self.endpoint.url(target_or_url)
        };
        let connect = async {
            let stream = dial::open_stream(&self.endpoint, &self.tls()).await?;
            let request = url.as_str().into_client_request().map_err(DialError::Url)?;
            dial::ws_handshake(request, stream, config).await
        };
        tokio::time::timeout(self.connect_timeout, connect)
            .await
            .unwrap_or_else(|_| {
                Err(DialError::Timeout {
                    endpoint: self.endpoint.to_string(),
                    after: self.connect_timeout,
                })
            })
    }

    /// The TLS trust `wss` and `https` connections use.
    pub(crate) fn tls(&self) -> Tls {
        self.tls.clone().unwrap_or_default()
    }

    /// How long the TCP, TLS and WebSocket handshakes may take together.
    pub(crate) fn connect_timeout(&self) -> Duration {
        self.connect_timeout
    }
}

/// The bus's error for a connection that could not be opened. The message carries the cause's
/// text, and no source is attached: the bus logs an error's message alone.
fn transport_error(e: DialError) -> TransportError {
    use tungstenite::Error as E;
    let kind = if e.is_tls_refusal() {
        TransportErrorKind::Protocol
    } else {
        TransportErrorKind::ConnectionLost
    };
    match e {
        DialError::Tcp { endpoint, source } => {
            TransportError::new(kind, format!("connecting to {endpoint}: {source}"))
        }
        DialError::Url(e) => {
            TransportError::new(TransportErrorKind::Protocol, format!("relay URL: {e}"))
        }
        DialError::ServerName(e) => TransportError::new(
            TransportErrorKind::Protocol,
            format!("TLS server name: {e}"),
        ),
        DialError::Tls { endpoint, source } => {
            TransportError::new(kind, format!("TLS handshake with {endpoint}: {source}"))
        }
        DialError::Refused {
            status,
            description,
        } => {
            let kind = match status {
                401 => TransportErrorKind::Unauthorized,
                403 => TransportErrorKind::Forbidden,
                404 => TransportErrorKind::NoListener,
                408 | 429 | 500..=599 => TransportErrorKind::Unavailable,
                413 | 414 => TransportErrorKind::PayloadTooLarge,
                _ => TransportErrorKind::Protocol,
            };
            TransportError::new(kind, format!("the relay answered {status}: {description}"))
        }
        DialError::Handshake(E::Io(io)) => TransportError::new(kind, io.to_string()),
        DialError::Handshake(E::ConnectionClosed | E::AlreadyClosed) => {
            TransportError::new(kind, "closed during the handshake")
        }
        DialError::Handshake(other) => TransportError::new(kind, other.to_string()),
        DialError::Timeout { endpoint, after } => TransportError::new(
            TransportErrorKind::Timeout,
            format!("connecting to {endpoint} took over {after:?}"),
        ),
    }
}
