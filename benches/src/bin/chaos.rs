//! `chaos`: the bus across relay restarts, measured with real processes.
//!
//! ```text
//! cargo run --release -p benches --bin chaos -- [--publishers 3] [--subscribers 5]
//!     [--events 100000] [--kills 10] [--rate 1000] [--retry-ms MS]
//! ```
//!
//! Starts a relay process on a fixed port of 127.0.0.1, then subscriber processes and publisher
//! processes (this executable again), each with one bus on the relay. The publishers stream
//! `--events` events in all, paced at `--rate` per second each. Meanwhile the relay is killed
//! with SIGKILL `--kills` times, evenly spread, and started again on the same port. Every
//! subscriber checks what it receives from each publisher: each event exactly once, in
//! publication order. Printed: the time from each relay restart until every bus was connected
//! again, each subscriber's tally, and as the last line
//!
//! ```text
//! chaos events=<published> lost=<n> duplicated=<n> reordered=<n> relay_kills=<n>
//! ```
//!
//! `lost`, `duplicated` and `reordered` add up over subscribers (each subscriber should receive
//! every event). The exit status is 0 only when all three are 0. `--retry-ms` replaces the
//! default retry schedule (0, 1, 2, 5, 10, 30 s) by an exponential one from that many
//! milliseconds, capped at one second.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::process::{Child, Command, ExitCode, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use benches::relay::{self, KEY, KEY_NAME, RelayProcess};
use interrole::relay::Credentials;
use interrole::{Bus, HostState, Observer, ObserverError, Reliability, RetryPolicy};
use serde::{Deserialize, Serialize};

type Error = Box<dyn std::error::Error + Send + Sync>;

/// One event of the run.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct ChaosEvent {
    /// The publisher's count, from 0.
    n: u64,
    /// Filler.
    blob: Vec<u8>,
}
interrole::core::impl_event!(ChaosEvent = "interrole.chaos.event");

/// How long a subscriber waits without news before it gives up and reports.
const IDLE_LIMIT: Duration = Duration::from_secs(60);

#[derive(Debug, Clone)]
struct Opts {
    publishers: usize,
    subscribers: usize,
    events: u64,
    kills: u32,
    rate: u64,
    retry_ms: Option<u64>,
    url: String,
    id: String,
    topic: String,
}

impl Default for Opts {
    fn default() -> Self {
        Self {
            publishers: 3,
            subscribers: 5,
            events: 100_000,
            kills: 10,
            rate: 1_000,
            retry_ms: None,
            url: String::new(),
            id: String::new(),
            topic: "chaos".into(),
        }
    }
}

fn parse(args: &[String]) -> Result<Opts, Error> {
    let mut o = Opts::default();
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let mut value = || it.next().ok_or_else(|| format!("{a} needs a value"));
        match a.as_str() {
            "--publishers" => o.publishers = value()?.parse()?,
            "--subscribers" => o.subscribers = value()?.parse()?,
            "--events" => o.events = value()?.parse()?,
            "--kills" => o.kills = value()?.parse()?,
            "--rate" => o.rate = value()?.parse::<u64>()?.max(1),
            "--retry-ms" => o.retry_ms = Some(value()?.parse()?),
            "--url" => o.url = value()?.clone(),
            "--id" => o.id = value()?.clone(),
            "--topic" => o.topic = value()?.clone(),
            other => return Err(format!("unknown argument {other:?} (see the file's docs)").into()),
        }
    }
    if o.publishers == 0 || o.subscribers == 0 {
        return Err("at least one publisher and one subscriber".into());
    }
    Ok(o)
}

impl Opts {
    /// The most events one publisher sends.
    fn per_publisher(&self) -> u64 {
        self.events.div_ceil(self.publishers as u64)
    }

    /// The events publisher `pub-{j}` sends: `--events` split as evenly as possible.
    fn events_of(&self, id: &str) -> u64 {
        let j: u64 = id.trim_start_matches("pub-").parse().unwrap_or(0);
        let p = self.publishers as u64;
        self.events / p + u64::from(j < self.events % p)
    }

    fn args(&self) -> Vec<String> {
        let mut a = vec![
            "--publishers".into(),
            self.publishers.to_string(),
            "--events".into(),
            self.events.to_string(),
            "--rate".into(),
            self.rate.to_string(),
            "--url".into(),
            self.url.clone(),
            "--topic".into(),
            self.topic.clone(),
        ];
        if let Some(ms) = self.retry_ms {
            a.extend(["--retry-ms".into(), ms.to_string()]);
        }
        a
    }

    fn bus(&self) -> Result<Bus, Error> {
        let retry = match self.retry_ms {
            Some(ms) => {
                RetryPolicy::exponential(Duration::from_millis(ms), 2.0, Duration::from_secs(1))
            }
            None => RetryPolicy::default(),
        };
        Ok(Bus::builder()
            .instance(self.id.clone())
            .topic(self.topic.clone())
            .relay(&self.url, Credentials::key(KEY_NAME, KEY))
            .reliability(Reliability::default().with_retry(retry))
            .build()?)
    }
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.first().map(String::as_str) {
        Some("relay-server") => relay::serve(&args[1..]).map(|()| true),
        Some("publisher") => parse(&args[1..]).and_then(publisher),
        Some("subscriber") => parse(&args[1..]).and_then(subscriber),
        _ => parse(&args).and_then(orchestrate),
    };
    match result {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("chaos: {e}");
            ExitCode::FAILURE
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The roles (child processes)

/// Prints `opened <k>` each time the bus (re)connects, for the orchestrator's recovery times.
fn report_openings(bus: &Bus) {
    let mut rx = bus.host().expect("a relay bus has a host").watch();
    tokio::spawn(async move {
        let mut last = 0;
        loop {
            let (state, opened) = {
                let s = rx.borrow_and_update();
                (s.state, s.opened)
            };
            if opened > last {
                last = opened;
                println!("opened {opened}");
                let _ = std::io::stdout().flush();
            }
            if state == HostState::Closed || rx.changed().await.is_err() {
                return;
            }
        }
    });
}

fn publisher(o: Opts) -> Result<bool, Error> {
    let rt = relay::runtime()?;
    rt.block_on(async {
        let bus = o.bus()?;
        report_openings(&bus);
        bus.host()
            .expect("host")
            .wait_opened(Duration::from_secs(30))
            .await?;
        println!("ready");
        let total = o.events_of(&o.id);
        let tick = Duration::from_millis(10);
        let per_tick = (o.rate / 100).max(1);
        let start = tokio::time::Instant::now();
        let mut n = 0;
        let mut full = 0u64;
        while n < total {
            let due = (start.elapsed().as_millis() as u64 * o.rate / 1000 + per_tick).min(total);
            while n < due {
                let e = ChaosEvent {
                    n,
                    blob: vec![(n % 251) as u8; 32],
                };
                match bus.publish(e) {
                    Ok(_) => n += 1,
                    Err(interrole::PublishError::OutboxFull { .. }) => {
                        full += 1;
                        break;
                    }
                    Err(e) => return Err(format!("publish {n}: {e}").into()),
                }
            }
            tokio::time::sleep(tick).await;
        }
        // Everything acknowledged by the relay before leaving.
        let deadline = Instant::now() + Duration::from_secs(120);
        while bus.reliable_stats().expect("stats").outbox_events > 0 {
            if Instant::now() > deadline {
                return Err("the outbox did not drain in 120 s".into());
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        // Stay a moment so that a relay killed right now still gets the retained events again.
        tokio::time::sleep(Duration::from_secs(3)).await;
        let s = bus.reliable_stats().expect("stats");
        println!(
            "done published={n} resent={} outbox_full_waits={full}",
            s.resent
        );
        bus.close().await;
        Ok(true)
    })
}

/// What one subscriber saw from one publisher.
#[derive(Default)]
struct Tally {
    seen: Vec<bool>,
    distinct: u64,
    max: Option<u64>,
    duplicated: u64,
    reordered: u64,
}

#[derive(Default)]
struct SubState {
    by_sender: HashMap<String, Tally>,
    missed_reported: u64,
    last_news: Option<Instant>,
}

struct Counter {
    state: Mutex<SubState>,
    per_publisher: u64,
}

impl Observer<interrole::InterRoleEvent> for Counter {
    fn on_next(&self, e: &interrole::InterRoleEvent) {
        let Some(ev) = e.payload::<ChaosEvent>() else {
            return;
        };
        let mut s = self.state.lock().unwrap();
        s.last_news = Some(Instant::now());
        let t = s.by_sender.entry(e.sender().to_string()).or_default();
        if t.seen.is_empty() {
            t.seen = vec![false; self.per_publisher as usize];
        }
        let Some(slot) = t.seen.get_mut(ev.n as usize) else {
            return;
        };
        if *slot {
            t.duplicated += 1;
            return;
        }
        *slot = true;
        t.distinct += 1;
        if t.max.is_some_and(|m| ev.n < m) {
            t.reordered += 1;
        }
        t.max = Some(t.max.map_or(ev.n, |m| m.max(ev.n)));
    }

    fn on_error(&self, error: ObserverError) {
        if let ObserverError::Missed { count, .. } = error {
            self.state.lock().unwrap().missed_reported += count;
        }
    }
}

fn subscriber(o: Opts) -> Result<bool, Error> {
    let rt = relay::runtime()?;
    rt.block_on(async {
        let bus = o.bus()?;
        bus.register::<ChaosEvent>();
        let counter = Arc::new(Counter {
            state: Mutex::new(SubState::default()),
            per_publisher: o.per_publisher(),
        });
        let _guard = bus.observe_all(counter.clone());
        report_openings(&bus);
        bus.host()
            .expect("host")
            .wait_opened(Duration::from_secs(30))
            .await?;
        println!("ready");
        let want = o.events;
        let started = Instant::now();
        loop {
            tokio::time::sleep(Duration::from_millis(50)).await;
            let s = counter.state.lock().unwrap();
            let got: u64 = s.by_sender.values().map(|t| t.distinct).sum();
            let idle = s.last_news.unwrap_or(started).elapsed();
            if got >= want || idle > IDLE_LIMIT {
                break;
            }
        }
        let line = {
        let s = counter.state.lock().unwrap();
        let got: u64 = s.by_sender.values().map(|t| t.distinct).sum();
        let duplicated: u64 = s.by_sender.values().map(|t| t.duplicated).sum();
        let reordered: u64 = s.by_sender.values().map(|t| t.reordered).sum();
        let stats = bus.reliable_stats().expect("stats");
        format!(
            "result id={} received={got} lost={} duplicated={duplicated} reordered={reordered} missed_reported={} dropped_duplicates={} repaired={} opened={}",
            o.id,
            want - got.min(want),
            s.missed_reported,
            stats.duplicates,
            stats.repaired,
            bus.host().expect("host").status().opened,
        )
        };
        println!("{line}");
        bus.close().await;
        Ok(true)
    })
}

// ---------------------------------------------------------------------------------------------
// The orchestrator

/// A child process whose stdout lines arrive on a channel, stamped.
struct Role {
    name: String,
    child: Child,
}

enum Line {
    Ready,
    Opened(String, u64, Instant),
    Done(String, String),
    Result(String, String),
    Exited(String),
}

/// What the roles have said so far.
#[derive(Default)]
struct Seen {
    /// Per role, its latest `opened` count and when it was printed.
    opened: HashMap<String, (u64, Instant)>,
    ready: usize,
    done: Vec<String>,
    results: Vec<(String, String)>,
    exited: Vec<String>,
}

impl Seen {
    fn take(&mut self, line: Line) {
        match line {
            Line::Ready => self.ready += 1,
            Line::Opened(n, k, at) => {
                self.opened.insert(n, (k, at));
            }
            Line::Done(n, rest) => {
                println!("[{n}] done {rest}");
                self.done.push(n);
            }
            Line::Result(n, rest) => self.results.push((n, rest)),
            Line::Exited(n) => self.exited.push(n),
        }
    }
}

fn spawn_role(kind: &str, id: &str, o: &Opts, tx: &mpsc::Sender<Line>) -> Result<Role, Error> {
    let mut child = Command::new(std::env::current_exe()?)
        .arg(kind)
        .args(o.args())
        .args(["--id", id])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()?;
    let stdout = child.stdout.take().ok_or("no stdout")?;
    let (name, tx) = (id.to_string(), tx.clone());
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            let msg = if line == "ready" {
                Line::Ready
            } else if let Some(k) = line.strip_prefix("opened ") {
                Line::Opened(name.clone(), k.parse().unwrap_or(0), Instant::now())
            } else if let Some(rest) = line.strip_prefix("done ") {
                Line::Done(name.clone(), rest.to_string())
            } else if let Some(rest) = line.strip_prefix("result ") {
                Line::Result(name.clone(), rest.to_string())
            } else {
                println!("[{name}] {line}");
                continue;
            };
            if tx.send(msg).is_err() {
                break;
            }
        }
        let _ = tx.send(Line::Exited(name));
    });
    Ok(Role {
        name: id.to_string(),
        child,
    })
}

fn field(text: &str, key: &str) -> u64 {
    text.split_whitespace()
        .find_map(|kv| kv.strip_prefix(key)?.strip_prefix('='))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

fn free_port() -> Result<u16, Error> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

fn orchestrate(mut o: Opts) -> Result<bool, Error> {
    let listen = format!("127.0.0.1:{}", free_port()?);
    let mut relay = Some(RelayProcess::spawn_at(&listen)?);
    o.url = format!("ws://{listen}");
    o.topic = format!("chaos-{}", std::process::id());
    let per = o.per_publisher();
    let published = o.events;
    println!(
        "chaos: relay {listen}; {} publishers x {per} events at {}/s each, {} subscribers, {} relay kills",
        o.publishers, o.rate, o.subscribers, o.kills
    );
    let (tx, rx) = mpsc::channel();
    let mut roles = Vec::new();
    for i in 0..o.subscribers {
        roles.push(spawn_role("subscriber", &format!("sub-{i}"), &o, &tx)?);
    }
    // Every subscriber connected before anything is published.
    let mut seen = Seen::default();
    let wait_deadline = Instant::now() + Duration::from_secs(60);
    while seen.ready < o.subscribers {
        let line = rx.recv_timeout(wait_deadline.saturating_duration_since(Instant::now()))?;
        seen.take(line);
    }
    let start = Instant::now();
    for j in 0..o.publishers {
        roles.push(spawn_role("publisher", &format!("pub-{j}"), &o, &tx)?);
    }
    let run_time = Duration::from_secs_f64(per as f64 / o.rate as f64);
    // Spread the kills over the publishing time, allowing about a second for each recovery.
    let interval = run_time.saturating_sub(Duration::from_millis(1200) * o.kills) / (o.kills + 1);
    let mut kills = 0;
    let mut recoveries = Vec::new();
    let mut next_kill = start + interval.max(Duration::from_millis(500));
    // Kill and restart while the publishers run; then wait for everyone's results.
    loop {
        let publishing = seen.done.len() < o.publishers;
        if publishing && kills < o.kills && Instant::now() >= next_kill && relay.is_some() {
            // SIGKILL: no close frames, events in flight are lost by the relay.
            if let Some(r) = relay.take() {
                r.kill();
            }
            kills += 1;
            std::thread::sleep(Duration::from_millis(200));
            let mut restarted = None;
            for _ in 0..100 {
                match RelayProcess::spawn_at(&listen) {
                    Ok(r) => {
                        restarted = Some(r);
                        break;
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(50)),
                }
            }
            let r = restarted.ok_or("the relay could not be started again")?;
            relay = Some(r);
            let restarted_at = Instant::now();
            // Every bus connected again: each has printed a new `opened`.
            let before: HashMap<String, u64> = seen
                .opened
                .iter()
                .map(|(n, (k, _))| (n.clone(), *k))
                .collect();
            let deadline = restarted_at + Duration::from_secs(60);
            loop {
                let back = roles
                    .iter()
                    .filter(|r| {
                        seen.opened.get(&r.name).is_some_and(|(k, at)| {
                            *k > before.get(&r.name).copied().unwrap_or(0) && *at >= restarted_at
                        })
                    })
                    .count();
                let alive = roles
                    .iter()
                    .filter(|r| !seen.exited.contains(&r.name))
                    .count();
                if back >= alive || Instant::now() > deadline {
                    let last = seen
                        .opened
                        .values()
                        .filter(|(_, at)| *at >= restarted_at)
                        .map(|(_, at)| *at)
                        .max()
                        .unwrap_or(restarted_at);
                    let took = last.duration_since(restarted_at);
                    println!(
                        "kill {kills}: relay restarted; {back}/{alive} buses connected again after {} ms",
                        took.as_millis()
                    );
                    recoveries.push(took);
                    break;
                }
                if let Ok(line) = rx.recv_timeout(Duration::from_millis(20)) {
                    seen.take(line);
                }
            }
            next_kill = Instant::now() + interval.max(Duration::from_millis(500));
            continue;
        }
        if seen.results.len() >= o.subscribers && seen.exited.len() >= roles.len() {
            break;
        }
        if start.elapsed() > run_time * 3 + Duration::from_secs(300) {
            println!("chaos: giving up waiting for the roles");
            break;
        }
        if let Ok(line) = rx.recv_timeout(Duration::from_millis(20)) {
            seen.take(line);
        }
    }
    for r in &mut roles {
        if r.child.try_wait()?.is_none() {
            let _ = r.child.kill();
        }
        let status = r.child.wait()?;
        if !status.success() {
            println!("chaos: {} exited with {status}", r.name);
        }
    }
    drop(relay);
    let (mut lost, mut duplicated, mut reordered) = (0, 0, 0);
    seen.results.sort();
    for (name, r) in &seen.results {
        println!("[{name}] {r}");
        lost += field(r, "lost");
        duplicated += field(r, "duplicated");
        reordered += field(r, "reordered");
    }
    // A subscriber that reported nothing lost everything.
    lost += (o.subscribers - seen.results.len()) as u64 * published;
    if !recoveries.is_empty() {
        recoveries.sort();
        println!(
            "recovery (relay restart to every bus connected again): median {} ms, max {} ms over {} kills",
            recoveries[recoveries.len() / 2].as_millis(),
            recoveries[recoveries.len() - 1].as_millis(),
            recoveries.len()
        );
    }
    println!("elapsed {:.1} s", start.elapsed().as_secs_f64());
    println!(
        "chaos events={published} lost={lost} duplicated={duplicated} reordered={reordered} relay_kills={kills}"
    );
    Ok(lost == 0 && duplicated == 0 && reordered == 0 && seen.done.len() == o.publishers)
}
