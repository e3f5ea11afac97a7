//! Dropping the futures of the bus's async methods at their await points: nothing is lost, and
//! what was started is finished by a later call or by dropping the bus.

use std::future::Future;
use std::pin::pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::task::{Context, Waker};
use std::time::Duration;

use async_trait::async_trait;
use interrole::core::{Connection, Inbound, OpenSpec, TransportLimits};
use interrole::{Bus, InstanceId, InterRoleEvent, Loopback, Observer, Transport, TransportError};
use serde::{Deserialize, Serialize};
use tokio::sync::Semaphore;

const WAIT: Duration = Duration::from_secs(10);

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Ping(u64);
interrole::impl_event!(Ping = "test.cancel.ping");

/// An in-process transport whose `flush` waits until the test lets it go: an await point of
/// `Bus::close` that stays pending as long as the test wants.
#[derive(Debug)]
struct SlowFlush {
    flushes: Arc<Semaphore>,
}

#[derive(Debug)]
struct SlowConnection {
    flushes: Arc<Semaphore>,
    closed: AtomicBool,
}

#[async_trait]
impl Transport for SlowFlush {
    fn name(&self) -> &'static str {
        "slow-flush"
    }
    fn limits(&self) -> TransportLimits {
        TransportLimits::default().lossless()
    }
    async fn open(
        &self,
        _: OpenSpec,
        _: Arc<dyn Inbound>,
    ) -> Result<Arc<dyn Connection>, TransportError> {
        Ok(Arc::new(SlowConnection {
            flushes: self.flushes.clone(),
            closed: AtomicBool::new(false),
        }))
    }
}

#[async_trait]
impl Connection for SlowConnection {
    fn send(&self, _: &InterRoleEvent, _: Option<&InstanceId>) -> Result<(), TransportError> {
        Ok(())
    }
    async fn flush(&self) -> Result<(), TransportError> {
        self.flushes.acquire().await.unwrap().forget();
        Ok(())
    }
    async fn close(&self) {
        self.closed.store(true, Ordering::SeqCst);
    }
    fn is_open(&self) -> bool {
        !self.closed.load(Ordering::SeqCst)
    }
}

#[derive(Default)]
struct Completions(AtomicUsize);

impl Observer<Ping> for Completions {
    fn on_next(&self, _: &Ping) {}
    fn on_completed(&self) {
        self.0.fetch_add(1, Ordering::SeqCst);
    }
}

/// Polls `future` once; returns whether it was still pending (then drops it).
fn poll_once(future: impl Future) -> bool {
    let mut future = pin!(future);
    let mut cx = Context::from_waker(Waker::noop());
    future.as_mut().poll(&mut cx).is_pending()
}

fn slow_bus() -> (Bus, Arc<Semaphore>, Arc<Completions>) {
    let flushes = Arc::new(Semaphore::new(0));
    let bus = Bus::builder()
        .instance("closing")
        .transport(SlowFlush {
            flushes: flushes.clone(),
        })
        .build()
        .unwrap();
    let completions = Arc::new(Completions::default());
    bus.observe_arc::<Ping>(completions.clone()).detach();
    (bus, flushes, completions)
}

#[tokio::test]
async fn a_close_dropped_during_the_transport_close_is_finished_by_the_next() {
    let (bus, flushes, completions) = slow_bus();
    assert!(poll_once(bus.close()), "the flush was expected to wait");
    assert!(bus.is_closed(), "publishes fail from the first poll");
    assert!(bus.publish(Ping(1)).is_err());
    assert_eq!(completions.0.load(Ordering::SeqCst), 0);
    flushes.add_permits(1);
    tokio::time::timeout(WAIT, bus.close()).await.unwrap();
    assert_eq!(completions.0.load(Ordering::SeqCst), 1, "on_completed once");
    // Closing again does nothing more.
    tokio::time::timeout(WAIT, bus.close()).await.unwrap();
    assert_eq!(completions.0.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn a_close_dropped_part_way_is_finished_by_dropping_the_bus() {
    let (bus, _flushes, completions) = slow_bus();
    assert!(poll_once(bus.close()));
    drop(bus);
    assert_eq!(completions.0.load(Ordering::SeqCst), 1, "on_completed once");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_request_is_forgotten_and_its_late_reply_delivered() {
    #[derive(Debug, Clone, Serialize, Deserialize)]
    struct Ask;
    interrole::impl_event!(Ask = "test.cancel.ask");
    #[derive(Debug, Clone, Serialize, Deserialize)]
    struct Answer(u64);
    interrole::impl_event!(Answer = "test.cancel.answer");

    let fabric = Loopback::new();
    let asker = Bus::builder()
        .instance("asker")
        .transport(fabric.clone())
        .build()
        .unwrap();
    let server = Bus::builder()
        .instance("server")
        .transport(fabric)
        .build()
        .unwrap();
    // The server keeps the request to answer it later.
    let (held_tx, held) = std::sync::mpsc::channel();
    let _s = server.subscribe_all(move |e| {
        if e.payload::<Ask>().is_some() {
            held_tx.send(e.clone()).unwrap();
        }
    });
    let (tx, mut answers) = tokio::sync::mpsc::unbounded_channel();
    let _a = asker.subscribe::<Answer, _>(move |a| tx.send(a.0).unwrap());
    let target = InstanceId::new("server").unwrap();
    let request = asker.request::<Ask, Answer>(&target, Ask, WAIT);
    assert!(
        poll_once(request),
        "the request was expected to wait for its reply"
    );
    let ask = held.recv_timeout(WAIT).unwrap();
    server.reply(&ask, Answer(42)).unwrap();
    // The request is gone: its late reply is an ordinary event for the asker's observers.
    let got = tokio::time::timeout(WAIT, answers.recv()).await.unwrap();
    assert_eq!(got, Some(42));
}
