//! Opening connections: TCP, TLS for a secure endpoint, and the WebSocket handshake on top, to
//! the relay's endpoint or to whatever host a rendezvous address names. A failure is a
//! [`DialError`], from which each client makes its own error: the multicast transport a
//! `TransportError` for the bus, the Hybrid Connections clients an `HcError`.

use std::io;
use std::time::Duration;

use rustls::pki_types::{InvalidDnsNameError, ServerName};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::{self, handshake::client::Request, protocol::WebSocketConfig};

use super::settings::{Endpoint, Tls};

/// A byte stream a WebSocket runs on: TCP or TLS over TCP.
pub trait Io: AsyncRead + AsyncWrite + Send + Unpin + 'static {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin + 'static> Io for T {}

/// A client WebSocket to a relay.
pub type Ws = WebSocketStream<Box<dyn Io>>;

/// Why a connection could not be opened.
#[derive(Debug)]
pub(crate) enum DialError {
    /// The TCP connection could not be made.
    Tcp {
        /// The endpoint, as `ws[s]://host[:port]`.
        endpoint: String,
        source: io::Error,
    },
    /// The host is not a name TLS can verify.
    ServerName(InvalidDnsNameError),
    /// The TLS handshake failed.
    Tls {
        /// The endpoint, as `ws[s]://host[:port]`.
        endpoint: String,
        source: io::Error,
    },
    /// The URL does not make a WebSocket request.
    Url(tungstenite::Error),
    /// The WebSocket handshake was answered with another status than 101.
    Refused {
        status: u16,
        /// The relay's description of the refusal (its `x-ms-error-description` or `reason`
        /// header, or else the body), possibly empty.
        description: String,
    },
    /// The WebSocket handshake failed otherwise: the connection broke or was closed.
    Handshake(tungstenite::Error),
    /// The TCP, TLS and WebSocket handshakes took longer than `after` together.
    Timeout {
        /// The endpoint, as `ws[s]://host[:port]`.
        endpoint: String,
        after: Duration,
    },
}

impl DialError {
    /// Whether this is a TLS handshake that failed on what the peer sent (rustls reports a
    /// refused certificate as invalid data), which a retry will not cure.
    pub(crate) fn is_tls_refusal(&self) -> bool {
        matches!(self, Self::Tls { source, .. } if source.kind() == io::ErrorKind::InvalidData)
    }

    /// Whether this is a TLS handshake that refused the peer's certificate.
    pub(crate) fn is_bad_certificate(&self) -> bool {
        let Self::Tls { source, .. } = self else {
            return false;
        };
        matches!(
            source
                .get_ref()
                .and_then(|e| e.downcast_ref::<rustls::Error>()),
            Some(rustls::Error::InvalidCertificate(_))
        )
    }
}

/// A TCP connection to `endpoint`, with TLS trusting `tls` when it is secure.
pub(crate) async fn open_stream(endpoint: &Endpoint, tls: &Tls) -> Result<Box<dyn Io>, DialError> {
    let tcp = TcpStream::connect((endpoint.host(), endpoint.port()))
        .await
        .map_err(|source| DialError::Tcp {
            endpoint: endpoint.to_string(),
            source,
        })?;
    let _ = tcp.set_nodelay(true);
    if !endpoint.is_secure() {
        return Ok(Box::new(tcp));
    }
    let name = ServerName::try_from(endpoint.host().to_owned()).map_err(DialError::ServerName)?;
    let connector = tokio_rustls::TlsConnector::from(tls.config().clone());
    let stream = connector
        .connect(name, tcp)
        .await
        .map_err(|source| DialError::Tls {
            endpoint: endpoint.to_string(),
            source,
        })?;
    Ok(Box::new(stream))
}

/// The WebSocket handshake of `request` on `stream`.
pub(crate) async fn ws_handshake(
    request: Request,
    stream: Box<dyn Io>,
    config: WebSocketConfig,
) -> Result<Ws, DialError> {
    match tokio_tungstenite::client_async_with_config(request, stream, Some(config)).await {
        Ok((ws, _)) => Ok(ws),
        Err(tungstenite::Error::Http(response)) => {
            let description = response
                .headers()
                .get("x-ms-error-description")
                .or_else(|| response.headers().get("reason"))
                .and_then(|v| v.to_str().ok())
                .map(str::to_string)
                .or_else(|| {
                    response
                        .body()
                        .as_ref()
                        .map(|b| String::from_utf8_lossy(b).trim().to_string())
                })
                .unwrap_or_default();
            Err(DialError::Refused {
                status: response.status().as_u16(),
                description,
            })
        }
        Err(e) => Err(DialError::Handshake(e)),
    }
}
