//! Async observers: an async closure, and an [`AsyncObserver`] behind a small mailbox that falls
//! behind. Each async observer runs in its own task, fed by a bounded [`Mailbox`]; when the
//! mailbox is full its [`Overflow`] policy decides what is dropped, and the observer is told how
//! many events it missed ([`ObserverError::Lagged`]) before its next event.
//!
//! ```text
//! cargo run --example async_observer
//! ```

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use interrole::{AsyncObserver, Bus, Mailbox, ObserverError, Overflow, Received};
use serde::{Deserialize, Serialize};
use tokio::sync::Notify;

/// A numbered tick.
#[derive(Debug, Serialize, Deserialize)]
struct Tick {
    n: u64,
}
interrole::impl_event!(Tick = "examples.tick");

/// The future an [`AsyncObserver`] method returns. The trait is written with `async-trait`;
/// implementing it without that crate means spelling out the boxed future, as below.
type BoxFuture<'a> = Pin<Box<dyn Future<Output = ()> + Send + 'a>>;

/// A slow consumer: its first call waits until `gate` opens, so the mailbox fills up.
/// `observe_async` takes the observer by value: the state `main` reads is shared through an `Arc`.
#[derive(Debug, Default)]
struct SlowAuditor(Arc<AuditState>);

/// What the auditor saw, and its gate.
#[derive(Debug, Default)]
struct AuditState {
    started: Notify,
    gate: Notify,
    waited: AtomicBool,
    seen: Mutex<Vec<u64>>,
    missed: AtomicU64,
    completed: AtomicBool,
}

impl AsyncObserver<Received<Tick>> for SlowAuditor {
    fn on_next<'life0, 'async_trait>(&'life0 self, tick: Received<Tick>) -> BoxFuture<'async_trait>
    where
        'life0: 'async_trait,
        Self: 'async_trait,
    {
        Box::pin(async move {
            if !self.0.waited.swap(true, Ordering::Relaxed) {
                self.0.started.notify_one();
                self.0.gate.notified().await; // busy with tick 1 while ticks 2..=10 arrive
            }
            // `Received<Tick>` dereferences to the `Tick`; `envelope()` has sender and seq.
            println!("[auditor] tick {} (seq {})", tick.n, tick.envelope().seq());
            self.0.seen.lock().unwrap().push(tick.n);
        })
    }

    fn on_error<'life0, 'async_trait>(&'life0 self, error: ObserverError) -> BoxFuture<'async_trait>
    where
        'life0: 'async_trait,
        Self: 'async_trait,
    {
        Box::pin(async move {
            println!("[auditor] on_error: {error}");
            if let ObserverError::Lagged { missed } = error {
                self.0.missed.fetch_add(missed, Ordering::Relaxed);
            }
        })
    }

    fn on_completed<'life0, 'async_trait>(&'life0 self) -> BoxFuture<'async_trait>
    where
        'life0: 'async_trait,
        Self: 'async_trait,
    {
        Box::pin(async move {
            println!("[auditor] on_completed: mailbox drained, bus closed");
            self.0.completed.store(true, Ordering::Relaxed);
        })
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    // The mailbox logs each lag with tracing; show it.
    tracing_subscriber::fmt()
        .with_target(false)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr)
        .init();
    let bus = Bus::builder().instance("worker-1").build()?;

    // 1. An async closure with a roomy mailbox: it keeps up, nothing is dropped.
    let _closure = bus.subscribe_async::<Tick, _, _>(Mailbox::bounded(16), |tick| async move {
        tokio::time::sleep(Duration::from_millis(1)).await;
        println!("[closure] tick {}", tick.n);
    });

    // 2. A slow AsyncObserver with room for 2 events; when full, the oldest is dropped.
    //    Other policies: DropNewest, Block { timeout } (the publisher waits), Disconnect.
    let auditor = Arc::new(AuditState::default());
    let mailbox = Mailbox::bounded(2).overflow(Overflow::DropOldest);
    let _auditor = bus.observe_async::<Tick, _>(mailbox, SlowAuditor(auditor.clone()));

    // Tick 1 keeps the auditor busy; ticks 2 and 3 fill its mailbox; ticks 4..=10 each push
    // out the oldest: 7 are dropped and 9 and 10 remain.
    bus.publish(Tick { n: 1 })?;
    tokio::time::timeout(Duration::from_secs(2), auditor.started.notified()).await?;
    for n in 2..=10 {
        bus.publish(Tick { n })?; // never waits under DropOldest
    }
    auditor.gate.notify_one();

    // Close waits (up to the close timeout) for mailboxes to drain, then completes observers.
    bus.close().await;

    let missed = auditor.missed.load(Ordering::Relaxed);
    println!(
        "done: the auditor saw {:?} and was told it missed {missed}; the hub counted {} lagged",
        auditor.seen.lock().unwrap(),
        bus.stats().hub.lagged
    );
    assert_eq!(*auditor.seen.lock().unwrap(), [1, 9, 10]);
    assert_eq!(missed, 7);
    assert_eq!(bus.stats().hub.lagged, 7);
    assert!(auditor.completed.load(Ordering::Relaxed));
    Ok(())
}
