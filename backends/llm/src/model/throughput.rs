//! The engine's own decode throughput, 1 stream against 8 at once, with candle's Q8_0 kernel and
//! with ours: the measurement behind "batching gives more tokens/s than one stream" on the CPU.
//! Ignored by default (it takes a while and its numbers depend on the machine):
//!
//! ```text
//! cargo test --release -j2 -p tritium-worker throughput -- --ignored --nocapture
//! ```

use std::time::Instant;

use candle_core::Device;
use futures::StreamExt;

use super::{Q8_0Kernel, Requantize, WeightPolicy, load_with};
use crate::engine::LlmEngine;
use crate::engine_state::EngineOptions;
use tritium_backend_api::llm::{GenerateEvent, GenerateRequest, LanguageModel, SamplingOptions, StopOptions};

const PROMPTS: [&str; 8] = [
    "The capital of France is",
    "The capital of Germany is",
    "The largest planet in the solar system is",
    "Water boils at a temperature of",
    "The first president of the United States was",
    "A group of crows is called",
    "The chemical symbol for gold is",
    "The tallest mountain in the world is",
];
const TOKENS: u32 = 48;
const ROUNDS: usize = 3;

/// Tokens per second of `prompts.len()` greedy streams of `TOKENS` each, submitted together.
async fn rate(engine: &LlmEngine, prompts: &[Vec<u32>]) -> f64 {
    let start = Instant::now();
    let streams: Vec<_> = prompts
        .iter()
        .map(|prompt| {
            let request = GenerateRequest {
                prompt: prompt.clone(),
                sampling: SamplingOptions { temperature: 0.0, ..SamplingOptions::default() },
                stop: StopOptions { max_tokens: Some(TOKENS), ignore_eos: true, ..StopOptions::default() },
                logprobs: None,
                ..GenerateRequest::default()
            };
            engine.generate(request).expect("the engine takes the request")
        })
        .collect();
    let counts = futures::future::join_all(streams.into_iter().map(|mut stream| async move {
        let mut tokens = 0usize;
        while let Some(event) = stream.next().await {
            match event.expect("generation works") {
                GenerateEvent::Token(_) => tokens += 1,
                GenerateEvent::PromptLogprobs(_) => {}
                GenerateEvent::Finished { .. } => break,
            }
        }
        tokens
    }))
    .await;
    counts.iter().sum::<usize>() as f64 / start.elapsed().as_secs_f64()
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "a measurement: run with --ignored --nocapture"]
async fn one_stream_against_eight() {
    let path = crate::test_models::installed_model(crate::test_models::SMOLLM2_GGUF);
    let kernels = [("candle QMatMul", Q8_0Kernel::Candle), ("tritium-kernels", Q8_0Kernel::Tiled)];
    for (name, q8_0) in kernels {
        let policy = WeightPolicy { requantize: Requantize::SlowTypesOnCpu, q8_0 };
        let (model, card) = load_with(&path, &Device::Cpu, policy).expect("the model loads");
        let tokenizer: tokenizers::Tokenizer = card.tokenizer_json.parse().expect("the tokenizer loads");
        let prompts: Vec<Vec<u32>> =
            PROMPTS.iter().map(|p| tokenizer.encode(*p, false).expect("encodes").get_ids().to_vec()).collect();
        let engine = LlmEngine::start("smollm2", model, card, EngineOptions::default()).expect("the engine starts");
        rate(&engine, &prompts[..1]).await; // warm-up
        let (mut one, mut eight) = (Vec::new(), Vec::new());
        for _ in 0..ROUNDS {
            one.push(rate(&engine, &prompts[..1]).await);
            let before = engine.stats();
            eight.push(rate(&engine, &prompts).await);
            let after = engine.stats();
            let (rows, steps) = (after.decode_rows - before.decode_rows, after.decode_steps - before.decode_steps);
            println!("{name}: rows/steps {:.2}", rows as f64 / steps as f64);
        }
        let (one, eight) = (median(one), median(eight));
        println!("{name}: 1 stream {one:.1} tokens/s, 8 streams {eight:.1} tokens/s (x{:.2})", eight / one);
    }
}

/// The forward pass alone (no engine, no sampling): median milliseconds of a decode step of 1
/// and of 8 sequences, each after a 16-token prompt.
#[test]
#[ignore = "a measurement: run with --ignored --nocapture"]
fn decode_step_times() {
    use super::test_kv::{Sequence, TestKv};
    let path = crate::test_models::installed_model(crate::test_models::SMOLLM2_GGUF);
    // TRITIUM_STEP_KERNEL=candle|tiled and TRITIUM_STEP_BATCH=n narrow it down (for perf).
    let only_kernel = std::env::var("TRITIUM_STEP_KERNEL").ok();
    let only_batch: Option<usize> = std::env::var("TRITIUM_STEP_BATCH").ok().and_then(|b| b.parse().ok());
    for (name, q8_0) in [("candle QMatMul", Q8_0Kernel::Candle), ("tritium-kernels", Q8_0Kernel::Tiled)] {
        if only_kernel.as_deref().is_some_and(|k| (k == "tiled") != (q8_0 == Q8_0Kernel::Tiled)) {
            continue;
        }
        let policy = WeightPolicy { requantize: Requantize::SlowTypesOnCpu, q8_0 };
        let (model, _) = load_with(&path, &Device::Cpu, policy).expect("the model loads");
        for batch in [1usize, 8].into_iter().filter(|b| only_batch.is_none_or(|o| o == *b)) {
            let mut kv = TestKv::new(&model);
            let mut sequences: Vec<Sequence> = (0..batch).map(|_| Sequence::default()).collect();
            let prompt: Vec<u32> = (100..116).collect();
            for sequence in &mut sequences {
                kv.feed(&model, &prompt, sequence);
            }
            let mut times = Vec::new();
            for step in 0..60u32 {
                let tokens: Vec<u32> = (0..batch as u32).map(|i| 200 + step + i).collect();
                let mut inputs: Vec<(&[u32], &mut Sequence)> =
                    sequences.iter_mut().zip(&tokens).map(|(sequence, token)| (std::slice::from_ref(token), sequence)).collect();
                let start = Instant::now();
                kv.forward(&model, &mut inputs).to_vec2::<f32>().expect("logits");
                times.push(start.elapsed().as_secs_f64() * 1e3);
            }
            println!("{name}: decode step of {batch}: {:.2} ms", median(times));
        }
    }
}

/// What batch invariance costs (issue 43, item 1): the engine's tokens/s with the batch-invariant
/// attention kernel against candle's ops (whose sums follow the call's shape), for 1 and 8 decode
/// streams and for prefilling a prompt of about 1,000 tokens (prompt tokens/s, prefix cache off).
/// The projections are the same in both (`tritium-kernels`' Q8_0 product, invariant by
/// construction, as candle's quantized products on the CPU are).
#[tokio::test(flavor = "multi_thread")]
#[ignore = "a measurement: run with --ignored --nocapture"]
async fn what_batch_invariance_costs() {
    use std::sync::atomic::Ordering;
    let path = crate::test_models::installed_model(crate::test_models::SMOLLM2_GGUF);
    let long: String = (0..60).map(|i| format!("House rule {i}: the assistant answers politely and briefly. ")).collect();
    for (name, candle) in [("batch-invariant kernel", false), ("candle ops", true), ("batch-invariant kernel", false)] {
        super::decoder::CANDLE_ATTENTION.store(candle, Ordering::Relaxed);
        let (model, card) = load_with(&path, &Device::Cpu, WeightPolicy::FAST).expect("the model loads");
        let tokenizer: tokenizers::Tokenizer = card.tokenizer_json.parse().expect("the tokenizer loads");
        let prompts: Vec<Vec<u32>> =
            PROMPTS.iter().map(|p| tokenizer.encode(*p, false).expect("encodes").get_ids().to_vec()).collect();
        let prompt = tokenizer.encode(long.as_str(), false).expect("encodes").get_ids().to_vec();
        let options = EngineOptions { prefix_caching: false, ..EngineOptions::default() };
        let engine = LlmEngine::start("smollm2", model, card, options).expect("the engine starts");
        rate(&engine, &prompts[..1]).await;
        let (mut one, mut eight, mut prefill) = (Vec::new(), Vec::new(), Vec::new());
        for _ in 0..ROUNDS {
            one.push(rate(&engine, &prompts[..1]).await);
            eight.push(rate(&engine, &prompts).await);
            let start = Instant::now();
            let request = GenerateRequest {
                prompt: prompt.clone(),
                sampling: SamplingOptions { temperature: 0.0, ..SamplingOptions::default() },
                stop: StopOptions { max_tokens: Some(1), ignore_eos: true, ..StopOptions::default() },
                ..GenerateRequest::default()
            };
            let mut stream = engine.generate(request).expect("the engine takes the request");
            while let Some(event) = stream.next().await {
                if matches!(event.expect("generation works"), GenerateEvent::Finished { .. }) {
                    break;
                }
            }
            prefill.push(prompt.len() as f64 / start.elapsed().as_secs_f64());
        }
        println!(
            "{name}: decode 1 stream {:.1} tokens/s, 8 streams {:.1} tokens/s; prefill of {} tokens {:.0} tokens/s",
            median(one),
            median(eight),
            prompt.len(),
            median(prefill)
        );
    }
    super::decoder::CANDLE_ATTENTION.store(false, Ordering::Relaxed);
}
