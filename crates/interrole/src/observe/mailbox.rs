//! Async observers: a bounded mailbox per observer, drained by its own task.
//!
//! The hub calls the mailbox synchronously (a push that never runs user code); the observer's
//! task takes events out in order and awaits the observer for each. What happens when the mailbox
//! is full is the [`Overflow`] policy chosen at subscribe time. Lag is never silent: before the
//! next event it receives, the observer's `on_error` is told how many it missed
//! ([`ObserverError::Lagged`]), the hub's `lagged` counter grows, and a `tracing` warning is
//! logged.

use std::collections::VecDeque;
use std::fmt;
use std::marker::PhantomData;
use std::ops::Deref;
use std::sync::OnceLock;
use std::time::Duration;

use async_trait::async_trait;
use futures::FutureExt;
use interrole_core::{Event, InterRoleEvent, PayloadError};
use parking_lot::{Condvar, Mutex};
use tokio::sync::Notify;

use super::observer::{Observer, ObserverError};
use crate::dispatch::hub::HubInner;
use crate::dispatch::reentry::after_dispatch;
use crate::dispatch::unwind::{drop_guarded, drop_payload};
use std::sync::Arc;
use std::sync::atomic::Ordering;

/// Receives values asynchronously: the async form of [`Observer`].
///
/// Calls to one async observer never overlap, and arrive in publish order per publisher. A panic
/// in `on_next` (or in decoding its value) is caught and handed to `on_error`.
///
/// # Cancel safety
///
/// The bus never cancels these futures part-way: each call runs to its end in the observer's own
/// task, the next one starts after it. Dropping the [`Subscription`](crate::Subscription) lets the
/// call under way finish and discards what the mailbox still holds; closing the bus delivers what
/// it holds, then calls `on_completed`.
#[async_trait]
pub trait AsyncObserver<T: Send + 'static>: Send + Sync + 'static {
    /// A new value.
    async fn on_next(&self, value: T);

    /// Something went wrong for this observer (see [`ObserverError`]). Logs by default.
    async fn on_error(&self, error: ObserverError) {
        tracing::warn!(%error, "async observer error");
    }

    /// The bus closed; everything the mailbox held has been delivered. Does nothing by default.
    async fn on_completed(&self) {}
}

#[async_trait]
impl<T: Send + 'static, O: AsyncObserver<T> + ?Sized> AsyncObserver<T> for Arc<O> {
    async fn on_next(&self, value: T) {
        (**self).on_next(value).await
    }
    async fn on_error(&self, error: ObserverError) {
        (**self).on_error(error).await
    }
    async fn on_completed(&self) {
        (**self).on_completed().await
    }
}

/// What to do when an async observer's mailbox is full.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Overflow {
    /// The publisher waits for room, up to `timeout`; then the event is dropped for this
    /// observer and counted as missed. Waiting blocks the publishing thread: do not use it when
    /// the observer's task runs on a current-thread runtime shared with the publisher.
    Block {
        /// The longest wait for room.
        timeout: Duration,
    },
    /// The oldest queued event is dropped to make room. The default.
    DropOldest,
    /// The new event is dropped.
    DropNewest,
    /// The observer is unsubscribed: it receives what its mailbox holds, then
    /// [`ObserverError::Disconnected`], then nothing.
    Disconnect,
}

/// The mailbox of an async observer: its capacity and overflow policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Mailbox {
    /// How many events may wait for the observer.
    pub capacity: usize,
    /// What to do when that many are waiting.
    pub overflow: Overflow,
}

impl Mailbox {
    /// A mailbox of `capacity` events (at least 1) that drops the oldest when full.
    pub fn bounded(capacity: usize) -> Self {
        Self {
            capacity: capacity.max(1),
            overflow: Overflow::DropOldest,
        }
    }

    /// The same mailbox with another overflow policy.
    pub fn overflow(mut self, overflow: Overflow) -> Self {
        self.overflow = overflow;
        self
    }
}

impl Default for Mailbox {
    /// 1024 events, [`Overflow::DropOldest`].
    fn default() -> Self {
        Self::bounded(1024)
    }
}

/// An event known to carry an `E`, owned, for async observers: dereferences to the `E`, and
/// [`Received::envelope`] gives the sender, sequence number and timestamp.
pub struct Received<E> {
    event: InterRoleEvent,
    _type: PhantomData<fn() -> E>,
}

impl<E: Event> Received<E> {
    /// Checks that `event` carries an `E` (decoding it if it came off the wire).
    ///
    /// # Errors
    /// [`PayloadError`] when it does not.
    pub fn new(event: InterRoleEvent) -> Result<Self, PayloadError> {
        event.try_payload::<E>()?;
        Ok(Self {
            event,
            _type: PhantomData,
        })
    }

    /// The envelope.
    pub fn envelope(&self) -> &InterRoleEvent {
        &self.event
    }

    /// The event's headers.
    pub fn headers(&self) -> &interrole_core::Headers {
        self.event.headers()
    }

    /// The instance that sent the event.
    pub fn sender(&self) -> &interrole_core::InstanceId {
        self.event.sender()
    }

    /// The envelope, giving up the typed view.
    pub fn into_envelope(self) -> InterRoleEvent {
        self.event
    }
}

impl<E: Event> Deref for Received<E> {
    type Target = E;
    fn deref(&self) -> &E {
        self.event
            .payload::<E>()
            .expect("checked when the Received was made")
    }
}

impl<E: Event + fmt::Debug> fmt::Debug for Received<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Received")
            .field("id", self.event.id())
            .field("payload", &**self)
            .finish()
    }
}

/// Values an async observer can be given: envelopes, or typed views of them.
pub trait FromEnvelope: Sized + Send + 'static {
    /// Converts, or says why not.
    ///
    /// # Errors
    /// [`PayloadError`] when the envelope is not what the observer takes.
    fn from_envelope(event: InterRoleEvent) -> Result<Self, PayloadError>;
}

impl FromEnvelope for InterRoleEvent {
    fn from_envelope(event: InterRoleEvent) -> Result<Self, PayloadError> {
        Ok(event)
    }
}

impl<E: Event> FromEnvelope for Received<E> {
    fn from_envelope(event: InterRoleEvent) -> Result<Self, PayloadError> {
        Self::new(event)
    }
}

/// An async observer made of a closure returning a future.
pub(crate) struct AsyncFn<T, F> {
    f: F,
    _values: PhantomData<fn(T)>,
}

impl<T, F> AsyncFn<T, F> {
    pub(crate) fn new(f: F) -> Self {
        Self {
            f,
            _values: PhantomData,
        }
    }
}

#[async_trait]
impl<T, F, Fut> AsyncObserver<T> for AsyncFn<T, F>
where
    T: Send + 'static,
    F: Fn(T) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    async fn on_next(&self, value: T) {
        (self.f)(value).await
    }
}

// ---------------------------------------------------------------------------------------------

struct State {
    queue: VecDeque<InterRoleEvent>,
    missed: u64,
    errors: VecDeque<ObserverError>,
    completed: bool,
    disconnected: bool,
    cancelled: bool,
}

/// The shared half of a mailbox: the hub pushes, the task pops.
pub(crate) struct Queue {
    config: Mailbox,
    state: Mutex<State>,
    space: Condvar,
    ready: Notify,
    hub: std::sync::Weak<HubInner>,
    disconnect: OnceLock<Box<dyn Fn() + Send + Sync>>,
    /// `State::cancelled`, readable without the lock: the task checks it before each event of
    /// the batch it took.
    cancelled: std::sync::atomic::AtomicBool,
}

impl Queue {
    pub(crate) fn new(config: Mailbox, hub: std::sync::Weak<HubInner>) -> Arc<Self> {
        Arc::new(Self {
            config,
            state: Mutex::new(State {
                queue: VecDeque::with_capacity(config.capacity.min(1024)),
                missed: 0,
                errors: VecDeque::new(),
                completed: false,
                disconnected: false,
                cancelled: false,
            }),
            space: Condvar::new(),
            ready: Notify::new(),
            hub,
            disconnect: OnceLock::new(),
            cancelled: std::sync::atomic::AtomicBool::new(false),
        })
    }

    /// Sets what unsubscribes the observer (for [`Overflow::Disconnect`]).
    pub(crate) fn set_disconnect(&self, f: impl Fn() + Send + Sync + 'static) {
        let _ = self.disconnect.set(Box::new(f));
    }

    /// The guard was dropped: discard everything, end the task without `on_completed`.
    pub(crate) fn cancel(&self) {
        let mut s = self.state.lock();
        s.cancelled = true;
        self.cancelled.store(true, Ordering::Release);
        let discarded = std::mem::take(&mut s.queue);
        drop(s);
        self.space.notify_all();
        self.ready.notify_one();
        // Outside the lock: dropping events may run their payloads' `Drop`.
        drop_guarded(discarded);
    }

    /// Waits for room (up to `deadline`) and pushes `event`; when none comes in time, the event
    /// is dropped for this observer and counted as missed. Called with no lane held.
    fn push_when_room(&self, event: InterRoleEvent, deadline: std::time::Instant) {
        let mut s = self.state.lock();
        // Wait in slices, so that a hub closing meanwhile is noticed within one.
        let slice = Duration::from_millis(10);
        while s.queue.len() >= self.config.capacity && !s.cancelled {
            let now = std::time::Instant::now();
            if now >= deadline || self.hub_closing() {
                break;
            }
            self.space.wait_until(&mut s, deadline.min(now + slice));
        }
        if s.cancelled || s.disconnected {
            return;
        }
        let room = s.queue.len() < self.config.capacity && !s.completed;
        if room {
            s.queue.push_back(event);
            drop(s);
        } else {
            s.missed += 1;
            drop(s);
            self.count_lag(&event);
        }
        self.ready.notify_one();
    }

    fn hub_closing(&self) -> bool {
        self.hub.upgrade().is_none_or(|h| h.is_closing())
    }

    /// Counts `event` as dropped for this observer.
    fn count_lag(&self, event: &InterRoleEvent) {
        if let Some(hub) = self.hub.upgrade() {
            hub.counters.lagged.fetch_add(1, Ordering::Relaxed);
            hub.meters.tag(event.type_tag()).lagged.increment(1);
        }
    }
}

/// The observer the hub sees for an async observer: pushes into the mailbox.
pub(crate) struct Pusher(pub(crate) Arc<Queue>);

impl Observer<InterRoleEvent> for Pusher {
    fn on_next(&self, event: &InterRoleEvent) {
        let shared = &self.0;
        let mut s = shared.state.lock();
        if s.cancelled || s.completed || s.disconnected {
            return;
        }
        if s.queue.len() < shared.config.capacity {
            s.queue.push_back(event.clone());
            drop(s);
            shared.ready.notify_one();
            return;
        }
        let mut oldest = None;
        match shared.config.overflow {
            Overflow::DropOldest => {
                oldest = s.queue.pop_front();
                s.queue.push_back(event.clone());
            }
            Overflow::DropNewest => {}
            Overflow::Block { timeout } => {
                // Wait for room, but not here: this call runs with the event type's lane held,
                // and waiting under it would stall every other observer of the type and every
                // other publisher. The hub runs the wait once the dispatch has let go of it.
                drop(s);
                let deadline = std::time::Instant::now() + timeout;
                let (waiter, event) = (shared.clone(), event.clone());
                let wait: Box<dyn FnOnce() + Send> =
                    Box::new(move || waiter.push_when_room(event, deadline));
                match shared.hub.upgrade() {
                    Some(hub) => after_dispatch(hub, wait),
                    None => wait(),
                }
                return;
            }
            Overflow::Disconnect => {
                s.disconnected = true;
                s.missed += 1;
                drop(s);
                shared.count_lag(event);
                shared.ready.notify_one();
                if let Some(f) = shared.disconnect.get() {
                    f();
                }
                return;
            }
        }
        s.missed += 1;
        drop(s);
        shared.count_lag(oldest.as_ref().unwrap_or(event));
        shared.ready.notify_one();
        // The dropped event may hold the last reference to its payload: dropped with no lock
        // held, and a panicking `Drop` is not this observer's panic.
        drop_guarded(oldest);
    }

    fn on_error(&self, error: ObserverError) {
        self.0.state.lock().errors.push_back(error);
        self.0.ready.notify_one();
    }

    fn on_completed(&self) {
        self.0.state.lock().completed = true;
        self.0.ready.notify_one();
    }
}

enum Step {
    Lagged(u64),
    Error(ObserverError),
    /// Events were moved from the queue to the task's batch.
    Batch,
    Disconnected(u64),
    Completed,
    Wait,
    Stop,
}

/// The most events the task takes from the queue at once (one lock, one wake-up of waiting
/// publishers, for all of them).
const BATCH: usize = 64;

/// The observer's task: takes events out in order, a batch at a time, and awaits the observer
/// for each.
pub(crate) async fn drain<T: FromEnvelope>(
    shared: Arc<Queue>,
    observer: Arc<dyn AsyncObserver<T>>,
) {
    let mut batch = VecDeque::new();
    loop {
        if let Some(event) = batch.pop_front() {
            if shared.cancelled.load(Ordering::Acquire) {
                // The guard was dropped: what is left is discarded.
                drop_guarded(std::mem::take(&mut batch));
                drop_guarded(event);
                return;
            }
            next(&shared, &*observer, event).await;
            continue;
        }
        let step = {
            let mut s = shared.state.lock();
            if s.cancelled {
                Step::Stop
            } else if s.missed > 0 && !s.disconnected {
                Step::Lagged(std::mem::take(&mut s.missed))
            } else if let Some(e) = s.errors.pop_front() {
                Step::Error(e)
            } else if !s.queue.is_empty() {
                let n = s.queue.len().min(BATCH);
                batch.extend(s.queue.drain(..n));
                shared.space.notify_all();
                Step::Batch
            } else if s.disconnected {
                Step::Disconnected(std::mem::take(&mut s.missed))
            } else if s.completed {
                Step::Completed
            } else {
                Step::Wait
            }
        };
        match step {
            Step::Stop => return,
            Step::Wait => shared.ready.notified().await,
            Step::Lagged(missed) => {
                tracing::warn!(
                    missed,
                    "async observer lagged; events dropped from its mailbox"
                );
                call_error(&*observer, ObserverError::Lagged { missed }).await;
            }
            Step::Error(error) => call_error(&*observer, error).await,
            Step::Batch => {}
            Step::Disconnected(missed) => {
                let reason = format!(
                    "mailbox of {} events overflowed ({missed} dropped)",
                    shared.config.capacity
                );
                tracing::warn!(%reason, "async observer disconnected");
                call_error(&*observer, ObserverError::Disconnected { reason }).await;
                return;
            }
            Step::Completed => {
                let r = std::panic::AssertUnwindSafe(observer.on_completed())
                    .catch_unwind()
                    .await;
                if let Err(payload) = r {
                    tracing::error!(error = %ObserverError::panicked(&*payload), "async observer on_completed panicked; ignored");
                    drop_payload(payload);
                }
                return;
            }
        }
    }
}

/// Hands one event to the observer. Decoding (the payload's `Deserialize`) and the call both
/// run user code: a panic in either goes to `on_error`, and the task carries on with the next
/// event.
async fn next<T: FromEnvelope>(
    shared: &Queue,
    observer: &dyn AsyncObserver<T>,
    event: InterRoleEvent,
) {
    let call = async {
        match T::from_envelope(event.clone()) {
            Ok(value) => {
                observer.on_next(value).await;
                None
            }
            Err(error) => Some(error),
        }
    };
    match std::panic::AssertUnwindSafe(call).catch_unwind().await {
        Ok(None) => {}
        Ok(Some(error)) => {
            if let Some(hub) = shared.hub.upgrade() {
                hub.meters.tag(event.type_tag()).undecodable.increment(1);
            }
            call_error(observer, ObserverError::from_payload(&event, error)).await;
        }
        Err(payload) => {
            if let Some(hub) = shared.hub.upgrade() {
                hub.counters.panics.fetch_add(1, Ordering::Relaxed);
                hub.meters.tag(event.type_tag()).panics.increment(1);
            }
            let error = ObserverError::panicked(&*payload);
            tracing::warn!(event = %event.id(), %error, "async observer panicked; routed to its on_error");
            drop_payload(payload);
            call_error(observer, error).await;
        }
    }
    drop_guarded(event);
}

async fn call_error<T: Send + 'static>(observer: &dyn AsyncObserver<T>, error: ObserverError) {
    let r = std::panic::AssertUnwindSafe(observer.on_error(error))
        .catch_unwind()
        .await;
    if let Err(payload) = r {
        tracing::error!(error = %ObserverError::panicked(&*payload), "async observer on_error panicked; ignored");
        drop_payload(payload);
    }
}

impl fmt::Debug for Pusher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Pusher")
            .field("config", &self.0.config)
            .finish()
    }
}
