//! Holds on models the OpenAI routes loaded on demand, kept until the request's generation takes
//! its own: between the two the route renders and tokenizes, and a model past the on-demand
//! limits that nobody held would be evicted at once (the request then answered 404). Each hold
//! lapses after [`BRIDGE_FOR`] (a request refused before generating never takes it over), and at
//! most [`MAX_HOLDS`] are kept per model, the oldest going first.

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use tritium_worker::registry::on_demand::InUse;

pub(super) const BRIDGE_FOR: Duration = Duration::from_secs(10);
pub(super) const MAX_HOLDS: usize = 1024;

#[derive(Default)]
pub(super) struct BridgingHolds(Mutex<HashMap<String, VecDeque<(Instant, InUse)>>>);

impl BridgingHolds {
    /// Keeps `hold` on `model` until a generation takes one over, or it lapses.
    pub(super) fn keep(&self, model: &str, hold: InUse) {
        let now = Instant::now();
        let mut held = self.0.lock();
        let queue = held.entry(model.to_string()).or_default();
        while queue.front().is_some_and(|(since, _)| now.duration_since(*since) > BRIDGE_FOR) || queue.len() >= MAX_HOLDS {
            queue.pop_front();
        }
        queue.push_back((now, hold));
    }

    /// Releases one bridging hold on `model` (a generation holds the model itself now), and the
    /// lapsed ones.
    pub(super) fn take_over(&self, model: &str) {
        let now = Instant::now();
        let mut held = self.0.lock();
        if let Some(queue) = held.get_mut(model) {
            queue.pop_front();
            queue.retain(|(since, _)| now.duration_since(*since) <= BRIDGE_FOR);
            if queue.is_empty() {
                held.remove(model);
            }
        }
    }
}

impl std::fmt::Debug for BridgingHolds {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BridgingHolds").finish_non_exhaustive()
    }
}
