//! HTTP senders: a plain request (no `$hc`) relayed to a listener of its path, inline on its
//! control channel or, past 64 KiB, through a request rendezvous the listener opens; the
//! listener's response relayed back.

use std::net::SocketAddr;

use bytes::Bytes;
use futures::{SinkExt, StreamExt};
use interrole_relay::control::{ControlMessage, DEFAULT_MAX_CONTROL_LEN, Request, Response};
use interrole_relay::url::{RelayAddress, Rendezvous};
use tokio::sync::{oneshot, watch};
use tokio_tungstenite::tungstenite::Message;

use super::directory::{Directory, Reply};
use super::peer::{forwarded_headers, remote_endpoint};
use crate::conn::Conn;
use crate::ctx::Ctx;
use crate::handshake::{self, Refusal};
use crate::http::{self, Head};
use crate::metrics::{HttpOutcome, Reason};
use crate::wait::{self, CLOSE_GRACE};
use crate::ws;

/// The largest HTTP request body relayed inline.
const MAX_INLINE_BODY: usize = 64 * 1024;

/// A plain HTTP request (no `$hc`): relayed to a listener of its path, its response relayed
/// back.
pub(crate) async fn http_request(
    mut stream: Conn,
    peer: SocketAddr,
    head: Head,
    address: &RelayAddress,
    ctx: &Ctx,
    directory: &Directory,
    mut shutdown: watch::Receiver<bool>,
) {
    if let Err(e) = handshake::authorize(address, &head, &ctx.keys) {
        ctx.metrics.http_request(HttpOutcome::Failed);
        return handshake::refuse(&mut stream, peer, ctx, Refusal::token(&e)).await;
    }
    let Some(listener) = directory.pick(address, &[]) else {
        ctx.metrics.http_request(HttpOutcome::NoListener);
        http::respond_error(&mut stream, 502, "no listener is connected").await;
        return;
    };
    // The whole body must arrive within the handshake timeout.
    let deadline = tokio::time::Instant::now() + ctx.config.limits.handshake_timeout();
    let max = ctx.config.limits.max_message_bytes;
    let body = match http::read_body(&mut stream, &head, max, deadline).await {
        Ok(b) => b,
        Err((status, why)) => {
            ctx.metrics.http_request(HttpOutcome::Failed);
            http::respond_error(&mut stream, status, why).await;
            return;
        }
    };
    let id = directory.new_id();
    let rendezvous = address.rendezvous_address(&listener.base, Rendezvous::Request, &id);
    let mut request = Request::inline(
        rendezvous.clone(),
        id.clone(),
        head.method.clone(),
        address.stripped_target(),
        !body.is_empty(),
    );
    let mut skip = vec![
        "ServiceBusAuthorization",
        "Content-Length",
        "Connection",
        "Keep-Alive",
        "Transfer-Encoding",
        "Upgrade",
    ];
    if address.token().is_none() && head.header("ServiceBusAuthorization").is_none() {
        skip.push("Authorization");
    }
    request.request_headers = Some(forwarded_headers(&head, &skip));
    request.remote_endpoint = Some(remote_endpoint(peer));
    let request = ControlMessage::from(request).to_json();
    let (tx, rx) = oneshot::channel();
    // Over the inline limit, only the address travels on the control channel and the whole
    // request waits for the listener at the rendezvous.
    let (messages, deliver) = if body.len() > MAX_INLINE_BODY {
        let only = ControlMessage::from(Request::address_only(rendezvous)).to_json();
        (vec![Message::text(only)], Some((request, body)))
    } else if body.is_empty() {
        (vec![Message::text(request)], None)
    } else {
        (vec![Message::text(request), Message::Binary(body)], None)
    };
    let _waiting = directory.wait_for_reply(&id, tx, deliver);
    let sent = messages
        .into_iter()
        .all(|m| listener.tx.try_send(m).is_ok());
    if !sent {
        ctx.metrics.http_request(HttpOutcome::Failed);
        http::respond_error(&mut stream, 502, "the listener is not reading").await;
        return;
    }
    let answer = tokio::select! {
        a = tokio::time::timeout(ctx.config.limits.request_timeout(), rx) => a.map(Result::ok),
        () = listener.tx.closed() => Ok(None),
        () = wait::shutdown(&mut shutdown) => Ok(None),
    };
    match answer {
        Err(_) => {
            ctx.metrics.http_request(HttpOutcome::TimedOut);
            let body = format!(
                "{{\"error\":{{\"code\":\"GatewayTimeout\",\"message\":\"the listener did not respond within {} s\"}}}}",
                ctx.config.limits.request_timeout_secs
            );
            http::respond_raw(
                &mut stream,
                504,
                http::reason(504),
                "Content-Type: application/json\r\n",
                body.as_bytes(),
                true,
            )
            .await;
        }
        Ok(None) => {
            ctx.metrics.http_request(HttpOutcome::Failed);
            http::respond_error(&mut stream, 502, "the listener went away").await;
        }
        Ok(Some(Reply { response, body })) => {
            ctx.metrics.http_request(HttpOutcome::Answered);
            let status = if response.status_code < 200 {
                502
            } else {
                response.status_code
            };
            let mut extra = String::new();
            for (name, value) in &response.response_headers {
                let hop = [
                    "content-length",
                    "connection",
                    "transfer-encoding",
                    "keep-alive",
                ]
                .iter()
                .any(|h| h.eq_ignore_ascii_case(name));
                let bad = |s: &str| s.is_empty() || s.chars().any(char::is_control);
                if hop || bad(name) || value.chars().any(char::is_control) || name.contains(':') {
                    continue;
                }
                extra.push_str(&format!("{name}: {value}\r\n"));
            }
            extra.push_str("Via: 1.1 interrole-relay\r\n");
            let reason = response
                .status_description
                .as_deref()
                .unwrap_or_else(|| http::reason(response.status_code));
            http::respond_raw(
                &mut stream,
                status,
                reason,
                &extra,
                &body,
                head.method != "HEAD",
            )
            .await;
        }
    }
}

/// A listener opens an HTTP request's rendezvous: to fetch a request too large to travel inline,
/// or to answer with a response too large for the control channel.
pub(crate) async fn request_rendezvous(
    mut stream: Conn,
    peer: SocketAddr,
    head: Head,
    address: &RelayAddress,
    ctx: &Ctx,
    directory: &Directory,
) {
    let id = address.id().unwrap_or_default().to_owned();
    let Some(deliver) = directory.open_request(&id) else {
        let why = "unknown, used or expired rendezvous";
        let refusal = Refusal::new(404, Reason::BadAddress, why);
        return handshake::refuse(&mut stream, peer, ctx, refusal).await;
    };
    let accept_key = match handshake::upgrade_key(&head) {
        Ok(k) => k,
        Err(r) => return handshake::refuse(&mut stream, peer, ctx, r).await,
    };
    let Some(mut ws) = handshake::upgrade(stream, head.rest, &accept_key, ctx).await else {
        return;
    };
    let exchange = async {
        if let Some((request, body)) = deliver {
            ws.send(Message::text(request)).await.ok()?;
            ws.send(Message::Binary(body)).await.ok()?;
        }
        let mut response: Option<Response> = None;
        loop {
            match ws.next().await? {
                Ok(Message::Text(t)) if response.is_none() => {
                    match ControlMessage::parse(t.as_str(), DEFAULT_MAX_CONTROL_LEN) {
                        Ok(ControlMessage::Response(r)) if r.body => response = Some(r),
                        Ok(ControlMessage::Response(r)) => {
                            return Some(Reply {
                                response: r,
                                body: Bytes::new(),
                            });
                        }
                        Err(e) if !e.is_ignorable() => return None,
                        _ => {}
                    }
                }
                Ok(Message::Binary(body)) => {
                    if let Some(response) = response.take() {
                        return Some(Reply { response, body });
                    }
                }
                Ok(Message::Close(_)) | Err(_) => return None,
                Ok(_) => {}
            }
        }
    };
    let reply = tokio::time::timeout(ctx.config.limits.request_timeout(), exchange)
        .await
        .ok()
        .flatten();
    let code = if reply.is_some() { 1000 } else { 1008 };
    if let Some(reply) = reply {
        if let Some(w) = directory.take_reply(&id) {
            let _ = w.send(reply);
        }
    }
    let _ = tokio::time::timeout(CLOSE_GRACE, async {
        let _ = ws.send(ws::close_frame(code, "")).await;
        while let Some(Ok(_)) = ws.next().await {}
    })
    .await;
}
