//! Async observers: mailboxes, overflow policies, lag reports, completion.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use interrole::{AsyncObserver, Bus, Loopback, Mailbox, ObserverError, Overflow, Received};
use serde::{Deserialize, Serialize};
use tokio::sync::Semaphore;

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Num(u64);
interrole::impl_event!(Num = "async.num");

fn bus() -> Bus {
    Bus::builder()
        .instance("async-test")
        .transport(Loopback::new())
        .close_timeout(Duration::from_millis(200))
        .build()
        .unwrap()
}

/// An observer that waits for a permit before each event, so a test controls when it drains.
/// It says when it has taken an event (`taken`), before waiting for the permit.
struct Gated {
    permits: Arc<Semaphore>,
    taken: AtomicU64,
    seen: Mutex<Vec<u64>>,
    errors: Mutex<Vec<ObserverError>>,
    completed: AtomicU64,
    done: tokio::sync::Notify,
    released: std::sync::atomic::AtomicBool,
}

impl Default for Gated {
    fn default() -> Self {
        Self {
            permits: Arc::new(Semaphore::new(0)),
            taken: AtomicU64::new(0),
            seen: Mutex::default(),
            errors: Mutex::default(),
            completed: AtomicU64::new(0),
            done: tokio::sync::Notify::new(),
            released: std::sync::atomic::AtomicBool::new(false),
        }
    }
}

#[async_trait]
impl AsyncObserver<Received<Num>> for Gated {
    async fn on_next(&self, n: Received<Num>) {
        self.taken.fetch_add(1, Ordering::SeqCst);
        self.permits.acquire().await.unwrap().forget();
        if n.0 == 13 {
            panic!("unlucky");
        }
        self.seen.lock().unwrap().push(n.0);
        self.done.notify_one();
    }
    async fn on_error(&self, error: ObserverError) {
        self.errors.lock().unwrap().push(error);
        self.done.notify_one();
    }
    async fn on_completed(&self) {
        self.completed.fetch_add(1, Ordering::SeqCst);
        self.done.notify_one();
    }
}

async fn wait_until(what: &str, f: impl Fn() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !f() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_async_closure_gets_every_event_in_order() {
    let bus = bus();
    let seen: Arc<Mutex<Vec<u64>>> = Arc::default();
    let s = seen.clone();
    let _g = bus.subscribe_async::<Num, _, _>(Mailbox::bounded(64), move |n| {
        let s = s.clone();
        async move {
            tokio::task::yield_now().await;
            s.lock().unwrap().push(n.0);
        }
    });
    for n in 0..50 {
        bus.publish(Num(n)).unwrap();
    }
    wait_until("50 events", || seen.lock().unwrap().len() == 50).await;
    assert_eq!(*seen.lock().unwrap(), (0..50).collect::<Vec<_>>());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drop_oldest_reports_lag_with_its_count_before_the_next_event() {
    let bus = bus();
    let obs = Arc::new(Gated::default());
    let _g = bus.observe_async::<Num, _>(
        Mailbox::bounded(4).overflow(Overflow::DropOldest),
        ArcObs(obs.clone()),
    );
    // The observer holds event 0 (waiting for a permit) while 1..=10 arrive: the mailbox keeps
    // the 4 newest (7..=10), 6 are dropped.
    bus.publish(Num(0)).unwrap();
    obs.wait_taken(1).await;
    for n in 1..=10 {
        bus.publish(Num(n)).unwrap();
    }
    obs.permits.add_permits(100);
    wait_until("5 events", || obs.seen.lock().unwrap().len() == 5).await;
    assert_eq!(*obs.seen.lock().unwrap(), [0, 7, 8, 9, 10]);
    let errors = obs.errors.lock().unwrap().clone();
    assert_eq!(errors, [ObserverError::Lagged { missed: 6 }]);
    assert_eq!(bus.stats().hub.lagged, 6);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drop_newest_keeps_the_oldest() {
    let bus = bus();
    let obs = Arc::new(Gated::default());
    let _g = bus.observe_async::<Num, _>(
        Mailbox::bounded(3).overflow(Overflow::DropNewest),
        ArcObs(obs.clone()),
    );
    bus.publish(Num(0)).unwrap();
    obs.wait_taken(1).await;
    for n in 1..=10 {
        bus.publish(Num(n)).unwrap();
    }
    obs.permits.add_permits(100);
    wait_until("4 events", || obs.seen.lock().unwrap().len() == 4).await;
    assert_eq!(*obs.seen.lock().unwrap(), [0, 1, 2, 3]);
    assert_eq!(
        *obs.errors.lock().unwrap(),
        [ObserverError::Lagged { missed: 7 }]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn block_waits_for_room_then_times_out_and_counts() {
    let bus = bus();
    let obs = Arc::new(Gated::default());
    let _g = bus.observe_async::<Num, _>(
        // Long enough for the observer's task to drain the mailbox below on a loaded machine.
        Mailbox::bounded(2).overflow(Overflow::Block {
            timeout: Duration::from_millis(250),
        }),
        ArcObs(obs.clone()),
    );
    bus.publish(Num(0)).unwrap();
    obs.wait_taken(1).await;
    // 1 and 2 fill the mailbox; 3 waits 250 ms for room that never comes, and is dropped.
    let b = bus.clone();
    let started = std::time::Instant::now();
    tokio::task::spawn_blocking(move || {
        for n in 1..=3 {
            b.publish(Num(n)).unwrap();
        }
    })
    .await
    .unwrap();
    assert!(
        started.elapsed() >= Duration::from_millis(250),
        "the publisher did not wait"
    );
    // With room made in time, nothing is dropped: 4 waits while the observer drains.
    obs.permits.add_permits(100);
    let b = bus.clone();
    tokio::task::spawn_blocking(move || b.publish(Num(4)).unwrap())
        .await
        .unwrap();
    wait_until("4 events", || obs.seen.lock().unwrap().len() == 4).await;
    assert_eq!(*obs.seen.lock().unwrap(), [0, 1, 2, 4]);
    assert_eq!(
        *obs.errors.lock().unwrap(),
        [ObserverError::Lagged { missed: 1 }]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disconnect_unsubscribes_after_delivering_what_was_queued() {
    let bus = bus();
    let obs = Arc::new(Gated::default());
    let g = bus.observe_async::<Num, _>(
        Mailbox::bounded(2).overflow(Overflow::Disconnect),
        ArcObs(obs.clone()),
    );
    bus.publish(Num(0)).unwrap();
    obs.wait_taken(1).await;
    for n in 1..=5 {
        bus.publish(Num(n)).unwrap();
    }
    assert!(!g.is_active(), "still subscribed after overflow");
    assert_eq!(bus.stats().hub.observers, 0);
    obs.permits.add_permits(100);
    wait_until("disconnected notice", || {
        !obs.errors.lock().unwrap().is_empty()
    })
    .await;
    assert_eq!(*obs.seen.lock().unwrap(), [0, 1, 2]);
    let errors = obs.errors.lock().unwrap().clone();
    assert!(
        matches!(&errors[..], [ObserverError::Disconnected { .. }]),
        "{errors:?}"
    );
    bus.close().await;
    assert_eq!(
        obs.completed.load(Ordering::SeqCst),
        0,
        "completed after a disconnect"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panic_in_an_async_observer_goes_to_its_on_error() {
    let bus = bus();
    let obs = Arc::new(Gated::default());
    obs.permits.add_permits(100);
    let _g = bus.observe_async::<Num, _>(Mailbox::default(), ArcObs(obs.clone()));
    for n in [12, 13, 14] {
        bus.publish(Num(n)).unwrap();
    }
    wait_until("2 events", || obs.seen.lock().unwrap().len() == 2).await;
    assert_eq!(*obs.seen.lock().unwrap(), [12, 14]);
    assert_eq!(
        *obs.errors.lock().unwrap(),
        [ObserverError::Panicked {
            message: "unlucky".into()
        }]
    );
    assert_eq!(bus.stats().hub.panics, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn close_drains_the_mailbox_then_completes_once() {
    let bus = bus();
    let obs = Arc::new(Gated::default());
    let _g = bus.observe_async::<Num, _>(Mailbox::bounded(100), ArcObs(obs.clone()));
    for n in 100..120 {
        bus.publish(Num(n)).unwrap();
    }
    let permits = obs.permits.clone();
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(20)).await;
        permits.add_permits(100);
    });
    bus.close().await;
    assert_eq!(
        obs.seen.lock().unwrap().len(),
        20,
        "close returned before the mailbox drained"
    );
    assert_eq!(obs.completed.load(Ordering::SeqCst), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropping_the_guard_discards_the_mailbox_and_stops() {
    let bus = bus();
    let obs = Arc::new(Gated::default());
    let g = bus.observe_async::<Num, _>(Mailbox::bounded(100), ArcObs(obs.clone()));
    for n in 0..10 {
        bus.publish(Num(n)).unwrap();
    }
    obs.wait_taken(1).await;
    drop(g);
    obs.permits.add_permits(100);
    // The observer's task lets go of the observer when it ends: nothing can be called after.
    wait_until("the observer's task to end", || {
        obs.released.load(Ordering::SeqCst)
    })
    .await;
    // Event 0 was already in on_next (waiting for its permit); nothing after it starts.
    assert_eq!(*obs.seen.lock().unwrap(), [0]);
    assert_eq!(obs.taken.load(Ordering::SeqCst), 1);
    bus.close().await;
    assert_eq!(obs.completed.load(Ordering::SeqCst), 0);
}

impl Gated {
    /// Waits until the observer has taken `n` events (each then waits for its permit).
    async fn wait_taken(&self, n: u64) {
        wait_until(&format!("{n} events taken"), || {
            self.taken.load(Ordering::SeqCst) >= n
        })
        .await;
    }
}

/// Shares one `Gated` between the test and the bus; says when the bus lets go of it.
struct ArcObs(Arc<Gated>);

impl Drop for ArcObs {
    fn drop(&mut self) {
        self.0.released.store(true, Ordering::SeqCst);
    }
}

#[async_trait]
impl AsyncObserver<Received<Num>> for ArcObs {
    async fn on_next(&self, n: Received<Num>) {
        self.0.on_next(n).await
    }
    async fn on_error(&self, e: ObserverError) {
        self.0.on_error(e).await
    }
    async fn on_completed(&self) {
        self.0.on_completed().await
    }
}

/// A publisher blocked on a full mailbox does not hold up the guard's drop or the bus's close
/// for its whole timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_blocked_publisher_does_not_hold_up_unsubscribe_or_close() {
    for close in [false, true] {
        let bus = bus();
        let taken = Arc::new(tokio::sync::Notify::new());
        let t = taken.clone();
        let sub = bus.subscribe_async::<Num, _, _>(
            Mailbox::bounded(1).overflow(Overflow::Block {
                timeout: Duration::from_secs(60),
            }),
            move |_| {
                t.notify_one();
                std::future::pending::<()>()
            },
        );
        bus.publish(Num(1)).unwrap();
        tokio::time::timeout(Duration::from_secs(10), taken.notified())
            .await
            .expect("the observer never took event 1");
        bus.publish(Num(2)).unwrap();
        let b = bus.clone();
        let blocked = std::thread::spawn(move || {
            let _ = b.publish(Num(3));
        });
        tokio::time::sleep(Duration::from_millis(50)).await;
        let started = std::time::Instant::now();
        if close {
            // The observer never finishes its first event: close gives up after its timeout.
            let b = Bus::clone(&bus);
            tokio::time::timeout(Duration::from_secs(30), async move { b.close().await })
                .await
                .expect("close hung behind a blocked publisher");
        } else {
            tokio::task::block_in_place(|| drop(sub));
        }
        tokio::task::block_in_place(|| blocked.join().unwrap());
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "held up for {:?} (close: {close})",
            started.elapsed()
        );
    }
}
