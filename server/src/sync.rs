//! A mutex guard that outlives a panic elsewhere: the state the server's mutexes guard stays
//! consistent at every await-free step, so a poisoned lock is taken as it is.

use std::sync::{Mutex, MutexGuard};

pub(crate) fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}
