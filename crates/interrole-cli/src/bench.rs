//! `interrole bench`: one publisher bus and S subscriber buses in this process, on the server the
//! global options name, with every delivery checked by identity.
//!
//! Each subscriber bus observes every event and checks it: from the run's publisher, of the
//! bench's type, a sequence number it records in a bitmap ([`Tally`]); so a lost event, a
//! duplicate and one out of order are each counted for what they are. The publisher publishes
//! `--events` events of `--size` payload bytes as fast as the buses take them, at most
//! [`WINDOW`] events ahead of the slowest subscriber (an outbox that is full means wait
//! [`BACK_OFF`] and try again). Each event carries the time it was published (nanoseconds since
//! one `Instant` of the process): its latency is the time the subscriber's observer got it minus
//! that. Before measuring, every bus is connected and a warm-up event has reached every
//! subscriber. The run ends when every subscriber has every event, or when no delivery came for
//! [`IDLE_GRACE`]. Throughput is events published per second, from the first publish until the
//! last subscriber had the last event.

use std::io::Write;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use interrole::{Bus, InstanceId, InterRoleEvent, Observer, ObserverError, PublishError, Topic};
use serde::{Deserialize, Serialize};

use crate::args::BenchArgs;
use crate::connect::{Endpoint, random_hex};
use crate::error::CliError;
use crate::tally::{Counts, Tally};

/// The most events the publisher is ahead of the slowest subscriber.
const WINDOW: u64 = 2048;
/// Events published between two yields to the connection tasks.
const BATCH: u64 = 64;
/// How long the publisher waits when the window or its bus's outbox is full.
const BACK_OFF: Duration = Duration::from_micros(200);
/// How long the end of a run waits for a delivery before counting what is missing as lost.
const IDLE_GRACE: Duration = Duration::from_secs(5);
/// How long the warm-up may take once the buses are connected.
const WARM_UP_MAX: Duration = Duration::from_secs(10);
/// How often the warm-up event is published again while a subscriber has not had it.
const WARM_UP_RETRY: Duration = Duration::from_millis(100);
/// How often progress is printed.
const PROGRESS_EVERY: Duration = Duration::from_secs(1);
/// The sequence number of the warm-up event.
const WARM_UP: u64 = u64::MAX;

/// The bench's event: its sequence number and send time (8 bytes each, little endian), then
/// filler up to `--size` bytes. Serialized as bytes, so that the payload is `--size` bytes and
/// its length.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct BenchEvent(Vec<u8>);
interrole::impl_event!(BenchEvent = "interrole.cli.bench");

impl BenchEvent {
    fn new(seq: u64, sent_ns: u64, size: usize) -> Self {
        let mut bytes = Vec::with_capacity(size.max(16));
        bytes.extend_from_slice(&seq.to_le_bytes());
        bytes.extend_from_slice(&sent_ns.to_le_bytes());
        bytes.resize(size.max(16), 0x5a);
        Self(bytes)
    }

    /// The sequence number and the send time, `None` when the bytes are too short.
    fn read(&self) -> Option<(u64, u64)> {
        let seq = u64::from_le_bytes(self.0.get(0..8)?.try_into().ok()?);
        let sent = u64::from_le_bytes(self.0.get(8..16)?.try_into().ok()?);
        Some((seq, sent))
    }
}

impl Serialize for BenchEvent {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_bytes(&self.0)
    }
}

impl<'de> Deserialize<'de> for BenchEvent {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Bytes;
        impl serde::de::Visitor<'_> for Bytes {
            type Value = BenchEvent;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("bytes")
            }
            fn visit_bytes<E: serde::de::Error>(self, v: &[u8]) -> Result<BenchEvent, E> {
                Ok(BenchEvent(v.to_vec()))
            }
            fn visit_byte_buf<E: serde::de::Error>(self, v: Vec<u8>) -> Result<BenchEvent, E> {
                Ok(BenchEvent(v))
            }
        }
        deserializer.deserialize_bytes(Bytes)
    }
}

/// What every subscriber shares.
#[derive(Debug)]
struct Shared {
    epoch: Instant,
    publisher: InstanceId,
    last_delivery_ns: AtomicU64,
}

impl Shared {
    fn now_ns(&self) -> u64 {
        self.epoch.elapsed().as_nanos() as u64
    }
}

/// One subscriber's checks: its bitmap and latencies behind a lock (taken once per event, never
/// contended but at the end), its count of distinct events for the window and the progress,
/// whether the warm-up event came, and what its bus reported missed.
#[derive(Debug)]
struct Checked {
    shared: Arc<Shared>,
    inner: Mutex<Inner>,
    distinct: AtomicU64,
    warmed: AtomicBool,
    missed: AtomicU64,
}

#[derive(Debug, Default)]
struct Inner {
    tally: Tally,
    latencies_ns: Vec<u64>,
}

impl Checked {
    fn deliver(&self, event: &InterRoleEvent) {
        let now = self.shared.now_ns();
        let mut inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let read = (event.sender() == &self.shared.publisher)
            .then(|| event.payload::<BenchEvent>())
            .flatten()
            .and_then(BenchEvent::read);
        match read {
            Some((WARM_UP, _)) => {
                self.warmed.store(true, Ordering::Relaxed);
                return;
            }
            Some((seq, sent_ns)) => {
                if inner.tally.record(seq) {
                    inner.latencies_ns.push(now.saturating_sub(sent_ns));
                }
            }
            None => inner.tally.record_stray(),
        }
        self.distinct
            .store(inner.tally.distinct(), Ordering::Relaxed);
        drop(inner);
        self.shared
            .last_delivery_ns
            .fetch_max(now, Ordering::Relaxed);
    }
}

/// A subscriber bus's observer of every event.
struct Check(Arc<Checked>);

impl Observer<InterRoleEvent> for Check {
    fn on_next(&self, event: &InterRoleEvent) {
        self.0.deliver(event);
    }

    fn on_error(&self, error: ObserverError) {
        match error {
            ObserverError::Missed { count, .. } => {
                self.0.missed.fetch_add(count, Ordering::Relaxed);
            }
            other => eprintln!("bench: a subscriber's observer: {other}"),
        }
    }
}

/// The result of a run.
#[derive(Debug)]
pub(crate) struct Report {
    events: u64,
    subscribers: Vec<(InstanceId, Counts, u64, Vec<u64>)>,
    elapsed: Duration,
    outbox_full: u64,
}

impl Report {
    fn total(&self) -> Counts {
        self.subscribers
            .iter()
            .fold(Counts::default(), |sum, (_, c, _, _)| sum + *c)
    }

    /// Whether every event reached every subscriber once, in order.
    pub(crate) fn is_exact(&self) -> bool {
        let t = self.total();
        t.lost == 0 && t.duplicated == 0 && t.reordered == 0
    }

    /// The table and the closing line.
    pub(crate) fn print(&self, out: &mut impl Write) -> std::io::Result<()> {
        writeln!(
            out,
            "{:<24} {:>10} {:>8} {:>10} {:>9} {:>6} {:>7} {:>8} {:>8}",
            "subscriber",
            "delivered",
            "lost",
            "duplicated",
            "reordered",
            "stray",
            "missed",
            "p50_us",
            "p99_us"
        )?;
        let mut all = Vec::new();
        let mut missed = 0;
        for (id, c, m, latencies) in &self.subscribers {
            let (p50, p99) = (percentile(latencies, 50), percentile(latencies, 99));
            writeln!(
                out,
                "{:<24} {:>10} {:>8} {:>10} {:>9} {:>6} {:>7} {:>8} {:>8}",
                id.as_str(),
                c.delivered,
                c.lost,
                c.duplicated,
                c.reordered,
                c.stray,
                m,
                p50,
                p99
            )?;
            all.extend_from_slice(latencies);
            missed += m;
        }
        all.sort_unstable();
        let t = self.total();
        let (p50, p99) = (percentile(&all, 50), percentile(&all, 99));
        writeln!(
            out,
            "{:<24} {:>10} {:>8} {:>10} {:>9} {:>6} {:>7} {:>8} {:>8}",
            "all", t.delivered, t.lost, t.duplicated, t.reordered, t.stray, missed, p50, p99
        )?;
        let secs = self.elapsed.as_secs_f64();
        let throughput = if secs > 0.0 {
            (self.events as f64 / secs).round() as u64
        } else {
            0
        };
        writeln!(
            out,
            "{} events to {} subscribers in {:.3} s: {} deliveries/s; the publisher waited on a full outbox {} times",
            self.events,
            self.subscribers.len(),
            secs,
            if secs > 0.0 {
                (t.delivered as f64 / secs).round() as u64
            } else {
                0
            },
            self.outbox_full
        )?;
        writeln!(
            out,
            "bench events={} subscribers={} delivered={} lost={} duplicated={} throughput={}/s p50_us={} p99_us={}",
            self.events,
            self.subscribers.len(),
            t.delivered,
            t.lost,
            t.duplicated,
            throughput,
            p50,
            p99
        )
    }
}

/// The `p`th percentile (nearest rank) of sorted nanoseconds, in whole microseconds (0 when
/// there are none).
fn percentile(sorted_ns: &[u64], p: usize) -> u64 {
    let rank = (sorted_ns.len() * p).div_ceil(100).max(1);
    sorted_ns.get(rank - 1).map_or(0, |ns| ns / 1000)
}

/// Runs the bench.
///
/// # Errors
/// A bus did not connect, the warm-up event did not reach every subscriber in time, or a
/// publish failed otherwise than with a full outbox.
pub(crate) async fn run(endpoint: &Endpoint, args: &BenchArgs) -> Result<Report, CliError> {
    let topic = match &endpoint.topic {
        Some(t) => t.clone(),
        None => Topic::new(format!("bench-{}", random_hex())).expect("a valid topic"),
    };
    let base = endpoint.instance.as_str();
    let publisher_id = instance(&format!("{base}-pub"))?;
    let shared = Arc::new(Shared {
        epoch: Instant::now(),
        publisher: publisher_id.clone(),
        last_delivery_ns: AtomicU64::new(0),
    });
    let size = args.size as usize;
    eprintln!(
        "bench: {} subscribers and a publisher on {} (topic {})",
        args.subscribers,
        endpoint.server_url(),
        topic.as_str()
    );

    let mut subscribers = Vec::new();
    for i in 0..args.subscribers {
        let id = instance(&format!("{base}-sub-{i}"))?;
        let bus = endpoint.build(&id, Some(&topic))?;
        let checked = Arc::new(Checked {
            shared: shared.clone(),
            inner: Mutex::new(Inner::default()),
            distinct: AtomicU64::new(0),
            warmed: AtomicBool::new(false),
            missed: AtomicU64::new(0),
        });
        let guard = bus.observe_all(Check(checked.clone()));
        subscribers.push((id, bus, guard, checked));
    }
    let publisher = endpoint.build(&publisher_id, Some(&topic))?;
    let result = measure(endpoint, args, &shared, &publisher, &subscribers, size).await;
    for (_, bus, guard, _) in &subscribers {
        bus.close().await;
        let _ = guard;
    }
    publisher.close().await;
    let (elapsed, outbox_full) = result?;
    let mut rows = Vec::new();
    for (id, _, _, checked) in subscribers {
        let mut inner = checked.inner.lock().unwrap_or_else(|e| e.into_inner());
        let counts = inner.tally.counts(args.events);
        let mut latencies = std::mem::take(&mut inner.latencies_ns);
        latencies.sort_unstable();
        rows.push((
            id,
            counts,
            checked.missed.load(Ordering::Relaxed),
            latencies,
        ));
    }
    Ok(Report {
        events: args.events,
        subscribers: rows,
        elapsed,
        outbox_full,
    })
}

type Subscriber = (InstanceId, Bus, interrole::Subscription, Arc<Checked>);

/// Connects, warms up, publishes and waits for the deliveries; returns the time from the first
/// publish to the last delivery and how often the outbox was full.
async fn measure(
    endpoint: &Endpoint,
    args: &BenchArgs,
    shared: &Arc<Shared>,
    publisher: &Bus,
    subscribers: &[Subscriber],
    size: usize,
) -> Result<(Duration, u64), CliError> {
    for (_, bus, _, _) in subscribers {
        endpoint.wait_opened(bus).await?;
    }
    endpoint.wait_opened(publisher).await?;
    let slowest = || {
        subscribers
            .iter()
            .map(|s| s.3.distinct.load(Ordering::Relaxed))
            .min()
            .unwrap_or(0)
    };

    // Warm-up: until every subscriber has had it.
    let started = Instant::now();
    let mut sent_at = None::<Instant>;
    let mut outbox_full = 0u64;
    while subscribers
        .iter()
        .any(|s| !s.3.warmed.load(Ordering::Relaxed))
    {
        if started.elapsed() > WARM_UP_MAX {
            return Err(CliError::Bench(format!(
                "the warm-up event did not reach every subscriber within {WARM_UP_MAX:?}"
            )));
        }
        if sent_at.is_none_or(|s| s.elapsed() >= WARM_UP_RETRY) {
            publish(
                publisher,
                BenchEvent::new(WARM_UP, 0, size),
                &mut outbox_full,
            )
            .await?;
            sent_at = Some(Instant::now());
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    outbox_full = 0;

    let published = Arc::new(AtomicU64::new(0));
    let progress = tokio::spawn(progress(
        published.clone(),
        subscribers.iter().map(|s| s.3.clone()).collect(),
        args.events,
    ));
    let start_ns = shared.now_ns();
    let mut sent = 0u64;
    while sent < args.events {
        let lead = sent - slowest().min(sent);
        if lead >= WINDOW {
            tokio::time::sleep(BACK_OFF).await;
            continue;
        }
        let n = BATCH.min(args.events - sent).min(WINDOW - lead);
        for seq in sent..sent + n {
            let event = BenchEvent::new(seq, shared.now_ns(), size);
            publish(publisher, event, &mut outbox_full).await?;
        }
        sent += n;
        published.store(sent, Ordering::Relaxed);
        // A bus's publish does not yield: let the connection tasks run.
        tokio::task::yield_now().await;
    }
    // Until every subscriber has everything, or nothing came for a while.
    let mut last = (slowest(), Instant::now());
    while slowest() < args.events {
        tokio::time::sleep(Duration::from_millis(2)).await;
        let now = slowest();
        if now != last.0 {
            last = (now, Instant::now());
        } else if last.1.elapsed() >= IDLE_GRACE {
            eprintln!(
                "bench: nothing arrived for {IDLE_GRACE:?}; counting what is missing as lost"
            );
            break;
        }
    }
    progress.abort();
    let end_ns = shared.last_delivery_ns.load(Ordering::Relaxed);
    Ok((
        Duration::from_nanos(end_ns.saturating_sub(start_ns)),
        outbox_full,
    ))
}

/// Publishes `event`, waiting while the outbox is full.
async fn publish(bus: &Bus, event: BenchEvent, outbox_full: &mut u64) -> Result<(), CliError> {
    loop {
        match bus.publish(event.clone()) {
            Ok(_) => return Ok(()),
            Err(PublishError::OutboxFull { .. }) => {
                *outbox_full += 1;
                tokio::time::sleep(BACK_OFF).await;
            }
            Err(e) => return Err(CliError::Publish(e)),
        }
    }
}

/// Prints what was published and delivered so far, every [`PROGRESS_EVERY`], on standard error.
async fn progress(published: Arc<AtomicU64>, subscribers: Vec<Arc<Checked>>, events: u64) {
    let expected = events * subscribers.len() as u64;
    let mut tick = tokio::time::interval(PROGRESS_EVERY);
    tick.tick().await;
    loop {
        tick.tick().await;
        let delivered: u64 = subscribers
            .iter()
            .map(|s| s.distinct.load(Ordering::Relaxed))
            .sum();
        eprintln!(
            "bench: published {}/{events}, delivered {delivered}/{expected}",
            published.load(Ordering::Relaxed)
        );
    }
}

/// An instance id made of the base id, checked.
fn instance(id: &str) -> Result<InstanceId, CliError> {
    InstanceId::new(id).map_err(|source| CliError::Name {
        what: "--instance",
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_event_is_its_size_and_reads_back() {
        let e = BenchEvent::new(7, 1_000_000, 256);
        assert_eq!(e.0.len(), 256);
        assert_eq!(e.read(), Some((7, 1_000_000)));
        assert_eq!(BenchEvent(vec![1; 15]).read(), None);
    }

    fn report(counts: Counts) -> Report {
        let id = InstanceId::new("sub-0").expect("an id");
        Report {
            events: 2,
            subscribers: vec![(id, counts, 0, vec![1_000, 3_000])],
            elapsed: Duration::from_millis(1),
            outbox_full: 0,
        }
    }

    #[test]
    fn a_loss_or_a_duplicate_fails_the_run_and_shows_in_the_last_line() {
        let exact = Counts {
            delivered: 2,
            ..Counts::default()
        };
        assert!(report(exact).is_exact());
        let lost = Counts {
            delivered: 1,
            lost: 1,
            ..Counts::default()
        };
        let duplicated = Counts {
            duplicated: 1,
            ..exact
        };
        assert!(!report(lost).is_exact());
        assert!(!report(duplicated).is_exact());
        let mut out = Vec::new();
        report(lost).print(&mut out).expect("prints");
        let text = String::from_utf8(out).expect("UTF-8");
        assert_eq!(
            text.lines().last(),
            Some(
                "bench events=2 subscribers=1 delivered=1 lost=1 duplicated=0 throughput=2000/s \
                 p50_us=1 p99_us=3"
            )
        );
    }

    #[test]
    fn percentiles_are_read_from_sorted_samples_in_microseconds() {
        let ns: Vec<u64> = (1..=100).map(|us| us * 1000).collect();
        assert_eq!(percentile(&ns, 50), 50);
        assert_eq!(percentile(&ns, 99), 99);
        assert_eq!(percentile(&[], 99), 0);
    }
}
