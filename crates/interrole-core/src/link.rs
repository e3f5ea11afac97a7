//! What a network [`Connection`](crate::Connection) keeps to answer `send`, `flush` and
//! `is_open`, and to end once: shared by the relay and NATS transports (feature `link`).

use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::sync::watch;

use crate::{Inbound, TransportError, TransportErrorKind};

/// The state of one network connection, shared by its handle and its tasks.
///
/// - *open*: `send` may queue. Cleared by a failure or by the owner.
/// - *ending*: the inbound has been told the end (or the owner closed); it is told once.
/// - *queued* and *written*: events handed to the writer and events the writer has seen through
///   to the far end, for [`LinkState::flush`].
pub struct LinkState {
    inbound: Arc<dyn Inbound>,
    open: AtomicBool,
    ending: AtomicBool,
    error: Mutex<Option<TransportError>>,
    queued: AtomicU64,
    written: watch::Sender<u64>,
}

impl fmt::Debug for LinkState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LinkState")
            .field("open", &self.is_open())
            .field("ending", &self.is_ending())
            .field("queued", &self.queued.load(Ordering::Relaxed))
            .field("written", &*self.written.borrow())
            .finish_non_exhaustive()
    }
}

impl LinkState {
    /// An open connection that reports to `inbound`.
    pub fn new(inbound: Arc<dyn Inbound>) -> Self {
        Self {
            inbound,
            open: AtomicBool::new(true),
            ending: AtomicBool::new(false),
            error: Mutex::new(None),
            queued: AtomicU64::new(0),
            written: watch::channel(0).0,
        }
    }

    /// Where the connection's events, acknowledgements and end go.
    pub fn inbound(&self) -> &dyn Inbound {
        &*self.inbound
    }

    /// Whether `send` may queue.
    pub fn is_open(&self) -> bool {
        self.open.load(Ordering::Acquire)
    }

    /// Whether the connection is ending: its tasks deliver nothing more.
    pub fn is_ending(&self) -> bool {
        self.ending.load(Ordering::Acquire)
    }

    /// `Ok` while the connection is open; else the error that ended it, or `Closed`.
    ///
    /// # Errors
    /// As above.
    pub fn check_open(&self) -> Result<(), TransportError> {
        if self.is_open() {
            return Ok(());
        }
        Err(self.error().unwrap_or_else(closed))
    }

    /// Counts one event handed to the writer.
    pub fn queued(&self) {
        self.queued.fetch_add(1, Ordering::AcqRel);
    }

    /// Counts `n` events the writer has seen through.
    pub fn written(&self, n: u64) {
        self.written.send_modify(|w| *w += n);
    }

    /// The connection failed: it closes, keeps `error` (the first one), and tells the inbound,
    /// once. Returns whether this call told it.
    pub fn fail(&self, error: TransportError) -> bool {
        self.open.store(false, Ordering::Release);
        self.error
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get_or_insert_with(|| error.clone());
        if self.ending.swap(true, Ordering::AcqRel) {
            return false;
        }
        self.inbound.closed(error);
        true
    }

    /// The owner closes the connection (or gives up on opening it): nothing more is queued or
    /// delivered, and the inbound is not told.
    pub fn end(&self) {
        self.ending.store(true, Ordering::Release);
        self.open.store(false, Ordering::Release);
    }

    /// Waits until everything queued so far is written, or the connection ends.
    ///
    /// # Errors
    /// The error that ended the connection, or `Closed`.
    ///
    /// # Cancel safety
    ///
    /// This method is cancel safe. It only watches the written count: if the future is dropped
    /// at its await (between checks of progress), nothing is lost or left half done, and the
    /// queued events are written as if it had not been called. It may be called again; each
    /// call waits for what was queued when it was called, so a later call covers at least as
    /// much as an earlier one.
    pub async fn flush(&self) -> Result<(), TransportError> {
        let goal = self.queued.load(Ordering::Acquire);
        let mut written = self.written.subscribe();
        loop {
            if *written.borrow_and_update() >= goal {
                return Ok(());
            }
            if let Some(e) = self.error() {
                return Err(e);
            }
            if !self.is_open() {
                return Err(closed());
            }
            // Woken by progress; checked again at least every 100 ms for an end.
            let _ = tokio::time::timeout(Duration::from_millis(100), written.changed()).await;
        }
    }

    fn error(&self) -> Option<TransportError> {
        self.error
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
}

fn closed() -> TransportError {
    TransportError::new(TransportErrorKind::Closed, "the connection is closed")
}
