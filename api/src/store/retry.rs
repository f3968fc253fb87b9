//! How long to wait before retrying a write that lost an
//! optimistic-concurrency race: exponential backoff with full jitter, so
//! that writers which collided once do not collide again in lock step.

use std::time::Duration;

use rand::Rng;

/// Bounds the retries of a conflicting write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Retries after the first attempt; 0 means a conflict is answered at
    /// once.
    pub max_retries: u32,
    /// The ceiling of the first wait; it doubles with each retry.
    pub base: Duration,
    /// The highest ceiling, so that late retries stay responsive.
    pub cap: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            max_retries: 10,
            base: Duration::from_millis(5),
            cap: Duration::from_millis(500),
        }
    }
}

impl RetryPolicy {
    /// The most a wait after the failed attempt number `attempt` (0 for
    /// the first) can be: `min(cap, base * 2^attempt)`.
    pub fn ceiling(&self, attempt: u32) -> Duration {
        let factor = 2u32.saturating_pow(attempt.min(31));
        self.base.saturating_mul(factor).min(self.cap)
    }

    /// A wait drawn uniformly from `0..=ceiling(attempt)` ("full jitter").
    pub fn backoff(&self, attempt: u32, rng: &mut impl Rng) -> Duration {
        let ceiling = u64::try_from(self.ceiling(attempt).as_micros()).unwrap_or(u64::MAX);
        Duration::from_micros(rng.random_range(0..=ceiling))
    }

    /// Whether a write may be tried again after `failures` attempts lost
    /// their race.
    pub fn may_retry(&self, failures: u32) -> bool {
        failures <= self.max_retries
    }
}

#[cfg(test)]
mod tests {
    use rand::SeedableRng;
    use rand::rngs::StdRng;

    use super::*;

    #[test]
    fn the_ceiling_doubles_until_the_cap() {
        let policy = RetryPolicy {
            max_retries: 10,
            base: Duration::from_millis(5),
            cap: Duration::from_millis(100),
        };
        let ceilings: Vec<u128> = (0..7).map(|a| policy.ceiling(a).as_millis()).collect();
        assert_eq!(ceilings, [5, 10, 20, 40, 80, 100, 100]);
        assert_eq!(policy.ceiling(u32::MAX), Duration::from_millis(100));
    }

    #[test]
    fn waits_are_jittered_below_the_ceiling() {
        let policy = RetryPolicy::default();
        let mut rng = StdRng::seed_from_u64(7);
        for attempt in 0..12 {
            let waits: Vec<Duration> = (0..50).map(|_| policy.backoff(attempt, &mut rng)).collect();
            assert!(
                waits.iter().all(|w| *w <= policy.ceiling(attempt)),
                "attempt {attempt}: {waits:?}"
            );
            assert!(
                waits.windows(2).any(|w| w[0] != w[1]),
                "attempt {attempt}: no jitter in {waits:?}"
            );
        }
    }

    #[test]
    fn the_retry_bound_counts_retries_after_the_first_attempt() {
        let none = RetryPolicy {
            max_retries: 0,
            ..RetryPolicy::default()
        };
        assert!(!none.may_retry(1), "no retry after the first attempt lost");
        let two = RetryPolicy {
            max_retries: 2,
            ..RetryPolicy::default()
        };
        assert_eq!((1..10).filter(|f| two.may_retry(*f)).count(), 2);
    }
}
