//! `POST /v1/chat/completions`.

use std::collections::VecDeque;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::Response;
use bytes::Bytes;
use tritium_backend_api::llm::{FinishReason, ModelKind, OpenAiApi};

use super::next_turn::{NextTurn, StreamedAnswer};
use super::sse::{self, ChunkWriter, End};
use super::{ApiError, AppState, json_response};
use crate::parsers::{OutputParser, ParsedDelta};
use crate::pipeline::{TokenInfo, collect};
use crate::protocol::{
    ChatChoice, ChatChunkChoice, ChatCompletionChunk, ChatCompletionRequest, ChatCompletionResponse, ChatDelta, ChatLogprobs,
    ChatMessage, ChatToolCall, ChatToolCallDelta, ErrorBody, NvExt, UsageBody, new_id, unix_now,
};

#[utoipa::path(post, path = "/v1/chat/completions", tag = "openai", request_body = ChatCompletionRequest,
    responses((status = 200, description = "The completion, or with `stream` its chunks as server-sent events ending in `data: [DONE]`",
        content((ChatCompletionResponse = "application/json"), (ChatCompletionChunk = "text/event-stream"))), (status = 400, description = "A malformed request; `param` names the field", body = ErrorBody), (status = 404, description = "No such model", body = ErrorBody), (status = 429, description = "The model's queue is full", body = ErrorBody), (status = 500, description = "The engine failed", body = ErrorBody)))]
pub(super) async fn chat_completions(
    State(state): State<AppState>,
    worker: super::HeaderWorker,
    priority: super::HeaderPriority,
    caller: super::CallerTrace,
    super::OpenAiJsonAndBody(mut request, body): super::OpenAiJsonAndBody<ChatCompletionRequest>,
) -> Result<Response, ApiError> {
    if state.hub.takes_text(&request.model) {
        let place = worker.place(request.nvext.as_ref());
        return super::text_input::forward(&state, OpenAiApi::Chat, &request.model, place, body.json()?, caller).await;
    }
    let pre = state.preprocessor(&request.model, ModelKind::Generate, "/v1/chat/completions").await?;
    let mut observer = state.observer(&request.model, caller);
    let prepared = request.options().and_then(|mut options| {
        priority.apply(&mut options)?;
        let tools = request.tools()?;
        // Read before the messages are taken (their text parts are joined then); a bad message is
        // still the error named first.
        let breakpoint = crate::protocol::chat_breakpoint(&request.messages);
        let messages = request.take_template_messages()?;
        let breakpoint = breakpoint?;
        let extra = request.template_extra(&tools);
        Ok((options, tools, messages, extra, breakpoint))
    });
    let (mut options, tools, messages, extra, breakpoint) = prepared.map_err(|error| super::failed(&mut observer, error))?;
    let (n, best_of) = request
        .sampling
        .choices(request.best_of, request.stream, pre.limits())
        .map_err(|error| super::failed(&mut observer, error))?;
    if best_of > n {
        let refused = crate::BridgeError::field(
            "best_of",
            format!("best_of greater than n is a /v1/completions parameter; a chat answers its n ({n}) choices"),
        );
        return Err(super::failed(&mut observer, refused).into());
    }
    let unparsed = options.clone();
    let parser = super::output_parser(&pre, &tools, &mut options).map_err(|error| super::failed(&mut observer, error))?;
    // Each choice parses its own text; the parser is made the same way for each.
    let mut parsers = vec![parser];
    for _ in 1..n {
        parsers.push(
            super::output_parser(&pre, &tools, &mut unparsed.clone()).map_err(|error| super::failed(&mut observer, error))?,
        );
    }
    let add_generation_prompt = request.add_generation_prompt.unwrap_or(true);
    let session = worker.session();
    let worker = worker.or_nvext(request.nvext.as_ref());
    let hints = request.nvext.as_ref().and_then(|nvext| nvext.agent_hints.as_ref());
    let next_turn = hints.is_some_and(|hints| hints.speculative_prefill == Some(true)).then(|| NextTurn {
        hub: state.hub.clone(),
        pre: pre.clone(),
        model: request.model.clone(),
        worker: worker.map(str::to_owned),
        messages: messages.clone(),
        extra: extra.clone(),
    });
    let chat = super::ChatPrompt {
        messages: &messages,
        add_generation_prompt,
        extra: extra.as_ref(),
        with_tools: tools.offered(),
        nvext: request.nvext.as_ref(),
        worker,
        session,
        cache_breakpoint: breakpoint,
    };
    let observers =
        std::iter::once(observer).chain((1..n).map(|_| state.metrics.observer(&request.model, super::PROTOCOL))).collect();
    let super::StartedChoices { streams, annotations } =
        state.start_chat_choices(&pre, &request.model, &options, chat, observers).await?;
    let mut writer = ChatWriter {
        annotations,
        nvext: request.nvext.clone(),
        id: new_id("chatcmpl"),
        created: unix_now(),
        model: request.model.clone(),
        logprobs: options.logprobs.is_some(),
        include_usage: request.include_usage(),
        calls: vec![0; parsers.len()],
        parsers,
        next_turn,
        answer: StreamedAnswer::default(),
    };
    if request.stream {
        return Ok(sse::respond_many(writer, streams).await);
    }
    let generated = futures::future::try_join_all(streams.into_iter().map(collect)).await?;
    let mut usage = crate::pipeline::Usage::default();
    let mut choices = Vec::with_capacity(generated.len());
    for (index, (generated, parser)) in generated.iter().zip(writer.parsers.iter_mut()).enumerate() {
        if index == 0 {
            usage = generated.usage;
        } else {
            usage.completion_tokens = usage.completion_tokens.saturating_add(generated.usage.completion_tokens);
        }
        let parsed = super::parse_whole(parser.take(), generated.text.clone());
        let finish_reason = if parsed.tool_calls.is_empty() { generated.reason.as_str() } else { "tool_calls" };
        choices.push(ChatChoice {
            index: u32::try_from(index).unwrap_or(u32::MAX),
            message: message(parsed),
            logprobs: writer.logprobs.then(|| ChatLogprobs::from_tokens(&generated.tokens)),
            finish_reason: Some(finish_reason),
        });
    }
    if let (Some(next_turn), Some(first)) = (writer.next_turn.take(), choices.first()) {
        next_turn.prefill(&first.message);
    }
    let meta = generated.first().map(|g| g.meta.clone()).unwrap_or_default();
    let response = ChatCompletionResponse {
        id: std::mem::take(&mut writer.id),
        object: "chat.completion",
        created: writer.created,
        model: request.model,
        choices,
        usage: UsageBody::from(usage),
        nvext: super::nvext_fields(request.nvext.as_ref(), &meta),
    };
    Ok(json_response(StatusCode::OK, &response))
}

/// The assistant's message: its text (`null` when it only called tools), reasoning and calls.
fn message(parsed: ParsedDelta) -> ChatMessage {
    let content = match (parsed.content.trim().is_empty(), parsed.tool_calls.is_empty()) {
        (true, false) => None,
        _ => Some(parsed.content),
    };
    let reasoning = parsed.reasoning.trim();
    ChatMessage {
        role: "assistant",
        content,
        reasoning_content: (!reasoning.is_empty()).then(|| reasoning.to_owned()),
        tool_calls: parsed.tool_calls.into_iter().map(|call| ChatToolCall::new(call, None)).collect(),
    }
}

/// Builds `chat.completion.chunk`s.
struct ChatWriter {
    /// `nvext.annotations` events, sent first.
    annotations: Vec<Bytes>,
    nvext: Option<NvExt>,
    id: String,
    created: u64,
    model: String,
    logprobs: bool,
    include_usage: bool,
    /// Each choice's: splits reasoning and tool calls out of its text, when the server parses them.
    parsers: Vec<Option<OutputParser>>,
    /// Each choice's tool calls sent so far: its next one's `index`.
    calls: Vec<u32>,
    /// `nvext.agent_hints.speculative_prefill`: what the next turn starts with, prefilled at the end.
    next_turn: Option<NextTurn>,
    /// The first choice's message so far (kept only for `next_turn`).
    answer: StreamedAnswer,
}

impl ChatWriter {
    fn chunk<'a>(&'a self, choices: &'a [ChatChunkChoice]) -> ChatCompletionChunk<'a> {
        ChatCompletionChunk {
            id: &self.id,
            object: "chat.completion.chunk",
            created: self.created,
            model: &self.model,
            choices,
            usage: self.include_usage.then_some(None),
            nvext: None,
        }
    }
}

impl ChunkWriter for ChatWriter {
    fn start(&mut self) -> Vec<Bytes> {
        let mut frames = std::mem::take(&mut self.annotations);
        for index in 0..self.parsers.len() {
            let delta = ChatDelta { role: Some("assistant"), content: Some(String::new()), ..Default::default() };
            let index = u32::try_from(index).unwrap_or(u32::MAX);
            let choice = ChatChunkChoice { index, delta, logprobs: None, finish_reason: None };
            frames.push(sse::frame(&self.chunk(std::slice::from_ref(&choice))));
        }
        frames
    }

    fn delta(&mut self, index: u32, text: String, tokens: &[TokenInfo], finish: Option<FinishReason>, out: &mut VecDeque<Bytes>) {
        let (Some(parser), Some(calls)) = (self.parsers.get_mut(index as usize), self.calls.get_mut(index as usize)) else {
            return;
        };
        let parsed = super::parse_piece(parser, text, finish.is_some());
        let logprobs = (self.logprobs && !tokens.is_empty()).then(|| ChatLogprobs::from_tokens(tokens));
        // Text held back by the parser sends nothing now; its tokens' logprobs still go.
        if parsed.is_empty() && finish.is_none() && logprobs.is_none() && parser.is_some() {
            return;
        }
        let tool_calls = ChatToolCallDelta::from_pieces(parsed.call_pieces, calls);
        // OpenAI's closing chunk has an empty delta; a text-less chunk mid-stream still carries
        // its tokens' logprobs.
        let content = (!parsed.content.is_empty() || (finish.is_none() && parser.is_none())).then_some(parsed.content);
        let delta = ChatDelta {
            role: None,
            content,
            reasoning_content: (!parsed.reasoning.is_empty()).then_some(parsed.reasoning),
            tool_calls,
        };
        if index == 0 && self.next_turn.is_some() {
            self.answer.content.push_str(delta.content.as_deref().unwrap_or_default());
            self.answer.reasoning.push_str(delta.reasoning_content.as_deref().unwrap_or_default());
            for call in &parsed.tool_calls {
                let index = u32::try_from(self.answer.tool_calls.len()).unwrap_or(u32::MAX);
                self.answer.tool_calls.push(ChatToolCall::new(call.clone(), Some(index)));
            }
        }
        let called = *calls > 0;
        let finish_reason = finish.map(|reason| if called { "tool_calls" } else { reason.as_str() });
        let choice = ChatChunkChoice { index, delta, logprobs, finish_reason };
        out.push_back(sse::frame(&self.chunk(std::slice::from_ref(&choice))));
    }

    fn end(&mut self, end: End, out: &mut VecDeque<Bytes>) {
        if let Some(next_turn) = self.next_turn.take() {
            next_turn.prefill(&std::mem::take(&mut self.answer).message());
        }
        let nvext = super::nvext_fields(self.nvext.as_ref(), &end.meta);
        if self.include_usage || nvext.is_some() {
            let mut chunk = self.chunk(&[]);
            chunk.usage = self.include_usage.then_some(Some(UsageBody::from(end.usage)));
            chunk.nvext = nvext;
            out.push_back(sse::frame(&chunk));
        }
        out.push_back(sse::done());
    }
}
