//! `POST /v1/completions`.

use std::collections::VecDeque;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::Response;
use bytes::Bytes;
use tritium_backend_api::llm::{FinishReason, ModelKind};

use super::sse::{self, ChunkWriter, End};
use super::{ApiError, AppState, OpenAiJson, PROTOCOL, check_token_ids, failed, json_response};
use crate::kserve::DEFAULT_MAX_TOKENS;
use crate::pipeline::{ModelRef, TokenInfo, collect, generate_text};
use crate::protocol::{
    CompletionChoice, CompletionLogprobs, CompletionRequest, CompletionResponse, ErrorBody, NvExt, Prompt, UsageBody, new_id,
    unix_now,
};

#[utoipa::path(post, path = "/v1/completions", tag = "openai", request_body = CompletionRequest,
    responses((status = 200, description = "The completion, or with `stream` its chunks as server-sent events ending in `data: [DONE]`",
        content((CompletionResponse = "application/json"), (CompletionResponse = "text/event-stream"))), (status = 400, description = "A malformed request; `param` names the field", body = ErrorBody), (status = 404, description = "No such model", body = ErrorBody), (status = 429, description = "The model's queue is full", body = ErrorBody), (status = 500, description = "The engine failed", body = ErrorBody)))]
pub(super) async fn completions(
    State(state): State<AppState>,
    worker: super::HeaderWorker,
    OpenAiJson(request): OpenAiJson<CompletionRequest>,
) -> Result<Response, ApiError> {
    let pre = state.preprocessor(&request.model, ModelKind::Generate, "/v1/completions")?;
    let mut observer = state.metrics.observer(&request.model, PROTOCOL);
    let options = request.options().map_err(|error| failed(&mut observer, error))?;
    let nvext = request.nvext.as_ref();
    let (text, prompt) = match (nvext.and_then(|n| n.token_data.as_ref()), &request.prompt) {
        (Some(ids), _) => (None, check_token_ids(&pre, "nvext.token_data", ids).map(|()| ids.clone())),
        (None, Prompt::Text(text)) => (Some(text.clone()), pre.encode_off_runtime(text.clone(), true).await),
        (None, Prompt::Tokens(ids)) => (None, check_token_ids(&pre, "prompt", ids).map(|()| ids.clone())),
    };
    let prompt = prompt.map_err(|error| failed(&mut observer, error))?;
    let annotations = super::annotation_frames(nvext, &pre, text, &prompt);
    let target = ModelRef { name: &request.model, version: None, worker: worker.or_nvext(nvext) };
    // Like OpenAI, /v1/completions defaults to 16 tokens.
    let started = generate_text(state.hub.as_ref(), &pre, target, &options, prompt, Some(DEFAULT_MAX_TOKENS), observer).await;
    let stream = started?;
    let mut writer = CompletionWriter {
        annotations,
        nvext: request.nvext.clone(),
        id: new_id("cmpl"),
        created: unix_now(),
        model: request.model.clone(),
        logprobs: options.logprobs.is_some(),
        offset: 0,
        include_usage: request.include_usage(),
    };
    if request.stream {
        return Ok(sse::respond(writer, stream));
    }
    let generated = collect(stream).await?;
    let mut response = writer.chunk(generated.text, &generated.tokens, Some(generated.reason));
    response.usage = Some(Some(UsageBody::from(generated.usage)));
    response.nvext = super::nvext_fields(writer.nvext.as_ref(), &generated.meta);
    Ok(json_response(StatusCode::OK, &response))
}

/// Builds completion responses and chunks (the same shape, `object: "text_completion"`).
struct CompletionWriter {
    /// `nvext.annotations` events, sent first.
    annotations: Vec<Bytes>,
    nvext: Option<NvExt>,
    id: String,
    created: u64,
    model: String,
    logprobs: bool,
    /// Characters of completion so far, for `text_offset`.
    offset: u32,
    include_usage: bool,
}

impl CompletionWriter {
    fn chunk(&mut self, text: String, tokens: &[TokenInfo], finish: Option<FinishReason>) -> CompletionResponse {
        let logprobs = self.logprobs.then(|| CompletionLogprobs::from_tokens(tokens, &mut self.offset));
        CompletionResponse {
            id: self.id.clone(),
            object: "text_completion",
            created: self.created,
            model: self.model.clone(),
            choices: vec![CompletionChoice { index: 0, text, logprobs, finish_reason: finish.map(FinishReason::as_str) }],
            usage: self.include_usage.then_some(None),
            nvext: None,
        }
    }
}

impl ChunkWriter for CompletionWriter {
    fn start(&mut self) -> Vec<Bytes> {
        std::mem::take(&mut self.annotations)
    }

    fn delta(&mut self, text: String, tokens: &[TokenInfo], finish: Option<FinishReason>, out: &mut VecDeque<Bytes>) {
        out.push_back(sse::frame(&self.chunk(text, tokens, finish)));
    }

    fn end(&mut self, end: End, out: &mut VecDeque<Bytes>) {
        let nvext = super::nvext_fields(self.nvext.as_ref(), &end.meta);
        if self.include_usage || nvext.is_some() {
            let mut chunk = self.chunk(String::new(), &[], None);
            chunk.choices.clear();
            chunk.usage = self.include_usage.then_some(Some(UsageBody::from(end.usage)));
            chunk.nvext = nvext;
            out.push_back(sse::frame(&chunk));
        }
        out.push_back(sse::done());
    }
}
