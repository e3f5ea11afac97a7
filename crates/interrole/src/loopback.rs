//! The in-process transport: buses in one process, connected through a shared fabric.

use std::collections::HashMap;
use std::fmt;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};

use async_trait::async_trait;
use interrole_core::{
    Connection, Inbound, InstanceId, InterRoleEvent, OpenSpec, Topic, Transport, TransportError,
    TransportErrorKind, TransportLimits,
};
use parking_lot::RwLock;

use std::sync::Arc;

use crate::dispatch::reentry::{capture, release};

/// The in-process transport: every bus opened on one `Loopback` (or on clones of it) reaches the
/// others on the same topic, as separate role instances would through a relay.
///
/// Zero-copy: an envelope is never encoded; every receiving bus gets the same shared event.
/// Delivery happens on the publishing thread, before `publish` returns, so a loopback bus needs
/// no runtime. Buses built without a transport share [`Loopback::shared`], the process-wide
/// fabric.
///
/// ```
/// use interrole::{Bus, Loopback};
///
/// #[derive(serde::Serialize, serde::Deserialize)]
/// struct Hello { from: String }
/// interrole::impl_event!(Hello = "example.hello");
///
/// let fabric = Loopback::new();
/// let a = Bus::builder().instance("a").transport(fabric.clone()).build()?;
/// let b = Bus::builder().instance("b").transport(fabric.clone()).build()?;
/// let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
/// let log = seen.clone();
/// let _sub = b.subscribe::<Hello, _>(move |h| log.lock().unwrap().push(h.from.clone()));
/// a.publish(Hello { from: "a".into() })?;
/// assert_eq!(*seen.lock().unwrap(), ["a"]);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Clone, Default)]
pub struct Loopback {
    fabric: Arc<Fabric>,
}

#[derive(Default)]
struct Fabric {
    topics: RwLock<HashMap<Topic, Arc<TopicState>>>,
    next_id: AtomicU64,
}

/// The connections open on one topic. A connection keeps its topic's state, so sending needs no
/// map lookup.
#[derive(Default)]
struct TopicState {
    members: RwLock<Vec<Arc<Member>>>,
    /// `members.len()`, readable without the lock: a publish on a topic with no other member
    /// (a bus alone in its process, the common case) takes no lock.
    count: AtomicUsize,
}

struct Member {
    id: u64,
    instance: InstanceId,
    inbound: Arc<dyn Inbound>,
    live: AtomicBool,
    /// Held for reading while delivering; taken for writing once `live` is cleared, so that
    /// nothing is delivered after a close returns.
    gate: RwLock<()>,
}

impl Member {
    /// Stops deliveries to this member; returns whether it was live.
    fn end(&self) -> bool {
        let was = self.live.swap(false, Ordering::AcqRel);
        drop(self.gate.write());
        was
    }
}

impl Loopback {
    /// A new, empty fabric.
    pub fn new() -> Self {
        Self::default()
    }

    /// The process-wide fabric that buses built without a transport use.
    pub fn shared() -> Self {
        static SHARED: OnceLock<Loopback> = OnceLock::new();
        SHARED.get_or_init(Loopback::new).clone()
    }

    /// How many connections are open on `topic`.
    pub fn connections(&self, topic: &Topic) -> usize {
        self.fabric
            .topics
            .read()
            .get(topic)
            .map_or(0, |t| t.members.read().len())
    }

    /// Drops every connection, as a relay restart would: each is told through
    /// [`Inbound::closed`] with a transient error, and must be opened again.
    pub fn restart(&self) {
        let topics: Vec<Arc<TopicState>> =
            self.fabric.topics.write().drain().map(|(_, t)| t).collect();
        for topic in topics {
            let members = {
                let mut members = topic.members.write();
                topic.count.store(0, Ordering::Release);
                std::mem::take(&mut *members)
            };
            for member in members {
                if member.end() {
                    member.inbound.closed(TransportError::new(
                        TransportErrorKind::ConnectionLost,
                        "loopback fabric restarted",
                    ));
                }
            }
        }
    }
}

impl Fabric {
    fn remove(&self, topic: &Topic, id: u64) {
        let mut topics = self.topics.write();
        if let Some(state) = topics.get(topic) {
            let mut members = state.members.write();
            members.retain(|m| m.id != id);
            state.count.store(members.len(), Ordering::Release);
            if members.is_empty() {
                drop(members);
                topics.remove(topic);
            }
        }
    }
}

#[async_trait]
impl Transport for Loopback {
    fn name(&self) -> &'static str {
        "loopback"
    }

    fn limits(&self) -> TransportLimits {
        TransportLimits::with_max_envelope(None).lossless()
    }

    async fn open(
        &self,
        spec: OpenSpec,
        inbound: Arc<dyn Inbound>,
    ) -> Result<Arc<dyn Connection>, TransportError> {
        let id = self.fabric.next_id.fetch_add(1, Ordering::Relaxed);
        let member = Arc::new(Member {
            id,
            instance: spec.instance.clone(),
            inbound,
            live: AtomicBool::new(true),
            gate: RwLock::new(()),
        });
        let state = {
            let mut topics = self.fabric.topics.write();
            let state = topics.entry(spec.topic.clone()).or_default().clone();
            let mut members = state.members.write();
            if members.iter().any(|m| m.instance == spec.instance) {
                return Err(TransportError::new(
                    TransportErrorKind::Conflict,
                    format!(
                        "instance {} is already connected on {}",
                        spec.instance, spec.topic
                    ),
                ));
            }
            members.push(member.clone());
            state.count.store(members.len(), Ordering::Release);
            drop(members);
            state
        };
        Ok(Arc::new(LoopbackConnection {
            fabric: self.fabric.clone(),
            topic: spec.topic,
            state,
            member,
            closed: AtomicBool::new(false),
        }))
    }
}

struct LoopbackConnection {
    fabric: Arc<Fabric>,
    topic: Topic,
    state: Arc<TopicState>,
    member: Arc<Member>,
    closed: AtomicBool,
}

impl LoopbackConnection {
    fn shut(&self) {
        if !self.closed.swap(true, Ordering::AcqRel) {
            self.member.end();
            self.fabric.remove(&self.topic, self.member.id);
        }
    }
}

#[async_trait]
impl Connection for LoopbackConnection {
    fn send(
        &self,
        event: &InterRoleEvent,
        target: Option<&InstanceId>,
    ) -> Result<(), TransportError> {
        if self.closed.load(Ordering::Acquire) {
            return Err(TransportError::new(
                TransportErrorKind::Closed,
                "connection closed",
            ));
        }
        if !self.member.live.load(Ordering::Acquire) {
            return Err(TransportError::new(
                TransportErrorKind::ConnectionLost,
                "loopback fabric restarted",
            ));
        }
        if target.is_none() && self.state.count.load(Ordering::Acquire) <= 1 {
            // Nobody else on the topic: nothing to deliver, no lock to take.
            return Ok(());
        }
        let members = self.state.members.read();
        let mut reached = false;
        if members.len() > 1 {
            // Deliveries into buses are held back and run once this publish is numbered and sent,
            // and never under the fabric's locks.
            let ((), queued) = capture(|| {
                for m in members.iter() {
                    if m.id == self.member.id || target.is_some_and(|t| *t != m.instance) {
                        continue;
                    }
                    let _gate = m.gate.read();
                    if m.live.load(Ordering::Acquire) {
                        m.inbound.event(event.clone());
                        reached = true;
                    }
                }
            });
            drop(members);
            release(queued);
        } else {
            drop(members);
        }
        match target {
            Some(t) if !reached => Err(TransportError::new(
                TransportErrorKind::NoListener,
                format!("instance {t} is not connected on {}", self.topic),
            )),
            _ => Ok(()),
        }
    }

    async fn flush(&self) -> Result<(), TransportError> {
        Ok(())
    }

    async fn close(&self) {
        self.shut();
    }

    fn is_open(&self) -> bool {
        !self.closed.load(Ordering::Acquire) && self.member.live.load(Ordering::Acquire)
    }
}

impl Drop for LoopbackConnection {
    fn drop(&mut self) {
        self.shut();
    }
}

impl fmt::Debug for Loopback {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Loopback")
            .field("topics", &self.fabric.topics.read().len())
            .finish()
    }
}

impl fmt::Debug for LoopbackConnection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LoopbackConnection")
            .field("topic", &self.topic)
            .field("instance", &self.member.instance)
            .field("open", &self.is_open())
            .finish()
    }
}
