//! Senders (`sb-hc-action=connect`) and their rendezvous: a sender is handed to a listener of
//! its path with an `accept` on the control channel and waits; the listener opens the
//! rendezvous address (`sb-hc-action=accept`) or rejects there; then the two are spliced.

use std::net::SocketAddr;

use futures::SinkExt;
use interrole_relay::control::{Accept, ControlMessage};
use interrole_relay::url::{RelayAddress, Rendezvous};
use tokio::sync::{oneshot, watch};
use tokio_tungstenite::tungstenite::Message;

use super::directory::{Decision, Directory};
use super::peer::{forwarded_headers, remote_endpoint};
use super::splice::splice;
use crate::conn::Conn;
use crate::ctx::Ctx;
use crate::handshake::{self, Refusal};
use crate::http::{self, Head};
use crate::metrics::{Gauge, Kind, Reason, Rendezvous as Outcome};
use crate::wait::{self, CLOSE_GRACE};
use crate::ws;

/// A sender (`sb-hc-action=connect`): handed to a listener of its path, then spliced to it.
pub(crate) async fn connect(
    mut stream: Conn,
    peer: SocketAddr,
    head: Head,
    address: &RelayAddress,
    ctx: &Ctx,
    directory: &Directory,
    mut shutdown: watch::Receiver<bool>,
) {
    let checked = handshake::upgrade_key(&head).and_then(|key| {
        handshake::authorize(address, &head, &ctx.keys).map_err(|e| Refusal::token(&e))?;
        Ok(key)
    });
    let accept_key = match checked {
        Ok(k) => k,
        Err(r) => return handshake::refuse(&mut stream, peer, ctx, r).await,
    };
    let Some(mut listener) = directory.pick(address, &[]) else {
        let why = format!("no listener on {:?}", address.path());
        let refusal = Refusal::new(404, Reason::BadAddress, why);
        return handshake::refuse(&mut stream, peer, ctx, refusal).await;
    };
    let id = address
        .id()
        .map_or_else(|| directory.new_id(), str::to_owned);
    let (tx, mut rx) = oneshot::channel();
    let Some(_pending) = directory.wait_for_decision(&id, tx) else {
        let why = format!("sb-hc-id {id:?} is already waiting");
        let refusal = Refusal::new(400, Reason::BadAddress, why);
        return handshake::refuse(&mut stream, peer, ctx, refusal).await;
    };
    let mut accept = Accept::new(String::new(), id.clone());
    accept.connect_headers = forwarded_headers(
        &head,
        &[
            "ServiceBusAuthorization",
            "Sec-WebSocket-Extensions",
            "Content-Length",
        ],
    );
    accept.remote_endpoint = Some(remote_endpoint(peer));
    let deadline = tokio::time::Instant::now() + ctx.config.limits.accept_timeout();
    let mut tried = Vec::new();
    // When the chosen listener goes away before deciding, another one is tried.
    let decision = loop {
        accept.address = address.rendezvous_address(&listener.base, Rendezvous::Accept, &id);
        let message = Message::text(ControlMessage::from(accept.clone()).to_json());
        let sent = listener.tx.try_send(message).is_ok();
        if sent {
            tokio::select! {
                d = tokio::time::timeout_at(deadline, &mut rx) => break d,
                () = listener.tx.closed() => {}
                () = wait::shutdown(&mut shutdown) => {
                    ctx.metrics.rendezvous(Outcome::Failed);
                    http::respond_error(&mut stream, 503, "relay shutting down").await;
                    return;
                }
            }
        }
        tried.push(listener.key);
        let next = directory
            .pick(address, &tried)
            .filter(|_| tokio::time::Instant::now() < deadline);
        let Some(next) = next else {
            ctx.metrics.rendezvous(Outcome::Failed);
            http::respond_error(&mut stream, 500, "the listener went away").await;
            return;
        };
        tracing::debug!(%peer, id, "listener gone or not reading: trying another");
        listener = next;
        let (tx, next_rx) = oneshot::channel();
        rx = next_rx;
        directory.rewait_for_decision(&id, tx);
    };
    drop(listener);
    let (listener_stream, rest, listener_key, protocol) = match decision {
        Err(_) | Ok(Err(_)) => {
            ctx.metrics.rendezvous(Outcome::TimedOut);
            tracing::debug!(%peer, id, "listener did not accept in time");
            http::respond_error(&mut stream, 504, "the listener did not accept in time").await;
            return;
        }
        Ok(Ok(Decision::Rejected(status, description))) => {
            ctx.metrics.rendezvous(Outcome::Rejected);
            // An interim status cannot end a handshake.
            let status = if status < 200 { 502 } else { status };
            let body = format!("{status} {description}\n");
            let reason = if description.is_empty() {
                http::reason(status)
            } else {
                &description
            };
            http::respond_raw(
                &mut stream,
                status,
                reason,
                "Content-Type: text/plain; charset=utf-8\r\n",
                body.as_bytes(),
                true,
            )
            .await;
            return;
        }
        Ok(Ok(Decision::Accepted {
            stream,
            rest,
            accept_key,
            protocol,
        })) => (stream, rest, accept_key, protocol),
    };
    ctx.metrics.rendezvous(Outcome::Accepted);
    let mut listener_stream = listener_stream;
    if http::respond_upgrade(&mut stream, &accept_key, protocol.as_deref())
        .await
        .is_err()
    {
        http::respond_error(&mut listener_stream, 410, "the sender went away").await;
        return;
    }
    if http::respond_upgrade(&mut listener_stream, &listener_key, protocol.as_deref())
        .await
        .is_err()
    {
        // The sender has its 101: close its WebSocket.
        let mut ws = ws::server_side(stream, head.rest, ctx.ws_config).await;
        let _ = ws
            .send(ws::close_frame(1011, "the listener went away"))
            .await;
        let _ = tokio::time::timeout(CLOSE_GRACE, ws.close(None)).await;
        return;
    }
    let sender = ws::server_side(stream, head.rest, ctx.ws_config).await;
    let listener = ws::server_side(listener_stream, rest, ctx.ws_config).await;
    let _gauge = Gauge::new(&ctx.metrics, Kind::Relayed);
    tracing::debug!(%peer, id, "sender spliced to its listener");
    splice(sender, listener, shutdown).await;
}

/// A listener opens (or rejects at) a rendezvous address (`sb-hc-action=accept`).
pub(crate) async fn accept(
    mut stream: Conn,
    peer: SocketAddr,
    head: Head,
    address: &RelayAddress,
    ctx: &Ctx,
    directory: &Directory,
) {
    let id = address.id().unwrap_or_default();
    let Some(waiting) = directory.take_decision(id) else {
        let why = "unknown, used or expired rendezvous";
        let refusal = Refusal::new(404, Reason::BadAddress, why);
        return handshake::refuse(&mut stream, peer, ctx, refusal).await;
    };
    if let Some(reject) = address.reject() {
        let _ = waiting.send(Decision::Rejected(
            reject.status_code,
            reject.description.clone(),
        ));
        http::respond_error(&mut stream, 410, "the sender was rejected").await;
        return;
    }
    let accept_key = match handshake::upgrade_key(&head) {
        Ok(k) => k,
        Err(r) => {
            let _ = waiting.send(Decision::Rejected(502, "bad rendezvous handshake".into()));
            return handshake::refuse(&mut stream, peer, ctx, r).await;
        }
    };
    let protocol = head
        .header("sec-websocket-protocol")
        .and_then(|p| p.split(',').next())
        .map(|p| p.trim().to_owned())
        .filter(|p| !p.is_empty());
    let decision = Decision::Accepted {
        stream,
        rest: head.rest,
        accept_key,
        protocol,
    };
    if let Err(Decision::Accepted { mut stream, .. }) = waiting.send(decision) {
        http::respond_error(&mut stream, 410, "the sender went away").await;
    }
}
