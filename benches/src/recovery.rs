//! Recovery measurements for `compare recovery`: how long until events flow again after the far
//! end dies.
//!
//! - **Relay**: [`SUBSCRIBERS`] subscriber buses and a publisher bus (this process, the default
//!   retry policy) on a relay process; the relay is killed with SIGKILL and started again on the
//!   same port at once; measured: from the kill until the new process listens, until every bus
//!   is connected again, and until every subscriber has received a probe published after the
//!   kill.
//! - **NATS**: a three-node `nats-server` cluster; the publisher on node 0, the subscribers
//!   listing nodes 1 and 2 (so about half start on node 1); node 1 is killed; measured: from the
//!   kill until every subscriber that was on node 1 is connected again, and until every
//!   subscriber has received a probe published after the kill. A fresh cluster per kill. Which
//!   subscribers were on node 1 is read from its monitoring endpoint (`/connz`) before the kill:
//!   if that fails, or no subscriber was there, the measurement fails rather than timing nothing.
//!
//! Both are timed from the moment just before the SIGKILL is sent. The publisher sends a probe
//! every millisecond throughout.

use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use interrole::nats::NatsOptions;
use interrole::relay::Credentials;
use interrole::{Bus, RetryPolicy};
use serde::{Deserialize, Serialize};

use crate::relay::{KEY, KEY_NAME, RelayProcess};

type Error = Box<dyn std::error::Error + Send + Sync>;

/// Subscriber buses per measurement.
pub const SUBSCRIBERS: usize = 20;
/// Kills per system.
pub const KILLS: usize = 5;

/// A probe: its publication time, microseconds since the run's start.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
pub struct Probe(pub u64);
interrole::impl_event!(Probe = "bench.recovery.probe");

/// One kill: how long, from the kill, until every bus was connected again, and until every
/// subscriber had a probe published after the fault.
#[derive(Debug, Clone, Copy)]
pub struct Recovery {
    /// The relay: until the new relay process listened (None for NATS, whose cluster stays up).
    pub server_back: Option<Duration>,
    /// Until every bus that lost its server was connected again.
    pub reconnected: Duration,
    /// Until every subscriber had received a probe published after the fault.
    pub flowing: Duration,
}

struct Subscribers {
    buses: Vec<Bus>,
    /// Per subscriber, the publication time (µs since `epoch`) of the latest probe received.
    latest: Arc<Vec<AtomicU64>>,
    _guards: Vec<interrole::Subscription>,
}

fn subscribe(buses: Vec<Bus>) -> Subscribers {
    let latest: Arc<Vec<AtomicU64>> =
        Arc::new((0..buses.len()).map(|_| AtomicU64::new(0)).collect());
    let guards = buses
        .iter()
        .enumerate()
        .map(|(i, b)| {
            let latest = latest.clone();
            b.subscribe::<Probe, _>(move |p| {
                latest[i].fetch_max(p.0, Ordering::Relaxed);
            })
        })
        .collect();
    Subscribers {
        buses,
        latest,
        _guards: guards,
    }
}

/// Publishes a probe every millisecond until dropped.
fn probe_loop(publisher: Bus, epoch: Instant) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_millis(1));
        loop {
            tick.tick().await;
            let _ = publisher.publish(Probe(epoch.elapsed().as_micros() as u64));
        }
    })
}

/// Waits until the publisher and every subscriber are connected, then publishes a probe every
/// millisecond. Returns every bus, the probes' time origin, and the probing task.
async fn start_probes(
    publisher: &Bus,
    subs: &Subscribers,
) -> Result<(Vec<Bus>, Instant, tokio::task::JoinHandle<()>), Error> {
    let mut all = subs.buses.clone();
    all.push(publisher.clone());
    all_opened(&all).await?;
    for b in &all {
        b.register::<Probe>();
    }
    let epoch = Instant::now();
    Ok((all, epoch, probe_loop(publisher.clone(), epoch)))
}

fn opened(all: &[Bus]) -> Vec<u64> {
    all.iter()
        .map(|b| b.host().map_or(0, |h| h.status().opened))
        .collect()
}

async fn all_opened(all: &[Bus]) -> Result<(), Error> {
    for b in all {
        b.host()
            .ok_or("no host")?
            .wait_opened(Duration::from_secs(30))
            .await?;
    }
    Ok(())
}

/// Relay restarts with the default retry policy; one [`Recovery`] per kill.
///
/// # Errors
/// The relay could not be started, or a bus did not recover within a minute.
pub async fn relay_recovery(kills: usize) -> Result<Vec<Recovery>, Error> {
    let port = TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
    let listen = format!("127.0.0.1:{port}");
    let mut relay = Some(RelayProcess::spawn_at(&listen)?);
    let url = format!("ws://{listen}");
    let topic = format!("bench-recovery-{}", std::process::id());
    let bus = |id: String| {
        Bus::builder()
            .instance(id)
            .topic(topic.clone())
            .relay(&url, Credentials::key(KEY_NAME, KEY))
            .retry(RetryPolicy::default())
            .build()
    };
    let publisher = bus("publisher".into())?;
    let subs = subscribe(
        (0..SUBSCRIBERS)
            .map(|i| bus(format!("sub-{i}")))
            .collect::<Result<Vec<_>, _>>()?,
    );
    let (all, epoch, probes) = start_probes(&publisher, &subs).await?;
    let mut out = Vec::new();
    for _ in 0..kills {
        tokio::time::sleep(Duration::from_millis(1500)).await;
        let before = opened(&all);
        let killed_at = Instant::now();
        if let Some(r) = relay.take() {
            r.kill();
        }
        let mut restarted = None;
        for _ in 0..100 {
            match RelayProcess::spawn_at(&listen) {
                Ok(r) => {
                    restarted = Some(r);
                    break;
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
            }
        }
        relay = Some(restarted.ok_or("the relay did not start again")?);
        let server_back = killed_at.elapsed();
        // Every bus lost the relay.
        let lost = vec![true; all.len()];
        let r = wait_recovered(&all, &lost, &subs, &before, killed_at, epoch).await?;
        out.push(Recovery {
            server_back: Some(server_back),
            ..r
        });
    }
    probes.abort();
    for b in &all {
        b.close().await;
    }
    drop(relay);
    Ok(out)
}

/// A node of a local `nats-server` cluster.
struct Node {
    client: u16,
    monitor: u16,
    child: Option<Child>,
}

impl Drop for Node {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn free_ports(n: usize) -> Result<Vec<u16>, Error> {
    // Held open together, so that no two are the same.
    let listeners: Vec<TcpListener> = (0..n)
        .map(|_| TcpListener::bind("127.0.0.1:0"))
        .collect::<Result<_, _>>()?;
    listeners
        .iter()
        .map(|l| Ok(l.local_addr()?.port()))
        .collect()
}

fn start_cluster(n: usize) -> Result<Vec<Node>, Error> {
    let ports = free_ports(3 * n)?;
    let (clients, rest) = ports.split_at(n);
    let (routes, monitors) = rest.split_at(n);
    let route_urls: Vec<String> = routes
        .iter()
        .map(|p| format!("nats://127.0.0.1:{p}"))
        .collect();
    let mut nodes = Vec::new();
    for i in 0..n {
        let others: Vec<&str> = route_urls
            .iter()
            .enumerate()
            .filter(|(j, _)| *j != i)
            .map(|(_, r)| r.as_str())
            .collect();
        let child = Command::new("nats-server")
            .args(["-a", "127.0.0.1", "-p", &clients[i].to_string()])
            .args(["-m", &monitors[i].to_string()])
            .args(["-n", &format!("bench-{i}"), "--cluster_name", "bench"])
            .args(["--cluster", &route_urls[i], "--routes", &others.join(",")])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()?;
        nodes.push(Node {
            client: clients[i],
            monitor: monitors[i],
            child: Some(child),
        });
    }
    for node in &nodes {
        let t = Instant::now();
        while std::net::TcpStream::connect(("127.0.0.1", node.client)).is_err() {
            if t.elapsed() > Duration::from_secs(10) {
                return Err("nats-server did not start".into());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    // Routes form within a moment of the nodes listening.
    std::thread::sleep(Duration::from_millis(500));
    Ok(nodes)
}

/// Whether `nats-server` is installed.
pub fn nats_installed() -> bool {
    Command::new("nats-server")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// NATS node kills in a three-node cluster (a fresh cluster per kill); one [`Recovery`] each.
///
/// # Errors
/// nats-server could not be started, or a bus did not recover within a minute.
pub async fn nats_recovery(kills: usize) -> Result<Vec<Recovery>, Error> {
    let mut out = Vec::new();
    for k in 0..kills {
        let mut nodes = start_cluster(3)?;
        let url = |i: usize| format!("nats://127.0.0.1:{}", nodes[i].client);
        let topic = format!("bench-recovery-{}-{k}", std::process::id());
        let bus = |id: String, urls: String| {
            Bus::builder()
                .instance(id)
                .topic(topic.clone())
                .nats(NatsOptions::new(&urls))
                .retry(RetryPolicy::default())
                .build()
        };
        let publisher = bus("publisher".into(), url(0))?;
        // Node 1 first: the subscribers start there (a new connection tries the listed
        // servers in a random order, so a few may start on node 2).
        let subs = subscribe(
            (0..SUBSCRIBERS)
                .map(|i| bus(format!("sub-{i}"), format!("{},{}", url(1), url(2))))
                .collect::<Result<Vec<_>, _>>()?,
        );
        let (all, epoch, probes) = start_probes(&publisher, &subs).await?;
        // Interest crosses the routes: wait until every subscriber hears the probes.
        let t = Instant::now();
        while subs.latest.iter().any(|l| l.load(Ordering::Relaxed) == 0) {
            if t.elapsed() > Duration::from_secs(10) {
                return Err("probes did not reach every subscriber".into());
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let before = opened(&subs.buses);
        // The subscribers connected to node 1, by their client names (the instance ids).
        let connz = http_get(nodes[1].monitor, "/connz").map_err(|e| {
            format!(
                "reading node 1's /connz (monitoring port {}): {e}",
                nodes[1].monitor
            )
        })?;
        let on_node: Vec<bool> = (0..SUBSCRIBERS)
            .map(|i| connz.contains(&format!("\"name\":\"sub-{i}\"")))
            .collect();
        if !on_node.contains(&true) {
            return Err(format!(
                "no subscriber was on node 1, the node to be killed (its /connz names none of sub-0..sub-{}): nothing would reconnect",
                SUBSCRIBERS - 1
            )
            .into());
        }
        let killed_at = Instant::now();
        if let Some(mut c) = nodes[1].child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        // Only the buses that were on node 1 reconnect; the others count as connected.
        let r = wait_recovered(&subs.buses, &on_node, &subs, &before, killed_at, epoch).await?;
        out.push(r);
        probes.abort();
        for b in &all {
            b.close().await;
        }
        drop(nodes);
    }
    Ok(out)
}

/// Waits until every bus that lost its server (`lost[i]`) is connected again, and every
/// subscriber has a probe published after `fault_at`; the others count as connected throughout.
async fn wait_recovered(
    buses: &[Bus],
    lost: &[bool],
    subs: &Subscribers,
    before: &[u64],
    fault_at: Instant,
    epoch: Instant,
) -> Result<Recovery, Error> {
    let after = fault_at.duration_since(epoch).as_micros() as u64;
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut reconnected = None;
    loop {
        let back = buses
            .iter()
            .zip(before)
            .zip(lost)
            .all(|((b, before), moved)| {
                b.host().is_some_and(|h| {
                    let s = h.status();
                    s.state == interrole::HostState::Opened && (!moved || s.opened > *before)
                })
            });
        if back && reconnected.is_none() {
            reconnected = Some(fault_at.elapsed());
        }
        let flowing = subs
            .latest
            .iter()
            .all(|l| l.load(Ordering::Relaxed) > after);
        if let (Some(r), true) = (reconnected, flowing) {
            return Ok(Recovery {
                server_back: None,
                reconnected: r,
                flowing: fault_at.elapsed(),
            });
        }
        if Instant::now() > deadline {
            return Err("no recovery within 60 s".into());
        }
        tokio::time::sleep(Duration::from_micros(500)).await;
    }
}

/// A plain HTTP GET on 127.0.0.1:`port` (the NATS monitoring endpoint); the body without
/// spaces and newlines.
///
/// # Errors
/// The connection or the read failed, or the answer is not a `200` with a body.
fn http_get(port: u16, path: &str) -> Result<String, Error> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port))?;
    s.set_read_timeout(Some(Duration::from_secs(2)))?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")?;
    let mut out = String::new();
    s.read_to_string(&mut out)?;
    let (head, body) = out
        .split_once("\r\n\r\n")
        .ok_or("an answer without a body")?;
    let status = head.lines().next().unwrap_or_default();
    if status.split_whitespace().nth(1) != Some("200") {
        return Err(format!("answered {status:?}").into());
    }
    Ok(body.replace([' ', '\n'], ""))
}
