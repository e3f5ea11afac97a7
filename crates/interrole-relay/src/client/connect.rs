//! Where a relay is and how to prove the right to use it: endpoints, credentials, TLS, and the
//! WebSocket handshake every client connection starts with.

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use interrole_core::{TransportError, TransportErrorKind};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::{self, client::IntoClientRequest, protocol::WebSocketConfig};

use crate::sas::SharedAccessSignature;
use crate::url::{Action, RelayAddress};

/// Where a relay listens: `ws://host:port`, `wss://host[:port]`, or an Azure Relay namespace
/// (`sb://namespace.servicebus.windows.net`, which means `wss` on 443).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    secure: bool,
    host: String,
    port: u16,
}

/// Why an endpoint, a credential or a TLS setting is not acceptable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct ConfigError(pub(crate) String);

impl Endpoint {
    /// Parses `ws://host:port`, `wss://host[:port]`, `sb://host` or `https://host` (a trailing
    /// `/` is allowed; a path is not: the path is the topic).
    ///
    /// # Errors
    /// [`ConfigError`] for another scheme, a missing host, a bad port or a path.
    pub fn parse(url: &str) -> Result<Self, ConfigError> {
        let (scheme, rest) = url.split_once("://").ok_or_else(|| {
            ConfigError(format!("relay URL `{url}` has no scheme (ws://, wss://)"))
        })?;
        let secure = match scheme.to_ascii_lowercase().as_str() {
            "ws" | "http" => false,
            "wss" | "https" | "sb" => true,
            other => {
                return Err(ConfigError(format!(
                    "relay URL scheme `{other}`: use ws://, wss:// or sb://"
                )));
            }
        };
        let authority = rest.strip_suffix('/').unwrap_or(rest);
        if authority.contains(['/', '?', '#', '@']) {
            return Err(ConfigError(format!(
                "relay URL `{url}`: give the host and port only; the path is the bus topic"
            )));
        }
        let (host, port) = match authority.rsplit_once(':') {
            Some((h, p)) if !h.ends_with(']') || authority.starts_with('[') => {
                let port = p
                    .parse::<u16>()
                    .map_err(|_| ConfigError(format!("relay URL `{url}`: bad port `{p}`")))?;
                (h, port)
            }
            _ => (authority, if secure { 443 } else { 80 }),
        };
        if host.is_empty() {
            return Err(ConfigError(format!("relay URL `{url}` has no host")));
        }
        Ok(Self {
            secure,
            host: host.to_string(),
            port,
        })
    }

    /// Whether connections use TLS (`wss`).
    pub fn is_secure(&self) -> bool {
        self.secure
    }

    /// The host name or address.
    pub fn host(&self) -> &str {
        &self.host
    }

    /// The TCP port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The resource a token for `path` is signed for: `http://host/path` (the relay ignores
    /// the scheme and the port when it checks the audience).
    pub fn resource(&self, path: &str) -> String {
        format!("http://{}/{}", self.host, path.trim_start_matches('/'))
    }

    /// The WebSocket URL of a request target (`/$hc/..`).
    pub fn url(&self, target: &str) -> String {
        let scheme = if self.secure { "wss" } else { "ws" };
        let default = if self.secure { 443 } else { 80 };
        if self.port == default {
            format!("{scheme}://{}{target}", self.host)
        } else {
            format!("{scheme}://{}:{}{target}", self.host, self.port)
        }
    }
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.url(""))
    }
}

/// How a client proves its rights on a path.
#[derive(Clone, Default)]
#[non_exhaustive]
pub enum Credentials {
    /// No token (a relay without keys).
    #[default]
    None,
    /// A shared access key: a fresh token is signed for every connection, valid for `ttl`.
    Key {
        /// The key's name (`sr`'s `skn`).
        name: String,
        /// The key itself.
        key: String,
        /// How long each token is valid.
        ttl: Duration,
    },
    /// A token made elsewhere, used as it is until it expires.
    Token(String),
}

impl Credentials {
    /// A shared access key whose tokens are valid for one hour.
    pub fn key(name: impl Into<String>, key: impl Into<String>) -> Self {
        Self::Key {
            name: name.into(),
            key: key.into(),
            ttl: Duration::from_secs(3600),
        }
    }

    /// Parses `NAME=KEY`, the form of the relay's `--sas-key` flag (rights and scope after the
    /// key, `:rights@/scope`, are the server's business and refused here).
    ///
    /// # Errors
    /// [`ConfigError`] when there is no `=` or either side is empty.
    pub fn parse_key(text: &str) -> Result<Self, ConfigError> {
        match text.split_once('=') {
            Some((name, key)) if !name.is_empty() && !key.is_empty() => Ok(Self::key(name, key)),
            _ => Err(ConfigError(format!(
                "shared access key `{}`: expected NAME=KEY",
                text.split('=').next().unwrap_or_default()
            ))),
        }
    }

    /// A token for `resource`, and when it expires (seconds since the Unix epoch), if any.
    pub fn token(&self, resource: &str) -> Option<(String, Option<u64>)> {
        match self {
            Self::None => None,
            Self::Key { name, key, ttl } => {
                let expiry = unix_now() + ttl.as_secs().max(1);
                let token = SharedAccessSignature::sign(name, key, resource, expiry);
                Some((token.to_string(), Some(expiry)))
            }
            Self::Token(t) => {
                let expiry = SharedAccessSignature::parse(t).ok().map(|s| s.expiry());
                Some((t.clone(), expiry))
            }
        }
    }
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never print a key or a token.
        match self {
            Self::None => f.write_str("None"),
            Self::Key { name, ttl, .. } => f
                .debug_struct("Key")
                .field("name", name)
                .field("ttl", ttl)
                .finish_non_exhaustive(),
            Self::Token(_) => f.write_str("Token(..)"),
        }
    }
}

/// Seconds since the Unix epoch.
pub(crate) fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Which certificates a `wss` connection trusts.
#[derive(Clone)]
pub struct Tls {
    config: Arc<rustls::ClientConfig>,
}

impl Tls {
    /// The public web PKI (the Mozilla root set): what Azure Relay and public relays need.
    pub fn web_pki() -> Self {
        let mut roots = rustls::RootCertStore::empty();
        roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
        Self::from_roots(roots)
    }

    /// Trusts the certificates of a PEM file (a private CA, or a self-signed relay).
    ///
    /// # Errors
    /// [`ConfigError`] when the file cannot be read or holds no certificate.
    pub fn from_pem_file(path: impl AsRef<std::path::Path>) -> Result<Self, ConfigError> {
        let path = path.as_ref();
        let bytes = std::fs::read(path)
            .map_err(|e| ConfigError(format!("reading {}: {e}", path.display())))?;
        Self::from_pem(&bytes)
    }

    /// Trusts the certificates of PEM text.
    ///
    /// # Errors
    /// [`ConfigError`] when it holds no valid certificate.
    pub fn from_pem(pem: &[u8]) -> Result<Self, ConfigError> {
        let mut roots = rustls::RootCertStore::empty();
        for cert in CertificateDer::pem_slice_iter(pem) {
            let cert = cert.map_err(|e| ConfigError(format!("PEM certificate: {e}")))?;
            roots
                .add(cert)
                .map_err(|e| ConfigError(format!("certificate: {e}")))?;
        }
        if roots.is_empty() {
            return Err(ConfigError("no certificate in the PEM text".into()));
        }
        Ok(Self::from_roots(roots))
    }

    /// Uses a rustls client configuration as it is.
    pub fn from_config(config: Arc<rustls::ClientConfig>) -> Self {
        Self { config }
    }

    fn from_roots(roots: rustls::RootCertStore) -> Self {
        let config = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::aws_lc_rs::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .expect("the aws-lc-rs provider supports the default protocol versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
        Self {
            config: Arc::new(config),
        }
    }
}

impl Default for Tls {
    fn default() -> Self {
        Self::web_pki()
    }
}

impl fmt::Debug for Tls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Tls").finish_non_exhaustive()
    }
}

/// A relay: where it is, the credentials, and TLS trust. Shared by the multicast transport and
/// the Hybrid Connections clients.
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
    pub fn target(
        &self,
        action: Action,
        path: &str,
        id: Option<&str>,
    ) -> Result<(String, Option<u64>), TransportError> {
        let mut address = RelayAddress::new(action, path).map_err(|e| {
            TransportError::new(
                TransportErrorKind::Protocol,
                format!("relay path `{path}`: {e}"),
            )
        })?;
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
    /// [`HcSender::connect`](crate::client::hc::HcSender::connect)); a rendezvous address is
    /// single use, so an abandoned accept of it cannot be repeated (see
    /// [`HcConnection::accept`](crate::client::hc::HcConnection::accept)).
    pub async fn open_ws(
        &self,
        target_or_url: &str,
        config: WebSocketConfig,
    ) -> Result<Ws, TransportError> {
        let url = if target_or_url.contains("://") {
            target_or_url.to_string()
        } else {
            self.endpoint.url(target_or_url)
        };
        let connect = async {
            let tcp = TcpStream::connect((self.endpoint.host.as_str(), self.endpoint.port))
                .await
                .map_err(|e| {
                    TransportError::new(
                        TransportErrorKind::ConnectionLost,
                        format!("connecting to {}: {e}", self.endpoint),
                    )
                    .with_cause(e)
                })?;
            let _ = tcp.set_nodelay(true);
            let stream: Box<dyn Io> = if self.endpoint.secure {
                let tls = self.tls.clone().unwrap_or_default();
                let name = ServerName::try_from(self.endpoint.host.clone()).map_err(|e| {
                    TransportError::new(
                        TransportErrorKind::Protocol,
                        format!("TLS server name: {e}"),
                    )
                })?;
                let connector = tokio_rustls::TlsConnector::from(tls.config);
                Box::new(connector.connect(name, tcp).await.map_err(|e| {
                    // rustls reports a refused certificate as invalid data: not transient.
                    let kind = if e.kind() == std::io::ErrorKind::InvalidData {
                        TransportErrorKind::Protocol
                    } else {
                        TransportErrorKind::ConnectionLost
                    };
                    TransportError::new(kind, format!("TLS handshake with {}: {e}", self.endpoint))
                        .with_cause(e)
                })?)
            } else {
                Box::new(tcp)
            };
            let request = url.as_str().into_client_request().map_err(|e| {
                TransportError::new(TransportErrorKind::Protocol, format!("relay URL: {e}"))
            })?;
            let (ws, _) =
                tokio_tungstenite::client_async_with_config(request, stream, Some(config))
                    .await
                    .map_err(handshake_error)?;
            Ok(ws)
        };
        match tokio::time::timeout(self.connect_timeout, connect).await {
            Ok(r) => r,
            Err(_) => Err(TransportError::new(
                TransportErrorKind::Timeout,
                format!(
                    "connecting to {} took over {:?}",
                    self.endpoint, self.connect_timeout
                ),
            )),
        }
    }
}

// For the Hybrid Connections clients, which also reach hosts other than the endpoint (rendezvous
// addresses) and speak plain HTTP.
impl Relay {
    /// The TLS configuration `wss` and `https` connections use.
    pub(crate) fn tls_config(&self) -> Arc<rustls::ClientConfig> {
        self.tls.clone().unwrap_or_default().config
    }

    /// How long the TCP, TLS and WebSocket handshakes may take together.
    pub(crate) fn connect_timeout(&self) -> Duration {
        self.connect_timeout
    }
}

/// A byte stream a WebSocket runs on: TCP or TLS over TCP.
pub trait Io: AsyncRead + AsyncWrite + Send + Unpin + 'static {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin + 'static> Io for T {}

/// A client WebSocket to a relay.
pub type Ws = WebSocketStream<Box<dyn Io>>;

/// The transport error for a failed WebSocket handshake.
pub(crate) fn handshake_error(e: tungstenite::Error) -> TransportError {
    use tungstenite::Error as E;
    match e {
        E::Http(response) => {
            let status = response.status().as_u16();
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
        E::Io(io) => {
            TransportError::new(TransportErrorKind::ConnectionLost, format!("{io}")).with_cause(io)
        }
        E::ConnectionClosed | E::AlreadyClosed => TransportError::new(
            TransportErrorKind::ConnectionLost,
            "closed during the handshake",
        ),
        other => TransportError::new(TransportErrorKind::ConnectionLost, other.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_parse_with_default_ports() {
        let e = Endpoint::parse("ws://127.0.0.1:9400").unwrap();
        assert_eq!(
            (e.is_secure(), e.host(), e.port()),
            (false, "127.0.0.1", 9400)
        );
        assert_eq!(e.url("/$hc/x"), "ws://127.0.0.1:9400/$hc/x");
        let e = Endpoint::parse("sb://ns.servicebus.windows.net/").unwrap();
        assert_eq!((e.is_secure(), e.port()), (true, 443));
        assert_eq!(e.url("/$hc/x"), "wss://ns.servicebus.windows.net/$hc/x");
        assert_eq!(
            e.resource("orders"),
            "http://ns.servicebus.windows.net/orders"
        );
        for bad in [
            "127.0.0.1:9400",
            "ftp://h",
            "ws://",
            "ws://h:x",
            "ws://h/path",
        ] {
            assert!(Endpoint::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn keys_parse_and_debug_hides_secrets() {
        let c = Credentials::parse_key("root=s3cret").unwrap();
        assert!(!format!("{c:?}").contains("s3cret"));
        assert!(Credentials::parse_key("root").is_err());
        assert!(Credentials::parse_key("=x").is_err());
        let (token, expiry) = c.token("http://h/p").unwrap();
        let sas = SharedAccessSignature::parse(&token).unwrap();
        assert!(sas.is_signed_by("s3cret"));
        assert_eq!(Some(sas.expiry()), expiry);
    }
}
