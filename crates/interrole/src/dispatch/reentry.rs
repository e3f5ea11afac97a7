//! Re-entrancy: what is published from inside an observer call is queued on the calling thread
//! and delivered once the current event has reached all its observers, depth-first.
//!
//! A thread is "inside a call" while an [`Entered`] guard lives: an observer call, or a
//! section whose dispatches are held back ([`capture`]). The guard restores the thread's state
//! when user code unwinds. The queue holds [`Item`]s for a [`Target`] (a hub), so that this
//! module knows how to order and run work, not what a hub is.

use std::cell::{Cell, RefCell};
use std::sync::Arc;

use interrole_core::InterRoleEvent;

use super::unwind::drop_guarded;
use crate::observe::observer::ObserverError;

/// What a queued [`Item`] is run by: a hub.
pub(crate) trait Target: Send + Sync {
    /// Runs `item` (with this thread inside a call while observers run); returns what the
    /// observers published meanwhile.
    fn run_item(&self, item: Item) -> Vec<Group>;
}

/// Work queued on a thread for a [`Target`].
pub(crate) enum Item {
    /// An event to dispatch.
    Event(InterRoleEvent),
    /// An error for every observer's `on_error`.
    Report(ObserverError),
    /// The end of the sequence: `on_completed` for every observer.
    Complete,
    /// Work that must wait, and so must not run while a lane is held: an async observer's push
    /// into a full mailbox under `Overflow::Block`. Runs once the dispatch that queued it has let
    /// go of its lanes, before anything its observers published.
    Wait(Box<dyn FnOnce() + Send>),
}

impl Item {
    fn is_wait(&self) -> bool {
        matches!(self, Item::Wait(_))
    }
}

/// One queued item and what runs it.
pub(crate) type Queued = (Arc<dyn Target>, Item);

/// The dispatches of one publish: a publish on a bus with an in-process transport dispatches to
/// several hubs, and they all run before anything that any of them causes.
pub(crate) type Group = Vec<Queued>;

/// This thread's re-entrancy state. Entering and leaving a call touch only `Depth`, a
/// thread-local with no destructor (so reaching it is a plain load); the queue, whose `Vec`
/// needs one, is touched only when something was queued.
struct Depth {
    /// How many observer calls (or deferred sections) this thread is inside.
    depth: Cell<u32>,
    /// The queue's length.
    queued: Cell<usize>,
}

/// This thread is inside an observer call (or a deferred section) until this is dropped or
/// [`Entered::leave`] is called: what is published meanwhile is queued. Restores the thread's
/// state even when user code run inside (an observer, a payload's `Serialize`, a transport)
/// unwinds, as tracing-core's `Entered` does for the current dispatcher: a publish that panics
/// leaves nothing behind, and the thread's later publishes are delivered as usual.
#[must_use]
pub(crate) struct Entered {
    /// The queue's length on entering: what the call queues comes after.
    mark: usize,
}

impl Entered {
    /// Leaves the call; returns what was queued since entering.
    #[inline]
    pub(crate) fn leave(self) -> Vec<Group> {
        let mark = self.mark;
        // The normal way out: the state is restored here, not by the drop.
        std::mem::forget(self);
        let queued = DEPTH.with(|d| {
            d.depth.set(d.depth.get() - 1);
            d.queued.get()
        });
        if queued == mark {
            return Vec::new();
        }
        let mut caused = QUEUE.with(|q| q.borrow_mut().split_off(mark));
        DEPTH.with(|d| d.queued.set(mark));
        waits_first(&mut caused);
        caused
    }
}

/// Puts the waits a dispatch queued (see [`Item::Wait`]) before the publishes its observers
/// made, keeping each kind in order: an async observer then gets the event it waited for before
/// any event that the same dispatch caused.
fn waits_first(caused: &mut [Group]) {
    let is_wait = |g: &Group| g.first().is_some_and(|(_, item)| item.is_wait());
    if caused.iter().any(is_wait) {
        caused.sort_by_key(|g| !is_wait(g));
    }
}

impl Drop for Entered {
    /// Only reached when unwinding: the call did not finish, so what it queued is discarded
    /// (the publish that queued it failed with the panic the caller is about to see), and the
    /// depth is lowered again.
    #[cold]
    fn drop(&mut self) {
        let mark = self.mark;
        DEPTH.with(|d| d.depth.set(d.depth.get().saturating_sub(1)));
        let queued = DEPTH.with(|d| d.queued.get());
        if queued > mark {
            let discarded = QUEUE.with(|q| q.try_borrow_mut().map(|mut q| q.split_off(mark)));
            DEPTH.with(|d| d.queued.set(mark));
            if let Ok(discarded) = discarded {
                // Dropping events runs their payloads' `Drop`: a second panic while unwinding
                // would abort the process.
                drop_guarded(discarded);
            }
        }
    }
}

thread_local! {
    static DEPTH: Depth = const {
        Depth {
            depth: Cell::new(0),
            queued: Cell::new(0),
        }
    };
    /// What was published on this thread while inside a call, in order, one group per publish.
    static QUEUE: RefCell<Vec<Group>> = const { RefCell::new(Vec::new()) };
}

/// Whether this thread is inside an observer call of some hub (or a deferred section).
#[inline]
pub(crate) fn in_callback() -> bool {
    DEPTH.with(|d| d.depth.get() > 0)
}

/// Enters a call on this thread; what is published until the guard is left or dropped is queued.
#[inline]
pub(crate) fn enter() -> Entered {
    DEPTH.with(|d| {
        d.depth.set(d.depth.get() + 1);
        Entered {
            mark: d.queued.get(),
        }
    })
}

/// Runs `wait` once the current dispatch has let go of its lanes (see [`Item::Wait`]); outside
/// an observer call, runs it now.
pub(crate) fn after_dispatch(target: Arc<dyn Target>, wait: Box<dyn FnOnce() + Send>) {
    if in_callback() {
        push(vec![(target, Item::Wait(wait))]);
    } else {
        wait();
    }
}

/// Queues one group on this thread (inside a call).
pub(crate) fn push(group: Group) {
    QUEUE.with(|q| q.borrow_mut().push(group));
    DEPTH.with(|d| d.queued.set(d.queued.get() + 1));
}

/// Runs `item` on `target` now, then what it caused; inside a call, queues it instead.
pub(crate) fn dispatch<T: Target + 'static>(target: &Arc<T>, item: Item) {
    if in_callback() {
        push(vec![(target.clone() as Arc<dyn Target>, item)]);
        return;
    }
    let children = target.run_item(item);
    drain(children);
}

/// Runs `f` with every hub dispatch it causes on this thread deferred and grouped as one publish,
/// then delivers them; inside an observer call, the group joins that call's queue instead.
pub(crate) fn deferred<R>(f: impl FnOnce() -> R) -> R {
    let (result, queued) = capture(f);
    release(queued);
    result
}

/// Runs `f` with every hub dispatch it causes on this thread held back; returns them for
/// [`release`], so that the caller can let go of its locks first.
pub(crate) fn capture<R>(f: impl FnOnce() -> R) -> (R, Vec<Group>) {
    let entered = enter();
    let result = f();
    (result, entered.leave())
}

/// Delivers what [`capture`] held back, as one group; inside an observer call, the group joins
/// that call's queue instead.
pub(crate) fn release(mut produced: Vec<Group>) {
    // One group for everything; most often there was one publish (no copy then).
    let group: Group = match produced.len() {
        0 => return,
        1 => produced.pop().unwrap_or_default(),
        _ => produced.into_iter().flatten().collect(),
    };
    if group.is_empty() {
        return;
    }
    if in_callback() {
        push(group);
    } else {
        drain(run_group(group));
    }
}

/// Runs every dispatch of one publish; returns what they caused, in order.
pub(crate) fn run_group(group: Group) -> Vec<Group> {
    let mut children = Vec::new();
    for (target, item) in group {
        let mut caused = target.run_item(item);
        if children.is_empty() {
            children = caused;
        } else {
            children.append(&mut caused);
        }
    }
    children
}

/// Delivers queued publishes depth-first: every dispatch of one publish runs, then what they
/// caused, before the publishes queued after it.
#[inline]
pub(crate) fn drain(groups: Vec<Group>) {
    if groups.capacity() == 0 {
        // Nothing was queued (the common case): nothing to deliver and nothing allocated, so
        // nothing to free either; skips the call to `Vec`'s drop.
        std::mem::forget(groups);
    } else {
        drain_some(groups);
    }
}

#[inline(never)]
fn drain_some(groups: Vec<Group>) {
    let mut stack = groups;
    stack.reverse();
    while let Some(group) = stack.pop() {
        let mut children = run_group(group);
        children.reverse();
        stack.append(&mut children);
    }
}
