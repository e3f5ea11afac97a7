//! The bus: one per role instance; publish, request, subscribe, close. Built by
//! [`BusBuilder`](crate::BusBuilder) (`builder.rs`); what arrives goes through `inbound.rs`.

use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock, Weak};
use std::time::Duration;

use interrole_core::{
    Connection, Event, EventId, Headers, Inbound, RawEvent, InstanceId, InterRoleEvent, StreamPos, Topic, Transport,
    TransportError, TypeTag,
};
use parking_lot::Mutex;
use tokio::runtime::Handle;
use tokio::task::JoinHandle;
#[cfg(feature = "opentelemetry")]
use tracing::Span;

use crate::dispatch::hub::{Hub, HubStats, publish_group};
use crate::error::{PublishError, RequestError};
use crate::inbound::{PendingGuard, PendingReply, Receiver};
use crate::replies::Replies;
use crate::observe::mailbox::{self, AsyncFn, AsyncObserver, FromEnvelope, Mailbox, Pusher, Received};
use crate::observe::observer::{FnObserver, Observable, Observer, ObserverError, Typed};
use crate::observe::subscription::Subscription;
use crate::reliable::host::{Reliable, ReliableHost, ReliableStats};
use crate::reliable::repair::Control;
use crate::reliable::sink::Sink;

/// Counters of a bus: its hub's, plus what arrived from other processes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub struct BusStats {
    /// Events this bus published.
    pub published: u64,
    /// Events that arrived through the transport.
    pub received: u64,
    /// Received events whose type tag this process does not know (no typed observer and not
    /// registered): they reached the observers of every event only.
    pub unknown_tags: u64,
    /// Received events written by a newer version of their contract than any type this
    /// process reads them as (each reached its typed observers' `on_error` as
    /// [`ObserverError::Version`], and the observers of every event as usual).
    pub newer_versions: u64,
    /// The hub's counters.
    pub hub: HubStats,
}


/// How a bus reaches its transport.
pub(crate) enum Uplink {
    /// A lossless (in-process) transport: no reliability layer.
    Direct(OnceLock<Arc<dyn Connection>>),
    /// A network transport, through the reliable client and host.
    Reliable(Arc<Reliable>),
}

/// A sender's numbering: sequence numbers and stream positions.
pub(crate) struct Sequence {
    /// The last sequence number used.
    pub(crate) last: u64,
    pub(crate) epoch: u64,
    pub(crate) published: u64,
    pub(crate) multicast: u64,
    pub(crate) directed: HashMap<InstanceId, u64>,
}

/// The event bus of one role instance: publish typed events, subscribe observers, close.
///
/// Cheap to clone (clones share the bus) and usable from threads and tokio tasks alike. What a
/// bus publishes reaches its own observers directly, once, and every other bus on the same
/// transport and topic through the transport. See the crate docs for the delivery semantics.
///
/// # Which way to subscribe
///
/// Three choices, each a method, so that the common case is one call with no adapter to write:
///
/// | what you have                                | one type `E`                    | every event          |
/// |----------------------------------------------|---------------------------------|----------------------|
/// | a closure                                    | [`subscribe`](Bus::subscribe)   | [`subscribe_all`](Bus::subscribe_all) |
/// | an [`Observer`] (with `on_error`, `on_completed`) | [`observe`](Bus::observe)  | [`observe_all`](Bus::observe_all) |
/// | an observer you keep an `Arc` of             | [`observe_arc`](Bus::observe_arc) | `Observable::subscribe` |
/// | an async closure or [`AsyncObserver`], fed through a [`Mailbox`] | [`subscribe_async`](Bus::subscribe_async), [`observe_async`](Bus::observe_async) | [`observe_all_async`](Bus::observe_all_async) |
///
/// `observe_arc` is the one way to subscribe an observer you hold elsewhere, and the one way to
/// subscribe the same observer twice on purpose (the two guards share one registration). A
/// request handler is [`serve`](Bus::serve). The inherent `subscribe` (typed closures, the
/// common case) takes the name over [`Observable::subscribe`], which the bus also implements
/// for code written against any observable: call it as `Observable::subscribe(&bus, observer)`,
/// or use `observe_all`.
#[derive(Clone)]
pub struct Bus {
    pub(crate) inner: Arc<BusInner>,
}

pub(crate) struct BusInner {
    pub(crate) instance: InstanceId,
    pub(crate) topic: Topic,
    pub(crate) hub: Hub,
    pub(crate) receiver: Arc<Receiver>,
    /// The numbering; held while an event is numbered and handed to the transport, so that the
    /// transport sees each sender's events in sequence order.
    pub(crate) seq: Mutex<Sequence>,
    /// The transport connection.
    pub(crate) uplink: Uplink,
    pub(crate) transport: Arc<dyn Transport>,
    pub(crate) closed: AtomicBool,
    pub(crate) runtime: Option<Handle>,
    pub(crate) tasks: Mutex<Vec<JoinHandle<()>>>,
    /// The runtime the async observers' tasks run on.
    pub(crate) task_runtime: Mutex<Option<Handle>>,
    pub(crate) close_timeout: Duration,
    /// How far [`Bus::close`] got.
    pub(crate) closing: Closing,
}

/// The steps of [`Bus::close`] that are done, so that a close whose future was dropped can be
/// taken up again.
#[derive(Default)]
pub(crate) struct Closing {
    /// The transport connection was closed.
    transport: AtomicBool,
    /// The async observers' tasks are waited for: `Some(in_time)` once they finished or the close
    /// timeout ran out. Made by the first close that gets there.
    drained: Mutex<Option<tokio::sync::watch::Receiver<Option<bool>>>>,
    /// The whole close is done.
    done: AtomicBool,
    /// A step ran out of time: an event not acknowledged, or a mailbox not drained.
    late: AtomicBool,
}

impl BusInner {
    /// Counts one event of type `E` published, in the metrics. Out of line, so that the publish
    /// path is compiled as it was without metrics.
    #[inline(never)]
    fn count_published<E: Event>(&self) {
        let tag = const { TypeTag::from_static(E::TYPE_TAG) };
        self.hub.inner.meters.tag(&tag).published.increment(1);
    }

    /// [`BusInner::count_published`] for an event whose tag is known at run time.
    #[inline(never)]
    fn count_published_tag(&self, tag: &TypeTag) {
        self.hub.inner.meters.tag(tag).published.increment(1);
    }

    /// Waits (in a task of their own runtime, which goes on if the close is dropped) for the
    /// async observers' tasks to finish, up to the close timeout; the first call starts the
    /// wait, later calls join it.
    fn drained(&self, timeout: Duration) -> tokio::sync::watch::Receiver<Option<bool>> {
        let mut drained = self.closing.drained.lock();
        if let Some(rx) = &*drained {
            return rx.clone();
        }
        let tasks = std::mem::take(&mut *self.tasks.lock());
        let runtime = self.task_runtime.lock().clone();
        let rx = match (tasks.is_empty(), runtime) {
            (false, Some(runtime)) => {
                let (tx, rx) = tokio::sync::watch::channel(None);
                // Timed on the observers' own runtime, so that close works under any executor.
                runtime.spawn(async move {
                    let joined = futures::future::join_all(tasks);
                    let in_time = tokio::time::timeout(timeout, joined).await.is_ok();
                    let _ = tx.send(Some(in_time));
                });
                rx
            }
            _ => tokio::sync::watch::channel(Some(true)).1,
        };
        *drained = Some(rx.clone());
        rx
    }
}


/// The bus as the reliability layer's [`Sink`]: what the layer releases goes to the receiver;
/// its own events are numbered and sent by the bus.
pub(crate) struct BusSink {
    pub(crate) bus: Weak<BusInner>,
    pub(crate) receiver: Arc<Receiver>,
}

impl Sink for BusSink {
    fn deliver(&self, event: InterRoleEvent) {
        self.receiver.event(event);
    }

    fn missed(&self, sender: Option<InstanceId>, count: u64) {
        self.receiver
            .hub
            .report(ObserverError::Missed { sender, count });
    }

    fn refused(&self, seq: u64, error: TransportError) {
        self.receiver.fail_request(seq, error);
    }

    fn control(&self, to: &InstanceId, control: Control) -> bool {
        let Some(inner) = self.bus.upgrade() else {
            return false;
        };
        let bus = Bus { inner };
        let what = control.what();
        let sent = match control {
            Control::Nak(n) => bus.send_with(Value(n), Some(to), None, Headers::new(), |_| {}),
            Control::Repair(r) => bus.send_with(Value(r), Some(to), None, Headers::new(), |_| {}),
            // To every other instance, and not to this bus's own observers.
            Control::Heartbeat(h) => bus.send_remote(h),
        };
        match sent {
            Ok(_) => true,
            Err(error) => {
                tracing::debug!(%error, "{what} could not be sent");
                false
            }
        }
    }
}

impl Bus {

    /// The instance this bus speaks for.
    pub fn instance(&self) -> &InstanceId {
        &self.inner.instance
    }

    /// The bus's topic.
    pub fn topic(&self) -> &Topic {
        &self.inner.topic
    }

    /// The bus's hub, for subscribing by tag or reading counters.
    pub fn hub(&self) -> &Hub {
        &self.inner.hub
    }

    /// Publishes `event` to every observer of its type: this bus's own, directly, and every other
    /// instance's on the topic through the transport. Returns the event's id.
    ///
    /// On an in-process transport the observers of every bus have been called when it returns.
    /// Called from inside an observer call, the local deliveries are queued and made as soon as the
    /// current event has reached all its observers.
    ///
    /// # Errors
    /// [`PublishError::Closed`] after [`Bus::close`]; [`PublishError::Transport`] when the
    /// transport refuses it; [`PublishError::OutboxFull`] when too many events wait for the far
    /// end's acknowledgement.
    ///
    /// A type whose tag is not valid does not compile, even with a hand-written [`Event`]
    /// implementation:
    ///
    /// ```compile_fail
    /// #[derive(serde::Serialize, serde::Deserialize)]
    /// struct Bad;
    /// impl interrole::Event for Bad {
    ///     const TYPE_TAG: &'static str = "has space";
    /// }
    /// let bus = interrole::Bus::builder().build().unwrap();
    /// // error: an Event's TYPE_TAG must be 1 to 256 ASCII letters, digits or `- _ . :`
    /// bus.publish(Bad).unwrap();
    /// ```
    pub fn publish<E: Event>(&self, event: E) -> Result<EventId, PublishError> {
        self.send_with(Value(event), None, None, Headers::new(), |_| {})
    }

    /// [`Bus::publish`] with headers, which every observer reads from the envelope
    /// ([`InterRoleEvent::headers`], [`Received::headers`]).
    ///
    /// ```
    /// use interrole::{Bus, Headers, InterRoleEvent};
    ///
    /// #[derive(serde::Serialize, serde::Deserialize)]
    /// struct Invoice(u64);
    /// interrole::impl_event!(Invoice = "example.invoice");
    ///
    /// let bus = Bus::builder().build()?;
    /// let _tenant = bus.subscribe_all(|e: &InterRoleEvent| {
    ///     assert_eq!(e.headers().get("tenant"), Some("acme"));
    /// });
    /// bus.publish_with(Invoice(7), Headers::new().with("tenant", "acme")?)?;
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    ///
    /// # Errors
    /// As [`Bus::publish`]. The headers' limits are checked when they are made
    /// ([`Headers::insert`]).
    pub fn publish_with<E: Event>(
        &self,
        event: E,
        headers: Headers,
    ) -> Result<EventId, PublishError> {
        self.send_with(Value(event), None, None, headers, |_| {})
    }

    /// Publishes an event given as its encoded payload ([`RawEvent`]): what a tool that does not
    /// know the Rust type publishes (the `interrole` command line publishes JSON this way).
    /// Every observer of the tag gets it as if it were published as a value; a typed observer
    /// decodes it with its codec and version.
    ///
    /// # Errors
    /// As [`Bus::publish`]; [`PublishError::ReservedTag`] for a tag of the reliability layer.
    pub fn publish_raw(&self, raw: RawEvent, headers: Headers) -> Result<EventId, PublishError> {
        self.send_with(raw, None, None, headers, |_| {})
    }

    /// [`Bus::publish_raw`] to one instance: [`Bus::send_to`] for a [`RawEvent`].
    ///
    /// # Errors
    /// As [`Bus::publish_raw`] and [`Bus::send_to`].
    pub fn send_raw_to(
        &self,
        target: &InstanceId,
        raw: RawEvent,
        headers: Headers,
    ) -> Result<EventId, PublishError> {
        self.send_with(raw, Some(target), None, headers, |_| {})
    }

    /// Publishes `event` to the other instances only (the reliability layer's heartbeats).
    fn send_remote<E: Event>(&self, event: E) -> Result<EventId, PublishError> {
        self.send_inner(Value(event), None, None, Headers::new(), false, |_| {})
    }

    /// Sends `event` to one instance only: its observers of the type get it, no one else's. To
    /// this bus's own instance, it is delivered locally.
    ///
    /// # Errors
    /// As [`Bus::publish`]. On an in-process transport, also [`PublishError::Transport`] with
    /// [`TransportErrorKind::NoListener`](interrole_core::TransportErrorKind::NoListener) when the
    /// target is not connected. Over a network transport the far end decides later: a target
    /// that is not connected makes the relay refuse the event, which is logged and counted
    /// ([`ReliableStats::rejected`]); use [`Bus::request`] to learn of it.
    pub fn send_to<E: Event>(
        &self,
        target: &InstanceId,
        event: E,
    ) -> Result<EventId, PublishError> {
        self.send_with(Value(event), Some(target), None, Headers::new(), |_| {})
    }

    /// [`Bus::send_to`] with headers.
    ///
    /// # Errors
    /// As [`Bus::send_to`].
    pub fn send_to_with<E: Event>(
        &self,
        target: &InstanceId,
        event: E,
        headers: Headers,
    ) -> Result<EventId, PublishError> {
        self.send_with(Value(event), Some(target), None, headers, |_| {})
    }

    /// Numbers `event`, hands it to the transport and the local observers; `on_numbered` runs
    /// with its sequence number before anything is delivered (to register a pending request).
    fn send_with(
        &self,
        event: impl Outgoing,
        target: Option<&InstanceId>,
        reply_to: Option<u64>,
        headers: Headers,
        on_numbered: impl FnOnce(u64),
    ) -> Result<EventId, PublishError> {
        self.send_inner(event, target, reply_to, headers, true, on_numbered)
    }

    fn send_inner<O: Outgoing>(
        &self,
        event: O,
        target: Option<&InstanceId>,
        reply_to: Option<u64>,
        #[allow(unused_mut)] mut headers: Headers,
        locally: bool,
        on_numbered: impl FnOnce(u64),
    ) -> Result<EventId, PublishError> {
        let inner = &*self.inner;
        if inner.closed.load(Ordering::Acquire) {
            return Err(PublishError::Closed);
        }
        if !event.allowed() {
            return Err(PublishError::ReservedTag(event.tag().to_owned()));
        }
        #[cfg(feature = "opentelemetry")]
        let span = crate::trace::publish(
            match (target, reply_to) {
                (_, Some(_)) => crate::trace::Operation::Reply,
                (Some(_), None) => crate::trace::Operation::Send,
                (None, None) => crate::trace::Operation::Publish,
            },
            &inner.topic,
            &inner.instance,
            event.tag(),
            target,
            &mut headers,
        );
        #[cfg(feature = "opentelemetry")]
        let _entered = span.as_ref().map(Span::enter);
        let to_self = target.is_some_and(|t| *t == inner.instance);
        // A reply to one of this bus's own requests (its own `serve` answering it) goes to the
        // request, as a reply from another instance does, not to the observers.
        let self_reply = to_self && reply_to.is_some_and(|r| inner.receiver.awaits_reply(r));
        let local = locally && (target.is_none() || to_self) && !self_reply;
        let remote_target = if to_self { None } else { target };
        publish_group(&inner.hub.inner, local, || {
            let mut seq = inner.seq.lock();
            let id = EventId {
                sender: inner.instance.clone(),
                seq: seq.last + 1,
            };
            let n = match target {
                None => seq.multicast + 1,
                Some(t) => seq.directed.get(t).copied().unwrap_or(0) + 1,
            };
            let stream = StreamPos {
                epoch: seq.epoch,
                directed: target.is_some(),
                n,
            };
            let counter = event.counter();
            let envelope = event.wrap(id.clone(), stream, reply_to, headers);
            on_numbered(id.seq);
            #[cfg(feature = "opentelemetry")]
            let _sending = span.as_ref().map(|span| {
                crate::trace::numbered(span, &envelope);
                crate::trace::transport_send(inner.transport.name(), &envelope).entered()
            });
            if self_reply {
                // Nothing else to do with it if the request was forgotten meanwhile.
                drop(inner.receiver.take_reply(envelope.clone()));
            }
            if !to_self {
                match &inner.uplink {
                    Uplink::Direct(slot) => match slot.get() {
                        Some(conn) => conn.send(&envelope, remote_target)?,
                        None if remote_target.is_some() => {
                            return Err(PublishError::NotConnected);
                        }
                        None => {}
                    },
                    Uplink::Reliable(r) => r.send(&envelope, remote_target)?,
                }
            }
            seq.last += 1;
            if let Some(counter) = counter {
                seq.published += 1;
                counter.count(inner);
            }
            match target {
                None => seq.multicast = n,
                Some(t) => {
                    seq.directed.insert(t.clone(), n);
                }
            }
            Ok((envelope, id))
        })
    }

    /// Sends `request` to `target` and waits for its reply of type `R`, for at most `timeout`.
    /// The target answers with [`Bus::serve`] (or [`Bus::reply`]).
    ///
    /// # Errors
    /// [`RequestError::Timeout`] when no reply came in time; [`RequestError::Refused`] when the
    /// transport refused the request (the target is not connected, say);
    /// [`RequestError::Publish`] when it could not be sent; [`RequestError::Reply`] when the
    /// reply is not an `R`.
    ///
    /// # Cancel safety
    ///
    /// The request is sent when the future is first polled, before it waits. Dropping the future
    /// after that does not unsend it: the target still gets the request and answers it, and the
    /// late reply is dropped (this bus forgets the request when the future goes, so nothing
    /// accumulates). Requests are not idempotent in general: do not retry a cancelled one
    /// blindly.
    pub async fn request<Q: Event, R: Event>(
        &self,
        target: &InstanceId,
        request: Q,
        timeout: Duration,
    ) -> Result<Received<R>, RequestError> {
        let reply = self.request_envelope(target, Value(request), timeout).await?;
        Received::new(reply).map_err(RequestError::Reply)
    }

    /// [`Bus::request`] for a [`RawEvent`]: the reply is the envelope, of whatever type the
    /// server answered with.
    ///
    /// # Errors
    /// As [`Bus::request`] (but for [`RequestError::Reply`]).
    ///
    /// # Cancel safety
    ///
    /// As [`Bus::request`].
    pub async fn request_raw(
        &self,
        target: &InstanceId,
        request: RawEvent,
        timeout: Duration,
    ) -> Result<InterRoleEvent, RequestError> {
        self.request_envelope(target, request, timeout).await
    }

    async fn request_envelope<O: Outgoing>(
        &self,
        target: &InstanceId,
        request: O,
        timeout: Duration,
    ) -> Result<InterRoleEvent, RequestError> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        // Forgets the request however this call ends: a reply, a timeout, the future dropped, or
        // a panic in the request's `Serialize`.
        let mut pending = PendingGuard {
            pending: &self.inner.receiver.pending,
            key: None,
        };
        let mut tx = Some(tx);
        #[cfg(feature = "opentelemetry")]
        let span = crate::trace::request(
            &self.inner.topic,
            &self.inner.instance,
            request.tag(),
            Some(target),
        );
        #[cfg(feature = "opentelemetry")]
        let entered = span.as_ref().map(Span::enter);
        let sent = self.send_with(request, Some(target), None, Headers::new(), |seq| {
            if let Some(tx) = tx.take() {
                pending.pending.lock().insert(seq, PendingReply::One(tx));
                pending.key = Some(seq);
            }
        });
        #[cfg(feature = "opentelemetry")]
        drop(entered);
        if let Err(e) = sent {
            return Err(RequestError::Publish(e));
        }
        let outcome = tokio::time::timeout(timeout, rx).await;
        drop(pending);
        #[cfg(feature = "opentelemetry")]
        if let Some(span) = &span {
            span.record("interrole.replies", u64::from(matches!(outcome, Ok(Ok(Ok(_))))));
        }
        match outcome {
            Ok(Ok(Ok(reply))) => Ok(reply),
            Ok(Ok(Err(e))) => Err(RequestError::Refused(e)),
            Ok(Err(_)) => Err(RequestError::Publish(PublishError::Closed)),
            Err(_) => Err(RequestError::Timeout(timeout)),
        }
    }

    /// Sends `request` to every instance on the topic (this one included) and returns the
    /// stream of their replies of type `R`: scatter-gather. Every instance that serves `Q`
    /// ([`Bus::serve`]) answers once. The stream ends after `expected` replies when that is
    /// given, at `timeout` in any case, or when the bus closes; a refusal of the request by
    /// the transport is its last item.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// use futures::StreamExt;
    /// use interrole::{Bus, Loopback};
    /// use std::time::Duration;
    ///
    /// #[derive(serde::Serialize, serde::Deserialize)]
    /// struct Ping;
    /// interrole::impl_event!(Ping = "example.ping");
    /// #[derive(serde::Serialize, serde::Deserialize)]
    /// struct Pong(String);
    /// interrole::impl_event!(Pong = "example.pong");
    ///
    /// let fabric = Loopback::new();
    /// let asker = Bus::builder().instance("asker").transport(fabric.clone()).build()?;
    /// let workers: Vec<Bus> = (1..=3)
    ///     .map(|i| Bus::builder().instance(format!("w{i}")).transport(fabric.clone()).build())
    ///     .collect::<Result<_, _>>()?;
    /// let _serving: Vec<_> = workers
    ///     .iter()
    ///     .map(|w| {
    ///         let me = w.instance().to_string();
    ///         w.serve(move |_: &Ping| Pong(me.clone()))
    ///     })
    ///     .collect();
    /// let replies = asker.request_all::<Ping, Pong>(Ping, Duration::from_secs(5), Some(3))?;
    /// let mut from: Vec<String> = replies.map(|r| r.unwrap().0.clone()).collect().await;
    /// from.sort();
    /// assert_eq!(from, ["w1", "w2", "w3"]);
    /// # Ok(())
    /// # }
    /// ```
    ///
    /// # Errors
    /// [`PublishError`] when the request could not be sent.
    ///
    /// # Cancel safety
    ///
    /// Not async: the request is sent before this returns. Dropping the stream forgets the
    /// request; replies that come later are dropped. Poll the stream inside a tokio runtime
    /// (its deadline is a tokio timer).
    pub fn request_all<Q: Event, R: Event>(
        &self,
        request: Q,
        timeout: Duration,
        expected: Option<usize>,
    ) -> Result<Replies<R>, PublishError> {
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        let receiver = self.inner.receiver.clone();
        // Forgets the request if sending it fails (or its `Serialize` panics) after it was
        // numbered; once sent, the stream forgets it when dropped.
        let mut pending = PendingGuard {
            pending: &receiver.pending,
            key: None,
        };
        let mut tx = Some(tx);
        #[cfg(feature = "opentelemetry")]
        let span = crate::trace::request(&self.inner.topic, &self.inner.instance, Q::TYPE_TAG, None);
        #[cfg(feature = "opentelemetry")]
        let _entered = span.as_ref().map(Span::enter);
        self.send_with(Value(request), None, None, Headers::new(), |seq| {
            if let Some(tx) = tx.take() {
                pending.pending.lock().insert(seq, PendingReply::Many(tx));
                pending.key = Some(seq);
            }
        })?;
        let key = pending.key.take().expect("a sent request was numbered");
        drop(pending);
        Ok(Replies::new(rx, receiver, key, timeout, expected))
    }

    /// Answers `request` (an envelope received by an observer) with `reply`, directed to its
    /// sender.
    ///
    /// # Errors
    /// As [`Bus::send_to`].
    pub fn reply<R: Event>(
        &self,
        request: &InterRoleEvent,
        reply: R,
    ) -> Result<EventId, PublishError> {
        self.send_with(
            Value(reply),
            Some(request.sender()),
            Some(request.seq()),
            Headers::new(),
            |_| {},
        )
    }

    /// Serves requests of type `Q`: `handler` runs for each one (on the dispatch thread, like a
    /// closure subscriber) and its answer goes back to the requester. Dropping the guard stops
    /// serving.
    ///
    /// A handler that panics fails that request only: no reply is sent (the requester's
    /// [`Bus::request`] ends with [`RequestError::Timeout`]), the panic is logged and counted
    /// ([`HubStats::panics`](crate::HubStats::panics)), and the next request is served as usual.
    pub fn serve<Q, R, F>(&self, handler: F) -> Subscription
    where
        Q: Event,
        R: Event,
        F: Fn(&Q) -> R + Send + Sync + 'static,
    {
        let tag = self.typed_tag::<Q>();
        let undecodable = self.undecodable(&tag);
        let weak = Arc::downgrade(&self.inner);
        let observer = FnObserver::new(move |e: &InterRoleEvent| {
            let Some(inner) = weak.upgrade() else { return };
            let bus = Bus { inner };
            match e.try_payload::<Q>() {
                Ok(q) => {
                    let r = handler(q);
                    if let Err(error) = bus.reply(e, r) {
                        tracing::warn!(%error, to = %e.sender(), "a reply could not be sent");
                    }
                }
                Err(error) => {
                    undecodable.increment(1);
                    tracing::warn!(%error, "a request did not decode");
                }
            }
        });
        self.inner.hub.subscribe_tag(tag, Arc::new(observer))
    }

    /// Makes `E` known to this bus without subscribing to it, so that received events of its
    /// type are not counted as unknown. (Subscribing to a type makes it known too, whichever way
    /// the subscription is made.)
    pub fn register<E: Event>(&self) {
        self.inner.receiver.known.write().insert(self.typed_tag::<E>());
    }

    /// Subscribes a closure to events of type `E`. It runs on the publishing thread (or on the
    /// dispatch pool when the hub goes parallel); keep it short, or use
    /// [`Bus::subscribe_async`].
    ///
    pub fn subscribe<E, F>(&self, f: F) -> Subscription
    where
        E: Event,
        F: Fn(&E) + Send + Sync + 'static,
    {
        self.observe::<E, _>(FnObserver::new(f))
    }

    /// Subscribes a full [`Observer`] of events of type `E` (with `on_error` and
    /// `on_completed`).
    ///
    pub fn observe<E, O>(&self, observer: O) -> Subscription
    where
        E: Event,
        O: Observer<E>,
    {
        let tag = self.typed_tag::<E>();
        let undecodable = self.undecodable(&tag);
        self.inner.hub.subscribe_tag(
            tag,
            Arc::new(Typed::<E, O>::new(Arc::new(observer), undecodable)),
        )
    }

    /// As [`Bus::observe`], for an observer already shared. Subscribing the same observer (the
    /// same `Arc`) to the same type again shares the first registration (see [`Subscription`]).
    pub fn observe_arc<E: Event>(&self, observer: Arc<dyn Observer<E>>) -> Subscription {
        let tag = self.typed_tag::<E>();
        let identity = Arc::as_ptr(&observer) as *const () as usize;
        let typed = Arc::new(Typed::<E, dyn Observer<E>>::new(
            observer,
            self.undecodable(&tag),
        ));
        self.inner.hub.inner.register_as(Some(tag), typed, identity)
    }

    /// The metrics handle counting `tag`'s payloads that did not decode.
    fn undecodable(&self, tag: &TypeTag) -> metrics::Counter {
        self.inner.hub.inner.meters.tag(tag).undecodable.clone()
    }

    /// Subscribes a closure to every event, whatever its type: it sees envelopes (sender,
    /// sequence number, type tag, timestamp, payload), including events of types this process
    /// does not know.
    pub fn subscribe_all<F>(&self, f: F) -> Subscription
    where
        F: Fn(&InterRoleEvent) + Send + Sync + 'static,
    {
        self.inner.hub.subscribe(Arc::new(FnObserver::new(f)))
    }

    /// Subscribes a full [`Observer`] of every event, whatever its type (the same as
    /// [`Observable::subscribe`]).
    pub fn observe_all<O: Observer<InterRoleEvent>>(&self, observer: O) -> Subscription {
        self.inner.hub.subscribe(Arc::new(observer))
    }

    /// Subscribes an async closure to events of type `E`. It gets a [`Received<E>`] (owned;
    /// dereferences to the `E`) and runs in its own task, fed by a bounded `mailbox` whose
    /// overflow policy says what happens when the closure falls behind.
    ///
    /// # Panics
    /// When there is no tokio runtime (none given to the builder and none current): a
    /// programmer error, as for `tokio::spawn`. Give the builder
    /// [`.runtime(handle)`](crate::BusBuilder::runtime) to subscribe from outside one.
    pub fn subscribe_async<E, F, Fut>(&self, mailbox: Mailbox, f: F) -> Subscription
    where
        E: Event,
        F: Fn(Received<E>) -> Fut + Send + Sync + 'static,
        Fut: std::future::Future<Output = ()> + Send + 'static,
    {
        self.observe_async::<E, _>(mailbox, AsyncFn::new(f))
    }

    /// Subscribes an [`AsyncObserver`] of events of type `E`, fed by a bounded `mailbox`.
    ///
    /// # Panics
    /// As [`Bus::subscribe_async`].
    pub fn observe_async<E, O>(&self, mailbox: Mailbox, observer: O) -> Subscription
    where
        E: Event,
        O: AsyncObserver<Received<E>>,
    {
        let tag = self.typed_tag::<E>();
        self.start_async::<Received<E>>(Some(tag), mailbox, Arc::new(observer))
    }

    /// Subscribes an [`AsyncObserver`] of every event, fed by a bounded `mailbox`.
    ///
    /// # Panics
    /// As [`Bus::subscribe_async`].
    pub fn observe_all_async<O>(&self, mailbox: Mailbox, observer: O) -> Subscription
    where
        O: AsyncObserver<InterRoleEvent>,
    {
        self.start_async::<InterRoleEvent>(None, mailbox, Arc::new(observer))
    }

    fn start_async<T: FromEnvelope>(
        &self,
        tag: Option<TypeTag>,
        mailbox: Mailbox,
        observer: Arc<dyn AsyncObserver<T>>,
    ) -> Subscription {
        let runtime = self
            .inner
            .runtime
            .clone()
            .or_else(|| Handle::try_current().ok())
            .expect("async observers need a tokio runtime: subscribe inside one or give the bus .runtime(handle)");
        let shared = mailbox::Queue::new(mailbox, Arc::downgrade(&self.inner.hub.inner));
        let task = runtime.spawn(mailbox::drain(shared.clone(), observer));
        self.inner.task_runtime.lock().get_or_insert(runtime);
        let pusher = Arc::new(Pusher(shared.clone()));
        let subscription = match tag {
            Some(tag) => self.inner.hub.subscribe_tag(tag, pusher),
            None => self.inner.hub.subscribe(pusher),
        };
        // Called from inside the observer's own call: never waits.
        shared.set_disconnect(subscription.disconnector());
        {
            let mut tasks = self.inner.tasks.lock();
            tasks.retain(|t| !t.is_finished());
            tasks.push(task);
        }
        subscription.on_cancel(move || shared.cancel())
    }

    /// Closes the bus gracefully: later publishes fail with [`PublishError::Closed`], the
    /// transport connection is flushed and closed (on a network transport, after waiting up to
    /// the close timeout for the far end to acknowledge what was published), every observer still
    /// subscribed gets `on_completed` exactly once (async observers after their mailbox is
    /// drained, waited for up to the close timeout). Closing again once a close has finished
    /// does nothing.
    ///
    /// # Cancel safety
    ///
    /// This method is cancel safe, and resumable. Publishes fail from its first poll on. Each
    /// later step (closing the transport, completing the observers, waiting for the async
    /// observers' tasks) is done once and remembered: when the future is dropped part-way, calling
    /// `close` again takes up where it stopped, and dropping the last handle of the bus instead
    /// still completes the observers and ends the connection. Async observers' tasks drain their
    /// mailboxes whether or not anyone waits for them.
    pub async fn close(&self) {
        self.finish(self.inner.close_timeout).await;
    }

    /// Drains the bus and closes it: publishes fail from now on; what this bus published is
    /// waited for until the far end has acknowledged it, for at most `timeout`; the connection is
    /// then closed; every observer gets what it was already given (an async observer, what its
    /// mailbox holds, waited for up to `timeout` again) and then `on_completed`. Returns whether
    /// everything was done in time: every event this bus published acknowledged and every mailbox
    /// drained. Events that arrive while the outbox drains are still delivered (a durable
    /// subscription acknowledges what it takes, so dropping them would lose them).
    ///
    /// The same as [`Bus::close`] with a timeout of its own and the outcome said. Draining again,
    /// or closing, once a drain or a close has finished does nothing and returns the outcome of
    /// the first.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe and resumable, as [`Bus::close`]: each step is done once; a drain whose
    /// future is dropped part-way is taken up by the next `drain` or `close` (with that call's
    /// timeout), or finished by dropping the last handle of the bus.
    pub async fn drain(&self, timeout: Duration) -> bool {
        self.finish(timeout).await
    }

    /// The steps of [`Bus::close`] and [`Bus::drain`]; returns whether none ran out of time.
    async fn finish(&self, timeout: Duration) -> bool {
        let inner = &*self.inner;
        inner.closed.store(true, Ordering::Release);
        if inner.closing.done.load(Ordering::Acquire) {
            return !inner.closing.late.load(Ordering::Acquire);
        }
        if !inner.closing.transport.load(Ordering::Acquire) {
            let acknowledged = match &inner.uplink {
                Uplink::Direct(slot) => match slot.get() {
                    Some(conn) => {
                        let flushed = conn.flush().await;
                        if let Err(error) = &flushed {
                            tracing::warn!(%error, "flushing the transport on close");
                        }
                        conn.close().await;
                        flushed.is_ok()
                    }
                    None => true,
                },
                Uplink::Reliable(r) => r.close(timeout).await,
            };
            if !acknowledged {
                inner.closing.late.store(true, Ordering::Release);
            }
            inner.closing.transport.store(true, Ordering::Release);
        }
        inner.hub.complete();
        // No reply can come now: the requests still waiting end (`request` with `Closed`, a
        // `request_all` stream with its end).
        inner.receiver.forget_requests();
        let mut drained = inner.drained(timeout);
        // An error: the waiting task is gone (its runtime shut down), so nothing is left to wait
        // for.
        let in_time = match drained.wait_for(Option::is_some).await {
            Ok(done) => done.unwrap_or(true),
            Err(_) => true,
        };
        if !in_time {
            inner.closing.late.store(true, Ordering::Release);
            tracing::warn!(?timeout, "async observers did not drain in time");
        }
        inner.closing.done.store(true, Ordering::Release);
        tracing::debug!(instance = %inner.instance, "bus closed");
        !inner.closing.late.load(Ordering::Acquire)
    }

    /// Whether [`Bus::close`] was called.
    pub fn is_closed(&self) -> bool {
        self.inner.closed.load(Ordering::Acquire)
    }

    /// Whether the bus is connected to its transport.
    pub fn is_connected(&self) -> bool {
        match &self.inner.uplink {
            Uplink::Direct(slot) => slot.get().is_some_and(|c| c.is_open()),
            Uplink::Reliable(r) => r.is_connected(),
        }
    }

    /// The reliable host keeping the connection of a bus on a network transport (its state as a
    /// watch channel); `None` on an in-process transport, which never disconnects.
    pub fn host(&self) -> Option<ReliableHost> {
        match &self.inner.uplink {
            Uplink::Direct(_) => None,
            Uplink::Reliable(r) => Some(r.host()),
        }
    }

    /// The reliable client's and receiver's counters (outbox, re-sent, duplicates, missed);
    /// `None` on an in-process transport.
    pub fn reliable_stats(&self) -> Option<ReliableStats> {
        match &self.inner.uplink {
            Uplink::Direct(_) => None,
            Uplink::Reliable(r) => Some(r.stats()),
        }
    }

    /// The bus's counters.
    pub fn stats(&self) -> BusStats {
        BusStats {
            published: self.inner.seq.lock().published,
            received: self.inner.receiver.received.load(Ordering::Relaxed),
            unknown_tags: self.inner.receiver.unknown.load(Ordering::Relaxed),
            newer_versions: self.inner.receiver.newer.load(Ordering::Relaxed),
            hub: self.inner.hub.stats(),
        }
    }
}

impl Observable<InterRoleEvent> for Bus {
    /// Registers a raw observer: it sees every event, whatever its type.
    fn subscribe(&self, observer: Arc<dyn Observer<InterRoleEvent>>) -> Subscription {
        self.inner.hub.subscribe(observer)
    }
}

impl Drop for BusInner {
    fn drop(&mut self) {
        // The last handle is gone, with no close or with one that did not finish: end the
        // sequence for the observers still subscribed (once: completing is idempotent), and leave
        // the transport (dropping the connection closes it; a reliable link's host stops).
        self.closed.store(true, Ordering::Release);
        self.hub.complete();
        self.receiver.forget_requests();
        if let Uplink::Reliable(r) = &self.uplink {
            r.abandon();
        }
    }
}

impl fmt::Debug for Bus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Bus")
            .field("instance", &self.inner.instance)
            .field("topic", &self.inner.topic)
            .field("transport", &self.inner.transport.name())
            .field("closed", &self.is_closed())
            .finish()
    }
}

/// Whether `tag` is one of the reliability layer's own (`interrole.reliable.*`), which are not
/// counted as published. Evaluated at compile time, once per event type.
const fn is_reliability_tag(tag: &str) -> bool {
    let (tag, prefix) = (tag.as_bytes(), b"interrole.reliable.");
    if tag.len() < prefix.len() {
        return false;
    }
    let mut i = 0;
    while i < prefix.len() {
        if tag[i] != prefix[i] {
            return false;
        }
        i += 1;
    }
    true
}



impl Bus {
    /// `E`'s tag, for a typed subscription or registration: also notes the version of the
    /// contract this process reads `E` as.
    fn typed_tag<E: Event>(&self) -> TypeTag {
        let tag = checked_tag::<E>();
        self.inner.receiver.reads_version(&tag, E::VERSION);
        tag
    }
}

/// `E`'s tag, checked at compile time: a type whose tag is not valid does not compile when it is
/// used with a bus ([`impl_event!`](interrole_core::impl_event) checks it where it is declared).
fn checked_tag<E: Event>() -> TypeTag {
    assert_valid_tag::<E>();
    E::type_tag()
}

/// What a bus numbers and sends: a typed value ([`Value`]) or a [`RawEvent`].
pub(crate) trait Outgoing {
    /// The type tag.
    fn tag(&self) -> &str;
    /// Whether it may be sent this way (a raw event may not take a reserved tag).
    fn allowed(&self) -> bool;
    /// What counts it as published once it is sent: `None` for the reliability layer's own
    /// events (repairs, heartbeats), which are not counted.
    fn counter(&self) -> Option<Counted>;
    /// The envelope.
    fn wrap(
        self,
        id: EventId,
        stream: StreamPos,
        reply_to: Option<u64>,
        headers: Headers,
    ) -> InterRoleEvent;
}

/// How a sent event is counted in the metrics: by its type (a function made for it), or by a tag
/// known at run time.
pub(crate) enum Counted {
    Static(fn(&BusInner)),
    Tag(TypeTag),
}

impl Counted {
    #[inline]
    fn count(self, inner: &BusInner) {
        match self {
            Counted::Static(count) => count(inner),
            Counted::Tag(tag) => inner.count_published_tag(&tag),
        }
    }
}

/// A typed event on its way out.
pub(crate) struct Value<E>(pub(crate) E);

impl<E: Event> Outgoing for Value<E> {
    #[inline]
    fn tag(&self) -> &str {
        assert_valid_tag::<E>();
        E::TYPE_TAG
    }
    #[inline]
    fn allowed(&self) -> bool {
        assert_valid_tag::<E>();
        true
    }
    #[inline]
    fn counter(&self) -> Option<Counted> {
        (!const { is_reliability_tag(E::TYPE_TAG) })
            .then_some(Counted::Static(BusInner::count_published::<E>))
    }
    #[inline]
    fn wrap(
        self,
        id: EventId,
        stream: StreamPos,
        reply_to: Option<u64>,
        headers: Headers,
    ) -> InterRoleEvent {
        InterRoleEvent::with_headers(id, self.0, stream, reply_to, headers)
    }
}

impl Outgoing for RawEvent {
    fn tag(&self) -> &str {
        self.tag.as_str()
    }
    fn allowed(&self) -> bool {
        !is_reliability_tag(self.tag.as_str())
    }
    fn counter(&self) -> Option<Counted> {
        Some(Counted::Tag(self.tag.clone()))
    }
    fn wrap(
        self,
        id: EventId,
        stream: StreamPos,
        reply_to: Option<u64>,
        headers: Headers,
    ) -> InterRoleEvent {
        InterRoleEvent::raw(id, self, stream, reply_to, headers)
    }
}

/// Fails the build, not the call, when `E`'s tag is not valid; costs nothing at run time.
#[inline(always)]
fn assert_valid_tag<E: Event>() {
    const {
        assert!(
            interrole_core::tag_is_valid(E::TYPE_TAG),
            "an Event's TYPE_TAG must be 1 to 256 ASCII letters, digits or `- _ . :`"
        )
    }
}

