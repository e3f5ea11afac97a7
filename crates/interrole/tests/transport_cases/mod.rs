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
