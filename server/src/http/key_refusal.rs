//! The answer the API-key checks ([`super::keys`], [`super::key_scope`]) give a request they
//! refuse, in its door's error shape: OpenAI's, Anthropic's, or KServe's.

use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::json;

/// The refusal in the door's error shape: 401 (with `WWW-Authenticate`), 429 (with
/// `Retry-After`), 403 (a model the key may not use) or 413 (a body too large to read its model).
pub(super) fn refusal(path: &str, status: StatusCode, message: &str, retry_after: Option<u64>) -> Response {
    let (anthropic, openai) = match status {
        StatusCode::TOO_MANY_REQUESTS => ("rate_limit_error", ("rate_limit_exceeded", "rate_limit_exceeded")),
        StatusCode::FORBIDDEN => ("permission_error", ("invalid_request_error", "model_not_allowed")),
        StatusCode::PAYLOAD_TOO_LARGE => ("request_too_large", ("invalid_request_error", "request_too_large")),
        _ => ("authentication_error", ("invalid_request_error", "invalid_api_key")),
    };
    let body = if path == "/v1/messages" || path.starts_with("/v1/messages/") {
        json!({"type": "error", "error": {"type": anthropic, "message": message}})
    } else if path.starts_with("/v1/") {
        json!({"error": {"message": message, "type": openai.0, "param": null, "code": openai.1}})
    } else {
        json!({"error": message})
    };
    let mut response = (status, axum::Json(body)).into_response();
    let headers = response.headers_mut();
    if let Some(seconds) = retry_after {
        headers.insert(header::RETRY_AFTER, header::HeaderValue::from(seconds));
    } else if status == StatusCode::UNAUTHORIZED {
        headers.insert(header::WWW_AUTHENTICATE, header::HeaderValue::from_static("Bearer"));
    }
    response
}
