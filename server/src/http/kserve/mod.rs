//! Triton's KServe v2 REST API on the HTTP port: every `/v2` path Triton serves, answered by the
//! same handlers, registry and workers as the gRPC service (each route calls the gRPC handler or
//! its core and renders the answer as Triton's HTTP server does), restricted API groups, the
//! binary tensor extension and gzip/deflate bodies both ways.

mod admin;
pub mod body;
mod cuda_shm;
mod generate;
mod infer;
pub mod json_tensor;
mod non_finite;
pub mod reply;
mod settings;

use std::sync::Arc;
use std::time::Instant;

use axum::Router;
use axum::body::Body;
use axum::extract::rejection::PathRejection;
use axum::extract::{Path, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{MethodRouter, get, post};
use serde::Deserialize;

use self::reply::{Compression, HttpError, HttpResult};
use crate::grpc::budget::ByteBudget;
use crate::restricted::RestrictedProtocols;
use crate::state::ServerState;
use tritium_backend_api::trace::RequestTrace;

/// The header giving the length of the JSON part of a body with binary tensor data.
pub const HEADER_LENGTH: &str = "inference-header-content-length";

/// What the KServe routes share.
#[derive(Clone)]
pub struct KserveState {
    pub(crate) server: Arc<ServerState>,
    pub(crate) budget: Arc<ByteBudget>,
    pub(crate) max_body_bytes: usize,
    pub(crate) restricted: Arc<RestrictedProtocols>,
}

impl KserveState {
    pub fn new(
        server: Arc<ServerState>,
        budget: Arc<ByteBudget>,
        max_body_bytes: usize,
        restricted: RestrictedProtocols,
    ) -> KserveState {
        KserveState { server, budget, max_body_bytes, restricted: Arc::new(restricted) }
    }
}

/// `{model}` and, on the `/versions/{version}` forms, the version.
#[derive(Debug, Deserialize)]
pub(crate) struct ModelPath {
    model: String,
    #[serde(default)]
    version: Option<String>,
}

impl ModelPath {
    fn version(&self) -> String {
        self.version.clone().unwrap_or_default()
    }
}

/// The model and version of a path; Triton's routes take only digits as a version, so any other
/// is a path it does not serve.
fn model_path(path: Result<Path<ModelPath>, PathRejection>) -> Result<ModelPath, HttpError> {
    let path = path.map(|Path(p)| p).map_err(|_| reply::not_found())?;
    match &path.version {
        Some(v) if v.is_empty() || !v.bytes().all(|b| b.is_ascii_digit()) => Err(reply::not_found()),
        _ => Ok(path),
    }
}

/// A method router that answers other methods with 405, labelled as Triton labels them on that
/// path (plain text on health, readiness and inference, JSON elsewhere).
fn methods(route: MethodRouter<KserveState>, plain: bool) -> MethodRouter<KserveState> {
    route.fallback(move || async move {
        let error = reply::method_not_allowed();
        if plain { error.plain() } else { error }
    })
}

/// Routes `path` and `path` under `/versions/{version}`.
fn versioned(router: Router<KserveState>, tail: &str, route: MethodRouter<KserveState>) -> Router<KserveState> {
    let plain = matches!(tail, "/ready" | "/infer");
    let route = methods(route, plain);
    router
        .route(&format!("/v2/models/{{model}}{tail}"), route.clone())
        .route(&format!("/v2/models/{{model}}/versions/{{version}}{tail}"), route)
}

/// Every KServe path, under the restricted-API check.
pub fn routes(state: KserveState) -> Router {
    let json = |route| methods(route, false);
    let mut router = Router::new()
        .route("/v2", json(get(admin::server_metadata)))
        .route("/v2/health/live", methods(get(admin::live), true))
        .route("/v2/health/ready", methods(get(admin::ready), true))
        .route("/v2/models/stats", json(get(admin::statistics_all)))
        .route("/v2/repository/index", json(post(admin::repository_index)))
        .route("/v2/repository/{repository}/index", json(post(admin::repository_index)))
        .route("/v2/repository/models/{model}/load", json(post(admin::load)))
        .route("/v2/repository/models/{model}/unload", json(post(admin::unload)))
        .route("/v2/repository/{repository}/models/{model}/load", json(post(admin::load_named)))
        .route("/v2/repository/{repository}/models/{model}/unload", json(post(admin::unload_named)))
        .route("/v2/systemsharedmemory/status", json(get(admin::shm_status_all)))
        .route("/v2/systemsharedmemory/region/{region}/status", json(get(admin::shm_status)))
        .route("/v2/systemsharedmemory/register", json(post(admin::shm_register_unnamed)))
        .route("/v2/systemsharedmemory/region/{region}/register", json(post(admin::shm_register)))
        .route("/v2/systemsharedmemory/region/{region}/unregister", json(post(admin::shm_unregister)))
        .route("/v2/systemsharedmemory/unregister", json(post(admin::shm_unregister_all)))
        .route("/v2/cudasharedmemory/status", json(get(cuda_shm::status_all)))
        .route("/v2/cudasharedmemory/region/{region}/status", json(get(cuda_shm::status)))
        .route("/v2/cudasharedmemory/register", json(post(cuda_shm::register_unnamed)))
        .route("/v2/cudasharedmemory/region/{region}/register", json(post(cuda_shm::register)))
        .route("/v2/cudasharedmemory/region/{region}/unregister", json(post(cuda_shm::unregister)))
        .route("/v2/cudasharedmemory/unregister", json(post(cuda_shm::unregister)))
        .route("/v2/trace/setting", json(get(settings::trace_get).post(settings::trace_update)))
        .route("/v2/models/{model}/trace/setting", json(get(settings::model_trace_get).post(settings::model_trace_update)))
        .route("/v2/logging", json(get(settings::logging_get).post(settings::logging_update)));
    router = versioned(router, "", get(admin::model_metadata));
    router = versioned(router, "/ready", get(admin::model_ready));
    router = versioned(router, "/config", get(admin::model_config));
    router = versioned(router, "/stats", get(admin::model_statistics));
    router = versioned(router, "/infer", post(infer_route));
    router = versioned(router, "/generate", post(generate::generate));
    router = versioned(router, "/generate_stream", post(generate::generate_stream));
    router
        .route_layer(axum::middleware::from_fn_with_state(state.clone(), restricted))
        .fallback(|| async { reply::not_found() })
        .with_state(state)
}

/// The API group of a `/v2` path, for `--http-restricted-api`.
fn api_group(path: &str) -> Option<&'static str> {
    let rest = path.strip_prefix("/v2")?;
    let group = if rest.is_empty() {
        "metadata"
    } else if rest.starts_with("/health") {
        "health"
    } else if rest.starts_with("/repository") {
        "model-repository"
    } else if rest.starts_with("/systemsharedmemory") || rest.starts_with("/cudasharedmemory") {
        "shared-memory"
    } else if rest.starts_with("/trace") {
        "trace"
    } else if rest.starts_with("/logging") {
        "logging"
    } else if rest.starts_with("/models") {
        match rest.rsplit('/').next().unwrap_or("") {
            "infer" | "generate" | "generate_stream" => "inference",
            "ready" => "health",
            "config" => "model-config",
            "stats" => "statistics",
            "setting" => "trace",
            _ => "metadata",
        }
    } else {
        return None;
    };
    Some(group)
}

/// Runs on routes that exist (an unknown path is 404 first, as Triton routes before it checks):
/// the restricted-API check, then Triton's 405 for HEAD.
async fn restricted(State(state): State<KserveState>, request: Request, next: Next) -> Response {
    if !state.restricted.is_empty()
        && let Some(group) = api_group(request.uri().path())
        && let Some(header) = state.restricted.missing_header(group, request.headers())
    {
        return HttpError::new(StatusCode::FORBIDDEN, format!("This API is restricted, expecting header '{header}'"))
            .plain()
            .into_response();
    }
    // axum answers HEAD on every GET route; Triton's routes take no HEAD.
    if request.method() == axum::http::Method::HEAD {
        let error = reply::method_not_allowed();
        return if request.uri().path().starts_with("/v2/health") { error.plain() } else { error }.into_response();
    }
    next.run(request).await
}

/// `Inference-Header-Content-Length`: what is not a number counts as 0 (a raw binary request),
/// as Triton reads it; a length outside the body is refused.
fn header_length(headers: &HeaderMap, body_length: usize) -> Result<Option<usize>, HttpError> {
    let Some(value) = headers.get(HEADER_LENGTH) else { return Ok(None) };
    let length = value.to_str().ok().and_then(|v| v.trim().parse::<i64>().ok()).unwrap_or(0);
    match usize::try_from(length) {
        Ok(n) if n <= body_length => Ok(Some(n)),
        _ => {
            Err(HttpError::bad_request(format!("inference header size should be in range (0, {body_length}), got: {length}"))
                .plain())
        }
    }
}

async fn infer_route(
    State(state): State<KserveState>,
    path: Result<Path<ModelPath>, PathRejection>,
    key: Option<axum::Extension<tritium_backend_api::trace::ApiKeyName>>,
    headers: HeaderMap,
    body: Body,
) -> HttpResult {
    let arrived = Instant::now();
    let path = model_path(path)?;
    let version = path.version();
    // The model first, as Triton looks it up before it reads the request.
    let _in_use = crate::dispatch::load_on_demand(&state.server, &path.model).await.map_err(|e| HttpError::from(e).plain())?;
    let resolved = resolve(&state, &path).map_err(HttpError::plain)?;
    if resolved.schema.decoupled {
        return Err(HttpError::new(
            StatusCode::NOT_IMPLEMENTED,
            "HTTP end point doesn't support models with decoupled transaction policy",
        ));
    }
    let body = body::read_request(body, &headers, state.max_body_bytes, &state.budget).await?;
    let header_length = header_length(&headers, body.bytes.len())?;
    let parsed = match header_length {
        // An empty body without the header is a raw request too.
        Some(0) => infer::parse_raw(&path.model, &version, body.bytes.clone(), raw_input(&resolved)?),
        None if body.bytes.is_empty() => infer::parse_raw(&path.model, &version, body.bytes.clone(), raw_input(&resolved)?),
        other => infer::parse(&path.model, &version, body.bytes.clone(), other)?,
    };
    let received = Received { headers: &headers, key: key.as_deref(), arrived, read: Instant::now() };
    let (response, trace) = run_infer(&state, parsed.request, resolved, received).await?;
    drop(body);
    let _sent = tritium_trace::door::Sending::http(trace);
    let (bytes, json_length) = infer::encode(response, &parsed.binary_outputs)?;
    let mut response_headers = Vec::with_capacity(2);
    match json_length {
        Some(length) => {
            response_headers.push((header::CONTENT_TYPE, HeaderValue::from_static("application/octet-stream")));
            response_headers.push((header::HeaderName::from_static(HEADER_LENGTH), HeaderValue::from(length)));
        }
        None => response_headers.push((header::CONTENT_TYPE, HeaderValue::from_static(reply::JSON))),
    }
    Ok(reply::body_response(bytes.into(), &response_headers, Compression::accepted(&headers)))
}

/// The model version a path names.
pub(crate) fn resolve(state: &KserveState, path: &ModelPath) -> Result<Arc<tritium_worker::ModelVersion>, HttpError> {
    let number = tritium_worker::parse_version(&path.version()).map_err(crate::ServerError::from)?;
    Ok(state.server.repository.resolve_served(&path.model, number)
        .map_err(crate::ServerError::from)?)
}

/// When and how an HTTP request arrived: its headers (a caller's `traceparent`), when the route
/// began and when the body was read.
pub(crate) struct Received<'a> {
    pub headers: &'a HeaderMap,
    /// The API key the request came with (its name goes on the trace).
    pub key: Option<&'a tritium_backend_api::trace::ApiKeyName>,
    pub arrived: Instant,
    pub read: Instant,
}

/// Runs one KServe request through the gRPC path's decoder, dispatch and encoder, on the version
/// the route resolved from its path; with the request's trace when it is sampled.
pub(crate) async fn run_infer(
    state: &KserveState,
    request: tritium_proto::inference::ModelInferRequest,
    resolved: Arc<tritium_worker::ModelVersion>,
    received: Received<'_>,
) -> Result<(tritium_proto::inference::ModelInferResponse, Option<RequestTrace>), HttpError> {
    let grpc = &state.server;
    let Received { headers, key, arrived, read } = received;
    let mut decoded = crate::grpc::convert::decode_for_model(request, &grpc.shm, &grpc.repository, Some(resolved), arrived)?;
    tracing::debug!(model = %decoded.request.model_name, id = %decoded.request.id, "HTTP infer");
    let trace = tritium_trace::door::http_received(&grpc.tracer, &mut decoded.request, headers, arrived, read);
    if let Some(trace) = &trace {
        trace.name_api_key(key);
    }
    // At the end of the shutdown grace period a request still running is answered 503, not cut off.
    let hard_stop = grpc.hard_stop.child_token();
    let response = tokio::select! {
        response = crate::dispatch::unary(grpc, decoded.request, decoded.model.take()) => response?,
        () = hard_stop.cancelled() => {
            return Err(crate::ServerError::Bridge(tritium_openai_bridge::BridgeError::ShuttingDown).into());
        }
    };
    // Triton labels the errors of writing the answer (an output region too small) plain text.
    let encoded = crate::grpc::convert::encode_response(response, &decoded.shm, &grpc.shm, None);
    Ok((encoded.map_err(|e| HttpError::from(e).plain())?, trace))
}

/// The one input a raw binary request may feed: the model must have exactly one, with at most
/// one variable dimension, and a BYTES one must be of shape `[1]`.
fn raw_input(resolved: &tritium_worker::ModelVersion) -> Result<infer::RawInput, HttpError> {
    use tritium_backend_api::RequestId;
    let schema = &resolved.schema;
    let model = &schema.model;
    let [spec] = schema.inputs.as_slice() else {
        return Err(HttpError::bad_request(format!(
            "{} Raw request must only have 1 input (found 1) to be deduced but got {} inputs in '{model}' model configuration",
            RequestId(""),
            schema.inputs.len()
        )));
    };
    if spec.datatype == tritium_tensor::DataType::Bytes && spec.dims != [1] {
        return Err(HttpError::bad_request(format!(
            "{} For BYTE datatype raw input '{}', the model must have input shape [1]",
            RequestId(""),
            spec.name
        )));
    }
    let mut shape = spec.dims.clone();
    if schema.max_batch_size > 0 {
        shape.insert(0, 1);
    }
    if shape.iter().filter(|d| **d < 0).count() > 1 {
        return Err(HttpError::bad_request(format!(
            "{} Raw request must have at most one variable dimension, input '{}' of model '{model}' has more",
            RequestId(""),
            spec.name
        )));
    }
    Ok(infer::RawInput { name: spec.name.clone(), datatype: spec.datatype, shape })
}

#[cfg(test)]
mod tests {
    use super::api_group;

    #[test]
    fn paths_fall_in_triton_s_api_groups() {
        for (path, group) in [
            ("/v2", Some("metadata")),
            ("/v2/health/ready", Some("health")),
            ("/v2/models/m/ready", Some("health")),
            ("/v2/models/m/versions/1/infer", Some("inference")),
            ("/v2/models/m/generate_stream", Some("inference")),
            ("/v2/models/m", Some("metadata")),
            ("/v2/models/m/config", Some("model-config")),
            ("/v2/models/stats", Some("statistics")),
            ("/v2/models/m/trace/setting", Some("trace")),
            ("/v2/repository/index", Some("model-repository")),
            ("/v2/systemsharedmemory/status", Some("shared-memory")),
            ("/v2/logging", Some("logging")),
            ("/v1/models", None),
        ] {
            assert_eq!(api_group(path), group, "{path}");
        }
    }
}
