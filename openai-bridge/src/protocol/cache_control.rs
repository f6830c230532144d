//! Explicit prompt caching: Anthropic's `cache_control: {"type": "ephemeral", "ttl": "5m" | "1h"}`
//! on system blocks, tool definitions and message content blocks, and the same object on an
//! OpenAI chat message or one of its content parts (the convention of gateways that pass it on to
//! Anthropic). The prompt up to the last breakpoint is pinned in the engine's prefix cache for
//! the longest TTL named (see [`PrefixPin`](tritium_backend_api::llm::PrefixPin)).

use std::time::Duration;

use serde_json::{Map, Value};

use crate::BridgeError;

/// Anthropic's default TTL.
pub const DEFAULT_CACHE_TTL: Duration = Duration::from_secs(5 * 60);
/// The longer TTL Anthropic offers.
pub const LONG_CACHE_TTL: Duration = Duration::from_secs(60 * 60);

/// The prompt prefix a request asks to keep cached: its first `messages` chat messages (as the
/// door hands them to the template), for `ttl`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CacheBreakpoint {
    pub messages: usize,
    pub ttl: Duration,
}

impl CacheBreakpoint {
    /// The later of two breakpoints (it covers the earlier one) with the longer TTL of both.
    pub(crate) fn merge(self, later: Option<CacheBreakpoint>) -> CacheBreakpoint {
        match later {
            Some(other) => CacheBreakpoint { messages: self.messages.max(other.messages), ttl: self.ttl.max(other.ttl) },
            None => self,
        }
    }
}

/// The TTL of the `cache_control` of `holder` (a block, a part or a message), if it has one;
/// `field` names it in errors.
pub fn cache_ttl(holder: &Value, field: &str) -> Result<Option<Duration>, BridgeError> {
    control_ttl(holder.get("cache_control"), field)
}

/// The TTL a `cache_control` object names (`None`: there is none).
fn control_ttl(control: Option<&Value>, field: &str) -> Result<Option<Duration>, BridgeError> {
    let control = match control {
        None | Some(Value::Null) => return Ok(None),
        Some(control) => control,
    };
    let field = format!("{field}.cache_control");
    match control.get("type").and_then(Value::as_str) {
        Some("ephemeral") => {}
        _ => return Err(BridgeError::field(format!("{field}.type"), "must be 'ephemeral'")),
    }
    match control.get("ttl") {
        None | Some(Value::Null) => Ok(Some(DEFAULT_CACHE_TTL)),
        Some(Value::String(ttl)) if ttl == "5m" => Ok(Some(DEFAULT_CACHE_TTL)),
        Some(Value::String(ttl)) if ttl == "1h" => Ok(Some(LONG_CACHE_TTL)),
        Some(_) => Err(BridgeError::field(format!("{field}.ttl"), "must be '5m' or '1h'")),
    }
}

/// The breakpoint of OpenAI chat `messages`: the last message that carries `cache_control`
/// itself or on one of its content parts.
pub fn chat_breakpoint<'a>(
    messages: impl IntoIterator<Item = &'a Map<String, Value>>,
) -> Result<Option<CacheBreakpoint>, BridgeError> {
    let mut found: Option<CacheBreakpoint> = None;
    for (i, message) in messages.into_iter().enumerate() {
        let field = format!("messages[{i}]");
        let mut ttl = control_ttl(message.get("cache_control"), &field)?;
        if let Some(Value::Array(parts)) = message.get("content") {
            for (j, part) in parts.iter().enumerate() {
                ttl = ttl.max(cache_ttl(part, &format!("{field}.content[{j}]"))?);
            }
        }
        if let Some(ttl) = ttl {
            found = Some(CacheBreakpoint { messages: i + 1, ttl }.merge(found));
        }
    }
    Ok(found)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use serde_json::json;

    use super::*;

    fn objects(values: &[Value]) -> Vec<Map<String, Value>> {
        values.iter().map(|v| v.as_object().unwrap().clone()).collect()
    }

    #[test]
    fn the_last_breakpoint_and_the_longest_ttl_are_kept_and_bad_ones_are_refused_by_field() {
        let messages = [
            json!({"role": "system", "content": "rules", "cache_control": {"type": "ephemeral", "ttl": "1h"}}),
            json!({"role": "user", "content": [{"type": "text", "text": "doc", "cache_control": {"type": "ephemeral"}}]}),
            json!({"role": "user", "content": "question"}),
        ];
        assert_eq!(chat_breakpoint(&objects(&messages)).unwrap(), Some(CacheBreakpoint { messages: 2, ttl: LONG_CACHE_TTL }));
        assert_eq!(chat_breakpoint(&objects(&messages[2..])).unwrap(), None);
        let bad = [json!({"role": "user", "content": [{"type": "text", "text": "x", "cache_control": {"type": "persistent"}}]})];
        assert_eq!(
            chat_breakpoint(&objects(&bad)).unwrap_err().to_string(),
            "messages[0].content[0].cache_control.type: must be 'ephemeral'"
        );
        let bad = [json!({"role": "user", "content": "x", "cache_control": {"type": "ephemeral", "ttl": "2d"}})];
        assert_eq!(
            chat_breakpoint(&objects(&bad)).unwrap_err().to_string(),
            "messages[0].cache_control.ttl: must be '5m' or '1h'"
        );
    }
}
