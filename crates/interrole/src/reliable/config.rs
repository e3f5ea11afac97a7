//! The settings of the reliability layer.

use std::time::Duration;

use interrole_core::RetryPolicy;

/// How a bus on a network transport keeps its promises: retries, outbox, retention, gaps.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct Reliability {
    /// How (re)connecting is retried. Default [`RetryPolicy::default`]: 0, 1, 2, 5, 10, 30 s,
    /// then every 30 s.
    pub retry: RetryPolicy,
    /// The most published events waiting for the far end's acknowledgement; `publish` fails
    /// with [`PublishError::OutboxFull`](crate::PublishError::OutboxFull) beyond it. Default 100,000.
    pub outbox_events: usize,
    /// The most bytes of envelopes waiting for acknowledgement. Default 64 MiB.
    pub outbox_bytes: usize,
    /// How many acknowledged events are kept to be re-sent after a reconnection (repairing what a
    /// relay that died had acknowledged but not delivered). Default 10,000.
    pub retain_events: usize,
    /// How long acknowledged events are kept while connected (while disconnected, none age out).
    /// Default 5 s: longer than an event usually waits in a relay's queues.
    pub retain_for: Duration,
    /// How long events after a gap wait for it to fill before the gap is reported as missed.
    /// Default 20 s (a relay restart and the reconnection schedule fit in it).
    pub gap_timeout: Duration,
    /// The most events held back behind gaps, per sender and stream; past it the gap is reported
    /// at once. Default 50,000.
    pub max_held: usize,
}

impl Default for Reliability {
    fn default() -> Self {
        Self {
            retry: RetryPolicy::default(),
            outbox_events: 100_000,
            outbox_bytes: 64 * 1024 * 1024,
            retain_events: 10_000,
            retain_for: Duration::from_secs(5),
            gap_timeout: Duration::from_secs(20),
            max_held: 50_000,
        }
    }
}

impl Reliability {
    /// These settings with `retry`.
    pub fn with_retry(mut self, retry: RetryPolicy) -> Self {
        self.retry = retry;
        self
    }

    /// These settings with an outbox of at most `events` events and `bytes` bytes.
    pub fn with_outbox(mut self, events: usize, bytes: usize) -> Self {
        self.outbox_events = events.max(1);
        self.outbox_bytes = bytes.max(1);
        self
    }

    /// These settings with `timeout` for gaps to fill.
    pub fn with_gap_timeout(mut self, timeout: Duration) -> Self {
        self.gap_timeout = timeout;
        self
    }

    /// These settings retaining `events` acknowledged events for `time`.
    pub fn with_retention(mut self, events: usize, time: Duration) -> Self {
        self.retain_events = events;
        self.retain_for = time;
        self
    }
}
