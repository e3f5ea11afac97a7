//! The bus's metrics, through the [`metrics`] facade: handles registered once, bumped on the way.
//!
//! # Where the handles live, and what they cost
//!
//! A bus registers its handles with the recorder installed when it is built ([`Meters::new`]):
//! the per-bus ones at once, the per-type ones (published, deliveries, observer errors) the first
//! time a type is published, delivered or subscribed, in a table of this hub found by the tag's
//! precomputed fingerprint with plain loads, the way the registry finds a lane ([`TagTable`]).
//! No metric key is built per event. With no recorder installed every handle is a no-op (a
//! call that tests an empty `Option`), so a publish pays one probe of that table for its
//! `published` count and one per lane it is dispatched through for `deliveries`, and nothing
//! else (`docs/operations.md` has the measurement). A recorder installed after a bus was built
//! is not seen by that bus.
//!
//! A [`Hub`](crate::Hub) made alone has no labels and reports nothing ([`Meters::disabled`]).
//!
//! This file uses only `metrics`, `interrole-core` and std, so that every other file may use it.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, OnceLock};

use interrole_core::{InstanceId, Topic, TypeTag};
use metrics::{Counter, Gauge, Histogram, Label, SharedString};

/// Events a bus published or sent (not the reliability layer's heartbeats and repairs).
pub(crate) const PUBLISHED: &str = "interrole_events_published_total";
/// Events that arrived through the transport.
pub(crate) const RECEIVED: &str = "interrole_events_received_total";
/// Observer calls made with an event.
pub(crate) const DELIVERIES: &str = "interrole_deliveries_total";
/// Observer errors, by type and reason.
pub(crate) const OBSERVER_ERRORS: &str = "interrole_observer_errors_total";
/// Received events of a type tag this process does not know.
pub(crate) const UNKNOWN_TYPES: &str = "interrole_unknown_types_total";
/// Events that found no observer.
pub(crate) const UNOBSERVED: &str = "interrole_events_unobserved_total";
/// From the sender's timestamp to the dispatch here, for events from other processes.
pub(crate) const DELIVERY_LAG: &str = "interrole_delivery_lag_seconds";
/// Observers subscribed.
pub(crate) const OBSERVERS: &str = "interrole_observers";

/// Events reported missed to the observers.
pub(crate) const MISSED: &str = "interrole_events_missed_total";
/// Received events dropped as duplicates.
pub(crate) const DUPLICATES: &str = "interrole_duplicates_total";
/// Repair requests sent to senders.
pub(crate) const REPAIR_REQUESTS: &str = "interrole_repair_requests_total";
/// Events received through repairs.
pub(crate) const REPAIRED: &str = "interrole_events_repaired_total";
/// Events sent again.
pub(crate) const RESENT: &str = "interrole_events_resent_total";
/// Events the far end refused.
pub(crate) const REJECTED: &str = "interrole_events_rejected_total";
/// Events the transport said it dropped for this instance.
pub(crate) const TRANSPORT_DROPPED: &str = "interrole_transport_dropped_total";
/// Published events waiting for the far end's acknowledgement.
pub(crate) const OUTBOX_EVENTS: &str = "interrole_outbox_events";
/// Their bytes.
pub(crate) const OUTBOX_BYTES: &str = "interrole_outbox_bytes";
/// Whether the reliable host's connection is open (1) or not (0).
pub(crate) const CONNECTED: &str = "interrole_connected";
/// Times the reliable host opened its connection again after it had been open.
pub(crate) const RECONNECTIONS: &str = "interrole_reconnections_total";

/// The most type tags that get series of their own on one bus; the events of further tags are
/// counted under `type="_other"`. Tags come off the wire (an observer of every event sees the
/// tags other processes send), so a peer must not be able to grow the series without bound.
pub(crate) const MAX_TAGS: usize = 1024;

/// The `type` label of the events beyond [`MAX_TAGS`].
pub(crate) const OTHER_TAG: &str = "_other";

/// The handles of one event type on one bus.
#[derive(Debug)]
pub(crate) struct TagMeters {
    pub(crate) published: Counter,
    pub(crate) deliveries: Counter,
    /// Observer errors with reason `panic`, `lagged` and `undecodable`.
    pub(crate) panics: Counter,
    pub(crate) lagged: Counter,
    pub(crate) undecodable: Counter,
}

/// The per-type handles of a hub that reports nothing.
static NO_TAG: TagMeters = TagMeters {
    published: Counter::noop(),
    deliveries: Counter::noop(),
    panics: Counter::noop(),
    lagged: Counter::noop(),
    undecodable: Counter::noop(),
};

/// The handles of one bus (or none, for a hub on its own).
#[derive(Debug)]
pub(crate) struct Meters {
    /// `topic` and `instance`; `None`: this hub reports nothing.
    labels: Option<Vec<Label>>,
    pub(crate) received: Counter,
    pub(crate) unknown: Counter,
    pub(crate) unobserved: Counter,
    pub(crate) lag: Histogram,
    observers: Gauge,
    /// Held while the observers gauge is read and set, so that the last to set it read the
    /// newest count.
    observers_lock: Mutex<()>,
    tags: TagTable,
}

impl Meters {
    /// The handles of a bus on `topic` speaking for `instance`, registered with the recorder in
    /// place now (the thread's local one, else the global one).
    pub(crate) fn new(topic: &Topic, instance: &InstanceId) -> Self {
        let labels = vec![
            Label::new("topic", topic.as_str().to_owned()),
            Label::new("instance", instance.as_str().to_owned()),
        ];
        Self {
            received: metrics::counter!(RECEIVED, labels.iter()),
            unknown: metrics::counter!(UNKNOWN_TYPES, labels.iter()),
            unobserved: metrics::counter!(UNOBSERVED, labels.iter()),
            lag: metrics::histogram!(DELIVERY_LAG, labels.iter()),
            observers: metrics::gauge!(OBSERVERS, labels.iter()),
            observers_lock: Mutex::new(()),
            labels: Some(labels),
            tags: TagTable::new(),
        }
    }

    /// Handles that report nothing (a hub made alone).
    pub(crate) fn disabled() -> Self {
        Self {
            labels: None,
            received: Counter::noop(),
            unknown: Counter::noop(),
            unobserved: Counter::noop(),
            lag: Histogram::noop(),
            observers: Gauge::noop(),
            observers_lock: Mutex::new(()),
            tags: TagTable::new(),
        }
    }

    /// Sets the observers gauge to `count()`, read now (after a subscribe or unsubscribe).
    pub(crate) fn set_observers(&self, count: impl FnOnce() -> usize) {
        if self.labels.is_some() {
            let _one = self.observers_lock.lock().unwrap_or_else(|e| e.into_inner());
            self.observers.set(count() as f64);
        }
    }

    /// The handles of the type `tag`, registered the first time.
    #[inline]
    pub(crate) fn tag(&self, tag: &TypeTag) -> &TagMeters {
        match &self.labels {
            None => &NO_TAG,
            Some(labels) => match self.tags.find(tag) {
                Some(m) => m,
                None => self.tags.add(tag, labels),
            },
        }
    }

    /// The handles of the reliability layer of this bus (registered now), or no-ops for a hub
    /// that reports nothing.
    pub(crate) fn reliable(&self) -> ReliableMeters {
        match &self.labels {
            Some(labels) => ReliableMeters::new(labels),
            None => ReliableMeters::disabled(),
        }
    }
}

/// The reliability layer's handles (network transports only).
#[derive(Debug)]
pub(crate) struct ReliableMeters {
    pub(crate) missed: Counter,
    pub(crate) duplicates: Counter,
    pub(crate) repair_requests: Counter,
    pub(crate) repaired: Counter,
    pub(crate) resent: Counter,
    pub(crate) rejected: Counter,
    pub(crate) transport_dropped: Counter,
    pub(crate) reconnections: Counter,
    pub(crate) outbox_events: Gauge,
    pub(crate) outbox_bytes: Gauge,
    pub(crate) connected: Gauge,
}

impl ReliableMeters {
    fn new(labels: &[Label]) -> Self {
        Self {
            missed: metrics::counter!(MISSED, labels.iter()),
            duplicates: metrics::counter!(DUPLICATES, labels.iter()),
            repair_requests: metrics::counter!(REPAIR_REQUESTS, labels.iter()),
            repaired: metrics::counter!(REPAIRED, labels.iter()),
            resent: metrics::counter!(RESENT, labels.iter()),
            rejected: metrics::counter!(REJECTED, labels.iter()),
            transport_dropped: metrics::counter!(TRANSPORT_DROPPED, labels.iter()),
            reconnections: metrics::counter!(RECONNECTIONS, labels.iter()),
            outbox_events: metrics::gauge!(OUTBOX_EVENTS, labels.iter()),
            outbox_bytes: metrics::gauge!(OUTBOX_BYTES, labels.iter()),
            connected: metrics::gauge!(CONNECTED, labels.iter()),
        }
    }

    /// Handles that report nothing.
    pub(crate) fn disabled() -> Self {
        Self {
            missed: Counter::noop(),
            duplicates: Counter::noop(),
            repair_requests: Counter::noop(),
            repaired: Counter::noop(),
            resent: Counter::noop(),
            rejected: Counter::noop(),
            transport_dropped: Counter::noop(),
            reconnections: Counter::noop(),
            outbox_events: Gauge::noop(),
            outbox_bytes: Gauge::noop(),
            connected: Gauge::noop(),
        }
    }
}

/// Per-type handles, found without locks: open addressing in write-once entries of fixed tables
/// that chain when half full (the registry's lane table, for handles). Type tags are a small set,
/// so most buses stay in the first table.
#[derive(Debug)]
struct TagTable {
    first: Level,
    /// One writer at a time; lookups take no lock. Counts the tags added.
    adding: Mutex<usize>,
    /// The handles of the tags beyond [`MAX_TAGS`].
    other: OnceLock<TagMeters>,
}

#[derive(Debug)]
struct Level {
    mask: usize,
    entries: Box<[OnceLock<(TypeTag, TagMeters)>]>,
    used: AtomicUsize,
    next: OnceLock<Box<Level>>,
}

impl Level {
    fn with_capacity(capacity: usize) -> Self {
        let capacity = capacity.next_power_of_two().max(8);
        Self {
            mask: capacity - 1,
            entries: (0..capacity).map(|_| OnceLock::new()).collect(),
            used: AtomicUsize::new(0),
            next: OnceLock::new(),
        }
    }
}

impl TagTable {
    fn new() -> Self {
        Self {
            first: Level::with_capacity(32),
            adding: Mutex::new(0),
            other: OnceLock::new(),
        }
    }

    /// The handles of `tag`, if it has some. (Tags compare by address first, then by
    /// fingerprint and text, inline.)
    #[inline]
    fn find(&self, tag: &TypeTag) -> Option<&TagMeters> {
        let fingerprint = tag.fingerprint();
        let mut level = &self.first;
        loop {
            let mut i = fingerprint as usize & level.mask;
            while let Some((key, meters)) = level.entries[i].get() {
                if key == tag {
                    return Some(meters);
                }
                i = (i + 1) & level.mask;
            }
            level = level.next.get()?;
        }
    }

    /// Registers the handles of `tag` (unless another thread just did) and returns them; past
    /// [`MAX_TAGS`] tags, the handles of `type="_other"`.
    #[cold]
    #[inline(never)]
    fn add(&self, tag: &TypeTag, labels: &[Label]) -> &TagMeters {
        let mut added = self.adding.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(m) = self.find(tag) {
            return m;
        }
        if *added >= MAX_TAGS {
            return self
                .other
                .get_or_init(|| TagMeters::new(OTHER_TAG, labels));
        }
        *added += 1;
        let meters = TagMeters::new(tag.as_str(), labels);
        let mut level = &self.first;
        loop {
            let used = level.used.load(Ordering::Relaxed);
            if (used + 1) * 2 <= level.entries.len() {
                let mut i = tag.fingerprint() as usize & level.mask;
                while level.entries[i].get().is_some() {
                    i = (i + 1) & level.mask;
                }
                level.used.store(used + 1, Ordering::Relaxed);
                let _ = level.entries[i].set((tag.clone(), meters));
                return &level.entries[i].get().expect("just set").1;
            }
            let size = level.entries.len() * 4;
            level = level
                .next
                .get_or_init(|| Box::new(Level::with_capacity(size)));
        }
    }
}

impl TagMeters {
    fn new(tag: &str, labels: &[Label]) -> Self {
        let value = SharedString::from(tag.to_owned());
        let with = |extra: &[(&'static str, &'static str)]| {
            let mut all: Vec<Label> = labels.to_vec();
            all.push(Label::new("type", value.clone()));
            all.extend(extra.iter().map(|&(k, v)| Label::new(k, v)));
            all
        };
        Self {
            published: metrics::counter!(PUBLISHED, with(&[])),
            deliveries: metrics::counter!(DELIVERIES, with(&[])),
            panics: metrics::counter!(OBSERVER_ERRORS, with(&[("reason", "panic")])),
            lagged: metrics::counter!(OBSERVER_ERRORS, with(&[("reason", "lagged")])),
            undecodable: metrics::counter!(OBSERVER_ERRORS, with(&[("reason", "undecodable")])),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tags_past_the_limit_share_one_set_of_handles() {
        let meters = Meters::new(&Topic::default(), &InstanceId::new("me").unwrap());
        let tags: Vec<TypeTag> = (0..MAX_TAGS + 2)
            .map(|i| TypeTag::new(format!("t.{i}")).unwrap())
            .collect();
        let own: Vec<*const TagMeters> = tags.iter().map(|t| meters.tag(t) as *const _).collect();
        let other = meters.tags.other.get().expect("past the limit") as *const _;
        assert_eq!(own[MAX_TAGS..], [other, other]);
        assert!(!own[..MAX_TAGS].contains(&other));
    }

    #[test]
    fn a_tag_keeps_its_handles_across_many_tags() {
        let meters = Meters::new(&Topic::default(), &InstanceId::new("me").unwrap());
        let tags: Vec<TypeTag> = (0..200).map(|i| TypeTag::new(format!("t.{i}")).unwrap()).collect();
        let first: Vec<*const TagMeters> = tags.iter().map(|t| meters.tag(t) as *const _).collect();
        for (tag, first) in tags.iter().zip(first) {
            assert!(std::ptr::eq(meters.tag(tag), first), "{tag} registered twice");
        }
    }

    #[test]
    fn a_static_tag_is_found_from_another_copy() {
        static TAG: TypeTag = TypeTag::from_static("bench.tick-of-some-length");
        let meters = Meters::new(&Topic::default(), &InstanceId::new("me").unwrap());
        let first = meters.tag(&TAG.clone()) as *const TagMeters;
        let copy = const { TypeTag::from_static("bench.tick-of-some-length") };
        assert!(std::ptr::eq(meters.tag(&copy), first));
        assert_eq!(*meters.tags.adding.lock().unwrap(), 1);
    }

    #[test]
    fn a_hub_made_alone_reports_nothing() {
        let meters = Meters::disabled();
        let tag = TypeTag::new("t.x").unwrap();
        assert!(std::ptr::eq(meters.tag(&tag), &NO_TAG));
    }
}
