//! Why a server could not start.

use std::io;
use std::net::SocketAddr;
use std::path::PathBuf;

use crate::config::ConfigError;

/// Why [`Server::bind`](crate::Server::bind) or [`Server::start`](crate::Server::start) failed.
///
/// Each message says what failed; the cause, when there is one, is its
/// [`source`](std::error::Error::source) and is not repeated in the message.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StartError {
    /// The configuration is invalid (a key's rights).
    #[error("invalid configuration")]
    Config(#[from] ConfigError),
    /// The listen address could not be bound.
    #[error("cannot listen on {addr}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// Why.
        source: io::Error,
    },
    /// The listener has no local address.
    #[error("the listener has no local address")]
    LocalAddr(#[source] io::Error),
    /// The TLS certificate chain file cannot be read or is not PEM.
    #[error("tls: cannot read the certificate chain {}", .path.display())]
    TlsCertificate {
        /// The file.
        path: PathBuf,
        /// Why.
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// The TLS certificate chain file holds no certificate.
    #[error("tls: no certificate in {}", .path.display())]
    NoCertificate {
        /// The file.
        path: PathBuf,
    },
    /// The TLS private key file cannot be read, is not PEM or holds no key.
    #[error("tls: cannot read the private key {}", .path.display())]
    TlsKey {
        /// The file.
        path: PathBuf,
        /// Why.
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// The certificate and the key do not make a TLS configuration (a key that does not match
    /// the certificate, say).
    #[error("tls: unusable certificate or key")]
    Tls(#[source] Box<dyn std::error::Error + Send + Sync>),
}

#[cfg(test)]
mod tests {
    use std::error::Error as _;

    use crate::{Config, Server, StartError, TlsConfig};

    #[tokio::test]
    async fn messages_leave_their_source_out() {
        let taken = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let config = Config {
            listen: taken.local_addr().unwrap(),
            ..Config::default()
        };
        let e = Server::bind(config).await.unwrap_err();
        assert!(matches!(e, StartError::Bind { .. }), "{e:?}");
        let source = e.source().unwrap().to_string();
        assert!(!e.to_string().contains(&source), "{e} repeats {source}");

        let config = Config {
            listen: "127.0.0.1:0".parse().unwrap(),
            tls: Some(TlsConfig {
                cert: "/nonexistent/cert.pem".into(),
                key: "/nonexistent/key.pem".into(),
            }),
            ..Config::default()
        };
        let e = Server::bind(config).await.unwrap_err();
        assert!(matches!(e, StartError::TlsCertificate { .. }), "{e:?}");
        let source = e.source().unwrap().to_string();
        assert!(!e.to_string().contains(&source), "{e} repeats {source}");
        assert_eq!(
            e.to_string(),
            "tls: cannot read the certificate chain /nonexistent/cert.pem"
        );
    }
}
