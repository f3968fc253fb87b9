//! Serializes the writes of one identity inside this process, and keeps
//! what the store remembers of the identity under the same lock (the
//! DynamoDB store: the item's version, [`super::dynamodb`]).
//!
//! Correctness does not depend on it: the conditional write and its retry
//! handle every race, across processes too. It exists so that a burst of
//! requests for one identity arriving at one process queue up instead of
//! all writing against the same version, all but one losing, and all
//! retrying.

use std::hash::{BuildHasher, RandomState};

use tokio::sync::{Mutex, MutexGuard};

/// A fixed set of locks, each guarding a `T`; an identity always maps to
/// the same one. Two identities may share a lock, which costs a little
/// parallelism and nothing else, and the memory stays bounded whatever the
/// identities.
#[derive(Debug)]
pub struct StripedLocks<T = ()> {
    stripes: Box<[Mutex<T>]>,
    /// Random per process, so that clients cannot aim for one stripe.
    hasher: RandomState,
}

/// The number of stripes.
pub const STRIPES: usize = 256;

impl<T: Default> StripedLocks<T> {
    pub fn new() -> Self {
        Self {
            stripes: (0..STRIPES).map(|_| Mutex::new(T::default())).collect(),
            hasher: RandomState::new(),
        }
    }
}

impl<T> StripedLocks<T> {
    /// Waits for the lock of `key`'s stripe.
    pub async fn lock(&self, key: &str) -> MutexGuard<'_, T> {
        let index = self.hasher.hash_one(key) % self.stripes.len() as u64;
        // index < len, which came from a usize.
        self.stripes[index as usize].lock().await
    }
}

impl<T: Default> Default for StripedLocks<T> {
    fn default() -> Self {
        Self::new()
    }
}
