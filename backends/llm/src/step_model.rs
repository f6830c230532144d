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
    /// [`forward`](Self::forward), and besides, for each sequence whose `score` is set, the
    /// logits of every row it fed, handed to `on_row(sequence, row, logits)` in order a few rows
    /// at a time (prompt scoring), so no vocabulary-sized row outlives its turn.
    fn forward_scoring(
        &mut self,
        inputs: &[SequenceInput<'_>],
        score: &[bool],
        on_row: OnRow<'_>,
    ) -> Result<Vec<Vec<f32>>, String>;
    /// Block `id`'s keys and values as f32 (see `KvStore::read_block`).
    fn read_block(&self, id: BlockId) -> Result<Vec<f32>, String>;
    /// Writes what [`read_block`](Self::read_block) gave back into block `id`.
    fn write_block(&mut self, id: BlockId, data: &[f32]) -> Result<(), String>;
}

/// Receives scored rows: the sequence's index in the batch, the row within what it fed, logits.
pub(crate) type OnRow<'a> = &'a mut dyn FnMut(usize, usize, &[f32]);

/// Rows of logits made at once while scoring: 16 rows of a 150k vocabulary are 10 MB.
const SCORED_ROWS_AT_ONCE: usize = 16;

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

    fn forward_scoring(
        &mut self,
        inputs: &[SequenceInput<'_>],
        score: &[bool],
        on_row: OnRow<'_>,
    ) -> Result<Vec<Vec<f32>>, String> {
        let mut run = || -> candle_core::Result<Vec<Vec<f32>>> {
            let (hidden, last_rows) = self.model.hidden(&self.kv, inputs)?;
            let mut start = 0u32;
            for (index, input) in inputs.iter().enumerate() {
                let fed = input.tokens.len() as u32;
                if score.get(index).copied().unwrap_or(false) {
                    let rows: Vec<u32> = (start..start + fed).collect();
                    for (chunk_index, chunk) in rows.chunks(SCORED_ROWS_AT_ONCE).enumerate() {
                        let logits = self.model.logits_of_rows(&hidden, chunk)?.to_vec2::<f32>()?;
                        for (offset, row) in logits.iter().enumerate() {
                            on_row(index, chunk_index * SCORED_ROWS_AT_ONCE + offset, row);
                        }
                    }
                }
                start += fed;
            }
            self.model.logits_of_rows(&hidden, &last_rows)?.to_vec2::<f32>()
        };
        run().map_err(|e| e.to_string())
    }

    fn read_block(&self, id: BlockId) -> Result<Vec<f32>, String> {
        self.kv.read_block(id).map_err(|e| e.to_string())
    }

    fn write_block(&mut self, id: BlockId, data: &[f32]) -> Result<(), String> {
        self.kv.write_block(id, data).map_err(|e| e.to_string())
    }
}
