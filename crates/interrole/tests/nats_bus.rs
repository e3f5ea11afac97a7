//! The bus over real `nats-server` processes: typed events and request/reply on one server, and a
//! three-node cluster where the node a subscriber is connected to is killed while events flow.
//! Each test is `#[ignore = "needs nats-server"]`: run them with `cargo test -- --ignored`, which
//! fails them, saying so, when nats-server is not installed.

#[path = "../../interrole-relay-server/tests/common/cert.rs"]
mod cert;
#[path = "../../interrole-nats/tests/common/mod.rs"]
mod common;

mod transport_cases;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use cert::SelfSigned;
use interrole::nats::{Durable, NatsAuth, NatsOptions, NatsTls};
use interrole::{Bus, HostState, InstanceId, Observer, ObserverError, RetryPolicy};
use serde::{Deserialize, Serialize};

const LONG: Duration = Duration::from_secs(20);

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Tick {
    n: u64,
}
interrole::impl_event!(Tick = "test.nats.tick");

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Ask {
    x: u64,
}
interrole::impl_event!(Ask = "test.nats.ask");

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Answer {
    y: u64,
}
interrole::impl_event!(Answer = "test.nats.answer");

#[derive(Default)]
struct Seen {
    ticks: Mutex<Vec<u64>>,
    errors: Mutex<Vec<ObserverError>>,
}

impl Observer<Tick> for Seen {
    fn on_next(&self, t: &Tick) {
        self.ticks.lock().unwrap().push(t.n);
    }
    fn on_error(&self, e: ObserverError) {
        self.errors.lock().unwrap().push(e);
    }
}

fn ticks(s: &Seen) -> Vec<u64> {
    s.ticks.lock().unwrap().clone()
}

/// The tick [`settled`] publishes; no test publishes it otherwise.
const MARKER: u64 = u64::MAX;

/// What `seen` got before a marker that `from` publishes after everything else: per-sender order
/// puts whatever `from` sent before it (a duplicate included) ahead of it, so once the marker is
/// in, nothing more of that is coming, and no quiet period is needed to know it.
async fn settled(from: &Bus, seen: &Seen) -> Vec<u64> {
    from.publish(Tick { n: MARKER }).unwrap();
    wait_until("the marker", || ticks(seen).contains(&MARKER)).await;
    let mut got = ticks(seen);
    assert_eq!(got.pop(), Some(MARKER), "events after the marker: {got:?}");
    got
}

async fn wait_until(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + LONG;
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// The ticks `s` has seen once it has `n` of them, or once `limit` has passed: for an assertion
/// that shows what arrived.
async fn ticks_within(s: &Seen, n: usize, limit: Duration) -> Vec<u64> {
    let deadline = Instant::now() + limit;
    while ticks(s).len() < n && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    ticks(s)
}

async fn bus(urls: &str, topic: &str, id: &str) -> Bus {
    bus_on(NatsOptions::new(urls), topic, id).await
}

/// A connected bus with `options` and a fast retry policy.
async fn bus_on(options: NatsOptions, topic: &str, id: &str) -> Bus {
    let bus = unopened(options, topic, id);
    bus.host().unwrap().wait_opened(LONG).await.unwrap();
    bus
}

/// A bus with `options` and a fast retry policy, whose connection may not open.
fn unopened(options: NatsOptions, topic: &str, id: &str) -> Bus {
    Bus::builder()
        .instance(id)
        .topic(topic)
        .nats(options)
        .retry(fast_retry())
        .build()
        .unwrap()
}

/// `n` ticks published by `from` reach `to` once each, in order.
async fn carries(from: &Bus, to: &Bus, n: u64) {
    let seen = Arc::new(Seen::default());
    let _guard = to.observe::<Tick, _>(seen.clone());
    for n in 0..n {
        from.publish(Tick { n }).unwrap();
    }
    wait_until(&format!("{n} ticks"), || ticks(&seen).len() as u64 >= n).await;
    assert_eq!(ticks(&seen), (0..n).collect::<Vec<_>>());
}

/// The bus's connection is refused as `Unauthorized`, at once and for good: `Closed`, no retry.
async fn assert_unauthorized(bus: &Bus) {
    let host = bus.host().unwrap();
    let err = host.wait_opened(LONG).await.unwrap_err();
    assert_eq!(
        err.kind(),
        interrole::TransportErrorKind::Unauthorized,
        "{err}"
    );
    assert_eq!((host.state(), host.status().faults), (HostState::Closed, 0));
}

fn fast_retry() -> RetryPolicy {
    RetryPolicy::exponential(Duration::from_millis(50), 2.0, Duration::from_millis(500))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs nats-server"]
async fn typed_events_and_request_reply_over_nats() {
    let server = common::NatsServer::start("typed_events_and_request_reply_over_nats");
    let a = bus(&server.url(), "typed", "a").await;
    let b = bus(&server.url(), "typed", "b").await;
    let (sa, sb) = (Arc::new(Seen::default()), Arc::new(Seen::default()));
    let _ga = a.observe::<Tick, _>(sa.clone());
    let _gb = b.observe::<Tick, _>(sb.clone());
    let _serve = b.serve(|q: &Ask| Answer { y: q.x + 1 });
    for n in 0..300 {
        a.publish(Tick { n }).unwrap();
    }
    wait_until("300 at b", || ticks(&sb).len() >= 300).await;
    assert_eq!(settled(&a, &sb).await, (0..300).collect::<Vec<_>>());
    // Local observers got the local publishes once: nothing echoed back through NATS.
    let local: Vec<u64> = ticks(&sa).into_iter().filter(|&n| n != MARKER).collect();
    assert_eq!(local, (0..300).collect::<Vec<_>>());
    assert_eq!(a.stats().received, 0);
    let answer = a
        .request::<Ask, Answer>(&InstanceId::new("b").unwrap(), Ask { x: 41 }, LONG)
        .await
        .unwrap();
    assert_eq!(answer.y, 42);
    wait_until("acknowledged", || {
        a.reliable_stats().unwrap().outbox_events == 0
    })
    .await;
    a.close().await;
    b.close().await;
}

/// One request answered by every instance that serves it (`Bus::request_all`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs nats-server"]
async fn scatter_gather_over_nats() {
    let server = common::NatsServer::start("scatter_gather_over_nats");
    let url = server.url();
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
#[ignore = "needs nats-server"]
async fn a_drain_loses_nothing_published_before_it_over_nats() {
    let server = common::NatsServer::start("a_drain_loses_nothing_published_before_it_over_nats");
    let (a, b) = (
        bus(&server.url(), "drain", "a").await,
        bus(&server.url(), "drain", "b").await,
    );
    transport_cases::drain_loses_nothing(a, b).await;
}

/// Headers travel with published and directed events (`Bus::publish_with`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs nats-server"]
async fn headers_travel_over_nats() {
    let server = common::NatsServer::start("headers_travel_over_nats");
    let (a, b) = (
        bus(&server.url(), "headers", "a").await,
        bus(&server.url(), "headers", "b").await,
    );
    transport_cases::headers_travel(a, b).await;
}

/// Headers travel through JetStream too (durable mode keeps the envelope as it is).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs nats-server"]
async fn headers_travel_over_durable_nats() {
    let server = common::NatsServer::start_js("headers_travel_over_durable_nats");
    let (a, b) = (
        durable_bus(&server.url(), "headers", "a", 1).await,
        durable_bus(&server.url(), "headers", "b", 1).await,
    );
    transport_cases::headers_travel(a, b).await;
}

/// Old and new versions of event contracts side by side (a rolling upgrade).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs nats-server"]
async fn old_and_new_contract_versions_side_by_side_over_nats() {
    let server = common::NatsServer::start("old_and_new_contract_versions_side_by_side_over_nats");
    let (old, new) = (
        bus(&server.url(), "upgrade", "old").await,
        bus(&server.url(), "upgrade", "new").await,
    );
    transport_cases::rolling_upgrade(old, new).await;
}

/// A request to an instance that is not connected is refused at once (the server's "no
/// responders"), not left to time out; a `send_to` it is counted as refused. An instance that is
/// connected still gets its directed events.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs nats-server"]
async fn a_request_to_an_absent_instance_is_refused_at_once() {
    let server = common::NatsServer::start("a_request_to_an_absent_instance_is_refused_at_once");
    let a = bus(&server.url(), "absent", "a").await;
    let b = bus(&server.url(), "absent", "b").await;
    let _serve = b.serve(|q: &Ask| Answer { y: q.x * 2 });
    let started = Instant::now();
    let err = a
        .request::<Ask, Answer>(&InstanceId::new("nobody").unwrap(), Ask { x: 1 }, LONG)
        .await
        .unwrap_err();
    assert!(
        matches!(&err, interrole::RequestError::Refused(e) if e.kind() == interrole::TransportErrorKind::NoListener),
        "{err}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "refused after {:?}, not at once",
        started.elapsed()
    );
    a.send_to(&InstanceId::new("nobody").unwrap(), Tick { n: 1 })
        .unwrap();
    wait_until("two refusals counted", || {
        a.reliable_stats().unwrap().rejected >= 2
    })
    .await;
    let answer = a
        .request::<Ask, Answer>(&InstanceId::new("b").unwrap(), Ask { x: 21 }, LONG)
        .await
        .unwrap();
    assert_eq!(answer.y, 42);
    assert_eq!(a.reliable_stats().unwrap().rejected, 2);
    a.close().await;
    b.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs nats-server"]
async fn killing_the_node_a_bus_is_on_moves_it_and_nothing_is_lost() {
    let mut cluster = common::NatsCluster::start(
        "killing_the_node_a_bus_is_on_moves_it_and_nothing_is_lost",
        3,
    );
    let urls = cluster.urls();
    let first = urls.split(',').next().unwrap().to_string();
    // The publisher stays on node 0; the subscriber may be on any node but node 0 is not killed.
    let a = bus(&first, "cluster", "a").await;
    let b_urls = urls.split(',').skip(1).collect::<Vec<_>>().join(",");
    let b = bus(&b_urls, "cluster", "b").await;
    let sb = Arc::new(Seen::default());
    let _gb = b.observe::<Tick, _>(sb.clone());
    // Interest travels between nodes: wait until a first event gets through.
    let mut n = 0;
    while ticks(&sb).is_empty() {
        a.publish(Tick { n }).unwrap();
        n += 1;
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(n < 500, "no event crossed the cluster");
    }
    let start = ticks(&sb)[0];
    let node = cluster.node_of("b").expect("b is connected somewhere");
    assert_ne!(node, 0);
    let publisher = {
        let a = a.clone();
        tokio::spawn(async move {
            for k in 0..400u64 {
                a.publish(Tick { n: n + k }).unwrap();
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            n + 400
        })
    };
    // Killed while events flow.
    wait_until("events flowing to b", || ticks(&sb).len() > 20).await;
    let mut states = b.host().unwrap().watch();
    cluster.kill(node);
    let killed_at = Instant::now();
    tokio::time::timeout(LONG, states.wait_for(|s| s.faults >= 1))
        .await
        .expect("b did not notice its node died")
        .unwrap();
    tokio::time::timeout(
        LONG,
        states.wait_for(|s| s.opened >= 2 && s.state == HostState::Opened),
    )
    .await
    .expect("b did not move to another node")
    .unwrap();
    let moved_after = killed_at.elapsed();
    let end = publisher.await.unwrap();
    let expected: Vec<u64> = (start..end).collect();
    wait_until("every event at b", || ticks(&sb).len() >= expected.len()).await;
    assert_eq!(
        settled(&a, &sb).await,
        expected,
        "b moved after {moved_after:?}"
    );
    assert!(
        sb.errors.lock().unwrap().is_empty(),
        "{:?}",
        sb.errors.lock().unwrap()
    );
    let new_node = cluster.node_of("b").expect("b is connected again");
    assert_ne!(new_node, node);
    let s = b.reliable_stats().unwrap();
    eprintln!("b moved to node {new_node} after {moved_after:?}; {s:?}");
    a.close().await;
    b.close().await;
}

async fn durable_bus(urls: &str, topic: &str, id: &str, replicas: usize) -> Bus {
    let options = NatsOptions::new(urls).with_durable(Durable::replicated(replicas));
    bus_on(options, topic, id).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs nats-server"]
async fn a_durable_subscriber_that_was_down_misses_nothing() {
    let server = common::NatsServer::start_js("a_durable_subscriber_that_was_down_misses_nothing");
    let a = durable_bus(&server.url(), "durable", "a", 1).await;
    // b subscribes once (its durable consumers are created), then goes away.
    let b = durable_bus(&server.url(), "durable", "b", 1).await;
    let sb = Arc::new(Seen::default());
    let g = b.observe::<Tick, _>(sb.clone());
    a.publish(Tick { n: 0 }).unwrap();
    wait_until("the first event", || ticks(&sb) == [0]).await;
    drop(g);
    b.close().await;
    // Published while b is down: stored by JetStream, acknowledged to a.
    for n in 1..=200 {
        a.publish(Tick { n }).unwrap();
    }
    wait_until("stored", || a.reliable_stats().unwrap().outbox_events == 0).await;
    // b comes back (as a restarted process would) and resumes from its consumers.
    let b2 = Bus::builder()
        .instance("b")
        .topic("durable")
        .nats(NatsOptions::new(&server.url()).with_durable(Durable::default()))
        .build()
        .unwrap();
    let sb2 = Arc::new(Seen::default());
    let _g2 = b2.observe::<Tick, _>(sb2.clone());
    b2.host().unwrap().wait_opened(LONG).await.unwrap();
    wait_until("the 200 stored events", || ticks(&sb2).len() >= 200).await;
    assert_eq!(settled(&a, &sb2).await, (1..=200).collect::<Vec<_>>());
    a.close().await;
    b2.close().await;
}

/// The durable JetStream consumer `name` on `topic`, on a connection of its own.
async fn consumer_of(
    url: &str,
    topic: &str,
    name: &str,
) -> async_nats::jetstream::consumer::PullConsumer {
    let js = async_nats::jetstream::new(async_nats::connect(url).await.unwrap());
    let stream = NatsOptions::new(url).stream_name(&interrole::Topic::new(topic).unwrap());
    js.get_stream(&stream)
        .await
        .unwrap()
        .get_consumer(name)
        .await
        .unwrap()
}

/// A subscriber process died with events delivered to it and not acknowledged. Its next life gets
/// them first and in order: not after JetStream's 30 s acknowledgement wait, behind newer events
/// it would already have passed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs nats-server"]
async fn a_restarted_subscriber_gets_what_its_previous_life_never_acknowledged() {
    use futures::StreamExt;
    let server = common::NatsServer::start_js(
        "a_restarted_subscriber_gets_what_its_previous_life_never_acknowledged",
    );
    let a = durable_bus(&server.url(), "crash", "a", 1).await;
    // b's first life creates its durable consumers, then ends.
    durable_bus(&server.url(), "crash", "b", 1)
        .await
        .close()
        .await;
    for n in 0..200 {
        a.publish(Tick { n }).unwrap();
    }
    wait_until("stored", || a.reliable_stats().unwrap().outbox_events == 0).await;
    // The life that crashes: it takes the first 50 events from b's consumer and never
    // acknowledges them; its connection stays up, hung, and keeps a pull request waiting.
    let consumer = consumer_of(&server.url(), "crash", "b-t").await;
    let taken = consumer
        .fetch()
        .max_messages(50)
        .messages()
        .await
        .unwrap()
        .count()
        .await;
    assert_eq!(taken, 50);
    let _waiting = consumer.stream().messages().await.unwrap();
    // The next life.
    let b = unopened(
        NatsOptions::new(&server.url()).with_durable(Durable::default()),
        "crash",
        "b",
    );
    let sb = Arc::new(Seen::default());
    let _g = b.observe::<Tick, _>(sb.clone());
    b.host().unwrap().wait_opened(LONG).await.unwrap();
    // And what comes after the restart goes to the new life, not to the hung one's request.
    for n in 200..300 {
        a.publish(Tick { n }).unwrap();
    }
    // Well inside the acknowledgement wait.
    ticks_within(&sb, 300, Duration::from_secs(10)).await;
    assert_eq!(settled(&a, &sb).await, (0..300).collect::<Vec<_>>());
    assert!(sb.errors.lock().unwrap().is_empty());
    a.close().await;
    b.close().await;
}

/// A previous life that took nothing but left a pull request waiting on a hung connection: the
/// server would hand it the next events before the new life's requests.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs nats-server"]
async fn a_hung_previous_life_does_not_take_the_events_of_the_next() {
    use futures::StreamExt;
    let server =
        common::NatsServer::start_js("a_hung_previous_life_does_not_take_the_events_of_the_next");
    let a = durable_bus(&server.url(), "hung", "a", 1).await;
    durable_bus(&server.url(), "hung", "b", 1)
        .await
        .close()
        .await;
    let consumer = consumer_of(&server.url(), "hung", "b-t").await;
    let mut waiting = consumer.stream().messages().await.unwrap();
    // The request has reached the server once an event published now is handed to it.
    a.publish(Tick { n: 0 }).unwrap();
    let first = tokio::time::timeout(LONG, waiting.next()).await.unwrap();
    first.unwrap().unwrap().ack().await.unwrap();
    let b = durable_bus(&server.url(), "hung", "b", 1).await;
    let sb = Arc::new(Seen::default());
    let _g = b.observe::<Tick, _>(sb.clone());
    for n in 1..=100 {
        a.publish(Tick { n }).unwrap();
    }
    assert_eq!(
        ticks_within(&sb, 100, Duration::from_secs(10)).await,
        (1..=100).collect::<Vec<_>>()
    );
    a.close().await;
    b.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs nats-server"]
async fn durable_mode_loses_nothing_when_a_cluster_node_dies() {
    let mut cluster =
        common::NatsCluster::start_js("durable_mode_loses_nothing_when_a_cluster_node_dies", 3);
    let urls = cluster.urls();
    let first = urls.split(',').next().unwrap().to_string();
    let a = durable_bus(&first, "replicated", "a", 3).await;
    let b_urls = urls.split(',').skip(1).collect::<Vec<_>>().join(",");
    let b = durable_bus(&b_urls, "replicated", "b", 3).await;
    let sb = Arc::new(Seen::default());
    let _gb = b.observe::<Tick, _>(sb.clone());
    let node = cluster.node_of("b").expect("b is connected somewhere");
    assert_ne!(node, 0);
    let publisher = {
        let a = a.clone();
        tokio::spawn(async move {
            for n in 0..400u64 {
                a.publish(Tick { n }).unwrap();
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
    };
    // Killed while events flow.
    wait_until("events flowing to b", || ticks(&sb).len() > 20).await;
    let mut states = b.host().unwrap().watch();
    cluster.kill(node);
    // A JetStream cluster that lost a node may elect a new meta leader first: seconds.
    tokio::time::timeout(
        Duration::from_secs(90),
        states.wait_for(|s| s.opened >= 2 && s.state == HostState::Opened),
    )
    .await
    .expect("b did not move to another node")
    .unwrap();
    publisher.await.unwrap();
    wait_until("all 400 at b", || ticks(&sb).len() >= 400).await;
    assert_eq!(settled(&a, &sb).await, (0..400).collect::<Vec<_>>());
    assert!(
        sb.errors.lock().unwrap().is_empty(),
        "{:?}",
        sb.errors.lock().unwrap()
    );
    let s = b.reliable_stats().unwrap();
    eprintln!("durable: b moved off node {node}; {s:?}");
    a.close().await;
    b.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs nats-server"]
async fn bad_credentials_and_a_server_without_jetstream_are_fatal_and_said() {
    let name = "bad_credentials_and_a_server_without_jetstream_are_fatal_and_said";
    let server = common::NatsServer::start_args(name, &["--user", "svc", "--pass", "right"]);
    let wrong = NatsOptions::new(&server.url()).with_auth(NatsAuth::UserPassword {
        user: "svc".into(),
        password: "wrong".into(),
    });
    assert_unauthorized(&unopened(wrong, "t", "x")).await;

    // The right password, but durable mode on a server without JetStream.
    let right = NatsOptions::new(&server.url())
        .with_auth(NatsAuth::UserPassword {
            user: "svc".into(),
            password: "right".into(),
        })
        .with_durable(Durable::default());
    let bus = unopened(right, "t", "y");
    let host = bus.host().unwrap();
    let err = host.wait_opened(LONG).await.unwrap_err();
    assert!(!err.is_transient(), "{err} {:?}", host.status());
    assert!(err.to_string().contains("JetStream"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs nats-server"]
async fn tls_and_a_token() {
    let cert = SelfSigned::new();
    let (c, k) = (
        cert.cert.to_string_lossy().to_string(),
        cert.key.to_string_lossy().to_string(),
    );
    let server = common::NatsServer::start_args(
        "tls_and_a_token",
        &[
            "--tls",
            "--tlscert",
            &c,
            "--tlskey",
            &k,
            "--auth",
            "s3cret-token",
        ],
    );
    let url = format!("tls://{}", server.addr);
    let options = |token: &str| {
        NatsOptions::new(&url)
            .with_tls(NatsTls::trusting(&cert.cert))
            .with_auth(NatsAuth::Token(token.into()))
    };
    let a = bus_on(options("s3cret-token"), "tls", "a").await;
    let b = bus_on(options("s3cret-token"), "tls", "b").await;
    carries(&a, &b, 50).await;
    // Without the certificate's trust, or with a wrong token, the connection is refused.
    let untrusted = unopened(
        NatsOptions::new(&url).with_auth(NatsAuth::Token("s3cret-token".into())),
        "tls",
        "c",
    );
    let err = untrusted
        .host()
        .unwrap()
        .wait_opened(LONG)
        .await
        .unwrap_err();
    assert!(
        !err.is_transient(),
        "an untrusted certificate is not worth retrying: {err}"
    );
    assert!(err.to_string().contains("certificate"), "{err}");
    assert_unauthorized(&unopened(options("wrong"), "tls", "d")).await;
    a.close().await;
    b.close().await;
}

/// NKey authentication: the server knows the user's public key only; the bus signs the server's
/// challenge with the seed. A key the server does not know is refused, and not retried.
/// A JWT for `claims` (the `nats` part) about `subject`, issued and signed by `issuer`, in the
/// form nats-server decodes (NATS JWT v2: an ed25519 nkey signature, base64url without padding).
fn nats_jwt(issuer: &nkeys::KeyPair, subject: &str, claims: serde_json::Value) -> String {
    use base64::Engine;
    let b64 = |bytes: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes);
    let header = b64(br#"{"typ":"JWT","alg":"ed25519-nkey"}"#);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let body = serde_json::json!({
        "jti": format!("{subject}{now}"),
        "iat": now,
        "iss": issuer.public_key(),
        "name": subject,
        "sub": subject,
        "nats": claims,
    });
    let payload = b64(body.to_string().as_bytes());
    let signature = issuer
        .sign(format!("{header}.{payload}").as_bytes())
        .unwrap();
    format!("{header}.{payload}.{}", b64(&signature))
}

/// Decentralized authentication: an operator, an account and a user, the user's JWT and seed in a
/// credentials file. A user of an account the server does not trust is refused and not retried.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs nats-server"]
async fn credentials_file_authentication() {
    use serde_json::json;
    let (operator, account, stranger_account) = (
        nkeys::KeyPair::new_operator(),
        nkeys::KeyPair::new_account(),
        nkeys::KeyPair::new_account(),
    );
    let unlimited = json!({"subs": -1, "data": -1, "payload": -1, "imports": -1, "exports": -1,
        "wildcards": true, "conn": -1, "leaf": -1});
    let operator_jwt = nats_jwt(
        &operator,
        &operator.public_key(),
        json!({"type": "operator", "version": 2}),
    );
    let account_jwt = nats_jwt(
        &operator,
        &account.public_key(),
        json!({"type": "account", "version": 2, "limits": unlimited}),
    );
    let dir = std::env::temp_dir().join(format!("interrole-nats-creds-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let config = dir.join("operator.conf");
    std::fs::write(
        &config,
        format!(
            "operator: {operator_jwt}\nresolver: MEMORY\nresolver_preload: {{ {}: {account_jwt} }}\n",
            account.public_key()
        ),
    )
    .unwrap();
    // A user's credentials file, as `nsc generate creds` writes it.
    let creds = |name: &str, account: &nkeys::KeyPair| {
        let user = nkeys::KeyPair::new_user();
        let jwt = nats_jwt(
            account,
            &user.public_key(),
            json!({"type": "user", "version": 2, "pub": {}, "sub": {},
                "subs": -1, "data": -1, "payload": -1}),
        );
        let path = dir.join(format!("{name}.creds"));
        std::fs::write(
            &path,
            format!(
                "-----BEGIN NATS USER JWT-----\n{jwt}\n------END NATS USER JWT------\n\n\
                 -----BEGIN USER NKEY SEED-----\n{}\n------END USER NKEY SEED------\n",
                user.seed().unwrap()
            ),
        )
        .unwrap();
        NatsAuth::CredsFile(path)
    };
    let config = config.to_string_lossy().to_string();
    let server =
        common::NatsServer::start_args("credentials_file_authentication", &["-c", &config]);
    let with = |auth: NatsAuth| NatsOptions::new(&server.url()).with_auth(auth);
    let a = bus_on(with(creds("a", &account)), "creds", "a").await;
    let b = bus_on(with(creds("b", &account)), "creds", "b").await;
    carries(&a, &b, 20).await;
    assert_unauthorized(&unopened(with(creds("c", &stranger_account)), "creds", "c")).await;
    a.close().await;
    b.close().await;
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs nats-server"]
async fn nkey_authentication() {
    let user = nkeys::KeyPair::new_user();
    let stranger = nkeys::KeyPair::new_user();
    let dir = std::env::temp_dir().join(format!("interrole-nats-nkey-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let config = dir.join("nkey.conf");
    std::fs::write(
        &config,
        format!(
            "authorization {{ users = [ {{ nkey: \"{}\" }} ] }}\n",
            user.public_key()
        ),
    )
    .unwrap();
    let config = config.to_string_lossy().to_string();
    let server = common::NatsServer::start_args("nkey_authentication", &["-c", &config]);
    let with_seed = |pair: &nkeys::KeyPair| {
        NatsOptions::new(&server.url()).with_auth(NatsAuth::NKey(pair.seed().unwrap()))
    };
    let a = bus_on(with_seed(&user), "nkey", "a").await;
    let b = bus_on(with_seed(&user), "nkey", "b").await;
    carries(&a, &b, 20).await;
    assert_unauthorized(&unopened(with_seed(&stranger), "nkey", "c")).await;
    a.close().await;
    b.close().await;
    let _ = std::fs::remove_dir_all(&dir);
}
