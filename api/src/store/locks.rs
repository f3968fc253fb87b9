//! Serializes the writes of one identity inside this process.
//!
//! Correctness does not depend on it: the conditional write and its retry
//! handle every race, across processes too. It exists so that a burst of
//! requests for one identity arriving at one process queue up instead of
//! all reading the same version, all but one losing, and all retrying.

use std::hash::{BuildHasher, RandomState};

use tokio::sync::{Mutex, MutexGuard};

/// A fixed set of locks; an identity always maps to the same one. Two
/// identities may share a lock, which costs a little parallelism and
/// nothing else, and the memory stays bounded whatever the identities.
#[derive(Debug)]
pub struct StripedLocks {
    stripes: Box<[Mutex<()>]>,
    /// Random per process, so that clients cannot aim for one stripe.
    hasher: RandomState,
}

impl StripedLocks {
    pub const STRIPES: usize = 256;

    pub fn new() -> Self {
        Self {
            stripes: (0..Self::STRIPES).map(|_| Mutex::new(())).collect(),
            hasher: RandomState::new(),
        }
    }

    /// Waits for the lock of `key`'s stripe.
    pub async fn lock(&self, key: &str) -> MutexGuard<'_, ()> {
        let index = self.hasher.hash_one(key) % self.stripes.len() as u64;
        // index < len, which came from a usize.
        self.stripes[index as usize].lock().await
    }
}

impl Default for StripedLocks {
    fn default() -> Self {
        Self::new()
    }
}
