//! The HTTP port's API-key check (`--api-key`, [`crate::api_keys`]): every route but the health
//! probes' asks for a key, and a request without a good one is answered 401 in its door's error
//! shape (OpenAI's, Anthropic's, KServe's) before it reaches a handler.

use std::sync::Arc;

use axum::Router;
use axum::extract::{Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use serde_json::json;

use crate::api_keys::{ApiKeys, REFUSAL};

/// `router` asking for one of `keys` (unchanged without keys).
pub fn keyed(router: Router, keys: Option<Arc<ApiKeys>>) -> Router {
    match keys {
        Some(keys) => router.layer(axum::middleware::from_fn_with_state(keys, check)),
        None => router,
    }
}

async fn check(State(keys): State<Arc<ApiKeys>>, request: Request, next: Next) -> Response {
    let path = request.uri().path();
    if open_without_key(path) {
        return next.run(request).await;
    }
    match keys.check_headers(request.headers()) {
        Some(name) => {
            tracing::debug!(key = %name, path, "HTTP request with an API key");
            next.run(request).await
        }
        None => refusal(path),
    }
}

/// What Kubernetes probes ask: open without a key.
fn open_without_key(path: &str) -> bool {
    matches!(path, "/health" | "/live" | "/v2/health/live" | "/v2/health/ready")
}

fn refusal(path: &str) -> Response {
    let body = if path == "/v1/messages" || path.starts_with("/v1/messages/") {
        json!({"type": "error", "error": {"type": "authentication_error", "message": REFUSAL}})
    } else if path.starts_with("/v1/") {
        json!({"error": {"message": REFUSAL, "type": "invalid_request_error", "param": null, "code": "invalid_api_key"}})
    } else {
        json!({"error": REFUSAL})
    };
    (StatusCode::UNAUTHORIZED, [(header::WWW_AUTHENTICATE, "Bearer")], axum::Json(body)).into_response()
}
