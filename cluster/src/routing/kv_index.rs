//! The KV-aware router's index and scoring: which workers hold which KV-cache blocks of each
//! model (built from the workers' [`KvEvent`]s), how many leading blocks of a new prompt each one
//! already holds, and the choice among workers that weighs that overlap against their load.
//! Blocks a worker keeps in its offload tier (on disk) count half as much as resident ones: a hit
//! there is read back, cheaper than computing it but dearer than finding it in memory.
//!
//! ```
//! use tritium_cluster::routing::kv_index::KvIndex;
//! use tritium_backend_api::kv::{KvEvent, block_hashes};
//!
//! let prompt: Vec<u32> = (0..64).collect();
//! let hashes = block_hashes(&prompt, 16);
//! let mut index = KvIndex::default();
//! index.apply("w1", "llm", &KvEvent::Stored { parent: None, blocks: hashes[..2].to_vec() });
//! assert_eq!(index.overlaps("llm", &hashes)["w1"], 2);
//! ```

use std::collections::{HashMap, HashSet};

use smallvec::SmallVec;
use tritium_backend_api::kv::{BlockHash, KvEvent};

pub use super::scoring::{Candidate, KvScoring, choose};

/// Blocks one worker may have indexed for one model before its entries are dropped wholesale:
/// a worker that never announces evictions must not grow the index without bound.
pub const DEFAULT_MAX_BLOCKS_PER_WORKER: usize = 1_000_000;

/// Maps and sets keyed by block hash, with foldhash seeded per process: a request looks up its
/// prompt's blocks by the thousand, where SipHash cost several times more, and a prompt's block
/// hashes follow from its tokens, so a fixed-seed or pass-through hasher could be driven into
/// collisions by a client.
pub(crate) type BlockMap<V> = HashMap<BlockHash, V, foldhash::fast::RandomState>;
type BlockSet = HashSet<BlockHash, foldhash::fast::RandomState>;

/// Index of a worker's name in [`KvIndex::names`]; small, so per-block holder lists stay small.
type WorkerId = u32;
/// The workers holding a block, inline up to two: a prompt's overlap reads one entry per block,
/// and a list on the heap would be a second cache miss per block.
type Holders = SmallVec<[WorkerId; 2]>;

/// For each model, which workers hold which blocks.
#[derive(Debug)]
pub struct KvIndex {
    models: HashMap<String, ModelIndex>,
    ids: HashMap<String, WorkerId>,
    /// Worker names by id; the slots of ids in `free` are empty.
    names: Vec<String>,
    free: Vec<WorkerId>,
    max_blocks_per_worker: usize,
}

#[derive(Debug, Default)]
struct ModelIndex {
    /// Block -> the workers holding it in memory (tens at most, so a list beats a set).
    holders: BlockMap<Holders>,
    /// Worker -> its blocks: the reverse map, for `Cleared`, departures and the cap.
    held: HashMap<WorkerId, BlockSet>,
    /// The same two for blocks in the workers' offload tiers.
    offloaded: BlockMap<Holders>,
    held_offloaded: HashMap<WorkerId, BlockSet>,
}

impl Default for KvIndex {
    fn default() -> Self {
        KvIndex::with_max_blocks_per_worker(DEFAULT_MAX_BLOCKS_PER_WORKER)
    }
}

impl KvIndex {
    /// An empty index with the default cap, [`DEFAULT_MAX_BLOCKS_PER_WORKER`].
    pub fn new() -> KvIndex {
        KvIndex::default()
    }

    /// An empty index that drops a worker's blocks of a model once they number more than `max`.
    pub fn with_max_blocks_per_worker(max: usize) -> KvIndex {
        KvIndex { models: HashMap::new(), ids: HashMap::new(), names: Vec::new(), free: Vec::new(), max_blocks_per_worker: max }
    }

    /// Records what `worker`'s engine did to its cache of `model`.
    pub fn apply(&mut self, worker: &str, model: &str, event: &KvEvent) {
        match event {
            KvEvent::Offloaded { blocks } => {
                let id = self.intern(worker);
                let index = self.models.entry(model.to_string()).or_default();
                if add_blocks(&mut index.offloaded, &mut index.held_offloaded, id, blocks) > self.max_blocks_per_worker {
                    index.drop_offloaded(id);
                }
            }
            KvEvent::OffloadRemoved { blocks } => {
                let Some(&id) = self.ids.get(worker) else { return };
                let Some(index) = self.models.get_mut(model) else { return };
                remove_blocks(&mut index.offloaded, &mut index.held_offloaded, id, blocks);
            }
            KvEvent::Stored { blocks, .. } => {
                let id = self.intern(worker);
                let index = self.models.entry(model.to_string()).or_default();
                let held = add_blocks(&mut index.holders, &mut index.held, id, blocks);
                if held > self.max_blocks_per_worker {
                    tracing::warn!(
                        worker,
                        model,
                        blocks = held,
                        max = self.max_blocks_per_worker,
                        "too many KV blocks indexed for one worker; dropping them until its next events"
                    );
                    index.drop_worker(id);
                }
            }
            KvEvent::Removed { blocks } => {
                let Some(&id) = self.ids.get(worker) else { return };
                let Some(index) = self.models.get_mut(model) else { return };
                remove_blocks(&mut index.holders, &mut index.held, id, blocks);
            }
            KvEvent::Cleared => {
                let Some(&id) = self.ids.get(worker) else { return };
                if let Some(index) = self.models.get_mut(model) {
                    index.drop_worker(id);
                }
            }
        }
        self.models.retain(|_, index| !index.is_empty());
    }

    /// Forgets everything `worker` held, of every model (it left).
    pub fn remove_worker(&mut self, worker: &str) {
        let Some(id) = self.ids.remove(worker) else { return };
        for index in self.models.values_mut() {
            index.drop_worker(id);
        }
        self.models.retain(|_, index| !index.is_empty());
        self.names[id as usize].clear();
        self.free.push(id);
    }

    /// For each worker holding at least the first block of `hashes` (a prompt's chained block
    /// hashes, in order), how many leading blocks it holds: counting stops at its first missing
    /// block, since a later block can only be reused after every block before it. A block in the
    /// worker's offload tier counts half (the sum is rounded down). Workers holding none are left
    /// out.
    pub fn overlaps(&self, model: &str, hashes: &[BlockHash]) -> HashMap<String, usize> {
        let mut overlaps = HashMap::new();
        let Some(index) = self.models.get(model) else { return overlaps };
        let Some(first) = hashes.first() else { return overlaps };
        let mut candidates: Vec<Overlap> = Vec::new();
        for &id in index.holders.get(first).into_iter().chain(index.offloaded.get(first)).flatten() {
            if !candidates.iter().any(|c| c.id == id) {
                candidates.push(Overlap { id, resident: 0, offloaded: 0, reading: true });
            }
        }
        // One pass over the prompt's blocks, each looked up once for all candidates. The blocks
        // are looked up 8 at a time before any is counted: each lookup is a cache miss, and misses
        // with no branch on a result between them overlap.
        const AHEAD: usize = 8;
        'blocks: for chunk in hashes.chunks(AHEAD) {
            let mut found: [&[WorkerId]; AHEAD] = [&[]; AHEAD];
            for (slot, hash) in found.iter_mut().zip(chunk) {
                *slot = index.holders.get(hash).map_or(&[][..], Holders::as_slice);
            }
            for (hash, resident) in chunk.iter().zip(found) {
                let mut offloaded = None;
                let mut any = false;
                for candidate in candidates.iter_mut().filter(|c| c.reading) {
                    if resident.contains(&candidate.id) {
                        candidate.resident += 1;
                    } else if offloaded
                        .get_or_insert_with(|| index.offloaded.get(hash).map_or(&[][..], Holders::as_slice))
                        .contains(&candidate.id)
                    {
                        candidate.offloaded += 1;
                    } else {
                        candidate.reading = false;
                        continue;
                    }
                    any = true;
                }
                if !any {
                    break 'blocks;
                }
            }
        }
        for candidate in candidates {
            let score = candidate.resident + candidate.offloaded / 2;
            if score > 0 {
                overlaps.insert(self.names[candidate.id as usize].clone(), score);
            }
        }
        overlaps
    }

    /// Distinct blocks indexed, summed over models (a block several workers hold counts once).
    /// What each worker holds of each model in memory (offloaded blocks are left out), as
    /// (worker, model, blocks) in a stable order: the routers' snapshot.
    pub fn snapshot(&self) -> Vec<(String, String, Vec<BlockHash>)> {
        let mut entries: Vec<(String, String, Vec<BlockHash>)> = self
            .models
            .iter()
            .flat_map(|(model, index)| {
                index.held.iter().map(move |(&id, blocks)| {
                    let mut blocks: Vec<BlockHash> = blocks.iter().copied().collect();
                    blocks.sort_unstable();
                    (self.names[id as usize].clone(), model.clone(), blocks)
                })
            })
            .collect();
        entries.sort();
        entries
    }

    pub fn block_count(&self) -> usize {
        self.models.values().map(|index| index.holders.len()).sum()
    }

    fn intern(&mut self, worker: &str) -> WorkerId {
        if let Some(&id) = self.ids.get(worker) {
            return id;
        }
        let id = match self.free.pop() {
            Some(id) => {
                self.names[id as usize] = worker.to_string();
                id
            }
            None => {
                // Ids are u32 to keep holder lists small; four billion live workers do not happen.
                let id = WorkerId::try_from(self.names.len()).unwrap_or(WorkerId::MAX);
                self.names.push(worker.to_string());
                id
            }
        };
        self.ids.insert(worker.to_string(), id);
        id
    }
}

/// A worker's count of leading blocks while [`KvIndex::overlaps`] reads a prompt's blocks.
struct Overlap {
    id: WorkerId,
    resident: usize,
    offloaded: usize,
    /// Whether every block so far was in one of its tiers.
    reading: bool,
}

impl ModelIndex {
    fn drop_worker(&mut self, id: WorkerId) {
        for block in self.held.remove(&id).unwrap_or_default() {
            remove_holder(&mut self.holders, block, id);
        }
        self.drop_offloaded(id);
    }

    fn drop_offloaded(&mut self, id: WorkerId) {
        for block in self.held_offloaded.remove(&id).unwrap_or_default() {
            remove_holder(&mut self.offloaded, block, id);
        }
    }

    fn is_empty(&self) -> bool {
        self.held.is_empty() && self.held_offloaded.is_empty()
    }
}

/// Records that worker `id` holds `blocks` in one tier (`holders` and its reverse `held`);
/// returns how many blocks of that tier it holds now.
fn add_blocks(
    holders: &mut BlockMap<Holders>,
    held: &mut HashMap<WorkerId, BlockSet>,
    id: WorkerId,
    blocks: &[BlockHash],
) -> usize {
    let mine = held.entry(id).or_default();
    for &block in blocks {
        if mine.insert(block) {
            holders.entry(block).or_default().push(id);
        }
    }
    mine.len()
}

/// Forgets that worker `id` holds `blocks` in one tier.
fn remove_blocks(
    holders: &mut BlockMap<Holders>,
    held: &mut HashMap<WorkerId, BlockSet>,
    id: WorkerId,
    blocks: &[BlockHash],
) {
    let Some(mine) = held.get_mut(&id) else { return };
    for block in blocks {
        if mine.remove(block) {
            remove_holder(holders, *block, id);
        }
    }
    if mine.is_empty() {
        held.remove(&id);
    }
}

fn remove_holder(holders: &mut BlockMap<Holders>, block: BlockHash, id: WorkerId) {
    if let Some(workers) = holders.get_mut(&block) {
        workers.retain(|w| *w != id);
        if workers.is_empty() {
            holders.remove(&block);
        }
    }
}

#[cfg(test)]
mod tests {
    use tritium_backend_api::kv::block_hashes;

    use super::*;

    fn stored(blocks: &[BlockHash]) -> KvEvent {
        KvEvent::Stored { parent: None, blocks: blocks.to_vec() }
    }

    fn overlaps(index: &KvIndex, model: &str, hashes: &[BlockHash]) -> Vec<(String, usize)> {
        let mut overlaps: Vec<_> = index.overlaps(model, hashes).into_iter().collect();
        overlaps.sort();
        overlaps
    }

    fn pairs(expected: &[(&str, usize)]) -> Vec<(String, usize)> {
        expected.iter().map(|(w, n)| (w.to_string(), *n)).collect()
    }

    #[test]
    fn a_snapshot_restored_into_an_empty_index_gives_the_same_overlaps() {
        let mut index = KvIndex::new();
        let hashes = block_hashes(&(0..64).collect::<Vec<u32>>(), 16);
        index.apply("w1", "llm", &stored(&hashes[..3]));
        index.apply("w2", "llm", &stored(&hashes[..1]));
        let mut restored = KvIndex::new();
        for (worker, model, blocks) in index.snapshot() {
            restored.apply(&worker, &model, &stored(&blocks));
        }
        assert_eq!(overlaps(&restored, "llm", &hashes), overlaps(&index, "llm", &hashes));
        assert_eq!(restored.snapshot(), index.snapshot());
    }

    #[test]
    fn offloaded_blocks_count_half_and_follow_their_events() {
        let mut index = KvIndex::new();
        index.apply("a", "llm", &stored(&[1, 2]));
        index.apply("b", "llm", &stored(&[1, 2]));
        // b's second block went to disk, with two more after it.
        index.apply("b", "llm", &KvEvent::Removed { blocks: vec![2] });
        index.apply("b", "llm", &KvEvent::Offloaded { blocks: vec![2, 3, 4] });
        assert_eq!(overlaps(&index, "llm", &[1, 2, 3, 4]), pairs(&[("a", 2), ("b", 2)]), "1 resident + 3 offloaded / 2");
        index.apply("b", "llm", &KvEvent::OffloadRemoved { blocks: vec![3] });
        assert_eq!(overlaps(&index, "llm", &[1, 2, 3, 4]), pairs(&[("a", 2), ("b", 1)]));
        index.apply("c", "llm", &KvEvent::Offloaded { blocks: vec![1, 2] });
        assert_eq!(overlaps(&index, "llm", &[1, 2]), pairs(&[("a", 2), ("b", 1), ("c", 1)]));
        // Restored to memory, a block counts whole again; Cleared forgets both tiers.
        index.apply("c", "llm", &stored(&[1, 2]));
        assert_eq!(overlaps(&index, "llm", &[1, 2]), pairs(&[("a", 2), ("b", 1), ("c", 2)]));
        index.apply("b", "llm", &KvEvent::Cleared);
        assert_eq!(overlaps(&index, "llm", &[1, 2, 3, 4]), pairs(&[("a", 2), ("c", 2)]));
        index.remove_worker("c");
        index.remove_worker("a");
        assert_eq!(index.block_count(), 0);
        assert!(index.models.is_empty(), "nothing left of any tier");
    }

    #[test]
    fn overlaps_count_leading_blocks_only() {
        let mut index = KvIndex::default();
        index.apply("gap", "llm", &stored(&[0, 1, 3]));
        index.apply("all", "llm", &stored(&[0, 1, 2, 3]));
        index.apply("tail", "llm", &stored(&[1, 2, 3]));
        assert_eq!(overlaps(&index, "llm", &[0, 1, 2, 3]), pairs(&[("all", 4), ("gap", 2)]));
        assert_eq!(overlaps(&index, "llm", &[0, 1, 2, 3, 4]), pairs(&[("all", 4), ("gap", 2)]));
        assert_eq!(overlaps(&index, "llm", &[9, 1, 2]), pairs(&[]), "nothing without the first block");
        assert_eq!(overlaps(&index, "llm", &[]), pairs(&[]));
        assert_eq!(index.block_count(), 4);
    }

    #[test]
    fn removed_blocks_stop_counting() {
        let mut index = KvIndex::default();
        index.apply("w", "llm", &stored(&[0, 1, 2, 3]));
        index.apply("other", "llm", &stored(&[0, 1]));
        index.apply("w", "llm", &KvEvent::Removed { blocks: vec![2, 42] });
        assert_eq!(overlaps(&index, "llm", &[0, 1, 2, 3]), pairs(&[("other", 2), ("w", 2)]));
        index.apply("w", "llm", &KvEvent::Removed { blocks: vec![0] });
        assert_eq!(overlaps(&index, "llm", &[0, 1, 2, 3]), pairs(&[("other", 2)]));
        assert_eq!(index.block_count(), 3, "blocks 0 and 1 (other) and 3 (w)");
        index.apply("nobody", "llm", &KvEvent::Removed { blocks: vec![1] });
        assert_eq!(overlaps(&index, "llm", &[0, 1]), pairs(&[("other", 2)]));
    }

    #[test]
    fn cleared_and_departed_workers_hold_nothing() {
        let mut index = KvIndex::default();
        for worker in ["a", "b", "c"] {
            index.apply(worker, "llm", &stored(&[0, 1]));
            index.apply(worker, "other", &stored(&[0, 1]));
        }
        index.apply("a", "llm", &KvEvent::Cleared);
        assert_eq!(overlaps(&index, "llm", &[0, 1]), pairs(&[("b", 2), ("c", 2)]));
        assert_eq!(overlaps(&index, "other", &[0, 1]), pairs(&[("a", 2), ("b", 2), ("c", 2)]), "one model only");
        index.remove_worker("b");
        assert_eq!(overlaps(&index, "llm", &[0, 1]), pairs(&[("c", 2)]));
        assert_eq!(overlaps(&index, "other", &[0, 1]), pairs(&[("a", 2), ("c", 2)]));
        // A new worker may reuse b's slot; b's blocks must not come back with it.
        index.apply("d", "llm", &stored(&[0]));
        assert_eq!(overlaps(&index, "llm", &[0, 1]), pairs(&[("c", 2), ("d", 1)]));
        for worker in ["a", "c", "d"] {
            index.remove_worker(worker);
        }
        assert_eq!(index.block_count(), 0);
        assert!(index.models.is_empty());
    }

    #[test]
    fn models_are_kept_apart() {
        let mut index = KvIndex::default();
        index.apply("w", "llm-a", &stored(&[0, 1, 2]));
        index.apply("w", "llm-b", &stored(&[0]));
        assert_eq!(overlaps(&index, "llm-a", &[0, 1, 2]), pairs(&[("w", 3)]));
        assert_eq!(overlaps(&index, "llm-b", &[0, 1, 2]), pairs(&[("w", 1)]));
        assert_eq!(overlaps(&index, "llm-c", &[0, 1, 2]), pairs(&[]));
        index.apply("w", "llm-b", &KvEvent::Removed { blocks: vec![1, 2] });
        assert_eq!(overlaps(&index, "llm-a", &[0, 1, 2]), pairs(&[("w", 3)]));
        assert_eq!(index.block_count(), 4);
    }

    #[test]
    fn a_worker_over_the_cap_is_dropped_and_rebuilt_from_its_next_events() {
        let mut index = KvIndex::with_max_blocks_per_worker(4);
        index.apply("small", "llm", &stored(&[0, 1]));
        index.apply("big", "llm", &stored(&[0, 1, 2, 3]));
        index.apply("big", "llm", &stored(&[3]));
        assert_eq!(overlaps(&index, "llm", &[0, 1, 2, 3]), pairs(&[("big", 4), ("small", 2)]), "at the cap, kept");
        index.apply("big", "llm", &stored(&[4]));
        assert_eq!(overlaps(&index, "llm", &[0, 1, 2, 3]), pairs(&[("small", 2)]));
        assert_eq!(index.block_count(), 2);
        index.apply("big", "llm", &stored(&[0]));
        assert_eq!(overlaps(&index, "llm", &[0, 1]), pairs(&[("big", 1), ("small", 2)]));
    }

    #[test]
    fn long_prompts_against_many_workers_stop_early() {
        let mut index = KvIndex::default();
        let prompt: Vec<BlockHash> = (0..4096).collect();
        for worker in 0..32 {
            index.apply(&format!("w{worker}"), "llm", &stored(&prompt[..worker * 100]));
        }
        let overlaps = index.overlaps("llm", &prompt);
        assert_eq!(overlaps.len(), 31, "w0 holds nothing");
        for worker in 1..32 {
            assert_eq!(overlaps[&format!("w{worker}")], worker * 100);
        }
    }
}
