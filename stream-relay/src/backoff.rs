//! The relay's waits between retries: the workspace's one backoff
//! ([`obt_runtime::backoff`]), cut short when the relay is told to stop.

pub use obt_runtime::backoff::{Attempts, Backoff};
use tokio_util::sync::CancellationToken;

/// Waits the next backoff, or until `stop` is cancelled.
pub async fn wait_or_stop(attempts: &mut Attempts, stop: &CancellationToken) {
    tokio::select! {
        () = stop.cancelled() => {}
        () = attempts.wait() => {}
    }
}
