//! The KServe RPCs other than inference, once, for both doors: health, metadata, config,
//! statistics, the repository, system shared memory, trace and log settings. The gRPC service
//! hands each its decoded message and encodes the answer; the HTTP routes build the same message
//! from the URL and JSON and render the answer as Triton's HTTP server does. Errors are
//! [`ServerError`]s, mapped to a status by each door.

use std::sync::Arc;

use tritium_proto::inference::model_repository_parameter::ParameterChoice as RepoParam;
use tritium_proto::inference::system_shared_memory_status_response::RegionStatus;
use tritium_proto::inference::*;
use tritium_worker::{FileOverride, WorkerError, parse_version};

use crate::error::ServerError;
use crate::state::ServerState;
use crate::{metadata, settings};

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
    "trace",
    "logging",
];

pub fn server_metadata(state: &ServerState) -> ServerMetadataResponse {
    ServerMetadataResponse {
        name: state.server_name.clone(),
        version: env!("CARGO_PKG_VERSION").to_string(),
        extensions: EXTENSIONS.iter().map(|e| e.to_string()).collect(),
    }
}

/// In on-demand mode a model's readiness, metadata and config load it first, as its inference
/// does (a Triton client asks for them before it infers); a model that fails to load is not ready.
/// A LoRA adapter answers as its base model does, under its own name.
pub async fn model_ready(state: &ServerState, request: ModelReadyRequest) -> Result<bool, ServerError> {
    let version = parse_version(&request.version)?;
    let name = served_name(state, &request.name);
    let Ok(_in_use) = crate::dispatch::load_on_demand(state, &name).await else { return Ok(false) };
    Ok(state.repository.is_ready(&name, version))
}

pub async fn model_metadata(state: &ServerState, request: ModelMetadataRequest) -> Result<ModelMetadataResponse, ServerError> {
    let version = parse_version(&request.version)?;
    let name = served_name(state, &request.name);
    let _in_use = crate::dispatch::load_on_demand(state, &name).await?;
    let resolved = state.repository.resolve(&name, version)?;
    let model = state.repository.model(&name).ok_or(WorkerError::ModelNotFound { name: request.name.clone() })?;
    Ok(ModelMetadataResponse { name: request.name, ..metadata::model_metadata(&model, &resolved, version.is_some()) })
}

pub async fn model_config(state: &ServerState, request: ModelConfigRequest) -> Result<ModelConfig, ServerError> {
    let version = parse_version(&request.version)?;
    let name = served_name(state, &request.name);
    let _in_use = crate::dispatch::load_on_demand(state, &name).await?;
    let config = &state.repository.resolve(&name, version)?.config;
    Ok(ModelConfig { name: request.name, ..ModelConfig::clone(config) })
}

/// The model that answers for `name`: itself, or the base model of the LoRA adapter it names.
fn served_name(state: &ServerState, name: &str) -> String {
    state.repository.adapter_base(name).unwrap_or_else(|| name.to_string())
}

pub fn model_statistics(state: &ServerState, request: ModelStatisticsRequest) -> Result<ModelStatisticsResponse, ServerError> {
    let unavailable = |what: String| ServerError::InvalidArgument { reason: format!("requested model {what} is not available") };
    let version = parse_version(&request.version)?;
    let models = if request.name.is_empty() {
        state.repository.served_models()
    } else {
        vec![state.repository.model(&request.name).ok_or_else(|| unavailable(format!("'{}'", request.name)))?]
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
    Ok(ModelStatisticsResponse { model_stats })
}

/// Triton serves no repository by name: a request naming one is refused, before anything else.
pub const REPOSITORY_NAME_UNSUPPORTED: &str = "'repository_name' specification is not supported";

fn no_repository_name(repository_name: &str) -> Result<(), ServerError> {
    if repository_name.is_empty() {
        return Ok(());
    }
    Err(ServerError::Unsupported { what: REPOSITORY_NAME_UNSUPPORTED.to_string() })
}

pub fn repository_index(state: &ServerState, request: RepositoryIndexRequest) -> Result<RepositoryIndexResponse, ServerError> {
    no_repository_name(&request.repository_name)?;
    let rows = state.repository.index(request.ready)?;
    Ok(RepositoryIndexResponse { models: rows.into_iter().map(metadata::index_entry).collect() })
}

/// Loads a model, with the `config` override its parameters may hold; waits at most the load
/// timeout, after which the load goes on in the background.
pub async fn load_model(state: &ServerState, request: RepositoryModelLoadRequest) -> Result<(), ServerError> {
    no_repository_name(&request.repository_name)?;
    let mut config_json = None;
    let mut files = Vec::new();
    for (key, value) in request.parameters {
        match (key.as_str(), value.parameter_choice) {
            ("config", Some(RepoParam::StringParam(json))) => config_json = Some(json),
            ("config", _) => {
                return Err(ServerError::InvalidArgument {
                    reason: "the 'config' load parameter must be a string_param holding JSON".into(),
                });
            }
            (k, Some(RepoParam::BytesParam(content))) if k.starts_with("file:") => {
                files.push(FileOverride { path: k["file:".len()..].to_string(), content: content.into() });
            }
            (k, _) if k.starts_with("file:") => {
                return Err(ServerError::InvalidArgument { reason: format!("load parameter '{k}' must be a bytes_param") });
            }
            // Unknown parameters are ignored, as Triton does.
            _ => {}
        }
    }
    let repository = Arc::clone(&state.repository);
    let name = request.model_name;
    let label = name.clone();
    let load = tokio::task::spawn_blocking(move || repository.load_files(&name, config_json.as_deref(), &files));
    let timeout = state.load_timeout;
    tokio::time::timeout(timeout, load)
        .await
        .map_err(|_| ServerError::Unavailable {
            reason: format!(
                "failed to load '{label}': the load did not finish within {} s (--model-load-timeout-secs); it goes on in the background",
                timeout.as_secs()
            ),
        })?
        .map_err(|e| ServerError::Internal(format!("model load task failed: {e}")))??;
    Ok(())
}

pub fn unload_model(state: &ServerState, request: RepositoryModelUnloadRequest) -> Result<(), ServerError> {
    no_repository_name(&request.repository_name)?;
    Ok(state.repository.unload(&request.model_name)?)
}

/// CUDA shared memory on a server without a GPU, as Triton 2.51 answers on a machine without
/// one: nothing is ever registered, so the status lists no region (a named one is not found),
/// unregistering is a no-op, and a registration fails.
pub fn cuda_shm_status(name: &str) -> Result<CudaSharedMemoryStatusResponse, ServerError> {
    if name.is_empty() {
        return Ok(CudaSharedMemoryStatusResponse::default());
    }
    Err(ServerError::NotFound { reason: format!("Unable to find cuda shared memory region: '{name}'") })
}

/// See [`cuda_shm_status`]; Triton's words for a registration it cannot make.
pub const CUDA_SHM_REGISTER_FAILED: &str = "failed to register shared memory region: invalid args";

pub fn cuda_shm_register() -> Result<(), ServerError> {
    Err(ServerError::InvalidArgument { reason: CUDA_SHM_REGISTER_FAILED.to_string() })
}

/// The registered regions (all of them for an empty name), by name.
pub fn shm_status(state: &ServerState, name: &str) -> Result<SystemSharedMemoryStatusResponse, ServerError> {
    let regions = state.shm.status(name)?;
    let regions = regions
        .into_iter()
        .map(|r| (r.name.clone(), RegionStatus { name: r.name, key: r.key, offset: r.offset, byte_size: r.byte_size }))
        .collect();
    Ok(SystemSharedMemoryStatusResponse { regions })
}

pub fn shm_register(state: &ServerState, request: SystemSharedMemoryRegisterRequest) -> Result<(), ServerError> {
    Ok(state.shm.register(&request.name, &request.key, request.offset, request.byte_size)?)
}

pub fn shm_unregister(state: &ServerState, name: &str) -> Result<(), ServerError> {
    Ok(state.shm.unregister(name)?)
}

pub fn trace_setting(state: &ServerState, request: TraceSettingRequest) -> Result<TraceSettingResponse, ServerError> {
    if !request.model_name.is_empty() && state.repository.model(&request.model_name).is_none() {
        // Triton's words and status, over gRPC as over HTTP.
        return Err(ServerError::InvalidArgument { reason: format!("Request for unknown model : {}", request.model_name) });
    }
    Ok(TraceSettingResponse { settings: state.tracer.update(&request.model_name, request.settings)? })
}

pub fn log_settings(state: &ServerState, request: LogSettingsRequest) -> Result<LogSettingsResponse, ServerError> {
    Ok(LogSettingsResponse { settings: settings::update_log_settings(&state.log, request.settings)? })
}

#[cfg(test)]
mod tests {
    use tritium_proto::ErrorCode;

    use super::*;

    #[test]
    fn a_named_repository_is_refused_as_triton_refuses_it() {
        assert!(no_repository_name("").is_ok());
        let error = no_repository_name("myrepo").expect_err("refused");
        assert_eq!(error.code(), ErrorCode::Unsupported);
        assert_eq!(error.to_string(), "'repository_name' specification is not supported");
    }
}
