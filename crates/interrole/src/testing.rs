//! A test harness for users' own tests (feature `testing`): buses on an in-memory fabric that
//! record what was published, sent and consumed, with async waits, in the manner of
//! MassTransit's test harness.
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use std::time::Duration;
//! use interrole::testing::TestHarness;
//!
//! #[derive(serde::Serialize, serde::Deserialize)]
//! struct OrderPlaced { id: u64 }
//! interrole::impl_event!(OrderPlaced = "shop.order-placed");
//! #[derive(serde::Serialize, serde::Deserialize)]
//! struct InvoiceRequested { order: u64 }
//! interrole::impl_event!(InvoiceRequested = "shop.invoice-requested");
//!
//! let harness = TestHarness::new();
//! let shop = harness.bus("shop")?;
//! let billing = harness.bus("billing")?;
//! // The code under test: billing asks for an invoice for every order placed.
//! let b = billing.clone();
//! let _rule = billing.subscribe::<OrderPlaced, _>(move |o| {
//!     b.publish(InvoiceRequested { order: o.id }).unwrap();
//! });
//!
//! shop.publish(OrderPlaced { id: 7 })?;
//!
//! let wait = Duration::from_secs(5);
//! assert_eq!(harness.consumed::<OrderPlaced>().next(wait).await.unwrap().id, 7);
//! let invoice = harness.published::<InvoiceRequested>().next(wait).await.unwrap();
//! assert_eq!((invoice.order, invoice.envelope().sender().as_str()), (7, "billing"));
//! assert!(harness.published::<InvoiceRequested>().skip(1).nothing_within(Duration::from_millis(50)).await);
//! # Ok(())
//! # }
//! ```

pub mod golden;

use std::fmt;
use std::marker::PhantomData;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use interrole_core::{
    Connection, Event, Inbound, InstanceId, InterRoleEvent, OpenSpec, Transport, TransportError,
    TransportLimits,
};
use parking_lot::Mutex;
use tokio::sync::watch;

use crate::builder::BusBuilder;
use crate::bus::Bus;
use crate::error::BuildError;
use crate::loopback::Loopback;
use crate::observe::mailbox::Received;
use crate::observe::observer::Observer;

/// What happened to a recorded event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Published,
    Sent,
    Consumed,
}

/// One recorded event: what happened to it, and on which bus.
#[derive(Clone)]
struct Record {
    kind: Kind,
    bus: InstanceId,
    event: InterRoleEvent,
}

#[derive(Default)]
struct Log {
    records: Mutex<Vec<Record>>,
    /// The number of records, for waiters.
    len: watch::Sender<usize>,
}

impl Log {
    fn record(&self, kind: Kind, bus: &InstanceId, event: &InterRoleEvent) {
        let len = {
            let mut records = self.records.lock();
            records.push(Record {
                kind,
                bus: bus.clone(),
                event: event.clone(),
            });
            records.len()
        };
        self.len.send_replace(len);
    }
}

/// Buses on an in-memory fabric that record what was published (multicast), sent (directed to
/// one instance) and consumed (delivered to a bus that has an observer of the event's type),
/// for tests. Cheap to clone: clones share the fabric and the records.
#[derive(Clone, Default)]
pub struct TestHarness {
    transport: Arc<Recording>,
}

impl fmt::Debug for TestHarness {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TestHarness")
            .field("records", &self.transport.log.records.lock().len())
            .finish()
    }
}

impl TestHarness {
    /// A harness with a fabric of its own.
    pub fn new() -> Self {
        Self::default()
    }

    /// A bus for `instance` on the harness's fabric, recorded.
    ///
    /// # Errors
    /// As [`BusBuilder::build`].
    pub fn bus(&self, instance: &str) -> Result<Bus, BuildError> {
        self.bus_with(instance, |builder| builder)
    }

    /// A bus for `instance` on the harness's fabric, recorded, with other settings of
    /// `configure`'s (dispatch, topic, runtime...; not the transport).
    ///
    /// # Errors
    /// As [`BusBuilder::build`].
    pub fn bus_with(
        &self,
        instance: &str,
        configure: impl FnOnce(BusBuilder) -> BusBuilder,
    ) -> Result<Bus, BuildError> {
        let bus = configure(Bus::builder().instance(instance))
            .transport_arc(self.transport.clone() as Arc<dyn Transport>)
            .build()?;
        bus.observe_all(Consumed {
            bus: bus.instance().clone(),
            hub: bus.hub().clone(),
            log: self.transport.log.clone(),
        })
        .detach();
        Ok(bus)
    }

    /// The events of type `E` published (multicast) by the harness's buses, from the first.
    pub fn published<E: Event>(&self) -> Events<E> {
        self.events(Kind::Published)
    }

    /// The events of type `E` sent to one instance ([`Bus::send_to`], requests, replies).
    pub fn sent<E: Event>(&self) -> Events<E> {
        self.events(Kind::Sent)
    }

    /// The events of type `E` delivered to a harness bus with an observer of `E` (one record per
    /// bus that got it: a publish consumed by two buses is two records).
    pub fn consumed<E: Event>(&self) -> Events<E> {
        self.events(Kind::Consumed)
    }

    fn events<E: Event>(&self, kind: Kind) -> Events<E> {
        Events {
            log: self.transport.log.clone(),
            kind,
            next: 0,
            skip: 0,
            bus: None,
            event: PhantomData,
        }
    }
}

/// A cursor over the recorded events of one kind and type, from the first; each one is returned
/// once. Get it from [`TestHarness::published`], [`sent`](TestHarness::sent) or
/// [`consumed`](TestHarness::consumed).
pub struct Events<E> {
    log: Arc<Log>,
    kind: Kind,
    /// The index of the next record to look at.
    next: usize,
    /// Matching events still to pass over.
    skip: usize,
    /// Only the records of this bus.
    bus: Option<String>,
    event: PhantomData<fn() -> E>,
}

impl<E> fmt::Debug for Events<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Events")
            .field("kind", &self.kind)
            .field("next", &self.next)
            .finish()
    }
}

impl<E: Event> Events<E> {
    /// Only the events of the bus of `instance`: the ones it published or sent, or consumed.
    pub fn on(mut self, instance: &str) -> Self {
        self.bus = Some(instance.to_owned());
        self
    }

    /// Passes over the next `n` matching events (those already recorded and those to come).
    pub fn skip(mut self, n: usize) -> Self {
        self.skip += n;
        self
    }

    /// The next matching event recorded so far, if any, without waiting.
    fn take(&mut self) -> Option<Received<E>> {
        let records = self.log.records.lock();
        while self.next < records.len() {
            let record = &records[self.next];
            self.next += 1;
            if record.kind != self.kind
                || record.event.type_tag().as_str() != E::TYPE_TAG
                || self.bus.as_deref().is_some_and(|b| b != record.bus.as_str())
            {
                continue;
            }
            if self.skip > 0 {
                self.skip -= 1;
                continue;
            }
            if let Ok(received) = Received::new(record.event.clone()) {
                return Some(received);
            }
        }
        None
    }

    /// Every matching event recorded so far that this cursor has not returned yet.
    pub fn so_far(&mut self) -> Vec<Received<E>> {
        std::iter::from_fn(|| self.take()).collect()
    }

    /// Waits for the next matching event, for at most `timeout`; `None` when none came.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: an event is taken from the records only when it is returned.
    pub async fn next(&mut self, timeout: Duration) -> Option<Received<E>> {
        let mut len = self.log.len.subscribe();
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            len.mark_unchanged();
            if let Some(event) = self.take() {
                return Some(event);
            }
            if tokio::time::timeout_at(deadline, len.changed()).await.is_err() {
                return self.take();
            }
        }
    }

    /// Whether no matching event comes within `window` (counting those recorded but not yet
    /// returned by this cursor).
    ///
    /// # Cancel safety
    ///
    /// Cancel safe, as [`Events::next`].
    pub async fn nothing_within(&mut self, window: Duration) -> bool {
        self.next(window).await.is_none()
    }
}

/// The harness's transport: a private loopback fabric whose connections record what they send,
/// and whose buses record what they consume.
#[derive(Default)]
struct Recording {
    fabric: Loopback,
    log: Arc<Log>,
}

impl fmt::Debug for Recording {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Recording").finish_non_exhaustive()
    }
}

#[async_trait]
impl Transport for Recording {
    fn name(&self) -> &'static str {
        "testing"
    }

    fn limits(&self) -> TransportLimits {
        self.fabric.limits()
    }

    async fn open(
        &self,
        spec: OpenSpec,
        inbound: Arc<dyn Inbound>,
    ) -> Result<Arc<dyn Connection>, TransportError> {
        let instance = spec.instance.clone();
        let inner = self.fabric.open(spec, inbound).await?;
        Ok(Arc::new(RecordingConnection {
            inner,
            instance,
            log: self.log.clone(),
        }))
    }
}

struct RecordingConnection {
    inner: Arc<dyn Connection>,
    instance: InstanceId,
    log: Arc<Log>,
}

impl fmt::Debug for RecordingConnection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RecordingConnection")
            .field("instance", &self.instance)
            .finish_non_exhaustive()
    }
}

#[async_trait]
impl Connection for RecordingConnection {
    fn send(&self, event: &InterRoleEvent, target: Option<&InstanceId>) -> Result<(), TransportError> {
        let kind = if target.is_some() { Kind::Sent } else { Kind::Published };
        self.log.record(kind, &self.instance, event);
        self.inner.send(event, target)
    }

    async fn flush(&self) -> Result<(), TransportError> {
        self.inner.flush().await
    }

    async fn close(&self) {
        self.inner.close().await
    }

    fn is_open(&self) -> bool {
        self.inner.is_open()
    }
}

/// Records what a harness bus's observers of each type got.
struct Consumed {
    bus: InstanceId,
    hub: crate::dispatch::hub::Hub,
    log: Arc<Log>,
}

impl Observer<InterRoleEvent> for Consumed {
    fn on_next(&self, event: &InterRoleEvent) {
        if self.hub.has_observers_for(event.type_tag().as_str()) {
            self.log.record(Kind::Consumed, &self.bus, event);
        }
    }
}
