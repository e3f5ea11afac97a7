//! The hub: fans each event out to the observers of its type, isolated from one another.
//!
//! # How a dispatch runs
//!
//! 1. The publisher finds the lane of the event's type tag (see `registry.rs`): a lookup by the
//!    tag's precomputed fingerprint in a table that only grows, with no lock and no reference
//!    count. A lane holds the observers of one type; the observers of every event are another
//!    lane. Publishing costs in proportion to the observers that match, not to all observers.
//! 2. Each lane is dispatched under its gate, taken once per dispatch: never two calls at once
//!    on one observer, and nothing after its guard is dropped. Each call runs under
//!    `catch_unwind`; a panic goes to that observer's own `on_error`.
//! 3. Sequential or parallel: entering a rayon pool from outside costs far more than a cheap
//!    observer call (the figures are in `docs/benchmarks.md`), so the hub calls observers one
//!    after the other unless the measured cost of the dispatch (sampled: the first dispatches
//!    after the lane changed, then one in 64, timed as a whole) exceeds the parallel threshold
//!    (50 µs by default) and there are at least two observers. On a tokio multi-thread worker, the parallel region runs
//!    inside `block_in_place`, so the runtime moves its other tasks elsewhere instead of stalling
//!    behind it.
//! 4. A publish made from inside an observer call (on any bus of the process) is queued on that
//!    thread and delivered once the current event has reached all its observers, depth-first:
//!    the events an observer's call publishes come right after the event that caused them, before
//!    events queued earlier. No publish ever waits for a gate held by its own thread.
//! 5. The gate of a lane is the only lock held while observers run. Another thread's publish of
//!    the same type waits for it; nothing that must wait runs under it: an async observer's push
//!    into a full mailbox under `Overflow::Block` is queued like a publish and waits once the
//!    dispatch has let go of its lanes, before what the dispatch's observers published.
//! 6. User code can unwind through a publish (a payload's `Serialize`, run by a network
//!    transport): the thread's re-entrancy state is restored by a guard ([`Entered`]), so the
//!    thread's later publishes are delivered as usual. Events are dropped where a panicking
//!    payload `Drop` cannot unwind through the hub's state ([`drop_guarded`]).

use std::fmt;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use interrole_core::{InterRoleEvent, TypeTag};
use rayon::prelude::*;

use super::pool::{pool, pool_threads};
use super::reentry::{
    Group, Item, Target, capture, deferred, dispatch, drain, enter, in_callback, push, run_group,
};
use super::registry::{Entry, Key, Lane, Registry, Slot};
use super::unwind::{drop_event, drop_payload, run_guarded};
use crate::meters::Meters;
use crate::observe::observer::{Observable, Observer, ObserverError};
use crate::observe::subscription::{Registered, Subscription, Unregister};

pub(crate) type DynObserver = dyn Observer<InterRoleEvent>;
pub(crate) type HubSlot = Slot<TypeTag, DynObserver>;
type HubLane = Lane<TypeTag, DynObserver>;
type HubEntry = Entry<TypeTag, DynObserver>;
type HubRegistry = Registry<TypeTag, DynObserver>;

impl Key for TypeTag {
    #[inline]
    fn fingerprint(&self) -> u64 {
        TypeTag::fingerprint(self)
    }
}

/// A lane's dispatches are timed (as a whole: two clock reads) on its first dispatches after its
/// observers changed, then on one dispatch in this many. A clock read costs more than a cheap
/// observer call (`docs/benchmarks.md`), so timing is kept rare; observers that turn heavy are
/// still noticed within this many dispatches.
const MEASURE_EVERY: u64 = 64;

/// How the hub calls the observers of one event.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum Dispatch {
    /// Sequential while that is cheaper, parallel (rayon) when the measured cost of a route's
    /// observers exceeds the threshold. The default.
    #[default]
    Adaptive,
    /// Always one after the other, on the publishing thread.
    Sequential,
    /// Always in parallel on the dispatch pool, when a route has two observers or more.
    Parallel,
}

/// How a hub dispatches: the mode, the threshold for going parallel, the pool size.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DispatchConfig {
    /// The mode.
    pub mode: Dispatch,
    /// In [`Dispatch::Adaptive`] mode, the estimated cost of one event's observer calls above
    /// which they run in parallel.
    pub parallel_threshold: Duration,
}

impl Default for DispatchConfig {
    fn default() -> Self {
        Self {
            mode: Dispatch::Adaptive,
            parallel_threshold: Duration::from_micros(50),
        }
    }
}

/// Counters of a hub, as returned by [`Hub::stats`]. Every figure counts since the hub was made.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub struct HubStats {
    /// Events dispatched.
    pub dispatched: u64,
    /// Observer calls made with an event (`on_next`).
    pub delivered: u64,
    /// Dispatches that ran in parallel.
    pub parallel_dispatches: u64,
    /// Observer calls that panicked (each was routed to that observer's `on_error`).
    pub panics: u64,
    /// Events dropped for async observers whose mailbox was full (each reported to its observer).
    pub lagged: u64,
    /// Observers currently subscribed.
    pub observers: usize,
}

#[derive(Debug, Default)]
pub(crate) struct Counters {
    /// Events that found no observer (the others are counted by the lanes they went through).
    pub(crate) unobserved: AtomicU64,
    pub(crate) parallel: AtomicU64,
    pub(crate) panics: AtomicU64,
    pub(crate) lagged: AtomicU64,
}

/// The hub was closed: the bus it belongs to has completed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the hub is closed")]
pub struct HubClosed;

/// The observable hub: an [`Observable<InterRoleEvent>`] that fans each event out to the
/// observers registered for its type tag and to those registered for every event.
///
/// Every [`Bus`](crate::Bus) owns one; a hub can also be used alone, in one process, with no
/// transport. Cheap to clone: clones share the hub.
///
/// ```
/// use std::sync::Arc;
/// use std::sync::atomic::{AtomicUsize, Ordering};
/// use interrole::{EventId, Hub, InstanceId, InterRoleEvent, Observable, Observer};
///
/// struct Count(AtomicUsize);
/// impl Observer<InterRoleEvent> for Count {
///     fn on_next(&self, _: &InterRoleEvent) { self.0.fetch_add(1, Ordering::Relaxed); }
/// }
///
/// #[derive(serde::Serialize, serde::Deserialize)]
/// struct Ping;
/// interrole::impl_event!(Ping = "example.ping");
///
/// let hub = Hub::new();
/// let count = Arc::new(Count(AtomicUsize::new(0)));
/// let guard = hub.subscribe(count.clone());
/// let id = EventId { sender: InstanceId::new("me")?, seq: 1 };
/// hub.publish(InterRoleEvent::new(id, Ping))?;
/// assert_eq!(count.0.load(Ordering::Relaxed), 1);
/// drop(guard); // unsubscribed
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Clone)]
pub struct Hub {
    pub(crate) inner: Arc<HubInner>,
}

pub(crate) struct HubInner {
    registry: HubRegistry,
    config: DispatchConfig,
    /// `config.parallel_threshold` in nanoseconds, converted once.
    threshold_ns: u64,
    pub(crate) counters: Counters,
    /// The bus's metrics handles (no-ops for a hub made alone).
    pub(crate) meters: Meters,
    closed: AtomicBool,
    /// The topic and instance of the bus this hub belongs to, for the deliver spans.
    #[cfg(feature = "opentelemetry")]
    pub(crate) trace_labels: std::sync::OnceLock<crate::trace::Labels>,
}

/// What surrounds each observer call of one dispatch: nothing, or (feature `opentelemetry`) an
/// observer span within the event's deliver span. A type parameter, so that the common dispatch
/// is compiled with nothing around its calls.
pub(crate) trait Around: Sync {
    /// Runs `call`, the call of the observer whose id `id` gives (asked only when needed: it
    /// reads the observer's slot, a cache line the common call does not touch).
    fn around(&self, id: impl FnOnce() -> u64, event: &InterRoleEvent, call: impl FnOnce());
}

/// Nothing around the calls.
struct Bare;

impl Around for Bare {
    #[inline(always)]
    fn around(&self, _: impl FnOnce() -> u64, _: &InterRoleEvent, call: impl FnOnce()) {
        call()
    }
}

/// Each call in an observer span, a child of the deliver span.
#[cfg(feature = "opentelemetry")]
struct Traced(tracing::Span);

#[cfg(feature = "opentelemetry")]
impl Around for Traced {
    fn around(&self, id: impl FnOnce() -> u64, event: &InterRoleEvent, call: impl FnOnce()) {
        crate::trace::observer(&self.0, id(), event).in_scope(call)
    }
}

impl Default for Hub {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Debug for Hub {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Hub")
            .field("observers", &self.inner.registry.len())
            .field("config", &self.inner.config)
            .field("closed", &self.is_closed())
            .finish()
    }
}

impl Hub {
    /// A hub with the default [`DispatchConfig`].
    pub fn new() -> Self {
        Self::with_config(DispatchConfig::default())
    }

    /// A hub with the given dispatch configuration.
    pub fn with_config(config: DispatchConfig) -> Self {
        Self::with_meters(config, Meters::disabled())
    }

    /// A hub that reports to `meters` (a bus's hub).
    pub(crate) fn with_meters(config: DispatchConfig, meters: Meters) -> Self {
        Self {
            inner: Arc::new(HubInner {
                registry: Registry::new(),
                config,
                threshold_ns: u64::try_from(config.parallel_threshold.as_nanos())
                    .unwrap_or(u64::MAX),
                counters: Counters::default(),
                meters,
                closed: AtomicBool::new(false),
                #[cfg(feature = "opentelemetry")]
                trace_labels: std::sync::OnceLock::new(),
            }),
        }
    }

    /// Registers `observer` for events whose tag is `tag` only.
    pub fn subscribe_tag(&self, tag: TypeTag, observer: Arc<DynObserver>) -> Subscription {
        self.inner.register(Some(tag), observer)
    }

    /// Delivers `event` to every observer of its type and of every event, then returns.
    ///
    /// Called from inside an observer call, it queues the event instead and returns at once; the
    /// event is delivered as soon as the current one has reached all its observers.
    ///
    /// # Errors
    /// [`HubClosed`] once [`Hub::complete`] was called.
    pub fn publish(&self, event: InterRoleEvent) -> Result<(), HubClosed> {
        if self.is_closed() {
            return Err(HubClosed);
        }
        if in_callback() {
            push(vec![(
                self.inner.clone() as Arc<dyn Target>,
                Item::Event(event),
            )]);
        } else {
            let children = self.inner.run(&event);
            drop_event(event);
            drain(children);
        }
        Ok(())
    }

    /// Ends the sequence: every observer still subscribed gets `on_completed` once, nothing more
    /// is delivered, and later publishes fail. Called from inside an observer call, it takes
    /// effect once the current dispatch is over. Calling it again does nothing.
    pub fn complete(&self) {
        if self.inner.closed.swap(true, Ordering::AcqRel) {
            return;
        }
        dispatch(&self.inner, Item::Complete);
    }

    /// Tells every observer, whatever its type, about `error` through its `on_error` (one call
    /// at a time per observer, as for events). Used for what concerns them all, such as events
    /// lost on the way to this process. Called from inside an observer call, it is queued like a
    /// publish.
    pub fn report(&self, error: ObserverError) {
        if self.is_closed() {
            return;
        }
        dispatch(&self.inner, Item::Report(error));
    }

    /// Whether [`Hub::complete`] was called.
    pub fn is_closed(&self) -> bool {
        self.inner.closed.load(Ordering::Acquire)
    }

    /// The hub's counters.
    pub fn stats(&self) -> HubStats {
        let c = &self.inner.counters;
        let (mut dispatched, mut delivered) = (c.unobserved.load(Ordering::Relaxed), 0);
        for lane in self.inner.registry.lanes() {
            let (d, n) = lane.counts();
            dispatched += d;
            delivered += n;
        }
        HubStats {
            dispatched,
            delivered,
            parallel_dispatches: c.parallel.load(Ordering::Relaxed),
            panics: c.panics.load(Ordering::Relaxed),
            lagged: c.lagged.load(Ordering::Relaxed),
            observers: self.inner.registry.len(),
        }
    }

    /// Whether some observer was ever registered for `tag` specifically (a lane exists for it).
    pub(crate) fn knows(&self, tag: &TypeTag) -> bool {
        self.inner.registry.lane(tag).is_some()
    }

    /// Whether some observer is registered for `tag` specifically.
    pub fn has_observers_for(&self, tag: &str) -> bool {
        self.inner
            .registry
            .find(TypeTag::fingerprint_of(tag), |k| k.as_str() == tag)
            .is_some_and(|lane| lane.has_observers())
    }
}

impl Observable<InterRoleEvent> for Hub {
    /// Registers `observer` for every event.
    fn subscribe(&self, observer: Arc<DynObserver>) -> Subscription {
        self.inner.register(None, observer)
    }
}

impl HubInner {
    pub(crate) fn register(
        self: &Arc<Self>,
        tag: Option<TypeTag>,
        observer: Arc<DynObserver>,
    ) -> Subscription {
        let identity = Arc::as_ptr(&observer) as *const () as usize;
        self.register_as(tag, observer, identity)
    }

    /// Registers `observer` (an adapter) under the identity of the observer it wraps, so that
    /// subscribing the same observer twice on one route is noticed through the adapter.
    pub(crate) fn register_as(
        self: &Arc<Self>,
        tag: Option<TypeTag>,
        observer: Arc<DynObserver>,
        identity: usize,
    ) -> Subscription {
        match self.registry.insert_as(tag, observer.clone(), identity) {
            Ok(slot) => {
                self.count_observers();
                Subscription::new(
                    slot,
                    Arc::downgrade(self) as std::sync::Weak<dyn Unregister>,
                )
            }
            Err(_) => {
                // Closed: the sequence is over for this observer too.
                run_guarded("on_completed", || observer.on_completed());
                Subscription::inactive()
            }
        }
    }

    /// Sets the observers gauge (subscribe and unsubscribe only).
    fn count_observers(&self) {
        self.meters.set_observers(|| self.registry.len());
    }

    /// Whether the hub was asked to complete (its observers may not have been completed yet).
    pub(crate) fn is_closing(&self) -> bool {
        self.closed.load(Ordering::Acquire)
    }

    /// Delivers to the observers of the event's type, then to those of every event; returns
    /// what the observers published meanwhile.
    fn run(&self, event: &InterRoleEvent) -> Vec<Group> {
        let keyed = self
            .registry
            .lane(event.type_tag())
            .filter(|l| l.has_observers());
        let keyless = Some(self.registry.keyless()).filter(|l| l.has_observers());
        // The lane that paces sampling and keeps the estimate: the keyed one, else the keyless.
        let Some(primary) = keyed.or(keyless) else {
            self.counters.unobserved.fetch_add(1, Ordering::Relaxed);
            self.meters.unobserved.increment(1);
            return Vec::new();
        };
        #[cfg(feature = "opentelemetry")]
        if !event.headers().is_empty() {
            if let Some(span) = crate::trace::deliver(event, self.trace_labels.get()) {
                return self.run_traced(primary, keyed, keyless, event, span);
            }
        }
        self.dispatch(primary, keyed, keyless, event, &Bare)
    }

    /// The dispatch of an event that carries a trace context: out of line, so that the common
    /// dispatch is compiled as without the feature.
    #[cfg(feature = "opentelemetry")]
    #[cold]
    #[inline(never)]
    fn run_traced(
        &self,
        primary: &HubLane,
        keyed: Option<&HubLane>,
        keyless: Option<&HubLane>,
        event: &InterRoleEvent,
        span: tracing::Span,
    ) -> Vec<Group> {
        let traced = Traced(span);
        traced
            .0
            .in_scope(|| self.dispatch(primary, keyed, keyless, event, &traced))
    }

    /// [`HubInner::run`] once the lanes are found.
    #[inline]
    fn dispatch<A: Around>(
        &self,
        primary: &HubLane,
        keyed: Option<&HubLane>,
        keyless: Option<&HubLane>,
        event: &InterRoleEvent,
        around: &A,
    ) -> Vec<Group> {
        let measure = primary.tick(MEASURE_EVERY);
        let parallel = match self.config.mode {
            Dispatch::Sequential => false,
            Dispatch::Parallel => true,
            Dispatch::Adaptive => primary.estimate_ns() >= self.threshold_ns,
        };
        if measure || parallel {
            return self
                .run_timed_or_parallel(primary, keyed, keyless, event, measure, parallel, around);
        }
        self.run_sequential(keyed, keyless, event, around)
    }

    /// The common dispatch, kept small: one lane after the other, on this thread.
    #[inline]
    fn run_sequential<A: Around>(
        &self,
        keyed: Option<&HubLane>,
        keyless: Option<&HubLane>,
        event: &InterRoleEvent,
        around: &A,
    ) -> Vec<Group> {
        let entered = enter();
        if let Some(lane) = keyed {
            self.run_lane(lane, event, 1, around);
        }
        if let Some(lane) = keyless {
            self.run_lane(lane, event, u64::from(keyed.is_none()), around);
        }
        entered.leave()
    }

    /// A dispatch that is timed (one in [`MEASURE_EVERY`]) or may go parallel: out of line, so
    /// that the common one stays small.
    #[inline(never)]
    #[allow(clippy::too_many_arguments)]
    fn run_timed_or_parallel<A: Around>(
        &self,
        primary: &HubLane,
        keyed: Option<&HubLane>,
        keyless: Option<&HubLane>,
        event: &InterRoleEvent,
        measure: bool,
        parallel: bool,
        around: &A,
    ) -> Vec<Group> {
        let parallel = parallel
            && keyed.map_or(0, |l| l.len()) + keyless.map_or(0, |l| l.len()) >= 2
            && pool_threads() >= 2;
        let started = measure.then(Instant::now);
        let children = if parallel {
            self.counters.parallel.fetch_add(1, Ordering::Relaxed);
            self.run_parallel(keyed, keyless, event, around)
        } else {
            self.run_sequential(keyed, keyless, event, around)
        };
        if let Some(started) = started {
            primary.record_cost(started.elapsed().as_nanos() as u64);
        }
        children
    }

    /// Calls the observers of one lane, one after the other, under the lane's gate.
    #[inline]
    fn run_lane<A: Around>(
        &self,
        lane: &HubLane,
        event: &InterRoleEvent,
        dispatched: u64,
        around: &A,
    ) {
        let lane = lane.lock();
        let mut delivered = 0;
        for entry in lane.entries() {
            delivered += u64::from(self.invoke(entry, event, around));
        }
        lane.count(dispatched, delivered);
        drop(lane);
        self.count_deliveries(event, delivered);
    }

    /// Counts `delivered` observer calls with `event` in the metrics (with no lane held). Out of
    /// line, so that the dispatch loop is compiled as it was without metrics.
    #[inline(never)]
    fn count_deliveries(&self, event: &InterRoleEvent, delivered: u64) {
        if delivered > 0 {
            self.meters
                .tag(event.type_tag())
                .deliveries
                .increment(delivered);
        }
    }

    fn run_parallel<A: Around>(
        &self,
        keyed: Option<&HubLane>,
        keyless: Option<&HubLane>,
        event: &InterRoleEvent,
        around: &A,
    ) -> Vec<Group> {
        // Both lanes are held for the whole parallel region: each observer is called once, on
        // some pool thread, and no other dispatch reaches these observers meanwhile.
        let keyed = keyed.map(|l| l.lock());
        let keyless = keyless.map(|l| l.lock());
        let keyed_len = keyed.as_ref().map_or(0, |l| l.entries().len());
        let entries: Vec<&HubEntry> = keyed
            .iter()
            .chain(keyless.iter())
            .flat_map(|l| l.entries())
            .collect();
        let work = || {
            pool().install(|| {
                entries
                    .par_iter()
                    .map(|entry| {
                        let entered = enter();
                        let delivered = self.invoke(entry, event, around);
                        (delivered, entered.leave())
                    })
                    .collect::<Vec<_>>()
            })
        };
        let results = match tokio::runtime::Handle::try_current() {
            Ok(h) if h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread => {
                tokio::task::block_in_place(work)
            }
            _ => work(),
        };
        let mut delivered = [0u64; 2];
        let mut children = Vec::new();
        for (i, (d, mut c)) in results.into_iter().enumerate() {
            delivered[usize::from(i >= keyed_len)] += u64::from(d);
            children.append(&mut c);
        }
        if let Some(lane) = &keyed {
            lane.count(1, delivered[0]);
        }
        if let Some(lane) = &keyless {
            lane.count(u64::from(keyed.is_none()), delivered[1]);
        }
        drop((keyed, keyless));
        self.count_deliveries(event, delivered[0] + delivered[1]);
        children
    }

    /// Calls one observer with one event; the caller holds the observer's lane. Returns whether
    /// `on_next` was called.
    ///
    /// The common call (no panic) stays small; the panic path is out of line.
    #[inline]
    fn invoke<A: Around>(&self, entry: &HubEntry, event: &InterRoleEvent, around: &A) -> bool {
        entry
            .call(|observer| {
                around.around(
                    || entry.slot().id(),
                    event,
                    || {
                        if let Err(payload) =
                            catch_unwind(AssertUnwindSafe(|| observer.on_next(event)))
                        {
                            self.panicked(entry.slot(), observer, event, payload);
                        }
                    },
                )
            })
            .is_some()
    }

    /// An observer's `on_next` panicked: count it, log it, and tell the observer.
    #[cold]
    #[inline(never)]
    fn panicked(
        &self,
        slot: &HubSlot,
        observer: &DynObserver,
        event: &InterRoleEvent,
        payload: Box<dyn std::any::Any + Send>,
    ) {
        self.counters.panics.fetch_add(1, Ordering::Relaxed);
        self.meters.tag(event.type_tag()).panics.increment(1);
        let error = ObserverError::panicked(&*payload);
        tracing::warn!(
            observer = slot.id(),
            event = %event.id(),
            type_tag = %event.type_tag(),
            %error,
            "observer panicked; routed to its on_error"
        );
        run_guarded("on_error", || observer.on_error(error));
        drop_payload(payload);
    }

    fn report_now(&self, error: ObserverError) {
        for slot in self.registry.all() {
            let e = error.clone();
            slot.deliver(|observer| run_guarded("on_error", || observer.on_error(e)));
        }
    }

    fn complete_now(&self) {
        for slot in self.registry.close() {
            slot.finish(|observer| run_guarded("on_completed", || observer.on_completed()));
        }
        self.count_observers();
    }
}

impl Target for HubInner {
    fn run_item(&self, item: Item) -> Vec<Group> {
        let hub = self;
        match item {
            Item::Event(event) => {
                let children = hub.run(&event);
                drop_event(event);
                children
            }
            // Like `on_next`, `on_error` and `on_completed` run with the lane held: what they publish
            // is queued, and delivered once they return.
            Item::Report(error) => capture(|| hub.report_now(error)).1,
            Item::Complete => capture(|| hub.complete_now()).1,
            Item::Wait(wait) => {
                wait();
                Vec::new()
            }
        }
    }
}

impl Unregister for HubInner {
    fn unregister(&self, id: u64) -> bool {
        let removed = self.registry.remove(id);
        if removed {
            self.count_observers();
        }
        removed
    }
}

impl Registered for HubSlot {
    fn id(&self) -> u64 {
        Slot::id(self)
    }

    fn is_active(&self) -> bool {
        Slot::is_active(self)
    }

    fn stop(&self) {
        // Inside an observer call, waiting for a call under way on another thread could wait
        // for this very thread: only new calls are stopped then.
        self.deactivate(!in_callback());
    }

    fn stop_now(&self) {
        self.deactivate(false);
    }
}

/// One publish on a bus: `send` numbers the event and hands it to the transport (whose
/// in-process deliveries are queued on this thread), then, with `local`, the bus's own hub gets
/// it. The local dispatch and the transport's deliveries form one group: all of them run before
/// anything their observers publish. The common case (nothing delivered in process through the
/// transport, not inside an observer call) allocates nothing here.
pub(crate) fn publish_group<T, E>(
    hub: &Arc<HubInner>,
    local: bool,
    send: impl FnOnce() -> Result<(InterRoleEvent, T), E>,
) -> Result<T, E> {
    if in_callback() {
        return deferred(|| {
            let (event, value) = send()?;
            if local {
                dispatch(hub, Item::Event(event));
            }
            Ok(value)
        });
    }
    let entered = enter();
    let sent = send();
    let remote = entered.leave();
    let mut children = match &sent {
        Ok((event, _)) if local => hub.run(event),
        _ => Vec::new(),
    };
    if !remote.is_empty() {
        let mut caused = run_group(remote.into_iter().flatten().collect());
        children.append(&mut caused);
    }
    drain(children);
    sent.map(|(event, value)| {
        drop_event(event);
        value
    })
}
