//! Hybrid Connections one-to-one: listeners' control channels, WebSocket senders handed to a
//! listener through a rendezvous, and plain HTTP requests relayed inline on the control channel
//! (`docs/protocol.md` §1 "Addresses and handshakes" and §2 "Hybrid Connections control
//! messages").
//!
//! ## Listeners
//!
//! `sb-hc-action=listen` (Listen right) upgrades to the control channel, which stays open; the
//! relay pings it every half idle timeout. A path holds at most `max_hc_listeners_per_path`
//! listeners: one more is refused **403** with the description `MaximumListenersPerEndpoint`
//! (a quota error: 403, not 404, so that the official clients keep retrying). Text messages are
//! parsed with [`ControlMessage::parse`] (64 KiB limit): `renewToken` replaces the channel's
//! token (a token that does not verify closes **1008**), `response` answers an HTTP request,
//! unknown kinds are ignored, malformed JSON closes **1008** and an oversized message **1009**.
//! Token expiry closes **1008**, shutdown **1001**.
//!
//! ## Senders and the rendezvous
//!
//! `sb-hc-action=connect` (Send right) on the listener's path, optionally followed by a suffix
//! and application parameters, is handed to one listener chosen at random (xorshift seeded by
//! [`RandomState`]): the relay sends it an `accept` whose address is
//! `ws[s]://{the listener's Host}/$hc/{sender path}?{app params&}sb-hc-action=accept&sb-hc-id={id}`
//! and holds the sender's upgrade unanswered. No listener on the path or a prefix of it: **404**.
//!
//! - The listener opens the address (no token): the sender gets 101 and the listener 101, both
//!   with the subprotocol the listener asked for on the rendezvous, and the two WebSockets are
//!   spliced message for message. A close from one side closes the other with the same code
//!   (1000 when the close carried none); a side that drops without a close closes the other
//!   with **1001**; shutdown closes both with 1001.
//! - The listener opens the address with `sb-hc-statusCode`/`sb-hc-statusDescription` (or the
//!   unprefixed spelling): it is answered **410 Gone** and the sender's upgrade fails with that
//!   status and description.
//! - Nothing happens within `accept_timeout_secs` (default 20, below the clients' 70 s connect
//!   timeout): the sender gets **504 Gateway Timeout**.
//! - The chosen listener's control channel goes away (or its queue is full): the accept is sent
//!   to another listener of the path, with the same id, within the same deadline; when none is
//!   left the sender gets **500**.
//!
//! A rendezvous address is single use and valid while its sender waits: an unknown, used or
//! expired id is answered **404**. A sender's `sb-hc-id` that is already waiting is refused
//! **400**.
//!
//! ## HTTP senders
//!
//! A request without `$hc` (Send right, token in `sb-hc-token`, `ServiceBusAuthorization` or
//! `Authorization`) goes to a random listener of its path. A body of at most 64 KiB travels
//! inline: a `request` control message with `body: true`, then one binary message. A larger body
//! (up to `max_message_bytes`; **413** over it) sends only `{"request":{"address":..}}`; the
//! listener opens that address (`sb-hc-action=request`, no token, single use: otherwise **404**)
//! and receives the whole request there. The listener answers with a `response` (and one binary
//! body message) on the control channel, or on the request's rendezvous, which it may open for
//! an inline request too (a response too large for the channel); the relay then closes the
//! rendezvous with 1000 (1008 when what it read was not a response). The response becomes the
//! HTTP response, with a `Via` header. No listener: **502**; no response within
//! `request_timeout_secs`: **504** with a JSON error body; the listener gone meanwhile: **502**.
//! Request bodies come with `Content-Length` or chunked (decoded before relaying by
//! `interrole_relay::http::ChunkedDecoder`, trailers dropped; a bad chunk **400**, trailers over
//! 64 KiB **431**; another transfer coding: **501**).

use std::collections::HashMap;
use std::collections::hash_map::RandomState;
use std::hash::BuildHasher;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::{SinkExt, StreamExt};
use interrole_relay::control::{
    Accept, ControlMessage, DEFAULT_MAX_CONTROL_LEN, Headers, RemoteEndpoint, Request, Response,
};
use interrole_relay::http::{ChunkedDecoder, HttpErrorKind};
use interrole_relay::sas::Right;
use interrole_relay::url::{Action, RelayAddress, Rendezvous};
use parking_lot::Mutex;
use tokio::io::AsyncReadExt;
use tokio::sync::{mpsc, oneshot, watch};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode as WsCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, Role};

use crate::conn::Conn;
use crate::http::{self, Head};
use crate::metrics::{HttpOutcome, Kind, Reason, Rendezvous as Outcome};
use crate::server::{self, Ctx, Gauge, Refusal};

/// The largest HTTP request body relayed inline.
const MAX_INLINE_BODY: usize = 64 * 1024;

/// How many messages may wait for a listener's control channel.
const CONTROL_QUEUE: usize = 1024;

/// A listener's answer to an HTTP request.
struct Reply {
    response: Response,
    body: Bytes,
}

/// One connected listener, as senders see it.
struct Listener {
    key: u64,
    /// Messages for the control channel.
    tx: mpsc::Sender<Message>,
    /// `ws://host` as the listener reached the relay.
    base: String,
}

/// An HTTP request waiting for its response.
struct Waiting {
    reply: oneshot::Sender<Reply>,
    /// What the request rendezvous delivers first: the whole request, for a request that was
    /// too large to travel inline.
    deliver: Option<(String, Bytes)>,
    /// Whether its rendezvous was opened (it is single use).
    opened: bool,
}

/// What the listener did with a sender.
enum Decision {
    Accepted {
        stream: Conn,
        rest: Vec<u8>,
        accept_key: String,
        protocol: Option<String>,
    },
    Rejected(u16, String),
}

/// Every Hybrid Connections listener and waiting sender.
pub(crate) struct Relay {
    listeners: Mutex<HashMap<String, Vec<Arc<Listener>>>>,
    /// Senders waiting for their listener, by rendezvous id.
    pending: Mutex<HashMap<String, oneshot::Sender<Decision>>>,
    /// HTTP requests waiting for their response, by request id.
    requests: Mutex<HashMap<String, Waiting>>,
    rng: Mutex<u64>,
    next_key: AtomicU64,
}

impl Relay {
    pub(crate) fn new() -> Self {
        let seed = RandomState::new().hash_one(Instant::now()) | 1;
        Self {
            listeners: Mutex::new(HashMap::new()),
            pending: Mutex::new(HashMap::new()),
            requests: Mutex::new(HashMap::new()),
            rng: Mutex::new(seed),
            next_key: AtomicU64::new(1),
        }
    }

    fn random(&self) -> u64 {
        let mut x = self.rng.lock();
        // xorshift64
        *x ^= *x << 13;
        *x ^= *x >> 7;
        *x ^= *x << 17;
        *x
    }

    /// A fresh GUID-shaped id.
    fn new_id(&self) -> String {
        let (a, b) = (self.random(), self.random());
        format!(
            "{:08x}-{:04x}-{:04x}-{:04x}-{:012x}",
            a >> 32,
            (a >> 16) & 0xffff,
            a & 0xffff,
            b >> 48,
            b & 0xffff_ffff_ffff
        )
    }

    /// Registers a listener on `path`, unless the path is full.
    fn register<'a>(
        &'a self,
        path: &str,
        base: String,
        cap: usize,
    ) -> Option<(Registration<'a>, mpsc::Receiver<Message>)> {
        let (tx, rx) = mpsc::channel(CONTROL_QUEUE);
        let listener = Arc::new(Listener {
            key: self.next_key.fetch_add(1, Ordering::Relaxed),
            tx,
            base,
        });
        let mut all = self.listeners.lock();
        let on_path = all.entry(path.to_owned()).or_default();
        if on_path.len() >= cap {
            if on_path.is_empty() {
                all.remove(path);
            }
            return None;
        }
        let registration = Registration {
            relay: self,
            path: path.to_owned(),
            key: listener.key,
        };
        on_path.push(listener);
        Some((registration, rx))
    }

    /// A random listener on the longest prefix of `address`'s path that has one, other than
    /// those in `tried`.
    fn pick(&self, address: &RelayAddress, tried: &[u64]) -> Option<Arc<Listener>> {
        let on_path = {
            let all = self.listeners.lock();
            address
                .path_prefixes()
                .find_map(|p| all.get(p).filter(|l| !l.is_empty()).cloned())?
        };
        let on_path: Vec<_> = on_path
            .into_iter()
            .filter(|l| !l.tx.is_closed() && !tried.contains(&l.key))
            .collect();
        if on_path.is_empty() {
            return None;
        }
        let i = (self.random() % on_path.len() as u64) as usize;
        on_path.get(i).cloned()
    }
}

/// Removes a listener from its path when dropped.
struct Registration<'a> {
    relay: &'a Relay,
    path: String,
    key: u64,
}

impl Drop for Registration<'_> {
    fn drop(&mut self) {
        let mut all = self.relay.listeners.lock();
        if let Some(on_path) = all.get_mut(&self.path) {
            on_path.retain(|l| l.key != self.key);
            if on_path.is_empty() {
                all.remove(&self.path);
            }
        }
    }
}

/// Removes a waiting HTTP request when dropped.
struct RequestGuard<'a> {
    relay: &'a Relay,
    id: String,
}

impl Drop for RequestGuard<'_> {
    fn drop(&mut self) {
        self.relay.requests.lock().remove(&self.id);
    }
}

/// Removes a waiting sender's rendezvous when dropped (after a timeout or failure).
struct PendingGuard<'a> {
    relay: &'a Relay,
    id: String,
}

impl Drop for PendingGuard<'_> {
    fn drop(&mut self) {
        self.relay.pending.lock().remove(&self.id);
    }
}

/// Serves every Hybrid Connections action and plain HTTP.
pub(crate) async fn serve(
    mut stream: Conn,
    peer: SocketAddr,
    head: Head,
    address: RelayAddress,
    ctx: &Arc<Ctx>,
    shutdown: watch::Receiver<bool>,
) {
    let refusal = match address.action() {
        Action::Listen => match admit_listener(&head, &address, peer, stream.is_tls(), ctx) {
            Ok(admitted) => return listen(stream, peer, head, admitted, ctx, shutdown).await,
            Err(r) => r,
        },
        Action::Connect => return connect(stream, peer, head, &address, ctx, shutdown).await,
        Action::Accept => return rendezvous(stream, peer, head, &address, ctx).await,
        Action::Request => return request_rendezvous(stream, peer, head, &address, ctx).await,
        Action::Http => return http_request(stream, peer, head, &address, ctx, shutdown).await,
        action => (
            404,
            Reason::BadAddress,
            format!("action {action} is not served by this relay"),
        ),
    };
    server::refuse(&mut stream, peer, ctx, refusal).await;
}

/// `ws` or `wss` (over TLS, or behind a TLS terminator) and the host the peer reached the relay
/// at.
fn base_url(head: &Head, peer: SocketAddr, tls: bool) -> String {
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

fn remote_endpoint(peer: SocketAddr) -> RemoteEndpoint {
    RemoteEndpoint::new(peer.ip().to_string(), peer.port())
}

/// The sender's headers for the listener: repeated names joined with `, `, credentials and
/// extension negotiation left out.
fn forwarded_headers(head: &Head, skip: &[&str]) -> Headers {
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

fn close_frame(code: u16, reason: &str) -> Message {
    let mut reason = reason.to_owned();
    while reason.len() > 120 {
        reason.pop();
    }
    Message::Close(Some(CloseFrame {
        code: WsCode::from(code),
        reason: reason.into(),
    }))
}

/// Resolves once the server shuts down (or is gone).
async fn shutting_down(shutdown: &mut watch::Receiver<bool>) {
    let _ = shutdown.wait_for(|s| *s).await;
}

async fn expiry(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at.into()).await,
        None => std::future::pending().await,
    }
}

// ---------------------------------------------------------------------------------------------
// Listeners

/// A listener admitted and registered.
struct AdmittedListener<'a> {
    accept_key: String,
    expires: Option<Instant>,
    path: String,
    registration: Registration<'a>,
    rx: mpsc::Receiver<Message>,
}

fn admit_listener<'a>(
    head: &Head,
    address: &RelayAddress,
    peer: SocketAddr,
    tls: bool,
    ctx: &'a Ctx,
) -> Result<AdmittedListener<'a>, Refusal> {
    let accept_key = server::upgrade_key(head)?;
    let expires =
        server::authorize(address, head, &ctx.keys).map_err(|e| server::token_refusal(&e))?;
    let path = address.path().to_owned();
    let cap = ctx.config.limits.max_hc_listeners_per_path;
    let Some((registration, rx)) = ctx.hc.register(&path, base_url(head, peer, tls), cap) else {
        return Err((
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

async fn listen(
    mut stream: Conn,
    peer: SocketAddr,
    head: Head,
    admitted: AdmittedListener<'_>,
    ctx: &Arc<Ctx>,
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
    if http::respond_upgrade(&mut stream, &accept_key, None)
        .await
        .is_err()
    {
        return;
    }
    let ws =
        WebSocketStream::from_partially_read(stream, head.rest, Role::Server, Some(ctx.ws_config))
            .await;
    let _gauge = Gauge::new(ctx.metrics.gauge(Kind::Listener));
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
            () = expiry(expires) => break Some((1008, "token expired".into())),
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
                        match server::verify_token(
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
                        let waiter = ctx.hc.requests.lock()
                            .remove(&response.request_id)
                            .map(|w| w.reply);
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
    let _ = tokio::time::timeout(Duration::from_secs(5), async {
        if let Some((code, reason)) = close {
            let _ = sink.send(close_frame(code, &reason)).await;
        }
        let _ = sink.close().await;
    })
    .await;
}

// ---------------------------------------------------------------------------------------------
// Senders and the rendezvous

async fn connect(
    mut stream: Conn,
    peer: SocketAddr,
    head: Head,
    address: &RelayAddress,
    ctx: &Arc<Ctx>,
    mut shutdown: watch::Receiver<bool>,
) {
    let checked = server::upgrade_key(&head).and_then(|key| {
        server::authorize(address, &head, &ctx.keys).map_err(|e| server::token_refusal(&e))?;
        Ok(key)
    });
    let accept_key = match checked {
        Ok(k) => k,
        Err(r) => return server::refuse(&mut stream, peer, ctx, r).await,
    };
    let Some(mut listener) = ctx.hc.pick(address, &[]) else {
        let why = format!("no listener on {:?}", address.path());
        return server::refuse(&mut stream, peer, ctx, (404, Reason::BadAddress, why)).await;
    };
    let id = address.id().map_or_else(|| ctx.hc.new_id(), str::to_owned);
    let (mut tx, mut rx) = oneshot::channel();
    let inserted = {
        let mut pending = ctx.hc.pending.lock();
        let free = !pending.contains_key(&id);
        if free {
            pending.insert(id.clone(), tx);
        }
        free
    };
    if !inserted {
        let why = format!("sb-hc-id {id:?} is already waiting");
        return server::refuse(&mut stream, peer, ctx, (400, Reason::BadAddress, why)).await;
    }
    let _pending = PendingGuard {
        relay: &ctx.hc,
        id: id.clone(),
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
                () = shutting_down(&mut shutdown) => {
                    ctx.metrics.rendezvous(Outcome::Failed);
                    http::respond_error(&mut stream, 503, "relay shutting down").await;
                    return;
                }
            }
        }
        tried.push(listener.key);
        let next = ctx
            .hc
            .pick(address, &tried)
            .filter(|_| tokio::time::Instant::now() < deadline);
        let Some(next) = next else {
            ctx.metrics.rendezvous(Outcome::Failed);
            http::respond_error(&mut stream, 500, "the listener went away").await;
            return;
        };
        tracing::debug!(%peer, id, "listener gone or not reading: trying another");
        listener = next;
        (tx, rx) = oneshot::channel();
        ctx.hc.pending.lock().insert(id.clone(), tx);
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
        let mut ws = WebSocketStream::from_partially_read(
            stream,
            head.rest,
            Role::Server,
            Some(ctx.ws_config),
        )
        .await;
        let _ = ws.send(close_frame(1011, "the listener went away")).await;
        let _ = tokio::time::timeout(Duration::from_secs(5), ws.close(None)).await;
        return;
    }
    let sender =
        WebSocketStream::from_partially_read(stream, head.rest, Role::Server, Some(ctx.ws_config))
            .await;
    let listener = WebSocketStream::from_partially_read(
        listener_stream,
        rest,
        Role::Server,
        Some(ctx.ws_config),
    )
    .await;
    let _gauge = Gauge::new(ctx.metrics.gauge(Kind::Relayed));
    tracing::debug!(%peer, id, "sender spliced to its listener");
    splice(sender, listener, shutdown).await;
}

/// A listener opens (or rejects at) a rendezvous address.
async fn rendezvous(
    mut stream: Conn,
    peer: SocketAddr,
    head: Head,
    address: &RelayAddress,
    ctx: &Arc<Ctx>,
) {
    let id = address.id().unwrap_or_default();
    let waiting = ctx.hc.pending.lock().remove(id);
    let Some(waiting) = waiting else {
        let why = "unknown, used or expired rendezvous".to_owned();
        return server::refuse(&mut stream, peer, ctx, (404, Reason::BadAddress, why)).await;
    };
    if let Some(reject) = address.reject() {
        let _ = waiting.send(Decision::Rejected(
            reject.status_code,
            reject.description.clone(),
        ));
        http::respond_error(&mut stream, 410, "the sender was rejected").await;
        return;
    }
    let accept_key = match server::upgrade_key(&head) {
        Ok(k) => k,
        Err(r) => {
            let _ = waiting.send(Decision::Rejected(502, "bad rendezvous handshake".into()));
            return server::refuse(&mut stream, peer, ctx, r).await;
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

type Ws = WebSocketStream<Conn>;

/// Relays messages between a sender and its listener until one closes.
async fn splice(a: Ws, b: Ws, mut shutdown: watch::Receiver<bool>) {
    let (mut a_tx, mut a_rx) = a.split();
    let (mut b_tx, mut b_rx) = b.split();
    // The close each side gets, when the other initiated it.
    let (to_a, to_b): (Option<Message>, Option<Message>) = loop {
        tokio::select! {
            r = shutdown.changed() => {
                if r.is_err() || *shutdown.borrow() {
                    let m = close_frame(1001, "relay shutting down");
                    break (Some(m.clone()), Some(m));
                }
            }
            m = a_rx.next() => match forward(m, &mut b_tx).await {
                Flow::Continue => {}
                Flow::Closed(close) => break (None, Some(close)),
                Flow::OtherGone => break (Some(close_frame(1001, "peer gone")), None),
            },
            m = b_rx.next() => match forward(m, &mut a_tx).await {
                Flow::Continue => {}
                Flow::Closed(close) => break (Some(close), None),
                Flow::OtherGone => break (None, Some(close_frame(1001, "peer gone"))),
            },
        }
    };
    let finish = async {
        let a = async {
            if let Some(m) = to_a {
                let _ = a_tx.send(m).await;
            }
            let _ = a_tx.close().await;
            while let Some(Ok(_)) = a_rx.next().await {}
        };
        let b = async {
            if let Some(m) = to_b {
                let _ = b_tx.send(m).await;
            }
            let _ = b_tx.close().await;
            while let Some(Ok(_)) = b_rx.next().await {}
        };
        futures::join!(a, b);
    };
    // Wait for both closing handshakes, but no more than a short grace after a shutdown.
    let closing = async {
        shutting_down(&mut shutdown).await;
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    tokio::select! {
        _ = tokio::time::timeout(Duration::from_secs(5), finish) => {}
        () = closing => {}
    }
}

enum Flow {
    Continue,
    /// The side read from closed: send this close to the other.
    Closed(Message),
    /// The other side could not be written to.
    OtherGone,
}

async fn forward<W>(
    m: Option<Result<Message, tokio_tungstenite::tungstenite::Error>>,
    to: &mut W,
) -> Flow
where
    W: futures::Sink<Message> + Unpin,
{
    match m {
        Some(Ok(m @ (Message::Text(_) | Message::Binary(_)))) => {
            if to.send(m).await.is_err() {
                return Flow::OtherGone;
            }
            Flow::Continue
        }
        Some(Ok(Message::Close(frame))) => Flow::Closed(match frame {
            Some(f) => close_frame(u16::from(f.code), &f.reason),
            None => close_frame(1000, "peer closed"),
        }),
        Some(Ok(_)) => Flow::Continue,
        None | Some(Err(_)) => Flow::Closed(close_frame(1001, "peer gone")),
    }
}

// ---------------------------------------------------------------------------------------------
// HTTP senders

async fn http_request(
    mut stream: Conn,
    peer: SocketAddr,
    head: Head,
    address: &RelayAddress,
    ctx: &Arc<Ctx>,
    mut shutdown: watch::Receiver<bool>,
) {
    if let Err(e) = server::authorize(address, &head, &ctx.keys) {
        ctx.metrics.http_request(HttpOutcome::Failed);
        return server::refuse(&mut stream, peer, ctx, server::token_refusal(&e)).await;
    }
    let Some(listener) = ctx.hc.pick(address, &[]) else {
        ctx.metrics.http_request(HttpOutcome::NoListener);
        http::respond_error(&mut stream, 502, "no listener is connected").await;
        return;
    };
    let body = match read_body(&mut stream, &head, ctx).await {
        Ok(b) => b,
        Err((status, why)) => {
            ctx.metrics.http_request(HttpOutcome::Failed);
            http::respond_error(&mut stream, status, why).await;
            return;
        }
    };
    let id = ctx.hc.new_id();
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
    ctx.hc.requests.lock().insert(
        id.clone(),
        Waiting {
            reply: tx,
            deliver,
            opened: false,
        },
    );
    let _waiting = RequestGuard {
        relay: &ctx.hc,
        id: id.clone(),
    };
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
        () = shutting_down(&mut shutdown) => Ok(None),
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
async fn request_rendezvous(
    mut stream: Conn,
    peer: SocketAddr,
    head: Head,
    address: &RelayAddress,
    ctx: &Arc<Ctx>,
) {
    let id = address.id().unwrap_or_default().to_owned();
    let deliver = {
        let mut requests = ctx.hc.requests.lock();
        match requests.get_mut(&id).filter(|w| !w.opened) {
            Some(w) => {
                w.opened = true;
                Ok(w.deliver.take())
            }
            None => Err(()),
        }
    };
    let Ok(deliver) = deliver else {
        let why = "unknown, used or expired rendezvous".to_owned();
        return server::refuse(&mut stream, peer, ctx, (404, Reason::BadAddress, why)).await;
    };
    let accept_key = match server::upgrade_key(&head) {
        Ok(k) => k,
        Err(r) => return server::refuse(&mut stream, peer, ctx, r).await,
    };
    if http::respond_upgrade(&mut stream, &accept_key, None)
        .await
        .is_err()
    {
        return;
    }
    let mut ws =
        WebSocketStream::from_partially_read(stream, head.rest, Role::Server, Some(ctx.ws_config))
            .await;
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
        if let Some(w) = ctx.hc.requests.lock().remove(&id) {
            let _ = w.reply.send(reply);
        }
    }
    let _ = tokio::time::timeout(Duration::from_secs(5), async {
        let _ = ws.send(close_frame(code, "")).await;
        while let Some(Ok(_)) = ws.next().await {}
    })
    .await;
}

/// Reads a request body, at most `max_message_bytes`: `Content-Length` bytes, or a chunked body
/// (decoded; trailers are dropped). The whole body must arrive within the handshake timeout.
async fn read_body(
    stream: &mut Conn,
    head: &Head,
    ctx: &Ctx,
) -> Result<Bytes, (u16, &'static str)> {
    let max = ctx.config.limits.max_message_bytes;
    let deadline = tokio::time::Instant::now() + ctx.config.limits.handshake_timeout();
    if let Some(coding) = head.header("transfer-encoding") {
        if !coding
            .rsplit(',')
            .next()
            .is_some_and(|c| c.trim().eq_ignore_ascii_case("chunked"))
        {
            return Err((501, "unsupported transfer encoding"));
        }
        let mut raw = head.rest.clone();
        let mut chunks = ChunkedDecoder::new(max);
        loop {
            let used = chunks.decode(&raw).map_err(|e| match e.kind() {
                HttpErrorKind::BodyTooLarge => (413, "request body over the relay's message limit"),
                _ => (e.http_status(), e.message()),
            })?;
            raw.drain(..used);
            if chunks.is_done() {
                return Ok(Bytes::from(chunks.into_body()));
            }
            let mut more = [0u8; 16 * 1024];
            let n = tokio::time::timeout_at(deadline, stream.read(&mut more))
                .await
                .map_err(|_| (408, "request body timeout"))?
                .map_err(|_| (400, "request body cut short"))?;
            if n == 0 {
                return Err((400, "request body cut short"));
            }
            raw.extend_from_slice(&more[..n]);
        }
    }
    let len = match head.header("content-length") {
        None => 0,
        Some(v) => v
            .parse::<usize>()
            .map_err(|_| (400, "bad Content-Length"))?,
    };
    if len > max {
        return Err((413, "request body over the relay's message limit"));
    }
    let mut body = head.rest.clone();
    body.truncate(len);
    if body.len() < len {
        let mut more = vec![0u8; len - body.len()];
        tokio::time::timeout_at(deadline, stream.read_exact(&mut more))
            .await
            .map_err(|_| (408, "request body timeout"))?
            .map_err(|_| (400, "request body cut short"))?;
        body.extend_from_slice(&more);
    }
    Ok(Bytes::from(body))
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
    fn ids_are_guid_shaped_and_distinct() {
        let relay = Relay::new();
        let a = relay.new_id();
        let b = relay.new_id();
        assert_ne!(a, b);
        let lens: Vec<usize> = a.split('-').map(str::len).collect();
        assert_eq!(lens, [8, 4, 4, 4, 12], "{a}");
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

    #[test]
    fn listeners_are_capped_per_path_and_removed_on_drop() {
        let relay = Relay::new();
        let first = relay.register("p", "ws://h".into(), 2).unwrap();
        let second = relay.register("p", "ws://h".into(), 2).unwrap();
        assert!(relay.register("p", "ws://h".into(), 2).is_none());
        drop(first);
        let third = relay.register("p", "ws://h".into(), 2).unwrap();
        let sender = RelayAddress::new(Action::Connect, "p/suffix").unwrap();
        assert!(relay.pick(&sender, &[]).is_some());
        drop((second, third));
        assert!(relay.pick(&sender, &[]).is_none());
        assert!(relay.listeners.lock().is_empty());
    }
}
