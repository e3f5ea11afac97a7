//! The multicast transport: a bus instance's publisher and subscriber connections to a relay.
//!
//! [`RelayTransport::open`] makes one attempt: it opens the publisher connection
//! (`sb-hc-action=publish`) and the subscriber connection (`sb-hc-action=subscribe`, which sends
//! its RESUME at once) for the instance on the topic's path, and returns once the relay has
//! answered the RESUME with READY: from then on, every event published on the path reaches it. Each connection has one task that
//! batches what is queued into as few WebSocket messages as the limits allow, reads what arrives,
//! pings the relay and declares the connection dead when the relay has been silent too long.
//! Reconnecting, re-sending and de-duplicating belong to the bus's reliability layer.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::{Bytes, BytesMut};
use futures::{SinkExt, StreamExt};
use interrole_core::link::LinkState;
use interrole_core::{
    Connection, Inbound, InstanceId, InterRoleEvent, OpenSpec, Transport, TransportError,
    TransportErrorKind, TransportLimits,
};
use parking_lot::Mutex;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode as WsCloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, WebSocketConfig};

use super::clock::sleep_until;
use super::dial::Ws;
use super::relay::Relay;
use crate::frame::{
    self, CloseCode, DEFAULT_MAX_ENVELOPE, Frame, FrameLimits, MessageReader, start_message,
};
use crate::url::Action;

/// Tuning of the multicast transport.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct RelayOptions {
    /// How often to ping the relay. Default 2 s.
    pub keepalive: Duration,
    /// How long the relay may stay silent (not even a pong) before the connection is declared
    /// lost. Default 6 s: a dead relay or network is found within seconds.
    pub dead_after: Duration,
    /// The largest envelope to send; larger ones fail at once with `PayloadTooLarge`. Default
    /// 1 MiB, the relay's default.
    pub max_envelope: usize,
    /// The largest message to batch frames into. Default 256 KiB.
    pub max_batch: usize,
}

impl Default for RelayOptions {
    fn default() -> Self {
        Self {
            keepalive: Duration::from_secs(2),
            dead_after: Duration::from_secs(6),
            max_envelope: DEFAULT_MAX_ENVELOPE,
            max_batch: 256 * 1024,
        }
    }
}

/// The relay transport: carries a bus over an interrole relay's multicast paths (the topic is
/// the path).
///
/// ```no_run
/// use interrole_relay::client::{Credentials, Relay, RelayTransport};
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let relay = Relay::connect_to("ws://127.0.0.1:9400", Credentials::parse_key("root=s3cret")?)?;
/// let transport = RelayTransport::new(relay);
/// # let _ = transport; Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct RelayTransport {
    relay: Relay,
    options: RelayOptions,
}

impl RelayTransport {
    /// A transport to `relay` with default options.
    pub fn new(relay: Relay) -> Self {
        Self::with_options(relay, RelayOptions::default())
    }

    /// A transport to `relay` with `options`.
    pub fn with_options(relay: Relay, options: RelayOptions) -> Self {
        Self { relay, options }
    }

    /// The relay.
    pub fn relay(&self) -> &Relay {
        &self.relay
    }
}

fn ws_config() -> WebSocketConfig {
    let limits = FrameLimits::default();
    WebSocketConfig::default()
        .max_message_size(Some(limits.max_message))
        .max_frame_size(Some(limits.max_message))
        .read_buffer_size(16 * 1024)
}

#[async_trait]
impl Transport for RelayTransport {
    fn name(&self) -> &'static str {
        "relay"
    }

    fn limits(&self) -> TransportLimits {
        TransportLimits::with_max_envelope(Some(self.options.max_envelope))
    }

    async fn open(
        &self,
        spec: OpenSpec,
        inbound: Arc<dyn Inbound>,
    ) -> Result<Arc<dyn Connection>, TransportError> {
        let path = spec.topic.as_str();
        let id = spec.instance.as_str();
        let (pub_target, expiry) = self.relay.target(Action::Publish, path, Some(id))?;
        let (sub_target, _) = self.relay.target(Action::Subscribe, path, Some(id))?;
        // Tokens signed here are renewed before they expire: the connection ends (transient)
        // at 90 % of the token's life and the reliable host reconnects at once with a fresh
        // token, resuming where it was. A token given as is cannot be renewed.
        let renew_at = self.relay.credentials().renew_at(expiry, 0.9);
        let (publisher, mut subscriber) = tokio::try_join!(
            self.relay.open_ws(&pub_target, ws_config()),
            self.relay.open_ws(&sub_target, ws_config()),
        )?;
        let mut positions = spec.resume;
        // (Publishing needs no confirmation: the relay registers a publisher at the handshake.)
        positions.truncate(FrameLimits::default().max_resume_entries);
        let (tx, rx) = mpsc::unbounded_channel();
        let (stop_tx, stop_rx) = watch::channel(false);
        let link = Arc::new(ConnectionLink {
            state: LinkState::new(inbound),
            stop: stop_tx,
        });
        // RESUME, answered with READY once the relay has registered the subscriber: from then
        // on, everything published on the path reaches this instance.
        let mut resume = BytesMut::new();
        start_message(&mut resume);
        frame::encode_resume(&mut resume, spec.rejoin, &positions);
        let ready = async {
            subscriber
                .send(Message::Binary(resume.freeze()))
                .await
                .map_err(|e| lost(format!("sending RESUME: {e}")))?;
            let limits = FrameLimits::default();
            loop {
                match subscriber.next().await {
                    Some(Ok(Message::Binary(bytes))) => {
                        if handle(&link, &bytes, &limits, false)? == Readiness::Ready {
                            return Ok(());
                        }
                    }
                    Some(Ok(Message::Close(f))) => {
                        return Err(match f {
                            Some(f) => {
                                let code = CloseCode::from_code(f.code.into());
                                TransportError::new(
                                    code.error_kind(),
                                    format!(
                                        "the relay refused the subscription with {}: {}",
                                        code.code(),
                                        f.reason
                                    ),
                                )
                            }
                            None => lost("the relay closed the subscription"),
                        });
                    }
                    Some(Ok(_)) => {}
                    Some(Err(e)) => return Err(lost(format!("subscribing: {e}"))),
                    None => return Err(lost("the relay ended the subscription")),
                }
            }
        };
        match tokio::time::timeout(self.relay.connect_timeout(), ready).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                link.state.end();
                return Err(e);
            }
            Err(_) => {
                link.state.end();
                return Err(TransportError::new(
                    TransportErrorKind::Timeout,
                    "the relay did not confirm the subscription in time",
                ));
            }
        }

        let options = self.options.clone();
        let tasks = vec![
            tokio::spawn(run(
                publisher,
                Role::Publisher(rx),
                link.clone(),
                stop_rx.clone(),
                options.clone(),
                renew_at,
            )),
            tokio::spawn(run(
                subscriber,
                Role::Subscriber,
                link.clone(),
                stop_rx,
                options,
                None,
            )),
        ];
        tracing::debug!(path, instance = id, relay = %self.relay.endpoint(), "relay connection open");
        Ok(Arc::new(RelayConnection {
            instance: spec.instance,
            path: spec.topic.as_str().to_string(),
            link,
            tx,
            tasks: Mutex::new(tasks),
            max_envelope: self.options.max_envelope,
        }))
    }
}

fn lost(message: impl Into<String>) -> TransportError {
    TransportError::new(TransportErrorKind::ConnectionLost, message)
}

/// One relay connection's link state and stop signal, shared by its publisher and subscriber
/// tasks and its handle.
struct ConnectionLink {
    /// Open, ending, frames queued and written (for `flush`), the error that ended it.
    state: LinkState,
    /// Stops both tasks.
    stop: watch::Sender<bool>,
}

impl ConnectionLink {
    /// Ends the connection because of `error`: tells the inbound once, stops both tasks.
    fn fail(&self, error: TransportError) {
        let _ = self.stop.send(true);
        let message = error.to_string();
        if self.state.fail(error) {
            tracing::debug!(error = %message, "relay connection lost");
        }
    }

    fn is_ending(&self) -> bool {
        self.state.is_ending()
    }

    fn inbound(&self) -> &dyn Inbound {
        self.state.inbound()
    }

    /// The owner closes: nothing more is queued or delivered, and both tasks stop.
    fn end(&self) {
        self.state.end();
        let _ = self.stop.send(true);
    }
}

enum Role {
    Publisher(mpsc::UnboundedReceiver<Bytes>),
    Subscriber,
}

/// One connection's task: writes what is queued (batched), reads what arrives, keeps alive.
async fn run(
    mut ws: Ws,
    mut role: Role,
    link: Arc<ConnectionLink>,
    mut stop: watch::Receiver<bool>,
    options: RelayOptions,
    renew_at: Option<Instant>,
) {
    let limits = FrameLimits::default();
    let mut last_heard = Instant::now();
    let mut ping = tokio::time::interval(options.keepalive);
    ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let what = match role {
        Role::Publisher(_) => "publisher",
        Role::Subscriber => "subscriber",
    };
    loop {
        let outgoing = async {
            match &mut role {
                Role::Publisher(rx) => rx.recv().await,
                Role::Subscriber => std::future::pending().await,
            }
        };
        tokio::select! {
            biased;
            _ = stop.changed() => {
                let frame = CloseFrame { code: WsCloseCode::Normal, reason: "closed".into() };
                let _ = tokio::time::timeout(Duration::from_secs(1), ws.close(Some(frame))).await;
                return;
            }
            incoming = ws.next() => {
                last_heard = Instant::now();
                let result = match incoming {
                    Some(Ok(Message::Binary(bytes))) => handle(&link, &bytes, &limits, true).map(drop),
                    Some(Ok(Message::Text(_))) => Err(TransportError::new(
                        TransportErrorKind::Protocol,
                        format!("the relay sent a text message on the {what} connection"),
                    )),
                    Some(Ok(Message::Close(frame))) => Err(match frame {
                        Some(f) => {
                            let code = CloseCode::from_code(f.code.into());
                            TransportError::new(
                                code.error_kind(),
                                format!("the relay closed the {what} connection with {}: {}", code.code(), f.reason),
                            )
                        }
                        None => lost(format!("the relay closed the {what} connection")),
                    }),
                    Some(Ok(_)) => Ok(()),
                    Some(Err(e)) => Err(lost(format!("{what} connection: {e}"))),
                    None => Err(lost(format!("the relay ended the {what} connection"))),
                };
                if let Err(error) = result {
                    if error.kind() == TransportErrorKind::Protocol {
                        let frame = CloseFrame {
                            code: WsCloseCode::Protocol,
                            reason: error.message().chars().take(120).collect::<String>().into(),
                        };
                        let _ = tokio::time::timeout(Duration::from_secs(1), ws.close(Some(frame))).await;
                    }
                    link.fail(error);
                    return;
                }
            }
            first = outgoing => {
                let Some(first) = first else { return };
                let mut message = BytesMut::with_capacity(first.len().max(4096) + 1);
                start_message(&mut message);
                message.extend_from_slice(&first);
                let mut frames = 1u64;
                if let Role::Publisher(rx) = &mut role {
                    while message.len() < options.max_batch && frames < limits.max_frames as u64 {
                        let Ok(next) = rx.try_recv() else { break };
                        if message.len() + next.len() > limits.max_message {
                            // Does not fit: send what we have, then this one alone.
                            if let Err(e) = ws.feed(Message::Binary(std::mem::take(&mut message).freeze())).await {
                                link.fail(lost(format!("{what} connection: {e}")));
                                return;
                            }
                            start_message(&mut message);
                        }
                        message.extend_from_slice(&next);
                        frames += 1;
                    }
                }
                let sent = async {
                    ws.feed(Message::Binary(message.freeze())).await?;
                    ws.flush().await
                };
                if let Err(e) = sent.await {
                    link.fail(lost(format!("{what} connection: {e}")));
                    return;
                }
                link.state.written(frames);
            }
            () = sleep_until(renew_at) => {
                link.fail(lost("renewing the token before it expires: reconnecting"));
                return;
            }
            _ = ping.tick() => {
                if last_heard.elapsed() > options.dead_after {
                    link.fail(TransportError::new(
                        TransportErrorKind::Timeout,
                        format!("the relay has not answered on the {what} connection for {:?}", options.dead_after),
                    ));
                    return;
                }
                if let Err(e) = ws.send(Message::Ping(Bytes::new())).await {
                    link.fail(lost(format!("{what} connection: {e}")));
                    return;
                }
            }
        }
    }
}

/// Whether a subscriber connection has seen READY.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Readiness {
    Waiting,
    Ready,
}

/// Hands the frames of one message to the inbound; says whether READY was among them (`ready`:
/// it was seen before, and a second one is a protocol error).
fn handle(
    link: &ConnectionLink,
    bytes: &Bytes,
    limits: &FrameLimits,
    ready: bool,
) -> Result<Readiness, TransportError> {
    let protocol = |m: String| TransportError::new(TransportErrorKind::Protocol, m);
    let reader = MessageReader::shared(bytes, limits)
        .map_err(|e| protocol(format!("undecodable message from the relay: {e}")))?;
    let mut readiness = if ready {
        Readiness::Ready
    } else {
        Readiness::Waiting
    };
    for frame in reader {
        if link.is_ending() {
            return Ok(readiness);
        }
        let frame =
            frame.map_err(|e| protocol(format!("undecodable frame from the relay: {e}")))?;
        match frame {
            Frame::Ack { seq } => link.inbound().acknowledged(seq),
            Frame::Reject { seq, code, reason } => link.inbound().rejected(
                seq,
                TransportError::new(
                    code.error_kind(),
                    format!("the relay refused event {seq}: {reason}"),
                ),
            ),
            Frame::Event {
                sender,
                seq,
                envelope,
            } => match InterRoleEvent::from_wire(envelope) {
                Ok(event) if event.sender() == &sender && event.seq() == seq => {
                    link.inbound().event(event)
                }
                Ok(event) => {
                    tracing::warn!(%sender, seq, envelope_id = %event.id(),
                        "an event whose envelope does not match its frame was dropped");
                    link.inbound().missed(Some(&sender), 1);
                }
                Err(error) => {
                    tracing::warn!(%sender, seq, %error, "an undecodable envelope was dropped");
                    link.inbound().missed(Some(&sender), 1);
                }
            },
            Frame::Missed { sender, count } => link.inbound().missed(sender.as_ref(), count),
            Frame::Ready { .. } if readiness == Readiness::Waiting => {
                readiness = Readiness::Ready;
            }
            Frame::Publish { .. } | Frame::Resume { .. } | Frame::Ready { .. } => {
                return Err(protocol(format!(
                    "the relay sent a {} frame",
                    frame.frame_type()
                )));
            }
        }
    }
    Ok(readiness)
}

/// An open relay connection: the publisher and subscriber WebSockets of one instance.
struct RelayConnection {
    instance: InstanceId,
    path: String,
    link: Arc<ConnectionLink>,
    tx: mpsc::UnboundedSender<Bytes>,
    tasks: Mutex<Vec<JoinHandle<()>>>,
    max_envelope: usize,
}

impl fmt::Debug for RelayConnection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RelayConnection")
            .field("instance", &self.instance)
            .field("path", &self.path)
            .field("open", &self.is_open())
            .finish_non_exhaustive()
    }
}

#[async_trait]
impl Connection for RelayConnection {
    fn send(
        &self,
        event: &InterRoleEvent,
        target: Option<&InstanceId>,
    ) -> Result<(), TransportError> {
        self.link.state.check_open()?;
        let envelope = event.to_wire()?;
        if envelope.len() > self.max_envelope {
            return Err(TransportError::new(
                TransportErrorKind::PayloadTooLarge,
                format!(
                    "an envelope of {} bytes is over the relay's limit of {} bytes",
                    envelope.len(),
                    self.max_envelope
                ),
            ));
        }
        let mut out = BytesMut::with_capacity(envelope.len() + 32);
        frame::encode_publish(&mut out, event.seq(), target, &envelope);
        self.link.state.queued();
        self.tx
            .send(out.freeze())
            .map_err(|_| lost("the connection's writer has stopped"))
    }

    async fn flush(&self) -> Result<(), TransportError> {
        self.link.state.flush().await
    }

    async fn close(&self) {
        self.link.end();
        let tasks = std::mem::take(&mut *self.tasks.lock());
        for task in tasks {
            let abort = task.abort_handle();
            if tokio::time::timeout(Duration::from_secs(2), task)
                .await
                .is_err()
            {
                abort.abort();
            }
        }
    }

    fn is_open(&self) -> bool {
        self.link.state.is_open()
    }
}

impl Drop for RelayConnection {
    fn drop(&mut self) {
        self.link.end();
    }
}
