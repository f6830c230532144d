//! The doors that are not chat for models whose workers take OpenAI requests as they came
//! (Dynamo's text-input workers): as Dynamo's frontend does for Responses, a Responses or
//! Anthropic Messages request is made into a chat request (its instructions or system prompt,
//! the stored conversation of `previous_response_id`, its input, limits and function tools),
//! forwarded, and the worker's chat chunks are turned back into the door's own answer or events:
//! text and reasoning as they come, tool calls once whole.

use std::collections::VecDeque;
use std::convert::Infallible;

use axum::body::Body;
use axum::response::Response;
use bytes::Bytes;
use serde_json::{Map, Value, json};
use tokio_util::sync::CancellationToken;
use tritium_backend_api::llm::{FinishReason, OpenAiApi, OpenAiChunks};

use super::AppState;
use super::sse::{ChunkWriter, End};
use super::text_input::{CallPieces, fold_all, next_chunk, pieces};
use crate::BridgeError;
use crate::metrics::RequestObserver;
use crate::parsers::ParsedDelta;
use crate::pipeline::{StreamMeta, Usage};

/// A door's writer that takes parsed pieces (the worker did the parsing) as well as text.
pub(super) trait ParsedWriter: ChunkWriter {
    fn parsed(&mut self, parsed: ParsedDelta, out: &mut VecDeque<Bytes>);
}

/// A chat request made of another door's `messages` and the fields that map one to one.
pub(super) fn chat_request(model: &str, messages: Vec<Value>, fields: Map<String, Value>) -> Value {
    let mut request = fields;
    request.insert("model".into(), model.into());
    request.insert("messages".into(), Value::Array(messages));
    request.insert("stream".into(), true.into());
    request.insert("stream_options".into(), json!({"include_usage": true}));
    Value::Object(request)
}

/// Responses' function tools (`{type, name, description, parameters}`) as chat's
/// (`{type, function: {…}}`); another kind of tool is refused by name.
pub(super) fn chat_tools(tools: &[Value]) -> Result<Vec<Value>, BridgeError> {
    tools
        .iter()
        .map(|tool| match tool.get("type").and_then(Value::as_str) {
            Some("function") => {
                let mut function = tool.as_object().cloned().unwrap_or_default();
                function.remove("type");
                Ok(json!({"type": "function", "function": function}))
            }
            other => Err(BridgeError::field(
                "tools",
                format!("a '{}' tool cannot be forwarded to a model that takes text input", other.unwrap_or("untyped")),
            )),
        })
        .collect()
}

/// Responses' `tool_choice` in chat's words.
pub(super) fn chat_tool_choice(choice: &Value) -> Value {
    match choice.get("name") {
        Some(name) => json!({"type": "function", "function": {"name": name}}),
        None => choice.clone(),
    }
}

/// Anthropic's tools (`{name, description, input_schema}`) as chat's.
pub(super) fn anthropic_tools(tools: &[Value]) -> Vec<Value> {
    tools
        .iter()
        .map(|tool| {
            let field = |name: &str| tool.get(name).cloned().unwrap_or(Value::Null);
            let function =
                json!({"name": field("name"), "description": field("description"), "parameters": field("input_schema")});
            json!({"type": "function", "function": function})
        })
        .collect()
}

/// Anthropic's `tool_choice` in chat's words.
pub(super) fn anthropic_tool_choice(choice: &Value) -> Value {
    match choice.get("type").and_then(Value::as_str) {
        Some("any") => json!("required"),
        Some("none") => json!("none"),
        Some("tool") => json!({"type": "function", "function": {"name": choice.get("name").cloned().unwrap_or(Value::Null)}}),
        _ => json!("auto"),
    }
}

/// Forwards `request` (a chat request) to a text-input model's worker.
pub(super) async fn forward_chat(
    state: &AppState,
    model: &str,
    place: super::text_input::Place<'_>,
    request: Value,
    observer: &mut RequestObserver,
) -> Result<OpenAiChunks, BridgeError> {
    let chunks = state.hub.generate_openai(model, place.worker, place.session, OpenAiApi::Chat, request).await;
    chunks.map_err(|error| super::failed(observer, error))
}

/// The worker's whole answer: the first choice's parts, how it ended, the usage.
pub(super) async fn fold(
    state: &AppState,
    chunks: OpenAiChunks,
    observer: &mut RequestObserver,
) -> Result<(ParsedDelta, FinishReason, Usage), BridgeError> {
    Ok(fold_all(state, OpenAiApi::Chat, chunks, observer).await?.into_parts())
}

/// The worker's chunks through a door's writer as its own server-sent events.
pub(super) fn stream<W: ParsedWriter>(writer: W, chunks: OpenAiChunks, observer: RequestObserver, state: &AppState) -> Response {
    struct Relay<W> {
        writer: W,
        chunks: Option<OpenAiChunks>,
        observer: RequestObserver,
        hard_stop: Option<CancellationToken>,
        frames: VecDeque<Bytes>,
        calls: CallPieces,
        reason: FinishReason,
        usage: Usage,
    }
    async fn next<W: ParsedWriter>(mut relay: Relay<W>) -> Option<(Result<Bytes, Infallible>, Relay<W>)> {
        loop {
            if let Some(frame) = relay.frames.pop_front() {
                return Some((Ok(frame), relay));
            }
            let chunks = relay.chunks.as_mut()?;
            match next_chunk(chunks, relay.hard_stop.as_ref()).await {
                Some(Ok(chunk)) => {
                    relay.observer.token();
                    let pieces = pieces(&chunk);
                    relay.calls.add(&pieces.calls);
                    relay.reason = pieces.finish.unwrap_or(relay.reason);
                    relay.usage = pieces.usage.unwrap_or(relay.usage);
                    if !pieces.parsed.is_empty() {
                        relay.writer.parsed(pieces.parsed, &mut relay.frames);
                    }
                }
                Some(Err(error)) => {
                    relay.chunks = None;
                    relay.observer.failed(&error);
                    relay.writer.error(&error, &mut relay.frames);
                }
                None => {
                    relay.chunks = None;
                    let calls = ParsedDelta { tool_calls: relay.calls.take(), ..Default::default() };
                    if !calls.is_empty() {
                        relay.writer.parsed(calls, &mut relay.frames);
                    }
                    relay.observer.finished(relay.reason);
                    let end = End { reason: relay.reason, usage: relay.usage, stop_string: None, meta: StreamMeta::default() };
                    relay.writer.end(end, &mut relay.frames);
                }
            }
        }
    }
    let mut writer = writer;
    let frames = writer.start().into();
    let relay = Relay {
        writer,
        chunks: Some(chunks),
        observer,
        hard_stop: state.hub.hard_stop().cloned(),
        frames,
        calls: CallPieces::default(),
        reason: FinishReason::Stop,
        usage: Usage::default(),
    };
    super::sse::event_stream(Body::from_stream(futures::stream::unfold(relay, next)))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn responses_function_tools_become_chat_tools_and_other_kinds_are_refused() {
        let tools = [json!({"type": "function", "name": "f", "parameters": {"type": "object"}})];
        assert_eq!(
            chat_tools(&tools).unwrap(),
            [json!({"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}})]
        );
        assert!(chat_tools(&[json!({"type": "web_search"})]).is_err());
        assert_eq!(
            chat_tool_choice(&json!({"type": "function", "name": "f"})),
            json!({"type": "function", "function": {"name": "f"}})
        );
        assert_eq!(chat_tool_choice(&json!("auto")), json!("auto"));
        let anthropic = [json!({"name": "f", "description": "d", "input_schema": {"type": "object"}})];
        assert_eq!(anthropic_tools(&anthropic)[0]["function"]["parameters"], json!({"type": "object"}));
        assert_eq!(anthropic_tool_choice(&json!({"type": "any"})), json!("required"));
        assert_eq!(anthropic_tool_choice(&json!({"type": "tool", "name": "f"}))["function"]["name"], "f");
    }

    #[test]
    fn a_chat_request_streams_with_usage() {
        let request = chat_request("m", vec![json!({"role": "user", "content": "hi"})], Map::new());
        assert_eq!(request["stream"], true);
        assert_eq!(request["stream_options"]["include_usage"], true);
        assert_eq!(request["messages"][0]["content"], "hi");
    }
}
