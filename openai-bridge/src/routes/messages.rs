//! `POST /v1/messages` and `/v1/messages/count_tokens`: Anthropic's Messages API over the chat
//! path (served with `--enable-anthropic-api`). Errors use Anthropic's body and statuses; a
//! stream sends `message_start`, a `content_block_start` / `_delta` / `_stop` series per block,
//! `message_delta` and `message_stop`.

use std::collections::VecDeque;

use axum::extract::{FromRequest, Request, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};
use tritium_backend_api::llm::{FinishReason, ModelKind};

use super::sse::{self, ChunkWriter, End};
use super::text_doors;
use super::{AppState, ChatPrompt, failed, json_response};
use crate::BridgeError;
use crate::parsers::{CallPiece, OutputParser, ParsedDelta, ToolCall};
use crate::pipeline::{TokenInfo, collect};
use crate::protocol::{
    AnthropicUsage, ContentBlock, CountTokensRequest, MessageObject, MessagesRequest, anthropic_error, new_item_id, parse_json,
    tool_use_id,
};

#[utoipa::path(post, path = "/v1/messages", tag = "anthropic", request_body = MessagesRequest,
    responses((status = 200, description = "The message, or with `stream` its events (`message_start` ... `message_stop`)",
        content((MessageObject = "application/json"), (serde_json::Value = "text/event-stream"))), (status = 400, description = "A malformed request", body = serde_json::Value), (status = 404, description = "No such model", body = serde_json::Value), (status = 529, description = "Overloaded", body = serde_json::Value)))]
pub(super) async fn messages(
    State(state): State<AppState>,
    worker: super::HeaderWorker,
    priority: super::HeaderPriority,
    caller: super::CallerTrace,
    AnthropicJson(request): AnthropicJson<MessagesRequest>,
) -> Result<Response, AnthropicError> {
    if state.hub.takes_text(&request.model) {
        return text_input_message(&state, request, worker, caller).await;
    }
    let pre = state.preprocessor(&request.model, ModelKind::Generate, "/v1/messages").await?;
    let mut observer = state.observer(&request.model, caller);
    let prepared = request.options().and_then(|mut options| {
        priority.apply(&mut options)?;
        let tools = request.tools()?;
        let messages = request.chat_messages()?;
        let extra = request.template_extra(&tools);
        let breakpoint = request.cache_breakpoint()?;
        Ok((options, tools, messages, extra, breakpoint))
    });
    let (mut options, tools, messages, extra, breakpoint) = prepared.map_err(|error| failed(&mut observer, error))?;
    let parser = super::output_parser(&pre, &tools, &mut options).map_err(|error| failed(&mut observer, error))?;
    let chat = ChatPrompt {
        messages: &messages,
        add_generation_prompt: true,
        extra: Some(&extra),
        with_tools: tools.offered(),
        nvext: None,
        worker: worker.or_nvext(None),
        session: worker.session(),
        cache_breakpoint: breakpoint,
    };
    let stream = state.start_chat(&pre, &request.model, &options, chat, observer).await?;
    let id = new_item_id("msg");
    if request.stream {
        let input_tokens = stream.prompt_tokens().unwrap_or(0);
        let writer =
            MessagesWriter { id, model: request.model, input_tokens, parser, open: Block::None, next: 0, calls: 0, streamed: Vec::new() };
        return Ok(sse::respond(writer, stream).await);
    }
    let generated = collect(stream).await?;
    let parsed = super::parse_whole(parser, generated.text);
    let message = message_object(id, request.model, &parsed, generated.reason, generated.stop_string, generated.usage);
    Ok(json_response(StatusCode::OK, &message))
}

/// A whole answer as Anthropic's message.
fn message_object(
    id: String,
    model: String,
    parsed: &ParsedDelta,
    reason: FinishReason,
    stop_string: Option<String>,
    usage: crate::pipeline::Usage,
) -> MessageObject {
    let (stop_reason, stop_sequence) = stop_reason(reason, stop_string, !parsed.tool_calls.is_empty());
    MessageObject {
        id,
        kind: "message",
        role: "assistant",
        model,
        content: ContentBlock::from_parsed(parsed),
        stop_reason: Some(stop_reason),
        stop_sequence,
        usage: AnthropicUsage::new(usage.prompt_tokens, usage.completion_tokens, usage.cached_tokens, usage.pinned_tokens),
    }
}

#[utoipa::path(post, path = "/v1/messages/count_tokens", tag = "anthropic", request_body = CountTokensRequest,
    responses((status = 200, description = "`{\"input_tokens\": n}`: the prompt's length in tokens", body = serde_json::Value), (status = 400, description = "A malformed request", body = serde_json::Value), (status = 404, description = "No such model", body = serde_json::Value), (status = 529, description = "Overloaded", body = serde_json::Value)))]
pub(super) async fn count_tokens(
    State(state): State<AppState>,
    AnthropicJson(request): AnthropicJson<CountTokensRequest>,
) -> Result<Response, AnthropicError> {
    let pre = state.preprocessor(&request.model, ModelKind::Generate, "/v1/messages/count_tokens").await?;
    let tools = request.tools()?;
    let messages = request.chat_messages()?;
    let text = pre.render_chat_bounded(&messages, true, Some(&request.template_extra(&tools))).await?;
    // Counted whatever its length: a prompt too long for the context is what a client counts to find.
    let count = pre.count_tokens(text, false).await?;
    Ok(json_response(StatusCode::OK, &json!({"input_tokens": count})))
}

/// Anthropic's `stop_reason` and `stop_sequence`.
/// A Messages request for a model whose worker takes OpenAI requests as they came: made into a
/// chat request (see `text_doors`).
async fn text_input_message(
    state: &AppState,
    request: MessagesRequest,
    worker: super::HeaderWorker,
    caller: super::CallerTrace,
) -> Result<Response, AnthropicError> {
    let mut observer = state.observer(&request.model, caller);
    let messages = request.chat_messages().map_err(|error| failed(&mut observer, error))?;
    let mut fields = serde_json::Map::new();
    fields.insert("max_tokens".into(), request.max_tokens.into());
    for (name, value) in [("temperature", request.temperature), ("top_p", request.top_p)] {
        if let Some(value) = value {
            fields.insert(name.into(), json!(value));
        }
    }
    if let Some(top_k) = request.top_k {
        fields.insert("top_k".into(), top_k.into());
    }
    if let Some(stop) = &request.stop_sequences {
        fields.insert("stop".into(), json!(stop.0));
    }
    if let Some(tools) = &request.tools {
        fields.insert("tools".into(), Value::Array(text_doors::anthropic_tools(tools)));
    }
    if let Some(choice) = &request.tool_choice {
        fields.insert("tool_choice".into(), text_doors::anthropic_tool_choice(choice));
    }
    let body = text_doors::chat_request(&request.model, messages, fields);
    let chunks = text_doors::forward_chat(state, &request.model, worker.place(None), body, &mut observer).await?;
    let id = new_item_id("msg");
    if request.stream {
        let writer = MessagesWriter {
            id,
            model: request.model,
            input_tokens: 0,
            parser: None,
            open: Block::None,
            next: 0,
            calls: 0,
            streamed: Vec::new(),
        };
        return Ok(text_doors::stream(writer, chunks, observer, state));
    }
    let (parsed, reason, usage) = text_doors::fold(state, chunks, &mut observer).await?;
    Ok(json_response(StatusCode::OK, &message_object(id, request.model, &parsed, reason, None, usage)))
}

fn stop_reason(reason: FinishReason, stop_string: Option<String>, called: bool) -> (&'static str, Option<String>) {
    match (reason, stop_string) {
        _ if called => ("tool_use", None),
        (FinishReason::Stop, Some(stop)) => ("stop_sequence", Some(stop)),
        (FinishReason::Length, _) => ("max_tokens", None),
        _ => ("end_turn", None),
    }
}

/// An error in Anthropic's shape.
#[derive(Debug)]
pub(super) struct AnthropicError(BridgeError);

impl From<BridgeError> for AnthropicError {
    fn from(error: BridgeError) -> AnthropicError {
        AnthropicError(error)
    }
}

impl IntoResponse for AnthropicError {
    fn into_response(self) -> Response {
        let (status, body) = anthropic_error(&self.0);
        if status >= 500 {
            tracing::warn!(error = %self.0, "Anthropic request failed");
        }
        let mut response = json_response(StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR), &body);
        super::retry_later(&mut response);
        response
    }
}

/// A JSON body whose errors are Anthropic error bodies.
pub(super) struct AnthropicJson<T>(T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for AnthropicJson<T> {
    type Rejection = Response;

    async fn from_request(request: Request, state: &S) -> Result<AnthropicJson<T>, Response> {
        let body = match Bytes::from_request(request, state).await {
            Ok(body) => body,
            Err(rejection) => {
                let status = rejection.status();
                let kind = if status == StatusCode::PAYLOAD_TOO_LARGE { "request_too_large" } else { "invalid_request_error" };
                let body = json!({"type": "error", "error": {"type": kind, "message": rejection.body_text()}});
                return Err(json_response(status, &body));
            }
        };
        parse_json(&body).map(AnthropicJson).map_err(|error| AnthropicError(error).into_response())
    }
}

/// The content block being streamed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Block {
    None,
    Text(usize),
    Thinking(usize),
    /// A tool_use block whose input is streaming.
    Tool(usize),
}

/// Writes the Messages API's stream events.
struct MessagesWriter {
    id: String,
    model: String,
    input_tokens: u32,
    parser: Option<OutputParser>,
    open: Block,
    /// The next block's index.
    next: usize,
    calls: usize,
    /// Ids of the calls whose pieces went out and which have not come whole yet.
    streamed: Vec<String>,
}

impl MessagesWriter {
    fn event(kind: &str, mut fields: Value, out: &mut VecDeque<Bytes>) {
        if let Value::Object(object) = &mut fields {
            object.insert("type".into(), Value::String(kind.to_owned()));
        }
        out.push_back(sse::named_frame(kind, &fields));
    }

    /// Opens a block of `kind` unless one is open; returns its index.
    fn open(&mut self, kind: Block, start: Value, out: &mut VecDeque<Bytes>) -> usize {
        match (self.open, kind) {
            (Block::Text(index), Block::Text(_)) | (Block::Thinking(index), Block::Thinking(_)) => return index,
            _ => {}
        }
        self.close(out);
        let index = self.next;
        self.next += 1;
        Self::event("content_block_start", json!({"index": index, "content_block": start}), out);
        self.open = match kind {
            Block::Thinking(_) => Block::Thinking(index),
            _ => Block::Text(index),
        };
        index
    }

    fn close(&mut self, out: &mut VecDeque<Bytes>) {
        match std::mem::replace(&mut self.open, Block::None) {
            Block::None => {}
            Block::Thinking(index) => {
                Self::event(
                    "content_block_delta",
                    json!({"index": index, "delta": {"type": "signature_delta", "signature": ""}}),
                    out,
                );
                Self::event("content_block_stop", json!({"index": index}), out);
            }
            Block::Text(index) | Block::Tool(index) => Self::event("content_block_stop", json!({"index": index}), out),
        }
    }

    /// A streamed call: its start opens a tool_use block, its arguments are `input_json_delta`s.
    fn call_piece(&mut self, piece: CallPiece, out: &mut VecDeque<Bytes>) {
        match piece {
            CallPiece::Start { id, name } => {
                self.close(out);
                let index = self.next;
                self.next += 1;
                self.calls += 1;
                let start = json!({"type": "tool_use", "id": tool_use_id(&id), "name": name, "input": {}});
                Self::event("content_block_start", json!({"index": index, "content_block": start}), out);
                self.open = Block::Tool(index);
                self.streamed.push(id);
            }
            CallPiece::Arguments(text) => {
                if let Block::Tool(index) = self.open {
                    let delta = json!({"type": "input_json_delta", "partial_json": text});
                    Self::event("content_block_delta", json!({"index": index, "delta": delta}), out);
                }
            }
        }
    }

    fn tool_use(&mut self, call: &ToolCall, out: &mut VecDeque<Bytes>) {
        self.close(out);
        let index = self.next;
        self.next += 1;
        self.calls += 1;
        let ContentBlock::ToolUse { id, name, .. } = ContentBlock::tool_use(call) else {
            return;
        };
        let start = json!({"type": "tool_use", "id": id, "name": name, "input": {}});
        Self::event("content_block_start", json!({"index": index, "content_block": start}), out);
        let delta = json!({"type": "input_json_delta", "partial_json": call.arguments});
        Self::event("content_block_delta", json!({"index": index, "delta": delta}), out);
        Self::event("content_block_stop", json!({"index": index}), out);
    }
}

impl text_doors::ParsedWriter for MessagesWriter {
    fn parsed(&mut self, parsed: ParsedDelta, out: &mut VecDeque<Bytes>) {
        if !parsed.reasoning.is_empty() {
            let index = self.open(Block::Thinking(0), json!({"type": "thinking", "thinking": "", "signature": ""}), out);
            let delta = json!({"type": "thinking_delta", "thinking": parsed.reasoning});
            Self::event("content_block_delta", json!({"index": index, "delta": delta}), out);
        }
        if !parsed.content.is_empty() {
            let index = self.open(Block::Text(0), json!({"type": "text", "text": ""}), out);
            let delta = json!({"type": "text_delta", "text": parsed.content});
            Self::event("content_block_delta", json!({"index": index, "delta": delta}), out);
        }
        for piece in parsed.call_pieces {
            self.call_piece(piece, out);
        }
        for call in &parsed.tool_calls {
            match self.streamed.iter().position(|id| *id == call.id) {
                // Its pieces went out: a whole call closes its block.
                Some(at) => {
                    self.streamed.remove(at);
                    if matches!(self.open, Block::Tool(_)) && self.streamed.is_empty() {
                        self.close(out);
                    }
                }
                // A worker's call that came whole (a text-input Dynamo worker's).
                None => self.tool_use(call, out),
            }
        }
    }
}

impl ChunkWriter for MessagesWriter {
    fn start(&mut self) -> Vec<Bytes> {
        let mut out = VecDeque::new();
        let message = json!({
            "id": self.id, "type": "message", "role": "assistant", "model": self.model, "content": [],
            "stop_reason": null, "stop_sequence": null, "usage": AnthropicUsage::new(self.input_tokens, 0, 0, 0),
        });
        Self::event("message_start", json!({"message": message}), &mut out);
        Self::event("ping", json!({}), &mut out);
        out.into()
    }

    fn delta(
        &mut self,
        _index: u32,
        text: String,
        _tokens: &[TokenInfo],
        finish: Option<FinishReason>,
        out: &mut VecDeque<Bytes>,
    ) {
        let parsed = super::parse_piece(&mut self.parser, text, finish.is_some());
        text_doors::ParsedWriter::parsed(self, parsed, out);
    }

    fn end(&mut self, end: End, out: &mut VecDeque<Bytes>) {
        if self.next == 0 {
            // An empty answer is still one (empty) text block, as in the unary response.
            self.open(Block::Text(0), json!({"type": "text", "text": ""}), out);
        }
        self.close(out);
        let (stop_reason, stop_sequence) = stop_reason(end.reason, end.stop_string, self.calls > 0);
        let delta = json!({"stop_reason": stop_reason, "stop_sequence": stop_sequence});
        // The prefix cache is known only now: the final counts replace message_start's, as
        // Anthropic's own message_delta does.
        let final_usage = AnthropicUsage::new(end.usage.prompt_tokens, end.usage.completion_tokens, end.usage.cached_tokens, end.usage.pinned_tokens);
        let usage = json!({
            "output_tokens": final_usage.output_tokens,
            "input_tokens": final_usage.input_tokens,
            "cache_read_input_tokens": final_usage.cache_read_input_tokens,
            "cache_creation_input_tokens": 0,
        });
        Self::event("message_delta", json!({"delta": delta, "usage": usage}), out);
        Self::event("message_stop", json!({}), out);
    }

    fn error(&mut self, error: &BridgeError, out: &mut VecDeque<Bytes>) {
        let (_, body) = anthropic_error(error);
        out.push_back(sse::named_frame("error", &body));
    }
}
