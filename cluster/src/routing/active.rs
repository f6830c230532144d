//! The load a frontend's router puts on each worker, counted by the router itself (Dynamo's
//! active-sequence tracking): the KV blocks of the requests it has running there (shared prompt
//! blocks counted once with `--router-assume-kv-reuse`), the blocks their outputs grow
//! (`--router-track-output-blocks`), and the prompt tokens still to be prefilled until each
//! request's first token (`--router-track-prefill-tokens`). The kv policy prices a worker with
//! them when `--router-track-active-blocks` is on ([`super::kv_index::choose`]); the prefill-token
//! busy thresholds and the router's queue read the prompt tokens not yet prefilled.

use std::collections::HashMap;
use std::sync::Arc;
use parking_lot::Mutex;

use tokio::sync::Notify;
use tritium_backend_api::kv::BlockHash;

use super::kv_index::BlockMap;


/// What the router counts (each a Dynamo flag).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Tracking {
    /// `--router-track-active-blocks`: running requests' blocks are a decode cost, and the kv
    /// policy prices workers as Dynamo does.
    pub active_blocks: bool,
    /// `--router-track-output-blocks`: a block more for every block-size tokens generated.
    pub output_blocks: bool,
    /// `--router-track-prefill-tokens`: prompt tokens not yet prefilled are a prefill cost.
    pub prefill_tokens: bool,
    /// `--router-assume-kv-reuse`: requests sharing a prefix on a worker share its blocks.
    pub assume_kv_reuse: bool,
    /// `--router-prefill-load-scale`: the weight of prefill work against decode blocks.
    pub prefill_load_scale: f64,
}

impl Default for Tracking {
    fn default() -> Tracking {
        // Active blocks off, unlike Dynamo: see `config/router.rs` for the measurement.
        Tracking {
            active_blocks: false,
            output_blocks: false,
            prefill_tokens: true,
            assume_kv_reuse: true,
            prefill_load_scale: 1.0,
        }
    }
}

impl Tracking {
    /// Whether anything is counted at all.
    pub fn any(&self) -> bool {
        self.active_blocks || self.prefill_tokens
    }
}

#[derive(Debug, Default)]
struct WorkerLoad {
    /// Prompt blocks of running requests and how many requests hold each (with kv reuse).
    shared: BlockMap<u32>,
    /// Blocks counted once per request: prompts without kv reuse, and outputs.
    private: u64,
    /// Prompt tokens of running requests not prefilled yet.
    prefill_tokens: u64,
    requests: u64,
}

/// A worker's load as a candidate for a request sees it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CandidateLoad {
    /// Blocks the worker would hold with the request added.
    pub potential_blocks: u64,
    /// Prompt tokens waiting to be prefilled there now.
    pub prefill_tokens: u64,
}

impl std::fmt::Debug for ActiveLoad {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ActiveLoad").field("tracking", &self.tracking).finish_non_exhaustive()
    }
}

/// See the module docs. Keyed by (worker, model).
pub struct ActiveLoad {
    tracking: Tracking,
    block_size: usize,
    workers: Mutex<HashMap<(Arc<str>, String), WorkerLoad>>,
    /// Notified when a worker's prefill load goes down (the router's queue waits on it).
    lighter: Arc<Notify>,
    /// Told of every request counted here that is to be shared with other routers
    /// (`--router-replica-sync`), with its number.
    observer: std::sync::OnceLock<Box<dyn Fn(u64, Change<'_>) + Send + Sync>>,
    next_request: std::sync::atomic::AtomicU64,
}

/// What happened to a shared request (see [`ActiveLoad::observe`]).
#[derive(Debug)]
pub enum Change<'a> {
    Started { worker: &'a str, model: &'a str, blocks: &'a [BlockHash], prefill_tokens: u64 },
    Prefilled,
    Ended,
}

impl ActiveLoad {
    pub fn new(tracking: Tracking, block_size: usize) -> Arc<ActiveLoad> {
        ActiveLoad::notifying(tracking, block_size, Arc::default())
    }

    /// [`ActiveLoad::new`], notifying `lighter` when a worker's prefill load goes down.
    pub fn notifying(tracking: Tracking, block_size: usize, lighter: Arc<Notify>) -> Arc<ActiveLoad> {
        Arc::new(ActiveLoad {
            tracking,
            block_size: block_size.max(1),
            workers: Mutex::new(HashMap::new()),
            lighter,
            observer: std::sync::OnceLock::new(),
            next_request: std::sync::atomic::AtomicU64::new(0),
        })
    }

    /// Tells `observer` of the requests started with [`ActiveLoad::start_shared`] from now on.
    pub fn observe(&self, observer: Box<dyn Fn(u64, Change<'_>) + Send + Sync>) {
        let _ = self.observer.set(observer);
    }

    /// [`ActiveLoad::start`] for a request of this router, told to the observer (if any) as it
    /// starts, prefills and ends.
    pub fn start_shared(
        self: &Arc<Self>,
        worker: &Arc<str>,
        model: &str,
        hashes: Vec<BlockHash>,
        new_tokens: u64,
    ) -> ActiveRequest {
        let mut request = self.start(worker, model, hashes, new_tokens);
        if let Some(observer) = self.observer.get() {
            let number = self.next_request.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            observer(number, Change::Started { worker, model, blocks: &request.hashes, prefill_tokens: new_tokens });
            request.shared = Some(number);
        }
        request
    }

    pub fn tracking(&self) -> &Tracking {
        &self.tracking
    }

    /// `worker`'s load for a request of `model` with these prompt block hashes.
    pub fn candidate(&self, worker: &Arc<str>, model: &str, hashes: &[BlockHash]) -> CandidateLoad {
        let workers = self.workers.lock();
        let load = workers.get(&(Arc::clone(worker), model.to_string()));
        let held = load.map_or(0, |l| l.shared.len() as u64 + l.private);
        let added = match (self.tracking.assume_kv_reuse, load) {
            (true, Some(load)) => hashes.iter().filter(|h| !load.shared.contains_key(h)).count() as u64,
            _ => hashes.len() as u64,
        };
        CandidateLoad {
            potential_blocks: if self.tracking.active_blocks { held + added } else { 0 },
            prefill_tokens: if self.tracking.prefill_tokens { load.map_or(0, |l| l.prefill_tokens) } else { 0 },
        }
    }

    /// Prompt tokens not prefilled yet on `worker` (all models), for the busy thresholds and the
    /// queue; 0 with `--no-router-track-prefill-tokens`.
    pub fn prefill_tokens_on(&self, worker: &str) -> u64 {
        if !self.tracking.prefill_tokens {
            return 0;
        }
        self.workers.lock().iter().filter(|((w, _), _)| w.as_ref() == worker).map(|(_, l)| l.prefill_tokens).sum()
    }

    /// Counts a request sent to `worker`: its prompt's blocks, and `new_tokens` of it to prefill.
    pub fn start(self: &Arc<Self>, worker: &Arc<str>, model: &str, hashes: Vec<BlockHash>, new_tokens: u64) -> ActiveRequest {
        let key = (Arc::clone(worker), model.to_string());
        let mut workers = self.workers.lock();
        let load = workers.entry(key.clone()).or_default();
        load.requests += 1;
        match self.tracking.assume_kv_reuse {
            true => {
                for hash in &hashes {
                    *load.shared.entry(*hash).or_default() += 1;
                }
            }
            false => load.private += hashes.len() as u64,
        }
        load.prefill_tokens += new_tokens;
        drop(workers);
        ActiveRequest {
            load: Arc::clone(self),
            key,
            hashes,
            prefill_tokens: new_tokens,
            output_tokens: 0,
            output_blocks: 0,
            shared: None,
        }
    }

    /// Running requests counted on `worker` for `model` (for tests and diagnostics).
    pub fn requests_on(&self, worker: &str, model: &str) -> u64 {
        self.workers.lock().iter().filter(|((w, m), _)| w.as_ref() == worker && m == model).map(|(_, l)| l.requests).sum()
    }

    /// Forgets a worker that left.
    pub fn remove_worker(&self, worker: &str) {
        self.workers.lock().retain(|(w, _), _| w.as_ref() != worker);
    }
}

/// One running request's share of a worker's load; dropping it (the request ended) takes it off.
#[derive(Debug)]
pub struct ActiveRequest {
    load: Arc<ActiveLoad>,
    key: (Arc<str>, String),
    hashes: Vec<BlockHash>,
    prefill_tokens: u64,
    output_tokens: u64,
    output_blocks: u64,
    /// Its number among this router's shared requests.
    shared: Option<u64>,
}

impl ActiveRequest {
    /// A token came back: the prompt is prefilled; with output tracking, every block-size
    /// tokens add a block.
    pub fn token(&mut self) {
        let mut workers = self.load.workers.lock();
        let Some(load) = workers.get_mut(&self.key) else { return };
        if self.prefill_tokens > 0 {
            load.prefill_tokens = load.prefill_tokens.saturating_sub(self.prefill_tokens);
            self.prefill_tokens = 0;
            self.load.lighter.notify_waiters();
            if let (Some(number), Some(observer)) = (self.shared, self.load.observer.get()) {
                observer(number, Change::Prefilled);
            }
        }
        if self.load.tracking.output_blocks {
            self.output_tokens += 1;
            let blocks = self.output_tokens.div_ceil(self.load.block_size as u64);
            load.private += blocks - self.output_blocks;
            self.output_blocks = blocks;
        }
    }
}

impl Drop for ActiveRequest {
    fn drop(&mut self) {
        let mut workers = self.load.workers.lock();
        let Some(load) = workers.get_mut(&self.key) else { return };
        load.requests = load.requests.saturating_sub(1);
        load.prefill_tokens = load.prefill_tokens.saturating_sub(self.prefill_tokens);
        load.private = load.private.saturating_sub(self.output_blocks);
        match self.load.tracking.assume_kv_reuse {
            true => {
                for hash in &self.hashes {
                    if let Some(holders) = load.shared.get_mut(hash) {
                        *holders -= 1;
                        if *holders == 0 {
                            load.shared.remove(hash);
                        }
                    }
                }
            }
            false => load.private = load.private.saturating_sub(self.hashes.len() as u64),
        }
        if load.requests == 0 {
            workers.remove(&self.key);
        }
        drop(workers);
        self.load.lighter.notify_waiters();
        if let (Some(number), Some(observer)) = (self.shared, self.load.observer.get()) {
            observer(number, Change::Ended);
        }
    }
}

#[cfg(test)]
mod tests {
    use tritium_backend_api::kv::block_hashes;

    use super::*;

    fn prompt(seed: u32) -> Vec<BlockHash> {
        block_hashes(&(0..64).map(|t| t + seed * 1000).collect::<Vec<u32>>(), 16)
    }

    #[test]
    fn shared_prefixes_count_once_with_kv_reuse_and_per_request_without() {
        let worker: Arc<str> = Arc::from("w");
        for (reuse, expected) in [(true, 4), (false, 8)] {
            let load = ActiveLoad::new(Tracking { assume_kv_reuse: reuse, active_blocks: true, ..Tracking::default() }, 16);
            let first = load.start(&worker, "m", prompt(1), 64);
            assert_eq!(load.candidate(&worker, "m", &prompt(1)).potential_blocks, expected);
            assert_eq!(load.candidate(&worker, "m", &prompt(1)).prefill_tokens, 64);
            drop(first);
            assert_eq!(load.candidate(&worker, "m", &prompt(1)), CandidateLoad { potential_blocks: 4, prefill_tokens: 0 });
            assert_eq!(load.requests_on("w", "m"), 0);
        }
    }

    #[test]
    fn the_first_token_ends_prefill_and_outputs_grow_blocks_when_tracked() {
        let worker: Arc<str> = Arc::from("w");
        let load = ActiveLoad::new(Tracking { output_blocks: true, active_blocks: true, ..Tracking::default() }, 16);
        let mut request = load.start(&worker, "m", prompt(1), 40);
        assert_eq!(load.prefill_tokens_on("w"), 40);
        request.token();
        assert_eq!(load.prefill_tokens_on("w"), 0);
        for _ in 0..16 {
            request.token();
        }
        // 4 prompt blocks, and 17 tokens out: 2 blocks.
        assert_eq!(load.candidate(&worker, "m", &[]).potential_blocks, 6);
        drop(request);
        assert_eq!(load.candidate(&worker, "m", &[]).potential_blocks, 0);
        let untracked = ActiveLoad::new(Tracking { active_blocks: false, prefill_tokens: false, ..Tracking::default() }, 16);
        let _held = untracked.start(&worker, "m", prompt(1), 64);
        assert_eq!(untracked.candidate(&worker, "m", &prompt(2)), CandidateLoad::default());
    }
}
