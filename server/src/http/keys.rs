//! The HTTP port's API-key check (`--api-key`, [`crate::api_keys`]): every route but the health
//! probes' asks for a key, and a request without a good one is answered 401 in its door's error
//! shape (OpenAI's, Anthropic's, KServe's) before it reaches a handler. A key held to a list of
//! models is checked against the model each request names ([`super::key_scope`]).

use std::sync::Arc;

use axum::Router;
use axum::extract::{Request, State};
use axum::http::StatusCode;
use axum::middleware::Next;
use axum::response::Response;
use tritium_backend_api::trace::ApiKeyName;

use super::key_refusal::refusal;
use crate::api_keys::{Access, ApiKeys, REFUSAL};

/// What the check needs: the keys, and where models are named.
struct Guard {
    keys: Arc<ApiKeys>,
    /// The HTTP port's body limit: a body read for its `model` is held to it.
    max_body: usize,
    /// Where `GET` lists the models (OpenAI's `/v1/models`, or its configured path).
    models_path: String,
}

/// `router` asking for one of `keys` (unchanged without keys); request bodies read for the model
/// they name are held to `max_body` bytes, and `models_path` is where the models are listed.
pub fn keyed(router: Router, keys: Option<Arc<ApiKeys>>, max_body: usize, models_path: &str) -> Router {
    match keys {
        Some(keys) => {
            let guard = Arc::new(Guard { keys, max_body, models_path: models_path.to_string() });
            router.layer(axum::middleware::from_fn_with_state(guard, check))
        }
        None => router,
    }
}

async fn check(State(guard): State<Arc<Guard>>, mut request: Request, next: Next) -> Response {
    let path = request.uri().path();
    if open_without_key(path) {
        return next.run(request).await;
    }
    match guard.keys.admit_headers(request.headers()) {
        Access::Granted(scope) => {
            tracing::debug!(key = %scope.name, path, "HTTP request with an API key");
            request.extensions_mut().insert(ApiKeyName(scope.name.as_str().into()));
            if scope.is_limited() {
                return super::key_scope::serve_scoped(scope, request, next, guard.max_body, &guard.models_path).await;
            }
            request.extensions_mut().insert(scope);
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
