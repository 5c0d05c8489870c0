//! Restart strategies: whether, and after how long, a failed job runs again.
//!
//! The decision is a pure function of the failure history, so it is unit
//! tested without clocks or threads; the executor supplies the instants.
//! Keys and defaults are Flink's (`restart-strategy.*`). With checkpointing
//! on and no strategy configured, the job restarts with exponential delay
//! (Flink's default); without checkpointing it does not restart.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use rill_api::{Configuration, Error};

/// How a job restarts after a failure.
#[derive(Debug, Clone, PartialEq)]
pub enum RestartStrategy {
    /// Fail the job on the first failure.
    None,
    /// Up to `attempts` restarts, each after `delay`.
    FixedDelay { attempts: u32, delay: Duration },
    /// Pauses growing by `multiplier` up to `max`; a run of at least
    /// `reset_threshold` starts again from `initial`.
    ExponentialDelay {
        initial: Duration,
        max: Duration,
        multiplier: f64,
        reset_threshold: Duration,
        jitter: f64,
        attempts: u32,
    },
    /// Restart after `delay` unless more than `max_failures` happened within
    /// `interval`.
    FailureRate {
        max_failures: u32,
        interval: Duration,
        delay: Duration,
    },
}

fn duration(config: &Configuration, key: &str) -> Result<Duration, Error> {
    config
        .get_duration(key)?
        .ok_or_else(|| Error::Config(format!("{key} has no value")))
}

fn number<T: std::str::FromStr>(config: &Configuration, key: &str) -> Result<T, Error> {
    config
        .get_parsed(key)?
        .ok_or_else(|| Error::Config(format!("{key} has no value")))
}

impl RestartStrategy {
    /// Reads `restart-strategy.*`; `checkpointing` picks the default.
    pub fn from_config(config: &Configuration, checkpointing: bool) -> Result<Self, Error> {
        let kind = config
            .get("restart-strategy.type")
            .unwrap_or(if checkpointing {
                "exponential-delay"
            } else {
                "none"
            });
        Ok(match kind.to_ascii_lowercase().as_str() {
            "none" | "off" | "disable" => Self::None,
            "fixed-delay" | "fixeddelay" => Self::FixedDelay {
                attempts: number(config, "restart-strategy.fixed-delay.attempts")?,
                delay: duration(config, "restart-strategy.fixed-delay.delay")?,
            },
            "exponential-delay" | "exponentialdelay" => {
                let multiplier: f64 = number(
                    config,
                    "restart-strategy.exponential-delay.backoff-multiplier",
                )?;
                let jitter: f64 =
                    number(config, "restart-strategy.exponential-delay.jitter-factor")?;
                if multiplier < 1.0 || !(0.0..=1.0).contains(&jitter) {
                    return Err(Error::Config(
                        "exponential-delay needs backoff-multiplier >= 1 and jitter-factor in [0, 1]"
                            .into(),
                    ));
                }
                Self::ExponentialDelay {
                    initial: duration(
                        config,
                        "restart-strategy.exponential-delay.initial-backoff",
                    )?,
                    max: duration(config, "restart-strategy.exponential-delay.max-backoff")?,
                    multiplier,
                    reset_threshold: duration(
                        config,
                        "restart-strategy.exponential-delay.reset-backoff-threshold",
                    )?,
                    jitter,
                    attempts: config
                        .get_parsed(
                            "restart-strategy.exponential-delay.attempts-before-reset-backoff",
                        )?
                        .unwrap_or(u32::MAX),
                }
            }
            "failure-rate" | "failurerate" => Self::FailureRate {
                max_failures: number(
                    config,
                    "restart-strategy.failure-rate.max-failures-per-interval",
                )?,
                interval: duration(
                    config,
                    "restart-strategy.failure-rate.failure-rate-interval",
                )?,
                delay: duration(config, "restart-strategy.failure-rate.delay")?,
            },
            other => {
                return Err(Error::Config(format!(
                    "restart-strategy.type: unknown strategy '{other}' \
                     (none, fixed-delay, exponential-delay, failure-rate)"
                )))
            }
        })
    }
}

/// The failure history of one job under one strategy.
#[derive(Debug, Clone)]
pub struct RestartTracker {
    strategy: RestartStrategy,
    restarts: u32,
    failures: VecDeque<Instant>,
    backoff: Option<Duration>,
}

impl RestartTracker {
    pub fn new(strategy: RestartStrategy) -> Self {
        Self {
            strategy,
            restarts: 0,
            failures: VecDeque::new(),
            backoff: None,
        }
    }

    /// Restarts granted so far.
    pub fn restarts(&self) -> u32 {
        self.restarts
    }

    /// A run that lasted `ran_for` failed at `now`: returns the pause before
    /// the next attempt, or `None` when the job must fail. `random` in
    /// [0, 1) drives the jitter.
    pub fn on_failure(&mut self, now: Instant, ran_for: Duration, random: f64) -> Option<Duration> {
        let delay = match &self.strategy {
            RestartStrategy::None => None,
            RestartStrategy::FixedDelay { attempts, delay } => {
                (self.restarts < *attempts).then_some(*delay)
            }
            RestartStrategy::ExponentialDelay {
                initial,
                max,
                multiplier,
                reset_threshold,
                jitter,
                attempts,
            } => {
                if ran_for >= *reset_threshold {
                    self.backoff = None;
                    self.restarts = 0;
                }
                if self.restarts >= *attempts {
                    None
                } else {
                    let next = match self.backoff {
                        None => *initial,
                        Some(b) => b.mul_f64(*multiplier).min(*max),
                    };
                    self.backoff = Some(next);
                    let spread = next.as_secs_f64() * jitter * (2.0 * random - 1.0);
                    Some(Duration::from_secs_f64(
                        (next.as_secs_f64() + spread).max(0.0),
                    ))
                }
            }
            RestartStrategy::FailureRate {
                max_failures,
                interval,
                delay,
            } => {
                self.failures.push_back(now);
                while self
                    .failures
                    .front()
                    .is_some_and(|t| now.duration_since(*t) > *interval)
                {
                    self.failures.pop_front();
                }
                (self.failures.len() as u32 <= *max_failures).then_some(*delay)
            }
        };
        if delay.is_some() {
            self.restarts += 1;
        }
        delay
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(pairs: &[(&str, &str)]) -> Configuration {
        let mut c = Configuration::new();
        for (k, v) in pairs {
            c.set(k, *v).unwrap();
        }
        c
    }

    #[test]
    fn defaults_follow_checkpointing() {
        let c = Configuration::new();
        assert_eq!(
            RestartStrategy::from_config(&c, false).unwrap(),
            RestartStrategy::None
        );
        assert!(matches!(
            RestartStrategy::from_config(&c, true).unwrap(),
            RestartStrategy::ExponentialDelay { .. }
        ));
        let bad = config(&[("restart-strategy.type", "sometimes")]);
        assert!(RestartStrategy::from_config(&bad, true).is_err());
    }

    #[test]
    fn fixed_delay_counts_attempts() {
        let c = config(&[
            ("restart-strategy.type", "fixed-delay"),
            ("restart-strategy.fixed-delay.attempts", "2"),
            ("restart-strategy.fixed-delay.delay", "3 s"),
        ]);
        let mut t = RestartTracker::new(RestartStrategy::from_config(&c, true).unwrap());
        let now = Instant::now();
        assert_eq!(
            t.on_failure(now, Duration::ZERO, 0.5),
            Some(Duration::from_secs(3))
        );
        assert_eq!(
            t.on_failure(now, Duration::ZERO, 0.5),
            Some(Duration::from_secs(3))
        );
        assert_eq!(t.on_failure(now, Duration::ZERO, 0.5), None);
        assert_eq!(t.restarts(), 2);
    }

    #[test]
    fn exponential_delay_grows_caps_and_resets() {
        let c = config(&[
            ("restart-strategy.type", "exponential-delay"),
            ("restart-strategy.exponential-delay.initial-backoff", "1 s"),
            ("restart-strategy.exponential-delay.max-backoff", "5 s"),
            ("restart-strategy.exponential-delay.backoff-multiplier", "2"),
            ("restart-strategy.exponential-delay.jitter-factor", "0"),
            (
                "restart-strategy.exponential-delay.reset-backoff-threshold",
                "1 min",
            ),
        ]);
        let mut t = RestartTracker::new(RestartStrategy::from_config(&c, false).unwrap());
        let now = Instant::now();
        let short = Duration::from_secs(1);
        let delays: Vec<u64> = (0..5)
            .map(|_| t.on_failure(now, short, 0.5).unwrap().as_secs())
            .collect();
        assert_eq!(delays, vec![1, 2, 4, 5, 5]);
        let after_long_run = t.on_failure(now, Duration::from_secs(120), 0.5).unwrap();
        assert_eq!(after_long_run, Duration::from_secs(1));
    }

    #[test]
    fn exponential_jitter_stays_within_its_factor() {
        let strategy = RestartStrategy::ExponentialDelay {
            initial: Duration::from_secs(10),
            max: Duration::from_secs(60),
            multiplier: 2.0,
            reset_threshold: Duration::from_secs(3600),
            jitter: 0.1,
            attempts: u32::MAX,
        };
        let now = Instant::now();
        let low = RestartTracker::new(strategy.clone()).on_failure(now, Duration::ZERO, 0.0);
        let high = RestartTracker::new(strategy).on_failure(now, Duration::ZERO, 0.999_999);
        assert_eq!(low, Some(Duration::from_secs(9)));
        let high = high.unwrap().as_secs_f64();
        assert!((10.99..11.0).contains(&high), "{high}");
    }

    #[test]
    fn failure_rate_forgets_old_failures() {
        let mut t = RestartTracker::new(RestartStrategy::FailureRate {
            max_failures: 2,
            interval: Duration::from_secs(60),
            delay: Duration::from_millis(10),
        });
        let t0 = Instant::now();
        assert!(t.on_failure(t0, Duration::ZERO, 0.5).is_some());
        assert!(t
            .on_failure(t0 + Duration::from_secs(1), Duration::ZERO, 0.5)
            .is_some());
        assert!(
            t.on_failure(t0 + Duration::from_secs(2), Duration::ZERO, 0.5)
                .is_none(),
            "three failures within a minute"
        );
        let mut t = RestartTracker::new(RestartStrategy::FailureRate {
            max_failures: 2,
            interval: Duration::from_secs(60),
            delay: Duration::from_millis(10),
        });
        assert!(t.on_failure(t0, Duration::ZERO, 0.5).is_some());
        assert!(t
            .on_failure(t0 + Duration::from_secs(1), Duration::ZERO, 0.5)
            .is_some());
        assert!(t
            .on_failure(t0 + Duration::from_secs(90), Duration::ZERO, 0.5)
            .is_some());
    }
}
