//! The registry core: observer slots, their lanes, and the copy-on-write routing snapshot.
//!
//! This file uses only `super::sync` and std, so that `tests/loom_registry.rs` can compile it
//! against loom and model-check it. What it guarantees:
//!
//! - **Snapshots.** Publishers take an `Arc` of the current [`Routes`] under a read lock held for
//!   the clone only; subscribe and unsubscribe build a new snapshot under the state lock. No lock
//!   is held while observers run.
//! - **Lanes.** The observers of one key share a [`Lane`], and so do the keyless ("every event")
//!   observers. A lane's gate is held for every call into its observers: a dispatch takes it once
//!   for all the lane's observers ([`Lane::lock`], then [`Slot::call_held`]), a single call takes
//!   it for that call ([`Slot::deliver`]). So one observer is never called concurrently, and once
//!   [`Slot::deactivate`] with `wait` returns, no call is under way and none will start.
//! - **Completion.** [`Slot::finish`] runs at most once per slot, and nothing runs after it.
//!
//! Why a gate per lane rather than per observer: the gate is a compare-and-swap, which costs as
//! much as a cheap observer call. Per lane, a dispatch to 16 observers of one type pays it once
//! instead of 16 times. What it gives up is small: two publishers of one type no longer pipeline
//! through that type's observers (one waits for the other's dispatch to the whole lane), which
//! only matters for expensive observers, and those run in parallel on the pool anyway.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hash, Hasher};

use super::sync::{Arc, AtomicBool, AtomicU64, Mutex, Ordering, RwLock, backoff};

/// What observers are keyed by: cheap to compare, with a hash computed once (for type tags,
/// when the tag was made), so that a publish does not hash the key again.
pub(crate) trait Key: Hash + Eq + Clone {
    /// The key's precomputed hash.
    fn fingerprint(&self) -> u64;
}

/// The hasher of the routing table: its keys are fingerprints already.
#[derive(Default)]
pub(crate) struct Prehashed(u64);

impl Hasher for Prehashed {
    fn write(&mut self, bytes: &[u8]) {
        // Not used by the table (it writes one u64); folded in anyway, for completeness.
        for &b in bytes {
            self.0 = (self.0 ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
        }
    }
    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
    fn finish(&self) -> u64 {
        self.0
    }
}

type ByFingerprint<V> = HashMap<u64, V, BuildHasherDefault<Prehashed>>;

/// A lane's gate: held while its observers are called.
///
/// Uncontended, taking it is one compare-and-swap and releasing it a plain store (a `parking_lot`
/// mutex releases with a second atomic read-modify-write). A waiter, which only exists when two
/// publishers reach one lane at once or an unsubscribe waits for a call, spins briefly, then
/// yields, then sleeps in growing steps of at most a millisecond: the call it waits for may be
/// long.
pub(crate) struct Gate {
    held: AtomicBool,
}

/// Holds a [`Gate`]; releases it when dropped.
pub(crate) struct GateGuard<'a>(&'a Gate);

impl Gate {
    fn new() -> Self {
        Self {
            held: AtomicBool::new(false),
        }
    }

    fn lock(&self) -> GateGuard<'_> {
        if self
            .held
            .compare_exchange(false, true, Ordering::Acquire, Ordering::Relaxed)
            .is_err()
        {
            self.lock_contended();
        }
        GateGuard(self)
    }

    #[cold]
    fn lock_contended(&self) {
        let mut round = 0u32;
        loop {
            if !self.held.load(Ordering::Relaxed)
                && self
                    .held
                    .compare_exchange(false, true, Ordering::Acquire, Ordering::Relaxed)
                    .is_ok()
            {
                return;
            }
            backoff(round);
            round = round.saturating_add(1);
        }
    }
}

impl Drop for GateGuard<'_> {
    fn drop(&mut self) {
        self.0.held.store(false, Ordering::Release);
    }
}

/// The observers of one key, or the keyless ones: one gate, and counters kept under it.
///
/// A lane lives as long as its registry: a key that had observers once keeps its lane (keys are
/// event type tags, a small set), so the gate that protects an observer never changes.
pub(crate) struct Lane {
    gate: Gate,
    /// Dispatches counted on this lane (events of its key; for the keyless lane, events of keys
    /// with no lane).
    dispatched: AtomicU64,
    /// Observer calls made with an event.
    delivered: AtomicU64,
    /// The estimated cost of one dispatch through this lane's route, in nanoseconds (0: not
    /// measured yet).
    estimate_ns: AtomicU64,
}

/// Holds a lane's gate: the lane's observers may be called ([`Slot::call_held`]) and its counters
/// bumped.
pub(crate) struct LaneGuard<'a> {
    lane: &'a Lane,
    _gate: GateGuard<'a>,
}

impl Lane {
    fn new() -> Self {
        Self {
            gate: Gate::new(),
            dispatched: AtomicU64::new(0),
            delivered: AtomicU64::new(0),
            estimate_ns: AtomicU64::new(0),
        }
    }

    /// Takes the lane's gate, waiting for a dispatch or call under way.
    pub(crate) fn lock(&self) -> LaneGuard<'_> {
        LaneGuard {
            _gate: self.gate.lock(),
            lane: self,
        }
    }

    /// Dispatches and deliveries counted so far.
    pub(crate) fn counts(&self) -> (u64, u64) {
        (
            self.dispatched.load(Ordering::Relaxed),
            self.delivered.load(Ordering::Relaxed),
        )
    }
}

impl LaneGuard<'_> {
    /// Counts dispatches and deliveries. The gate is held, so a load and a store do: no
    /// read-modify-write.
    pub(crate) fn count(&self, dispatched: u64, delivered: u64) {
        let lane = self.lane;
        if dispatched > 0 {
            let d = lane.dispatched.load(Ordering::Relaxed);
            lane.dispatched.store(d + dispatched, Ordering::Relaxed);
        }
        let n = lane.delivered.load(Ordering::Relaxed);
        lane.delivered.store(n + delivered, Ordering::Relaxed);
    }
}

/// One registered observer.
pub(crate) struct Slot<O: ?Sized> {
    id: u64,
    active: AtomicBool,
    lane: Arc<Lane>,
    observer: Arc<O>,
}

impl<O: ?Sized> Slot<O> {
    /// The slot's id, unique within its registry.
    pub(crate) fn id(&self) -> u64 {
        self.id
    }

    /// Whether the slot still receives calls.
    pub(crate) fn is_active(&self) -> bool {
        self.active.load(Ordering::Acquire)
    }

    /// Calls `f` with the observer under its lane's gate, unless the slot is no longer active.
    /// Must not be called from inside a call of the same lane on this thread.
    pub(crate) fn deliver<R>(&self, f: impl FnOnce(&O) -> R) -> Option<R> {
        let _gate = self.lane.lock();
        self.call_held(f)
    }

    /// Calls `f` with the observer, unless the slot is no longer active. The caller holds the
    /// slot's lane ([`Lane::lock`]).
    #[inline]
    pub(crate) fn call_held<R>(&self, f: impl FnOnce(&O) -> R) -> Option<R> {
        if !self.active.load(Ordering::Acquire) {
            return None;
        }
        Some(f(&self.observer))
    }

    /// Stops calls to the slot. With `wait`, also waits for a call under way on another thread
    /// to return. Must not be called with `wait` from inside a call of this slot's lane.
    /// Returns whether the slot was active.
    pub(crate) fn deactivate(&self, wait: bool) -> bool {
        let was = self.active.swap(false, Ordering::AcqRel);
        if wait {
            drop(self.lane.lock());
        }
        was
    }

    /// The last call: under the lane's gate, if the slot is still active, deactivates it and
    /// calls `f`. Runs `f` at most once over the slot's life.
    pub(crate) fn finish<R>(&self, f: impl FnOnce(&O) -> R) -> Option<R> {
        let _gate = self.lane.lock();
        if !self.active.swap(false, Ordering::AcqRel) {
            return None;
        }
        Some(f(&self.observer))
    }
}

/// The observers of one lane in one snapshot.
pub(crate) struct Part<O: ?Sized> {
    lane: Arc<Lane>,
    slots: Vec<Arc<Slot<O>>>,
}

impl<O: ?Sized> Part<O> {
    /// The lane whose gate protects these observers.
    pub(crate) fn lane(&self) -> &Lane {
        &self.lane
    }

    /// The observers, in subscription order.
    pub(crate) fn slots(&self) -> &[Arc<Slot<O>>] {
        &self.slots
    }
}

/// The observers one event goes to: those of its key (`keyed`), then the keyless ones.
pub(crate) struct Route<O: ?Sized> {
    keyed: Option<Part<O>>,
    keyless: Arc<Part<O>>,
    calls: AtomicU64,
}

impl<O: ?Sized> Route<O> {
    /// The observers of the event's key, when it has some.
    pub(crate) fn keyed(&self) -> Option<&Part<O>> {
        self.keyed.as_ref()
    }

    /// The keyless observers (possibly none).
    pub(crate) fn keyless(&self) -> &Part<O> {
        &self.keyless
    }

    /// How many observers the route has.
    pub(crate) fn len(&self) -> usize {
        self.keyed.as_ref().map_or(0, |p| p.slots.len()) + self.keyless.slots.len()
    }

    /// The lane that keeps the route's cost estimate: the keyed one, else the keyless one.
    fn primary(&self) -> &Lane {
        self.keyed.as_ref().map_or(&self.keyless.lane, |p| &p.lane)
    }

    /// Counts one dispatch on this route and says whether it should be measured: the first few
    /// after the route changed, then one in `every`.
    ///
    /// The count only paces sampling, so it is a plain load and store, not a read-modify-write:
    /// concurrent publishers may lose a count now and then, which only shifts the next sample.
    pub(crate) fn tick(&self, every: u64) -> bool {
        let n = self.calls.load(Ordering::Relaxed);
        self.calls.store(n.wrapping_add(1), Ordering::Relaxed);
        n < 4 || n % every == 0
    }

    /// The estimated cost of one dispatch through the route, in nanoseconds (0: not measured).
    pub(crate) fn estimate_ns(&self) -> u64 {
        self.primary().estimate_ns.load(Ordering::Relaxed)
    }

    /// Folds one measured dispatch into the estimate (an exponential moving average, weight
    /// 1/4). The estimate is kept by the lane, so it outlives snapshot changes.
    pub(crate) fn record_cost(&self, ns: u64) {
        let estimate = &self.primary().estimate_ns;
        let old = estimate.load(Ordering::Relaxed);
        let new = if old == 0 {
            ns.max(1)
        } else {
            (old * 3 + ns) / 4
        };
        estimate.store(new.max(1), Ordering::Relaxed);
    }
}

/// An immutable routing table: which slots each key goes to.
///
/// Keyed by fingerprint; keys whose fingerprints collide share an entry and are told apart by
/// comparing them.
pub(crate) struct Routes<K, O: ?Sized> {
    by_key: ByFingerprint<Vec<(K, Route<O>)>>,
    keyless: Route<O>,
}

impl<K: Key, O: ?Sized> Routes<K, O> {
    /// The route of events with `key`.
    #[inline]
    pub(crate) fn route(&self, key: &K) -> &Route<O> {
        self.find(key.fingerprint(), |k| k == key)
            .unwrap_or(&self.keyless)
    }

    /// The keyed route whose key has `fingerprint` and satisfies `is_key`, if any.
    #[inline]
    pub(crate) fn find(&self, fingerprint: u64, is_key: impl Fn(&K) -> bool) -> Option<&Route<O>> {
        let entries = self.by_key.get(&fingerprint)?;
        entries.iter().find(|(k, _)| is_key(k)).map(|(_, r)| r)
    }
}

struct State<K, O: ?Sized> {
    next_id: u64,
    keyed: Vec<(K, Arc<Slot<O>>)>,
    keyless: Vec<Arc<Slot<O>>>,
    /// Every key's lane, once it had an observer.
    lanes: HashMap<K, Arc<Lane>>,
    keyless_lane: Arc<Lane>,
    closed: bool,
}

/// The registry was closed: nothing can subscribe any more.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct RegistryClosed;

/// Observers by key, with a copy-on-write snapshot for publishers.
pub(crate) struct Registry<K, O: ?Sized> {
    state: Mutex<State<K, O>>,
    snapshot: RwLock<Arc<Routes<K, O>>>,
}

impl<K: Key, O: ?Sized> Registry<K, O> {
    pub(crate) fn new() -> Self {
        let keyless_lane = Arc::new(Lane::new());
        let keyless = Arc::new(Part {
            lane: keyless_lane.clone(),
            slots: Vec::new(),
        });
        Self {
            state: Mutex::new(State {
                next_id: 1,
                keyed: Vec::new(),
                keyless: Vec::new(),
                lanes: HashMap::new(),
                keyless_lane,
                closed: false,
            }),
            snapshot: RwLock::new(Arc::new(Routes {
                by_key: HashMap::default(),
                keyless: Route {
                    keyed: None,
                    keyless,
                    calls: AtomicU64::new(0),
                },
            })),
        }
    }

    /// The current routing table. The read lock is held only to clone the `Arc`.
    pub(crate) fn snapshot(&self) -> Arc<Routes<K, O>> {
        self.snapshot.read().clone()
    }

    /// Registers `observer` for events with `key` (or every event when `key` is `None`).
    pub(crate) fn insert(
        &self,
        key: Option<K>,
        observer: Arc<O>,
    ) -> Result<Arc<Slot<O>>, RegistryClosed> {
        let mut state = self.state.lock();
        if state.closed {
            return Err(RegistryClosed);
        }
        let lane = match &key {
            Some(key) => state
                .lanes
                .entry(key.clone())
                .or_insert_with(|| Arc::new(Lane::new()))
                .clone(),
            None => state.keyless_lane.clone(),
        };
        let slot = Arc::new(Slot {
            id: state.next_id,
            active: AtomicBool::new(true),
            lane,
            observer,
        });
        state.next_id += 1;
        match key {
            Some(key) => state.keyed.push((key, slot.clone())),
            None => state.keyless.push(slot.clone()),
        }
        self.publish(&state);
        Ok(slot)
    }

    /// Removes a slot. Returns whether it was registered. Does not deactivate it.
    pub(crate) fn remove(&self, id: u64) -> bool {
        let mut state = self.state.lock();
        let before = state.keyed.len() + state.keyless.len();
        state.keyed.retain(|(_, s)| s.id != id);
        state.keyless.retain(|s| s.id != id);
        let removed = state.keyed.len() + state.keyless.len() != before;
        if removed {
            self.publish(&state);
        }
        removed
    }

    /// Closes the registry: every slot is removed and returned, and nothing can subscribe again.
    pub(crate) fn close(&self) -> Vec<Arc<Slot<O>>> {
        let mut state = self.state.lock();
        state.closed = true;
        let mut all: Vec<_> = state.keyed.drain(..).map(|(_, s)| s).collect();
        all.append(&mut state.keyless);
        self.publish(&state);
        all
    }

    /// Every registered slot, keyed and keyless.
    #[allow(dead_code)] // not used by every build that includes this file
    pub(crate) fn all(&self) -> Vec<Arc<Slot<O>>> {
        let state = self.state.lock();
        let keyed = state.keyed.iter().map(|(_, s)| s.clone());
        keyed.chain(state.keyless.iter().cloned()).collect()
    }

    /// Every lane, keyed and keyless (for the counters).
    #[allow(dead_code)] // not used by every build that includes this file
    pub(crate) fn lanes(&self) -> Vec<Arc<Lane>> {
        let state = self.state.lock();
        let mut lanes: Vec<_> = state.lanes.values().cloned().collect();
        lanes.push(state.keyless_lane.clone());
        lanes
    }

    /// How many observers are registered.
    pub(crate) fn len(&self) -> usize {
        let state = self.state.lock();
        state.keyed.len() + state.keyless.len()
    }

    /// Builds and installs a new snapshot from `state` (called with the state lock held, so
    /// snapshots are installed in the order the changes were made).
    fn publish(&self, state: &State<K, O>) {
        let mut grouped: HashMap<K, Vec<Arc<Slot<O>>>> = HashMap::new();
        for (key, slot) in &state.keyed {
            grouped.entry(key.clone()).or_default().push(slot.clone());
        }
        let keyless = Arc::new(Part {
            lane: state.keyless_lane.clone(),
            slots: state.keyless.clone(),
        });
        let mut by_key: ByFingerprint<Vec<(K, Route<O>)>> =
            HashMap::with_capacity_and_hasher(grouped.len(), Default::default());
        for (key, slots) in grouped {
            let lane = state.lanes.get(&key).expect("a keyed slot's lane").clone();
            let route = Route {
                keyed: Some(Part { lane, slots }),
                keyless: keyless.clone(),
                calls: AtomicU64::new(0),
            };
            by_key
                .entry(key.fingerprint())
                .or_default()
                .push((key, route));
        }
        let routes = Routes {
            by_key,
            keyless: Route {
                keyed: None,
                keyless,
                calls: AtomicU64::new(0),
            },
        };
        *self.snapshot.write() = Arc::new(routes);
    }
}
