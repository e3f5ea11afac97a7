//! What the relay tells a listener about its peers: a sender's headers and endpoint, and the
//! base address the listener reached the relay at (rendezvous addresses start with it).

use std::net::SocketAddr;

use interrole_relay::control::{Headers, RemoteEndpoint};

use crate::http::Head;

/// `ws` or `wss` (over TLS, or behind a TLS terminator) and the host the peer reached the relay
/// at.
pub(crate) fn base_url(head: &Head, peer: SocketAddr, tls: bool) -> String {
    let scheme = if tls
        || head
            .header("x-forwarded-proto")
            .is_some_and(|p| p.eq_ignore_ascii_case("https"))
    {
        "wss"
    } else {
        "ws"
    };
    let host = head
        .header("host")
        .filter(|h| !h.is_empty() && !h.contains(['/', '?', '#', ' ']))
        .map_or_else(|| peer.to_string(), str::to_owned);
    format!("{scheme}://{host}")
}

pub(crate) fn remote_endpoint(peer: SocketAddr) -> RemoteEndpoint {
    RemoteEndpoint::new(peer.ip().to_string(), peer.port())
}

/// The sender's headers for the listener: repeated names joined with `, `, credentials and
/// extension negotiation left out.
pub(crate) fn forwarded_headers(head: &Head, skip: &[&str]) -> Headers {
    let mut out = Headers::new();
    for (name, value) in &head.headers {
        if skip.iter().any(|s| s.eq_ignore_ascii_case(name)) {
            continue;
        }
        let value = String::from_utf8_lossy(value).trim().to_owned();
        match out.iter_mut().find(|(k, _)| k.eq_ignore_ascii_case(name)) {
            Some((_, v)) => {
                v.push_str(", ");
                v.push_str(&value);
            }
            None => {
                out.insert(name.clone(), value);
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn head(headers: &[(&str, &str)]) -> Head {
        Head {
            method: "GET".into(),
            target: "/".into(),
            headers: headers
                .iter()
                .map(|(n, v)| ((*n).to_owned(), v.as_bytes().to_vec()))
                .collect(),
            rest: Vec::new(),
        }
    }

    #[test]
    fn forwarded_headers_join_repeats_and_skip_credentials() {
        let h = head(&[
            ("X-A", "1"),
            ("x-a", "2"),
            ("ServiceBusAuthorization", "secret"),
            ("0", "odd"),
        ]);
        let out = forwarded_headers(&h, &["servicebusauthorization"]);
        assert_eq!(interrole_relay::control::header(&out, "x-a"), Some("1, 2"));
        assert_eq!(interrole_relay::control::header(&out, "0"), Some("odd"));
        assert_eq!(out.len(), 2);
    }

    #[test]
    fn base_url_follows_host_and_forwarded_proto() {
        let peer: SocketAddr = "10.0.0.1:5".parse().unwrap();
        assert_eq!(
            base_url(&head(&[("Host", "relay:80")]), peer, false),
            "ws://relay:80"
        );
        assert_eq!(
            base_url(&head(&[("Host", "relay:443")]), peer, true),
            "wss://relay:443"
        );
        assert_eq!(
            base_url(
                &head(&[("Host", "relay"), ("X-Forwarded-Proto", "https")]),
                peer,
                false
            ),
            "wss://relay"
        );
        assert_eq!(base_url(&head(&[]), peer, false), "ws://10.0.0.1:5");
    }
}
