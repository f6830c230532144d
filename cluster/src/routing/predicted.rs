//! KV routing without KV events (Dynamo's `--no-router-kv-events`): the router assumes that a
//! worker it sent a prompt to holds that prompt's blocks for `--router-ttl-secs`, and scores the
//! next prompts against what it predicted instead of what workers announced. Each routing renews
//! the prediction of the blocks it covers. Entries past their time are dropped as they are met
//! and by a sweep once the index has grown by half since the last one.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tritium_backend_api::kv::BlockHash;

use super::kv_index::DEFAULT_MAX_BLOCKS_PER_WORKER;

/// For each block, the workers predicted to hold it and until when.
type Holders = HashMap<BlockHash, Vec<(Arc<str>, Instant)>>;

/// Blocks predicted on workers, by model, each with the instant the prediction ends.
#[derive(Debug)]
pub struct PredictedIndex {
    ttl: Duration,
    models: HashMap<String, Holders>,
    entries: usize,
    swept_at: usize,
    max_entries: usize,
}

impl PredictedIndex {
    /// An empty index whose predictions last `ttl`.
    pub fn new(ttl: Duration) -> PredictedIndex {
        PredictedIndex { ttl, models: HashMap::new(), entries: 0, swept_at: 0, max_entries: DEFAULT_MAX_BLOCKS_PER_WORKER }
    }

    /// Records that `worker` was sent a prompt of `model` with these chained block hashes at `now`.
    pub fn routed(&mut self, worker: &Arc<str>, model: &str, hashes: &[BlockHash], now: Instant) {
        let until = now + self.ttl;
        let blocks = self.models.entry(model.to_string()).or_default();
        for hash in hashes {
            let holders = blocks.entry(*hash).or_default();
            match holders.iter_mut().find(|(holder, _)| holder == worker) {
                Some((_, expires)) => *expires = until,
                None => {
                    holders.push((Arc::clone(worker), until));
                    self.entries += 1;
                }
            }
        }
        if self.entries > self.max_entries || self.entries > self.swept_at.saturating_mul(3) / 2 + 1024 {
            self.sweep(now);
        }
        if self.entries > self.max_entries {
            // Still too many live predictions: forget them all rather than grow without bound.
            tracing::warn!(entries = self.entries, "too many predicted KV blocks; starting the prediction over");
            self.models.clear();
            self.entries = 0;
        }
        self.swept_at = self.entries;
    }

    /// For each worker predicted to hold the first block of `hashes` at `now`, how many leading
    /// blocks it is predicted to hold.
    pub fn overlaps(&self, model: &str, hashes: &[BlockHash], now: Instant) -> HashMap<String, usize> {
        let mut overlaps = HashMap::new();
        let Some(blocks) = self.models.get(model) else { return overlaps };
        let live = |hash: &BlockHash| {
            blocks.get(hash).into_iter().flatten().filter(move |(_, expires)| *expires > now).map(|(worker, _)| worker)
        };
        let Some(first) = hashes.first() else { return overlaps };
        for worker in live(first) {
            let held = hashes.iter().take_while(|hash| live(hash).any(|w| w == worker)).count();
            overlaps.insert(worker.to_string(), held);
        }
        overlaps
    }

    /// Forgets `worker`'s predictions (it left).
    pub fn remove_worker(&mut self, worker: &str) {
        for blocks in self.models.values_mut() {
            for holders in blocks.values_mut() {
                holders.retain(|(holder, _)| holder.as_ref() != worker);
            }
            blocks.retain(|_, holders| !holders.is_empty());
        }
        self.models.retain(|_, blocks| !blocks.is_empty());
        self.entries = self.models.values().flat_map(HashMap::values).map(Vec::len).sum();
    }

    /// Predicted (worker, block) pairs held now, expired or not.
    pub fn len(&self) -> usize {
        self.entries
    }

    pub fn is_empty(&self) -> bool {
        self.entries == 0
    }

    fn sweep(&mut self, now: Instant) {
        for blocks in self.models.values_mut() {
            for holders in blocks.values_mut() {
                holders.retain(|(_, expires)| *expires > now);
            }
            blocks.retain(|_, holders| !holders.is_empty());
        }
        self.models.retain(|_, blocks| !blocks.is_empty());
        self.entries = self.models.values().flat_map(HashMap::values).map(Vec::len).sum();
    }
}

#[cfg(test)]
mod tests {
    use tritium_backend_api::kv::block_hashes;

    use super::*;

    #[test]
    fn a_routed_prompt_is_predicted_on_its_worker_until_its_time_is_up() {
        let mut index = PredictedIndex::new(Duration::from_secs(120));
        let start = Instant::now();
        let w1: Arc<str> = Arc::from("w1");
        let prompt: Vec<u32> = (0..64).collect();
        let hashes = block_hashes(&prompt, 16);
        index.routed(&w1, "llm", &hashes[..3], start);
        assert_eq!(index.overlaps("llm", &hashes, start)["w1"], 3);
        assert!(index.overlaps("other", &hashes, start).is_empty());
        let later = start + Duration::from_secs(119);
        assert_eq!(index.overlaps("llm", &hashes, later)["w1"], 3);
        assert!(index.overlaps("llm", &hashes, start + Duration::from_secs(120)).is_empty());
        // Routing again renews the blocks it covers.
        index.routed(&w1, "llm", &hashes[..1], later);
        assert_eq!(index.overlaps("llm", &hashes, start + Duration::from_secs(121))["w1"], 1);
        index.remove_worker("w1");
        assert!(index.is_empty());
    }

    #[test]
    fn expired_predictions_are_swept_and_the_index_stays_bounded() {
        let mut index = PredictedIndex::new(Duration::from_secs(1));
        index.max_entries = 5_000;
        let worker: Arc<str> = Arc::from("w");
        let start = Instant::now();
        for round in 0..100u32 {
            let prompt: Vec<u32> = (0..160).map(|t| t + round * 1000).collect();
            index.routed(&worker, "llm", &block_hashes(&prompt, 16), start + Duration::from_secs(u64::from(round) * 2));
            assert!(index.len() <= 5_000);
        }
        assert!(index.len() < 2_000, "expired entries were swept: {}", index.len());
    }
}
