//! Speculative decoding with the real SmolLM2: the same tokens and log-probabilities with it on
//! and off, greedy and seeded, alone and in a batch, while proposals are made and kept.
#![allow(clippy::unwrap_used)]

use candle_core::Device;
use futures::StreamExt;

use super::engine::LlmEngine;
use super::engine_state::{EngineOptions, SpeculativeOptions};
use tritium_backend_api::llm::{GenerateEvent, GenerateRequest, LanguageModel, SamplingOptions, StopOptions, TokenStream};

/// Text that repeats spans of itself: prompt lookup has something to propose.
const CODE: &str = "def area(width, height):\n    return width * height\n\n\
def perimeter(width, height):\n    return 2 * (width + height)\n\n\
# The same two functions, renamed to rectangle_area and rectangle_perimeter:\n\ndef rectangle_area(width, height):\n";

fn engine(speculative: Option<SpeculativeOptions>) -> (LlmEngine, tokenizers::Tokenizer) {
    let path = crate::test_models::installed_model(crate::test_models::SMOLLM2_GGUF);
    let (model, card) = super::model::load(&path, &Device::Cpu).unwrap();
    let tokenizer: tokenizers::Tokenizer = card.tokenizer_json.parse().unwrap();
    let options = EngineOptions { speculative, ..EngineOptions::default() };
    (LlmEngine::start("smollm2", model, card, options).unwrap(), tokenizer)
}

fn speculating() -> Option<SpeculativeOptions> {
    Some(SpeculativeOptions { disable_by_batch_size: 8, ..SpeculativeOptions::default() })
}

fn request(tokenizer: &tokenizers::Tokenizer, text: &str, temperature: f32, seed: Option<u64>) -> GenerateRequest {
    GenerateRequest {
        prompt: tokenizer.encode(text, false).unwrap().get_ids().to_vec(),
        sampling: SamplingOptions { temperature, seed, ..SamplingOptions::default() },
        stop: StopOptions { max_tokens: Some(40), ignore_eos: true, ..StopOptions::default() },
        logprobs: Some(2),
        ..GenerateRequest::default()
    }
}

/// Each token with its log-probability and alternatives, bit for bit.
async fn tokens(stream: TokenStream) -> Vec<(u32, u32, Vec<(u32, u32)>)> {
    let mut stream = stream;
    let mut out = Vec::new();
    while let Some(event) = stream.next().await {
        match event.unwrap() {
            GenerateEvent::Token(t) => {
                out.push((t.id, t.logprob.unwrap().to_bits(), t.top_logprobs.iter().map(|&(id, p)| (id, p.to_bits())).collect()))
            }
            GenerateEvent::PromptLogprobs(_) => {}
            GenerateEvent::Finished { .. } => return out,
        }
    }
    panic!("no Finished");
}

#[tokio::test]
async fn answers_are_the_same_with_speculation_on_and_off_and_proposals_are_kept() {
    let prompts = [CODE, "Once upon a time, a cat sat on a mat. Once upon a time, a dog", "1, 2, 3, 1, 2, 3, 1, 2,"];
    let samplings = [(0.0, None), (0.9, Some(7))];
    let (plain, tokenizer) = engine(None);
    let mut expected = Vec::new();
    for prompt in prompts {
        for (temperature, seed) in samplings {
            expected.push(tokens(plain.generate(request(&tokenizer, prompt, temperature, seed)).unwrap()).await);
        }
    }
    drop(plain);

    let (speculative, _) = engine(speculating());
    let mut alone = Vec::new();
    for prompt in prompts {
        for (temperature, seed) in samplings {
            alone.push(tokens(speculative.generate(request(&tokenizer, prompt, temperature, seed)).unwrap()).await);
        }
    }
    assert_eq!(alone, expected, "one sequence at a time");
    let stats = speculative.stats();
    assert!(stats.spec_decode_drafts > 0 && stats.spec_decode_accepted_tokens > 0, "{stats:?}");
    assert!(stats.spec_decode_accepted_tokens <= stats.spec_decode_draft_tokens);
    assert!(stats.decode_steps < stats.tokens_generated, "kept proposals save steps: {stats:?}");

    // All six at once: rows of several speculating sequences share each step.
    let streams: Vec<TokenStream> = prompts
        .iter()
        .flat_map(|prompt| samplings.map(|(temperature, seed)| (*prompt, temperature, seed)))
        .map(|(prompt, temperature, seed)| speculative.generate(request(&tokenizer, prompt, temperature, seed)).unwrap())
        .collect();
    let together = futures::future::join_all(streams.into_iter().map(tokens)).await;
    assert_eq!(together, expected, "in one batch");
}

#[tokio::test]
async fn a_wide_batch_does_not_speculate() {
    let narrow = SpeculativeOptions { disable_by_batch_size: 1, ..SpeculativeOptions::default() };
    let (engine, tokenizer) = engine(Some(narrow));
    let streams: Vec<TokenStream> =
        (0..2).map(|_| engine.generate(request(&tokenizer, "1, 2, 3, 1, 2, 3, 1, 2,", 0.0, None)).unwrap()).collect();
    let answers = futures::future::join_all(streams.into_iter().map(tokens)).await;
    assert_eq!(answers[0], answers[1]);
    // Only once one of the two had finished (or before the second was admitted) could one speculate.
    let stats = engine.stats();
    assert!(stats.spec_decode_draft_tokens < stats.tokens_generated / 2, "{stats:?}");
}

/// The engine with SmolLM2 as its own draft model.
fn drafted() -> LlmEngine {
    let path = crate::test_models::installed_model(crate::test_models::SMOLLM2_GGUF);
    let (model, card) = super::model::load(&path, &Device::Cpu).unwrap();
    let options = EngineOptions { speculative: speculating(), draft_model_path: Some(path), ..EngineOptions::default() };
    LlmEngine::start("smollm2", model, card, options).unwrap()
}

#[tokio::test]
async fn a_draft_models_proposals_change_no_answer_and_its_own_greedy_tokens_are_all_kept() {
    let prompts = ["The capital of France is", "Write a poem about the sea.", "1, 2, 3, 1, 2, 3, 1, 2,"];
    let (plain, tokenizer) = engine(None);
    let mut greedy = Vec::new();
    let mut seeded = Vec::new();
    for prompt in prompts {
        greedy.push(tokens(plain.generate(request(&tokenizer, prompt, 0.0, None)).unwrap()).await);
        seeded.push(tokens(plain.generate(request(&tokenizer, prompt, 0.9, Some(11))).unwrap()).await);
    }
    drop(plain);

    let engine = drafted();
    for (prompt, expected) in prompts.iter().zip(&greedy) {
        assert_eq!(&tokens(engine.generate(request(&tokenizer, prompt, 0.0, None)).unwrap()).await, expected);
    }
    let stats = engine.stats();
    assert!(stats.spec_decode_draft_tokens > 0, "{stats:?}");
    assert_eq!(stats.spec_decode_accepted_tokens, stats.spec_decode_draft_tokens, "a model agrees with itself: {stats:?}");
    // Sampled and in one batch: the draft proposes its greedy tokens, verification keeps what the seed draws.
    let streams: Vec<TokenStream> =
        prompts.iter().map(|prompt| engine.generate(request(&tokenizer, prompt, 0.9, Some(11))).unwrap()).collect();
    assert_eq!(futures::future::join_all(streams.into_iter().map(tokens)).await, seeded);
}
