//! Loading a llama-family decoder from a Hugging Face folder: `config.json` and
//! `*.safetensors` (one file or shards), as F32 on the CPU (candle converts BF16/F16).

use std::path::{Path, PathBuf};

use candle_core::quantized::QMatMul;
use candle_core::safetensors::MmapedSafetensors;
use candle_core::{DType, Device, Tensor};

use super::config::DecoderConfig;
use super::decoder::{Layer, Linear, Projection, Weights};
use super::dense::F32Linear;

pub(crate) fn read_config(dir: &Path) -> Result<DecoderConfig, String> {
    let path = dir.join("config.json");
    let text = std::fs::read_to_string(&path).map_err(|e| format!("{}: {e}", path.display()))?;
    DecoderConfig::from_hf_json(&text)
}

fn safetensors_files(dir: &Path) -> Result<Vec<PathBuf>, String> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|e| format!("{}: {e}", dir.display()))?
        .filter_map(|entry| entry.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "safetensors"))
        .collect();
    files.sort();
    if files.is_empty() {
        return Err(format!("{}: no *.safetensors files", dir.display()));
    }
    Ok(files)
}

pub(crate) fn load_weights(dir: &Path, config: &DecoderConfig, device: &Device) -> Result<Weights, String> {
    let files = safetensors_files(dir)?;
    // SAFETY: the files are mapped read-only and every tensor is copied out (converted to F32)
    // before the mapping is dropped at the end of this function; a file changed underneath while
    // loading could give wrong weights, the same as reading it would.
    let tensors = unsafe { MmapedSafetensors::multi(&files) }.map_err(|e| format!("{}: {e}", dir.display()))?;
    let load = |name: &str| -> Result<Tensor, String> {
        tensors.load(name, device).and_then(|t| t.to_dtype(DType::F32)).map_err(|e| format!("safetensors tensor '{name}': {e}"))
    };
    let linear = |prefix: &str, bias: bool| -> Result<Linear, String> {
        let weight = load(&format!("{prefix}.weight"))?;
        let bias = if bias { Some(load(&format!("{prefix}.bias"))?) } else { None };
        Ok(Linear { weight: projection(weight)?, bias })
    };
    let embeddings = load("model.embed_tokens.weight")?;
    let lm_head = if config.tie_word_embeddings || tensors.get("lm_head.weight").is_err() {
        Linear { weight: projection(embeddings.clone())?, bias: None }
    } else {
        linear("lm_head", false)?
    };
    let mut layers = Vec::with_capacity(config.num_layers);
    for i in 0..config.num_layers {
        let p = format!("model.layers.{i}");
        let bias = config.attention_bias;
        layers.push(Layer {
            attention_norm: load(&format!("{p}.input_layernorm.weight"))?,
            q: linear(&format!("{p}.self_attn.q_proj"), bias)?,
            k: linear(&format!("{p}.self_attn.k_proj"), bias)?,
            v: linear(&format!("{p}.self_attn.v_proj"), bias)?,
            o: linear(&format!("{p}.self_attn.o_proj"), false)?,
            mlp_norm: load(&format!("{p}.post_attention_layernorm.weight"))?,
            gate: linear(&format!("{p}.mlp.gate_proj"), false)?,
            up: linear(&format!("{p}.mlp.up_proj"), false)?,
            down: linear(&format!("{p}.mlp.down_proj"), false)?,
        });
    }
    Ok(Weights { embeddings, layers, norm: load("model.norm.weight")?, lm_head })
}

/// Dense weights on the CPU go to the batch-invariant kernel (`dense.rs`), elsewhere to candle.
fn projection(weight: Tensor) -> Result<Projection, String> {
    Ok(match F32Linear::from_tensor(&weight)? {
        Some(dense) => Projection::F32(dense),
        None => Projection::Candle(QMatMul::Tensor(weight)),
    })
}
