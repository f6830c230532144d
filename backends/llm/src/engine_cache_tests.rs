//! The engine's paged KV cache with the real SmolLM2: prefix reuse that changes no output,
//! preemption when the pool runs dry, and KV events that match what the cache holds.

#![allow(clippy::unwrap_used)]

use std::collections::HashSet;

use candle_core::Device;
use futures::StreamExt;

use super::engine::LlmEngine;
use super::engine_state::EngineOptions;
use super::engine_tests::eventually;
use tritium_backend_api::kv::{KvEvent, block_hashes};
use tritium_backend_api::llm::LanguageModel;
use tritium_backend_api::llm::{
    FinishReason, GenerateEvent, GenerateRequest, GeneratedToken, SamplingOptions, StopOptions, TokenStream,
};

pub(super) fn engine(options: EngineOptions) -> (LlmEngine, tokenizers::Tokenizer) {
    let path = crate::test_models::installed_model(crate::test_models::SMOLLM2_GGUF);
    let (model, card) = super::model::load(&path, &Device::Cpu).unwrap();
    let tokenizer: tokenizers::Tokenizer = card.tokenizer_json.parse().unwrap();
    (LlmEngine::start("smollm2", model, card, options).unwrap(), tokenizer)
}

pub(super) const SYSTEM: &str = "You are a careful assistant for a library. You answer questions about opening hours, \
borrowing rules and events. The library opens at nine in the morning and closes at six in the evening on \
weekdays; on Saturdays it closes at one. Books may be borrowed for three weeks and renewed twice. ";

pub(super) fn request(tokenizer: &tokenizers::Tokenizer, text: &str, max_tokens: u32) -> GenerateRequest {
    GenerateRequest {
        prompt: tokenizer.encode(text, false).unwrap().get_ids().to_vec(),
        sampling: SamplingOptions { temperature: 0.0, ..SamplingOptions::default() },
        stop: StopOptions { max_tokens: Some(max_tokens), ignore_eos: true, ..StopOptions::default() },
        logprobs: Some(3),
        model_version: None,
        constraint: None,
        prompt_logprobs: None,
        priority: Default::default(),
        adapter: None,
        pin: None,
    }
}

/// The tokens of a stream and the prompt tokens it found cached.
pub(super) async fn run(stream: TokenStream) -> (Vec<GeneratedToken>, u32, FinishReason) {
    let mut stream = stream;
    let mut tokens = Vec::new();
    while let Some(event) = stream.next().await {
        match event.unwrap() {
            GenerateEvent::Token(token) => tokens.push(token),
            GenerateEvent::PromptLogprobs(_) => {}
            GenerateEvent::Finished { cached_tokens, reason, .. } => return (tokens, cached_tokens, reason),
        }
    }
    panic!("the stream ended without Finished");
}

pub(super) fn ids(tokens: &[GeneratedToken]) -> Vec<u32> {
    tokens.iter().map(|t| t.id).collect()
}

/// Greedy tokens and their log-probabilities (top alternatives included) agree with and without
/// the prefix cache. Reused blocks were computed in one chunk of the first prompt and the rest
/// in a short one, so the quantized kernels may round differently: the logits agree closely, not
/// bit for bit (the dense-weight model test checks bit equality).
pub(super) fn assert_same_logits(cached: &[GeneratedToken], computed: &[GeneratedToken]) {
    assert_eq!(ids(cached), ids(computed), "greedy tokens differ");
    for (index, (a, b)) in cached.iter().zip(computed).enumerate() {
        let (la, lb) = (a.logprob.unwrap(), b.logprob.unwrap());
        assert!((la - lb).abs() < 0.02, "token {index}: logprob {la} vs {lb}");
        for ((ia, pa), (ib, pb)) in a.top_logprobs.iter().zip(&b.top_logprobs) {
            assert!(
                ia == ib || (pa - pb).abs() < 0.02,
                "token {index}: alternatives {:?} vs {:?}",
                a.top_logprobs,
                b.top_logprobs
            );
            assert!((pa - pb).abs() < 0.02, "token {index}: alternative logprob {pa} vs {pb}");
        }
    }
}

#[tokio::test]
async fn a_shared_prefix_is_served_from_the_cache_with_the_logits_computed_without_it() {
    let (cached, tokenizer) = engine(EngineOptions::default());
    let (uncached, _) = engine(EngineOptions { prefix_caching: false, ..EngineOptions::default() });
    let first = format!("{SYSTEM}Question: when does the library close on Saturday? Answer:");
    let second = format!("{SYSTEM}Question: how long may I keep a book? Answer:");
    let prompt_len = request(&tokenizer, &first, 1).prompt.len();
    let system_len = request(&tokenizer, SYSTEM, 1).prompt.len();
    assert!(system_len > 48, "the shared part spans several blocks");

    let (cold, cold_cached, _) = run(cached.generate(request(&tokenizer, &first, 12)).unwrap()).await;
    assert_eq!(cold_cached, 0);
    let (repeat, repeat_cached, _) = run(cached.generate(request(&tokenizer, &first, 12)).unwrap()).await;
    // Every full block but the one holding the last prompt token, whose logits must be computed.
    assert_eq!(repeat_cached as usize, (prompt_len - 1) / 16 * 16);
    let (other, other_cached, _) = run(cached.generate(request(&tokenizer, &second, 12)).unwrap()).await;
    assert!(other_cached as usize >= system_len / 16 * 16 - 16, "{other_cached} of a {system_len}-token shared part");

    let (fresh, fresh_cached, _) = run(uncached.generate(request(&tokenizer, &first, 12)).unwrap()).await;
    let (fresh_other, _, _) = run(uncached.generate(request(&tokenizer, &second, 12)).unwrap()).await;
    assert_eq!(fresh_cached, 0, "no prefix cache, nothing cached");
    assert_same_logits(&repeat, &fresh);
    assert_same_logits(&cold, &fresh);
    assert_same_logits(&other, &fresh_other);
    let stats = cached.stats();
    assert_eq!(stats.prompt_tokens_cached, u64::from(repeat_cached + other_cached));
    assert!(stats.kv_blocks_cached > 0);
    assert_eq!(uncached.stats().prompt_tokens_cached, 0);
}

/// A resumed sequence recomputes its lost positions as a prompt chunk, where the quantized
/// kernels round differently from the one-row steps that first computed them: its tokens must
/// be the solo run's until, at most, a position where the solo run's two best tokens were within
/// rounding of each other. (Batched steps round differently from solo ones too, so the
/// difference grows along a sequence: 0.1 nats is what four sequences of 24 tokens stay within.)
fn assert_same_until_a_near_tie(tokens: &[GeneratedToken], alone: &[GeneratedToken], index: usize) {
    assert_eq!(tokens.len(), alone.len());
    let Some(split) = tokens.iter().zip(alone).position(|(a, b)| a.id != b.id) else { return };
    let solo = &alone[split];
    let chosen = solo.logprob.unwrap();
    let theirs = solo.top_logprobs.iter().find(|(id, _)| *id == tokens[split].id);
    let gap = theirs.map_or(f32::INFINITY, |(_, logprob)| chosen - logprob);
    assert!(gap < 0.1, "sequence {index}: token {split} is {} instead of {} with a gap of {gap}", tokens[split].id, solo.id);
}

#[tokio::test]
async fn a_dry_pool_preempts_the_newest_sequence_and_every_sequence_gets_its_solo_tokens() {
    // Seven blocks; four sequences that each grow to two or three.
    let options = EngineOptions { max_kv_tokens: 112, ..EngineOptions::default() };
    let (engine, tokenizer) = engine(options);
    let prompts = [
        "The capital of France is",
        "Once upon a time, there was a little girl named Lily. She loved to",
        "The three primary colours are",
        "To make a cup of tea, first",
    ];
    let mut solo = Vec::new();
    for prompt in prompts {
        solo.push(run(engine.generate(request(&tokenizer, prompt, 24)).unwrap()).await.0);
    }
    let streams: Vec<TokenStream> = prompts.iter().map(|p| engine.generate(request(&tokenizer, p, 24)).unwrap()).collect();
    let together = futures::future::join_all(streams.into_iter().map(run)).await;
    let stats = engine.stats();
    assert!(stats.sequences_preempted > 0, "seven blocks cannot hold four sequences of 30 to 41 positions: {stats:?}");
    for (index, ((tokens, _, reason), alone)) in together.iter().zip(&solo).enumerate() {
        assert_eq!(*reason, FinishReason::Length);
        assert_same_until_a_near_tie(tokens, alone, index);
    }
    // The gauges are published after the step that sent the last Finished.
    eventually(&engine, "every block went back", |s| s.running == 0 && s.kv_tokens_used == 0).await;
}

#[tokio::test]
async fn kv_events_announce_exactly_the_blocks_the_cache_holds() {
    let (engine, tokenizer) = engine(EngineOptions { max_kv_tokens: 256, ..EngineOptions::default() });
    let mut events = engine.kv_events().unwrap();
    let mut held: HashSet<u64> = HashSet::new();
    let mut replay = |events: &mut tokio::sync::broadcast::Receiver<KvEvent>| {
        super::block_pool_tests::replay(&mut held, events);
        held.clone()
    };
    let first = request(&tokenizer, SYSTEM, 20);
    let (tokens, _, _) = run(engine.generate(first.clone()).unwrap()).await;
    eventually(&engine, "the sequence is retired", |s| s.running == 0).await;
    let whole: Vec<u32> = first.prompt.iter().copied().chain(ids(&tokens)).collect();
    // The last generated token was never fed, so it is in no block.
    let expected: HashSet<u64> = block_hashes(&whole[..whole.len() - 1], 16).into_iter().collect();
    assert_eq!(replay(&mut events), expected, "prompt and generated blocks, all announced");

    // A pool of 16 blocks cannot keep the first sequence's blocks beside a long second one
    // that shares none of them.
    let long = format!("Note. {SYSTEM}{SYSTEM}");
    let second = request(&tokenizer, &long, 100);
    let (tokens, _, _) = run(engine.generate(second.clone()).unwrap()).await;
    eventually(&engine, "the sequence is retired", |s| s.running == 0).await;
    let now = replay(&mut events);
    let whole: Vec<u32> = second.prompt.iter().copied().chain(ids(&tokens)).collect();
    let second_blocks: HashSet<u64> = block_hashes(&whole[..whole.len() - 1], 16).into_iter().collect();
    assert!(now.len() <= 16, "never more than the pool: {}", now.len());
    assert!(now.is_subset(&expected.union(&second_blocks).copied().collect()), "only blocks some sequence filled");
    assert!(!expected.is_subset(&now), "some of the first sequence's blocks were evicted and announced as removed");
    assert_eq!(engine.stats().kv_blocks_cached, now.len(), "the announcements match the cache");
}

#[test]
fn a_pool_larger_than_the_machine_or_a_block_larger_than_the_pool_is_refused_at_start() {
    let path = crate::test_models::installed_model(crate::test_models::SMOLLM2_GGUF);
    for (options, expected) in [
        (EngineOptions { max_kv_tokens: 1 << 40, ..EngineOptions::default() }, "lower --llm-max-kv-tokens"),
        (EngineOptions { kv_block_size: 4096, ..EngineOptions::default() }, "the largest block"),
        (EngineOptions { kv_block_size: 64, max_kv_tokens: 32, ..EngineOptions::default() }, "than the pool"),
    ] {
        let (model, card) = super::model::load(&path, &Device::Cpu).unwrap();
        match LlmEngine::start("smollm2", model, card, options) {
            Err(message) => assert!(message.contains(expected), "{message}"),
            Ok(_) => panic!("started with {expected:?} expected"),
        }
    }
}

#[tokio::test]
async fn an_evicted_prefix_comes_back_from_the_offload_tier_with_the_logits_computed_without_it() {
    let dir = tempfile::tempdir().unwrap();
    let offload = Some(super::offload::OffloadOptions { dir: dir.path().to_path_buf(), max_bytes: 64 << 20 });
    // Eight blocks: the second prompt cannot leave the first one's blocks in memory.
    let (engine, tokenizer) = engine(EngineOptions { max_kv_tokens: 128, offload, ..EngineOptions::default() });
    let mut events = engine.kv_events().unwrap();
    let first = format!("{SYSTEM}Question: may I renew a book twice? Answer:");
    let (cold, _, _) = run(engine.generate(request(&tokenizer, &first, 6)).unwrap()).await;
    let other = "A completely different text about rivers, mountains and the sea, long enough to fill the pool \
        of this small engine with blocks of its own, so that the first prompt's blocks must leave memory.";
    run(engine.generate(request(&tokenizer, &other.repeat(2), 6)).unwrap()).await;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    // Its last two full blocks went (a sequence's tail is evicted first); its first two stayed.
    while engine.stats().kv_blocks_offloaded < 2 {
        assert!(std::time::Instant::now() < deadline, "never written: {:?}", engine.stats());
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    let (again, cached, _) = run(engine.generate(request(&tokenizer, &first, 6)).unwrap()).await;
    let stats = engine.stats();
    assert!(stats.kv_blocks_restored >= 2, "{stats:?}");
    assert_eq!(cached, 64, "two blocks in memory and two read back from disk");
    assert_same_logits(&again, &cold);
    let seen: Vec<KvEvent> = std::iter::from_fn(|| events.try_recv().ok()).collect();
    assert!(seen.iter().any(|e| matches!(e, KvEvent::Offloaded { .. })), "the router hears of offloaded blocks");
}

/// The first token's report of what a request's pin wrote, and the prompt tokens found cached.
async fn pinned_run(engine: &LlmEngine, request: GenerateRequest) -> (Option<u32>, u32) {
    let (tokens, cached, _) = run(engine.generate(request).unwrap()).await;
    (tokens[0].prompt_pinned, cached)
}

#[tokio::test]
async fn a_pinned_prefix_survives_the_pressure_that_evicts_an_unpinned_one() {
    let options = EngineOptions { max_kv_tokens: 256, max_sequences: 2, ..EngineOptions::default() };
    let (engine, tokenizer) = engine(options);
    let system_len = request(&tokenizer, SYSTEM, 1).prompt.len();
    let pin = tritium_backend_api::llm::PrefixPin { tokens: system_len as u32, ttl: std::time::Duration::from_secs(300) };
    let pinned = |text: &str| GenerateRequest { pin: Some(pin), ..request(&tokenizer, &format!("{SYSTEM}{text}"), 2) };
    let covered = system_len / 16 * 16;
    // The first pin writes the prefix's full blocks; pinning it again writes nothing.
    assert_eq!(pinned_run(&engine, pinned("Q: hours? A:")).await, (Some(covered as u32), 0));
    let (written, cached) = pinned_run(&engine, pinned("Q: rules? A:")).await;
    assert_eq!(written, Some(0));
    assert!(cached as usize >= covered);
    // Long unrelated prompts use up the pool several times over.
    let unpinned = "Deliveries arrive at the loading dock behind the east wing every morning. ";
    for round in 0..6 {
        let text =
            format!("Log {round}: {}", "The warehouse counts its pallets twice a day and writes the totals down. ".repeat(8));
        let _ = run(engine.generate(request(&tokenizer, &text, 2)).unwrap()).await;
        if round == 0 {
            let _ = run(engine.generate(request(&tokenizer, &unpinned.repeat(4), 2)).unwrap()).await;
        }
    }
    // The pinned prefix is still cached; the unpinned one was evicted.
    let (_, cached) = pinned_run(&engine, pinned("Q: events? A:")).await;
    assert!(cached as usize >= covered, "{cached} of {covered} pinned tokens cached");
    let (_, cached, _) = run(engine.generate(request(&tokenizer, &format!("{}Q?", unpinned.repeat(4)), 2)).unwrap()).await;
    assert_eq!(cached, 0, "the unpinned prefix survived: the pool was not under pressure");
}

#[tokio::test]
async fn with_no_room_for_pins_nothing_is_pinned_or_reported_written() {
    let options = EngineOptions { max_kv_tokens: 256, max_pinned_kv_permille: 0, ..EngineOptions::default() };
    let (engine, tokenizer) = engine(options);
    let pin = tritium_backend_api::llm::PrefixPin { tokens: 64, ttl: std::time::Duration::from_secs(300) };
    let request = GenerateRequest { pin: Some(pin), ..request(&tokenizer, &format!("{SYSTEM}Q: hours? A:"), 2) };
    assert_eq!(pinned_run(&engine, request).await, (Some(0), 0));
}

#[tokio::test]
async fn with_the_prefix_cache_off_nothing_is_pinned() {
    let options = EngineOptions { max_kv_tokens: 256, prefix_caching: false, ..EngineOptions::default() };
    let (engine, tokenizer) = engine(options);
    let pin = tritium_backend_api::llm::PrefixPin { tokens: 64, ttl: std::time::Duration::from_secs(300) };
    let request = || GenerateRequest { pin: Some(pin), ..request(&tokenizer, &format!("{SYSTEM}Q: hours? A:"), 2) };
    assert_eq!(pinned_run(&engine, request()).await, (Some(0), 0));
    // No block stays held: the whole pool is there for the next sequences.
    assert_eq!(pinned_run(&engine, request()).await, (Some(0), 0));
    // The gauges are published after the step that sent the last token.
    eventually(&engine, "no block stays held", |s| s.running == 0 && s.kv_tokens_used == 0).await;
}
