//! `compare bus`, the cross-process figures of record: what a user of the [`Bus`] gets on each
//! network transport, against raw async-nats written as a competent NATS user writes it.
//!
//! One publisher and [`SUBSCRIBERS`] subscribers, each its own connection, on a broker in a child
//! process, with typed events of about [`EVENT_BYTES`] bytes ([`BenchEvent`], bincode):
//!
//! - [`System::RelayBus`]: one `Bus` per publisher and subscriber,
//!   `Bus::builder().relay(url, credentials)`, on the relay server (`compare relay-server`);
//! - [`System::NatsBus`]: the same with `.nats(NatsOptions::new(url))`, on `nats-server` (core
//!   NATS);
//! - [`System::RawNats`]: no bus: one async-nats client per subscriber with one subscription
//!   each, one for the publisher, default options, `Client::publish` per event (no flush: the
//!   client's connection task writes out whatever is queued), the event bincode-encoded with
//!   the same configuration as the bus's payloads, decoded on arrival.
//!
//! A bus subscriber is a typed [`Observer`] of [`BenchEvent`] (`Bus::observe`, what
//! `Bus::subscribe` with a closure wraps, plus `on_error` to count what the bus reports missed);
//! a raw subscriber is a task reading its `Subscriber` stream. Both do the same per event: check
//! it against the subscriber's bitmap by publisher and sequence number ([`verify`](crate::verify)),
//! note the receive time, and publish the subscriber's count of distinct events for the window.
//!
//! The pacing, the window and the figures are those of [`relay::multicast_run`]: at
//! [`Pace::Max`] the publisher sends batches of up to [`relay::BATCH`] events, at most
//! [`relay::WINDOW`] events ahead of the slowest subscriber (a bus's `publish` failing with
//! [`PublishError::OutboxFull`] means wait 200 µs and try again; counted); at [`Pace::Paced`]
//! whatever is due about every millisecond. Each event carries its send time, nanoseconds since
//! one `Instant` of this process, taken just before its `publish`; the latency is the time its
//! subscriber's code gets it minus that. Before measuring, every connection is open (a bus's
//! host reports `Opened`; a raw client has flushed its subscription) and a warm-up event (send
//! time 0, not counted) has reached every subscriber.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use futures::StreamExt;
use interrole::nats::NatsOptions;
use interrole::relay::Credentials;
use interrole::{Bus, Observer, ObserverError, PublishError, Subscription};
use serde::{Deserialize, Serialize};

use crate::relay::{self, KEY, KEY_NAME, Pace, RunResult};
use crate::verify::Deliveries;

type Error = Box<dyn std::error::Error + Send + Sync>;

/// Subscribers of `compare bus`, each its own connection.
pub const SUBSCRIBERS: usize = relay::MULTICAST_SUBSCRIBERS;
/// About how many bytes a [`BenchEvent`] takes bincode-encoded: its integers are variable-length,
/// so 250 to 256 in the runs (sequence numbers from 251, send times from 65,536 ns).
pub const EVENT_BYTES: usize = 256;
/// The padding that brings a [`BenchEvent`] to about [`EVENT_BYTES`].
const PAD_BYTES: usize = 240;
/// How long a delivery may be awaited before it counts as lost (as in [`relay`]).
const GRACE: Duration = Duration::from_secs(5);
/// How long connecting and the warm-up may take.
const READY_MAX: Duration = Duration::from_secs(30);
/// How often the warm-up event is published again while a subscriber has not had it.
const WARM_UP_RETRY: Duration = Duration::from_millis(100);
/// How long the publisher waits when the window or the bus's outbox is full.
const BACK_OFF: Duration = Duration::from_micros(200);
/// The publisher's instance id (a bus) or client name.
const PUBLISHER: &str = "bench-pub";

/// The event of `compare bus`: who sent it, its number, when, and padding to about
/// [`EVENT_BYTES`] bytes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BenchEvent {
    /// The publisher's number in the run (one publisher: 0).
    pub publisher: u32,
    /// The publisher's sequence number for it, from 0.
    pub seq: u64,
    /// The send time, nanoseconds since the run's `Instant`; 0 for the warm-up event.
    pub sent_ns: u64,
    /// Filler.
    pub pad: Padding,
}
interrole::impl_event!(BenchEvent = "bench.event");

/// Bytes that serde sees as bytes (what the `serde_bytes` crate does): bincode writes their
/// length and copies them in one go, where a plain `Vec<u8>` is a sequence decoded byte by byte
/// (a quarter of the load process's time in a first profile, on every system alike).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Padding(pub Vec<u8>);

impl Serialize for Padding {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_bytes(&self.0)
    }
}

impl<'de> Deserialize<'de> for Padding {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Bytes;
        impl<'de> serde::de::Visitor<'de> for Bytes {
            type Value = Padding;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("bytes")
            }
            fn visit_bytes<E: serde::de::Error>(self, v: &[u8]) -> Result<Padding, E> {
                Ok(Padding(v.to_vec()))
            }
            fn visit_byte_buf<E: serde::de::Error>(self, v: Vec<u8>) -> Result<Padding, E> {
                Ok(Padding(v))
            }
        }
        // Borrowed where the decoder can (bincode from a slice: one copy, no zeroing first).
        deserializer.deserialize_bytes(Bytes)
    }
}

impl BenchEvent {
    /// Event `seq` of publisher 0, sent at `sent_ns`.
    pub fn new(seq: u64, sent_ns: u64) -> Self {
        Self {
            publisher: 0,
            seq,
            sent_ns,
            pad: Padding(vec![0x5a; PAD_BYTES]),
        }
    }
}

/// The bincode configuration of the bus's payloads (`interrole_core::codec`): standard.
fn encode(event: &BenchEvent) -> Result<Vec<u8>, Error> {
    Ok(bincode::serde::encode_to_vec(
        event,
        bincode::config::standard(),
    )?)
}

fn decode(bytes: &[u8]) -> Option<BenchEvent> {
    bincode::serde::decode_from_slice(bytes, bincode::config::standard())
        .ok()
        .map(|(e, _)| e)
}

/// What `compare bus` measures, in the order of each round.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum System {
    /// A `Bus` per publisher and subscriber over the relay transport, on the relay server.
    RelayBus,
    /// A `Bus` per publisher and subscriber over the NATS transport (core), on nats-server.
    NatsBus,
    /// Raw async-nats clients on nats-server: the baseline.
    RawNats,
}

impl System {
    /// Every system, in the order of a round.
    pub const ALL: [System; 3] = [System::RelayBus, System::NatsBus, System::RawNats];

    /// The system's name in tables.
    pub fn name(self) -> &'static str {
        match self {
            System::RelayBus => "relay-bus",
            System::NatsBus => "nats-bus",
            System::RawNats => "raw-nats",
        }
    }

    /// Whether it runs on the relay server (else on nats-server).
    pub fn on_relay(self) -> bool {
        self == System::RelayBus
    }
}

/// What a bus run counted beyond the [`RunResult`]: how the bus got there.
#[derive(Debug, Clone, Copy, Default)]
pub struct BusNotes {
    /// Times `publish` failed with [`PublishError::OutboxFull`] and was tried again.
    pub outbox_full: u64,
    /// Events the subscribers' buses dropped as duplicates (before their observers).
    pub filtered_duplicates: u64,
    /// Events the subscribers' buses got through repairs.
    pub repaired: u64,
    /// Events the publisher's bus sent again.
    pub resent: u64,
}

/// The state the run shares with every subscriber.
struct Shared {
    epoch: Instant,
    last_delivery_ns: AtomicU64,
    record_latency: bool,
}

impl Shared {
    fn now_ns(&self) -> u64 {
        self.epoch.elapsed().as_nanos() as u64
    }
}

/// One subscriber's checks: its bitmap and latencies (behind a lock, taken once per event and
/// never contended but at the end), its count of distinct events for the window, whether the
/// warm-up event came, and what its bus reported missed.
struct Checked {
    shared: Arc<Shared>,
    inner: std::sync::Mutex<Inner>,
    distinct: AtomicU64,
    warmed: AtomicBool,
    missed: AtomicU64,
}

struct Inner {
    deliveries: Deliveries,
    latencies: Vec<u64>,
}

impl Checked {
    fn new(shared: Arc<Shared>) -> Arc<Self> {
        Arc::new(Self {
            shared,
            inner: std::sync::Mutex::new(Inner {
                deliveries: Deliveries::new(1),
                latencies: Vec::new(),
            }),
            distinct: AtomicU64::new(0),
            warmed: AtomicBool::new(false),
            missed: AtomicU64::new(0),
        })
    }

    /// `event` arrived (`None`: something that is not a [`BenchEvent`]).
    fn deliver(&self, event: Option<&BenchEvent>) {
        let now = self.shared.now_ns();
        let mut inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        match event {
            Some(e) if e.sent_ns == 0 => {
                self.warmed.store(true, Ordering::Relaxed);
                return;
            }
            Some(e) => {
                inner.deliveries.record(Some(e.publisher as usize), e.seq);
                if self.shared.record_latency {
                    inner.latencies.push(now.saturating_sub(e.sent_ns));
                }
            }
            None => {
                inner.deliveries.record(None, 0);
            }
        }
        self.distinct
            .store(inner.deliveries.distinct(), Ordering::Relaxed);
        drop(inner);
        self.shared
            .last_delivery_ns
            .fetch_max(now, Ordering::Relaxed);
    }

    fn take(&self) -> (Deliveries, Vec<u64>) {
        let mut inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        (
            inner.deliveries.clone(),
            std::mem::take(&mut inner.latencies),
        )
    }
}

/// A bus subscriber's observer.
struct CheckObserver(Arc<Checked>);

impl Observer<BenchEvent> for CheckObserver {
    fn on_next(&self, event: &BenchEvent) {
        self.0.deliver(Some(event));
    }

    fn on_error(&self, error: ObserverError) {
        match error {
            ObserverError::Missed { count, .. } => {
                self.0.missed.fetch_add(count, Ordering::Relaxed);
            }
            ObserverError::Undecodable { .. } => self.0.deliver(None),
            other => eprintln!("compare bus: subscriber observer error: {other}"),
        }
    }
}

/// The publishing side of a run.
enum Publisher {
    Bus {
        bus: Bus,
        outbox_full: u64,
    },
    Raw {
        client: async_nats::Client,
        subject: async_nats::Subject,
    },
}

impl Publisher {
    /// Publishes event `seq`, stamped now (`warm_up`: stamped 0).
    async fn send(&mut self, shared: &Shared, seq: u64, warm_up: bool) -> Result<(), Error> {
        let sent_ns = if warm_up { 0 } else { shared.now_ns() };
        match self {
            Publisher::Bus { bus, outbox_full } => loop {
                match bus.publish(BenchEvent::new(seq, sent_ns)) {
                    Ok(_) => return Ok(()),
                    Err(PublishError::OutboxFull { .. }) => {
                        *outbox_full += 1;
                        tokio::time::sleep(BACK_OFF).await;
                    }
                    Err(e) => return Err(format!("publish {seq}: {e}").into()),
                }
            },
            Publisher::Raw { client, subject } => {
                let bytes = encode(&BenchEvent::new(seq, sent_ns))?;
                client.publish(subject.clone(), bytes.into()).await?;
                Ok(())
            }
        }
    }
}

/// Everything a run holds open.
struct Connections {
    publisher: Publisher,
    subscribers: Vec<Arc<Checked>>,
    /// Bus runs: the subscribers' buses and observer guards.
    buses: Vec<(Bus, Subscription)>,
    /// Raw runs: the subscriber tasks, and the flag that stops them.
    tasks: Vec<tokio::task::JoinHandle<()>>,
    stop: Arc<AtomicBool>,
}

fn build_bus(system: System, url: &str, topic: &str, id: &str) -> Result<Bus, Error> {
    let builder = Bus::builder().instance(id).topic(topic);
    let builder = match system {
        System::RelayBus => builder.relay(url, Credentials::key(KEY_NAME, KEY)),
        System::NatsBus => builder.nats(NatsOptions::new(url)),
        System::RawNats => return Err("raw-nats has no bus".into()),
    };
    Ok(builder.build()?)
}

async fn wait_opened(bus: &Bus) -> Result<(), Error> {
    bus.host()
        .ok_or("a bus on a network transport has a host")?
        .wait_opened(READY_MAX)
        .await?;
    Ok(())
}

async fn connect(
    system: System,
    url: &str,
    topic: &str,
    subscribers: usize,
    shared: &Arc<Shared>,
) -> Result<Connections, Error> {
    let stop = Arc::new(AtomicBool::new(false));
    let mut checks = Vec::with_capacity(subscribers);
    let mut buses = Vec::new();
    let mut tasks = Vec::new();
    let publisher = if system == System::RawNats {
        for _ in 0..subscribers {
            let check = Checked::new(shared.clone());
            let client = async_nats::connect(url).await?;
            let sub = client.subscribe(topic.to_owned()).await?;
            client.flush().await?;
            tasks.push(tokio::spawn(raw_subscriber(
                client,
                sub,
                check.clone(),
                stop.clone(),
            )));
            checks.push(check);
        }
        let client = async_nats::ConnectOptions::new()
            .name(PUBLISHER)
            .connect(url)
            .await?;
        Publisher::Raw {
            client,
            subject: async_nats::Subject::from(topic),
        }
    } else {
        for i in 0..subscribers {
            let check = Checked::new(shared.clone());
            let bus = build_bus(system, url, topic, &format!("sub-{i}"))?;
            let guard = bus.observe::<BenchEvent, _>(CheckObserver(check.clone()));
            buses.push((bus, guard));
            checks.push(check);
        }
        let bus = build_bus(system, url, topic, PUBLISHER)?;
        for (b, _) in &buses {
            wait_opened(b).await?;
        }
        wait_opened(&bus).await?;
        Publisher::Bus {
            bus,
            outbox_full: 0,
        }
    };
    Ok(Connections {
        publisher,
        subscribers: checks,
        buses,
        tasks,
        stop,
    })
}

/// A raw subscriber: reads its stream until told to stop, checking each event.
async fn raw_subscriber(
    client: async_nats::Client,
    mut sub: async_nats::Subscriber,
    check: Arc<Checked>,
    stop: Arc<AtomicBool>,
) {
    while !stop.load(Ordering::Relaxed) {
        match tokio::time::timeout(Duration::from_millis(50), sub.next()).await {
            Err(_) => continue,
            Ok(Some(m)) => check.deliver(decode(&m.payload).as_ref()),
            Ok(None) => break,
        }
    }
    let _ = sub.unsubscribe().await;
    drop(client);
}

/// The fewest distinct events a subscriber has.
fn slowest(subscribers: &[Arc<Checked>]) -> u64 {
    subscribers
        .iter()
        .map(|c| c.distinct.load(Ordering::Relaxed))
        .min()
        .unwrap_or(0)
}

/// One run of `system` with one publisher and `subscribers` subscribers on `topic` (a relay path
/// or the prefix of the NATS subjects) of the broker at `url` (`ws://…` for the relay, `nats://…`
/// otherwise); latencies recorded when `record_latency`.
///
/// # Errors
/// A connection failed, a bus did not open within 30 s, the warm-up event did not reach every
/// subscriber within 30 s, or a publish failed otherwise than with a full outbox.
pub async fn bus_run(
    system: System,
    url: &str,
    topic: &str,
    subscribers: usize,
    pace: Pace,
    record_latency: bool,
) -> Result<(RunResult, BusNotes), Error> {
    let shared = Arc::new(Shared {
        epoch: Instant::now(),
        last_delivery_ns: AtomicU64::new(0),
        record_latency,
    });
    let mut c = connect(system, url, topic, subscribers, &shared).await?;

    // Warm-up: until every subscriber has had it.
    let t = Instant::now();
    let mut sent_at = None::<Instant>;
    while c
        .subscribers
        .iter()
        .any(|s| !s.warmed.load(Ordering::Relaxed))
    {
        if t.elapsed() > READY_MAX {
            return Err(format!(
                "{}: warm-up event not delivered to every subscriber",
                system.name()
            )
            .into());
        }
        if sent_at.is_none_or(|s| s.elapsed() >= WARM_UP_RETRY) {
            c.publisher.send(&shared, 0, true).await?;
            sent_at = Some(Instant::now());
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }

    let start_ns = shared.now_ns();
    let published = match pace {
        Pace::Max { events, max } => publish_max(&mut c, &shared, events, max).await?,
        Pace::Paced { rate, run } => publish_paced(&mut c, &shared, rate, run).await?,
    };
    // Until every subscriber has everything, or the grace period is over.
    let t = Instant::now();
    while t.elapsed() < GRACE && slowest(&c.subscribers) < published {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let end_ns = shared.last_delivery_ns.load(Ordering::Relaxed);

    // Closed before the bitmaps are read: whatever arrived until then counts.
    let mut notes = BusNotes::default();
    let mut rejected = 0;
    c.stop.store(true, Ordering::Relaxed);
    for task in c.tasks.drain(..) {
        task.await?;
    }
    for (bus, guard) in c.buses.drain(..) {
        if let Some(s) = bus.reliable_stats() {
            notes.filtered_duplicates += s.duplicates;
            notes.repaired += s.repaired;
        }
        bus.close().await;
        drop(guard);
    }
    if let Publisher::Bus { bus, outbox_full } = &c.publisher {
        notes.outbox_full = *outbox_full;
        if let Some(s) = bus.reliable_stats() {
            notes.resent = s.resent;
            rejected = s.rejected;
        }
        bus.close().await;
    }
    let mut per_subscriber = Vec::with_capacity(subscribers);
    let mut latencies_ns = Vec::new();
    let mut missed = 0;
    for s in &c.subscribers {
        let (deliveries, latencies) = s.take();
        per_subscriber.push(deliveries.counts(published));
        latencies_ns.extend(latencies);
        missed += s.missed.load(Ordering::Relaxed);
    }
    latencies_ns.sort_unstable();
    Ok((
        RunResult {
            published,
            per_subscriber,
            missed,
            rejected,
            elapsed: Duration::from_nanos(end_ns.saturating_sub(start_ns)),
            latencies_ns,
        },
        notes,
    ))
}

async fn publish_max(
    c: &mut Connections,
    shared: &Shared,
    events: u64,
    max: Duration,
) -> Result<u64, Error> {
    let t = Instant::now();
    let mut sent = 0u64;
    while sent < events && t.elapsed() < max {
        let lead = sent - slowest(&c.subscribers).min(sent);
        if lead >= relay::WINDOW {
            tokio::time::sleep(BACK_OFF).await;
            continue;
        }
        let n = (relay::BATCH as u64)
            .min(events - sent)
            .min(relay::WINDOW - lead);
        for seq in sent..sent + n {
            c.publisher.send(shared, seq, false).await?;
        }
        sent += n;
        // A bus's publish does not yield: let the connection tasks run.
        tokio::task::yield_now().await;
    }
    Ok(sent)
}

async fn publish_paced(
    c: &mut Connections,
    shared: &Shared,
    rate: u64,
    run: Duration,
) -> Result<u64, Error> {
    let mut pacer = relay::Pacer::new(rate, run);
    while let Some((from, n)) = pacer.next().await {
        for seq in from..from + n {
            c.publisher.send(shared, seq, false).await?;
        }
        // A bus's publish does not yield: let the connection tasks run.
        tokio::task::yield_now().await;
    }
    Ok(pacer.sent())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nats::NatsProcess;

    #[test]
    fn an_event_is_about_256_bytes_and_round_trips() {
        for (seq, sent_ns) in [
            (251, 65_536),
            (70_000, 3_000_000_000),
            (199_999, 40_000_000_000),
        ] {
            let e = BenchEvent::new(seq, sent_ns);
            let bytes = encode(&e).expect("encode");
            assert!(
                (250..=EVENT_BYTES).contains(&bytes.len()),
                "{} bytes for seq {seq}",
                bytes.len()
            );
            assert_eq!(decode(&bytes), Some(e));
        }
        assert_eq!(decode(b"\x01"), None);
    }

    fn check(rt: &tokio::runtime::Runtime, system: System, url: &str) {
        let pace = Pace::Max {
            events: 2000,
            max: Duration::from_secs(10),
        };
        let (r, _) = rt
            .block_on(bus_run(system, url, "bench-test", 3, pace, true))
            .expect("run");
        assert_eq!(r.published, 2000, "{}", system.name());
        assert_eq!(r.delivered(), 6000, "{}", system.name());
        assert!(r.is_exact(), "{}: {:?}", system.name(), r.counts());
        assert_eq!(r.latencies_ns.len(), 6000);
    }

    #[test]
    fn the_relay_bus_delivers_every_event_once_in_order() {
        let rt = relay::runtime().expect("runtime");
        // The relay in this process (`compare` runs it as a child process).
        let server = rt
            .block_on(interrole_relay_server::Server::bind(
                interrole_relay_server::Config {
                    listen: "127.0.0.1:0".parse().expect("address"),
                    keys: vec![
                        interrole_relay_server::KeyConfig::parse_flag(&format!("{KEY_NAME}={KEY}"))
                            .expect("key"),
                    ],
                    ..interrole_relay_server::Config::default()
                },
            ))
            .expect("relay");
        let url = format!("ws://{}", server.local_addr());
        check(&rt, System::RelayBus, &url);
    }

    #[test]
    #[ignore = "needs nats-server"]
    fn the_nats_systems_deliver_every_event_once_in_order() {
        let server = NatsProcess::spawn()
            .expect("start nats-server")
            .expect("nats-server is not installed (apt-get install nats-server)");
        let rt = relay::runtime().expect("runtime");
        check(&rt, System::NatsBus, &server.url());
        check(&rt, System::RawNats, &server.url());
    }
}
