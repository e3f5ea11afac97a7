//! The hub contract: isolation, routing, ordering, re-entrancy, unsubscribe, completion.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Barrier, Mutex};
use std::thread;
use std::time::Duration;

use interrole::{
    Bus, Dispatch, DispatchConfig, InterRoleEvent, Loopback, Observable, Observer, ObserverError,
    PublishError, Subscription,
};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Num(u64);
interrole::impl_event!(Num = "test.num");

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Other(u64);
interrole::impl_event!(Other = "test.other");

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Tagged {
    publisher: u64,
    n: u64,
}
interrole::impl_event!(Tagged = "test.tagged");

fn bus_with(mode: Dispatch) -> Bus {
    Bus::builder()
        .instance("hub-test")
        .transport(Loopback::new())
        .dispatch(DispatchConfig {
            mode,
            ..DispatchConfig::default()
        })
        .build()
        .unwrap()
}

fn bus() -> Bus {
    bus_with(Dispatch::Adaptive)
}

#[derive(Default)]
struct Recording {
    next: Mutex<Vec<u64>>,
    errors: Mutex<Vec<ObserverError>>,
    completed: AtomicUsize,
    panic_on: Option<u64>,
}

impl Observer<Num> for Recording {
    fn on_next(&self, value: &Num) {
        self.next.lock().unwrap().push(value.0);
        if self.panic_on == Some(value.0) {
            panic!("observer failed on {}", value.0);
        }
    }
    fn on_error(&self, error: ObserverError) {
        self.errors.lock().unwrap().push(error);
    }
    fn on_completed(&self) {
        self.completed.fetch_add(1, Ordering::SeqCst);
    }
}

#[test]
fn a_panicking_observer_is_told_and_the_others_get_every_event() {
    for mode in [Dispatch::Sequential, Dispatch::Parallel] {
        let bus = bus_with(mode);
        let failing = Arc::new(Recording {
            panic_on: Some(3),
            ..Default::default()
        });
        let healthy: Vec<Arc<Recording>> = (0..4).map(|_| Arc::default()).collect();
        let _f = bus.observe_arc::<Num>(failing.clone());
        let _h: Vec<Subscription> = healthy
            .iter()
            .map(|h| bus.observe_arc::<Num>(h.clone()))
            .collect();
        for n in 1..=5 {
            bus.publish(Num(n)).unwrap();
        }
        for h in &healthy {
            assert_eq!(*h.next.lock().unwrap(), [1, 2, 3, 4, 5], "{mode:?}");
            assert!(h.errors.lock().unwrap().is_empty(), "{mode:?}");
        }
        // The failing observer stays subscribed and gets the events after its panic too.
        assert_eq!(*failing.next.lock().unwrap(), [1, 2, 3, 4, 5], "{mode:?}");
        let errors = failing.errors.lock().unwrap().clone();
        assert_eq!(errors.len(), 1, "{mode:?}");
        match &errors[0] {
            ObserverError::Panicked { message } => assert_eq!(message, "observer failed on 3"),
            other => panic!("expected Panicked, got {other:?}"),
        }
        assert_eq!(bus.stats().hub.panics, 1);
    }
}

#[test]
fn a_panic_inside_on_error_is_swallowed() {
    struct Double;
    impl Observer<Num> for Double {
        fn on_next(&self, _: &Num) {
            panic!("first");
        }
        fn on_error(&self, _: ObserverError) {
            panic!("second");
        }
    }
    let bus = bus();
    let seen = Arc::new(AtomicU64::new(0));
    let s = seen.clone();
    let _d = bus.observe::<Num, _>(Double);
    let _c = bus.subscribe::<Num, _>(move |_| {
        s.fetch_add(1, Ordering::SeqCst);
    });
    bus.publish(Num(1)).unwrap();
    bus.publish(Num(2)).unwrap();
    assert_eq!(seen.load(Ordering::SeqCst), 2);
}

#[test]
fn events_route_by_type_to_matching_observers_only() {
    let bus = bus();
    let nums = Arc::new(AtomicU64::new(0));
    let others = Arc::new(AtomicU64::new(0));
    let all = Arc::new(AtomicU64::new(0));
    let mut guards = Vec::new();
    for _ in 0..1000 {
        let o = others.clone();
        guards.push(bus.subscribe::<Other, _>(move |_| {
            o.fetch_add(1, Ordering::Relaxed);
        }));
    }
    let n = nums.clone();
    guards.push(bus.subscribe::<Num, _>(move |_| {
        n.fetch_add(1, Ordering::Relaxed);
    }));
    let a = all.clone();
    guards.push(bus.subscribe_all(move |_| {
        a.fetch_add(1, Ordering::Relaxed);
    }));
    let before = bus.stats().hub.delivered;
    bus.publish(Num(1)).unwrap();
    // One typed observer plus the observer of every event: 1000 others never touched.
    assert_eq!(bus.stats().hub.delivered - before, 2);
    assert_eq!(nums.load(Ordering::Relaxed), 1);
    assert_eq!(all.load(Ordering::Relaxed), 1);
    assert_eq!(others.load(Ordering::Relaxed), 0);
    bus.publish(Other(1)).unwrap();
    assert_eq!(others.load(Ordering::Relaxed), 1000);
    assert_eq!(all.load(Ordering::Relaxed), 2);
}

#[test]
fn raw_observers_see_the_envelope() {
    struct Raw(Mutex<Vec<(String, u64, String)>>);
    impl Observer<InterRoleEvent> for Raw {
        fn on_next(&self, e: &InterRoleEvent) {
            self.0.lock().unwrap().push((
                e.sender().to_string(),
                e.seq(),
                e.type_tag().to_string(),
            ));
            assert!(e.timestamp() <= std::time::SystemTime::now());
        }
    }
    let bus = bus();
    let raw = Arc::new(Raw(Mutex::default()));
    let _g = Observable::subscribe(&bus, raw.clone());
    bus.publish(Num(1)).unwrap();
    bus.publish(Other(2)).unwrap();
    let seen = raw.0.lock().unwrap().clone();
    assert_eq!(
        seen,
        [
            ("hub-test".to_string(), 1, "test.num".to_string()),
            ("hub-test".to_string(), 2, "test.other".to_string())
        ]
    );
}

/// Several publishers, parallel fan-out: no observer is ever called twice at once, and each
/// observer sees each publisher's events in order.
#[test]
fn no_overlapping_calls_and_per_publisher_order_under_contention() {
    for mode in [Dispatch::Parallel, Dispatch::Sequential, Dispatch::Adaptive] {
        let bus = bus_with(mode);
        const PUBLISHERS: u64 = 4;
        const EVENTS: u64 = 2000;
        struct Checker {
            busy: AtomicBool,
            overlaps: AtomicU64,
            last: Mutex<Vec<u64>>,
            disorder: AtomicU64,
            count: AtomicU64,
        }
        impl Observer<Tagged> for Checker {
            fn on_next(&self, t: &Tagged) {
                if self.busy.swap(true, Ordering::SeqCst) {
                    self.overlaps.fetch_add(1, Ordering::SeqCst);
                }
                {
                    let mut last = self.last.lock().unwrap();
                    let slot = &mut last[t.publisher as usize];
                    if t.n != *slot + 1 {
                        self.disorder.fetch_add(1, Ordering::SeqCst);
                    }
                    *slot = t.n;
                }
                std::hint::spin_loop();
                self.count.fetch_add(1, Ordering::SeqCst);
                self.busy.store(false, Ordering::SeqCst);
            }
        }
        let checkers: Vec<Arc<Checker>> = (0..6)
            .map(|_| {
                Arc::new(Checker {
                    busy: AtomicBool::new(false),
                    overlaps: AtomicU64::new(0),
                    last: Mutex::new(vec![0; PUBLISHERS as usize]),
                    disorder: AtomicU64::new(0),
                    count: AtomicU64::new(0),
                })
            })
            .collect();
        let _guards: Vec<_> = checkers
            .iter()
            .map(|c| bus.observe_arc::<Tagged>(c.clone()))
            .collect();
        let barrier = Arc::new(Barrier::new(PUBLISHERS as usize));
        let handles: Vec<_> = (0..PUBLISHERS)
            .map(|p| {
                let bus = bus.clone();
                let barrier = barrier.clone();
                thread::spawn(move || {
                    barrier.wait();
                    for n in 1..=EVENTS {
                        bus.publish(Tagged { publisher: p, n }).unwrap();
                    }
                })
            })
            .collect();
        for h in handles {
            h.join().unwrap();
        }
        for c in &checkers {
            assert_eq!(
                c.overlaps.load(Ordering::SeqCst),
                0,
                "{mode:?}: overlapping calls"
            );
            assert_eq!(
                c.disorder.load(Ordering::SeqCst),
                0,
                "{mode:?}: out of order"
            );
            assert_eq!(
                c.count.load(Ordering::SeqCst),
                PUBLISHERS * EVENTS,
                "{mode:?}"
            );
        }
        if mode == Dispatch::Parallel && interrole::pool_threads() >= 2 {
            assert!(bus.stats().hub.parallel_dispatches > 0);
        } else if mode == Dispatch::Parallel {
            assert_eq!(
                bus.stats().hub.parallel_dispatches,
                0,
                "parallel on one core"
            );
        }
    }
}

#[test]
fn dropping_the_guard_from_inside_its_own_callback_does_not_deadlock() {
    let bus = bus();
    let slot: Arc<Mutex<Option<Subscription>>> = Arc::default();
    let calls = Arc::new(AtomicU64::new(0));
    let (s, c) = (slot.clone(), calls.clone());
    let guard = bus.subscribe::<Num, _>(move |_| {
        c.fetch_add(1, Ordering::SeqCst);
        drop(s.lock().unwrap().take());
    });
    *slot.lock().unwrap() = Some(guard);
    bus.publish(Num(1)).unwrap();
    bus.publish(Num(2)).unwrap();
    assert_eq!(
        calls.load(Ordering::SeqCst),
        1,
        "delivered after its own unsubscribe"
    );
    assert_eq!(bus.stats().hub.observers, 0);
}

#[test]
fn subscribing_from_inside_a_callback_takes_effect_for_later_events() {
    let bus = bus();
    let late = Arc::new(AtomicU64::new(0));
    let guards: Arc<Mutex<Vec<Subscription>>> = Arc::default();
    let (b, l, g) = (bus.clone(), late.clone(), guards.clone());
    let _first = bus.subscribe::<Num, _>(move |n| {
        if n.0 == 1 {
            let l = l.clone();
            g.lock().unwrap().push(b.subscribe::<Num, _>(move |_| {
                l.fetch_add(1, Ordering::SeqCst);
            }));
        }
    });
    bus.publish(Num(1)).unwrap();
    assert_eq!(
        late.load(Ordering::SeqCst),
        0,
        "a new observer got the event in flight"
    );
    bus.publish(Num(2)).unwrap();
    assert_eq!(late.load(Ordering::SeqCst), 1);
}

/// A publish from a handler is queued and delivered after the current dispatch, depth-first.
/// A report made from inside an observer call (as the reliability layer may) waits for the
/// dispatch to end instead of deadlocking on the lane that call holds, then reaches every
/// observer, the reporting one included.
#[test]
fn a_report_from_inside_a_callback_is_delivered_after_the_dispatch() {
    struct Reporter {
        hub: interrole::Hub,
        log: Arc<Mutex<Vec<String>>>,
    }
    impl Observer<Num> for Reporter {
        fn on_next(&self, value: &Num) {
            self.log.lock().unwrap().push(format!("next {}", value.0));
            self.hub.report(ObserverError::Missed {
                sender: Some(interrole::InstanceId::new("gone").unwrap()),
                count: value.0,
            });
            self.log
                .lock()
                .unwrap()
                .push(format!("reported {}", value.0));
        }
        fn on_error(&self, error: ObserverError) {
            self.log.lock().unwrap().push(format!("error {error}"));
        }
    }
    let bus = bus();
    let log = Arc::new(Mutex::new(Vec::new()));
    let other = Arc::new(Recording::default());
    let _a = bus.observe::<Num, _>(Reporter {
        hub: bus.hub().clone(),
        log: log.clone(),
    });
    let _b = bus.observe_arc::<Num>(other.clone());
    bus.publish(Num(3)).unwrap();
    let log = log.lock().unwrap().clone();
    assert_eq!(log.len(), 3, "{log:?}");
    assert_eq!(log[0], "next 3");
    assert_eq!(log[1], "reported 3");
    assert!(log[2].starts_with("error"), "{log:?}");
    assert_eq!(*other.next.lock().unwrap(), vec![3]);
    assert_eq!(other.errors.lock().unwrap().len(), 1);
}

#[test]
fn publishing_from_a_callback_is_queued_depth_first() {
    for mode in [Dispatch::Sequential, Dispatch::Parallel] {
        let bus = bus_with(mode);
        let log: Arc<Mutex<Vec<String>>> = Arc::default();
        // Event n spawns children 10n+1 and 10n+2 while n < 10.
        for name in ["a", "b"] {
            let (b, l) = (bus.clone(), log.clone());
            bus.subscribe::<Num, _>(move |n| {
                l.lock().unwrap().push(format!("{name}{}", n.0));
                if name == "a" && n.0 < 10 {
                    b.publish(Num(n.0 * 10 + 1)).unwrap();
                    b.publish(Num(n.0 * 10 + 2)).unwrap();
                }
            })
            .detach();
        }
        bus.publish(Num(1)).unwrap();
        let mut log = log.lock().unwrap().clone();
        // In parallel, the observers of one event run in any order between themselves.
        for pair in log.chunks_mut(2) {
            pair.sort();
        }
        // 1 reaches a and b; then its children 11 and 12 in order (none of them spawns more).
        assert_eq!(log, ["a1", "b1", "a11", "b11", "a12", "b12"], "{mode:?}");
    }
    // Depth-first across generations: children of 1 are 2 and 3; children of 2 are 4 and 5.
    let bus = bus();
    let log: Arc<Mutex<Vec<u64>>> = Arc::default();
    let (b, l) = (bus.clone(), log.clone());
    let _g = bus.subscribe::<Num, _>(move |n| {
        l.lock().unwrap().push(n.0);
        match n.0 {
            1 => {
                b.publish(Num(2)).unwrap();
                b.publish(Num(3)).unwrap();
            }
            2 => {
                b.publish(Num(4)).unwrap();
                b.publish(Num(5)).unwrap();
            }
            _ => {}
        }
    });
    bus.publish(Num(1)).unwrap();
    assert_eq!(*log.lock().unwrap(), [1, 2, 4, 5, 3]);
}

/// After the guard's drop returns, nothing more is delivered, even with a publisher running
/// concurrently on another thread: a call under way when the drop starts is waited for, and no
/// call starts after it.
#[test]
fn nothing_is_delivered_after_the_guard_drop_returns() {
    const PATIENCE: Duration = Duration::from_secs(10);
    for round in 0..20 {
        let bus = bus();
        // Set once the drop has returned.
        let dropped = Arc::new(AtomicBool::new(false));
        // Calls that started after the drop returned.
        let late = Arc::new(AtomicU64::new(0));
        // The call held open while the drop starts: 1 once it is under way, 2 once it saw the
        // drop begin, 3 if it ended after the drop returned.
        let held = Arc::new(AtomicU64::new(0));
        let calls = Arc::new(AtomicU64::new(0));
        let hub = bus.hub().clone();
        let (d, l, h, c) = (dropped.clone(), late.clone(), held.clone(), calls.clone());
        let guard = bus.subscribe::<Num, _>(move |_| {
            if d.load(Ordering::SeqCst) {
                l.fetch_add(1, Ordering::SeqCst);
            }
            if c.fetch_add(1, Ordering::SeqCst) == 10 {
                // The eleventh call: a dispatch under way. It stays in the observer until the
                // drop has begun (the observer is unregistered first), then gives a drop that
                // did not wait for it every chance to return first.
                h.store(1, Ordering::SeqCst);
                let deadline = std::time::Instant::now() + PATIENCE;
                while hub.stats().observers != 0 && std::time::Instant::now() < deadline {
                    thread::yield_now();
                }
                h.store(2, Ordering::SeqCst);
                for _ in 0..1000 {
                    if d.load(Ordering::SeqCst) {
                        break;
                    }
                    thread::yield_now();
                }
                if d.load(Ordering::SeqCst) {
                    h.store(3, Ordering::SeqCst);
                }
            }
        });
        let stop = Arc::new(AtomicBool::new(false));
        let published = Arc::new(AtomicU64::new(0));
        let publisher = {
            let (bus, stop, published) = (bus.clone(), stop.clone(), published.clone());
            thread::spawn(move || {
                let mut n = 0;
                while !stop.load(Ordering::SeqCst) {
                    n += 1;
                    bus.publish(Num(n)).unwrap();
                    published.fetch_add(1, Ordering::SeqCst);
                }
            })
        };
        let deadline = std::time::Instant::now() + PATIENCE;
        while held.load(Ordering::SeqCst) == 0 {
            assert!(
                std::time::Instant::now() < deadline,
                "round {round}: the publisher never reached the observer"
            );
            thread::yield_now();
        }
        drop(guard);
        dropped.store(true, Ordering::SeqCst);
        // The publisher goes on after the drop: wait until it has published 200 more events.
        let after = published.load(Ordering::SeqCst) + 200;
        while published.load(Ordering::SeqCst) < after {
            assert!(
                std::time::Instant::now() < deadline,
                "round {round}: the publisher stalled after the drop"
            );
            thread::yield_now();
        }
        stop.store(true, Ordering::SeqCst);
        publisher.join().unwrap();
        assert_eq!(
            held.load(Ordering::SeqCst),
            2,
            "round {round}: the call under way {}",
            if held.load(Ordering::SeqCst) == 3 {
                "ended after the drop returned: the drop did not wait for it"
            } else {
                "never saw the drop begin"
            }
        );
        assert_eq!(
            late.load(Ordering::SeqCst),
            0,
            "round {round}: delivered after drop"
        );
    }
}

#[test]
fn close_completes_every_observer_exactly_once_then_publish_fails() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let bus = bus();
        let observers: Vec<Arc<Recording>> = (0..3).map(|_| Arc::default()).collect();
        let guards: Vec<_> = observers
            .iter()
            .map(|o| bus.observe_arc::<Num>(o.clone()))
            .collect();
        bus.publish(Num(1)).unwrap();
        bus.close().await;
        bus.close().await;
        assert!(matches!(bus.publish(Num(2)), Err(PublishError::Closed)));
        for o in &observers {
            assert_eq!(o.completed.load(Ordering::SeqCst), 1);
            assert_eq!(*o.next.lock().unwrap(), [1]);
        }
        drop(guards);
        for o in &observers {
            assert_eq!(o.completed.load(Ordering::SeqCst), 1);
        }
        // Subscribing to a closed bus completes the observer at once.
        let late = Arc::new(Recording::default());
        let g = bus.observe_arc::<Num>(late.clone());
        assert!(!g.is_active());
        assert_eq!(late.completed.load(Ordering::SeqCst), 1);
    });
}

#[test]
fn closing_from_inside_a_callback_completes_after_the_dispatch() {
    let bus = bus();
    let first = Arc::new(Recording::default());
    let second = Arc::new(Recording::default());
    let b = bus.clone();
    let _closer = bus.subscribe::<Num, _>(move |_| {
        futures_lite_block_on(b.close());
    });
    let _f = bus.observe_arc::<Num>(first.clone());
    let _s = bus.observe_arc::<Num>(second.clone());
    bus.publish(Num(7)).unwrap();
    for o in [&first, &second] {
        assert_eq!(
            *o.next.lock().unwrap(),
            [7],
            "the event in flight still reaches everyone"
        );
        assert_eq!(o.completed.load(Ordering::SeqCst), 1);
    }
    assert!(matches!(bus.publish(Num(8)), Err(PublishError::Closed)));
}

/// Runs a future to completion on this thread (the loopback bus's close never waits on I/O).
fn futures_lite_block_on<F: std::future::Future>(f: F) -> F::Output {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(f)
}

#[test]
fn dropping_the_last_handle_completes_the_observers() {
    let bus = bus();
    let o = Arc::new(Recording::default());
    bus.observe_arc::<Num>(o.clone()).detach();
    drop(bus);
    assert_eq!(o.completed.load(Ordering::SeqCst), 1);
}

#[test]
fn detached_observers_live_until_close() {
    let bus = bus();
    let n = Arc::new(AtomicU64::new(0));
    let c = n.clone();
    bus.subscribe::<Num, _>(move |_| {
        c.fetch_add(1, Ordering::SeqCst);
    })
    .detach();
    bus.publish(Num(1)).unwrap();
    bus.publish(Num(2)).unwrap();
    assert_eq!(n.load(Ordering::SeqCst), 2);
    assert_eq!(bus.stats().hub.observers, 1);
}

/// Heavy observers go parallel on their own, cheap ones never do; on one core (a pool of one
/// thread) nothing goes parallel, however heavy.
#[test]
fn heavy_observers_go_parallel_on_their_own() {
    let bus = bus();
    let _guards: Vec<_> = (0..8)
        .map(|_| {
            bus.subscribe::<Num, _>(|_| {
                let t = std::time::Instant::now();
                while t.elapsed() < Duration::from_micros(30) {
                    std::hint::spin_loop();
                }
            })
        })
        .collect();
    let cheap = bus_with(Dispatch::Adaptive);
    let _c: Vec<_> = (0..8).map(|_| cheap.subscribe::<Num, _>(|_| {})).collect();
    for n in 0..40 {
        bus.publish(Num(n)).unwrap();
        cheap.publish(Num(n)).unwrap();
    }
    if interrole::pool_threads() >= 2 {
        assert!(
            bus.stats().hub.parallel_dispatches > 0,
            "8 × 30 µs never went parallel"
        );
    } else {
        assert_eq!(
            bus.stats().hub.parallel_dispatches,
            0,
            "went parallel on a pool of one thread"
        );
    }
    assert_eq!(
        cheap.stats().hub.parallel_dispatches,
        0,
        "cheap observers went parallel"
    );
}

/// `close` needs no tokio runtime for a bus without async observers: any executor will do.
#[test]
fn close_works_outside_a_tokio_runtime() {
    use std::task::{Context, Poll, Wake, Waker};
    struct Unpark(thread::Thread);
    impl Wake for Unpark {
        fn wake(self: Arc<Self>) {
            self.0.unpark();
        }
    }
    let bus = bus();
    let o = Arc::new(Recording::default());
    let _g = bus.observe_arc::<Num>(o.clone());
    let waker = Waker::from(Arc::new(Unpark(thread::current())));
    let mut cx = Context::from_waker(&waker);
    let mut close = std::pin::pin!(bus.close());
    loop {
        match close.as_mut().poll(&mut cx) {
            Poll::Ready(()) => break,
            Poll::Pending => thread::park(),
        }
    }
    assert_eq!(o.completed.load(Ordering::SeqCst), 1);
}

/// Parallel fan-out from inside tokio: on a multi-thread worker it runs under `block_in_place`
/// (other tasks keep running meanwhile, even on a runtime of one worker); on a current-thread
/// runtime, where `block_in_place` is not allowed, it still works. On one core nothing goes
/// parallel, and the observers run inline.
#[test]
fn parallel_dispatch_works_from_both_tokio_flavours() {
    let parallel = interrole::pool_threads() >= 2;
    let heavy = |bus: &Bus| -> Vec<Subscription> {
        (0..4)
            .map(|_| {
                bus.subscribe::<Num, _>(|_| {
                    let t = std::time::Instant::now();
                    while t.elapsed() < Duration::from_micros(200) {
                        std::hint::spin_loop();
                    }
                })
            })
            .collect()
    };
    let current = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    current.block_on(async {
        let bus = bus_with(Dispatch::Parallel);
        let _g = heavy(&bus);
        for n in 0..5 {
            bus.publish(Num(n)).unwrap();
        }
        assert_eq!(bus.stats().hub.delivered, 20);
        let expected = if parallel { 5 } else { 0 };
        assert_eq!(bus.stats().hub.parallel_dispatches, expected);
    });
    // One worker: a dispatch that held it without `block_in_place` would leave no thread to run
    // any other task until it ends.
    let multi = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    multi.block_on(async {
        let bus = bus_with(Dispatch::Parallel);
        let _g = heavy(&bus);
        // A task waiting for the first dispatch to be under way, then answering.
        let under_way = Arc::new(tokio::sync::Notify::new());
        let answered = Arc::new(AtomicBool::new(false));
        let (u, a) = (under_way.clone(), answered.clone());
        let other_task = tokio::spawn(async move {
            u.notified().await;
            a.store(true, Ordering::SeqCst);
        });
        // The first call of the first dispatch (on a pool thread) waits for the other task's
        // answer; it gives up after a while, so that a failure is reported, not a hang.
        let stalled = Arc::new(AtomicBool::new(false));
        let first = Arc::new(AtomicBool::new(true));
        let (u, a, st, f) = (
            under_way.clone(),
            answered.clone(),
            stalled.clone(),
            first.clone(),
        );
        let _waiter = bus.subscribe::<Num, _>(move |_| {
            if !parallel || !f.swap(false, Ordering::SeqCst) {
                return;
            }
            u.notify_one();
            let deadline = std::time::Instant::now() + Duration::from_secs(10);
            while !a.load(Ordering::SeqCst) {
                if std::time::Instant::now() > deadline {
                    st.store(true, Ordering::SeqCst);
                    return;
                }
                thread::yield_now();
            }
        });
        let b = bus.clone();
        tokio::spawn(async move {
            for n in 0..50 {
                b.publish(Num(n)).unwrap();
            }
        })
        .await
        .unwrap();
        assert!(
            !stalled.load(Ordering::SeqCst),
            "no other task ran while the parallel dispatch was under way"
        );
        assert_eq!(bus.stats().hub.delivered, 250);
        let expected = if parallel { 50 } else { 0 };
        assert_eq!(bus.stats().hub.parallel_dispatches, expected);
        if parallel {
            assert!(answered.load(Ordering::SeqCst));
            other_task.await.unwrap();
        } else {
            other_task.abort();
        }
    });
}
