//! Relay load measurements for `compare multicast`, `compare sweep` and `compare scale`: the relay
//! server runs in a separate process ([`RelayProcess`], the hidden `compare relay-server`
//! subcommand, see [`serve`]) and this process drives it over WebSockets on 127.0.0.1 with the
//! multicast frames of `docs/protocol.md`.
//!
//! Envelopes are opaque 256-byte blobs (not an `InterRoleEvent` encoding; the relay never
//! decodes them): the first 8 bytes carry the send time, nanoseconds since an `Instant` taken
//! in this process, little-endian; the rest is filler. Each subscriber checks what it receives
//! by the frames' sender and sequence number ([`verify`](crate::verify)).

use std::io::{BufRead, BufReader, Read, Write};
use std::net::SocketAddr;
use std::process::{Child, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use futures::stream::SplitSink;
use futures::{SinkExt, StreamExt};
use interrole_core::Bytes;
use interrole_relay::frame::{
    Frame, FrameLimits, decode_message_bytes, encode_publish, encode_resume, start_message,
};
use interrole_relay::sas::SharedAccessSignature;
use interrole_relay::url::{Action, RelayAddress};
use tokio::net::TcpStream;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;

use crate::cpu::{BROKER_WORKERS, BrokerCpus};
use crate::verify::{Counts, Deliveries};

/// The shared access key name the relay process is started with.
pub const KEY_NAME: &str = "bench";
/// The shared access key the relay process is started with.
pub const KEY: &str = "bench-secret";
/// Subscribers of `compare multicast`.
pub const MULTICAST_SUBSCRIBERS: usize = 20;
/// Envelope bytes of every event.
pub const ENVELOPE_BYTES: usize = 256;
/// Events of the throughput run (bounded by [`THROUGHPUT_MAX`] too).
pub const THROUGHPUT_EVENTS: u64 = 200_000;
/// The longest the throughput run publishes.
pub const THROUGHPUT_MAX: Duration = Duration::from_secs(10);
/// PUBLISH frames per WebSocket message at most.
pub const BATCH: usize = 64;
/// How far the publisher may run ahead of the slowest subscriber, in events (below the relay's
/// default subscriber queue of 16,384 events, so that the drop-oldest policy never applies).
pub const WINDOW: u64 = 2048;
/// Subscriber counts of `compare sweep`, one max-throughput run each.
pub const SWEEP_SUBSCRIBERS: [usize; 7] = [1, 2, 5, 10, 20, 50, 100];
/// Events of each max-throughput run of `compare sweep` at most (bounded by [`SWEEP_MAX`] too).
pub const SWEEP_EVENTS: u64 = 1_000_000;
/// The longest each max-throughput run of `compare sweep` publishes.
pub const SWEEP_MAX: Duration = Duration::from_secs(3);
/// The paced rate of the latency run, events per second.
pub const LATENCY_RATE: u64 = 20_000;
/// How long the latency run publishes.
pub const LATENCY_RUN: Duration = Duration::from_secs(5);
/// Idle subscribers of `compare scale` (`--subscribers N` chooses another count).
pub const SCALE_SUBSCRIBERS: usize = 10_000;
/// The most subscribers `compare scale` takes: the relay process's connections but one, the
/// publisher's.
pub const SCALE_MAX_SUBSCRIBERS: usize = RELAY_MAX_CONNECTIONS - 1;
/// The connections, and subscribers per path, the relay process allows (the defaults, 10,000,
/// are too few for 10,000 subscribers and a publisher).
const RELAY_MAX_CONNECTIONS: usize = 20_000;
/// Subscribers connecting at once in `compare scale`.
pub const CONNECT_CONCURRENCY: usize = 500;
/// Single events published to the idle subscribers of `compare scale`, one at a time.
pub const SCALE_ROUNDS: u64 = 5;
/// Target: resident memory of the relay per idle subscriber, KiB.
pub const TARGET_KIB_PER_SUBSCRIBER: f64 = 16.0;
/// The longest the relay process lives, whatever happens to its parent.
const SERVE_MAX: Duration = Duration::from_secs(600);
/// How long a delivery may be awaited before it counts as lost.
const GRACE: Duration = Duration::from_secs(5);

type Error = Box<dyn std::error::Error + Send + Sync>;
type Ws = WebSocketStream<TcpStream>;

/// The publisher's instance id in the multicast runs.
const PUBLISHER: &str = "bench-pub";
/// The sequence number of the warm-up event; the measured events follow it from 2.
const WARM_UP_SEQ: u64 = 1;

/// The hidden `compare relay-server --listen ADDR --sas-key NAME=KEY` subcommand: runs the relay
/// server as a library on a runtime of [`BROKER_WORKERS`] workers, prints its bound address on stdout, and serves
/// until stdin closes (the parent went away) or for at most 10 minutes.
///
/// # Errors
/// Bad arguments, or the server failing to bind.
pub fn serve(args: &[String]) -> Result<(), Error> {
    let mut listen: SocketAddr = "127.0.0.1:0".parse()?;
    let mut keys = Vec::new();
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let value = it.next().ok_or_else(|| format!("{a} needs a value"))?;
        match a.as_str() {
            "--listen" => listen = value.parse()?,
            "--sas-key" => keys.push(interrole_relay_server::KeyConfig::parse_flag(value)?),
            other => return Err(format!("unknown argument {other:?}").into()),
        }
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(BROKER_WORKERS)
        .enable_all()
        .build()?;
    rt.block_on(async {
        let mut config = interrole_relay_server::Config {
            listen,
            keys,
            ..interrole_relay_server::Config::default()
        };
        config.limits.max_connections = RELAY_MAX_CONNECTIONS;
        config.limits.max_subscribers_per_path = RELAY_MAX_CONNECTIONS;
        let server = interrole_relay_server::Server::bind(config).await?;
        let mut out = std::io::stdout().lock();
        writeln!(out, "{}", server.local_addr())?;
        out.flush()?;
        drop(out);
        std::thread::spawn(|| {
            let mut buf = [0u8; 64];
            while std::io::stdin().read(&mut buf).is_ok_and(|n| n > 0) {}
            std::process::exit(0);
        });
        let _ = tokio::time::timeout(SERVE_MAX, server.wait()).await;
        Ok::<(), Error>(())
    })?;
    std::process::exit(0);
}

/// The relay server in a child process (this executable's `relay-server` subcommand), killed
/// when dropped.
#[derive(Debug)]
pub struct RelayProcess {
    child: Child,
    addr: SocketAddr,
}

impl RelayProcess {
    /// Starts the relay on 127.0.0.1 (a free port) and waits for its address.
    ///
    /// # Errors
    /// The process could not start or did not print an address.
    pub fn spawn() -> Result<Self, Error> {
        Self::spawn_at("127.0.0.1:0")
    }

    /// Starts the relay on 127.0.0.1 (a free port), pinned to `cpus`, and waits for its
    /// address.
    ///
    /// # Errors
    /// As [`RelayProcess::spawn`].
    pub fn spawn_pinned(cpus: &BrokerCpus) -> Result<Self, Error> {
        Self::spawn_on("127.0.0.1:0", cpus)
    }

    /// Starts the relay listening on `listen` (this executable must have the `relay-server`
    /// subcommand) and waits for its address.
    ///
    /// # Errors
    /// The process could not start or did not print an address (the port is taken, say).
    pub fn spawn_at(listen: &str) -> Result<Self, Error> {
        Self::spawn_on(listen, &BrokerCpus::unpinned("not asked"))
    }

    fn spawn_on(listen: &str, cpus: &BrokerCpus) -> Result<Self, Error> {
        let exe = std::env::current_exe()?;
        let child = cpus
            .command(exe)
            .args([
                "relay-server",
                "--listen",
                listen,
                "--sas-key",
                &format!("{KEY_NAME}={KEY}"),
            ])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()?;
        let mut this = Self {
            child,
            addr: "127.0.0.1:0".parse()?,
        };
        let stdout = this.child.stdout.take().ok_or("no stdout")?;
        let mut line = String::new();
        BufReader::new(stdout).read_line(&mut line)?;
        this.addr = line
            .trim()
            .parse()
            .map_err(|e| format!("relay printed {line:?}: {e}"))?;
        Ok(this)
    }

    /// The relay's address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The relay's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The relay's resident memory (VmRSS), KiB.
    ///
    /// # Errors
    /// `/proc/PID/status` unreadable or without VmRSS.
    pub fn rss_kib(&self) -> Result<u64, Error> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid()))?;
        let line = status
            .lines()
            .find(|l| l.starts_with("VmRSS:"))
            .ok_or("no VmRSS")?;
        Ok(line.split_whitespace().nth(1).ok_or("bad VmRSS")?.parse()?)
    }
}

impl RelayProcess {
    /// Kills the relay with SIGKILL (no chance to close anything) and reaps it.
    pub fn kill(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for RelayProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A 2-worker multi-thread tokio runtime, as the load side of both measurements uses.
///
/// # Errors
/// The runtime could not be built.
pub fn runtime() -> Result<tokio::runtime::Runtime, Error> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?)
}

async fn connect(addr: SocketAddr, action: Action, path: &str, id: &str) -> Result<Ws, Error> {
    let expiry = SystemTime::now().duration_since(UNIX_EPOCH)?.as_secs() + 3600;
    let resource = format!("http://{addr}/{path}");
    let token = SharedAccessSignature::sign(KEY_NAME, KEY, &resource, expiry).to_string();
    let target = RelayAddress::new(action, path)?
        .with_id(id)
        .with_token(token)
        .to_request_target();
    let tcp = TcpStream::connect(addr).await?;
    tcp.set_nodelay(true)?;
    let (ws, _) = tokio_tungstenite::client_async(format!("ws://{addr}{target}"), tcp).await?;
    Ok(ws)
}

/// A subscriber that has sent its RESUME (REPLAY_UNLISTED, so that an event published before
/// the relay registered it still arrives, replayed from the window).
async fn subscribe(addr: SocketAddr, path: &str, id: &str) -> Result<Ws, Error> {
    let mut ws = connect(addr, Action::Subscribe, path, id).await?;
    let mut msg = Vec::with_capacity(8);
    start_message(&mut msg);
    encode_resume(&mut msg, true, &[]);
    ws.send(Message::Binary(Bytes::from(msg))).await?;
    Ok(ws)
}

fn now_ns(epoch: Instant) -> u64 {
    epoch.elapsed().as_nanos() as u64
}

fn limits() -> FrameLimits {
    FrameLimits::default().with_max_message(64 * 1024 * 1024)
}

/// A message of PUBLISH frames `first..first + count`, each envelope stamped with `stamp`.
fn publish_message(first: u64, count: u64, stamp: u64) -> Bytes {
    let mut envelope = [0x5au8; ENVELOPE_BYTES];
    envelope[..8].copy_from_slice(&stamp.to_le_bytes());
    let mut msg = Vec::with_capacity(1 + count as usize * (ENVELOPE_BYTES + 8));
    start_message(&mut msg);
    for seq in first..first + count {
        encode_publish(&mut msg, seq, None, &envelope);
    }
    Bytes::from(msg)
}

/// What one multicast run measured.
#[derive(Debug, Clone)]
pub struct RunResult {
    /// Events published (the warm-up event excluded).
    pub published: u64,
    /// What each subscriber received, checked by sender and sequence number (the warm-up
    /// event excluded).
    pub per_subscriber: Vec<Counts>,
    /// Events reported missed over all subscribers (by the relay's MISSED frames, or by a bus
    /// to its observers).
    pub missed: u64,
    /// REJECT frames the publisher received.
    pub rejected: u64,
    /// From the first send to the last delivery.
    pub elapsed: Duration,
    /// Receive time − send time of every delivery, nanoseconds (sorted; empty unless asked).
    pub latencies_ns: Vec<u64>,
}

impl RunResult {
    /// The deliveries checked, summed over all subscribers.
    pub fn counts(&self) -> Counts {
        self.per_subscriber.iter().copied().sum()
    }

    /// Distinct deliveries of published events, over all subscribers.
    pub fn delivered(&self) -> u64 {
        self.counts().delivered
    }

    /// Deliveries expected but not made (each subscriber's events never received).
    pub fn lost(&self) -> u64 {
        self.counts().lost
    }

    /// Whether every subscriber received every event exactly once, in order, nothing else, and
    /// nothing was reported missed or rejected.
    pub fn is_exact(&self) -> bool {
        self.counts().is_exact() && self.missed == 0 && self.rejected == 0
    }

    /// Distinct deliveries per second.
    pub fn throughput(&self) -> f64 {
        self.delivered() as f64 / self.elapsed.as_secs_f64()
    }

    /// The `q` quantile of the latencies, microseconds (NaN without samples).
    pub fn latency_us(&self, q: f64) -> f64 {
        if self.latencies_ns.is_empty() {
            return f64::NAN;
        }
        let i = ((self.latencies_ns.len() as f64 * q).ceil() as usize)
            .clamp(1, self.latencies_ns.len())
            - 1;
        self.latencies_ns[i] as f64 / 1000.0
    }
}

/// How a multicast run publishes.
#[derive(Debug, Clone, Copy)]
pub enum Pace {
    /// As fast as the subscribers keep up: `events` in batches of [`BATCH`], at most [`WINDOW`]
    /// ahead of the slowest subscriber, for at most `max`.
    Max {
        /// Events to publish.
        events: u64,
        /// The time limit.
        max: Duration,
    },
    /// `rate` events per second for `run`, in whatever is due each millisecond.
    Paced {
        /// Events per second.
        rate: u64,
        /// How long.
        run: Duration,
    },
}

/// The batches of a [`Pace::Paced`] run, as they fall due: `rate` events a second for `run`, at
/// most [`BATCH`] at a time. Shared by every system's paced publisher.
#[derive(Debug)]
pub struct Pacer {
    rate: u64,
    total: u64,
    started: Instant,
    sent: u64,
}

impl Pacer {
    /// A run starting now.
    pub fn new(rate: u64, run: Duration) -> Self {
        Self {
            rate,
            total: (rate as f64 * run.as_secs_f64()) as u64,
            started: Instant::now(),
            sent: 0,
        }
    }

    /// Waits until events are due; returns the first one's index and how many, or `None` once
    /// the run has sent them all.
    pub async fn next(&mut self) -> Option<(u64, u64)> {
        while self.sent < self.total {
            let due =
                ((self.started.elapsed().as_secs_f64() * self.rate as f64) as u64).min(self.total);
            if due > self.sent {
                let (from, n) = (self.sent, (due - self.sent).min(BATCH as u64));
                self.sent += n;
                return Some((from, n));
            }
            tokio::time::sleep(Duration::from_micros(500)).await;
        }
        None
    }

    /// How many events the run has handed out.
    pub fn sent(&self) -> u64 {
        self.sent
    }
}

struct Shared {
    epoch: Instant,
    counts: Vec<AtomicU64>,
    last_delivery_ns: AtomicU64,
    stop: AtomicBool,
}

/// One publisher and `subscribers` subscribers on a fresh path of the relay at `addr`.
///
/// # Errors
/// A connection failed or closed early.
pub async fn multicast_run(
    addr: SocketAddr,
    path: &str,
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
        let ws = subscribe(addr, path, &format!("sub-{i}")).await?;
        let (shared, warmed) = (shared.clone(), warmed.clone());
        tasks.push(tokio::spawn(subscriber(
            ws,
            i,
            shared,
            warmed,
            record_latency,
        )));
    }
    let pub_ws = connect(addr, Action::Publish, path, PUBLISHER).await?;
    let (mut sink, mut stream) = pub_ws.split();
    let acked = Arc::new(AtomicU64::new(0));
    let rejected = Arc::new(AtomicU64::new(0));
    let acks = {
        let (acked, rejected) = (acked.clone(), rejected.clone());
        tokio::spawn(async move {
            while let Some(Ok(m)) = stream.next().await {
                if let Message::Binary(b) = m {
                    for f in decode_message_bytes(&b, &limits()).unwrap_or_default() {
                        match f {
                            Frame::Ack { seq } => {
                                acked.fetch_max(seq, Ordering::Relaxed);
                            }
                            Frame::Reject { .. } => {
                                rejected.fetch_add(1, Ordering::Relaxed);
                            }
                            _ => {}
                        }
                    }
                }
            }
        })
    };

    // Warm-up: seq 1, until every subscriber has it (they are all registered then).
    sink.send(Message::Binary(publish_message(WARM_UP_SEQ, 1, 0)))
        .await?;
    let t = Instant::now();
    while warmed.load(Ordering::Relaxed) < subscribers as u64 {
        if t.elapsed() > GRACE {
            return Err("warm-up event not delivered to every subscriber".into());
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }

    let start_ns = now_ns(shared.epoch);
    let published = match pace {
        Pace::Max { events, max } => publish_max(&mut sink, &shared, &acked, events, max).await?,
        Pace::Paced { rate, run } => publish_paced(&mut sink, &shared, rate, run).await?,
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
    let mut missed = 0;
    let mut latencies_ns = Vec::new();
    let mut per_subscriber = Vec::with_capacity(subscribers);
    for task in tasks {
        let (m, deliveries, l) = task.await?;
        missed += m;
        per_subscriber.push(deliveries.counts(published));
        latencies_ns.extend(l);
    }
    latencies_ns.sort_unstable();
    let _ = sink.close().await;
    acks.abort();
    let end_ns = shared.last_delivery_ns.load(Ordering::Relaxed);
    Ok(RunResult {
        published,
        per_subscriber,
        missed,
        rejected: rejected.load(Ordering::Relaxed),
        elapsed: Duration::from_nanos(end_ns.saturating_sub(start_ns)),
        latencies_ns,
    })
}

type Sink = SplitSink<Ws, Message>;

async fn publish_max(
    sink: &mut Sink,
    shared: &Shared,
    acked: &AtomicU64,
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
        // seq = sent + 1 (the warm-up was 1): ACKs lag by at most a window too.
        let unacked = (sent + 1).saturating_sub(acked.load(Ordering::Relaxed));
        let lead = sent - slowest.min(sent);
        if lead >= WINDOW || unacked >= WINDOW {
            tokio::time::sleep(Duration::from_micros(200)).await;
            continue;
        }
        let n = (BATCH as u64).min(events - sent).min(WINDOW - lead);
        let msg = publish_message(WARM_UP_SEQ + 1 + sent, n, now_ns(shared.epoch));
        sink.send(Message::Binary(msg)).await?;
        sent += n;
    }
    Ok(sent)
}

async fn publish_paced(
    sink: &mut Sink,
    shared: &Shared,
    rate: u64,
    run: Duration,
) -> Result<u64, Error> {
    let mut pacer = Pacer::new(rate, run);
    while let Some((from, n)) = pacer.next().await {
        let msg = publish_message(WARM_UP_SEQ + 1 + from, n, now_ns(shared.epoch));
        sink.send(Message::Binary(msg)).await?;
    }
    Ok(pacer.sent())
}

/// Reads events until told to stop; returns the MISSED count, what was received (by sender and
/// sequence number: the publisher is sender 0, its measured events numbered from 0) and the
/// latencies in ns.
async fn subscriber(
    mut ws: Ws,
    i: usize,
    shared: Arc<Shared>,
    warmed: Arc<AtomicU64>,
    record_latency: bool,
) -> (u64, Deliveries, Vec<u64>) {
    let limits = limits();
    let mut missed = 0;
    let mut deliveries = Deliveries::new(1);
    let mut latencies = Vec::new();
    while !shared.stop.load(Ordering::Relaxed) {
        let b = match tokio::time::timeout(Duration::from_millis(50), ws.next()).await {
            Err(_) => continue,
            Ok(Some(Ok(Message::Binary(b)))) => b,
            Ok(Some(Ok(_))) => continue,
            Ok(Some(Err(_)) | None) => break,
        };
        let now = now_ns(shared.epoch);
        let Ok(frames) = decode_message_bytes(&b, &limits) else {
            break;
        };
        for f in frames {
            match f {
                Frame::Event {
                    seq: WARM_UP_SEQ, ..
                } => {
                    warmed.fetch_add(1, Ordering::Relaxed);
                }
                Frame::Event {
                    sender,
                    seq,
                    envelope,
                } => {
                    let from = (sender.as_str() == PUBLISHER).then_some(0);
                    deliveries.record(from, seq.wrapping_sub(WARM_UP_SEQ + 1));
                    if record_latency && envelope.len() >= 8 {
                        let mut stamp = [0u8; 8];
                        stamp.copy_from_slice(&envelope[..8]);
                        latencies.push(now.saturating_sub(u64::from_le_bytes(stamp)));
                    }
                }
                Frame::Missed { count: c, .. } => missed += c,
                _ => {}
            }
        }
        shared.counts[i].store(deliveries.distinct(), Ordering::Relaxed);
        shared.last_delivery_ns.fetch_max(now, Ordering::Relaxed);
    }
    let _ = ws.close(None).await;
    (missed, deliveries, latencies)
}

/// What `compare scale` measured.
#[derive(Debug, Clone)]
pub struct ScaleResult {
    /// Idle subscribers connected.
    pub subscribers: usize,
    /// How long connecting them all took.
    pub connect_time: Duration,
    /// How long each batch of [`CONNECT_CONCURRENCY`] took to connect.
    pub batch_times: Vec<Duration>,
    /// The relay's VmRSS before the subscribers, KiB.
    pub rss_before_kib: u64,
    /// The relay's VmRSS with every subscriber connected and idle, KiB.
    pub rss_after_kib: u64,
    /// Per round: publish to the last of the subscribers' deliveries (None: not all delivered
    /// within the grace period), and how many got it.
    pub rounds: Vec<(Option<Duration>, u64)>,
}

impl ScaleResult {
    /// (after − before) / subscribers, KiB.
    pub fn kib_per_subscriber(&self) -> f64 {
        (self.rss_after_kib as f64 - self.rss_before_kib as f64) / self.subscribers as f64
    }
}

/// `n` idle subscribers on one path of `relay` (connected [`CONNECT_CONCURRENCY`] at a time),
/// the relay's memory before and after, then [`SCALE_ROUNDS`] single events, each timed from
/// its publish to its last delivery.
///
/// # Errors
/// A connection failed.
pub async fn scale_run(relay: &RelayProcess, n: usize) -> Result<ScaleResult, Error> {
    let addr = relay.addr();
    let path = "bench/scale";
    let epoch = Instant::now();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let rss_before_kib = relay.rss_kib()?;
    let delivered: Arc<Vec<AtomicU64>> =
        Arc::new((0..=SCALE_ROUNDS).map(|_| AtomicU64::new(0)).collect());
    let last_ns: Arc<Vec<AtomicU64>> =
        Arc::new((0..=SCALE_ROUNDS).map(|_| AtomicU64::new(0)).collect());
    let mut readers = Vec::with_capacity(n);
    let t = Instant::now();
    let mut batch_times = Vec::new();
    for batch in (0..n).collect::<Vec<_>>().chunks(CONNECT_CONCURRENCY) {
        let bt = Instant::now();
        let connecting: Vec<_> = batch
            .iter()
            .map(|&i| {
                tokio::spawn(async move { subscribe(addr, path, &format!("idle-{i}")).await })
            })
            .collect();
        for c in connecting {
            let mut ws = c.await??;
            let (delivered, last_ns) = (delivered.clone(), last_ns.clone());
            readers.push(tokio::spawn(async move {
                let limits = limits();
                while let Some(Ok(m)) = ws.next().await {
                    let Message::Binary(b) = m else { continue };
                    let now = now_ns(epoch);
                    for f in decode_message_bytes(&b, &limits).unwrap_or_default() {
                        if let Frame::Event { seq, .. } = f {
                            if let (Some(d), Some(l)) =
                                (delivered.get(seq as usize), last_ns.get(seq as usize))
                            {
                                d.fetch_add(1, Ordering::Relaxed);
                                l.fetch_max(now, Ordering::Relaxed);
                            }
                        }
                    }
                }
            }));
        }
        batch_times.push(bt.elapsed());
    }
    let connect_time = t.elapsed();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let rss_after_kib = relay.rss_kib()?;

    let mut publisher = connect(addr, Action::Publish, path, "bench-pub").await?;
    let mut rounds = Vec::new();
    for seq in 1..=SCALE_ROUNDS {
        tokio::time::sleep(Duration::from_millis(300)).await;
        let sent = now_ns(epoch);
        publisher
            .send(Message::Binary(publish_message(seq, 1, sent)))
            .await?;
        let d = &delivered[seq as usize];
        let t = Instant::now();
        while d.load(Ordering::Relaxed) < n as u64 && t.elapsed() < GRACE {
            tokio::time::sleep(Duration::from_micros(200)).await;
        }
        let got = d.load(Ordering::Relaxed);
        let last = last_ns[seq as usize].load(Ordering::Relaxed);
        let latency = (got == n as u64).then(|| Duration::from_nanos(last.saturating_sub(sent)));
        rounds.push((latency, got));
    }
    for r in &readers {
        r.abort();
    }
    Ok(ScaleResult {
        subscribers: n,
        connect_time,
        batch_times,
        rss_before_kib,
        rss_after_kib,
        rounds,
    })
}
