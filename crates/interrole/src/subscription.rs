//! The guard that keeps an observer subscribed.

use std::fmt;
use std::sync::Weak;

use crate::hub::{HubInner, HubSlot, in_callback};
use crate::sync::Arc;

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
    slot: Option<Arc<HubSlot>>,
    hub: Weak<HubInner>,
    on_cancel: Option<Box<dyn FnOnce() + Send + Sync>>,
}

impl Subscription {
    pub(crate) fn new(slot: Arc<HubSlot>, hub: Weak<HubInner>) -> Self {
        Self {
            slot: Some(slot),
            hub,
            on_cancel: None,
        }
    }

    pub(crate) fn inactive() -> Self {
        Self {
            slot: None,
            hub: Weak::new(),
            on_cancel: None,
        }
    }

    /// Adds work to do when the subscription is cancelled (after the slot is deactivated).
    pub(crate) fn on_cancel(mut self, f: impl FnOnce() + Send + Sync + 'static) -> Self {
        self.on_cancel = Some(Box::new(f));
        self
    }

    pub(crate) fn slot_weak(&self) -> Weak<HubSlot> {
        self.slot.as_ref().map_or_else(Weak::new, Arc::downgrade)
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
        if let Some(hub) = self.hub.upgrade() {
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
        slot.deactivate(!in_callback());
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
