//! `inference.GRPCInferenceService`: a thin adapter from the 20 RPCs to the model registry, the
//! worker, shared memory and settings. Each handler decodes, calls the core, encodes; errors map
//! to status once, through [`crate::error::ServerError`]. A call whose API key is held to a list
//! of models ([`KeyScope`], put in the call's extensions by the transport) is refused
//! `PERMISSION_DENIED` for any other model, and for the calls that reach every model.

use std::sync::Arc;
use std::time::Instant;

use tonic::{Request, Response, Status, Streaming};
use tritium_proto::inference::grpc_inference_service_server::GrpcInferenceService;
use tritium_proto::inference::*;

use super::convert::{decode_for_model, encode_response};
use super::stream;
use crate::admin;
use crate::api_keys::KeyScope;
use crate::state::ServerState;

#[derive(Debug, Clone)]
pub struct InferenceService {
    state: Arc<ServerState>,
}

impl InferenceService {
    pub fn new(state: Arc<ServerState>) -> InferenceService {
        InferenceService { state }
    }

    /// ModelInfer, until the server's hard stop.
    async fn infer(&self, request: Request<ModelInferRequest>) -> RpcResult<ModelInferResponse> {
        let arrived = Instant::now();
        allowed(&request, &request.get_ref().model_name)?;
        let (metadata, extensions, request) = request.into_parts();
        let _in_use = crate::dispatch::load_on_demand(&self.state, &request.model_name).await?;
        let mut decoded = decode_for_model(request, &self.state.shm, &self.state.repository, None, arrived)?;
        // Off unless --log-verbose (or LogSettings) asks for it; a disabled level costs one check.
        tracing::debug!(model = %decoded.request.model_name, id = %decoded.request.id, "ModelInfer");
        let trace = tritium_trace::door::grpc_received(&self.state.tracer, &mut decoded.request, metadata.as_ref(), arrived);
        if let Some(trace) = &trace {
            trace.name_api_key(extensions.get());
        }
        let response = crate::dispatch::unary(&self.state, decoded.request, decoded.model.take()).await?;
        let _sent = tritium_trace::door::Sending::grpc(trace);
        reply(encode_response(response, &decoded.shm, &self.state.shm, None)?)
    }
}

type RpcResult<T> = Result<Response<T>, Status>;

/// `Ok` unless the call's API key is held to models that `model` is not one of.
fn allowed<T>(request: &Request<T>, model: &str) -> Result<(), Status> {
    crate::api_keys::check_model(request.extensions().get::<KeyScope>(), model).map_err(Status::permission_denied)
}

/// `Ok` unless the call's API key is held to a list of models: `what` reaches them all.
fn unscoped<T>(request: &Request<T>, what: &str) -> Result<(), Status> {
    match request.extensions().get::<KeyScope>() {
        Some(scope) if scope.is_limited() => Err(Status::permission_denied(scope.needs_a_model(what))),
        _ => Ok(()),
    }
}

/// [`allowed`] for a named model, [`unscoped`] when `model` is empty (every model).
fn allowed_or_unscoped<T>(request: &Request<T>, model: &str, what: &str) -> Result<(), Status> {
    if model.is_empty() { unscoped(request, what) } else { allowed(request, model) }
}

fn reply<T>(value: T) -> RpcResult<T> {
    Ok(Response::new(value))
}

#[tonic::async_trait]
impl GrpcInferenceService for InferenceService {
    async fn server_live(&self, _: Request<ServerLiveRequest>) -> RpcResult<ServerLiveResponse> {
        reply(ServerLiveResponse { live: true })
    }

    async fn server_ready(&self, _: Request<ServerReadyRequest>) -> RpcResult<ServerReadyResponse> {
        reply(ServerReadyResponse { ready: self.state.is_ready() })
    }

    async fn model_ready(&self, request: Request<ModelReadyRequest>) -> RpcResult<ModelReadyResponse> {
        allowed(&request, &request.get_ref().name)?;
        reply(ModelReadyResponse { ready: admin::model_ready(&self.state, request.into_inner()).await? })
    }

    async fn server_metadata(&self, _: Request<ServerMetadataRequest>) -> RpcResult<ServerMetadataResponse> {
        reply(admin::server_metadata(&self.state))
    }

    async fn model_metadata(&self, request: Request<ModelMetadataRequest>) -> RpcResult<ModelMetadataResponse> {
        allowed(&request, &request.get_ref().name)?;
        reply(admin::model_metadata(&self.state, request.into_inner()).await?)
    }

    async fn model_infer(&self, request: Request<ModelInferRequest>) -> RpcResult<ModelInferResponse> {
        // A token of the call's own: polling it takes no lock every call shares.
        let hard_stop = self.state.hard_stop.child_token();
        tokio::select! {
            reply = self.infer(request) => reply,
            () = hard_stop.cancelled() => Err(stream::shutting_down()),
        }
    }

    type ModelStreamInferStream = stream::StreamCall;

    async fn model_stream_infer(
        &self,
        request: Request<Streaming<ModelInferRequest>>,
    ) -> RpcResult<Self::ModelStreamInferStream> {
        let grpc_errors = stream::wants_grpc_errors(request.metadata());
        let caller = tritium_trace::caller(request.metadata().as_ref());
        let scope = request.extensions().get::<KeyScope>().cloned();
        reply(stream::serve(Arc::clone(&self.state), request.into_inner(), grpc_errors, caller, scope))
    }

    async fn model_config(&self, request: Request<ModelConfigRequest>) -> RpcResult<ModelConfigResponse> {
        allowed(&request, &request.get_ref().name)?;
        reply(ModelConfigResponse { config: Some(admin::model_config(&self.state, request.into_inner()).await?) })
    }

    async fn model_statistics(&self, request: Request<ModelStatisticsRequest>) -> RpcResult<ModelStatisticsResponse> {
        allowed_or_unscoped(&request, &request.get_ref().name, "ModelStatistics of every model")?;
        reply(admin::model_statistics(&self.state, request.into_inner())?)
    }

    async fn repository_index(&self, request: Request<RepositoryIndexRequest>) -> RpcResult<RepositoryIndexResponse> {
        unscoped(&request, "RepositoryIndex")?;
        reply(admin::repository_index(&self.state, request.into_inner())?)
    }

    async fn repository_model_load(
        &self,
        request: Request<RepositoryModelLoadRequest>,
    ) -> RpcResult<RepositoryModelLoadResponse> {
        allowed(&request, &request.get_ref().model_name)?;
        admin::load_model(&self.state, request.into_inner()).await?;
        reply(RepositoryModelLoadResponse {})
    }

    async fn repository_model_unload(
        &self,
        request: Request<RepositoryModelUnloadRequest>,
    ) -> RpcResult<RepositoryModelUnloadResponse> {
        allowed(&request, &request.get_ref().model_name)?;
        admin::unload_model(&self.state, request.into_inner())?;
        reply(RepositoryModelUnloadResponse {})
    }

    async fn system_shared_memory_status(
        &self,
        request: Request<SystemSharedMemoryStatusRequest>,
    ) -> RpcResult<SystemSharedMemoryStatusResponse> {
        reply(admin::shm_status(&self.state, &request.into_inner().name)?)
    }

    async fn system_shared_memory_register(
        &self,
        request: Request<SystemSharedMemoryRegisterRequest>,
    ) -> RpcResult<SystemSharedMemoryRegisterResponse> {
        admin::shm_register(&self.state, request.into_inner())?;
        reply(SystemSharedMemoryRegisterResponse {})
    }

    async fn system_shared_memory_unregister(
        &self,
        request: Request<SystemSharedMemoryUnregisterRequest>,
    ) -> RpcResult<SystemSharedMemoryUnregisterResponse> {
        admin::shm_unregister(&self.state, &request.into_inner().name)?;
        reply(SystemSharedMemoryUnregisterResponse {})
    }

    async fn cuda_shared_memory_status(
        &self,
        request: Request<CudaSharedMemoryStatusRequest>,
    ) -> RpcResult<CudaSharedMemoryStatusResponse> {
        reply(admin::cuda_shm_status(&request.into_inner().name)?)
    }

    async fn cuda_shared_memory_register(
        &self,
        _: Request<CudaSharedMemoryRegisterRequest>,
    ) -> RpcResult<CudaSharedMemoryRegisterResponse> {
        admin::cuda_shm_register()?;
        reply(CudaSharedMemoryRegisterResponse {})
    }

    async fn cuda_shared_memory_unregister(
        &self,
        _: Request<CudaSharedMemoryUnregisterRequest>,
    ) -> RpcResult<CudaSharedMemoryUnregisterResponse> {
        reply(CudaSharedMemoryUnregisterResponse {})
    }

    async fn trace_setting(&self, request: Request<TraceSettingRequest>) -> RpcResult<TraceSettingResponse> {
        allowed_or_unscoped(&request, &request.get_ref().model_name, "the server-wide TraceSetting")?;
        reply(admin::trace_setting(&self.state, request.into_inner())?)
    }

    async fn log_settings(&self, request: Request<LogSettingsRequest>) -> RpcResult<LogSettingsResponse> {
        unscoped(&request, "LogSettings")?;
        reply(admin::log_settings(&self.state, request.into_inner())?)
    }
}
