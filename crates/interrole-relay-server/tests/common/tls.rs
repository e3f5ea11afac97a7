//! TLS helpers: a server configured with a self-signed certificate (`cert.rs`), and a rustls
//! client that trusts it.

use std::net::SocketAddr;
use std::sync::Arc;

use interrole_relay_server::{Config, TlsConfig};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;
use tokio_tungstenite::WebSocketStream;

pub use super::cert::SelfSigned;

impl SelfSigned {
    /// The test configuration with TLS on.
    pub fn config(&self) -> Config {
        let mut c = super::config();
        c.tls = Some(TlsConfig {
            cert: self.cert.clone(),
            key: self.key.clone(),
        });
        c
    }

    /// A client that trusts this certificate only.
    pub fn connector(&self) -> TlsConnector {
        let mut roots = rustls::RootCertStore::empty();
        for c in CertificateDer::pem_file_iter(&self.cert).unwrap() {
            roots.add(c.unwrap()).unwrap();
        }
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        TlsConnector::from(Arc::new(config))
    }
}

pub type TlsWs = WebSocketStream<TlsStream<TcpStream>>;

/// A TLS connection to the relay at `addr`, checked against the name 127.0.0.1.
pub async fn tls_stream(
    addr: SocketAddr,
    connector: &TlsConnector,
) -> std::io::Result<TlsStream<TcpStream>> {
    let tcp = TcpStream::connect(addr).await?;
    let name = ServerName::from(addr.ip());
    connector.connect(name, tcp).await
}

/// Opens `wss://{addr}{target}`.
pub async fn connect_wss(
    addr: SocketAddr,
    connector: &TlsConnector,
    target: &str,
) -> Result<TlsWs, tokio_tungstenite::tungstenite::Error> {
    connect_wss_url(addr, connector, &format!("wss://{addr}{target}")).await
}

/// Opens an absolute `wss://` URL served at `addr`.
pub async fn connect_wss_url(
    addr: SocketAddr,
    connector: &TlsConnector,
    url: &str,
) -> Result<TlsWs, tokio_tungstenite::tungstenite::Error> {
    let tls = tls_stream(addr, connector).await?;
    let (ws, _) = tokio_tungstenite::client_async(url, tls).await?;
    Ok(ws)
}
