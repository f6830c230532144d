//! LoRA adapters: low-rank deltas on a decoder's projections, applied per sequence on top of the
//! shared base weights (`y = W x + scale * B (A x)`, never merged), so base and adapter requests
//! share a batch.
//!
//! Two formats are read: GGUF adapters as llama.cpp writes them (`general.type = adapter`,
//! `adapter.type = lora`, `adapter.lora.alpha`, tensors `blk.N.attn_q.weight.lora_a` / `.lora_b`,
//! whose rows follow the GGUF base's layout already), and PEFT folders (`adapter_config.json` +
//! `adapter_model.safetensors`, `…layers.N.self_attn.q_proj.lora_A.weight`), whose q and k rows
//! are permuted as the GGUF converter permutes the base's when the base is a GGUF llama.
//! Everything is checked before a tensor is read: the architecture, every shape against the base,
//! the rank against `--max-lora-rank`.

use std::collections::HashMap;
use std::io::Read;
use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor};
use serde::Deserialize;

use super::model::config::{DecoderConfig, RopeStyle};
use super::model::dense::F32Linear;

/// A projection an adapter can change.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum Target {
    Q,
    K,
    V,
    O,
    Gate,
    Up,
    Down,
}

impl Target {
    const ALL: [Target; 7] = [Target::Q, Target::K, Target::V, Target::O, Target::Gate, Target::Up, Target::Down];

    fn gguf_name(self) -> &'static str {
        match self {
            Target::Q => "attn_q",
            Target::K => "attn_k",
            Target::V => "attn_v",
            Target::O => "attn_output",
            Target::Gate => "ffn_gate",
            Target::Up => "ffn_up",
            Target::Down => "ffn_down",
        }
    }

    fn peft_name(self) -> &'static str {
        match self {
            Target::Q => "self_attn.q_proj",
            Target::K => "self_attn.k_proj",
            Target::V => "self_attn.v_proj",
            Target::O => "self_attn.o_proj",
            Target::Gate => "mlp.gate_proj",
            Target::Up => "mlp.up_proj",
            Target::Down => "mlp.down_proj",
        }
    }

    /// `(in, out)` features of the base projection.
    fn shape(self, c: &DecoderConfig) -> (usize, usize) {
        let q = c.num_heads * c.head_dim;
        let kv = c.num_kv_heads * c.head_dim;
        match self {
            Target::Q => (c.hidden_size, q),
            Target::K | Target::V => (c.hidden_size, kv),
            Target::O => (q, c.hidden_size),
            Target::Gate | Target::Up => (c.hidden_size, c.intermediate_size),
            Target::Down => (c.intermediate_size, c.hidden_size),
        }
    }
}

/// One projection's low-rank pair, in the batch-invariant kernel's form.
pub(crate) struct LoraPair {
    /// `[rank, in]`.
    a: F32Linear,
    /// `[out, rank]`.
    b: F32Linear,
    scale: f64,
}

impl LoraPair {
    /// `scale * B (A x)` for rows `x` of shape `[rows, in]`: `[rows, out]`, F32.
    pub(crate) fn delta(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        self.b.forward(&self.a.forward(x)?)? * self.scale
    }
}

/// A loaded adapter.
pub(crate) struct LoraAdapter {
    pub name: String,
    /// Where it was read from, as given.
    pub path: String,
    pub rank: usize,
    /// Seeds the chained hashes of its sequences' KV blocks, so the prefix cache never hands a
    /// sequence blocks computed with other weights: derived from the adapter's name and files
    /// ([`identity_seed`]), so every worker that loads the same adapter names its blocks alike
    /// and a router can hash its prompts as they do.
    pub(crate) seed: u64,
    pairs: Vec<HashMap<Target, LoraPair>>,
}

impl std::fmt::Debug for LoraAdapter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LoraAdapter").field("name", &self.name).field("path", &self.path).field("rank", &self.rank).finish()
    }
}

impl LoraAdapter {
    /// The pair for `target` of layer `layer`, when the adapter changes it.
    pub(crate) fn pair(&self, layer: usize, target: Target) -> Option<&LoraPair> {
        self.pairs.get(layer).and_then(|pairs| pairs.get(&target))
    }

    /// Reads the adapter at `path` (a GGUF file, or a PEFT folder) for a base of shape `config`.
    pub(crate) fn load(name: &str, path: &Path, config: &DecoderConfig, max_rank: usize) -> Result<LoraAdapter, String> {
        let (rank, pairs) = if path.is_dir() { peft(path, config, max_rank)? } else { gguf(path, config, max_rank)? };
        if pairs.iter().all(HashMap::is_empty) {
            return Err(format!("the adapter at {} changes no projection", path.display()));
        }
        let seed = identity_seed(name, path)?;
        Ok(LoraAdapter { name: name.to_string(), path: path.display().to_string(), rank, seed, pairs })
    }
}

/// The KV-hash seed of adapter `name` read from `path`: its name, and a CRC-32 and length of
/// each file it was read from (the GGUF file, or every file of the PEFT folder, by name), so the
/// same adapter seeds alike on every worker and other weights under the same name never do.
/// Never 0, the base model's seed.
pub(crate) fn identity_seed(name: &str, path: &Path) -> Result<u64, String> {
    let mut files: Vec<PathBuf> = if path.is_dir() {
        std::fs::read_dir(path)
            .map_err(|e| format!("the adapter folder {} cannot be listed: {}", path.display(), e.kind()))?
            .filter_map(Result::ok)
            .map(|entry| entry.path())
            .filter(|file| file.is_file())
            .collect()
    } else {
        vec![path.to_path_buf()]
    };
    files.sort();
    let mut words: Vec<u32> = name.bytes().map(u32::from).collect();
    let mut buffer = vec![0u8; 1 << 20];
    for file in &files {
        let unreadable = |e: std::io::Error| format!("the adapter file {} cannot be read: {}", file.display(), e.kind());
        let mut reader = std::fs::File::open(file).map_err(unreadable)?;
        let (mut crc, mut length) = (crc32fast::Hasher::new(), 0u64);
        loop {
            let read = reader.read(&mut buffer).map_err(unreadable)?;
            if read == 0 {
                break;
            }
            crc.update(&buffer[..read]);
            length += read as u64;
        }
        words
            .extend(file.file_name().map(|n| n.to_string_lossy().bytes().map(u32::from).collect::<Vec<_>>()).unwrap_or_default());
        words.extend([crc.finalize(), length as u32, (length >> 32) as u32]);
    }
    Ok(tritium_backend_api::kv::chain_hash(0x10aa_da97, &words).max(1))
}

/// A raw pair and the scale its format gives it.
struct RawPair {
    a: Tensor,
    b: Tensor,
    scale: f64,
}

/// Checks a pair's shapes against the base's projection and builds it.
fn checked(
    target: Target,
    layer: usize,
    raw: RawPair,
    config: &DecoderConfig,
    max_rank: usize,
) -> Result<(usize, LoraPair), String> {
    let (features_in, features_out) = target.shape(config);
    let name = format!("layer {layer} {}", target.gguf_name());
    let (rank, a_in) = raw.a.dims2().map_err(|e| format!("{name} lora_a: {e}"))?;
    let (b_out, b_rank) = raw.b.dims2().map_err(|e| format!("{name} lora_b: {e}"))?;
    if a_in != features_in || b_out != features_out || b_rank != rank {
        return Err(format!(
            "{name}: lora_a is {rank}x{a_in} and lora_b {b_out}x{b_rank}, but the base projection takes {features_in} features \
             to {features_out} (is the adapter for another model?)"
        ));
    }
    if rank == 0 || rank > max_rank {
        return Err(format!("LoRA rank {rank} is greater than max_lora_rank {max_rank}"));
    }
    let kernel = |t: &Tensor, which: &str| {
        F32Linear::from_tensor(t)?.ok_or_else(|| format!("{name} {which}: LoRA adapters run on the CPU only"))
    };
    Ok((rank, LoraPair { a: kernel(&raw.a, "lora_a")?, b: kernel(&raw.b, "lora_b")?, scale: raw.scale }))
}

type Pairs = Vec<HashMap<Target, LoraPair>>;

/// A llama.cpp GGUF adapter.
fn gguf(path: &Path, config: &DecoderConfig, max_rank: usize) -> Result<(usize, Pairs), String> {
    let (content, mut file) = super::model::gguf_header::read_content(path)?;
    let text = |key: &str| content.metadata.get(key).and_then(|v| v.to_string().ok()).cloned();
    if text("general.type").as_deref() != Some("adapter") || text("adapter.type").as_deref() != Some("lora") {
        return Err(format!("{}: not a LoRA adapter (general.type must be 'adapter', adapter.type 'lora')", path.display()));
    }
    let architecture = text("general.architecture").unwrap_or_default();
    if architecture != config.architecture {
        return Err(format!("the adapter is for '{architecture}' models, the base model is '{}'", config.architecture));
    }
    let alpha = content.metadata.get("adapter.lora.alpha").and_then(|v| v.to_f32().ok()).unwrap_or(0.0);
    // Every tensor is named and sized before any is read.
    let mut wanted = Vec::new();
    for (tensor, info) in &content.tensor_infos {
        let Some((base, part)) = tensor.rsplit_once('.').filter(|(_, part)| *part == "lora_a" || *part == "lora_b") else {
            if tensor.ends_with("_norm.weight") {
                continue;
            }
            return Err(format!("{}: unexpected tensor '{tensor}' in a LoRA adapter", path.display()));
        };
        let (layer, target) = gguf_target(base, config)
            .ok_or_else(|| format!("{}: the adapter changes '{base}', which this engine cannot adapt", path.display()))?;
        let dims = info.shape.dims();
        if dims.len() != 2 || dims.iter().product::<usize>() > (1 << 28) {
            return Err(format!("{}: tensor '{tensor}' has shape {dims:?}", path.display()));
        }
        wanted.push((layer, target, part == "lora_a", tensor.clone()));
    }
    let mut raw: HashMap<(usize, Target), (Option<Tensor>, Option<Tensor>)> = HashMap::new();
    for (layer, target, is_a, tensor) in wanted {
        let read = content
            .tensor(&mut file, &tensor, &Device::Cpu)
            .and_then(|q| q.dequantize(&Device::Cpu))
            .map_err(|e| format!("{}: reading '{tensor}': {e}", path.display()))?;
        let entry = raw.entry((layer, target)).or_default();
        if is_a { entry.0 = Some(read) } else { entry.1 = Some(read) }
    }
    assemble(raw, config, max_rank, |rank| if alpha != 0.0 { f64::from(alpha) / rank as f64 } else { 1.0 })
}

/// `blk.N.attn_q.weight` to its layer and target.
fn gguf_target(base: &str, config: &DecoderConfig) -> Option<(usize, Target)> {
    let rest = base.strip_prefix("blk.")?.strip_suffix(".weight")?;
    let (layer, name) = rest.split_once('.')?;
    let layer: usize = layer.parse().ok().filter(|&l| l < config.num_layers)?;
    Target::ALL.into_iter().find(|t| t.gguf_name() == name).map(|t| (layer, t))
}

fn assemble(
    raw: HashMap<(usize, Target), (Option<Tensor>, Option<Tensor>)>,
    config: &DecoderConfig,
    max_rank: usize,
    scale_of: impl Fn(usize) -> f64,
) -> Result<(usize, Pairs), String> {
    let mut pairs: Pairs = (0..config.num_layers).map(|_| HashMap::new()).collect();
    let mut largest = 0;
    for ((layer, target), pair) in raw {
        let (Some(a), Some(b)) = pair else {
            return Err(format!("layer {layer} {}: the LoRA pair is missing one of its tensors", target.gguf_name()));
        };
        let rank = a.dims().first().copied().unwrap_or(0);
        let (rank, pair) = checked(target, layer, RawPair { a, b, scale: scale_of(rank) }, config, max_rank)?;
        largest = largest.max(rank);
        pairs[layer].insert(target, pair);
    }
    Ok((largest, pairs))
}

/// What this engine reads of `adapter_config.json`.
#[derive(Debug, Deserialize)]
struct PeftConfig {
    r: usize,
    lora_alpha: f64,
    #[serde(default)]
    use_rslora: bool,
    #[serde(default)]
    fan_in_fan_out: bool,
    #[serde(default)]
    use_dora: bool,
    bias: Option<String>,
    modules_to_save: Option<serde_json::Value>,
    #[serde(default)]
    rank_pattern: HashMap<String, serde_json::Value>,
    #[serde(default)]
    alpha_pattern: HashMap<String, serde_json::Value>,
}

/// The largest `adapter_config.json` read: a config, not weights.
const MAX_PEFT_CONFIG_BYTES: u64 = 1 << 20;

/// A PEFT folder.
fn peft(dir: &Path, config: &DecoderConfig, max_rank: usize) -> Result<(usize, Pairs), String> {
    let config_path = dir.join("adapter_config.json");
    let size = std::fs::metadata(&config_path).map_err(|e| format!("{}: {e}", config_path.display()))?.len();
    if size > MAX_PEFT_CONFIG_BYTES {
        return Err(format!("{}: {size} bytes is too large for an adapter config", config_path.display()));
    }
    let text = std::fs::read_to_string(&config_path).map_err(|e| format!("{}: {e}", config_path.display()))?;
    let peft: PeftConfig = serde_json::from_str(&text).map_err(|e| format!("{}: {e}", config_path.display()))?;
    let unsupported = [
        (peft.use_dora, "DoRA adapters are not supported"),
        (peft.fan_in_fan_out, "fan_in_fan_out adapters are not supported"),
        (peft.bias.as_deref().is_some_and(|b| b != "none"), "adapter biases are not supported"),
        (peft.modules_to_save.as_ref().is_some_and(|m| !m.is_null()), "modules_to_save is not supported"),
        (!peft.rank_pattern.is_empty() || !peft.alpha_pattern.is_empty(), "rank_pattern and alpha_pattern are not supported"),
    ];
    if let Some((_, why)) = unsupported.iter().find(|(bad, _)| *bad) {
        return Err(format!("{}: {why}", config_path.display()));
    }
    if peft.r == 0 || peft.r > max_rank {
        return Err(format!("LoRA rank {} is greater than max_lora_rank {max_rank}", peft.r));
    }
    let weights = dir.join("adapter_model.safetensors");
    let tensors = candle_core::safetensors::load(&weights, &Device::Cpu).map_err(|e| format!("{}: {e}", weights.display()))?;
    let mut raw: HashMap<(usize, Target), (Option<Tensor>, Option<Tensor>)> = HashMap::new();
    for (name, tensor) in tensors {
        let (layer, target, is_a) =
            peft_target(&name, config).ok_or_else(|| format!("{}: unexpected tensor '{name}'", weights.display()))?;
        let tensor = tensor.to_dtype(candle_core::DType::F32).map_err(|e| e.to_string())?;
        let tensor = match (is_a, target, config.rope_style) {
            (false, Target::Q | Target::K, RopeStyle::Interleaved) => {
                let heads = if target == Target::Q { config.num_heads } else { config.num_kv_heads };
                interleave_rows(&tensor, heads, config.head_dim)?
            }
            _ => tensor,
        };
        let entry = raw.entry((layer, target)).or_default();
        if is_a { entry.0 = Some(tensor) } else { entry.1 = Some(tensor) }
    }
    let alpha = peft.lora_alpha;
    let rslora = peft.use_rslora;
    assemble(raw, config, max_rank, |rank| if rslora { alpha / (rank as f64).sqrt() } else { alpha / rank as f64 })
}

/// `base_model.model.model.layers.N.self_attn.q_proj.lora_A.weight` to its layer, target and part.
fn peft_target(name: &str, config: &DecoderConfig) -> Option<(usize, Target, bool)> {
    let rest = name.strip_prefix("base_model.model.")?.strip_prefix("model.layers.")?;
    let (layer, rest) = rest.split_once('.')?;
    let layer: usize = layer.parse().ok().filter(|&l| l < config.num_layers)?;
    let (module, part) = rest.strip_suffix(".weight")?.rsplit_once('.')?;
    let is_a = match part {
        "lora_A" => true,
        "lora_B" => false,
        _ => return None,
    };
    Target::ALL.into_iter().find(|t| t.peft_name() == module).map(|t| (layer, t, is_a))
}

/// The rows of a q or k `lora_B` (`[heads * head_dim, rank]`, Hugging Face's order: each head's
/// first half of dimensions, then its second) in GGUF's order (the halves interleaved), as the
/// GGUF converter reorders the base weights.
fn interleave_rows(b: &Tensor, heads: usize, head_dim: usize) -> Result<Tensor, String> {
    let half = head_dim / 2;
    let order: Vec<u32> =
        (0..heads).flat_map(|h| (0..half).flat_map(move |j| (0..2).map(move |s| (h * head_dim + s * half + j) as u32))).collect();
    if b.dims().first() != Some(&order.len()) {
        return Err(format!("a q/k lora_B of shape {:?} for {heads} heads of {head_dim}", b.dims()));
    }
    let index = Tensor::new(order.as_slice(), &Device::Cpu).map_err(|e| e.to_string())?;
    b.index_select(&index, 0).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peft_rows_are_interleaved_as_the_gguf_converter_permutes_them() {
        // One head of 4 dimensions, rank 1: rows 0 1 | 2 3 become 0 2 1 3.
        let b = Tensor::new(&[[0f32], [1.], [2.], [3.]], &Device::Cpu).unwrap();
        let permuted = interleave_rows(&b, 1, 4).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
        assert_eq!(permuted, [0., 2., 1., 3.]);
    }

    #[test]
    fn names_map_to_layers_and_targets() {
        let config = DecoderConfig::from_hf_json(
            r#"{"model_type":"llama","hidden_size":8,"intermediate_size":16,"num_hidden_layers":2,
            "num_attention_heads":2,"rms_norm_eps":1e-5,"vocab_size":10}"#,
        )
        .unwrap();
        assert_eq!(gguf_target("blk.1.attn_output.weight", &config), Some((1, Target::O)));
        assert_eq!(gguf_target("blk.99.attn_q.weight", &config), None, "no such layer");
        assert_eq!(gguf_target("token_embd.weight", &config), None);
        assert_eq!(
            peft_target("base_model.model.model.layers.0.mlp.down_proj.lora_B.weight", &config),
            Some((0, Target::Down, false))
        );
        assert_eq!(peft_target("base_model.model.lm_head.weight", &config), None);
    }

    #[test]
    fn an_adapters_seed_is_its_name_and_content_wherever_it_was_read_from() {
        let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        for dir in [a.path(), b.path()] {
            std::fs::write(dir.join("adapter_config.json"), r#"{"r": 2}"#).unwrap();
            std::fs::write(dir.join("adapter_model.safetensors"), [1u8, 2, 3]).unwrap();
        }
        let seed = identity_seed("sql", a.path()).unwrap();
        assert_eq!(identity_seed("sql", b.path()).unwrap(), seed, "the same adapter in another folder, on another worker");
        assert_ne!(seed, 0, "never the base model's seed");
        assert_ne!(identity_seed("chat", a.path()).unwrap(), seed, "another name");
        std::fs::write(b.path().join("adapter_model.safetensors"), [1u8, 2, 4]).unwrap();
        assert_ne!(identity_seed("sql", b.path()).unwrap(), seed, "other weights under the same name");
        let file = a.path().join("adapter_model.safetensors");
        assert_ne!(identity_seed("sql", &file).unwrap(), seed, "one file is not the folder");
        assert!(identity_seed("sql", &a.path().join("absent")).unwrap_err().contains("cannot be read"));
    }
}
