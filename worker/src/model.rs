//! A loaded model version and how one request runs on it, with statistics recorded on the way.

use std::sync::Arc;
use std::time::Instant;

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tritium_proto::inference::ModelConfig;

use crate::backend::{Backend, BackendError, BackendRequest, Responder, StreamTarget, select_outputs};
use crate::error::WorkerError;
use crate::params::parse_request_options;
use crate::request::{InferenceRequest, InferenceResponse};
use crate::schema::ModelSchema;
use crate::stats::{ModelStats, PhaseTimes};
use crate::worker::{InferOutcome, ResponseStream, StreamItem};

/// Responses a decoupled request may have queued before its backend waits for the client.
const STREAM_BUFFER: usize = 16;

pub struct ModelVersion {
    pub name: Arc<str>,
    pub version: i64,
    pub config: Arc<ModelConfig>,
    pub schema: ModelSchema,
    pub stats: ModelStats,
    backend: Arc<dyn Backend>,
    /// Whether the backend is a language model, asked once: every request asks again.
    is_language_model: bool,
}

impl std::fmt::Debug for ModelVersion {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ModelVersion").field("name", &self.name).field("version", &self.version).finish()
    }
}

/// Timestamps of one request, turned into statistics once it has succeeded.
struct Timing {
    arrived: Instant,
    started: Instant,
    validated: Instant,
}

impl ModelVersion {
    pub fn new(config: Arc<ModelConfig>, version: i64, schema: ModelSchema, backend: Arc<dyn Backend>) -> ModelVersion {
        ModelVersion {
            name: Arc::from(config.name.as_str()),
            version,
            config,
            schema,
            stats: ModelStats::default(),
            is_language_model: backend.language_model().is_some(),
            backend,
        }
    }

    /// The engine behind this version when it is a language model.
    pub fn language_model(&self) -> Option<Arc<dyn crate::llm::LanguageModel>> {
        self.backend.language_model()
    }

    pub fn is_language_model(&self) -> bool {
        self.is_language_model
    }

    /// The embedder behind this version when it is an embedding model.
    pub fn embedding_model(&self) -> Option<Arc<dyn crate::llm::EmbeddingModel>> {
        self.backend.embedding_model()
    }

    pub fn decoupled(&self) -> bool {
        self.schema.decoupled
    }

    fn prepare(&self, request: &mut InferenceRequest) -> Result<Timing, WorkerError> {
        let started = Instant::now();
        self.schema.validate(request)?;
        parse_request_options(&self.name, &request.parameters).map_err(|reason| WorkerError::invalid(&request.id, reason))?;
        Ok(Timing { arrived: request.arrived, started, validated: Instant::now() })
    }

    fn batch_size(&self, request: &InferenceRequest) -> u64 {
        match request.inputs.first() {
            Some(input) if self.schema.batched() => input.shape.first().map_or(1, |&b| u64::try_from(b).unwrap_or(0)),
            _ => 1,
        }
    }

    fn record_success(&self, timing: &Timing, inferred: Instant, batch: u64) {
        let done = Instant::now();
        let phases = PhaseTimes {
            queue: timing.started.saturating_duration_since(timing.arrived),
            compute_input: timing.validated.saturating_duration_since(timing.started),
            compute_infer: inferred.saturating_duration_since(timing.validated),
            compute_output: done.saturating_duration_since(inferred),
        };
        self.stats.record_success(phases, batch);
    }

    fn backend_error(&self, source: BackendError) -> WorkerError {
        WorkerError::Backend { model: self.name.to_string(), version: self.version, source }
    }

    /// A unary call: plain models only (decoupled ones answer [`WorkerError::DecoupledUnary`]).
    pub async fn infer_unary(&self, request: InferenceRequest) -> Result<InferenceResponse, WorkerError> {
        if self.decoupled() {
            return Err(WorkerError::DecoupledUnary { model: request.model_name });
        }
        self.infer_single(request).await
    }

    /// A streaming call: plain models answer once, decoupled ones any number of times.
    pub async fn infer_any(self: &Arc<Self>, request: InferenceRequest) -> Result<InferOutcome, WorkerError> {
        if self.decoupled() {
            self.infer_decoupled(request).map(InferOutcome::Stream)
        } else {
            self.infer_single(request).await.map(InferOutcome::Single)
        }
    }

    /// Runs a request that gets exactly one response.
    pub async fn infer_single(&self, mut request: InferenceRequest) -> Result<InferenceResponse, WorkerError> {
        let timing = self.prepare(&mut request)?;
        let batch = self.batch_size(&request);
        let mut responder = Responder::single();
        let backend_request = BackendRequest {
            inputs: std::mem::take(&mut request.inputs),
            parameters: std::mem::take(&mut request.parameters),
            cancel: None,
        };
        let result = self.backend.execute(backend_request, &mut responder).await;
        let inferred = Instant::now();
        let outputs = result.and_then(|()| responder.take_single().ok_or(BackendError::NoResponse));
        let outputs = match outputs {
            Ok(outputs) => outputs,
            Err(e) => {
                self.stats.fail.record(timing.arrived.elapsed());
                return Err(self.backend_error(e));
            }
        };
        let response = InferenceResponse {
            model_name: Arc::clone(&self.name),
            model_version: self.version,
            id: request.id,
            outputs: select_outputs(outputs, &request.requested_outputs),
            is_final: true,
        };
        self.record_success(&timing, inferred, batch);
        Ok(response)
    }

    /// Runs a request of a decoupled model on its own task; its responses arrive on the stream,
    /// which ends with [`StreamItem::Complete`] or one [`StreamItem::Error`]. Dropping the stream
    /// cancels the request.
    pub fn infer_decoupled(self: &Arc<Self>, mut request: InferenceRequest) -> Result<ResponseStream, WorkerError> {
        let timing = self.prepare(&mut request)?;
        let batch = self.batch_size(&request);
        let (sender, receiver) = mpsc::channel(STREAM_BUFFER);
        let cancel = CancellationToken::new();
        let backend_request =
            BackendRequest { inputs: std::mem::take(&mut request.inputs), parameters: std::mem::take(&mut request.parameters), cancel: Some(cancel.clone()) };
        let mut responder = Responder::stream(StreamTarget {
            sender: sender.clone(),
            model_name: Arc::clone(&self.name),
            model_version: self.version,
            id: request.id,
            requested_outputs: request.requested_outputs,
        });
        let model = Arc::clone(self);
        tokio::spawn(async move {
            let result = model.backend.execute(backend_request, &mut responder).await;
            let inferred = Instant::now();
            let last = match result {
                Ok(()) => {
                    model.record_success(&timing, inferred, batch);
                    StreamItem::Complete
                }
                Err(BackendError::Cancelled) => return,
                Err(e) => {
                    model.stats.fail.record(timing.arrived.elapsed());
                    StreamItem::Error(model.backend_error(e))
                }
            };
            // The client may have gone; then nobody needs the ending.
            let _ = sender.send(last).await;
        });
        Ok(ResponseStream::new(receiver, cancel))
    }
}
