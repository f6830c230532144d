//! The block pool under random admit / grow / finish / cancel / preempt sequences: no block leaked
//! or freed twice, every reuse checked, and the announcements matching the cache's contents.

#![allow(clippy::unwrap_used)]

use std::collections::HashSet;

use proptest::prelude::*;
use tokio::sync::broadcast::error::TryRecvError;

use super::block_pool::{BlockId, BlockPool};
use tritium_backend_api::kv::{BlockHash, KvEvent, block_hashes, chain_hash};

const BLOCK: usize = 4;

/// A sequence as the engine keeps one: its tokens, the blocks under them, how many are committed.
#[derive(Debug)]
struct Sequence {
    tokens: Vec<u32>,
    blocks: Vec<BlockId>,
    committed: usize,
}

impl Sequence {
    /// Commits the blocks that became full, as the engine does after a forward pass.
    fn commit_full(&mut self, pool: &mut BlockPool) {
        let full = self.tokens.len() / BLOCK;
        while self.committed < full.min(self.blocks.len()) {
            let i = self.committed;
            let parent_hash = if i == 0 { 0 } else { block_hashes(&self.tokens[..i * BLOCK], BLOCK)[i - 1] };
            let block = &self.tokens[i * BLOCK..(i + 1) * BLOCK];
            let parent = i.checked_sub(1).map(|p| self.blocks[p]);
            pool.commit(self.blocks[i], parent, chain_hash(parent_hash, block), block);
            self.committed += 1;
        }
    }
}

/// Admits `tokens`: reuses the cached prefix, allocates the rest. `None` when there is no room
/// (and then nothing is held).
fn admit(pool: &mut BlockPool, tokens: Vec<u32>) -> Option<Sequence> {
    let hashes = block_hashes(&tokens, BLOCK);
    let reused = pool.longest_prefix(&tokens, &hashes);
    let needed = tokens.len().div_ceil(BLOCK) - reused.len();
    pool.share(&reused);
    let mut blocks = reused.clone();
    for _ in 0..needed {
        match pool.allocate() {
            Some(id) => blocks.push(id),
            None => {
                pool.release(&blocks);
                return None;
            }
        }
    }
    let mut sequence = Sequence { tokens, blocks, committed: reused.len() };
    sequence.commit_full(pool);
    Some(sequence)
}

#[derive(Debug, Clone)]
enum Op {
    /// A prompt drawn from a few shared prefixes, so reuse happens.
    Admit {
        prefix: u8,
        len: u8,
        salt: u8,
    },
    Grow {
        which: u8,
        by: u8,
    },
    Finish {
        which: u8,
    },
    Preempt {
        which: u8,
    },
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        (0u8..4, 1u8..24, 0u8..3).prop_map(|(prefix, len, salt)| Op::Admit { prefix, len, salt }),
        (any::<u8>(), 1u8..9).prop_map(|(which, by)| Op::Grow { which, by }),
        any::<u8>().prop_map(|which| Op::Finish { which }),
        any::<u8>().prop_map(|which| Op::Preempt { which }),
    ]
}

/// Replays `events` into the set of hashes a router would believe the engine holds.
pub(super) fn replay(held: &mut HashSet<BlockHash>, events: &mut tokio::sync::broadcast::Receiver<KvEvent>) {
    loop {
        match events.try_recv() {
            Ok(KvEvent::Stored { blocks, .. }) => held.extend(blocks),
            Ok(KvEvent::Removed { blocks }) => blocks.iter().for_each(|b| {
                held.remove(b);
            }),
            Ok(KvEvent::Cleared) => held.clear(),
            Ok(KvEvent::Offloaded { .. } | KvEvent::OffloadRemoved { .. }) => {}
            Err(TryRecvError::Empty) => return,
            Err(e) => panic!("{e}"),
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 200, ..ProptestConfig::default() })]

    #[test]
    fn no_block_leaks_or_is_freed_twice(ops in proptest::collection::vec(op(), 1..120), capacity in 4usize..24) {
        let mut pool = BlockPool::new(capacity, BLOCK, true);
        let mut events = pool.subscribe();
        let mut announced = HashSet::new();
        let mut running: Vec<Sequence> = Vec::new();
        for op in ops {
            match op {
                Op::Admit { prefix, len, salt } => {
                    let tokens: Vec<u32> = (0..len as u32).map(|i| if i < 10 { u32::from(prefix) * 100 + i } else { i + u32::from(salt) * 1000 }).collect();
                    if let Some(sequence) = admit(&mut pool, tokens) {
                        running.push(sequence);
                    }
                }
                Op::Grow { which, by } if !running.is_empty() => {
                    let index = which as usize % running.len();
                    let sequence = &mut running[index];
                    for _ in 0..by {
                        if sequence.tokens.len() == sequence.blocks.len() * BLOCK {
                            let Some(id) = pool.allocate() else { break };
                            sequence.blocks.push(id);
                        }
                        sequence.tokens.push(7 + sequence.tokens.len() as u32);
                    }
                    sequence.commit_full(&mut pool);
                }
                Op::Finish { which } | Op::Preempt { which } if !running.is_empty() => {
                    let sequence = running.remove(which as usize % running.len());
                    pool.release(&sequence.blocks);
                }
                _ => {}
            }
            pool.flush_events();
            prop_assert_eq!(pool.check_invariants(), Ok(()));
            let held: usize = running.iter().map(|s| s.blocks.len()).sum();
            let distinct: HashSet<BlockId> = running.iter().flat_map(|s| s.blocks.iter().copied()).collect();
            prop_assert!(pool.in_use() == distinct.len() && held >= distinct.len());
            replay(&mut announced, &mut events);
            prop_assert_eq!(announced.len(), pool.cached(), "the announcements match the cache");
        }
        for sequence in running.drain(..) {
            pool.release(&sequence.blocks);
        }
        prop_assert_eq!(pool.check_invariants(), Ok(()));
        prop_assert_eq!(pool.in_use(), 0);
        prop_assert_eq!(pool.available(), capacity);
    }
}

#[test]
fn a_repeated_prompt_reuses_its_blocks_and_a_forged_hash_is_refused() {
    let mut pool = BlockPool::new(8, BLOCK, true);
    let first = admit(&mut pool, (0..10).collect()).unwrap();
    assert_eq!(first.committed, 2, "two full blocks committed, the partial third is private");
    pool.release(&first.blocks);
    let again = admit(&mut pool, (0..10).collect()).unwrap();
    assert_eq!(again.blocks[..2], first.blocks[..2], "the cached blocks are reused");
    pool.release(&again.blocks);

    // Tokens that differ under the same hashes (a crafted collision) reuse nothing.
    let forged: Vec<u32> = (100..110).collect();
    let hashes = block_hashes(&(0..10).collect::<Vec<u32>>(), BLOCK);
    assert!(pool.longest_prefix(&forged, &hashes).is_empty());
    // The right second block after a different first one is no prefix either.
    let mut other_start: Vec<u32> = (0..10).collect();
    other_start[0] = 55;
    assert!(pool.longest_prefix(&other_start, &hashes).is_empty());
}

#[test]
fn idle_blocks_are_evicted_oldest_first_and_a_child_never_outlives_its_parent_in_use() {
    let mut pool = BlockPool::new(4, BLOCK, true);
    let mut events = pool.subscribe();
    let a = admit(&mut pool, (0..8).collect()).unwrap();
    pool.release(&a.blocks);
    let b = admit(&mut pool, (50..58).collect()).unwrap();
    pool.release(&b.blocks);
    pool.flush_events();
    let mut held = HashSet::new();
    replay(&mut held, &mut events);
    assert_eq!(held.len(), 4);
    // Two new blocks evict a's: its tail first, then its head.
    let c = admit(&mut pool, (90..98).collect()).unwrap();
    pool.flush_events();
    let a_hashes = block_hashes(&(0..8).collect::<Vec<u32>>(), BLOCK);
    assert_eq!(events.try_recv().unwrap(), KvEvent::Removed { blocks: vec![a_hashes[1], a_hashes[0]] });
    assert!(pool.longest_prefix(&(0..8).collect::<Vec<u32>>(), &a_hashes).is_empty());
    assert_eq!(
        pool.longest_prefix(&(50..58).collect::<Vec<u32>>(), &block_hashes(&(50..58).collect::<Vec<u32>>(), BLOCK)).len(),
        2
    );
    assert!(pool.allocate().is_some(), "b's idle blocks are still there to evict");
    pool.release(&c.blocks);
}

#[test]
fn without_prefix_caching_nothing_is_committed_or_announced() {
    let mut pool = BlockPool::new(4, BLOCK, false);
    let mut events = pool.subscribe();
    let a = admit(&mut pool, (0..8).collect()).unwrap();
    pool.release(&a.blocks);
    pool.flush_events();
    assert_eq!((pool.cached(), pool.available()), (0, 4));
    assert!(matches!(events.try_recv(), Err(TryRecvError::Empty)));
}
