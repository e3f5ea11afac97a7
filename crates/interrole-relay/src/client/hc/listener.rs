//! The listener: [`HcListener`] and the task that keeps its control channel open, turns control
//! messages into [`Incoming`] senders and requests, sends responses, renews the token and
//! re-opens a lost channel.

use std::collections::VecDeque;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::{SinkExt, StreamExt};
use interrole_core::RetryPolicy;
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, WebSocketConfig};

use super::connection::HcConnection;
use super::error::{Chain, HcError, Opening};
use super::open::{GRACE, open_url};
use super::request::{HcRequest, Outgoing, Reply};
use crate::client::clock::sleep_until;
use crate::client::dial::Ws;
use crate::client::relay::Relay;
use crate::control::{self, ControlMessage, DEFAULT_MAX_CONTROL_LEN, Headers, RenewToken};
use crate::url::Action;

/// How often a listener pings the relay on its control channel. A channel from which nothing
/// was heard for three intervals is declared lost.
pub const PING_INTERVAL: Duration = Duration::from_secs(20);

/// A channel up this long starts the reconnect delays over.
const STABLE_AFTER: Duration = Duration::from_secs(10);

/// A token signed here is renewed once this fraction of its lifetime has passed.
const RENEW_AFTER: f64 = 0.8;

/// How many incoming items wait for [`HcListener::accept`].
const INCOMING_QUEUE: usize = 256;

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
        error: HcError,
    },
    /// The listener is finished: closed with [`HcListener::close`] (`None`) or ended by an error
    /// that retrying cannot cure.
    Closed(Option<HcError>),
}

/// Something that arrived on a listener's control channel.
#[derive(Debug)]
pub enum Incoming {
    /// A WebSocket sender wants a connection: accept or reject it within about 20 s.
    Connection(HcConnection),
    /// An HTTP request: respond within the relay's request timeout (60 s).
    Request(HcRequest),
}

/// The listener's settings and state, shared by its handle and its task.
struct ListenerCore {
    /// The relay, shared with the senders and requests the listener hands out.
    relay: Arc<Relay>,
    path: String,
    status: watch::Sender<ListenerStatus>,
    /// [`PING_INTERVAL`], shorter in tests.
    ping_interval: Duration,
    retry: RetryPolicy,
}

/// A Hybrid Connections listener: a control channel on a path that receives senders and HTTP
/// requests, kept open (token renewal, keep-alive, reconnection) by a task. See the
/// [module docs](super).
///
/// Dropping it closes the control channel without waiting; [`HcListener::close`] waits.
pub struct HcListener {
    core: Arc<ListenerCore>,
    incoming: tokio::sync::Mutex<mpsc::Receiver<Incoming>>,
    stop: watch::Sender<bool>,
    task: parking_lot::Mutex<Option<tokio::task::JoinHandle<()>>>,
}

impl HcListener {
    /// Opens a control channel (`sb-hc-action=listen`) on `path` (the hybrid connection's name)
    /// and starts the task that keeps it open. Must be called within a tokio runtime.
    ///
    /// # Errors
    /// The first attempt's [`HcError`]: `Unauthorized` (401), `Forbidden` (403), `NotFound`
    /// (404: no such hybrid connection), `ListenerLimit` (403 `MaximumListenersPerEndpoint`),
    /// `Protocol` for a bad path or a certificate that does not verify, a transient kind when
    /// the relay cannot be reached.
    ///
    /// # Cancel safety
    ///
    /// This method is cancel safe. Its only await is opening the control channel; the task that
    /// keeps it is started after that, without awaiting. If the future is dropped, the channel
    /// being opened is closed with it and no listener is left. The relay may have counted it
    /// among the path's listeners until it saw the socket close; a sender offered to it
    /// meanwhile is handed to another listener of the path, a request is answered 502. `bind`
    /// may be called again.
    pub async fn bind(relay: Relay, path: &str) -> Result<Self, HcError> {
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
    ) -> Result<Self, HcError> {
        Self::bind_with_ping(relay, path, PING_INTERVAL, retry).await
    }

    async fn bind_with_ping(
        relay: Relay,
        path: &str,
        ping_interval: Duration,
        retry: RetryPolicy,
    ) -> Result<Self, HcError> {
        let path = path.trim_matches('/').to_owned();
        let (ws, expiry) = open_control(&relay, &path).await?;
        tracing::debug!(endpoint = %relay.endpoint(), path, "listener control channel open");
        let (status, _) = watch::channel(ListenerStatus::Online);
        let core = Arc::new(ListenerCore {
            relay: Arc::new(relay),
            path,
            status,
            ping_interval,
            retry,
        });
        let (tx, rx) = mpsc::channel(INCOMING_QUEUE);
        let (stop, stop_rx) = watch::channel(false);
        let task = tokio::spawn(run(Arc::clone(&core), ws, expiry, tx, stop_rx));
        Ok(Self {
            core,
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
    pub async fn accept(&self) -> Result<Incoming, HcError> {
        let next = self.incoming.lock().await.recv().await;
        match next {
            Some(incoming) => Ok(incoming),
            None => Err(match &*self.core.status.borrow() {
                ListenerStatus::Closed(Some(e)) => e.clone(),
                _ => HcError::closed(),
            }),
        }
    }

    /// The state of the control channel now.
    pub fn status(&self) -> ListenerStatus {
        self.core.status.borrow().clone()
    }

    /// A receiver of the control channel's state, to wait for changes (the current state is
    /// marked seen).
    pub fn watch_status(&self) -> watch::Receiver<ListenerStatus> {
        self.core.status.subscribe()
    }

    /// The relay the listener is on.
    pub fn relay(&self) -> &Relay {
        &self.core.relay
    }

    /// The path (the hybrid connection's name) listened on.
    pub fn path(&self) -> &str {
        &self.core.path
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
            .field("endpoint", self.core.relay.endpoint())
            .field("path", &self.core.path)
            .field("status", &*self.core.status.borrow())
            .finish_non_exhaustive()
    }
}

/// Opens the control channel; returns it and when its token expires.
async fn open_control(relay: &Relay, path: &str) -> Result<(Ws, Option<u64>), HcError> {
    let (target, expiry) = relay
        .address(Action::Listen, path, None)
        .map_err(|e| HcError::bad_path(path, e))?;
    let ws = relay
        .dial_ws(&target, WebSocketConfig::default())
        .await
        .map_err(|e| HcError::dial(e, Opening::ControlChannel))?;
    Ok((ws, expiry))
}

/// Resolves once the listener is told to stop (or is gone).
async fn stopped(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await;
}

/// The listener task: serves the control channel and re-opens it until told to stop or refused
/// for good.
async fn run(
    core: Arc<ListenerCore>,
    ws: Ws,
    expiry: Option<u64>,
    tx: mpsc::Sender<Incoming>,
    mut stop: watch::Receiver<bool>,
) {
    let (out_tx, mut out_rx) = mpsc::channel::<Outgoing>(64);
    let mut channel = Some((ws, expiry));
    let mut attempts: u32 = 0;
    let mut delays = core.retry.delays();
    let mut last_error: Option<HcError> = None;
    let mut generation = 0u64;
    let end = loop {
        let (ws, expiry) = match channel.take() {
            Some(c) => c,
            None => {
                let Some(delay) = delays.next() else {
                    let e = last_error.take().unwrap_or_else(|| HcError::lost("lost"));
                    tracing::warn!(path = core.path, error = %Chain(&e), "listener gave up retrying");
                    break Some(HcError::gave_up(e));
                };
                tokio::select! {
                    () = tokio::time::sleep(delay) => {}
                    () = stopped(&mut stop) => break None,
                }
                let opened = tokio::select! {
                    r = open_control(&core.relay, &core.path) => r,
                    () = stopped(&mut stop) => break None,
                };
                attempts = attempts.saturating_add(1);
                match opened {
                    Ok(c) => c,
                    Err(e) if !e.is_transient() => {
                        tracing::warn!(path = core.path, error = %Chain(&e), "listener refused for good");
                        break Some(e);
                    }
                    Err(error) => {
                        tracing::debug!(path = core.path, error = %Chain(&error), attempts, "reconnect failed");
                        last_error = Some(error.clone());
                        core.status
                            .send_replace(ListenerStatus::Reconnecting { attempts, error });
                        continue;
                    }
                }
            }
        };
        generation += 1;
        core.status.send_if_modified(|s| {
            let changed = !matches!(s, ListenerStatus::Online);
            *s = ListenerStatus::Online;
            changed
        });
        let since = Instant::now();
        let channel_end = serve(
            &core,
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
                    delays = core.retry.delays();
                }
                last_error = Some(error.clone());
                tracing::info!(path = core.path, error = %Chain(&error), "control channel lost: reconnecting");
                core.status
                    .send_replace(ListenerStatus::Reconnecting { attempts, error });
            }
        }
    };
    // Responders still waiting learn that their channel is gone.
    out_rx.close();
    while let Ok(out) = out_rx.try_recv() {
        let _ = out
            .done
            .send(Err(HcError::lost("the control channel is closed")));
    }
    core.status.send_replace(ListenerStatus::Closed(end));
}

/// Serves one control channel until it is lost (`Some(error)`) or the listener stops (`None`).
#[allow(clippy::too_many_arguments)]
async fn serve(
    core: &Arc<ListenerCore>,
    ws: Ws,
    expiry: Option<u64>,
    generation: u64,
    tx: &mpsc::Sender<Incoming>,
    out_tx: &mpsc::Sender<Outgoing>,
    out_rx: &mut mpsc::Receiver<Outgoing>,
    stop: &mut watch::Receiver<bool>,
) -> Option<HcError> {
    let (mut sink, mut source) = ws.split();
    let interval = core.ping_interval;
    let mut ping = tokio::time::interval_at(Instant::now() + interval, interval);
    ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_heard = Instant::now();
    let mut renew_at = core.relay.credentials().renew_at(expiry, RENEW_AFTER);
    // Inline requests whose body is a binary message still to come, oldest first.
    let mut awaiting_body: VecDeque<control::Request> = VecDeque::new();
    let reply = |request: control::Request, body: Bytes| {
        HcRequest::new(
            request,
            body,
            Reply::Control {
                relay: Arc::clone(&core.relay),
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
                    break Some(HcError::timeout(format!(
                        "nothing heard from the relay for {:?}",
                        3 * interval
                    )));
                }
                if let Err(e) = sink.send(Message::Ping(Bytes::new())).await {
                    break Some(HcError::websocket(e));
                }
            }
            () = sleep_until(renew_at) => {
                renew_at = None;
                let resource = core.relay.endpoint().resource(&core.path);
                if let Some((token, expiry)) = core.relay.credentials().token(&resource) {
                    let renew = ControlMessage::from(RenewToken::new(token)).to_json();
                    if let Err(e) = sink.send(Message::text(renew)).await {
                        break Some(HcError::websocket(e));
                    }
                    tracing::debug!(path = core.path, "listener token renewed");
                    renew_at = core.relay.credentials().renew_at(expiry, RENEW_AFTER);
                }
            }
            Some(out) = out_rx.recv() => {
                if out.generation != generation {
                    let _ = out.done.send(Err(HcError::lost(
                        "the control channel the request arrived on is gone",
                    )));
                    continue;
                }
                let mut result = Ok(());
                for m in out.messages {
                    if let Err(e) = sink.feed(m).await {
                        result = Err(HcError::websocket(e));
                        break;
                    }
                }
                if result.is_ok() {
                    result = sink.flush().await.map_err(HcError::websocket);
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
                    None => break Some(HcError::lost("the relay closed the control channel")),
                    Some(Err(e)) => break Some(HcError::websocket(e)),
                    Some(Ok(Message::Close(frame))) => {
                        let why = frame.map_or_else(
                            || "without a code".to_owned(),
                            |f| format!("with {} {}", u16::from(f.code), f.reason),
                        );
                        break Some(HcError::lost(format!("the relay closed the control channel {why}")));
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
                        let connection = HcConnection::new(Arc::clone(&core.relay), &core.path, accept);
                        deliver(tx, Incoming::Connection(connection));
                    }
                    Ok(ControlMessage::Request(request)) if request.method.is_none() => {
                        // Too large to travel inline: the whole request waits at the rendezvous.
                        let core = Arc::clone(core);
                        tokio::spawn(fetch_request(core, request.address, tx.clone()));
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
                        tracing::debug!(path = core.path, error = %e, "bad control message");
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
async fn fetch_request(core: Arc<ListenerCore>, address: String, tx: mpsc::Sender<Incoming>) {
    let fetch = async {
        let wait = core.relay.connect_timeout();
        let mut ws = open_url(&core.relay, &address, None, wait, Opening::Rendezvous).await?;
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
                            return Err(HcError::protocol(format!("request rendezvous: {e}")));
                        }
                        _ => {}
                    }
                }
                Some(Ok(Message::Binary(body))) if request.is_some() => break body,
                Some(Ok(Message::Close(_))) | None => {
                    return Err(HcError::lost("the relay closed the request rendezvous"));
                }
                Some(Err(e)) => return Err(HcError::websocket(e)),
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
    match tokio::time::timeout(GRACE + core.relay.connect_timeout(), fetch).await {
        Ok(Ok(request)) => deliver(&tx, Incoming::Request(request)),
        Ok(Err(e)) => {
            tracing::warn!(path = core.path, error = %Chain(&e), "fetching a request failed");
        }
        Err(_) => tracing::warn!(path = core.path, "fetching a request timed out"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::client::hc::error::HcErrorKind;
    use crate::client::settings::Credentials;

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
        assert_eq!(error.kind(), HcErrorKind::Timeout, "{error}");
        listener.close().await;
        assert!(matches!(listener.status(), ListenerStatus::Closed(None)));
        silent.abort();
    }
}
