//! Observers, observables, and what observers are told when something goes wrong.

use std::fmt;
use std::marker::PhantomData;
use std::sync::Arc;

use interrole_core::{Event, InstanceId, InterRoleEvent, PayloadError, TypeTag};

use super::subscription::Subscription;

/// Receives a sequence of values: the `IObserver<T>` of Reactive Extensions, in Rust.
///
/// The hub calling an observer keeps these promises:
/// - calls to one observer never overlap, even with concurrent publishers and parallel fan-out;
/// - per publisher, values arrive in publish order;
/// - a panic in [`on_next`](Observer::on_next) is caught and handed to this observer's own
///   [`on_error`](Observer::on_error); other observers never notice;
/// - [`on_completed`](Observer::on_completed) is called at most once, when the bus closes, and
///   nothing is called after it;
/// - an observer may publish, subscribe and drop subscriptions (its own included) from inside a
///   call: none of these waits for anything.
///
/// # What is held during a call
///
/// Calls to the observers of one event type (one *lane*; the observers of every event are
/// another) run under that lane's gate, the lock that keeps calls to one observer from
/// overlapping. Nothing else is held: not the registry, not other lanes, no lock of the
/// transport. What follows:
/// - another thread's publish of the same type waits until the current dispatch has reached
///   every observer of the type (a publish of another type does not);
/// - so an observer must never block waiting for **another thread to publish an event of its own
///   type** (for an observer of every event: of any type): that thread waits for the observer,
///   and both wait for ever. Publish from inside the call instead (it is queued, never waits), or
///   use an async observer ([`AsyncObserver`](crate::AsyncObserver)), which runs outside the
///   lane;
/// - a slow observer delays the other observers of its type, for every publisher: keep calls
///   short, or make the observer async. An async observer's full mailbox under
///   [`Overflow::Block`](crate::Overflow::Block) is waited for after the lane is let go, so it
///   delays its own publisher only.
pub trait Observer<T>: Send + Sync + 'static {
    /// A new value.
    fn on_next(&self, value: &T);

    /// Something went wrong for this observer: its own `on_next` panicked, it lagged and missed
    /// events, a payload did not decode. The observer stays subscribed, except after
    /// [`ObserverError::Disconnected`]. The default logs the error with `tracing`.
    fn on_error(&self, error: ObserverError) {
        tracing::warn!(%error, "observer error");
    }

    /// The sequence has ended: the bus closed. The default does nothing.
    fn on_completed(&self) {}
}

impl<T, O: Observer<T> + ?Sized> Observer<T> for Arc<O> {
    fn on_next(&self, value: &T) {
        (**self).on_next(value)
    }
    fn on_error(&self, error: ObserverError) {
        (**self).on_error(error)
    }
    fn on_completed(&self) {
        (**self).on_completed()
    }
}

/// Something that observers subscribe to: the `IObservable<T>` of Reactive Extensions.
pub trait Observable<T> {
    /// Registers `observer`; it receives values until the returned guard is dropped. The same
    /// observer (the same `Arc`) subscribed again shares its first registration (see
    /// [`Subscription`]).
    ///
    /// # Panics
    /// Implementations may panic when they are closed; [`Hub`](crate::Hub) and
    /// [`Bus`](crate::Bus) instead return a guard that is already inactive and call the
    /// observer's `on_completed` at once.
    fn subscribe(&self, observer: Arc<dyn Observer<T>>) -> Subscription;
}

/// What an observer is told through [`Observer::on_error`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ObserverError {
    /// The observer's own `on_next` panicked; the message is the panic's.
    #[error("observer panicked: {message}")]
    Panicked {
        /// The panic message (or a note that it was not a string).
        message: String,
    },
    /// The observer's mailbox overflowed and `missed` events were dropped for it.
    #[error("observer lagged: {missed} events dropped")]
    Lagged {
        /// How many events this observer will never see.
        missed: u64,
    },
    /// Events were lost on the way to this process (a transport gap): `count` of them.
    #[error("{count} events missed{}", sender.as_ref().map(|s| format!(" from {s}")).unwrap_or_default())]
    Missed {
        /// The sender whose events were lost, when known.
        sender: Option<InstanceId>,
        /// How many.
        count: u64,
    },
    /// An event of this observer's type arrived but its payload does not decode.
    #[error("undecodable {type_tag} payload from {sender}: {reason}")]
    Undecodable {
        /// The event's type tag.
        type_tag: TypeTag,
        /// The event's sender.
        sender: InstanceId,
        /// The decoder's message.
        reason: String,
    },
    /// An event of this observer's type arrived in a version of its contract that this observer's
    /// type does not read: a newer one, or an older one with no upgrade declared
    /// (`impl_event!(.., upgrades_from = Old)`). It was not decoded: never a misread.
    #[error("{type_tag} version {version} from {sender}: this observer reads version {known}{}", if *version > *known { " (the event is newer)" } else { ", and no upgrade from the older one is declared" })]
    Version {
        /// The event's type tag.
        type_tag: TypeTag,
        /// The event's sender.
        sender: InstanceId,
        /// The event's contract version.
        version: u32,
        /// The version the observer's type reads.
        known: u32,
    },
    /// The observer was unsubscribed by the hub because its mailbox overflowed under the
    /// [`Overflow::Disconnect`](crate::Overflow::Disconnect) policy. Nothing follows.
    #[error("observer disconnected: {reason}")]
    Disconnected {
        /// Why.
        reason: String,
    },
}

impl ObserverError {
    pub(crate) fn from_payload(event: &InterRoleEvent, error: PayloadError) -> Self {
        match error {
            PayloadError::Undecodable { type_tag, error } => Self::Undecodable {
                type_tag,
                sender: event.sender().clone(),
                reason: error.to_string(),
            },
            PayloadError::NewerVersion {
                type_tag,
                version,
                known,
            }
            | PayloadError::NoUpgrade {
                type_tag,
                version,
                known,
            } => Self::Version {
                type_tag,
                sender: event.sender().clone(),
                version,
                known,
            },
            other => Self::Undecodable {
                type_tag: event.type_tag().clone(),
                sender: event.sender().clone(),
                reason: other.to_string(),
            },
        }
    }

    pub(crate) fn panicked(payload: &(dyn std::any::Any + Send)) -> Self {
        let message = if let Some(s) = payload.downcast_ref::<&'static str>() {
            (*s).to_owned()
        } else if let Some(s) = payload.downcast_ref::<String>() {
            s.clone()
        } else {
            "non-string panic payload".to_owned()
        };
        Self::Panicked { message }
    }
}

/// An observer made of a closure: `on_next` calls it, the rest keeps the defaults.
pub(crate) struct FnObserver<T, F> {
    f: F,
    _values: PhantomData<fn(&T)>,
}

impl<T, F> FnObserver<T, F> {
    pub(crate) fn new(f: F) -> Self {
        Self {
            f,
            _values: PhantomData,
        }
    }
}

impl<T: 'static, F: Fn(&T) + Send + Sync + 'static> Observer<T> for FnObserver<T, F> {
    fn on_next(&self, value: &T) {
        (self.f)(value)
    }
}

/// Adapts an observer of one event type to the envelopes the hub routes to it.
pub(crate) struct Typed<E, O: ?Sized> {
    inner: Arc<O>,
    /// Counts payloads that did not decode as an `E` (the metrics handle of `E`'s type).
    undecodable: metrics::Counter,
    _event: PhantomData<fn(&E)>,
}

impl<E, O: ?Sized> Typed<E, O> {
    pub(crate) fn new(inner: Arc<O>, undecodable: metrics::Counter) -> Self {
        Self {
            inner,
            undecodable,
            _event: PhantomData,
        }
    }
}

impl<E: Event, O: Observer<E> + ?Sized> Typed<E, O> {
    /// An event off the wire (decoded once, then kept), or one whose payload is not an `E`.
    #[cold]
    #[inline(never)]
    fn on_next_decoding(&self, event: &InterRoleEvent) {
        match event.try_payload::<E>() {
            Ok(value) => self.inner.on_next(value),
            Err(error) => {
                self.undecodable.increment(1);
                self.inner
                    .on_error(ObserverError::from_payload(event, error))
            }
        }
    }
}

impl<E: Event, O: Observer<E> + ?Sized> Observer<InterRoleEvent> for Typed<E, O> {
    #[inline]
    fn on_next(&self, event: &InterRoleEvent) {
        // The common case inline: an event published in this process, of type `E`.
        match event.local_payload::<E>() {
            Some(value) => self.inner.on_next(value),
            None => self.on_next_decoding(event),
        }
    }
    fn on_error(&self, error: ObserverError) {
        self.inner.on_error(error)
    }
    fn on_completed(&self) {
        self.inner.on_completed()
    }
}

impl<T, F> fmt::Debug for FnObserver<T, F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("FnObserver")
    }
}
