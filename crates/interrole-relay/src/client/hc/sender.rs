//! The sender: [`HcSender`] connects WebSockets to a listener and sends it HTTP requests.

use std::time::Duration;

use bytes::Bytes;
use tokio::io::AsyncWriteExt;

use super::error::{HcError, Opening};
use super::open::{open_stream, open_url};
use super::response::{HcResponse, read_response};
use crate::client::dial::Ws;
use crate::client::relay::Relay;
use crate::control::Headers;
use crate::url::{Action, RelayAddress};

/// How long a sender's connect may wait for the listener's decision (Azure Relay gives up after
/// 70 s; the listener has about 20 s).
const CONNECT_WAIT: Duration = Duration::from_secs(70);

/// The default timeout of an HTTP request: a little over the relay's 60 s gateway timeout.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(70);

/// A Hybrid Connections sender on a path: opens WebSocket connections to a listener
/// ([`HcSender::connect`]) or sends it HTTP requests ([`HcSender::request`]). Cheap to clone;
/// every call is a new connection with a fresh token.
#[derive(Debug, Clone)]
pub struct HcSender {
    relay: Relay,
    path: String,
    request_timeout: Duration,
}

impl HcSender {
    /// A sender to the listeners of `path` (the hybrid connection's name, optionally followed by
    /// a suffix the listener sees: `hyco/room/1`).
    pub fn new(relay: Relay, path: &str) -> Self {
        Self {
            relay,
            path: path.trim_matches('/').to_owned(),
            request_timeout: REQUEST_TIMEOUT,
        }
    }

    /// How long [`HcSender::request`] waits for the whole response once connected. Default 70 s
    /// (the relay answers 504 after 60 s).
    pub fn with_request_timeout(mut self, timeout: Duration) -> Self {
        self.request_timeout = timeout;
        self
    }

    /// The relay.
    pub fn relay(&self) -> &Relay {
        &self.relay
    }

    /// The path.
    pub fn path(&self) -> &str {
        &self.path
    }

    /// Opens a WebSocket to a listener of the path (`sb-hc-action=connect`); the relay splices
    /// it to the rendezvous the listener opens. Waits up to 70 s for the listener to decide.
    ///
    /// # Errors
    /// An [`HcError`] of kind `NoListener` (404) when nobody listens; `Unauthorized` (401) and
    /// `Forbidden` (403) for refused credentials; when the listener rejects, `Refused` with its
    /// status ([`HcError::status`]) and the message `the relay answered {status}:
    /// {description}` (a 404 reads as `NoListener` and a 5xx as `Unavailable`, as the relay's
    /// own would); a transient kind when the relay cannot be reached or the listener does not
    /// answer (504, `Unavailable`).
    ///
    /// # Cancel safety
    ///
    /// Nothing is left on this side when the future is dropped, and `connect` may be called
    /// again at once (each call is a new connection with a new id). But the relay does not
    /// watch a sender while it waits for a listener: once the handshake request has reached
    /// it, a dropped `connect` is still offered to a listener, which may accept it and gets a
    /// WebSocket that the relay closes at once (or a 410 on the rendezvous).
    pub async fn connect(&self) -> Result<Ws, HcError> {
        self.connect_as(None).await
    }

    /// As [`HcSender::connect`], with an `sb-hc-id` for the connection (the listener sees it as
    /// [`HcConnection::id`]; it must be unique among the senders waiting on the relay).
    ///
    /// # Errors
    /// As [`HcSender::connect`].
    ///
    /// # Cancel safety
    ///
    /// As [`HcSender::connect`], with one more consequence: once the handshake request has
    /// reached the relay, the id stays taken there until a listener accepts or rejects the
    /// abandoned sender, or the relay gives up on it (about 20 s). A `connect_with_id` with the
    /// same id meanwhile is refused 400 (`Refused`, which is not transient).
    ///
    /// [`HcConnection::id`]: super::connection::HcConnection::id
    pub async fn connect_with_id(&self, id: &str) -> Result<Ws, HcError> {
        self.connect_as(Some(id)).await
    }

    async fn connect_as(&self, id: Option<&str>) -> Result<Ws, HcError> {
        let (target, _) = self
            .relay
            .address(Action::Connect, &self.path, id)
            .map_err(|e| HcError::bad_path(&self.path, e))?;
        let url = self.relay.endpoint().url(&target);
        open_url(&self.relay, &url, None, CONNECT_WAIT, Opening::Sender).await
    }

    /// Sends an HTTP/1.1 request to a listener of the path: `{method}
    /// http[s]://host/{path}{path_and_query}` with `headers`, the token in the
    /// `ServiceBusAuthorization` header and `body` (sent with `Content-Length`).
    /// `path_and_query` is appended to the path: empty, or starting with `/` (a suffix) or `?`
    /// (a query), already percent-encoded.
    ///
    /// Every complete response is returned, whoever made it: the listener's, or the relay's own
    /// (401, 403, 502 without a listener, 504 when the listener does not answer; a relayed
    /// response carries a `Via` header on the interrole relay).
    ///
    /// # Errors
    /// An [`HcError`] of kind `Protocol` for a bad method, target or header, or a malformed
    /// response; `PayloadTooLarge` for a response over 64 MiB; `Timeout` when the response is
    /// not complete within the request timeout; a transient kind when the relay cannot be
    /// reached or the connection breaks.
    ///
    /// # Cancel safety
    ///
    /// This method is **not** cancel safe. Dropping the future closes the connection, and
    /// nothing is left on this side, but the relay does not watch an HTTP sender while a
    /// listener works on its request: once the whole request has reached the relay, it is
    /// handed to a listener, which may act on it, and the response is thrown away. So a dropped
    /// request may or may not have been delivered, and repeating it may deliver it twice: repeat
    /// only requests that are safe to repeat. A request that times out
    /// ([`HcSender::with_request_timeout`]) leaves the same uncertainty.
    pub async fn request(
        &self,
        method: &str,
        path_and_query: &str,
        headers: &Headers,
        body: impl Into<Bytes>,
    ) -> Result<HcResponse, HcError> {
        let body = body.into();
        let head = self.request_head(method, path_and_query, headers, body.len())?;
        let endpoint = self.relay.endpoint();
        let mut stream = tokio::time::timeout(
            self.relay.connect_timeout(),
            open_stream(&self.relay, endpoint),
        )
        .await
        .map_err(|_| {
            HcError::timeout(format!(
                "connecting to {endpoint} took over {:?}",
                self.relay.connect_timeout()
            ))
        })??;
        let is_head = method.eq_ignore_ascii_case("HEAD");
        let exchange = async {
            let sending = |e| HcError::io("sending the HTTP request", e);
            stream.write_all(&head).await.map_err(sending)?;
            stream.write_all(&body).await.map_err(sending)?;
            stream.flush().await.map_err(sending)?;
            read_response(&mut stream, is_head).await
        };
        tokio::time::timeout(self.request_timeout, exchange)
            .await
            .map_err(|_| {
                HcError::timeout(format!(
                    "no complete response within {:?}",
                    self.request_timeout
                ))
            })?
    }

    /// The request line and headers.
    fn request_head(
        &self,
        method: &str,
        path_and_query: &str,
        headers: &Headers,
        body_len: usize,
    ) -> Result<Vec<u8>, HcError> {
        let is_token = |s: &str| {
            !s.is_empty()
                && s.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
        };
        if !is_token(method) {
            return Err(HcError::protocol(format!("HTTP method {method:?}")));
        }
        if !(path_and_query.is_empty()
            || path_and_query.starts_with('/')
            || path_and_query.starts_with('?'))
            || path_and_query
                .chars()
                .any(|c| c == ' ' || c == '#' || c.is_control())
        {
            return Err(HcError::protocol(format!(
                "path and query {path_and_query:?}: empty, or starting with / or ?, without spaces"
            )));
        }
        let path = RelayAddress::new(Action::Http, &self.path)
            .map_err(|e| HcError::bad_path(&self.path, e))?
            .to_request_target();
        let endpoint = self.relay.endpoint();
        let default_port = if endpoint.is_secure() { 443 } else { 80 };
        let host = if endpoint.port() == default_port {
            endpoint.host().to_owned()
        } else {
            format!("{}:{}", endpoint.host(), endpoint.port())
        };
        let mut head = format!("{method} {path}{path_and_query} HTTP/1.1\r\nHost: {host}\r\n");
        const OURS: [&str; 6] = [
            "host",
            "content-length",
            "transfer-encoding",
            "connection",
            "servicebusauthorization",
            "keep-alive",
        ];
        for (name, value) in headers {
            if OURS.iter().any(|h| h.eq_ignore_ascii_case(name)) {
                continue;
            }
            if !is_token(name) || value.chars().any(|c| c == '\r' || c == '\n' || c == '\0') {
                return Err(HcError::protocol(format!("HTTP header {name:?}")));
            }
            head.push_str(&format!("{name}: {value}\r\n"));
        }
        if let Some((token, _)) = self
            .relay
            .credentials()
            .token(&endpoint.resource(&self.path))
        {
            head.push_str(&format!("ServiceBusAuthorization: {token}\r\n"));
        }
        head.push_str(&format!(
            "Content-Length: {body_len}\r\nConnection: close\r\n\r\n"
        ));
        Ok(head.into_bytes())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::client::settings::Credentials;

    #[test]
    fn request_heads_carry_the_token_and_refuse_injection() {
        let relay =
            Relay::connect_to("ws://127.0.0.1:9400", Credentials::key("root", "k")).unwrap();
        let sender = HcSender::new(relay, "hyco");
        let mut headers = Headers::new();
        headers.insert("X-A".into(), "1".into());
        headers.insert("Content-Length".into(), "999".into());
        let head = sender.request_head("POST", "/a?b=1", &headers, 5).unwrap();
        let head = String::from_utf8(head).unwrap();
        assert!(
            head.starts_with("POST /hyco/a?b=1 HTTP/1.1\r\nHost: 127.0.0.1:9400\r\n"),
            "{head}"
        );
        assert!(head.contains("X-A: 1\r\n"));
        assert!(head.contains("ServiceBusAuthorization: SharedAccessSignature sr="));
        assert!(head.contains("Content-Length: 5\r\n") && !head.contains("999"));
        headers.insert("X-B".into(), "a\r\nEvil: 1".into());
        assert!(sender.request_head("POST", "", &headers, 0).is_err());
        assert!(sender.request_head("GE T", "", &Headers::new(), 0).is_err());
        assert!(sender.request_head("GET", "x", &Headers::new(), 0).is_err());
        assert!(
            sender
                .request_head("GET", "/a b", &Headers::new(), 0)
                .is_err()
        );
    }
}
