//! What the OpenAI routes read from a request's headers: the worker it names, the agent session
//! it belongs to, the caller's trace context and Dynamo's priority headers.

use axum::extract::FromRequestParts;
use tritium_backend_api::trace_context::{TRACEPARENT, TRACESTATE, TraceContext};

use super::AppState;
use crate::BridgeError;
use crate::protocol::NvExt;

/// Where the request's headers place it: the worker they name ([`ApiSettings::worker_header`]),
/// and the agent session it belongs to (the router keeps a session on one worker under
/// `--router-session-affinity-ttl-secs`).
pub(crate) struct HeaderWorker {
    named: Option<String>,
    session: Option<String>,
}

impl FromRequestParts<AppState> for HeaderWorker {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut axum::http::request::Parts, state: &AppState) -> Result<Self, Self::Rejection> {
        let named = state.worker_header.as_deref().and_then(|header| parts.headers.get(header));
        let named = named.and_then(|value| value.to_str().ok()).map(str::to_owned);
        Ok(HeaderWorker { named, session: session_binding(&parts.headers) })
    }
}

/// Dynamo's session header, and the coding agents' headers Dynamo 1.6.1 reads in its place, each
/// family as (session, child session, parent) header names; a child session is a subagent.
const SESSION_HEADERS: [(&str, Option<&str>, Option<&str>); 4] = [
    ("x-dynamo-session-id", None, Some("x-dynamo-parent-session-id")),
    ("x-claude-code-session-id", Some("x-claude-code-agent-id"), Some("x-claude-code-parent-agent-id")),
    ("thread-id", None, Some("x-codex-parent-thread-id")),
    ("x-session-id", None, Some("x-parent-session-id")),
];

/// The key the router binds the request's session under: its session id, or, for a subagent (a
/// session with a parent), its parent's group, so sibling subagents share a worker while the
/// parent keeps its own. The group key starts with a byte no header value holds, so no client
/// can name it, and is a hash, so a long parent id cannot make it too long.
fn session_binding(headers: &axum::http::HeaderMap) -> Option<String> {
    let value = |name: &str| headers.get(name).and_then(|v| v.to_str().ok()).map(str::trim).filter(|v| !v.is_empty());
    let (session, parent) = SESSION_HEADERS.iter().find_map(|&(root_header, child_header, parent_header)| {
        let root = value(root_header)?;
        let session = child_header.and_then(value).unwrap_or(root);
        let named_parent = parent_header.and_then(value).filter(|parent| *parent != session);
        // A Claude Code subagent (its agent id differs from the session's) without a named parent
        // is a child of the session.
        let parent = match child_header {
            Some(_) if session == root => None,
            Some(_) => named_parent.or(Some(root)),
            None => named_parent,
        };
        Some((session, parent))
    })?;
    Some(match parent {
        Some(parent) => format!("\u{1}sg:{}", blake3::hash(parent.as_bytes()).to_hex()),
        None => session.to_owned(),
    })
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
        nvext.and_then(|n| n.backend_instance_id.as_deref()).or(self.named.as_deref())
    }

    /// The session key the router binds the request under, if its headers name a session.
    pub(crate) fn session(&self) -> Option<&str> {
        self.session.as_deref()
    }

    /// Both, for a request forwarded to a text-input worker.
    pub(super) fn place<'a>(&'a self, nvext: Option<&'a NvExt>) -> super::text_input::Place<'a> {
        super::text_input::Place { worker: self.or_nvext(nvext), session: self.session() }
    }
}

#[cfg(test)]
mod tests {
    use super::session_binding;
    use axum::http::HeaderMap;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        pairs.iter().map(|(name, value)| (axum::http::HeaderName::from_static(name), value.parse().expect("a value"))).collect()
    }

    #[test]
    fn sessions_are_read_as_dynamo_reads_them() {
        assert_eq!(session_binding(&headers(&[("x-dynamo-session-id", " s1 ")])).as_deref(), Some("s1"));
        assert_eq!(session_binding(&headers(&[("thread-id", "codex")])).as_deref(), Some("codex"));
        assert_eq!(session_binding(&headers(&[("x-session-id", "oc")])).as_deref(), Some("oc"));
        assert_eq!(session_binding(&headers(&[("x-claude-code-session-id", "cc")])).as_deref(), Some("cc"));
        // Dynamo's header comes first; an empty one counts as absent.
        let both = headers(&[("thread-id", "codex"), ("x-dynamo-session-id", "dyn")]);
        assert_eq!(session_binding(&both).as_deref(), Some("dyn"));
        assert_eq!(session_binding(&headers(&[("x-dynamo-session-id", " ")])), None);
        assert_eq!(session_binding(&HeaderMap::new()), None);
    }

    #[test]
    fn subagents_of_one_parent_share_a_group_and_the_parent_keeps_its_own() {
        let child = |id: &'static str| headers(&[("x-claude-code-session-id", "root"), ("x-claude-code-agent-id", id)]);
        let (a, b) = (session_binding(&child("a")).expect("a"), session_binding(&child("b")).expect("b"));
        assert_eq!(a, b);
        assert!(a.starts_with('\u{1}') && a.len() < 80, "{a}");
        assert_eq!(session_binding(&child("root")).as_deref(), Some("root"));
        let named = headers(&[("x-dynamo-session-id", "kid"), ("x-dynamo-parent-session-id", "root")]);
        assert_eq!(session_binding(&named), Some(a));
        let own_parent = headers(&[("x-dynamo-session-id", "kid"), ("x-dynamo-parent-session-id", "kid")]);
        assert_eq!(session_binding(&own_parent).as_deref(), Some("kid"));
    }
}
