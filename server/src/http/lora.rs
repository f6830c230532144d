//! vLLM's routes for LoRA adapters at run time: `POST /v1/load_lora_adapter`
//! (`{"lora_name", "lora_path", "base_model_name"?, "load_inplace"?}`) and
//! `POST /v1/unload_lora_adapter` (`{"lora_name"}`), answering vLLM's plain-text successes and
//! OpenAI error bodies. A base model in this process loads from inside this server's
//! `--lora-dir` (no file outside it is opened; without it, 404); one served by `tritium worker`s
//! is loaded on each of them from inside theirs, all or nothing (see [`tritium_cluster::lora`]).
//! `--http-restricted-api lora:HEADER=VALUE` keeps the routes for operators.

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;

use super::HttpState;
use tritium_cluster::lora::{LoadAdapter, Refusal};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Load {
    lora_name: String,
    lora_path: String,
    base_model_name: Option<String>,
    #[serde(default)]
    load_inplace: bool,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Unload {
    lora_name: String,
    lora_int_id: Option<i64>,
}

fn error(status: StatusCode, message: impl Into<String>, param: Option<&str>) -> Response {
    let kind = match status {
        StatusCode::NOT_FOUND => "NotFoundError",
        StatusCode::FORBIDDEN => "PermissionDeniedError",
        StatusCode::SERVICE_UNAVAILABLE => "ServiceUnavailableError",
        _ => "BadRequestError",
    };
    let body = serde_json::json!({"error": {"message": message.into(), "type": kind, "param": param, "code": status.as_u16()}});
    (status, axum::Json(body)).into_response()
}

fn refused(refusal: Refusal) -> Response {
    match refusal {
        Refusal::NotFound { message, param } => error(StatusCode::NOT_FOUND, message, param),
        Refusal::Invalid { message, param } => error(StatusCode::BAD_REQUEST, message, param),
        Refusal::Unavailable(message) => error(StatusCode::SERVICE_UNAVAILABLE, message, None),
    }
}

/// The refusal of a caller without the operator's header, if any.
fn gate(state: &HttpState, headers: &HeaderMap) -> Result<(), Response> {
    match state.restricted.missing_header("lora", headers) {
        Some(header) => Err(error(StatusCode::FORBIDDEN, format!("This API is restricted, expecting header '{header}'"), None)),
        None => Ok(()),
    }
}

fn parse<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, Response> {
    serde_json::from_slice(body).map_err(|e| error(StatusCode::BAD_REQUEST, format!("a malformed request body: {e}"), None))
}

pub(super) async fn load(State(state): State<HttpState>, headers: HeaderMap, body: axum::body::Bytes) -> Response {
    if let Err(refusal) = gate(&state, &headers) {
        return refusal;
    }
    let request: Load = match parse(&body) {
        Ok(request) => request,
        Err(refusal) => return refusal,
    };
    let load = LoadAdapter {
        name: request.lora_name,
        path: request.lora_path,
        base: request.base_model_name,
        inplace: request.load_inplace,
    };
    match load_everywhere(&state, &load).await {
        Ok(()) => (StatusCode::OK, format!("Success: LoRA adapter '{}' added successfully.", load.name)).into_response(),
        Err(refusal) => refused(refusal),
    }
}

/// Loads into the base model's engine here (from inside this server's `--lora-dir`) and on every
/// remote worker serving it (from inside theirs), all or nothing.
async fn load_everywhere(state: &HttpState, load: &LoadAdapter) -> Result<(), Refusal> {
    let repository = &state.repository;
    let router = state.llm.router();
    // Workers' adapters are served models here, but still adapters (a load may replace them).
    let served: Vec<String> = repository
        .served_models()
        .iter()
        .filter(|m| router.remote_adapter_of(&m.name).is_none())
        .map(|m| m.name.clone())
        .collect();
    tritium_cluster::lora::check_names(load, &served)?;
    let base = tritium_cluster::lora::choose_base(&state.llm.language_models(), load.base.as_deref())?;
    let local = repository.local_models().iter().any(|m| m.name == base);
    let workers = router.remote_workers_serving(&base);
    if local {
        let engine = state.llm.language_model(&base).ok_or_else(|| Refusal::NotFound {
            message: format!("The model `{base}` does not exist."),
            param: Some("base_model_name"),
        })?;
        tritium_cluster::lora::load_into(repository, engine, state.llm.lora_dir().map(|d| d.as_path()), load).await?;
    }
    if !workers.is_empty()
        && let Err(refusal) = tritium_cluster::lora::load_on_workers(repository, workers, &base, load).await
    {
        if local && let Err(e) = tritium_cluster::lora::unload_local(repository, &load.name) {
            tracing::warn!(adapter = %load.name, "unloading after the workers refused it failed: {}", e.message());
        }
        return Err(refusal);
    }
    Ok(())
}

pub(super) async fn unload(State(state): State<HttpState>, headers: HeaderMap, body: axum::body::Bytes) -> Response {
    if let Err(refusal) = gate(&state, &headers) {
        return refusal;
    }
    let request: Unload = match parse(&body) {
        Ok(request) => request,
        Err(refusal) => return refusal,
    };
    let _ = request.lora_int_id;
    if request.lora_name.is_empty() {
        return error(StatusCode::BAD_REQUEST, "'lora_name' needs to be provided to unload a LoRA adapter.", Some("lora_name"));
    }
    let repository = &state.repository;
    let workers = state.llm.router().remote_workers_serving(&request.lora_name);
    let found = match tritium_cluster::lora::unload_local(repository, &request.lora_name) {
        Ok(local) => match tritium_cluster::lora::unload_on_workers(repository, workers, &request.lora_name).await {
            Ok(remote) => local || remote,
            Err(refusal) => return refused(refusal),
        },
        Err(refusal) => return refused(refusal),
    };
    if !found {
        let message = format!("The lora adapter '{}' cannot be found.", request.lora_name);
        return error(StatusCode::NOT_FOUND, message, Some("lora_name"));
    }
    (StatusCode::OK, format!("Success: LoRA adapter '{}' removed successfully.", request.lora_name)).into_response()
}
