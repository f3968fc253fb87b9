//! The one backoff of the workspace: how long to wait before trying again
//! something that failed for a reason that may pass (throttling, a 5xx, a
//! timeout, a lost optimistic-concurrency race).
//!
//! Capped exponential growth with "full jitter" (each wait drawn uniformly
//! from zero to the current ceiling), as in the AWS Architecture Blog's
//! "Exponential Backoff And Jitter": callers that failed together do not
//! retry in lock step, and the total wait stays close to half the sum of
//! the ceilings.

use std::time::Duration;

use rand::Rng;

/// The ceilings of the waits: `first`, doubling with each attempt, never
/// above `max`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    /// The ceiling of the first wait.
    pub first: Duration,
    /// The highest ceiling, so that late retries stay responsive.
    pub max: Duration,
}

impl Backoff {
    pub const fn new(first: Duration, max: Duration) -> Self {
        Self { first, max }
    }

    /// The most the wait after failed attempt number `attempt` (0 for the
    /// first failure) can be: `min(max, first * 2^attempt)`.
    pub fn ceiling(&self, attempt: u32) -> Duration {
        let factor = 2u32.saturating_pow(attempt.min(31));
        self.first.saturating_mul(factor).min(self.max)
    }

    /// A wait drawn uniformly from `0..=ceiling(attempt)`, from `rng`.
    pub fn delay_with(&self, attempt: u32, rng: &mut impl Rng) -> Duration {
        let ceiling = u64::try_from(self.ceiling(attempt).as_micros()).unwrap_or(u64::MAX);
        Duration::from_micros(rng.random_range(0..=ceiling))
    }

    /// A wait drawn uniformly from `0..=ceiling(attempt)`.
    pub fn delay(&self, attempt: u32) -> Duration {
        self.delay_with(attempt, &mut rand::rng())
    }

    /// A counter of attempts over this policy, for a loop that retries.
    pub fn attempts(self) -> Attempts {
        Attempts {
            policy: self,
            failures: 0,
        }
    }
}

/// The failures seen so far in one run of retries.
#[derive(Debug, Clone)]
pub struct Attempts {
    policy: Backoff,
    failures: u32,
}

impl Attempts {
    /// Waits after one more failure: a jittered time below the ceiling of
    /// the failures so far.
    pub async fn wait(&mut self) {
        let pause = self.next_delay();
        tokio::time::sleep(pause).await;
    }

    /// The wait after one more failure, counting it.
    pub fn next_delay(&mut self) -> Duration {
        let pause = self.policy.delay(self.failures);
        self.failures = self.failures.saturating_add(1);
        pause
    }

    /// Failures counted since the start or the last reset.
    pub fn failures(&self) -> u32 {
        self.failures
    }

    /// Starts again from the first ceiling, after a success.
    pub fn reset(&mut self) {
        self.failures = 0;
    }
}

#[cfg(test)]
mod tests {
    use rand::SeedableRng;
    use rand::rngs::StdRng;

    use super::*;

    #[test]
    fn the_ceiling_doubles_until_the_max() {
        let policy = Backoff::new(Duration::from_millis(5), Duration::from_millis(100));
        let ceilings: Vec<u128> = (0..7).map(|a| policy.ceiling(a).as_millis()).collect();
        assert_eq!(ceilings, [5, 10, 20, 40, 80, 100, 100]);
        assert_eq!(policy.ceiling(u32::MAX), Duration::from_millis(100));
        let huge = Backoff::new(Duration::MAX, Duration::MAX);
        assert_eq!(
            huge.ceiling(40),
            Duration::MAX,
            "saturates, never overflows"
        );
    }

    #[test]
    fn waits_are_jittered_below_the_ceiling() {
        let policy = Backoff::new(Duration::from_millis(5), Duration::from_millis(500));
        let mut rng = StdRng::seed_from_u64(7);
        for attempt in 0..12 {
            let waits: Vec<Duration> = (0..50)
                .map(|_| policy.delay_with(attempt, &mut rng))
                .collect();
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
    fn attempts_count_failures_and_reset() {
        let mut attempts =
            Backoff::new(Duration::from_millis(1), Duration::from_millis(4)).attempts();
        for expected in 0..5 {
            assert_eq!(attempts.failures(), expected);
            let pause = attempts.next_delay();
            assert!(pause <= Duration::from_millis(4), "{pause:?}");
        }
        attempts.reset();
        assert_eq!(attempts.failures(), 0);
        assert!(attempts.next_delay() <= Duration::from_millis(1));
    }
}
