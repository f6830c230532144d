//! The HTTP surface (axum): Triton's KServe v2 REST API (`/v2/*`) and the OpenAI `/v1/*` routes
//! of the bridge, over the same registry, router and workers as gRPC, plus `/health` (ready),
//! `/live` and `/metrics` (Prometheus), served within the port's limits by [`serve_limited`].

pub mod kserve;
mod serve;

use std::sync::Arc;

use axum::Router;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use tritium_openai_bridge::metrics::CONTENT_TYPE;
use tritium_openai_bridge::routes::{ApiSettings, LlmHub, openai_routes};
use tritium_worker::ModelRepository;

use crate::llm::LlmFrontend;
use crate::routing::{WORKER_HINT, WORKER_ID_HEADER};

pub use serve::{BudgetExhausted, serve_limited};

#[derive(Clone)]
struct HttpState {
    repository: Arc<ModelRepository>,
    llm: Arc<LlmFrontend>,
}

/// Every HTTP route, ready to serve; request bodies over `max_body_bytes` are refused with 413.
pub fn router(kserve: kserve::KserveState, max_body_bytes: usize, api: ApiSettings) -> Router {
    let repository = Arc::clone(&kserve.grpc.repository);
    let llm = Arc::clone(&kserve.grpc.llm);
    let hub: Arc<dyn LlmHub> = Arc::clone(&llm) as Arc<dyn LlmHub>;
    let state = HttpState { repository, llm: Arc::clone(&llm) };
    let operational =
        Router::new().route("/health", get(health)).route("/live", get(live)).route("/metrics", get(metrics)).with_state(state);
    openai_routes(hub, Arc::clone(llm.metrics()), api)
        .layer(axum::middleware::from_fn(worker_hint))
        .merge(operational)
        .layer(DefaultBodyLimit::max(max_body_bytes))
        .merge(kserve::routes(kserve))
}

/// Runs the request with the worker named by the `x-tritium-worker` header as the routing hint
/// (the router's `direct` mode).
async fn worker_hint(request: axum::extract::Request, next: axum::middleware::Next) -> axum::response::Response {
    let hint = request.headers().get(WORKER_ID_HEADER).and_then(|v| v.to_str().ok()).map(str::to_string);
    WORKER_HINT.scope(hint, next.run(request)).await
}

/// 200 once every model that must load has loaded, 503 before (or when one failed).
async fn health(State(state): State<HttpState>) -> impl IntoResponse {
    if state.repository.all_ready() {
        (StatusCode::OK, axum::Json(serde_json::json!({"status": "ready"})))
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, axum::Json(serde_json::json!({"status": "not ready"})))
    }
}

async fn live() -> impl IntoResponse {
    (StatusCode::OK, axum::Json(serde_json::json!({"status": "live"})))
}

async fn metrics(State(state): State<HttpState>) -> impl IntoResponse {
    ([(header::CONTENT_TYPE, CONTENT_TYPE)], state.llm.render_metrics())
}
