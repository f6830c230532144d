//! `POST /v1/chat/completions`.

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::Response;
use bytes::Bytes;
use tritium_worker::llm::{FinishReason, ModelKind};

use super::sse::{self, ChunkWriter};
use super::{ApiError, AppState, OpenAiJson, PROTOCOL, failed, json_response};
use crate::pipeline::{TokenInfo, Usage, collect};
use crate::protocol::{
    ChatChoice, ChatChunkChoice, ChatCompletionChunk, ChatCompletionRequest, ChatCompletionResponse, ChatDelta, ChatLogprobs,
    ChatMessage, UsageBody, new_id, unix_now,
};

pub(super) async fn chat_completions(
    State(state): State<AppState>,
    OpenAiJson(request): OpenAiJson<ChatCompletionRequest>,
) -> Result<Response, ApiError> {
    let pre = state.preprocessor(&request.model, ModelKind::Generate, "/v1/chat/completions")?;
    let mut observer = state.metrics.observer(&request.model, PROTOCOL);
    let rendered = request.options().and_then(|options| {
        let messages = request.template_messages()?;
        let extra = request.template_extra();
        let text = pre.render_chat(&messages, request.add_generation_prompt.unwrap_or(true), extra.as_ref())?;
        Ok((options, text))
    });
    let (options, text) = rendered.map_err(|error| failed(&mut observer, error))?;
    // The template writes the special tokens (BOS included) itself.
    let prompt = pre.encode_off_runtime(text, false).await.map_err(|error| failed(&mut observer, error))?;
    let stream = state.start(&pre, &request.model, &options, prompt, None, observer).await?;
    let mut writer = ChatWriter {
        id: new_id("chatcmpl"),
        created: unix_now(),
        model: request.model.clone(),
        logprobs: options.logprobs.is_some(),
        include_usage: request.include_usage(),
    };
    if request.stream {
        return Ok(sse::respond(writer, stream, request.include_usage()));
    }
    let (text, tokens, reason, usage) = collect(stream).await?;
    let response = ChatCompletionResponse {
        id: std::mem::take(&mut writer.id),
        object: "chat.completion",
        created: writer.created,
        model: request.model,
        choices: vec![ChatChoice {
            index: 0,
            message: ChatMessage { role: "assistant", content: text },
            logprobs: writer.logprobs.then(|| ChatLogprobs::from_tokens(&tokens)),
            finish_reason: Some(reason.as_str()),
        }],
        usage: UsageBody::from(usage),
    };
    Ok(json_response(StatusCode::OK, &response))
}

/// Builds `chat.completion.chunk`s.
struct ChatWriter {
    id: String,
    created: u64,
    model: String,
    logprobs: bool,
    include_usage: bool,
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
        }
    }
}

impl ChunkWriter for ChatWriter {
    fn start(&mut self) -> Vec<Bytes> {
        let delta = ChatDelta { role: Some("assistant"), content: Some(String::new()) };
        vec![sse::frame(&self.chunk(vec![ChatChunkChoice { index: 0, delta, logprobs: None, finish_reason: None }]))]
    }

    fn delta(&mut self, text: String, tokens: &[TokenInfo], finish: Option<FinishReason>) -> Bytes {
        // OpenAI's closing chunk has an empty delta; a text-less chunk mid-stream still carries
        // its tokens' logprobs.
        let content = (!text.is_empty() || finish.is_none()).then_some(text);
        let choice = ChatChunkChoice {
            index: 0,
            delta: ChatDelta { role: None, content },
            logprobs: (self.logprobs && !tokens.is_empty()).then(|| ChatLogprobs::from_tokens(tokens)),
            finish_reason: finish.map(FinishReason::as_str),
        };
        sse::frame(&self.chunk(vec![choice]))
    }

    fn usage(&mut self, usage: Usage) -> Bytes {
        let mut chunk = self.chunk(Vec::new());
        chunk.usage = Some(Some(UsageBody::from(usage)));
        sse::frame(&chunk)
    }
}
