//! One request answered by many (`Bus::request_all`), and a bus answering its own requests, on
//! the in-process transport. (The relay and NATS versions are in their transports' tests.)

use std::time::{Duration, Instant};

use futures::StreamExt;
use interrole::{Bus, Loopback};
use serde::{Deserialize, Serialize};

#[derive(Debug, Serialize, Deserialize)]
struct Census {
    round: u32,
}
interrole::impl_event!(Census = "test.gather.census");

#[derive(Debug, Serialize, Deserialize)]
struct Present {
    who: String,
    round: u32,
}
interrole::impl_event!(Present = "test.gather.present");

const LONG: Duration = Duration::from_secs(10);

fn on(fabric: &Loopback, name: &str) -> Bus {
    Bus::builder()
        .instance(name)
        .transport(fabric.clone())
        .build()
        .unwrap()
}

fn serve(bus: &Bus) -> interrole::Subscription {
    let who = bus.instance().to_string();
    bus.serve(move |c: &Census| Present {
        who: who.clone(),
        round: c.round,
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_server_answers_once_the_asker_included() {
    let fabric = Loopback::new();
    let asker = on(&fabric, "asker");
    let others: Vec<Bus> = ["w1", "w2", "w3"].iter().map(|n| on(&fabric, n)).collect();
    let bystander = on(&fabric, "bystander");
    let _serving: Vec<_> = others.iter().chain([&asker]).map(serve).collect();
    let started = Instant::now();
    let replies = asker
        .request_all::<Census, Present>(Census { round: 7 }, LONG, Some(4))
        .unwrap();
    let mut got: Vec<(String, u32)> = replies
        .map(|r| {
            let p = r.unwrap();
            (p.who.clone(), p.round)
        })
        .collect()
        .await;
    got.sort();
    assert_eq!(
        got,
        [("asker", 7), ("w1", 7), ("w2", 7), ("w3", 7)].map(|(w, r)| (w.to_string(), r))
    );
    // It ended at the expected count, not at the timeout.
    assert!(started.elapsed() < LONG / 2);
    // The replies went to the request, not to the observers of `Present`.
    assert_eq!(bystander.stats().hub.delivered, 0);
    drop(bystander);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_count_it_ends_at_the_timeout_with_what_came() {
    let fabric = Loopback::new();
    let asker = on(&fabric, "asker");
    let w1 = on(&fabric, "w1");
    let w2 = on(&fabric, "w2");
    let _s1 = serve(&w1);
    let _s2 = serve(&w2);
    let timeout = Duration::from_millis(300);
    let started = Instant::now();
    let mut replies = asker
        .request_all::<Census, Present>(Census { round: 1 }, timeout, None)
        .unwrap();
    let mut who = Vec::new();
    while let Some(reply) = replies.next().await {
        who.push(reply.unwrap().who.clone());
    }
    assert!(started.elapsed() >= timeout);
    who.sort();
    assert_eq!(who, ["w1", "w2"]);
    // Ended: nothing more, even if asked again.
    assert!(replies.next().await.is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bus_answers_its_own_request() {
    let fabric = Loopback::new();
    let bus = on(&fabric, "solo");
    let _serving = serve(&bus);
    let present = bus
        .request::<Census, Present>(bus.instance(), Census { round: 3 }, LONG)
        .await
        .unwrap();
    assert_eq!((present.who.as_str(), present.round), ("solo", 3));
    // Through request_all too, and its own observers of `Present` saw none of it.
    let seen = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let count = seen.clone();
    let _observer = bus.subscribe::<Present, _>(move |_| {
        count.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    });
    let replies: Vec<_> = bus
        .request_all::<Census, Present>(Census { round: 4 }, LONG, Some(1))
        .unwrap()
        .collect()
        .await;
    assert_eq!(replies.len(), 1);
    assert_eq!(seen.load(std::sync::atomic::Ordering::Relaxed), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_replies_end_when_the_bus_closes() {
    let fabric = Loopback::new();
    let asker = on(&fabric, "asker");
    let mut replies = asker
        .request_all::<Census, Present>(Census { round: 9 }, LONG, None)
        .unwrap();
    let started = Instant::now();
    let closing = asker.clone();
    tokio::spawn(async move { closing.close().await });
    assert!(replies.next().await.is_none());
    assert!(
        started.elapsed() < LONG / 2,
        "ended at the timeout, not at the close"
    );
}
