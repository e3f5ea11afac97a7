//! interrole: a typed publish/subscribe event bus for worker services.
//!
//! Every role instance embeds a [`Bus`]. Observers subscribe to event types with closures or
//! [`Observer`] implementations; publishers publish plain serde types; every matching observer
//! of every instance on the same topic gets them: in the same process through [`Loopback`], across
//! processes and machines through a relay or NATS transport. The returned [`Subscription`] guard
//! unsubscribes on drop.
//!
//! ```
//! use interrole::{Bus, Loopback};
//! use serde::{Deserialize, Serialize};
//!
//! #[derive(Debug, Serialize, Deserialize)]
//! struct RoleGracefulRecycle { role_name: String }
//! interrole::impl_event!(RoleGracefulRecycle = "interrole.role.graceful-recycle");
//!
//! let fabric = Loopback::new();
//! let controller = Bus::builder().instance("controller").transport(fabric.clone()).build()?;
//! let worker = Bus::builder().instance("worker-1").transport(fabric.clone()).build()?;
//!
//! let guard = worker.subscribe::<RoleGracefulRecycle, _>(|e| {
//!     println!("recycling {}", e.role_name);
//! });
//! controller.publish(RoleGracefulRecycle { role_name: "worker".into() })?;
//! assert_eq!(worker.stats().hub.delivered, 1);
//! drop(guard); // unsubscribed: nothing more is delivered to the closure
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! # Subscribing
//!
//! | to | with | method |
//! |---|---|---|
//! | one type | a closure `Fn(&E)` | [`Bus::subscribe`] |
//! | one type | an [`Observer<E>`] (`on_next`, `on_error`, `on_completed`) | [`Bus::observe`] |
//! | every event | a closure `Fn(&InterRoleEvent)` | [`Bus::subscribe_all`] |
//! | every event | an [`Observer<InterRoleEvent>`] | [`Bus::observe_all`] |
//! | one type | an async closure, bounded [`Mailbox`] | [`Bus::subscribe_async`] |
//! | one type / every event | an [`AsyncObserver`] | [`Bus::observe_async`], [`Bus::observe_all_async`] |
//!
//! # Isolation
//!
//! Each observer call runs under `catch_unwind`: a panicking observer is told through its own
//! [`Observer::on_error`] ([`ObserverError::Panicked`]) and stays subscribed; every other
//! observer gets every event. A panic inside `on_error` or `on_completed` is logged and ignored.
//! A panic in other user code that the bus runs (a payload's `Serialize` or `Deserialize`, its
//! `Drop`) fails only the call that ran it; the bus, the hub and the thread go on as before.
//! Isolation needs unwinding: with `panic = "abort"` a panicking observer ends the process.
//!
//! # Locks
//!
//! The only lock held while observer code runs is the gate of the event type's lane, which keeps
//! calls to one observer from overlapping: another thread's publish of the same type waits for
//! the dispatch under way. So an observer must never block waiting for another thread to publish
//! an event of its own type (it would wait for ever); see [`Observer`] for the exact rules.
//!
//! # Ordering
//!
//! One observer is never called concurrently, even with concurrent publishers and parallel
//! fan-out. Per publisher, every observer sees events in publish order. Across publishers there
//! is no global order. A publish made from inside an observer call is queued and delivered once
//! the current event has reached all its observers, depth-first (the events an event causes come
//! before events queued earlier), so re-entrant publishing never deadlocks.
//!
//! # Fan-out
//!
//! The hub calls observers one after the other on the publishing thread while that is cheapest,
//! and in parallel on a rayon pool when the measured cost of an event's observers makes it pay
//! ([`Dispatch`], [`DispatchConfig`]). On a tokio multi-thread runtime the parallel region runs
//! under `block_in_place`, so other tasks move off the publishing worker.
//!
//! # Lagging
//!
//! Synchronous observers run inline and cannot lag. Async observers are fed by a bounded
//! [`Mailbox`] with an [`Overflow`] policy chosen at subscribe time (`Block` with a timeout,
//! `DropOldest`, `DropNewest`, `Disconnect`); dropped events are counted
//! ([`HubStats::lagged`]), logged, and reported to the observer before its next event as
//! [`ObserverError::Lagged`] with the count.
//!
//! # Unsubscribing
//!
//! Dropping the [`Subscription`] unsubscribes: once the drop returns, the observer receives
//! nothing more. Dropping it from inside the observer's own call is allowed.
//! [`Subscription::detach`] keeps the observer for the life of the bus.
//!
//! # Closing
//!
//! [`Bus::close`] ends the bus: later publishes fail with [`PublishError::Closed`], and every
//! observer still subscribed gets `on_completed` exactly once, after which nothing is called.
//! Dropping the last handle of a bus without closing it completes its observers too.
//!
//! # Headers and trace context
//!
//! An event may carry [`Headers`], a small ordered map of strings that every observer reads from
//! the envelope ([`InterRoleEvent::headers`], [`Received::headers`]): [`Bus::publish_with`],
//! [`Bus::send_to_with`]. With the feature `opentelemetry`, the bus writes the W3C trace context
//! of the current `tracing` span into them and continues it where the event is delivered: see
//! the `trace` module.
//!
//! # Features
//!
//! `relay` (the relay transport), `nats` (the NATS transport), `testing` (a test harness for
//! users' tests), `opentelemetry` (trace context through events), `json` and `msgpack` (payload
//! codecs that tolerate version skew). None is on by default.
//!
//! # Versions of an event's contract
//!
//! An event type declares its contract's version and codec (`impl_event!(E = "tag", version =
//! 2, codec = Json, upgrades_from = EOld)`); both travel in the envelope. A typed observer gets
//! older versions converted through the declared upgrades, and a version it cannot read as
//! [`ObserverError::Version`] in its `on_error`, counted in [`BusStats::newer_versions`]: never a
//! misread. `docs/versioning.md` has the rolling-upgrade recipe.
//!
//! # Unknown types
//!
//! An event from another process whose type tag this process does not know is not an error: it
//! reaches the observers of every event, is counted ([`BusStats::unknown_tags`]) and logged once
//! per tag.
//!
//! # Metrics
//!
//! Every bus reports through the [`metrics`](https://docs.rs/metrics/0.24) facade, whatever its
//! transport: events published, received and delivered per type, observer errors (panics, lag,
//! undecodable payloads), delivery lag, and the reliability layer's counters, outbox and
//! connection, as `interrole_*` series labelled with the bus's `topic` and `instance` (the list
//! is in `docs/operations.md`). **Install the recorder before building buses**: a bus takes its
//! handles from the recorder in place when it is built. With no recorder, the handles do
//! nothing and cost a branch each.

// The module map and the direction of dependencies: docs/architecture.md. In one line:
// bus and builder -> reliable, inbound -> dispatch -> observe::{observer, subscription};
// observe::mailbox -> dispatch.

/// Items compiled in every build but the loom model checks' (`--cfg interrole_loom`, in this
/// crate's own tests), which compile the dispatch core's registry alone.
macro_rules! cfg_not_loom {
    ($($item:item)*) => { $( #[cfg(not(all(test, interrole_loom)))] $item )* };
}

mod dispatch;
mod loom;

cfg_not_loom! {
mod builder;
mod bus;
mod error;
mod inbound;
mod loopback;
mod meters;
mod observe;
mod reliable;
mod replies;
#[cfg(feature = "testing")]
pub mod testing;
#[cfg(feature = "opentelemetry")]
pub mod trace;

pub use builder::BusBuilder;
pub use bus::{Bus, BusStats};
pub use error::{BuildError, PublishError, RequestError};
pub use replies::Replies;
pub use reliable::{HostState, HostStatus, Reliability, ReliableHost, ReliableStats};

/// The relay transport and its settings (feature `relay`): [`Credentials`](relay::Credentials),
/// [`Relay`](relay::Relay), [`RelayTransport`](relay::RelayTransport), and the Hybrid
/// Connections clients in [`relay::hc`].
#[cfg(feature = "relay")]
pub mod relay {
    pub use interrole_relay::client::*;
}

/// The NATS transport and its settings (feature `nats`): [`NatsOptions`](nats::NatsOptions),
/// [`NatsAuth`](nats::NatsAuth), [`NatsTls`](nats::NatsTls), [`NatsTransport`](nats::NatsTransport),
/// and [`NatsError`](nats::NatsError), the cause of its transport errors.
#[cfg(feature = "nats")]
pub mod nats {
    pub use interrole_nats::*;
}
pub use dispatch::hub::{Dispatch, DispatchConfig, Hub, HubClosed, HubStats};
pub use dispatch::pool::pool_threads;
pub use loopback::Loopback;
pub use observe::mailbox::{AsyncObserver, FromEnvelope, Mailbox, Overflow, Received};
pub use observe::observer::{Observable, Observer, ObserverError};
pub use observe::subscription::Subscription;
}

pub use interrole_core::{
    Codec, Event, EventId, HeaderError, Headers, InstanceId, InterRoleEvent, InvalidName,
    PayloadError, RawEvent, RetryPolicy, StreamPos, Topic, Transport, TransportError,
    TransportErrorKind, TypeTag, impl_event,
};

/// The attribute that async observers are written with: `#[interrole::async_trait]`.
pub use async_trait::async_trait;

/// The contract crate, for transport implementations: the envelope codec, the transport seam.
pub use interrole_core as core;

/// The README's examples, compiled and run as doctests.
#[cfg(doctest)]
#[doc = include_str!("../../../README.md")]
pub struct ReadmeDoctests;
