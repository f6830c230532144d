//! Loading a llama-family decoder from a GGUF file: the shape from the metadata, quantized
//! matrices kept quantized (candle's `QMatMul` multiplies them as they are).

use std::fs::File;
use std::sync::Arc;

use candle_core::quantized::gguf_file::{Content, Value};
use candle_core::quantized::{GgmlDType, QMatMul, QTensor};
use candle_core::{Device, Tensor};

use super::config::{DecoderConfig, RopeStyle};
use super::decoder::{Layer, Linear, Projection, Weights};
use super::dense::F32Linear;
use super::q8_0::Q8_0Linear;

/// The `general.architecture`s this engine runs from GGUF (mistral GGUFs say `llama`).
const GGUF_ARCHITECTURES: &[&str] = &["llama", "qwen2"];

fn metadata<'c>(content: &'c Content, key: &str) -> Result<&'c Value, String> {
    content.metadata.get(key).ok_or_else(|| format!("GGUF metadata has no '{key}'"))
}

fn metadata_usize(content: &Content, key: &str) -> Result<usize, String> {
    let value = metadata(content, key)?;
    value
        .to_u32()
        .map(|v| v as usize)
        .or_else(|_| value.to_u64().map(|v| v as usize))
        .or_else(|_| value.to_i32().map(|v| v.max(0) as usize))
        .map_err(|e| format!("GGUF metadata '{key}': {e}"))
}

pub(crate) fn config_from_gguf(content: &Content) -> Result<DecoderConfig, String> {
    let architecture =
        metadata(content, "general.architecture")?.to_string().map_err(|e| format!("general.architecture: {e}"))?.clone();
    if !GGUF_ARCHITECTURES.contains(&architecture.as_str()) {
        return Err(format!(
            "GGUF architecture '{architecture}' is not supported (supported: {})",
            GGUF_ARCHITECTURES.join(", ")
        ));
    }
    let key = |k: &str| format!("{architecture}.{k}");
    if content.metadata.get(&key("expert_count")).and_then(|v| v.to_u32().ok()).unwrap_or(0) > 1 {
        return Err("mixture-of-experts GGUF models are not supported".to_string());
    }
    let hidden_size = metadata_usize(content, &key("embedding_length"))?;
    let num_heads = metadata_usize(content, &key("attention.head_count"))?;
    let num_kv_heads = metadata_usize(content, &key("attention.head_count_kv")).unwrap_or(num_heads);
    if num_heads == 0 || num_kv_heads == 0 || num_heads % num_kv_heads != 0 || hidden_size % num_heads != 0 {
        return Err(format!("GGUF head counts do not fit: {num_heads} heads, {num_kv_heads} KV heads, width {hidden_size}"));
    }
    let head_dim = metadata_usize(content, &key("attention.key_length")).unwrap_or(hidden_size / num_heads);
    let vocab_size = match content.tensor_infos.get("token_embd.weight") {
        Some(info) => info.shape.dims().first().copied().unwrap_or(0),
        None => return Err("GGUF has no token_embd.weight".to_string()),
    };
    let rms_norm_eps =
        metadata(content, &key("attention.layer_norm_rms_epsilon"))?.to_f32().map_err(|e| format!("rms epsilon: {e}"))? as f64;
    Ok(DecoderConfig {
        rope_style: if architecture == "llama" { RopeStyle::Interleaved } else { RopeStyle::Halves },
        attention_bias: content.tensor_infos.contains_key("blk.0.attn_q.bias"),
        tie_word_embeddings: !content.tensor_infos.contains_key("output.weight"),
        hidden_size,
        intermediate_size: metadata_usize(content, &key("feed_forward_length"))?,
        num_layers: metadata_usize(content, &key("block_count"))?,
        num_heads,
        num_kv_heads,
        head_dim,
        rope_dim: metadata_usize(content, &key("rope.dimension_count")).unwrap_or(head_dim),
        rope_theta: content.metadata.get(&key("rope.freq_base")).and_then(|v| v.to_f32().ok()).unwrap_or(10_000.0),
        rope_scaling: None,
        rms_norm_eps,
        vocab_size,
        context_length: metadata_usize(content, &key("context_length")).unwrap_or(4096),
        architecture,
    })
}

/// GGUF block types candle multiplies with plain scalar code on x86 (no AVX kernel). Their
/// matrices are re-quantized to Q8_0 at load, which has one: several times faster per row, so
/// decoding gets faster and batching pays (a scalar kernel is compute-bound, so rows in one step
/// cost as much as rows in separate steps). Q8_0 keeps 8 bits per weight, so the rounding it adds
/// is far below the 4 or 5 bits these types carry.
const SLOW_ON_X86: &[GgmlDType] = &[GgmlDType::Q4_1, GgmlDType::Q5_0, GgmlDType::Q5_1];

/// Whether matrices of slow block types are re-quantized to Q8_0 on the CPU.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Requantize {
    Never,
    SlowTypesOnCpu,
}

/// Who multiplies Q8_0 matrices on an x86 CPU.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Q8_0Kernel {
    /// `tritium-kernels`' tiled matmul (see `q8_0.rs`).
    Tiled,
    /// candle's `QMatMul`, as everywhere else (reference tests, before/after measurements).
    #[cfg_attr(not(test), allow(dead_code, reason = "only tests load with candle's kernel"))]
    Candle,
}

/// How a GGUF's matrices are prepared at load.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct WeightPolicy {
    pub requantize: Requantize,
    pub q8_0: Q8_0Kernel,
}

impl WeightPolicy {
    /// The fastest on this machine: what the engine loads with.
    pub(crate) const FAST: WeightPolicy = WeightPolicy { requantize: Requantize::SlowTypesOnCpu, q8_0: Q8_0Kernel::Tiled };
    /// Exactly what candle's own quantized models run: the file's block types through `QMatMul`.
    #[cfg(test)]
    pub(crate) const AS_CANDLE: WeightPolicy = WeightPolicy { requantize: Requantize::Never, q8_0: Q8_0Kernel::Candle };
}

fn requantized(tensor: QTensor, device: &Device, policy: Requantize) -> Result<QTensor, String> {
    let slow = cfg!(target_arch = "x86_64") && SLOW_ON_X86.contains(&tensor.dtype());
    let columns = tensor.shape().dims().last().copied().unwrap_or(0);
    if policy == Requantize::Never || !device.is_cpu() || !slow || columns % GgmlDType::Q8_0.block_size() != 0 {
        return Ok(tensor);
    }
    let dense = tensor.dequantize(device).map_err(|e| e.to_string())?;
    QTensor::quantize(&dense, GgmlDType::Q8_0).map_err(|e| e.to_string())
}

pub(crate) fn load_weights(
    content: &Content,
    file: &mut File,
    config: &DecoderConfig,
    device: &Device,
    policy: WeightPolicy,
) -> Result<Weights, String> {
    let mut qtensor = |name: &str| {
        let tensor = content.tensor(file, name, device).map_err(|e| format!("GGUF tensor '{name}': {e}"))?;
        requantized(tensor, device, policy.requantize).map_err(|e| format!("GGUF tensor '{name}': {e}"))
    };
    let projection = |weight: Arc<QTensor>, bias: Option<Tensor>| linear_from(weight, bias, policy.q8_0);
    let embeddings_q = Arc::new(qtensor("token_embd.weight")?);
    let embeddings = embeddings_q.dequantize(device).map_err(|e| format!("token_embd.weight: {e}"))?;
    let norm = dequantized(qtensor("output_norm.weight")?, device)?;
    let lm_head = if config.tie_word_embeddings {
        projection(Arc::clone(&embeddings_q), None)?
    } else {
        projection(Arc::new(qtensor("output.weight")?), None)?
    };
    let mut layers = Vec::with_capacity(config.num_layers);
    for i in 0..config.num_layers {
        let mut linear = |name: &str, bias: bool| -> Result<Linear, String> {
            let weight = Arc::new(qtensor(&format!("blk.{i}.{name}.weight"))?);
            let bias = if bias { Some(dequantized(qtensor(&format!("blk.{i}.{name}.bias"))?, device)?) } else { None };
            projection(weight, bias)
        };
        let with_bias = config.attention_bias;
        layers.push(Layer {
            q: linear("attn_q", with_bias)?,
            k: linear("attn_k", with_bias)?,
            v: linear("attn_v", with_bias)?,
            o: linear("attn_output", false)?,
            gate: linear("ffn_gate", false)?,
            up: linear("ffn_up", false)?,
            down: linear("ffn_down", false)?,
            attention_norm: dequantized(qtensor(&format!("blk.{i}.attn_norm.weight"))?, device)?,
            mlp_norm: dequantized(qtensor(&format!("blk.{i}.ffn_norm.weight"))?, device)?,
        });
    }
    Ok(Weights { embeddings, layers, norm, lm_head })
}

fn linear_from(weight: Arc<QTensor>, bias: Option<Tensor>, q8_0: Q8_0Kernel) -> Result<Linear, String> {
    if q8_0 == Q8_0Kernel::Tiled {
        if let Some(kernel) = Q8_0Linear::from_qtensor(&weight)? {
            return Ok(Linear { weight: Projection::Q8_0(kernel), bias });
        }
        // Float matrices would go through candle's GEMM, whose sums follow the call's shape.
        if FLOAT_TYPES.contains(&weight.dtype()) && weight.device().is_cpu() {
            let dense = weight.dequantize(&Device::Cpu).map_err(|e| e.to_string())?;
            if let Some(kernel) = F32Linear::from_tensor(&dense)? {
                return Ok(Linear { weight: Projection::F32(kernel), bias });
            }
        }
    }
    Ok(Linear { weight: Projection::Candle(QMatMul::from_arc(weight).map_err(|e| e.to_string())?), bias })
}

/// GGUF matrices stored as floats, which candle multiplies densely.
const FLOAT_TYPES: &[GgmlDType] = &[GgmlDType::F32, GgmlDType::F16, GgmlDType::BF16];

fn dequantized(tensor: QTensor, device: &Device) -> Result<Tensor, String> {
    tensor.dequantize(device).map_err(|e| e.to_string())
}
