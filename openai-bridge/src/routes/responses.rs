//! `POST /v1/responses`, `GET` and `DELETE /v1/responses/{id}`: OpenAI's Responses API over the
//! chat path. Input items become chat messages, `previous_response_id` continues a stored
//! conversation, and the output is split into reasoning, message and function-call items. With
//! `"stream": true` the typed events go out as the text arrives (`response.created`, …,
//! `response.output_text.delta`, …, `response.completed`).

use std::collections::VecDeque;
use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use serde_json::{Map, Value, json};
use tritium_backend_api::llm::{FinishReason, ModelKind};

use super::sse::{self, ChunkWriter, End};
use super::conversations::{Recording, Thread};
use super::text_doors;
use super::{ApiError, AppState, ChatPrompt, OpenAiJson, failed, json_response};
use crate::BridgeError;
use crate::parsers::{CallPiece, OutputParser, ParsedDelta, ToolCall};
use crate::pipeline::{TokenInfo, Usage, collect};
use crate::protocol::{
    ErrorBody, IncompleteDetails, OutputItem, OutputText, ReasoningText, ResponseError, ResponseObject, ResponseUsage,
    ResponsesRequest, UsageBody, assistant_message, new_item_id, unix_now,
};
use crate::response_store::ResponseStore;

#[utoipa::path(post, path = "/v1/responses", tag = "openai", request_body = ResponsesRequest,
    responses((status = 200, description = "The response, or with `stream` its typed events (`event: response.created` ... `response.completed`)",
        content((ResponseObject = "application/json"), (serde_json::Value = "text/event-stream"))), (status = 400, description = "A malformed request; `param` names the field", body = ErrorBody), (status = 404, description = "No such model", body = ErrorBody), (status = 429, description = "The model's queue is full", body = ErrorBody), (status = 500, description = "The engine failed", body = ErrorBody)))]
pub(super) async fn create(
    State(state): State<AppState>,
    worker: super::HeaderWorker,
    priority: super::HeaderPriority,
    caller: super::CallerTrace,
    OpenAiJson(request): OpenAiJson<ResponsesRequest>,
) -> Result<Response, ApiError> {
    if state.hub.takes_text(&request.model) {
        return text_input_response(&state, request, worker, caller).await;
    }
    let pre = state.preprocessor(&request.model, ModelKind::Generate, "/v1/responses").await?;
    let mut observer = state.observer(&request.model, caller);
    let prepared = prepare(&state.store, &request).await.map_err(|error| failed(&mut observer, error))?;
    let Prepared { mut options, tools, conversation, messages, extra, chain } = prepared;
    let implied_session = super::conversations::implied_session(&request, chain.as_deref());
    priority.apply(&mut options).map_err(|error| failed(&mut observer, error))?;
    let parser = super::output_parser(&pre, &tools, &mut options).map_err(|error| failed(&mut observer, error))?;
    let chat = ChatPrompt {
        messages: &messages,
        add_generation_prompt: true,
        extra: Some(&extra),
        with_tools: tools.offered(),
        nvext: request.nvext.as_ref(),
        worker: worker.or_nvext(request.nvext.as_ref()),
        session: worker.session().or(implied_session.as_deref()),
        // The Responses API names no cache breakpoints (OpenAI caches prefixes implicitly).
        cache_breakpoint: None,
    };
    let stream = state.start_chat(&pre, &request.model, &options, chat, observer).await?;
    let turn = Turn {
        response: ResponseObject::new(new_item_id("resp"), unix_now(), &request),
        conversation,
        chain,
        store: request.store.unwrap_or(true).then(|| Arc::clone(&state.store)),
        thread: Thread::of(&request, &state.store),
    };
    if request.background == Some(true) {
        return start_background(&state, turn, stream, parser).await;
    }
    if request.stream {
        let writer = ResponsesWriter {
            turn: Some(turn),
            parser,
            sequence: 0,
            output: Vec::new(),
            open: Open::None,
            all: ParsedDelta::default(),
            streamed: Vec::new(),
        };
        return Ok(sse::respond(writer, stream).await);
    }
    let generated = collect(stream).await?;
    let parsed = super::parse_whole(parser, generated.text);
    let output = output_items(&parsed);
    let (response, recording) = turn.finish(output, &parsed, generated.reason, generated.usage);
    // Shared before the client has it: its next turn may reach another frontend.
    state.store.share(&response.id).await;
    recording.run().await;
    Ok(json_response(StatusCode::OK, &response))
}

/// Answers at once with the response in progress (stored), and generates it in a task that
/// stores how it ended; see `background`.
async fn start_background(
    state: &AppState,
    turn: Turn,
    stream: crate::pipeline::TextStream,
    parser: Option<OutputParser>,
) -> Result<Response, ApiError> {
    let slot = state.background.start(&turn.response.id)?;
    let accepted = turn.response.clone();
    turn.keep(&accepted);
    state.store.share(&accepted.id).await;
    let store = Arc::clone(&state.store);
    tokio::spawn(async move {
        let id = turn.response.id.clone();
        tokio::select! {
            generated = collect(stream) => match generated {
                Ok(generated) => {
                    let parsed = super::parse_whole(parser, generated.text);
                    let output = output_items(&parsed);
                    turn.finish(output, &parsed, generated.reason, generated.usage).1.run().await;
                }
                Err(error) => {
                    let code = if error.code() == tritium_proto::ErrorCode::InvalidArg { "invalid_prompt" } else { "server_error" };
                    turn.end_as("failed", Some(ResponseError { code, message: error.to_string() }));
                }
            },
            () = slot.stop.cancelled() => turn.end_as("cancelled", None),
        }
        store.share(&id).await;
        drop(slot);
    });
    Ok(json_response(StatusCode::OK, &accepted))
}

/// `POST /v1/responses/{id}/cancel`: stops a background response running here and answers with
/// it as stored then (`cancelled`, or how it had ended already).
#[utoipa::path(post, path = "/v1/responses/{id}/cancel", tag = "openai", params(("id" = String, Path, description = "A background response's id")),
    responses((status = 200, description = "The response as stored once stopped (`cancelled`, or how it had ended)", body = ResponseObject), (status = 400, description = "Not a background response", body = ErrorBody), (status = 404, description = "Not stored (or expired)", body = ErrorBody)))]
pub(super) async fn cancel(State(state): State<AppState>, Path(id): Path<String>) -> Response {
    state.background.cancel(&id).await;
    match state.store.fetch(&id).await {
        Ok(Some(stored)) if stored.response.get("background") == Some(&Value::Bool(true)) => {
            json_response(StatusCode::OK, stored.response.as_ref())
        }
        Ok(Some(_)) => ApiError(BridgeError::field("id", "only a background response can be cancelled")).into_response(),
        Ok(None) => not_found(&id),
        Err(error) => ApiError(BridgeError::Internal(error)).into_response(),
    }
}

/// A Responses request for a model whose worker takes OpenAI requests as they came: made into
/// a chat request, as Dynamo's frontend makes it (see `text_doors`).
async fn text_input_response(
    state: &AppState,
    request: ResponsesRequest,
    worker: super::HeaderWorker,
    caller: super::CallerTrace,
) -> Result<Response, ApiError> {
    let mut observer = state.observer(&request.model, caller);
    if request.background == Some(true) {
        let refusal = "background responses of a model whose worker takes text input are not run yet";
        return Err(failed(&mut observer, BridgeError::field("background", refusal)).into());
    }
    let prepared = prepare(&state.store, &request).await.and_then(|prepared| {
        let mut fields = Map::new();
        if let Some(max) = request.max_output_tokens {
            fields.insert("max_tokens".into(), max.into());
        }
        for (name, value) in [("temperature", request.temperature), ("top_p", request.top_p)] {
            if let Some(value) = value {
                fields.insert(name.into(), json!(value));
            }
        }
        if let Some(tools) = &request.tools {
            fields.insert("tools".into(), Value::Array(text_doors::chat_tools(tools)?));
        }
        if let Some(choice) = &request.tool_choice {
            fields.insert("tool_choice".into(), text_doors::chat_tool_choice(choice));
        }
        Ok((prepared, fields))
    });
    let (Prepared { conversation, messages, chain, .. }, fields) = prepared.map_err(|error| failed(&mut observer, error))?;
    let body = text_doors::chat_request(&request.model, messages, fields);
    let implied_session = super::conversations::implied_session(&request, chain.as_deref());
    let mut place = worker.place(request.nvext.as_ref());
    place.session = place.session.or(implied_session.as_deref());
    let chunks = text_doors::forward_chat(state, &request.model, place, body, &mut observer).await?;
    let turn = Turn {
        response: ResponseObject::new(new_item_id("resp"), unix_now(), &request),
        conversation,
        chain,
        store: request.store.unwrap_or(true).then(|| Arc::clone(&state.store)),
        thread: Thread::of(&request, &state.store),
    };
    if request.stream {
        let writer =
            ResponsesWriter {
                turn: Some(turn),
                parser: None,
                sequence: 0,
                output: Vec::new(),
                open: Open::None,
                all: ParsedDelta::default(),
                streamed: Vec::new(),
            };
        return Ok(text_doors::stream(writer, chunks, observer, state));
    }
    let (parsed, reason, usage) = text_doors::fold(state, chunks, &mut observer).await?;
    let output = output_items(&parsed);
    let (response, recording) = turn.finish(output, &parsed, reason, usage);
    state.store.share(&response.id).await;
    recording.run().await;
    Ok(json_response(StatusCode::OK, &response))
}

#[utoipa::path(get, path = "/v1/responses/{id}", tag = "openai", params(("id" = String, Path, description = "A stored response's id")),
    responses((status = 200, description = "The stored response", body = ResponseObject), (status = 404, description = "Not stored (or expired)", body = ErrorBody)))]
pub(super) async fn get(State(state): State<AppState>, Path(id): Path<String>) -> Response {
    match state.store.fetch(&id).await {
        Ok(Some(stored)) => json_response(StatusCode::OK, stored.response.as_ref()),
        Ok(None) => not_found(&id),
        Err(error) => ApiError(BridgeError::Internal(error)).into_response(),
    }
}

#[utoipa::path(delete, path = "/v1/responses/{id}", tag = "openai", params(("id" = String, Path, description = "A stored response's id")),
    responses((status = 200, description = "Deleted", body = serde_json::Value), (status = 404, description = "Not stored (or expired)", body = ErrorBody)))]
pub(super) async fn delete(State(state): State<AppState>, Path(id): Path<String>) -> Response {
    match state.store.delete(&id).await {
        Ok(true) => json_response(StatusCode::OK, &json!({"id": id, "object": "response", "deleted": true})),
        Ok(false) => not_found(&id),
        Err(error) => ApiError(BridgeError::Internal(error)).into_response(),
    }
}

pub(super) fn not_found(id: &str) -> Response {
    let message = format!("Response with id '{id}' not found.");
    let body = json!({"error": {"message": message, "type": "invalid_request_error", "param": null, "code": null}});
    (StatusCode::NOT_FOUND, axum::Json(body)).into_response()
}

struct Prepared {
    options: crate::sampling::CompletionOptions,
    tools: crate::protocol::Tools,
    /// The conversation without `instructions`: what the next turn continues.
    conversation: Vec<Value>,
    /// What the template renders: the instructions first.
    messages: Vec<Value>,
    extra: Map<String, Value>,
    /// The first response of the `previous_response_id` chain the turn continues.
    chain: Option<Arc<str>>,
}

async fn prepare(store: &ResponseStore, request: &ResponsesRequest) -> Result<Prepared, BridgeError> {
    let options = request.options()?;
    let tools = request.tools()?;
    if request.conversation.is_some() && request.conversation_id().is_none() {
        return Err(BridgeError::field("conversation", "a conversation's id, or an object with its id"));
    }
    let mut chain = None;
    let mut conversation = match (&request.previous_response_id, request.conversation_id()) {
        (Some(_), Some(_)) => {
            return Err(BridgeError::field("conversation", "conversation and previous_response_id cannot both be given"));
        }
        (None, Some(id)) => super::conversations::messages_of(store, id).await?,
        (Some(id), None) => match store.fetch(id).await.map_err(BridgeError::Internal)? {
            Some(stored) => {
                chain = Some(stored.chain_root(id));
                stored.conversation.as_ref().clone()
            }
            None => {
                return Err(BridgeError::field("previous_response_id", format!("Previous response with id '{id}' not found.")));
            }
        },
        (None, None) => Vec::new(),
    };
    conversation.extend(request.input_messages()?);
    let mut messages = Vec::with_capacity(conversation.len() + 1);
    if let Some(instructions) = &request.instructions {
        messages.push(json!({"role": "system", "content": instructions}));
    }
    messages.extend(conversation.iter().cloned());
    let mut extra = Map::new();
    tools.template_variables(&mut extra);
    Ok(Prepared { options, tools, conversation, messages, extra, chain })
}

/// The output items of a whole answer: reasoning, the message, then each call.
fn output_items(parsed: &ParsedDelta) -> Vec<OutputItem> {
    let mut items = Vec::new();
    let reasoning = parsed.reasoning.trim();
    if !reasoning.is_empty() {
        items.push(OutputItem::reasoning(new_item_id("rs"), reasoning.to_owned()));
    }
    if !parsed.content.trim().is_empty() || parsed.tool_calls.is_empty() {
        items.push(OutputItem::message(new_item_id("msg"), parsed.content.clone(), "completed"));
    }
    for call in &parsed.tool_calls {
        items.push(OutputItem::function_call(new_item_id("fc"), call, call.arguments.clone(), "completed"));
    }
    items
}

/// One turn of a conversation: the response being built and what to store when it is done.
struct Turn {
    response: ResponseObject,
    conversation: Vec<Value>,
    /// The first response of the chain the turn continues (`None`: the turn starts one).
    chain: Option<Arc<str>>,
    store: Option<Arc<ResponseStore>>,
    /// The Conversations API's conversation the turn is made in, and its input items: both go
    /// into it with the output once the response is done.
    thread: Option<Thread>,
}

impl Turn {
    /// Stores `response` (a background response in progress) with the conversation so far.
    fn keep(&self, response: &ResponseObject) {
        if let (Some(store), Ok(value)) = (&self.store, serde_json::to_value(response)) {
            store.insert_in_chain(response.id.clone(), self.chain.clone(), self.conversation.clone(), value);
        }
    }

    /// Ends without an answer (`cancelled`, or `failed` with `error`) and stores that.
    fn end_as(self, status: &'static str, error: Option<ResponseError>) {
        let Turn { mut response, conversation, chain, store, .. } = self;
        response.status = status;
        response.error = error;
        if let (Some(store), Ok(value)) = (store, serde_json::to_value(&response)) {
            store.insert_in_chain(response.id.clone(), chain, conversation, value);
        }
    }

    fn finish(
        self,
        output: Vec<OutputItem>,
        parsed: &ParsedDelta,
        reason: FinishReason,
        usage: Usage,
    ) -> (ResponseObject, Recording) {
        let Turn { mut response, mut conversation, chain, store, thread } = self;
        let recording = Recording(thread.map(|thread| {
            (thread, output.iter().filter_map(|item| serde_json::to_value(item).ok()).collect())
        }));
        match reason {
            FinishReason::Length => {
                response.status = "incomplete";
                response.incomplete_details = Some(IncompleteDetails { reason: "max_output_tokens" });
            }
            _ => response.status = "completed",
        }
        response.output = output;
        response.usage = Some(ResponseUsage::from(UsageBody::from(usage)));
        if let Some(store) = store {
            conversation.push(assistant_message(parsed));
            let kept =
                serde_json::to_value(&response).is_ok_and(|stored| store.insert_in_chain(response.id.clone(), chain, conversation, stored));
            if !kept {
                tracing::warn!(id = %response.id, "the response is larger than the response store; it is not kept");
            }
        }
        (response, recording)
    }
}

/// The output item being streamed.
enum Open {
    None,
    Message { id: String, index: usize, text: String },
    Reasoning { id: String, index: usize, text: String },
    /// A function call whose arguments are streaming.
    Call { id: String, index: usize, call: ToolCall },
}

/// Writes the Responses API's typed events.
struct ResponsesWriter {
    /// Taken when the response ends.
    turn: Option<Turn>,
    parser: Option<OutputParser>,
    sequence: u64,
    /// Finished output items.
    output: Vec<OutputItem>,
    open: Open,
    /// Everything parsed so far, for the stored conversation.
    all: ParsedDelta,
    /// Calls whose pieces went out and which have not come whole yet.
    streamed: Vec<String>,
}

impl ResponsesWriter {
    fn event(&mut self, kind: &str, mut fields: Value, out: &mut VecDeque<Bytes>) {
        if let Value::Object(object) = &mut fields {
            object.insert("type".into(), Value::String(kind.to_owned()));
            object.insert("sequence_number".into(), json!(self.sequence));
        }
        self.sequence += 1;
        out.push_back(sse::named_frame(kind, &fields));
    }

    fn snapshot(&self) -> Value {
        self.turn.as_ref().map_or(Value::Null, |turn| serde_json::to_value(&turn.response).unwrap_or(Value::Null))
    }

    fn text(&mut self, delta: &str, out: &mut VecDeque<Bytes>) {
        if !matches!(self.open, Open::Message { .. }) {
            self.close(out);
            let (id, index) = (new_item_id("msg"), self.output.len());
            let item = OutputItem::message(id.clone(), String::new(), "in_progress");
            self.event("response.output_item.added", json!({"output_index": index, "item": item}), out);
            let part = OutputText::new(String::new());
            let fields = json!({"item_id": id, "output_index": index, "content_index": 0, "part": part});
            self.event("response.content_part.added", fields, out);
            self.open = Open::Message { id, index, text: String::new() };
        }
        if let Open::Message { id, index, text } = &mut self.open
            && !delta.is_empty()
        {
            text.push_str(delta);
            let fields = json!({"item_id": id, "output_index": index, "content_index": 0, "delta": delta, "logprobs": []});
            self.event("response.output_text.delta", fields, out);
        }
    }

    fn reasoning(&mut self, delta: &str, out: &mut VecDeque<Bytes>) {
        if !matches!(self.open, Open::Reasoning { .. }) {
            self.close(out);
            let (id, index) = (new_item_id("rs"), self.output.len());
            let item = OutputItem::reasoning(id.clone(), String::new());
            self.event("response.output_item.added", json!({"output_index": index, "item": item}), out);
            self.open = Open::Reasoning { id, index, text: String::new() };
        }
        if let Open::Reasoning { id, index, text } = &mut self.open {
            text.push_str(delta);
            let fields = json!({"item_id": id, "output_index": index, "content_index": 0, "delta": delta});
            self.event("response.reasoning_text.delta", fields, out);
        }
    }

    fn call(&mut self, call: &ToolCall, out: &mut VecDeque<Bytes>) {
        self.close(out);
        let (id, index) = (new_item_id("fc"), self.output.len());
        let added = OutputItem::function_call(id.clone(), call, String::new(), "in_progress");
        self.event("response.output_item.added", json!({"output_index": index, "item": added}), out);
        let fields = json!({"item_id": id, "output_index": index, "delta": call.arguments});
        self.event("response.function_call_arguments.delta", fields, out);
        let fields = json!({"item_id": id, "output_index": index, "name": call.name, "arguments": call.arguments});
        self.event("response.function_call_arguments.done", fields, out);
        let item = OutputItem::function_call(id, call, call.arguments.clone(), "completed");
        self.event("response.output_item.done", json!({"output_index": index, "item": item}), out);
        self.output.push(item);
    }

    /// A streamed call: its start adds an in-progress function_call item, its arguments are
    /// `function_call_arguments.delta`s.
    fn call_piece(&mut self, piece: CallPiece, out: &mut VecDeque<Bytes>) {
        match piece {
            CallPiece::Start { id: call_id, name } => {
                self.close(out);
                let (id, index) = (new_item_id("fc"), self.output.len());
                let call = ToolCall { id: call_id, name, arguments: String::new() };
                let added = OutputItem::function_call(id.clone(), &call, String::new(), "in_progress");
                self.event("response.output_item.added", json!({"output_index": index, "item": added}), out);
                self.streamed.push(call.id.clone());
                self.open = Open::Call { id, index, call };
            }
            CallPiece::Arguments(text) => {
                if let Open::Call { id, index, call } = &mut self.open {
                    call.arguments.push_str(&text);
                    let fields = json!({"item_id": id, "output_index": index, "delta": text});
                    self.event("response.function_call_arguments.delta", fields, out);
                }
            }
        }
    }

    /// Ends the open item with its `done` events.
    fn close(&mut self, out: &mut VecDeque<Bytes>) {
        match std::mem::replace(&mut self.open, Open::None) {
            Open::None => {}
            Open::Message { id, index, text } => {
                let fields = json!({"item_id": id, "output_index": index, "content_index": 0, "text": text, "logprobs": []});
                self.event("response.output_text.done", fields, out);
                let part = OutputText::new(text.clone());
                let fields = json!({"item_id": id, "output_index": index, "content_index": 0, "part": part});
                self.event("response.content_part.done", fields, out);
                let item = OutputItem::message(id, text, "completed");
                self.event("response.output_item.done", json!({"output_index": index, "item": item}), out);
                self.output.push(item);
            }
            Open::Reasoning { id, index, text } => {
                let fields = json!({"item_id": id, "output_index": index, "content_index": 0, "text": text});
                self.event("response.reasoning_text.done", fields, out);
                let item = OutputItem::Reasoning { id, summary: Vec::new(), content: vec![ReasoningText::new(text)] };
                self.event("response.output_item.done", json!({"output_index": index, "item": item}), out);
                self.output.push(item);
            }
            Open::Call { id, index, call } => {
                let fields = json!({"item_id": id, "output_index": index, "name": call.name, "arguments": call.arguments});
                self.event("response.function_call_arguments.done", fields, out);
                let item = OutputItem::function_call(id, &call, call.arguments.clone(), "completed");
                self.event("response.output_item.done", json!({"output_index": index, "item": item}), out);
                self.output.push(item);
            }
        }
    }
}

impl text_doors::ParsedWriter for ResponsesWriter {
    fn parsed(&mut self, parsed: ParsedDelta, out: &mut VecDeque<Bytes>) {
        if !parsed.reasoning.is_empty() {
            self.reasoning(&parsed.reasoning, out);
        }
        if !parsed.content.is_empty() {
            self.text(&parsed.content, out);
        }
        for piece in parsed.call_pieces.iter().cloned() {
            self.call_piece(piece, out);
        }
        for call in &parsed.tool_calls {
            match self.streamed.iter().position(|id| *id == call.id) {
                // Its pieces went out: the whole call ends its item.
                Some(at) => {
                    self.streamed.remove(at);
                    if matches!(&self.open, Open::Call { call: open, .. } if open.id == call.id) {
                        self.close(out);
                    }
                }
                // A worker's call that came whole (a text-input Dynamo worker's).
                None => self.call(call, out),
            }
        }
        self.all.extend(parsed);
    }
}

impl ChunkWriter for ResponsesWriter {
    fn start(&mut self) -> Vec<Bytes> {
        let mut out = VecDeque::new();
        let response = self.snapshot();
        self.event("response.created", json!({"response": response}), &mut out);
        self.event("response.in_progress", json!({"response": response}), &mut out);
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
        if self.output.is_empty() && matches!(self.open, Open::None) {
            // An empty answer is still one message, as in the unary response.
            self.text("", out);
        }
        self.close(out);
        let Some(turn) = self.turn.take() else {
            return;
        };
        let all = std::mem::take(&mut self.all);
        let store = turn.store.clone();
        let (response, recording) = turn.finish(std::mem::take(&mut self.output), &all, end.reason, end.usage);
        // Written beside the last event: a stream cannot wait for it.
        let id = response.id.clone();
        tokio::spawn(async move {
            if let Some(store) = store {
                store.share(&id).await;
            }
            recording.run().await;
        });
        let kind = if response.status == "incomplete" { "response.incomplete" } else { "response.completed" };
        self.event(kind, json!({"response": response}), out);
    }

    fn error(&mut self, error: &BridgeError, out: &mut VecDeque<Bytes>) {
        self.close(out);
        let Some(turn) = self.turn.take() else {
            return;
        };
        let mut response = turn.response;
        response.status = "failed";
        response.output = std::mem::take(&mut self.output);
        let code = if error.code() == tritium_proto::ErrorCode::InvalidArg { "invalid_prompt" } else { "server_error" };
        response.error = Some(ResponseError { code, message: error.to_string() });
        self.event("response.failed", json!({"response": response}), out);
    }
}
