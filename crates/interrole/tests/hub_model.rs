//! Property test of the hub as a state machine: random subscribes, unsubscribes, detaches,
//! publishes and a close, checked against a plain model of who should receive what.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use interrole::{Bus, InterRoleEvent, Loopback, Observer, Subscription};
use proptest::prelude::*;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize)]
struct A(u64);
interrole::impl_event!(A = "model.a");

#[derive(Debug, Clone, Serialize, Deserialize)]
struct B(u64);
interrole::impl_event!(B = "model.b");

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    OnlyA,
    OnlyB,
    All,
}

#[derive(Debug, Clone)]
enum Op {
    Subscribe(Kind),
    Unsubscribe(usize),
    Detach(usize),
    PublishA,
    PublishB,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        3 => prop_oneof![Just(Kind::OnlyA), Just(Kind::OnlyB), Just(Kind::All)].prop_map(Op::Subscribe),
        2 => any::<usize>().prop_map(Op::Unsubscribe),
        1 => any::<usize>().prop_map(Op::Detach),
        3 => Just(Op::PublishA),
        3 => Just(Op::PublishB),
    ]
}

#[derive(Default)]
struct Log {
    events: Mutex<Vec<(String, u64)>>,
    completed: Mutex<u32>,
}

impl Observer<InterRoleEvent> for Log {
    fn on_next(&self, e: &InterRoleEvent) {
        self.events
            .lock()
            .unwrap()
            .push((e.type_tag().to_string(), e.seq()));
    }
    fn on_completed(&self) {
        *self.completed.lock().unwrap() += 1;
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(128))]
    #[test]
    fn the_hub_matches_the_model(ops in prop::collection::vec(op(), 1..60)) {
        let bus = Bus::builder().instance("model").transport(Loopback::new()).build().unwrap();
        // Observer index -> (kind, log, guard if still held, subscribed?)
        let mut observers: Vec<(Kind, Arc<Log>, Option<Subscription>, bool)> = Vec::new();
        let mut expected: BTreeMap<usize, Vec<(String, u64)>> = BTreeMap::new();
        let mut seq = 0;
        for op in ops {
            match op {
                Op::Subscribe(kind) => {
                    let log = Arc::new(Log::default());
                    let l = log.clone();
                    let guard = match kind {
                        Kind::All => bus.observe_all(l),
                        Kind::OnlyA => bus.subscribe::<A, _>({
                            let l = l.clone();
                            move |a| l.events.lock().unwrap().push(("model.a".into(), a.0))
                        }),
                        Kind::OnlyB => bus.subscribe::<B, _>({
                            let l = l.clone();
                            move |b| l.events.lock().unwrap().push(("model.b".into(), b.0))
                        }),
                    };
                    expected.insert(observers.len(), Vec::new());
                    observers.push((kind, log, Some(guard), true));
                }
                Op::Unsubscribe(i) if !observers.is_empty() => {
                    let i = i % observers.len();
                    if let Some(g) = observers[i].2.take() {
                        drop(g);
                        observers[i].3 = false;
                    }
                }
                Op::Detach(i) if !observers.is_empty() => {
                    let i = i % observers.len();
                    if let Some(g) = observers[i].2.take() {
                        g.detach();
                    }
                }
                Op::PublishA | Op::PublishB => {
                    seq += 1;
                    let tag = if matches!(op, Op::PublishA) { "model.a" } else { "model.b" };
                    if tag == "model.a" { bus.publish(A(seq)).unwrap(); } else { bus.publish(B(seq)).unwrap(); }
                    for (i, (kind, _, _, subscribed)) in observers.iter().enumerate() {
                        let wants = match kind {
                            Kind::All => true,
                            Kind::OnlyA => tag == "model.a",
                            Kind::OnlyB => tag == "model.b",
                        };
                        if *subscribed && wants {
                            expected.get_mut(&i).unwrap().push((tag.to_string(), seq));
                        }
                    }
                }
                _ => {}
            }
        }
        let live = observers.iter().filter(|o| o.3).count();
        prop_assert_eq!(bus.stats().hub.observers, live);
        for (i, (_, log, _, _)) in observers.iter().enumerate() {
            prop_assert_eq!(&*log.events.lock().unwrap(), &expected[&i], "observer {}", i);
        }
        drop(bus);
        // Only the observers still subscribed when the bus went away are completed, once.
        for (kind, log, _, subscribed) in &observers {
            let want = u32::from(*subscribed && *kind == Kind::All);
            prop_assert_eq!(*log.completed.lock().unwrap(), want);
        }
    }
}
