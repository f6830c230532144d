//! Anthropic's Messages API (`POST /v1/messages`, `/v1/messages/count_tokens`): the requests,
//! their content blocks turned into chat messages for the template, the message object, and
//! Anthropic's error body.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};

use super::{CacheBreakpoint, Stop, Tools, cache_ttl};
use crate::BridgeError;
use crate::parsers::ParsedDelta;
use crate::sampling::CompletionOptions;

/// `POST /v1/messages`.
#[derive(Debug, Clone, PartialEq, Deserialize, utoipa::ToSchema)]
pub struct MessagesRequest {
    pub model: String,
    pub max_tokens: u32,
    pub messages: Vec<Value>,
    pub system: Option<Value>,
    #[schema(value_type = Option<Vec<String>>)]
    pub stop_sequences: Option<Stop>,
    pub temperature: Option<f32>,
    pub top_p: Option<f32>,
    pub top_k: Option<i64>,
    #[serde(default)]
    pub stream: bool,
    pub tools: Option<Vec<Value>>,
    pub tool_choice: Option<Value>,
    pub metadata: Option<Value>,
    /// `{"type": "enabled", "budget_tokens": n}`: the template is asked to think
    /// (`enable_thinking`); the reasoning parser splits the thinking off.
    pub thinking: Option<Value>,
}

/// `POST /v1/messages/count_tokens`.
#[derive(Debug, Clone, PartialEq, Deserialize, utoipa::ToSchema)]
pub struct CountTokensRequest {
    pub model: String,
    pub messages: Vec<Value>,
    pub system: Option<Value>,
    pub tools: Option<Vec<Value>>,
    pub tool_choice: Option<Value>,
    pub thinking: Option<Value>,
}

impl MessagesRequest {
    pub fn options(&self) -> Result<CompletionOptions, BridgeError> {
        if self.max_tokens == 0 {
            return Err(BridgeError::field("max_tokens", "must be at least 1"));
        }
        // Anthropic's range, narrower than OpenAI's.
        if let Some(t) = self.temperature
            && !(0.0..=1.0).contains(&t)
        {
            return Err(BridgeError::field("temperature", format!("must be between 0 and 1, got {t}")));
        }
        let options = CompletionOptions {
            max_tokens: Some(self.max_tokens),
            temperature: self.temperature,
            top_p: self.top_p,
            top_k: self.top_k,
            stop: self.stop_sequences.clone().unwrap_or_default().0,
            ..Default::default()
        };
        options.validate().map_err(|error| match error {
            BridgeError::InvalidField { field, reason } if field == "stop" => BridgeError::field("stop_sequences", reason),
            other => other,
        })?;
        Ok(options)
    }

    pub fn tools(&self) -> Result<Tools, BridgeError> {
        Tools::from_anthropic(self.tools.as_deref(), self.tool_choice.as_ref())
    }

    pub fn chat_messages(&self) -> Result<Vec<Value>, BridgeError> {
        chat_messages(self.system.as_ref(), &self.messages)
    }

    /// The request's explicit cache breakpoint over [`MessagesRequest::chat_messages`]: the
    /// last system block, tool or content block with `cache_control` (a tool's covers the system
    /// prompt, which the tools are rendered with), with the longest TTL named.
    pub fn cache_breakpoint(&self) -> Result<Option<CacheBreakpoint>, BridgeError> {
        let system_messages = usize::from(!matches!(self.system, None | Some(Value::Null)));
        let mut found: Option<CacheBreakpoint> = None;
        let mut note = |messages: usize, ttl: Option<std::time::Duration>| {
            if let Some(ttl) = ttl {
                found = Some(CacheBreakpoint { messages, ttl }.merge(found));
            }
        };
        for (i, tool) in self.tools.iter().flatten().enumerate() {
            note(system_messages, cache_ttl(tool, &format!("tools[{i}]"))?);
        }
        if let Some(Value::Array(blocks)) = &self.system {
            for (j, block) in blocks.iter().enumerate() {
                note(system_messages, cache_ttl(block, &format!("system[{j}]"))?);
            }
        }
        for (i, message) in self.messages.iter().enumerate() {
            let Some(Value::Array(blocks)) = message.get("content") else { continue };
            let mut ttl = None;
            for (j, block) in blocks.iter().enumerate() {
                ttl = ttl.max(cache_ttl(block, &format!("messages[{i}].content[{j}]"))?);
            }
            if ttl.is_some() {
                // The chat messages through this one (a message may become several: tool results).
                let through = chat_messages(self.system.as_ref(), &self.messages[..=i])?.len();
                note(through, ttl);
            }
        }
        Ok(found.filter(|breakpoint| breakpoint.messages > 0))
    }

    pub fn template_extra(&self, tools: &Tools) -> Map<String, Value> {
        template_extra(tools, self.thinking.as_ref())
    }
}

impl CountTokensRequest {
    pub fn tools(&self) -> Result<Tools, BridgeError> {
        Tools::from_anthropic(self.tools.as_deref(), self.tool_choice.as_ref())
    }

    pub fn chat_messages(&self) -> Result<Vec<Value>, BridgeError> {
        chat_messages(self.system.as_ref(), &self.messages)
    }

    pub fn template_extra(&self, tools: &Tools) -> Map<String, Value> {
        template_extra(tools, self.thinking.as_ref())
    }
}

fn template_extra(tools: &Tools, thinking: Option<&Value>) -> Map<String, Value> {
    let mut extra = Map::new();
    tools.template_variables(&mut extra);
    if let Some(kind) = thinking.and_then(|t| t.get("type")).and_then(Value::as_str) {
        extra.insert("enable_thinking".into(), Value::Bool(kind == "enabled"));
    }
    extra
}

/// The system prompt and messages as chat messages: text blocks joined, `tool_use` blocks as an
/// assistant's `tool_calls`, `tool_result` blocks as `tool` messages (before the user's text),
/// thinking blocks dropped.
fn chat_messages(system: Option<&Value>, messages: &[Value]) -> Result<Vec<Value>, BridgeError> {
    if messages.is_empty() {
        return Err(BridgeError::field("messages", "at least one message is required"));
    }
    let mut chat = Vec::with_capacity(messages.len() + 1);
    match system {
        None | Some(Value::Null) => {}
        Some(Value::String(text)) => chat.push(json!({"role": "system", "content": text})),
        Some(Value::Array(blocks)) => {
            let text = blocks_text(blocks, "system")?;
            chat.push(json!({"role": "system", "content": text}));
        }
        Some(_) => return Err(BridgeError::field("system", "must be a string or a list of text blocks")),
    }
    for (i, message) in messages.iter().enumerate() {
        let field = format!("messages[{i}]");
        let role = match message.get("role").and_then(Value::as_str) {
            Some(role @ ("user" | "assistant")) => role,
            _ => return Err(BridgeError::field(format!("{field}.role"), "must be 'user' or 'assistant'")),
        };
        let blocks = match message.get("content") {
            Some(Value::String(text)) => {
                chat.push(json!({"role": role, "content": text}));
                continue;
            }
            Some(Value::Array(blocks)) => blocks,
            _ => return Err(BridgeError::field(format!("{field}.content"), "must be a string or a list of content blocks")),
        };
        let mut text = String::new();
        let mut calls = Vec::new();
        for (j, block) in blocks.iter().enumerate() {
            let field = format!("{field}.content[{j}]");
            match block.get("type").and_then(Value::as_str) {
                Some("text") => text.push_str(block.get("text").and_then(Value::as_str).unwrap_or_default()),
                Some("tool_use") if role == "assistant" => {
                    let (Some(id), Some(name)) =
                        (block.get("id").and_then(Value::as_str), block.get("name").and_then(Value::as_str))
                    else {
                        return Err(BridgeError::field(field, "a tool_use block needs an id and a name"));
                    };
                    let input = block.get("input").cloned().unwrap_or_else(|| json!({}));
                    calls.push(json!({"id": id, "type": "function", "function": {"name": name, "arguments": input.to_string()}}));
                }
                Some("tool_result") if role == "user" => {
                    let Some(id) = block.get("tool_use_id").and_then(Value::as_str) else {
                        return Err(BridgeError::field(field, "a tool_result block needs a tool_use_id"));
                    };
                    let content = match block.get("content") {
                        None | Some(Value::Null) => String::new(),
                        Some(Value::String(text)) => text.clone(),
                        Some(Value::Array(inner)) => blocks_text(inner, &field)?,
                        Some(_) => {
                            return Err(BridgeError::field(field, "a tool_result's content must be a string or text blocks"));
                        }
                    };
                    chat.push(json!({"role": "tool", "tool_call_id": id, "content": content}));
                }
                Some("thinking" | "redacted_thinking") => {}
                Some(kind) => {
                    return Err(BridgeError::field(
                        field,
                        format!("content blocks of type '{kind}' are not supported in a {role} message"),
                    ));
                }
                None => return Err(BridgeError::field(field, "a content block needs a 'type'")),
            }
        }
        if !calls.is_empty() {
            chat.push(json!({"role": role, "content": text, "tool_calls": calls}));
        } else if !text.is_empty() || !blocks.iter().any(|b| b.get("type").and_then(Value::as_str) == Some("tool_result")) {
            chat.push(json!({"role": role, "content": text}));
        }
    }
    Ok(chat)
}

fn blocks_text(blocks: &[Value], field: &str) -> Result<String, BridgeError> {
    let mut text = String::new();
    for (j, block) in blocks.iter().enumerate() {
        match (block.get("type").and_then(Value::as_str), block.get("text").and_then(Value::as_str)) {
            (Some("text"), Some(piece)) => text.push_str(piece),
            _ => return Err(BridgeError::field(format!("{field}[{j}]"), "only text blocks are supported here")),
        }
    }
    Ok(text)
}

/// A content block of the answer.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ContentBlock {
    Text { text: String },
    ToolUse { id: String, name: String, input: Value },
    Thinking { thinking: String, signature: String },
}

impl ContentBlock {
    /// The blocks of a whole answer: thinking, text, then each tool use.
    pub fn from_parsed(parsed: &ParsedDelta) -> Vec<ContentBlock> {
        let mut blocks = Vec::new();
        let thinking = parsed.reasoning.trim();
        if !thinking.is_empty() {
            blocks.push(ContentBlock::Thinking { thinking: thinking.to_owned(), signature: String::new() });
        }
        if !parsed.content.trim().is_empty() || parsed.tool_calls.is_empty() {
            blocks.push(ContentBlock::Text { text: parsed.content.clone() });
        }
        blocks.extend(parsed.tool_calls.iter().map(ContentBlock::tool_use));
        blocks
    }

    pub fn tool_use(call: &crate::parsers::ToolCall) -> ContentBlock {
        let input = serde_json::from_str(&call.arguments).unwrap_or_else(|_| json!({}));
        ContentBlock::ToolUse { id: tool_use_id(&call.id), name: call.name.clone(), input }
    }
}

/// Anthropic's `toolu_` ids for our `call_` ids.
pub fn tool_use_id(call_id: &str) -> String {
    match call_id.strip_prefix("call_") {
        Some(rest) => format!("toolu_{rest}"),
        None => call_id.to_owned(),
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct AnthropicUsage {
    pub input_tokens: u32,
    pub output_tokens: u32,
    pub cache_creation_input_tokens: u32,
    pub cache_read_input_tokens: u32,
}

impl AnthropicUsage {
    /// Anthropic counts cache reads apart: `input_tokens` are the prompt tokens computed, and
    /// `cache_read_input_tokens` those read from the cache, `cache_creation_input_tokens` those
    /// a cache breakpoint newly wrote (the prompt is the sum of the three).
    pub fn new(prompt_tokens: u32, output_tokens: u32, cached_tokens: u32, pinned_tokens: u32) -> AnthropicUsage {
        let cache_read_input_tokens = cached_tokens.min(prompt_tokens);
        let cache_creation_input_tokens = pinned_tokens.min(prompt_tokens - cache_read_input_tokens);
        AnthropicUsage {
            input_tokens: prompt_tokens - cache_read_input_tokens - cache_creation_input_tokens,
            output_tokens,
            cache_creation_input_tokens,
            cache_read_input_tokens,
        }
    }
}

/// The message object (`type: "message"`).
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct MessageObject {
    pub id: String,
    #[serde(rename = "type")]
    pub kind: &'static str,
    pub role: &'static str,
    pub model: String,
    pub content: Vec<ContentBlock>,
    pub stop_reason: Option<&'static str>,
    pub stop_sequence: Option<String>,
    pub usage: AnthropicUsage,
}

/// Anthropic's error body, `{"type": "error", "error": {"type": …, "message": …}}`, and its status.
pub fn anthropic_error(error: &BridgeError) -> (u16, Value) {
    let status = error.http_status();
    let (status, kind) = match status {
        401 => (401, "authentication_error"),
        403 => (403, "permission_error"),
        404 => (404, "not_found_error"),
        413 => (413, "request_too_large"),
        429 => (429, "rate_limit_error"),
        // Anthropic's "overloaded" status.
        503 => (529, "overloaded_error"),
        400..=499 => (400, "invalid_request_error"),
        _ => (500, "api_error"),
    };
    (status, json!({"type": "error", "error": {"type": kind, "message": error.to_string()}}))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::protocol::parse_json;

    #[test]
    fn blocks_become_chat_messages() {
        let request: MessagesRequest = parse_json(
            br#"{"model": "m", "max_tokens": 16, "system": [{"type": "text", "text": "Be brief."}], "messages": [
                {"role": "user", "content": "Weather in Paris?"},
                {"role": "assistant", "content": [{"type": "thinking", "thinking": "x", "signature": ""},
                    {"type": "text", "text": "Let me check."},
                    {"type": "tool_use", "id": "toolu_1", "name": "get_weather", "input": {"city": "Paris"}}]},
                {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_1", "content": [{"type": "text", "text": "18C"}]},
                    {"type": "text", "text": "And tomorrow?"}]}
            ]}"#,
        )
        .unwrap();
        let chat = request.chat_messages().unwrap();
        assert_eq!(chat[0], json!({"role": "system", "content": "Be brief."}));
        assert_eq!(chat[1], json!({"role": "user", "content": "Weather in Paris?"}));
        assert_eq!(chat[2]["tool_calls"][0]["function"]["arguments"], r#"{"city":"Paris"}"#);
        assert_eq!(chat[2]["content"], "Let me check.");
        assert_eq!(chat[3], json!({"role": "tool", "tool_call_id": "toolu_1", "content": "18C"}));
        assert_eq!(chat[4], json!({"role": "user", "content": "And tomorrow?"}));
    }

    #[test]
    fn bad_requests_name_the_field() {
        let cases = [
            (r#"{"model":"m","max_tokens":1,"messages":[]}"#, "messages"),
            (r#"{"model":"m","max_tokens":1,"messages":[{"role":"system","content":"x"}]}"#, "messages[0].role"),
            (
                r#"{"model":"m","max_tokens":1,"messages":[{"role":"user","content":[{"type":"image"}]}]}"#,
                "messages[0].content[0]",
            ),
            (
                r#"{"model":"m","max_tokens":1,"messages":[{"role":"user","content":[{"type":"tool_use"}]}]}"#,
                "messages[0].content[0]",
            ),
        ];
        for (body, field) in cases {
            let request: MessagesRequest = parse_json(body.as_bytes()).unwrap();
            match request.chat_messages() {
                Err(BridgeError::InvalidField { field: got, .. }) => assert_eq!(got, field, "{body}"),
                other => panic!("{body}: {other:?}"),
            }
        }
        let request: MessagesRequest = parse_json(br#"{"model":"m","max_tokens":1,"messages":[],"temperature":1.5}"#).unwrap();
        assert!(matches!(request.options(), Err(BridgeError::InvalidField { field, .. }) if field == "temperature"));
        assert!(parse_json::<MessagesRequest>(br#"{"model":"m","messages":[]}"#).is_err(), "max_tokens is required");
        let (status, body) = anthropic_error(&BridgeError::ModelNotFound("x".into()));
        assert_eq!((status, body["error"]["type"].as_str()), (404, Some("not_found_error")));
    }
}
