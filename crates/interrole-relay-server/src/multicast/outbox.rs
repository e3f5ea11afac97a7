//! The send queue of one multicast connection, and the writer task that drains it into batched
//! WebSocket messages.
//!
//! Publishing never waits on a socket: it appends to each subscriber's bounded [`Outbox`] (under
//! the slow-consumer policy) and wakes its writer, which takes everything queued at once and
//! writes it as few messages as the limits allow.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};
use std::time::Duration;

use bytes::Bytes;
use futures::{Sink, SinkExt};
use interrole_core::InstanceId;
use interrole_relay::frame::{CloseCode, Frame, FrameLimits, MessageBuilder, SharedFrame};
use parking_lot::Mutex;
use tokio::sync::{Notify, watch};
use tokio_tungstenite::tungstenite::{self, Message};

use crate::config::SlowConsumerPolicy;
use crate::metrics::Metrics;
use crate::ws;

/// A close request: the code and the reason sent in the close frame.
pub(crate) type Close = (CloseCode, String);

#[derive(Default)]
struct OutState {
    /// Control frames (REJECT, replay MISSED), written before the rest.
    controls: Vec<Frame>,
    /// MISSED counts from the drop-oldest policy, per sender.
    missed: HashMap<InstanceId, u64>,
    /// Queued events.
    events: VecDeque<(InstanceId, SharedFrame)>,
    /// The ACK to send (0: none).
    ack: u64,
    /// The highest sequence number handled on this connection so far: ACKs never go below it.
    ack_high: u64,
}

/// The send queue of one connection, drained by its writer task.
pub(crate) struct Outbox {
    state: Mutex<OutState>,
    notify: Notify,
    close: watch::Sender<Option<Close>>,
    /// The protocol version written to the connection: that of the first message it sent (0
    /// until then, when nothing but a close is written).
    version: AtomicU8,
}

impl std::fmt::Debug for Outbox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Outbox").finish_non_exhaustive()
    }
}

impl Outbox {
    pub(crate) fn new() -> Arc<Self> {
        Arc::new(Self {
            state: Mutex::new(OutState::default()),
            notify: Notify::new(),
            close: watch::Sender::new(None),
            version: AtomicU8::new(0),
        })
    }

    /// Records the version of a message the peer sent; the first one sets the version this
    /// connection is written in.
    pub(crate) fn peer_version(&self, version: u8) {
        let _ = self
            .version
            .compare_exchange(0, version, Ordering::AcqRel, Ordering::Acquire);
    }

    pub(crate) fn version(&self) -> u8 {
        match self.version.load(Ordering::Acquire) {
            0 => interrole_relay::frame::VERSION,
            v => v,
        }
    }

    /// Asks the connection to close (the first request wins).
    pub(crate) fn request_close(&self, code: CloseCode, reason: impl Into<String>) {
        let reason = reason.into();
        self.close.send_if_modified(|c| {
            if c.is_none() {
                *c = Some((code, reason));
                true
            } else {
                false
            }
        });
    }

    pub(crate) fn is_closing(&self) -> bool {
        self.close.borrow().is_some()
    }

    /// The close requests, to wait for the first one.
    pub(crate) fn close_requests(&self) -> watch::Receiver<Option<Close>> {
        self.close.subscribe()
    }

    pub(crate) fn push_control(&self, frame: Frame) -> usize {
        let n = {
            let mut s = self.state.lock();
            s.controls.push(frame);
            s.controls.len()
        };
        self.notify.notify_one();
        n
    }

    /// Acknowledges a message that handled PUBLISH frames up to `seq`: the ACK carries the
    /// highest sequence number handled on the connection so far, so ACKs never go backwards,
    /// and a message that handled only a resent lower number is still answered.
    pub(crate) fn set_ack(&self, seq: u64) {
        {
            let mut s = self.state.lock();
            s.ack_high = s.ack_high.max(seq);
            s.ack = s.ack_high;
        }
        self.notify.notify_one();
    }

    /// Queues an event under the slow-consumer policy. Returns how many events were dropped,
    /// or `None` when the subscriber must be disconnected.
    pub(crate) fn push_event(
        &self,
        sender: &InstanceId,
        frame: &SharedFrame,
        cap: usize,
        policy: SlowConsumerPolicy,
    ) -> Option<u64> {
        let mut dropped = 0;
        {
            let mut s = self.state.lock();
            if s.events.len() >= cap.max(1) {
                match policy {
                    SlowConsumerPolicy::Disconnect => return None,
                    SlowConsumerPolicy::DropOldest => {
                        while s.events.len() >= cap.max(1) {
                            if let Some((old, _)) = s.events.pop_front() {
                                *s.missed.entry(old).or_insert(0) += 1;
                                dropped += 1;
                            }
                        }
                    }
                }
            }
            s.events.push_back((sender.clone(), frame.clone()));
        }
        self.notify.notify_one();
        Some(dropped)
    }

    /// Queues replayed events, past the queue's length (a replay is bounded by the replay
    /// window); returns how many.
    pub(crate) fn push_replayed(
        &self,
        events: impl IntoIterator<Item = (InstanceId, SharedFrame)>,
    ) -> u64 {
        let n = {
            let mut s = self.state.lock();
            let before = s.events.len();
            s.events.extend(events);
            (s.events.len() - before) as u64
        };
        self.notify.notify_one();
        n
    }

    fn take(&self) -> OutState {
        let mut s = self.state.lock();
        let ack_high = s.ack_high;
        let batch = std::mem::take(&mut *s);
        s.ack_high = ack_high;
        batch
    }
}

/// Writes `batch` as messages of protocol `version`, of at most `max_message` bytes and
/// `max_frames` frames.
fn build_messages(
    batch: OutState,
    version: u8,
    max_message: usize,
    max_frames: usize,
) -> Vec<Bytes> {
    let mut out = Vec::new();
    let new = || MessageBuilder::with_version(version, 256);
    let mut b = new();
    let flush = |b: &mut MessageBuilder, out: &mut Vec<Bytes>, next: usize| {
        if !b.is_empty() && (b.len() + next > max_message || b.frame_count() >= max_frames) {
            out.push(std::mem::replace(b, new()).finish());
        }
    };
    for f in &batch.controls {
        flush(&mut b, &mut out, f.encoded_len());
        b.push(f);
    }
    let mut missed: Vec<_> = batch.missed.into_iter().collect();
    missed.sort();
    for (sender, count) in missed {
        let f = Frame::Missed {
            sender: Some(sender),
            count,
        };
        flush(&mut b, &mut out, f.encoded_len());
        b.push(&f);
    }
    for (_, f) in &batch.events {
        flush(&mut b, &mut out, f.len());
        b.push_shared(f);
    }
    if batch.ack > 0 {
        let f = Frame::Ack { seq: batch.ack };
        flush(&mut b, &mut out, f.encoded_len());
        b.push(&f);
    }
    if !b.is_empty() {
        out.push(b.finish());
    }
    out
}

/// The writer task of one connection.
pub(crate) async fn write_loop<W>(
    mut sink: W,
    outbox: Arc<Outbox>,
    metrics: Arc<Metrics>,
    mut shutdown: watch::Receiver<bool>,
    ping_every: Duration,
    limits: FrameLimits,
) where
    W: Sink<Message, Error = tungstenite::Error> + Unpin,
{
    let mut close_rx = outbox.close_requests();
    let mut shutting_down = false;
    loop {
        let close = close_rx.borrow_and_update().clone();
        if let Some((code, reason)) = close {
            let _ = sink.send(ws::close_frame(code.code(), &reason)).await;
            let _ = sink.close().await;
            return;
        }
        tokio::select! {
            biased;
            _ = close_rx.changed() => {}
            r = shutdown.changed(), if !shutting_down => {
                if r.is_err() || *shutdown.borrow() {
                    shutting_down = true;
                    outbox.request_close(CloseCode::GoingAway, "relay shutting down");
                }
            }
            () = outbox.notify.notified() => {
                let batch = outbox.take();
                let version = outbox.version();
                for m in build_messages(batch, version, limits.max_message, limits.max_frames) {
                    metrics.bytes_out.fetch_add(m.len() as u64, Ordering::Relaxed);
                    if sink.feed(Message::Binary(m)).await.is_err() {
                        outbox.request_close(CloseCode::Normal, "");
                        return;
                    }
                }
                if sink.flush().await.is_err() {
                    outbox.request_close(CloseCode::Normal, "");
                    return;
                }
            }
            () = tokio::time::sleep(ping_every) => {
                if sink.send(Message::Ping(Bytes::new())).await.is_err() {
                    outbox.request_close(CloseCode::Normal, "");
                    return;
                }
            }
        }
    }
}
