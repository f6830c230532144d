//! The mock engine end to end: its tokenizer, prefix reuse seen in stats and KV events,
//! limits, cancellation and batching (loading through a model repository is
//! `tests/tests/end_to_end/mock_llm.rs`).
#![allow(clippy::unwrap_used)]

use std::str::FromStr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use tokio::sync::broadcast;
use tokio::sync::broadcast::error::TryRecvError;

use super::*;
use tritium_backend_api::kv::{KvEvent, block_hashes};
use tritium_backend_api::llm::{
    EngineStats, FinishReason, GenerateError, GenerateEvent, GenerateRequest, LanguageModel, StopOptions, TokenStream,
};

fn fast() -> MockOptions {
    MockOptions { prefill_us_per_token: 0, decode_ms_per_step: 1, ..MockOptions::default() }
}

fn request(prompt: Vec<u32>, max_tokens: u32) -> GenerateRequest {
    GenerateRequest { prompt, stop: StopOptions { max_tokens: Some(max_tokens), ..Default::default() }, ..Default::default() }
}

/// The tokens of a stream and how it finished.
async fn collect(mut stream: TokenStream) -> (Vec<u32>, GenerateEvent) {
    let mut tokens = Vec::new();
    while let Some(event) = stream.next().await {
        match event.unwrap() {
            GenerateEvent::Token(token) => tokens.push(token.id),
            GenerateEvent::PromptLogprobs(_) => {}
            finished @ GenerateEvent::Finished { .. } => return (tokens, finished),
        }
    }
    panic!("the stream ended without Finished after {tokens:?}");
}

fn reason(finished: &GenerateEvent) -> (FinishReason, u32, u32) {
    match finished {
        GenerateEvent::Finished { reason, prompt_tokens, completion_tokens, .. } => (*reason, *prompt_tokens, *completion_tokens),
        GenerateEvent::Token(_) | GenerateEvent::PromptLogprobs(_) => panic!("not finished: {finished:?}"),
    }
}

fn drain(events: &mut broadcast::Receiver<KvEvent>) -> Vec<KvEvent> {
    let mut seen = Vec::new();
    loop {
        match events.try_recv() {
            Ok(event) => seen.push(event),
            Err(TryRecvError::Empty) => return seen,
            Err(e) => panic!("{e}"),
        }
    }
}

/// Waits (up to a generous deadline) for the engine's stats to satisfy `done`.
async fn wait_for(engine: &MockEngine, done: impl Fn(&EngineStats) -> bool) -> EngineStats {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let stats = engine.stats();
        if done(&stats) {
            return stats;
        }
        assert!(Instant::now() < deadline, "stats never got there: {stats:?}");
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

#[test]
fn the_tokenizer_gives_one_token_per_byte_and_round_trips() {
    let card = mock_card(8192);
    let tokenizer = tokenizers::Tokenizer::from_str(&card.tokenizer_json).unwrap();
    let text = "héllo wörld";
    let ids = tokenizer.encode(text, false).unwrap().get_ids().to_vec();
    let bytes: Vec<u32> = text.bytes().map(u32::from).collect();
    assert_eq!(ids, bytes);
    assert_eq!(tokenizer.decode(&ids, false).unwrap(), text);
    let chat = tokenizer.encode("<|im_start|>user\nHi<|im_end|><|endoftext|>", false).unwrap();
    assert_eq!(chat.get_ids(), [IM_START_ID, 117, 115, 101, 114, 10, 72, 105, IM_END_ID, ENDOFTEXT_ID]);
    assert_eq!(tokenizer.get_vocab_size(true), MOCK_VOCAB_SIZE as usize);
    assert_eq!(card.eos_token_ids, vec![ENDOFTEXT_ID, IM_END_ID]);
    assert!(!card.add_bos_token);
    assert_eq!((card.context_length, card.source.as_str()), (8192, "mock"));
}

#[tokio::test]
async fn a_repeated_prompt_is_served_from_the_kv_cache() {
    let engine = MockEngine::new("m", fast());
    let mut events = engine.kv_events().unwrap();
    let prompt: Vec<u32> = (0..64).map(|i| 40 + i % 50).collect();
    let hashes = block_hashes(&prompt, 16);

    let (first, finished) = collect(engine.generate(request(prompt.clone(), 4)).unwrap()).await;
    assert_eq!(reason(&finished), (FinishReason::Length, 64, 4));
    assert_eq!(engine.stats().prompt_tokens_cached, 0);
    assert_eq!(drain(&mut events), vec![KvEvent::Stored { parent: None, blocks: hashes }]);

    let (second, _) = collect(engine.generate(request(prompt, 4)).unwrap()).await;
    assert_eq!(first, second, "the same request gives the same tokens");
    // Every block but the one holding the last prompt token, whose logits are computed.
    assert_eq!(engine.stats().prompt_tokens_cached, 48);
    assert_eq!(engine.stats().prompt_tokens, 64 + 16);
    assert_eq!(drain(&mut events), vec![], "the second prompt stores nothing new");
    let stats = wait_for(&engine, |s| s.running == 0 && s.kv_tokens_used == 0).await;
    assert_eq!(stats.kv_tokens_capacity, 4096 * 16);
}

#[tokio::test]
async fn generated_blocks_are_cached_for_the_next_turn() {
    let engine = MockEngine::new("m", fast());
    let mut events = engine.kv_events().unwrap();
    let prompt: Vec<u32> = (0..30).collect();
    let (completion, _) = collect(engine.generate(request(prompt.clone(), 10)).unwrap()).await;
    let mut turn = [prompt, completion].concat();
    let hashes = block_hashes(&turn, 16);
    assert_eq!(hashes.len(), 2);
    assert_eq!(
        drain(&mut events),
        vec![
            KvEvent::Stored { parent: None, blocks: vec![hashes[0]] },
            KvEvent::Stored { parent: Some(hashes[0]), blocks: vec![hashes[1]] },
        ]
    );

    turn.extend(b"\nuser: more".iter().map(|&b| u32::from(b)));
    collect(engine.generate(request(turn.clone(), 1)).unwrap()).await;
    assert_eq!(engine.stats().prompt_tokens_cached, 32, "the prompt's block and the generated one");
    let third = block_hashes(&turn, 16)[2];
    assert_eq!(drain(&mut events), vec![KvEvent::Stored { parent: Some(hashes[1]), blocks: vec![third] }]);
}

#[tokio::test]
async fn tokens_are_printable_text_and_max_tokens_ends_with_length() {
    let engine = MockEngine::new("m", fast());
    // The text's bytes at the positions the tokens take.
    let (tokens, finished) = collect(engine.generate(request(vec![1, 2, 3], 11)).unwrap()).await;
    assert_eq!(reason(&finished), (FinishReason::Length, 3, 11));
    assert_eq!(String::from_utf8(tokens.iter().map(|&t| t as u8).collect()).unwrap(), "em ipsum do");
    let (tokens, _) = collect(engine.generate(request(vec![1; 6], 5)).unwrap()).await;
    assert_eq!(tokens, b"ipsum".map(u32::from));
    // At any temperature.
    let hot = GenerateRequest {
        sampling: tritium_backend_api::llm::SamplingOptions { temperature: 2.0, ..Default::default() },
        ..request(vec![1; 6], 5)
    };
    assert_eq!(collect(engine.generate(hot).unwrap()).await.0, b"ipsum".map(u32::from));

    let stop = GenerateRequest {
        stop: StopOptions { stop_token_ids: vec![u32::from(b' ')], max_tokens: Some(100), ..Default::default() },
        ..request(vec![1], 100)
    };
    let (tokens, finished) = collect(engine.generate(stop).unwrap()).await;
    assert_eq!(tokens, b"orem".map(u32::from), "the stop token is not sent");
    assert_eq!(reason(&finished), (FinishReason::Stop, 1, 5));

    // Without max_tokens a sequence runs to the context length.
    let short = MockEngine::new("short", MockOptions { context_length: 20, ..fast() });
    let (tokens, finished) =
        collect(short.generate(GenerateRequest { prompt: vec![0; 12], ..Default::default() }).unwrap()).await;
    assert_eq!((tokens.len(), reason(&finished).0), (8, FinishReason::Length));
    let stats = short.stats();
    assert_eq!((stats.tokens_generated, stats.sequences_finished), (8, 1));
}

#[tokio::test]
async fn logprobs_come_from_the_simulated_logits() {
    let engine = MockEngine::new("m", fast());
    let mut stream = engine.generate(GenerateRequest { logprobs: Some(3), ..request(vec![1], 2) }).unwrap();
    let Some(Ok(GenerateEvent::Token(token))) = stream.next().await else { panic!("no token") };
    assert_eq!(token.id, u32::from(b'o'));
    assert!(token.logprob.unwrap().abs() < 1e-6, "{token:?}");
    let ids: Vec<u32> = token.top_logprobs.iter().map(|&(id, _)| id).collect();
    assert_eq!(ids, b"opq".map(u32::from), "the text's byte, then the printable bytes after it");
    for ((_, logprob), expected) in token.top_logprobs.iter().zip([0.0, -31.0, -32.0]) {
        assert!((logprob - expected).abs() < 1e-3, "{token:?}");
    }
}

#[tokio::test]
async fn bad_requests_are_refused_with_a_reason() {
    let engine = MockEngine::new("m", MockOptions { context_length: 64, kv_blocks: 2, block_size: 8, ..fast() });
    let refuse = |request: GenerateRequest| match engine.generate(request) {
        Err(GenerateError::InvalidRequest(message)) => message,
        other => panic!("accepted: {other:?}"),
    };
    assert!(refuse(request(vec![], 1)).contains("empty"));
    assert!(refuse(request(vec![0; 64], 1)).contains("leaves no room to generate within 16 positions"));
    assert!(refuse(request(vec![0; 24], 1)).contains("leaves no room to generate within 16 positions"));
    assert!(refuse(request(vec![MOCK_VOCAB_SIZE], 1)).contains("outside the vocabulary"));
    assert!(refuse(request(vec![0; 4], 0)).contains("max_tokens"));
}

#[tokio::test]
async fn a_dropped_stream_is_cancelled_and_frees_its_blocks() {
    let engine = MockEngine::new("m", fast());
    let mut stream = engine.generate(request(vec![7; 48], 100_000)).unwrap();
    assert!(matches!(stream.next().await, Some(Ok(GenerateEvent::Token(_)))));
    wait_for(&engine, |s| s.kv_tokens_used >= 48).await;
    drop(stream);
    let stats = wait_for(&engine, |s| s.sequences_cancelled == 1).await;
    assert_eq!((stats.running, stats.kv_tokens_used, stats.sequences_finished), (0, 0, 0));
    assert!(stats.tokens_generated < 100_000);
}

#[tokio::test]
async fn a_full_queue_overloads() {
    let options = MockOptions { max_sequences: 1, max_queue: 2, decode_ms_per_step: 5, ..fast() };
    let engine = MockEngine::new("m", options);
    let mut accepted = Vec::new();
    // At most one running and two waiting; none can finish in the meantime.
    let error = loop {
        match engine.generate(request(vec![1; 4], 1000)) {
            Ok(stream) => accepted.push(stream),
            Err(error) => break error,
        }
        assert!(accepted.len() <= 3, "more accepted than the batch and queue hold");
    };
    assert!(matches!(error, GenerateError::Overloaded { limit: 2, waiting: 2, .. }), "{error}");
    assert_eq!(engine.stats().sequences_rejected, 1);
}

#[tokio::test]
async fn concurrent_sequences_share_decode_steps() {
    let options = MockOptions { prefill_us_per_token: 1000, decode_ms_per_step: 1, ..MockOptions::default() };
    let engine = MockEngine::new("m", options);
    let started = Instant::now();
    let streams: Vec<_> = (0..4).map(|i| engine.generate(request(vec![i; 32], 20)).unwrap()).collect();
    for stream in streams {
        assert_eq!(reason(&collect(stream).await.1).0, FinishReason::Length);
    }
    // A lower bound only: 20 steps, plus 32 ms of prefill for at least one of the prompts.
    assert!(started.elapsed() >= Duration::from_millis(52));
    let stats = engine.stats();
    assert_eq!((stats.decode_rows, stats.tokens_generated, stats.prompt_tokens), (80, 80, 128));
    assert!(stats.decode_steps < stats.decode_rows, "{stats:?}");
}

#[tokio::test]
async fn dropping_the_engine_ends_its_streams() {
    let engine = MockEngine::new("m", fast());
    let stream = engine.generate(request(vec![1], 100_000)).unwrap();
    drop(engine);
    let mut stream = stream;
    let mut last = None;
    while let Some(event) = stream.next().await {
        last = Some(event);
    }
    assert!(matches!(last, Some(Err(GenerateError::ShuttingDown(_)))), "{last:?}");
}

#[test]
fn options_out_of_range_are_refused_naming_the_key() {
    let config =
        tritium_repository::parse_config_text("parameters { key: \"max_sequences\" value { string_value: \"0\" } }").unwrap();
    let err = MockOptions::from_config(&config, &MockOptions::default()).unwrap_err();
    assert_eq!(err.to_string(), "parameter 'max_sequences' must be at least 1");
    assert_eq!(
        MockEngine::try_new("m", MockOptions { block_size: 0, ..fast() }).unwrap_err().to_string(),
        "parameter 'block_size' must be at least 1"
    );
}

#[test]
fn options_round_trip_through_a_config() {
    let options = MockOptions {
        prefill_us_per_token: 7,
        decode_ms_per_step: 3,
        block_size: 32,
        kv_blocks: 100,
        max_sequences: 5,
        max_queue: 9,
        context_length: 1000,
        scheduling_policy: crate::SchedulingPolicy::Priority,
    };
    let text = mock_config_text("m", &options);
    let config = tritium_repository::parse_config_text(&text).unwrap();
    assert_eq!(config.backend, MOCK_LLM_BACKEND);
    assert_eq!(MockOptions::from_config(&config, &MockOptions::default()).unwrap(), options);
    let _: Arc<MockEngine> = MockEngine::new("m", options);
}
