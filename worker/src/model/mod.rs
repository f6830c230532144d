//! A loaded model version and how one request runs on it, with statistics recorded on the way.

mod stamps;
#[cfg(test)]
mod tests;
mod valid;

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tritium_proto::ErrorCode;
use tritium_proto::inference::ModelConfig;

use crate::dynamic_batcher::Execution;
use crate::response_cache::{self, CacheKey, ResponseCache};
use crate::scheduler::Scheduler;
use crate::schema::ModelSchema;
use crate::stats::{FailureReason, ModelStats, PhaseTimes};
use tritium_backend_api::error::{RequestId, WorkerError};
use tritium_backend_api::first_response::{FirstResponseClock, FirstResponseHistogram};
use tritium_backend_api::llm::{EmbeddingModel, LanguageModel};
use tritium_backend_api::request::{InferenceRequest, InferenceResponse};
use tritium_backend_api::{Backend, BackendError, BackendRequest, Engine, OutputShapes, Responder, StreamTarget, select_outputs};
use tritium_backend_api::{InferOutcome, ResponseStream, StreamItem};
use tritium_tensor::Tensor;
use valid::Timing;
pub use valid::ValidInferRequest;

/// The platform name that marks an ensemble's config (defined here, below the ensembles, since a
/// version asks it too: an ensemble computes nothing itself); `crate::ensemble` re-exports it.
pub const ENSEMBLE_PLATFORM: &str = "ensemble";

/// What the schedulers run for `engine`: a tensor engine's backend, or, for an engine that takes
/// token ids, the refusal a KServe tensor request sent to it gets.
pub(crate) fn tensor_face(engine: &Engine, model: &str) -> Arc<dyn Backend> {
    let (kind, hint) = match engine {
        Engine::Tensors(backend) => return Arc::clone(backend),
        Engine::Language(_) => ("a language model", "send text_input through the frontend"),
        Engine::Embedding(_) => ("an embedding model", "use /v1/embeddings"),
    };
    Arc::new(TokenModel { message: format!("the model '{model}' is {kind}; {hint}") })
}

/// A language model's or an embedder's answer to tensors: they take token ids from the frontend.
struct TokenModel {
    message: String,
}

#[async_trait::async_trait]
impl Backend for TokenModel {
    async fn execute(&self, _: BackendRequest, _: &mut Responder) -> Result<(), BackendError> {
        Err(BackendError::failed(ErrorCode::Unsupported, self.message.clone()))
    }
}

/// Responses a decoupled request may have queued before its backend waits for the client.
const STREAM_BUFFER: usize = 16;

/// What the response cache had for a request: its answer, or its key and how long looking took.
enum Lookup {
    Hit(InferenceResponse),
    Miss(CacheKey, Duration),
}

/// Where a request's run failed: its scheduler refused it as it came, or its run failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stage {
    Admission,
    Run,
}

pub struct ModelVersion {
    pub name: Arc<str>,
    pub version: i64,
    pub config: Arc<ModelConfig>,
    pub schema: ModelSchema,
    pub stats: ModelStats,
    /// What its factory built; a language model's or an embedder's tensor requests meet
    /// [`tensor_face`]'s refusal.
    engine: Engine,
    backend: Arc<dyn Backend>,
    /// What runs its requests: each on its own, or the dynamic or sequence batcher.
    scheduler: Scheduler,
    /// The id of the registry that built it (0: none, a remote model's stand-in).
    pub(crate) owner: u64,
    /// Where its responses are cached, when its config enables the response cache.
    pub(crate) cache: Option<Arc<dyn ResponseCache>>,
    /// How the OpenAI door serves it as a text scorer or classifier (`openai_task`), if it does.
    pub text_task: Option<Arc<crate::text_task::TextTask>>,
}

impl AsRef<FirstResponseHistogram> for ModelVersion {
    fn as_ref(&self) -> &FirstResponseHistogram {
        &self.stats.first_response
    }
}

impl OutputShapes for ModelVersion {
    fn reshape(&self, outputs: &mut [Tensor]) {
        self.schema.reshape_outputs(outputs);
    }
}

impl std::fmt::Debug for ModelVersion {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ModelVersion").field("name", &self.name).field("version", &self.version).finish()
    }
}

impl ModelVersion {
    /// A version serving `config` with `engine`, each request its own backend call (a remote
    /// model's stand-in: its worker schedules).
    pub fn new(config: Arc<ModelConfig>, version: i64, schema: ModelSchema, engine: Engine) -> ModelVersion {
        let backend = tensor_face(&engine, &config.name);
        ModelVersion::scheduled(config, version, schema, engine, backend, Scheduler::Direct(Arc::default()), 0)
    }

    /// `backend` is `engine`'s [`tensor_face`], which `scheduler` runs.
    pub(crate) fn scheduled(
        config: Arc<ModelConfig>,
        version: i64,
        schema: ModelSchema,
        engine: Engine,
        backend: Arc<dyn Backend>,
        scheduler: Scheduler,
        owner: u64,
    ) -> ModelVersion {
        ModelVersion {
            name: Arc::from(config.name.as_str()),
            version,
            stats: ModelStats::new(u64::try_from(config.max_batch_size).unwrap_or(0)),
            config,
            schema,
            engine,
            scheduler,
            backend,
            owner,
            cache: None,
            text_task: None,
        }
    }

    /// Whether its responses are cached (its config enables the cache and the server has one).
    pub fn caches_responses(&self) -> bool {
        self.cache.is_some()
    }

    /// The engine behind this version when it is a language model.
    pub fn language_model(&self) -> Option<Arc<dyn LanguageModel>> {
        self.engine.language_model().cloned()
    }

    pub fn is_language_model(&self) -> bool {
        matches!(self.engine, Engine::Language(_))
    }

    /// The embedder behind this version when it is an embedding model.
    pub fn embedding_model(&self) -> Option<Arc<dyn EmbeddingModel>> {
        self.engine.embedding_model().cloned()
    }

    /// Whether the backend can take requests now (see [`Backend::is_ready`]).
    pub fn is_ready(&self) -> bool {
        self.backend.is_ready()
    }

    pub fn decoupled(&self) -> bool {
        self.schema.decoupled
    }

    /// `batched` is the time the request waited in the dynamic batcher's queue: queue time, as
    /// Triton counts it, not compute. `execution` is the batch this request carried, if any;
    /// without a batcher every request is its own execution.
    fn record_success(&self, timing: &Timing, inferred: Instant, batch: u64, execution: Option<Execution>, batched: Duration) {
        let done = Instant::now();
        let phases = PhaseTimes {
            queue: timing.started.saturating_duration_since(timing.arrived) + batched,
            compute_input: timing.validated.saturating_duration_since(timing.started),
            compute_infer: inferred.saturating_duration_since(timing.validated).saturating_sub(batched),
            compute_output: done.saturating_duration_since(inferred),
        };
        self.stats.record_success(phases, batch);
        self.record_execution(batch, execution, phases);
    }

    /// Counts the backend's execution of a request's batch (succeeded or not): `execution` on the
    /// request that carries its batch's, or the request's own without a batcher.
    fn record_execution(&self, batch: u64, execution: Option<Execution>, phases: PhaseTimes) {
        match execution {
            Some(e) => self.stats.record_execution(
                e.batch_size,
                PhaseTimes {
                    queue: Duration::ZERO,
                    compute_input: e.compute_input,
                    compute_infer: e.compute_infer,
                    compute_output: e.compute_output,
                },
            ),
            None if self.scheduler.is_direct() => self.stats.record_execution(batch, phases),
            None => {}
        }
    }

    /// Counts a request whose execution ended in `error`: a response the model answered with an
    /// error counts as a success (Triton counts a request that got its response), any other
    /// failure as a failure; either way the execution counts.
    fn record_executed_error(
        &self,
        timing: &Timing,
        inferred: Instant,
        batch: u64,
        execution: Option<Execution>,
        batched: Duration,
        error: &BackendError,
    ) {
        if matches!(error, BackendError::Answered { .. }) {
            return self.record_success(timing, inferred, batch, execution, batched);
        }
        self.record_failure(timing.arrived, error);
        let phases = PhaseTimes {
            compute_infer: inferred.saturating_duration_since(timing.validated).saturating_sub(batched),
            ..PhaseTimes::default()
        };
        self.record_execution(batch, execution, phases);
    }

    /// Counts the failure of a request that arrived at `arrived` with `source`'s reason.
    fn record_failure(&self, arrived: Instant, source: &BackendError) {
        let reason = match source {
            BackendError::QueueFull | BackendError::Refused { code: ErrorCode::Unavailable, .. } => FailureReason::Rejected,
            BackendError::Cancelled => FailureReason::Canceled,
            _ => FailureReason::Backend,
        };
        self.stats.record_failure(arrived.elapsed(), reason);
    }

    fn backend_error(&self, source: BackendError, request_id: &str) -> WorkerError {
        match source {
            BackendError::Refused { code, message } | BackendError::Answered { code, message } => {
                WorkerError::Failed { code, message }
            }
            BackendError::QueueFull => {
                WorkerError::Failed { code: ErrorCode::Unavailable, message: format!("{} {source}", RequestId(request_id)) }
            }
            source => WorkerError::Backend { model: self.name.to_string(), version: self.version, source },
        }
    }

    /// Validates and runs a unary call (see [`ModelVersion::run_unary`]).
    pub async fn infer_unary(self: &Arc<Self>, request: InferenceRequest) -> Result<InferenceResponse, WorkerError> {
        Self::run_unary(self.validate(request)?).await
    }

    /// Validates and runs a streaming call (see [`ModelVersion::run_any`]).
    pub async fn infer_any(self: &Arc<Self>, request: InferenceRequest) -> Result<InferOutcome, WorkerError> {
        Self::run_any(self.validate(request)?).await
    }

    /// A unary call on the version `request` was validated against: plain models only
    /// (decoupled ones answer [`WorkerError::DecoupledUnary`]).
    pub async fn run_unary(request: ValidInferRequest) -> Result<InferenceResponse, WorkerError> {
        if request.model().decoupled() {
            return Err(WorkerError::DecoupledUnary { model: request.model_name().to_string() });
        }
        Self::run_single(request).await
    }

    /// A streaming call: plain models answer once, decoupled ones any number of times.
    pub async fn run_any(request: ValidInferRequest) -> Result<InferOutcome, WorkerError> {
        if request.model().decoupled() {
            Self::run_decoupled(request).map(InferOutcome::Stream)
        } else {
            Self::run_single(request).await.map(InferOutcome::Single)
        }
    }

    /// The backend's view of a validated request: its inputs in the shapes the config gives.
    fn backend_request(&self, request: &mut InferenceRequest, cancel: Option<CancellationToken>) -> BackendRequest {
        let mut inputs = std::mem::take(&mut request.inputs);
        self.schema.reshape(&mut inputs);
        BackendRequest {
            inputs,
            parameters: std::mem::take(&mut request.parameters),
            cancel,
            id: request.id.clone(),
            requested_outputs: request.requested_outputs.clone(),
            trace: request.trace.clone(),
        }
    }

    /// As [`ModelVersion::run_any`], telling apart (as the outer error) a request its scheduler
    /// refused as it came (a sequence's rules, a full queue) from the errors of its run (the inner
    /// one: the backend's, a timeout in the queue), as Triton's business-logic scripting does.
    pub async fn run_any_split(request: ValidInferRequest) -> Result<Result<InferOutcome, WorkerError>, WorkerError> {
        if request.model().decoupled() {
            return Self::run_decoupled(request).map(|stream| Ok(InferOutcome::Stream(stream)));
        }
        match Self::run_single_split(request).await {
            Ok(response) => Ok(Ok(InferOutcome::Single(response))),
            Err((error, Stage::Admission)) => Err(error),
            Err((error, Stage::Run)) => Ok(Err(error)),
        }
    }

    /// Runs a request that gets exactly one response.
    async fn run_single(request: ValidInferRequest) -> Result<InferenceResponse, WorkerError> {
        Self::run_single_split(request).await.map_err(|(error, _)| error)
    }

    /// [`ModelVersion::run_single`], its error with the stage that failed.
    async fn run_single_split(request: ValidInferRequest) -> Result<InferenceResponse, (WorkerError, Stage)> {
        let batch = request.batch_size();
        let (model, mut request, timing, options) = request.into_parts();
        let trace = request.trace.clone();
        if let Some(trace) = &trace {
            stamps::queued(trace, model.version, &timing, &request.inputs);
        }
        let cached = match &model.cache {
            Some(cache) if response_cache::is_cacheable(&options) => match model.cache_lookup(cache, &request, &timing).await {
                Lookup::Hit(response) => {
                    if let Some(trace) = &trace {
                        trace.set_attribute("tritium.response_cache.hit", true);
                        stamps::answered(trace, &response.outputs);
                    }
                    return Ok(response);
                }
                Lookup::Miss(key, lookup) => Some((key, lookup)),
            },
            _ => None,
        };
        let pending = model.stats.pending();
        let backend_request = model.backend_request(&mut request, None);
        let rows = i64::try_from(batch).unwrap_or(i64::MAX);
        // An error without a share: refused before the backend ran it.
        let (outputs, execution, batched, ran) =
            match model.scheduler.run(model.backend.as_ref(), backend_request, rows, &options).await {
                Ok(share) => (share.outputs, share.execution, share.waited, true),
                Err(error) => (Err(error), None, Duration::ZERO, false),
            };
        let inferred = Instant::now();
        drop(pending);
        // An ensemble computes nothing itself: its steps' traces have the compute stamps.
        if let Some(trace) = &trace
            && ran
            && model.config.platform != ENSEMBLE_PLATFORM
        {
            stamps::computed(trace, &timing, batched, execution.as_ref(), inferred);
        }
        let mut outputs = match outputs {
            Ok(outputs) => outputs,
            Err(e) => {
                if let Some(trace) = &trace {
                    stamps::failed(trace);
                }
                let stage = if ran {
                    model.record_executed_error(&timing, inferred, batch, execution, batched, &e);
                    Stage::Run
                } else {
                    model.record_failure(timing.arrived, &e);
                    // A timeout in the queue is the request's answer after it waited, not a refusal.
                    if crate::dynamic_batcher::is_queue_timeout(&e) { Stage::Run } else { Stage::Admission }
                };
                return Err((model.backend_error(e, &request.id), stage));
            }
        };
        model.schema.reshape_outputs(&mut outputs);
        if let (Some(cache), Some((key, lookup))) = (&model.cache, cached) {
            let started = Instant::now();
            cache.insert(&key, &outputs).await;
            model.stats.record_cache_miss(lookup + started.elapsed());
        }
        let response = InferenceResponse {
            model_name: Arc::clone(&model.name),
            model_version: model.version,
            id: request.id,
            outputs: select_outputs(outputs, &request.requested_outputs),
            is_final: true,
            parameters: Vec::new(),
        };
        if let Some(trace) = &trace {
            stamps::answered(trace, &response.outputs);
        }
        model.record_success(&timing, inferred, batch, execution, batched);
        Ok(response)
    }

    /// Looks `request` up in `cache`, counting a hit in the statistics (a miss counts once its
    /// response is stored).
    async fn cache_lookup(&self, cache: &Arc<dyn ResponseCache>, request: &InferenceRequest, timing: &Timing) -> Lookup {
        let start = Instant::now();
        // No selection asks for every output: the same answer as naming them all (an ensemble's
        // step names them; a client often does not).
        let every: Vec<String>;
        let outputs = if request.requested_outputs.is_empty() {
            every = self.schema.outputs.iter().map(|o| o.name.clone()).collect();
            &every
        } else {
            &request.requested_outputs
        };
        let key = response_cache::request_key(&self.name, self.version, &request.inputs, &request.parameters, outputs);
        let found = cache.lookup(&key).await;
        let lookup = start.elapsed();
        let Some(outputs) = found else { return Lookup::Miss(key, lookup) };
        let response = InferenceResponse {
            model_name: Arc::clone(&self.name),
            model_version: self.version,
            id: request.id.clone(),
            outputs: select_outputs(outputs.to_vec(), &request.requested_outputs),
            is_final: true,
            parameters: Vec::new(),
        };
        let queue = timing.started.saturating_duration_since(timing.arrived) + start.saturating_duration_since(timing.validated);
        self.stats.record_cache_hit(timing.arrived.elapsed(), queue, lookup);
        Lookup::Hit(response)
    }

    /// Runs a request of a decoupled model on its own task; its responses arrive on the stream,
    /// which ends with [`StreamItem::Complete`] or one [`StreamItem::Error`]. Dropping the stream
    /// cancels the request.
    fn run_decoupled(request: ValidInferRequest) -> Result<ResponseStream, WorkerError> {
        let batch = request.batch_size();
        let (model, mut request, timing, options) = request.into_parts();
        let trace = request.trace.clone();
        if let Some(trace) = &trace {
            stamps::queued(trace, model.version, &timing, &request.inputs);
        }
        let (sender, receiver) = mpsc::channel(STREAM_BUFFER);
        let cancel = CancellationToken::new();
        let backend_request = model.backend_request(&mut request, Some(cancel.clone()));
        let responder = Responder::stream(StreamTarget {
            sender: sender.clone(),
            model_name: Arc::clone(&model.name),
            model_version: model.version,
            id: request.id,
            requested_outputs: request.requested_outputs,
            finished: false,
            first_response: FirstResponseClock::start(&model, timing.arrived),
            output_shapes: model.schema.reshapes_outputs().then(|| Arc::clone(&model) as Arc<dyn OutputShapes>),
        });
        let rows = i64::try_from(batch).unwrap_or(i64::MAX);
        let start = model.scheduler.start_stream(model.backend.as_ref(), backend_request, responder, rows, &options);
        tokio::spawn(async move {
            let pending = model.stats.pending();
            let end = Scheduler::stream_end(model.backend.as_ref(), start).await;
            drop(pending);
            let inferred = Instant::now();
            if let Some(trace) = &trace {
                stamps::computed(trace, &timing, end.waited, end.execution.as_ref(), inferred);
                match &end.result {
                    Ok(()) => stamps::answered(trace, &[]),
                    Err(_) => stamps::failed(trace),
                }
            }
            drop(trace);
            let mut responder = end.responder;
            let last = match end.result {
                Ok(()) => {
                    model.record_success(&timing, inferred, batch, end.execution, end.waited);
                    if responder.as_ref().is_some_and(Responder::sent_final) {
                        // The last response was marked final itself; the stream ends as it closes.
                        return;
                    }
                    StreamItem::Complete
                }
                Err(BackendError::Cancelled) => return,
                Err(e) => {
                    // An error that is the request's first response counts as one.
                    if let Some(clock) = responder.as_mut().and_then(Responder::unanswered_clock) {
                        clock.stop();
                    }
                    model.record_failure(timing.arrived, &e);
                    StreamItem::Error(model.backend_error(e, ""))
                }
            };
            // The client may have gone; then nobody needs the ending.
            let _ = sender.send(last).await;
        });
        Ok(ResponseStream::new(receiver, cancel))
    }
}
