//! The client side's memory: the connection and the events published on it, unacknowledged or
//! retained for repair, under one lock so that a reconnection's re-send and new publishes keep
//! sequence order; and the events the far end refused for now.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use interrole_core::{Connection, InstanceId, InterRoleEvent};

use super::config::Reliability;
use crate::dispatch::unwind::drop_guarded;

/// One published event, unacknowledged or retained after its acknowledgement.
pub(super) struct Sent {
    pub(super) seq: u64,
    pub(super) target: Option<InstanceId>,
    pub(super) event: InterRoleEvent,
    pub(super) size: usize,
    pub(super) acked_at: Option<Instant>,
}

/// The client side: the connection and the outbox, under one lock so that a reconnection's
/// re-send and new publishes keep sequence order.
pub(super) struct Outbox {
    pub(super) conn: Option<(u64, Arc<dyn Connection>)>,
    pub(super) entries: VecDeque<Sent>,
    /// Index of the first unacknowledged entry.
    pub(super) first_unacked: usize,
    pub(super) unacked_bytes: usize,
}

impl Outbox {
    pub(super) fn unacked(&self) -> usize {
        self.entries.len() - self.first_unacked
    }

    pub(super) fn trim(&mut self, config: &Reliability, connected: bool) {
        let now = Instant::now();
        while self.first_unacked > 0 {
            let front = &self.entries[0];
            let old = front
                .acked_at
                .is_some_and(|at| connected && now.duration_since(at) > config.retain_for);
            if self.first_unacked > config.retain_events || old {
                let gone = self.entries.pop_front();
                self.first_unacked -= 1;
                // The outbox is consistent again before the event's payload is dropped, which
                // may run user code that panics.
                drop_guarded(gone);
            } else {
                break;
            }
        }
    }
}

/// An event the far end refused for now.
pub(super) struct Busy {
    /// How many times it was refused.
    pub(super) refusals: u32,
    /// When to send it again (or, sent, when to stop waiting for its outcome).
    pub(super) due: Instant,
    /// Sent again; its acknowledgement (or a new refusal) is awaited.
    pub(super) in_flight: bool,
}

/// How long to wait before sending an event again after its `refusals`-th refusal: 50 ms,
/// doubling, at most 2 s.
pub(super) fn busy_delay(refusals: u32) -> Duration {
    Duration::from_millis(50u64 << refusals.saturating_sub(1).min(5)).min(Duration::from_secs(2))
}
