//! What arrives: the receiver that a transport (or the reliability layer) hands events to, and
//! the requests waiting for their replies.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::SystemTime;

use interrole_core::{Inbound, InterRoleEvent, TransportError, TypeTag};
use parking_lot::{Mutex, RwLock};

use crate::dispatch::hub::Hub;

/// Where the replies to one request (or its refusal) go.
pub(crate) enum PendingReply {
    /// [`Bus::request`](crate::Bus::request): the first reply, or the refusal; then forgotten.
    One(tokio::sync::oneshot::Sender<Result<InterRoleEvent, TransportError>>),
    /// [`Bus::request_all`](crate::Bus::request_all): every reply, until the request is
    /// forgotten (its stream of replies dropped).
    Many(tokio::sync::mpsc::UnboundedSender<Result<InterRoleEvent, TransportError>>),
}

/// Removes a request from the pending replies when dropped.
pub(crate) struct PendingGuard<'a> {
    pub(crate) pending: &'a Mutex<HashMap<u64, PendingReply>>,
    pub(crate) key: Option<u64>,
}

impl Drop for PendingGuard<'_> {
    fn drop(&mut self) {
        if let Some(key) = self.key {
            self.pending.lock().remove(&key);
        }
    }
}

/// What the transport (or the reliable layer) hands arriving events to.
pub(crate) struct Receiver {
    pub(crate) hub: Hub,
    /// Tags registered with `Bus::register` (known without an observer).
    pub(crate) known: RwLock<HashSet<TypeTag>>,
    unknown_logged: Mutex<HashSet<TypeTag>>,
    pub(crate) received: AtomicU64,
    pub(crate) unknown: AtomicU64,
    /// The newest contract version of each tag that some typed observer here reads.
    versions: RwLock<HashMap<TypeTag, u32>>,
    /// Events of a newer version than that, and the (tag, version) pairs logged.
    pub(crate) newer: AtomicU64,
    newer_logged: Mutex<HashSet<(TypeTag, u32)>>,
    /// Requests waiting for their reply, by the request's sequence number.
    pub(crate) pending: Mutex<HashMap<u64, PendingReply>>,
}

impl Receiver {
    pub(crate) fn new(hub: Hub) -> Self {
        Self {
            hub,
            known: RwLock::new(HashSet::new()),
            unknown_logged: Mutex::new(HashSet::new()),
            received: AtomicU64::new(0),
            unknown: AtomicU64::new(0),
            versions: RwLock::new(HashMap::new()),
            newer: AtomicU64::new(0),
            newer_logged: Mutex::new(HashSet::new()),
            pending: Mutex::new(HashMap::new()),
        }
    }

    /// Whether this process knows the type `tag`: some observer was ever subscribed to it
    /// (however it was subscribed), or it was registered.
    fn knows(&self, tag: &TypeTag) -> bool {
        self.hub.knows(tag) || self.known.read().contains(tag)
    }

    /// Notes that a typed observer here reads `tag` as `version` of its contract.
    pub(crate) fn reads_version(&self, tag: &TypeTag, version: u32) {
        let known = self.versions.read().get(tag).copied();
        if known.is_none_or(|k| k < version) {
            let mut versions = self.versions.write();
            let known = versions.entry(tag.clone()).or_insert(version);
            *known = (*known).max(version);
        }
    }

    /// Counts (and logs once per tag and version) an event newer than every type that reads
    /// it here.
    #[cold]
    fn check_version(&self, event: &InterRoleEvent) {
        let Some(known) = self.versions.read().get(event.type_tag()).copied() else {
            return;
        };
        if event.version() <= known {
            return;
        }
        self.newer.fetch_add(1, Ordering::Relaxed);
        let key = (event.type_tag().clone(), event.version());
        if self.newer_logged.lock().insert(key) {
            tracing::warn!(type_tag = %event.type_tag(), version = event.version(), known,
                sender = %event.sender(),
                "event of a newer contract version than this process reads: its typed observers get on_error, the observers of every event get it (logged once per tag and version)");
        }
    }

    /// Fails the request `seq`, if one waits.
    pub(crate) fn fail_request(&self, seq: u64, error: TransportError) {
        match self.pending.lock().remove(&seq) {
            Some(PendingReply::One(tx)) => {
                let _ = tx.send(Err(error));
            }
            Some(PendingReply::Many(tx)) => {
                let _ = tx.send(Err(error));
            }
            None => {}
        }
    }

    /// Forgets every request still waiting: they end (the bus is closing).
    pub(crate) fn forget_requests(&self) {
        let forgotten = std::mem::take(&mut *self.pending.lock());
        drop(forgotten);
    }

    /// Whether a request numbered `seq` waits for replies.
    pub(crate) fn awaits_reply(&self, seq: u64) -> bool {
        self.pending.lock().contains_key(&seq)
    }

    /// Hands `event` to the request it answers, when one waits for it; gives it back otherwise.
    pub(crate) fn take_reply(&self, event: InterRoleEvent) -> Option<InterRoleEvent> {
        let Some(request) = event.reply_to().filter(|_| event.stream().directed) else {
            return Some(event);
        };
        let mut pending = self.pending.lock();
        match pending.get(&request) {
            Some(PendingReply::Many(tx)) => {
                if tx.send(Ok(event)).is_err() {
                    // Its stream is gone: forgotten.
                    pending.remove(&request);
                }
                None
            }
            Some(PendingReply::One(_)) => {
                if let Some(PendingReply::One(tx)) = pending.remove(&request) {
                    let _ = tx.send(Ok(event));
                }
                None
            }
            None => Some(event),
        }
    }
}

impl Inbound for Receiver {
    fn event(&self, event: InterRoleEvent) {
        let meters = &self.hub.inner.meters;
        self.received.fetch_add(1, Ordering::Relaxed);
        meters.received.increment(1);
        let Some(event) = self.take_reply(event) else {
            return;
        };
        if event.version() > 1 {
            self.check_version(&event);
        }
        if !event.is_local() && !self.knows(event.type_tag()) {
            self.unknown.fetch_add(1, Ordering::Relaxed);
            meters.unknown.increment(1);
            if self.unknown_logged.lock().insert(event.type_tag().clone()) {
                tracing::warn!(type_tag = %event.type_tag(), sender = %event.sender(),
                    "event of an unknown type: delivered to the observers of every event only (logged once per tag)");
            }
        }
        if !event.is_local() {
            // From another process: its sender's clock to ours (0 when ours is behind).
            let lag = SystemTime::now()
                .duration_since(event.timestamp())
                .unwrap_or_default();
            meters.lag.record(lag.as_secs_f64());
        }
        // A closed hub means the bus is closing: the event is late, not lost by the bus.
        let _ = self.hub.publish(event);
    }

    fn rejected(&self, seq: u64, error: TransportError) {
        tracing::warn!(seq, %error, "an event was refused");
        self.fail_request(seq, error);
    }

    fn closed(&self, error: TransportError) {
        tracing::warn!(%error, transient = error.is_transient(), "transport connection ended");
    }
}

impl fmt::Debug for Receiver {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Receiver").finish_non_exhaustive()
    }
}

