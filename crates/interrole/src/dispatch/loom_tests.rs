//! Model checks (loom) of the registry core: lanes, their gates, the hand-over of observer lists
//! and the lookup table.
//!
//! Built only with `--cfg interrole_loom` (`.ci/loom`), where [`crate::loom`] and the lane
//! gate are loom's: loom explores every interleaving of the threads in each model.

use super::registry::{Key, Registry};
use loom::sync::Arc;
use loom::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use loom::thread;

#[derive(Default)]
struct Obs {
    /// Set by the test once the unsubscribe (or close) has returned.
    gone: AtomicBool,
    calls: AtomicU64,
    completed: AtomicU64,
    /// Set while a call is under way, to catch overlapping calls.
    busy: AtomicBool,
}

impl Obs {
    fn call(&self) {
        assert!(
            !self.gone.load(Ordering::SeqCst),
            "called after its unsubscribe returned"
        );
        assert_eq!(
            self.completed.load(Ordering::SeqCst),
            0,
            "called after on_completed"
        );
        assert!(!self.busy.swap(true, Ordering::SeqCst), "overlapping calls");
        self.calls.fetch_add(1, Ordering::SeqCst);
        self.busy.store(false, Ordering::SeqCst);
    }
}

type Reg = Registry<u8, Obs>;

impl Key for u8 {
    fn fingerprint(&self) -> u64 {
        // Keys collide in threes: lookups must tell keys apart by comparing them.
        u64::from(*self / 3)
    }
}

/// Explores interleavings with at most two preemptions per execution: enough to put each
/// racing operation between any two steps of the other, small enough to finish in seconds.
fn model(f: impl Fn() + Sync + Send + 'static) {
    let mut builder = loom::model::Builder::new();
    builder.preemption_bound = Some(2);
    builder.check(f);
}

/// Two threads publish `key` at once; what both delivered.
fn publish_twice_at_once(reg: &Arc<Reg>, key: u8) -> usize {
    let handles: Vec<_> = (0..2)
        .map(|_| {
            let reg = reg.clone();
            thread::spawn(move || publish(&reg, key))
        })
        .collect();
    handles.into_iter().map(|h| h.join().unwrap()).sum()
}

/// Publishes as the hub does: the key's lane, then the keyless one, each under its gate.
fn publish(reg: &Reg, key: u8) -> usize {
    let keyed = reg.lane(&key).filter(|l| l.has_observers());
    let keyless = Some(reg.keyless()).filter(|l| l.has_observers());
    let mut delivered = 0usize;
    for lane in keyed.into_iter().chain(keyless) {
        let lane = lane.lock();
        let mut n = 0;
        for entry in lane.entries() {
            if entry.call(|o| o.call()).is_some() {
                n += 1;
            }
        }
        lane.count(1, n as u64);
        delivered += n;
    }
    delivered
}

/// Once `deactivate(wait = true)` returns, no call is under way and none starts.
#[test]
fn nothing_is_delivered_after_unsubscribe_returns() {
    model(|| {
        let reg = Arc::new(Reg::new());
        let obs = Arc::new(Obs::default());
        let slot = reg.insert(Some(1), obs.clone()).unwrap();
        let publisher = {
            let reg = reg.clone();
            thread::spawn(move || publish(&reg, 1))
        };
        reg.remove(slot.id());
        slot.deactivate(true);
        obs.gone.store(true, Ordering::SeqCst);
        publisher.join().unwrap();
        assert_eq!(publish(&reg, 1), 0);
    });
}

/// Two publishers never call one observer at once, and each call is counted once.
#[test]
fn concurrent_publishers_never_overlap_on_one_observer() {
    model(|| {
        let reg = Arc::new(Reg::new());
        let obs = Arc::new(Obs::default());
        let _slot = reg.insert(None, obs.clone()).unwrap();
        let delivered = publish_twice_at_once(&reg, 7);
        assert_eq!(delivered, 2);
        assert_eq!(obs.calls.load(Ordering::SeqCst), 2);
    });
}

/// Two observers of one key share a lane: two publishers never overlap on either of them, and
/// a key that collides with another's fingerprint is not delivered to.
#[test]
fn concurrent_publishers_never_overlap_on_one_lane() {
    model(|| {
        let reg = Arc::new(Reg::new());
        let a = Arc::new(Obs::default());
        let b = Arc::new(Obs::default());
        let other = Arc::new(Obs::default());
        let _sa = reg.insert(Some(5), a.clone()).unwrap();
        let _sb = reg.insert(Some(5), b.clone()).unwrap();
        let _so = reg.insert(Some(6), other.clone()).unwrap();
        let delivered = publish_twice_at_once(&reg, 5);
        assert_eq!(delivered, 4);
        assert_eq!(a.calls.load(Ordering::SeqCst), 2);
        assert_eq!(b.calls.load(Ordering::SeqCst), 2);
        assert_eq!(other.calls.load(Ordering::SeqCst), 0);
    });
}

/// Closing completes each observer exactly once, and no call happens after its completion, even
/// with a publisher and an unsubscribe racing the close.
#[test]
fn close_completes_once_and_nothing_follows() {
    model(|| {
        let reg = Arc::new(Reg::new());
        let a = Arc::new(Obs::default());
        let b = Arc::new(Obs::default());
        let _sa = reg.insert(Some(1), a.clone()).unwrap();
        let sb = reg.insert(None, b.clone()).unwrap();
        let publisher = {
            let reg = reg.clone();
            thread::spawn(move || publish(&reg, 1))
        };
        let unsubscriber = thread::spawn(move || {
            sb.deactivate(true);
        });
        for slot in reg.close() {
            slot.finish(|o| {
                o.completed.fetch_add(1, Ordering::SeqCst);
            });
        }
        publisher.join().unwrap();
        unsubscriber.join().unwrap();
        assert_eq!(a.completed.load(Ordering::SeqCst), 1);
        assert!(b.completed.load(Ordering::SeqCst) <= 1);
        assert!(
            reg.insert(Some(1), Arc::new(Obs::default())).is_err(),
            "subscribed after close"
        );
        assert_eq!(publish(&reg, 1), 0);
    });
}

/// Concurrent subscribes both land, with distinct ids, in the lane; a publisher racing them
/// calls each observer at most once.
#[test]
fn concurrent_subscribes_all_land() {
    model(|| {
        let reg = Arc::new(Reg::new());
        let handles: Vec<_> = (0..2)
            .map(|_| {
                let reg = reg.clone();
                thread::spawn(move || reg.insert(Some(3), Arc::new(Obs::default())).unwrap().id())
            })
            .collect();
        let seen = publish(&reg, 3);
        assert!(seen <= 2);
        let ids: Vec<u64> = handles.into_iter().map(|h| h.join().unwrap()).collect();
        assert_ne!(ids[0], ids[1]);
        assert_eq!(reg.lane(&3).map(|l| l.len()), Some(2));
        assert_eq!(publish(&reg, 3), 2);
        assert_eq!(reg.len(), 2);
    });
}

/// The lookup table grows past its first size (16 entries, half used) and its second (64), with
/// colliding fingerprints, and every key still finds its own lane and only its own observers.
/// One thread: a single execution.
#[test]
fn many_keys_each_find_their_own_lane() {
    const KEYS: u8 = 40;
    let mut builder = loom::model::Builder::new();
    builder.max_branches = 100_000;
    builder.check(|| {
        let reg = Reg::new();
        let observers: Vec<_> = (0..KEYS)
            .map(|k| {
                let obs = Arc::new(Obs::default());
                let slot = reg.insert(Some(k), obs.clone()).unwrap();
                (slot, obs)
            })
            .collect();
        for k in 0..KEYS {
            assert_eq!(publish(&reg, k), 1, "key {k}");
        }
        assert_eq!(publish(&reg, 250), 0);
        for (k, (_, obs)) in observers.iter().enumerate() {
            assert_eq!(obs.calls.load(Ordering::SeqCst), 1, "key {k}");
        }
        assert_eq!(reg.lanes().len(), usize::from(KEYS) + 1);
    });
}
