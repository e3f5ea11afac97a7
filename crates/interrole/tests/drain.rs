//! `Bus::drain` on the in-process transport: what was published before the drain began reaches
//! every observer, async ones included, before `on_completed`. (The relay and NATS versions,
//! where the outbox is waited for, are in their transports' tests.)

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use interrole::{AsyncObserver, Bus, Loopback, Mailbox, Received};
use serde::{Deserialize, Serialize};

#[derive(Debug, Serialize, Deserialize)]
struct Job(u64);
interrole::impl_event!(Job = "test.drain.job");

/// An async observer that takes its time over each event.
#[derive(Default)]
struct Slow {
    seen: Mutex<Vec<u64>>,
    completed: AtomicU64,
    completed_after: AtomicBool,
    per_event: Duration,
}

struct Obs(Arc<Slow>);

#[async_trait]
impl AsyncObserver<Received<Job>> for Obs {
    async fn on_next(&self, job: Received<Job>) {
        tokio::time::sleep(self.0.per_event).await;
        self.0.seen.lock().unwrap().push(job.0);
    }
    async fn on_completed(&self) {
        // Everything before it arrived first.
        self.0
            .completed_after
            .store(self.0.seen.lock().unwrap().len() == 50, Ordering::SeqCst);
        self.0.completed.fetch_add(1, Ordering::SeqCst);
    }
}

fn on(fabric: &Loopback, name: &str) -> Bus {
    Bus::builder()
        .instance(name)
        .transport(fabric.clone())
        .build()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_was_published_before_the_drain_reaches_every_observer_first() {
    let fabric = Loopback::new();
    let publisher = on(&fabric, "publisher");
    let worker = on(&fabric, "worker");
    let slow = Arc::new(Slow {
        per_event: Duration::from_millis(2),
        ..Slow::default()
    });
    let _g = worker.observe_async::<Job, _>(Mailbox::bounded(1024), Obs(slow.clone()));
    for n in 0..50 {
        publisher.publish(Job(n)).unwrap();
    }
    // The mailbox still holds most of them: the drain waits for them.
    assert!(worker.drain(Duration::from_secs(10)).await);
    assert_eq!(*slow.seen.lock().unwrap(), (0..50).collect::<Vec<_>>());
    assert_eq!(slow.completed.load(Ordering::SeqCst), 1);
    assert!(slow.completed_after.load(Ordering::SeqCst));
    // Idempotent, and a close after it changes nothing.
    assert!(worker.drain(Duration::from_secs(10)).await);
    worker.close().await;
    assert_eq!(slow.completed.load(Ordering::SeqCst), 1);
    assert!(worker.publish(Job(99)).is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drain_that_runs_out_of_time_says_so() {
    let fabric = Loopback::new();
    let publisher = on(&fabric, "publisher");
    let worker = on(&fabric, "worker");
    let slow = Arc::new(Slow {
        per_event: Duration::from_millis(50),
        ..Slow::default()
    });
    let _g = worker.observe_async::<Job, _>(Mailbox::bounded(1024), Obs(slow.clone()));
    for n in 0..50 {
        publisher.publish(Job(n)).unwrap();
    }
    assert!(!worker.drain(Duration::from_millis(100)).await);
    // Asked again, the outcome of the first.
    assert!(!worker.drain(Duration::from_secs(10)).await);
}
