//! Retry policies: which failures to retry, how long to wait between attempts, when to give up.
//!
//! A [`RetryPolicy`] is a value. Its delays are a [`backon`] backoff (it implements
//! [`backon::BackoffBuilder`]), so it drives `backon`'s `Retryable` directly:
//!
//! ```
//! use std::time::Duration;
//! use interrole_core::RetryPolicy;
//!
//! // The default mirrors the official relay clients: 0, 1, 2, 5, 10, 30 s, then 30 s forever.
//! let first: Vec<Duration> = RetryPolicy::default().without_jitter().delays().take(8).collect();
//! let s = Duration::from_secs;
//! assert_eq!(first, [s(0), s(1), s(2), s(5), s(10), s(30), s(30), s(30)]);
//!
//! // Exponential from 100 ms, doubling, capped at 5 s, at most 10 attempts.
//! let p = RetryPolicy::exponential(Duration::from_millis(100), 2.0, s(5)).with_max_attempts(10);
//! assert_eq!(p.without_jitter().delays().count(), 9); // 9 waits between 10 attempts
//! ```
//!
//! Only [transient](crate::TransportError::is_transient) errors are retried: a refused credential
//! or a forbidden path stops at once, whatever the schedule says.

use std::time::{Duration, Instant};

/// How a reliable client or host retries: the schedule of delays, jitter, and budgets.
#[derive(Debug, Clone, PartialEq)]
pub struct RetryPolicy {
    schedule: Schedule,
    jitter: f64,
    max_attempts: Option<u32>,
    max_elapsed: Option<Duration>,
}

#[derive(Debug, Clone, PartialEq)]
enum Schedule {
    /// These delays, then `then` forever (or stop when `None`).
    Fixed {
        delays: Vec<Duration>,
        then: Option<Duration>,
    },
    /// `first`, multiplied by `factor` each time, capped at `max`, forever.
    Exponential {
        first: Duration,
        factor: f32,
        max: Duration,
    },
}

impl Default for RetryPolicy {
    /// 0, 1, 2, 5, 10, 30 s, then every 30 s forever, each delay with up to 10 % jitter: the
    /// schedule of the official Azure Relay listeners.
    fn default() -> Self {
        let s = Duration::from_secs;
        Self::fixed([s(0), s(1), s(2), s(5), s(10), s(30)]).then_every(s(30))
    }
}

impl RetryPolicy {
    /// Exactly these delays, then stop; 10 % jitter.
    pub fn fixed(delays: impl IntoIterator<Item = Duration>) -> Self {
        Self {
            schedule: Schedule::Fixed {
                delays: delays.into_iter().collect(),
                then: None,
            },
            jitter: 0.1,
            max_attempts: None,
            max_elapsed: None,
        }
    }

    /// `first`, then multiplied by `factor` after each attempt, capped at `max`, forever (bound
    /// it with [`with_max_attempts`](Self::with_max_attempts) or
    /// [`with_max_elapsed`](Self::with_max_elapsed)); 10 % jitter. Built on backon's
    /// exponential backoff.
    pub fn exponential(first: Duration, factor: f32, max: Duration) -> Self {
        Self {
            schedule: Schedule::Exponential {
                first,
                factor: factor.max(1.0),
                max,
            },
            jitter: 0.1,
            max_attempts: None,
            max_elapsed: None,
        }
    }

    /// No retry at all: the first failure is final.
    pub fn never() -> Self {
        Self::fixed([])
    }

    /// After a fixed schedule, keep retrying every `delay` forever.
    pub fn then_every(mut self, delay: Duration) -> Self {
        if let Schedule::Fixed { then, .. } = &mut self.schedule {
            *then = Some(delay);
        }
        self
    }

    /// Adds up to `fraction` (0 to 1) of each delay at random, so that many clients restarting
    /// together do not retry in lockstep.
    pub fn with_jitter(mut self, fraction: f64) -> Self {
        self.jitter = fraction.clamp(0.0, 1.0);
        self
    }

    /// The delays exactly as scheduled.
    pub fn without_jitter(self) -> Self {
        self.with_jitter(0.0)
    }

    /// Gives up after `attempts` attempts in all (the first included).
    pub fn with_max_attempts(mut self, attempts: u32) -> Self {
        self.max_attempts = Some(attempts.max(1));
        self
    }

    /// Gives up once waiting again would go past `budget` since the first failure.
    pub fn with_max_elapsed(mut self, budget: Duration) -> Self {
        self.max_elapsed = Some(budget);
        self
    }

    /// The delays before the 2nd, 3rd, … attempts; the iterator ends when the policy gives up.
    pub fn delays(&self) -> RetryDelays {
        let inner = match &self.schedule {
            Schedule::Fixed { delays, then } => Inner::Fixed {
                delays: delays.clone().into_iter(),
                then: *then,
            },
            Schedule::Exponential { first, factor, max } => {
                Inner::Exponential(backon::BackoffBuilder::build(
                    backon::ExponentialBuilder::default()
                        .with_min_delay(*first)
                        .with_factor(*factor)
                        .with_max_delay(*max)
                        .without_max_times(),
                ))
            }
        };
        RetryDelays {
            inner,
            jitter: self.jitter,
            waits_left: self.max_attempts.map(|a| a.saturating_sub(1)),
            deadline: self.max_elapsed.map(|b| (Instant::now(), b)),
            waited: Duration::ZERO,
            rng: seed(),
        }
    }
}

impl backon::BackoffBuilder for RetryPolicy {
    type Backoff = RetryDelays;

    fn build(self) -> RetryDelays {
        self.delays()
    }
}

impl backon::BackoffBuilder for &RetryPolicy {
    type Backoff = RetryDelays;

    fn build(self) -> RetryDelays {
        self.delays()
    }
}

/// The delays of one run of a [`RetryPolicy`]: a [`backon::Backoff`].
#[derive(Debug)]
pub struct RetryDelays {
    inner: Inner,
    jitter: f64,
    waits_left: Option<u32>,
    deadline: Option<(Instant, Duration)>,
    waited: Duration,
    rng: u64,
}

#[derive(Debug)]
enum Inner {
    Fixed {
        delays: std::vec::IntoIter<Duration>,
        then: Option<Duration>,
    },
    Exponential(backon::ExponentialBackoff),
}

impl Iterator for RetryDelays {
    type Item = Duration;

    fn next(&mut self) -> Option<Duration> {
        if let Some(left) = &mut self.waits_left {
            *left = left.checked_sub(1)?;
        }
        let base = match &mut self.inner {
            Inner::Fixed { delays, then } => delays.next().or(*then)?,
            // backon multiplies in f32: keep whole microseconds.
            Inner::Exponential(b) => Duration::from_micros(b.next()?.as_micros() as u64),
        };
        let delay = if self.jitter > 0.0 && !base.is_zero() {
            // xorshift64*: enough to spread clients apart.
            self.rng ^= self.rng >> 12;
            self.rng ^= self.rng << 25;
            self.rng ^= self.rng >> 27;
            let r =
                (self.rng.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 11) as f64 / (1u64 << 53) as f64;
            base.mul_f64(1.0 + self.jitter * r)
        } else {
            base
        };
        if let Some((start, budget)) = self.deadline {
            // Measured from the first failure: real time, not only the delays, counts.
            let spent = start.elapsed().max(self.waited);
            if spent + delay > budget {
                return None;
            }
        }
        self.waited += delay;
        Some(delay)
    }
}

fn seed() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(std::process::id().into());
    h.finish() | 1
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: fn(u64) -> Duration = Duration::from_secs;

    #[test]
    fn default_schedule_then_forever() {
        let d: Vec<_> = RetryPolicy::default()
            .without_jitter()
            .delays()
            .take(9)
            .collect();
        assert_eq!(
            d,
            [S(0), S(1), S(2), S(5), S(10), S(30), S(30), S(30), S(30)]
        );
    }

    #[test]
    fn jitter_stays_within_its_fraction_and_leaves_zero_alone() {
        let p = RetryPolicy::default().with_jitter(0.5);
        for _ in 0..50 {
            let d: Vec<_> = p.delays().take(7).collect();
            assert_eq!(d[0], S(0));
            for (got, base) in d.iter().zip([0, 1, 2, 5, 10, 30, 30]) {
                assert!(
                    *got >= S(base) && *got <= S(base).mul_f64(1.5),
                    "{got:?} vs {base}"
                );
            }
        }
    }

    #[test]
    fn attempts_and_time_budgets_end_the_delays() {
        let p = RetryPolicy::default().without_jitter().with_max_attempts(3);
        assert_eq!(p.delays().collect::<Vec<_>>(), [S(0), S(1)]);
        assert_eq!(RetryPolicy::never().delays().count(), 0);
        let p = RetryPolicy::default()
            .without_jitter()
            .with_max_elapsed(S(9));
        assert_eq!(p.delays().collect::<Vec<_>>(), [S(0), S(1), S(2), S(5)]);
    }

    #[test]
    fn exponential_doubles_and_caps() {
        let ms = Duration::from_millis;
        let p = RetryPolicy::exponential(ms(100), 2.0, ms(500)).without_jitter();
        let d: Vec<_> = p.delays().take(5).collect();
        assert_eq!(d, [ms(100), ms(200), ms(400), ms(500), ms(500)]);
    }
}
