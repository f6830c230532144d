//! The decoder checked against candle's own reference implementations on the same weights, and
//! batching checked against running sequences one at a time.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, IndexOp, Tensor};
use candle_nn::VarBuilder;

use super::decoder::argmax_rows;
use super::test_kv::{Sequence, TestKv};
use super::*;

fn smollm2() -> PathBuf {
    crate::test_models::installed_model(crate::test_models::SMOLLM2_GGUF)
}

fn tokenizer(card: &ModelCard) -> tokenizers::Tokenizer {
    card.tokenizer_json.parse().expect("the card's tokenizer.json loads")
}

fn encode(card: &ModelCard, text: &str) -> Vec<u32> {
    tokenizer(card).encode(text, false).expect("encodes").get_ids().to_vec()
}

fn max_abs_diff(a: &Tensor, b: &Tensor) -> f32 {
    (a - b).unwrap().abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar::<f32>().unwrap()
}

fn prefill(model: &DecoderModel, tokens: &[u32]) -> (TestKv, Sequence, Tensor) {
    let mut kv = TestKv::new(model);
    let mut sequence = Sequence::default();
    let logits = kv.feed(model, tokens, &mut sequence);
    (kv, sequence, logits)
}

/// Greedy continuation of one sequence, alone.
fn greedy_alone(model: &DecoderModel, prompt: &[u32], steps: usize) -> Vec<u32> {
    let (mut kv, mut sequence, mut logits) = prefill(model, prompt);
    let mut out = Vec::new();
    for _ in 0..steps {
        let next = argmax_rows(&logits).unwrap()[0];
        out.push(next);
        logits = kv.feed(model, &[next], &mut sequence);
    }
    out
}

#[test]
fn gguf_logits_match_candles_quantized_llama_and_france_gives_paris() {
    let path = smollm2();
    // Exactly the GGUF's own block types, as candle's reference runs them.
    let (model, card) = load_with(&path, &Device::Cpu, WeightPolicy::AS_CANDLE).unwrap();
    let prompt = encode(&card, "The capital of France is");
    let (_, _, ours) = prefill(&model, &prompt);

    let mut file = std::fs::File::open(&path).unwrap();
    let content = candle_core::quantized::gguf_file::Content::read(&mut file).unwrap();
    let mut reference =
        candle_transformers::models::quantized_llama::ModelWeights::from_gguf(content, &mut file, &Device::Cpu).unwrap();
    let input = Tensor::new(prompt.as_slice(), &Device::Cpu).unwrap().unsqueeze(0).unwrap();
    let theirs = reference.forward(&input, 0).unwrap();
    // The same weights and products as candle's; attention is our batch-invariant kernel, whose
    // sums run in another order than candle's GEMM and softmax. Each activation is then quantized
    // per 32 values before the next product (Q8_1 for Q4_1 weights), where a last-bit difference
    // that crosses a rounding boundary moves a value by a whole step, so the logits (~20) end a
    // few tenths apart (as `the_tiled_kernel_and_cpu_attention_give_candles_tokens` explains);
    // the tokens must agree.
    let diff = max_abs_diff(&ours, &theirs);
    assert!(diff < 1.5, "logits differ from candle's quantized_llama by {diff}");
    assert_eq!(argmax_rows(&ours).unwrap(), argmax_rows(&theirs.reshape((1, ())).unwrap()).unwrap());

    let next = argmax_rows(&ours).unwrap()[0];
    assert_eq!(tokenizer(&card).decode(&[next], false).unwrap(), " Paris");

    // Re-quantized to Q8_0 (the default on x86): the same answer, logits within rounding.
    let (requantized, _) = load(&path, &Device::Cpu).unwrap();
    let (_, _, logits) = prefill(&requantized, &prompt);
    let diff = max_abs_diff(&ours, &logits);
    assert!(diff < 2.0, "re-quantized logits moved by {diff}");
    assert_eq!(argmax_rows(&logits).unwrap()[0], next);
}

/// Our Q8_0 projection against GGML's Q8_0 rule as candle's portable CPU code has it
/// (`k_quants::matmul`: activations quantized per 32 values, exact block products), for the
/// model's shapes and every row count from a decode step to a prompt chunk: the same integers
/// summed in another order, so they agree to float rounding. Not `QMatMul`: on CPUs with
/// AVX-512 VNNI candle 0.11 takes a repacked kernel for Q8_0 weights whose width is a multiple of
/// 256, which quantizes the activations per 256 values (Q8_K) and so answers differently.
#[test]
fn the_tiled_projection_gives_ggmls_q8_0_product() {
    use candle_core::quantized::k_quants::{BlockQ8_0, GgmlType, matmul};
    use candle_core::quantized::{QStorage, QTensor};
    for (n, k) in [(576, 576), (1536, 576), (576, 1536), (192, 576), (49152, 576)] {
        let w = Tensor::randn(0f32, 1.0, (n, k), &Device::Cpu).unwrap();
        let mut blocks = vec![BlockQ8_0::zeros(); n * k / 32];
        BlockQ8_0::from_float(&w.flatten_all().unwrap().to_vec1::<f32>().unwrap(), &mut blocks);
        let q = QTensor::new(QStorage::Cpu(Box::new(blocks.clone())), (n, k)).unwrap();
        let ours = super::q8_0::Q8_0Linear::from_qtensor(&q).unwrap().expect("x86 CPU, Q8_0");
        for m in [1, 2, 3, 4, 5, 8, 17, 40] {
            let x = Tensor::randn(0f32, 1.0, (m, k), &Device::Cpu).unwrap();
            let mut expected = vec![0f32; m * n];
            matmul((m, k, n), &x.flatten_all().unwrap().to_vec1::<f32>().unwrap(), &blocks, &mut expected).unwrap();
            let expected = Tensor::from_vec(expected, (m, n), &Device::Cpu).unwrap();
            let scale = expected.abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar::<f32>().unwrap();
            let diff = max_abs_diff(&ours.forward(&x).unwrap(), &expected);
            assert!(diff <= 1e-5 * scale, "{n}x{k}, {m} rows: differs by {diff} (largest output {scale})");
        }
    }
}

/// candle's switch, read once per process, that keeps its Q8_0 products on GGML's rule on CPUs
/// with AVX-512 VNNI (see `the_tiled_projection_gives_ggmls_q8_0_product`).
const CANDLE_AVX2_TIER: (&str, &str) = ("MISTRALRS_FORCE_AVX2", "1");

/// Whether the calling test may go on in this process: it needs candle's `QMatMul` on GGML's
/// Q8_0 rule. On a CPU where candle would take its repacked VNNI kernel instead, the test (named
/// by its thread, as the test harness names it) runs again in a child process of this test binary
/// with candle's switch set (a process-wide setting that another test thread may already have
/// read), must pass there, and this returns `false`.
fn candle_on_ggmls_q8_0_rule() -> bool {
    #[cfg(target_arch = "x86_64")]
    let repacks = is_x86_feature_detected!("avx512f") && is_x86_feature_detected!("avx512vnni");
    #[cfg(not(target_arch = "x86_64"))]
    let repacks = false;
    let (name, value) = CANDLE_AVX2_TIER;
    if !repacks || std::env::var(name).as_deref() == Ok(value) {
        return true;
    }
    let thread = std::thread::current();
    let test = thread.name().expect("the test harness names each test's thread");
    let child = std::process::Command::new(std::env::current_exe().expect("the test binary's path"))
        .args(["--exact", test, "--nocapture", "--test-threads", "1"])
        .env(name, value)
        .output()
        .expect("the test binary runs again");
    let stdout = String::from_utf8_lossy(&child.stdout);
    eprintln!("{stdout}{}", String::from_utf8_lossy(&child.stderr));
    assert!(child.status.success(), "{test} failed with candle's AVX2 tier ({name}={value}): {}", child.status);
    assert!(stdout.contains("1 passed"), "{test} did not run in the child process with candle's AVX2 tier");
    false
}

/// The whole model with our kernel and decode attention against candle's ops on the same
/// (re-quantized) weights. Per product they agree to float rounding (above), yet the logits end
/// up a few tenths apart (of ~20), growing over layers 1 to 16 with no one layer responsible
/// (swapping candle's projections in layer by layer shrank the gap gradually). The likely reason
/// is that Q8_0 quantizes each activation block with a step of max/127: in a block holding one of
/// the model's large activations the step is several units, so a last-bit difference that puts
/// a value on the other side of a rounding boundary moves it by a whole step. What must hold,
/// and does, is that both give the same greedy tokens.
#[test]
fn the_tiled_kernel_and_cpu_attention_give_candles_tokens() {
    if !candle_on_ggmls_q8_0_rule() {
        return;
    }
    let path = smollm2();
    let candle_only = WeightPolicy { requantize: Requantize::SlowTypesOnCpu, q8_0: Q8_0Kernel::Candle };
    let (theirs, card) = load_with(&path, &Device::Cpu, candle_only).unwrap();
    let (ours, _) = load(&path, &Device::Cpu).unwrap();
    for text in ["Once upon a time, there was a little girl named Lily. She loved to", "The capital of France is"] {
        let prompt = encode(&card, text);
        let (mut their_kv, mut their_sequence, mut their_logits) = prefill(&theirs, &prompt);
        let (mut our_kv, mut our_sequence, mut our_logits) = prefill(&ours, &prompt);
        for step in 0..12 {
            let diff = max_abs_diff(&our_logits, &their_logits);
            eprintln!("{text:?} step {step}: logits differ by {diff}");
            assert!(diff < 1.5, "{text:?} step {step}: logits differ from candle's by {diff}");
            let next = argmax_rows(&their_logits).unwrap()[0];
            assert_eq!(argmax_rows(&our_logits).unwrap()[0], next, "{text:?} step {step}");
            their_logits = their_kv.feed(&theirs, &[next], &mut their_sequence);
            our_logits = our_kv.feed(&ours, &[next], &mut our_sequence);
        }
    }
}

#[test]
fn batched_steps_give_each_sequence_the_logits_it_gets_alone() {
    let (model, card) = load(&smollm2(), &Device::Cpu).unwrap();
    let a = encode(&card, "The capital of France is");
    let b = encode(&card, "Once upon a time, there was a little girl named Lily. She loved to");
    let (mut kv_a, mut alone_a, logits_a) = prefill(&model, &a);
    let (mut kv_b, mut alone_b, logits_b) = prefill(&model, &b);
    let mut kv = TestKv::new(&model);
    let (mut batch_a, mut batch_b) = (Sequence::default(), Sequence::default());
    let both = kv.forward(&model, &mut [(&a, &mut batch_a), (&b, &mut batch_b)]);
    assert!(max_abs_diff(&both.i(0).unwrap(), &logits_a.i(0).unwrap()) < 1e-4);
    assert!(max_abs_diff(&both.i(1).unwrap(), &logits_b.i(0).unwrap()) < 1e-4);
    let (mut next_a, mut next_b) = (argmax_rows(&logits_a).unwrap()[0], argmax_rows(&logits_b).unwrap()[0]);
    for step in 0..4 {
        let alone_a_logits = kv_a.feed(&model, &[next_a], &mut alone_a);
        let alone_b_logits = kv_b.feed(&model, &[next_b], &mut alone_b);
        let both = kv.forward(&model, &mut [(&[next_a], &mut batch_a), (&[next_b], &mut batch_b)]);
        let diff_a = max_abs_diff(&both.i(0).unwrap(), &alone_a_logits.i(0).unwrap());
        let diff_b = max_abs_diff(&both.i(1).unwrap(), &alone_b_logits.i(0).unwrap());
        assert!(diff_a < 1e-4 && diff_b < 1e-4, "step {step}: batched logits differ by {diff_a} and {diff_b}");
        next_a = argmax_rows(&alone_a_logits).unwrap()[0];
        next_b = argmax_rows(&alone_b_logits).unwrap()[0];
    }
}

/// A two-layer llama with random dense weights (its folder lives as long as the first value).
fn tiny_dense_llama() -> (tempfile::TempDir, DecoderModel) {
    let dir = tempfile::tempdir().unwrap();
    let config = serde_json::json!({
        "model_type": "llama", "hidden_size": 64, "intermediate_size": 96, "num_hidden_layers": 2,
        "num_attention_heads": 8, "num_key_value_heads": 2, "max_position_embeddings": 256,
        "rope_theta": 10000.0, "rms_norm_eps": 1e-5, "vocab_size": 128, "tie_word_embeddings": true
    });
    write_random_hf(dir.path(), &config, false, true);
    let (model, _) = load(dir.path(), &Device::Cpu).unwrap();
    (dir, model)
}

/// Chunked prefill and a sequence joining mid-decode, on dense weights. (The quantized CPU
/// kernels pick their algorithm by row count, so chunking a prompt moves quantized logits by
/// rounding; dense weights show the arithmetic is the same.)
#[test]
fn chunked_prefill_and_late_joiners_match_sequences_run_alone() {
    let (_dir, model) = tiny_dense_llama();
    let prompts: [Vec<u32>; 3] = [vec![5, 9, 2, 77, 31], (10..33).collect(), vec![100, 3]];
    let steps = 6;
    let alone: Vec<Vec<u32>> = prompts.iter().map(|p| greedy_alone(&model, p, steps)).collect();

    let mut kv = TestKv::new(&model);
    let mut sequences: Vec<Sequence> = (0..3).map(|_| Sequence::default()).collect();
    let mut outputs: Vec<Vec<u32>> = vec![Vec::new(); 3];
    let [c0, c1, c2] = &mut sequences[..] else { unreachable!() };
    // Sequence 0 prefills whole while sequence 1 prefills in chunks of 5 beside its decoding.
    let logits = kv.forward(&model, &mut [(&prompts[0], &mut *c0), (&prompts[1][..5], &mut *c1)]);
    outputs[0].push(argmax_rows(&logits).unwrap()[0]);
    let mut fed = 5;
    while fed < prompts[1].len() {
        let n = 5.min(prompts[1].len() - fed);
        let last0 = *outputs[0].last().unwrap();
        let logits = kv.forward(&model, &mut [(&[last0], &mut *c0), (&prompts[1][fed..fed + n], &mut *c1)]);
        let rows = argmax_rows(&logits).unwrap();
        outputs[0].push(rows[0]);
        fed += n;
        if fed == prompts[1].len() {
            outputs[1].push(rows[1]);
        }
    }
    // Sequence 2 joins late.
    let logits = kv.feed(&model, &prompts[2], c2);
    outputs[2].push(argmax_rows(&logits).unwrap()[0]);
    while outputs.iter().any(|o| o.len() < steps) {
        let lasts: Vec<u32> = outputs.iter().map(|o| *o.last().unwrap()).collect();
        let mut inputs = [
            (std::slice::from_ref(&lasts[0]), &mut *c0),
            (std::slice::from_ref(&lasts[1]), &mut *c1),
            (std::slice::from_ref(&lasts[2]), &mut *c2),
        ];
        let rows = argmax_rows(&kv.forward(&model, &mut inputs)).unwrap();
        for (output, token) in outputs.iter_mut().zip(rows) {
            output.push(token);
        }
    }
    for (index, (together, alone)) in outputs.iter().zip(&alone).enumerate() {
        assert_eq!(&together[..steps], &alone[..], "sequence {index}: batching changed its tokens");
    }
}

/// The SmolLM2 GGUF written out as a Hugging Face llama folder (weights dequantized, q and k
/// un-permuted back to the Hugging Face layout), loaded through the safetensors path.
#[test]
fn a_hugging_face_folder_of_the_same_weights_gives_the_same_answer() {
    let path = smollm2();
    let (gguf_model, card) = load(&path, &Device::Cpu).unwrap();
    let dir = tempfile::tempdir().unwrap();
    write_hf_llama(&path, &card, dir.path());
    let (hf_model, hf_card) = load(dir.path(), &Device::Cpu).unwrap();
    assert_eq!(hf_card.eos_token_ids, card.eos_token_ids);
    let prompt = encode(&card, "The capital of France is");
    let (_, _, gguf_logits) = prefill(&gguf_model, &prompt);
    let (_, _, hf_logits) = prefill(&hf_model, &prompt);
    // The quantized path rounds activations to 8 bits; the dense path does not.
    let diff = max_abs_diff(&gguf_logits, &hf_logits);
    assert!(diff < 2.0, "logits differ by {diff}");
    assert_eq!(argmax_rows(&hf_logits).unwrap(), argmax_rows(&gguf_logits).unwrap());
    assert_eq!(greedy_alone(&hf_model, &prompt, 4), greedy_alone(&gguf_model, &prompt, 4));
}

fn write_hf_llama(gguf: &Path, card: &ModelCard, dir: &Path) {
    let mut file = std::fs::File::open(gguf).unwrap();
    let content = candle_core::quantized::gguf_file::Content::read(&mut file).unwrap();
    let config = gguf::config_from_gguf(&content).unwrap();
    let mut get = |name: &str| content.tensor(&mut file, name, &Device::Cpu).unwrap().dequantize(&Device::Cpu).unwrap();
    let unpermute = |w: Tensor, heads: usize| {
        let (out, inp) = w.dims2().unwrap();
        w.reshape((heads, out / heads / 2, 2, inp)).unwrap().transpose(1, 2).unwrap().reshape((out, inp)).unwrap()
    };
    let mut tensors: HashMap<String, Tensor> = HashMap::new();
    tensors.insert("model.embed_tokens.weight".into(), get("token_embd.weight"));
    tensors.insert("model.norm.weight".into(), get("output_norm.weight"));
    for i in 0..config.num_layers {
        let p = format!("model.layers.{i}");
        let b = |n: &str| format!("blk.{i}.{n}.weight");
        tensors.insert(format!("{p}.self_attn.q_proj.weight"), unpermute(get(&b("attn_q")), config.num_heads));
        tensors.insert(format!("{p}.self_attn.k_proj.weight"), unpermute(get(&b("attn_k")), config.num_kv_heads));
        tensors.insert(format!("{p}.self_attn.v_proj.weight"), get(&b("attn_v")));
        tensors.insert(format!("{p}.self_attn.o_proj.weight"), get(&b("attn_output")));
        tensors.insert(format!("{p}.mlp.gate_proj.weight"), get(&b("ffn_gate")));
        tensors.insert(format!("{p}.mlp.up_proj.weight"), get(&b("ffn_up")));
        tensors.insert(format!("{p}.mlp.down_proj.weight"), get(&b("ffn_down")));
        tensors.insert(format!("{p}.input_layernorm.weight"), get(&b("attn_norm")));
        tensors.insert(format!("{p}.post_attention_layernorm.weight"), get(&b("ffn_norm")));
    }
    candle_core::safetensors::save(&tensors, dir.join("model.safetensors")).unwrap();
    let hf_config = serde_json::json!({
        "model_type": "llama", "architectures": ["LlamaForCausalLM"],
        "hidden_size": config.hidden_size, "intermediate_size": config.intermediate_size,
        "num_hidden_layers": config.num_layers, "num_attention_heads": config.num_heads,
        "num_key_value_heads": config.num_kv_heads, "rms_norm_eps": config.rms_norm_eps,
        "rope_theta": config.rope_theta, "vocab_size": config.vocab_size,
        "max_position_embeddings": config.context_length, "tie_word_embeddings": true,
        "bos_token_id": 1, "eos_token_id": 2
    });
    std::fs::write(dir.join("config.json"), hf_config.to_string()).unwrap();
    std::fs::write(dir.join("tokenizer.json"), &card.tokenizer_json).unwrap();
    let tokenizer_config = serde_json::json!({
        "chat_template": card.chat_template, "bos_token": card.bos_token, "eos_token": card.eos_token, "add_bos_token": false
    });
    std::fs::write(dir.join("tokenizer_config.json"), tokenizer_config.to_string()).unwrap();
}

/// A tiny random model in Hugging Face layout, for architectures without a real model here.
pub(crate) fn write_random_hf(dir: &Path, config: &serde_json::Value, bias: bool, tied: bool) {
    let device = Device::Cpu;
    let n = |k: &str| config[k].as_u64().unwrap() as usize;
    let (hidden, inter, layers, heads, kv, vocab) = (
        n("hidden_size"),
        n("intermediate_size"),
        n("num_hidden_layers"),
        n("num_attention_heads"),
        n("num_key_value_heads"),
        n("vocab_size"),
    );
    let head_dim = hidden / heads;
    let random = |shape: &[usize]| Tensor::randn(0f32, 0.1, shape, &device).unwrap();
    let norm = |size: usize| (Tensor::ones(size, DType::F32, &device).unwrap() + random(&[size])).unwrap();
    let mut t: HashMap<String, Tensor> = HashMap::new();
    t.insert("model.embed_tokens.weight".into(), random(&[vocab, hidden]));
    t.insert("model.norm.weight".into(), norm(hidden));
    if !tied {
        t.insert("lm_head.weight".into(), random(&[vocab, hidden]));
    }
    for i in 0..layers {
        let p = format!("model.layers.{i}");
        for (name, out, inp) in [
            ("self_attn.q_proj", heads * head_dim, hidden),
            ("self_attn.k_proj", kv * head_dim, hidden),
            ("self_attn.v_proj", kv * head_dim, hidden),
            ("self_attn.o_proj", hidden, heads * head_dim),
            ("mlp.gate_proj", inter, hidden),
            ("mlp.up_proj", inter, hidden),
            ("mlp.down_proj", hidden, inter),
        ] {
            t.insert(format!("{p}.{name}.weight"), random(&[out, inp]));
            if bias && ["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"].contains(&name) {
                t.insert(format!("{p}.{name}.bias"), random(&[out]));
            }
        }
        t.insert(format!("{p}.input_layernorm.weight"), norm(hidden));
        t.insert(format!("{p}.post_attention_layernorm.weight"), norm(hidden));
    }
    candle_core::safetensors::save(&t, dir.join("model.safetensors")).unwrap();
    std::fs::write(dir.join("config.json"), config.to_string()).unwrap();
    // A byte-level tokenizer, enough for the card.
    let vocab: serde_json::Map<String, serde_json::Value> = (0..vocab).map(|i| (format!("t{i}"), serde_json::json!(i))).collect();
    let tokenizer = serde_json::json!({
        "version": "1.0", "truncation": null, "padding": null, "added_tokens": [], "normalizer": null,
        "pre_tokenizer": {"type": "Whitespace"}, "post_processor": null, "decoder": null,
        "model": {"type": "WordLevel", "vocab": vocab, "unk_token": "t0"}
    });
    std::fs::write(dir.join("tokenizer.json"), tokenizer.to_string()).unwrap();
    std::fs::write(dir.join("tokenizer_config.json"), r#"{"eos_token": "t1"}"#).unwrap();
}

/// A sequence that starts on another's blocks (a prefix-cache hit) gets bit for bit the logits
/// of computing its prompt itself with the same chunks, and so does every later step.
#[test]
fn reused_prefix_blocks_give_the_logits_of_computing_them() {
    let (_dir, model) = tiny_dense_llama();
    let shared: Vec<u32> = (1..17).collect(); // four blocks of four
    let (first_tail, second_tail): (Vec<u32>, Vec<u32>) = ((40..47).collect(), (90..95).collect());

    let mut kv = TestKv::new(&model);
    let mut first = Sequence::default();
    kv.feed(&model, &shared, &mut first);
    kv.feed(&model, &first_tail, &mut first);
    // The second sequence's table starts with the first's four blocks.
    let mut reusing = first.sharing(4);
    let mut reused_logits = kv.feed(&model, &second_tail, &mut reusing);

    let mut fresh = Sequence::default();
    kv.feed(&model, &shared, &mut fresh);
    let mut fresh_logits = kv.feed(&model, &second_tail, &mut fresh);
    for step in 0..5 {
        assert_eq!(reused_logits.to_vec2::<f32>().unwrap(), fresh_logits.to_vec2::<f32>().unwrap(), "step {step}");
        let next = argmax_rows(&fresh_logits).unwrap()[0];
        reused_logits = kv.feed(&model, &[next], &mut reusing);
        fresh_logits = kv.feed(&model, &[next], &mut fresh);
    }
}

fn compare_with_reference(dir: &Path, mut reference: impl FnMut(&Tensor, usize) -> Tensor) {
    let (model, _) = load(dir, &Device::Cpu).unwrap();
    let prompt: Vec<u32> = vec![3, 17, 42, 5, 99, 7, 11];
    let (mut kv, mut sequence, mut ours) = prefill(&model, &prompt);
    let input = Tensor::new(prompt.as_slice(), &Device::Cpu).unwrap().unsqueeze(0).unwrap();
    let mut theirs = reference(&input, 0);
    let mut position = prompt.len();
    for step in 0..4 {
        // The reference answers the last position's logits, shaped [1, vocab] or [1, 1, vocab].
        let all = theirs.flatten_all().unwrap();
        let vocab = ours.dims()[1];
        let theirs_row = all.narrow(0, all.dims()[0] - vocab, vocab).unwrap();
        let diff = max_abs_diff(&ours.i(0).unwrap(), &theirs_row);
        assert!(diff < 1e-4, "step {step}: logits differ from candle's reference by {diff}");
        let next = argmax_rows(&ours).unwrap()[0];
        ours = kv.feed(&model, &[next], &mut sequence);
        theirs = reference(&Tensor::new(&[[next]], &Device::Cpu).unwrap(), position);
        position += 1;
    }
}

#[test]
fn qwen2_matches_candles_reference_on_random_weights() {
    let dir = tempfile::tempdir().unwrap();
    let config = serde_json::json!({
        "model_type": "qwen2", "hidden_size": 64, "intermediate_size": 96, "num_hidden_layers": 2,
        "num_attention_heads": 4, "num_key_value_heads": 2, "max_position_embeddings": 256,
        "sliding_window": 256, "max_window_layers": 2, "tie_word_embeddings": true, "rope_theta": 1000000.0,
        "rms_norm_eps": 1e-6, "use_sliding_window": false, "hidden_act": "silu", "vocab_size": 128
    });
    write_random_hf(dir.path(), &config, true, true);
    let reference_config: candle_transformers::models::qwen2::Config = serde_json::from_value(config).unwrap();
    let files = [dir.path().join("model.safetensors")];
    let vb = unsafe { VarBuilder::from_mmaped_safetensors(&files, DType::F32, &Device::Cpu) }.unwrap();
    let mut reference = candle_transformers::models::qwen2::ModelForCausalLM::new(&reference_config, vb).unwrap();
    compare_with_reference(dir.path(), |input, offset| reference.forward(input, offset).unwrap());
}

#[test]
fn mistral_matches_candles_reference_on_random_weights() {
    let dir = tempfile::tempdir().unwrap();
    let config = serde_json::json!({
        "model_type": "mistral", "hidden_size": 64, "intermediate_size": 96, "num_hidden_layers": 2,
        "num_attention_heads": 8, "num_key_value_heads": 2, "max_position_embeddings": 256,
        "sliding_window": 4096, "rope_theta": 10000.0, "rms_norm_eps": 1e-5, "hidden_act": "silu",
        "vocab_size": 128, "tie_word_embeddings": false
    });
    write_random_hf(dir.path(), &config, false, false);
    let reference_config: candle_transformers::models::mistral::Config = serde_json::from_value(config).unwrap();
    let files = [dir.path().join("model.safetensors")];
    let vb = unsafe { VarBuilder::from_mmaped_safetensors(&files, DType::F32, &Device::Cpu) }.unwrap();
    let mut reference = candle_transformers::models::mistral::Model::new(&reference_config, vb).unwrap();
    compare_with_reference(dir.path(), |input, offset| reference.forward(input, offset).unwrap());
}
