//! `inference.GRPCInferenceService`: a thin adapter from the 20 RPCs to the model registry, the
//! worker, shared memory and settings. Each handler decodes, calls the core, encodes; errors map
//! to status once, through [`ServerError`].

use std::sync::Arc;
use std::time::Instant;

use tonic::{Request, Response, Status, Streaming};
use tritium_proto::inference::grpc_inference_service_server::GrpcInferenceService;
use tritium_proto::inference::model_repository_parameter::ParameterChoice as RepoParam;
use tritium_proto::inference::system_shared_memory_status_response::RegionStatus;
use tritium_proto::inference::*;
use tritium_worker::{WorkerError, parse_version};

use super::convert::{decode_for_model, encode_response};
use super::{metadata, settings, stream};
use crate::error::ServerError;
use crate::state::ServerState;

/// Extensions of Triton's protocol this server really implements.
pub const EXTENSIONS: &[&str] = &[
    "classification",
    "sequence",
    "model_repository",
    "schedule_policy",
    "model_configuration",
    "system_shared_memory",
    "binary_tensor_data",
    "parameters",
    "statistics",
    "logging",
];

#[derive(Debug, Clone)]
pub struct InferenceService {
    state: Arc<ServerState>,
}

impl InferenceService {
    pub fn new(state: Arc<ServerState>) -> InferenceService {
        InferenceService { state }
    }
}

type RpcResult<T> = Result<Response<T>, Status>;

fn reply<T>(value: T) -> RpcResult<T> {
    Ok(Response::new(value))
}

fn cuda_unsupported() -> Status {
    ServerError::Unsupported { what: "CUDA shared memory is not supported by this server".to_string() }.into()
}

#[tonic::async_trait]
impl GrpcInferenceService for InferenceService {
    async fn server_live(&self, _: Request<ServerLiveRequest>) -> RpcResult<ServerLiveResponse> {
        reply(ServerLiveResponse { live: true })
    }

    async fn server_ready(&self, _: Request<ServerReadyRequest>) -> RpcResult<ServerReadyResponse> {
        reply(ServerReadyResponse { ready: self.state.repository.all_ready() })
    }

    async fn model_ready(&self, request: Request<ModelReadyRequest>) -> RpcResult<ModelReadyResponse> {
        let request = request.into_inner();
        let version = parse_version(&request.version).map_err(ServerError::from)?;
        reply(ModelReadyResponse { ready: self.state.repository.is_ready(&request.name, version) })
    }

    async fn server_metadata(&self, _: Request<ServerMetadataRequest>) -> RpcResult<ServerMetadataResponse> {
        reply(ServerMetadataResponse {
            name: "tritium".to_string(),
            version: env!("CARGO_PKG_VERSION").to_string(),
            extensions: EXTENSIONS.iter().map(|e| e.to_string()).collect(),
        })
    }

    async fn model_metadata(&self, request: Request<ModelMetadataRequest>) -> RpcResult<ModelMetadataResponse> {
        let request = request.into_inner();
        let version = parse_version(&request.version).map_err(ServerError::from)?;
        let resolved = self.state.repository.resolve(&request.name, version).map_err(ServerError::from)?;
        let model = self
            .state
            .repository
            .model(&request.name)
            .ok_or_else(|| ServerError::from(WorkerError::ModelNotFound { name: request.name.clone() }))?;
        reply(metadata::model_metadata(&model, &resolved, version.is_some()))
    }

    async fn model_infer(&self, request: Request<ModelInferRequest>) -> RpcResult<ModelInferResponse> {
        let arrived = Instant::now();
        let decoded = decode_for_model(request.into_inner(), &self.state.shm, &self.state.repository, arrived)?;
        // Off unless --log-verbose (or LogSettings) asks for it; a disabled level costs one check.
        tracing::debug!(model = %decoded.request.model_name, id = %decoded.request.id, "ModelInfer");
        let response = crate::dispatch::unary(&self.state, decoded.request).await?;
        reply(encode_response(response, &decoded.shm, &self.state.shm, None)?)
    }

    type ModelStreamInferStream = stream::StreamCall;

    async fn model_stream_infer(
        &self,
        request: Request<Streaming<ModelInferRequest>>,
    ) -> RpcResult<Self::ModelStreamInferStream> {
        let grpc_errors = stream::wants_grpc_errors(request.metadata());
        reply(stream::serve(Arc::clone(&self.state), request.into_inner(), grpc_errors))
    }

    async fn model_config(&self, request: Request<ModelConfigRequest>) -> RpcResult<ModelConfigResponse> {
        let request = request.into_inner();
        let version = parse_version(&request.version).map_err(ServerError::from)?;
        let resolved = self.state.repository.resolve(&request.name, version).map_err(ServerError::from)?;
        reply(ModelConfigResponse { config: Some(ModelConfig::clone(&resolved.config)) })
    }

    async fn model_statistics(&self, request: Request<ModelStatisticsRequest>) -> RpcResult<ModelStatisticsResponse> {
        let request = request.into_inner();
        let unavailable =
            |what: String| ServerError::InvalidArgument { reason: format!("requested model {what} is not available") };
        let version = parse_version(&request.version).map_err(ServerError::from)?;
        let models = if request.name.is_empty() {
            self.state.repository.served_models()
        } else {
            let model = self.state.repository.model(&request.name).ok_or_else(|| unavailable(format!("'{}'", request.name)))?;
            vec![model]
        };
        let mut model_stats = Vec::new();
        for model in models {
            match version {
                Some(v) => {
                    let found = model.versions.get(&v).ok_or_else(|| ServerError::InvalidArgument {
                        reason: format!("requested model version is not available for model '{}'", model.name),
                    })?;
                    model_stats.push(metadata::model_statistics(found));
                }
                None => model_stats.extend(model.versions.values().map(|v| metadata::model_statistics(v))),
            }
        }
        reply(ModelStatisticsResponse { model_stats })
    }

    async fn repository_index(&self, request: Request<RepositoryIndexRequest>) -> RpcResult<RepositoryIndexResponse> {
        let request = request.into_inner();
        let rows = self.state.repository.index(request.ready).map_err(ServerError::from)?;
        reply(RepositoryIndexResponse { models: rows.into_iter().map(metadata::index_entry).collect() })
    }

    async fn repository_model_load(
        &self,
        request: Request<RepositoryModelLoadRequest>,
    ) -> RpcResult<RepositoryModelLoadResponse> {
        let request = request.into_inner();
        let mut config_json = None;
        for (key, value) in request.parameters {
            match (key.as_str(), value.parameter_choice) {
                ("config", Some(RepoParam::StringParam(json))) => config_json = Some(json),
                ("config", _) => {
                    return Err(ServerError::InvalidArgument {
                        reason: "the 'config' load parameter must be a string_param holding JSON".into(),
                    }
                    .into());
                }
                (k, _) if k.starts_with("file:") => {
                    return Err(ServerError::Unsupported {
                        what: format!("load parameter '{k}': file overrides are not supported"),
                    }
                    .into());
                }
                // Unknown parameters are ignored, as Triton does.
                _ => {}
            }
        }
        let repository = Arc::clone(&self.state.repository);
        let name = request.model_name;
        let label = name.clone();
        let load = tokio::task::spawn_blocking(move || repository.load(&name, config_json.as_deref()));
        let timeout = self.state.load_timeout;
        tokio::time::timeout(timeout, load)
            .await
            .map_err(|_| ServerError::Unavailable {
                reason: format!(
                    "failed to load '{label}': the load did not finish within {} s (--model-load-timeout-secs); it goes on in the background",
                    timeout.as_secs()
                ),
            })?
            .map_err(|e| ServerError::Internal(format!("model load task failed: {e}")))?
            .map_err(ServerError::from)?;
        reply(RepositoryModelLoadResponse {})
    }

    async fn repository_model_unload(
        &self,
        request: Request<RepositoryModelUnloadRequest>,
    ) -> RpcResult<RepositoryModelUnloadResponse> {
        let request = request.into_inner();
        self.state.repository.unload(&request.model_name).map_err(ServerError::from)?;
        reply(RepositoryModelUnloadResponse {})
    }

    async fn system_shared_memory_status(
        &self,
        request: Request<SystemSharedMemoryStatusRequest>,
    ) -> RpcResult<SystemSharedMemoryStatusResponse> {
        let regions = self.state.shm.status(&request.into_inner().name).map_err(ServerError::from)?;
        reply(SystemSharedMemoryStatusResponse {
            regions: regions
                .into_iter()
                .map(|r| (r.name.clone(), RegionStatus { name: r.name, key: r.key, offset: r.offset, byte_size: r.byte_size }))
                .collect(),
        })
    }

    async fn system_shared_memory_register(
        &self,
        request: Request<SystemSharedMemoryRegisterRequest>,
    ) -> RpcResult<SystemSharedMemoryRegisterResponse> {
        let r = request.into_inner();
        self.state.shm.register(&r.name, &r.key, r.offset, r.byte_size).map_err(ServerError::from)?;
        reply(SystemSharedMemoryRegisterResponse {})
    }

    async fn system_shared_memory_unregister(
        &self,
        request: Request<SystemSharedMemoryUnregisterRequest>,
    ) -> RpcResult<SystemSharedMemoryUnregisterResponse> {
        self.state.shm.unregister(&request.into_inner().name).map_err(ServerError::from)?;
        reply(SystemSharedMemoryUnregisterResponse {})
    }

    async fn cuda_shared_memory_status(
        &self,
        _: Request<CudaSharedMemoryStatusRequest>,
    ) -> RpcResult<CudaSharedMemoryStatusResponse> {
        Err(cuda_unsupported())
    }

    async fn cuda_shared_memory_register(
        &self,
        _: Request<CudaSharedMemoryRegisterRequest>,
    ) -> RpcResult<CudaSharedMemoryRegisterResponse> {
        Err(cuda_unsupported())
    }

    async fn cuda_shared_memory_unregister(
        &self,
        _: Request<CudaSharedMemoryUnregisterRequest>,
    ) -> RpcResult<CudaSharedMemoryUnregisterResponse> {
        Err(cuda_unsupported())
    }

    async fn trace_setting(&self, request: Request<TraceSettingRequest>) -> RpcResult<TraceSettingResponse> {
        let request = request.into_inner();
        if !request.model_name.is_empty() && self.state.repository.model(&request.model_name).is_none() {
            return Err(ServerError::from(WorkerError::ModelNotFound { name: request.model_name }).into());
        }
        let mut trace = self.state.trace.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        reply(TraceSettingResponse { settings: trace.update(&request.model_name, request.settings)? })
    }

    async fn log_settings(&self, request: Request<LogSettingsRequest>) -> RpcResult<LogSettingsResponse> {
        let settings = settings::update_log_settings(&self.state.log, request.into_inner().settings)?;
        reply(LogSettingsResponse { settings })
    }
}
