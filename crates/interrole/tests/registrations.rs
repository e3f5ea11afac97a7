//! What a subscription registers, and what is held while observers run: the same observer
//! subscribed twice, types subscribed through the hub, an async observer's full mailbox waited
//! for outside its event type's lane.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc;
use std::time::Duration;

use interrole::{
    Bus, EventId, Hub, InstanceId, InterRoleEvent, Loopback, Mailbox, Observable, Observer,
    Overflow,
};
use serde::{Deserialize, Serialize};

#[cfg(feature = "relay")]
mod relay_support;

const WAIT: Duration = Duration::from_secs(10);

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Ping(u64);
interrole::impl_event!(Ping = "test.registrations.ping");

#[derive(Default)]
struct Count {
    next: AtomicUsize,
    completed: AtomicUsize,
}

impl<T> Observer<T> for Count {
    fn on_next(&self, _: &T) {
        self.next.fetch_add(1, Ordering::SeqCst);
    }
    fn on_completed(&self) {
        self.completed.fetch_add(1, Ordering::SeqCst);
    }
}

fn ping(n: u64) -> InterRoleEvent {
    let id = EventId {
        sender: InstanceId::new("me").unwrap(),
        seq: n,
    };
    InterRoleEvent::new(id, Ping(n))
}

#[test]
fn the_same_observer_subscribed_twice_shares_one_registration() {
    let hub = Hub::new();
    let count = Arc::new(Count::default());
    let first = hub.subscribe(count.clone());
    let second = hub.subscribe(count.clone());
    assert_eq!(first.id(), second.id());
    hub.publish(ping(1)).unwrap();
    assert_eq!(
        count.next.load(Ordering::SeqCst),
        1,
        "called once per event"
    );
    drop(first);
    hub.publish(ping(2)).unwrap();
    assert_eq!(
        count.next.load(Ordering::SeqCst),
        2,
        "one guard still holds it"
    );
    assert!(second.is_active());
    drop(second);
    hub.publish(ping(3)).unwrap();
    assert_eq!(
        count.next.load(Ordering::SeqCst),
        2,
        "the last guard is gone"
    );
    assert_eq!(hub.stats().observers, 0);
}

#[tokio::test]
async fn a_shared_registration_completes_once() {
    let bus = Bus::builder().transport(Loopback::new()).build().unwrap();
    let count = Arc::new(Count::default());
    let shared: Arc<dyn Observer<Ping>> = count.clone();
    let _a = bus.observe_arc::<Ping>(shared.clone());
    let _b = bus.observe_arc::<Ping>(shared);
    bus.publish(Ping(1)).unwrap();
    assert_eq!(count.next.load(Ordering::SeqCst), 1);
    bus.close().await;
    assert_eq!(count.completed.load(Ordering::SeqCst), 1);
}

/// A full mailbox under `Overflow::Block` is waited for once the event type's lane is let go:
/// while one publisher waits for room, another publisher's event of the same type reaches the
/// other observers of the type.
#[test]
fn a_blocked_mailbox_does_not_hold_its_lane() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let bus = Bus::builder()
        .transport(Loopback::new())
        .runtime(rt.handle().clone())
        .build()
        .unwrap();
    // A synchronous observer of the type, first in the lane.
    let (sync_tx, sync_seen) = mpsc::channel();
    let _sync = bus.subscribe::<Ping, _>(move |p| sync_tx.send(p.0).unwrap());
    // An async observer that holds its first event until released, with room for one more.
    let (started_tx, started) = mpsc::channel();
    let (async_tx, async_seen) = mpsc::channel();
    let release = Arc::new(tokio::sync::Semaphore::new(0));
    let gate = release.clone();
    let mailbox = Mailbox::bounded(1).overflow(Overflow::Block { timeout: WAIT * 3 });
    let _async = bus.subscribe_async::<Ping, _, _>(mailbox, move |p| {
        let (started, seen, gate) = (started_tx.clone(), async_tx.clone(), gate.clone());
        async move {
            started.send(p.0).unwrap();
            let _permit = gate.acquire().await.unwrap();
            seen.send(p.0).unwrap();
        }
    });

    bus.publish(Ping(1)).unwrap();
    assert_eq!(
        started.recv_timeout(WAIT).unwrap(),
        1,
        "the async observer took 1"
    );
    bus.publish(Ping(2)).unwrap(); // fills the mailbox
    let first = bus.clone();
    let first_done = Arc::new(AtomicBool::new(false));
    let done = first_done.clone();
    let blocked = std::thread::spawn(move || {
        first.publish(Ping(3)).unwrap(); // waits for room
        done.store(true, Ordering::SeqCst);
    });
    assert_eq!(sync_seen.recv_timeout(WAIT).unwrap(), 1);
    assert_eq!(sync_seen.recv_timeout(WAIT).unwrap(), 2);
    assert_eq!(sync_seen.recv_timeout(WAIT).unwrap(), 3);
    // The first publisher now waits for room. Another publisher's event of the same type:
    let second = bus.clone();
    let other = std::thread::spawn(move || second.publish(Ping(4)).unwrap());
    assert_eq!(
        sync_seen.recv_timeout(WAIT),
        Ok(4),
        "the other observer of the type got nothing while a mailbox was full"
    );
    assert!(
        !first_done.load(Ordering::SeqCst),
        "the first publisher did not wait"
    );
    release.add_permits(100);
    blocked.join().unwrap();
    other.join().unwrap();
    let mut got: Vec<u64> = (0..4)
        .map(|_| async_seen.recv_timeout(WAIT).unwrap())
        .collect();
    assert_eq!(&got[..2], [1, 2], "per-publisher order");
    got.sort_unstable();
    assert_eq!(
        got,
        [1, 2, 3, 4],
        "nothing dropped: every publisher waited for room"
    );
    assert_eq!(bus.stats().hub.lagged, 0);
}

#[cfg(feature = "relay")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_type_subscribed_through_the_hub_is_known() {
    use interrole::{Event, TypeTag};
    use relay_support::{bus, relay, until_live};

    #[derive(Debug, Clone, Serialize, Deserialize)]
    struct Probe;
    interrole::impl_event!(Probe = "test.registrations.probe");

    let server = relay().await;
    let a = bus(&server, "known", "a").await;
    let b = bus(&server, "known", "b").await;
    until_live(&a, &b, || Probe).await;
    let (tx, mut seen) = tokio::sync::mpsc::unbounded_channel();
    struct Forward(tokio::sync::mpsc::UnboundedSender<u64>);
    impl Observer<InterRoleEvent> for Forward {
        fn on_next(&self, e: &InterRoleEvent) {
            self.0.send(e.payload::<Ping>().map_or(0, |p| p.0)).unwrap();
        }
    }
    let tag = TypeTag::from_static(Ping::TYPE_TAG);
    let _g = b.hub().subscribe_tag(tag, Arc::new(Forward(tx)));
    a.publish(Ping(7)).unwrap();
    let got = tokio::time::timeout(WAIT, seen.recv()).await.unwrap();
    assert_eq!(got, Some(7));
    assert_eq!(b.stats().unknown_tags, 0, "counted as a type nobody knows");
    server.shutdown().await;
}
