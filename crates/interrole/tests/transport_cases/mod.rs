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

/// A rolling upgrade, old and new instances side by side: the old one (`old`) knows version 1 of
/// a bincode contract and the old shape of two self-describing ones; the new one (`new`) knows
/// version 2 (upgraded from 1) and a field added with a default.
pub(crate) async fn rolling_upgrade(old: Bus, new: Bus) {
    use interrole::{InterRoleEvent, Observer, ObserverError};
    use upgrade::*;

    /// What a typed observer got: values, and errors.
    struct Log<E>(Mutex<Vec<Result<E, ObserverError>>>);
    impl<E: Clone + Send + Sync + 'static> Observer<E> for Log<E> {
        fn on_next(&self, value: &E) {
            self.0.lock().unwrap().push(Ok(value.clone()));
        }
        fn on_error(&self, error: ObserverError) {
            self.0.lock().unwrap().push(Err(error));
        }
    }
    fn log<E>() -> Arc<Log<E>> {
        Arc::new(Log(Mutex::new(Vec::new())))
    }
    let (old_v1, new_v2) = (log::<RecycleV1>(), log::<RecycleV2>());
    let (old_json, new_json) = (log::<OrderJson>(), log::<OrderJsonNew>());
    let (old_pack, new_pack) = (log::<OrderPack>(), log::<OrderPackNew>());
    let _g = [
        old.observe_arc::<RecycleV1>(old_v1.clone()),
        new.observe_arc::<RecycleV2>(new_v2.clone()),
        old.observe_arc::<OrderJson>(old_json.clone()),
        new.observe_arc::<OrderJsonNew>(new_json.clone()),
        old.observe_arc::<OrderPack>(old_pack.clone()),
        new.observe_arc::<OrderPackNew>(new_pack.clone()),
    ];
    let versions: Arc<Mutex<Vec<(String, u32)>>> = Arc::default();
    let all = versions.clone();
    let _all = old.subscribe_all(move |e: &InterRoleEvent| {
        if e.type_tag().as_str() == "test.cases.recycle" {
            all.lock()
                .unwrap()
                .push((e.sender().to_string(), e.version()));
        }
    });

    // Old to new: version 1 reaches the new observer as version 2; the old JSON and
    // MessagePack shapes reach the new ones with the added field defaulted.
    old.publish(RecycleV1 { grace_secs: 2 }).unwrap();
    old.publish(OrderJson { order: 1 }).unwrap();
    old.publish(OrderPack { order: 2 }).unwrap();
    // New to old: version 2 is refused by the old typed observer (its on_error, counted) and
    // still reaches its observers of every event; the new shapes are read, the added field
    // ignored.
    new.publish(RecycleV2 { grace_ms: 1500 }).unwrap();
    new.publish(OrderJsonNew {
        order: 3,
        priority: 7,
    })
    .unwrap();
    new.publish(OrderPackNew {
        order: 4,
        priority: 8,
    })
    .unwrap();
    wait_until("every event on both sides", || {
        new_v2.0.lock().unwrap().len() == 2
            && old_v1.0.lock().unwrap().len() == 2
            && new_json.0.lock().unwrap().len() == 2
            && old_json.0.lock().unwrap().len() == 2
            && new_pack.0.lock().unwrap().len() == 2
            && old_pack.0.lock().unwrap().len() == 2
    })
    .await;
    fn take<T>(l: &Mutex<Vec<T>>) -> Vec<T> {
        std::mem::take(&mut *l.lock().unwrap())
    }
    let mut v2 = take(&new_v2.0)
        .into_iter()
        .map(Result::unwrap)
        .map(|r| r.grace_ms)
        .collect::<Vec<_>>();
    v2.sort();
    assert_eq!(v2, [1500, 2000]);
    let v1 = take(&old_v1.0);
    assert_eq!(v1[0].as_ref().unwrap().grace_secs, 2, "{v1:?}");
    match &v1[1] {
        Err(ObserverError::Version {
            version: 2,
            known: 1,
            sender,
            ..
        }) => assert_eq!(sender, new.instance()),
        other => panic!("expected a version error, got {other:?}"),
    }
    assert_eq!(old.stats().newer_versions, 1);
    assert_eq!(
        *versions.lock().unwrap(),
        [("old".to_owned(), 1), ("new".to_owned(), 2)]
    );
    fn orders<T: Ord + std::fmt::Debug>(l: &Mutex<Vec<Result<T, ObserverError>>>) -> Vec<T> {
        let mut v: Vec<T> = take(l).into_iter().map(Result::unwrap).collect();
        v.sort();
        v
    }
    assert_eq!(
        orders(&new_json.0),
        [
            OrderJsonNew {
                order: 1,
                priority: 0
            },
            OrderJsonNew {
                order: 3,
                priority: 7
            }
        ]
    );
    assert_eq!(
        orders(&old_json.0),
        [OrderJson { order: 1 }, OrderJson { order: 3 }]
    );
    assert_eq!(
        orders(&new_pack.0),
        [
            OrderPackNew {
                order: 2,
                priority: 0
            },
            OrderPackNew {
                order: 4,
                priority: 8
            }
        ]
    );
    assert_eq!(
        orders(&old_pack.0),
        [OrderPack { order: 2 }, OrderPack { order: 4 }]
    );
    for bus in [old, new] {
        bus.close().await;
    }
}

/// The contracts of [`rolling_upgrade`], as the old and the new code declare them.
mod upgrade {
    use serde::{Deserialize, Serialize};

    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
    pub(crate) struct RecycleV1 {
        pub(crate) grace_secs: u32,
    }
    interrole::impl_event!(RecycleV1 = "test.cases.recycle");

    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
    pub(crate) struct RecycleV2 {
        pub(crate) grace_ms: u64,
    }
    interrole::impl_event!(
        RecycleV2 = "test.cases.recycle",
        version = 2,
        upgrades_from = RecycleV1
    );
    impl From<RecycleV1> for RecycleV2 {
        fn from(v1: RecycleV1) -> Self {
            Self {
                grace_ms: u64::from(v1.grace_secs) * 1000,
            }
        }
    }

    #[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
    pub(crate) struct OrderJson {
        pub(crate) order: u64,
    }
    interrole::impl_event!(OrderJson = "test.cases.order-json", codec = Json);

    #[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
    pub(crate) struct OrderJsonNew {
        pub(crate) order: u64,
        #[serde(default)]
        pub(crate) priority: u8,
    }
    interrole::impl_event!(OrderJsonNew = "test.cases.order-json", codec = Json);

    #[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
    pub(crate) struct OrderPack {
        pub(crate) order: u64,
    }
    interrole::impl_event!(OrderPack = "test.cases.order-pack", codec = MessagePack);

    #[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
    pub(crate) struct OrderPackNew {
        pub(crate) order: u64,
        #[serde(default)]
        pub(crate) priority: u8,
    }
    interrole::impl_event!(OrderPackNew = "test.cases.order-pack", codec = MessagePack);
}
