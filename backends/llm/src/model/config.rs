//! The shape of a decoder-only transformer of the llama family (llama, mistral, qwen2), read from
//! GGUF metadata or a Hugging Face `config.json`.

use serde::Deserialize;

/// How rotary position embeddings pair up the dimensions of a head.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum RopeStyle {
    /// Adjacent pairs (x0, x1), (x2, x3), ...: llama weights as GGUF stores them (permuted).
    Interleaved,
    /// Halves (x_i, x_{i+d/2}): Hugging Face layout, and qwen2 in GGUF.
    Halves,
}

#[derive(Debug, Clone, PartialEq)]
pub(crate) struct DecoderConfig {
    pub architecture: String,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_layers: usize,
    pub num_heads: usize,
    pub num_kv_heads: usize,
    pub head_dim: usize,
    /// Dimensions of each head that rotate (usually all of them).
    pub rope_dim: usize,
    pub rope_theta: f32,
    pub rope_style: RopeStyle,
    /// llama 3.1-style frequency scaling, when the model asks for it.
    pub rope_scaling: Option<Llama3RopeScaling>,
    pub rms_norm_eps: f64,
    pub vocab_size: usize,
    pub context_length: usize,
    pub tie_word_embeddings: bool,
    /// qwen2 has biases on the q, k and v projections.
    pub attention_bias: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Deserialize)]
pub(crate) struct Llama3RopeScaling {
    pub factor: f32,
    pub low_freq_factor: f32,
    pub high_freq_factor: f32,
    pub original_max_position_embeddings: usize,
}

/// The parts of a Hugging Face `config.json` a llama-family decoder needs.
#[derive(Debug, Deserialize)]
struct HfConfig {
    model_type: Option<String>,
    hidden_size: usize,
    intermediate_size: usize,
    num_hidden_layers: usize,
    num_attention_heads: usize,
    num_key_value_heads: Option<usize>,
    head_dim: Option<usize>,
    rms_norm_eps: f64,
    rope_theta: Option<f32>,
    rope_scaling: Option<serde_json::Value>,
    vocab_size: usize,
    max_position_embeddings: Option<usize>,
    tie_word_embeddings: Option<bool>,
    attention_bias: Option<bool>,
    sliding_window: Option<usize>,
    use_sliding_window: Option<bool>,
}

/// The `model_type`s this engine runs from safetensors.
pub(crate) const HF_ARCHITECTURES: &[&str] = &["llama", "mistral", "qwen2"];

impl DecoderConfig {
    pub(crate) fn from_hf_json(text: &str) -> Result<DecoderConfig, String> {
        let hf: HfConfig = serde_json::from_str(text).map_err(|e| format!("config.json: {e}"))?;
        let architecture = hf.model_type.clone().unwrap_or_default();
        if !HF_ARCHITECTURES.contains(&architecture.as_str()) {
            return Err(format!(
                "config.json: model_type '{architecture}' is not supported (supported: {})",
                HF_ARCHITECTURES.join(", ")
            ));
        }
        if hf.num_attention_heads == 0 || !hf.hidden_size.is_multiple_of(hf.num_attention_heads) && hf.head_dim.is_none() {
            return Err("config.json: hidden_size must divide by num_attention_heads".to_string());
        }
        let num_kv_heads = hf.num_key_value_heads.unwrap_or(hf.num_attention_heads);
        if num_kv_heads == 0 || !hf.num_attention_heads.is_multiple_of(num_kv_heads) {
            return Err("config.json: num_attention_heads must be a multiple of num_key_value_heads".to_string());
        }
        let head_dim = hf.head_dim.unwrap_or(hf.hidden_size / hf.num_attention_heads);
        let rope_scaling = parse_rope_scaling(hf.rope_scaling.as_ref())?;
        let mut context_length = hf.max_position_embeddings.unwrap_or(4096);
        // Attention here is full; a sliding-window model is exact only within its window.
        let sliding = match architecture.as_str() {
            "mistral" => hf.sliding_window,
            "qwen2" if hf.use_sliding_window == Some(true) => hf.sliding_window,
            _ => None,
        };
        if let Some(window) = sliding {
            context_length = context_length.min(window);
        }
        Ok(DecoderConfig {
            attention_bias: hf.attention_bias.unwrap_or(architecture == "qwen2"),
            tie_word_embeddings: hf.tie_word_embeddings.unwrap_or(false),
            architecture,
            hidden_size: hf.hidden_size,
            intermediate_size: hf.intermediate_size,
            num_layers: hf.num_hidden_layers,
            num_heads: hf.num_attention_heads,
            num_kv_heads,
            head_dim,
            rope_dim: head_dim,
            rope_theta: hf.rope_theta.unwrap_or(10_000.0),
            rope_style: RopeStyle::Halves,
            rope_scaling,
            rms_norm_eps: hf.rms_norm_eps,
            vocab_size: hf.vocab_size,
            context_length,
        })
    }

    pub(crate) fn kv_group_size(&self) -> usize {
        self.num_heads / self.num_kv_heads
    }
}

fn parse_rope_scaling(value: Option<&serde_json::Value>) -> Result<Option<Llama3RopeScaling>, String> {
    let Some(value) = value.filter(|v| !v.is_null()) else { return Ok(None) };
    let kind = value.get("rope_type").or_else(|| value.get("type")).and_then(|t| t.as_str()).unwrap_or("");
    match kind {
        "llama3" => serde_json::from_value(value.clone()).map(Some).map_err(|e| format!("config.json: rope_scaling: {e}")),
        "default" => Ok(None),
        other => Err(format!("config.json: rope_scaling type '{other}' is not supported (only llama3)")),
    }
}

/// Inverse frequencies of the rotary embedding, with llama 3.1 scaling applied when asked for.
pub(crate) fn rope_inverse_frequencies(config: &DecoderConfig) -> Vec<f32> {
    let dim = config.rope_dim;
    (0..dim)
        .step_by(2)
        .map(|i| {
            let freq = 1.0 / config.rope_theta.powf(i as f32 / dim as f32);
            match &config.rope_scaling {
                None => freq,
                Some(s) => {
                    let original = s.original_max_position_embeddings as f32;
                    let low_wavelen = original / s.low_freq_factor;
                    let high_wavelen = original / s.high_freq_factor;
                    let wavelen = 2.0 * std::f32::consts::PI / freq;
                    if wavelen < high_wavelen {
                        freq
                    } else if wavelen > low_wavelen {
                        freq / s.factor
                    } else {
                        let smooth = (original / wavelen - s.low_freq_factor) / (s.high_freq_factor - s.low_freq_factor);
                        (1.0 - smooth) * freq / s.factor + smooth * freq
                    }
                }
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_a_qwen2_config_with_its_defaults() {
        let text = r#"{"model_type":"qwen2","hidden_size":64,"intermediate_size":128,"num_hidden_layers":2,
            "num_attention_heads":4,"num_key_value_heads":2,"rms_norm_eps":1e-6,"rope_theta":1000000.0,
            "vocab_size":300,"max_position_embeddings":32768,"tie_word_embeddings":true,
            "sliding_window":131072,"use_sliding_window":false}"#;
        let config = DecoderConfig::from_hf_json(text).unwrap();
        assert!(config.attention_bias && config.tie_word_embeddings);
        assert_eq!((config.head_dim, config.kv_group_size(), config.context_length), (16, 2, 32768));
        assert_eq!(config.rope_style, RopeStyle::Halves);
    }

    #[test]
    fn refuses_unknown_architectures_and_rope_scalings_by_name() {
        let err = DecoderConfig::from_hf_json(
            r#"{"model_type":"gpt2","hidden_size":8,"intermediate_size":8,
            "num_hidden_layers":1,"num_attention_heads":2,"rms_norm_eps":1e-5,"vocab_size":10}"#,
        )
        .unwrap_err();
        assert!(err.contains("'gpt2' is not supported"), "{err}");
        let err = DecoderConfig::from_hf_json(
            r#"{"model_type":"llama","hidden_size":8,"intermediate_size":8,
            "num_hidden_layers":1,"num_attention_heads":2,"rms_norm_eps":1e-5,"vocab_size":10,
            "rope_scaling":{"type":"yarn","factor":4.0}}"#,
        )
        .unwrap_err();
        assert!(err.contains("'yarn'"), "{err}");
    }
}
