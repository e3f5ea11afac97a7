//! Bus metrics through the `metrics` facade: a recorder of this test's own, installed globally
//! once for the whole binary (buses resolve their handles when they are built, and observers
//! run on other threads), and each test reading the series of its own instances only.
//!
//! On loopback: published and delivered per type, a panicking observer counted as an observer
//! error, an async mailbox that overflows counted as lagged, the observers gauge. Over a relay:
//! received events, the delivery lag histogram and the outbox gauges; the same on NATS, core and
//! durable (ignored: needs nats-server).

#[cfg(feature = "relay")]
mod relay_support;

#[cfg(feature = "nats")]
#[path = "../../interrole-nats/tests/common/mod.rs"]
mod nats_common;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use interrole::{Bus, Event, Loopback, Mailbox, Overflow};
use metrics::{
    Counter, Gauge, Histogram, HistogramFn, Key, KeyName, Metadata, Recorder, SharedString, Unit,
};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Ping(u32);
interrole::impl_event!(Ping = "metrics-test.ping");

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Pong(u32);
interrole::impl_event!(Pong = "metrics-test.pong");

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Work(u32);
interrole::impl_event!(Work = "metrics-test.work");

/// Every sample of a histogram.
#[derive(Default)]
struct Samples(Mutex<Vec<f64>>);

impl HistogramFn for Samples {
    fn record(&self, value: f64) {
        self.0.lock().unwrap().push(value);
    }
}

/// A recorder that keeps every series by its key (name and labels); registering a key again
/// returns the same series, as real recorders do.
#[derive(Default)]
struct TestRecorder {
    counters: Mutex<HashMap<Key, Arc<AtomicU64>>>,
    gauges: Mutex<HashMap<Key, Arc<AtomicU64>>>,
    histograms: Mutex<HashMap<Key, Arc<Samples>>>,
}

impl Recorder for TestRecorder {
    fn describe_counter(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn describe_gauge(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn describe_histogram(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}

    fn register_counter(&self, key: &Key, _: &Metadata<'_>) -> Counter {
        let mut all = self.counters.lock().unwrap();
        Counter::from_arc(all.entry(key.clone()).or_default().clone())
    }

    fn register_gauge(&self, key: &Key, _: &Metadata<'_>) -> Gauge {
        let mut all = self.gauges.lock().unwrap();
        Gauge::from_arc(all.entry(key.clone()).or_default().clone())
    }

    fn register_histogram(&self, key: &Key, _: &Metadata<'_>) -> Histogram {
        let mut all = self.histograms.lock().unwrap();
        Histogram::from_arc(all.entry(key.clone()).or_default().clone())
    }
}

/// The recorder of this test binary, installed on first use (before any bus is built).
fn recorder() -> &'static TestRecorder {
    static RECORDER: OnceLock<&'static TestRecorder> = OnceLock::new();
    RECORDER.get_or_init(|| {
        let recorder: &'static TestRecorder = Box::leak(Box::default());
        metrics::set_global_recorder(recorder).expect("no other recorder in this binary");
        recorder
    })
}

/// Whether `key` is `name` with every one of `labels` (and maybe others).
fn matches(key: &Key, name: &str, labels: &[(&str, &str)]) -> bool {
    key.name() == name
        && labels
            .iter()
            .all(|(k, v)| key.labels().any(|l| l.key() == *k && l.value() == *v))
}

/// The counter `name` with `labels`; `None` when it was never registered.
fn counter(name: &str, labels: &[(&str, &str)]) -> Option<u64> {
    let all = recorder().counters.lock().unwrap();
    let found: Vec<u64> = all
        .iter()
        .filter(|(k, _)| matches(k, name, labels))
        .map(|(_, v)| v.load(Ordering::Relaxed))
        .collect();
    assert!(
        found.len() <= 1,
        "{name} {labels:?}: {} series",
        found.len()
    );
    found.first().copied()
}

/// The gauge `name` with `labels`.
fn gauge(name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    let all = recorder().gauges.lock().unwrap();
    let found: Vec<f64> = all
        .iter()
        .filter(|(k, _)| matches(k, name, labels))
        .map(|(_, v)| f64::from_bits(v.load(Ordering::Relaxed)))
        .collect();
    assert!(
        found.len() <= 1,
        "{name} {labels:?}: {} series",
        found.len()
    );
    found.first().copied()
}

/// The samples of histogram `name` with `labels`.
fn samples(name: &str, labels: &[(&str, &str)]) -> Vec<f64> {
    let all = recorder().histograms.lock().unwrap();
    all.iter()
        .filter(|(k, _)| matches(k, name, labels))
        .flat_map(|(_, v)| v.0.lock().unwrap().clone())
        .collect()
}

#[test]
fn loopback_counts_published_delivered_and_panicking_observers() {
    recorder();
    let net = Loopback::new();
    let topic = "metrics-loopback";
    let a = Bus::builder()
        .transport(net.clone())
        .topic(topic)
        .instance("m-a")
        .build()
        .unwrap();
    let b = Bus::builder()
        .transport(net)
        .topic(topic)
        .instance("m-b")
        .build()
        .unwrap();
    let _one = b.subscribe::<Ping, _>(|_| {});
    let _two = b.subscribe::<Ping, _>(|_| {});
    let _boom = b.subscribe::<Pong, _>(|p: &Pong| {
        if p.0 == 1 {
            panic!("pong 1 is not welcome");
        }
    });
    let _all = b.subscribe_all(|_| {});
    for i in 0..3 {
        a.publish(Ping(i)).unwrap();
    }
    for i in 0..2 {
        a.publish(Pong(i)).unwrap();
    }

    let at = |bus, ty| [("topic", topic), ("instance", bus), ("type", ty)];
    let (ping, pong) = (Ping::TYPE_TAG, Pong::TYPE_TAG);
    assert_eq!(
        counter("interrole_events_published_total", &at("m-a", ping)),
        Some(3)
    );
    assert_eq!(
        counter("interrole_events_published_total", &at("m-a", pong)),
        Some(2)
    );
    // b subscribed to pings, which registered their series; it published none.
    assert_eq!(
        counter("interrole_events_published_total", &at("m-b", ping)),
        Some(0)
    );
    // Each ping reached b's two ping observers and its observer of every event; each pong, the
    // pong observer (the call that panicked included) and the observer of every event.
    assert_eq!(
        counter("interrole_deliveries_total", &at("m-b", ping)),
        Some(9)
    );
    assert_eq!(
        counter("interrole_deliveries_total", &at("m-b", pong)),
        Some(4)
    );
    let errors = |ty, reason| {
        let [t, i, y] = at("m-b", ty);
        counter(
            "interrole_observer_errors_total",
            &[t, i, y, ("reason", reason)],
        )
    };
    assert_eq!(errors(pong, "panic"), Some(1));
    assert_eq!(errors(ping, "panic"), Some(0));
    assert_eq!(errors(pong, "lagged"), Some(0));
    let bus_b = [("topic", topic), ("instance", "m-b")];
    assert_eq!(counter("interrole_events_received_total", &bus_b), Some(5));
    assert_eq!(gauge("interrole_observers", &bus_b), Some(4.0));
    // The same figures as the bus's own counters.
    let stats = b.stats();
    assert_eq!(
        (stats.received, stats.hub.delivered, stats.hub.panics),
        (5, 13, 1)
    );
    // An in-process transport has no reliability layer, so no outbox series.
    assert_eq!(gauge("interrole_outbox_events", &bus_b), None);

    drop(_all);
    assert_eq!(gauge("interrole_observers", &bus_b), Some(3.0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_async_mailbox_counts_lagged_events() {
    recorder();
    let bus = Bus::builder()
        .transport(Loopback::new())
        .topic("metrics-lag")
        .instance("m-lag")
        .build()
        .unwrap();
    let (started_tx, mut started) = tokio::sync::mpsc::unbounded_channel();
    let release = Arc::new(tokio::sync::Notify::new());
    let gate = release.clone();
    let _slow = bus.subscribe_async::<Work, _, _>(
        Mailbox::bounded(1).overflow(Overflow::DropNewest),
        move |w| {
            let (started, gate) = (started_tx.clone(), gate.clone());
            async move {
                let _ = started.send(w.0);
                if w.0 == 0 {
                    gate.notified().await;
                }
            }
        },
    );
    bus.publish(Work(0)).unwrap();
    // The observer holds event 0: the mailbox has room for one more, then drops.
    assert_eq!(started.recv().await, Some(0));
    for i in 1..=4 {
        bus.publish(Work(i)).unwrap();
    }
    let labels = [
        ("topic", "metrics-lag"),
        ("instance", "m-lag"),
        ("type", Work::TYPE_TAG),
        ("reason", "lagged"),
    ];
    assert_eq!(counter("interrole_observer_errors_total", &labels), Some(3));
    assert_eq!(bus.stats().hub.lagged, 3);
    release.notify_one();
    assert_eq!(started.recv().await, Some(1));
}

#[cfg(feature = "relay")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relay_reports_received_lag_and_outbox() {
    use relay_support::{LONG, bus, relay};

    recorder();
    let server = relay().await;
    let topic = "metrics-relay";
    let a = bus(&server, topic, "m-relay-a").await;
    let b = bus(&server, topic, "m-relay-b").await;
    until_live(&a, &b).await;

    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let _seen = b.subscribe::<Pong, _>(move |p: &Pong| {
        let _ = tx.send(p.0);
    });
    let received_before = b.stats().received;
    let lag_before = samples(
        "interrole_delivery_lag_seconds",
        &[("instance", "m-relay-b")],
    )
    .len();
    for i in 0..10 {
        a.publish(Pong(i)).unwrap();
    }
    for i in 0..10 {
        assert_eq!(
            tokio::time::timeout(LONG, rx.recv()).await.unwrap(),
            Some(i)
        );
    }

    let bus_a = [("topic", topic), ("instance", "m-relay-a")];
    let bus_b = [("topic", topic), ("instance", "m-relay-b")];
    let received = counter("interrole_events_received_total", &bus_b).unwrap();
    assert_eq!(received, b.stats().received);
    assert!(
        received >= received_before + 10,
        "{received} after {received_before}"
    );
    // One lag sample per event that came from the relay (the probes included).
    let lag = samples("interrole_delivery_lag_seconds", &bus_b);
    assert_eq!(lag.len() as u64, received);
    assert!(lag.len() >= lag_before + 10);
    assert!(lag.iter().all(|s| s.is_finite() && *s >= 0.0));
    assert_eq!(gauge("interrole_connected", &bus_a), Some(1.0));

    // Everything acknowledged: the outbox gauges say what the bus's own counters say.
    assert!(a.drain(LONG).await, "the relay acknowledged everything");
    let stats = a.reliable_stats().unwrap();
    assert_eq!((stats.outbox_events, stats.outbox_bytes), (0, 0));
    assert_eq!(gauge("interrole_outbox_events", &bus_a), Some(0.0));
    assert_eq!(gauge("interrole_outbox_bytes", &bus_a), Some(0.0));
    assert_eq!(gauge("interrole_connected", &bus_a), Some(0.0));
    assert_eq!(
        counter(
            "interrole_events_published_total",
            &[bus_a[0], bus_a[1], ("type", Pong::TYPE_TAG)]
        ),
        Some(10)
    );
    assert_eq!(counter("interrole_events_rejected_total", &bus_a), Some(0));
    assert_eq!(counter("interrole_reconnections_total", &bus_a), Some(0));
    b.close().await;
    server.shutdown().await;
}

/// Publishes `Ping`s from `from` until `to` has seen one: from then on, what `from` publishes
/// reaches `to` (per-sender order). Bounded by 20 s.
#[cfg(any(feature = "relay", feature = "nats"))]
async fn until_live(from: &Bus, to: &Bus) {
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let guard = to.subscribe::<Ping, _>(move |_| {
        let _ = tx.send(());
    });
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        from.publish(Ping(u32::MAX)).unwrap();
        let every = tokio::time::Instant::now() + std::time::Duration::from_millis(50);
        if tokio::time::timeout_at(every, rx.recv()).await.is_ok() {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{} never heard {}",
            to.instance(),
            from.instance()
        );
    }
    drop(guard);
}

/// On NATS, core and durable: the same series as over the relay, from the same bus code.
#[cfg(feature = "nats")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs nats-server"]
async fn nats_core_and_durable_report_received_lag_and_outbox() {
    use interrole::nats::{Durable, NatsOptions};

    recorder();
    let server = nats_common::NatsServer::start_js("metrics_nats_core_and_durable");
    let long = std::time::Duration::from_secs(20);
    for (mode, options) in [
        ("core", NatsOptions::new(&server.url())),
        (
            "durable",
            NatsOptions::new(&server.url()).with_durable(Durable::default()),
        ),
    ] {
        let topic = format!("metrics-nats-{mode}");
        let (ia, ib) = (format!("m-nats-{mode}-a"), format!("m-nats-{mode}-b"));
        let join = |id: &str| {
            Bus::builder()
                .topic(&topic)
                .instance(id)
                .nats(options.clone())
                .build()
                .unwrap()
        };
        let (a, b) = (join(&ia), join(&ib));
        for bus in [&a, &b] {
            bus.host().unwrap().wait_opened(long).await.unwrap();
        }
        until_live(&a, &b).await;
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let _seen = b.subscribe::<Pong, _>(move |p: &Pong| {
            let _ = tx.send(p.0);
        });
        for i in 0..5 {
            a.publish(Pong(i)).unwrap();
        }
        for i in 0..5 {
            assert_eq!(
                tokio::time::timeout(long, rx.recv()).await.unwrap(),
                Some(i),
                "{mode}"
            );
        }
        let bus_a = [("topic", topic.as_str()), ("instance", ia.as_str())];
        let bus_b = [("topic", topic.as_str()), ("instance", ib.as_str())];
        let received = counter("interrole_events_received_total", &bus_b).unwrap();
        assert_eq!(received, b.stats().received, "{mode}");
        assert!(received >= 6, "{mode}: {received}");
        assert_eq!(
            samples("interrole_delivery_lag_seconds", &bus_b).len() as u64,
            received,
            "{mode}"
        );
        let pongs = [bus_a[0], bus_a[1], ("type", Pong::TYPE_TAG)];
        assert_eq!(
            counter("interrole_events_published_total", &pongs),
            Some(5),
            "{mode}"
        );
        assert!(a.drain(long).await, "{mode}: everything acknowledged");
        assert_eq!(
            gauge("interrole_outbox_events", &bus_a),
            Some(0.0),
            "{mode}"
        );
        b.close().await;
    }
}

/// Events published while the connection is not open wait in the outbox: the gauges count them.
#[cfg(feature = "relay")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_outbox_gauges_count_what_waits() {
    use interrole::relay::Credentials;

    recorder();
    // A port with nothing listening: the host keeps retrying, and the outbox fills.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("ws://{}", closed.local_addr().unwrap());
    drop(closed);
    let bus = Bus::builder()
        .topic("metrics-outbox")
        .instance("m-outbox")
        .relay(&url, Credentials::key("root", "root-secret"))
        .build()
        .unwrap();
    for i in 0..3 {
        bus.publish(Pong(i)).unwrap();
    }
    let stats = bus.reliable_stats().unwrap();
    assert_eq!(stats.outbox_events, 3);
    let labels = [("topic", "metrics-outbox"), ("instance", "m-outbox")];
    assert_eq!(gauge("interrole_outbox_events", &labels), Some(3.0));
    assert_eq!(
        gauge("interrole_outbox_bytes", &labels),
        Some(stats.outbox_bytes as f64)
    );
    assert!(stats.outbox_bytes > 0);
    assert_eq!(gauge("interrole_connected", &labels), Some(0.0));
}
