//! A self-signed certificate made with `rcgen`, written to a temporary directory. Needs only
//! `rcgen` (a dev-dependency), so that the tests of other crates can include this file
//! (`#[path]`).
#![allow(dead_code, unreachable_pub)]

use std::net::{IpAddr, Ipv4Addr};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, Ordering};

use rcgen::{CertificateParams, DnType, IsCa, KeyPair, SanType};

/// A self-signed certificate for `localhost` and 127.0.0.1; its directory goes on drop.
pub struct SelfSigned {
    dir: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl SelfSigned {
    pub fn new() -> Self {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let dir = std::env::temp_dir().join(format!(
            "interrole-tls-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let (cert, key) = (dir.join("c.pem"), dir.join("k.pem"));
        let pair = KeyPair::generate().expect("a key pair");
        let mut params =
            CertificateParams::new(vec!["localhost".to_owned()]).expect("certificate parameters");
        params
            .subject_alt_names
            .push(SanType::IpAddress(IpAddr::V4(Ipv4Addr::LOCALHOST)));
        params
            .distinguished_name
            .push(DnType::CommonName, "localhost");
        // An end-entity certificate (webpki refuses a CA as the server's certificate).
        params.is_ca = IsCa::ExplicitNoCa;
        let signed = params
            .self_signed(&pair)
            .expect("a self-signed certificate");
        std::fs::write(&cert, signed.pem()).unwrap();
        std::fs::write(&key, pair.serialize_pem()).unwrap();
        Self { dir, cert, key }
    }
}

impl Drop for SelfSigned {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
