//! A KV store for tests that drive the model directly: sequences get blocks from a bump
//! allocator, four positions each, so every test also runs through scattered block tables.

use candle_core::Tensor;

use super::{DecoderModel, KvStore, SequenceInput};
use crate::block_pool::BlockId;

const BLOCK: usize = 4;
const BLOCKS: usize = 2048;

/// One sequence's block table and length.
#[derive(Debug, Default)]
pub(crate) struct Sequence {
    blocks: Vec<BlockId>,
    len: usize,
}

impl Sequence {
    /// A new sequence whose first `blocks` blocks are this one's (full ones, as the prefix cache
    /// would hand them out).
    pub(crate) fn sharing(&self, blocks: usize) -> Sequence {
        assert!(blocks * BLOCK <= self.len, "only full blocks are shared");
        Sequence { blocks: self.blocks[..blocks].to_vec(), len: blocks * BLOCK }
    }
}

pub(crate) struct TestKv {
    store: KvStore,
    next: BlockId,
}

impl TestKv {
    pub(crate) fn new(model: &DecoderModel) -> TestKv {
        TestKv { store: model.new_kv_store(BLOCKS, BLOCK).expect("a KV store"), next: 0 }
    }

    /// Feeds each sequence its tokens in one batched forward pass; the logits after each.
    pub(crate) fn forward(&mut self, model: &DecoderModel, batch: &mut [(&[u32], &mut Sequence)]) -> Tensor {
        for (tokens, sequence) in batch.iter_mut() {
            while sequence.blocks.len() * BLOCK < sequence.len + tokens.len() {
                assert!((self.next as usize) < BLOCKS, "the test KV store is full");
                sequence.blocks.push(self.next);
                self.next += 1;
            }
        }
        let inputs: Vec<SequenceInput<'_>> = batch
            .iter()
            .map(|(tokens, sequence)| SequenceInput { tokens, cached: sequence.len, blocks: &sequence.blocks, lora: None })
            .collect();
        let logits = model.forward(&self.store, &inputs).expect("a forward pass");
        for (tokens, sequence) in batch.iter_mut() {
            sequence.len += tokens.len();
        }
        logits
    }

    /// The keys and values of a sequence's blocks, as the offload tier and KV transfers read
    /// them.
    pub(crate) fn read_blocks(&self, sequence: &Sequence) -> Vec<Vec<f32>> {
        sequence.blocks.iter().map(|&b| self.store.read_block(b).expect("a block reads")).collect()
    }

    /// A sequence of `len` positions whose blocks are new ones filled with `blocks` (read from
    /// this store or another), as an offloaded prefix coming back or a transferred one arriving.
    pub(crate) fn adopt(&mut self, blocks: &[Vec<f32>], len: usize) -> Sequence {
        assert!(len <= blocks.len() * BLOCK, "{len} positions in {} blocks", blocks.len());
        let mut sequence = Sequence { blocks: Vec::new(), len };
        for data in blocks {
            assert!((self.next as usize) < BLOCKS, "the test KV store is full");
            self.store.write_block(self.next, data).expect("a block writes");
            sequence.blocks.push(self.next);
            self.next += 1;
        }
        sequence
    }

    /// [`forward`](Self::forward) of one sequence.
    pub(crate) fn feed(&mut self, model: &DecoderModel, tokens: &[u32], sequence: &mut Sequence) -> Tensor {
        self.forward(model, &mut [(tokens, sequence)])
    }
}
