//! Delivery checks by identity, for every multicast measurement of `compare`: each subscriber
//! keeps a bitmap by sender and sequence number of what it received, so that a lost event, a
//! duplicate and an event out of order are each counted for what they are (counting deliveries
//! and subtracting would let a duplicate cancel a loss).
//!
//! Senders are numbered from 0 by the run (one publisher: sender 0), and each sender numbers its
//! measured events from 0. An event is *reordered* when it arrives after one of a higher sequence
//! number from the same sender (as the `chaos` tool counts), *duplicated* when its bit was already
//! set, *lost* when its bit is still clear at the end, and *stray* when it names a sender or a
//! sequence number the run never published.

use std::iter::Sum;
use std::ops::{Add, AddAssign};

/// The largest sequence number a bitmap takes (a bitmap of 32 MiB at most): anything above is
/// [`Counts::stray`] rather than an allocation on the word of a corrupted event.
const MAX_SEQ: u64 = 1 << 28;

/// What one sender's events did at one subscriber: a bitmap by sequence number.
#[derive(Debug, Default, Clone)]
pub struct Tally {
    seen: Vec<u64>,
    distinct: u64,
    duplicated: u64,
    reordered: u64,
    too_high: u64,
    max: Option<u64>,
}

impl Tally {
    /// Records the delivery of event `seq`; returns whether it was its first.
    pub fn record(&mut self, seq: u64) -> bool {
        if seq >= MAX_SEQ {
            self.too_high += 1;
            return false;
        }
        let (word, bit) = ((seq / 64) as usize, 1u64 << (seq % 64));
        if word >= self.seen.len() {
            // Doubling, so that a run's bitmap grows a few times only.
            self.seen.resize((word + 1).max(self.seen.len() * 2), 0);
        }
        if self.seen[word] & bit != 0 {
            self.duplicated += 1;
            return false;
        }
        self.seen[word] |= bit;
        self.distinct += 1;
        if self.max.is_some_and(|m| seq < m) {
            self.reordered += 1;
        }
        self.max = Some(self.max.map_or(seq, |m| m.max(seq)));
        true
    }

    /// Distinct events received so far.
    pub fn distinct(&self) -> u64 {
        self.distinct
    }

    /// The counts against `published` events (sequence numbers `0..published`).
    pub fn counts(&self, published: u64) -> Counts {
        let words = published.div_ceil(64) as usize;
        let mut expected = 0u64;
        for (i, w) in self.seen.iter().take(words).enumerate() {
            let mut w = *w;
            // The last word's bits at or past `published` are not expected events.
            let end = published - i as u64 * 64;
            if end < 64 {
                w &= (1u64 << end) - 1;
            }
            expected += u64::from(w.count_ones());
        }
        Counts {
            delivered: expected,
            lost: published - expected,
            duplicated: self.duplicated,
            reordered: self.reordered,
            stray: self.distinct - expected + self.too_high,
        }
    }
}

/// What one subscriber received, by sender: one [`Tally`] per sender of the run.
#[derive(Debug, Clone)]
pub struct Deliveries {
    senders: Vec<Tally>,
    unknown: u64,
}

impl Deliveries {
    /// For a run with `senders` senders, numbered from 0.
    pub fn new(senders: usize) -> Self {
        Self {
            senders: vec![Tally::default(); senders],
            unknown: 0,
        }
    }

    /// Records the delivery of event `seq` of sender `sender` (`None`: not a sender of the run);
    /// returns whether it was its first.
    pub fn record(&mut self, sender: Option<usize>, seq: u64) -> bool {
        match sender.and_then(|s| self.senders.get_mut(s)) {
            Some(t) => t.record(seq),
            None => {
                self.unknown += 1;
                false
            }
        }
    }

    /// Distinct events received so far, over every sender.
    pub fn distinct(&self) -> u64 {
        self.senders.iter().map(Tally::distinct).sum()
    }

    /// The counts when each sender published `published` events.
    pub fn counts(&self, published: u64) -> Counts {
        let mut c: Counts = self.senders.iter().map(|t| t.counts(published)).sum();
        c.stray += self.unknown;
        c
    }
}

/// Deliveries checked by identity, at one subscriber or summed over several.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Counts {
    /// Events published in the run received (once or more).
    pub delivered: u64,
    /// Events published in the run never received.
    pub lost: u64,
    /// Receptions of an event already received.
    pub duplicated: u64,
    /// Events received after one of a higher sequence number from the same sender.
    pub reordered: u64,
    /// Events received that the run did not publish (an unknown sender or sequence number).
    pub stray: u64,
}

impl Counts {
    /// Whether every event arrived exactly once, in order, and nothing else arrived.
    pub fn is_exact(&self) -> bool {
        self.lost == 0 && self.duplicated == 0 && self.reordered == 0 && self.stray == 0
    }
}

impl Add for Counts {
    type Output = Counts;

    fn add(self, o: Counts) -> Counts {
        Counts {
            delivered: self.delivered + o.delivered,
            lost: self.lost + o.lost,
            duplicated: self.duplicated + o.duplicated,
            reordered: self.reordered + o.reordered,
            stray: self.stray + o.stray,
        }
    }
}

impl AddAssign for Counts {
    fn add_assign(&mut self, o: Counts) {
        *self = *self + o;
    }
}

impl Sum for Counts {
    fn sum<I: Iterator<Item = Counts>>(iter: I) -> Counts {
        iter.fold(Counts::default(), Add::add)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn everything_once_in_order_is_exact() {
        let mut t = Tally::default();
        for seq in 0..1000 {
            assert!(t.record(seq));
        }
        let c = t.counts(1000);
        assert_eq!(c.delivered, 1000);
        assert!(c.is_exact(), "{c:?}");
    }

    #[test]
    fn a_duplicate_does_not_cancel_a_loss() {
        let mut t = Tally::default();
        for seq in [0, 1, 1, 3] {
            t.record(seq);
        }
        let c = t.counts(4);
        assert_eq!(
            (c.delivered, c.lost, c.duplicated, c.reordered),
            (3, 1, 1, 0)
        );
    }

    #[test]
    fn an_event_after_a_higher_one_is_reordered() {
        let mut t = Tally::default();
        for seq in [0, 2, 1, 3] {
            t.record(seq);
        }
        let c = t.counts(4);
        assert_eq!((c.lost, c.duplicated, c.reordered), (0, 0, 1));
    }

    #[test]
    fn events_not_published_are_stray() {
        let mut d = Deliveries::new(1);
        d.record(Some(0), 0);
        d.record(Some(0), 70);
        d.record(Some(0), MAX_SEQ);
        d.record(Some(1), 0);
        d.record(None, 0);
        let c = d.counts(1);
        assert_eq!((c.delivered, c.lost, c.stray), (1, 0, 4));
        assert!(!c.is_exact());
    }

    #[test]
    fn counts_add_up_over_subscribers() {
        let mut a = Deliveries::new(1);
        let mut b = Deliveries::new(1);
        a.record(Some(0), 0);
        b.record(Some(0), 1);
        let sum: Counts = [a.counts(2), b.counts(2)].into_iter().sum();
        assert_eq!((sum.delivered, sum.lost), (2, 2));
    }
}
