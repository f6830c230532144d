//! The KV cache's block manager: a fixed pool of physical blocks of `block_size` token positions,
//! handed to sequences one at a time as they grow, reference-counted, with a prefix cache over
//! the full ones. A full block is *committed* under the chained hash of its tokens
//! ([`chain_hash`](tritium_backend_api::kv::chain_hash)); when its last user lets go it stays cached, idle, until
//! room is needed, and idle blocks go least recently used first. A new sequence reuses the longest
//! run of committed blocks that starts its tokens.
//!
//! A reused block is checked, not trusted to its hash: the tokens it holds and the exact block
//! before it (physical id and the id's generation, which changes whenever the id is handed out
//! again) must match, so a crafted hash collision can never make one client's sequence read
//! another's keys and values.
//!
//! The pool holds no tensors; the engine's KV store is indexed by [`BlockId`]. It announces what
//! it commits and evicts as [`KvEvent`]s, batched per call to [`flush_events`](BlockPool::flush_events).

use std::collections::{BTreeMap, HashMap};
use std::hash::{BuildHasher, RandomState};

use tokio::sync::broadcast;

use tritium_backend_api::kv::{BlockHash, KvEvent};

/// A physical block: its index in the engine's KV store.
pub type BlockId = u32;

/// Events buffered for a slow subscriber before it starts missing them.
const EVENT_CAPACITY: usize = 4096;

/// A committed block's identity.
#[derive(Debug)]
struct Committed {
    hash: BlockHash,
    /// A keyed hash of its tokens and of every block before it (see [`BlockPool::strong_hashes`]).
    strong: u128,
    /// The block before it, with that block's generation at the time; `None` at a sequence's start.
    parent: Option<(BlockId, u32)>,
    tokens: Box<[u32]>,
}

#[derive(Debug, Default)]
struct Meta {
    refs: u32,
    /// Bumped each time the block is freed or evicted: a child's `parent` names a generation.
    generation: u32,
    committed: Option<Committed>,
    /// Its key in the LRU order while idle (committed, unreferenced).
    stamp: u64,
}

/// Blocks, their users, and the prefix cache.
#[derive(Debug)]
pub struct BlockPool {
    block_size: usize,
    meta: Vec<Meta>,
    /// Blocks holding nothing, ready to hand out.
    free: Vec<BlockId>,
    by_hash: HashMap<BlockHash, BlockId>,
    /// Committed blocks nobody uses, oldest first.
    idle: BTreeMap<u64, BlockId>,
    clock: u64,
    prefix_caching: bool,
    events: broadcast::Sender<KvEvent>,
    pending: Vec<KvEvent>,
    /// Keys of the strong hashes: random per process, so nobody outside can craft a collision.
    strong_keys: (RandomState, RandomState),
    /// Committed blocks evicted since the last [`take_evicted`](Self::take_evicted), when an
    /// offload tier wants them.
    evicted: Option<Vec<Evicted>>,
}

/// A committed block that was just evicted: its data is still in the store until the block is
/// written again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Evicted {
    pub id: BlockId,
    pub hash: BlockHash,
    pub strong: u128,
}

impl BlockPool {
    /// A pool of `blocks` blocks of `block_size` positions (both at least 1).
    pub fn new(blocks: usize, block_size: usize, prefix_caching: bool) -> BlockPool {
        let blocks = blocks.clamp(1, BlockId::MAX as usize);
        BlockPool {
            block_size: block_size.max(1),
            meta: (0..blocks).map(|_| Meta::default()).collect(),
            free: (0..blocks as BlockId).rev().collect(),
            by_hash: HashMap::new(),
            idle: BTreeMap::new(),
            clock: 0,
            prefix_caching,
            events: broadcast::channel(EVENT_CAPACITY).0,
            pending: Vec::new(),
            strong_keys: (RandomState::new(), RandomState::new()),
            evicted: None,
        }
    }

    /// Keeps the committed blocks it evicts for [`take_evicted`](Self::take_evicted) (an offload
    /// tier spills them before their blocks are written again).
    pub fn record_evictions(&mut self) {
        self.evicted.get_or_insert_with(Vec::new);
    }

    /// The committed blocks evicted since the last call.
    pub fn take_evicted(&mut self) -> Vec<Evicted> {
        self.evicted.as_mut().map(std::mem::take).unwrap_or_default()
    }

    fn strong(&self, parent: u128, block: &[u32]) -> u128 {
        let half = |state: &RandomState| {
            let mut hasher = state.build_hasher();
            std::hash::Hasher::write_u128(&mut hasher, parent);
            for &token in block {
                std::hash::Hasher::write_u32(&mut hasher, token);
            }
            std::hash::Hasher::finish(&hasher)
        };
        (u128::from(half(&self.strong_keys.0)) << 64) | u128::from(half(&self.strong_keys.1))
    }

    /// The strong hashes of the full blocks of `tokens`: a keyed 128-bit hash of each block's
    /// tokens and all before it, valid in this process only. The offload tier keys on them.
    pub fn strong_hashes(&self, tokens: &[u32]) -> Vec<u128> {
        let mut parent = 0;
        tokens
            .chunks_exact(self.block_size)
            .map(|block| {
                parent = self.strong(parent, block);
                parent
            })
            .collect()
    }

    pub fn block_size(&self) -> usize {
        self.block_size
    }

    /// Blocks in the pool.
    pub fn capacity(&self) -> usize {
        self.meta.len()
    }

    /// Blocks that [`allocate`](Self::allocate) can hand out now: free ones and idle cached ones.
    pub fn available(&self) -> usize {
        self.free.len() + self.idle.len()
    }

    /// Blocks some sequence holds.
    pub fn in_use(&self) -> usize {
        self.meta.len() - self.available()
    }

    /// Committed blocks, used or idle.
    pub fn cached(&self) -> usize {
        self.by_hash.len()
    }

    pub fn prefix_caching(&self) -> bool {
        self.prefix_caching
    }

    /// The announcements from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<KvEvent> {
        self.events.subscribe()
    }

    /// A sender to subscribe through later, without holding the pool.
    pub fn event_sender(&self) -> broadcast::Sender<KvEvent> {
        self.events.clone()
    }

    /// The committed blocks that hold the start of `tokens`, in order, checked token by token
    /// (`hashes` are the chained hashes of `tokens`' full blocks). Takes no reference.
    pub fn longest_prefix(&self, tokens: &[u32], hashes: &[BlockHash]) -> Vec<BlockId> {
        let mut found = Vec::new();
        if !self.prefix_caching {
            return found;
        }
        let mut parent: Option<(BlockId, u32)> = None;
        for (block, hash) in tokens.chunks_exact(self.block_size).zip(hashes) {
            let Some(&id) = self.by_hash.get(hash) else { break };
            let meta = &self.meta[id as usize];
            let Some(committed) = &meta.committed else { break };
            if committed.parent != parent || *committed.tokens != *block {
                break;
            }
            found.push(id);
            parent = Some((id, meta.generation));
        }
        found
    }

    /// Takes a reference on each of `ids` (blocks found by [`longest_prefix`](Self::longest_prefix)).
    pub fn share(&mut self, ids: &[BlockId]) {
        for &id in ids {
            let meta = &mut self.meta[id as usize];
            if meta.refs == 0 {
                self.idle.remove(&meta.stamp);
            }
            meta.refs += 1;
        }
    }

    /// A block for one sequence to write into: a free one, else the least recently used idle
    /// one, evicted from the cache. `None` when every block is in use.
    pub fn allocate(&mut self) -> Option<BlockId> {
        let id = match self.free.pop() {
            Some(id) => id,
            None => {
                let (_, id) = self.idle.pop_first()?;
                self.evict(id);
                id
            }
        };
        self.meta[id as usize].refs = 1;
        Some(id)
    }

    fn evict(&mut self, id: BlockId) {
        let meta = &mut self.meta[id as usize];
        meta.generation = meta.generation.wrapping_add(1);
        if let Some(committed) = meta.committed.take() {
            self.by_hash.remove(&committed.hash);
            if let Some(evicted) = self.evicted.as_mut() {
                evicted.push(Evicted { id, hash: committed.hash, strong: committed.strong });
            }
            match self.pending.last_mut() {
                Some(KvEvent::Removed { blocks }) => blocks.push(committed.hash),
                _ => self.pending.push(KvEvent::Removed { blocks: vec![committed.hash] }),
            }
        }
    }

    /// Records that block `id`, now full with `tokens`, follows `parent` in its sequence and hashes
    /// to `hash`, so later sequences may reuse it. A block already committed, or a hash another
    /// block holds (two sequences computed the same prefix at once), leaves the block private.
    pub fn commit(&mut self, id: BlockId, parent: Option<BlockId>, hash: BlockHash, tokens: &[u32]) {
        if !self.prefix_caching || tokens.len() != self.block_size || self.by_hash.contains_key(&hash) {
            return;
        }
        let parent = match parent {
            Some(p) => match &self.meta[p as usize].committed {
                // The chain is only reusable through committed parents.
                Some(committed) => Some((p, self.meta[p as usize].generation, committed.hash, committed.strong)),
                None => return,
            },
            None => None,
        };
        let strong = self.strong(parent.map_or(0, |(_, _, _, strong)| strong), tokens);
        let meta = &mut self.meta[id as usize];
        if meta.committed.is_some() || meta.refs == 0 {
            return;
        }
        meta.committed =
            Some(Committed { hash, strong, parent: parent.map(|(p, generation, _, _)| (p, generation)), tokens: tokens.into() });
        self.by_hash.insert(hash, id);
        let parent_hash = parent.map(|(_, _, hash, _)| hash);
        match self.pending.last_mut() {
            Some(KvEvent::Stored { blocks, .. }) if parent_hash.is_some() && blocks.last() == parent_hash.as_ref() => {
                blocks.push(hash);
            }
            _ => self.pending.push(KvEvent::Stored { parent: parent_hash, blocks: vec![hash] }),
        }
    }

    /// Drops one reference on each of `ids`, last first (so a sequence's tail is evicted before
    /// the blocks it follows). A committed block nobody uses stays cached; others are freed.
    pub fn release(&mut self, ids: &[BlockId]) {
        for &id in ids.iter().rev() {
            let meta = &mut self.meta[id as usize];
            if meta.refs == 0 {
                debug_assert!(false, "block {id} released more often than taken");
                continue;
            }
            meta.refs -= 1;
            if meta.refs > 0 {
                continue;
            }
            if meta.committed.is_some() {
                self.clock += 1;
                meta.stamp = self.clock;
                self.idle.insert(self.clock, id);
            } else {
                meta.generation = meta.generation.wrapping_add(1);
                self.free.push(id);
            }
        }
    }

    /// Sends the announcements gathered since the last flush.
    pub fn flush_events(&mut self) {
        for event in self.pending.drain(..) {
            let _ = self.events.send(event);
        }
    }

    /// Whether block `id` is in the prefix cache (committed under its hash): a later sequence
    /// can find it.
    pub fn is_committed(&self, id: BlockId) -> bool {
        self.meta[id as usize].committed.is_some()
    }

    /// How many sequences hold block `id`.
    pub fn refs(&self, id: BlockId) -> u32 {
        self.meta[id as usize].refs
    }

    /// Checks the pool's bookkeeping: every block is exactly one of free, idle or in use, and the
    /// hash index names exactly the committed blocks.
    #[cfg(test)]
    pub(crate) fn check_invariants(&self) -> Result<(), String> {
        let mut seen = vec![0u8; self.meta.len()];
        for &id in &self.free {
            seen[id as usize] += 1;
            let meta = &self.meta[id as usize];
            if meta.refs != 0 || meta.committed.is_some() {
                return Err(format!("free block {id} is in use or committed"));
            }
        }
        for (&stamp, &id) in &self.idle {
            seen[id as usize] += 1;
            let meta = &self.meta[id as usize];
            if meta.refs != 0 || meta.committed.is_none() || meta.stamp != stamp {
                return Err(format!("idle block {id} is in use, uncommitted or out of order"));
            }
        }
        for (id, meta) in self.meta.iter().enumerate() {
            let expected = u8::from(meta.refs == 0);
            if seen[id] != expected {
                return Err(format!("block {id} with {} references is listed {} times", meta.refs, seen[id]));
            }
            if let Some(committed) = &meta.committed
                && self.by_hash.get(&committed.hash) != Some(&(id as BlockId))
            {
                return Err(format!("committed block {id} is not indexed by its hash"));
            }
        }
        if self.by_hash.values().any(|&id| self.meta[id as usize].committed.is_none()) {
            return Err("the hash index names an uncommitted block".into());
        }
        Ok(())
    }
}
