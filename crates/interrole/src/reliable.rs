//! The reliability layer between a bus and a transport that can fail: a reliable client and a
//! reliable host.
//!
//! - The **host** side keeps the connection: it opens it through the [`RetryPolicy`], re-opens it
//!   when it faults (resuming where the bus left off), stops on a fatal error and says why. Its
//!   state is a [`watch`] channel ([`ReliableHost`]) and a tracing event on each change.
//! - The **client** side keeps what was published: every event waits in a bounded outbox until
//!   the far end acknowledges it, and is re-sent, in order, on the next connection. Acknowledged
//!   events are retained a little longer and re-sent too, which repairs what a far end that died
//!   with events in flight had acknowledged but not delivered.
//! - The **receiver** side drops duplicates and finds gaps by each sender's
//!   [`StreamPos`](interrole_core::StreamPos): an event after a gap is held back (per sender and
//!   stream) until the gap fills or the gap timeout passes; then the observers are told how many
//!   events were missed.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::fmt;
use std::sync::Weak;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use backon::Retryable;
use interrole_core::{
    Connection, Event, Inbound, InstanceId, InterRoleEvent, OpenSpec, RetryPolicy, Topic,
    Transport, TransportError, TransportErrorKind,
};
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, watch};

use crate::bus::{PublishError, Receiver};
use crate::observer::ObserverError;
use crate::sync::Arc;

/// How a bus on a network transport keeps its promises: retries, outbox, retention, gaps.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct Reliability {
    /// How (re)connecting is retried. Default [`RetryPolicy::default`]: 0, 1, 2, 5, 10, 30 s,
    /// then every 30 s.
    pub retry: RetryPolicy,
    /// The most published events waiting for the far end's acknowledgement; `publish` fails
    /// with [`PublishError::OutboxFull`] beyond it. Default 100,000.
    pub outbox_events: usize,
    /// The most bytes of envelopes waiting for acknowledgement. Default 64 MiB.
    pub outbox_bytes: usize,
    /// How many acknowledged events are kept to be re-sent after a reconnection (repairing what a
    /// relay that died had acknowledged but not delivered). Default 10,000.
    pub retain_events: usize,
    /// How long acknowledged events are kept while connected (while disconnected, none age out).
    /// Default 5 s: longer than an event usually waits in a relay's queues.
    pub retain_for: Duration,
    /// How long events after a gap wait for it to fill before the gap is reported as missed.
    /// Default 20 s (a relay restart and the reconnection schedule fit in it).
    pub gap_timeout: Duration,
    /// The most events held back behind gaps, per sender and stream; past it the gap is reported
    /// at once. Default 50,000.
    pub max_held: usize,
}

impl Default for Reliability {
    fn default() -> Self {
        Self {
            retry: RetryPolicy::default(),
            outbox_events: 100_000,
            outbox_bytes: 64 * 1024 * 1024,
            retain_events: 10_000,
            retain_for: Duration::from_secs(5),
            gap_timeout: Duration::from_secs(20),
            max_held: 50_000,
        }
    }
}

impl Reliability {
    /// These settings with `retry`.
    pub fn with_retry(mut self, retry: RetryPolicy) -> Self {
        self.retry = retry;
        self
    }

    /// These settings with an outbox of at most `events` events and `bytes` bytes.
    pub fn with_outbox(mut self, events: usize, bytes: usize) -> Self {
        self.outbox_events = events.max(1);
        self.outbox_bytes = bytes.max(1);
        self
    }

    /// These settings with `timeout` for gaps to fill.
    pub fn with_gap_timeout(mut self, timeout: Duration) -> Self {
        self.gap_timeout = timeout;
        self
    }

    /// These settings retaining `events` acknowledged events for `time`.
    pub fn with_retention(mut self, events: usize, time: Duration) -> Self {
        self.retain_events = events;
        self.retain_for = time;
        self
    }
}

/// Where a [`ReliableHost`] is in its life.
///
/// `Created → Opening → Opened → Faulted → Opening → … → Closing → Closed`; a fatal error goes
/// straight to `Closed`, with the error in [`HostStatus::error`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum HostState {
    /// Built, not started yet.
    Created,
    /// Opening the connection (an attempt is under way, or the retry policy is waiting).
    Opening,
    /// Connected: events flow.
    Opened,
    /// The connection failed with a transient error; it is re-opened on its own.
    Faulted,
    /// The bus is closing: flushing the outbox.
    Closing,
    /// Closed: by the bus, or after a fatal error or an exhausted retry budget.
    Closed,
}

impl fmt::Display for HostState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self, f)
    }
}

/// A [`ReliableHost`]'s state, with what led to it.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct HostStatus {
    /// The state.
    pub state: HostState,
    /// The error behind `Faulted`, a retry, or a `Closed` that was not asked for.
    pub error: Option<TransportError>,
    /// Failed attempts since the last successful open.
    pub attempts: u32,
    /// How many times the connection has been opened.
    pub opened: u64,
    /// How many times the connection has faulted (a watch channel keeps only the latest state:
    /// this counts the `Faulted` states a slow watcher may not see).
    pub faults: u64,
}

/// Watches the connection of a bus on a network transport: the reliable host.
///
/// Cheap to clone. Get it from [`Bus::host`](crate::Bus::host).
#[derive(Clone)]
pub struct ReliableHost {
    status: watch::Receiver<HostStatus>,
}

impl fmt::Debug for ReliableHost {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ReliableHost")
            .field("status", &*self.status.borrow())
            .finish()
    }
}

impl ReliableHost {
    /// The current state.
    pub fn state(&self) -> HostState {
        self.status.borrow().state
    }

    /// The current status.
    pub fn status(&self) -> HostStatus {
        self.status.borrow().clone()
    }

    /// A receiver of every change of status.
    pub fn watch(&self) -> watch::Receiver<HostStatus> {
        self.status.clone()
    }

    /// Waits until the connection is open.
    ///
    /// # Errors
    /// The fatal error when the host closed instead, or a `Timeout` error after `timeout`.
    ///
    /// # Cancel safety
    ///
    /// This method is cancel safe: it only watches the host's state. Dropping the future changes
    /// nothing, and the call can be made again.
    pub async fn wait_opened(&self, timeout: Duration) -> Result<(), TransportError> {
        let mut rx = self.status.clone();
        let wait = rx.wait_for(|s| matches!(s.state, HostState::Opened | HostState::Closed));
        match tokio::time::timeout(timeout, wait).await {
            Ok(Ok(s)) if s.state == HostState::Opened => Ok(()),
            Ok(Ok(s)) => Err(s.error.clone().unwrap_or_else(|| {
                TransportError::new(TransportErrorKind::Closed, "the bus was closed")
            })),
            Ok(Err(_)) => Err(TransportError::new(
                TransportErrorKind::Closed,
                "the bus is gone",
            )),
            Err(_) => Err(TransportError::new(
                TransportErrorKind::Timeout,
                format!("not connected after {timeout:?}: {}", self.state()),
            )),
        }
    }
}

/// Counters of the reliable client and receiver of a bus.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub struct ReliableStats {
    /// Published events not yet acknowledged.
    pub outbox_events: usize,
    /// Their bytes.
    pub outbox_bytes: usize,
    /// Acknowledged events retained for repair.
    pub retained: usize,
    /// Events sent again: the outbox after reconnections, and events the far end refused for
    /// now (the relay over its publish rate), which are sent again until taken.
    pub resent: u64,
    /// Events the far end refused (each was logged).
    pub rejected: u64,
    /// Received events dropped as duplicates.
    pub duplicates: u64,
    /// Events reported missed to the observers.
    pub missed: u64,
    /// Events the transport said it dropped for this instance (not all of them are missed:
    /// senders re-send after a relay restart).
    pub transport_dropped: u64,
    /// Events held back behind gaps right now.
    pub held: usize,
    /// Repair requests sent to senders (negative acknowledgements).
    pub repair_requests: u64,
    /// Events received through repairs.
    pub repaired: u64,
}

struct Entry {
    seq: u64,
    target: Option<InstanceId>,
    event: InterRoleEvent,
    size: usize,
    acked_at: Option<Instant>,
}

/// The client side: the connection and the outbox, under one lock so that a reconnection's
/// re-send and new publishes keep sequence order.
struct Link {
    conn: Option<(u64, Arc<dyn Connection>)>,
    entries: VecDeque<Entry>,
    /// Index of the first unacknowledged entry.
    first_unacked: usize,
    unacked_bytes: usize,
}

impl Link {
    fn unacked(&self) -> usize {
        self.entries.len() - self.first_unacked
    }

    fn trim(&mut self, config: &Reliability, connected: bool) {
        let now = Instant::now();
        while self.first_unacked > 0 {
            let front = &self.entries[0];
            let old = front
                .acked_at
                .is_some_and(|at| connected && now.duration_since(at) > config.retain_for);
            if self.first_unacked > config.retain_events || old {
                let gone = self.entries.pop_front();
                self.first_unacked -= 1;
                // The outbox is consistent again before the event's payload is dropped, which
                // may run user code that panics.
                crate::hub::drop_guarded(gone);
            } else {
                break;
            }
        }
    }
}

#[derive(Default)]
struct Lane {
    /// The next position expected; `None` before the first event (a subscriber joins midway).
    next: Option<u64>,
    /// Events behind the gap, by position: the event, or only its sequence number for one of the
    /// layer's own (a repair, a repair request) that was acted on when it arrived.
    held: BTreeMap<u64, Held>,
    gap_since: Option<Instant>,
    /// When the sender was last asked to repair this lane's gap.
    nak_at: Option<Instant>,
    /// The sender answered that it no longer has some of the gap: give it up now.
    doomed: bool,
}

#[derive(Default)]
struct SenderState {
    epoch: u64,
    last_seq: u64,
    multicast: Lane,
    directed: Lane,
    /// Events of this sender that the transport dropped for this instance before any of its
    /// events arrived: they precede the first one that does (the relay drops the oldest), so
    /// that stream starts that much earlier, with a gap to repair, instead of at the first
    /// event seen as for an instance that joins midway.
    dropped_before_first: u64,
}

/// An event held back behind a gap.
enum Held {
    /// To be delivered when the gap before it fills.
    Event(InterRoleEvent),
    /// Already acted on (the reliability layer's own events are handled as they arrive): only
    /// its place in the stream, and its sequence number, wait.
    Done(u64),
}

impl Held {
    fn seq(&self) -> u64 {
        match self {
            Held::Event(e) => e.seq(),
            Held::Done(seq) => *seq,
        }
    }
}

/// Whether `event` is one of the reliability layer's own repair events, which are acted on when
/// they arrive: a repair held behind the very gap it fills (its own stream's) would never be
/// released.
fn acts_at_once(event: &InterRoleEvent) -> bool {
    matches!(
        event.type_tag().as_str(),
        <Nak as Event>::TYPE_TAG | <Repair as Event>::TYPE_TAG
    )
}

/// The receiver side: per-sender positions, held-back events.
#[derive(Default)]
struct Sequencer {
    senders: HashMap<InstanceId, SenderState>,
    /// Whether some lane may have a gap open: when not, the periodic check skips the scan.
    gaps_open: bool,
}

/// What the sequencer decided about arrivals: deliver these, report those gaps.
#[derive(Default)]
struct Outcome {
    deliver: Vec<InterRoleEvent>,
    missed: Vec<(InstanceId, u64)>,
    duplicates: u64,
    /// Repair requests to send: (to, request).
    naks: Vec<(InstanceId, Nak)>,
}

/// A receiver's request for the events of a gap (a negative acknowledgement), directed to
/// their sender, which answers from its retention with a [`Repair`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Nak {
    /// The sender's incarnation the positions belong to.
    epoch: u64,
    /// Which stream: the multicast one, or the sender's directed stream to the requester.
    directed: bool,
    /// The first missing position.
    from: u64,
    /// The last missing position.
    to: u64,
}
interrole_core::impl_event!(Nak = "interrole.reliable.nak");

/// A sender's position, multicast when it has published since its last heartbeat (and every
/// few seconds while idle): a loss at the end of a stream shows as a gap before it, which is
/// then repaired or reported like any other. Never delivered to observers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Heartbeat;
interrole_core::impl_event!(Heartbeat = "interrole.reliable.heartbeat");

/// How often a sender that has published announces its position.
const HEARTBEAT_EVERY: Duration = Duration::from_millis(250);
/// How often an idle sender announces it anyway.
const HEARTBEAT_IDLE: Duration = Duration::from_secs(5);

/// A sender's answer to a [`Nak`]: the envelopes it still retains, as they were first sent,
/// and how many of the asked positions it no longer has.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Repair {
    /// Which stream the envelopes belong to.
    directed: bool,
    envelopes: Vec<Vec<u8>>,
    unavailable: u64,
}
interrole_core::impl_event!(Repair = "interrole.reliable.repair");

/// How long a gap waits for in-flight events before the sender is asked to repair it.
const NAK_DELAY: Duration = Duration::from_millis(20);
/// How often open gaps are checked (repair requests, timeouts).
const GAP_CHECK: Duration = Duration::from_millis(20);
/// How long before asking again.
const NAK_RETRY: Duration = Duration::from_secs(1);

/// An event the far end refused for now.
struct Busy {
    /// How many times it was refused.
    refusals: u32,
    /// When to send it again (or, sent, when to stop waiting for its outcome).
    due: Instant,
    /// Sent again; its acknowledgement (or a new refusal) is awaited.
    in_flight: bool,
}

/// How long to wait before sending an event again after its `refusals`-th refusal: 50 ms,
/// doubling, at most 2 s.
fn busy_delay(refusals: u32) -> Duration {
    Duration::from_millis(50u64 << refusals.saturating_sub(1).min(5)).min(Duration::from_secs(2))
}
/// The most holes of one stream asked for in one check.
const MAX_NAKS_PER_CHECK: usize = 64;
/// The most envelope bytes in one repair event.
const REPAIR_BYTES: usize = 256 * 1024;

impl Sequencer {
    fn arrive(&mut self, event: InterRoleEvent, config: &Reliability, out: &mut Outcome) {
        let pos = event.stream();
        if !pos.is_tracked() {
            out.deliver.push(event);
            return;
        }
        let sender = event.sender().clone();
        let state = self.senders.entry(sender.clone()).or_default();
        if pos.epoch < state.epoch {
            // A straggler from the sender's previous life.
            out.duplicates += 1;
            return;
        }
        if pos.epoch > state.epoch {
            // The sender restarted: what was held from its previous life is released.
            let old = std::mem::take(state);
            // (Drops counted before any event arrived belong to the stream that starts now.)
            state.dropped_before_first = old.dropped_before_first;
            for mut lane in [old.multicast, old.directed] {
                Self::give_up(&sender, &mut lane, out);
            }
            state.epoch = pos.epoch;
        }
        let lane = if pos.directed {
            &mut state.directed
        } else {
            &mut state.multicast
        };
        let dropped = std::mem::take(&mut state.dropped_before_first);
        let next = *lane
            .next
            .get_or_insert_with(|| pos.n.saturating_sub(dropped).max(1));
        if pos.n < next || lane.held.contains_key(&pos.n) {
            out.duplicates += 1;
            return;
        }
        if pos.n > next {
            self.gaps_open = true;
            lane.gap_since.get_or_insert_with(Instant::now);
            let held = if acts_at_once(&event) {
                let seq = event.seq();
                out.deliver.push(event);
                Held::Done(seq)
            } else {
                Held::Event(event)
            };
            lane.held.insert(pos.n, held);
            if lane.held.len() > config.max_held {
                Self::give_up(&sender, lane, out);
                if let Some(e) = out.deliver.last() {
                    state.last_seq = state.last_seq.max(e.seq());
                }
            }
            return;
        }
        lane.held.insert(pos.n, Held::Event(event));
        Self::release(lane, &mut state.last_seq, out);
    }

    /// Delivers the held events that follow `next` without a hole.
    fn release(lane: &mut Lane, last_seq: &mut u64, out: &mut Outcome) {
        let Some(mut next) = lane.next else { return };
        let start = next;
        while let Some(entry) = lane.held.first_entry() {
            if *entry.key() != next {
                break;
            }
            let held = entry.remove();
            *last_seq = (*last_seq).max(held.seq());
            if let Held::Event(e) = held {
                out.deliver.push(e);
            }
            next += 1;
        }
        lane.next = Some(next);
        if lane.held.is_empty() {
            lane.gap_since = None;
            lane.nak_at = None;
        } else if next != start || lane.gap_since.is_none() {
            // A hole was filled and another is next: its wait starts now, so that a stream with
            // many holes being repaired one after the other is not given up while it makes
            // progress.
            lane.gap_since = Some(Instant::now());
        }
    }

    /// Stops waiting for a gap: delivers what was held, and reports the size of each hole.
    fn give_up(sender: &InstanceId, lane: &mut Lane, out: &mut Outcome) {
        let Some(mut next) = lane.next else { return };
        let mut missed = 0;
        for (n, held) in std::mem::take(&mut lane.held) {
            missed += n.saturating_sub(next);
            next = n + 1;
            if let Held::Event(e) = held {
                out.deliver.push(e);
            }
        }
        lane.next = Some(next);
        lane.gap_since = None;
        lane.nak_at = None;
        if missed > 0 {
            out.missed.push((sender.clone(), missed));
        }
    }

    /// Asks for the repair of open gaps, and gives up those older than the timeout or that the
    /// sender cannot repair.
    fn expire(&mut self, config: &Reliability, out: &mut Outcome) {
        if !self.gaps_open {
            return;
        }
        let now = Instant::now();
        let mut open = false;
        for (sender, state) in &mut self.senders {
            for (directed, lane) in [(false, &mut state.multicast), (true, &mut state.directed)] {
                if let (Some(since), Some(next)) = (lane.gap_since, lane.next) {
                    let due = lane
                        .nak_at
                        .is_none_or(|at| now.duration_since(at) >= NAK_RETRY);
                    if now.duration_since(since) >= NAK_DELAY && due && !lane.doomed {
                        // Every hole at once (up to a bound), not only the first: holes repaired
                        // one per retry would take a second each.
                        let mut from = next;
                        let mut asked = 0;
                        for &n in lane.held.keys() {
                            if n > from {
                                out.naks.push((
                                    sender.clone(),
                                    Nak {
                                        epoch: state.epoch,
                                        directed,
                                        from,
                                        to: n - 1,
                                    },
                                ));
                                asked += 1;
                                if asked == MAX_NAKS_PER_CHECK {
                                    break;
                                }
                            }
                            from = n + 1;
                        }
                        if asked > 0 {
                            lane.nak_at = Some(now);
                        }
                    }
                }
                let timed_out = lane
                    .gap_since
                    .is_some_and(|at| now.duration_since(at) >= config.gap_timeout);
                if timed_out || (lane.doomed && lane.gap_since.is_some()) {
                    if timed_out {
                        tracing::warn!(%sender, timeout = ?config.gap_timeout, "a gap did not fill in time");
                    }
                    Self::give_up(sender, lane, out);
                    if let Some(e) = out.deliver.last() {
                        state.last_seq = state.last_seq.max(e.seq());
                    }
                }
                lane.doomed = false;
                open |= lane.gap_since.is_some();
            }
        }
        self.gaps_open = open;
    }

    /// The transport dropped `count` events of `sender` for this instance: when none of the
    /// sender's events has arrived yet, its first stream starts that much before the first that
    /// does.
    fn dropped(&mut self, sender: &InstanceId, count: u64) {
        let state = self.senders.entry(sender.clone()).or_default();
        if state.multicast.next.is_none() && state.directed.next.is_none() {
            state.dropped_before_first += count;
        }
    }

    fn held(&self) -> usize {
        self.senders
            .values()
            .map(|s| s.multicast.held.len() + s.directed.held.len())
            .sum()
    }

    /// Where to resume: the last sequence number delivered from each sender.
    fn positions(&self) -> Vec<(InstanceId, u64)> {
        let mut p: Vec<_> = self
            .senders
            .iter()
            .filter(|(_, s)| s.last_seq > 0)
            .map(|(id, s)| (id.clone(), s.last_seq))
            .collect();
        // The most recently active senders first, should the list be cut.
        p.sort_by_key(|e| std::cmp::Reverse(e.1));
        p
    }
}

/// What the reliable layer sends through the bus.
pub(crate) enum Control {
    Nak(Nak),
    Repair(Repair),
    Heartbeat(Heartbeat),
}

/// Sends a [`Control`] event directed to an instance, numbered by the bus.
pub(crate) type ControlSender =
    Box<dyn Fn(&InstanceId, Control) -> Result<(), PublishError> + Send + Sync>;

/// The reliable client, host and receiver of one bus.
pub(crate) struct Reliable {
    transport: Arc<dyn Transport>,
    topic: Topic,
    instance: InstanceId,
    config: Reliability,
    max_envelope: Option<usize>,
    link: Mutex<Link>,
    sequencer: Mutex<Sequencer>,
    receiver: Arc<Receiver>,
    status: watch::Sender<HostStatus>,
    lost: mpsc::UnboundedSender<(u64, TransportError)>,
    lost_rx: Mutex<Option<mpsc::UnboundedReceiver<(u64, TransportError)>>>,
    close: watch::Sender<bool>,
    next_gen: AtomicU64,
    /// Events the far end refused for now (the relay over its publish rate), by sequence
    /// number: sent again after a delay that doubles with each refusal.
    busy: Mutex<HashMap<u64, Busy>>,
    resent: AtomicU64,
    rejected: AtomicU64,
    duplicates: AtomicU64,
    missed: AtomicU64,
    hints: AtomicU64,
    naks_sent: AtomicU64,
    repaired: AtomicU64,
    /// Whether a multicast event was published since the last heartbeat.
    published: std::sync::atomic::AtomicBool,
    /// Whether anything was ever published (idle heartbeats only then).
    ever_published: std::sync::atomic::AtomicBool,
    /// This bus's incarnation (its first sequence number).
    epoch: u64,
    control: std::sync::OnceLock<ControlSender>,
}

impl Reliable {
    pub(crate) fn new(
        transport: Arc<dyn Transport>,
        topic: Topic,
        instance: InstanceId,
        config: Reliability,
        receiver: Arc<Receiver>,
        epoch: u64,
    ) -> Arc<Self> {
        let (lost, lost_rx) = mpsc::unbounded_channel();
        let max_envelope = transport.limits().max_envelope;
        Arc::new(Self {
            transport,
            topic,
            instance,
            config,
            max_envelope,
            link: Mutex::new(Link {
                conn: None,
                entries: VecDeque::new(),
                first_unacked: 0,
                unacked_bytes: 0,
            }),
            sequencer: Mutex::new(Sequencer::default()),
            receiver,
            status: watch::channel(HostStatus {
                state: HostState::Created,
                error: None,
                attempts: 0,
                opened: 0,
                faults: 0,
            })
            .0,
            lost,
            lost_rx: Mutex::new(Some(lost_rx)),
            close: watch::channel(false).0,
            next_gen: AtomicU64::new(1),
            busy: Mutex::new(HashMap::new()),
            resent: AtomicU64::new(0),
            rejected: AtomicU64::new(0),
            duplicates: AtomicU64::new(0),
            missed: AtomicU64::new(0),
            hints: AtomicU64::new(0),
            naks_sent: AtomicU64::new(0),
            repaired: AtomicU64::new(0),
            published: std::sync::atomic::AtomicBool::new(false),
            ever_published: std::sync::atomic::AtomicBool::new(false),
            epoch,
            control: std::sync::OnceLock::new(),
        })
    }

    pub(crate) fn host(&self) -> ReliableHost {
        ReliableHost {
            status: self.status.subscribe(),
        }
    }

    pub(crate) fn is_connected(&self) -> bool {
        self.status.borrow().state == HostState::Opened
    }

    fn set_state(&self, state: HostState, error: Option<TransportError>) {
        let mut changed = false;
        self.status.send_modify(|s| {
            changed = s.state != state;
            s.state = state;
            match state {
                HostState::Opened => {
                    s.attempts = 0;
                    s.opened += 1;
                    s.error = None;
                }
                HostState::Faulted => {
                    s.attempts += 1;
                    if changed {
                        s.faults += 1;
                    }
                }
                _ => {}
            }
            if error.is_some() {
                s.error = error.clone();
            }
        });
        if changed {
            match (&error, state) {
                (Some(e), HostState::Closed) => {
                    tracing::error!(instance = %self.instance, topic = %self.topic, error = %e, "bus connection closed: {e}")
                }
                (Some(e), _) => {
                    tracing::warn!(instance = %self.instance, topic = %self.topic, state = %state, error = %e, "bus connection {state}")
                }
                (None, _) => {
                    tracing::info!(instance = %self.instance, topic = %self.topic, state = %state, "bus connection {state}")
                }
            }
        }
    }

    /// Queues `event` in the outbox and sends it if connected. Called with the bus's sequence
    /// lock held, so outbox order is sequence order.
    pub(crate) fn send(
        &self,
        event: &InterRoleEvent,
        target: Option<&InstanceId>,
    ) -> Result<(), PublishError> {
        if matches!(self.status.borrow().state, HostState::Closed) {
            if let Some(e) = self.status.borrow().error.clone() {
                return Err(PublishError::Transport(e));
            }
            return Err(PublishError::Closed);
        }
        let size = event.to_wire().map_err(TransportError::from)?.len();
        if let Some(max) = self.max_envelope {
            if size > max {
                return Err(PublishError::Transport(TransportError::new(
                    TransportErrorKind::PayloadTooLarge,
                    format!(
                        "an envelope of {size} bytes is over the transport's limit of {max} bytes"
                    ),
                )));
            }
        }
        let mut link = self.link.lock();
        let connected = link.conn.is_some();
        link.trim(&self.config, connected);
        if link.unacked() >= self.config.outbox_events
            || link.unacked_bytes + size > self.config.outbox_bytes
        {
            return Err(PublishError::OutboxFull {
                events: link.unacked(),
                bytes: link.unacked_bytes,
            });
        }
        if let Some((_, conn)) = &link.conn {
            match conn.send(event, target) {
                Ok(()) => {}
                // Lost: the event waits in the outbox for the next connection.
                Err(e) if e.is_transient() => {}
                Err(e) if e.kind() == TransportErrorKind::Closed => {}
                Err(e) => return Err(PublishError::Transport(e)),
            }
        }
        if target.is_none() && event.type_tag().as_str() != <Heartbeat as Event>::TYPE_TAG {
            self.published.store(true, Ordering::Relaxed);
        }
        link.entries.push_back(Entry {
            seq: event.seq(),
            target: target.cloned(),
            event: event.clone(),
            size,
            acked_at: None,
        });
        link.unacked_bytes += size;
        Ok(())
    }

    fn acknowledged(&self, seq: u64) {
        let mut link = self.link.lock();
        let now = Instant::now();
        while link.first_unacked < link.entries.len() {
            let i = link.first_unacked;
            if link.entries[i].seq > seq {
                break;
            }
            link.entries[i].acked_at = Some(now);
            link.unacked_bytes -= link.entries[i].size;
            link.first_unacked += 1;
        }
        let connected = link.conn.is_some();
        link.trim(&self.config, connected);
        drop(link);
        let mut busy = self.busy.lock();
        if !busy.is_empty() {
            // Sent again and acknowledged without a new refusal before the acknowledgement.
            busy.retain(|&s, b| !(b.in_flight && s <= seq));
        }
    }

    /// Sends again the events refused for now whose delay is over.
    fn resend_busy(&self) {
        let mut busy = self.busy.lock();
        if busy.is_empty() {
            return;
        }
        let now = Instant::now();
        let link = self.link.lock();
        let Some((_, conn)) = &link.conn else { return };
        let mut gone = Vec::new();
        // Due: its delay is over, or, sent again, no outcome came in time.
        for (&seq, b) in busy.iter_mut().filter(|(_, b)| b.due <= now) {
            match link.entries.iter().find(|e| e.seq == seq) {
                Some(e) => {
                    if conn.send(&e.event, e.target.as_ref()).is_ok() {
                        b.in_flight = true;
                        b.due = now + busy_delay(b.refusals + 1);
                        self.resent.fetch_add(1, Ordering::Relaxed);
                    }
                }
                None => gone.push(seq),
            }
        }
        drop(link);
        for seq in gone {
            // Out of the retention before the far end took it: it cannot be sent again.
            busy.remove(&seq);
            self.rejected.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(instance = %self.instance, seq, "an event refused for now left the retention before it could be sent again");
        }
    }

    fn rejected(&self, seq: u64, error: TransportError) {
        if error.kind() == TransportErrorKind::Unavailable
            && self.link.lock().entries.iter().any(|e| e.seq == seq)
        {
            // Refused for now: sent again later, with the same sequence number (the relay
            // handles a refused event's resend as new).
            let mut busy = self.busy.lock();
            let b = busy.entry(seq).or_insert(Busy {
                refusals: 0,
                due: Instant::now(),
                in_flight: false,
            });
            b.refusals += 1;
            b.due = Instant::now() + busy_delay(b.refusals);
            b.in_flight = false;
            tracing::debug!(instance = %self.instance, seq, %error, "an event was refused for now: sending it again later");
            return;
        }
        self.rejected.fetch_add(1, Ordering::Relaxed);
        let target = {
            let link = self.link.lock();
            link.entries
                .iter()
                .find(|e| e.seq == seq)
                .and_then(|e| e.target.clone())
        };
        tracing::warn!(instance = %self.instance, seq, target = ?target.as_ref().map(|t| t.as_str()), %error, "an event was refused");
        self.receiver.fail_request(seq, error);
    }

    fn arrived(&self, event: InterRoleEvent) {
        let mut out = Outcome::default();
        {
            let mut s = self.sequencer.lock();
            s.arrive(event, &self.config, &mut out);
        }
        self.finish(out);
    }

    /// The transport dropped `count` events for this instance (a slow-consumer drop, a replay
    /// window that no longer holds them). Counted only: the gaps they leave are found in the
    /// streams and repaired from the sender, or reported with their exact size; and after a
    /// relay restart, senders re-send them anyway.
    fn missed(&self, sender: Option<&InstanceId>, count: u64) {
        self.hints.fetch_add(count, Ordering::Relaxed);
        if let Some(sender) = sender {
            self.sequencer.lock().dropped(sender, count);
        }
        tracing::debug!(instance = %self.instance, sender = ?sender.map(|s| s.as_str()), count, "the transport dropped events");
    }

    fn report_missed(&self, sender: Option<InstanceId>, count: u64) {
        self.missed.fetch_add(count, Ordering::Relaxed);
        tracing::warn!(instance = %self.instance, sender = ?sender.as_ref().map(|s| s.as_str()), count, "events missed");
        self.receiver
            .hub
            .report(ObserverError::Missed { sender, count });
    }

    fn finish(&self, mut out: Outcome) {
        // Repairs unwrap into more arrivals, which may release more: until nothing is left.
        loop {
            if out.duplicates > 0 {
                self.duplicates.fetch_add(out.duplicates, Ordering::Relaxed);
            }
            for (sender, count) in out.missed.drain(..) {
                self.report_missed(Some(sender), count);
            }
            for (to, nak) in out.naks.drain(..) {
                self.naks_sent.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(instance = %self.instance, %to, ?nak, "asking for a repair");
                if let Some(send) = self.control.get() {
                    if let Err(error) = send(&to, Control::Nak(nak)) {
                        tracing::debug!(%error, "a repair request could not be sent");
                    }
                }
            }
            let mut repaired = Vec::new();
            let mut doomed = Vec::new();
            for e in out.deliver.drain(..) {
                match e.type_tag().as_str() {
                    <Nak as Event>::TYPE_TAG => match e.try_payload::<Nak>() {
                        Ok(nak) => self.answer_nak(e.sender(), nak),
                        Err(error) => tracing::warn!(%error, "an undecodable repair request"),
                    },
                    // It has done its work by arriving: the stream positions saw it.
                    <Heartbeat as Event>::TYPE_TAG => {}
                    <Repair as Event>::TYPE_TAG => match e.try_payload::<Repair>() {
                        Ok(repair) => {
                            if repair.unavailable > 0 {
                                // Not coming: once what did come is in, the gap is given up.
                                doomed.push((e.sender().clone(), repair.directed));
                            }
                            for bytes in &repair.envelopes {
                                match InterRoleEvent::from_wire(bytes.clone().into()) {
                                    Ok(inner) if inner.sender() == e.sender() => {
                                        repaired.push(inner)
                                    }
                                    Ok(_) | Err(_) => {
                                        tracing::warn!(from = %e.sender(), "a repaired envelope was refused");
                                    }
                                }
                            }
                        }
                        Err(error) => tracing::warn!(%error, "an undecodable repair"),
                    },
                    _ => self.receiver.event(e),
                }
            }
            if repaired.is_empty() {
                return;
            }
            self.repaired
                .fetch_add(repaired.len() as u64, Ordering::Relaxed);
            let mut s = self.sequencer.lock();
            for inner in repaired {
                s.arrive(inner, &self.config, &mut out);
            }
        }
    }

    /// Answers a repair request from this instance's retention.
    fn answer_nak(&self, requester: &InstanceId, nak: &Nak) {
        if nak.epoch != self.epoch || nak.to < nak.from {
            return;
        }
        let wanted = nak.to - nak.from + 1;
        let mut batches: Vec<Vec<Vec<u8>>> = vec![Vec::new()];
        let mut bytes = 0;
        let mut found = 0u64;
        {
            let link = self.link.lock();
            for e in &link.entries {
                let pos = e.event.stream();
                let same_stream = pos.directed == nak.directed
                    && (!nak.directed || e.target.as_ref() == Some(requester));
                if !same_stream || pos.n < nak.from || pos.n > nak.to {
                    continue;
                }
                let Ok(wire) = e.event.to_wire() else {
                    continue;
                };
                if bytes + wire.len() > REPAIR_BYTES && bytes > 0 {
                    batches.push(Vec::new());
                    bytes = 0;
                }
                bytes += wire.len();
                found += 1;
                batches
                    .last_mut()
                    .expect("one batch at least")
                    .push(wire.to_vec());
            }
        }
        let unavailable = wanted.saturating_sub(found);
        tracing::debug!(instance = %self.instance, to = %requester, found, unavailable, "repairing a gap");
        let Some(send) = self.control.get() else {
            return;
        };
        let last = batches.len() - 1;
        for (i, envelopes) in batches.into_iter().enumerate() {
            let repair = Repair {
                directed: nak.directed,
                envelopes,
                unavailable: if i == last { unavailable } else { 0 },
            };
            if let Err(error) = send(requester, Control::Repair(repair)) {
                tracing::debug!(%error, "a repair could not be sent");
                return;
            }
        }
    }

    pub(crate) fn stats(&self) -> ReliableStats {
        let (outbox_events, outbox_bytes, retained) = {
            let l = self.link.lock();
            (l.unacked(), l.unacked_bytes, l.first_unacked)
        };
        ReliableStats {
            outbox_events,
            outbox_bytes,
            retained,
            resent: self.resent.load(Ordering::Relaxed),
            rejected: self.rejected.load(Ordering::Relaxed),
            duplicates: self.duplicates.load(Ordering::Relaxed),
            missed: self.missed.load(Ordering::Relaxed),
            transport_dropped: self.hints.load(Ordering::Relaxed),
            held: self.sequencer.lock().held(),
            repair_requests: self.naks_sent.load(Ordering::Relaxed),
            repaired: self.repaired.load(Ordering::Relaxed),
        }
    }

    /// Installs a new connection and re-sends the outbox (retained events first), in order.
    fn install(&self, generation: u64, conn: Arc<dyn Connection>) {
        // The events refused for now are among those re-sent.
        for b in self.busy.lock().values_mut() {
            b.in_flight = true;
        }
        let mut link = self.link.lock();
        let mut resent = 0u64;
        for e in &link.entries {
            if conn.send(&e.event, e.target.as_ref()).is_err() {
                break;
            }
            resent += 1;
        }
        link.conn = Some((generation, conn));
        drop(link);
        if resent > 0 {
            self.resent.fetch_add(resent, Ordering::Relaxed);
            tracing::debug!(instance = %self.instance, resent, "outbox re-sent on the new connection");
        }
    }

    /// Keeps the connection until the bus closes: the reliable host.
    pub(crate) async fn supervise(self: Arc<Self>) {
        let Some(mut lost) = self.lost_rx.lock().take() else {
            return;
        };
        let mut close = self.close.subscribe();
        let mut ever_opened = false;
        let mut tick = tokio::time::interval(GAP_CHECK);
        let mut last_heartbeat = Instant::now();
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        'outer: loop {
            if *close.borrow() {
                break;
            }
            self.set_state(HostState::Opening, None);
            let open = {
                let this = self.clone();
                let rejoin = ever_opened;
                (move || {
                    let this = this.clone();
                    async move {
                        let generation = this.next_gen.fetch_add(1, Ordering::Relaxed);
                        let mut spec = OpenSpec::new(this.topic.clone(), this.instance.clone());
                        spec.resume = this.sequencer.lock().positions();
                        spec.rejoin = rejoin;
                        let inbound = Arc::new(GenInbound {
                            generation,
                            reliable: Arc::downgrade(&this),
                        });
                        this.transport
                            .open(spec, inbound)
                            .await
                            .map(|conn| (generation, conn))
                    }
                })
                .retry(self.config.retry.clone())
                .when(|e: &TransportError| e.is_transient())
                .notify(|e: &TransportError, wait: Duration| {
                    self.set_state(HostState::Faulted, Some(e.clone()));
                    tracing::debug!(instance = %self.instance, ?wait, "retrying in {wait:?}");
                    self.status.send_modify(|s| s.state = HostState::Opening);
                })
            };
            let opened = tokio::select! {
                r = open => r,
                _ = close.wait_for(|c| *c) => break 'outer,
            };
            let (generation, conn) = match opened {
                Ok(x) => x,
                Err(e) => {
                    let e = if e.is_transient() {
                        TransportError::new(e.kind(), format!("gave up retrying: {e}"))
                    } else {
                        e
                    };
                    self.set_state(HostState::Closed, Some(e));
                    self.link.lock().conn = None;
                    return;
                }
            };
            ever_opened = true;
            self.install(generation, conn.clone());
            self.set_state(HostState::Opened, None);
            if !conn.is_open() {
                let _ = self.lost.send((
                    generation,
                    TransportError::new(TransportErrorKind::ConnectionLost, "lost at once"),
                ));
            }
            // Connected: wait for the end, ageing gaps meanwhile.
            let error = loop {
                tokio::select! {
                    m = lost.recv() => match m {
                        Some((g, e)) if g == generation => break e,
                        Some(_) => continue,
                        None => break 'outer,
                    },
                    _ = close.wait_for(|c| *c) => break 'outer,
                    _ = tick.tick() => {
                        self.expire_gaps();
                        self.resend_busy();
                        self.heartbeat(&mut last_heartbeat);
                    }
                }
            };
            {
                let mut link = self.link.lock();
                if link.conn.as_ref().is_some_and(|(g, _)| *g == generation) {
                    link.conn = None;
                }
            }
            conn.close().await;
            if error.is_transient() {
                self.set_state(HostState::Faulted, Some(error));
            } else {
                self.set_state(HostState::Closed, Some(error));
                return;
            }
        }
    }

    fn expire_gaps(&self) {
        let mut out = Outcome::default();
        self.sequencer.lock().expire(&self.config, &mut out);
        if !out.deliver.is_empty() || !out.missed.is_empty() || !out.naks.is_empty() {
            self.finish(out);
        }
    }

    /// Announces this sender's position when it has published since the last announcement, or
    /// has been idle for [`HEARTBEAT_IDLE`] after publishing.
    fn heartbeat(&self, last: &mut Instant) {
        if last.elapsed() < HEARTBEAT_EVERY {
            return;
        }
        let fresh = self.published.swap(false, Ordering::Relaxed);
        if fresh {
            self.ever_published.store(true, Ordering::Relaxed);
        }
        let idle = self.ever_published.load(Ordering::Relaxed) && last.elapsed() >= HEARTBEAT_IDLE;
        if !(fresh || idle) {
            return;
        }
        *last = Instant::now();
        if let Some(send) = self.control.get() {
            // (The target is not used for heartbeats: they are multicast.)
            if let Err(error) = send(&self.instance, Control::Heartbeat(Heartbeat)) {
                tracing::debug!(%error, "a heartbeat could not be sent");
            }
        }
    }

    /// Sets how the reliable layer sends its own events (repair requests and repairs) through
    /// the bus's numbering.
    pub(crate) fn set_control(&self, send: ControlSender) {
        let _ = self.control.set(send);
    }

    /// The bus is gone without a close that finished: the host stops, and the connection goes
    /// with the last reference to this layer.
    pub(crate) fn abandon(&self) {
        let _ = self.close.send(true);
    }

    /// Closes: waits (up to `timeout`) for the outbox to be acknowledged, then closes the
    /// connection. Can be called again after its future was dropped: it waits again, then
    /// finishes.
    pub(crate) async fn close(&self, timeout: Duration) {
        if self.status.borrow().state != HostState::Closed {
            self.set_state(HostState::Closing, None);
        }
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let (unacked, connected) = {
                let busy = self.busy.lock().len();
                let l = self.link.lock();
                (l.unacked() + busy, l.conn.is_some())
            };
            if unacked == 0 || tokio::time::Instant::now() >= deadline {
                if unacked > 0 {
                    tracing::warn!(instance = %self.instance, unacked, connected, "closing with events not acknowledged");
                }
                break;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let _ = self.close.send(true);
        let conn = self.link.lock().conn.take();
        if let Some((_, conn)) = conn {
            let _ = conn.flush().await;
            conn.close().await;
        }
        self.set_state(HostState::Closed, None);
    }
}

/// The inbound of one connection attempt: forwards to the reliable layer while it lives.
struct GenInbound {
    generation: u64,
    reliable: Weak<Reliable>,
}

impl fmt::Debug for GenInbound {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GenInbound")
            .field("generation", &self.generation)
            .finish()
    }
}

impl Inbound for GenInbound {
    fn event(&self, event: InterRoleEvent) {
        if let Some(r) = self.reliable.upgrade() {
            r.arrived(event);
        }
    }

    fn acknowledged(&self, seq: u64) {
        if let Some(r) = self.reliable.upgrade() {
            r.acknowledged(seq);
        }
    }

    fn rejected(&self, seq: u64, error: TransportError) {
        if let Some(r) = self.reliable.upgrade() {
            r.rejected(seq, error);
        }
    }

    fn missed(&self, sender: Option<&InstanceId>, count: u64) {
        if let Some(r) = self.reliable.upgrade() {
            r.missed(sender, count);
        }
    }

    fn closed(&self, error: TransportError) {
        if let Some(r) = self.reliable.upgrade() {
            let _ = r.lost.send((self.generation, error));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use interrole_core::{EventId, StreamPos};
    use serde::{Deserialize, Serialize};

    #[derive(Debug, Serialize, Deserialize)]
    struct Tick(u64);
    interrole_core::impl_event!(Tick = "test.tick");

    fn ev(sender: &str, epoch: u64, n: u64) -> InterRoleEvent {
        InterRoleEvent::in_stream(
            EventId {
                sender: InstanceId::new(sender).unwrap(),
                seq: epoch + n,
            },
            Tick(n),
            StreamPos {
                epoch,
                directed: false,
                n,
            },
            None,
        )
    }

    fn run(s: &mut Sequencer, config: &Reliability, ns: &[u64]) -> (Vec<u64>, Vec<u64>, u64) {
        let mut out = Outcome::default();
        for &n in ns {
            s.arrive(ev("a", 100, n), config, &mut out);
        }
        let got = out.deliver.iter().map(|e| e.seq() - 100).collect();
        let missed = out.missed.iter().map(|m| m.1).collect();
        (got, missed, out.duplicates)
    }

    #[test]
    fn duplicates_are_dropped_and_gaps_held_until_filled() {
        let c = Reliability::default();
        let mut s = Sequencer::default();
        assert_eq!(run(&mut s, &c, &[5, 6, 6, 5]), (vec![5, 6], vec![], 2));
        // 8 and 9 wait for 7.
        assert_eq!(run(&mut s, &c, &[8, 9]), (vec![], vec![], 0));
        assert_eq!(s.held(), 2);
        assert_eq!(run(&mut s, &c, &[9, 7]), (vec![7, 8, 9], vec![], 1));
        assert_eq!(s.positions(), vec![(InstanceId::new("a").unwrap(), 109)]);
    }

    /// The repair requests an expiry check sends, as (from, to) ranges, once the NAK delay
    /// has passed.
    fn naks(s: &mut Sequencer, c: &Reliability) -> Vec<(u64, u64)> {
        for lane in s
            .senders
            .values_mut()
            .flat_map(|st| [&mut st.multicast, &mut st.directed])
        {
            if let Some(since) = lane.gap_since.as_mut() {
                *since -= NAK_DELAY;
            }
        }
        let mut out = Outcome::default();
        s.expire(c, &mut out);
        out.naks.iter().map(|(_, n)| (n.from, n.to)).collect()
    }

    #[test]
    fn every_hole_is_asked_for_at_once() {
        let c = Reliability::default();
        let mut s = Sequencer::default();
        assert_eq!(run(&mut s, &c, &[1, 3, 6, 7, 9]), (vec![1], vec![], 0));
        assert_eq!(naks(&mut s, &c), [(2, 2), (4, 5), (8, 8)]);
        // Asked once: not again before the retry interval.
        assert_eq!(naks(&mut s, &c), []);
        // A filled hole restarts the wait of the next one (the gap timeout counts from progress).
        let before = s.senders.values().next().unwrap().multicast.gap_since;
        assert_eq!(run(&mut s, &c, &[2]), (vec![2, 3], vec![], 0));
        let after = s.senders.values().next().unwrap().multicast.gap_since;
        assert!(after > before);
    }

    #[test]
    fn events_dropped_before_the_first_arrival_are_a_gap_not_a_late_join() {
        let c = Reliability::default();
        let mut s = Sequencer::default();
        // The transport says 3 events of "a" were dropped before any arrived.
        s.dropped(&InstanceId::new("a").unwrap(), 3);
        assert_eq!(run(&mut s, &c, &[4, 5]), (vec![], vec![], 0));
        assert_eq!(naks(&mut s, &c), [(1, 3)]);
        assert_eq!(
            run(&mut s, &c, &[2, 1, 3]),
            (vec![1, 2, 3, 4, 5], vec![], 0)
        );
        // Without such a count, a first event far into the stream is where this instance
        // joined.
        let mut s = Sequencer::default();
        assert_eq!(run(&mut s, &c, &[40, 41]), (vec![40, 41], vec![], 0));
        // A count after events arrived says nothing about the start.
        s.dropped(&InstanceId::new("a").unwrap(), 5);
        assert_eq!(run(&mut s, &c, &[42]), (vec![42], vec![], 0));
    }

    #[test]
    fn a_repair_behind_a_gap_of_its_own_stream_is_acted_on_at_once() {
        let c = Reliability::default();
        let mut s = Sequencer::default();
        let directed = |n: u64, repair: bool| {
            let id = EventId {
                sender: InstanceId::new("a").unwrap(),
                seq: 100 + n,
            };
            let pos = StreamPos {
                epoch: 100,
                directed: true,
                n,
            };
            if repair {
                let r = Repair {
                    directed: false,
                    envelopes: vec![],
                    unavailable: 0,
                };
                InterRoleEvent::in_stream(id, r, pos, None)
            } else {
                InterRoleEvent::in_stream(id, Tick(n), pos, None)
            }
        };
        let mut out = Outcome::default();
        s.arrive(directed(1, false), &c, &mut out);
        // 2 was lost; the repair at 3 cannot wait for 2 to be repaired: it may carry it.
        s.arrive(directed(3, true), &c, &mut out);
        let tags = |out: &Outcome| -> Vec<String> {
            out.deliver
                .iter()
                .map(|e| e.type_tag().to_string())
                .collect()
        };
        assert_eq!(tags(&out), ["test.tick", "interrole.reliable.repair"]);
        // Once 2 comes, the stream moves past 3 without acting on the repair twice.
        let mut out = Outcome::default();
        s.arrive(directed(2, false), &c, &mut out);
        assert_eq!(tags(&out), ["test.tick"]);
        assert_eq!(s.held(), 0);
    }

    #[test]
    fn an_expired_gap_is_reported_with_its_size() {
        let c = Reliability::default().with_gap_timeout(Duration::ZERO);
        let mut s = Sequencer::default();
        assert_eq!(run(&mut s, &c, &[1, 4, 5, 7]), (vec![1], vec![], 0));
        let mut out = Outcome::default();
        s.expire(&c, &mut out);
        let got: Vec<_> = out.deliver.iter().map(|e| e.seq() - 100).collect();
        assert_eq!(got, [4, 5, 7]);
        assert_eq!(out.missed, [(InstanceId::new("a").unwrap(), 3)]);
        // Late arrivals of what was given up are duplicates now.
        assert_eq!(run(&mut s, &c, &[2, 6, 8]), (vec![8], vec![], 2));
    }

    #[test]
    fn a_gap_the_sender_cannot_repair_is_given_up_at_once() {
        let c = Reliability::default();
        let mut s = Sequencer::default();
        run(&mut s, &c, &[1]);
        assert_eq!(run(&mut s, &c, &[4, 5]), (vec![], vec![], 0));
        let mut out = Outcome::default();
        s.expire(&c, &mut out);
        assert!(
            out.deliver.is_empty(),
            "the 20 s gap timeout has not passed"
        );
        // A repair request is due after the delay...
        for st in s.senders.values_mut() {
            st.multicast.gap_since = Some(Instant::now() - NAK_DELAY);
        }
        s.expire(&c, &mut out);
        let a = InstanceId::new("a").unwrap();
        let nak = Nak {
            epoch: 100,
            directed: false,
            from: 2,
            to: 3,
        };
        assert_eq!(out.naks, [(a.clone(), nak)]);
        // ...and when the sender answers that it no longer has them, the gap is given up.
        s.senders.get_mut(&a).unwrap().multicast.doomed = true;
        s.expire(&c, &mut out);
        assert_eq!(out.deliver.len(), 2);
        assert_eq!(out.missed, [(a, 2)]);
    }

    #[test]
    fn a_restarted_sender_starts_afresh() {
        let c = Reliability::default();
        let mut s = Sequencer::default();
        run(&mut s, &c, &[1, 2, 3]);
        let mut out = Outcome::default();
        s.arrive(ev("a", 500, 1), &c, &mut out);
        s.arrive(ev("a", 100, 4), &c, &mut out);
        assert_eq!(out.deliver.len(), 1);
        assert_eq!(out.duplicates, 1);
    }

    mod props {
        use super::*;
        use proptest::prelude::*;

        proptest! {
            /// Whatever the transport does to a stream (duplicates, reorders, drops), the
            /// sequencer delivers each event at most once, in stream order, and once the gaps
            /// are given up, every event that arrived was delivered and the reported missed
            /// count is exactly the number of events that never arrived (tail losses excepted:
            /// nothing after them shows they existed).
            #[test]
            fn delivers_once_in_order_and_counts_exactly_what_never_came(
                len in 1u64..60,
                ops in proptest::collection::vec((0u64..60, 0u8..4), 0..200),
            ) {
                let c = Reliability::default().with_gap_timeout(Duration::ZERO);
                let mut s = Sequencer::default();
                let mut out = Outcome::default();
                // The first event always arrives first (a subscriber that joins midway starts
                // where it joins); then the transport's arrivals.
                // Reordering comes from the random order itself; op 1 duplicates, op 3 lets the
                // gap timeout pass (what arrives later below the position is a duplicate).
                let mut arrivals = vec![1u64];
                s.arrive(ev("a", 100, 1), &c, &mut out);
                for (n, op) in ops {
                    let n = 1 + n % len;
                    arrivals.push(n);
                    s.arrive(ev("a", 100, n), &c, &mut out);
                    match op {
                        1 => s.arrive(ev("a", 100, n), &c, &mut out),
                        3 => s.expire(&c, &mut out),
                        _ => {}
                    }
                }
                s.expire(&c, &mut out);
                let delivered: Vec<u64> = out.deliver.iter().map(|e| e.seq() - 100).collect();
                for w in delivered.windows(2) {
                    prop_assert!(w[0] < w[1], "out of order or twice: {:?}", delivered);
                }
                let arrived: std::collections::BTreeSet<u64> = arrivals.iter().copied().collect();
                let max = *arrived.iter().max().unwrap();
                // Everything that arrived is delivered, except what came after its hole had
                // been given up (a late arrival below the stream's position is a duplicate).
                for n in &delivered {
                    prop_assert!(arrived.contains(n));
                }
                let missed: u64 = out.missed.iter().map(|m| m.1).sum();
                let delivered_set: std::collections::BTreeSet<u64> = delivered.iter().copied().collect();
                // No event is both delivered and counted missed, none is neither, up to the
                // highest position seen.
                prop_assert_eq!(delivered_set.len() as u64 + missed, max, "delivered {:?} missed {}", delivered, missed);
                prop_assert_eq!(s.held(), 0);
            }
        }
    }
}
