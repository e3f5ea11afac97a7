//! The transport conformance kit: the behaviour every [`Transport`] must show, as checks that a
//! transport's own tests run against a real far end.
//!
//! A transport crate implements [`Harness`] (how to get a transport as one process would, and how
//! to restart the far end) and expands [`conformance_suite!`](crate::conformance_suite) in a test
//! file; every check becomes one `#[tokio::test]`:
//!
//! ```ignore
//! interrole_core::conformance_suite!(my_transport, MyHarness::start().await);
//! ```
//!
//! The checks: multicast reaches every other connection exactly once and never echoes;
//! per-sender order; directed delivery reaches the target alone; a closed connection receives
//! nothing more and refuses to send; after the far end restarts, open connections are told with a
//! transient error and new ones carry events again; envelopes over the transport's limit are
//! refused with [`TransportErrorKind::PayloadTooLarge`] (and without a limit, a large one arrives
//! intact). Each check panics with a message saying what was expected and what was seen.
//!
//! A check that nothing more arrives (no duplicate, no echo, nothing for a bystander or a closed
//! connection) never waits a while to see: the sender sends a marker event after the events under
//! test, and the check looks once the marker has arrived. Per-sender order makes that proof for
//! the marker's receiver; for another receiver (an echo back to the sender, a closed connection),
//! the marker comes through the far end after the events under test, which it forwards in the
//! order it receives them.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use tokio::sync::Notify;

use crate::event::InterRoleEvent;
use crate::id::{EventId, InstanceId, Topic};
use crate::transport::{
    Connection, Inbound, OpenSpec, Transport, TransportError, TransportErrorKind,
};

/// How long a check waits for something that should happen.
pub const PATIENCE: Duration = Duration::from_secs(10);

/// The number a check's marker event carries ([`KitEvent::n`]): sent after the events under
/// test, its arrival shows that they would have arrived before it.
pub const MARKER: u64 = u64::MAX;

/// What a transport under test provides to the kit.
#[async_trait]
pub trait Harness: Send + Sync {
    /// A transport as one process would have it. Called once per simulated process; the
    /// transports returned must all reach the same far end.
    async fn transport(&self) -> Arc<dyn Transport>;

    /// Restarts the far end (kills and starts again the server, resets the fabric). Connections
    /// open at that moment must end with a transient error. Returns `false` when the transport has
    /// no far end that can be restarted, which fails the restart check: every transport has one.
    async fn restart_far_end(&self) -> bool;
}

/// The event the kit sends.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct KitEvent {
    /// A number the check chooses.
    pub n: u64,
    /// Filler, to make envelopes of a given size.
    pub blob: Vec<u8>,
}
crate::impl_event!(KitEvent = "interrole.testkit.event");

/// An [`Inbound`] that records everything, for checks to wait on.
#[derive(Debug, Default)]
pub struct Recorder {
    state: Mutex<Recorded>,
    changed: Notify,
}

/// What a [`Recorder`] has seen.
#[derive(Debug, Default, Clone)]
pub struct Recorded {
    /// Events, in arrival order.
    pub events: Vec<InterRoleEvent>,
    /// Errors that ended the connection.
    pub closed: Vec<TransportError>,
    /// The highest acknowledged sequence number.
    pub acknowledged: u64,
    /// Missed-event notices: (sender, count).
    pub missed: Vec<(Option<InstanceId>, u64)>,
}

impl Recorder {
    /// A new, empty recorder.
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    /// A copy of what was recorded so far.
    pub fn snapshot(&self) -> Recorded {
        self.state.lock().unwrap().clone()
    }

    /// Waits until `done` holds for what was recorded, or [`PATIENCE`] runs out.
    pub async fn wait_for(&self, what: &str, done: impl Fn(&Recorded) -> bool) -> Recorded {
        let deadline = tokio::time::Instant::now() + PATIENCE;
        loop {
            let notified = self.changed.notified();
            {
                let state = self.state.lock().unwrap();
                if done(&state) {
                    return state.clone();
                }
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                let state = self.snapshot();
                panic!(
                    "timed out after {PATIENCE:?} waiting for {what}; recorded {} events, closed: {:?}",
                    state.events.len(),
                    state.closed
                );
            }
        }
    }

    /// Waits until a marker event ([`MARKER`]) from `sender` has arrived, or [`PATIENCE`] runs
    /// out; returns what was recorded then.
    pub async fn wait_for_marker(&self, sender: &InstanceId) -> Recorded {
        self.wait_for(&format!("the marker from {sender}"), |s| {
            s.events.iter().any(|e| is_marker_from(e, sender))
        })
        .await
    }

    fn update(&self, f: impl FnOnce(&mut Recorded)) {
        f(&mut self.state.lock().unwrap());
        self.changed.notify_waiters();
    }
}

impl Recorded {
    /// The events that are not markers.
    pub fn non_markers(&self) -> Vec<&InterRoleEvent> {
        self.events.iter().filter(|e| !is_marker(e)).collect()
    }
}

fn is_marker(e: &InterRoleEvent) -> bool {
    e.payload::<KitEvent>().is_some_and(|p| p.n == MARKER)
}

fn is_marker_from(e: &InterRoleEvent, sender: &InstanceId) -> bool {
    e.sender() == sender && is_marker(e)
}

impl Inbound for Recorder {
    fn event(&self, event: InterRoleEvent) {
        self.update(|s| s.events.push(event));
    }
    fn acknowledged(&self, seq: u64) {
        self.update(|s| s.acknowledged = s.acknowledged.max(seq));
    }
    fn missed(&self, sender: Option<&InstanceId>, count: u64) {
        self.update(|s| s.missed.push((sender.cloned(), count)));
    }
    fn closed(&self, error: TransportError) {
        self.update(|s| s.closed.push(error));
    }
}

/// One connection under test with its recorder.
#[derive(Debug)]
pub struct Peer {
    /// The instance id.
    pub instance: InstanceId,
    /// The open connection.
    pub connection: Arc<dyn Connection>,
    /// What arrived for it.
    pub inbound: Arc<Recorder>,
    next_seq: u64,
}

impl Peer {
    /// Opens `instance` on `topic` through `transport`, retrying transient failures for
    /// [`PATIENCE`] (a far end that was just restarted may need a moment).
    pub async fn open(transport: &dyn Transport, topic: &Topic, instance: &str) -> Self {
        let instance = InstanceId::new(instance).expect("valid instance id");
        let inbound = Recorder::new();
        let deadline = tokio::time::Instant::now() + PATIENCE;
        loop {
            let spec = OpenSpec::new(topic.clone(), instance.clone());
            match transport.open(spec, inbound.clone()).await {
                Ok(connection) => {
                    return Self {
                        instance,
                        connection,
                        inbound,
                        next_seq: 1,
                    };
                }
                Err(e) if e.is_transient() && tokio::time::Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                Err(e) => panic!("opening {instance} on {topic} failed: {e}"),
            }
        }
    }

    /// This peer, numbering its events after `previous`'s: the same instance reconnected, whose
    /// sequence numbers keep increasing (as a bus's do) so that a transport that remembers them
    /// (a relay that did not restart, a durable store) does not take new events for duplicates.
    pub fn continuing(mut self, previous: &Peer) -> Self {
        self.next_seq = self.next_seq.max(previous.next_seq);
        self
    }

    /// A new event from this peer, with the next sequence number.
    pub fn event(&mut self, n: u64, blob_len: usize) -> InterRoleEvent {
        let seq = self.next_seq;
        self.next_seq += 1;
        InterRoleEvent::new(
            EventId {
                sender: self.instance.clone(),
                seq,
            },
            KitEvent {
                n,
                blob: vec![(n % 251) as u8; blob_len],
            },
        )
    }

    /// Sends a marker event ([`MARKER`]) to `to`, or to everyone, panicking on any error.
    pub fn send_marker(&mut self, to: Option<&InstanceId>) {
        let e = self.event(MARKER, 0);
        self.connection
            .send(&e, to)
            .unwrap_or_else(|err| panic!("{} failed to send its marker: {err}", self.instance));
    }

    /// Sends `count` multicast events numbered from 0, panicking on any error.
    pub fn send_many(&mut self, count: u64) {
        for n in 0..count {
            let e = self.event(n, 16);
            self.connection
                .send(&e, None)
                .unwrap_or_else(|err| panic!("{} failed to send event {n}: {err}", self.instance));
        }
    }
}

fn unique_topic(check: &str) -> Topic {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    let pid = std::process::id();
    Topic::new(format!(
        "kit/{check}-{pid}-{}",
        N.fetch_add(1, Ordering::Relaxed)
    ))
    .expect("valid topic")
}

fn count_by_sender(events: &[InterRoleEvent]) -> HashMap<InstanceId, Vec<u64>> {
    let mut by = HashMap::<InstanceId, Vec<u64>>::new();
    for e in events {
        by.entry(e.sender().clone()).or_default().push(e.seq());
    }
    by
}

/// Opens `kit-a`, `kit-b` and `kit-c` on a fresh topic, each through its own transport (as three
/// processes would).
async fn three_peers(h: &dyn Harness, check: &str) -> (Peer, Peer, Peer) {
    let topic = unique_topic(check);
    let mut peers = Vec::with_capacity(3);
    for name in ["kit-a", "kit-b", "kit-c"] {
        let transport = h.transport().await;
        peers.push(Peer::open(&*transport, &topic, name).await);
    }
    let c = peers.pop().expect("three peers");
    let b = peers.pop().expect("three peers");
    let a = peers.pop().expect("three peers");
    (a, b, c)
}

/// Multicast reaches every other connection exactly once, payload intact; the sender hears no
/// echo.
pub async fn multicast_reaches_every_listener_once(h: &dyn Harness) {
    let (mut a, b, mut c) = three_peers(h, "multicast").await;
    a.send_many(100);
    a.send_marker(None);
    a.connection.flush().await.expect("flush");
    for peer in [&b, &c] {
        // Everything a sent before its marker has arrived by now, duplicates included.
        let seen = peer.inbound.wait_for_marker(&a.instance).await;
        let events = seen.non_markers();
        assert_eq!(
            events.len(),
            100,
            "{} received {} events, expected exactly 100",
            peer.instance,
            events.len()
        );
        for (i, e) in events.iter().enumerate() {
            let p = e
                .payload::<KitEvent>()
                .unwrap_or_else(|| panic!("{}: event {i} has no KitEvent payload", peer.instance));
            assert_eq!(
                p.n, i as u64,
                "{}: payload of event {i} changed",
                peer.instance
            );
            assert_eq!(p.blob.len(), 16);
            assert_eq!(e.sender(), &a.instance);
        }
    }
    // c answers with a marker of its own once it has everything: an echo of a's events would
    // have reached a through the far end before it.
    c.send_marker(None);
    c.connection.flush().await.expect("flush");
    let seen = a.inbound.wait_for_marker(&c.instance).await;
    let echoed = seen
        .events
        .iter()
        .filter(|e| e.sender() == &a.instance)
        .count();
    assert_eq!(
        echoed, 0,
        "the sender received {echoed} of its own events back"
    );
}

/// Each receiver sees each sender's events in the order they were sent, none missing.
pub async fn per_sender_order(h: &dyn Harness) {
    let (mut a, mut b, c) = three_peers(h, "order").await;
    let sa = tokio::spawn(async move {
        a.send_many(500);
        a.connection.flush().await.expect("flush a");
        a
    });
    let sb = tokio::spawn(async move {
        b.send_many(500);
        b.connection.flush().await.expect("flush b");
        b
    });
    let (_a, _b) = (sa.await.unwrap(), sb.await.unwrap());
    let seen = c
        .inbound
        .wait_for("1000 events", |s| s.events.len() >= 1000)
        .await;
    let by = count_by_sender(&seen.events);
    for sender in ["kit-a", "kit-b"] {
        let seqs = by.get(sender).map(Vec::as_slice).unwrap_or_default();
        let expected: Vec<u64> = (1..=500).collect();
        assert_eq!(
            seqs,
            expected.as_slice(),
            "sequence of {sender} as seen by kit-c"
        );
    }
}

/// A directed event reaches its target and no one else.
pub async fn directed_delivery(h: &dyn Harness) {
    let (mut a, b, c) = three_peers(h, "directed").await;
    for n in 0..10 {
        let e = a.event(n, 8);
        a.connection
            .send(&e, Some(&b.instance))
            .expect("directed send");
    }
    // Markers both ways a stray event could take: directed to each receiver, and to everyone.
    a.send_marker(Some(&b.instance));
    a.send_marker(Some(&c.instance));
    a.send_marker(None);
    a.connection.flush().await.expect("flush");
    let markers = |s: &Recorded| {
        s.events
            .iter()
            .filter(|e| is_marker_from(e, &a.instance))
            .count()
    };
    let seen = b
        .inbound
        .wait_for("both markers at the target", |s| markers(s) >= 2)
        .await;
    let got: Vec<u64> = seen
        .non_markers()
        .iter()
        .map(|e| e.payload::<KitEvent>().expect("a KitEvent").n)
        .collect();
    assert_eq!(
        got,
        (0..10).collect::<Vec<_>>(),
        "the target got duplicates or lost some"
    );
    let seen = c
        .inbound
        .wait_for("both markers at the bystander", |s| markers(s) >= 2)
        .await;
    let stray = seen.non_markers().len();
    assert_eq!(stray, 0, "a bystander received {stray} directed events");
}

/// A closed connection receives nothing more and refuses to send; the others carry on.
pub async fn closed_connection_receives_nothing(h: &dyn Harness) {
    let topic = unique_topic("close");
    let (ta, tb, tc) = (
        h.transport().await,
        h.transport().await,
        h.transport().await,
    );
    let mut a = Peer::open(&*ta, &topic, "kit-a").await;
    let b = Peer::open(&*tb, &topic, "kit-b").await;
    let mut c = Peer::open(&*tc, &topic, "kit-c").await;
    a.send_many(5);
    c.inbound
        .wait_for("5 events", |s| s.events.len() >= 5)
        .await;
    c.connection.close().await;
    assert!(!c.connection.is_open(), "closed connection says it is open");
    let before = c.inbound.snapshot().events.len();
    a.send_many(20);
    a.send_marker(None);
    a.connection.flush().await.expect("flush");
    let seen = b.inbound.wait_for_marker(&a.instance).await;
    assert_eq!(seen.non_markers().len(), 25, "the others did not carry on");
    // A new connection through c's transport: once a's marker reached it, anything the far end
    // still sent c's closed connection was sent before.
    let again = Peer::open(&*tc, &topic, "kit-c2").await;
    a.send_marker(None);
    a.connection.flush().await.expect("flush");
    again.inbound.wait_for_marker(&a.instance).await;
    let after = c.inbound.snapshot().events.len();
    assert_eq!(
        after,
        before,
        "{} events arrived after close",
        after - before
    );
    let e = c.event(0, 1);
    let err = c
        .connection
        .send(&e, None)
        .expect_err("send after close must fail");
    assert_eq!(err.kind(), TransportErrorKind::Closed, "{err}");
}

/// After the far end restarts, open connections are told (transient) and new ones work.
pub async fn reconnect_after_far_end_restart(h: &dyn Harness) {
    let topic = unique_topic("restart");
    let (ta, tb) = (h.transport().await, h.transport().await);
    let mut a = Peer::open(&*ta, &topic, "kit-a").await;
    let b = Peer::open(&*tb, &topic, "kit-b").await;
    a.send_many(3);
    b.inbound
        .wait_for("3 events", |s| s.events.len() >= 3)
        .await;
    assert!(
        h.restart_far_end().await,
        "the harness cannot restart its far end: every transport must be tested for it"
    );
    for peer in [&a, &b] {
        let seen = peer
            .inbound
            .wait_for("a closed notice", |s| !s.closed.is_empty())
            .await;
        let err = &seen.closed[0];
        assert!(
            err.is_transient(),
            "restart reported as a fatal error: {err}"
        );
    }
    let mut a2 = Peer::open(&*ta, &topic, "kit-a").await.continuing(&a);
    let b2 = Peer::open(&*tb, &topic, "kit-b").await;
    a2.send_many(10);
    a2.connection.flush().await.expect("flush");
    b2.inbound
        .wait_for("10 events after restart", |s| s.events.len() >= 10)
        .await;
}

/// An envelope over the limit is refused with `PayloadTooLarge` and the connection still works;
/// without a limit, a large envelope arrives intact.
pub async fn payload_limits(h: &dyn Harness) {
    let topic = unique_topic("limits");
    let (ta, tb) = (h.transport().await, h.transport().await);
    let mut a = Peer::open(&*ta, &topic, "kit-a").await;
    let b = Peer::open(&*tb, &topic, "kit-b").await;
    match ta.limits().max_envelope {
        Some(max) => {
            let big = a.event(1, max + 1);
            let err = a
                .connection
                .send(&big, None)
                .expect_err("an envelope over the limit must be refused");
            assert_eq!(err.kind(), TransportErrorKind::PayloadTooLarge, "{err}");
            assert!(!err.is_transient());
            let ok = a.event(2, 64);
            a.connection
                .send(&ok, None)
                .expect("small send after refusal");
            let seen = b
                .inbound
                .wait_for("1 event", |s| !s.events.is_empty())
                .await;
            assert_eq!(seen.events[0].payload::<KitEvent>().unwrap().n, 2);
        }
        None => {
            let big = a.event(7, 4 * 1024 * 1024);
            a.connection.send(&big, None).expect("large send");
            let seen = b
                .inbound
                .wait_for("1 event", |s| !s.events.is_empty())
                .await;
            let p = seen.events[0].payload::<KitEvent>().expect("payload");
            assert_eq!(p.blob.len(), 4 * 1024 * 1024);
            assert!(p.blob.iter().all(|&x| x == 7));
        }
    }
}

/// Expands to one `#[tokio::test]` per conformance check, in a module named `$name`.
/// `$harness` is an expression (it may `.await`) giving a value that implements [`Harness`].
#[macro_export]
macro_rules! conformance_suite {
    ($name:ident, $harness:expr) => {
        mod $name {
            #[allow(unused_imports)]
            use super::*;
            $crate::conformance_suite!(@check $harness;
                multicast_reaches_every_listener_once,
                per_sender_order,
                directed_delivery,
                closed_connection_receives_nothing,
                reconnect_after_far_end_restart,
                payload_limits);
        }
    };
    (@check $harness:expr; $($check:ident),*) => {
        $(
            #[::tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $check() {
                let harness = $harness;
                $crate::testkit::$check(&harness).await;
            }
        )*
    };
}
