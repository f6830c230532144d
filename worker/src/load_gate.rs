//! One load at a time per model, without a lock around the whole repository.
//!
//! Building a model (reading weights, starting an engine) can take minutes, and a bad file could
//! once block it for good; so builds run outside the repository's lifecycle lock, which is held
//! only to swap the result in. Two loads of the same model still follow one another here.

use std::collections::HashSet;

use parking_lot::{Condvar, Mutex};

#[derive(Debug, Default)]
pub(crate) struct LoadGate {
    loading: Mutex<HashSet<String>>,
    done: Condvar,
}

/// Held while one model loads; the next load of it waits for the drop.
pub(crate) struct Loading<'a> {
    gate: &'a LoadGate,
    name: String,
}

impl LoadGate {
    /// Waits until no other load of `name` is running, then marks it as loading.
    pub(crate) fn enter(&self, name: &str) -> Loading<'_> {
        let mut loading = self.loading.lock();
        while loading.contains(name) {
            self.done.wait(&mut loading);
        }
        loading.insert(name.to_owned());
        Loading { gate: self, name: name.to_owned() }
    }
}

impl Drop for Loading<'_> {
    fn drop(&mut self) {
        self.gate.loading.lock().remove(&self.name);
        self.gate.done.notify_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[test]
    fn loads_of_one_model_follow_each_other_and_others_pass() {
        let gate = Arc::new(LoadGate::default());
        let inside = Arc::new(AtomicUsize::new(0));
        let held = gate.enter("a");
        // Another model is not held up by "a".
        drop(gate.enter("b"));
        let waiter = {
            let (gate, inside) = (Arc::clone(&gate), Arc::clone(&inside));
            std::thread::spawn(move || {
                let _a = gate.enter("a");
                inside.fetch_add(1, Ordering::SeqCst);
            })
        };
        // The waiter cannot get in while "a" is held; it does once it is released.
        assert_eq!(inside.load(Ordering::SeqCst), 0);
        drop(held);
        waiter.join().expect("the waiter finishes");
        assert_eq!(inside.load(Ordering::SeqCst), 1);
    }
}
