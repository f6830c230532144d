//! Per-key model allow-lists on the HTTP port (`models=A|B` in the API key file): a request of a
//! key held to a list reaches a model only when it names one of them. The model is read where
//! each door names it: the KServe path (`/v2/models/{model}/…`, `/v2/repository/…/models/{model}/…`),
//! the JSON body's `model` of every other POST (OpenAI, Anthropic, scoring, tokenizing), the path
//! of `GET /v1/models/{model}`. Routes that reach every model (statistics of all, the repository
//! index, server-wide trace and log settings, `/metrics`) and bodies that name no model are
//! refused; `GET /v1/models` lists only the key's models. Refusals are 403 in the door's shape,
//! the same whether the model exists or not.

use axum::body::{Body, to_bytes};
use axum::extract::Request;
use axum::http::{Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use percent_encoding::percent_decode_str;
use serde::Deserialize;

use super::key_refusal::refusal;
use crate::api_keys::KeyScope;

/// The largest model listing filtered for a key.
const MAX_LISTING_BYTES: usize = 64 << 20;

/// What a path says about the model it reaches.
#[derive(Debug, PartialEq, Eq)]
enum PathModel {
    /// One model, named in the path.
    Named(String),
    /// Every model at once (what it is, for the refusal).
    Every(&'static str),
    /// None in the path: the body may name one.
    Unnamed,
}

fn decoded(segment: &str) -> String {
    percent_decode_str(segment).decode_utf8_lossy().into_owned()
}

fn path_model(path: &str, models_path: &str) -> PathModel {
    if let Some(rest) = path.strip_prefix("/v2/") {
        let segments: Vec<&str> = rest.split('/').collect();
        return match segments.as_slice() {
            ["models", "stats"] => PathModel::Every("the statistics of every model"),
            ["models", model, ..] => PathModel::Named(decoded(model)),
            ["repository", "models", model, ..] | ["repository", _, "models", model, ..] => PathModel::Named(decoded(model)),
            ["repository", "index"] | ["repository", _, "index"] => PathModel::Every("the repository index"),
            ["trace", ..] => PathModel::Every("the server-wide trace setting"),
            ["logging"] => PathModel::Every("the log settings"),
            _ => PathModel::Unnamed,
        };
    }
    if path == "/metrics" {
        return PathModel::Every("the metrics of every model");
    }
    match path.strip_prefix(models_path).and_then(|rest| rest.strip_prefix('/')) {
        Some(model) if !model.is_empty() => PathModel::Named(decoded(model)),
        _ => PathModel::Unnamed,
    }
}

#[derive(Deserialize)]
struct NamedModel {
    model: Option<serde_json::Value>,
}

/// Serves `request` for a key held to a list of models (see the module docs).
pub(super) async fn serve_scoped(
    scope: KeyScope,
    mut request: Request,
    next: Next,
    max_body: usize,
    models_path: &str,
) -> Response {
    let path = request.uri().path().to_string();
    let forbidden = |reason: String| refusal(&path, StatusCode::FORBIDDEN, &reason, None);
    match path_model(&path, models_path) {
        PathModel::Named(model) if !scope.allows(&model) => return forbidden(scope.refusal(&model)),
        PathModel::Every(what) => return forbidden(scope.needs_a_model(what)),
        PathModel::Named(_) => {}
        PathModel::Unnamed if request.method() == Method::POST && !path.starts_with("/v2") => {
            let (parts, body) = request.into_parts();
            let Ok(bytes) = to_bytes(body, max_body).await else {
                let message = format!("the request body is over the {max_body} bytes allowed");
                return refusal(&path, StatusCode::PAYLOAD_TOO_LARGE, &message, None);
            };
            match serde_json::from_slice::<NamedModel>(&bytes).ok().and_then(|named| named.model) {
                Some(serde_json::Value::String(model)) if scope.allows(&model) => {}
                Some(serde_json::Value::String(model)) => return forbidden(scope.refusal(&model)),
                _ => return forbidden(scope.needs_a_model("a request that names no model")),
            }
            request = Request::from_parts(parts, Body::from(bytes));
        }
        PathModel::Unnamed => {}
    }
    let listing = request.method() == Method::GET && path == models_path;
    request.extensions_mut().insert(scope.clone());
    let response = next.run(request).await;
    if listing && response.status() == StatusCode::OK { only_the_keys_models(response, &scope).await } else { response }
}

/// A model listing (`{"data": [{"id": …}, …]}`) cut to the models `scope` may use.
async fn only_the_keys_models(response: Response, scope: &KeyScope) -> Response {
    let (mut parts, body) = response.into_parts();
    let Ok(bytes) = to_bytes(body, MAX_LISTING_BYTES).await else {
        return (StatusCode::INTERNAL_SERVER_ERROR, "the model listing is too large to filter").into_response();
    };
    let Ok(mut listing) = serde_json::from_slice::<serde_json::Value>(&bytes) else {
        return Response::from_parts(parts, Body::from(bytes));
    };
    if let Some(models) = listing.get_mut("data").and_then(serde_json::Value::as_array_mut) {
        models.retain(|model| model.get("id").and_then(serde_json::Value::as_str).is_some_and(|id| scope.allows(id)));
    }
    parts.headers.remove(header::CONTENT_LENGTH);
    Response::from_parts(parts, Body::from(listing.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_door_names_its_model_where_its_clients_put_it() {
        let named = |model: &str| PathModel::Named(model.to_string());
        assert_eq!(path_model("/v2/models/llama/infer", "/v1/models"), named("llama"));
        assert_eq!(path_model("/v2/models/my%20model/versions/2/ready", "/v1/models"), named("my model"));
        assert_eq!(path_model("/v2/repository/models/bert/load", "/v1/models"), named("bert"));
        assert_eq!(path_model("/v2/repository/main/models/bert/unload", "/v1/models"), named("bert"));
        assert_eq!(path_model("/v1/models/org/model", "/v1/models"), named("org/model"));
        assert_eq!(path_model("/v2/models/stats", "/v1/models"), PathModel::Every("the statistics of every model"));
        assert!(matches!(path_model("/v2/repository/index", "/v1/models"), PathModel::Every(_)));
        assert!(matches!(path_model("/v2/trace/setting", "/v1/models"), PathModel::Every(_)));
        assert!(matches!(path_model("/metrics", "/v1/models"), PathModel::Every(_)));
        assert_eq!(path_model("/v2", "/v1/models"), PathModel::Unnamed);
        assert_eq!(path_model("/v2/systemsharedmemory/status", "/v1/models"), PathModel::Unnamed);
        assert_eq!(path_model("/v1/chat/completions", "/v1/models"), PathModel::Unnamed);
        assert_eq!(path_model("/v1/models", "/v1/models"), PathModel::Unnamed);
    }
}
