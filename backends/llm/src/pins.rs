//! Explicit prompt caching in the engine: a request's [`PrefixPin`] keeps the KV blocks of its
//! prompt's first tokens in the prefix cache for a while. A pin holds one reference on each of its
//! blocks, so the pool counts them in use and never evicts them; when the pin lapses (its time is
//! up, or room is needed for a newer pin) the references go and the blocks become ordinary idle
//! cached blocks again. A later request pinning the same prefix (the same last block) extends the
//! pin instead of taking the blocks twice. Pins hold at most `max_blocks` block references in all
//! (`--max-pinned-kv-fraction` of the pool); past it the pins refreshed longest ago lapse first.
//!
//! [`PrefixPin`]: tritium_backend_api::llm::PrefixPin

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use crate::block_pool::{BlockId, BlockPool};

#[derive(Debug)]
struct Pin {
    blocks: Vec<BlockId>,
    deadline: Instant,
    /// Its key in `order` (the last time it was pinned).
    stamp: u64,
}

#[derive(Debug, Default)]
pub(crate) struct Pins {
    /// By the pin's last block: two pins of the same prefix end on the same block.
    by_last: HashMap<BlockId, Pin>,
    /// Pins by when they were last pinned, oldest first.
    order: BTreeMap<u64, BlockId>,
    clock: u64,
    /// Block references the pins hold (a block in two pins counts twice).
    held: usize,
    max_blocks: usize,
    /// Pins that lapsed for room before their time (for the log and tests).
    pub(crate) displaced: u64,
}

impl Pins {
    pub(crate) fn new(max_blocks: usize) -> Pins {
        Pins { max_blocks, ..Pins::default() }
    }

    /// Pins `blocks` (committed, leading blocks of a prompt) for `ttl` from `now`. Whether they
    /// were newly pinned: false when that prefix was pinned already (its time is extended) or
    /// when it alone is over the bound (nothing is pinned).
    pub(crate) fn pin(&mut self, pool: &mut BlockPool, blocks: &[BlockId], ttl: Duration, now: Instant) -> bool {
        let Some(&last) = blocks.last() else { return false };
        self.clock += 1;
        let deadline = now + ttl;
        if let Some(pin) = self.by_last.get_mut(&last) {
            pin.deadline = pin.deadline.max(deadline);
            self.order.remove(&pin.stamp);
            pin.stamp = self.clock;
            self.order.insert(self.clock, last);
            return false;
        }
        if blocks.len() > self.max_blocks {
            return false;
        }
        while self.held + blocks.len() > self.max_blocks {
            let Some((_, oldest)) = self.order.pop_first() else { break };
            self.lapse(pool, oldest);
            self.displaced += 1;
        }
        pool.share(blocks);
        self.held += blocks.len();
        self.order.insert(self.clock, last);
        self.by_last.insert(last, Pin { blocks: blocks.to_vec(), deadline, stamp: self.clock });
        true
    }

    /// Lets the pins whose time is up go.
    pub(crate) fn expire(&mut self, pool: &mut BlockPool, now: Instant) {
        let lapsed: Vec<BlockId> = self.by_last.iter().filter(|(_, pin)| pin.deadline <= now).map(|(&last, _)| last).collect();
        for last in lapsed {
            if let Some(pin) = self.by_last.get(&last) {
                self.order.remove(&pin.stamp);
            }
            self.lapse(pool, last);
        }
    }

    fn lapse(&mut self, pool: &mut BlockPool, last: BlockId) {
        if let Some(pin) = self.by_last.remove(&last) {
            pool.release(&pin.blocks);
            self.held -= pin.blocks.len();
        }
    }

    /// Block references the pins hold now.
    #[cfg(test)]
    pub(crate) fn held(&self) -> usize {
        self.held
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.by_last.is_empty()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    /// A pool whose blocks 0..n are committed (one chain) and released, idle in the cache.
    fn pool_with_chain(n: usize) -> (BlockPool, Vec<BlockId>) {
        let mut pool = BlockPool::new(8, 2, true);
        let mut ids = Vec::new();
        for i in 0..n {
            let id = pool.allocate().unwrap();
            let tokens = [i as u32, i as u32 + 100];
            pool.commit(id, ids.last().copied(), i as u64 + 1, &tokens);
            ids.push(id);
        }
        pool.release(&ids);
        (pool, ids)
    }

    #[test]
    fn a_pin_keeps_its_blocks_from_eviction_until_it_lapses() {
        let (mut pool, ids) = pool_with_chain(3);
        let mut pins = Pins::new(4);
        let now = Instant::now();
        assert!(pins.pin(&mut pool, &ids[..2], Duration::from_secs(60), now));
        // Pinning the same prefix again extends it and takes nothing more.
        assert!(!pins.pin(&mut pool, &ids[..2], Duration::from_secs(120), now));
        assert_eq!((pins.held(), pool.refs(ids[0]), pool.refs(ids[1]), pool.refs(ids[2])), (2, 1, 1, 0));
        // Allocating the whole pool takes every free and idle block but the pinned ones.
        let taken: Vec<BlockId> = std::iter::from_fn(|| pool.allocate()).collect();
        assert_eq!(taken.len(), 6);
        assert!(!taken.contains(&ids[0]) && !taken.contains(&ids[1]));
        pool.release(&taken);
        pins.expire(&mut pool, now + Duration::from_secs(90));
        assert_eq!(pins.held(), 2, "extended to 120 s");
        pins.expire(&mut pool, now + Duration::from_secs(121));
        assert!(pins.is_empty());
        assert_eq!((pool.refs(ids[0]), pool.refs(ids[1])), (0, 0));
        pool.check_invariants().unwrap();
    }

    #[test]
    fn past_the_bound_the_oldest_pins_lapse_and_a_pin_over_it_is_not_kept() {
        let (mut pool, ids) = pool_with_chain(3);
        let mut pins = Pins::new(3);
        let now = Instant::now();
        assert!(pins.pin(&mut pool, &ids[..1], Duration::from_secs(60), now));
        assert!(pins.pin(&mut pool, &ids[..2], Duration::from_secs(60), now));
        assert_eq!(pins.held(), 3);
        // Two more references: the oldest pin (one block) lapses, then the next.
        assert!(pins.pin(&mut pool, &ids[1..3], Duration::from_secs(60), now));
        assert_eq!((pins.held(), pins.displaced), (2, 2));
        assert!(!pins.pin(&mut pool, &ids[..3].repeat(2), Duration::from_secs(60), now), "over the bound alone");
        assert_eq!(pins.held(), 2);
        pool.check_invariants().unwrap();
    }
}
