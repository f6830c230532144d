//! The KServe REST routes other than inference: health, metadata, config, statistics, the
//! repository, shared memory, trace and log settings. Each calls the core function the gRPC
//! handler of the same RPC calls ([`crate::admin`], so both ports share one behaviour and one
//! wording) and renders its answer as Triton's HTTP server does.

use std::collections::HashMap;

use axum::body::Body;
use axum::extract::rejection::PathRejection;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use serde_json::{Map, Value};
use tritium_proto::inference::model_repository_parameter::ParameterChoice as RepoChoice;
use tritium_proto::inference::*;

use super::reply::{self, HttpError, HttpResult};
use super::{KserveState, ModelPath, body, model_path};
use crate::admin;

/// A JSON request body; an empty one is `Null` where `optional` (Triton's index, load and
/// unload take none), else the JSON reader's error.
pub(super) async fn json_body(state: &KserveState, headers: &HeaderMap, body: Body, optional: bool) -> Result<Value, HttpError> {
    let body = body::read_request(body, headers, state.max_body_bytes, &state.budget).await?;
    if optional && body.bytes.is_empty() {
        return Ok(Value::Null);
    }
    serde_json::from_slice(&body.bytes).map_err(|e| HttpError::bad_json(&body.bytes, &e))
}

/// The members of a JSON object (none for `Null`).
pub(super) fn json_object(value: Value) -> Result<Map<String, Value>, HttpError> {
    match value {
        Value::Null => Ok(Map::new()),
        Value::Object(map) => Ok(map),
        _ => Err(HttpError::unparsable("attempt to get members for non-object")),
    }
}

pub(super) async fn server_metadata(State(state): State<KserveState>) -> HttpResult {
    let metadata = admin::server_metadata(&state.server);
    Ok(reply::json(&reply::message_json(&metadata, "inference.ServerMetadataResponse")?))
}

pub(super) async fn live() -> HttpResult {
    Ok(reply::empty_plain())
}

pub(super) async fn ready(State(state): State<KserveState>) -> HttpResult {
    if state.server.is_ready() { Ok(reply::empty_plain()) } else { Err(HttpError::bad_request("Server not ready").plain()) }
}

pub(super) async fn model_ready(State(state): State<KserveState>, path: Result<Path<ModelPath>, PathRejection>) -> HttpResult {
    let path = model_path(path)?;
    let version = path.version();
    let request = ModelReadyRequest { name: path.model, version };
    let ready = admin::model_ready(&state.server, request).await?;
    if ready { Ok(reply::empty_plain()) } else { Err(HttpError::bad_request("Model version not ready").plain()) }
}

pub(super) async fn model_metadata(State(state): State<KserveState>, path: Result<Path<ModelPath>, PathRejection>) -> HttpResult {
    let path = model_path(path)?;
    let version = path.version();
    let request = ModelMetadataRequest { name: path.model, version };
    let metadata = admin::model_metadata(&state.server, request).await?;
    Ok(reply::json(&reply::message_json(&metadata, "inference.ModelMetadataResponse")?))
}

pub(super) async fn model_config(State(state): State<KserveState>, path: Result<Path<ModelPath>, PathRejection>) -> HttpResult {
    let path = model_path(path)?;
    let version = path.version();
    let request = ModelConfigRequest { name: path.model, version };
    let config = admin::model_config(&state.server, request).await?;
    let json = tritium_repository::config_to_json(&config)
        .map_err(|e| HttpError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
    Ok(reply::json(&json))
}

async fn statistics(state: &KserveState, name: String, version: String) -> HttpResult {
    let stats = admin::model_statistics(&state.server, ModelStatisticsRequest { name, version })?;
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
    let options = json_object(json_body(&state, &headers, body, true).await?)?;
    let ready = match options.get("ready") {
        None => false,
        Some(Value::Bool(b)) => *b,
        Some(_) => return Err(HttpError::wrong_kind(None, "boolean")),
    };
    let request = RepositoryIndexRequest { repository_name: String::new(), ready };
    let index = admin::repository_index(&state.server, request)?;
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
    let options = json_object(json_body(&state, &headers, body, true).await?)?;
    let mut parameters = HashMap::new();
    if let Some(params) = options.get("parameters") {
        let Value::Object(params) = params else { return Err(HttpError::unparsable("attempt to get members for non-object")) };
        for (key, value) in params {
            let choice = match value {
                Value::String(s) if key.starts_with("file:") => RepoChoice::BytesParam(decode_file(key, s)?),
                Value::String(s) => RepoChoice::StringParam(s.clone()),
                _ if key == "config" || key.starts_with("file:") => return Err(HttpError::wrong_kind(None, "string")),
                Value::Bool(b) => RepoChoice::BoolParam(*b),
                Value::Number(n) => match n.as_i64() {
                    Some(i) => RepoChoice::Int64Param(i),
                    None => return Err(HttpError::wrong_kind(None, "signed-integer")),
                },
                _ => return Err(HttpError::bad_request(format!("load parameter '{key}' has an unsupported type"))),
            };
            parameters.insert(key.clone(), ModelRepositoryParameter { parameter_choice: Some(choice) });
        }
    }
    let request = RepositoryModelLoadRequest { repository_name: String::new(), model_name: model, parameters };
    admin::load_model(&state.server, request).await?;
    Ok(reply::empty())
}

/// A load or unload under `/v2/repository/{repository}/...`: the core refuses a named repository
/// before anything else, so the body is not read (Triton answers a malformed one the same).
pub(super) async fn load_named(
    State(state): State<KserveState>,
    Path((repository_name, model_name)): Path<(String, String)>,
) -> HttpResult {
    let request = RepositoryModelLoadRequest { repository_name, model_name, parameters: HashMap::new() };
    admin::load_model(&state.server, request).await?;
    Ok(reply::empty())
}

pub(super) async fn unload_named(
    State(state): State<KserveState>,
    Path((repository_name, model_name)): Path<(String, String)>,
) -> HttpResult {
    let request = RepositoryModelUnloadRequest { repository_name, model_name, parameters: HashMap::new() };
    admin::unload_model(&state.server, request)?;
    Ok(reply::empty())
}

/// A `file:` load parameter's content, which HTTP carries as base64.
fn decode_file(key: &str, text: &str) -> Result<Vec<u8>, HttpError> {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD
        .decode(text)
        .map_err(|_| HttpError::bad_request(format!("unable to decode the base64 content of load parameter '{key}'")))
}

pub(super) async fn unload(
    State(state): State<KserveState>,
    Path(model): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> HttpResult {
    json_object(json_body(&state, &headers, body, true).await?)?;
    let request = RepositoryModelUnloadRequest { repository_name: String::new(), model_name: model, parameters: HashMap::new() };
    admin::unload_model(&state.server, request)?;
    Ok(reply::empty())
}

async fn shm_status_of(state: &KserveState, name: String) -> HttpResult {
    let status = admin::shm_status(&state.server, &name)?;
    let mut regions: Vec<_> = status.regions.into_values().collect();
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
    let options = json_object(json_body(&state, &headers, body, false).await?)?;
    let key = match options.get("key") {
        Some(Value::String(key)) => key.clone(),
        Some(_) => return Err(HttpError::wrong_kind(None, "string")),
        None => return Err(HttpError::bad_request("Shared memory register request has no 'key' field")),
    };
    let number = |field: &str, required: bool| match options.get(field) {
        None if !required => Ok(0),
        Some(value) => value.as_u64().ok_or_else(|| HttpError::wrong_kind(None, "unsigned-integer")),
        None => Err(HttpError::bad_request(format!("Shared memory register request has no '{field}' field"))),
    };
    let request = SystemSharedMemoryRegisterRequest {
        name: region,
        key,
        offset: number("offset", false)?,
        byte_size: number("byte_size", true)?,
    };
    admin::shm_register(&state.server, request)?;
    Ok(reply::empty())
}

pub(super) async fn shm_register_unnamed() -> HttpResult {
    Err(HttpError::bad_request("'region name' is necessary to register system shared memory region"))
}

pub(super) async fn shm_unregister(State(state): State<KserveState>, Path(region): Path<String>) -> HttpResult {
    admin::shm_unregister(&state.server, &region)?;
    Ok(reply::empty())
}

pub(super) async fn shm_unregister_all(State(state): State<KserveState>) -> HttpResult {
    admin::shm_unregister(&state.server, "")?;
    Ok(reply::empty())
}
