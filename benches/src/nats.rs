//! NATS load measurements for `compare multicast` and `compare sweep`, the same shape as
//! [`relay::multicast_run`] on a `nats-server` in a child process ([`NatsProcess`]): one
//! publisher and N subscribers, each its own async-nats client on 127.0.0.1, with the same opaque
//! 256-byte envelopes as the payload of plain core NATS messages on one subject: the send time in
//! the first 8 bytes (nanoseconds since an `Instant` of this process), then the event's sequence
//! number (from 0) in the next 8 and the publisher's number (0) in the next 4, little-endian;
//! each subscriber checks what it receives by those two ([`verify`](crate::verify)).
//!
//! The publisher calls `Client::publish` once per event, as a NATS user writes it: no
//! `Client::flush` after a batch, since the client's connection task writes out whatever is
//! queued as soon as it can. Each subscriber reads its `Subscriber` stream. The pacing, the
//! window against the slowest subscriber, the warm-up, the grace period and the figures are
//! those of [`relay::multicast_run`], so that the two rows of a run compare like with like.
//!
//! Core NATS has no acknowledgements, rejections or gap reports: the window runs against the
//! slowest subscriber only, and [`RunResult::rejected`] and [`RunResult::missed`] are always 0
//! (anything dropped shows as [`RunResult::lost`]).
//!
//! The server runs with `GOMAXPROCS` set to the relay's tokio worker count and, through
//! [`NatsProcess::spawn_pinned`], on the relay's CPU set ([`cpu`](crate::cpu)).

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use futures::{FutureExt, StreamExt};
use interrole_core::Bytes;

use crate::cpu::{BROKER_WORKERS, BrokerCpus};
use crate::relay::{self, Pace, RunResult};
use crate::verify::Deliveries;

type Error = Box<dyn std::error::Error + Send + Sync>;

/// The executable started by [`NatsProcess::spawn`], looked up on `PATH`.
pub const NATS_SERVER: &str = "nats-server";
/// How long `nats-server` may take to accept connections.
const START_MAX: Duration = Duration::from_secs(5);
/// How long a delivery may be awaited before it counts as lost (as in [`relay`]).
const GRACE: Duration = Duration::from_secs(5);
/// How often the warm-up event is published again while a subscriber has not had it (core NATS
/// does not confirm a subscription, so the first one may arrive before the server registered
/// every subscriber).
const WARM_UP_RETRY: Duration = Duration::from_millis(100);

/// `nats-server -a 127.0.0.1 -p PORT` in a child process on a free port, with
/// `GOMAXPROCS` = [`BROKER_WORKERS`], killed when dropped.
#[derive(Debug)]
pub struct NatsProcess {
    child: Child,
    addr: SocketAddr,
    version: String,
}

impl NatsProcess {
    /// Starts `nats-server` on 127.0.0.1 (a port free a moment before) with its default
    /// configuration and waits until it accepts connections. `Ok(None)` when `nats-server` is
    /// not installed (not found on `PATH`).
    ///
    /// # Errors
    /// The process could not start, exited early (the port was taken in the meantime, say), or
    /// did not accept connections within 5 s.
    pub fn spawn() -> Result<Option<Self>, Error> {
        Self::spawn_pinned(&BrokerCpus::unpinned("not asked"))
    }

    /// As [`NatsProcess::spawn`], the server pinned to `cpus`.
    ///
    /// # Errors
    /// As [`NatsProcess::spawn`].
    pub fn spawn_pinned(cpus: &BrokerCpus) -> Result<Option<Self>, Error> {
        let version = match Command::new(NATS_SERVER).arg("--version").output() {
            Ok(out) => String::from_utf8_lossy(&out.stdout).trim().to_owned(),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(format!("running {NATS_SERVER} --version: {e}").into()),
        };
        let port = TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let child = cpus
            .command(NATS_SERVER)
            .args(["-a", "127.0.0.1", "-p", &port.to_string()])
            .env("GOMAXPROCS", BROKER_WORKERS.to_string())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()?;
        // Killed on every way out from here on.
        let mut this = Self {
            child,
            addr,
            version,
        };
        let t = Instant::now();
        loop {
            if let Some(status) = this.child.try_wait()? {
                return Err(format!("{NATS_SERVER} on {addr} exited at start: {status}").into());
            }
            if TcpStream::connect_timeout(&addr, Duration::from_millis(100)).is_ok() {
                return Ok(Some(this));
            }
            if t.elapsed() > START_MAX {
                return Err(format!("{NATS_SERVER} did not accept connections on {addr}").into());
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// The server's address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The server's URL, `nats://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("nats://{}", self.addr)
    }

    /// The server's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// What `nats-server --version` printed.
    pub fn version(&self) -> &str {
        &self.version
    }
}

impl Drop for NatsProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

struct Shared {
    epoch: Instant,
    counts: Vec<AtomicU64>,
    last_delivery_ns: AtomicU64,
    stop: AtomicBool,
}

fn now_ns(epoch: Instant) -> u64 {
    epoch.elapsed().as_nanos() as u64
}

/// A 256-byte envelope stamped with `stamp` (0: the warm-up event), carrying event `seq` of
/// publisher 0.
fn envelope(stamp: u64, seq: u64) -> Bytes {
    let mut envelope = [0x5au8; relay::ENVELOPE_BYTES];
    envelope[..8].copy_from_slice(&stamp.to_le_bytes());
    envelope[8..16].copy_from_slice(&seq.to_le_bytes());
    envelope[16..20].copy_from_slice(&0u32.to_le_bytes());
    Bytes::copy_from_slice(&envelope)
}

/// The stamp, sequence number and publisher of an envelope (`None`: too short).
fn read_envelope(e: &[u8]) -> Option<(u64, u64, u32)> {
    let stamp = u64::from_le_bytes(e.get(..8)?.try_into().ok()?);
    let seq = u64::from_le_bytes(e.get(8..16)?.try_into().ok()?);
    let publisher = u32::from_le_bytes(e.get(16..20)?.try_into().ok()?);
    Some((stamp, seq, publisher))
}

/// One publisher and `subscribers` subscribers (one async-nats client each) on `subject` of the
/// NATS server at `url`; the same measurement as [`relay::multicast_run`].
///
/// # Errors
/// A connection, subscription, publish or flush failed, or the warm-up event did not reach
/// every subscriber within 5 s.
pub async fn nats_multicast_run(
    url: &str,
    subject: &str,
    subscribers: usize,
    pace: Pace,
    record_latency: bool,
) -> Result<RunResult, Error> {
    let shared = Arc::new(Shared {
        epoch: Instant::now(),
        counts: (0..subscribers).map(|_| AtomicU64::new(0)).collect(),
        last_delivery_ns: AtomicU64::new(0),
        stop: AtomicBool::new(false),
    });
    let warmed = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for i in 0..subscribers {
        let client = async_nats::connect(url).await?;
        let sub = client.subscribe(subject.to_owned()).await?;
        client.flush().await?;
        let (shared, warmed) = (shared.clone(), warmed.clone());
        tasks.push(tokio::spawn(subscriber(
            client,
            sub,
            i,
            shared,
            warmed,
            record_latency,
        )));
    }
    let publisher = async_nats::connect(url).await?;
    let subject = async_nats::Subject::from(subject);

    // Warm-up: stamp 0, until every subscriber has it (they are all registered then).
    let t = Instant::now();
    let mut sent_at = None::<Instant>;
    while warmed.load(Ordering::Relaxed) < subscribers as u64 {
        if t.elapsed() > GRACE {
            return Err("warm-up event not delivered to every subscriber".into());
        }
        if sent_at.is_none_or(|s| s.elapsed() >= WARM_UP_RETRY) {
            publisher.publish(subject.clone(), envelope(0, 0)).await?;
            publisher.flush().await?;
            sent_at = Some(Instant::now());
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }

    let start_ns = now_ns(shared.epoch);
    let published = match pace {
        Pace::Max { events, max } => {
            publish_max(&publisher, &subject, &shared, events, max).await?
        }
        Pace::Paced { rate, run } => {
            publish_paced(&publisher, &subject, &shared, rate, run).await?
        }
    };
    // Until every subscriber has everything, or the grace period is over.
    let t = Instant::now();
    while t.elapsed() < GRACE
        && shared
            .counts
            .iter()
            .any(|c| c.load(Ordering::Relaxed) < published)
    {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    shared.stop.store(true, Ordering::Relaxed);
    let mut latencies_ns = Vec::new();
    let mut per_subscriber = Vec::with_capacity(subscribers);
    for task in tasks {
        let (deliveries, l) = task.await?;
        per_subscriber.push(deliveries.counts(published));
        latencies_ns.extend(l);
    }
    latencies_ns.sort_unstable();
    drop(publisher);
    let end_ns = shared.last_delivery_ns.load(Ordering::Relaxed);
    Ok(RunResult {
        published,
        per_subscriber,
        missed: 0,
        rejected: 0,
        elapsed: Duration::from_nanos(end_ns.saturating_sub(start_ns)),
        latencies_ns,
    })
}

/// Publishes events `first..first + n`, stamped with the current time (no flush: the client's
/// connection task writes them out).
async fn publish_batch(
    client: &async_nats::Client,
    subject: &async_nats::Subject,
    shared: &Shared,
    first: u64,
    n: u64,
) -> Result<(), Error> {
    let stamp = now_ns(shared.epoch);
    for seq in first..first + n {
        client
            .publish(subject.clone(), envelope(stamp, seq))
            .await?;
    }
    Ok(())
}

async fn publish_max(
    client: &async_nats::Client,
    subject: &async_nats::Subject,
    shared: &Shared,
    events: u64,
    max: Duration,
) -> Result<u64, Error> {
    let t = Instant::now();
    let mut sent = 0u64;
    while sent < events && t.elapsed() < max {
        let slowest = shared
            .counts
            .iter()
            .map(|c| c.load(Ordering::Relaxed))
            .min()
            .unwrap_or(sent);
        let lead = sent - slowest.min(sent);
        if lead >= relay::WINDOW {
            tokio::time::sleep(Duration::from_micros(200)).await;
            continue;
        }
        let n = (relay::BATCH as u64)
            .min(events - sent)
            .min(relay::WINDOW - lead);
        publish_batch(client, subject, shared, sent, n).await?;
        sent += n;
    }
    Ok(sent)
}

async fn publish_paced(
    client: &async_nats::Client,
    subject: &async_nats::Subject,
    shared: &Shared,
    rate: u64,
    run: Duration,
) -> Result<u64, Error> {
    let mut pacer = relay::Pacer::new(rate, run);
    while let Some((from, n)) = pacer.next().await {
        publish_batch(client, subject, shared, from, n).await?;
    }
    Ok(pacer.sent())
}

/// Reads messages until told to stop; returns what was received (by publisher and sequence
/// number) and the latencies in ns. Each message is timed when the stream yields it; the shared
/// counters are updated once per run of messages that were ready together (as the relay's
/// subscribers do once per WebSocket message).
async fn subscriber(
    client: async_nats::Client,
    mut sub: async_nats::Subscriber,
    i: usize,
    shared: Arc<Shared>,
    warmed: Arc<AtomicU64>,
    record_latency: bool,
) -> (Deliveries, Vec<u64>) {
    let mut warm = false;
    let mut deliveries = Deliveries::new(1);
    let mut latencies = Vec::new();
    while !shared.stop.load(Ordering::Relaxed) {
        let mut next = match tokio::time::timeout(Duration::from_millis(50), sub.next()).await {
            Err(_) => continue,
            Ok(Some(m)) => Some(m),
            Ok(None) => break,
        };
        let mut now = 0;
        while let Some(m) = next {
            now = now_ns(shared.epoch);
            match read_envelope(&m.payload) {
                Some((0, ..)) if !warm => {
                    warm = true;
                    warmed.fetch_add(1, Ordering::Relaxed);
                }
                Some((0, ..)) => {}
                Some((stamp, seq, publisher)) => {
                    deliveries.record(Some(publisher as usize), seq);
                    if record_latency {
                        latencies.push(now.saturating_sub(stamp));
                    }
                }
                None => {
                    deliveries.record(None, 0);
                }
            }
            next = sub.next().now_or_never().flatten();
        }
        shared.counts[i].store(deliveries.distinct(), Ordering::Relaxed);
        shared.last_delivery_ns.fetch_max(now, Ordering::Relaxed);
    }
    let _ = sub.unsubscribe().await;
    drop(client);
    (deliveries, latencies)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn envelope_carries_the_stamp_first_then_the_sequence_number() {
        let e = envelope(0x0102_0304_0506_0708, 77);
        assert_eq!(e.len(), relay::ENVELOPE_BYTES);
        assert_eq!(e[..8], 0x0102_0304_0506_0708u64.to_le_bytes());
        assert_eq!(read_envelope(&e), Some((0x0102_0304_0506_0708, 77, 0)));
        assert!(e[20..].iter().all(|&b| b == 0x5a));
        assert_eq!(read_envelope(&e[..19]), None);
    }

    #[test]
    #[ignore = "needs nats-server"]
    fn a_run_against_a_real_server_delivers_everything() {
        let server = NatsProcess::spawn()
            .expect("start nats-server")
            .expect("nats-server is not installed (apt-get install nats-server)");
        let rt = relay::runtime().expect("runtime");
        let r = rt
            .block_on(nats_multicast_run(
                &server.url(),
                "bench.test",
                3,
                Pace::Max {
                    events: 1000,
                    max: Duration::from_secs(5),
                },
                true,
            ))
            .expect("run");
        assert_eq!(r.published, 1000);
        assert_eq!(r.lost(), 0);
        assert!(r.is_exact(), "{:?}", r.counts());
        assert_eq!(r.latencies_ns.len(), 3000);
    }
}
