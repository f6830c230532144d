//! The `Worker` service a worker process serves: requests run through a [`LocalWorker`] over the
//! process's model repository. Every status produced here carries the origin marker, calls are
//! counted in [`InFlight`] until their last response, and a stream the client drops or cancels
//! drops the engine's stream with it, which cancels the work.

use std::pin::Pin;
use std::sync::Arc;
use std::time::Instant;

use futures::{Stream, StreamExt};
use tonic::metadata::MetadataValue;
use tonic::{Request, Response, Status};
use tritium_backend_api::llm::LanguageModel;
use tritium_proto::ErrorCode;
use tritium_proto::inference::{ModelInferRequest, ModelInferResponse};
use tritium_proto::worker::worker_server::{Worker, WorkerServer};
use tritium_proto::worker::{
    DescribeModelsRequest, DescribeModelsResponse, DescribedModel, EmbedRequest, EmbedResponse, Embedding, GenerateEvent,
    GenerateRequest, InferStreamResponse, KvTransfer, LoadAdapterRequest, LoadAdapterResponse, PrefillRequest,
    UnloadAdapterRequest, UnloadAdapterResponse,
};
use tritium_worker::{
    InferOutcome, InferenceResponse, LocalWorker, ModelRepository, StreamItem, ValidInferRequest, WorkerClient, WorkerError,
};

use super::convert::{event_to_proto, generate_request_from_proto, layout_from_proto, request_from_proto, response_to_proto};
use super::drain::{InFlight, InFlightGuard};
use super::kv_pull::{KvTransfers, TransferOptions, transfer_stream};
use super::{NOT_STARTED_KEY, ORIGIN_KEY, ORIGIN_WORKER, OUTCOME_KEY, OUTCOME_SINGLE, OUTCOME_STREAM, PREFILL_WORKER_KEY};
use tritium_worker::registry::{LoadAdapter, Refusal, check_names, load_into, unload_local};
use tritium_trace::generation::{self, GenerationTrace};
use tritium_trace::otlp_spans::SPAN_KIND_ATTRIBUTE;
use tritium_trace::{Tracer, door};

/// What a draining worker answers new calls with (UNAVAILABLE): the call never started, so the
/// frontend may send it to another worker.
pub const DRAINING_MESSAGE: &str = "worker is draining";

type Replies<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

/// A status of the worker's own, marked so the client can tell it from a transport failure.
fn worker_status(code: ErrorCode, message: impl Into<String>) -> Status {
    let mut status = code.status(message);
    status.metadata_mut().insert(ORIGIN_KEY, MetadataValue::from_static(ORIGIN_WORKER));
    status
}

fn from_worker(error: WorkerError) -> Status {
    worker_status(error.code(), error.to_string())
}

/// Serves a worker's models over `tritium.worker.v1.Worker`.
#[derive(Debug, Clone)]
pub struct WorkerService {
    repository: Arc<ModelRepository>,
    local: LocalWorker,
    in_flight: InFlight,
    transfers: Arc<KvTransfers>,
    /// The worker's own tracing: a request a frontend traced (its `traceparent` in the call's
    /// metadata) is traced here too, in the same trace.
    tracer: Arc<Tracer>,
    /// `--lora-dir`: where adapters loaded at run time must lie (`None`: no loading at run time).
    lora_dir: Option<Arc<std::path::Path>>,
}

/// The service over `repository`, ready to add to a tonic server, taking and sending messages up
/// to `max_message_size` bytes.
pub fn worker_service(repository: Arc<ModelRepository>, max_message_size: usize) -> WorkerServer<WorkerService> {
    WorkerService::new(repository).into_server(max_message_size)
}

impl WorkerService {
    pub fn new(repository: Arc<ModelRepository>) -> WorkerService {
        WorkerService {
            local: LocalWorker::new(Arc::clone(&repository)),
            repository,
            in_flight: InFlight::new(),
            transfers: Arc::new(KvTransfers::new(TransferOptions::default())),
            tracer: Arc::new(Tracer::default()),
            lora_dir: None,
        }
    }

    /// The same service loading LoRA adapters at run time from inside `dir` (`--lora-dir`).
    pub fn with_lora_dir(self, dir: Option<std::path::PathBuf>) -> WorkerService {
        WorkerService { lora_dir: dir.map(Arc::from), ..self }
    }

    /// The same service tracing with `tracer`.
    pub fn with_tracer(self, tracer: Arc<Tracer>) -> WorkerService {
        WorkerService { tracer, ..self }
    }

    /// The same service with these KV-transfer bounds and peer token (disaggregated serving).
    pub fn with_transfers(self, options: TransferOptions) -> WorkerService {
        WorkerService { transfers: Arc::new(KvTransfers::new(options)), ..self }
    }

    /// The language model a generation or prefill names.
    fn engine(&self, name: &str, version: Option<i64>) -> Result<Arc<dyn LanguageModel>, Status> {
        let version = match version {
            Some(v) if v < 0 => return Err(from_worker(WorkerError::InvalidVersion { version: v.to_string() })),
            version => version,
        };
        // An adapter runs on its base model's engine (the request names it: see `generate`).
        let model = self.repository.resolve_served(name, version).map_err(from_worker)?;
        let engine =
            model.language_model().ok_or_else(|| from_worker(WorkerError::NotLanguageModel { model: name.to_string() }))?;
        Ok(engine.clone())
    }

    /// Whether `name` is one of this worker's adapters rather than a model.
    fn is_adapter(&self, name: &str) -> bool {
        self.repository.adapter_base(name).is_some()
    }

    /// The counter and draining switch of this service's calls (shared, not a copy).
    pub fn in_flight(&self) -> InFlight {
        self.in_flight.clone()
    }

    pub fn into_server(self, max_message_size: usize) -> WorkerServer<WorkerService> {
        WorkerServer::new(self).max_decoding_message_size(max_message_size).max_encoding_message_size(max_message_size)
    }

    /// [`WorkerService::into_server`], refusing calls without the worker-plane `token` when set.
    pub fn into_server_with_token(
        self,
        max_message_size: usize,
        token: Option<&str>,
    ) -> tonic::service::interceptor::InterceptedService<WorkerServer<WorkerService>, super::auth::RequireToken> {
        tonic::service::interceptor::InterceptedService::new(
            self.into_server(max_message_size),
            super::auth::RequireToken::new(token),
        )
    }

    fn admit(&self) -> Result<InFlightGuard, Status> {
        self.in_flight.enter().ok_or_else(|| {
            let mut status = worker_status(ErrorCode::Unavailable, DRAINING_MESSAGE);
            status.metadata_mut().insert(NOT_STARTED_KEY, MetadataValue::from_static("draining"));
            status
        })
    }

    /// What a frontend sends, decoded and validated here again: the frontend checked it too, but
    /// the worker plane is a process boundary, and the check is one pass over the inputs.
    fn validate(&self, request: ModelInferRequest, metadata: &tonic::metadata::MetadataMap) -> Result<ValidInferRequest, Status> {
        let arrived = Instant::now();
        let mut request = request_from_proto(request, arrived).map_err(from_worker)?;
        if let Some(trace) = door::grpc_received(&self.tracer, &mut request, metadata.as_ref(), arrived) {
            trace.set_attribute(SPAN_KIND_ATTRIBUTE, "server");
        }
        self.repository.validate(request).map_err(from_worker)
    }

    fn encode(&self, response: InferenceResponse) -> Result<ModelInferResponse, Status> {
        response_to_proto(response).map_err(from_worker)
    }

    fn card_json(&self, version: &tritium_worker::ModelVersion) -> Result<Option<String>, Status> {
        let card = match (version.language_model(), version.embedding_model()) {
            (Some(model), _) => Arc::clone(model.card()),
            (None, Some(model)) => Arc::clone(model.card()),
            (None, None) => return Ok(None),
        };
        serde_json::to_string(card.as_ref()).map(Some).map_err(|e| {
            worker_status(ErrorCode::Internal, format!("the card of model '{}' does not serialize: {e}", version.name))
        })
    }
}

#[tonic::async_trait]
impl Worker for WorkerService {
    async fn infer(&self, request: Request<ModelInferRequest>) -> Result<Response<ModelInferResponse>, Status> {
        let _counted = self.admit()?;
        let (metadata, _, request) = request.into_parts();
        let request = self.validate(request, &metadata)?;
        let trace = request.request().trace.clone();
        let response = self.local.infer(request).await.map_err(from_worker)?;
        let _sent = door::Sending::grpc(trace);
        Ok(Response::new(self.encode(response)?))
    }

    type InferStreamStream = Replies<InferStreamResponse>;

    async fn infer_stream(&self, request: Request<ModelInferRequest>) -> Result<Response<Self::InferStreamStream>, Status> {
        let counted = self.admit()?;
        let (metadata, _, request) = request.into_parts();
        let request = self.validate(request, &metadata)?;
        let (replies, outcome): (Self::InferStreamStream, _) = match self.local.infer_stream(request).await {
            Err(e) => return Err(from_worker(e)),
            Ok(InferOutcome::Single(response)) => {
                let reply = self.encode(response).map(|r| InferStreamResponse { response: Some(r), r#final: true });
                let once = futures::stream::once(std::future::ready(reply)).map(move |reply| {
                    let _ = &counted;
                    reply
                });
                (Box::pin(once), OUTCOME_SINGLE)
            }
            Ok(InferOutcome::Stream(responses)) => {
                let service = self.clone();
                // Owning `responses` here means tonic dropping this stream (client gone or
                // cancelled) drops the ResponseStream, which cancels the request.
                let replies = futures::stream::unfold(Some((responses, counted)), move |state| {
                    let service = service.clone();
                    async move {
                        let (mut responses, counted) = state?;
                        match responses.next().await? {
                            StreamItem::Response(response) => {
                                let is_final = response.is_final;
                                let reply = service
                                    .encode(response)
                                    .map(|r| InferStreamResponse { response: Some(r), r#final: is_final });
                                let next = reply.is_ok().then_some((responses, counted));
                                Some((reply, next))
                            }
                            StreamItem::Error(e) => Some((Err(from_worker(e)), None)),
                            StreamItem::Complete => None,
                        }
                    }
                });
                (Box::pin(replies), OUTCOME_STREAM)
            }
        };
        let mut response = Response::new(replies);
        response.metadata_mut().insert(OUTCOME_KEY, MetadataValue::from_static(outcome));
        Ok(response)
    }

    type GenerateStream = Replies<GenerateEvent>;

    async fn generate(&self, request: Request<GenerateRequest>) -> Result<Response<Self::GenerateStream>, Status> {
        let counted = self.admit()?;
        let (metadata, _, mut request) = request.into_parts();
        let name = request.model.clone();
        let engine = self.engine(&name, request.version)?;
        let prefill = request.prefill.take();
        let mut request = generate_request_from_proto(request);
        if request.adapter.is_none() && self.is_adapter(&name) {
            request.adapter = Some(name.clone());
        }
        let trace = generation::start(&self.tracer, &name, &request, metadata.as_ref());
        let (tokens, prefilled_by) = match (prefill, engine.kv_layout()) {
            (Some(source), Some(layout)) => {
                // The pull is a hop of this generation's trace: the prefill worker's span joins it.
                let pull = self.transfers.pull(&source, request.model_version, &request.prompt, &layout);
                let pulled = tritium_backend_api::trace::scoped(trace.clone(), pull).await;
                (engine.generate_with_prefix(request, pulled.blocks), pulled.from)
            }
            _ => (engine.generate(request), None),
        };
        let tokens = tokens.map_err(|source| from_worker(WorkerError::Generate { model: name, source }))?;
        // The TokenStream lives inside this stream: when tonic drops it, the sequence is cancelled.
        if let (Some(trace), Some(from)) = (&trace, &prefilled_by) {
            trace.set_attribute("tritium.prefill_worker", from.to_string());
        }
        let mut generated = GenerationTrace::new(trace);
        let events = tokens.map(move |event| {
            let _ = &counted;
            generated.saw(&event);
            event.map(event_to_proto).map_err(|e| worker_status(e.code(), e.to_string()))
        });
        let mut response = Response::new(Box::pin(events) as Self::GenerateStream);
        if let Some(value) = prefilled_by.and_then(|id| MetadataValue::try_from(id).ok()) {
            response.metadata_mut().insert(PREFILL_WORKER_KEY, value);
        }
        Ok(response)
    }

    type PrefillStream = Replies<KvTransfer>;

    async fn prefill(&self, request: Request<PrefillRequest>) -> Result<Response<Self::PrefillStream>, Status> {
        let counted = self.admit()?;
        let (metadata, _, request) = request.into_parts();
        let traced = generation::start_call(&self.tracer, &request.model, "prefill", request.prompt.len(), metadata.as_ref());
        let engine = self.engine(&request.model, request.version)?;
        let Some(layout) = engine.kv_layout() else {
            return Err(worker_status(
                ErrorCode::InvalidArg,
                format!("model '{}' cannot prefill for another worker", request.model),
            ));
        };
        if let Some(mismatch) = request.layout.map(layout_from_proto).and_then(|theirs| layout.mismatch(&theirs)) {
            return Err(worker_status(
                ErrorCode::InvalidArg,
                format!("the caller's KV blocks do not fit this worker's: {mismatch}"),
            ));
        }
        let Some(slot) = self.transfers.prefill_slot() else {
            return Err(worker_status(
                ErrorCode::ResourceExhausted,
                format!("this worker is running its limit of {} prefills for other workers", self.transfers.max_prefills()),
            ));
        };
        let export = engine
            .export_prefix(request.prompt, request.first_block as usize)
            .map_err(|source| from_worker(WorkerError::Generate { model: request.model.clone(), source }))?;
        tracing::debug!(model = %request.model, blocks = ?export.range(), "prefilling for another worker");
        let messages = transfer_stream(export, slot).map(move |message| {
            let _ = (&counted, &traced);
            message.map_err(|e| {
                traced.failed(e.to_string());
                worker_status(e.code(), e.to_string())
            })
        });
        Ok(Response::new(Box::pin(messages)))
    }

    async fn embed(&self, request: Request<EmbedRequest>) -> Result<Response<EmbedResponse>, Status> {
        let _counted = self.admit()?;
        let (metadata, _, EmbedRequest { model, inputs }) = request.into_parts();
        let inputs: Vec<Vec<u32>> = inputs.into_iter().map(|input| input.ids).collect();
        let tokens = inputs.iter().map(Vec::len).sum();
        let traced = generation::start_call(&self.tracer, &model, "embeddings", tokens, metadata.as_ref());
        let vectors = self.local.embed(&model, inputs).await.map_err(|e| {
            traced.failed(e.to_string());
            from_worker(e)
        })?;
        let embeddings = vectors.into_iter().map(|values| Embedding { values }).collect();
        Ok(Response::new(EmbedResponse { embeddings }))
    }

    async fn describe_models(&self, _: Request<DescribeModelsRequest>) -> Result<Response<DescribeModelsResponse>, Status> {
        let mut models = Vec::new();
        for served in self.repository.local_models() {
            for version in served.versions.values() {
                models.push(DescribedModel {
                    name: served.name.clone(),
                    version: version.version,
                    config: Some(version.config.as_ref().clone()),
                    card_json: self.card_json(version)?,
                    output_labels: version
                        .schema
                        .outputs
                        .iter()
                        .filter_map(|spec| Some((spec.name.clone(), spec.labels.as_ref()?.text().to_vec())))
                        .collect(),
                    adapter_of: None,
                    adapter_path: None,
                    adapter_kv_seed: None,
                });
            }
        }
        for adapter in self.repository.local_adapters() {
            let mut config = adapter.base.config.as_ref().clone();
            config.name = adapter.name.clone();
            models.push(DescribedModel {
                name: adapter.name,
                version: adapter.base.version,
                config: Some(config),
                card_json: self.card_json(&adapter.base)?,
                output_labels: Default::default(),
                adapter_of: Some(adapter.base.name.to_string()),
                adapter_path: Some(adapter.path),
                adapter_kv_seed: Some(adapter.kv_seed),
            });
        }
        Ok(Response::new(DescribeModelsResponse { models }))
    }

    async fn load_adapter(&self, request: Request<LoadAdapterRequest>) -> Result<Response<LoadAdapterResponse>, Status> {
        let request = request.into_inner();
        let load = LoadAdapter {
            name: request.name,
            path: request.path,
            base: Some(request.base_model.clone()),
            inplace: request.load_inplace,
        };
        let models: Vec<String> = self.repository.local_models().iter().map(|m| m.name.clone()).collect();
        check_names(&load, &models).map_err(refusal_status)?;
        let engine =
            self.repository.resolve(&request.base_model, None).ok().and_then(|version| version.language_model()).ok_or_else(
                || worker_status(ErrorCode::NotFound, format!("The model `{}` does not exist.", request.base_model)),
            )?;
        load_into(&self.repository, engine, self.lora_dir.as_deref(), &load).await.map_err(refusal_status)?;
        Ok(Response::new(LoadAdapterResponse {}))
    }

    async fn unload_adapter(&self, request: Request<UnloadAdapterRequest>) -> Result<Response<UnloadAdapterResponse>, Status> {
        let found = unload_local(&self.repository, &request.into_inner().name).map_err(refusal_status)?;
        Ok(Response::new(UnloadAdapterResponse { found }))
    }
}

/// A refused adapter load or unload, as the worker's own status.
fn refusal_status(refusal: Refusal) -> Status {
    let code = match &refusal {
        Refusal::NotFound { .. } => ErrorCode::NotFound,
        Refusal::Invalid { .. } => ErrorCode::InvalidArg,
        Refusal::Unavailable(_) => ErrorCode::Unavailable,
    };
    worker_status(code, refusal.message())
}
