//! The reliable host: the state machine that keeps a bus's connection (open through the retry
//! policy, re-open after a fault, resume where the bus left off, stop on a fatal error), and
//! `Reliable`, the engine of one bus that ties the outbox, the sequencer and the repairs to it.

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use backon::Retryable;
use interrole_core::{
    Connection, Event, Inbound, InstanceId, InterRoleEvent, OpenSpec, Topic, Transport,
    TransportError, TransportErrorKind,
};
use parking_lot::Mutex;
use tokio::sync::{mpsc, watch};

use super::config::Reliability;
use super::outbox::{Busy, Outbox, Sent, busy_delay};
use super::repair::{Control, HEARTBEAT_EVERY, HEARTBEAT_IDLE, Heartbeat, Nak, REPAIR_BYTES, Repair};
use super::sequencer::{Outcome, Sequencer};
use super::sink::{SendError, Sink};
use crate::meters::ReliableMeters;

/// How often open gaps are checked (repair requests, timeouts).
const GAP_CHECK: Duration = Duration::from_millis(20);


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

/// The reliable client, host and receiver of one bus.
pub(crate) struct Reliable {
    transport: Arc<dyn Transport>,
    topic: Topic,
    instance: InstanceId,
    config: Reliability,
    max_envelope: Option<usize>,
    outbox: Mutex<Outbox>,
    sequencer: Mutex<Sequencer>,
    sink: Arc<dyn Sink>,
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
    transport_dropped: AtomicU64,
    repair_requests: AtomicU64,
    repaired: AtomicU64,
    /// Whether a multicast event was published since the last heartbeat.
    published: std::sync::atomic::AtomicBool,
    /// Whether anything was ever published (idle heartbeats only then).
    ever_published: std::sync::atomic::AtomicBool,
    /// This bus's incarnation (its first sequence number).
    epoch: u64,
    /// The metrics handles: the counters above, the outbox and the connection.
    meters: ReliableMeters,
}

impl Reliable {
    pub(crate) fn new(
        transport: Arc<dyn Transport>,
        topic: Topic,
        instance: InstanceId,
        config: Reliability,
        sink: Arc<dyn Sink>,
        epoch: u64,
        meters: ReliableMeters,
    ) -> Arc<Self> {
        let (lost, lost_rx) = mpsc::unbounded_channel();
        let max_envelope = transport.limits().max_envelope;
        Arc::new(Self {
            transport,
            topic,
            instance,
            config,
            max_envelope,
            outbox: Mutex::new(Outbox {
                conn: None,
                entries: VecDeque::new(),
                first_unacked: 0,
                unacked_bytes: 0,
            }),
            sequencer: Mutex::new(Sequencer::default()),
            sink,
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
            transport_dropped: AtomicU64::new(0),
            repair_requests: AtomicU64::new(0),
            repaired: AtomicU64::new(0),
            published: std::sync::atomic::AtomicBool::new(false),
            ever_published: std::sync::atomic::AtomicBool::new(false),
            epoch,
            meters,
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
            self.meters
                .connected
                .set(f64::from(u8::from(state == HostState::Opened)));
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
    ) -> Result<(), SendError> {
        if matches!(self.status.borrow().state, HostState::Closed) {
            if let Some(e) = self.status.borrow().error.clone() {
                return Err(SendError::Transport(e));
            }
            return Err(SendError::Closed);
        }
        let size = event
            .to_wire()
            .map_err(|e| SendError::Transport(e.into()))?
            .len();
        if let Some(max) = self.max_envelope {
            if size > max {
                return Err(SendError::Transport(TransportError::new(
                    TransportErrorKind::PayloadTooLarge,
                    format!(
                        "an envelope of {size} bytes is over the transport's limit of {max} bytes"
                    ),
                )));
            }
        }
        let mut link = self.outbox.lock();
        let connected = link.conn.is_some();
        link.trim(&self.config, connected);
        if link.unacked() >= self.config.outbox_events
            || link.unacked_bytes + size > self.config.outbox_bytes
        {
            return Err(SendError::OutboxFull {
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
                Err(e) => return Err(SendError::Transport(e)),
            }
        }
        if target.is_none() && event.type_tag().as_str() != <Heartbeat as Event>::TYPE_TAG {
            self.published.store(true, Ordering::Relaxed);
        }
        link.entries.push_back(Sent {
            seq: event.seq(),
            target: target.cloned(),
            event: event.clone(),
            size,
            acked_at: None,
        });
        link.unacked_bytes += size;
        self.gauge_outbox(&link);
        Ok(())
    }

    fn acknowledged(&self, seq: u64) {
        let mut link = self.outbox.lock();
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
        self.gauge_outbox(&link);
        drop(link);
        let mut busy = self.busy.lock();
        if !busy.is_empty() {
            // Sent again and acknowledged without a new refusal before the acknowledgement.
            busy.retain(|&s, b| !(b.in_flight && s <= seq));
        }
    }

    /// Sets the outbox gauges (the outbox is locked).
    fn gauge_outbox(&self, link: &Outbox) {
        self.meters.outbox_events.set(link.unacked() as f64);
        self.meters.outbox_bytes.set(link.unacked_bytes as f64);
    }

    /// Sends again the events refused for now whose delay is over.
    fn resend_busy(&self) {
        let mut busy = self.busy.lock();
        if busy.is_empty() {
            return;
        }
        let now = Instant::now();
        let link = self.outbox.lock();
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
                        self.meters.resent.increment(1);
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
            self.meters.rejected.increment(1);
            tracing::warn!(instance = %self.instance, seq, "an event refused for now left the retention before it could be sent again");
        }
    }

    fn rejected(&self, seq: u64, error: TransportError) {
        if error.kind() == TransportErrorKind::Unavailable
            && self.outbox.lock().entries.iter().any(|e| e.seq == seq)
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
        self.meters.rejected.increment(1);
        let target = {
            let link = self.outbox.lock();
            link.entries
                .iter()
                .find(|e| e.seq == seq)
                .and_then(|e| e.target.clone())
        };
        tracing::warn!(instance = %self.instance, seq, target = ?target.as_ref().map(|t| t.as_str()), %error, "an event was refused");
        self.sink.refused(seq, error);
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
        self.transport_dropped.fetch_add(count, Ordering::Relaxed);
        self.meters.transport_dropped.increment(count);
        if let Some(sender) = sender {
            self.sequencer.lock().dropped(sender, count);
        }
        tracing::debug!(instance = %self.instance, sender = ?sender.map(|s| s.as_str()), count, "the transport dropped events");
    }

    fn report_missed(&self, sender: Option<InstanceId>, count: u64) {
        self.missed.fetch_add(count, Ordering::Relaxed);
        self.meters.missed.increment(count);
        tracing::warn!(instance = %self.instance, sender = ?sender.as_ref().map(|s| s.as_str()), count, "events missed");
        self.sink.missed(sender, count);
    }

    fn finish(&self, mut out: Outcome) {
        // Repairs unwrap into more arrivals, which may release more: until nothing is left.
        loop {
            if out.duplicates > 0 {
                self.duplicates.fetch_add(out.duplicates, Ordering::Relaxed);
                self.meters.duplicates.increment(out.duplicates);
            }
            for (sender, count) in out.missed.drain(..) {
                self.report_missed(Some(sender), count);
            }
            for (to, nak) in out.naks.drain(..) {
                self.repair_requests.fetch_add(1, Ordering::Relaxed);
                self.meters.repair_requests.increment(1);
                tracing::debug!(instance = %self.instance, %to, ?nak, "asking for a repair");
                self.sink.control(&to, Control::Nak(nak));
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
                    _ => self.sink.deliver(e),
                }
            }
            if repaired.is_empty() {
                return;
            }
            self.repaired
                .fetch_add(repaired.len() as u64, Ordering::Relaxed);
            self.meters.repaired.increment(repaired.len() as u64);
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
            let link = self.outbox.lock();
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
        let last = batches.len() - 1;
        for (i, envelopes) in batches.into_iter().enumerate() {
            let repair = Repair {
                directed: nak.directed,
                envelopes,
                unavailable: if i == last { unavailable } else { 0 },
            };
            if !self.sink.control(requester, Control::Repair(repair)) {
                return;
            }
        }
    }

    pub(crate) fn stats(&self) -> ReliableStats {
        let (outbox_events, outbox_bytes, retained) = {
            let l = self.outbox.lock();
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
            transport_dropped: self.transport_dropped.load(Ordering::Relaxed),
            held: self.sequencer.lock().held(),
            repair_requests: self.repair_requests.load(Ordering::Relaxed),
            repaired: self.repaired.load(Ordering::Relaxed),
        }
    }

    /// Installs a new connection and re-sends the outbox (retained events first), in order.
    fn install(&self, generation: u64, conn: Arc<dyn Connection>) {
        // The events refused for now are among those re-sent.
        for b in self.busy.lock().values_mut() {
            b.in_flight = true;
        }
        let mut link = self.outbox.lock();
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
            self.meters.resent.increment(resent);
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
                    self.outbox.lock().conn = None;
                    return;
                }
            };
            if ever_opened {
                self.meters.reconnections.increment(1);
            }
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
                let mut link = self.outbox.lock();
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
        // (The target is not used for heartbeats: they are multicast.)
        self.sink.control(&self.instance, Control::Heartbeat(Heartbeat));
    }

    /// The bus is gone without a close that finished: the host stops, and the connection goes
    /// with the last reference to this layer.
    pub(crate) fn abandon(&self) {
        let _ = self.close.send(true);
    }

    /// Closes: waits (up to `timeout`) for the outbox to be acknowledged, then closes the
    /// connection. Can be called again after its future was dropped: it waits again, then
    /// finishes.
    /// Waits up to `timeout` for the far end to acknowledge what was published, then closes the
    /// connection; returns whether everything was acknowledged.
    pub(crate) async fn close(&self, timeout: Duration) -> bool {
        if self.status.borrow().state != HostState::Closed {
            self.set_state(HostState::Closing, None);
        }
        let deadline = tokio::time::Instant::now() + timeout;
        let acknowledged = loop {
            let (unacked, connected) = {
                let busy = self.busy.lock().len();
                let l = self.outbox.lock();
                (l.unacked() + busy, l.conn.is_some())
            };
            if unacked == 0 || tokio::time::Instant::now() >= deadline {
                if unacked > 0 {
                    tracing::warn!(instance = %self.instance, unacked, connected, "closing with events not acknowledged");
                }
                break unacked == 0;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        };
        let _ = self.close.send(true);
        let conn = self.outbox.lock().conn.take();
        if let Some((_, conn)) = conn {
            let _ = conn.flush().await;
            conn.close().await;
        }
        self.set_state(HostState::Closed, None);
        acknowledged
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

