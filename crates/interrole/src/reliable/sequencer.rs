//! The receive side: per sender and stream, drops duplicates and finds gaps by each sender's
//! [`StreamPos`](interrole_core::StreamPos); an event after a gap is held back until the gap
//! fills, is repaired, or times out (then it is reported missed with its exact size).

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use interrole_core::{Event, InstanceId, InterRoleEvent};

use super::config::Reliability;
use super::repair::{Nak, Repair};

/// How long a gap waits for in-flight events before the sender is asked to repair it.
const NAK_DELAY: Duration = Duration::from_millis(20);
/// How long before asking again.
const NAK_RETRY: Duration = Duration::from_secs(1);

/// The most holes of one stream asked for in one check.
const MAX_NAKS_PER_CHECK: usize = 64;

#[derive(Default)]
pub(super) struct Stream {
    /// The next position expected; `None` before the first event (a subscriber joins midway).
    next: Option<u64>,
    /// Events behind the gap, by position: the event, or only its sequence number for one of the
    /// layer's own (a repair, a repair request) that was acted on when it arrived.
    held: BTreeMap<u64, Held>,
    gap_since: Option<Instant>,
    /// When the sender was last asked to repair this lane's gap.
    nak_at: Option<Instant>,
    /// The sender answered that it no longer has some of the gap: give it up now.
    doomed: bool,
}

#[derive(Default)]
struct SenderStreams {
    epoch: u64,
    last_seq: u64,
    multicast: Stream,
    directed: Stream,
    /// Events of this sender that the transport dropped for this instance before any of its
    /// events arrived: they precede the first one that does (the relay drops the oldest), so
    /// that stream starts that much earlier, with a gap to repair, instead of at the first
    /// event seen as for an instance that joins midway.
    dropped_before_first: u64,
}

/// An event held back behind a gap.
enum Held {
    /// To be delivered when the gap before it fills.
    Event(InterRoleEvent),
    /// Already acted on (the reliability layer's own events are handled as they arrive): only
    /// its place in the stream, and its sequence number, wait.
    Done(u64),
}

impl Held {
    fn seq(&self) -> u64 {
        match self {
            Held::Event(e) => e.seq(),
            Held::Done(seq) => *seq,
        }
    }
}

/// Whether `event` is one of the reliability layer's own repair events, which are acted on when
/// they arrive: a repair held behind the very gap it fills (its own stream's) would never be
/// released.
pub(super) fn acts_at_once(event: &InterRoleEvent) -> bool {
    matches!(
        event.type_tag().as_str(),
        <Nak as Event>::TYPE_TAG | <Repair as Event>::TYPE_TAG
    )
}

/// The receiver side: per-sender positions, held-back events.
#[derive(Default)]
pub(super) struct Sequencer {
    senders: HashMap<InstanceId, SenderStreams>,
    /// Whether some lane may have a gap open: when not, the periodic check skips the scan.
    gaps_open: bool,
}

/// What the sequencer decided about arrivals: deliver these, report those gaps.
#[derive(Default)]
pub(super) struct Outcome {
    pub(super) deliver: Vec<InterRoleEvent>,
    pub(super) missed: Vec<(InstanceId, u64)>,
    pub(super) duplicates: u64,
    /// Repair requests to send: (to, request).
    pub(super) naks: Vec<(InstanceId, Nak)>,
}

impl Sequencer {
    pub(super) fn arrive(&mut self, event: InterRoleEvent, config: &Reliability, out: &mut Outcome) {
        let pos = event.stream();
        if !pos.is_tracked() {
            out.deliver.push(event);
            return;
        }
        let sender = event.sender().clone();
        let state = self.senders.entry(sender.clone()).or_default();
        if pos.epoch < state.epoch {
            // A straggler from the sender's previous life.
            out.duplicates += 1;
            return;
        }
        if pos.epoch > state.epoch {
            // The sender restarted: what was held from its previous life is released.
            let old = std::mem::take(state);
            // (Drops counted before any event arrived belong to the stream that starts now.)
            state.dropped_before_first = old.dropped_before_first;
            for mut lane in [old.multicast, old.directed] {
                Self::give_up(&sender, &mut lane, out);
            }
            state.epoch = pos.epoch;
        }
        let lane = if pos.directed {
            &mut state.directed
        } else {
            &mut state.multicast
        };
        let dropped = std::mem::take(&mut state.dropped_before_first);
        let next = *lane
            .next
            .get_or_insert_with(|| pos.n.saturating_sub(dropped).max(1));
        if pos.n < next || lane.held.contains_key(&pos.n) {
            out.duplicates += 1;
            return;
        }
        if pos.n > next {
            self.gaps_open = true;
            lane.gap_since.get_or_insert_with(Instant::now);
            let held = if acts_at_once(&event) {
                let seq = event.seq();
                out.deliver.push(event);
                Held::Done(seq)
            } else {
                Held::Event(event)
            };
            lane.held.insert(pos.n, held);
            if lane.held.len() > config.max_held {
                Self::give_up(&sender, lane, out);
                if let Some(e) = out.deliver.last() {
                    state.last_seq = state.last_seq.max(e.seq());
                }
            }
            return;
        }
        lane.held.insert(pos.n, Held::Event(event));
        Self::release(lane, &mut state.last_seq, out);
    }

    /// Delivers the held events that follow `next` without a hole.
    fn release(lane: &mut Stream, last_seq: &mut u64, out: &mut Outcome) {
        let Some(mut next) = lane.next else { return };
        let start = next;
        while let Some(entry) = lane.held.first_entry() {
            if *entry.key() != next {
                break;
            }
            let held = entry.remove();
            *last_seq = (*last_seq).max(held.seq());
            if let Held::Event(e) = held {
                out.deliver.push(e);
            }
            next += 1;
        }
        lane.next = Some(next);
        if lane.held.is_empty() {
            lane.gap_since = None;
            lane.nak_at = None;
        } else if next != start || lane.gap_since.is_none() {
            // A hole was filled and another is next: its wait starts now, so that a stream with
            // many holes being repaired one after the other is not given up while it makes
            // progress.
            lane.gap_since = Some(Instant::now());
        }
    }

    /// Stops waiting for a gap: delivers what was held, and reports the size of each hole.
    fn give_up(sender: &InstanceId, lane: &mut Stream, out: &mut Outcome) {
        let Some(mut next) = lane.next else { return };
        let mut missed = 0;
        for (n, held) in std::mem::take(&mut lane.held) {
            missed += n.saturating_sub(next);
            next = n + 1;
            if let Held::Event(e) = held {
                out.deliver.push(e);
            }
        }
        lane.next = Some(next);
        lane.gap_since = None;
        lane.nak_at = None;
        if missed > 0 {
            out.missed.push((sender.clone(), missed));
        }
    }

    /// Asks for the repair of open gaps, and gives up those older than the timeout or that the
    /// sender cannot repair.
    pub(super) fn expire(&mut self, config: &Reliability, out: &mut Outcome) {
        if !self.gaps_open {
            return;
        }
        let now = Instant::now();
        let mut open = false;
        for (sender, state) in &mut self.senders {
            for (directed, lane) in [(false, &mut state.multicast), (true, &mut state.directed)] {
                if let (Some(since), Some(next)) = (lane.gap_since, lane.next) {
                    let due = lane
                        .nak_at
                        .is_none_or(|at| now.duration_since(at) >= NAK_RETRY);
                    if now.duration_since(since) >= NAK_DELAY && due && !lane.doomed {
                        // Every hole at once (up to a bound), not only the first: holes repaired
                        // one per retry would take a second each.
                        let mut from = next;
                        let mut asked = 0;
                        for &n in lane.held.keys() {
                            if n > from {
                                out.naks.push((
                                    sender.clone(),
                                    Nak {
                                        epoch: state.epoch,
                                        directed,
                                        from,
                                        to: n - 1,
                                    },
                                ));
                                asked += 1;
                                if asked == MAX_NAKS_PER_CHECK {
                                    break;
                                }
                            }
                            from = n + 1;
                        }
                        if asked > 0 {
                            lane.nak_at = Some(now);
                        }
                    }
                }
                let timed_out = lane
                    .gap_since
                    .is_some_and(|at| now.duration_since(at) >= config.gap_timeout);
                if timed_out || (lane.doomed && lane.gap_since.is_some()) {
                    if timed_out {
                        tracing::warn!(%sender, timeout = ?config.gap_timeout, "a gap did not fill in time");
                    }
                    Self::give_up(sender, lane, out);
                    if let Some(e) = out.deliver.last() {
                        state.last_seq = state.last_seq.max(e.seq());
                    }
                }
                lane.doomed = false;
                open |= lane.gap_since.is_some();
            }
        }
        self.gaps_open = open;
    }

    /// The transport dropped `count` events of `sender` for this instance: when none of the
    /// sender's events has arrived yet, its first stream starts that much before the first that
    /// does.
    pub(super) fn dropped(&mut self, sender: &InstanceId, count: u64) {
        let state = self.senders.entry(sender.clone()).or_default();
        if state.multicast.next.is_none() && state.directed.next.is_none() {
            state.dropped_before_first += count;
        }
    }

    pub(super) fn held(&self) -> usize {
        self.senders
            .values()
            .map(|s| s.multicast.held.len() + s.directed.held.len())
            .sum()
    }

    /// Where to resume: the last sequence number delivered from each sender.
    pub(super) fn positions(&self) -> Vec<(InstanceId, u64)> {
        let mut p: Vec<_> = self
            .senders
            .iter()
            .filter(|(_, s)| s.last_seq > 0)
            .map(|(id, s)| (id.clone(), s.last_seq))
            .collect();
        // The most recently active senders first, should the list be cut.
        p.sort_by_key(|e| std::cmp::Reverse(e.1));
        p
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use interrole_core::{EventId, StreamPos};
    use serde::{Deserialize, Serialize};

    #[derive(Debug, Serialize, Deserialize)]
    struct Tick(u64);
    interrole_core::impl_event!(Tick = "test.tick");

    fn ev(sender: &str, epoch: u64, n: u64) -> InterRoleEvent {
        InterRoleEvent::in_stream(
            EventId {
                sender: InstanceId::new(sender).unwrap(),
                seq: epoch + n,
            },
            Tick(n),
            StreamPos {
                epoch,
                directed: false,
                n,
            },
            None,
        )
    }

    fn run(s: &mut Sequencer, config: &Reliability, ns: &[u64]) -> (Vec<u64>, Vec<u64>, u64) {
        let mut out = Outcome::default();
        for &n in ns {
            s.arrive(ev("a", 100, n), config, &mut out);
        }
        let got = out.deliver.iter().map(|e| e.seq() - 100).collect();
        let missed = out.missed.iter().map(|m| m.1).collect();
        (got, missed, out.duplicates)
    }

    #[test]
    fn duplicates_are_dropped_and_gaps_held_until_filled() {
        let c = Reliability::default();
        let mut s = Sequencer::default();
        assert_eq!(run(&mut s, &c, &[5, 6, 6, 5]), (vec![5, 6], vec![], 2));
        // 8 and 9 wait for 7.
        assert_eq!(run(&mut s, &c, &[8, 9]), (vec![], vec![], 0));
        assert_eq!(s.held(), 2);
        assert_eq!(run(&mut s, &c, &[9, 7]), (vec![7, 8, 9], vec![], 1));
        assert_eq!(s.positions(), vec![(InstanceId::new("a").unwrap(), 109)]);
    }

    /// The repair requests an expiry check sends, as (from, to) ranges, once the NAK delay
    /// has passed.
    fn naks(s: &mut Sequencer, c: &Reliability) -> Vec<(u64, u64)> {
        for lane in s
            .senders
            .values_mut()
            .flat_map(|st| [&mut st.multicast, &mut st.directed])
        {
            if let Some(since) = lane.gap_since.as_mut() {
                *since -= NAK_DELAY;
            }
        }
        let mut out = Outcome::default();
        s.expire(c, &mut out);
        out.naks.iter().map(|(_, n)| (n.from, n.to)).collect()
    }

    #[test]
    fn every_hole_is_asked_for_at_once() {
        let c = Reliability::default();
        let mut s = Sequencer::default();
        assert_eq!(run(&mut s, &c, &[1, 3, 6, 7, 9]), (vec![1], vec![], 0));
        assert_eq!(naks(&mut s, &c), [(2, 2), (4, 5), (8, 8)]);
        // Asked once: not again before the retry interval.
        assert_eq!(naks(&mut s, &c), []);
        // A filled hole restarts the wait of the next one (the gap timeout counts from progress).
        let before = s.senders.values().next().unwrap().multicast.gap_since;
        assert_eq!(run(&mut s, &c, &[2]), (vec![2, 3], vec![], 0));
        let after = s.senders.values().next().unwrap().multicast.gap_since;
        assert!(after > before);
    }

    #[test]
    fn events_dropped_before_the_first_arrival_are_a_gap_not_a_late_join() {
        let c = Reliability::default();
        let mut s = Sequencer::default();
        // The transport says 3 events of "a" were dropped before any arrived.
        s.dropped(&InstanceId::new("a").unwrap(), 3);
        assert_eq!(run(&mut s, &c, &[4, 5]), (vec![], vec![], 0));
        assert_eq!(naks(&mut s, &c), [(1, 3)]);
        assert_eq!(
            run(&mut s, &c, &[2, 1, 3]),
            (vec![1, 2, 3, 4, 5], vec![], 0)
        );
        // Without such a count, a first event far into the stream is where this instance
        // joined.
        let mut s = Sequencer::default();
        assert_eq!(run(&mut s, &c, &[40, 41]), (vec![40, 41], vec![], 0));
        // A count after events arrived says nothing about the start.
        s.dropped(&InstanceId::new("a").unwrap(), 5);
        assert_eq!(run(&mut s, &c, &[42]), (vec![42], vec![], 0));
    }

    #[test]
    fn a_repair_behind_a_gap_of_its_own_stream_is_acted_on_at_once() {
        let c = Reliability::default();
        let mut s = Sequencer::default();
        let directed = |n: u64, repair: bool| {
            let id = EventId {
                sender: InstanceId::new("a").unwrap(),
                seq: 100 + n,
            };
            let pos = StreamPos {
                epoch: 100,
                directed: true,
                n,
            };
            if repair {
                let r = Repair {
                    directed: false,
                    envelopes: vec![],
                    unavailable: 0,
                };
                InterRoleEvent::in_stream(id, r, pos, None)
            } else {
                InterRoleEvent::in_stream(id, Tick(n), pos, None)
            }
        };
        let mut out = Outcome::default();
        s.arrive(directed(1, false), &c, &mut out);
        // 2 was lost; the repair at 3 cannot wait for 2 to be repaired: it may carry it.
        s.arrive(directed(3, true), &c, &mut out);
        let tags = |out: &Outcome| -> Vec<String> {
            out.deliver
                .iter()
                .map(|e| e.type_tag().to_string())
                .collect()
        };
        assert_eq!(tags(&out), ["test.tick", "interrole.reliable.repair"]);
        // Once 2 comes, the stream moves past 3 without acting on the repair twice.
        let mut out = Outcome::default();
        s.arrive(directed(2, false), &c, &mut out);
        assert_eq!(tags(&out), ["test.tick"]);
        assert_eq!(s.held(), 0);
    }

    #[test]
    fn an_expired_gap_is_reported_with_its_size() {
        let c = Reliability::default().with_gap_timeout(Duration::ZERO);
        let mut s = Sequencer::default();
        assert_eq!(run(&mut s, &c, &[1, 4, 5, 7]), (vec![1], vec![], 0));
        let mut out = Outcome::default();
        s.expire(&c, &mut out);
        let got: Vec<_> = out.deliver.iter().map(|e| e.seq() - 100).collect();
        assert_eq!(got, [4, 5, 7]);
        assert_eq!(out.missed, [(InstanceId::new("a").unwrap(), 3)]);
        // Late arrivals of what was given up are duplicates now.
        assert_eq!(run(&mut s, &c, &[2, 6, 8]), (vec![8], vec![], 2));
    }

    #[test]
    fn a_gap_the_sender_cannot_repair_is_given_up_at_once() {
        let c = Reliability::default();
        let mut s = Sequencer::default();
        run(&mut s, &c, &[1]);
        assert_eq!(run(&mut s, &c, &[4, 5]), (vec![], vec![], 0));
        let mut out = Outcome::default();
        s.expire(&c, &mut out);
        assert!(
            out.deliver.is_empty(),
            "the 20 s gap timeout has not passed"
        );
        // A repair request is due after the delay...
        for st in s.senders.values_mut() {
            st.multicast.gap_since = Some(Instant::now() - NAK_DELAY);
        }
        s.expire(&c, &mut out);
        let a = InstanceId::new("a").unwrap();
        let nak = Nak {
            epoch: 100,
            directed: false,
            from: 2,
            to: 3,
        };
        assert_eq!(out.naks, [(a.clone(), nak)]);
        // ...and when the sender answers that it no longer has them, the gap is given up.
        s.senders.get_mut(&a).unwrap().multicast.doomed = true;
        s.expire(&c, &mut out);
        assert_eq!(out.deliver.len(), 2);
        assert_eq!(out.missed, [(a, 2)]);
    }

    #[test]
    fn a_restarted_sender_starts_afresh() {
        let c = Reliability::default();
        let mut s = Sequencer::default();
        run(&mut s, &c, &[1, 2, 3]);
        let mut out = Outcome::default();
        s.arrive(ev("a", 500, 1), &c, &mut out);
        s.arrive(ev("a", 100, 4), &c, &mut out);
        assert_eq!(out.deliver.len(), 1);
        assert_eq!(out.duplicates, 1);
    }

    mod props {
        use super::*;
        use proptest::prelude::*;

        proptest! {
            /// Whatever the transport does to a stream (duplicates, reorders, drops), the
            /// sequencer delivers each event at most once, in stream order, and once the gaps
            /// are given up, every event that arrived was delivered and the reported missed
            /// count is exactly the number of events that never arrived (tail losses excepted:
            /// nothing after them shows they existed).
            #[test]
            fn delivers_once_in_order_and_counts_exactly_what_never_came(
                len in 1u64..60,
                ops in proptest::collection::vec((0u64..60, 0u8..4), 0..200),
            ) {
                let c = Reliability::default().with_gap_timeout(Duration::ZERO);
                let mut s = Sequencer::default();
                let mut out = Outcome::default();
                // The first event always arrives first (a subscriber that joins midway starts
                // where it joins); then the transport's arrivals.
                // Reordering comes from the random order itself; op 1 duplicates, op 3 lets the
                // gap timeout pass (what arrives later below the position is a duplicate).
                let mut arrivals = vec![1u64];
                s.arrive(ev("a", 100, 1), &c, &mut out);
                for (n, op) in ops {
                    let n = 1 + n % len;
                    arrivals.push(n);
                    s.arrive(ev("a", 100, n), &c, &mut out);
                    match op {
                        1 => s.arrive(ev("a", 100, n), &c, &mut out),
                        3 => s.expire(&c, &mut out),
                        _ => {}
                    }
                }
                s.expire(&c, &mut out);
                let delivered: Vec<u64> = out.deliver.iter().map(|e| e.seq() - 100).collect();
                for w in delivered.windows(2) {
                    prop_assert!(w[0] < w[1], "out of order or twice: {:?}", delivered);
                }
                let arrived: std::collections::BTreeSet<u64> = arrivals.iter().copied().collect();
                let max = *arrived.iter().max().unwrap();
                // Everything that arrived is delivered, except what came after its hole had
                // been given up (a late arrival below the stream's position is a duplicate).
                for n in &delivered {
                    prop_assert!(arrived.contains(n));
                }
                let missed: u64 = out.missed.iter().map(|m| m.1).sum();
                let delivered_set: std::collections::BTreeSet<u64> = delivered.iter().copied().collect();
                // No event is both delivered and counted missed, none is neither, up to the
                // highest position seen.
                prop_assert_eq!(delivered_set.len() as u64 + missed, max, "delivered {:?} missed {}", delivered, missed);
                prop_assert_eq!(s.held(), 0);
            }
        }
    }
}

