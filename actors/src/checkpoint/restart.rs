//! The supervisor's restart strategy, as an I/O-free state machine: given a failure
//! at time `now`, restart after a delay or give up. Strategies as Flink's:
//!
//! - `None`: the first failure fails the job.
//! - `FixedDelay`: up to `attempts` restarts, each after `delay`.
//! - `ExponentialBackoff`: the delay doubles (times `multiplier`) from `initial` up to
//!   `max`, with ± `jitter` (a fraction) drawn from a seeded generator; after
//!   `reset_after` without failure the delay starts over. Never gives up.
//! - `FailureRate`: gives up when more than `max_failures` happen within `interval`.
//!
//! When it gives up, the decision carries every failure seen, for the final error.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum RestartStrategy {
    None,
    FixedDelay {
        attempts: u32,
        delay_ms: u64,
    },
    ExponentialBackoff {
        initial_ms: u64,
        max_ms: u64,
        multiplier: f64,
        jitter: f64,
        reset_after_ms: u64,
    },
    FailureRate {
        max_failures: u32,
        interval_ms: u64,
        delay_ms: u64,
    },
}

impl Default for RestartStrategy {
    fn default() -> Self {
        RestartStrategy::ExponentialBackoff {
            initial_ms: 100,
            max_ms: 10_000,
            multiplier: 2.0,
            jitter: 0.1,
            reset_after_ms: 60_000,
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub enum Decision {
    RestartAfter { delay_ms: u64, attempt: u32 },
    GiveUp { failures: Vec<(u64, String)> },
}

#[derive(Debug)]
pub struct RestartTracker {
    strategy: RestartStrategy,
    failures: Vec<(u64, String)>,
    restarts: u32,
    next_backoff_ms: u64,
    rng: u64,
}

impl RestartTracker {
    /// `seed` drives the jitter, so a seeded run repeats its delays.
    pub fn new(strategy: RestartStrategy, seed: u64) -> Self {
        let next_backoff_ms = match strategy {
            RestartStrategy::ExponentialBackoff { initial_ms, .. } => initial_ms,
            _ => 0,
        };
        RestartTracker {
            strategy,
            failures: Vec::new(),
            restarts: 0,
            next_backoff_ms,
            rng: seed | 1,
        }
    }

    /// A failure happened at `now_ms`: restart or give up?
    pub fn on_failure(&mut self, now_ms: u64, cause: String) -> Decision {
        let previous_failure = self.failures.last().map(|(t, _)| *t);
        self.failures.push((now_ms, cause));
        let delay = match self.strategy.clone() {
            RestartStrategy::None => None,
            RestartStrategy::FixedDelay { attempts, delay_ms } => {
                (self.restarts < attempts).then_some(delay_ms)
            }
            RestartStrategy::ExponentialBackoff {
                initial_ms,
                max_ms,
                multiplier,
                jitter,
                reset_after_ms,
            } => {
                if previous_failure.is_some_and(|t| now_ms.saturating_sub(t) >= reset_after_ms) {
                    self.next_backoff_ms = initial_ms;
                }
                let base = self.next_backoff_ms.min(max_ms);
                self.next_backoff_ms =
                    ((base as f64 * multiplier) as u64).clamp(initial_ms, max_ms);
                Some(self.jittered(base, jitter))
            }
            RestartStrategy::FailureRate {
                max_failures,
                interval_ms,
                delay_ms,
            } => {
                let recent = self
                    .failures
                    .iter()
                    .filter(|(t, _)| now_ms.saturating_sub(*t) < interval_ms)
                    .count();
                (recent as u32 <= max_failures).then_some(delay_ms)
            }
        };
        match delay {
            Some(delay_ms) => {
                self.restarts += 1;
                Decision::RestartAfter {
                    delay_ms,
                    attempt: self.restarts,
                }
            }
            None => Decision::GiveUp {
                failures: self.failures.clone(),
            },
        }
    }

    fn jittered(&mut self, base: u64, jitter: f64) -> u64 {
        // xorshift64*: small, seedable, good enough to spread restarts.
        self.rng ^= self.rng >> 12;
        self.rng ^= self.rng << 25;
        self.rng ^= self.rng >> 27;
        let unit =
            (self.rng.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 11) as f64 / (1u64 << 53) as f64;
        let factor = 1.0 + jitter * (2.0 * unit - 1.0);
        (base as f64 * factor).round().max(0.0) as u64
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn delays(tracker: &mut RestartTracker, times: &[u64]) -> Vec<Option<u64>> {
        times
            .iter()
            .map(
                |&t| match tracker.on_failure(t, format!("failure at {t}")) {
                    Decision::RestartAfter { delay_ms, .. } => Some(delay_ms),
                    Decision::GiveUp { .. } => None,
                },
            )
            .collect()
    }

    #[test]
    fn none_gives_up_at_once_with_the_cause() {
        let mut t = RestartTracker::new(RestartStrategy::None, 1);
        assert_eq!(
            t.on_failure(5, "boom".into()),
            Decision::GiveUp {
                failures: vec![(5, "boom".into())]
            }
        );
    }

    #[test]
    fn fixed_delay_restarts_a_given_number_of_times() {
        let mut t = RestartTracker::new(
            RestartStrategy::FixedDelay {
                attempts: 2,
                delay_ms: 50,
            },
            1,
        );
        assert_eq!(delays(&mut t, &[0, 10, 20]), vec![Some(50), Some(50), None]);
    }

    #[test]
    fn backoff_doubles_to_the_cap_and_resets_after_a_stable_period() {
        let strategy = RestartStrategy::ExponentialBackoff {
            initial_ms: 100,
            max_ms: 500,
            multiplier: 2.0,
            jitter: 0.0,
            reset_after_ms: 10_000,
        };
        let mut t = RestartTracker::new(strategy, 1);
        assert_eq!(
            delays(&mut t, &[0, 1, 2, 3, 4, 20_000]),
            vec![
                Some(100),
                Some(200),
                Some(400),
                Some(500),
                Some(500),
                Some(100)
            ]
        );
    }

    #[test]
    fn failure_rate_gives_up_when_too_many_failures_fall_in_the_interval() {
        let strategy = RestartStrategy::FailureRate {
            max_failures: 2,
            interval_ms: 1_000,
            delay_ms: 10,
        };
        let mut t = RestartTracker::new(strategy, 1);
        assert_eq!(
            delays(&mut t, &[0, 100, 1_500, 1_600]),
            vec![Some(10), Some(10), Some(10), Some(10)]
        );
        assert_eq!(delays(&mut t, &[1_700]), vec![None]);
    }

    proptest! {
        /// Jittered delays stay within ± jitter of the un-jittered backoff, never
        /// exceed the cap by more than the jitter, and the same seed repeats them.
        #[test]
        fn jitter_stays_in_bounds_and_is_reproducible(seed: u64, failures in 1usize..30) {
            let strategy = RestartStrategy::ExponentialBackoff {
                initial_ms: 100, max_ms: 5_000, multiplier: 2.0, jitter: 0.2, reset_after_ms: u64::MAX,
            };
            let times: Vec<u64> = (0..failures as u64).collect();
            let a = delays(&mut RestartTracker::new(strategy.clone(), seed), &times);
            let b = delays(&mut RestartTracker::new(strategy, seed), &times);
            prop_assert_eq!(&a, &b);
            let mut base = 100u64;
            for delay in a {
                let delay = delay.expect("backoff never gives up");
                prop_assert!(delay as f64 >= base as f64 * 0.8 - 1.0 && delay as f64 <= base as f64 * 1.2 + 1.0);
                base = (base * 2).min(5_000);
            }
        }
    }
}
