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

use crate::api_keys::{Access, ApiKeys, REFUSAL};

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
    match keys.admit_headers(request.headers()) {
        Access::Granted(name) => {
            tracing::debug!(key = %name, path, "HTTP request with an API key");
            next.run(request).await
        }
        Access::Refused => refusal(path, StatusCode::UNAUTHORIZED, REFUSAL, None),
        limited => {
            tracing::debug!(path, "{}", limited.message());
            let seconds = limited.retry_after().map_or(1, |after| after.as_secs_f64().ceil().max(1.0) as u64);
            refusal(path, StatusCode::TOO_MANY_REQUESTS, &limited.message(), Some(seconds))
        }
    }
}

/// What Kubernetes probes ask: open without a key.
fn open_without_key(path: &str) -> bool {
    matches!(path, "/health" | "/live" | "/v2/health/live" | "/v2/health/ready")
}

/// The refusal in the door's error shape: 401 (with `WWW-Authenticate`) or 429 (with `Retry-After`).
fn refusal(path: &str, status: StatusCode, message: &str, retry_after: Option<u64>) -> Response {
    let limited = status == StatusCode::TOO_MANY_REQUESTS;
    let body = if path == "/v1/messages" || path.starts_with("/v1/messages/") {
        let kind = if limited { "rate_limit_error" } else { "authentication_error" };
        json!({"type": "error", "error": {"type": kind, "message": message}})
    } else if path.starts_with("/v1/") {
        let (kind, code) =
            if limited { ("rate_limit_exceeded", "rate_limit_exceeded") } else { ("invalid_request_error", "invalid_api_key") };
        json!({"error": {"message": message, "type": kind, "param": null, "code": code}})
    } else {
        json!({"error": message})
    };
    let mut response = (status, axum::Json(body)).into_response();
    let headers = response.headers_mut();
    match retry_after {
        Some(seconds) => {
            headers.insert(header::RETRY_AFTER, header::HeaderValue::from(seconds));
        }
        None => {
            headers.insert(header::WWW_AUTHENTICATE, header::HeaderValue::from_static("Bearer"));
        }
    }
    response
}
