//! Multicast paths: publishers, subscribers, fan-out, the replay window and slow consumers.
//!
//! Each path holds its subscribers' outboxes, its publishers' outboxes (for replacement), the
//! highest sequence number accepted from each sender, and the replay window. Publishing takes
//! the path's lock, encodes the EVENT once ([`SharedFrame`]) and appends a reference to it to
//! each subscriber's bounded outbox; it never waits on a socket. One writer task per connection
//! drains its outbox into batched WebSocket messages.

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::{Sink, SinkExt, Stream, StreamExt};
use interrole_core::InstanceId;
use interrole_relay::frame::{
    CloseCode, Frame, FrameLimits, FrameType, MessageBuilder, MessageReader, RejectCode,
    SharedFrame,
};
use parking_lot::Mutex;
use tokio::sync::{Notify, watch};
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::{self, Message};

use crate::config::{Config, SlowConsumerPolicy};
use crate::metrics::{Metrics, Reason};

/// A close request: the code and the reason sent in the close frame.
pub(crate) type Close = (CloseCode, String);

// ---------------------------------------------------------------------------------------------
// Outbox: what waits to be written to one connection

#[derive(Default)]
struct OutState {
    /// Control frames (REJECT, replay MISSED), written before the rest.
    controls: Vec<Frame>,
    /// MISSED counts from the drop-oldest policy, per sender.
    missed: HashMap<InstanceId, u64>,
    /// Queued events.
    events: VecDeque<(InstanceId, SharedFrame)>,
    /// The ACK to send (0: none).
    ack: u64,
    /// The highest sequence number handled on this connection so far: ACKs never go below it.
    ack_high: u64,
}

/// The send queue of one connection, drained by its writer task.
pub(crate) struct Outbox {
    state: Mutex<OutState>,
    notify: Notify,
    close: watch::Sender<Option<Close>>,
    /// The protocol version written to the connection: that of the first message it sent (0
    /// until then, when nothing but a close is written).
    version: AtomicU8,
}

impl std::fmt::Debug for Outbox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Outbox").finish_non_exhaustive()
    }
}

impl Outbox {
    pub(crate) fn new() -> Arc<Self> {
        Arc::new(Self {
            state: Mutex::new(OutState::default()),
            notify: Notify::new(),
            close: watch::Sender::new(None),
            version: AtomicU8::new(0),
        })
    }

    /// Records the version of a message the peer sent; the first one sets the version this
    /// connection is written in.
    fn peer_version(&self, version: u8) {
        let _ = self
            .version
            .compare_exchange(0, version, Ordering::AcqRel, Ordering::Acquire);
    }

    fn version(&self) -> u8 {
        match self.version.load(Ordering::Acquire) {
            0 => interrole_relay::frame::VERSION,
            v => v,
        }
    }

    /// Asks the connection to close (the first request wins).
    pub(crate) fn request_close(&self, code: CloseCode, reason: impl Into<String>) {
        let reason = reason.into();
        self.close.send_if_modified(|c| {
            if c.is_none() {
                *c = Some((code, reason));
                true
            } else {
                false
            }
        });
    }

    fn is_closing(&self) -> bool {
        self.close.borrow().is_some()
    }

    fn push_control(&self, frame: Frame) -> usize {
        let n = {
            let mut s = self.state.lock();
            s.controls.push(frame);
            s.controls.len()
        };
        self.notify.notify_one();
        n
    }

    /// Acknowledges a message that handled PUBLISH frames up to `seq`: the ACK carries the
    /// highest sequence number handled on the connection so far, so ACKs never go backwards,
    /// and a message that handled only a resent lower number is still answered.
    fn set_ack(&self, seq: u64) {
        {
            let mut s = self.state.lock();
            s.ack_high = s.ack_high.max(seq);
            s.ack = s.ack_high;
        }
        self.notify.notify_one();
    }

    /// Queues an event under the slow-consumer policy. Returns how many events were dropped,
    /// or `None` when the subscriber must be disconnected.
    fn push_event(
        &self,
        sender: &InstanceId,
        frame: &SharedFrame,
        cap: usize,
        policy: SlowConsumerPolicy,
    ) -> Option<u64> {
        let mut dropped = 0;
        {
            let mut s = self.state.lock();
            if s.events.len() >= cap.max(1) {
                match policy {
                    SlowConsumerPolicy::Disconnect => return None,
                    SlowConsumerPolicy::DropOldest => {
                        while s.events.len() >= cap.max(1) {
                            if let Some((old, _)) = s.events.pop_front() {
                                *s.missed.entry(old).or_insert(0) += 1;
                                dropped += 1;
                            }
                        }
                    }
                }
            }
            s.events.push_back((sender.clone(), frame.clone()));
        }
        self.notify.notify_one();
        Some(dropped)
    }

    fn take(&self) -> OutState {
        let mut s = self.state.lock();
        let ack_high = s.ack_high;
        let batch = std::mem::take(&mut *s);
        s.ack_high = ack_high;
        batch
    }
}

/// Writes `batch` as messages of protocol `version`, of at most `max_message` bytes and
/// `max_frames` frames.
fn build_messages(
    batch: OutState,
    version: u8,
    max_message: usize,
    max_frames: usize,
) -> Vec<Bytes> {
    let mut out = Vec::new();
    let new = || MessageBuilder::with_version(version, 256);
    let mut b = new();
    let flush = |b: &mut MessageBuilder, out: &mut Vec<Bytes>, next: usize| {
        if !b.is_empty() && (b.len() + next > max_message || b.frame_count() >= max_frames) {
            out.push(std::mem::replace(b, new()).finish());
        }
    };
    for f in &batch.controls {
        flush(&mut b, &mut out, f.encoded_len());
        b.push(f);
    }
    let mut missed: Vec<_> = batch.missed.into_iter().collect();
    missed.sort();
    for (sender, count) in missed {
        let f = Frame::Missed {
            sender: Some(sender),
            count,
        };
        flush(&mut b, &mut out, f.encoded_len());
        b.push(&f);
    }
    for (_, f) in &batch.events {
        flush(&mut b, &mut out, f.len());
        b.push_shared(f);
    }
    if batch.ack > 0 {
        let f = Frame::Ack { seq: batch.ack };
        flush(&mut b, &mut out, f.encoded_len());
        b.push(&f);
    }
    if !b.is_empty() {
        out.push(b.finish());
    }
    out
}

fn close_message(code: CloseCode, reason: &str) -> Message {
    let mut reason = reason.to_owned();
    // A close reason is at most 123 bytes.
    while reason.len() > 120 {
        reason.pop();
    }
    Message::Close(Some(CloseFrame {
        code: code.code().into(),
        reason: reason.into(),
    }))
}

/// The writer task of one connection.
pub(crate) async fn write_loop<W>(
    mut sink: W,
    outbox: Arc<Outbox>,
    metrics: Arc<Metrics>,
    mut shutdown: watch::Receiver<bool>,
    ping_every: Duration,
    limits: FrameLimits,
) where
    W: Sink<Message, Error = tungstenite::Error> + Unpin,
{
    let mut close_rx = outbox.close.subscribe();
    let mut shutting_down = false;
    loop {
        let close = close_rx.borrow_and_update().clone();
        if let Some((code, reason)) = close {
            let _ = sink.send(close_message(code, &reason)).await;
            let _ = sink.close().await;
            return;
        }
        tokio::select! {
            biased;
            _ = close_rx.changed() => {}
            r = shutdown.changed(), if !shutting_down => {
                if r.is_err() || *shutdown.borrow() {
                    shutting_down = true;
                    outbox.request_close(CloseCode::GoingAway, "relay shutting down");
                }
            }
            () = outbox.notify.notified() => {
                let batch = outbox.take();
                let version = outbox.version();
                for m in build_messages(batch, version, limits.max_message, limits.max_frames) {
                    metrics.bytes_out.fetch_add(m.len() as u64, Ordering::Relaxed);
                    if sink.feed(Message::Binary(m)).await.is_err() {
                        outbox.request_close(CloseCode::Normal, "");
                        return;
                    }
                }
                if sink.flush().await.is_err() {
                    outbox.request_close(CloseCode::Normal, "");
                    return;
                }
            }
            () = tokio::time::sleep(ping_every) => {
                if sink.send(Message::Ping(Bytes::new())).await.is_err() {
                    outbox.request_close(CloseCode::Normal, "");
                    return;
                }
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Paths

struct Stored {
    sender: InstanceId,
    seq: u64,
    target: Option<InstanceId>,
    frame: SharedFrame,
    size: usize,
    at: Instant,
}

/// How many refused sequence numbers the relay remembers per publisher and path, so that their
/// resends are handled as new (`docs/protocol.md`, section 6).
pub(crate) const REFUSALS_REMEMBERED: usize = 4096;

/// A publisher's refused sequence numbers on a path.
#[derive(Default)]
struct Refusals {
    /// The latest ones, at most [`REFUSALS_REMEMBERED`].
    seqs: BTreeSet<u64>,
    /// The highest one forgotten: at or below it, a sequence number not in `seqs` may have been
    /// refused, so a resend is handled as new rather than dropped.
    forgotten: u64,
}

impl Refusals {
    fn record(&mut self, seq: u64) {
        self.seqs.insert(seq);
        if self.seqs.len() > REFUSALS_REMEMBERED {
            if let Some(oldest) = self.seqs.pop_first() {
                self.forgotten = self.forgotten.max(oldest);
            }
        }
    }
}

/// A publisher connection's allowance under `limits.max_publish_rate`: a token bucket holding
/// one second's worth.
pub(crate) struct Allowance {
    rate: f64,
    tokens: f64,
    last: Instant,
}

impl Allowance {
    /// An allowance of `rate` events per second; 0 means no limit.
    pub(crate) fn new(rate: u32) -> Self {
        Self {
            rate: f64::from(rate),
            tokens: f64::from(rate),
            last: Instant::now(),
        }
    }

    /// Takes one event's token; false when the publisher is over the rate.
    fn admit(&mut self) -> bool {
        if self.rate == 0.0 {
            return true;
        }
        let now = Instant::now();
        let refill = now.duration_since(self.last).as_secs_f64() * self.rate;
        self.tokens = (self.tokens + refill).min(self.rate);
        self.last = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

#[derive(Default)]
struct PathInner {
    subscribers: HashMap<InstanceId, Arc<Outbox>>,
    publishers: HashMap<InstanceId, Arc<Outbox>>,
    /// The highest sequence number accepted from each sender.
    last_seq: HashMap<InstanceId, u64>,
    /// The sequence numbers refused to each sender.
    refused: HashMap<InstanceId, Refusals>,
    /// The highest sequence number evicted from the window, per sender.
    evicted: HashMap<InstanceId, u64>,
    window: VecDeque<Stored>,
    window_bytes: usize,
}

impl PathInner {
    fn is_idle(&self) -> bool {
        self.subscribers.is_empty() && self.publishers.is_empty() && self.window.is_empty()
    }

    fn trim(&mut self, config: &Config, extra: usize) {
        let r = &config.replay;
        let max_age = Duration::from_secs(r.max_age_secs);
        let now = Instant::now();
        while let Some(front) = self.window.front() {
            let over = self.window.len() + extra > r.max_events
                || self.window_bytes > r.max_bytes
                || now.duration_since(front.at) > max_age;
            if !over {
                break;
            }
            if let Some(old) = self.window.pop_front() {
                self.window_bytes -= old.size;
                let e = self.evicted.entry(old.sender).or_insert(0);
                *e = (*e).max(old.seq);
            }
        }
    }
}

/// One multicast path.
pub(crate) struct Path {
    inner: Mutex<PathInner>,
}

/// What became of one PUBLISH.
pub(crate) enum Published {
    Accepted,
    Duplicate,
    Rejected(RejectCode, String),
}

/// Why a connection was not admitted to a path.
#[derive(Debug)]
pub(crate) struct Full(pub(crate) &'static str);

/// Every multicast path.
pub(crate) struct Hub {
    paths: Mutex<HashMap<String, Arc<Path>>>,
    pub(crate) config: Arc<Config>,
    pub(crate) metrics: Arc<Metrics>,
}

impl Hub {
    pub(crate) fn new(config: Arc<Config>, metrics: Arc<Metrics>) -> Self {
        Self {
            paths: Mutex::new(HashMap::new()),
            config,
            metrics,
        }
    }

    fn path_locked(
        &self,
        paths: &mut HashMap<String, Arc<Path>>,
        name: &str,
    ) -> Result<Arc<Path>, Full> {
        if let Some(p) = paths.get(name) {
            return Ok(p.clone());
        }
        if paths.len() >= self.config.limits.max_paths {
            return Err(Full("too many paths"));
        }
        let p = Arc::new(Path {
            inner: Mutex::new(PathInner::default()),
        });
        paths.insert(name.to_owned(), p.clone());
        self.metrics
            .paths
            .store(paths.len() as u64, Ordering::Relaxed);
        Ok(p)
    }

    /// Registers a publisher, replacing (closing with 4001) an older one of the same instance.
    pub(crate) fn add_publisher(
        &self,
        name: &str,
        id: &InstanceId,
        outbox: &Arc<Outbox>,
    ) -> Result<Arc<Path>, Full> {
        let mut paths = self.paths.lock();
        let path = self.path_locked(&mut paths, name)?;
        let old = path
            .inner
            .lock()
            .publishers
            .insert(id.clone(), outbox.clone());
        if let Some(old) = old {
            old.request_close(CloseCode::Replaced, "replaced by a newer connection");
        }
        Ok(path)
    }

    /// Registers a subscriber after its RESUME, queueing what the window holds for it first; a
    /// version 2 subscriber is told READY before the replay.
    pub(crate) fn add_subscriber(
        &self,
        name: &str,
        id: &InstanceId,
        outbox: &Arc<Outbox>,
        replay_unlisted: bool,
        positions: &[(InstanceId, u64)],
    ) -> Result<Arc<Path>, Full> {
        let ready = outbox.version() >= FrameType::Ready.since();
        let mut paths = self.paths.lock();
        let path = self.path_locked(&mut paths, name)?;
        let mut inner = path.inner.lock();
        let others = inner.subscribers.len() - usize::from(inner.subscribers.contains_key(id));
        if others >= self.config.limits.max_subscribers_per_path {
            drop(inner);
            self.remove_if_idle(&mut paths, name);
            return Err(Full("too many subscribers on this path"));
        }
        inner.trim(&self.config, 0);
        let positions: HashMap<&InstanceId, u64> = positions.iter().map(|(s, q)| (s, *q)).collect();
        for (sender, &pos) in &positions {
            if inner.evicted.get(*sender).is_some_and(|&e| e > pos) {
                let next = inner
                    .window
                    .iter()
                    .find(|s| &s.sender == *sender)
                    .map(|s| s.seq)
                    .or_else(|| inner.last_seq.get(*sender).map(|l| l + 1))
                    .unwrap_or(pos + 1);
                let count = next.saturating_sub(pos + 1);
                if count > 0 {
                    outbox.push_control(Frame::Missed {
                        sender: Some((*sender).clone()),
                        count,
                    });
                }
            }
        }
        if ready {
            // Registered below, under this same lock: every event accepted after it reaches the
            // subscriber.
            let most = self.config.limits.frame_limits().max_resume_entries;
            let mut known: Vec<(InstanceId, u64)> = inner
                .last_seq
                .iter()
                .map(|(s, q)| (s.clone(), *q))
                .collect();
            known.sort_unstable();
            let partial = known.len() > most;
            known.truncate(most);
            outbox.push_control(Frame::Ready {
                partial,
                positions: known,
            });
        }
        {
            let mut s = outbox.state.lock();
            for stored in &inner.window {
                let visible = match &stored.target {
                    None => &stored.sender != id,
                    Some(t) => t == id,
                };
                let wanted = match positions.get(&stored.sender) {
                    Some(&pos) => stored.seq > pos,
                    None => replay_unlisted,
                };
                if visible && wanted {
                    s.events
                        .push_back((stored.sender.clone(), stored.frame.clone()));
                    self.metrics.events_out.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
        outbox.notify.notify_one();
        if let Some(old) = inner.subscribers.insert(id.clone(), outbox.clone()) {
            old.request_close(CloseCode::Replaced, "replaced by a newer connection");
        }
        drop(inner);
        Ok(path)
    }

    /// Unregisters a connection (if it is still the registered one) and drops an idle path.
    pub(crate) fn remove(
        &self,
        name: &str,
        id: &InstanceId,
        outbox: &Arc<Outbox>,
        publisher: bool,
    ) {
        let mut paths = self.paths.lock();
        if let Some(path) = paths.get(name) {
            let mut inner = path.inner.lock();
            let map = if publisher {
                &mut inner.publishers
            } else {
                &mut inner.subscribers
            };
            if map.get(id).is_some_and(|o| Arc::ptr_eq(o, outbox)) {
                map.remove(id);
            }
        }
        self.remove_if_idle(&mut paths, name);
    }

    fn remove_if_idle(&self, paths: &mut HashMap<String, Arc<Path>>, name: &str) {
        let idle = paths.get(name).is_some_and(|p| p.inner.lock().is_idle());
        if idle {
            paths.remove(name);
            self.metrics
                .paths
                .store(paths.len() as u64, Ordering::Relaxed);
        }
    }

    /// Ages the replay windows and drops idle paths. Called periodically.
    pub(crate) fn sweep(&self) {
        let mut paths = self.paths.lock();
        paths.retain(|_, p| {
            let mut inner = p.inner.lock();
            inner.trim(&self.config, 0);
            !inner.is_idle()
        });
        self.metrics
            .paths
            .store(paths.len() as u64, Ordering::Relaxed);
    }

    /// Closes every multicast connection with 1001.
    pub(crate) fn close_all(&self) {
        let paths = self.paths.lock();
        for p in paths.values() {
            let inner = p.inner.lock();
            for o in inner.subscribers.values().chain(inner.publishers.values()) {
                o.request_close(CloseCode::GoingAway, "relay shutting down");
            }
        }
    }

    /// Handles one PUBLISH from `sender`: a duplicate, refused, or accepted (fanned out and kept
    /// in the replay window). A refused sequence number is remembered, so that its resend is
    /// handled as new.
    pub(crate) fn publish(
        &self,
        path: &Path,
        sender: &InstanceId,
        seq: u64,
        target: Option<InstanceId>,
        envelope: &[u8],
        allowance: &mut Allowance,
    ) -> Published {
        let config = &self.config;
        let mut inner = path.inner.lock();
        let last = inner.last_seq.get(sender).copied().unwrap_or(0);
        if seq <= last {
            // Accepted before, unless it was refused (then this is its resend), or the relay
            // forgot whether it was refused (then it is delivered again rather than dropped).
            let refusals = inner.refused.get_mut(sender);
            let resend = refusals.is_some_and(|r| r.seqs.remove(&seq) || seq <= r.forgotten);
            if !resend {
                self.metrics.duplicates.fetch_add(1, Ordering::Relaxed);
                return Published::Duplicate;
            }
        }
        let refusal = if envelope.len() > config.limits.max_envelope_bytes {
            self.metrics.reject(Reason::TooLarge);
            Some((
                RejectCode::TooLarge,
                format!(
                    "envelope of {} bytes, the limit is {}",
                    envelope.len(),
                    config.limits.max_envelope_bytes
                ),
            ))
        } else if !allowance.admit() {
            self.metrics.reject(Reason::Busy);
            Some((
                RejectCode::Busy,
                format!(
                    "over the publish rate of {} events per second: resend later",
                    config.limits.max_publish_rate
                ),
            ))
        } else {
            match &target {
                Some(t) if inner.subscribers.get(t).is_none_or(|o| o.is_closing()) => {
                    self.metrics.reject(Reason::TargetNotConnected);
                    Some((
                        RejectCode::TargetNotConnected,
                        format!("no subscriber {t} on this path"),
                    ))
                }
                _ => None,
            }
        };
        if let Some((code, reason)) = refusal {
            inner.refused.entry(sender.clone()).or_default().record(seq);
            return Published::Rejected(code, reason);
        }
        if seq > last {
            inner.last_seq.insert(sender.clone(), seq);
        }
        self.metrics.events_in.fetch_add(1, Ordering::Relaxed);
        let frame = SharedFrame::event(sender, seq, envelope);
        let cap = config.subscribers.queue_len;
        let policy = config.subscribers.slow_consumer;
        let deliver = |o: &Arc<Outbox>| {
            if o.is_closing() {
                return;
            }
            match o.push_event(sender, &frame, cap, policy) {
                Some(dropped) => {
                    self.metrics.events_out.fetch_add(1, Ordering::Relaxed);
                    if dropped > 0 {
                        self.metrics.dropped.fetch_add(dropped, Ordering::Relaxed);
                    }
                }
                None => {
                    self.metrics
                        .slow_disconnects
                        .fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(
                        queue = cap,
                        "a subscriber's send queue is full: closing it (4000, slow consumer)"
                    );
                    o.request_close(CloseCode::SlowConsumer, "slow consumer: send queue full");
                }
            }
        };
        match &target {
            Some(t) => {
                if let Some(o) = inner.subscribers.get(t) {
                    deliver(o);
                }
            }
            None => {
                for (id, o) in &inner.subscribers {
                    if id != sender {
                        deliver(o);
                    }
                }
            }
        }
        if config.replay.max_events > 0 {
            inner.trim(config, 1);
            let size = envelope.len();
            inner.window_bytes += size;
            inner.window.push_back(Stored {
                sender: sender.clone(),
                seq,
                target,
                frame,
                size,
                at: Instant::now(),
            });
            inner.trim(config, 0);
        }
        Published::Accepted
    }
}

// ---------------------------------------------------------------------------------------------
// Connections

/// What a multicast connection needs besides its socket.
pub(crate) struct ConnInfo {
    pub(crate) path: String,
    pub(crate) id: InstanceId,
    /// When the token expires (close 1008 then).
    pub(crate) expires: Option<Instant>,
}

async fn expiry(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at.into()).await,
        None => std::future::pending().await,
    }
}

/// What the reader saw next.
enum Next {
    Message(Bytes),
    Stop,
}

/// Reads the next binary message; text, errors, idleness and expiry close the connection.
async fn next_binary<R>(
    stream: &mut R,
    outbox: &Outbox,
    close_rx: &mut watch::Receiver<Option<Close>>,
    idle: Duration,
    expires: Option<Instant>,
    metrics: &Metrics,
    info: &ConnInfo,
) -> Next
where
    R: Stream<Item = Result<Message, tungstenite::Error>> + Unpin,
{
    loop {
        let msg = tokio::select! {
            _ = close_rx.wait_for(Option::is_some) => return Next::Stop,
            () = expiry(expires) => {
                outbox.request_close(CloseCode::PolicyViolation, "token expired");
                return Next::Stop;
            }
            m = tokio::time::timeout(idle, stream.next()) => m,
        };
        match msg {
            Err(_) => {
                outbox.request_close(CloseCode::GoingAway, "idle timeout");
                return Next::Stop;
            }
            Ok(None) | Ok(Some(Ok(Message::Close(_)))) => {
                outbox.request_close(CloseCode::Normal, "");
                return Next::Stop;
            }
            Ok(Some(Err(e))) => {
                let code = match e {
                    tungstenite::Error::Capacity(_) => CloseCode::MessageTooBig,
                    tungstenite::Error::Protocol(_) => CloseCode::ProtocolError,
                    _ => CloseCode::Normal,
                };
                if code != CloseCode::Normal {
                    violation(metrics, info, code, &e.to_string());
                }
                outbox.request_close(code, e.to_string());
                return Next::Stop;
            }
            Ok(Some(Ok(Message::Binary(b)))) => {
                metrics
                    .bytes_in
                    .fetch_add(b.len() as u64, Ordering::Relaxed);
                return Next::Message(b);
            }
            Ok(Some(Ok(Message::Text(_)))) => {
                let why = "text messages are not used";
                violation(metrics, info, CloseCode::UnsupportedData, why);
                outbox.request_close(CloseCode::UnsupportedData, why);
                return Next::Stop;
            }
            Ok(Some(Ok(_))) => {} // ping, pong
        }
    }
}

/// Most REJECT frames waiting for a publisher that does not read them.
const MAX_PENDING_REJECTS: usize = 65_536;

/// Runs a publisher connection until it closes.
pub(crate) async fn run_publisher<R>(
    hub: &Hub,
    mut stream: R,
    outbox: &Arc<Outbox>,
    info: &ConnInfo,
) where
    R: Stream<Item = Result<Message, tungstenite::Error>> + Unpin,
{
    let limits = hub.config.limits.frame_limits();
    let path = match hub.add_publisher(&info.path, &info.id, outbox) {
        Ok(p) => p,
        Err(Full(why)) => {
            hub.metrics.reject(Reason::Capacity);
            outbox.request_close(CloseCode::TryAgainLater, why);
            return;
        }
    };
    let mut allowance = Allowance::new(hub.config.limits.max_publish_rate);
    let mut close_rx = outbox.close.subscribe();
    let idle = hub.config.limits.idle_timeout();
    while let Next::Message(bytes) = next_binary(
        &mut stream,
        outbox,
        &mut close_rx,
        idle,
        info.expires,
        &hub.metrics,
        info,
    )
    .await
    {
        if let Err((code, why)) =
            publish_message(hub, &path, info, outbox, &bytes, &limits, &mut allowance)
        {
            violation(&hub.metrics, info, code, &why);
            outbox.request_close(code, why);
            break;
        }
    }
    hub.remove(&info.path, &info.id, outbox, true);
}

/// Handles one publisher message: decoded and checked whole first, so that a message refused
/// for a decoding error or a limit has none of its frames acted on.
fn publish_message(
    hub: &Hub,
    path: &Path,
    info: &ConnInfo,
    outbox: &Outbox,
    bytes: &Bytes,
    limits: &FrameLimits,
    allowance: &mut Allowance,
) -> Result<(), Close> {
    let reader =
        MessageReader::shared(bytes, limits).map_err(|e| (e.close_code(), e.to_string()))?;
    outbox.peer_version(reader.version());
    let frames = reader
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| (e.close_code(), e.to_string()))?;
    if let Some(other) = frames.iter().find(|f| !matches!(f, Frame::Publish { .. })) {
        return Err((
            CloseCode::ProtocolError,
            format!("{} frame on a publisher connection", other.frame_type()),
        ));
    }
    let mut handled = 0;
    let mut pending = 0;
    for frame in frames {
        let Frame::Publish {
            seq,
            target,
            envelope,
        } = frame
        else {
            continue;
        };
        handled = handled.max(seq);
        if let Published::Rejected(code, reason) =
            hub.publish(path, &info.id, seq, target, &envelope, allowance)
        {
            pending = outbox.push_control(Frame::Reject { seq, code, reason });
        }
    }
    if pending > MAX_PENDING_REJECTS {
        return Err((
            CloseCode::PolicyViolation,
            "not reading acknowledgements".into(),
        ));
    }
    outbox.set_ack(handled);
    Ok(())
}

/// A connection closed for breaking the protocol: counted, and logged (at most
/// [`VIOLATIONS_LOGGED_PER_SECOND`] lines a second; the lines after say how many were not).
fn violation(metrics: &Metrics, info: &ConnInfo, code: CloseCode, why: &str) {
    metrics.reject(Reason::Protocol);
    static SECOND: AtomicU64 = AtomicU64::new(0);
    static LOGGED: AtomicU64 = AtomicU64::new(0);
    static SUPPRESSED: AtomicU64 = AtomicU64::new(0);
    let now = START.elapsed().as_secs() + 1;
    if SECOND.swap(now, Ordering::AcqRel) != now {
        LOGGED.store(0, Ordering::Release);
    }
    if LOGGED.fetch_add(1, Ordering::AcqRel) >= VIOLATIONS_LOGGED_PER_SECOND {
        SUPPRESSED.fetch_add(1, Ordering::Relaxed);
        return;
    }
    let suppressed = SUPPRESSED.swap(0, Ordering::Relaxed);
    tracing::warn!(
        path = %info.path,
        instance = %info.id,
        code = code.code(),
        suppressed,
        "protocol violation, connection closed: {why}"
    );
}

/// At most this many protocol violations are logged per second.
const VIOLATIONS_LOGGED_PER_SECOND: u64 = 20;

static START: std::sync::LazyLock<Instant> = std::sync::LazyLock::new(Instant::now);

/// Runs a subscriber connection until it closes: RESUME first, then only reads to notice the
/// close (a subscriber sends nothing else).
pub(crate) async fn run_subscriber<R>(
    hub: &Hub,
    mut stream: R,
    outbox: &Arc<Outbox>,
    info: &ConnInfo,
) where
    R: Stream<Item = Result<Message, tungstenite::Error>> + Unpin,
{
    let limits = hub.config.limits.frame_limits();
    let mut close_rx = outbox.close.subscribe();
    let idle = hub.config.limits.idle_timeout();
    let first = tokio::time::timeout(
        hub.config.limits.resume_timeout(),
        next_binary(
            &mut stream,
            outbox,
            &mut close_rx,
            idle,
            info.expires,
            &hub.metrics,
            info,
        ),
    )
    .await;
    let bytes = match first {
        Err(_) => {
            let why = "no RESUME in time";
            violation(&hub.metrics, info, CloseCode::ProtocolError, why);
            outbox.request_close(CloseCode::ProtocolError, why);
            return;
        }
        Ok(Next::Stop) => return,
        Ok(Next::Message(b)) => b,
    };
    let (replay_unlisted, positions) = match read_resume(&bytes, &limits) {
        Ok(r) => r,
        Err((code, why)) => {
            violation(&hub.metrics, info, code, &why);
            outbox.request_close(code, why);
            return;
        }
    };
    // A version 2 RESUME is answered with READY, and the connection written in version 2.
    outbox.peer_version(
        bytes
            .first()
            .copied()
            .unwrap_or(interrole_relay::frame::MIN_VERSION),
    );
    if let Err(Full(why)) =
        hub.add_subscriber(&info.path, &info.id, outbox, replay_unlisted, &positions)
    {
        hub.metrics.reject(Reason::Capacity);
        outbox.request_close(CloseCode::TryAgainLater, why);
        return;
    }
    // A subscriber sends nothing after its RESUME: reading only notices the close.
    if let Next::Message(bytes) = next_binary(
        &mut stream,
        outbox,
        &mut close_rx,
        idle,
        info.expires,
        &hub.metrics,
        info,
    )
    .await
    {
        let why = match interrole_relay::frame::decode_message_bytes(&bytes, &limits) {
            Err(e) => (e.close_code(), e.to_string()),
            Ok(_) => (
                CloseCode::ProtocolError,
                "RESUME repeated, or a frame in the wrong direction".to_owned(),
            ),
        };
        violation(&hub.metrics, info, why.0, &why.1);
        outbox.request_close(why.0, why.1);
    }
    hub.remove(&info.path, &info.id, outbox, false);
}

type Positions = Vec<(InstanceId, u64)>;

/// Reads a subscriber's first message: exactly one RESUME frame.
fn read_resume(bytes: &Bytes, limits: &FrameLimits) -> Result<(bool, Positions), Close> {
    let frames = interrole_relay::frame::decode_message_bytes(bytes, limits)
        .map_err(|e| (e.close_code(), e.to_string()))?;
    let mut frames = frames.into_iter();
    match (frames.next(), frames.next()) {
        (
            Some(Frame::Resume {
                replay_unlisted,
                positions,
            }),
            None,
        ) => Ok((replay_unlisted, positions)),
        (Some(Frame::Resume { .. }), Some(f)) => Err((
            CloseCode::ProtocolError,
            format!("{} frame after RESUME", f.frame_type()),
        )),
        (f, _) => Err((
            CloseCode::ProtocolError,
            format!(
                "the first frame must be RESUME, not {}",
                f.map_or("nothing".to_owned(), |f| f.frame_type().to_string())
            ),
        )),
    }
}
