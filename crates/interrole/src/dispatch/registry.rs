//! The registry core: observer slots, the lanes that hold them, and the table that finds a lane.
//!
//! This file uses only [`crate::loom`], the lane gate and std, so that `loom_tests` can run it on
//! loom's primitives and model-check it (`.ci/loom`). What it guarantees:
//!
//! - **Lanes.** The observers of one key (one event type) are one [`Lane`]; the keyless ("every
//!   event") observers are another. A lane's gate is held for every call into its observers: a
//!   dispatch takes it once for all of them ([`Lane::lock`], then [`Entry::call`]), a single
//!   call takes it for that call ([`Slot::deliver`]). So one observer is never called
//!   concurrently, and once [`Slot::deactivate`] with `wait` returns, no call is under way and
//!   none will start.
//! - **No lock and no reference count on the way to the observers.** A lane keeps its list of
//!   observers itself, read only under its gate. The table from keys to lanes only grows (a key
//!   keeps its lane for the registry's life; keys are event type tags, a small set), so a
//!   publisher finds its lane with plain loads. Subscribe and unsubscribe change the list under
//!   the registry's state lock and hand it to the lane: at once when its gate is free, otherwise
//!   to whoever holds the gate, which installs it before it lets go (or the next taker, before it
//!   calls anyone). A subscription is therefore seen by every dispatch that starts after
//!   `subscribe` returns.
//! - **Completion.** [`Slot::finish`] runs at most once per slot, and nothing runs after it.
//!
//! Why a gate per lane rather than per observer: the gate is a compare-and-swap, which costs as
//! much as a cheap observer call. Per lane, a dispatch to 16 observers of one type pays it once
//! instead of 16 times. What it gives up is small: two publishers of one type no longer pipeline
//! through that type's observers (one waits for the other's dispatch to the whole lane), which
//! only matters for expensive observers, and those run in parallel on the pool anyway.

use std::collections::HashMap;
use std::hash::Hash;

use super::gate::{Gate, GateGuard};
use crate::loom::{Arc, AtomicBool, AtomicU64, Mutex, OnceLock, Ordering};

/// What observers are keyed by: cheap to compare, with a hash computed once (for type tags,
/// when the tag was made), so that a publish does not hash the key again.
pub(crate) trait Key: Hash + Eq + Clone {
    /// The key's precomputed hash.
    fn fingerprint(&self) -> u64;
}

type SlotList<K, O> = Vec<Arc<Slot<K, O>>>;

/// One observer in a lane's list: the observer itself next to its slot, so that a dispatch
/// reaches the observer without going through the slot first.
pub(crate) struct Entry<K, O: ?Sized> {
    observer: Arc<O>,
    slot: Arc<Slot<K, O>>,
}

impl<K, O: ?Sized> Entry<K, O> {
    fn of(slot: &Arc<Slot<K, O>>) -> Self {
        Self {
            observer: slot.observer.clone(),
            slot: slot.clone(),
        }
    }

    /// Calls `f` with the observer, unless its slot is no longer active. The caller holds the
    /// lane ([`Lane::lock`]).
    #[inline]
    pub(crate) fn call<R>(&self, f: impl FnOnce(&O) -> R) -> Option<R> {
        call_if_active(&self.slot.active, &*self.observer, f)
    }

    /// The observer's slot.
    pub(crate) fn slot(&self) -> &Slot<K, O> {
        &self.slot
    }
}

/// Calls `f` with `observer` unless its slot is no longer `active`. The caller holds the lane.
#[inline]
fn call_if_active<O: ?Sized, R>(
    active: &AtomicBool,
    observer: &O,
    f: impl FnOnce(&O) -> R,
) -> Option<R> {
    if !active.load(Ordering::Acquire) {
        return None;
    }
    Some(f(observer))
}

type LaneList<K, O> = Vec<Entry<K, O>>;

fn lane_list<K, O: ?Sized>(slots: &[Arc<Slot<K, O>>]) -> LaneList<K, O> {
    slots.iter().map(Entry::of).collect()
}

/// The observers of one key, or the keyless ones, behind one gate, with counters kept under it.
pub(crate) struct Lane<K, O: ?Sized> {
    key: Option<K>,
    fingerprint: u64,
    /// The gate, and the observers it protects.
    slots: Gate<LaneList<K, O>>,
    /// A newer list, handed over by a change made while the gate was held.
    pending: Mutex<Option<LaneList<K, O>>>,
    /// Whether `pending` holds a list (set and cleared with `pending` locked).
    dirty: AtomicBool,
    /// How many observers the newest list has: a dispatch skips an empty lane without its gate.
    observers: AtomicU64,
    /// Dispatches counted on this lane (events of its key; for the keyless lane, the events of
    /// keys with no observers of their own). Written under the gate.
    dispatched: AtomicU64,
    /// Observer calls made with an event. Written under the gate.
    delivered: AtomicU64,
    /// Dispatches since the list last changed: paces cost sampling.
    calls: AtomicU64,
    /// The estimated cost of one dispatch through this lane's route, in nanoseconds (0: not
    /// measured yet).
    estimate_ns: AtomicU64,
}

impl<K, O: ?Sized> Lane<K, O> {
    fn new(key: Option<K>, fingerprint: u64) -> Self {
        Self {
            key,
            fingerprint,
            slots: Gate::new(Vec::new()),
            pending: Mutex::new(None),
            dirty: AtomicBool::new(false),
            observers: AtomicU64::new(0),
            dispatched: AtomicU64::new(0),
            delivered: AtomicU64::new(0),
            calls: AtomicU64::new(0),
            estimate_ns: AtomicU64::new(0),
        }
    }

    /// Whether the lane has observers (as of the newest change made before this call).
    #[inline]
    pub(crate) fn has_observers(&self) -> bool {
        self.observers.load(Ordering::Acquire) > 0
    }

    /// How many observers the lane has.
    pub(crate) fn len(&self) -> usize {
        self.observers.load(Ordering::Acquire) as usize
    }

    /// Takes the lane's gate, waiting for a dispatch or call under way, and installs the newest
    /// list of observers.
    #[inline]
    pub(crate) fn lock(&self) -> LaneGuard<'_, K, O> {
        let mut guard = LaneGuard {
            lane: self,
            slots: self.slots.lock(),
            garbage: None,
        };
        guard.install();
        guard
    }

    /// Hands the lane a new list of observers: installed at once when the gate is free, else by
    /// the gate's holder before it lets go, or by the next taker before it calls anyone.
    fn hand_over(&self, list: LaneList<K, O>) {
        self.observers.store(list.len() as u64, Ordering::Release);
        {
            let mut pending = self.pending.lock();
            *pending = Some(list);
            self.dirty.store(true, Ordering::Release);
        }
        if let Some(slots) = self.slots.try_lock() {
            // Dropping the guard installs the list, lets go, then drops the old list.
            drop(LaneGuard {
                lane: self,
                slots,
                garbage: None,
            });
        }
    }

    /// Counts one dispatch for sampling and says whether it should be measured: the first few
    /// after the list changed, then one in `every`.
    ///
    /// The count only paces sampling, so it is a plain load and store, not a read-modify-write:
    /// concurrent publishers may lose a count now and then, which only shifts the next sample.
    #[inline]
    pub(crate) fn tick(&self, every: u64) -> bool {
        let n = self.calls.load(Ordering::Relaxed);
        self.calls.store(n.wrapping_add(1), Ordering::Relaxed);
        n < 4 || n % every == 0
    }

    /// The estimated cost of one dispatch through the lane's route, in nanoseconds (0: not
    /// measured yet).
    #[inline]
    pub(crate) fn estimate_ns(&self) -> u64 {
        self.estimate_ns.load(Ordering::Relaxed)
    }

    /// Folds one measured dispatch into the estimate (an exponential moving average, weight 1/4).
    pub(crate) fn record_cost(&self, ns: u64) {
        let old = self.estimate_ns.load(Ordering::Relaxed);
        let new = if old == 0 {
            ns.max(1)
        } else {
            (old * 3 + ns) / 4
        };
        self.estimate_ns.store(new.max(1), Ordering::Relaxed);
    }

    /// Dispatches and deliveries counted so far.
    pub(crate) fn counts(&self) -> (u64, u64) {
        (
            self.dispatched.load(Ordering::Relaxed),
            self.delivered.load(Ordering::Relaxed),
        )
    }
}

/// Holds a lane's gate: the lane's observers may be called ([`Entry::call`]) and its counters
/// bumped. Dropping it installs a list handed over meanwhile, lets go of the gate, then drops
/// the replaced lists (outside the gate: dropping an observer runs user code).
///
/// The fields drop in order: the gate is let go (`slots`), then the replaced lists go.
pub(crate) struct LaneGuard<'a, K, O: ?Sized> {
    slots: GateGuard<'a, LaneList<K, O>>,
    /// Lists replaced while the gate was held (an `Option`, so that the common guard, which
    /// replaced nothing, drops without a call).
    garbage: Option<Vec<LaneList<K, O>>>,
    lane: &'a Lane<K, O>,
}

impl<K, O: ?Sized> LaneGuard<'_, K, O> {
    /// Installs the list handed over, if any.
    #[inline]
    fn install(&mut self) {
        if self.lane.dirty.load(Ordering::Acquire) {
            self.install_pending();
        }
    }

    #[cold]
    fn install_pending(&mut self) {
        let lane = self.lane;
        let list = {
            let mut pending = lane.pending.lock();
            lane.dirty.store(false, Ordering::Relaxed);
            pending.take()
        };
        if let Some(list) = list {
            let old = std::mem::replace(&mut *self.slots, list);
            lane.calls.store(0, Ordering::Relaxed);
            self.garbage.get_or_insert_with(Vec::new).push(old);
        }
    }

    /// The lane's observers, in subscription order.
    #[inline]
    pub(crate) fn entries(&self) -> &[Entry<K, O>] {
        &self.slots
    }

    /// Counts dispatches and deliveries. The gate is held, so a load and a store do: no
    /// read-modify-write.
    #[inline]
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

impl<K, O: ?Sized> Drop for LaneGuard<'_, K, O> {
    /// Installs a list handed over meanwhile; then the fields let go of the gate and drop the
    /// replaced lists. A list handed over after this check is installed by the next taker.
    #[inline]
    fn drop(&mut self) {
        self.install();
    }
}

/// One registered observer.
pub(crate) struct Slot<K, O: ?Sized> {
    id: u64,
    /// The observer's identity: the address of what the subscriber handed in.
    identity: usize,
    active: AtomicBool,
    /// The observer's lane, whose gate is taken for a single call. (The lane holds the slot
    /// too; the registry empties its lanes when it is dropped, which ends the cycle.)
    lane: Arc<Lane<K, O>>,
    observer: Arc<O>,
}

impl<K, O: ?Sized> Slot<K, O> {
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
        call_if_active(&self.active, &*self.observer, f)
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

/// A table from fingerprints to lanes that only grows, read without locks: open addressing in
/// write-once entries. When one table is half full, new keys go to a next one, four times as
/// big; a lookup that does not find its key in one table goes on to the next. Most hubs have a
/// few event types and never leave the first table.
/// One entry of a [`Table`]: empty until a lane is written into it, once.
type TableEntry<K, O> = OnceLock<Arc<Lane<K, O>>>;

struct Table<K, O: ?Sized> {
    mask: usize,
    entries: Box<[TableEntry<K, O>]>,
    /// Entries taken (written under the registry's state lock).
    used: AtomicU64,
    next: OnceLock<Box<Table<K, O>>>,
}

impl<K: Key, O: ?Sized> Table<K, O> {
    fn with_capacity(capacity: usize) -> Self {
        let capacity = capacity.next_power_of_two().max(8);
        Self {
            mask: capacity - 1,
            entries: (0..capacity).map(|_| OnceLock::new()).collect(),
            used: AtomicU64::new(0),
            next: OnceLock::new(),
        }
    }

    #[inline]
    fn find(&self, fingerprint: u64, is_key: impl Fn(&K) -> bool) -> Option<&Lane<K, O>> {
        let mut table = self;
        loop {
            let mut i = fingerprint as usize & table.mask;
            while let Some(lane) = table.entries[i].get() {
                if lane.fingerprint == fingerprint && lane.key.as_ref().is_some_and(&is_key) {
                    return Some(lane);
                }
                i = (i + 1) & table.mask;
            }
            table = table.next.get()?;
        }
    }

    /// Adds a lane whose key is in no table yet (the state lock is held: one writer).
    fn add(&self, lane: Arc<Lane<K, O>>) {
        let mut table = self;
        loop {
            let used = table.used.load(Ordering::Relaxed);
            if (used + 1) * 2 <= table.entries.len() as u64 {
                let mut i = lane.fingerprint as usize & table.mask;
                while table.entries[i].get().is_some() {
                    i = (i + 1) & table.mask;
                }
                table.used.store(used + 1, Ordering::Relaxed);
                let _ = table.entries[i].set(lane);
                return;
            }
            let size = table.entries.len() * 4;
            table = table
                .next
                .get_or_init(|| Box::new(Table::with_capacity(size)));
        }
    }

    /// Every lane, table after table.
    fn lanes(&self) -> impl Iterator<Item = &Arc<Lane<K, O>>> {
        std::iter::successors(Some(self), |t| t.next.get().map(|b| &**b))
            .flat_map(|t| t.entries.iter().filter_map(OnceLock::get))
    }
}

struct State<K, O: ?Sized> {
    next_id: u64,
    keyed: Vec<(K, Arc<Slot<K, O>>)>,
    keyless: SlotList<K, O>,
    /// Registrations held by more than one subscription (the same observer subscribed again on
    /// the same route): slot id to how many holders beyond the first.
    shared: HashMap<u64, usize>,
    /// Every key's lane, once it had an observer.
    lanes: HashMap<K, Arc<Lane<K, O>>>,
    closed: bool,
}

/// The registry was closed: nothing can subscribe any more.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct RegistryClosed;

/// Observers by key, in lanes found without locks.
pub(crate) struct Registry<K, O: ?Sized> {
    state: Mutex<State<K, O>>,
    table: Table<K, O>,
    keyless: Arc<Lane<K, O>>,
}

impl<K: Key, O: ?Sized> Registry<K, O> {
    pub(crate) fn new() -> Self {
        Self {
            state: Mutex::new(State {
                next_id: 1,
                keyed: Vec::new(),
                keyless: Vec::new(),
                shared: HashMap::new(),
                lanes: HashMap::new(),
                closed: false,
            }),
            table: Table::with_capacity(16),
            keyless: Arc::new(Lane::new(None, 0)),
        }
    }

    /// The lane of `key`'s observers, if `key` ever had one.
    #[inline]
    pub(crate) fn lane(&self, key: &K) -> Option<&Lane<K, O>> {
        self.table.find(key.fingerprint(), |k| k == key)
    }

    /// The lane whose key has `fingerprint` and satisfies `is_key`, if any.
    #[inline]
    pub(crate) fn find(
        &self,
        fingerprint: u64,
        is_key: impl Fn(&K) -> bool,
    ) -> Option<&Lane<K, O>> {
        self.table.find(fingerprint, is_key)
    }

    /// The lane of the keyless observers.
    #[inline]
    pub(crate) fn keyless(&self) -> &Lane<K, O> {
        &self.keyless
    }

    /// Registers `observer` for events with `key` (or every event when `key` is `None`), known
    /// by its address.
    #[allow(dead_code)] // the hub registers through `insert_as`; the loom model through this
    pub(crate) fn insert(
        &self,
        key: Option<K>,
        observer: Arc<O>,
    ) -> Result<Arc<Slot<K, O>>, RegistryClosed> {
        let identity = Arc::as_ptr(&observer) as *const () as usize;
        self.insert_as(key, observer, identity)
    }

    /// Registers `observer`, known by `identity`, for events with `key` (or every event when
    /// `key` is `None`). When an observer of the same identity is registered on the same route
    /// already, that registration is shared instead: the observer is still called once per
    /// event, and stays registered until every holder has removed it.
    pub(crate) fn insert_as(
        &self,
        key: Option<K>,
        observer: Arc<O>,
        identity: usize,
    ) -> Result<Arc<Slot<K, O>>, RegistryClosed> {
        let mut state = self.state.lock();
        if state.closed {
            return Err(RegistryClosed);
        }
        let existing = match &key {
            Some(key) => state
                .keyed
                .iter()
                .find(|(k, s)| k == key && s.identity == identity)
                .map(|(_, s)| s),
            None => state.keyless.iter().find(|s| s.identity == identity),
        };
        if let Some(slot) = existing.filter(|s| s.is_active()).cloned() {
            *state.shared.entry(slot.id).or_insert(0) += 1;
            return Ok(slot);
        }
        let lane = match &key {
            Some(key) => match state.lanes.get(key) {
                Some(lane) => lane.clone(),
                None => {
                    let lane = Arc::new(Lane::new(Some(key.clone()), key.fingerprint()));
                    state.lanes.insert(key.clone(), lane.clone());
                    self.table.add(lane.clone());
                    lane
                }
            },
            None => self.keyless.clone(),
        };
        let slot = Arc::new(Slot {
            id: state.next_id,
            identity,
            active: AtomicBool::new(true),
            lane: lane.clone(),
            observer,
        });
        state.next_id += 1;
        match key {
            Some(key) => {
                state.keyed.push((key.clone(), slot.clone()));
                lane.hand_over(keyed_list(&state, &key));
            }
            None => {
                state.keyless.push(slot.clone());
                lane.hand_over(lane_list(&state.keyless));
            }
        }
        Ok(slot)
    }

    /// Removes one holder of a slot's registration. Returns whether that ended the registration
    /// (the slot was registered, and no other holder shares it). Does not deactivate it.
    pub(crate) fn remove(&self, id: u64) -> bool {
        let mut state = self.state.lock();
        if let Some(others) = state.shared.get_mut(&id) {
            *others -= 1;
            if *others == 0 {
                state.shared.remove(&id);
            }
            return false;
        }
        if let Some(i) = state.keyed.iter().position(|(_, s)| s.id == id) {
            let (key, slot) = state.keyed.remove(i);
            slot.lane.hand_over(keyed_list(&state, &key));
            return true;
        }
        if let Some(i) = state.keyless.iter().position(|s| s.id == id) {
            state.keyless.remove(i);
            self.keyless.hand_over(lane_list(&state.keyless));
            return true;
        }
        false
    }

    /// Closes the registry: every slot is removed and returned, and nothing can subscribe again.
    pub(crate) fn close(&self) -> SlotList<K, O> {
        let mut state = self.state.lock();
        state.closed = true;
        state.shared.clear();
        let mut all: Vec<_> = state.keyed.drain(..).map(|(_, s)| s).collect();
        all.append(&mut state.keyless);
        for lane in state.lanes.values() {
            lane.hand_over(Vec::new());
        }
        self.keyless.hand_over(Vec::new());
        all
    }

    /// Every registered slot, keyed and keyless.
    #[allow(dead_code)] // not used by every build that includes this file
    pub(crate) fn all(&self) -> SlotList<K, O> {
        let state = self.state.lock();
        let keyed = state.keyed.iter().map(|(_, s)| s.clone());
        keyed.chain(state.keyless.iter().cloned()).collect()
    }

    /// Every lane, keyed and keyless (for the counters).
    #[allow(dead_code)] // not used by every build that includes this file
    pub(crate) fn lanes(&self) -> Vec<Arc<Lane<K, O>>> {
        let mut lanes: Vec<_> = self.table.lanes().cloned().collect();
        lanes.push(self.keyless.clone());
        lanes
    }

    /// How many observers are registered.
    pub(crate) fn len(&self) -> usize {
        let state = self.state.lock();
        state.keyed.len() + state.keyless.len()
    }
}

impl<K, O: ?Sized> Drop for Registry<K, O> {
    fn drop(&mut self) {
        // Lanes and slots point at each other: empty every lane, so that both can go.
        let lanes = std::iter::successors(Some(&self.table), |t| t.next.get().map(|b| &**b))
            .flat_map(|t| t.entries.iter().filter_map(OnceLock::get))
            .chain([&self.keyless]);
        for lane in lanes {
            drop(std::mem::take(&mut *lane.slots.lock()));
            drop(lane.pending.lock().take());
        }
    }
}

/// The observers of `key`, in subscription order.
fn keyed_list<K: Key, O: ?Sized>(state: &State<K, O>, key: &K) -> LaneList<K, O> {
    state
        .keyed
        .iter()
        .filter(|(k, _)| k == key)
        .map(|(_, s)| Entry::of(s))
        .collect()
}
