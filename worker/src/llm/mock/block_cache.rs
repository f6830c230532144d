//! A block-level KV cache without the tensors: which blocks (by chained hash) are held, how many
//! running sequences use each, and which unused ones go first when room is needed (least
//! recently used). It announces what it stores and evicts as [`KvEvent`]s, as a real engine
//! with prefix caching would, so KV-aware routing can be tested against it.

use std::collections::{BTreeMap, HashMap, HashSet};

use tokio::sync::broadcast;

use crate::kv::{BlockHash, KvEvent};

/// Events buffered for a slow subscriber before it starts missing them.
const EVENT_CAPACITY: usize = 4096;

/// What [`BlockCache::acquire`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Acquired {
    /// Leading blocks that were already held: their tokens need no computing.
    pub cached_blocks: usize,
    /// Blocks newly stored.
    pub stored_blocks: usize,
    /// Unused blocks evicted to make room.
    pub evicted_blocks: usize,
}

/// Even evicting every unused block would not make room; nothing was changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the KV cache has room for {available} more blocks, {needed} are needed")]
pub struct NoRoom {
    pub needed: usize,
    pub available: usize,
}

#[derive(Debug)]
struct Entry {
    refs: u32,
    /// Its key in the LRU order while `refs` is 0.
    stamp: u64,
}

/// A fixed number of blocks, reference-counted, with LRU eviction of the unreferenced ones.
#[derive(Debug)]
pub struct BlockCache {
    capacity: usize,
    blocks: HashMap<BlockHash, Entry>,
    /// Unreferenced blocks by the time they became so, oldest first.
    idle: BTreeMap<u64, BlockHash>,
    clock: u64,
    events: broadcast::Sender<KvEvent>,
}

impl BlockCache {
    pub fn new(capacity: usize) -> BlockCache {
        BlockCache {
            capacity,
            blocks: HashMap::new(),
            idle: BTreeMap::new(),
            clock: 0,
            events: broadcast::channel(EVENT_CAPACITY).0,
        }
    }

    /// The events from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<KvEvent> {
        self.events.subscribe()
    }

    /// A sender to subscribe through later, without holding the cache.
    pub fn event_sender(&self) -> broadcast::Sender<KvEvent> {
        self.events.clone()
    }

    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Blocks held, used or not.
    pub fn len(&self) -> usize {
        self.blocks.len()
    }

    pub fn is_empty(&self) -> bool {
        self.blocks.is_empty()
    }

    /// Blocks some sequence uses (they cannot be evicted).
    pub fn referenced(&self) -> usize {
        self.blocks.len() - self.idle.len()
    }

    /// How many sequences use the block; `None` when it is not held.
    pub fn refs(&self, hash: BlockHash) -> Option<u32> {
        self.blocks.get(&hash).map(|e| e.refs)
    }

    /// [`acquire_after`](Self::acquire_after) for the blocks at the start of a sequence.
    pub fn acquire(&mut self, hashes: &[BlockHash]) -> Result<Acquired, NoRoom> {
        self.acquire_after(None, hashes)
    }

    /// Takes a reference on each of `hashes` (consecutive blocks of one sequence, following the
    /// block `parent`), storing those not held and evicting unused blocks for them. The leading
    /// blocks already held are the cache hits. Fails, changing nothing, when there is no room.
    pub fn acquire_after(&mut self, parent: Option<BlockHash>, hashes: &[BlockHash]) -> Result<Acquired, NoRoom> {
        let mut missing = HashSet::new();
        let mut ours_idle = HashSet::new();
        for &hash in hashes {
            match self.blocks.get(&hash) {
                None => {
                    missing.insert(hash);
                }
                Some(entry) if entry.refs == 0 => {
                    ours_idle.insert(hash);
                }
                Some(_) => {}
            }
        }
        let free = self.capacity.saturating_sub(self.blocks.len());
        let available = free + self.idle.len() - ours_idle.len();
        if missing.len() > available {
            return Err(NoRoom { needed: missing.len(), available });
        }
        let cached_blocks = hashes.iter().take_while(|h| self.blocks.contains_key(h)).count();

        // Referenced first, so that eviction below cannot take a block this sequence reuses.
        for hash in hashes {
            if let Some(entry) = self.blocks.get_mut(hash) {
                if entry.refs == 0 {
                    self.idle.remove(&entry.stamp);
                }
                entry.refs += 1;
            }
        }
        let mut evicted = Vec::new();
        while self.blocks.len() + missing.len() > self.capacity {
            let Some((_, hash)) = self.idle.pop_first() else { break };
            self.blocks.remove(&hash);
            evicted.push(hash);
        }
        let evicted_blocks = evicted.len();
        if !evicted.is_empty() {
            let _ = self.events.send(KvEvent::Removed { blocks: evicted });
        }

        // Stored in runs of consecutive new blocks, each announced with the block before it.
        let mut inserted = HashSet::new();
        let mut run: Vec<BlockHash> = Vec::new();
        let mut run_parent = parent;
        for (index, &hash) in hashes.iter().enumerate() {
            if missing.remove(&hash) {
                if run.is_empty() {
                    run_parent = if index == 0 { parent } else { Some(hashes[index - 1]) };
                }
                self.blocks.insert(hash, Entry { refs: 1, stamp: 0 });
                inserted.insert(hash);
                run.push(hash);
                continue;
            }
            // A hash repeated in `hashes` takes a reference per occurrence, as a held one did above.
            if inserted.contains(&hash)
                && let Some(entry) = self.blocks.get_mut(&hash)
            {
                entry.refs += 1;
            }
            self.flush(run_parent, &mut run);
        }
        self.flush(run_parent, &mut run);
        Ok(Acquired { cached_blocks, stored_blocks: inserted.len(), evicted_blocks })
    }

    /// Drops a reference on each block; blocks nobody uses stay cached until evicted. The last
    /// block is released first, so it is evicted before the blocks it follows.
    pub fn release(&mut self, hashes: &[BlockHash]) {
        for hash in hashes.iter().rev() {
            let Some(entry) = self.blocks.get_mut(hash) else { continue };
            if entry.refs == 0 {
                continue;
            }
            entry.refs -= 1;
            if entry.refs == 0 {
                self.clock += 1;
                entry.stamp = self.clock;
                self.idle.insert(self.clock, *hash);
            }
        }
    }

    fn flush(&self, parent: Option<BlockHash>, run: &mut Vec<BlockHash>) {
        if !run.is_empty() {
            let _ = self.events.send(KvEvent::Stored { parent, blocks: std::mem::take(run) });
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use tokio::sync::broadcast::error::TryRecvError;

    use super::*;

    fn drain(events: &mut broadcast::Receiver<KvEvent>) -> Vec<KvEvent> {
        let mut seen = Vec::new();
        loop {
            match events.try_recv() {
                Ok(event) => seen.push(event),
                Err(TryRecvError::Empty) => return seen,
                Err(e) => panic!("{e}"),
            }
        }
    }

    fn stored(parent: Option<BlockHash>, blocks: &[BlockHash]) -> KvEvent {
        KvEvent::Stored { parent, blocks: blocks.to_vec() }
    }

    fn removed(blocks: &[BlockHash]) -> KvEvent {
        KvEvent::Removed { blocks: blocks.to_vec() }
    }

    #[test]
    fn leading_blocks_already_held_are_hits_and_the_rest_are_stored() {
        let mut cache = BlockCache::new(8);
        let mut events = cache.subscribe();
        let first = cache.acquire(&[1, 2, 3]).unwrap();
        assert_eq!(first, Acquired { cached_blocks: 0, stored_blocks: 3, evicted_blocks: 0 });
        assert_eq!(drain(&mut events), vec![stored(None, &[1, 2, 3])]);

        let second = cache.acquire(&[1, 2, 4, 5]).unwrap();
        assert_eq!(second, Acquired { cached_blocks: 2, stored_blocks: 2, evicted_blocks: 0 });
        assert_eq!(drain(&mut events), vec![stored(Some(2), &[4, 5])], "announced after the last hit");
        assert_eq!((cache.refs(1), cache.refs(2), cache.refs(3), cache.refs(4)), (Some(2), Some(2), Some(1), Some(1)));
        assert_eq!((cache.len(), cache.referenced()), (5, 5));

        // A block held further on is reused but is no hit: the blocks before it must be computed.
        let third = cache.acquire(&[9, 2]).unwrap();
        assert_eq!(third.cached_blocks, 0);
        assert_eq!(cache.refs(2), Some(3));
        assert_eq!(drain(&mut events), vec![stored(None, &[9])]);

        let after = cache.acquire_after(Some(5), &[6]).unwrap();
        assert_eq!(after.stored_blocks, 1);
        assert_eq!(drain(&mut events), vec![stored(Some(5), &[6])]);
    }

    #[test]
    fn released_blocks_stay_cached_until_evicted_least_recently_used_first() {
        let mut cache = BlockCache::new(4);
        let mut events = cache.subscribe();
        cache.acquire(&[1, 2]).unwrap();
        cache.acquire(&[3, 4]).unwrap();
        cache.release(&[1, 2]);
        cache.release(&[3, 4]);
        assert_eq!((cache.len(), cache.referenced()), (4, 0));
        assert_eq!(cache.refs(1), Some(0));
        drain(&mut events);

        // A hit takes its block out of the eviction order; releasing it again makes it the newest.
        assert_eq!(cache.acquire(&[1]).unwrap().cached_blocks, 1);
        cache.release(&[1]);

        // Oldest first: 2 (released before 1 as the tail of its sequence), then 4, then 3.
        let made_room = cache.acquire(&[7, 8]).unwrap();
        assert_eq!(made_room, Acquired { cached_blocks: 0, stored_blocks: 2, evicted_blocks: 2 });
        assert_eq!(drain(&mut events), vec![removed(&[2, 4]), stored(None, &[7, 8])]);
        assert_eq!(cache.refs(2), None);
        assert_eq!(cache.refs(3), Some(0));
        cache.acquire(&[10]).unwrap();
        assert_eq!(drain(&mut events), vec![removed(&[3]), stored(None, &[10])]);
        assert_eq!(cache.refs(1), Some(0), "the most recently used block is still there");
    }

    #[test]
    fn referenced_blocks_are_never_evicted() {
        let mut cache = BlockCache::new(3);
        cache.acquire(&[1, 2]).unwrap();
        cache.acquire(&[1, 2]).unwrap();
        cache.release(&[1, 2]);
        assert_eq!(cache.refs(1), Some(1), "one sequence still uses it");
        cache.acquire(&[3]).unwrap();
        cache.release(&[3]);
        let mut events = cache.subscribe();
        assert_eq!(cache.acquire(&[4]).unwrap().evicted_blocks, 1);
        assert_eq!(drain(&mut events), vec![removed(&[3]), stored(None, &[4])]);
    }

    #[test]
    fn no_room_changes_nothing_and_announces_nothing() {
        let mut cache = BlockCache::new(4);
        cache.acquire(&[1, 2]).unwrap();
        cache.acquire(&[3]).unwrap();
        cache.release(&[3]);
        let mut events = cache.subscribe();
        // Needs 3 new blocks; 1 is free and only 3 may be evicted.
        let err = cache.acquire(&[1, 5, 6, 7]).unwrap_err();
        assert_eq!(err, NoRoom { needed: 3, available: 2 });
        assert_eq!(drain(&mut events), vec![]);
        assert_eq!((cache.refs(1), cache.refs(3), cache.refs(5)), (Some(1), Some(0), None));
        assert_eq!((cache.len(), cache.referenced()), (3, 2));

        // An idle block the request itself reuses does not count as room.
        let err = cache.acquire(&[3, 8, 9, 10]).unwrap_err();
        assert_eq!(err, NoRoom { needed: 3, available: 1 });
        assert_eq!(cache.refs(3), Some(0));
        assert_eq!(cache.acquire(&[3, 8]).unwrap(), Acquired { cached_blocks: 1, stored_blocks: 1, evicted_blocks: 0 });
    }

    #[test]
    fn release_ignores_blocks_not_held_and_extra_releases() {
        let mut cache = BlockCache::new(2);
        cache.acquire(&[1]).unwrap();
        cache.release(&[1, 1, 42]);
        assert_eq!(cache.refs(1), Some(0));
        assert_eq!(cache.refs(42), None);
        assert_eq!(cache.referenced(), 0);
        assert!(cache.acquire(&[2, 3]).is_ok(), "the idle block makes room");
        assert_eq!(cache.len(), 2);
    }
}
