//! An HTTP request relayed to a listener: [`HcRequest`], answered on the control channel or on
//! the request's rendezvous.

use std::fmt;
use std::sync::Arc;

use bytes::Bytes;
use futures::{SinkExt, StreamExt};
use tokio::sync::{mpsc, oneshot};
use tokio_tungstenite::tungstenite::Message;

use super::error::{HcError, Opening};
use super::open::{GRACE, open_url};
use crate::client::dial::Ws;
use crate::client::relay::Relay;
use crate::control::{self, ControlMessage, DEFAULT_MAX_CONTROL_LEN, Headers, RemoteEndpoint};
use crate::http::reason_phrase;
use crate::url::{RelayAddress, UrlLimits};

/// Bodies and control messages above this travel over a rendezvous.
const MAX_INLINE: usize = 64 * 1024;

/// A message for the control channel, from a responder.
pub(super) struct Outgoing {
    /// The channel the request arrived on; a response for an earlier channel is dropped.
    pub(super) generation: u64,
    /// The `response` control message, and the body if there is one.
    pub(super) messages: Vec<Message>,
    /// Told whether the messages were sent.
    pub(super) done: oneshot::Sender<Result<(), HcError>>,
}

/// Where a response goes.
pub(super) enum Reply {
    /// The control channel (or, for a large response, the request's rendezvous).
    Control {
        relay: Arc<Relay>,
        out: mpsc::Sender<Outgoing>,
        generation: u64,
    },
    /// The rendezvous the request was read from.
    Rendezvous(Box<Ws>),
}

/// An HTTP request relayed to the listener. Answer it with [`HcRequest::respond`]; dropping it
/// leaves the HTTP sender waiting until the relay gives up (504 after 60 s).
pub struct HcRequest {
    id: String,
    address: String,
    method: String,
    target: String,
    headers: Headers,
    remote_endpoint: Option<RemoteEndpoint>,
    body: Bytes,
    reply: Reply,
}

impl HcRequest {
    /// A request as the relay described it, with its body, answered through `reply`.
    pub(super) fn new(request: control::Request, body: Bytes, reply: Reply) -> Self {
        let id = request.id.clone().unwrap_or_else(|| {
            // The rendezvous address carries the id as `sb-hc-id`.
            let limits = UrlLimits::default().with_max_target(usize::MAX);
            RelayAddress::parse(&request.address, &limits)
                .ok()
                .and_then(|a| a.id().map(str::to_owned))
                .unwrap_or_default()
        });
        Self {
            id,
            address: request.address,
            method: request.method.unwrap_or_else(|| "GET".into()),
            target: request.request_target.unwrap_or_else(|| "/".into()),
            headers: request.request_headers.unwrap_or_default(),
            remote_endpoint: request.remote_endpoint,
            body,
            reply,
        }
    }

    /// The request's id.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The HTTP method (`GET`, `POST`, ..).
    pub fn method(&self) -> &str {
        &self.method
    }

    /// The request target without the relay's `sb-hc-*` parameters: `/{path}[/suffix][?query]`.
    pub fn target(&self) -> &str {
        &self.target
    }

    /// The request headers (credentials and hop-by-hop headers removed by the relay).
    pub fn headers(&self) -> &Headers {
        &self.headers
    }

    /// The value of header `name`, compared without regard to case.
    pub fn header(&self, name: &str) -> Option<&str> {
        control::header(&self.headers, name)
    }

    /// Where the HTTP sender connected from, when the relay says.
    pub fn remote_endpoint(&self) -> Option<&RemoteEndpoint> {
        self.remote_endpoint.as_ref()
    }

    /// The request body (empty when there is none).
    pub fn body(&self) -> &Bytes {
        &self.body
    }

    /// Answers the request with `status` (100 to 599), `headers` and `body`: a `response`
    /// control message and, unless the body is empty, one binary message with the body. It goes
    /// on the control channel, or on the request's rendezvous when the request came through one
    /// or the body is over 64 KiB. The relay adds `Content-Length` and drops hop-by-hop
    /// headers.
    ///
    /// # Errors
    /// [`Protocol`] for a status outside 100 to 599; [`ConnectionLost`] when the channel the
    /// request came on is gone (the relay has answered the sender 502 then); as
    /// [`HcConnection::accept`] when a rendezvous cannot be opened.
    ///
    /// # Cancel safety
    ///
    /// This method is **not** cancel safe, and cannot be repeated (`self` was moved into it).
    /// What a dropped call loses depends on how far it got:
    ///
    /// - On the control channel (a request that arrived inline, with a response of at most
    ///   64 KiB), the response is first queued for the listener task, waiting for room when
    ///   64 responses are already queued. Dropped while waiting for room, the response is lost
    ///   and the HTTP sender gets 504 when the relay's request timeout (60 s by default)
    ///   passes. Dropped once it is queued, the response is still sent (if the control
    ///   channel the request came on is still up); only the outcome is not learnt.
    /// - On a rendezvous (a request that came through one, or a larger response), the response
    ///   is lost if the future is dropped before it has been written out, and the sender gets
    ///   504 when the request timeout passes; the rendezvous cannot be opened a second time.
    ///   Dropped after that, during the closing handshake, the response has been delivered.
    ///
    /// [`HcConnection::accept`]: super::connection::HcConnection::accept
    /// [`Protocol`]: super::error::HcErrorKind::Protocol
    /// [`ConnectionLost`]: super::error::HcErrorKind::ConnectionLost
    pub async fn respond(
        self,
        status: u16,
        headers: Headers,
        body: impl Into<Bytes>,
    ) -> Result<(), HcError> {
        if !(100..=599).contains(&status) {
            return Err(HcError::protocol(format!(
                "response status {status}: use 100 to 599"
            )));
        }
        let body = body.into();
        let mut response = control::Response::new(self.id.clone(), status);
        response.status_description = reason_phrase(status).map(str::to_owned);
        response.response_headers = headers;
        response.body = !body.is_empty();
        let json = ControlMessage::from(response).to_json();
        let large = body.len() > MAX_INLINE || json.len() > DEFAULT_MAX_CONTROL_LEN;
        let mut messages = vec![Message::text(json)];
        if !body.is_empty() {
            messages.push(Message::Binary(body));
        }
        match self.reply {
            Reply::Rendezvous(ws) => respond_on(*ws, messages).await,
            Reply::Control { relay, .. } if large => {
                let wait = relay.connect_timeout();
                let ws = open_url(&relay, &self.address, None, wait, Opening::Rendezvous).await?;
                respond_on(ws, messages).await
            }
            Reply::Control {
                out, generation, ..
            } => {
                let (done, result) = oneshot::channel();
                let outgoing = Outgoing {
                    generation,
                    messages,
                    done,
                };
                out.send(outgoing)
                    .await
                    .map_err(|_| HcError::lost("the control channel is closed"))?;
                result
                    .await
                    .unwrap_or_else(|_| Err(HcError::lost("the control channel is closed")))
            }
        }
    }
}

impl fmt::Debug for HcRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HcRequest")
            .field("id", &self.id)
            .field("method", &self.method)
            .field("target", &self.target)
            .field("headers", &self.headers)
            .field("body_len", &self.body.len())
            .field(
                "via_rendezvous",
                &matches!(self.reply, Reply::Rendezvous(_)),
            )
            .finish_non_exhaustive()
    }
}

/// Sends a response on a request rendezvous and closes it.
async fn respond_on(mut ws: Ws, messages: Vec<Message>) -> Result<(), HcError> {
    for m in messages {
        ws.feed(m).await.map_err(HcError::websocket)?;
    }
    ws.flush().await.map_err(HcError::websocket)?;
    let _ = tokio::time::timeout(GRACE, async {
        let _ = ws.close(None).await;
        while let Some(Ok(_)) = ws.next().await {}
    })
    .await;
    Ok(())
}
