//! The wall clock that stamps envelopes, read from the CPU's time-stamp counter.
//!
//! `SystemTime::now()` is a `clock_gettime` call: on the machines measured it was about a third
//! of a whole in-process publish. This clock reads the counter (quanta's `Clock`, calibrated
//! once; where the counter is not reliable it falls back to the OS monotonic clock) and adds an
//! offset to the wall clock taken from `SystemTime` once a second, so it follows the wall clock
//! (steps and slews included) to within a second's counter drift: microseconds.

use std::sync::OnceLock;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

/// How often, in microseconds of the counter, the offset to the wall clock is taken again.
const ANCHOR_EVERY_MICROS: u64 = 1_000_000;

struct WallClock {
    counter: quanta::Clock,
    /// The counter's reading when the clock was made: its microseconds count from there.
    origin: u64,
    /// Wall-clock microseconds minus counter microseconds, as of the last anchoring.
    offset: AtomicI64,
    /// The counter microseconds at which to anchor again.
    next_anchor: AtomicU64,
}

impl WallClock {
    fn new() -> Self {
        let counter = quanta::Clock::new();
        let origin = counter.raw();
        let clock = Self {
            counter,
            origin,
            offset: AtomicI64::new(0),
            next_anchor: AtomicU64::new(0),
        };
        clock.anchor();
        clock
    }

    /// Microseconds of the counter since `origin`.
    #[inline]
    fn counter_micros(&self) -> u64 {
        self.counter.delta_as_nanos(self.origin, self.counter.raw()) / 1_000
    }

    /// Takes the offset to the wall clock again.
    #[cold]
    fn anchor(&self) {
        let wall = system_micros();
        let counter = self.counter_micros();
        self.offset
            .store(wall as i64 - counter as i64, Ordering::Relaxed);
        self.next_anchor
            .store(counter + ANCHOR_EVERY_MICROS, Ordering::Relaxed);
    }

    #[inline]
    fn now_micros(&self) -> u64 {
        let counter = self.counter_micros();
        let next = self.next_anchor.load(Ordering::Relaxed);
        if counter >= next
            && self
                .next_anchor
                .compare_exchange(next, u64::MAX, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            // One thread anchors; the others go on with the previous offset meanwhile.
            self.anchor();
        }
        (counter as i64).wrapping_add(self.offset.load(Ordering::Relaxed)) as u64
    }
}

/// The wall clock read the slow way.
fn system_micros() -> u64 {
    // Seconds and sub-second micros in u64: `as_micros` goes through u128.
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| {
        d.as_secs() * 1_000_000 + u64::from(d.subsec_micros())
    })
}

fn clock() -> &'static WallClock {
    static CLOCK: OnceLock<WallClock> = OnceLock::new();
    CLOCK.get_or_init(WallClock::new)
}

/// Microseconds since the Unix epoch, now.
#[inline]
pub(crate) fn now_micros() -> u64 {
    clock().now_micros()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn follows_the_wall_clock() {
        for _ in 0..5 {
            let before = system_micros();
            let now = now_micros();
            let after = system_micros();
            // Within a millisecond of the OS's wall clock: the counter drifts by microseconds
            // in the second between anchorings.
            assert!(
                now + 1_000 >= before && now <= after + 1_000,
                "{before} <= {now} <= {after}"
            );
            std::thread::sleep(std::time::Duration::from_millis(3));
        }
    }

    #[test]
    fn is_anchored_again_once_its_time_comes() {
        let clock = WallClock::new();
        // As if the wall clock had been stepped by an hour since the last anchoring.
        clock.offset.fetch_add(3_600_000_000, Ordering::Relaxed);
        clock.next_anchor.store(0, Ordering::Relaxed);
        let now = clock.now_micros();
        let wall = system_micros();
        assert!(now.abs_diff(wall) < 1_000, "{now} against {wall}");
    }
}
