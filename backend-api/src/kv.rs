//! KV-cache blocks as routers see them: a prompt's tokens cut into fixed-size blocks, each named
//! by a hash chained from the block before it, so equal hashes mean equal prefixes. Engines
//! announce the blocks they store and evict ([`KvEvent`]); a KV-aware router indexes those
//! announcements and scores workers by how much of a new prompt they already hold.

use serde::{Deserialize, Serialize};

/// Tokens per block unless an engine says otherwise.
pub const DEFAULT_KV_BLOCK_SIZE: usize = 16;

/// A block's name: a hash of its tokens and of every block before it.
pub type BlockHash = u64;

/// What an engine did to its KV cache, in whole blocks.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum KvEvent {
    /// Blocks now held, in prefix order; `parent` is the block before the first (none at the start
    /// of a sequence).
    Stored { parent: Option<BlockHash>, blocks: Vec<BlockHash> },
    /// Blocks no longer held.
    Removed { blocks: Vec<BlockHash> },
    /// Everything dropped (the engine restarted or cleared its cache).
    Cleared,
    /// Blocks now kept in the engine's offload tier (on disk): a hit there is read back rather
    /// than computed, slower than a resident block. The engine announces their removal from
    /// memory apart (`Removed`).
    Offloaded { blocks: Vec<BlockHash> },
    /// Blocks no longer in the offload tier.
    OffloadRemoved { blocks: Vec<BlockHash> },
}

/// The chained hashes of the full blocks of `tokens` (a trailing partial block has none).
pub fn block_hashes(tokens: &[u32], block_size: usize) -> Vec<BlockHash> {
    block_hashes_from(0, tokens, block_size)
}

/// [`block_hashes`] chained from `seed` instead of 0: the blocks of a sequence computed with other
/// weights (a LoRA adapter, seeded by its load) never match the base model's.
pub fn block_hashes_from(seed: BlockHash, tokens: &[u32], block_size: usize) -> Vec<BlockHash> {
    let block_size = block_size.max(1);
    let mut parent: BlockHash = seed;
    tokens
        .chunks_exact(block_size)
        .map(|block| {
            parent = chain_hash(parent, block);
            parent
        })
        .collect()
}

/// The hash of `block` following the block hashed `parent` (0 at the start of a sequence): FNV-1a
/// over the parent hash and the block's tokens, little-endian, the same in every process and on
/// every platform (std's hasher is seeded per process, so it cannot be shared). It is no defence
/// against crafted collisions: engines compare tokens before they reuse a block.
pub fn chain_hash(parent: BlockHash, block: &[u32]) -> BlockHash {
    const OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
    const PRIME: u64 = 0x0000_0100_0000_01b3;
    let mut hash = OFFSET;
    let mut feed = |bytes: &[u8]| {
        for &byte in bytes {
            hash ^= u64::from(byte);
            hash = hash.wrapping_mul(PRIME);
        }
    };
    feed(&parent.to_le_bytes());
    for token in block {
        feed(&token.to_le_bytes());
    }
    hash
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn equal_prefixes_give_equal_hashes_and_a_change_changes_every_later_block() {
        let a: Vec<u32> = (0..40).collect();
        let mut b = a.clone();
        b[20] = 999;
        let (ha, hb) = (block_hashes(&a, 16), block_hashes(&b, 16));
        assert_eq!(ha.len(), 2, "two full blocks; the 8 trailing tokens have no hash");
        assert_eq!(ha[0], hb[0]);
        assert_ne!(ha[1], hb[1]);
        let mut c = a.clone();
        c[3] = 7;
        let hc = block_hashes(&c, 16);
        assert_ne!(ha[0], hc[0]);
        assert_ne!(ha[1], hc[1], "the chain carries an early difference into later blocks");
    }

    #[test]
    fn hashes_are_stable_across_processes() {
        // Routers and workers in different processes must agree on these values.
        assert_eq!(block_hashes(&[1, 2, 3, 4], 2), block_hashes(&[1, 2, 3, 4, 5], 2));
        assert_eq!(block_hashes(&[1, 2], 2), vec![chain_hash(0, &[1, 2])]);
        // Pinned: a change here would split a fleet of mixed versions.
        assert_eq!(block_hashes(&[1, 2, 3, 4], 2), vec![0xa91a_b0c1_027b_9366, 0x03df_8295_7160_5c60]);
    }
}
