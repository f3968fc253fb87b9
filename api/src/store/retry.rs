//! How often, and after what wait, the store tries again a write that lost
//! a race (or, in DynamoDB, whose attempt failed for a reason that may
//! pass). The waits are [`obt_runtime::backoff::Backoff`]'s: capped
//! exponential, full jitter.

use std::time::Duration;

use obt_runtime::backoff::Backoff;

/// Bounds the retries of a conflicting write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Retries after the first attempt; 0 means a conflict is answered at
    /// once.
    pub max_retries: u32,
    /// The waits between attempts: the first ceiling (`first`, doubling
    /// with each retry) and the highest (`max`), so that late retries stay
    /// responsive.
    pub backoff: Backoff,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            max_retries: 10,
            backoff: Backoff::new(Duration::from_millis(5), Duration::from_millis(500)),
        }
    }
}

impl RetryPolicy {
    /// Whether a write may be tried again after `failures` attempts lost
    /// their race.
    pub fn may_retry(&self, failures: u32) -> bool {
        failures <= self.max_retries
    }

    /// The wait after `failures` failed attempts (1 for the first),
    /// drawn below the ceiling of the failure before.
    pub fn delay(&self, failures: u32) -> Duration {
        self.backoff.delay(failures.saturating_sub(1))
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
            backoff: Backoff::new(Duration::from_millis(5), Duration::from_millis(100)),
        };
        let ceilings: Vec<u128> = (0..7)
            .map(|a| policy.backoff.ceiling(a).as_millis())
            .collect();
        assert_eq!(ceilings, [5, 10, 20, 40, 80, 100, 100]);
        assert_eq!(policy.backoff.ceiling(u32::MAX), Duration::from_millis(100));
    }

    #[test]
    fn waits_are_jittered_below_the_ceiling() {
        let policy = RetryPolicy::default();
        let mut rng = StdRng::seed_from_u64(7);
        for attempt in 0..12 {
            let waits: Vec<Duration> = (0..50)
                .map(|_| policy.backoff.delay_with(attempt, &mut rng))
                .collect();
            assert!(
                waits.iter().all(|w| *w <= policy.backoff.ceiling(attempt)),
                "attempt {attempt}: {waits:?}"
            );
            assert!(
                waits.windows(2).any(|w| w[0] != w[1]),
                "attempt {attempt}: no jitter in {waits:?}"
            );
        }
        for failures in 1..12 {
            assert!(policy.delay(failures) <= policy.backoff.ceiling(failures - 1));
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
