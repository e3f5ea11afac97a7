//! Buses on one loopback fabric behave as separate role instances; the bus's own contract.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use interrole::core::{Connection, Inbound, OpenSpec, TransportLimits};
use interrole::{
    BuildError, Bus, EventId, InstanceId, InterRoleEvent, Loopback, Observer, ObserverError,
    PublishError, Transport, TransportError, TransportErrorKind,
};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct RoleConfigurationSectionRefresh {
    section_name: String,
}
interrole::impl_event!(
    RoleConfigurationSectionRefresh = "interrole.role.configuration-section-refresh"
);

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct RoleGracefulRecycle {
    role_name: String,
}
interrole::impl_event!(RoleGracefulRecycle = "interrole.role.graceful-recycle");

fn on(fabric: &Loopback, name: &str) -> Bus {
    Bus::builder()
        .instance(name)
        .transport(fabric.clone())
        .build()
        .unwrap()
}

fn collect<E: interrole::Event + Clone>(
    bus: &Bus,
) -> (Arc<Mutex<Vec<E>>>, interrole::Subscription) {
    let seen: Arc<Mutex<Vec<E>>> = Arc::default();
    let s = seen.clone();
    let g = bus.subscribe::<E, _>(move |e| s.lock().unwrap().push(e.clone()));
    (seen, g)
}

#[test]
fn every_bus_on_the_fabric_gets_each_event_once_including_the_publisher() {
    let fabric = Loopback::new();
    let buses: Vec<Bus> = (0..4).map(|i| on(&fabric, &format!("w-{i}"))).collect();
    let seen: Vec<_> = buses.iter().map(collect::<RoleGracefulRecycle>).collect();
    let ev = RoleGracefulRecycle {
        role_name: "worker".into(),
    };
    let id = buses[0].publish(ev.clone()).unwrap();
    assert_eq!(id.seq, 1);
    assert_eq!(id.sender.as_str(), "w-0");
    for (i, (s, _)) in seen.iter().enumerate() {
        assert_eq!(*s.lock().unwrap(), std::slice::from_ref(&ev), "bus {i}");
    }
    // Zero-copy: every bus sees the very envelope that was published.
    let envelopes: Arc<Mutex<Vec<InterRoleEvent>>> = Arc::default();
    let guards: Vec<_> = buses
        .iter()
        .map(|b| {
            let e = envelopes.clone();
            b.subscribe_all(move |ev| e.lock().unwrap().push(ev.clone()))
        })
        .collect();
    buses[2].publish(ev).unwrap();
    let envelopes = envelopes.lock().unwrap();
    assert_eq!(envelopes.len(), 4);
    assert!(
        envelopes
            .iter()
            .all(|e| InterRoleEvent::ptr_eq(e, &envelopes[0]))
    );
    assert!(envelopes[0].is_local());
    drop(guards);
}

#[test]
fn topics_separate_buses() {
    let fabric = Loopback::new();
    let a = Bus::builder()
        .instance("a")
        .topic("orders")
        .transport(fabric.clone())
        .build()
        .unwrap();
    let b = Bus::builder()
        .instance("b")
        .topic("billing")
        .transport(fabric.clone())
        .build()
        .unwrap();
    let (seen, _g) = collect::<RoleGracefulRecycle>(&b);
    a.publish(RoleGracefulRecycle {
        role_name: "x".into(),
    })
    .unwrap();
    assert!(seen.lock().unwrap().is_empty());
}

#[test]
fn send_to_reaches_one_instance_only() {
    let fabric = Loopback::new();
    let (a, b, c) = (on(&fabric, "a"), on(&fabric, "b"), on(&fabric, "c"));
    let seen: Vec<_> = [&a, &b, &c]
        .into_iter()
        .map(collect::<RoleConfigurationSectionRefresh>)
        .collect();
    let ev = RoleConfigurationSectionRefresh {
        section_name: "db".into(),
    };
    a.send_to(b.instance(), ev.clone()).unwrap();
    assert!(
        seen[0].0.lock().unwrap().is_empty(),
        "the sender got its directed event"
    );
    assert_eq!(*seen[1].0.lock().unwrap(), std::slice::from_ref(&ev));
    assert!(
        seen[2].0.lock().unwrap().is_empty(),
        "a bystander got a directed event"
    );
    // To itself: local only.
    a.send_to(a.instance(), ev.clone()).unwrap();
    assert_eq!(seen[0].0.lock().unwrap().len(), 1);
    assert_eq!(seen[1].0.lock().unwrap().len(), 1);
    // To nobody: a transient, specific error.
    let err = a
        .send_to(&InstanceId::new("ghost").unwrap(), ev)
        .unwrap_err();
    match &err {
        PublishError::Transport(e) => assert_eq!(e.kind(), TransportErrorKind::NoListener),
        other => panic!("expected NoListener, got {other:?}"),
    }
    assert!(err.is_transient());
}

#[test]
fn sequence_numbers_grow_per_sender_and_publish_order_holds_across_buses() {
    let fabric = Loopback::new();
    let (a, b) = (on(&fabric, "a"), on(&fabric, "b"));
    let seqs: Arc<Mutex<Vec<(String, u64)>>> = Arc::default();
    let s = seqs.clone();
    let _g = b.subscribe_all(move |e| s.lock().unwrap().push((e.sender().to_string(), e.seq())));
    for _ in 0..5 {
        a.publish(RoleGracefulRecycle {
            role_name: "r".into(),
        })
        .unwrap();
    }
    b.publish(RoleGracefulRecycle {
        role_name: "r".into(),
    })
    .unwrap();
    let seqs = seqs.lock().unwrap().clone();
    let from_a: Vec<u64> = seqs
        .iter()
        .filter(|(s, _)| s == "a")
        .map(|(_, n)| *n)
        .collect();
    assert_eq!(from_a, [1, 2, 3, 4, 5]);
    assert_eq!(seqs.last().unwrap(), &("b".to_string(), 1));
}

/// A handler on one bus that publishes on another: causes come before effects everywhere.
#[test]
fn cross_bus_publishes_from_handlers_keep_causal_order() {
    let fabric = Loopback::new();
    let (a, b) = (on(&fabric, "a"), on(&fabric, "b"));
    let log: Arc<Mutex<Vec<String>>> = Arc::default();
    for bus in [&a, &b] {
        let (l, name) = (log.clone(), bus.instance().to_string());
        bus.subscribe_all(move |e| {
            l.lock()
                .unwrap()
                .push(format!("{name}<-{}#{}", e.sender(), e.seq()))
        })
        .detach();
    }
    // b answers a's first event with one of its own.
    let b2 = b.clone();
    b.subscribe::<RoleGracefulRecycle, _>(move |e| {
        if e.role_name == "ping" {
            b2.publish(RoleGracefulRecycle {
                role_name: "pong".into(),
            })
            .unwrap();
        }
    })
    .detach();
    a.publish(RoleGracefulRecycle {
        role_name: "ping".into(),
    })
    .unwrap();
    let log = log.lock().unwrap().clone();
    let pos = |s: &str| {
        log.iter()
            .position(|x| x == s)
            .unwrap_or_else(|| panic!("{s} missing in {log:?}"))
    };
    assert!(pos("a<-a#1") < pos("a<-b#1"), "{log:?}");
    assert!(pos("b<-a#1") < pos("b<-b#1"), "{log:?}");
    assert_eq!(log.len(), 4, "{log:?}");
}

#[test]
fn bad_names_are_refused_at_build() {
    let err = Bus::builder()
        .instance("not valid")
        .transport(Loopback::new())
        .build()
        .unwrap_err();
    assert!(matches!(err, BuildError::InvalidName(_)), "{err}");
    assert!(err.to_string().contains("instance id"), "{err}");
    let err = Bus::builder()
        .topic("a//b")
        .transport(Loopback::new())
        .build()
        .unwrap_err();
    assert!(err.to_string().contains("topic"), "{err}");
    // The same instance twice on one topic is a conflict.
    let fabric = Loopback::new();
    let _a = on(&fabric, "same");
    let err = Bus::builder()
        .instance("same")
        .transport(fabric)
        .build()
        .unwrap_err();
    match err {
        BuildError::Transport(e) => assert_eq!(e.kind(), TransportErrorKind::Conflict),
        other => panic!("expected a conflict, got {other:?}"),
    }
}

#[test]
fn buses_without_a_transport_share_the_process_fabric() {
    let a = Bus::builder()
        .instance("shared-a")
        .topic("shared-test")
        .build()
        .unwrap();
    let b = Bus::builder()
        .instance("shared-b")
        .topic("shared-test")
        .build()
        .unwrap();
    let (seen, _g) = collect::<RoleGracefulRecycle>(&b);
    a.publish(RoleGracefulRecycle {
        role_name: "x".into(),
    })
    .unwrap();
    assert_eq!(seen.lock().unwrap().len(), 1);
}

// A transport that hands the bus envelopes read off the wire, as a network transport would.

#[derive(Debug, Default, Clone)]
struct Wire {
    inbound: Arc<Mutex<Option<Arc<dyn Inbound>>>>,
}

#[derive(Debug)]
struct WireConnection;

#[async_trait]
impl Connection for WireConnection {
    fn send(&self, _: &InterRoleEvent, _: Option<&InstanceId>) -> Result<(), TransportError> {
        Ok(())
    }
    async fn flush(&self) -> Result<(), TransportError> {
        Ok(())
    }
    async fn close(&self) {}
    fn is_open(&self) -> bool {
        true
    }
}

#[async_trait]
impl Transport for Wire {
    fn name(&self) -> &'static str {
        "wire"
    }
    fn limits(&self) -> TransportLimits {
        // Lossless: the bus hands it events directly, without the reliability layer.
        TransportLimits::with_max_envelope(Some(1 << 20)).lossless()
    }
    async fn open(
        &self,
        _: OpenSpec,
        inbound: Arc<dyn Inbound>,
    ) -> Result<Arc<dyn Connection>, TransportError> {
        *self.inbound.lock().unwrap() = Some(inbound);
        Ok(Arc::new(WireConnection))
    }
}

impl Wire {
    fn deliver<E: interrole::Event>(&self, seq: u64, e: E) {
        let id = EventId {
            sender: InstanceId::new("remote").unwrap(),
            seq,
        };
        let bytes = InterRoleEvent::new(id, e).to_wire().unwrap();
        let received = InterRoleEvent::from_wire(bytes).unwrap();
        let inbound = self.inbound.lock().unwrap().clone().unwrap();
        inbound.event(received);
    }
}

/// An event that counts how often it is decoded.
#[derive(Debug, Clone, PartialEq, Serialize)]
struct Counted(u64);
interrole::impl_event!(Counted = "interrole.test.counted");

static DECODED: AtomicU64 = AtomicU64::new(0);

impl<'de> Deserialize<'de> for Counted {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        DECODED.fetch_add(1, Ordering::SeqCst);
        u64::deserialize(d).map(Counted)
    }
}

/// An event off the wire is decoded once however many observers take it typed, synchronous and
/// async, and not at all for observers of every event.
#[test]
fn events_off_the_wire_are_decoded_once() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let _enter = rt.enter();
    let wire = Wire::default();
    let bus = Bus::builder()
        .instance("local")
        .transport(wire.clone())
        .build()
        .unwrap();
    let raw = Arc::new(AtomicU64::new(0));
    let r = raw.clone();
    let _all = bus.subscribe_all(move |_| {
        r.fetch_add(1, Ordering::SeqCst);
    });
    let (seen, _g1) = collect::<Counted>(&bus);
    let (again, _g2) = collect::<Counted>(&bus);
    let (tx, rx) = std::sync::mpsc::channel();
    let _g3 = bus.subscribe_async::<Counted, _, _>(interrole::Mailbox::default(), move |c| {
        tx.send(c.0).unwrap();
        async {}
    });
    assert_eq!(raw.load(Ordering::SeqCst), 0);
    let before = DECODED.load(Ordering::SeqCst);
    wire.deliver(1, Counted(7));
    assert_eq!(
        rx.recv_timeout(std::time::Duration::from_secs(10)),
        Ok(7),
        "the async observer got nothing"
    );
    assert_eq!(*seen.lock().unwrap(), [Counted(7)]);
    assert_eq!(*again.lock().unwrap(), [Counted(7)]);
    assert_eq!(raw.load(Ordering::SeqCst), 1);
    assert_eq!(
        DECODED.load(Ordering::SeqCst) - before,
        1,
        "decoded more than once for three typed observers"
    );
}

#[test]
fn unknown_tags_off_the_wire_reach_raw_observers() {
    let wire = Wire::default();
    let bus = Bus::builder()
        .instance("local")
        .transport(wire.clone())
        .build()
        .unwrap();
    let (seen, _g) = collect::<RoleGracefulRecycle>(&bus);
    let raw = Arc::new(AtomicU64::new(0));
    let r = raw.clone();
    let _all = bus.subscribe_all(move |_| {
        r.fetch_add(1, Ordering::SeqCst);
    });
    wire.deliver(
        1,
        RoleGracefulRecycle {
            role_name: "w".into(),
        },
    );
    assert_eq!(
        *seen.lock().unwrap(),
        [RoleGracefulRecycle {
            role_name: "w".into()
        }]
    );
    assert_eq!(bus.stats().unknown_tags, 0);

    #[derive(Serialize, Deserialize)]
    struct Future(u8);
    interrole::impl_event!(Future = "from.a.newer.build");
    wire.deliver(2, Future(1));
    wire.deliver(3, Future(2));
    assert_eq!(
        raw.load(Ordering::SeqCst),
        3,
        "unknown types still reach raw observers"
    );
    assert_eq!(bus.stats().unknown_tags, 2);
    assert_eq!(bus.stats().received, 3);
}

#[test]
fn an_undecodable_payload_goes_to_on_error_not_nowhere() {
    #[derive(Default)]
    struct Errors(Mutex<Vec<ObserverError>>, AtomicU64);
    impl Observer<RoleGracefulRecycle> for Errors {
        fn on_next(&self, _: &RoleGracefulRecycle) {
            self.1.fetch_add(1, Ordering::SeqCst);
        }
        fn on_error(&self, e: ObserverError) {
            self.0.lock().unwrap().push(e);
        }
    }
    // Same tag, different shape: a sender on an incompatible build.
    #[derive(Serialize, Deserialize)]
    struct Impostor(u64, u64, u64);
    interrole::impl_event!(Impostor = "interrole.role.graceful-recycle");

    let wire = Wire::default();
    let bus = Bus::builder()
        .instance("local")
        .transport(wire.clone())
        .build()
        .unwrap();
    let obs = Arc::new(Errors::default());
    let _g = bus.observe_arc::<RoleGracefulRecycle>(obs.clone());
    wire.deliver(1, Impostor(300, 1, 1));
    assert_eq!(obs.1.load(Ordering::SeqCst), 0);
    let errors = obs.0.lock().unwrap().clone();
    assert_eq!(errors.len(), 1);
    match &errors[0] {
        ObserverError::Undecodable {
            type_tag, sender, ..
        } => {
            assert_eq!(type_tag.as_str(), "interrole.role.graceful-recycle");
            assert_eq!(sender.as_str(), "remote");
        }
        other => panic!("expected Undecodable, got {other:?}"),
    }
}

/// Headers reach every bus's observers with the event, published and directed, the publisher's
/// own included; an event without headers carries none.
#[test]
fn headers_reach_every_observer_with_the_event() {
    let fabric = Loopback::new();
    let (a, b) = (on(&fabric, "a"), on(&fabric, "b"));
    /// Which bus saw which role, with which reason.
    type Row = (String, String, Option<String>);
    let seen: Arc<Mutex<Vec<Row>>> = Arc::default();
    let mut guards = Vec::new();
    for bus in [&a, &b] {
        let log = seen.clone();
        let me = bus.instance().to_string();
        guards.push(bus.subscribe_all(move |e: &InterRoleEvent| {
            let role = e
                .payload::<RoleGracefulRecycle>()
                .map(|r| r.role_name.clone())
                .unwrap_or_default();
            let reason = e.headers().get("reason").map(str::to_owned);
            log.lock().unwrap().push((me.clone(), role, reason));
        }));
    }
    let recycle = |role: &str| RoleGracefulRecycle {
        role_name: role.into(),
    };
    let why = |r: &str| interrole::Headers::new().with("reason", r).unwrap();
    a.publish_with(recycle("web"), why("deploy")).unwrap();
    a.send_to_with(b.instance(), recycle("db"), why("maintenance"))
        .unwrap();
    a.publish(recycle("cache")).unwrap();
    let mut seen = seen.lock().unwrap().clone();
    seen.sort();
    let row = |bus: &str, role: &str, reason: Option<&str>| {
        (bus.to_owned(), role.to_owned(), reason.map(str::to_owned))
    };
    assert_eq!(
        seen,
        [
            row("a", "cache", None),
            row("a", "web", Some("deploy")),
            row("b", "cache", None),
            row("b", "db", Some("maintenance")),
            row("b", "web", Some("deploy")),
        ]
    );
}
