//! Hybrid Connections clients: a listener ([`HcListener`]) that keeps a control channel open and
//! receives WebSocket senders and HTTP requests, and a sender ([`HcSender`]) that connects to a
//! listener or sends it an HTTP request. They speak the Azure Relay Hybrid Connections protocol
//! (`docs/protocol.md` §1–§2), so they work with the interrole relay (`ws://`, `wss://`) and with
//! Azure Relay (`sb://{namespace}.servicebus.windows.net` and a shared access key).
//!
//! ```no_run
//! use interrole_relay::client::hc::{HcListener, HcSender, Incoming};
//! use interrole_relay::client::{Credentials, Relay};
//! use interrole_relay::control::Headers;
//!
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! let relay = Relay::connect_to("ws://127.0.0.1:9400", Credentials::key("root", "s3cret"))?;
//! let listener = HcListener::bind(relay.clone(), "hyco").await?;
//! tokio::spawn(async move {
//!     // `accept` fails once the listener is closed or its credentials are refused.
//!     while let Ok(incoming) = listener.accept().await {
//!         match incoming {
//!             Incoming::Connection(c) if c.path() == "hyco" => {
//!                 let _ws = c.accept().await; // a WebSocket to the sender
//!             }
//!             Incoming::Connection(c) => {
//!                 let _ = c.reject(404, "no such room").await;
//!             }
//!             Incoming::Request(r) => {
//!                 let _ = r.respond(200, Headers::new(), "hello").await;
//!             }
//!         }
//!     }
//! });
//!
//! let sender = HcSender::new(relay, "hyco");
//! let response = sender.request("GET", "/greeting?lang=en", &Headers::new(), "").await?;
//! assert_eq!((response.status, &response.body[..]), (200, &b"hello"[..]));
//! let _ws = sender.connect().await?;
//! # Ok(()) }
//! ```
//!
//! ## The control channel
//!
//! [`HcListener::bind`] opens the control channel (`sb-hc-action=listen`) and fails with that
//! first attempt's error. From then on a task owns the channel: it turns `accept` and `request`
//! control messages into [`Incoming`] items, sends `response` messages, pings the relay every
//! [`PING_INTERVAL`] and declares the channel lost when nothing (not even a pong) was heard for
//! three intervals. Items wait in a bounded queue (256); when it is full, a sender is rejected
//! with 503 and a request answered 503, so that a slow application never stalls the channel.
//!
//! ## Reconnecting
//!
//! A lost channel (a network error, a close from the relay, the keep-alive timeout, a relay
//! restart; Azure Relay drops every listener once a day) is re-opened after
//! the delays of a [`RetryPolicy`] (by default 0, 1, 2, 5, 10, 30 s, then every 30 s, as the
//! official clients do; [`HcListener::bind_with_retry`] sets another); the delays start over once
//! a channel has stayed up for 10 s, and a policy whose budget runs out ends the listener. Meanwhile
//! [`HcListener::status`] is [`ListenerStatus::Reconnecting`] with the last error, and the
//! pending [`HcListener::accept`] keeps waiting. A handshake refused for good ends the listener:
//! 401 (bad or expired credentials), 403 (no Listen right; but 403
//! `MaximumListenersPerEndpoint`, a quota, is retried), 404 (no such hybrid connection) and other
//! 4xx answers. [`HcListener::accept`] then returns that error, once the items already queued
//! have been taken, and the status is [`ListenerStatus::Closed`] with it.
//!
//! ## Tokens
//!
//! With [`Credentials::Key`](super::Credentials::Key) every connection carries a fresh token, and the listener sends a
//! `renewToken` on its control channel when 80 % of the token's lifetime has passed, so the
//! relay never closes the channel for an expired token. A fixed [`Credentials::Token`](super::Credentials::Token) is not
//! renewed: when it expires the relay closes the channel (1008), re-opening it is refused with
//! 401, and the listener ends.
//!
//! ## HTTP
//!
//! [`HcSender::request`] sends a plain HTTP/1.1 request (`https://host/{path}..`, or `http` for
//! a `ws://` relay) with the token in the `ServiceBusAuthorization` header; the relay hands it
//! to a listener. A listener receives small requests inline on the control channel (with the
//! body in the following binary message) and fetches those over 64 KiB from the request's
//! rendezvous address; [`HcRequest::respond`] answers on the control channel, or on the
//! rendezvous when the request came through one or the response body is over 64 KiB. Bodies are
//! buffered whole, not streamed.
//!
//! ## Cancel safety
//!
//! [`HcListener::bind`], [`HcListener::bind_with_retry`] and [`HcListener::accept`] are cancel
//! safe. [`HcListener::close`] still closes when its future is dropped, but a second call does
//! not wait. The calls that answer a peer or reach one are not: a dropped
//! [`HcConnection::accept`], [`HcConnection::reject`] or [`HcRequest::respond`] loses its
//! answer and cannot be repeated, and the relay still offers a dropped [`HcSender::connect`] to
//! a listener and delivers a dropped [`HcSender::request`] once it has it whole. Each method's
//! `# Cancel safety` section says exactly what happens. (Their own timeouts end them the same
//! way, with an error that says so.)

use std::collections::VecDeque;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::{SinkExt, StreamExt};
use interrole_core::{RetryPolicy, TransportError, TransportErrorKind};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::{self, Message};

use super::clock::sleep_until;
use super::dial::{self, DialError, Io, Ws};
use super::relay::{Relay, transport_error};
use super::settings::Endpoint;
use crate::control::{
    self, ControlMessage, DEFAULT_MAX_CONTROL_LEN, Headers, RemoteEndpoint, RenewToken,
};
use crate::http::{self, HttpErrorKind};
use crate::url::{Action, RelayAddress, UrlLimits};

/// How often a listener pings the relay on its control channel. A channel from which nothing
/// was heard for three intervals is declared lost.
pub const PING_INTERVAL: Duration = Duration::from_secs(20);

/// A channel up this long starts the reconnect delays over.
const STABLE_AFTER: Duration = Duration::from_secs(10);

/// How long a sender's connect may wait for the listener's decision (Azure Relay gives up after
/// 70 s; the listener has about 20 s).
const CONNECT_WAIT: Duration = Duration::from_secs(70);

/// The default timeout of an HTTP request: a little over the relay's 60 s gateway timeout.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(70);

/// Bodies and control messages above this travel over a rendezvous.
const MAX_INLINE: usize = 64 * 1024;

/// How many incoming items wait for [`HcListener::accept`].
const INCOMING_QUEUE: usize = 256;

/// How long a closing handshake, or fetching a request from its rendezvous, may take.
const GRACE: Duration = Duration::from_secs(5);

/// The largest HTTP response head and body [`HcSender::request`] reads.
const MAX_RESPONSE_HEAD: usize = 64 * 1024;
const MAX_RESPONSE_BODY: usize = 64 * 1024 * 1024;

// ---------------------------------------------------------------------------------------------
// Listener

/// The state of a listener's control channel.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum ListenerStatus {
    /// The control channel is open: senders and requests arrive.
    Online,
    /// The control channel was lost and is being re-opened.
    Reconnecting {
        /// Attempts to re-open the channel so far, counted since the last channel that stayed up
        /// 10 s (0 before the first).
        attempts: u32,
        /// Why the channel was lost, or why the last attempt failed.
        error: TransportError,
    },
    /// The listener is finished: closed with [`HcListener::close`] (`None`) or ended by an error
    /// that retrying cannot cure.
    Closed(Option<TransportError>),
}

/// Something that arrived on a listener's control channel.
#[derive(Debug)]
pub enum Incoming {
    /// A WebSocket sender wants a connection: accept or reject it within about 20 s.
    Connection(HcConnection),
    /// An HTTP request: respond within the relay's request timeout (60 s).
    Request(HcRequest),
}

/// What the listener task and the items it hands out share.
struct Shared {
    relay: Relay,
    path: String,
    status: watch::Sender<ListenerStatus>,
    /// [`PING_INTERVAL`], shorter in tests.
    ping_interval: Duration,
    retry: RetryPolicy,
}

/// A message for the control channel, from a responder.
struct Outgoing {
    /// The channel the request arrived on; a response for an earlier channel is dropped.
    generation: u64,
    messages: Vec<Message>,
    done: oneshot::Sender<Result<(), TransportError>>,
}

/// A Hybrid Connections listener: a control channel on a path that receives senders and HTTP
/// requests, kept open (token renewal, keep-alive, reconnection) by a task. See the
/// [module docs](self).
///
/// Dropping it closes the control channel without waiting; [`HcListener::close`] waits.
pub struct HcListener {
    shared: Arc<Shared>,
    incoming: tokio::sync::Mutex<mpsc::Receiver<Incoming>>,
    stop: watch::Sender<bool>,
    task: parking_lot::Mutex<Option<tokio::task::JoinHandle<()>>>,
}

impl HcListener {
    /// Opens a control channel (`sb-hc-action=listen`) on `path` (the hybrid connection's name)
    /// and starts the task that keeps it open. Must be called within a tokio runtime.
    ///
    /// # Errors
    /// The first attempt's [`TransportError`]: `Unauthorized` (401), `Forbidden` (403),
    /// `NoListener` (404: no such hybrid connection), `Protocol` for a bad path, a transient
    /// kind when the relay cannot be reached.
    ///
    /// # Cancel safety
    ///
    /// This method is cancel safe. Its only await is opening the control channel; the task that
    /// keeps it is started after that, without awaiting. If the future is dropped, the channel
    /// being opened is closed with it and no listener is left. The relay may have counted it
    /// among the path's listeners until it saw the socket close; a sender offered to it
    /// meanwhile is handed to another listener of the path, a request is answered 502. `bind`
    /// may be called again.
    pub async fn bind(relay: Relay, path: &str) -> Result<Self, TransportError> {
        Self::bind_with_ping(relay, path, PING_INTERVAL, RetryPolicy::default()).await
    }

    /// As [`HcListener::bind`], re-opening a lost control channel on `retry`'s schedule.
    ///
    /// # Errors
    /// As [`HcListener::bind`].
    ///
    /// # Cancel safety
    ///
    /// As [`HcListener::bind`]: cancel safe.
    pub async fn bind_with_retry(
        relay: Relay,
        path: &str,
        retry: RetryPolicy,
    ) -> Result<Self, TransportError> {
        Self::bind_with_ping(relay, path, PING_INTERVAL, retry).await
    }

    async fn bind_with_ping(
        relay: Relay,
        path: &str,
        ping_interval: Duration,
        retry: RetryPolicy,
    ) -> Result<Self, TransportError> {
        let path = path.trim_matches('/').to_owned();
        let (ws, expiry) = open_control(&relay, &path).await?;
        tracing::debug!(endpoint = %relay.endpoint(), path, "listener control channel open");
        let (status, _) = watch::channel(ListenerStatus::Online);
        let shared = Arc::new(Shared {
            relay,
            path,
            status,
            ping_interval,
            retry,
        });
        let (tx, rx) = mpsc::channel(INCOMING_QUEUE);
        let (stop, stop_rx) = watch::channel(false);
        let task = tokio::spawn(run(Arc::clone(&shared), ws, expiry, tx, stop_rx));
        Ok(Self {
            shared,
            incoming: tokio::sync::Mutex::new(rx),
            stop,
            task: parking_lot::Mutex::new(Some(task)),
        })
    }

    /// The next sender or HTTP request. While the control channel is being re-opened this keeps
    /// waiting. Callers on several tasks take turns.
    ///
    /// # Errors
    /// Once every queued item has been taken: the error that ended the listener (see
    /// [`ListenerStatus::Closed`]), or `Closed` after [`HcListener::close`].
    ///
    /// # Cancel safety
    ///
    /// This method is cancel safe. If `accept` is used as the event in a `tokio::select!`
    /// statement and some other branch completes first, it is guaranteed that no sender or
    /// request was taken from the queue: the next `accept` gets it. (Items keep their own
    /// deadlines meanwhile: a sender must be answered within about 20 s of arriving, a request
    /// within the relay's request timeout.)
    pub async fn accept(&self) -> Result<Incoming, TransportError> {
        let next = self.incoming.lock().await.recv().await;
        match next {
            Some(incoming) => Ok(incoming),
            None => Err(match &*self.shared.status.borrow() {
                ListenerStatus::Closed(Some(e)) => e.clone(),
                _ => closed_error(),
            }),
        }
    }

    /// The state of the control channel now.
    pub fn status(&self) -> ListenerStatus {
        self.shared.status.borrow().clone()
    }

    /// A receiver of the control channel's state, to wait for changes (the current state is
    /// marked seen).
    pub fn watch_status(&self) -> watch::Receiver<ListenerStatus> {
        self.shared.status.subscribe()
    }

    /// The relay the listener is on.
    pub fn relay(&self) -> &Relay {
        &self.shared.relay
    }

    /// The path (the hybrid connection's name) listened on.
    pub fn path(&self) -> &str {
        &self.shared.path
    }

    /// Closes the control channel (close code 1000) and waits for the task to finish. Senders
    /// and requests already handed out can still be answered over their rendezvous; inline
    /// requests not yet answered cannot. [`HcListener::accept`] then fails with `Closed`.
    ///
    /// # Cancel safety
    ///
    /// The close starts at the first poll and is not undone by dropping the future: the
    /// listener task still closes the channel (1000) and ends on its own, within a few seconds.
    /// What is lost is the wait for it: the task is handed to the first call, so calling
    /// `close` again after a dropped one returns at once, possibly before the channel is
    /// closed. To wait again, watch [`HcListener::watch_status`] for
    /// [`ListenerStatus::Closed`].
    pub async fn close(&self) {
        self.stop.send_replace(true);
        let task = self.task.lock().take();
        if let Some(task) = task {
            let _ = task.await;
        }
    }
}

impl Drop for HcListener {
    fn drop(&mut self) {
        self.stop.send_replace(true);
    }
}

impl fmt::Debug for HcListener {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HcListener")
            .field("endpoint", self.shared.relay.endpoint())
            .field("path", &self.shared.path)
            .field("status", &*self.shared.status.borrow())
            .finish_non_exhaustive()
    }
}

fn closed_error() -> TransportError {
    TransportError::new(TransportErrorKind::Closed, "the listener was closed")
}

fn lost(message: impl Into<String>) -> TransportError {
    TransportError::new(TransportErrorKind::ConnectionLost, message)
}

fn protocol(message: impl Into<String>) -> TransportError {
    TransportError::new(TransportErrorKind::Protocol, message)
}

fn ws_error(e: tungstenite::Error) -> TransportError {
    lost(format!("WebSocket: {e}")).with_source(e)
}

/// Opens the control channel; returns it and when its token expires.
async fn open_control(relay: &Relay, path: &str) -> Result<(Ws, Option<u64>), TransportError> {
    let (target, expiry) = relay.target(Action::Listen, path, None)?;
    let ws = relay.open_ws(&target, WebSocketConfig::default()).await?;
    Ok((ws, expiry))
}

/// Whether re-opening the control channel after `e` is pointless.
fn gives_up(e: &TransportError) -> bool {
    match e.kind() {
        TransportErrorKind::ConnectionLost
        | TransportErrorKind::Timeout
        | TransportErrorKind::Unavailable => false,
        // A quota (too many listeners on the path) may clear.
        TransportErrorKind::Forbidden => !e.message().contains("MaximumListenersPerEndpoint"),
        _ => true,
    }
}

/// Resolves once the listener is told to stop (or is gone).
async fn stopped(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await;
}

/// When to renew a token that expires at `expiry` (Unix seconds): after 80 % of the time left.
fn renewal(relay: &Relay, expiry: Option<u64>) -> Option<Instant> {
    relay.credentials().renew_at(expiry, 0.8)
}

/// The listener task: serves the control channel and re-opens it until told to stop or refused
/// for good.
async fn run(
    shared: Arc<Shared>,
    ws: Ws,
    expiry: Option<u64>,
    tx: mpsc::Sender<Incoming>,
    mut stop: watch::Receiver<bool>,
) {
    let (out_tx, mut out_rx) = mpsc::channel::<Outgoing>(64);
    let mut channel = Some((ws, expiry));
    let mut attempts: u32 = 0;
    let mut delays = shared.retry.delays();
    let mut last_error: Option<TransportError> = None;
    let mut generation = 0u64;
    let end = loop {
        let (ws, expiry) = match channel.take() {
            Some(c) => c,
            None => {
                let Some(delay) = delays.next() else {
                    let e = last_error.take().unwrap_or_else(|| {
                        TransportError::new(TransportErrorKind::ConnectionLost, "lost")
                    });
                    tracing::warn!(path = shared.path, error = %e, "listener gave up retrying");
                    break Some(TransportError::new(
                        e.kind(),
                        format!("gave up retrying: {e}"),
                    ));
                };
                tokio::select! {
                    () = tokio::time::sleep(delay) => {}
                    () = stopped(&mut stop) => break None,
                }
                let opened = tokio::select! {
                    r = open_control(&shared.relay, &shared.path) => r,
                    () = stopped(&mut stop) => break None,
                };
                attempts = attempts.saturating_add(1);
                match opened {
                    Ok(c) => c,
                    Err(e) if gives_up(&e) => {
                        tracing::warn!(path = shared.path, error = %e, "listener refused for good");
                        break Some(e);
                    }
                    Err(error) => {
                        tracing::debug!(path = shared.path, %error, attempts, "reconnect failed");
                        last_error = Some(error.clone());
                        shared
                            .status
                            .send_replace(ListenerStatus::Reconnecting { attempts, error });
                        continue;
                    }
                }
            }
        };
        generation += 1;
        shared.status.send_if_modified(|s| {
            let changed = !matches!(s, ListenerStatus::Online);
            *s = ListenerStatus::Online;
            changed
        });
        let since = Instant::now();
        let channel_end = serve(
            &shared,
            ws,
            expiry,
            generation,
            &tx,
            &out_tx,
            &mut out_rx,
            &mut stop,
        )
        .await;
        match channel_end {
            None => break None,
            Some(error) => {
                if since.elapsed() >= STABLE_AFTER {
                    attempts = 0;
                    delays = shared.retry.delays();
                }
                last_error = Some(error.clone());
                tracing::info!(path = shared.path, %error, "control channel lost: reconnecting");
                shared
                    .status
                    .send_replace(ListenerStatus::Reconnecting { attempts, error });
            }
        }
    };
    // Responders still waiting learn that their channel is gone.
    out_rx.close();
    while let Ok(out) = out_rx.try_recv() {
        let _ = out.done.send(Err(lost("the control channel is closed")));
    }
    shared.status.send_replace(ListenerStatus::Closed(end));
}

/// Serves one control channel until it is lost (`Some(error)`) or the listener stops (`None`).
#[allow(clippy::too_many_arguments)]
async fn serve(
    shared: &Arc<Shared>,
    ws: Ws,
    expiry: Option<u64>,
    generation: u64,
    tx: &mpsc::Sender<Incoming>,
    out_tx: &mpsc::Sender<Outgoing>,
    out_rx: &mut mpsc::Receiver<Outgoing>,
    stop: &mut watch::Receiver<bool>,
) -> Option<TransportError> {
    let (mut sink, mut source) = ws.split();
    let interval = shared.ping_interval;
    let mut ping = tokio::time::interval_at(Instant::now() + interval, interval);
    ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_heard = Instant::now();
    let mut renew_at = renewal(&shared.relay, expiry);
    // Inline requests whose body is a binary message still to come, oldest first.
    let mut awaiting_body: VecDeque<control::Request> = VecDeque::new();
    let reply = |request: control::Request, body: Bytes| {
        HcRequest::new(
            request,
            body,
            Reply::Control {
                shared: Arc::clone(shared),
                out: out_tx.clone(),
                generation,
            },
        )
    };
    let end = loop {
        tokio::select! {
            () = stopped(stop) => break None,
            _ = ping.tick() => {
                if last_heard.elapsed() >= 3 * interval {
                    break Some(TransportError::new(
                        TransportErrorKind::Timeout,
                        format!("nothing heard from the relay for {:?}", 3 * interval),
                    ));
                }
                if let Err(e) = sink.send(Message::Ping(Bytes::new())).await {
                    break Some(ws_error(e));
                }
            }
            () = sleep_until(renew_at) => {
                renew_at = None;
                let resource = shared.relay.endpoint().resource(&shared.path);
                if let Some((token, expiry)) = shared.relay.credentials().token(&resource) {
                    let renew = ControlMessage::from(RenewToken::new(token)).to_json();
                    if let Err(e) = sink.send(Message::text(renew)).await {
                        break Some(ws_error(e));
                    }
                    tracing::debug!(path = shared.path, "listener token renewed");
                    renew_at = renewal(&shared.relay, expiry);
                }
            }
            Some(out) = out_rx.recv() => {
                if out.generation != generation {
                    let _ = out.done.send(Err(lost(
                        "the control channel the request arrived on is gone",
                    )));
                    continue;
                }
                let mut result = Ok(());
                for m in out.messages {
                    if let Err(e) = sink.feed(m).await {
                        result = Err(ws_error(e));
                        break;
                    }
                }
                if result.is_ok() {
                    result = sink.flush().await.map_err(ws_error);
                }
                let failed = result.as_ref().err().cloned();
                let _ = out.done.send(result);
                if let Some(e) = failed {
                    break Some(e);
                }
            }
            m = source.next() => {
                last_heard = Instant::now();
                let text = match m {
                    None => break Some(lost("the relay closed the control channel")),
                    Some(Err(e)) => break Some(ws_error(e)),
                    Some(Ok(Message::Close(frame))) => {
                        let why = frame.map_or_else(
                            || "without a code".to_owned(),
                            |f| format!("with {} {}", u16::from(f.code), f.reason),
                        );
                        break Some(lost(format!("the relay closed the control channel {why}")));
                    }
                    Some(Ok(Message::Binary(body))) => {
                        if let Some(request) = awaiting_body.pop_front() {
                            deliver(tx, Incoming::Request(reply(request, body)));
                        }
                        continue;
                    }
                    Some(Ok(Message::Text(t))) => t,
                    Some(Ok(_)) => continue,
                };
                match ControlMessage::parse(text.as_str(), DEFAULT_MAX_CONTROL_LEN) {
                    Ok(ControlMessage::Accept(accept)) => {
                        let connection = HcConnection::new(Arc::clone(shared), accept);
                        deliver(tx, Incoming::Connection(connection));
                    }
                    Ok(ControlMessage::Request(request)) if request.method.is_none() => {
                        // Too large to travel inline: the whole request waits at the rendezvous.
                        let shared = Arc::clone(shared);
                        tokio::spawn(fetch_request(shared, request.address, tx.clone()));
                    }
                    Ok(ControlMessage::Request(request)) if request.body == Some(true) => {
                        awaiting_body.push_back(request);
                    }
                    Ok(ControlMessage::Request(request)) => {
                        deliver(tx, Incoming::Request(reply(request, Bytes::new())));
                    }
                    // Only listeners send these.
                    Ok(ControlMessage::Response(_) | ControlMessage::RenewToken(_)) => {}
                    Err(e) if e.is_ignorable() => {}
                    Err(e) => {
                        tracing::debug!(path = shared.path, error = %e, "bad control message");
                    }
                }
            }
        }
    };
    // Close our side: with 1000 when the listener stops, quietly when the channel is lost.
    let _ = tokio::time::timeout(GRACE, async {
        if end.is_none() {
            let close = CloseFrame {
                code: CloseCode::Normal,
                reason: "listener closed".into(),
            };
            let _ = sink.send(Message::Close(Some(close))).await;
            let _ = sink.close().await;
            while let Some(Ok(_)) = source.next().await {}
        } else {
            let _ = sink.close().await;
        }
    })
    .await;
    end
}

/// Queues an item for [`HcListener::accept`]; when the queue is full, turns it away with 503.
fn deliver(tx: &mpsc::Sender<Incoming>, incoming: Incoming) {
    let incoming = match tx.try_send(incoming) {
        Ok(()) => return,
        Err(mpsc::error::TrySendError::Full(i) | mpsc::error::TrySendError::Closed(i)) => i,
    };
    tracing::warn!("listener queue full or listener gone: answering 503");
    tokio::spawn(async move {
        let _ = match incoming {
            Incoming::Connection(c) => c.reject(503, "the listener is busy").await,
            Incoming::Request(r) => r.respond(503, Headers::new(), "the listener is busy").await,
        };
    });
}

/// Opens a request's rendezvous, reads the request there and queues it.
async fn fetch_request(shared: Arc<Shared>, address: String, tx: mpsc::Sender<Incoming>) {
    let fetch = async {
        let mut ws = open_url(
            &shared.relay,
            &address,
            None,
            shared.relay.connect_timeout(),
        )
        .await?;
        let mut request: Option<control::Request> = None;
        let body = loop {
            match ws.next().await {
                Some(Ok(Message::Text(t))) if request.is_none() => {
                    match ControlMessage::parse(t.as_str(), DEFAULT_MAX_CONTROL_LEN) {
                        Ok(ControlMessage::Request(r)) if r.body == Some(true) => request = Some(r),
                        Ok(ControlMessage::Request(r)) => {
                            request = Some(r);
                            break Bytes::new();
                        }
                        Err(e) if !e.is_ignorable() => {
                            return Err(protocol(format!("request rendezvous: {e}")));
                        }
                        _ => {}
                    }
                }
                Some(Ok(Message::Binary(body))) if request.is_some() => break body,
                Some(Ok(Message::Close(_))) | None => {
                    return Err(lost("the relay closed the request rendezvous"));
                }
                Some(Err(e)) => return Err(ws_error(e)),
                Some(Ok(_)) => {}
            }
        };
        let mut request = request.unwrap_or_else(|| control::Request::address_only(&address));
        if request.address.is_empty() {
            request.address.clone_from(&address);
        }
        Ok(HcRequest::new(
            request,
            body,
            Reply::Rendezvous(Box::new(ws)),
        ))
    };
    match tokio::time::timeout(GRACE + shared.relay.connect_timeout(), fetch).await {
        Ok(Ok(request)) => deliver(&tx, Incoming::Request(request)),
        Ok(Err(e)) => tracing::warn!(path = shared.path, error = %e, "fetching a request failed"),
        Err(_) => tracing::warn!(path = shared.path, "fetching a request timed out"),
    }
}

// ---------------------------------------------------------------------------------------------
// Incoming senders

/// A WebSocket sender waiting for the listener: [accept](HcConnection::accept) it (a WebSocket
/// to the sender, spliced through the relay) or [reject](HcConnection::reject) it. Dropping it
/// leaves the sender waiting until the relay gives up (504 after about 20 s).
pub struct HcConnection {
    shared: Arc<Shared>,
    accept: control::Accept,
    path: String,
    query: String,
}

impl HcConnection {
    fn new(shared: Arc<Shared>, accept: control::Accept) -> Self {
        let limits = UrlLimits::default().with_max_target(usize::MAX);
        let (path, query) = RelayAddress::parse(&accept.address, &limits)
            .map(|a| (a.path().to_owned(), a.app_query()))
            .unwrap_or_else(|_| (shared.path.clone(), String::new()));
        Self {
            shared,
            accept,
            path,
            query,
        }
    }

    /// The connection's id: the sender's `sb-hc-id`, or one the relay made up.
    pub fn id(&self) -> &str {
        &self.accept.id
    }

    /// The rendezvous address, as the relay sent it.
    pub fn address(&self) -> &str {
        &self.accept.address
    }

    /// The path the sender connected to, decoded: the listener's path, followed by the sender's
    /// suffix if it gave one (`hyco/room/1`).
    pub fn path(&self) -> &str {
        &self.path
    }

    /// The sender's application query parameters as it sent them (without the relay's `sb-hc-*`
    /// parameters), joined by `&`; empty when there are none.
    pub fn query(&self) -> &str {
        &self.query
    }

    /// The sender's handshake headers, as the relay passed them on (look names up with
    /// [`control::header`]).
    pub fn connect_headers(&self) -> &Headers {
        &self.accept.connect_headers
    }

    /// Where the sender connected from, when the relay says.
    pub fn remote_endpoint(&self) -> Option<&RemoteEndpoint> {
        self.accept.remote_endpoint.as_ref()
    }

    /// Accepts the sender: opens the rendezvous and returns the WebSocket, whose messages the
    /// relay splices to and from the sender's. Chooses the first subprotocol the sender offered
    /// (`Sec-WebSocket-Protocol`), if any.
    ///
    /// # Errors
    /// A [`TransportError`]: `NoListener` (404) when the rendezvous expired or the sender went
    /// away, a transient kind when the relay cannot be reached.
    ///
    /// # Cancel safety
    ///
    /// This method is **not** cancel safe: dropping the future loses the sender, and the call
    /// cannot be repeated (`self` was moved into it, and the rendezvous address is single
    /// use). If the rendezvous handshake had not reached the relay, the sender waits until the
    /// relay gives up on the listener (504 after about 20 s). If it had, the relay answers the
    /// sender 101 and its WebSocket is closed at once (1001 or 1011), as the listener's side is
    /// gone.
    pub async fn accept(self) -> Result<Ws, TransportError> {
        let offered = control::header(&self.accept.connect_headers, "Sec-WebSocket-Protocol")
            .and_then(|p| p.split(',').map(str::trim).find(|p| !p.is_empty()))
            .map(str::to_owned);
        self.accept_with_protocol(offered.as_deref()).await
    }

    /// Accepts the sender with this subprotocol (one the sender offered), or none.
    ///
    /// # Errors
    /// As [`HcConnection::accept`].
    ///
    /// # Cancel safety
    ///
    /// Not cancel safe, as [`HcConnection::accept`]: a dropped call loses the sender.
    pub async fn accept_with_protocol(self, protocol: Option<&str>) -> Result<Ws, TransportError> {
        let relay = &self.shared.relay;
        open_url(
            relay,
            &self.accept.address,
            protocol,
            relay.connect_timeout(),
        )
        .await
    }

    /// Rejects the sender: its handshake fails with `status` (100 to 599) and `description`.
    ///
    /// # Errors
    /// `Protocol` for a status outside 100 to 599; as [`HcConnection::accept`] when the relay
    /// cannot be told.
    ///
    /// # Cancel safety
    ///
    /// This method is **not** cancel safe, and cannot be repeated (`self` was moved into it). If
    /// the future is dropped before the reject handshake reached the relay, the sender is not
    /// told `status`: it waits until the relay gives up on the listener (504 after about
    /// 20 s). If the handshake had reached the relay, the rejection stands; only the closing
    /// of the reject connection is cut short.
    pub async fn reject(self, status: u16, description: &str) -> Result<(), TransportError> {
        if !(100..=599).contains(&status) {
            return Err(protocol(format!("reject status {status}: use 100 to 599")));
        }
        let url = crate::url::reject_address(&self.accept.address, status, description);
        let relay = &self.shared.relay;
        match handshake(relay, &url, None, relay.connect_timeout()).await? {
            // The relay answers a reject 410 Gone.
            Err(DialError::Refused { status, .. })
                if status == 410 || (200..300).contains(&status) =>
            {
                Ok(())
            }
            Err(e) => Err(transport_error(e)),
            Ok(mut ws) => {
                let _ = tokio::time::timeout(GRACE, ws.close(None)).await;
                Ok(())
            }
        }
    }
}

impl fmt::Debug for HcConnection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HcConnection")
            .field("id", &self.accept.id)
            .field("path", &self.path)
            .field("query", &self.query)
            .field("remote_endpoint", &self.accept.remote_endpoint)
            .finish_non_exhaustive()
    }
}

// ---------------------------------------------------------------------------------------------
// Incoming HTTP requests

/// Where a response goes.
enum Reply {
    /// The control channel (or, for a large response, the request's rendezvous).
    Control {
        shared: Arc<Shared>,
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
    fn new(request: control::Request, body: Bytes, reply: Reply) -> Self {
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
    /// `Protocol` for a status outside 100 to 599; `ConnectionLost` when the channel the request
    /// came on is gone (the relay has answered the sender 502 then); as
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
    pub async fn respond(
        self,
        status: u16,
        headers: Headers,
        body: impl Into<Bytes>,
    ) -> Result<(), TransportError> {
        if !(100..=599).contains(&status) {
            return Err(protocol(format!(
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
            Reply::Control { shared, .. } if large => {
                let relay = &shared.relay;
                let ws = open_url(relay, &self.address, None, relay.connect_timeout()).await?;
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
                    .map_err(|_| lost("the control channel is closed"))?;
                result
                    .await
                    .unwrap_or_else(|_| Err(lost("the control channel is closed")))
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
async fn respond_on(mut ws: Ws, messages: Vec<Message>) -> Result<(), TransportError> {
    for m in messages {
        ws.feed(m).await.map_err(ws_error)?;
    }
    ws.flush().await.map_err(ws_error)?;
    let _ = tokio::time::timeout(GRACE, async {
        let _ = ws.close(None).await;
        while let Some(Ok(_)) = ws.next().await {}
    })
    .await;
    Ok(())
}

/// The reason phrase of common statuses.
fn reason_phrase(status: u16) -> Option<&'static str> {
    Some(match status {
        200 => "OK",
        201 => "Created",
        202 => "Accepted",
        204 => "No Content",
        301 => "Moved Permanently",
        302 => "Found",
        304 => "Not Modified",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        409 => "Conflict",
        413 => "Payload Too Large",
        429 => "Too Many Requests",
        500 => "Internal Server Error",
        501 => "Not Implemented",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        _ => return None,
    })
}

// ---------------------------------------------------------------------------------------------
// Connections to any host

/// The endpoint an absolute `ws[s]://host[:port]/..` URL names (a rendezvous address may name
/// another host than the relay's endpoint).
fn url_endpoint(url: &str) -> Result<Endpoint, TransportError> {
    let (scheme, rest) = url
        .split_once("://")
        .ok_or_else(|| protocol(format!("`{url}` is not an absolute URL")))?;
    let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
    Endpoint::parse(&format!("{scheme}://{authority}"))
        .map_err(|e| protocol(format!("address `{url}`: {e}")))
}

/// A TCP connection to `endpoint`, with TLS when it is secure.
async fn open_stream(relay: &Relay, endpoint: &Endpoint) -> Result<Box<dyn Io>, TransportError> {
    dial::open_stream(endpoint, &relay.tls())
        .await
        .map_err(transport_error)
}

/// A WebSocket handshake to an absolute URL, offering `protocol`: the TCP and TLS handshakes
/// within the relay's connect timeout, the WebSocket handshake within `wait`. The outer error is
/// a failure to get an answer; the inner one the handshake's.
async fn handshake(
    relay: &Relay,
    url: &str,
    protocol_offer: Option<&str>,
    wait: Duration,
) -> Result<Result<Ws, DialError>, TransportError> {
    let endpoint = url_endpoint(url)?;
    let mut request = url
        .into_client_request()
        .map_err(|e| protocol(format!("URL `{url}`: {e}")))?;
    if let Some(p) = protocol_offer {
        let value = p
            .parse()
            .map_err(|_| protocol(format!("subprotocol {p:?}")))?;
        request
            .headers_mut()
            .insert("Sec-WebSocket-Protocol", value);
    }
    let stream = tokio::time::timeout(relay.connect_timeout(), open_stream(relay, &endpoint))
        .await
        .map_err(|_| {
            TransportError::new(
                TransportErrorKind::Timeout,
                format!(
                    "connecting to {endpoint} took over {:?}",
                    relay.connect_timeout()
                ),
            )
        })??;
    let config = WebSocketConfig::default();
    match tokio::time::timeout(wait, dial::ws_handshake(request, stream, config)).await {
        Ok(r) => Ok(r),
        Err(_) => Err(TransportError::new(
            TransportErrorKind::Timeout,
            format!("the WebSocket handshake with {endpoint} took over {wait:?}"),
        )),
    }
}

/// Opens a WebSocket to an absolute URL (see [`handshake`]).
async fn open_url(
    relay: &Relay,
    url: &str,
    protocol_offer: Option<&str>,
    wait: Duration,
) -> Result<Ws, TransportError> {
    handshake(relay, url, protocol_offer, wait)
        .await?
        .map_err(transport_error)
}

// ---------------------------------------------------------------------------------------------
// Sender

/// A Hybrid Connections sender on a path: opens WebSocket connections to a listener
/// ([`HcSender::connect`]) or sends it HTTP requests ([`HcSender::request`]). Cheap to clone;
/// every call is a new connection with a fresh token.
#[derive(Debug, Clone)]
pub struct HcSender {
    relay: Relay,
    path: String,
    request_timeout: Duration,
}

/// An HTTP response to [`HcSender::request`].
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct HcResponse {
    /// The HTTP status.
    pub status: u16,
    /// The response headers, names as received; repeated headers joined with `, `. Look names
    /// up with [`control::header`].
    pub headers: Headers,
    /// The body, de-chunked.
    pub body: Bytes,
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
    /// `NoListener` (404) when nobody listens; `Unauthorized` (401) and `Forbidden` (403) for
    /// refused credentials; when the listener rejects, the kind of its status (`Protocol` for
    /// most), with the message `the relay answered {status}: {description}`; a transient kind
    /// when the relay cannot be reached or the listener does not answer (504).
    ///
    /// # Cancel safety
    ///
    /// Nothing is left on this side when the future is dropped, and `connect` may be called
    /// again at once (each call is a new connection with a new id). But the relay does not
    /// watch a sender while it waits for a listener: once the handshake request has reached
    /// it, a dropped `connect` is still offered to a listener, which may accept it and gets a
    /// WebSocket that the relay closes at once (or a 410 on the rendezvous).
    pub async fn connect(&self) -> Result<Ws, TransportError> {
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
    /// same id meanwhile is refused 400 (`Protocol`, which a retry policy does not retry).
    pub async fn connect_with_id(&self, id: &str) -> Result<Ws, TransportError> {
        self.connect_as(Some(id)).await
    }

    async fn connect_as(&self, id: Option<&str>) -> Result<Ws, TransportError> {
        let (target, _) = self.relay.target(Action::Connect, &self.path, id)?;
        let url = self.relay.endpoint().url(&target);
        open_url(&self.relay, &url, None, CONNECT_WAIT).await
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
    /// `Protocol` for a bad method, target or header; `PayloadTooLarge` for a response over
    /// 64 MiB; `Timeout` when the response is not complete within the request timeout; a
    /// transient kind when the relay cannot be reached or the connection breaks.
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
    ) -> Result<HcResponse, TransportError> {
        let body = body.into();
        let head = self.request_head(method, path_and_query, headers, body.len())?;
        let endpoint = self.relay.endpoint();
        let mut stream = tokio::time::timeout(
            self.relay.connect_timeout(),
            open_stream(&self.relay, endpoint),
        )
        .await
        .map_err(|_| {
            TransportError::new(
                TransportErrorKind::Timeout,
                format!(
                    "connecting to {endpoint} took over {:?}",
                    self.relay.connect_timeout()
                ),
            )
        })??;
        let is_head = method.eq_ignore_ascii_case("HEAD");
        let exchange = async {
            stream.write_all(&head).await.map_err(io_error)?;
            stream.write_all(&body).await.map_err(io_error)?;
            stream.flush().await.map_err(io_error)?;
            read_response(&mut stream, is_head).await
        };
        tokio::time::timeout(self.request_timeout, exchange)
            .await
            .map_err(|_| {
                TransportError::new(
                    TransportErrorKind::Timeout,
                    format!("no complete response within {:?}", self.request_timeout),
                )
            })?
    }

    /// The request line and headers.
    fn request_head(
        &self,
        method: &str,
        path_and_query: &str,
        headers: &Headers,
        body_len: usize,
    ) -> Result<Vec<u8>, TransportError> {
        let is_token = |s: &str| {
            !s.is_empty()
                && s.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
        };
        if !is_token(method) {
            return Err(protocol(format!("HTTP method {method:?}")));
        }
        if !(path_and_query.is_empty()
            || path_and_query.starts_with('/')
            || path_and_query.starts_with('?'))
            || path_and_query
                .chars()
                .any(|c| c == ' ' || c == '#' || c.is_control())
        {
            return Err(protocol(format!(
                "path and query {path_and_query:?}: empty, or starting with / or ?, without spaces"
            )));
        }
        let path = RelayAddress::new(Action::Http, &self.path)
            .map_err(|e| protocol(format!("relay path `{}`: {e}", self.path)))?
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
                return Err(protocol(format!("HTTP header {name:?}")));
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

fn io_error(e: std::io::Error) -> TransportError {
    lost(format!("HTTP: {e}")).with_source(e)
}

/// Reads more bytes into `buf`; `Ok(0)` at the end of the stream.
async fn read_more(stream: &mut Box<dyn Io>, buf: &mut Vec<u8>) -> Result<usize, TransportError> {
    buf.reserve(16 * 1024);
    match stream.read_buf(buf).await {
        Ok(n) => Ok(n),
        // A TLS peer that closes without close_notify.
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => Ok(0),
        Err(e) => Err(io_error(e)),
    }
}

fn cut_short() -> TransportError {
    lost("the connection closed before the response was complete")
}

/// Reads one HTTP/1.1 response (skipping interim 1xx ones): the body by `Content-Length`,
/// chunked, or up to the end of the stream ([`http::ResponseReader`]).
async fn read_response(
    stream: &mut Box<dyn Io>,
    is_head: bool,
) -> Result<HcResponse, TransportError> {
    let mut reader = http::ResponseReader::new(is_head, MAX_RESPONSE_HEAD, MAX_RESPONSE_BODY);
    let mut buf = Vec::with_capacity(16 * 1024);
    let mut end = false;
    loop {
        let read = reader.advance(&mut buf, end).map_err(|e| match e.kind() {
            HttpErrorKind::Incomplete => cut_short(),
            HttpErrorKind::BodyTooLarge => TransportError::new(
                TransportErrorKind::PayloadTooLarge,
                "HTTP response body over 64 MiB",
            ),
            HttpErrorKind::HeadTooLarge => protocol(format!("HTTP response: {e} (over 64 KiB)")),
            _ => protocol(format!("HTTP response: {e}")),
        })?;
        if let Some(response) = read {
            return Ok(HcResponse {
                status: response.status,
                headers: response.headers,
                body: Bytes::from(response.body),
            });
        }
        if end {
            return Err(cut_short());
        }
        end = read_more(stream, &mut buf).await? == 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::client::settings::Credentials;

    #[test]
    fn public_types_are_send_and_sync() {
        fn check<T: Send + Sync + 'static>() {}
        check::<HcListener>();
        check::<HcSender>();
        check::<HcResponse>();
        check::<ListenerStatus>();
        fn send<T: Send + 'static>() {}
        send::<Incoming>();
    }

    /// A relay that completes the control channel's handshake, then neither reads nor writes.
    #[tokio::test]
    async fn a_silent_relay_is_declared_lost() {
        let tcp = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = tcp.local_addr().unwrap();
        let silent = tokio::spawn(async move {
            let (stream, _) = tcp.accept().await.unwrap();
            let ws = tokio_tungstenite::accept_async(stream).await.unwrap();
            // Hold the connection without polling it: pings go unanswered.
            tokio::time::sleep(Duration::from_secs(30)).await;
            drop((ws, tcp));
        });
        let relay = Relay::connect_to(&format!("ws://{addr}"), Credentials::None).unwrap();
        let interval = Duration::from_millis(100);
        let listener = HcListener::bind_with_ping(relay, "hyco", interval, RetryPolicy::default())
            .await
            .unwrap();
        let mut status = listener.watch_status();
        let lost = tokio::time::timeout(Duration::from_secs(10), async {
            let s = status
                .wait_for(|s| matches!(s, ListenerStatus::Reconnecting { .. }))
                .await
                .unwrap();
            s.clone()
        })
        .await
        .expect("the silent relay was not noticed");
        let ListenerStatus::Reconnecting { error, .. } = lost else {
            unreachable!()
        };
        assert_eq!(error.kind(), TransportErrorKind::Timeout, "{error}");
        listener.close().await;
        assert!(matches!(listener.status(), ListenerStatus::Closed(None)));
        silent.abort();
    }

    #[test]
    fn only_lasting_refusals_end_a_listener() {
        let e = |k, m: &str| TransportError::new(k, m);
        assert!(!gives_up(&e(TransportErrorKind::ConnectionLost, "")));
        assert!(!gives_up(&e(TransportErrorKind::Unavailable, "503")));
        assert!(!gives_up(&e(TransportErrorKind::Timeout, "")));
        assert!(gives_up(&e(TransportErrorKind::Unauthorized, "401")));
        assert!(gives_up(&e(TransportErrorKind::Forbidden, "403")));
        assert!(gives_up(&e(TransportErrorKind::NoListener, "404")));
        assert!(!gives_up(&e(
            TransportErrorKind::Forbidden,
            "the relay answered 403: MaximumListenersPerEndpoint: at most 25"
        )));
    }

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

    #[test]
    fn renewal_comes_at_four_fifths_of_the_lifetime_for_keys_only() {
        let key = Relay::connect_to("ws://h:1", Credentials::key("n", "k")).unwrap();
        let at = renewal(&key, Some(crate::client::clock::unix_now() + 100)).unwrap();
        let after = at - Instant::now();
        assert!(
            after > Duration::from_secs(70) && after <= Duration::from_secs(80),
            "{after:?}"
        );
        assert!(renewal(&key, None).is_none());
        let token = Relay::connect_to("ws://h:1", Credentials::Token("t".into())).unwrap();
        assert!(renewal(&token, Some(u64::MAX / 2)).is_none());
    }
}
