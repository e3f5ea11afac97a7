//! Deliveries counted by identity: a bitmap by sequence number, so that a duplicate never hides
//! a loss (counting deliveries and subtracting would let it).

/// The largest sequence number a bitmap takes (32 MiB at most); above it an event is stray.
const MAX_SEQ: u64 = 1 << 28;

/// What one subscriber received of one publisher's events, numbered from 0.
#[derive(Debug, Default, Clone)]
pub(crate) struct Tally {
    seen: Vec<u64>,
    distinct: u64,
    duplicated: u64,
    reordered: u64,
    stray: u64,
    max: Option<u64>,
}

/// A [`Tally`] against what was published.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Counts {
    /// Published events received (once or more).
    pub(crate) delivered: u64,
    /// Published events never received.
    pub(crate) lost: u64,
    /// Receptions of an event already received.
    pub(crate) duplicated: u64,
    /// Events received after one with a higher sequence number.
    pub(crate) reordered: u64,
    /// Events received that the run did not publish.
    pub(crate) stray: u64,
}

impl Tally {
    /// Records event `seq`; returns whether it was its first reception.
    pub(crate) fn record(&mut self, seq: u64) -> bool {
        if seq >= MAX_SEQ {
            self.stray += 1;
            return false;
        }
        let (word, bit) = ((seq / 64) as usize, 1u64 << (seq % 64));
        if word >= self.seen.len() {
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

    /// Records something that is not one of the run's events (another sender, another type).
    pub(crate) fn record_stray(&mut self) {
        self.stray += 1;
    }

    /// Distinct events received so far.
    pub(crate) fn distinct(&self) -> u64 {
        self.distinct
    }

    /// The counts when events `0..published` were published.
    pub(crate) fn counts(&self, published: u64) -> Counts {
        let mut delivered = 0u64;
        for (i, w) in self
            .seen
            .iter()
            .take(published.div_ceil(64) as usize)
            .enumerate()
        {
            let end = published - i as u64 * 64;
            let w = if end < 64 {
                w & ((1u64 << end) - 1)
            } else {
                *w
            };
            delivered += u64::from(w.count_ones());
        }
        Counts {
            delivered,
            lost: published - delivered,
            duplicated: self.duplicated,
            reordered: self.reordered,
            stray: self.stray + (self.distinct - delivered),
        }
    }
}

impl std::ops::Add for Counts {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn everything_once_in_order_is_exact() {
        let mut t = Tally::default();
        for seq in 0..1000 {
            assert!(t.record(seq));
        }
        assert_eq!(
            t.counts(1000),
            Counts {
                delivered: 1000,
                ..Counts::default()
            }
        );
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
    fn late_and_unpublished_events_are_counted_for_what_they_are() {
        let mut t = Tally::default();
        for seq in [0, 2, 1, 70, MAX_SEQ] {
            t.record(seq);
        }
        t.record_stray();
        let c = t.counts(3);
        assert_eq!((c.delivered, c.lost, c.reordered, c.stray), (3, 0, 1, 3));
    }
}
