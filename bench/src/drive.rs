//! The load drivers. Closed loop: `concurrency` workers, each sending its
//! next request when the previous one returns, for a fixed time. Open
//! loop: requests started on a fixed schedule whatever the answers, so
//! that a slow system meets the same arrivals (no coordinated omission).

use std::future::Future;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use futures::StreamExt;
use futures::stream::FuturesUnordered;

use crate::figures::{Latency, Step};

/// What one request did: `Ok(units)` of work done (1 for a POST, 10 for a
/// batch of 10), or why it failed.
pub type Done = Result<u64, String>;

/// The first few distinct errors of a run are kept, to say what failed.
const ERROR_SAMPLES: usize = 3;

#[derive(Default)]
struct Tally {
    ok: u64,
    errors: u64,
    latencies: Vec<Duration>,
    error_samples: Vec<String>,
}

impl Tally {
    fn add(&mut self, done: Done, latency: Duration) {
        match done {
            Ok(units) => {
                self.ok += units;
                self.latencies.push(latency);
            }
            Err(error) => {
                self.errors += 1;
                if self.error_samples.len() < ERROR_SAMPLES && !self.error_samples.contains(&error)
                {
                    self.error_samples.push(error);
                }
            }
        }
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Runs `request(n)` (n counting up from 0 across workers) with
/// `concurrency` in flight for `duration`; requests that started before
/// the end are waited for and counted.
pub async fn closed_loop<F, Fut>(concurrency: usize, duration: Duration, request: F) -> Step
where
    F: Fn(u64) -> Fut,
    Fut: Future<Output = Done>,
{
    let tally = Mutex::new(Tally::default());
    let next = std::sync::atomic::AtomicU64::new(0);
    let started = Instant::now();
    let end = started + duration;
    let workers: FuturesUnordered<_> = (0..concurrency.max(1))
        .map(|_| async {
            while Instant::now() < end {
                let n = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let sent = Instant::now();
                let done = request(n).await;
                lock(&tally).add(done, sent.elapsed());
            }
        })
        .collect();
    workers.collect::<Vec<()>>().await;
    let secs = started.elapsed().as_secs_f64();
    let tally = std::mem::take(&mut *lock(&tally));
    Step {
        concurrency,
        ok: tally.ok,
        errors: tally.errors,
        secs,
        per_sec: if secs > 0.0 {
            tally.ok as f64 / secs
        } else {
            0.0
        },
        latency: Latency::of(&tally.latencies),
        error_samples: tally.error_samples,
    }
}

/// What an open-loop run did.
#[derive(Debug, Default)]
pub struct OpenLoop {
    pub sent: u64,
    pub ok: u64,
    pub errors: u64,
    /// Started more than 100 ms after their scheduled time.
    pub late: u64,
    pub secs: f64,
    pub latencies: Vec<Duration>,
    pub error_samples: Vec<String>,
}

/// Starts `request(n)` at `rate` a second for `duration`, each on its
/// schedule whatever the others do (at most `max_in_flight` at once: past
/// it, a request waits and counts as late if it starts over 100 ms after
/// its time), and waits for all of them.
pub async fn open_loop<F, Fut>(
    rate: f64,
    duration: Duration,
    max_in_flight: usize,
    request: F,
) -> OpenLoop
where
    F: Fn(u64) -> Fut,
    Fut: Future<Output = Done>,
{
    let total = (rate * duration.as_secs_f64()).round().max(1.0) as u64;
    let interval = Duration::from_secs_f64(1.0 / rate.max(0.001));
    let started = Instant::now();
    let mut tally = Tally::default();
    let mut late = 0u64;
    let mut in_flight = FuturesUnordered::new();
    for n in 0..total {
        let due = started + interval.mul_f64(n as f64);
        // Collect answers while waiting for the next start time.
        loop {
            let now = Instant::now();
            if now >= due && in_flight.len() < max_in_flight {
                break;
            }
            let wait = if in_flight.len() >= max_in_flight {
                Duration::from_secs(3600)
            } else {
                due - now
            };
            tokio::select! {
                Some((done, latency)) = in_flight.next(), if !in_flight.is_empty() => {
                    tally.add(done, latency);
                }
                () = tokio::time::sleep(wait) => {}
            }
        }
        if Instant::now() > due + Duration::from_millis(100) {
            late += 1;
        }
        let future = request(n);
        // Latency from the scheduled time, not from the (maybe late) start.
        in_flight.push(async move {
            let done = future.await;
            (done, due.elapsed())
        });
    }
    while let Some((done, latency)) = in_flight.next().await {
        tally.add(done, latency);
    }
    OpenLoop {
        sent: total,
        ok: tally.ok,
        errors: tally.errors,
        late,
        secs: started.elapsed().as_secs_f64(),
        latencies: tally.latencies,
        error_samples: tally.error_samples,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_closed_loop_keeps_its_concurrency_and_counts_errors() {
        let in_flight = std::sync::atomic::AtomicUsize::new(0);
        let most = std::sync::atomic::AtomicUsize::new(0);
        let step = closed_loop(4, Duration::from_millis(200), |n| {
            let (in_flight, most) = (&in_flight, &most);
            async move {
                let now = in_flight.fetch_add(1, std::sync::atomic::Ordering::SeqCst) + 1;
                most.fetch_max(now, std::sync::atomic::Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(10)).await;
                in_flight.fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
                if n % 10 == 0 {
                    Err("every tenth".to_owned())
                } else {
                    Ok(1)
                }
            }
        })
        .await;
        assert_eq!(most.load(std::sync::atomic::Ordering::SeqCst), 4);
        assert!(step.ok > 0 && step.errors > 0, "{step:?}");
        assert_eq!(step.error_samples, vec!["every tenth".to_owned()]);
        assert!(step.per_sec > 0.0);
    }

    #[tokio::test]
    async fn the_open_loop_keeps_its_schedule_when_answers_are_slow() {
        // 50 a second for 0.4 s, each answer taking 300 ms: a closed loop
        // of one would send 2; the schedule sends 20.
        let run = open_loop(50.0, Duration::from_millis(400), 1000, |_| async {
            tokio::time::sleep(Duration::from_millis(300)).await;
            Ok(1)
        })
        .await;
        assert_eq!(run.sent, 20);
        assert_eq!(run.ok, 20);
        assert_eq!(run.late, 0);
        assert!(run.secs < 1.0, "{}", run.secs);
    }
}
