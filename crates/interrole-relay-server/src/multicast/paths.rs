//! The table of multicast paths: each path's subscribers and publishers, the highest sequence
//! number accepted from each sender, the sequence numbers refused, and the replay window.
//!
//! Publishing takes the path's lock, encodes the EVENT once ([`SharedFrame`]) and appends a
//! reference to it to each subscriber's bounded [`Outbox`]; it never waits on a socket.

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use interrole_core::InstanceId;
use interrole_relay::frame::{CloseCode, Frame, FrameType, RejectCode, SharedFrame};
use parking_lot::Mutex;

use super::outbox::Outbox;
use crate::config::Config;
use crate::metrics::{Metrics, Reason};

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

/// Every multicast path, by name.
pub(crate) struct PathTable {
    paths: Mutex<HashMap<String, Arc<Path>>>,
    pub(crate) config: Arc<Config>,
    pub(crate) metrics: Arc<Metrics>,
}

impl PathTable {
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
        let replayed = outbox.push_replayed(
            inner
                .window
                .iter()
                .filter(|stored| {
                    let visible = match &stored.target {
                        None => &stored.sender != id,
                        Some(t) => t == id,
                    };
                    let wanted = match positions.get(&stored.sender) {
                        Some(&pos) => stored.seq > pos,
                        None => replay_unlisted,
                    };
                    visible && wanted
                })
                .map(|stored| (stored.sender.clone(), stored.frame.clone())),
        );
        self.metrics
            .events_out
            .fetch_add(replayed, Ordering::Relaxed);
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
