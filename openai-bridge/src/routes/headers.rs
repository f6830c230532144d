//! What the OpenAI routes read from a request's headers: the worker it names, the caller's
//! trace context and Dynamo's priority headers.

use axum::extract::FromRequestParts;
use tritium_backend_api::trace_context::{TRACEPARENT, TRACESTATE, TraceContext};

use super::AppState;
use crate::BridgeError;
use crate::protocol::NvExt;

/// The worker the request's header names ([`ApiSettings::worker_header`]), if any.
pub(crate) struct HeaderWorker(pub(crate) Option<String>);

impl FromRequestParts<AppState> for HeaderWorker {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut axum::http::request::Parts, state: &AppState) -> Result<Self, Self::Rejection> {
        let named = state.worker_header.as_deref().and_then(|header| parts.headers.get(header));
        Ok(HeaderWorker(named.and_then(|value| value.to_str().ok()).map(str::to_owned)))
    }
}

/// The caller's W3C trace context (`traceparent`, `tracestate`), if it sent a valid one; a
/// malformed header is ignored and the request starts a trace of its own.
/// The API key's name (never the key) rides along, for the request's trace.
pub(crate) struct CallerTrace(pub(crate) Option<TraceContext>, pub(crate) Option<tritium_backend_api::trace::ApiKeyName>);

impl FromRequestParts<AppState> for CallerTrace {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut axum::http::request::Parts, _: &AppState) -> Result<Self, Self::Rejection> {
        let header = |name| parts.headers.get(name).map(|v| v.as_bytes());
        let key = parts.extensions.get::<tritium_backend_api::trace::ApiKeyName>().cloned();
        Ok(CallerTrace(TraceContext::from_headers(header(TRACEPARENT), header(TRACESTATE)), key))
    }
}

/// Dynamo's priority headers, which take the place of `nvext.agent_hints`' fields:
/// `x-dynamo-request-priority` (higher first) and `x-dynamo-request-strict-priority` (a tier).
pub(crate) struct HeaderPriority(Result<crate::protocol::AgentHints, BridgeError>);

const PRIORITY_HEADER: &str = "x-dynamo-request-priority";
const STRICT_PRIORITY_HEADER: &str = "x-dynamo-request-strict-priority";

impl FromRequestParts<AppState> for HeaderPriority {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut axum::http::request::Parts, _: &AppState) -> Result<Self, Self::Rejection> {
        fn read<T: std::str::FromStr>(
            parts: &axum::http::request::Parts,
            name: &str,
            what: &str,
        ) -> Result<Option<T>, BridgeError> {
            let Some(value) = parts.headers.get(name) else { return Ok(None) };
            let parsed = value.to_str().ok().and_then(|text| text.trim().parse().ok());
            parsed.map(Some).ok_or_else(|| BridgeError::field(name, format!("must be {what}")))
        }
        let hints = || {
            Ok(crate::protocol::AgentHints {
                priority: read(parts, PRIORITY_HEADER, "an integer")?,
                strict_priority: read(parts, STRICT_PRIORITY_HEADER, "an unsigned 32-bit integer")?,
                ..Default::default()
            })
        };
        Ok(HeaderPriority(hints()))
    }
}

impl HeaderPriority {
    /// Sets the priorities the headers carry, over what the body said.
    pub(crate) fn apply(&self, options: &mut crate::sampling::CompletionOptions) -> Result<(), BridgeError> {
        let hints = self.0.as_ref().map_err(Clone::clone)?;
        hints.apply(options).map_err(|error| match error {
            BridgeError::InvalidField { reason, .. } => BridgeError::field(PRIORITY_HEADER, reason),
            other => other,
        })
    }
}

impl HeaderWorker {
    /// The worker to run on: `nvext.backend_instance_id`, else the header's.
    pub(crate) fn or_nvext<'a>(&'a self, nvext: Option<&'a NvExt>) -> Option<&'a str> {
        nvext.and_then(|n| n.backend_instance_id.as_deref()).or(self.0.as_deref())
    }
}
