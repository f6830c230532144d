//! KServe requests on a language model: `text_input` (and optional `streaming`) in, the
//! sampling options as request parameters; `text_output` and `finish_reason` out, always raw.
//! On ModelStreamInfer with `streaming` true every text delta is its own response and the last
//! one, carrying the finish reason, is marked final; otherwise one response holds it all.

use std::sync::Arc;
use std::time::Instant;

use futures::StreamExt;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tritium_backend_api::llm::FinishReason;
use tritium_openai_bridge::BridgeError;
use tritium_openai_bridge::kserve::{parse_infer_request, response_outputs};
use tritium_openai_bridge::pipeline::{ModelRef, TextEvent, TextStream, collect, generate_text};
use tritium_tensor::Tensor;
use tritium_worker::{InferOutcome, InferenceResponse, ModelVersion, ResponseStream, StreamItem, ValidInferRequest, WorkerError};

use super::LlmFrontend;
use crate::error::ServerError;

/// Responses of one streamed generation buffered ahead of a slow reader.
const STREAM_BUFFER: usize = 32;

/// Triton statistics of one request on a language model, recorded when it ends (perf_analyzer
/// reads them). `queue` runs from arrival to the generation's start (validation and
/// tokenization included), `compute_infer` from there to the last token; the engine's own queue
/// time is in the Prometheus metrics.
struct Statistics {
    version: Arc<ModelVersion>,
    arrived: Instant,
    started: Instant,
}

impl Statistics {
    fn record(&self, succeeded: bool) {
        let outcome = if succeeded { Ok(()) } else { Err(tritium_worker::FailureReason::Backend) };
        self.version.stats.record_request(self.arrived, self.started, outcome);
    }
}

/// Labels every response of one request carries.
#[derive(Clone)]
struct Label {
    model: Arc<str>,
    version: i64,
    id: String,
    requested_outputs: Vec<String>,
}

impl Label {
    /// A response carrying `text`; the last one (with `finish`) also carries the prompt tokens
    /// found in the prefix cache as the `cached_tokens` parameter.
    fn response(&self, text: &str, finish: Option<(FinishReason, u32)>) -> InferenceResponse {
        let parameters = match finish {
            Some((_, cached_tokens)) => vec![("cached_tokens".to_string(), i64::from(cached_tokens))],
            None => Vec::new(),
        };
        let finish = finish.map(|(reason, _)| reason);
        let mut outputs: Vec<Tensor> = response_outputs(text, finish);
        if !self.requested_outputs.is_empty() {
            outputs.retain(|o| self.requested_outputs.contains(&o.name));
        }
        InferenceResponse {
            model_name: Arc::clone(&self.model),
            model_version: self.version,
            id: self.id.clone(),
            outputs,
            is_final: finish.is_some(),
            parameters,
        }
    }
}

fn request_error(id: &str, error: BridgeError) -> ServerError {
    match error.code() {
        tritium_proto::ErrorCode::InvalidArg => ServerError::invalid(id, error.to_string()),
        _ => ServerError::Bridge(error),
    }
}

impl LlmFrontend {
    /// Runs a KServe request on a language model, on the version it was validated against.
    /// `stream_call` says whether it came on ModelStreamInfer, where `streaming` may ask for one
    /// response per delta.
    pub async fn infer_kserve(&self, request: ValidInferRequest, stream_call: bool) -> Result<InferOutcome, ServerError> {
        let version = Arc::clone(request.model());
        let request = request.into_request();
        let arrived = request.arrived;
        let failed = |e: ServerError| {
            version.stats.record_failure(arrived.elapsed(), tritium_worker::FailureReason::Other);
            e
        };
        let model = request.model_name.as_str();
        let mut parsed = parse_infer_request(model, &request.inputs, &request.parameters)
            .map_err(|e| failed(request_error(&request.id, e)))?;
        // A LoRA adapter named as the model was resolved to its base's version: run it there with
        // the adapter (and answer under the name asked for).
        if model != &*version.name {
            match &parsed.options.adapter {
                Some(other) if other != model => {
                    let reason = format!("'lora_name' names adapter '{other}', but the request is for adapter '{model}'");
                    return Err(failed(ServerError::invalid(&request.id, reason)));
                }
                _ => parsed.options.adapter = Some(model.to_string()),
            }
        }
        let engine = version
            .language_model()
            .ok_or_else(|| failed(ServerError::from(WorkerError::NotLanguageModel { model: model.to_string() })))?;
        let pre =
            self.preprocessor_for_card(model, Arc::clone(engine.card())).map_err(|e| failed(request_error(&request.id, e)))?;
        let mut observer = self.metrics.observer(model, "grpc").with_trace(request.trace.clone());
        let prompt = match pre.encode_off_runtime(parsed.prompt.clone(), true).await {
            Ok(prompt) => prompt,
            Err(e) => {
                observer.failed(&e);
                return Err(failed(request_error(&request.id, e)));
            }
        };
        // The worker the request names (`worker_id`, the router's `direct` mode).
        let worker = tritium_cluster::routing::hint_of(&request.parameters);
        let base = Arc::clone(&version.name);
        let target = ModelRef { name: &base, version: Some(version.version), worker: worker.as_deref(), session: None };
        if parsed.best_of > 1 {
            return self.infer_choices(&pre, target, &parsed, prompt, observer, version, &request).await;
        }
        let text = generate_text(self, &pre, target, &parsed.options, prompt, pre.card().default_completion_tokens, observer)
            .await
            .map_err(|e| failed(request_error(&request.id, e)))?;
        let statistics = Statistics { version: Arc::clone(&version), arrived, started: Instant::now() };
        let label = Label {
            model: Arc::from(model),
            version: version.version,
            id: request.id,
            requested_outputs: request.requested_outputs,
        };
        if stream_call && parsed.streaming {
            return Ok(InferOutcome::Stream(stream_deltas(label, text, statistics)));
        }
        let collected = collect(text).await;
        statistics.record(collected.is_ok());
        let generated = collected.map_err(|e| request_error(&label.id, e))?;
        let finish = (generated.reason, generated.usage.cached_tokens);
        Ok(InferOutcome::Single(label.response(&generated.text, Some(finish))))
    }
}

impl LlmFrontend {
    /// A KServe request for several whole choices (`n`, not streamed) or candidates (`best_of`,
    /// ranked by summed log-probability): one response whose `text_output` and `finish_reason`
    /// hold an element per choice.
    #[allow(clippy::too_many_arguments)]
    async fn infer_choices(
        &self,
        pre: &Arc<tritium_openai_bridge::preprocess::Preprocessor>,
        target: ModelRef<'_>,
        parsed: &tritium_openai_bridge::kserve::KserveLlmRequest,
        prompt: Vec<u32>,
        observer: tritium_openai_bridge::metrics::RequestObserver,
        version: Arc<tritium_worker::ModelVersion>,
        request: &tritium_worker::InferenceRequest,
    ) -> Result<InferOutcome, ServerError> {
        let statistics = Statistics { version: Arc::clone(&version), arrived: request.arrived, started: Instant::now() };
        let max = pre.limits().max_choices;
        let (n, candidates) =
            (usize::try_from(parsed.n).unwrap_or(usize::MAX), usize::try_from(parsed.best_of).unwrap_or(usize::MAX));
        let (field, count) = if candidates > n { ("best_of", parsed.best_of) } else { ("n", parsed.n) };
        if candidates > max {
            let error = BridgeError::field(field, format!("must be between 1 and {max}, got {count}"));
            statistics.record(false);
            return Err(request_error(&request.id, error));
        }
        let model = request.model_name.as_str();
        let observers =
            std::iter::once(observer).chain((1..candidates).map(|_| self.metrics().observer(model, "grpc"))).collect();
        // Ranking needs each candidate's log-probabilities, which the engine reports when asked.
        let mut options = parsed.options.clone();
        if candidates > n {
            options.logprobs = Some(options.logprobs.unwrap_or(0));
        }
        let generated = async {
            let streams = tritium_openai_bridge::choices::generate_choices(
                self,
                pre,
                target,
                &options,
                prompt,
                pre.card().default_completion_tokens,
                observers,
            )
            .await?;
            futures::future::try_join_all(streams.into_iter().map(collect)).await
        }
        .await;
        statistics.record(generated.is_ok());
        let generated = generated.map_err(|e| request_error(&request.id, e))?;
        let chosen = if candidates > n { tritium_openai_bridge::choices::best(&generated, n) } else { (0..n).collect() };
        let generated: Vec<_> = chosen.into_iter().map(|i| &generated[i]).collect();
        let texts: Vec<(&str, FinishReason)> = generated.iter().map(|g| (g.text.as_str(), g.reason)).collect();
        let mut outputs = tritium_openai_bridge::kserve::choices_outputs(&texts);
        if !request.requested_outputs.is_empty() {
            outputs.retain(|o| request.requested_outputs.contains(&o.name));
        }
        let cached = generated.first().map_or(0, |g| g.usage.cached_tokens);
        Ok(InferOutcome::Single(InferenceResponse {
            model_name: Arc::from(model),
            model_version: version.version,
            id: request.id.clone(),
            outputs,
            is_final: true,
            parameters: vec![("cached_tokens".to_string(), i64::from(cached))],
        }))
    }
}

/// One response per text delta on its own task; dropping the returned stream stops the task,
/// which drops the text stream and so cancels the sequence in the engine.
fn stream_deltas(label: Label, mut text: TextStream, statistics: Statistics) -> ResponseStream {
    let (sender, receiver) = mpsc::channel(STREAM_BUFFER);
    let cancel = CancellationToken::new();
    let stopped = cancel.clone();
    tokio::spawn(async move {
        loop {
            let event = tokio::select! {
                _ = stopped.cancelled() => return,
                event = text.next() => event,
            };
            let item = match event {
                Some(Ok(TextEvent::Delta { text, .. })) if text.is_empty() => continue,
                Some(Ok(TextEvent::Delta { text, .. })) => StreamItem::Response(label.response(&text, None)),
                Some(Ok(TextEvent::Finished { reason, usage, .. })) => {
                    statistics.record(true);
                    StreamItem::Response(label.response("", Some((reason, usage.cached_tokens))))
                }
                Some(Err(e)) => {
                    statistics.record(false);
                    StreamItem::Error(WorkerError::Failed { code: e.code(), message: e.to_string() })
                }
                None => return,
            };
            let last = !matches!(&item, StreamItem::Response(r) if !r.is_final);
            if sender.send(item).await.is_err() || last {
                return;
            }
        }
    });
    ResponseStream::new(receiver, cancel)
}
