//! Where user code may unwind through the dispatch core: observer calls whose panic has nowhere
//! else to go, and the drops of events (the last reference to an event drops its payload, whose
//! `Drop` is user code).

use std::panic::{AssertUnwindSafe, catch_unwind};

use interrole_core::InterRoleEvent;

use crate::observe::observer::ObserverError;

/// Runs observer code whose panic has nowhere else to go: logs it and carries on.
pub(crate) fn run_guarded(what: &'static str, f: impl FnOnce()) {
    if let Err(payload) = catch_unwind(AssertUnwindSafe(f)) {
        let error = ObserverError::panicked(&*payload);
        tracing::error!(%error, "observer {what} panicked; ignored");
        drop_payload(payload);
    }
}

/// Drops an event: a handle that shares its envelope with others only lowers a count, and only
/// the drop that may be the last goes through [`drop_guarded`] (whose `catch_unwind` costs a
/// call on every dispatch otherwise).
#[inline]
pub(crate) fn drop_event(event: InterRoleEvent) {
    if event.is_shared() {
        drop(event);
    } else {
        drop_guarded(event);
    }
}

/// Drops `value`, whose drop may run user code (the last reference to an event drops its
/// payload): a panic there is logged and goes no further, so that it can neither unwind through
/// the hub's state nor abort a thread that is already unwinding.
#[inline]
pub(crate) fn drop_guarded<T>(value: T) {
    if let Err(payload) = catch_unwind(AssertUnwindSafe(move || drop(value))) {
        dropping_panicked(payload);
    }
}

#[cold]
#[inline(never)]
fn dropping_panicked(payload: Box<dyn std::any::Any + Send>) {
    let error = ObserverError::panicked(&*payload);
    tracing::error!(%error, "dropping an event panicked (its payload's Drop); ignored");
    drop_payload(payload);
}

/// Drops a panic payload; a payload whose own drop panics is leaked rather than unwinding here.
pub(crate) fn drop_payload(payload: Box<dyn std::any::Any + Send>) {
    if let Err(again) = catch_unwind(AssertUnwindSafe(move || drop(payload))) {
        std::mem::forget(again);
    }
}
