//! Where a relay is and how to prove the right to use it: the [`Endpoint`], the
//! [`Credentials`], the [`Tls`] trust, and the [`ConfigError`] for any of them that is not
//! acceptable.

use std::error::Error;
use std::fmt;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;
use tokio::time::Instant;

use super::clock::unix_now;
use crate::sas::SharedAccessSignature;

/// What is wrong with a setting.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ConfigErrorKind {
    /// The relay URL: its scheme, host or port, or a path where none belongs.
    Url,
    /// A shared access key that is not `NAME=KEY`.
    Key,
    /// A file that cannot be read (the source is the I/O error).
    Io,
    /// PEM text without a valid certificate.
    Certificate,
}

/// Why an endpoint, a credential or a TLS setting is not acceptable: its
/// [kind](ConfigError::kind), a one-line message, and the underlying error, if any, as its
/// [`source`](Error::source) (the message does not repeat it).
#[derive(Debug, Clone)]
pub struct ConfigError {
    kind: ConfigErrorKind,
    message: String,
    source: Option<Arc<dyn Error + Send + Sync>>,
}

impl ConfigError {
    fn new(kind: ConfigErrorKind, message: impl Into<String>) -> Self {
        Self {
            kind,
            message: message.into(),
            source: None,
        }
    }

    fn with_source(mut self, source: impl Error + Send + Sync + 'static) -> Self {
        self.source = Some(Arc::new(source));
        self
    }

    /// What is wrong.
    pub fn kind(&self) -> ConfigErrorKind {
        self.kind
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl Error for ConfigError {
    fn source(&self) -> Option<&(dyn Error + 'static)> {
        self.source.as_deref().map(|e| e as &(dyn Error + 'static))
    }
}

/// Where a relay listens: `ws://host:port`, `wss://host[:port]`, or an Azure Relay namespace
/// (`sb://namespace.servicebus.windows.net`, which means `wss` on 443).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    secure: bool,
    host: String,
    port: u16,
}

impl Endpoint {
    /// Parses `ws://host:port`, `wss://host[:port]`, `sb://host` or `https://host` (a trailing
    /// `/` is allowed; a path is not: the path is the topic).
    ///
    /// # Errors
    /// [`ConfigError`] of kind [`Url`](ConfigErrorKind::Url) for another scheme, a missing
    /// host, a bad port or a path.
    pub fn parse(url: &str) -> Result<Self, ConfigError> {
        let bad = |message: String| ConfigError::new(ConfigErrorKind::Url, message);
        let (scheme, rest) = url
            .split_once("://")
            .ok_or_else(|| bad(format!("relay URL `{url}` has no scheme (ws://, wss://)")))?;
        let secure = match scheme.to_ascii_lowercase().as_str() {
            "ws" | "http" => false,
            "wss" | "https" | "sb" => true,
            other => {
                return Err(bad(format!(
                    "relay URL scheme `{other}`: use ws://, wss:// or sb://"
                )));
            }
        };
        let authority = rest.strip_suffix('/').unwrap_or(rest);
        if authority.contains(['/', '?', '#', '@']) {
            return Err(bad(format!(
                "relay URL `{url}`: give the host and port only; the path is the bus topic"
            )));
        }
        let (host, port) = match authority.rsplit_once(':') {
            Some((h, p)) if !h.ends_with(']') || authority.starts_with('[') => {
                let port = p
                    .parse::<u16>()
                    .map_err(|_| bad(format!("relay URL `{url}`: bad port `{p}`")))?;
                (h, port)
            }
            _ => (authority, if secure { 443 } else { 80 }),
        };
        if host.is_empty() {
            return Err(bad(format!("relay URL `{url}` has no host")));
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
    /// [`ConfigError`] of kind [`Key`](ConfigErrorKind::Key) when there is no `=` or either
    /// side is empty.
    pub fn parse_key(text: &str) -> Result<Self, ConfigError> {
        match text.split_once('=') {
            Some((name, key)) if !name.is_empty() && !key.is_empty() => Ok(Self::key(name, key)),
            _ => Err(ConfigError::new(
                ConfigErrorKind::Key,
                format!(
                    "shared access key `{}`: expected NAME=KEY",
                    text.split('=').next().unwrap_or_default()
                ),
            )),
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

    /// When to renew a token of these credentials that expires at `expiry` (Unix seconds):
    /// once `fraction` of the time it has left has passed (at least 100 ms from now). Only
    /// tokens signed here with a key can be renewed: `None` for the others.
    pub(crate) fn renew_at(&self, expiry: Option<u64>, fraction: f64) -> Option<Instant> {
        if !matches!(self, Self::Key { .. }) {
            return None;
        }
        let expires = UNIX_EPOCH.checked_add(Duration::from_secs(expiry?))?;
        let left = expires
            .duration_since(SystemTime::now())
            .unwrap_or_default();
        Some(Instant::now() + left.mul_f64(fraction).max(Duration::from_millis(100)))
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
    /// [`ConfigError`] of kind [`Io`](ConfigErrorKind::Io) when the file cannot be read,
    /// [`Certificate`](ConfigErrorKind::Certificate) when it holds no valid certificate.
    pub fn from_pem_file(path: impl AsRef<std::path::Path>) -> Result<Self, ConfigError> {
        let path = path.as_ref();
        let bytes = std::fs::read(path).map_err(|e| {
            ConfigError::new(ConfigErrorKind::Io, format!("reading {}", path.display()))
                .with_source(e)
        })?;
        Self::from_pem(&bytes)
    }

    /// Trusts the certificates of PEM text.
    ///
    /// # Errors
    /// [`ConfigError`] of kind [`Certificate`](ConfigErrorKind::Certificate) when it holds no
    /// valid certificate.
    pub fn from_pem(pem: &[u8]) -> Result<Self, ConfigError> {
        let bad = |message: &str| ConfigError::new(ConfigErrorKind::Certificate, message);
        let mut roots = rustls::RootCertStore::empty();
        for cert in CertificateDer::pem_slice_iter(pem) {
            let cert = cert.map_err(|e| bad("PEM certificate").with_source(e))?;
            roots
                .add(cert)
                .map_err(|e| bad("certificate").with_source(e))?;
        }
        if roots.is_empty() {
            return Err(bad("no certificate in the PEM text"));
        }
        Ok(Self::from_roots(roots))
    }

    /// Uses a rustls client configuration as it is.
    pub fn from_config(config: Arc<rustls::ClientConfig>) -> Self {
        Self { config }
    }

    /// The rustls client configuration.
    pub(crate) fn config(&self) -> &Arc<rustls::ClientConfig> {
        &self.config
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
            let e = Endpoint::parse(bad).unwrap_err();
            assert_eq!(e.kind(), ConfigErrorKind::Url, "{bad}");
        }
    }

    #[test]
    fn keys_parse_and_debug_hides_secrets() {
        let c = Credentials::parse_key("root=s3cret").unwrap();
        assert!(!format!("{c:?}").contains("s3cret"));
        let e = Credentials::parse_key("root").unwrap_err();
        assert_eq!(e.kind(), ConfigErrorKind::Key);
        assert!(Credentials::parse_key("=x").is_err());
        let (token, expiry) = c.token("http://h/p").unwrap();
        let sas = SharedAccessSignature::parse(&token).unwrap();
        assert!(sas.is_signed_by("s3cret"));
        assert_eq!(Some(sas.expiry()), expiry);
    }

    #[test]
    fn renewal_comes_after_the_fraction_for_keys_only() {
        let key = Credentials::key("n", "k");
        let at = key.renew_at(Some(unix_now() + 100), 0.8).unwrap();
        let after = at - Instant::now();
        assert!(
            after > Duration::from_secs(70) && after <= Duration::from_secs(80),
            "{after:?}"
        );
        assert!(key.renew_at(None, 0.8).is_none());
        let token = Credentials::Token("t".into());
        assert!(token.renew_at(Some(u64::MAX / 2), 0.8).is_none());
    }

    #[test]
    fn config_errors_are_send_and_sync() {
        fn check<T: Send + Sync + 'static>() {}
        check::<ConfigError>();
    }

    #[test]
    fn config_errors_say_their_source_once() {
        let e = Tls::from_pem_file("/nonexistent/ca.pem").unwrap_err();
        assert_eq!(e.kind(), ConfigErrorKind::Io);
        let source = e.source().expect("the I/O error").to_string();
        assert!(!e.to_string().contains(&source), "{e} / {source}");
        let e = Tls::from_pem(b"not pem").unwrap_err();
        assert_eq!(e.kind(), ConfigErrorKind::Certificate);
    }
}
