//! The registry core: observer slots, the copy-on-write routing snapshot, and the slot gate.
//!
//! This file uses only `super::sync` and std, so that `tests/loom_registry.rs` can compile it
//! against loom and model-check it. What it guarantees:
//!
//! - **Snapshots.** Publishers take an `Arc` of the current [`Routes`] under a read lock held for
//!   the clone only; subscribe and unsubscribe build a new snapshot under the state lock. No lock
//!   is held while observers run.
//! - **The gate.** Every call into an observer goes through [`Slot::deliver`], which holds that
//!   slot's own gate and checks that the slot is still active. So one observer is never called
//!   concurrently, and once [`Slot::deactivate`] with `wait` returns, no call is under way and
//!   none will start.
//! - **Completion.** [`Slot::finish`] runs at most once per slot, and nothing runs after it.

use std::collections::HashMap;
use std::hash::{BuildHasher, Hash};

use super::sync::{Arc, AtomicBool, AtomicU64, Mutex, Ordering, RwLock, backoff};

/// A slot's gate: held for each call into the observer.
///
/// Uncontended, taking it is one compare-and-swap and releasing it a plain store (a `parking_lot`
/// mutex releases with a second atomic read-modify-write, which on the cheap-observer path is a
/// third of the cost of a call). A waiter, which only exists when two publishers reach one
/// observer at once or an unsubscribe waits for a call, spins briefly, then yields, then sleeps in
/// growing steps of at most a millisecond: the call it waits for may be long.
pub(crate) struct Gate {
    held: AtomicBool,
}

/// Holds a [`Gate`]; releases it when dropped.
pub(crate) struct GateGuard<'a>(&'a Gate);

impl Gate {
    pub(crate) fn new() -> Self {
        Self {
            held: AtomicBool::new(false),
        }
    }

    pub(crate) fn lock(&self) -> GateGuard<'_> {
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

/// One registered observer.
pub(crate) struct Slot<O: ?Sized> {
    id: u64,
    gate: Gate,
    active: AtomicBool,
    /// Estimated cost of one call, in nanoseconds (0: not measured yet).
    cost_ns: AtomicU64,
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

    /// Calls `f` with the observer under the slot's gate, unless the slot is no longer active.
    pub(crate) fn deliver<R>(&self, f: impl FnOnce(&O) -> R) -> Option<R> {
        let _gate = self.gate.lock();
        if !self.active.load(Ordering::Acquire) {
            return None;
        }
        Some(f(&self.observer))
    }

    /// Stops calls to the slot. With `wait`, also waits for a call under way on another thread
    /// to return. Must not be called with `wait` from inside this slot's own call.
    /// Returns whether the slot was active.
    pub(crate) fn deactivate(&self, wait: bool) -> bool {
        let was = self.active.swap(false, Ordering::AcqRel);
        if wait {
            drop(self.gate.lock());
        }
        was
    }

    /// The last call: under the gate, if the slot is still active, deactivates it and calls `f`.
    /// Runs `f` at most once over the slot's life.
    pub(crate) fn finish<R>(&self, f: impl FnOnce(&O) -> R) -> Option<R> {
        let _gate = self.gate.lock();
        if !self.active.swap(false, Ordering::AcqRel) {
            return None;
        }
        Some(f(&self.observer))
    }

    /// The estimated cost of one call, in nanoseconds (0 when not measured yet).
    pub(crate) fn cost_ns(&self) -> u64 {
        self.cost_ns.load(Ordering::Relaxed)
    }

    /// Folds one measured call into the estimate (an exponential moving average, weight 1/4).
    pub(crate) fn record_cost(&self, ns: u64) {
        let old = self.cost_ns.load(Ordering::Relaxed);
        let new = if old == 0 {
            ns.max(1)
        } else {
            (old * 3 + ns) / 4
        };
        self.cost_ns.store(new.max(1), Ordering::Relaxed);
    }
}

/// The observers one event goes to: those of its key, then the keyless ("all events") ones.
pub(crate) struct Route<O: ?Sized> {
    slots: Vec<Arc<Slot<O>>>,
    calls: AtomicU64,
    estimate_ns: AtomicU64,
}

impl<O: ?Sized> Route<O> {
    fn new(slots: Vec<Arc<Slot<O>>>) -> Self {
        let estimate = slots.iter().map(|s| s.cost_ns()).sum();
        Self {
            slots,
            calls: AtomicU64::new(0),
            estimate_ns: AtomicU64::new(estimate),
        }
    }

    /// The observers, keyed ones first.
    pub(crate) fn slots(&self) -> &[Arc<Slot<O>>] {
        &self.slots
    }

    /// Counts one dispatch on this route and says whether it should be measured: the first few,
    /// then one in `every`.
    ///
    /// The count only paces sampling, so it is a plain load and store, not a read-modify-write:
    /// concurrent publishers may lose a count now and then, which only shifts the next sample.
    pub(crate) fn tick(&self, every: u64) -> bool {
        let n = self.calls.load(Ordering::Relaxed);
        self.calls.store(n.wrapping_add(1), Ordering::Relaxed);
        n < 4 || n % every == 0
    }

    /// The estimated cost of calling every observer of the route once, in nanoseconds.
    pub(crate) fn estimate_ns(&self) -> u64 {
        self.estimate_ns.load(Ordering::Relaxed)
    }

    /// Recomputes the estimate from the slots' costs.
    pub(crate) fn refresh_estimate(&self) {
        let sum = self.slots.iter().map(|s| s.cost_ns()).sum();
        self.estimate_ns.store(sum, Ordering::Relaxed);
    }
}

/// An immutable routing table: which slots each key goes to.
pub(crate) struct Routes<K, O: ?Sized, S> {
    by_key: HashMap<K, Route<O>, S>,
    keyless: Route<O>,
}

impl<K: Hash + Eq, O: ?Sized, S: BuildHasher> Routes<K, O, S> {
    /// The route of events with `key`.
    pub(crate) fn route<Q>(&self, key: &Q) -> &Route<O>
    where
        K: std::borrow::Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        self.by_key.get(key).unwrap_or(&self.keyless)
    }

    /// Whether `key` has keyed observers.
    pub(crate) fn has_key<Q>(&self, key: &Q) -> bool
    where
        K: std::borrow::Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        self.by_key.contains_key(key)
    }
}

struct State<K, O: ?Sized> {
    next_id: u64,
    keyed: Vec<(K, Arc<Slot<O>>)>,
    keyless: Vec<Arc<Slot<O>>>,
    closed: bool,
}

/// The registry was closed: nothing can subscribe any more.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct RegistryClosed;

/// Observers by key, with a copy-on-write snapshot for publishers.
pub(crate) struct Registry<K, O: ?Sized, S> {
    state: Mutex<State<K, O>>,
    snapshot: RwLock<Arc<Routes<K, O, S>>>,
}

impl<K, O, S> Registry<K, O, S>
where
    K: Hash + Eq + Clone,
    O: ?Sized,
    S: BuildHasher + Default,
{
    pub(crate) fn new() -> Self {
        Self {
            state: Mutex::new(State {
                next_id: 1,
                keyed: Vec::new(),
                keyless: Vec::new(),
                closed: false,
            }),
            snapshot: RwLock::new(Arc::new(Routes {
                by_key: HashMap::default(),
                keyless: Route::new(Vec::new()),
            })),
        }
    }

    /// The current routing table. The read lock is held only to clone the `Arc`.
    pub(crate) fn snapshot(&self) -> Arc<Routes<K, O, S>> {
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
        let slot = Arc::new(Slot {
            id: state.next_id,
            gate: Gate::new(),
            active: AtomicBool::new(true),
            cost_ns: AtomicU64::new(0),
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

    /// How many observers are registered.
    /// Every registered slot, keyed and keyless.
    #[allow(dead_code)] // not used by every build that includes this file
    pub(crate) fn all(&self) -> Vec<Arc<Slot<O>>> {
        let state = self.state.lock();
        let keyed = state.keyed.iter().map(|(_, s)| s.clone());
        keyed.chain(state.keyless.iter().cloned()).collect()
    }

    pub(crate) fn len(&self) -> usize {
        let state = self.state.lock();
        state.keyed.len() + state.keyless.len()
    }

    /// Builds and installs a new snapshot from `state` (called with the state lock held, so
    /// snapshots are installed in the order the changes were made).
    fn publish(&self, state: &State<K, O>) {
        let mut grouped: HashMap<K, Vec<Arc<Slot<O>>>, S> = HashMap::default();
        for (key, slot) in &state.keyed {
            grouped.entry(key.clone()).or_default().push(slot.clone());
        }
        let mut by_key = HashMap::with_capacity_and_hasher(grouped.len(), S::default());
        for (key, mut slots) in grouped {
            slots.extend(state.keyless.iter().cloned());
            by_key.insert(key, Route::new(slots));
        }
        let routes = Routes {
            by_key,
            keyless: Route::new(state.keyless.clone()),
        };
        *self.snapshot.write() = Arc::new(routes);
    }
}
