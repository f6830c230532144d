//! The KServe REST routes other than inference: health, metadata, config, statistics, the
//! repository, shared memory, trace and log settings. Each calls the gRPC handler of the same
//! RPC (so both ports share one behaviour and one wording) and renders its answer as Triton's
//! HTTP server does.

use std::collections::HashMap;

use axum::body::Body;
use axum::extract::rejection::PathRejection;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use serde_json::{Map, Value};
use tonic::Request;
use tritium_proto::inference::grpc_inference_service_server::GrpcInferenceService;
use tritium_proto::inference::log_settings_request::SettingValue as LogValue;
use tritium_proto::inference::log_settings_request::setting_value::ParameterChoice as LogChoice;
use tritium_proto::inference::log_settings_response::setting_value::ParameterChoice as LogOut;
use tritium_proto::inference::model_repository_parameter::ParameterChoice as RepoChoice;
use tritium_proto::inference::trace_setting_request::SettingValue as TraceValue;
use tritium_proto::inference::*;

use super::reply::{self, HttpError, HttpResult};
use super::{KserveState, ModelPath, body, model_path};

/// A JSON request body, or `Null` when there is none.
async fn json_body(state: &KserveState, headers: &HeaderMap, body: Body) -> Result<Value, HttpError> {
    let body = body::read_request(body, headers, state.max_body_bytes, &state.budget).await?;
    if body.bytes.iter().all(u8::is_ascii_whitespace) {
        return Ok(Value::Null);
    }
    serde_json::from_slice(&body.bytes)
        .map_err(|e| HttpError::bad_request(format!("failed to parse the request JSON buffer: {e}")))
}

fn json_object(value: Value, what: &str) -> Result<Map<String, Value>, HttpError> {
    match value {
        Value::Null => Ok(Map::new()),
        Value::Object(map) => Ok(map),
        _ => Err(HttpError::bad_request(format!("{what} must be a JSON object"))),
    }
}

pub(super) async fn server_metadata(State(state): State<KserveState>) -> HttpResult {
    let metadata = state.service.server_metadata(Request::new(ServerMetadataRequest {})).await?.into_inner();
    Ok(reply::json(&reply::message_json(&metadata, "inference.ServerMetadataResponse")?))
}

pub(super) async fn live() -> HttpResult {
    Ok(reply::empty())
}

pub(super) async fn ready(State(state): State<KserveState>) -> HttpResult {
    if state.grpc.repository.all_ready() { Ok(reply::empty()) } else { Err(HttpError::bad_request("Server not ready")) }
}

pub(super) async fn model_ready(State(state): State<KserveState>, path: Result<Path<ModelPath>, PathRejection>) -> HttpResult {
    let path = model_path(path)?;
    let version = path.version();
    let request = ModelReadyRequest { name: path.model, version };
    let ready = state.service.model_ready(Request::new(request)).await?.into_inner().ready;
    if ready { Ok(reply::empty()) } else { Err(HttpError::bad_request("Model not ready")) }
}

pub(super) async fn model_metadata(State(state): State<KserveState>, path: Result<Path<ModelPath>, PathRejection>) -> HttpResult {
    let path = model_path(path)?;
    let version = path.version();
    let request = ModelMetadataRequest { name: path.model, version };
    let metadata = state.service.model_metadata(Request::new(request)).await?.into_inner();
    Ok(reply::json(&reply::message_json(&metadata, "inference.ModelMetadataResponse")?))
}

pub(super) async fn model_config(State(state): State<KserveState>, path: Result<Path<ModelPath>, PathRejection>) -> HttpResult {
    let path = model_path(path)?;
    let version = path.version();
    let request = ModelConfigRequest { name: path.model, version };
    let config = state.service.model_config(Request::new(request)).await?.into_inner().config.unwrap_or_default();
    let json = tritium_worker::repository::config_to_json(&config)
        .map_err(|e| HttpError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
    Ok(reply::json(&json))
}

async fn statistics(state: &KserveState, name: String, version: String) -> HttpResult {
    let stats = state.service.model_statistics(Request::new(ModelStatisticsRequest { name, version })).await?.into_inner();
    Ok(reply::json(&reply::message_json(&stats, "inference.ModelStatisticsResponse")?))
}

pub(super) async fn model_statistics(
    State(state): State<KserveState>,
    path: Result<Path<ModelPath>, PathRejection>,
) -> HttpResult {
    let path = model_path(path)?;
    let version = path.version();
    statistics(&state, path.model, version).await
}

pub(super) async fn statistics_all(State(state): State<KserveState>) -> HttpResult {
    statistics(&state, String::new(), String::new()).await
}

pub(super) async fn repository_index(State(state): State<KserveState>, headers: HeaderMap, body: Body) -> HttpResult {
    let options = json_object(json_body(&state, &headers, body).await?, "the index request")?;
    let ready = match options.get("ready") {
        None => false,
        Some(Value::Bool(b)) => *b,
        Some(_) => return Err(HttpError::bad_request("the index request's 'ready' must be a boolean")),
    };
    let request = RepositoryIndexRequest { repository_name: String::new(), ready };
    let index = state.service.repository_index(Request::new(request)).await?.into_inner();
    let models = index
        .models
        .into_iter()
        .map(|m| {
            let mut row = Map::new();
            row.insert("name".into(), Value::from(m.name));
            for (key, value) in [("version", m.version), ("state", m.state), ("reason", m.reason)] {
                if !value.is_empty() {
                    row.insert(key.into(), Value::from(value));
                }
            }
            Value::Object(row)
        })
        .collect();
    Ok(reply::json(&Value::Array(models)))
}

pub(super) async fn load(
    State(state): State<KserveState>,
    Path(model): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> HttpResult {
    let options = json_object(json_body(&state, &headers, body).await?, "the load request")?;
    let mut parameters = HashMap::new();
    if let Some(params) = options.get("parameters") {
        let Value::Object(params) = params else {
            return Err(HttpError::bad_request("the load request's 'parameters' must be a JSON object"));
        };
        for (key, value) in params {
            let choice = match value {
                Value::String(s) => RepoChoice::StringParam(s.clone()),
                Value::Bool(b) => RepoChoice::BoolParam(*b),
                Value::Number(n) => match n.as_i64() {
                    Some(i) => RepoChoice::Int64Param(i),
                    None => return Err(HttpError::bad_request(format!("load parameter '{key}' must be an integer"))),
                },
                // Triton takes a config given as a JSON object as well as one in a string.
                Value::Object(_) if key == "config" => RepoChoice::StringParam(value.to_string()),
                _ => return Err(HttpError::bad_request(format!("load parameter '{key}' has an unsupported type"))),
            };
            parameters.insert(key.clone(), ModelRepositoryParameter { parameter_choice: Some(choice) });
        }
    }
    let request = RepositoryModelLoadRequest { repository_name: String::new(), model_name: model, parameters };
    state.service.repository_model_load(Request::new(request)).await?;
    Ok(reply::empty())
}

pub(super) async fn unload(
    State(state): State<KserveState>,
    Path(model): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> HttpResult {
    json_object(json_body(&state, &headers, body).await?, "the unload request")?;
    let request = RepositoryModelUnloadRequest { repository_name: String::new(), model_name: model, parameters: HashMap::new() };
    state.service.repository_model_unload(Request::new(request)).await?;
    Ok(reply::empty())
}

async fn shm_status_of(state: &KserveState, name: String) -> HttpResult {
    let status = state.service.system_shared_memory_status(Request::new(SystemSharedMemoryStatusRequest { name })).await?;
    let mut regions: Vec<_> = status.into_inner().regions.into_values().collect();
    regions.sort_by(|a, b| a.name.cmp(&b.name));
    let rows = regions
        .into_iter()
        .map(|r| serde_json::json!({"name": r.name, "key": r.key, "offset": r.offset, "byte_size": r.byte_size}))
        .collect();
    Ok(reply::json(&Value::Array(rows)))
}

pub(super) async fn shm_status_all(State(state): State<KserveState>) -> HttpResult {
    shm_status_of(&state, String::new()).await
}

pub(super) async fn shm_status(State(state): State<KserveState>, Path(region): Path<String>) -> HttpResult {
    shm_status_of(&state, region).await
}

pub(super) async fn shm_register(
    State(state): State<KserveState>,
    Path(region): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> HttpResult {
    let options = json_object(json_body(&state, &headers, body).await?, "the register request")?;
    let key = match options.get("key") {
        Some(Value::String(key)) => key.clone(),
        _ => return Err(HttpError::bad_request("Shared memory register request has no 'key' string")),
    };
    let number = |field: &str, required: bool| match options.get(field) {
        None if !required => Ok(0),
        Some(value) => value.as_u64().ok_or_else(|| HttpError::bad_request(format!("'{field}' must be a non-negative integer"))),
        None => Err(HttpError::bad_request(format!("Shared memory register request has no '{field}'"))),
    };
    let request = SystemSharedMemoryRegisterRequest {
        name: region,
        key,
        offset: number("offset", false)?,
        byte_size: number("byte_size", true)?,
    };
    state.service.system_shared_memory_register(Request::new(request)).await?;
    Ok(reply::empty())
}

pub(super) async fn shm_unregister(State(state): State<KserveState>, Path(region): Path<String>) -> HttpResult {
    state.service.system_shared_memory_unregister(Request::new(SystemSharedMemoryUnregisterRequest { name: region })).await?;
    Ok(reply::empty())
}

pub(super) async fn shm_unregister_all(State(state): State<KserveState>) -> HttpResult {
    state
        .service
        .system_shared_memory_unregister(Request::new(SystemSharedMemoryUnregisterRequest { name: String::new() }))
        .await?;
    Ok(reply::empty())
}

pub(super) async fn cuda_shm(State(state): State<KserveState>) -> HttpResult {
    state.service.cuda_shared_memory_status(Request::new(CudaSharedMemoryStatusRequest { name: String::new() })).await?;
    Ok(reply::empty())
}

async fn trace(state: &KserveState, model_name: String, update: Value) -> HttpResult {
    let mut settings = HashMap::new();
    for (key, value) in json_object(update, "the trace setting request")? {
        let values = match value {
            Value::Null => Vec::new(),
            Value::String(s) => vec![s],
            Value::Array(items) => items
                .into_iter()
                .map(|item| match item {
                    Value::String(s) => Ok(s),
                    _ => Err(HttpError::bad_request(format!("trace setting '{key}' must hold strings"))),
                })
                .collect::<Result<_, _>>()?,
            _ => {
                return Err(HttpError::bad_request(format!("trace setting '{key}' must be a string, a list of strings or null")));
            }
        };
        settings.insert(key, TraceValue { value: values });
    }
    let answer = state.service.trace_setting(Request::new(TraceSettingRequest { settings, model_name })).await?.into_inner();
    let rendered: Map<String, Value> = answer
        .settings
        .into_iter()
        .map(|(key, value)| {
            let rendered = if key == "trace_level" {
                Value::from(value.value)
            } else {
                Value::from(value.value.into_iter().next().unwrap_or_default())
            };
            (key, rendered)
        })
        .collect();
    Ok(reply::json(&Value::Object(rendered)))
}

pub(super) async fn trace_get(State(state): State<KserveState>) -> HttpResult {
    trace(&state, String::new(), Value::Null).await
}

pub(super) async fn trace_update(State(state): State<KserveState>, headers: HeaderMap, body: Body) -> HttpResult {
    let update = json_body(&state, &headers, body).await?;
    trace(&state, String::new(), update).await
}

pub(super) async fn model_trace_get(
    State(state): State<KserveState>,
    path: Result<Path<ModelPath>, PathRejection>,
) -> HttpResult {
    trace(&state, model_path(path)?.model, Value::Null).await
}

pub(super) async fn model_trace_update(
    State(state): State<KserveState>,
    path: Result<Path<ModelPath>, PathRejection>,
    headers: HeaderMap,
    body: Body,
) -> HttpResult {
    let model = model_path(path)?.model;
    let update = json_body(&state, &headers, body).await?;
    trace(&state, model, update).await
}

async fn logging(state: &KserveState, update: Value) -> HttpResult {
    let mut settings = HashMap::new();
    for (key, value) in json_object(update, "the log setting request")? {
        let choice = match value {
            Value::Bool(b) => LogChoice::BoolParam(b),
            Value::String(s) => LogChoice::StringParam(s),
            Value::Number(n) => match n.as_u64().and_then(|n| u32::try_from(n).ok()) {
                Some(level) => LogChoice::Uint32Param(level),
                None => return Err(HttpError::bad_request(format!("log setting '{key}' must be a non-negative integer"))),
            },
            _ => return Err(HttpError::bad_request(format!("log setting '{key}' must be a boolean, a number or a string"))),
        };
        settings.insert(key, LogValue { parameter_choice: Some(choice) });
    }
    let answer = state.service.log_settings(Request::new(LogSettingsRequest { settings })).await?.into_inner();
    let rendered: Map<String, Value> = answer
        .settings
        .into_iter()
        .filter_map(|(key, value)| {
            let rendered = match value.parameter_choice? {
                LogOut::BoolParam(b) => Value::from(b),
                LogOut::Uint32Param(n) => Value::from(n),
                LogOut::StringParam(s) => Value::from(s),
            };
            Some((key, rendered))
        })
        .collect();
    Ok(reply::json(&Value::Object(rendered)))
}

pub(super) async fn logging_get(State(state): State<KserveState>) -> HttpResult {
    logging(&state, Value::Null).await
}

pub(super) async fn logging_update(State(state): State<KserveState>, headers: HeaderMap, body: Body) -> HttpResult {
    let update = json_body(&state, &headers, body).await?;
    logging(&state, update).await
}
