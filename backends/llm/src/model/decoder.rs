//! A llama-family decoder (llama, mistral, qwen2) whose forward pass runs many sequences at once:
//! the rows of every sequence in the batch (a whole prompt chunk for a new one, one token for a
//! running one) go through each weight matrix together, and only attention runs per sequence,
//! against that sequence's own KV cache. Decoding is bound by reading the weights, so one
//! batched step costs little more than a step of a single sequence. Keys and values live in a
//! paged [`KvStore`]; each sequence brings its block table.

use candle_core::quantized::QMatMul;
use candle_core::{DType, Device, Module, Result, Tensor};

use super::config::{DecoderConfig, RopeStyle, rope_inverse_frequencies};
use super::cpu_attention;
use super::dense::F32Linear;
use super::paged_kv::{KvLayout, KvStore};
use super::q8_0::Q8_0Linear;
use crate::block_pool::BlockId;
use crate::lora::{LoraAdapter, Target};

/// A projection: quantized (GGUF) or dense (safetensors) weights, with an optional bias.
#[derive(Debug)]
pub(crate) struct Linear {
    pub weight: Projection,
    pub bias: Option<Tensor>,
}

/// Who multiplies a projection's weights: our tiled kernel for Q8_0 on x86 CPUs, our dense one
/// for float weights on the CPU (both batch-invariant), candle for everything else (other GGUF
/// block types, whose CPU products are one dot product per row and column; GPUs).
#[derive(Debug)]
pub(crate) enum Projection {
    Candle(QMatMul),
    Q8_0(Q8_0Linear),
    F32(F32Linear),
}

impl Linear {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let y = match &self.weight {
            Projection::Candle(weight) => weight.forward(x)?,
            Projection::Q8_0(weight) => weight.forward(x)?,
            Projection::F32(weight) => weight.forward(x)?,
        };
        match &self.bias {
            Some(bias) => y.broadcast_add(bias),
            None => Ok(y),
        }
    }
}

#[derive(Debug)]
pub(crate) struct Layer {
    pub attention_norm: Tensor,
    pub q: Linear,
    pub k: Linear,
    pub v: Linear,
    pub o: Linear,
    pub mlp_norm: Tensor,
    pub gate: Linear,
    pub up: Linear,
    pub down: Linear,
}

#[derive(Debug)]
pub(crate) struct Weights {
    /// `[vocab, hidden]`, dequantized: rows are looked up, not multiplied.
    pub embeddings: Tensor,
    pub layers: Vec<Layer>,
    pub norm: Tensor,
    pub lm_head: Linear,
}

/// One sequence's part of a batched forward pass: the tokens to feed at positions `cached..`,
/// after the `cached` positions its blocks already hold. `blocks` must cover every position up to
/// the last new one; the new keys and values are written into them.
#[derive(Debug, Clone, Copy)]
pub(crate) struct SequenceInput<'a> {
    pub tokens: &'a [u32],
    pub cached: usize,
    pub blocks: &'a [BlockId],
    /// The adapter whose deltas apply to this sequence's rows, if any.
    pub lora: Option<&'a LoraAdapter>,
}

/// The rows of the batch one sequence with an adapter fed.
struct AdaptedRows<'a> {
    start: usize,
    len: usize,
    adapter: &'a LoraAdapter,
}

/// A projection of the batch's rows, with each adapted sequence's low-rank delta added to its own
/// rows (the base weights are shared, never merged).
fn project(linear: &Linear, x: &Tensor, layer: usize, target: Target, adapted: &[AdaptedRows<'_>]) -> Result<Tensor> {
    let mut y = linear.forward(x)?;
    for rows in adapted {
        let Some(pair) = rows.adapter.pair(layer, target) else { continue };
        let delta = pair.delta(&x.narrow(0, rows.start, rows.len)?)?.to_dtype(y.dtype())?;
        let updated = (y.narrow(0, rows.start, rows.len)? + delta)?;
        let width = y.dim(1)?;
        y = y.slice_assign(&[rows.start..rows.start + rows.len, 0..width], &updated)?;
    }
    Ok(y)
}

/// A sequence's rows in the store, worked out once per forward pass for every layer.
struct Placement {
    /// Physical rows of positions `0..cached + n`.
    rows: Vec<u32>,
    /// The same as a tensor, for gathering (devices other than the CPU).
    index: Option<Tensor>,
}

#[derive(Debug)]
pub(crate) struct DecoderModel {
    config: DecoderConfig,
    weights: Weights,
    /// `[context, rope_dim / 2]` tables, indexed by position.
    cos: Tensor,
    sin: Tensor,
    device: Device,
}

impl DecoderModel {
    pub(crate) fn new(config: DecoderConfig, weights: Weights, device: Device) -> Result<DecoderModel> {
        if config.rope_dim != config.head_dim {
            candle_core::bail!(
                "partial rotary embeddings (rope_dim {} < head_dim {}) are not supported",
                config.rope_dim,
                config.head_dim
            );
        }
        let inverse = rope_inverse_frequencies(&config);
        let half = inverse.len();
        let positions = config.context_length;
        let mut angles = Vec::with_capacity(positions * half);
        for position in 0..positions {
            angles.extend(inverse.iter().map(|f| position as f32 * f));
        }
        let angles = Tensor::from_vec(angles, (positions, half), &device)?;
        Ok(DecoderModel { cos: angles.cos()?, sin: angles.sin()?, config, weights, device })
    }

    pub(crate) fn config(&self) -> &DecoderConfig {
        &self.config
    }

    /// A KV store of `blocks` blocks of `block_size` positions for this model.
    pub(crate) fn new_kv_store(&self, blocks: usize, block_size: usize) -> Result<KvStore> {
        let c = &self.config;
        let layout = KvLayout {
            layers: c.num_layers,
            kv_heads: c.num_kv_heads,
            head_dim: c.head_dim,
            dtype: self.weights.embeddings.dtype(),
        };
        KvStore::new(layout, blocks, block_size, &self.device)
    }

    /// The element type of the KV store.
    pub(crate) fn kv_dtype(&self) -> candle_core::DType {
        self.weights.embeddings.dtype()
    }

    /// Bytes one position of KV cache takes over all layers.
    pub(crate) fn kv_bytes_per_token(&self) -> usize {
        let c = &self.config;
        2 * c.num_layers * c.num_kv_heads * c.head_dim * self.weights.embeddings.dtype().size_in_bytes()
    }

    /// Runs every sequence's tokens through the model, writes their keys and values into the
    /// sequences' blocks of `kv`, and returns the logits after each sequence's last token:
    /// `[sequences, vocab]`, F32.
    pub(crate) fn forward(&self, kv: &KvStore, batch: &[SequenceInput<'_>]) -> Result<Tensor> {
        let (hidden, last_rows) = self.hidden(kv, batch)?;
        self.logits_of_rows(&hidden, &last_rows)
    }

    /// The logits of the given rows of [`hidden`](Self::hidden)'s states: `[rows, vocab]`, F32.
    pub(crate) fn logits_of_rows(&self, hidden: &Tensor, rows: &[u32]) -> Result<Tensor> {
        let rows = Tensor::new(rows, &self.device)?;
        let x = hidden.index_select(&rows, 0)?;
        let x = candle_nn::ops::rms_norm(&x, &self.weights.norm, self.config.rms_norm_eps as f32)?;
        self.weights.lm_head.forward(&x)?.to_dtype(DType::F32)
    }

    /// The forward pass up to the final norm: every fed row's hidden state `[rows, hidden]`
    /// (sequence after sequence, in batch order), and the row of each sequence's last token.
    pub(crate) fn hidden(&self, kv: &KvStore, batch: &[SequenceInput<'_>]) -> Result<(Tensor, Vec<u32>)> {
        let c = &self.config;
        let mut tokens = Vec::new();
        let mut positions = Vec::new();
        let mut last_rows = Vec::with_capacity(batch.len());
        let mut placements = Vec::with_capacity(batch.len());
        let mut adapted = Vec::new();
        for input in batch {
            if let Some(adapter) = input.lora {
                adapted.push(AdaptedRows { start: tokens.len(), len: input.tokens.len(), adapter });
            }
            if input.tokens.is_empty() {
                candle_core::bail!("a sequence in the batch has no tokens to feed");
            }
            let start = input.cached;
            let total = start + input.tokens.len();
            if total > c.context_length {
                candle_core::bail!("the sequence would pass the context length {}", c.context_length);
            }
            tokens.extend_from_slice(input.tokens);
            positions.extend((start..total).map(|p| p as u32));
            last_rows.push((tokens.len() - 1) as u32);
            let rows = kv.rows(input.blocks, total)?;
            // The CPU reads the store in place (`cpu_attention`); other devices gather.
            let in_place = self.device.is_cpu() && self.weights.embeddings.dtype() == DType::F32 && !candle_attention();
            let index = if in_place { None } else { Some(Tensor::new(rows.as_slice(), &self.device)?) };
            placements.push(Placement { rows, index });
        }
        let rows = tokens.len();
        let tokens = Tensor::from_vec(tokens, rows, &self.device)?;
        let positions = Tensor::from_vec(positions, rows, &self.device)?;
        let cos = self.cos.index_select(&positions, 0)?;
        let sin = self.sin.index_select(&positions, 0)?;
        let mut x = self.weights.embeddings.index_select(&tokens, 0)?;
        for (index, layer) in self.weights.layers.iter().enumerate() {
            let h = candle_nn::ops::rms_norm(&x, &layer.attention_norm, c.rms_norm_eps as f32)?;
            let attention = self.attention(kv, index, layer, &h, &cos, &sin, batch, &placements, &adapted)?;
            x = (x + project(&layer.o, &attention, index, Target::O, &adapted)?)?;
            let h = candle_nn::ops::rms_norm(&x, &layer.mlp_norm, c.rms_norm_eps as f32)?;
            let gate = project(&layer.gate, &h, index, Target::Gate, &adapted)?;
            let gated = (candle_nn::ops::silu(&gate)? * project(&layer.up, &h, index, Target::Up, &adapted)?)?;
            x = (x + project(&layer.down, &gated, index, Target::Down, &adapted)?)?;
        }
        Ok((x, last_rows))
    }

    /// Self-attention of one layer for every sequence in the batch: `[rows, heads * head_dim]`.
    #[allow(clippy::too_many_arguments)]
    fn attention(
        &self,
        kv: &KvStore,
        layer_index: usize,
        layer: &Layer,
        h: &Tensor,
        cos: &Tensor,
        sin: &Tensor,
        batch: &[SequenceInput<'_>],
        placements: &[Placement],
        adapted: &[AdaptedRows<'_>],
    ) -> Result<Tensor> {
        let c = &self.config;
        let rows = h.dims()[0];
        // [heads, rows, head_dim], rotated.
        let q = project(&layer.q, h, layer_index, Target::Q, adapted)?;
        let q = self.rotate(&q.reshape((rows, c.num_heads, c.head_dim))?, cos, sin)?;
        let k = project(&layer.k, h, layer_index, Target::K, adapted)?;
        let k = self.rotate(&k.reshape((rows, c.num_kv_heads, c.head_dim))?, cos, sin)?;
        let v = project(&layer.v, h, layer_index, Target::V, adapted)?;
        let v = v.reshape((rows, c.num_kv_heads, c.head_dim))?.transpose(0, 1)?;
        let group = c.kv_group_size();
        let scale = 1.0 / (c.head_dim as f64).sqrt();
        let width = c.num_heads * c.head_dim;
        // On the CPU every sequence's output goes straight into one buffer; elsewhere they are
        // concatenated.
        let mut buffer = (self.device.is_cpu() && q.dtype() == DType::F32).then(|| vec![0f32; rows * width]);
        let mut outputs = Vec::with_capacity(batch.len());
        let mut offset = 0;
        for (input, placement) in batch.iter().zip(placements) {
            let n = input.tokens.len();
            let start = input.cached;
            kv.write(layer_index, &placement.rows[start..], &k.narrow(1, offset, n)?, &v.narrow(1, offset, n)?)?;
            let rows_out = offset * width..(offset + n) * width;
            match (buffer.as_mut(), &placement.index) {
                (Some(buffer), None) if cpu_attention::applies(&q) => {
                    let (keys, values) = kv.layer(layer_index)?;
                    let paged = cpu_attention::Paged { keys, values, rows: &placement.rows };
                    cpu_attention::attend(&q, offset, paged, start, scale as f32, &mut buffer[rows_out])?;
                }
                (_, index) => {
                    let Some(index) = index else { candle_core::bail!("no gather index for a prompt chunk") };
                    let (keys, values) = kv.gather(layer_index, index)?;
                    // Query heads that share a KV head sit next to each other: fold them into
                    // rows so one matmul per KV head serves the whole group, with no copies of
                    // K and V.
                    let q = q.narrow(1, offset, n)?.contiguous()?.reshape((c.num_kv_heads, group * n, c.head_dim))?;
                    let mut scores = (q.matmul(&keys.t()?)? * scale)?;
                    if n > 1 {
                        scores = scores.broadcast_add(&causal_mask(group, n, start, &self.device)?)?;
                    }
                    let probabilities = candle_nn::ops::softmax_last_dim(&scores)?;
                    let y = probabilities.matmul(&values)?; // [kv_heads, group * n, head_dim]
                    let y = y.reshape((c.num_heads, n, c.head_dim))?.transpose(0, 1)?.reshape((n, width))?;
                    match buffer.as_mut() {
                        Some(buffer) => buffer[rows_out].copy_from_slice(&y.flatten_all()?.to_vec1::<f32>()?),
                        None => outputs.push(y),
                    }
                }
            }
            offset += n;
        }
        match buffer {
            Some(buffer) => Tensor::from_vec(buffer, (rows, width), &self.device),
            None => Tensor::cat(&outputs, 0),
        }
    }

    /// Rotary embedding of `[rows, heads, head_dim]`, each row at its own position; returns
    /// `[heads, rows, head_dim]`.
    fn rotate(&self, x: &Tensor, cos: &Tensor, sin: &Tensor) -> Result<Tensor> {
        let x = x.transpose(0, 1)?.unsqueeze(0)?.contiguous()?;
        let rotated = match self.config.rope_style {
            RopeStyle::Interleaved => candle_nn::rotary_emb::rope_i(&x, cos, sin)?,
            RopeStyle::Halves => candle_nn::rotary_emb::rope(&x, cos, sin)?,
        };
        rotated.squeeze(0)
    }
}

/// Measurements only (`throughput.rs`): attention through candle's ops on the CPU too, whose
/// results depend on the shape of the call, to see what the batch-invariant kernel costs.
#[cfg(test)]
pub(crate) static CANDLE_ATTENTION: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

fn candle_attention() -> bool {
    #[cfg(test)]
    return CANDLE_ATTENTION.load(std::sync::atomic::Ordering::Relaxed);
    #[cfg(not(test))]
    false
}

/// The additive mask for `n` new positions after `start` cached ones, for `group` query heads
/// folded into rows: row `g * n + t` sees positions `0..=start + t`.
fn causal_mask(group: usize, n: usize, start: usize, device: &Device) -> Result<Tensor> {
    let total = start + n;
    let mut mask = Vec::with_capacity(group * n * total);
    for _ in 0..group {
        for t in 0..n {
            mask.extend((0..total).map(|j| if j <= start + t { 0.0f32 } else { f32::NEG_INFINITY }));
        }
    }
    Tensor::from_vec(mask, (group * n, total), device)
}

/// The index of the largest value of each row, `[rows]` (greedy decoding in tests).
#[cfg(test)]
pub(crate) fn argmax_rows(logits: &Tensor) -> Result<Vec<u32>> {
    logits.argmax(candle_core::D::Minus1)?.to_vec1::<u32>()
}
