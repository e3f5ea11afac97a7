//! A listener's control channel (`sb-hc-action=listen`): its admission and registration, then
//! the accepts and requests the relay sends on it, the responses it sends back, token renewal,
//! pings and expiry.

use std::net::SocketAddr;
use std::time::Instant;

use bytes::Bytes;
use futures::{SinkExt, StreamExt};
use interrole_relay::control::{ControlMessage, DEFAULT_MAX_CONTROL_LEN, Response};
use interrole_relay::sas::Right;
use interrole_relay::url::RelayAddress;
use tokio::sync::{mpsc, oneshot, watch};
use tokio_tungstenite::tungstenite::Message;

use super::directory::{Directory, Registration, Reply};
use super::peer::base_url;
use crate::conn::Conn;
use crate::ctx::Ctx;
use crate::handshake::{self, Refusal};
use crate::http::Head;
use crate::metrics::{Gauge, Kind, Reason};
use crate::wait::{self, CLOSE_GRACE};
use crate::ws;

/// Serves a listener: admitted and registered, or refused.
pub(crate) async fn serve(
    mut stream: Conn,
    peer: SocketAddr,
    head: Head,
    address: &RelayAddress,
    ctx: &Ctx,
    directory: &Directory,
    shutdown: watch::Receiver<bool>,
) {
    match admit(&head, address, peer, stream.is_tls(), ctx, directory) {
        Ok(admitted) => listen(stream, peer, head, admitted, ctx, directory, shutdown).await,
        Err(refusal) => handshake::refuse(&mut stream, peer, ctx, refusal).await,
    }
}

/// A listener admitted and registered.
struct AdmittedListener<'a> {
    accept_key: String,
    expires: Option<Instant>,
    path: String,
    registration: Registration<'a>,
    rx: mpsc::Receiver<Message>,
}

/// Checks a listener's handshake (upgrade headers, a Listen token) and registers it on its
/// path.
fn admit<'a>(
    head: &Head,
    address: &RelayAddress,
    peer: SocketAddr,
    tls: bool,
    ctx: &Ctx,
    directory: &'a Directory,
) -> Result<AdmittedListener<'a>, Refusal> {
    let accept_key = handshake::upgrade_key(head)?;
    let expires = handshake::authorize(address, head, &ctx.keys).map_err(|e| Refusal::token(&e))?;
    let path = address.path().to_owned();
    let cap = ctx.config.limits.max_hc_listeners_per_path;
    let Some((registration, rx)) = directory.register(&path, base_url(head, peer, tls), cap) else {
        return Err(Refusal::new(
            403,
            Reason::Capacity,
            format!("MaximumListenersPerEndpoint: at most {cap} listeners per hybrid connection"),
        ));
    };
    Ok(AdmittedListener {
        accept_key,
        expires,
        path,
        registration,
        rx,
    })
}

/// A listener's control channel, from its upgrade until it closes.
async fn listen(
    stream: Conn,
    peer: SocketAddr,
    head: Head,
    admitted: AdmittedListener<'_>,
    ctx: &Ctx,
    directory: &Directory,
    mut shutdown: watch::Receiver<bool>,
) {
    let AdmittedListener {
        accept_key,
        mut expires,
        path,
        registration: _registration,
        mut rx,
    } = admitted;
    let host = head.header("host").map(str::to_owned);
    let Some(ws) = handshake::upgrade(stream, head.rest, &accept_key, ctx).await else {
        return;
    };
    let _gauge = Gauge::new(&ctx.metrics, Kind::Listener);
    tracing::debug!(%peer, path, "listener connected");
    let (mut sink, mut source) = ws.split();
    let idle = ctx.config.limits.idle_timeout();
    let mut ping = tokio::time::interval(idle / 2);
    ping.tick().await;
    let mut last_seen = Instant::now();
    // A response whose body is the next binary message.
    let mut awaiting_body: Option<(Response, Option<oneshot::Sender<Reply>>)> = None;
    let close: Option<(u16, String)> = loop {
        tokio::select! {
            r = shutdown.changed() => {
                if r.is_err() || *shutdown.borrow() {
                    break Some((1001, "relay shutting down".into()));
                }
            }
            () = wait::until(expires) => break Some((1008, "token expired".into())),
            _ = ping.tick() => {
                if last_seen.elapsed() > idle {
                    break Some((1001, "idle timeout".into()));
                }
                if sink.send(Message::Ping(Bytes::new())).await.is_err() {
                    break None;
                }
            }
            Some(m) = rx.recv() => {
                if sink.send(m).await.is_err() {
                    break None;
                }
            }
            m = source.next() => {
                last_seen = Instant::now();
                let text = match m {
                    None | Some(Err(_)) => break None,
                    Some(Ok(Message::Close(_))) => break None,
                    Some(Ok(Message::Binary(body))) => {
                        if let Some((response, Some(w))) = awaiting_body.take() {
                            let _ = w.send(Reply { response, body });
                        }
                        continue;
                    }
                    Some(Ok(Message::Text(t))) => t,
                    Some(Ok(_)) => continue,
                };
                match ControlMessage::parse(text.as_str(), DEFAULT_MAX_CONTROL_LEN) {
                    Ok(ControlMessage::RenewToken(renew)) => {
                        match handshake::verify_token(
                            &renew.token,
                            &path,
                            Right::Listen,
                            host.as_deref(),
                            &ctx.keys,
                        ) {
                            Ok(e) => expires = e,
                            Err(e) => break Some((1008, format!("token renewal failed: {e}"))),
                        }
                    }
                    Ok(ControlMessage::Response(response)) => {
                        let waiter = directory.take_reply(&response.request_id);
                        if response.body {
                            awaiting_body = Some((response, waiter));
                        } else if let Some(w) = waiter {
                            let _ = w.send(Reply { response, body: Bytes::new() });
                        }
                    }
                    // Only the relay sends these.
                    Ok(ControlMessage::Accept(_) | ControlMessage::Request(_)) => {}
                    Err(e) if e.is_ignorable() => {}
                    Err(e) => {
                        ctx.metrics.reject(Reason::Protocol);
                        let code = e.kind().close_code().unwrap_or(1008);
                        break Some((code, e.to_string()));
                    }
                }
            }
        }
    };
    tracing::debug!(%peer, path, ?close, "listener gone");
    // Send our close, or flush the reply to the listener's.
    let _ = tokio::time::timeout(CLOSE_GRACE, async {
        if let Some((code, reason)) = close {
            let _ = sink.send(ws::close_frame(code, &reason)).await;
        }
        let _ = sink.close().await;
    })
    .await;
}
