//! The engine with the real SmolLM2: generation, limits, cancellation and batching.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use candle_core::Device;
use futures::StreamExt;

use super::engine::LlmEngine;
use super::engine_state::EngineOptions;
use tritium_backend_api::llm::Constraint;
use tritium_backend_api::llm::LanguageModel;
use tritium_backend_api::llm::{
    FinishReason, GenerateError, GenerateEvent, GenerateRequest, SamplingOptions, StopOptions, TokenStream,
};

fn smollm2() -> PathBuf {
    crate::test_models::installed_model(crate::test_models::SMOLLM2_GGUF)
}

fn engine(options: EngineOptions) -> (LlmEngine, tokenizers::Tokenizer) {
    let (model, card) = super::model::load(&smollm2(), &Device::Cpu).unwrap();
    let tokenizer: tokenizers::Tokenizer = card.tokenizer_json.parse().unwrap();
    (LlmEngine::start("smollm2", model, card, options).unwrap(), tokenizer)
}

fn greedy(tokenizer: &tokenizers::Tokenizer, prompt: &str, max_tokens: u32) -> GenerateRequest {
    GenerateRequest {
        prompt: tokenizer.encode(prompt, false).unwrap().get_ids().to_vec(),
        sampling: SamplingOptions { temperature: 0.0, ..SamplingOptions::default() },
        stop: StopOptions { max_tokens: Some(max_tokens), ignore_eos: true, ..StopOptions::default() },
        logprobs: None,
        model_version: None,
        constraint: None,
        prompt_logprobs: None,
        priority: Default::default(),
        adapter: None,
        pin: None,
    }
}

/// Every token of a stream, and how it finished.
async fn drain(stream: TokenStream) -> (Vec<u32>, FinishReason) {
    let (tokens, reason, completion_tokens) = drain_counted(stream).await;
    // A stop token counts as generated (as in OpenAI's usage) but is not sent.
    let unsent = usize::from(reason == FinishReason::Stop);
    assert_eq!(completion_tokens as usize, tokens.len() + unsent);
    (tokens, reason)
}

/// Every token of a stream, how it finished, and the tokens it counted.
async fn drain_counted(mut stream: TokenStream) -> (Vec<u32>, FinishReason, u32) {
    let mut tokens = Vec::new();
    while let Some(event) = stream.next().await {
        match event.unwrap() {
            GenerateEvent::Token(token) => tokens.push(token.id),
            GenerateEvent::PromptLogprobs(_) => {}
            GenerateEvent::Finished { reason, completion_tokens, .. } => return (tokens, reason, completion_tokens),
        }
    }
    panic!("the stream ended without Finished");
}

/// Waits, up to a generous deadline, for a condition on the engine's counters.
pub(crate) async fn eventually(engine: &LlmEngine, what: &str, check: impl Fn(&tritium_backend_api::llm::EngineStats) -> bool) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !check(&engine.stats()) {
        assert!(Instant::now() < deadline, "{what}: {:?}", engine.stats());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn generates_greedily_and_stops_at_max_tokens_or_a_stop_token() {
    let (engine, tokenizer) = engine(EngineOptions::default());
    let (tokens, reason) = drain(engine.generate(greedy(&tokenizer, "The capital of France is", 3)).unwrap()).await;
    assert_eq!(reason, FinishReason::Length);
    assert!(tokenizer.decode(&tokens, false).unwrap().starts_with(" Paris"));

    let mut request = greedy(&tokenizer, "The capital of France is", 10);
    request.stop.stop_token_ids = vec![tokens[1]];
    let (stopped, reason) = drain(engine.generate(request).unwrap()).await;
    assert_eq!((stopped, reason), (vec![tokens[0]], FinishReason::Stop), "the stop token ends the sequence unsent");
}

#[tokio::test]
async fn refuses_what_cannot_run_and_sheds_load_past_the_queue() {
    let options = EngineOptions { max_sequences: 1, max_queue: 1, ..EngineOptions::default() };
    let (engine, tokenizer) = engine(options);
    let empty = GenerateRequest::default();
    assert!(matches!(engine.generate(empty), Err(GenerateError::InvalidRequest(m)) if m.contains("empty")));
    let mut bad = greedy(&tokenizer, "hi", 1);
    bad.prompt.push(1_000_000);
    assert!(matches!(engine.generate(bad), Err(GenerateError::InvalidRequest(m)) if m.contains("1000000")));

    let running = engine.generate(greedy(&tokenizer, "Once upon a time", 200)).unwrap();
    eventually(&engine, "the first request runs", |s| s.running == 1).await;
    let waiting = engine.generate(greedy(&tokenizer, "Once upon a time", 2)).unwrap();
    let refused = engine.generate(greedy(&tokenizer, "Once upon a time", 2));
    assert!(matches!(refused, Err(GenerateError::Overloaded { limit: 1, .. })), "{refused:?}");
    assert_eq!(engine.stats().sequences_rejected, 1);
    drop(running);
    let (tokens, _) = drain(waiting).await;
    assert_eq!(tokens.len(), 2, "the waiting request runs once the first is gone");
}

#[tokio::test]
async fn a_dropped_stream_stops_its_sequence_within_a_step() {
    let (engine, tokenizer) = engine(EngineOptions::default());
    let mut stream = engine.generate(greedy(&tokenizer, "Once upon a time", 2000)).unwrap();
    for _ in 0..3 {
        assert!(matches!(stream.next().await, Some(Ok(GenerateEvent::Token(_)))));
    }
    drop(stream);
    eventually(&engine, "the sequence is dropped", |s| s.sequences_cancelled == 1 && s.running == 0).await;
    let generated = engine.stats().tokens_generated;
    assert!(generated < 10, "generation went on after the client left: {generated} tokens");
    assert_eq!(engine.stats().kv_tokens_used, 0);
}

#[tokio::test]
async fn concurrent_sequences_share_decode_steps_and_match_their_solo_runs() {
    let (engine, tokenizer) = engine(EngineOptions::default());
    let prompts = ["The capital of France is", "Once upon a time, there was", "My favourite food is"];
    let mut solo = Vec::new();
    for prompt in prompts {
        solo.push(drain(engine.generate(greedy(&tokenizer, prompt, 8)).unwrap()).await.0);
    }
    let before = engine.stats();
    let streams: Vec<TokenStream> = prompts.iter().map(|p| engine.generate(greedy(&tokenizer, p, 8)).unwrap()).collect();
    let together = futures::future::join_all(streams.into_iter().map(drain)).await;
    let after = engine.stats();
    let (steps, rows) = (after.decode_steps - before.decode_steps, after.decode_rows - before.decode_rows);
    assert!(rows > steps, "sequences never shared a step: {rows} rows in {steps} steps");
    for ((tokens, _), alone) in together.iter().zip(&solo) {
        // Batching changes only which kernel a matmul uses, so greedy text may differ only
        // where two tokens are near-tied; these prompts have clear winners for 8 tokens.
        assert_eq!(tokens, alone);
    }
}

/// The text a constrained request generates, and how it finished.
async fn constrained(
    engine: &LlmEngine,
    tokenizer: &tokenizers::Tokenizer,
    prompt: &str,
    constraint: Constraint,
) -> (String, FinishReason) {
    let mut request = greedy(tokenizer, prompt, 80);
    request.constraint = Some(constraint);
    let (tokens, reason, counted) = drain_counted(engine.generate(request).unwrap()).await;
    // A grammar's last token is sent (no stop token is held back), or else the EOS it allowed is not.
    assert!(counted as usize == tokens.len() || counted as usize == tokens.len() + 1, "{counted} for {}", tokens.len());
    (tokenizer.decode(&tokens, false).unwrap(), reason)
}

#[tokio::test]
async fn structured_output_follows_its_grammar_and_ends_with_it() {
    let (engine, tokenizer) = engine(EngineOptions::default());
    let schema = r#"{"type": "object", "properties": {"name": {"type": "string", "maxLength": 20},
        "age": {"type": "integer", "minimum": 0, "maximum": 150}}, "required": ["name", "age"], "additionalProperties": false}"#;
    let (text, reason) = constrained(&engine, &tokenizer, "A person, as JSON:", Constraint::JsonSchema(schema.into())).await;
    let person: serde_json::Value = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}: {text:?}"));
    assert!(person["name"].is_string() && person["age"].is_u64(), "{person}");
    assert_eq!(person.as_object().map(|o| o.len()), Some(2), "{person}");
    assert_eq!(reason, FinishReason::Stop, "the grammar's end ends the sequence");

    let choice = Constraint::Choice(vec!["yes".into(), "no".into()]);
    let (text, reason) = constrained(&engine, &tokenizer, "Is Paris in France? Answer:", choice).await;
    assert!(text == "yes" || text == "no", "{text:?}");
    assert_eq!(reason, FinishReason::Stop);

    let (text, _) = constrained(&engine, &tokenizer, "Three digits:", Constraint::Regex("[0-9]{3}".into())).await;
    assert!(text.len() == 3 && text.bytes().all(|b| b.is_ascii_digit()), "{text:?}");

    let prompt = "Alice as JSON: {\"name\": \"Alice\", \"age\": 30}\nBob as JSON:";
    let (text, _) = constrained(&engine, &tokenizer, prompt, Constraint::JsonObject).await;
    assert!(serde_json::from_str::<serde_json::Map<String, serde_json::Value>>(&text).is_ok(), "{text:?}");
}

#[tokio::test]
async fn a_bad_grammar_is_refused_before_it_runs() {
    let (engine, tokenizer) = engine(EngineOptions::default());
    for constraint in [
        Constraint::Regex("(unclosed".into()),
        Constraint::JsonSchema("{not json".into()),
        Constraint::JsonSchema("[1, 2]".into()),
        Constraint::Choice(Vec::new()),
        Constraint::Lark("start: undefined_rule".into()),
    ] {
        let mut request = greedy(&tokenizer, "hi", 4);
        request.constraint = Some(constraint.clone());
        let outcome = engine.generate(request);
        assert!(matches!(outcome, Err(GenerateError::InvalidRequest(_))), "{constraint:?}: {outcome:?}");
    }
    assert_eq!(engine.stats().sequences_rejected, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_grammar_over_the_byte_limit_is_refused_and_one_within_it_compiles_on_a_runtime_thread() {
    let (engine, tokenizer) = engine(EngineOptions { max_constraint_bytes: 64, ..EngineOptions::default() });
    let mut request = greedy(&tokenizer, "hi", 2);
    request.constraint = Some(Constraint::Regex(format!("({})", "a|".repeat(40))));
    match engine.generate(request) {
        Err(GenerateError::InvalidRequest(message)) => assert!(message.contains("at most 64"), "{message}"),
        other => panic!("an 82-byte regex over a 64-byte limit: {other:?}"),
    }
    // Within the limit it compiles (block_in_place on this multi-thread runtime) and runs.
    let choice = Constraint::Choice(vec!["yes".into(), "no".into()]);
    let (text, _) = constrained(&engine, &tokenizer, "Is the sky blue?", choice).await;
    assert!(text == "yes" || text == "no", "{text:?}");
}
