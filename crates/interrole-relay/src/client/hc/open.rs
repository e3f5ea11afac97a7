//! Opening connections to absolute URLs: a rendezvous address (which may name another host
//! than the relay's endpoint) or a sender's handshake, with a subprotocol offer and a wait of
//! their own.

use std::time::Duration;

use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

use super::error::{HcError, Opening};
use crate::client::dial::{self, DialError, Io, Ws};
use crate::client::relay::Relay;
use crate::client::settings::Endpoint;

/// How long a closing handshake, or fetching a request from its rendezvous, may take.
pub(super) const GRACE: Duration = Duration::from_secs(5);

/// The endpoint an absolute `ws[s]://host[:port]/..` URL names (a rendezvous address may name
/// another host than the relay's endpoint).
fn url_endpoint(url: &str) -> Result<Endpoint, HcError> {
    let (scheme, rest) = url
        .split_once("://")
        .ok_or_else(|| HcError::protocol(format!("`{url}` is not an absolute URL")))?;
    let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
    Endpoint::parse(&format!("{scheme}://{authority}"))
        .map_err(|e| HcError::protocol(format!("bad address `{url}`")).with_source(e))
}

/// A TCP connection to `endpoint`, with TLS when it is secure.
pub(super) async fn open_stream(
    relay: &Relay,
    endpoint: &Endpoint,
) -> Result<Box<dyn Io>, HcError> {
    dial::open_stream(endpoint, &relay.tls())
        .await
        // (Only a WebSocket handshake is refused with a status: what is opened does not matter.)
        .map_err(|e| HcError::dial(e, Opening::Sender))
}

/// A WebSocket handshake to an absolute URL, offering `protocol`: the TCP and TLS handshakes
/// within the relay's connect timeout, the WebSocket handshake within `wait`. The outer error is
/// a failure to get an answer; the inner one the handshake's, for the caller to read (see
/// [`HcError::dial`]).
pub(super) async fn handshake(
    relay: &Relay,
    url: &str,
    protocol_offer: Option<&str>,
    wait: Duration,
) -> Result<Result<Ws, DialError>, HcError> {
    let endpoint = url_endpoint(url)?;
    let mut request = url
        .into_client_request()
        .map_err(|e| HcError::protocol(format!("bad URL `{url}`")).with_source(e))?;
    if let Some(p) = protocol_offer {
        let value = p
            .parse()
            .map_err(|_| HcError::protocol(format!("subprotocol {p:?}")))?;
        request
            .headers_mut()
            .insert("Sec-WebSocket-Protocol", value);
    }
    let stream = tokio::time::timeout(relay.connect_timeout(), open_stream(relay, &endpoint))
        .await
        .map_err(|_| {
            HcError::timeout(format!(
                "connecting to {endpoint} took over {:?}",
                relay.connect_timeout()
            ))
        })??;
    let config = WebSocketConfig::default();
    match tokio::time::timeout(wait, dial::ws_handshake(request, stream, config)).await {
        Ok(r) => Ok(r),
        Err(_) => Err(HcError::timeout(format!(
            "the WebSocket handshake with {endpoint} took over {wait:?}"
        ))),
    }
}

/// Opens a WebSocket to an absolute URL (see [`handshake`]); `opening` says what a 404 means.
pub(super) async fn open_url(
    relay: &Relay,
    url: &str,
    protocol_offer: Option<&str>,
    wait: Duration,
    opening: Opening,
) -> Result<Ws, HcError> {
    handshake(relay, url, protocol_offer, wait)
        .await?
        .map_err(|e| HcError::dial(e, opening))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rendezvous_urls_name_their_own_host() {
        let e =
            url_endpoint("wss://g1-prod.servicebus.windows.net/$hc/p?sb-hc-action=accept").unwrap();
        assert_eq!(
            (e.is_secure(), e.host(), e.port()),
            (true, "g1-prod.servicebus.windows.net", 443)
        );
        let e = url_endpoint("ws://127.0.0.1:9400/$hc/p?x=1").unwrap();
        assert_eq!(
            (e.is_secure(), e.host(), e.port()),
            (false, "127.0.0.1", 9400)
        );
        assert!(url_endpoint("/$hc/p").is_err());
    }
}
