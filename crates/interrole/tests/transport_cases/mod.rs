//! Cases run the same way on every network transport (`relay_transport.rs`, `nats_bus.rs`): each
//! takes buses already connected on one topic.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use interrole::Bus;
use serde::{Deserialize, Serialize};

const LONG: Duration = Duration::from_secs(20);

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Census {
    x: u64,
}
interrole::impl_event!(Census = "test.cases.census");

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Present {
    y: u64,
}
interrole::impl_event!(Present = "test.cases.present");

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Job {
    n: u64,
}
interrole::impl_event!(Job = "test.cases.job");

async fn wait_until(what: &str, f: impl Fn() -> bool) {
    let deadline = tokio::time::Instant::now() + LONG;
    while !f() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// One request answered by every instance that serves it (`Bus::request_all`): the asker's own
/// `serve` included, each once, and nothing for the observers of the reply type (on `d`).
pub(crate) async fn scatter_gather(a: Bus, b: Bus, c: Bus, d: Bus) {
    let _sa = a.serve(|q: &Census| Present { y: q.x });
    let _sb = b.serve(|q: &Census| Present { y: q.x + 1 });
    let _sc = c.serve(|q: &Census| Present { y: q.x + 2 });
    let seen = Arc::new(AtomicU64::new(0));
    let count = seen.clone();
    let _watch = d.subscribe::<Present, _>(move |_| {
        count.fetch_add(1, Ordering::Relaxed);
    });
    for round in 0..5u64 {
        let replies = a
            .request_all::<Census, Present>(Census { x: round * 10 }, LONG, Some(3))
            .unwrap();
        let mut ys: Vec<u64> = replies.map(|r| r.unwrap().y).collect().await;
        ys.sort();
        assert_eq!(ys, [round * 10, round * 10 + 1, round * 10 + 2]);
    }
    assert_eq!(seen.load(Ordering::Relaxed), 0);
    for bus in [a, b, c, d] {
        bus.close().await;
    }
}

/// What `a` published before it drains reaches `b`: the drain waits for the far end's
/// acknowledgements, then closes; it says whether everything was acknowledged in time.
pub(crate) async fn drain_loses_nothing(a: Bus, b: Bus) {
    let seen: Arc<Mutex<Vec<u64>>> = Arc::default();
    let log = seen.clone();
    let _g = b.subscribe::<Job, _>(move |j| log.lock().unwrap().push(j.n));
    for n in 0..500 {
        a.publish(Job { n }).unwrap();
    }
    assert!(
        a.drain(LONG).await,
        "not everything was acknowledged in time"
    );
    assert!(a.publish(Job { n: 999 }).is_err());
    wait_until("b to get all 500", || seen.lock().unwrap().len() >= 500).await;
    assert_eq!(*seen.lock().unwrap(), (0..500).collect::<Vec<_>>());
    b.close().await;
}

/// Headers travel with events, published and directed, and reach every observer: of every event
/// (the envelope) and typed async ones (`Received::headers`); an event without headers has none.
pub(crate) async fn headers_travel(a: Bus, b: Bus) {
    use interrole::{Headers, InterRoleEvent, Mailbox, Received};

    type Log<T> = Arc<Mutex<Vec<(u64, T)>>>;
    let seen: Log<Headers> = Arc::default();
    let log = seen.clone();
    let _all = b.subscribe_all(move |e: &InterRoleEvent| {
        if let Some(j) = e.payload::<Job>() {
            log.lock().unwrap().push((j.n, e.headers().clone()));
        }
    });
    let typed: Log<Option<String>> = Arc::default();
    let log = typed.clone();
    let _typed = b.subscribe_async(Mailbox::bounded(64), move |j: Received<Job>| {
        let log = log.clone();
        async move {
            let tenant = j.headers().get("tenant").map(str::to_owned);
            log.lock().unwrap().push((j.n, tenant));
        }
    });
    let headers = |n: u64| {
        Headers::new()
            .with("tenant", "acme")
            .unwrap()
            .with("attempt", &n.to_string())
            .unwrap()
    };
    a.publish_with(Job { n: 1 }, headers(1)).unwrap();
    a.send_to_with(b.instance(), Job { n: 2 }, headers(2))
        .unwrap();
    a.publish(Job { n: 3 }).unwrap();
    wait_until("three events with their headers", || {
        seen.lock().unwrap().len() == 3 && typed.lock().unwrap().len() == 3
    })
    .await;
    let mut seen = seen.lock().unwrap().clone();
    seen.sort_by_key(|(n, _)| *n);
    assert_eq!(
        seen,
        [(1, headers(1)), (2, headers(2)), (3, Headers::new())]
    );
    let mut typed = typed.lock().unwrap().clone();
    typed.sort();
    let acme = Some("acme".to_owned());
    assert_eq!(typed, [(1, acme.clone()), (2, acme), (3, None)]);
    for bus in [a, b] {
        bus.close().await;
    }
}
