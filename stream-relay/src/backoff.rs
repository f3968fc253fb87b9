//! Waiting between retries of a call that failed for a reason that may
//! pass (a network error, throttling, a service briefly away).

use std::time::Duration;

use rand::Rng;

/// Exponential backoff with jitter: each wait is random between half and
/// all of the current step, which doubles up to a maximum.
#[derive(Debug)]
pub struct Backoff {
    next: Duration,
    max: Duration,
}

impl Backoff {
    pub fn new(first: Duration, max: Duration) -> Self {
        Self { next: first, max }
    }

    /// Waits a random time up to the current step, then doubles the step.
    pub async fn wait(&mut self) {
        let millis = self.next.as_millis().max(1) as u64;
        let pause = Duration::from_millis(rand::rng().random_range(millis / 2..=millis));
        self.next = (self.next * 2).min(self.max);
        tokio::time::sleep(pause).await;
    }

    pub fn reset(&mut self, first: Duration) {
        self.next = first;
    }
}
