//! Prompt scoring with the real SmolLM2: every position after the first is scored, the scores do
//! not depend on the prefill chunk size or on what the prefix cache holds, and they are, bit for
//! bit, what generation reports for the same position.

#![allow(clippy::unwrap_used)]

use futures::StreamExt;

use super::engine_cache_tests::{SYSTEM, engine, request};
use super::engine_state::EngineOptions;
use tritium_backend_api::llm::{GenerateEvent, GenerateRequest, GeneratedToken, LanguageModel, PromptLogprob, TokenStream};

/// The prompt's scores, the tokens, and the prompt tokens found cached.
async fn scored(stream: TokenStream) -> (Vec<PromptLogprob>, Vec<GeneratedToken>, u32) {
    let mut stream = stream;
    let (mut scores, mut tokens) = (None, Vec::new());
    while let Some(event) = stream.next().await {
        match event.unwrap() {
            GenerateEvent::PromptLogprobs(got) => {
                assert!(tokens.is_empty(), "prompt scores after a token");
                assert!(scores.replace(got).is_none(), "prompt scores sent twice");
            }
            GenerateEvent::Token(token) => tokens.push(token),
            GenerateEvent::Finished { cached_tokens, .. } => return (scores.expect("no prompt scores"), tokens, cached_tokens),
        }
    }
    panic!("the stream ended without Finished");
}

/// Bit for bit: the logits are batch-invariant, so a position scores the same however its
/// prompt was prefilled.
fn same(a: &[PromptLogprob], b: &[PromptLogprob]) {
    assert_eq!(a.len(), b.len());
    for (position, (x, y)) in a.iter().zip(b).enumerate() {
        assert_eq!(x, y, "position {}", position + 1);
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn prompts_are_scored_alike_in_any_chunk_size_and_with_a_warm_cache() {
    let text = format!("{SYSTEM}Question: when does the library open on Saturdays?");
    let (big, tokenizer) = engine(EngineOptions::default());
    let ask = |max_tokens| GenerateRequest { prompt_logprobs: Some(2), ..request(&tokenizer, &text, max_tokens) };
    let prompt_len = ask(1).prompt.len();
    assert!(prompt_len > 64, "the prompt should span several blocks and chunks");

    let (cold, tokens, cached) = scored(big.generate(ask(2)).unwrap()).await;
    assert_eq!(cold.len(), prompt_len - 1);
    assert_eq!(cached, 0);
    assert!(cold.iter().all(|s| s.logprob <= 0.0 && s.top_logprobs.len() == 2));
    assert!(cold.iter().all(|s| s.top_logprobs[0].1 >= s.logprob), "the top list holds the best token");
    assert_eq!(tokens.len(), 2);

    // The prefix cache now holds the prompt's blocks: a plain request takes them, a scored one
    // computes every row again and scores the same.
    let (_, _, cached) = scored_or_plain(big.generate(request(&tokenizer, &text, 1)).unwrap()).await;
    assert!(cached > 0, "the plain request should find the prompt cached");
    let (warm, _, cached) = scored(big.generate(ask(1)).unwrap()).await;
    assert_eq!(cached, 0);
    same(&cold, &warm);

    let (small, _) = engine(EngineOptions { prefill_chunk: 7, ..EngineOptions::default() });
    let (chunked, _, _) = scored(small.generate(ask(1)).unwrap()).await;
    same(&cold, &chunked);

    // The score of the last prompt token equals what generation reports when that token is
    // generated from the prompt before it (its greedy choice or an alternative).
    let mut shorter = request(&tokenizer, &text, 1);
    let last = shorter.prompt.pop().unwrap();
    shorter.logprobs = Some(20);
    let (_, generated, _) = scored_or_plain(small.generate(shorter).unwrap()).await;
    let reported = match generated[0].id == last {
        true => generated[0].logprob,
        false => generated[0].top_logprobs.iter().find(|(id, _)| *id == last).map(|t| t.1),
    };
    let reported = reported.expect("the prompt's last token is among the 20 most likely");
    let mine = cold.last().unwrap().logprob;
    assert_eq!(reported.to_bits(), mine.to_bits(), "{reported} vs {mine}");
}

/// Like [`scored`] for a request that asked for no scores (there must be none).
async fn scored_or_plain(stream: TokenStream) -> (Option<Vec<PromptLogprob>>, Vec<GeneratedToken>, u32) {
    let mut stream = stream;
    let mut tokens = Vec::new();
    while let Some(event) = stream.next().await {
        match event.unwrap() {
            GenerateEvent::PromptLogprobs(_) => panic!("prompt scores nobody asked for"),
            GenerateEvent::Token(token) => tokens.push(token),
            GenerateEvent::Finished { cached_tokens, .. } => return (None, tokens, cached_tokens),
        }
    }
    panic!("the stream ended without Finished");
}
