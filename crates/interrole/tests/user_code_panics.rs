//! User code that panics while the bus runs it (a payload's `Serialize`, `Deserialize` or `Drop`)
//! fails only the call that ran it: the thread, the hub and the bus go on, and nothing published
//! afterwards is lost.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::time::Duration;

use interrole::{Bus, Loopback};
use serde::{Deserialize, Serialize};

#[cfg(feature = "relay")]
mod relay_support;

const WAIT: Duration = Duration::from_secs(20);

/// An event whose `Drop` panics when `armed` is set.
#[derive(Debug, Serialize, Deserialize)]
struct Grenade {
    n: u64,
    #[serde(skip)]
    armed: Option<Arc<AtomicBool>>,
}
interrole::impl_event!(Grenade = "test.panics.grenade");

impl Drop for Grenade {
    fn drop(&mut self) {
        if self
            .armed
            .as_ref()
            .is_some_and(|a| a.swap(false, Ordering::SeqCst))
        {
            panic!("Drop exploded");
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Tick(u64);
interrole::impl_event!(Tick = "test.panics.tick");

#[test]
fn a_panicking_payload_drop_fails_nothing_and_loses_nothing() {
    let fabric = Loopback::new();
    let a = Bus::builder()
        .instance("a")
        .transport(fabric.clone())
        .build()
        .unwrap();
    let b = Bus::builder()
        .instance("b")
        .transport(fabric)
        .build()
        .unwrap();
    let (tx, seen) = mpsc::channel();
    let tx2 = tx.clone();
    let _g1 = b.subscribe::<Grenade, _>(move |g| tx.send(format!("grenade {}", g.n)).unwrap());
    let _g2 = b.subscribe::<Tick, _>(move |t| tx2.send(format!("tick {}", t.0)).unwrap());
    // Published from inside an observer call: both are queued, and the grenade's drop (when
    // its dispatch is over) panics while the tick still waits in the queue.
    let armed = Arc::new(AtomicBool::new(false));
    let publisher = a.clone();
    let arm = armed.clone();
    let _g3 = a.subscribe::<Tick, _>(move |t| {
        if t.0 == 0 {
            arm.store(true, Ordering::SeqCst);
            let grenade = Grenade {
                n: 1,
                armed: Some(arm.clone()),
            };
            publisher.publish(grenade).unwrap();
            publisher.publish(Tick(2)).unwrap();
        }
    });
    let result = catch_unwind(AssertUnwindSafe(|| a.publish(Tick(0))));
    assert!(result.is_ok(), "the payload's Drop unwound through publish");
    assert!(
        !armed.load(Ordering::SeqCst),
        "the grenade was never dropped"
    );
    let got: Vec<String> = seen.try_iter().collect();
    assert_eq!(got, ["tick 0", "grenade 1", "tick 2"]);
    // And the thread's next publish is delivered as usual.
    a.publish(Tick(3)).unwrap();
    assert_eq!(seen.try_recv().unwrap(), "tick 3");
}

#[cfg(feature = "relay")]
mod relay {
    use super::relay_support::{bus, relay, until_live};
    use super::*;
    use interrole::{AsyncObserver, Mailbox, ObserverError, Received};

    #[derive(Debug, Clone, Serialize, Deserialize)]
    struct Probe;
    interrole::impl_event!(Probe = "test.panics.probe");

    /// An event whose `Serialize` panics when `explode` is set.
    #[derive(Debug, Clone, PartialEq, Deserialize)]
    struct Fragile {
        n: u64,
        explode: bool,
    }
    interrole::impl_event!(Fragile = "test.panics.fragile");

    impl Serialize for Fragile {
        fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
            assert!(!self.explode, "Serialize exploded");
            (self.n, self.explode).serialize(s)
        }
    }

    /// After a publish whose `Serialize` panicked, caught by the publishing thread, the same
    /// thread's next publish reaches both the local and the remote observers.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_panicking_serialize_fails_that_publish_only() {
        let server = relay().await;
        let a = bus(&server, "panics", "a").await;
        let b = bus(&server, "panics", "b").await;
        until_live(&a, &b, || Probe).await;
        let (local_tx, local) = mpsc::channel();
        let _l = a.subscribe::<Fragile, _>(move |f| local_tx.send(f.n).unwrap());
        let (remote_tx, mut remote) = tokio::sync::mpsc::unbounded_channel();
        let _r = b.subscribe::<Fragile, _>(move |f| remote_tx.send(f.n).unwrap());

        let publisher = a.clone();
        let thread = std::thread::spawn(move || {
            let boom = catch_unwind(AssertUnwindSafe(|| {
                publisher.publish(Fragile {
                    n: 1,
                    explode: true,
                })
            }));
            assert!(boom.is_err(), "Serialize was expected to panic");
            publisher
                .publish(Fragile {
                    n: 2,
                    explode: false,
                })
                .unwrap();
        });
        thread.join().unwrap();
        // The local delivery is made before publish returns.
        assert_eq!(local.try_iter().collect::<Vec<_>>(), [2]);
        let first = tokio::time::timeout(WAIT, remote.recv()).await.unwrap();
        assert_eq!(first, Some(2));
        // Nothing else: a marker published after it arrives next.
        a.publish(Fragile {
            n: 3,
            explode: false,
        })
        .unwrap();
        let next = tokio::time::timeout(WAIT, remote.recv()).await.unwrap();
        assert_eq!(next, Some(3));
        assert_eq!(local.try_iter().collect::<Vec<_>>(), [3]);
        server.shutdown().await;
    }

    /// An event whose `Deserialize` panics when `n` is 1.
    #[derive(Debug, Serialize)]
    struct Touchy(u64);
    interrole::impl_event!(Touchy = "test.panics.touchy");

    impl<'de> Deserialize<'de> for Touchy {
        fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
            let n = u64::deserialize(d)?;
            assert!(n != 1, "Deserialize exploded");
            Ok(Touchy(n))
        }
    }

    struct Record(tokio::sync::mpsc::UnboundedSender<String>);

    #[interrole::async_trait]
    impl AsyncObserver<Received<Touchy>> for Record {
        async fn on_next(&self, value: Received<Touchy>) {
            self.0.send(format!("next {}", value.0)).unwrap();
        }
        async fn on_error(&self, error: ObserverError) {
            self.0.send(format!("error {error}")).unwrap();
        }
    }

    /// An async observer whose value panics while it is decoded is told through `on_error`, and
    /// goes on with the next event.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_panicking_deserialize_does_not_end_an_async_observer() {
        let server = relay().await;
        let a = bus(&server, "decode", "a").await;
        let b = bus(&server, "decode", "b").await;
        until_live(&a, &b, || Probe).await;
        let (tx, mut seen) = tokio::sync::mpsc::unbounded_channel();
        let _g = b.observe_async::<Touchy, _>(Mailbox::bounded(16), Record(tx));
        a.publish(Touchy(1)).unwrap();
        a.publish(Touchy(2)).unwrap();
        let first = tokio::time::timeout(WAIT, seen.recv())
            .await
            .unwrap()
            .unwrap();
        assert!(first.contains("Deserialize exploded"), "{first}");
        let second = tokio::time::timeout(WAIT, seen.recv())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(second, "next 2");
        server.shutdown().await;
    }
}

/// A `serve` handler that panics fails that request only: the requester is not answered (it
/// times out), and the next request is served as usual.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panicking_serve_handler_fails_that_request_only() {
    #[derive(Debug, Clone, Serialize, Deserialize)]
    struct Ask(u64);
    interrole::impl_event!(Ask = "test.panics.ask");
    #[derive(Debug, Clone, Serialize, Deserialize)]
    struct Answer(u64);
    interrole::impl_event!(Answer = "test.panics.answer");

    let fabric = Loopback::new();
    let server = Bus::builder()
        .instance("server")
        .transport(fabric.clone())
        .build()
        .unwrap();
    let client = Bus::builder()
        .instance("client")
        .transport(fabric)
        .build()
        .unwrap();
    let _serving = server.serve::<Ask, Answer, _>(|a| {
        assert!(a.0 != 1, "handler exploded");
        Answer(a.0 * 10)
    });
    let target = interrole::InstanceId::new("server").unwrap();
    let short = Duration::from_millis(200);
    let failed = client.request::<Ask, Answer>(&target, Ask(1), short).await;
    assert!(
        matches!(failed, Err(interrole::RequestError::Timeout(_))),
        "{failed:?}"
    );
    let answered = client.request::<Ask, Answer>(&target, Ask(2), WAIT).await;
    assert_eq!(answered.unwrap().0, 20);
    assert_eq!(server.stats().hub.panics, 1);
}
