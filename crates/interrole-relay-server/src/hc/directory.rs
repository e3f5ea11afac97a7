//! The Hybrid Connections directory: the listeners of each path, the senders waiting for a
//! listener's decision and the HTTP requests waiting for a response, by id.
//!
//! Every map is behind its own short lock, held only to insert, remove or copy; entries are
//! removed by guards when their waiter gives up (a timeout, a dropped connection).

use std::collections::HashMap;
use std::collections::hash_map::RandomState;
use std::hash::BuildHasher;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use bytes::Bytes;
use interrole_relay::control::Response;
use interrole_relay::url::RelayAddress;
use parking_lot::Mutex;
use tokio::sync::{mpsc, oneshot};
use tokio_tungstenite::tungstenite::Message;

use crate::conn::Conn;

/// How many messages may wait for a listener's control channel.
const CONTROL_QUEUE: usize = 1024;

/// A listener's answer to an HTTP request.
pub(crate) struct Reply {
    pub(crate) response: Response,
    pub(crate) body: Bytes,
}

/// One connected listener, as senders see it.
pub(crate) struct Listener {
    pub(crate) key: u64,
    /// Messages for the control channel.
    pub(crate) tx: mpsc::Sender<Message>,
    /// `ws://host` as the listener reached the relay.
    pub(crate) base: String,
}

/// What the listener did with a sender.
pub(crate) enum Decision {
    Accepted {
        stream: Conn,
        rest: Vec<u8>,
        accept_key: String,
        protocol: Option<String>,
    },
    Rejected(u16, String),
}

/// An HTTP request waiting for its response.
struct Waiting {
    reply: oneshot::Sender<Reply>,
    /// What the request rendezvous delivers first: the whole request, for a request that was
    /// too large to travel inline.
    deliver: Option<(String, Bytes)>,
    /// Whether its rendezvous was opened (it is single use).
    opened: bool,
}

/// Every Hybrid Connections listener, waiting sender and waiting HTTP request.
pub(crate) struct Directory {
    listeners: Mutex<HashMap<String, Vec<Arc<Listener>>>>,
    /// Senders waiting for their listener, by rendezvous id.
    pending: Mutex<HashMap<String, oneshot::Sender<Decision>>>,
    /// HTTP requests waiting for their response, by request id.
    requests: Mutex<HashMap<String, Waiting>>,
    rng: Mutex<u64>,
    next_key: AtomicU64,
}

impl Directory {
    pub(crate) fn new() -> Self {
        let seed = RandomState::new().hash_one(Instant::now()) | 1;
        Self {
            listeners: Mutex::new(HashMap::new()),
            pending: Mutex::new(HashMap::new()),
            requests: Mutex::new(HashMap::new()),
            rng: Mutex::new(seed),
            next_key: AtomicU64::new(1),
        }
    }

    fn random(&self) -> u64 {
        let mut x = self.rng.lock();
        // xorshift64
        *x ^= *x << 13;
        *x ^= *x >> 7;
        *x ^= *x << 17;
        *x
    }

    /// A fresh GUID-shaped id.
    pub(crate) fn new_id(&self) -> String {
        let (a, b) = (self.random(), self.random());
        format!(
            "{:08x}-{:04x}-{:04x}-{:04x}-{:012x}",
            a >> 32,
            (a >> 16) & 0xffff,
            a & 0xffff,
            b >> 48,
            b & 0xffff_ffff_ffff
        )
    }

    /// Registers a listener on `path`, unless the path is full.
    pub(crate) fn register<'a>(
        &'a self,
        path: &str,
        base: String,
        cap: usize,
    ) -> Option<(Registration<'a>, mpsc::Receiver<Message>)> {
        let (tx, rx) = mpsc::channel(CONTROL_QUEUE);
        let listener = Arc::new(Listener {
            key: self.next_key.fetch_add(1, Ordering::Relaxed),
            tx,
            base,
        });
        let mut all = self.listeners.lock();
        let on_path = all.entry(path.to_owned()).or_default();
        if on_path.len() >= cap {
            if on_path.is_empty() {
                all.remove(path);
            }
            return None;
        }
        let registration = Registration {
            directory: self,
            path: path.to_owned(),
            key: listener.key,
        };
        on_path.push(listener);
        Some((registration, rx))
    }

    /// A random listener on the longest prefix of `address`'s path that has one, other than
    /// those in `tried`.
    pub(crate) fn pick(&self, address: &RelayAddress, tried: &[u64]) -> Option<Arc<Listener>> {
        let on_path = {
            let all = self.listeners.lock();
            address
                .path_prefixes()
                .find_map(|p| all.get(p).filter(|l| !l.is_empty()).cloned())?
        };
        let on_path: Vec<_> = on_path
            .into_iter()
            .filter(|l| !l.tx.is_closed() && !tried.contains(&l.key))
            .collect();
        if on_path.is_empty() {
            return None;
        }
        let i = (self.random() % on_path.len() as u64) as usize;
        on_path.get(i).cloned()
    }

    /// Makes a sender wait at rendezvous `id` for its listener's decision, unless a sender with
    /// that id is already waiting. The guard removes it.
    pub(crate) fn wait_for_decision(
        &self,
        id: &str,
        decision: oneshot::Sender<Decision>,
    ) -> Option<PendingGuard<'_>> {
        let mut pending = self.pending.lock();
        if pending.contains_key(id) {
            return None;
        }
        pending.insert(id.to_owned(), decision);
        Some(PendingGuard {
            directory: self,
            id: id.to_owned(),
        })
    }

    /// Replaces where the decision at rendezvous `id` goes (the sender tries another listener).
    pub(crate) fn rewait_for_decision(&self, id: &str, decision: oneshot::Sender<Decision>) {
        self.pending.lock().insert(id.to_owned(), decision);
    }

    /// Takes the sender waiting at rendezvous `id` (a rendezvous is single use).
    pub(crate) fn take_decision(&self, id: &str) -> Option<oneshot::Sender<Decision>> {
        self.pending.lock().remove(id)
    }

    /// Makes an HTTP request wait for its response under `id`; `deliver` is what its rendezvous
    /// sends first. The guard removes it.
    pub(crate) fn wait_for_reply(
        &self,
        id: &str,
        reply: oneshot::Sender<Reply>,
        deliver: Option<(String, Bytes)>,
    ) -> RequestGuard<'_> {
        self.requests.lock().insert(
            id.to_owned(),
            Waiting {
                reply,
                deliver,
                opened: false,
            },
        );
        RequestGuard {
            directory: self,
            id: id.to_owned(),
        }
    }

    /// Opens the rendezvous of request `id`: what it must deliver first, or `None` when the
    /// request is unknown, answered or its rendezvous already opened.
    pub(crate) fn open_request(&self, id: &str) -> Option<Option<(String, Bytes)>> {
        let mut requests = self.requests.lock();
        let waiting = requests.get_mut(id).filter(|w| !w.opened)?;
        waiting.opened = true;
        Some(waiting.deliver.take())
    }

    /// Takes where the response to request `id` goes (it is answered once).
    pub(crate) fn take_reply(&self, id: &str) -> Option<oneshot::Sender<Reply>> {
        self.requests.lock().remove(id).map(|w| w.reply)
    }
}

/// Removes a listener from its path when dropped.
pub(crate) struct Registration<'a> {
    directory: &'a Directory,
    path: String,
    key: u64,
}

impl Drop for Registration<'_> {
    fn drop(&mut self) {
        let mut all = self.directory.listeners.lock();
        if let Some(on_path) = all.get_mut(&self.path) {
            on_path.retain(|l| l.key != self.key);
            if on_path.is_empty() {
                all.remove(&self.path);
            }
        }
    }
}

/// Removes a waiting HTTP request when dropped.
pub(crate) struct RequestGuard<'a> {
    directory: &'a Directory,
    id: String,
}

impl Drop for RequestGuard<'_> {
    fn drop(&mut self) {
        self.directory.requests.lock().remove(&self.id);
    }
}

/// Removes a waiting sender's rendezvous when dropped (after a timeout or failure).
pub(crate) struct PendingGuard<'a> {
    directory: &'a Directory,
    id: String,
}

impl Drop for PendingGuard<'_> {
    fn drop(&mut self) {
        self.directory.pending.lock().remove(&self.id);
    }
}

#[cfg(test)]
mod tests {
    use interrole_relay::url::Action;

    use super::*;

    #[test]
    fn ids_are_guid_shaped_and_distinct() {
        let directory = Directory::new();
        let a = directory.new_id();
        let b = directory.new_id();
        assert_ne!(a, b);
        let lens: Vec<usize> = a.split('-').map(str::len).collect();
        assert_eq!(lens, [8, 4, 4, 4, 12], "{a}");
    }

    #[test]
    fn listeners_are_capped_per_path_and_removed_on_drop() {
        let directory = Directory::new();
        let first = directory.register("p", "ws://h".into(), 2).unwrap();
        let second = directory.register("p", "ws://h".into(), 2).unwrap();
        assert!(directory.register("p", "ws://h".into(), 2).is_none());
        drop(first);
        let third = directory.register("p", "ws://h".into(), 2).unwrap();
        let sender = RelayAddress::new(Action::Connect, "p/suffix").unwrap();
        assert!(directory.pick(&sender, &[]).is_some());
        drop((second, third));
        assert!(directory.pick(&sender, &[]).is_none());
        assert!(directory.listeners.lock().is_empty());
    }

    #[test]
    fn a_request_rendezvous_opens_once_and_its_reply_is_taken_once() {
        let directory = Directory::new();
        let (tx, _rx) = oneshot::channel();
        let guard = directory.wait_for_reply("r", tx, Some(("req".into(), Bytes::new())));
        assert!(matches!(directory.open_request("r"), Some(Some(_))));
        assert!(directory.open_request("r").is_none());
        assert!(directory.take_reply("r").is_some());
        assert!(directory.take_reply("r").is_none());
        drop(guard);
        let (tx, _rx) = oneshot::channel();
        let guard = directory.wait_for_decision("s", tx).unwrap();
        let (tx, _rx) = oneshot::channel();
        assert!(directory.wait_for_decision("s", tx).is_none());
        drop(guard);
        assert!(directory.take_decision("s").is_none());
    }
}
