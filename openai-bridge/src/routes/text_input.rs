//! `/v1/chat/completions` and `/v1/completions` for models whose workers take OpenAI requests as
//! the client sent them (Dynamo's text-input workers; [`LlmHub::takes_text`]). The request is
//! forwarded unchanged and the worker's chunk objects are relayed: streamed as they come, or
//! folded into one answer (choices' texts, reasoning and tool calls joined, the last finish
//! reason and usage kept), as Dynamo's frontend answers for such workers. A folded answer is
//! held to the body limit.

use std::collections::BTreeMap;
use std::convert::Infallible;

use axum::body::Body;
use axum::http::StatusCode;
use axum::response::Response;
use bytes::Bytes;
use serde_json::{Map, Value, json};
use tokio_util::sync::CancellationToken;
use tritium_backend_api::llm::{FinishReason, OpenAiApi, OpenAiChunks};

use super::{ApiError, AppState, CallerTrace, json_response, sse};
use crate::BridgeError;
use crate::metrics::RequestObserver;
use crate::parsers::{ParsedDelta, ToolCall};
use crate::pipeline::Usage;
use crate::protocol::ErrorBody;

/// Where a forwarded request goes: the worker it names, else its agent session's.
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct Place<'a> {
    pub(super) worker: Option<&'a str>,
    pub(super) session: Option<&'a str>,
}

/// Forwards `request` (what the client sent to `api`) to a worker of `model` and answers with
/// what it sends back.
pub(super) async fn forward(
    state: &AppState,
    api: OpenAiApi,
    model: &str,
    place: Place<'_>,
    request: Value,
    caller: CallerTrace,
) -> Result<Response, ApiError> {
    let stream = request.get("stream").and_then(Value::as_bool).unwrap_or(false);
    let (chunks, mut observer) = send(state, api, model, place, request, caller).await?;
    if stream {
        return Ok(relay(chunks, observer, state.hub.hard_stop().cloned()));
    }
    let fold = fold_all(state, api, chunks, &mut observer).await?;
    Ok(json_response(StatusCode::OK, &fold.answer()))
}

/// Sends `request` to a worker of `model`: its answer's chunks, and the request's observer.
pub(super) async fn send(
    state: &AppState,
    api: OpenAiApi,
    model: &str,
    place: Place<'_>,
    request: Value,
    caller: CallerTrace,
) -> Result<(OpenAiChunks, RequestObserver), ApiError> {
    let mut observer = state.observer(model, caller);
    match state.hub.generate_openai(model, place.worker, place.session, api, request).await {
        Ok(chunks) => Ok((chunks, observer)),
        Err(error) => Err(super::failed(&mut observer, error).into()),
    }
}

/// Every chunk of the worker's answer folded (a non-streamed client's).
pub(super) async fn fold_all(
    state: &AppState,
    api: OpenAiApi,
    mut chunks: OpenAiChunks,
    observer: &mut RequestObserver,
) -> Result<Fold, BridgeError> {
    let mut fold = Fold::new(api, state.fold_limit);
    while let Some(chunk) = next_chunk(&mut chunks, state.hub.hard_stop()).await {
        let chunk = chunk.map_err(|error| super::failed(observer, error))?;
        observer.token();
        fold.add(&chunk).map_err(|error| super::failed(observer, error))?;
    }
    observer.finished(fold.reason());
    Ok(fold)
}

/// The worker's next chunk, unless the server's grace period for requests ends first.
pub(super) async fn next_chunk(
    chunks: &mut OpenAiChunks,
    hard_stop: Option<&CancellationToken>,
) -> Option<Result<Value, BridgeError>> {
    let next = match hard_stop {
        Some(stop) => tokio::select! {
            next = chunks.next() => next,
            () = stop.cancelled() => return Some(Err(BridgeError::ShuttingDown)),
        },
        None => chunks.next().await,
    };
    next.map(|chunk| chunk.map_err(BridgeError::Generate))
}

/// The worker's chunks as server-sent events, then `data: [DONE]`; an error after the stream
/// began is an error event. Dropping the body (the client went away) drops the chunks, which
/// stops the worker.
fn relay(chunks: OpenAiChunks, observer: RequestObserver, hard_stop: Option<CancellationToken>) -> Response {
    struct Relay {
        chunks: Option<OpenAiChunks>,
        observer: RequestObserver,
        hard_stop: Option<CancellationToken>,
        reason: FinishReason,
    }
    async fn next(mut relay: Relay) -> Option<(Result<Bytes, Infallible>, Relay)> {
        let chunks = relay.chunks.as_mut()?;
        let frame = match next_chunk(chunks, relay.hard_stop.as_ref()).await {
            Some(Ok(chunk)) => {
                relay.observer.token();
                if let Some(reason) = finish_reason(&chunk) {
                    relay.reason = reason;
                }
                sse::frame(&chunk)
            }
            Some(Err(error)) => {
                relay.chunks = None;
                relay.observer.failed(&error);
                let (_, body) = ErrorBody::from_error(&error);
                let mut frame = sse::frame(&body).to_vec();
                frame.extend_from_slice(&sse::done());
                Bytes::from(frame)
            }
            None => {
                relay.chunks = None;
                relay.observer.finished(relay.reason);
                sse::done()
            }
        };
        Some((Ok(frame), relay))
    }
    let state = Relay { chunks: Some(chunks), observer, hard_stop, reason: FinishReason::Stop };
    super::sse::event_stream(Body::from_stream(futures::stream::unfold(state, next)))
}

/// A chunk's finish reason, for the metrics.
fn finish_reason(chunk: &Value) -> Option<FinishReason> {
    let choices = chunk.get("choices")?.as_array()?;
    choices.iter().filter_map(|choice| choice.get("finish_reason")?.as_str()).last().map(|reason| match reason {
        "length" => FinishReason::Length,
        "cancelled" => FinishReason::Cancelled,
        _ => FinishReason::Stop,
    })
}

/// One choice being folded.
#[derive(Debug, Default)]
struct Choice {
    text: String,
    reasoning: String,
    /// Tool calls by their index: id, type, name, and the arguments joined.
    calls: BTreeMap<u64, Map<String, Value>>,
    finish_reason: Value,
    logprobs: Vec<Value>,
}

/// Chunks folded into one non-streamed answer.
#[derive(Debug)]
pub(super) struct Fold {
    api: OpenAiApi,
    limit: usize,
    held: usize,
    head: Map<String, Value>,
    choices: BTreeMap<u64, Choice>,
    usage: Value,
}

impl Fold {
    fn new(api: OpenAiApi, limit: usize) -> Fold {
        Fold { api, limit, held: 0, head: Map::new(), choices: BTreeMap::new(), usage: Value::Null }
    }

    fn hold(&mut self, text: &str) -> Result<(), BridgeError> {
        self.held = self.held.saturating_add(text.len());
        if self.held > self.limit {
            return Err(BridgeError::TooLarge(format!(
                "the worker's answer is over the {} bytes a non-streamed answer may hold; stream it instead",
                self.limit
            )));
        }
        Ok(())
    }

    fn add(&mut self, chunk: &Value) -> Result<(), BridgeError> {
        for key in ["id", "created", "model", "system_fingerprint"] {
            if let Some(value) = chunk.get(key).filter(|v| !v.is_null()) {
                self.head.entry(key).or_insert_with(|| value.clone());
            }
        }
        if let Some(usage) = chunk.get("usage").filter(|u| u.is_object()) {
            self.usage = usage.clone();
        }
        let Some(choices) = chunk.get("choices").and_then(Value::as_array) else { return Ok(()) };
        for choice in choices {
            let index = choice.get("index").and_then(Value::as_u64).unwrap_or(0);
            let text = |value: Option<&Value>| value.and_then(Value::as_str).unwrap_or("").to_owned();
            let (content, reasoning) = match self.api {
                OpenAiApi::Chat => {
                    let delta = choice.get("delta").or_else(|| choice.get("message"));
                    let delta = delta.unwrap_or(&Value::Null);
                    (text(delta.get("content")), text(delta.get("reasoning_content")))
                }
                // The unary APIs are folded by `text_unary`; their answers have no choices.
                _ => (text(choice.get("text")), String::new()),
            };
            self.hold(&content)?;
            self.hold(&reasoning)?;
            let calls = choice.get("delta").and_then(|d| d.get("tool_calls")).and_then(Value::as_array);
            for call in calls.into_iter().flatten() {
                let arguments = call.pointer("/function/arguments").and_then(Value::as_str).unwrap_or("");
                self.hold(arguments)?;
                let folded = self.choices.entry(index).or_default();
                let position = call.get("index").and_then(Value::as_u64).unwrap_or(folded.calls.len() as u64);
                merge_call(folded.calls.entry(position).or_default(), call);
            }
            let folded = self.choices.entry(index).or_default();
            folded.text.push_str(&content);
            folded.reasoning.push_str(&reasoning);
            if let Some(reason) = choice.get("finish_reason").filter(|r| !r.is_null()) {
                folded.finish_reason = reason.clone();
            }
            let tokens = match self.api {
                OpenAiApi::Chat => choice.pointer("/logprobs/content").and_then(Value::as_array),
                _ => None,
            };
            folded.logprobs.extend(tokens.into_iter().flatten().cloned());
        }
        Ok(())
    }

    /// The first choice as a door's answer is made of: its text, reasoning and tool calls, how it
    /// ended, and the usage.
    pub(super) fn into_parts(mut self) -> (ParsedDelta, FinishReason, Usage) {
        let reason = self.reason();
        let usage = usage_of(&self.usage);
        let choice = self.choices.remove(&0).unwrap_or_default();
        let tool_calls = choice.calls.into_values().filter_map(|call| tool_call(&Value::Object(call))).collect();
        (ParsedDelta { reasoning: choice.reasoning, content: choice.text, tool_calls, ..Default::default() }, reason, usage)
    }

    fn reason(&self) -> FinishReason {
        match self.choices.values().next().and_then(|c| c.finish_reason.as_str()) {
            Some("length") => FinishReason::Length,
            Some("cancelled") => FinishReason::Cancelled,
            _ => FinishReason::Stop,
        }
    }

    fn answer(self) -> Value {
        let chat = self.api == OpenAiApi::Chat;
        let choices: Vec<Value> = self
            .choices
            .into_iter()
            .map(|(index, choice)| {
                let logprobs = if choice.logprobs.is_empty() { Value::Null } else { json!({"content": choice.logprobs}) };
                if !chat {
                    return json!({"index": index, "text": choice.text, "finish_reason": choice.finish_reason, "logprobs": Value::Null});
                }
                let mut message = Map::new();
                message.insert("role".into(), "assistant".into());
                let only_calls = choice.text.is_empty() && !choice.calls.is_empty();
                message.insert("content".into(), if only_calls { Value::Null } else { choice.text.into() });
                if !choice.reasoning.is_empty() {
                    message.insert("reasoning_content".into(), choice.reasoning.into());
                }
                if !choice.calls.is_empty() {
                    message.insert("tool_calls".into(), choice.calls.into_values().map(Value::Object).collect());
                }
                json!({"index": index, "message": message, "finish_reason": choice.finish_reason, "logprobs": logprobs})
            })
            .collect();
        let mut answer = self.head;
        answer.insert("object".into(), if chat { "chat.completion" } else { "text_completion" }.into());
        answer.insert("choices".into(), choices.into());
        if !self.usage.is_null() {
            answer.insert("usage".into(), self.usage);
        }
        Value::Object(answer)
    }
}

/// Tritium's usage of a chunk's `usage` object (zeros where it has none).
pub(super) fn usage_of(usage: &Value) -> Usage {
    let count =
        |pointer: &str| usage.pointer(pointer).and_then(Value::as_u64).map_or(0, |n| u32::try_from(n).unwrap_or(u32::MAX));
    Usage {
        prompt_tokens: count("/prompt_tokens"),
        completion_tokens: count("/completion_tokens"),
        cached_tokens: count("/prompt_tokens_details/cached_tokens"),
        // A text-input worker pins nothing for Tritium.
        pinned_tokens: 0,
    }
}

/// A whole tool call of a chat answer (`{id, function: {name, arguments}}`).
pub(super) fn tool_call(call: &Value) -> Option<ToolCall> {
    let name = call.pointer("/function/name")?.as_str()?.to_owned();
    let arguments = call.pointer("/function/arguments").and_then(Value::as_str).unwrap_or("{}").to_owned();
    let id = call.get("id").and_then(Value::as_str).map_or_else(crate::parsers::new_call_id, str::to_owned);
    Some(ToolCall { id, name, arguments })
}

/// The pieces of one chunk's first choice, for a door that streams its own events: the text
/// and reasoning, the tool-call pieces, how it ended if it did, and the usage if it came.
pub(super) struct ChunkPieces {
    pub parsed: ParsedDelta,
    pub calls: Vec<Value>,
    pub finish: Option<FinishReason>,
    pub usage: Option<Usage>,
}

pub(super) fn pieces(chunk: &Value) -> ChunkPieces {
    let usage = chunk.get("usage").filter(|u| u.is_object()).map(usage_of);
    let choice = chunk
        .get("choices")
        .and_then(Value::as_array)
        .and_then(|c| c.iter().find(|c| c.get("index").and_then(Value::as_u64).unwrap_or(0) == 0));
    let delta = choice.and_then(|c| c.get("delta")).unwrap_or(&Value::Null);
    let text = |key: &str| delta.get(key).and_then(Value::as_str).unwrap_or("").to_owned();
    let parsed = ParsedDelta { reasoning: text("reasoning_content"), content: text("content"), ..Default::default() };
    let calls = delta.get("tool_calls").and_then(Value::as_array).cloned().unwrap_or_default();
    ChunkPieces { parsed, calls, finish: choice.and_then(|c| finish_reason(&json!({"choices": [c]}))), usage }
}

/// Joins streamed tool-call pieces by their index into whole calls.
#[derive(Debug, Default)]
pub(super) struct CallPieces(BTreeMap<u64, Map<String, Value>>);

impl CallPieces {
    pub(super) fn add(&mut self, pieces: &[Value]) {
        for piece in pieces {
            let position = piece.get("index").and_then(Value::as_u64).unwrap_or(self.0.len() as u64);
            merge_call(self.0.entry(position).or_default(), piece);
        }
    }

    pub(super) fn take(&mut self) -> Vec<ToolCall> {
        std::mem::take(&mut self.0).into_values().filter_map(|call| tool_call(&Value::Object(call))).collect()
    }
}

/// Adds one streamed piece of a tool call to what came before: its id, type and name once,
/// its arguments joined.
fn merge_call(folded: &mut Map<String, Value>, piece: &Value) {
    for key in ["id", "type"] {
        if let Some(value) = piece.get(key).filter(|v| !v.is_null()) {
            folded.entry(key).or_insert_with(|| value.clone());
        }
    }
    let function = folded.entry("function").or_insert_with(|| json!({"name": "", "arguments": ""}));
    let Some(function) = function.as_object_mut() else { return };
    if let Some(name) = piece.pointer("/function/name").and_then(Value::as_str).filter(|n| !n.is_empty()) {
        function.insert("name".into(), name.into());
    }
    if let Some(arguments) = piece.pointer("/function/arguments").and_then(Value::as_str) {
        let joined = format!("{}{arguments}", function.get("arguments").and_then(Value::as_str).unwrap_or(""));
        function.insert("arguments".into(), joined.into());
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn chat_chunk(delta: Value, finish: Value) -> Value {
        json!({"id": "x-1", "object": "chat.completion.chunk", "created": 7, "model": "m",
               "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]})
    }

    #[test]
    fn chat_chunks_fold_into_one_message_with_joined_text_calls_and_the_last_usage() {
        let mut fold = Fold::new(OpenAiApi::Chat, 1 << 20);
        fold.add(&chat_chunk(json!({"role": "assistant", "content": "al"}), Value::Null)).unwrap();
        fold.add(&chat_chunk(json!({"content": "pha", "reasoning_content": "hm"}), Value::Null)).unwrap();
        let call = json!({"tool_calls": [{"index": 0, "id": "c1", "type": "function", "function": {"name": "f", "arguments": "{\"a\""}}]});
        fold.add(&chat_chunk(call, Value::Null)).unwrap();
        fold.add(&chat_chunk(json!({"tool_calls": [{"index": 0, "function": {"arguments": ":1}"}}]}), json!("tool_calls")))
            .unwrap();
        let mut last = chat_chunk(json!({}), Value::Null);
        last["usage"] = json!({"prompt_tokens": 3, "completion_tokens": 4, "total_tokens": 7});
        fold.add(&last).unwrap();
        let answer = fold.answer();
        assert_eq!(answer["object"], "chat.completion");
        assert_eq!(answer["id"], "x-1");
        let choice = &answer["choices"][0];
        assert_eq!(choice["message"]["content"], "alpha");
        assert_eq!(choice["message"]["reasoning_content"], "hm");
        assert_eq!(choice["message"]["tool_calls"][0]["function"], json!({"name": "f", "arguments": "{\"a\":1}"}));
        assert_eq!(choice["message"]["tool_calls"][0]["id"], "c1");
        assert_eq!(choice["finish_reason"], "tool_calls");
        assert_eq!(answer["usage"]["total_tokens"], 7);
    }

    #[test]
    fn completion_chunks_fold_per_choice_index() {
        let mut fold = Fold::new(OpenAiApi::Completions, 1 << 20);
        for (index, text, finish) in
            [(0, "a", Value::Null), (1, "x", Value::Null), (0, "b", json!("length")), (1, "y", json!("stop"))]
        {
            fold.add(&json!({"id": "c", "object": "text_completion", "choices": [{"index": index, "text": text, "finish_reason": finish}]}))
                .unwrap();
        }
        assert_eq!(fold.reason(), FinishReason::Length);
        let answer = fold.answer();
        assert_eq!(answer["object"], "text_completion");
        assert_eq!(answer["choices"][0]["text"], "ab");
        assert_eq!(answer["choices"][1]["text"], "xy");
        assert_eq!(answer["choices"][1]["finish_reason"], "stop");
        assert!(answer.get("usage").is_none());
    }

    #[test]
    fn a_folded_answer_over_the_limit_is_refused() {
        let mut fold = Fold::new(OpenAiApi::Completions, 4);
        fold.add(&json!({"choices": [{"index": 0, "text": "abc"}]})).unwrap();
        let error = fold.add(&json!({"choices": [{"index": 0, "text": "de"}]})).unwrap_err();
        assert!(matches!(error, BridgeError::TooLarge(_)), "{error:?}");
    }

    #[test]
    fn finish_reasons_of_chunks_are_read_for_the_metrics() {
        assert_eq!(finish_reason(&chat_chunk(json!({}), json!("length"))), Some(FinishReason::Length));
        assert_eq!(finish_reason(&chat_chunk(json!({}), Value::Null)), None);
        assert_eq!(finish_reason(&json!({"no": "choices"})), None);
    }
}
