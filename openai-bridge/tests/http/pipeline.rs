//! The text pipeline over a fake token stream: deltas, stop strings across tokens, held-back
//! characters, and cancellation when the text stream goes away.

use crate::support;

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use tokio::sync::mpsc;
use tritium_backend_api::llm::{FinishReason, GenerateError, GenerateEvent, ModelKind, TokenStream};
use tritium_openai_bridge::BridgeError;
use tritium_openai_bridge::metrics::LlmMetrics;
use tritium_openai_bridge::pipeline::{TextEvent, Usage, collect, text_stream};

use support::{ids, preprocessor, token_events};

fn finished(reason: FinishReason, prompt_tokens: u32, completion_tokens: u32) -> Result<GenerateEvent, GenerateError> {
    Ok(GenerateEvent::Finished {
        reason,
        prompt_tokens,
        completion_tokens,
        cached_tokens: 0,
        queued_for: Duration::from_millis(1),
    })
}

fn texts(events: &[Result<TextEvent, BridgeError>]) -> Vec<String> {
    events
        .iter()
        .filter_map(|event| match event {
            Ok(TextEvent::Delta { text, .. }) => Some(text.clone()),
            _ => None,
        })
        .collect()
}

#[tokio::test]
async fn deltas_then_finished() {
    let pre = preprocessor(ModelKind::Generate);
    let metrics = LlmMetrics::new();
    let tokens = ids(&pre, "Hello world");
    assert_eq!(tokens.len(), 2, "the test tokenizer merges both words");
    let mut events = token_events(&tokens, Some(1));
    events.push(finished(FinishReason::Length, 3, 2));
    let stream = text_stream(Arc::clone(&pre), TokenStream::from_events(events), vec![], metrics.observer("tiny", "grpc"));
    let events: Vec<_> = stream.collect().await;
    assert_eq!(texts(&events), ["Hello", " world"]);
    let Some(Ok(TextEvent::Delta { tokens: first, .. })) = events.first() else { panic!("{events:?}") };
    assert_eq!(first.len(), 1);
    assert_eq!(first[0].id, tokens[0]);
    assert_eq!(first[0].text, pre.token_text(tokens[0]));
    assert_eq!(first[0].bytes, b"Hello");
    assert_eq!(first[0].logprob, Some(-0.5));
    assert_eq!(first[0].top, vec![(pre.token_text(tokens[0]), b"Hello".to_vec(), -0.5)]);
    assert_eq!(
        events.last(),
        Some(&Ok(TextEvent::Finished {
            reason: FinishReason::Length,
            usage: Usage { prompt_tokens: 3, completion_tokens: 2, cached_tokens: 0, pinned_tokens: 0 },
            stop_string: None
        }))
    );
    let text = metrics.render(&[]);
    assert!(text.contains(r#"tritium_llm_generated_tokens_total{model="tiny",protocol="grpc"} 2"#), "{text}");
    assert!(text.contains(r#"tritium_llm_queue_time_seconds_count{model="tiny",protocol="grpc"} 1"#), "{text}");
    assert!(!text.contains("tritium_llm_requests_cancelled_total{"), "{text}");
}

#[tokio::test]
async fn a_stop_string_across_tokens_ends_the_sequence_at_once() {
    let pre = preprocessor(ModelKind::Generate);
    let metrics = LlmMetrics::new();
    let (sender, receiver) = mpsc::unbounded_channel();
    for event in token_events(&ids(&pre, "Hello world"), None) {
        sender.send(event).expect("open");
    }
    let mut observer = metrics.observer("tiny", "http");
    observer.prompt_tokens(4);
    let mut stream = text_stream(Arc::clone(&pre), TokenStream::new(receiver), vec!["lo w".into()], observer);
    let mut events = Vec::new();
    while let Some(event) = stream.next().await {
        events.push(event);
    }
    assert_eq!(texts(&events).concat(), "Hel");
    assert_eq!(
        events.last(),
        Some(&Ok(TextEvent::Finished {
            reason: FinishReason::Stop,
            usage: Usage { prompt_tokens: 4, completion_tokens: 2, cached_tokens: 0, pinned_tokens: 0 },
            stop_string: Some("lo w".into())
        }))
    );
    // The token stream is gone while the text stream is still alive: the engine sees the cancel.
    assert!(sender.is_closed());
    let delta_tokens: usize = events
        .iter()
        .map(|event| match event {
            Ok(TextEvent::Delta { tokens, .. }) => tokens.len(),
            _ => 0,
        })
        .sum();
    assert_eq!(delta_tokens, 2, "every token is reported once");
    drop(stream);
    assert!(!metrics.render(&[]).contains("tritium_llm_requests_cancelled_total{"), "a stop is not a cancel");
}

#[tokio::test]
async fn half_a_character_waits_for_the_rest() {
    let pre = preprocessor(ModelKind::Generate);
    let tokens = ids(&pre, "é!");
    assert_eq!(tokens.len(), 3, "two byte tokens for é, one for !");
    let mut events = token_events(&tokens, None);
    events.push(finished(FinishReason::Stop, 1, 3));
    let stream = text_stream(Arc::clone(&pre), TokenStream::from_events(events), vec![], LlmMetrics::new().observer("m", "http"));
    let events: Vec<_> = stream.collect().await;
    let deltas: Vec<(String, usize)> = events
        .iter()
        .filter_map(|event| match event {
            Ok(TextEvent::Delta { text, tokens }) => Some((text.clone(), tokens.len())),
            _ => None,
        })
        .collect();
    assert_eq!(deltas.iter().map(|(text, _)| text.as_str()).collect::<String>(), "é!");
    assert!(deltas.iter().all(|(text, _)| !text.is_empty()), "{deltas:?}");
    assert_eq!(deltas.iter().map(|(_, n)| n).sum::<usize>(), 3);
}

#[tokio::test]
async fn dropping_the_text_stream_cancels_the_sequence() {
    let pre = preprocessor(ModelKind::Generate);
    let metrics = LlmMetrics::new();
    let (sender, receiver) = mpsc::unbounded_channel();
    for event in token_events(&ids(&pre, "Hello"), None) {
        sender.send(event).expect("open");
    }
    let mut stream = text_stream(Arc::clone(&pre), TokenStream::new(receiver), vec![], metrics.observer("tiny", "http"));
    let first = stream.next().await;
    assert!(matches!(first, Some(Ok(TextEvent::Delta { ref text, .. })) if text == "Hello"), "{first:?}");
    assert!(!sender.is_closed());
    drop(stream);
    assert!(sender.is_closed(), "the engine's sender sees the receiver gone");
    let text = metrics.render(&[]);
    assert!(text.contains(r#"tritium_llm_requests_cancelled_total{model="tiny",protocol="http"} 1"#), "{text}");
}

#[tokio::test]
async fn the_hard_stop_ends_a_running_stream_but_not_a_finished_one() {
    let pre = preprocessor(ModelKind::Generate);
    let metrics = LlmMetrics::new();
    let stop = tokio_util::sync::CancellationToken::new();
    let (sender, receiver) = mpsc::unbounded_channel();
    for event in token_events(&ids(&pre, "Hello"), None) {
        sender.send(event).expect("open");
    }
    let mut running =
        text_stream(Arc::clone(&pre), TokenStream::new(receiver), vec![], metrics.observer("tiny", "http")).until(&stop);
    let first = running.next().await;
    assert!(matches!(first, Some(Ok(TextEvent::Delta { ref text, .. })) if text == "Hello"), "{first:?}");

    // A stop string ends this one at its first token: its end is decided before the stop comes.
    let events = token_events(&ids(&pre, "Hello"), None);
    let mut done =
        text_stream(Arc::clone(&pre), TokenStream::from_events(events), vec!["llo".into()], metrics.observer("tiny", "http"))
            .until(&stop);
    assert!(matches!(done.next().await, Some(Ok(TextEvent::Delta { ref text, .. })) if text == "He"));

    // The engine is still generating when the stop comes: the stream ends with the error, and the
    // sequence is cancelled.
    stop.cancel();
    let ended = tokio::time::timeout(Duration::from_secs(5), running.next()).await.expect("woken by the stop");
    assert_eq!(ended, Some(Err(BridgeError::ShuttingDown)));
    assert!(running.next().await.is_none());
    assert!(sender.is_closed(), "the engine's sender sees the receiver gone");
    // The finished one ends as it would have.
    let rest: Vec<_> = done.collect().await;
    assert!(matches!(rest.as_slice(), [Ok(TextEvent::Finished { reason: FinishReason::Stop, .. })]), "{rest:?}");
}

#[tokio::test]
async fn engine_errors_end_the_stream() {
    let pre = preprocessor(ModelKind::Generate);
    let metrics = LlmMetrics::new();
    let mut events = token_events(&ids(&pre, "Hello"), None);
    events.push(Err(GenerateError::Engine { model: "tiny".into(), message: "out of memory".into() }));
    let stream = text_stream(Arc::clone(&pre), TokenStream::from_events(events), vec![], metrics.observer("tiny", "http"));
    let error = collect(stream).await.expect_err("the engine failed");
    assert_eq!(error.to_string(), "the model 'tiny' failed: out of memory");
    let text = metrics.render(&[]);
    assert!(text.contains(r#"tritium_llm_request_errors_total{code="internal",model="tiny",protocol="http"} 1"#), "{text}");
    assert!(!text.contains("tritium_llm_requests_cancelled_total{"), "{text}");

    // A stream that ends without `Finished` is an error too, not a silent success.
    let stream = text_stream(Arc::clone(&pre), TokenStream::from_events(vec![]), vec![], metrics.observer("tiny", "http"));
    assert!(matches!(collect(stream).await, Err(BridgeError::Internal(_))));
}

#[tokio::test]
async fn collect_folds_the_stream() {
    let pre = preprocessor(ModelKind::Generate);
    let mut events = token_events(&ids(&pre, "Hello world"), None);
    events.push(finished(FinishReason::Stop, 5, 2));
    let stream = text_stream(Arc::clone(&pre), TokenStream::from_events(events), vec![], LlmMetrics::new().observer("m", "http"));
    let generated = collect(stream).await.expect("finishes");
    assert_eq!(generated.text, "Hello world");
    assert_eq!(generated.tokens.len(), 2);
    assert_eq!(generated.reason, FinishReason::Stop);
    assert_eq!(generated.usage, Usage { prompt_tokens: 5, completion_tokens: 2, cached_tokens: 0, pinned_tokens: 0 });
    assert_eq!(generated.stop_string, None);
}
