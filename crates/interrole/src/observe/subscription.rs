//! The guard that keeps an observer subscribed.

use std::fmt;
use std::sync::{Arc, Weak};

/// One registration of an observer, as its [`Subscription`] sees it.
pub(crate) trait Registered: Send + Sync {
    /// The registration's id, unique within its hub.
    fn id(&self) -> u64;
    /// Whether the observer still receives events.
    fn is_active(&self) -> bool;
    /// Stops calls to the observer; returns once a call under way on another thread has
    /// ended, unless the caller is itself inside an observer call (then only new calls stop).
    fn stop(&self);
    /// Stops calls to the observer without waiting for one under way (called from inside the
    /// observer's own call).
    fn stop_now(&self);
}

/// Where a registration is routed from: a hub.
pub(crate) trait Unregister: Send + Sync {
    /// Removes one holder of registration `id`; returns whether that ended it.
    fn unregister(&self, id: u64) -> bool;
}

/// Keeps an observer subscribed; dropping it unsubscribes.
///
/// After the drop returns, the observer receives nothing more: a call under way on another
/// thread is waited for. The one exception keeps re-entrant use deadlock-free: dropped from inside
/// an observer call (its own or another's), the guard does not wait for a call under way on
/// another thread, though no new call starts. For an async observer, the drop also discards what
/// its mailbox still holds; an `on_next` already running runs to its end.
///
/// [`Subscription::detach`] keeps the observer subscribed for the life of the bus instead.
///
/// # Subscribing the same observer twice
///
/// An observer subscribed again, as the same `Arc`, to the route it is already registered on
/// (the same event type, or every event) is not registered a second time: the new guard shares
/// the first registration. The observer is still called once per event and gets `on_completed`
/// once; it stays subscribed until the last of its guards is dropped, and both guards report the
/// same [`id`](Subscription::id). Subscribed to two different routes (one type, and every event),
/// it is two registrations: it is called once per route that an event takes, and calls made
/// through the two may overlap. A closure or an observer passed by value is a new observer each
/// time.
#[must_use = "dropping the subscription unsubscribes"]
pub struct Subscription {
    slot: Option<Arc<dyn Registered>>,
    hub: Option<Weak<dyn Unregister>>,
    on_cancel: Option<Box<dyn FnOnce() + Send + Sync>>,
}

impl Subscription {
    pub(crate) fn new(slot: Arc<dyn Registered>, hub: Weak<dyn Unregister>) -> Self {
        Self {
            slot: Some(slot),
            hub: Some(hub),
            on_cancel: None,
        }
    }

    pub(crate) fn inactive() -> Self {
        Self {
            slot: None,
            hub: None,
            on_cancel: None,
        }
    }

    /// Adds work to do when the subscription is cancelled (after the slot is deactivated).
    pub(crate) fn on_cancel(mut self, f: impl FnOnce() + Send + Sync + 'static) -> Self {
        self.on_cancel = Some(Box::new(f));
        self
    }

    /// What cuts the observer off from inside its own call (an async observer whose mailbox
    /// overflowed under `Overflow::Disconnect`): unregisters it, stops new calls, waits for none.
    pub(crate) fn disconnector(&self) -> impl Fn() + Send + Sync + 'static {
        let slot = self.slot.as_ref().map(Arc::downgrade);
        let hub = self.hub.clone();
        move || {
            let slot = slot.as_ref().and_then(Weak::upgrade);
            let hub = hub.as_ref().and_then(Weak::upgrade);
            if let (Some(hub), Some(slot)) = (hub, slot) {
                hub.unregister(slot.id());
                slot.stop_now();
            }
        }
    }

    /// Whether the observer still receives events: false once the bus closed, or once the hub
    /// disconnected it.
    pub fn is_active(&self) -> bool {
        self.slot.as_ref().is_some_and(|s| s.is_active())
    }

    /// The subscription's id, unique within its hub (0 for a subscription made on a closed hub).
    pub fn id(&self) -> u64 {
        self.slot.as_ref().map_or(0, |s| s.id())
    }

    /// Unsubscribes now; the same as dropping the guard.
    pub fn unsubscribe(self) {
        drop(self)
    }

    /// Keeps the observer subscribed until the bus closes, dropping the guard without
    /// unsubscribing.
    pub fn detach(mut self) {
        self.slot = None;
        self.on_cancel = None;
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        let Some(slot) = self.slot.take() else {
            return;
        };
        if let Some(hub) = self.hub.as_ref().and_then(Weak::upgrade) {
            if !hub.unregister(slot.id()) && slot.is_active() {
                // The same observer, subscribed again on the same route, shares this
                // registration: it stays until its last holder lets go.
                return;
            }
        }
        // First wake whatever the observer's call may be waiting on (a full mailbox), so that
        // waiting for that call below is short.
        if let Some(f) = self.on_cancel.take() {
            f();
        }
        slot.stop();
    }
}

impl fmt::Debug for Subscription {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Subscription")
            .field("id", &self.id())
            .field("active", &self.is_active())
            .finish()
    }
}
