//! What the engine loop runs each step: a model that writes the keys and values of the tokens
//! it is fed into their KV blocks and returns the logits after each sequence's last token. The
//! real one is candle's decoder over a paged KV store; the mock engine's simulates the time a
//! step takes and writes printable text. Everything else (queue, admission, blocks, prefix
//! cache, preemption, offload, sampling, KV transfer) is the engine loop's, shared by both.

use super::block_pool::BlockId;
use super::model::{DecoderModel, KvStore, SequenceInput};

/// A model as the engine loop drives it.
pub(crate) trait StepModel: Send + 'static {
    /// Feeds each sequence its tokens (positions `cached..`), writing their keys and values into
    /// the sequence's blocks; the logits after each sequence's last token, in order.
    fn forward(&mut self, inputs: &[SequenceInput<'_>]) -> Result<Vec<Vec<f32>>, String>;
    /// Block `id`'s keys and values as f32 (see `KvStore::read_block`).
    fn read_block(&self, id: BlockId) -> Result<Vec<f32>, String>;
    /// Writes what [`read_block`](Self::read_block) gave back into block `id`.
    fn write_block(&mut self, id: BlockId, data: &[f32]) -> Result<(), String>;
}

/// The sizes the engine front needs before the loop starts.
#[derive(Debug, Clone)]
pub(crate) struct ModelShape {
    pub vocab_size: usize,
    pub layers: usize,
    pub kv_heads: usize,
    pub head_dim: usize,
    /// The KV store's element type, as KV transfers name it.
    pub kv_dtype: String,
    /// Bytes one position of KV cache takes over all layers.
    pub kv_bytes_per_token: usize,
}

/// candle's decoder over its paged KV store.
pub(crate) struct CandleStep {
    pub model: DecoderModel,
    pub kv: KvStore,
}

impl CandleStep {
    pub(crate) fn shape(model: &DecoderModel) -> ModelShape {
        let c = model.config();
        ModelShape {
            vocab_size: c.vocab_size,
            layers: c.num_layers,
            kv_heads: c.num_kv_heads,
            head_dim: c.head_dim,
            kv_dtype: format!("{:?}", model.kv_dtype()).to_lowercase(),
            kv_bytes_per_token: model.kv_bytes_per_token(),
        }
    }
}

impl StepModel for CandleStep {
    fn forward(&mut self, inputs: &[SequenceInput<'_>]) -> Result<Vec<Vec<f32>>, String> {
        self.model.forward(&self.kv, inputs).and_then(|logits| logits.to_vec2::<f32>()).map_err(|e| e.to_string())
    }

    fn read_block(&self, id: BlockId) -> Result<Vec<f32>, String> {
        self.kv.read_block(id).map_err(|e| e.to_string())
    }

    fn write_block(&mut self, id: BlockId, data: &[f32]) -> Result<(), String> {
        self.kv.write_block(id, data).map_err(|e| e.to_string())
    }
}
