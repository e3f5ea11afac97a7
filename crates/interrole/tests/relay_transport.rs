//! The bus over a real relay server on a real socket: the transport conformance kit, then the
//! bus's own promises across the relay (typed publish/subscribe, no echo, directed delivery,
//! request/reply, fatal errors, the outbox across a relay killed with SIGKILL).
//!
//! A relay that is killed runs in a child process: this test binary again, running the ignored
//! `relay_child_process` (see [`ChildRelay`]).

mod transport_cases;

use std::io::BufRead;
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::Mutex as StdMutex;
use std::time::Duration;

use async_trait::async_trait;
use interrole::core::testkit::Harness;
use interrole::core::{InstanceId, RetryPolicy, Transport, TransportErrorKind};
use interrole::relay::{Credentials, Relay, RelayTransport};
use interrole::{Bus, HostState, Observer, ObserverError, PublishError, Reliability};
use interrole_relay_server::{Config, KeyConfig, Server};
use serde::{Deserialize, Serialize};
use tokio::sync::Mutex;

const KEY: (&str, &str) = ("root", "root-secret");
const LONG: Duration = Duration::from_secs(20);

fn config(listen: SocketAddr) -> Config {
    Config {
        listen,
        keys: vec![
            KeyConfig::parse_flag(&format!("{}={}", KEY.0, KEY.1)).unwrap(),
            KeyConfig::parse_flag("listener=listen-secret:listen").unwrap(),
        ],
        ..Config::default()
    }
}

/// A relay server in this process.
struct RelayHarness {
    addr: SocketAddr,
    server: Mutex<Option<Server>>,
}

impl RelayHarness {
    async fn start() -> Self {
        Self::start_with(|_| {}).await
    }

    async fn start_with(f: impl FnOnce(&mut Config)) -> Self {
        let mut c = config("127.0.0.1:0".parse().unwrap());
        f(&mut c);
        let server = Server::bind(c).await.unwrap();
        Self {
            addr: server.local_addr(),
            server: Mutex::new(Some(server)),
        }
    }

    fn url(&self) -> String {
        format!("ws://{}", self.addr)
    }

    /// Shuts the server down (gracefully: its connections are closed).
    async fn stop(&self) {
        if let Some(s) = self.server.lock().await.take() {
            s.shutdown().await;
        }
    }
}

/// Where [`relay_child_process`] is told the address to listen on.
const CHILD_LISTEN: &str = "INTERROLE_TEST_RELAY_CHILD_LISTEN";
/// What [`relay_child_process`] prints, followed by its address, once it listens.
const CHILD_READY: &str = "relay child process listening on ";

/// A relay server in a child process, killed with SIGKILL and started again on the same port.
///
/// The child is this test binary, running [`relay_child_process`]. It exits when its standard
/// input closes, so that it does not outlive a test process that died without killing it.
struct ChildRelay {
    addr: SocketAddr,
    child: StdMutex<Option<Child>>,
}

impl ChildRelay {
    fn start() -> Self {
        let (child, addr) =
            tokio::task::block_in_place(|| spawn_child("127.0.0.1:0".parse().unwrap()))
                .unwrap_or_else(|e| panic!("the relay child process did not start: {e}"));
        Self {
            addr,
            child: StdMutex::new(Some(child)),
        }
    }

    fn url(&self) -> String {
        format!("ws://{}", self.addr)
    }

    /// Kills the relay process with SIGKILL and waits for it to be gone.
    fn kill(&self) {
        if let Some(mut child) = self.child.lock().unwrap().take() {
            child.kill().expect("SIGKILL the relay process");
            child.wait().expect("the killed relay process");
        }
    }

    /// Starts the relay process again on the same port; returns once it accepts connections.
    async fn start_again(&self) {
        let deadline = tokio::time::Instant::now() + LONG;
        loop {
            match tokio::task::block_in_place(|| spawn_child(self.addr)) {
                Ok((child, _)) => {
                    *self.child.lock().unwrap() = Some(child);
                    return;
                }
                Err(e) => {
                    // The port may not be free again yet.
                    assert!(
                        tokio::time::Instant::now() < deadline,
                        "could not start the relay on {} again: {e}",
                        self.addr
                    );
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
    }
}

impl Drop for ChildRelay {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.lock().unwrap().take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

#[async_trait]
impl Harness for ChildRelay {
    async fn transport(&self) -> Arc<dyn Transport> {
        Arc::new(RelayTransport::new(
            Relay::connect_to(&self.url(), Credentials::key(KEY.0, KEY.1)).unwrap(),
        ))
    }

    async fn restart_far_end(&self) -> bool {
        self.kill();
        self.start_again().await;
        true
    }
}

/// Starts [`relay_child_process`] listening on `listen`, and waits until it says it listens
/// (its listener is bound: connections are accepted from then on).
fn spawn_child(listen: SocketAddr) -> Result<(Child, SocketAddr), String> {
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let mut child = Command::new(exe)
        .args([
            "relay_child_process",
            "--exact",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD_LISTEN, listen.to_string())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .map_err(|e| e.to_string())?;
    let stdout = child.stdout.take().expect("a piped stdout");
    for line in std::io::BufReader::new(stdout).lines() {
        let line = line.map_err(|e| e.to_string())?;
        if let Some((_, addr)) = line.split_once(CHILD_READY) {
            let addr = addr.trim().parse().map_err(|e| format!("{addr:?}: {e}"))?;
            return Ok((child, addr));
        }
    }
    let status = child.wait().map_err(|e| e.to_string())?;
    Err(format!(
        "the relay child process exited before listening ({status})"
    ))
}

/// Not a test of its own: the relay of [`ChildRelay`], in the child process it starts. Ignored,
/// so that `cargo test` does not run it; run without [`CHILD_LISTEN`] (as `cargo test --
/// --ignored` does), it returns at once.
#[test]
#[ignore = "the relay process of the SIGKILL tests; serves only when they start it"]
fn relay_child_process() {
    let Some(listen) = std::env::var_os(CHILD_LISTEN) else {
        return;
    };
    let listen: SocketAddr = listen.to_str().unwrap().parse().unwrap();
    // Exit when the test process goes away (its end of the pipe closes).
    std::thread::spawn(|| {
        let _ = std::io::copy(&mut std::io::stdin(), &mut std::io::sink());
        std::process::exit(0);
    });
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let server = match Server::bind(config(listen)).await {
            Ok(server) => server,
            Err(e) => {
                // The error's message leaves its cause (the OS error) to its source.
                let cause = std::error::Error::source(&e).map(|c| format!(": {c}"));
                eprintln!("relay child process: {e}{}", cause.unwrap_or_default());
                std::process::exit(2);
            }
        };
        println!("\n{CHILD_READY}{}", server.local_addr());
        server.wait().await;
    });
}

interrole::core::conformance_suite!(relay, ChildRelay::start());

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Tick {
    n: u64,
}
interrole::core::impl_event!(Tick = "test.relay.tick");

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Ask {
    x: u64,
}
interrole::core::impl_event!(Ask = "test.relay.ask");

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Answer {
    y: u64,
}
interrole::core::impl_event!(Answer = "test.relay.answer");

fn fast_retry() -> RetryPolicy {
    RetryPolicy::exponential(Duration::from_millis(50), 2.0, Duration::from_millis(500))
}

async fn bus(url: &str, topic: &str, id: &str) -> Bus {
    let bus = Bus::builder()
        .instance(id)
        .topic(topic)
        .relay(url, Credentials::key(KEY.0, KEY.1))
        .retry(fast_retry())
        .build()
        .unwrap();
    bus.host().unwrap().wait_opened(LONG).await.unwrap();
    bus
}

/// Records what a typed observer sees.
#[derive(Default)]
struct Seen {
    ticks: StdMutex<Vec<(String, u64)>>,
    errors: StdMutex<Vec<ObserverError>>,
}

impl Observer<Tick> for Seen {
    fn on_next(&self, t: &Tick) {
        self.ticks.lock().unwrap().push((String::new(), t.n));
    }
    fn on_error(&self, e: ObserverError) {
        self.errors.lock().unwrap().push(e);
    }
}

async fn wait_until(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + LONG;
    while !f() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn ns(seen: &Seen) -> Vec<u64> {
    seen.ticks.lock().unwrap().iter().map(|t| t.1).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn typed_events_cross_the_relay_once_and_never_echo() {
    let h = RelayHarness::start().await;
    let a = bus(&h.url(), "typed", "a").await;
    let b = bus(&h.url(), "typed", "b").await;
    let (sa, sb) = (Arc::new(Seen::default()), Arc::new(Seen::default()));
    let _ga = a.observe::<Tick, _>(sa.clone());
    let _gb = b.observe::<Tick, _>(sb.clone());
    // 200 ticks, then 200 as a marker: once it arrives, everything a sent before it has.
    for n in 0..=200 {
        a.publish(Tick { n }).unwrap();
    }
    wait_until("b to get a's marker", || ns(&sb).contains(&200)).await;
    assert_eq!(ns(&sb), (0..=200).collect::<Vec<_>>());
    // b answers with a marker of its own: an echo of a's events would have come back to a
    // through the relay before it.
    b.publish(Tick { n: 1000 }).unwrap();
    wait_until("a to get b's marker", || ns(&sa).contains(&1000)).await;
    // a's own observers got its events directly, once each: nothing came back through the relay.
    let mut expected: Vec<u64> = (0..=200).collect();
    expected.push(1000);
    assert_eq!(ns(&sa), expected);
    assert_eq!(
        a.stats().received,
        1,
        "only b's marker came through the relay"
    );
    a.close().await;
    b.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn send_to_and_request_reply() {
    let h = RelayHarness::start().await;
    let a = bus(&h.url(), "rr", "a").await;
    let b = bus(&h.url(), "rr", "b").await;
    let c = bus(&h.url(), "rr", "c").await;
    let _serve = b.serve(|q: &Ask| Answer { y: q.x * 2 });
    let (sb, sc) = (Arc::new(Seen::default()), Arc::new(Seen::default()));
    let _gb = b.observe::<Tick, _>(sb.clone());
    let _gc = c.observe::<Tick, _>(sc.clone());
    a.send_to(&InstanceId::new("b").unwrap(), Tick { n: 7 })
        .unwrap();
    wait_until("b to get the directed tick", || ns(&sb) == [7]).await;
    for x in 1..=20 {
        let answer = a
            .request::<Ask, Answer>(&InstanceId::new("b").unwrap(), Ask { x }, LONG)
            .await
            .unwrap();
        assert_eq!(answer.y, 2 * x);
    }
    // A request to an instance that is not there is refused, not left to time out.
    let err = a
        .request::<Ask, Answer>(&InstanceId::new("nobody").unwrap(), Ask { x: 1 }, LONG)
        .await
        .unwrap_err();
    assert!(
        matches!(&err, interrole::RequestError::Refused(e) if e.kind() == TransportErrorKind::NoListener),
        "{err}"
    );
    // A request nobody serves times out.
    let err = a
        .request::<Ask, Answer>(
            &InstanceId::new("c").unwrap(),
            Ask { x: 1 },
            Duration::from_millis(300),
        )
        .await
        .unwrap_err();
    assert!(matches!(err, interrole::RequestError::Timeout(_)), "{err}");
    // A marker for the bystander, after everything else a sent: it arrives alone.
    a.send_to(&InstanceId::new("c").unwrap(), Tick { n: 99 })
        .unwrap();
    wait_until("c to get its marker", || !ns(&sc).is_empty()).await;
    assert_eq!(ns(&sc), [99], "a bystander saw directed events");
    for bus in [a, b, c] {
        bus.close().await;
    }
}

/// One request answered by every instance that serves it (`Bus::request_all`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scatter_gather_over_the_relay() {
    let h = RelayHarness::start().await;
    let url = h.url();
    let bus = |id| bus(&url, "gather", id);
    transport_cases::scatter_gather(
        bus("a").await,
        bus("b").await,
        bus("c").await,
        bus("d").await,
    )
    .await;
}

/// Nothing published before a drain is lost (`Bus::drain`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drain_loses_nothing_published_before_it_over_the_relay() {
    let h = RelayHarness::start().await;
    let (a, b) = (
        bus(&h.url(), "drain", "a").await,
        bus(&h.url(), "drain", "b").await,
    );
    transport_cases::drain_loses_nothing(a, b).await;
}

/// Headers travel with published and directed events (`Bus::publish_with`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn headers_travel_over_the_relay() {
    let h = RelayHarness::start().await;
    let (a, b) = (
        bus(&h.url(), "headers", "a").await,
        bus(&h.url(), "headers", "b").await,
    );
    transport_cases::headers_travel(a, b).await;
}

/// Old and new versions of event contracts side by side (a rolling upgrade).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn old_and_new_contract_versions_side_by_side_over_the_relay() {
    let h = RelayHarness::start().await;
    let (old, new) = (
        bus(&h.url(), "upgrade", "old").await,
        bus(&h.url(), "upgrade", "new").await,
    );
    transport_cases::rolling_upgrade(old, new).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_credentials_are_fatal_and_said() {
    let h = RelayHarness::start().await;
    let bus = Bus::builder()
        .instance("intruder")
        .topic("secure")
        .relay(&h.url(), Credentials::key(KEY.0, "wrong-secret"))
        .build()
        .unwrap();
    let host = bus.host().unwrap();
    let err = host.wait_opened(LONG).await.unwrap_err();
    assert_eq!(err.kind(), TransportErrorKind::Unauthorized, "{err}");
    assert_eq!(host.state(), HostState::Closed);
    assert_eq!(
        host.status().error.unwrap().kind(),
        TransportErrorKind::Unauthorized
    );
    let e = bus.publish(Tick { n: 1 }).unwrap_err();
    assert!(
        matches!(&e, PublishError::Transport(t) if t.kind() == TransportErrorKind::Unauthorized),
        "{e}"
    );
    assert!(!e.is_transient());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_without_the_send_right_is_forbidden_and_not_retried() {
    let h = RelayHarness::start().await;
    let bus = Bus::builder()
        .instance("reader")
        .topic("secure")
        .relay(&h.url(), Credentials::key("listener", "listen-secret"))
        .build()
        .unwrap();
    let host = bus.host().unwrap();
    let err = host.wait_opened(LONG).await.unwrap_err();
    assert_eq!(err.kind(), TransportErrorKind::Forbidden, "{err}");
    let status = host.status();
    assert_eq!(
        (status.state, status.faults),
        (HostState::Closed, 0),
        "{status:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_url_fails_the_build() {
    let err = Bus::builder()
        .relay("ftp://example", Credentials::None)
        .build()
        .unwrap_err();
    assert!(err.to_string().contains("ws://"), "{err}");
}

/// The relay process is killed with SIGKILL (no goodbye to anyone) and started again on the
/// same port.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_published_while_the_relay_is_killed_arrive_once_in_order() {
    let h = ChildRelay::start();
    let a = bus(&h.url(), "outage", "a").await;
    let b = bus(&h.url(), "outage", "b").await;
    let sb = Arc::new(Seen::default());
    let _gb = b.observe::<Tick, _>(sb.clone());
    let mut states = a.host().unwrap().watch();
    for n in 0..100 {
        a.publish(Tick { n }).unwrap();
    }
    wait_until("100 before the outage", || ns(&sb).len() >= 100).await;
    h.kill();
    states
        .wait_for(|s| s.state != HostState::Opened)
        .await
        .unwrap();
    // Published while down: kept in the outbox, never an error.
    for n in 100..300 {
        a.publish(Tick { n }).unwrap();
    }
    assert!(a.reliable_stats().unwrap().outbox_events >= 200);
    h.start_again().await;
    // 300 as a marker, after the rest: once it arrives, everything before it has.
    a.publish(Tick { n: 300 }).unwrap();
    wait_until("the marker after the outage", || ns(&sb).contains(&300)).await;
    assert_eq!(ns(&sb), (0..=300).collect::<Vec<_>>());
    assert!(
        sb.errors.lock().unwrap().is_empty(),
        "{:?}",
        sb.errors.lock().unwrap()
    );
    wait_until("the outbox to drain", || {
        a.reliable_stats().unwrap().outbox_events == 0
    })
    .await;
    assert!(a.host().unwrap().status().opened >= 2);
    a.close().await;
    b.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_outbox_fails_fast() {
    let h = RelayHarness::start().await;
    let a = Bus::builder()
        .instance("a")
        .topic("full")
        .relay(&h.url(), Credentials::key(KEY.0, KEY.1))
        .reliability(
            Reliability::default()
                .with_outbox(50, 1 << 20)
                .with_retry(fast_retry()),
        )
        .build()
        .unwrap();
    a.host().unwrap().wait_opened(LONG).await.unwrap();
    h.stop().await;
    let mut states = a.host().unwrap().watch();
    states
        .wait_for(|s| s.state != HostState::Opened)
        .await
        .unwrap();
    for n in 0..50 {
        a.publish(Tick { n }).unwrap();
    }
    // The relay stays down: a publish that waited for room would wait for good.
    let full = a.clone();
    let err = tokio::time::timeout(
        LONG,
        tokio::task::spawn_blocking(move || full.publish(Tick { n: 50 }).unwrap_err()),
    )
    .await
    .expect("a publish into a full outbox waited instead of failing")
    .unwrap();
    assert!(
        matches!(err, PublishError::OutboxFull { events: 50, .. }),
        "{err}"
    );
    assert!(err.is_transient());
}

/// The status the host reports next that satisfies `f`.
async fn reported(
    rx: &mut tokio::sync::watch::Receiver<interrole::HostStatus>,
    what: &str,
    f: impl FnMut(&interrole::HostStatus) -> bool,
) -> interrole::HostStatus {
    tokio::time::timeout(LONG, rx.wait_for(f))
        .await
        .unwrap_or_else(|_| panic!("the host never reported {what}"))
        .expect("the host is gone")
        .clone()
}

/// The host reports each state as it goes through it: opened, faulted (reconnecting, with the
/// transient error) while the relay process is killed, opened again once it is back, closed.
/// Each is waited for on one watch, so each was reported, in this order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_host_reports_its_states() {
    let h = ChildRelay::start();
    let a = bus(&h.url(), "states", "a").await;
    let host = a.host().unwrap();
    let mut rx = host.watch();
    let mut seen = Vec::new();
    let s = reported(&mut rx, "opened", |s| s.state == HostState::Opened).await;
    assert_eq!((s.opened, s.faults), (1, 0), "{s:?}");
    seen.push(s.state);
    h.kill();
    // While the relay is down: faulted, then retrying (opening), the last error kept.
    let s = reported(&mut rx, "the fault", |s| {
        s.faults >= 1 && s.state != HostState::Opened
    })
    .await;
    assert!(
        matches!(s.state, HostState::Faulted | HostState::Opening),
        "{s:?}"
    );
    let error = s.error.as_ref().expect("the fault's error");
    assert!(error.is_transient(), "{error}");
    seen.push(s.state);
    h.start_again().await;
    let s = reported(&mut rx, "opened again", |s| s.state == HostState::Opened).await;
    assert!(s.opened >= 2 && s.faults >= 1, "{s:?}");
    seen.push(s.state);
    a.close().await;
    let s = reported(&mut rx, "closed", |s| s.state == HostState::Closed).await;
    seen.push(s.state);
    assert_eq!(seen.len(), 4, "{seen:?}");
}

/// A TCP proxy in front of the relay that can freeze the connections made so far: they stay
/// open but nothing crosses them any more, as when a network path dies silently.
struct Proxy {
    addr: SocketAddr,
    frozen_below: Arc<std::sync::atomic::AtomicU64>,
    made: Arc<std::sync::atomic::AtomicU64>,
}

impl Proxy {
    async fn start(to: SocketAddr) -> Self {
        use std::sync::atomic::{AtomicU64, Ordering};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let frozen_below = Arc::new(AtomicU64::new(0));
        let made = Arc::new(AtomicU64::new(0));
        let (fb, m) = (frozen_below.clone(), made.clone());
        tokio::spawn(async move {
            while let Ok((down, _)) = listener.accept().await {
                let Ok(up) = tokio::net::TcpStream::connect(to).await else {
                    continue;
                };
                let index = m.fetch_add(1, Ordering::SeqCst);
                let (dr, dw) = down.into_split();
                let (ur, uw) = up.into_split();
                for (mut r, mut w) in [
                    (
                        Box::new(dr) as Box<dyn tokio::io::AsyncRead + Send + Unpin>,
                        Box::new(uw) as Box<dyn tokio::io::AsyncWrite + Send + Unpin>,
                    ),
                    (Box::new(ur), Box::new(dw)),
                ] {
                    let fb = fb.clone();
                    tokio::spawn(async move {
                        use tokio::io::{AsyncReadExt, AsyncWriteExt};
                        let mut buf = vec![0u8; 16 * 1024];
                        loop {
                            let n = match r.read(&mut buf).await {
                                Ok(0) | Err(_) => return,
                                Ok(n) => n,
                            };
                            if index < fb.load(Ordering::SeqCst) {
                                // Frozen: hold the socket open, pass nothing on.
                                std::future::pending::<()>().await;
                            }
                            if w.write_all(&buf[..n]).await.is_err() {
                                return;
                            }
                        }
                    });
                }
            }
        });
        Self {
            addr,
            frozen_below,
            made,
        }
    }

    fn freeze_existing(&self) {
        use std::sync::atomic::Ordering;
        self.frozen_below
            .store(self.made.load(Ordering::SeqCst), Ordering::SeqCst);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_connection_stays_open_and_a_dead_one_is_found_within_seconds() {
    let h = RelayHarness::start().await;
    let proxy = Proxy::start(h.addr).await;
    let a = Bus::builder()
        .instance("a")
        .topic("alive")
        .relay(
            &format!("ws://{}", proxy.addr),
            Credentials::key(KEY.0, KEY.1),
        )
        .retry(fast_retry())
        .build()
        .unwrap();
    let host = a.host().unwrap();
    host.wait_opened(LONG).await.unwrap();
    let b = bus(&h.url(), "alive", "b").await;
    let sb = Arc::new(Seen::default());
    let _gb = b.observe::<Tick, _>(sb.clone());
    // Idle for longer than the dead-connection limit (6 s): pings keep it open.
    tokio::time::sleep(Duration::from_secs(8)).await;
    let s = host.status();
    assert_eq!(
        (s.state, s.opened, s.faults),
        (HostState::Opened, 1, 0),
        "{s:?}"
    );
    // The path dies silently: found by the keep-alive, reported as a timeout, reconnected.
    proxy.freeze_existing();
    let frozen_at = std::time::Instant::now();
    let mut rx = host.watch();
    let faulted = tokio::time::timeout(LONG, rx.wait_for(|s| s.faults >= 1))
        .await
        .expect("the dead connection was not found")
        .unwrap()
        .clone();
    let found = frozen_at.elapsed();
    assert!(found < Duration::from_secs(10), "found after {found:?}");
    assert!(
        found >= Duration::from_secs(4),
        "found after only {found:?}: not by the keep-alive?"
    );
    let kind = faulted.error.as_ref().map(|e| e.kind());
    assert!(
        matches!(
            kind,
            Some(TransportErrorKind::Timeout | TransportErrorKind::ConnectionLost)
        ),
        "{faulted:?}"
    );
    tokio::time::timeout(
        LONG,
        rx.wait_for(|s| s.opened >= 2 && s.state == HostState::Opened),
    )
    .await
    .expect("not reconnected")
    .unwrap();
    a.publish(Tick { n: 1 }).unwrap();
    wait_until("b to hear from a again", || ns(&sb) == [1]).await;
    a.close().await;
    b.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_are_renewed_before_they_expire_without_losing_events() {
    let h = RelayHarness::start().await;
    let short = Credentials::Key {
        name: KEY.0.into(),
        key: KEY.1.into(),
        ttl: Duration::from_secs(3),
    };
    let a = Bus::builder()
        .instance("a")
        .topic("renew")
        .relay(&h.url(), short)
        .retry(fast_retry())
        .build()
        .unwrap();
    a.host().unwrap().wait_opened(LONG).await.unwrap();
    let b = bus(&h.url(), "renew", "b").await;
    let sb = Arc::new(Seen::default());
    let _gb = b.observe::<Tick, _>(sb.clone());
    // Publish through three token lifetimes.
    for n in 0..400 {
        a.publish(Tick { n }).unwrap();
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    a.publish(Tick { n: 400 }).unwrap();
    wait_until("the marker after 400", || ns(&sb).contains(&400)).await;
    assert_eq!(ns(&sb), (0..=400).collect::<Vec<_>>());
    let s = a.host().unwrap().status();
    assert!(s.opened >= 3, "the token was not renewed: {s:?}");
    assert_eq!(s.state, HostState::Opened);
    a.close().await;
    b.close().await;
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Big {
    n: u64,
    blob: Vec<u8>,
}
interrole::core::impl_event!(Big = "test.relay.big");

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_the_relay_drops_for_a_slow_subscriber_is_repaired_by_the_publisher() {
    // A relay that keeps only 16 events per subscriber and drops the oldest beyond.
    let h = RelayHarness::start_with(|c| c.subscribers.queue_len = 16).await;
    // The publisher retains what it sent for a minute, however slowly a loaded machine runs.
    let a = Bus::builder()
        .instance("a")
        .topic("repair")
        .relay(&h.url(), Credentials::key(KEY.0, KEY.1))
        .reliability(
            Reliability::default()
                .with_retry(fast_retry())
                .with_retention(10_000, Duration::from_secs(60)),
        )
        .build()
        .unwrap();
    a.host().unwrap().wait_opened(LONG).await.unwrap();
    let b = bus(&h.url(), "repair", "b").await;
    let got = Arc::new(StdMutex::new(Vec::new()));
    let errors = Arc::new(StdMutex::new(Vec::new()));
    struct Slow(Arc<StdMutex<Vec<u64>>>, Arc<StdMutex<Vec<ObserverError>>>);
    impl Observer<Big> for Slow {
        fn on_next(&self, e: &Big) {
            // Stalls the subscriber's connection at first, so that the relay's queue for it
            // overflows (the socket buffers cannot hold 32 MiB either).
            let stall = if e.n == 0 { 1000 } else { 0 };
            std::thread::sleep(Duration::from_millis(stall) + Duration::from_micros(100));
            self.0.lock().unwrap().push(e.n);
        }
        fn on_error(&self, e: ObserverError) {
            self.1.lock().unwrap().push(e);
        }
    }
    let _g = b.observe::<Big, _>(Slow(got.clone(), errors.clone()));
    const N: u64 = 2000;
    for n in 0..N {
        a.publish(Big {
            n,
            blob: vec![7; 4096],
        })
        .unwrap();
    }
    // N as a marker: once it arrives, everything before it has.
    a.publish(Big { n: N, blob: vec![] }).unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(90);
    while !got.lock().unwrap().contains(&N) {
        assert!(
            std::time::Instant::now() < deadline,
            "not every event arrived: {} of {N}; {:?}",
            got.lock().unwrap().len(),
            b.reliable_stats()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let got = got.lock().unwrap().clone();
    let missing: Vec<u64> = (0..=N).filter(|n| !got.contains(n)).collect();
    assert_eq!(
        got,
        (0..=N).collect::<Vec<_>>(),
        "{} missing: {missing:?}; {:?}",
        missing.len(),
        b.reliable_stats()
    );
    assert!(
        errors.lock().unwrap().is_empty(),
        "{:?}",
        errors.lock().unwrap()
    );
    let s = b.reliable_stats().unwrap();
    assert!(
        s.transport_dropped > 0,
        "the relay dropped nothing: the test proves nothing ({s:?})"
    );
    assert!(s.repaired > 0 && s.repair_requests > 0, "{s:?}");
    a.close().await;
    b.close().await;
}

/// A relay over its publish rate refuses events for now (REJECT BUSY); the publisher sends them
/// again, with the same sequence numbers, until the relay takes them: every subscriber gets every
/// event once, in order, and nothing is counted as refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_over_the_publish_rate_are_sent_again_until_taken() {
    let h = RelayHarness::start_with(|c| c.limits.max_publish_rate = 200).await;
    let a = bus(&h.url(), "rate", "a").await;
    let b = bus(&h.url(), "rate", "b").await;
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let _g = b.subscribe::<Tick, _>(move |t| tx.send(t.n).unwrap());
    const N: u64 = 600;
    for n in 0..N {
        a.publish(Tick { n }).unwrap();
    }
    let mut got = Vec::new();
    while got.len() < N as usize {
        match tokio::time::timeout(LONG, rx.recv()).await {
            Ok(Some(n)) => got.push(n),
            _ => panic!("{} of {N} arrived; {:?}", got.len(), a.reliable_stats()),
        }
    }
    assert_eq!(got, (0..N).collect::<Vec<_>>());
    let stats = a.reliable_stats().unwrap();
    assert!(stats.resent > 0, "the relay never refused: {stats:?}");
    assert_eq!(stats.rejected, 0, "{stats:?}");
}
