//! vLLM's routes for LoRA adapters at run time: `POST /v1/load_lora_adapter`
//! (`{"lora_name", "lora_path", "base_model_name"?, "load_inplace"?}`) and
//! `POST /v1/unload_lora_adapter` (`{"lora_name"}`), answering vLLM's plain-text successes and
//! OpenAI error bodies. They run only with `--lora-dir`, inside which every adapter loaded this
//! way must lie (no file outside it is opened), and `--http-restricted-api lora:HEADER=VALUE`
//! keeps them for operators.

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;

use super::HttpState;

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
        _ => "BadRequestError",
    };
    let body = serde_json::json!({"error": {"message": message.into(), "type": kind, "param": param, "code": status.as_u16()}});
    (status, axum::Json(body)).into_response()
}

/// The refusal of a call the operator's restriction or configuration rules out, if any.
fn gate(state: &HttpState, headers: &HeaderMap) -> Result<std::path::PathBuf, Response> {
    if let Some(header) = state.restricted.missing_header("lora", headers) {
        return Err(error(StatusCode::FORBIDDEN, format!("This API is restricted, expecting header '{header}'"), None));
    }
    state.llm.lora_dir().cloned().ok_or_else(|| {
        error(StatusCode::NOT_FOUND, "loading LoRA adapters at run time is off: start the server with --lora-dir DIR", None)
    })
}

fn parse<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, Response> {
    serde_json::from_slice(body).map_err(|e| error(StatusCode::BAD_REQUEST, format!("a malformed request body: {e}"), None))
}

pub(super) async fn load(State(state): State<HttpState>, headers: HeaderMap, body: axum::body::Bytes) -> Response {
    let dir = match gate(&state, &headers) {
        Ok(dir) => dir,
        Err(refused) => return refused,
    };
    let request: Load = match parse(&body) {
        Ok(request) => request,
        Err(refused) => return refused,
    };
    if request.lora_name.is_empty() || request.lora_path.is_empty() {
        return error(StatusCode::BAD_REQUEST, "Both 'lora_name' and 'lora_path' must be provided.", None);
    }
    let path = match inside(&dir, &request.lora_path) {
        Some(path) => path,
        None => {
            let message = format!("lora_path must name an adapter inside --lora-dir, got '{}'", request.lora_path);
            return error(StatusCode::BAD_REQUEST, message, Some("lora_path"));
        }
    };
    let bases = state.llm.language_models();
    let base = match (&request.base_model_name, bases.as_slice()) {
        (Some(base), _) if bases.contains(base) => base.clone(),
        (Some(base), _) => {
            return error(StatusCode::NOT_FOUND, format!("The model `{base}` does not exist."), Some("base_model_name"));
        }
        (None, [only]) => only.clone(),
        (None, _) => {
            let message = "several language models are served: name the one to adapt in base_model_name";
            return error(StatusCode::BAD_REQUEST, message, Some("base_model_name"));
        }
    };
    if bases.iter().any(|name| *name == request.lora_name) {
        return error(StatusCode::BAD_REQUEST, format!("'{}' names a served model", request.lora_name), Some("lora_name"));
    }
    let Some(engine) = state.llm.language_model(&base) else {
        return error(StatusCode::NOT_FOUND, format!("The model `{base}` does not exist."), Some("base_model_name"));
    };
    let name = request.lora_name.clone();
    let loaded = tokio::task::spawn_blocking(move || {
        if request.load_inplace {
            engine.unload_adapter(&request.lora_name)?;
        }
        engine.load_adapter(&request.lora_name, &path)
    })
    .await;
    match loaded {
        Ok(Ok(_)) => (StatusCode::OK, format!("Success: LoRA adapter '{name}' added successfully.")).into_response(),
        Ok(Err(e)) => error(StatusCode::BAD_REQUEST, e.to_string(), None),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, format!("loading the adapter stopped: {e}"), None),
    }
}

pub(super) async fn unload(State(state): State<HttpState>, headers: HeaderMap, body: axum::body::Bytes) -> Response {
    if let Err(refused) = gate(&state, &headers) {
        return refused;
    }
    let request: Unload = match parse(&body) {
        Ok(request) => request,
        Err(refused) => return refused,
    };
    let _ = request.lora_int_id;
    if request.lora_name.is_empty() {
        return error(StatusCode::BAD_REQUEST, "'lora_name' needs to be provided to unload a LoRA adapter.", Some("lora_name"));
    }
    for base in state.llm.language_models() {
        let Some(engine) = state.llm.language_model(&base) else { continue };
        match engine.unload_adapter(&request.lora_name) {
            Ok(true) => {
                let message = format!("Success: LoRA adapter '{}' removed successfully.", request.lora_name);
                return (StatusCode::OK, message).into_response();
            }
            Ok(false) => {}
            Err(e) => return error(StatusCode::BAD_REQUEST, e.to_string(), None),
        }
    }
    error(StatusCode::NOT_FOUND, format!("The lora adapter '{}' cannot be found.", request.lora_name), Some("lora_name"))
}

/// `path` (relative to `dir`, or absolute) when it resolves to something inside `dir`.
fn inside(dir: &std::path::Path, path: &str) -> Option<std::path::PathBuf> {
    let root = dir.canonicalize().ok()?;
    let resolved = root.join(path).canonicalize().ok()?;
    resolved.starts_with(&root).then_some(resolved)
}
