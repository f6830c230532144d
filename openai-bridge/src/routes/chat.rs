//! `POST /v1/chat/completions`.

use std::collections::VecDeque;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::Response;
use bytes::Bytes;
use tritium_backend_api::llm::{FinishReason, ModelKind};

use super::sse::{self, ChunkWriter, End};
use super::{ApiError, AppState, OpenAiJson, json_response};
use crate::parsers::{OutputParser, ParsedDelta};
use crate::pipeline::{TokenInfo, collect};
use crate::protocol::{
    ChatChoice, ChatChunkChoice, ChatCompletionChunk, ChatCompletionRequest, ChatCompletionResponse, ChatDelta, ChatLogprobs,
    ChatMessage, ChatToolCall, ErrorBody, NvExt, UsageBody, new_id, unix_now,
};

#[utoipa::path(post, path = "/v1/chat/completions", tag = "openai", request_body = ChatCompletionRequest,
    responses((status = 200, description = "The completion, or with `stream` its chunks as server-sent events ending in `data: [DONE]`",
        content((ChatCompletionResponse = "application/json"), (ChatCompletionChunk = "text/event-stream"))), (status = 400, description = "A malformed request; `param` names the field", body = ErrorBody), (status = 404, description = "No such model", body = ErrorBody), (status = 429, description = "The model's queue is full", body = ErrorBody), (status = 500, description = "The engine failed", body = ErrorBody)))]
pub(super) async fn chat_completions(
    State(state): State<AppState>,
    worker: super::HeaderWorker,
    caller: super::CallerTrace,
    OpenAiJson(request): OpenAiJson<ChatCompletionRequest>,
) -> Result<Response, ApiError> {
    let pre = state.preprocessor(&request.model, ModelKind::Generate, "/v1/chat/completions")?;
    let mut observer = state.observer(&request.model, caller);
    let prepared = request.options().and_then(|options| {
        let tools = request.tools()?;
        let messages = request.template_messages()?;
        let extra = request.template_extra(&tools);
        Ok((options, tools, messages, extra))
    });
    let (mut options, tools, messages, extra) = prepared.map_err(|error| super::failed(&mut observer, error))?;
    let parser = super::output_parser(&pre, &tools, &mut options).map_err(|error| super::failed(&mut observer, error))?;
    let add_generation_prompt = request.add_generation_prompt.unwrap_or(true);
    let chat = super::ChatPrompt {
        messages: &messages,
        add_generation_prompt,
        extra: extra.as_ref(),
        with_tools: tools.offered(),
        nvext: request.nvext.as_ref(),
        worker: worker.or_nvext(request.nvext.as_ref()),
    };
    let super::Started { stream, annotations } = state.start_chat(&pre, &request.model, &options, chat, observer).await?;
    let mut writer = ChatWriter {
        annotations,
        nvext: request.nvext.clone(),
        id: new_id("chatcmpl"),
        created: unix_now(),
        model: request.model.clone(),
        logprobs: options.logprobs.is_some(),
        include_usage: request.include_usage(),
        parser,
        calls: 0,
    };
    if request.stream {
        return Ok(sse::respond(writer, stream));
    }
    let generated = collect(stream).await?;
    let parsed = super::parse_whole(writer.parser.take(), generated.text);
    let finish_reason = if parsed.tool_calls.is_empty() { generated.reason.as_str() } else { "tool_calls" };
    let response = ChatCompletionResponse {
        id: std::mem::take(&mut writer.id),
        object: "chat.completion",
        created: writer.created,
        model: request.model,
        choices: vec![ChatChoice {
            index: 0,
            message: message(parsed),
            logprobs: writer.logprobs.then(|| ChatLogprobs::from_tokens(&generated.tokens)),
            finish_reason: Some(finish_reason),
        }],
        usage: UsageBody::from(generated.usage),
        nvext: super::nvext_fields(request.nvext.as_ref(), &generated.meta),
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
    /// Splits reasoning and tool calls out of the text, when the server parses them.
    parser: Option<OutputParser>,
    /// Tool calls sent so far: the next one's `index`.
    calls: u32,
}

impl ChatWriter {
    fn chunk(&self, choices: Vec<ChatChunkChoice>) -> ChatCompletionChunk {
        ChatCompletionChunk {
            id: self.id.clone(),
            object: "chat.completion.chunk",
            created: self.created,
            model: self.model.clone(),
            choices,
            usage: self.include_usage.then_some(None),
            nvext: None,
        }
    }
}

impl ChunkWriter for ChatWriter {
    fn start(&mut self) -> Vec<Bytes> {
        let delta = ChatDelta { role: Some("assistant"), content: Some(String::new()), ..Default::default() };
        let mut frames = std::mem::take(&mut self.annotations);
        frames.push(sse::frame(&self.chunk(vec![ChatChunkChoice { index: 0, delta, logprobs: None, finish_reason: None }])));
        frames
    }

    fn delta(&mut self, text: String, tokens: &[TokenInfo], finish: Option<FinishReason>, out: &mut VecDeque<Bytes>) {
        let parsed = super::parse_piece(&mut self.parser, text, finish.is_some());
        let logprobs = (self.logprobs && !tokens.is_empty()).then(|| ChatLogprobs::from_tokens(tokens));
        // Text held back by the parser sends nothing now; its tokens' logprobs still go.
        if parsed.is_empty() && finish.is_none() && logprobs.is_none() && self.parser.is_some() {
            return;
        }
        let tool_calls: Vec<ChatToolCall> = parsed
            .tool_calls
            .into_iter()
            .map(|call| {
                self.calls += 1;
                ChatToolCall::new(call, Some(self.calls - 1))
            })
            .collect();
        // OpenAI's closing chunk has an empty delta; a text-less chunk mid-stream still carries
        // its tokens' logprobs.
        let content = (!parsed.content.is_empty() || (finish.is_none() && self.parser.is_none())).then_some(parsed.content);
        let delta = ChatDelta {
            role: None,
            content,
            reasoning_content: (!parsed.reasoning.is_empty()).then_some(parsed.reasoning),
            tool_calls,
        };
        let finish_reason = finish.map(|reason| if self.calls > 0 { "tool_calls" } else { reason.as_str() });
        out.push_back(sse::frame(&self.chunk(vec![ChatChunkChoice { index: 0, delta, logprobs, finish_reason }])));
    }

    fn end(&mut self, end: End, out: &mut VecDeque<Bytes>) {
        let nvext = super::nvext_fields(self.nvext.as_ref(), &end.meta);
        if self.include_usage || nvext.is_some() {
            let mut chunk = self.chunk(Vec::new());
            chunk.usage = self.include_usage.then_some(Some(UsageBody::from(end.usage)));
            chunk.nvext = nvext;
            out.push_back(sse::frame(&chunk));
        }
        out.push_back(sse::done());
    }
}
