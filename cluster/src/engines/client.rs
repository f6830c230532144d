//! [`EngineWorker`]: the router's client of one engine. A generation is one `Generate` call
//! with the prompt's token ids, read chunk by chunk into Tritium's token events; the engine's
//! end-of-sequence and stop tokens are held back until the engine says whether they ended the
//! sequence (they are no text). A reader that goes away cancels the call and sends `Abort`; a
//! stream that ends before its `complete` message is a lost worker, which the router migrates.
//! Each call is a hop of the request's trace, its `traceparent` in the call's metadata.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use tokio::sync::mpsc;
use tonic::transport::Channel;
use tritium_backend_api::llm::{
    Constraint, FinishReason, GenerateError, GenerateEvent, GenerateRequest, GeneratedToken, ModelKind, PromptLogprob,
    TokenStream,
};
use tritium_proto::engine::vllm_engine_client::VllmEngineClient;
use tritium_proto::engine::{
    AbortRequest, EmbedRequest, GenerateRequest as EngineRequest, SamplingParams, Tokens, generate_request, generate_response,
    sampling_params,
};
use tritium_trace::hop::Hop;
use tritium_worker::{InferOutcome, InferenceResponse, ValidInferRequest, WorkerClient, WorkerError};

use super::EngineTarget;

/// How long an engine may stay silent in the middle of a generation (queued behind others, or
/// computing a long prompt) before the call is given up.
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(300);

/// One engine serving one model.
pub struct EngineWorker {
    id: String,
    target: Arc<EngineTarget>,
    client: VllmEngineClient<Channel>,
    idle_timeout: Duration,
}

impl std::fmt::Debug for EngineWorker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EngineWorker").field("id", &self.id).field("url", &self.target.url).finish_non_exhaustive()
    }
}

impl EngineWorker {
    pub fn new(id: &str, target: Arc<EngineTarget>, channel: Channel, limits: &super::EngineLimits) -> EngineWorker {
        let client = VllmEngineClient::new(channel).max_decoding_message_size(limits.max_message);
        EngineWorker { id: id.to_string(), target, client, idle_timeout: limits.idle_timeout }
    }

    /// What the engine serves, as it described it.
    pub fn target(&self) -> &Arc<EngineTarget> {
        &self.target
    }

    /// Why [`generate`](WorkerClient::generate) would refuse `request` at once, if it would: the
    /// checks that need no call, for callers that must answer synchronously.
    pub fn check_generate(&self, model: &str, request: &GenerateRequest) -> Result<(), WorkerError> {
        self.check_model(model, ModelKind::Generate)?;
        self.sampling(model, request).map(|_| ())
    }

    fn check_model(&self, model: &str, kind: ModelKind) -> Result<(), WorkerError> {
        if model != self.target.name {
            return Err(WorkerError::ModelNotFound { name: model.to_string() });
        }
        match (self.target.card.kind, kind) {
            (have, want) if have == want => Ok(()),
            (_, ModelKind::Embed) => Err(WorkerError::NotEmbeddingModel { model: model.to_string() }),
            _ => Err(WorkerError::NotLanguageModel { model: model.to_string() }),
        }
    }

    fn refused(&self, model: &str, message: String) -> WorkerError {
        WorkerError::Generate { model: model.to_string(), source: GenerateError::InvalidRequest(message) }
    }

    /// A failed call as the router reads it: an engine that could not be reached (or said it is
    /// unavailable) may be retried on another; a refusal is the client's.
    fn call_failed(&self, model: &str, status: &tonic::Status) -> WorkerError {
        use tonic::Code;
        match status.code() {
            Code::Unavailable => WorkerError::Unreachable { worker: self.id.clone(), message: status.message().to_string() },
            Code::InvalidArgument | Code::OutOfRange | Code::FailedPrecondition => {
                self.refused(model, format!("the engine refused the request: {}", status.message()))
            }
            Code::ResourceExhausted => WorkerError::Generate {
                model: model.to_string(),
                source: GenerateError::Overloaded { model: model.to_string(), running: 0, waiting: 0, limit: 0 },
            },
            _ => WorkerError::Generate {
                model: model.to_string(),
                source: GenerateError::Engine { model: model.to_string(), message: status.message().to_string() },
            },
        }
    }

    /// The engine's sampling parameters for `request`, or why they cannot be sent.
    fn sampling(&self, model: &str, request: &GenerateRequest) -> Result<SamplingParams, WorkerError> {
        let room = self.target.card.room_after(request.prompt.len()).map_err(|message| self.refused(model, message))?;
        let room = u32::try_from(room).unwrap_or(u32::MAX);
        let max_tokens = request.stop.max_tokens.map_or(room, |asked| asked.min(room));
        let constraint = match &request.constraint {
            None => None,
            Some(Constraint::JsonObject) => Some(sampling_params::Constraint::JsonObject(true)),
            Some(Constraint::JsonSchema(schema)) => Some(sampling_params::Constraint::JsonSchema(schema.clone())),
            Some(Constraint::Regex(regex)) => Some(sampling_params::Constraint::Regex(regex.clone())),
            Some(Constraint::Choice(choices)) => {
                Some(sampling_params::Constraint::Choice(tritium_proto::engine::Choices { choices: choices.clone() }))
            }
            Some(Constraint::Lark(grammar)) => Some(sampling_params::Constraint::Grammar(grammar.clone())),
        };
        if request.adapter.is_some() {
            return Err(self.refused(model, "LoRA adapters are not served through engines reached over gRPC".into()));
        }
        let sampling = &request.sampling;
        let count = |n: u32| i32::try_from(n).unwrap_or(i32::MAX);
        Ok(SamplingParams {
            temperature: Some(sampling.temperature),
            top_p: sampling.top_p,
            top_k: u32::try_from(sampling.top_k).unwrap_or(u32::MAX),
            min_p: sampling.min_p,
            frequency_penalty: sampling.frequency_penalty,
            presence_penalty: sampling.presence_penalty,
            repetition_penalty: sampling.repetition_penalty,
            max_tokens: Some(max_tokens),
            min_tokens: request.stop.min_tokens,
            stop_token_ids: request.stop.stop_token_ids.clone(),
            skip_special_tokens: false,
            ignore_eos: request.stop.ignore_eos,
            n: 1,
            constraint,
            logprobs: request.logprobs.map(count),
            prompt_logprobs: request.prompt_logprobs.map(count),
            // The engine's seed is 31 bits wide: the low bits keep a seed repeatable.
            seed: sampling.seed.map(|seed| (seed & 0x7fff_ffff) as i32),
            logit_bias: sampling.logit_bias.iter().filter_map(|&(id, bias)| Some((i32::try_from(id).ok()?, bias))).collect(),
        })
    }
}

#[async_trait]
impl WorkerClient for EngineWorker {
    async fn infer(&self, request: ValidInferRequest) -> Result<InferenceResponse, WorkerError> {
        Err(self.tensor_refusal(&request))
    }

    async fn infer_stream(&self, request: ValidInferRequest) -> Result<InferOutcome, WorkerError> {
        Err(self.tensor_refusal(&request))
    }

    async fn generate(&self, model: &str, request: GenerateRequest) -> Result<TokenStream, WorkerError> {
        self.check_model(model, ModelKind::Generate)?;
        let sampling = self.sampling(model, &request)?;
        let max_tokens = sampling.max_tokens.unwrap_or(u32::MAX);
        let request_id = format!("tritium-{:032x}", rand::random::<u128>());
        let call = EngineRequest {
            request_id: request_id.clone(),
            input: Some(generate_request::Input::Tokenized(Tokens {
                original_text: String::new(),
                input_ids: request.prompt.clone(),
            })),
            sampling_params: Some(sampling),
            stream: true,
        };
        let mut client = self.client.clone();
        // Engines answer the call's headers with its first token: a client that goes away before
        // then drops this future, and the engine is told all the same.
        let mut guard = AbortOnDrop { client: Some(client.clone()), request_id: request_id.clone() };
        // The call is a hop of the request's trace: the engine gets its `traceparent`.
        let hop = Hop::start(None, &self.id);
        // The first token may wait behind a queue or a long prompt: the idle bound, not a unary call's.
        let stream = match tokio::time::timeout(self.idle_timeout, client.generate(hop.request(call))).await {
            Ok(Ok(response)) => response.into_inner(),
            Ok(Err(status)) => {
                // The engine ended the call itself: nothing to abort.
                guard.client = None;
                return Err(self.call_failed(model, &status));
            }
            Err(_) => {
                return Err(WorkerError::Unreachable {
                    worker: self.id.clone(),
                    message: format!("Generate was not answered within {} s", self.idle_timeout.as_secs()),
                });
            }
        };
        let mut stops = self.target.card.eos_token_ids.clone();
        stops.extend(&request.stop.stop_token_ids);
        let reading = Reading {
            worker: self.id.clone(),
            model: model.to_string(),
            prompt_tokens: u32::try_from(request.prompt.len()).unwrap_or(u32::MAX),
            max_tokens,
            stops: if request.stop.ignore_eos { request.stop.stop_token_ids.clone() } else { stops },
            min_tokens: request.stop.min_tokens,
            logprobs: request.logprobs.is_some(),
            idle_timeout: self.idle_timeout,
        };
        // From here on the reading task tells the engine.
        guard.client = None;
        let (sender, receiver) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            let _hop = hop;
            let outcome = tokio::select! {
                outcome = reading.read(stream, &sender) => outcome,
                // The client went away: the call is dropped (cancelling it) and the engine told.
                () = sender.closed() => Err(None),
            };
            match outcome {
                Ok(()) => {}
                Err(Some(error)) => {
                    let _ = sender.send(Err(error));
                    abort(client, request_id).await;
                }
                Err(None) => abort(client, request_id).await,
            }
        });
        Ok(TokenStream::new(receiver))
    }

    async fn embed(&self, model: &str, inputs: Vec<Vec<u32>>) -> Result<Vec<Vec<f32>>, WorkerError> {
        self.check_model(model, ModelKind::Embed)?;
        let mut embeddings = Vec::with_capacity(inputs.len());
        for input in inputs {
            let call = EmbedRequest {
                request_id: format!("tritium-{:032x}", rand::random::<u128>()),
                tokenized: Some(Tokens { original_text: String::new(), input_ids: input }),
            };
            let mut client = self.client.clone();
            let hop = Hop::start(None, &self.id);
            let response = match tokio::time::timeout(super::CALL_TIMEOUT, client.embed(hop.request(call))).await {
                Ok(Ok(response)) => response.into_inner(),
                Ok(Err(status)) => return Err(self.call_failed(model, &status)),
                Err(_) => {
                    return Err(WorkerError::Unreachable {
                        worker: self.id.clone(),
                        message: format!("Embed was not answered within {} s", super::CALL_TIMEOUT.as_secs()),
                    });
                }
            };
            embeddings.push(response.embedding);
        }
        Ok(embeddings)
    }
}

impl EngineWorker {
    fn tensor_refusal(&self, request: &ValidInferRequest) -> WorkerError {
        WorkerError::Failed {
            code: tritium_proto::ErrorCode::Unsupported,
            message: format!(
                "model '{}' is an engine reached over gRPC: send it the language-model inputs (text_input) or use the OpenAI routes",
                request.model_name()
            ),
        }
    }
}

/// Sends `Abort` for a call whose caller went away before the engine answered it.
struct AbortOnDrop {
    client: Option<VllmEngineClient<Channel>>,
    request_id: String,
}

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        if let Some(client) = self.client.take()
            && let Ok(runtime) = tokio::runtime::Handle::try_current()
        {
            runtime.spawn(abort(client, std::mem::take(&mut self.request_id)));
        }
    }
}

/// Tells the engine to stop a generation whose reader went away (best effort, bounded).
async fn abort(mut client: VllmEngineClient<Channel>, request_id: String) {
    let call = client.abort(AbortRequest { request_ids: vec![request_id.clone()] });
    match tokio::time::timeout(super::CALL_TIMEOUT, call).await {
        Ok(Ok(_)) => tracing::debug!(request = %request_id, "engine generation aborted"),
        Ok(Err(status)) => tracing::debug!(request = %request_id, "Abort failed: {}", status.message()),
        Err(_) => tracing::debug!(request = %request_id, "Abort was not answered"),
    }
}

type Events = mpsc::UnboundedSender<Result<GenerateEvent, GenerateError>>;

/// One generation's stream, read into Tritium's events.
struct Reading {
    worker: String,
    model: String,
    prompt_tokens: u32,
    max_tokens: u32,
    /// Tokens that end the sequence when generated (none withheld below `min_tokens`).
    stops: Vec<u32>,
    min_tokens: u32,
    logprobs: bool,
    idle_timeout: Duration,
}

impl Reading {
    fn lost(&self, message: impl Into<String>) -> GenerateError {
        GenerateError::WorkerLost { model: self.model.clone(), worker: self.worker.clone(), message: message.into() }
    }

    fn garbled(&self, message: impl Into<String>) -> GenerateError {
        GenerateError::Engine { model: self.model.clone(), message: message.into() }
    }

    /// Reads the stream to its `complete` message. `Err(None)`: the reader went away.
    async fn read(
        &self,
        mut stream: tonic::Streaming<tritium_proto::engine::GenerateResponse>,
        events: &Events,
    ) -> Result<(), Option<GenerateError>> {
        let mut received = 0u32;
        let mut cached: Option<u32> = None;
        let mut first = true;
        // A stop token, held until the engine says whether it ended the sequence.
        let mut held: Option<GeneratedToken> = None;
        let send = |event: GenerateEvent| events.send(Ok(event)).map_err(|_| None::<GenerateError>);
        loop {
            let message = match tokio::time::timeout(self.idle_timeout, stream.message()).await {
                Ok(Ok(Some(message))) => message,
                Ok(Ok(None)) => return Err(Some(self.lost("the engine ended the stream before completing the generation"))),
                Ok(Err(status)) if status.code() == tonic::Code::InvalidArgument => {
                    return Err(Some(GenerateError::InvalidRequest(format!(
                        "the engine refused the request: {}",
                        status.message()
                    ))));
                }
                Ok(Err(status)) => return Err(Some(self.lost(format!("the engine's stream failed: {}", status.message())))),
                Err(_) => {
                    return Err(Some(self.lost(format!("the engine sent nothing for {} s", self.idle_timeout.as_secs()))));
                }
            };
            match message.response {
                Some(generate_response::Response::Chunk(chunk)) => {
                    if chunk.index != 0 {
                        return Err(Some(self.garbled("the engine answered for a choice never asked for")));
                    }
                    if first {
                        cached = Some(chunk.cached_tokens);
                        if let Some(prompt) = chunk.input_logprobs.as_ref().filter(|p| !p.token_ids.is_empty()) {
                            send(GenerateEvent::PromptLogprobs(prompt_logprobs(prompt)))?;
                        }
                    }
                    received = received.saturating_add(u32::try_from(chunk.token_ids.len()).unwrap_or(u32::MAX));
                    if received > self.max_tokens.saturating_add(1) {
                        return Err(Some(self.garbled(format!(
                            "the engine sent {received} tokens where at most {} were asked for",
                            self.max_tokens
                        ))));
                    }
                    let logprobs = chunk.output_logprobs.unwrap_or_default();
                    for (i, &id) in chunk.token_ids.iter().enumerate() {
                        if let Some(token) = held.take() {
                            send(GenerateEvent::Token(token))?;
                        }
                        let token = GeneratedToken {
                            id,
                            logprob: logprobs.token_logprobs.get(i).copied(),
                            top_logprobs: logprobs
                                .top_logprobs
                                .get(i)
                                .map(|top| top.token_ids.iter().copied().zip(top.values.iter().copied()).collect())
                                .unwrap_or_default(),
                            prompt_cached: if first { cached } else { None },
                            prompt_pinned: None,
                            stop: false,
                        };
                        first = false;
                        let generated_before = received - (chunk.token_ids.len() - i) as u32;
                        if self.stops.contains(&id) && generated_before >= self.min_tokens {
                            held = Some(token);
                        } else {
                            send(GenerateEvent::Token(token))?;
                        }
                    }
                }
                Some(generate_response::Response::Complete(complete)) => {
                    let reason = match complete.finish_reason.as_str() {
                        "stop" => FinishReason::Stop,
                        "length" => FinishReason::Length,
                        "abort" => FinishReason::Cancelled,
                        "error" => return Err(Some(self.garbled("the engine failed the generation"))),
                        other => {
                            let other: String = other.chars().take(64).collect();
                            return Err(Some(self.garbled(format!("the engine ended with an unknown finish reason '{other}'"))));
                        }
                    };
                    if let Some(mut token) = held.take() {
                        // The held token ended the sequence: no text, sent only for its log-probability.
                        if reason == FinishReason::Stop {
                            if self.logprobs {
                                token.stop = true;
                                send(GenerateEvent::Token(token))?;
                            }
                        } else {
                            send(GenerateEvent::Token(token))?;
                        }
                    }
                    send(GenerateEvent::Finished {
                        reason,
                        prompt_tokens: if complete.prompt_tokens > 0 { complete.prompt_tokens } else { self.prompt_tokens },
                        // A streamed call's complete message counts only its own step's tokens.
                        completion_tokens: received,
                        cached_tokens: complete.cached_tokens.max(cached.unwrap_or(0)),
                        queued_for: Duration::ZERO,
                    })?;
                    return Ok(());
                }
                None => return Err(Some(self.garbled("the engine sent an empty message"))),
            }
        }
    }
}

/// The prompt's log-probabilities as the engine sends them (none for the first position).
fn prompt_logprobs(prompt: &tritium_proto::engine::PromptLogprobs) -> Vec<PromptLogprob> {
    let mut scored = Vec::new();
    for (i, &id) in prompt.token_ids.iter().enumerate() {
        let Some(logprob) = prompt.token_logprobs.get(i).and_then(|p| p.value) else { continue };
        let top: Vec<(u32, f32)> = prompt
            .top_logprobs
            .get(i)
            .map(|top| top.token_ids.iter().copied().zip(top.values.iter().copied()).collect())
            .unwrap_or_default();
        let rank = top
            .iter()
            .position(|&(top_id, _)| top_id == id)
            .map_or_else(|| 1 + top.iter().filter(|&&(_, value)| value > logprob).count() as u32, |at| at as u32 + 1);
        scored.push(PromptLogprob { logprob, rank, top_logprobs: top });
    }
    scored
}
