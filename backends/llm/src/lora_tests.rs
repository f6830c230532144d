//! LoRA adapters on the engine: a PEFT adapter on a tiny random llama answers as its merged
//! weights; a zero adapter answers as the base, bit for bit, while the prefix cache keeps the two
//! apart; base and adapter sequences in one batch answer as they do alone; a GGUF adapter as
//! llama.cpp writes them loads on the real SmolLM2; and every refusal names what is wrong.
#![allow(clippy::unwrap_used)]

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::quantized::gguf_file::{self, Value};
use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::{DType, Device, Tensor};
use futures::StreamExt;

use super::engine::LlmEngine;
use super::engine_state::EngineOptions;
use tritium_backend_api::llm::{GenerateEvent, GenerateRequest, LanguageModel, SamplingOptions, StopOptions, TokenStream};

/// The tiny llama's shape: hidden 64, 8 heads of 8 (2 for keys and values), MLP 96, 2 layers.
const TINY: [(&str, usize, usize); 7] = [
    ("self_attn.q_proj", 64, 64),
    ("self_attn.k_proj", 16, 64),
    ("self_attn.v_proj", 16, 64),
    ("self_attn.o_proj", 64, 64),
    ("mlp.gate_proj", 96, 64),
    ("mlp.up_proj", 96, 64),
    ("mlp.down_proj", 64, 96),
];
const RANK: usize = 4;
const ALPHA: f64 = 8.0;

fn tiny_llama(dir: &Path) {
    let config = serde_json::json!({
        "model_type": "llama", "hidden_size": 64, "intermediate_size": 96, "num_hidden_layers": 2,
        "num_attention_heads": 8, "num_key_value_heads": 2, "max_position_embeddings": 256,
        "rope_theta": 10000.0, "rms_norm_eps": 1e-5, "vocab_size": 128, "tie_word_embeddings": true
    });
    std::fs::create_dir_all(dir).unwrap();
    crate::model::tests::write_random_hf(dir, &config, false, true);
}

/// A PEFT folder with random A and B (B zero when `zero`) on every projection of both layers.
fn peft(dir: &Path, rank: usize, zero: bool) -> HashMap<String, Tensor> {
    std::fs::create_dir_all(dir).unwrap();
    let mut tensors = HashMap::new();
    for layer in 0..2 {
        for (module, out, inp) in TINY {
            let prefix = format!("base_model.model.model.layers.{layer}.{module}");
            let a = Tensor::randn(0f32, 0.2, (rank, inp), &Device::Cpu).unwrap();
            let b = match zero {
                true => Tensor::zeros((out, rank), DType::F32, &Device::Cpu).unwrap(),
                false => Tensor::randn(0f32, 0.2, (out, rank), &Device::Cpu).unwrap(),
            };
            tensors.insert(format!("{prefix}.lora_A.weight"), a);
            tensors.insert(format!("{prefix}.lora_B.weight"), b);
        }
    }
    candle_core::safetensors::save(&tensors, dir.join("adapter_model.safetensors")).unwrap();
    let config = serde_json::json!({"peft_type": "LORA", "r": rank, "lora_alpha": ALPHA, "bias": "none",
        "target_modules": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]});
    std::fs::write(dir.join("adapter_config.json"), config.to_string()).unwrap();
    tensors
}

/// The base folder's weights with `scale * B A` added: the adapter merged.
fn merged(base: &Path, adapter: &HashMap<String, Tensor>, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    let mut weights = candle_core::safetensors::load(base.join("model.safetensors"), &Device::Cpu).unwrap();
    for layer in 0..2 {
        for (module, _, _) in TINY {
            let prefix = format!("base_model.model.model.layers.{layer}.{module}");
            let (a, b) = (&adapter[&format!("{prefix}.lora_A.weight")], &adapter[&format!("{prefix}.lora_B.weight")]);
            let name = format!("model.layers.{layer}.{module}.weight");
            let delta = (b.matmul(a).unwrap() * (ALPHA / RANK as f64)).unwrap();
            let w = (&weights[&name] + delta).unwrap();
            weights.insert(name, w);
        }
    }
    candle_core::safetensors::save(&weights, to.join("model.safetensors")).unwrap();
    for file in ["config.json", "tokenizer.json"] {
        std::fs::copy(base.join(file), to.join(file)).unwrap();
    }
}

fn engine(path: &Path, options: EngineOptions) -> Result<LlmEngine, String> {
    let (model, card) = super::model::load(path, &Device::Cpu)?;
    LlmEngine::start("base", model, card, options)
}

fn greedy(prompt: &[u32], adapter: Option<&str>) -> GenerateRequest {
    GenerateRequest {
        prompt: prompt.to_vec(),
        sampling: SamplingOptions { temperature: 0.0, ..SamplingOptions::default() },
        stop: StopOptions { max_tokens: Some(8), ignore_eos: true, ..StopOptions::default() },
        logprobs: Some(1),
        adapter: adapter.map(str::to_string),
        ..GenerateRequest::default()
    }
}

/// Tokens, their log-probabilities, and the prompt tokens found cached.
async fn run(stream: TokenStream) -> (Vec<u32>, Vec<f32>, u32) {
    let mut stream = stream;
    let (mut tokens, mut logprobs) = (Vec::new(), Vec::new());
    while let Some(event) = stream.next().await {
        match event.unwrap() {
            GenerateEvent::Token(t) => {
                tokens.push(t.id);
                logprobs.push(t.logprob.unwrap());
            }
            GenerateEvent::PromptLogprobs(_) => {}
            GenerateEvent::Finished { cached_tokens, .. } => return (tokens, logprobs, cached_tokens),
        }
    }
    panic!("no Finished");
}

fn with_adapter(name: &str, path: PathBuf) -> EngineOptions {
    EngineOptions { loras: vec![(name.to_string(), path)], kv_block_size: 4, ..EngineOptions::default() }
}

const PROMPTS: [&[u32]; 3] = [&[5, 9, 2, 77, 31, 8, 8, 1, 40], &[100, 3, 17, 17, 60], &[1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12]];

#[tokio::test]
async fn a_peft_adapter_answers_as_its_merged_weights() {
    let dir = tempfile::tempdir().unwrap();
    let (base, lora, fused) = (dir.path().join("base"), dir.path().join("lora"), dir.path().join("merged"));
    tiny_llama(&base);
    let tensors = peft(&lora, RANK, false);
    merged(&base, &tensors, &fused);
    let adapted = engine(&base, with_adapter("lora", lora)).unwrap();
    let reference = engine(&fused, EngineOptions::default()).unwrap();
    for prompt in PROMPTS {
        let (tokens, logprobs, _) = run(adapted.generate(greedy(prompt, Some("lora"))).unwrap()).await;
        let (expected, expected_logprobs, _) = run(reference.generate(greedy(prompt, None)).unwrap()).await;
        assert_eq!(tokens, expected, "prompt {prompt:?}");
        for (got, want) in logprobs.iter().zip(&expected_logprobs) {
            assert!((got - want).abs() < 1e-3, "prompt {prompt:?}: {logprobs:?} against {expected_logprobs:?}");
        }
        let (base_tokens, _, _) = run(adapted.generate(greedy(prompt, None)).unwrap()).await;
        assert_ne!(base_tokens, tokens, "the adapter changes the answer to {prompt:?}");
    }
    assert_eq!(adapted.adapters().len(), 1);
    assert_eq!(adapted.adapters()[0].rank, RANK);
}

#[tokio::test]
async fn base_and_adapter_share_batches_without_crosstalk_and_never_share_cached_blocks() {
    let dir = tempfile::tempdir().unwrap();
    let base = dir.path().join("base");
    tiny_llama(&base);
    peft(&dir.path().join("zero"), RANK, true);
    peft(&dir.path().join("lora"), RANK, false);
    let engine = engine(&base, with_adapter("lora", dir.path().join("lora"))).unwrap();
    engine.load_adapter("zero", &dir.path().join("zero")).unwrap();

    let prompt = PROMPTS[2];
    let (plain, plain_logprobs, _) = run(engine.generate(greedy(prompt, None)).unwrap()).await;
    let (zero, zero_logprobs, cached) = run(engine.generate(greedy(prompt, Some("zero"))).unwrap()).await;
    assert_eq!((&zero, bits(&zero_logprobs)), (&plain, bits(&plain_logprobs)), "a zero delta changes no bit");
    assert_eq!(cached, 0, "the base model's blocks are not the adapter's");
    let (_, _, cached) = run(engine.generate(greedy(prompt, Some("zero"))).unwrap()).await;
    assert!(cached > 0, "the adapter's own blocks are reused");

    let mut alone = Vec::new();
    for prompt in PROMPTS {
        for adapter in [None, Some("lora")] {
            alone.push(run(engine.generate(greedy(prompt, adapter)).unwrap()).await);
        }
    }
    let streams: Vec<TokenStream> = PROMPTS
        .iter()
        .flat_map(|prompt| [None, Some("lora")].map(|adapter| engine.generate(greedy(prompt, adapter)).unwrap()))
        .collect();
    let together = futures::future::join_all(streams.into_iter().map(run)).await;
    for (together, alone) in together.iter().zip(&alone) {
        assert_eq!((&together.0, bits(&together.1)), (&alone.0, bits(&alone.1)), "in one batch as alone");
    }
}

fn bits(values: &[f32]) -> Vec<u32> {
    values.iter().map(|v| v.to_bits()).collect()
}

#[tokio::test]
async fn refusals_name_what_is_wrong() {
    let dir = tempfile::tempdir().unwrap();
    let base = dir.path().join("base");
    tiny_llama(&base);
    peft(&dir.path().join("lora"), RANK, false);
    let narrow = EngineOptions { max_lora_rank: 2, ..with_adapter("lora", dir.path().join("lora")) };
    let error = engine(&base, narrow).unwrap_err();
    assert!(error.contains("LoRA rank 4 is greater than max_lora_rank 2"), "{error}");

    let engine = engine(&base, EngineOptions { max_loras: 1, ..EngineOptions::default() }).unwrap();
    engine.load_adapter("lora", &dir.path().join("lora")).unwrap();
    let again = engine.load_adapter("lora", &dir.path().join("lora")).unwrap_err().to_string();
    assert!(again.contains("has already been loaded"), "{again}");
    let full = engine.load_adapter("other", &dir.path().join("lora")).unwrap_err().to_string();
    assert!(full.contains("limit of 1 LoRA adapters"), "{full}");
    let unknown = engine.generate(greedy(PROMPTS[0], Some("nope"))).unwrap_err().to_string();
    assert!(unknown.contains("has no LoRA adapter 'nope'"), "{unknown}");
    assert!(engine.unload_adapter("lora").unwrap());
    assert!(!engine.unload_adapter("lora").unwrap());

    // An adapter of another shape: the MLP is 32 wide, not 96.
    let other = dir.path().join("other");
    peft(&other, RANK, false);
    let mut tensors = candle_core::safetensors::load(other.join("adapter_model.safetensors"), &Device::Cpu).unwrap();
    tensors.insert(
        "base_model.model.model.layers.0.mlp.up_proj.lora_B.weight".into(),
        Tensor::zeros((32, RANK), DType::F32, &Device::Cpu).unwrap(),
    );
    candle_core::safetensors::save(&tensors, other.join("adapter_model.safetensors")).unwrap();
    let shape = engine.load_adapter("other", &other).unwrap_err().to_string();
    assert!(shape.contains("layer 0 ffn_up") && shape.contains("another model"), "{shape}");
    let missing = engine.load_adapter("gone", &dir.path().join("nowhere")).unwrap_err().to_string();
    assert!(missing.contains("nowhere"), "{missing}");
}

/// A GGUF adapter as llama.cpp's converter writes it, on `attn_q` and `ffn_down` of every layer.
fn gguf_adapter(path: &Path, layers: usize, hidden: usize, intermediate: usize, zero: bool) {
    let mut tensors = Vec::new();
    for layer in 0..layers {
        for (name, out, inp) in [("attn_q", hidden, hidden), ("ffn_down", hidden, intermediate)] {
            let a = Tensor::randn(0f32, 0.05, (RANK, inp), &Device::Cpu).unwrap();
            let b = match zero {
                true => Tensor::zeros((out, RANK), DType::F32, &Device::Cpu).unwrap(),
                false => Tensor::randn(0f32, 0.05, (out, RANK), &Device::Cpu).unwrap(),
            };
            for (part, tensor) in [("lora_a", a), ("lora_b", b)] {
                let q = QTensor::quantize(&tensor, GgmlDType::F32).unwrap();
                tensors.push((format!("blk.{layer}.{name}.weight.{part}"), q));
            }
        }
    }
    let metadata = [
        ("general.architecture", Value::String("llama".into())),
        ("general.type", Value::String("adapter".into())),
        ("adapter.type", Value::String("lora".into())),
        ("adapter.lora.alpha", Value::F32(8.0)),
    ];
    let metadata: Vec<(&str, &Value)> = metadata.iter().map(|(k, v)| (*k, v)).collect();
    let tensors: Vec<(&str, &QTensor)> = tensors.iter().map(|(k, v)| (k.as_str(), v)).collect();
    let mut file = std::fs::File::create(path).unwrap();
    gguf_file::write(&mut file, &metadata, &tensors).unwrap();
}

#[tokio::test]
async fn gguf_adapters_load_on_the_real_smollm2() {
    let dir = tempfile::tempdir().unwrap();
    let (zero, lora) = (dir.path().join("zero.gguf"), dir.path().join("lora.gguf"));
    gguf_adapter(&zero, 30, 576, 1536, true);
    gguf_adapter(&lora, 30, 576, 1536, false);
    let path = crate::test_models::installed_model(crate::test_models::SMOLLM2_GGUF);
    let engine = engine(&path, with_adapter("zero", zero)).unwrap();
    engine.load_adapter("lora", &lora).unwrap();
    let prompt: Vec<u32> = vec![504, 3575, 282, 4649, 314];
    let (plain, plain_logprobs, _) = run(engine.generate(greedy(&prompt, None)).unwrap()).await;
    let (same, same_logprobs, _) = run(engine.generate(greedy(&prompt, Some("zero"))).unwrap()).await;
    assert_eq!((plain.clone(), bits(&plain_logprobs)), (same, bits(&same_logprobs)));
    let (_, adapted_logprobs, _) = run(engine.generate(greedy(&prompt, Some("lora"))).unwrap()).await;
    assert_ne!(bits(&adapted_logprobs), bits(&plain_logprobs), "the adapter changes the logits");

    let wrong = dir.path().join("wrong.gguf");
    gguf_adapter(&wrong, 2, 64, 96, false);
    let error = engine.load_adapter("wrong", &wrong).unwrap_err().to_string();
    assert!(error.contains("another model"), "{error}");
}

/// Explicit prompt caching under an adapter: the pin holds the adapter's own blocks (the base
/// model's same prompt finds none of them) and they survive the pressure that evicts unpinned
/// prefixes.
#[tokio::test]
async fn an_adapters_pinned_prefix_is_its_own_and_survives_pressure() {
    let dir = tempfile::tempdir().unwrap();
    let base = dir.path().join("base");
    tiny_llama(&base);
    peft(&dir.path().join("lora"), RANK, false);
    let options = EngineOptions { max_kv_tokens: 64, max_sequences: 1, ..with_adapter("lora", dir.path().join("lora")) };
    let engine = engine(&base, options).unwrap();
    let pin = tritium_backend_api::llm::PrefixPin { tokens: 8, ttl: std::time::Duration::from_secs(300) };
    let pinned = |adapter| GenerateRequest { pin: Some(pin), ..greedy(PROMPTS[2], adapter) };
    let written = |stream: TokenStream| async move {
        let mut stream = stream;
        let mut written = None;
        while let Some(event) = stream.next().await {
            if let GenerateEvent::Token(token) = event.unwrap() {
                written = written.or(Some(token.prompt_pinned));
            }
        }
        written.flatten()
    };
    assert_eq!(written(engine.generate(pinned(Some("lora"))).unwrap()).await, Some(8), "two full blocks pinned");
    let (_, _, cached) = run(engine.generate(greedy(PROMPTS[2], None)).unwrap()).await;
    assert_eq!(cached, 0, "the adapter's pinned blocks are not the base model's");
    // Unrelated prompts of both use the pool up several times over.
    for round in 0..6u32 {
        let prompt: Vec<u32> = (0..40).map(|i| (round * 41 + i * 3) % 120 + 1).collect();
        let _ = run(engine.generate(greedy(&prompt, (round % 2 == 0).then_some("lora"))).unwrap()).await;
    }
    let (_, _, cached) = run(engine.generate(greedy(PROMPTS[2], None)).unwrap()).await;
    assert_eq!(cached, 0, "the base model's unpinned prefix was evicted");
    let (_, _, cached) = run(engine.generate(pinned(Some("lora"))).unwrap()).await;
    assert!(cached >= 8, "the adapter's pinned prefix survived: {cached} cached");
}
