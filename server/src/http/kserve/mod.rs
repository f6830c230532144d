//! Triton's KServe v2 REST API on the HTTP port: every `/v2` path Triton serves, answered by the
//! same handlers, registry and workers as the gRPC service (each route calls the gRPC handler or
//! its core and renders the answer as Triton's HTTP server does), restricted API groups, the
//! binary tensor extension and gzip/deflate bodies both ways.

mod admin;
pub mod body;
mod generate;
mod infer;
pub mod json_tensor;
pub mod reply;

use std::sync::Arc;
use std::time::Instant;

use axum::Router;
use axum::body::Body;
use axum::extract::rejection::PathRejection;
use axum::extract::{Path, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::Deserialize;

use self::reply::{Compression, HttpError, HttpResult};
use crate::grpc::budget::ByteBudget;
use crate::grpc::restricted::RestrictedProtocols;
use crate::grpc::{GrpcState, InferenceService};

/// The header giving the length of the JSON part of a body with binary tensor data.
pub const HEADER_LENGTH: &str = "inference-header-content-length";

/// What the KServe routes share.
#[derive(Clone)]
pub struct KserveState {
    pub(crate) grpc: Arc<GrpcState>,
    pub(crate) service: InferenceService,
    pub(crate) budget: Arc<ByteBudget>,
    pub(crate) max_body_bytes: usize,
    pub(crate) restricted: Arc<RestrictedProtocols>,
}

impl KserveState {
    pub fn new(
        grpc: Arc<GrpcState>,
        budget: Arc<ByteBudget>,
        max_body_bytes: usize,
        restricted: RestrictedProtocols,
    ) -> KserveState {
        let service = InferenceService::new(Arc::clone(&grpc));
        KserveState { grpc, service, budget, max_body_bytes, restricted: Arc::new(restricted) }
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

fn model_path(path: Result<Path<ModelPath>, PathRejection>) -> Result<ModelPath, HttpError> {
    path.map(|Path(p)| p).map_err(|e| HttpError::bad_request(e.body_text()))
}

/// Routes `path` and `path` under `/versions/{version}`.
fn versioned(router: Router<KserveState>, tail: &str, route: axum::routing::MethodRouter<KserveState>) -> Router<KserveState> {
    router
        .route(&format!("/v2/models/{{model}}{tail}"), route.clone())
        .route(&format!("/v2/models/{{model}}/versions/{{version}}{tail}"), route)
}

/// Every KServe path, under the restricted-API check.
pub fn routes(state: KserveState) -> Router {
    let mut router = Router::new()
        .route("/v2", get(admin::server_metadata))
        .route("/v2/health/live", get(admin::live))
        .route("/v2/health/ready", get(admin::ready))
        .route("/v2/models/stats", get(admin::statistics_all))
        .route("/v2/repository/index", post(admin::repository_index))
        .route("/v2/repository/models/{model}/load", post(admin::load))
        .route("/v2/repository/models/{model}/unload", post(admin::unload))
        .route("/v2/systemsharedmemory/status", get(admin::shm_status_all))
        .route("/v2/systemsharedmemory/region/{region}/status", get(admin::shm_status))
        .route("/v2/systemsharedmemory/region/{region}/register", post(admin::shm_register))
        .route("/v2/systemsharedmemory/region/{region}/unregister", post(admin::shm_unregister))
        .route("/v2/systemsharedmemory/unregister", post(admin::shm_unregister_all))
        .route("/v2/cudasharedmemory/status", get(admin::cuda_shm))
        .route("/v2/cudasharedmemory/region/{region}/status", get(admin::cuda_shm))
        .route("/v2/cudasharedmemory/region/{region}/register", post(admin::cuda_shm))
        .route("/v2/cudasharedmemory/region/{region}/unregister", post(admin::cuda_shm))
        .route("/v2/cudasharedmemory/unregister", post(admin::cuda_shm))
        .route("/v2/trace/setting", get(admin::trace_get).post(admin::trace_update))
        .route("/v2/logging", get(admin::logging_get).post(admin::logging_update));
    router = versioned(router, "", get(admin::model_metadata));
    router = versioned(router, "/ready", get(admin::model_ready));
    router = versioned(router, "/config", get(admin::model_config));
    router = versioned(router, "/stats", get(admin::model_statistics));
    router = versioned(router, "/trace/setting", get(admin::model_trace_get).post(admin::model_trace_update));
    router = versioned(router, "/infer", post(infer_route));
    router = versioned(router, "/generate", post(generate::generate));
    router = versioned(router, "/generate_stream", post(generate::generate_stream));
    router.layer(axum::middleware::from_fn_with_state(state.clone(), restricted)).with_state(state)
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

async fn restricted(State(state): State<KserveState>, request: Request, next: Next) -> Response {
    if !state.restricted.is_empty()
        && let Some(group) = api_group(request.uri().path())
        && let Some(header) = state.restricted.missing_header(group, request.headers())
    {
        return HttpError::new(StatusCode::FORBIDDEN, format!("This API is restricted, expecting header '{header}'"))
            .into_response();
    }
    next.run(request).await
}

fn header_length(headers: &HeaderMap) -> Result<Option<usize>, HttpError> {
    match headers.get(HEADER_LENGTH) {
        None => Ok(None),
        Some(value) => value
            .to_str()
            .ok()
            .and_then(|v| v.trim().parse::<usize>().ok())
            .map(Some)
            .ok_or_else(|| HttpError::bad_request("Inference-Header-Content-Length must be a non-negative integer")),
    }
}

async fn infer_route(
    State(state): State<KserveState>,
    path: Result<Path<ModelPath>, PathRejection>,
    headers: HeaderMap,
    body: Body,
) -> HttpResult {
    let arrived = Instant::now();
    let path = model_path(path)?;
    let version = path.version();
    let header_length = header_length(&headers)?;
    let body = body::read_request(body, &headers, state.max_body_bytes, &state.budget).await?;
    let parsed = match header_length {
        Some(0) => infer::parse_raw(&path.model, &version, body.bytes.clone(), raw_input(&state, &path.model, &version)?),
        other => infer::parse(&path.model, &version, body.bytes.clone(), other)?,
    };
    let response = run_infer(&state, parsed.request, arrived).await?;
    drop(body);
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

/// Runs one KServe request through the gRPC path's decoder, dispatch and encoder.
pub(crate) async fn run_infer(
    state: &KserveState,
    request: tritium_proto::inference::ModelInferRequest,
    arrived: Instant,
) -> Result<tritium_proto::inference::ModelInferResponse, HttpError> {
    let grpc = &state.grpc;
    let decoded = crate::grpc::convert::decode_for_model(request, &grpc.shm, &grpc.repository, arrived)?;
    tracing::debug!(model = %decoded.request.model_name, id = %decoded.request.id, "HTTP infer");
    let response = crate::grpc::dispatch::unary(grpc, decoded.request).await?;
    Ok(crate::grpc::convert::encode_response(response, &decoded.shm, &grpc.shm, None)?)
}

/// The one input a raw binary request may feed: the model must have exactly one.
fn raw_input(state: &KserveState, model: &str, version: &str) -> Result<infer::RawInput, HttpError> {
    let version_number = tritium_worker::parse_version(version).map_err(crate::ServerError::from)?;
    let resolved = state.grpc.repository.resolve(model, version_number).map_err(crate::ServerError::from)?;
    let schema = &resolved.schema;
    let [spec] = schema.inputs.as_slice() else {
        return Err(HttpError::bad_request(format!(
            "raw binary request (Inference-Header-Content-Length: 0) needs a model with exactly one input; '{model}' has {}",
            schema.inputs.len()
        )));
    };
    let mut shape = spec.dims.clone();
    if schema.max_batch_size > 0 {
        shape.insert(0, 1);
    }
    if shape.iter().filter(|d| **d < 0).count() > 1 {
        return Err(HttpError::bad_request(format!(
            "raw binary request (Inference-Header-Content-Length: 0) needs an input with at most one variable dimension; '{}' of model '{model}' has more",
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
