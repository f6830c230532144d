//! The HTTP surface (axum): Triton's KServe v2 REST API (`/v2/*`) and the OpenAI `/v1/*` routes
//! of the bridge, over the same registry, router and workers as gRPC, plus `/health` (ready),
//! `/live` and `/metrics` (Prometheus), served within the port's limits by [`serve_limited`].

mod key_refusal;
mod key_scope;
mod keys;
pub mod kserve;
#[cfg(feature = "llm")]
mod lora;
mod serve;
mod unread;

use std::sync::Arc;

use axum::Router;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use tritium_backend_api::llm::ModelKind;
use tritium_openai_bridge::metrics::CONTENT_TYPE;
use tritium_openai_bridge::routes::{ApiSettings, LlmHub, openai_routes};
use tritium_worker::ModelRepository;

use crate::restricted::RestrictedProtocols;
use crate::llm::LlmFrontend;
use tritium_cluster::routing::WORKER_ID_HEADER;

pub use keys::keyed;
pub use serve::{BudgetExhausted, GrpcCalls, serve_limited};
pub use unread::BodyStalled;

#[derive(Clone)]
struct HttpState {
    repository: Arc<ModelRepository>,
    llm: Arc<LlmFrontend>,
    /// `--http-restricted-api`: its `admission` group guards `POST /busy_threshold`.
    restricted: Arc<RestrictedProtocols>,
    /// What `GET /metrics` serves here: the language-model and router families.
    metrics: Arc<prometheus::Registry>,
    /// Whether etcd and NATS still take this process's credentials.
    planes: tritium_cluster::health::PlaneHealth,
}

/// Every HTTP route, ready to serve; request bodies over `max_body_bytes` are refused with 413.
/// The OpenAI routes keep their own limit (`--http-body-limit-mb`) within that one.
pub fn router(kserve: kserve::KserveState, max_body_bytes: usize, mut api: ApiSettings) -> Router {
    api.max_body_bytes = api.max_body_bytes.min(max_body_bytes);
    api.worker_header = Some(WORKER_ID_HEADER.to_string());
    let repository = Arc::clone(&kserve.server.repository);
    let llm = Arc::clone(&kserve.server.llm);
    let hub: Arc<dyn LlmHub> = Arc::clone(&llm) as Arc<dyn LlmHub>;
    let registry = Arc::new(crate::metrics::registry::llm_registry(&llm));
    let planes = kserve.server.planes.clone();
    let state =
        HttpState { repository, llm: Arc::clone(&llm), restricted: Arc::clone(&kserve.restricted), metrics: registry, planes };
    let operational = Router::new()
        .route("/health", get(health))
        .route("/live", get(live))
        .route("/metrics", get(metrics))
        .route("/busy_threshold", get(busy_thresholds).post(set_busy_threshold));
    #[cfg(feature = "llm")]
    let operational = operational
        .route("/v1/load_lora_adapter", axum::routing::post(lora::load))
        .route("/v1/unload_lora_adapter", axum::routing::post(lora::unload));
    let operational = operational.with_state(state);
    openai_routes(hub, Arc::clone(llm.metrics()), api)
        .merge(operational)
        .layer(DefaultBodyLimit::max(max_body_bytes))
        .merge(kserve::routes(kserve))
}

/// 200 once every model that must load has loaded, 503 before (or when one failed), and while
/// etcd or NATS refuses this process's credentials (named under `problems`).
async fn health(State(state): State<HttpState>) -> impl IntoResponse {
    let problems = state.planes.problems();
    if state.repository.all_ready() && problems.is_empty() {
        (StatusCode::OK, axum::Json(serde_json::json!({"status": "ready"})))
    } else if problems.is_empty() {
        (StatusCode::SERVICE_UNAVAILABLE, axum::Json(serde_json::json!({"status": "not ready"})))
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, axum::Json(serde_json::json!({"status": "not ready", "problems": problems})))
    }
}

/// `GET /busy_threshold`: the default and per-model busy thresholds.
async fn busy_thresholds(State(state): State<HttpState>) -> impl IntoResponse {
    let (default, per_model) = state.llm.router().busy_thresholds().all();
    let thresholds: Vec<serde_json::Value> = per_model
        .into_iter()
        .map(|(model, threshold)| serde_json::json!({"model": model, "active_decode_blocks_threshold": threshold}))
        .collect();
    axum::Json(serde_json::json!({"default_active_decode_blocks_threshold": default, "thresholds": thresholds}))
}

/// `POST /busy_threshold` `{"model": …, "active_decode_blocks_threshold": 0.85 | null}`: sets (or
/// with `null` clears) the model's own threshold; answers the threshold now in force.
async fn set_busy_threshold(
    State(state): State<HttpState>,
    headers: axum::http::HeaderMap,
    body: axum::body::Bytes,
) -> axum::response::Response {
    if let Some(header) = state.restricted.missing_header("admission", &headers) {
        let error = serde_json::json!({"error": format!("This API is restricted, expecting header '{header}'")});
        return (StatusCode::FORBIDDEN, axum::Json(error)).into_response();
    }
    #[derive(serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Setting {
        model: String,
        active_decode_blocks_threshold: Option<f64>,
    }
    let bad = |message: String| (StatusCode::BAD_REQUEST, axum::Json(serde_json::json!({"error": message}))).into_response();
    let setting: Setting = match serde_json::from_slice(&body) {
        Ok(setting) => setting,
        Err(error) => return bad(format!("expected {{\"model\": …, \"active_decode_blocks_threshold\": …}}: {error}")),
    };
    // Only served language models have a threshold, so the table stays as small as the repository.
    let served = state.llm.models().into_iter().any(|m| m.name == setting.model && m.kind == ModelKind::Generate);
    if !served {
        let error = serde_json::json!({"error": format!("the model '{}' is not a language model served here", setting.model)});
        return (StatusCode::NOT_FOUND, axum::Json(error)).into_response();
    }
    match state.llm.router().busy_thresholds().set(&setting.model, setting.active_decode_blocks_threshold) {
        Ok(now) => axum::Json(serde_json::json!({"model": setting.model, "active_decode_blocks_threshold": now})).into_response(),
        Err(message) => bad(message),
    }
}

async fn live() -> impl IntoResponse {
    (StatusCode::OK, axum::Json(serde_json::json!({"status": "live"})))
}

async fn metrics(State(state): State<HttpState>) -> impl IntoResponse {
    ([(header::CONTENT_TYPE, CONTENT_TYPE)], crate::metrics::registry::encode(&state.metrics))
}
