//! `POST /v1/completions`.

use std::collections::VecDeque;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::Response;
use bytes::Bytes;
use serde_json::{Map, Value, json};
use tritium_backend_api::llm::{FinishReason, ModelKind, OpenAiApi, PromptLogprob};

use super::sse::{self, ChunkWriter, End};
use super::{ApiError, AppState, check_token_ids, failed, json_response};
use crate::BridgeError;
use crate::choices::generate_choices;
use crate::pipeline::{Generated, ModelRef, TokenInfo, Usage, collect};
use crate::preprocess::Preprocessor;
use crate::protocol::{
    CompletionChoice, CompletionLogprobs, CompletionRequest, CompletionResponse, ErrorBody, NvExt, Prompt, UsageBody, new_id,
    unix_now,
};
use crate::sampling::CompletionOptions;

#[utoipa::path(post, path = "/v1/completions", tag = "openai", request_body = CompletionRequest,
    responses((status = 200, description = "The completion, or with `stream` its chunks as server-sent events ending in `data: [DONE]`",
        content((CompletionResponse = "application/json"), (CompletionResponse = "text/event-stream"))), (status = 400, description = "A malformed request; `param` names the field", body = ErrorBody), (status = 404, description = "No such model", body = ErrorBody), (status = 429, description = "The model's queue is full", body = ErrorBody), (status = 500, description = "The engine failed", body = ErrorBody)))]
pub(super) async fn completions(
    State(state): State<AppState>,
    worker: super::HeaderWorker,
    priority: super::HeaderPriority,
    caller: super::CallerTrace,
    super::OpenAiJsonAndBody(request, body): super::OpenAiJsonAndBody<CompletionRequest>,
) -> Result<Response, ApiError> {
    if state.hub.takes_text(&request.model) {
        let place = worker.place(request.nvext.as_ref());
        return super::text_input::forward(&state, OpenAiApi::Completions, &request.model, place, body.json()?, caller).await;
    }
    let pre = state.preprocessor(&request.model, ModelKind::Generate, "/v1/completions").await?;
    let mut observer = state.observer(&request.model, caller);
    let mut options = request.options().map_err(|error| failed(&mut observer, error))?;
    priority.apply(&mut options).map_err(|error| failed(&mut observer, error))?;
    let (n, best_of) =
        request.sampling.choices(request.best_of, request.stream, pre.limits()).map_err(|error| failed(&mut observer, error))?;
    let nvext = request.nvext.as_ref();
    let prompts = &request.prompt.0;
    let many = prompts.len() > 1;
    let sequences = prompts.len().saturating_mul(best_of);
    let refused = if prompts.len() > pre.limits().max_prompts {
        let max = pre.limits().max_prompts;
        Some(BridgeError::field("prompt", format!("at most {max} prompts per request are allowed, got {}", prompts.len())))
    } else if many && request.stream {
        Some(BridgeError::field("prompt", "a list of several prompts is not supported with stream"))
    } else if many && nvext.is_some_and(|n| n.token_data.is_some()) {
        Some(BridgeError::field("nvext.token_data", "nvext.token_data replaces one prompt, not a list of them"))
    } else if sequences > pre.limits().max_prompts {
        let max = pre.limits().max_prompts;
        let field = if best_of > n { "best_of" } else { "n" };
        Some(BridgeError::field(
            field,
            format!("a request may start at most {max} sequences (prompts times choices), got {sequences}"),
        ))
    } else {
        None
    };
    if let Some(error) = refused {
        return Err(failed(&mut observer, error).into());
    }
    let mut inputs = Vec::with_capacity(prompts.len());
    for prompt in prompts {
        let (text, ids) = match (nvext.and_then(|n| n.token_data.as_ref()), prompt) {
            (Some(ids), _) => (None, check_token_ids(&pre, "nvext.token_data", ids).map(|()| ids.clone())),
            (None, Prompt::Text(text)) => (Some(text.clone()), pre.encode_off_runtime(text.clone(), true).await),
            (None, Prompt::Tokens(ids)) => (None, check_token_ids(&pre, "prompt", ids).map(|()| ids.clone())),
        };
        inputs.push((text, ids.map_err(|error| failed(&mut observer, error))?));
    }
    let target = ModelRef { name: &request.model, version: None, worker: worker.or_nvext(nvext), session: worker.session() };
    if !many && request.stream {
        let Some((text, prompt)) = inputs.pop() else {
            return Err(failed(&mut observer, BridgeError::field("prompt", "the prompt is empty")).into());
        };
        let annotations = super::annotation_frames(nvext, &pre, text, &prompt);
        let observers = std::iter::once(observer).chain((1..n).map(|_| state.metrics.observer(&request.model, super::PROTOCOL)));
        // Like OpenAI, /v1/completions defaults to 16 tokens (models whose card says otherwise:
        // Dynamo's workers).
        let hub = state.hub.as_ref();
        let default_max = pre.card().default_completion_tokens;
        let started = generate_choices(hub, &pre, target, &options, prompt, default_max, observers.collect()).await;
        let writer = CompletionWriter {
            annotations,
            nvext: request.nvext.clone(),
            id: new_id("cmpl"),
            created: unix_now(),
            model: request.model.clone(),
            logprobs: options.logprobs.is_some(),
            offsets: vec![0; n],
            include_usage: request.include_usage(),
        };
        return Ok(sse::respond_many(writer, started?).await);
    }
    // Every prompt and choice is its own sequence, the prompts at once; the first carries the
    // request's trace, each is a request in the LLM metrics. `best_of` ranks by log-probability,
    // which the engine then reports whether or not the client asked for it.
    let mut generating = options.clone();
    if best_of > n {
        generating.logprobs = Some(options.logprobs.unwrap_or(0));
    }
    let mut observers = std::iter::once(observer)
        .chain((1..sequences).map(|_| state.metrics.observer(&request.model, super::PROTOCOL)))
        .collect::<Vec<_>>()
        .into_iter();
    let runs = inputs.iter().map(|(_, prompt)| {
        let (hub, pre, options) = (state.hub.as_ref(), &pre, &generating);
        let observers: Vec<_> = observers.by_ref().take(best_of).collect();
        async move {
            let streams =
                generate_choices(hub, pre, target, options, prompt.clone(), pre.card().default_completion_tokens, observers)
                    .await?;
            futures::future::try_join_all(streams.into_iter().map(collect)).await
        }
    });
    let generated = futures::future::try_join_all(runs.collect::<Vec<_>>()).await?;
    let echo = request.echo == Some(true);
    let prompt_only = request.prompt_only();
    let mut usage = Usage::default();
    let mut choices = Vec::with_capacity(generated.len() * n);
    for (prompt_index, ((text, prompt), candidates)) in inputs.into_iter().zip(&generated).enumerate() {
        let prompt_text = match (echo, text) {
            (false, _) => None,
            (true, Some(text)) => Some(text),
            (true, None) => Some(pre.decode(&prompt)?),
        };
        let first = &candidates[0];
        usage.prompt_tokens = usage.prompt_tokens.saturating_add(first.usage.prompt_tokens);
        usage.cached_tokens = usage.cached_tokens.saturating_add(first.usage.cached_tokens);
        if !prompt_only {
            let completion: u32 = candidates.iter().map(|g| g.usage.completion_tokens).fold(0, u32::saturating_add);
            usage.completion_tokens = usage.completion_tokens.saturating_add(completion);
        }
        let chosen = if best_of > n { crate::choices::best(candidates, n) } else { (0..n).collect() };
        for (rank, chosen) in chosen.into_iter().enumerate() {
            let index = prompt_index * n + rank;
            choices.push(completion_choice(&pre, &request, &options, index, prompt_text.clone(), &prompt, &candidates[chosen]));
        }
    }
    let meta = generated.first().and_then(|g| g.first()).map(|g| g.meta.clone()).unwrap_or_default();
    let response = CompletionResponse {
        id: new_id("cmpl"),
        object: "text_completion",
        created: unix_now(),
        model: request.model.clone(),
        choices,
        usage: Some(Some(UsageBody::from(usage))),
        nvext: super::nvext_fields(request.nvext.as_ref(), &meta),
    };
    Ok(json_response(StatusCode::OK, &response))
}

/// One answered choice: the echoed prompt (when asked), then the completion, with their logprobs.
fn completion_choice(
    pre: &Preprocessor,
    request: &CompletionRequest,
    options: &CompletionOptions,
    index: usize,
    prompt_text: Option<String>,
    prompt: &[u32],
    generated: &Generated,
) -> CompletionChoice {
    let prompt_only = request.prompt_only();
    let scores = generated.prompt_scores.as_deref().unwrap_or_default();
    let mut choice = Choice { text: String::new(), logprobs: options.logprobs.map(|_| CompletionLogprobs::default()), offset: 0 };
    if let Some(text) = prompt_text {
        choice.echo_prompt(pre, text, prompt, scores);
    }
    if !prompt_only {
        choice.push_completion(&generated.text, &generated.tokens);
        // As vLLM answers: the token that stopped the sequence is in the logprobs, not the
        // text (lm-eval's scoring drops the last logprob entry as the generated one).
        if let Some(stop) = &generated.stop_token {
            choice.push_completion("", std::slice::from_ref(stop));
        }
    }
    let reason = if prompt_only { FinishReason::Length } else { generated.reason };
    CompletionChoice {
        index: u32::try_from(index).unwrap_or(u32::MAX),
        text: choice.text,
        logprobs: choice.logprobs,
        finish_reason: Some(reason.as_str()),
        prompt_logprobs: request.prompt_logprobs.map(|top| vllm_prompt_logprobs(pre, prompt, scores, top)),
    }
}

/// One choice's text and logprobs as they are assembled: the echoed prompt, then the completion.
struct Choice {
    text: String,
    logprobs: Option<CompletionLogprobs>,
    /// Characters of `text` so far, for `text_offset`.
    offset: u32,
}

impl Choice {
    fn echo_prompt(&mut self, pre: &Preprocessor, text: String, prompt: &[u32], scores: &[PromptLogprob]) {
        if let Some(logprobs) = &mut self.logprobs {
            let tokens: Vec<String> = prompt.iter().map(|&id| pre.token_text(id)).collect();
            let scores: Vec<(f32, Vec<(String, f32)>)> = scores
                .iter()
                .map(|score| (score.logprob, score.top_logprobs.iter().map(|&(id, lp)| (pre.token_text(id), lp)).collect()))
                .collect();
            let mut offset = self.offset;
            logprobs.extend(CompletionLogprobs::from_prompt(&tokens, &scores, &mut offset));
        }
        self.offset = self.offset.saturating_add(u32::try_from(text.chars().count()).unwrap_or(u32::MAX));
        self.text.push_str(&text);
    }

    fn push_completion(&mut self, text: &str, tokens: &[TokenInfo]) {
        if let Some(logprobs) = &mut self.logprobs {
            let mut offset = self.offset;
            logprobs.extend(CompletionLogprobs::from_tokens(tokens, &mut offset));
        }
        self.offset = self.offset.saturating_add(u32::try_from(text.chars().count()).unwrap_or(u32::MAX));
        self.text.push_str(text);
    }
}

/// vLLM's `prompt_logprobs`: `null` for the first prompt token, then for each position the
/// prompt's token and the `top` most likely ones, by id: `{logprob, rank, decoded_token}`.
fn vllm_prompt_logprobs(pre: &Preprocessor, prompt: &[u32], scores: &[PromptLogprob], top: u32) -> Vec<Option<Value>> {
    let entry = |logprob: f32, rank: u32, id: u32| json!({"logprob": logprob_json(logprob), "rank": rank, "decoded_token": pre.token_text(id)});
    let mut out = Vec::with_capacity(prompt.len());
    out.push(None);
    for (score, &id) in scores.iter().zip(prompt.iter().skip(1)) {
        let mut position = Map::new();
        position.insert(id.to_string(), entry(score.logprob, score.rank, id));
        for (rank, &(alternative, logprob)) in score.top_logprobs.iter().take(top as usize).enumerate() {
            position.entry(alternative.to_string()).or_insert_with(|| entry(logprob, rank as u32 + 1, alternative));
        }
        out.push(Some(Value::Object(position)));
    }
    out
}

/// A log-probability as JSON: vLLM writes `-inf` for an impossible token, which JSON cannot
/// hold; OpenAI's convention is -9999.
fn logprob_json(logprob: f32) -> f64 {
    if logprob.is_finite() { f64::from(logprob) } else { -9999.0 }
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
    /// Characters of each choice's completion so far, for `text_offset`.
    offsets: Vec<u32>,
    include_usage: bool,
}

impl CompletionWriter {
    fn chunk(&mut self, index: u32, text: String, tokens: &[TokenInfo], finish: Option<FinishReason>) -> CompletionResponse {
        let mut unused = 0;
        let offset = self.offsets.get_mut(index as usize).unwrap_or(&mut unused);
        let logprobs = self.logprobs.then(|| CompletionLogprobs::from_tokens(tokens, offset));
        CompletionResponse {
            id: self.id.clone(),
            object: "text_completion",
            created: self.created,
            model: self.model.clone(),
            choices: vec![CompletionChoice {
                index,
                text,
                logprobs,
                finish_reason: finish.map(FinishReason::as_str),
                prompt_logprobs: None,
            }],
            usage: self.include_usage.then_some(None),
            nvext: None,
        }
    }
}

impl ChunkWriter for CompletionWriter {
    fn start(&mut self) -> Vec<Bytes> {
        std::mem::take(&mut self.annotations)
    }

    fn delta(&mut self, index: u32, text: String, tokens: &[TokenInfo], finish: Option<FinishReason>, out: &mut VecDeque<Bytes>) {
        out.push_back(sse::frame(&self.chunk(index, text, tokens, finish)));
    }

    fn end(&mut self, end: End, out: &mut VecDeque<Bytes>) {
        let nvext = super::nvext_fields(self.nvext.as_ref(), &end.meta);
        if self.include_usage || nvext.is_some() {
            let mut chunk = self.chunk(0, String::new(), &[], None);
            chunk.choices.clear();
            chunk.usage = self.include_usage.then_some(Some(UsageBody::from(end.usage)));
            chunk.nvext = nvext;
            out.push_back(sse::frame(&chunk));
        }
        out.push_back(sse::done());
    }
}
