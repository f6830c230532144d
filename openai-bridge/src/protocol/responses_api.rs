//! OpenAI's Responses API (`POST /v1/responses`): the request, its input items turned into chat
//! messages for the template, and the response object with its output items.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};

use super::{NvExt, StreamOptions, Tools, UsageBody, format_constraint};
use crate::BridgeError;
use crate::parsers::{ParsedDelta, ToolCall};
use crate::sampling::{CompletionOptions, MAX_LOGPROBS};

/// `input`: a string (one user message) or a list of items.
#[derive(Debug, Clone, PartialEq, Deserialize, utoipa::ToSchema)]
#[serde(untagged)]
pub enum ResponsesInput {
    Text(String),
    Items(Vec<Value>),
}

/// `text`: only its `format` is read.
#[derive(Debug, Clone, PartialEq, Default, Deserialize, utoipa::ToSchema)]
pub struct TextConfig {
    #[schema(value_type = Option<Object>)]
    pub format: Option<Map<String, Value>>,
}

/// `POST /v1/responses`.
#[derive(Debug, Clone, PartialEq, Deserialize, utoipa::ToSchema)]
pub struct ResponsesRequest {
    pub model: String,
    pub input: ResponsesInput,
    pub instructions: Option<String>,
    pub previous_response_id: Option<String>,
    /// A conversation of the Conversations API (its id, or `{"id": …}`): its items come before
    /// the input, and the input and output are added to it.
    #[schema(value_type = Option<Object>)]
    pub conversation: Option<Value>,
    pub max_output_tokens: Option<u32>,
    pub temperature: Option<f32>,
    pub top_p: Option<f32>,
    pub top_logprobs: Option<u32>,
    pub tools: Option<Vec<Value>>,
    pub tool_choice: Option<Value>,
    pub parallel_tool_calls: Option<bool>,
    pub text: Option<TextConfig>,
    #[serde(default)]
    pub stream: bool,
    pub stream_options: Option<StreamOptions>,
    /// Keep the response for `previous_response_id` and `GET /v1/responses/{id}` (default true).
    pub store: Option<bool>,
    #[schema(value_type = Option<Object>)]
    pub metadata: Option<Map<String, Value>>,
    pub user: Option<String>,
    /// Accepted and echoed; reasoning models are told apart by the server's reasoning parser.
    pub reasoning: Option<Value>,
    pub truncation: Option<String>,
    pub background: Option<bool>,
    pub nvext: Option<NvExt>,
}

impl ResponsesRequest {
    pub fn options(&self) -> Result<CompletionOptions, BridgeError> {
        if self.background == Some(true) {
            if self.store == Some(false) {
                return Err(BridgeError::field("background", "a background response is polled from the store: it needs store"));
            }
            if self.stream {
                return Err(BridgeError::field("background", "a background response is polled; stream it without background"));
            }
        }
        if let Some(truncation) = self.truncation.as_deref()
            && truncation != "disabled"
            && truncation != "auto"
        {
            return Err(BridgeError::field("truncation", format!("must be 'auto' or 'disabled', got '{truncation}'")));
        }
        if self.max_output_tokens == Some(0) {
            return Err(BridgeError::field("max_output_tokens", "must be at least 1"));
        }
        if let Some(top) = self.top_logprobs
            && top > MAX_LOGPROBS
        {
            return Err(BridgeError::field("top_logprobs", format!("must be between 0 and {MAX_LOGPROBS}, got {top}")));
        }
        let mut options = CompletionOptions {
            max_tokens: self.max_output_tokens,
            temperature: self.temperature,
            top_p: self.top_p,
            logprobs: self.top_logprobs,
            constraint: format_constraint(self.text.as_ref().and_then(|text| text.format.as_ref()), "text.format")?,
            ..Default::default()
        };
        options.validate()?;
        if let Some(nvext) = &self.nvext {
            nvext.apply(&mut options)?;
        }
        Ok(options)
    }

    pub fn tools(&self) -> Result<Tools, BridgeError> {
        Tools::from_responses(self.tools.as_deref(), self.tool_choice.as_ref())
    }

    /// The conversation's id, however it was named (a string, or an object's `id`).
    pub fn conversation_id(&self) -> Option<&str> {
        match self.conversation.as_ref()? {
            Value::String(id) => Some(id),
            other => other.get("id")?.as_str(),
        }
    }

    /// The input as items (a text is one user message), for a conversation to keep.
    pub fn input_items(&self) -> Vec<Value> {
        match &self.input {
            ResponsesInput::Text(text) => vec![json!({"type": "message", "role": "user", "content": text})],
            ResponsesInput::Items(items) => items.clone(),
        }
    }

    /// The input as chat messages (without `instructions`, which are not carried to the next turn).
    pub fn input_messages(&self) -> Result<Vec<Value>, BridgeError> {
        match &self.input {
            ResponsesInput::Text(text) => Ok(vec![json!({"role": "user", "content": text})]),
            ResponsesInput::Items(items) if items.is_empty() => Err(BridgeError::field("input", "at least one item is required")),
            ResponsesInput::Items(items) => items_to_messages(items),
        }
    }
}

/// Input items as chat messages: messages keep their role (`developer` is `system`), function
/// calls become an assistant message's `tool_calls` (consecutive ones share it), outputs become
/// `tool` messages, reasoning items are dropped.
pub fn items_to_messages(items: &[Value]) -> Result<Vec<Value>, BridgeError> {
    let mut messages: Vec<Value> = Vec::with_capacity(items.len());
    for (i, item) in items.iter().enumerate() {
        let field = || format!("input[{i}]");
        let Some(object) = item.as_object() else {
            return Err(BridgeError::field(field(), "an input item must be an object"));
        };
        let text = |key: &str| object.get(key).and_then(Value::as_str).map(str::to_owned);
        match object.get("type").and_then(Value::as_str) {
            None | Some("message") => {
                let role = match object.get("role").and_then(Value::as_str) {
                    Some("developer" | "system") => "system",
                    Some(role @ ("user" | "assistant")) => role,
                    _ => return Err(BridgeError::field(field(), "a message needs a role: user, assistant, system or developer")),
                };
                let content = content_text(object.get("content")).map_err(|reason| BridgeError::field(field(), reason))?;
                messages.push(json!({"role": role, "content": content}));
            }
            Some("function_call") => {
                let (Some(call_id), Some(name)) = (text("call_id"), text("name")) else {
                    return Err(BridgeError::field(field(), "a function_call needs a call_id and a name"));
                };
                let arguments = text("arguments").unwrap_or_else(|| "{}".to_owned());
                let call = json!({"id": call_id, "type": "function", "function": {"name": name, "arguments": arguments}});
                match messages.last_mut() {
                    Some(last) if last.get("tool_calls").is_some() && last["role"] == "assistant" => {
                        if let Some(Value::Array(calls)) = last.get_mut("tool_calls") {
                            calls.push(call);
                        }
                    }
                    _ => messages.push(json!({"role": "assistant", "content": null, "tool_calls": [call]})),
                }
            }
            Some("function_call_output") => {
                let Some(call_id) = text("call_id") else {
                    return Err(BridgeError::field(field(), "a function_call_output needs a call_id"));
                };
                let output = match object.get("output") {
                    Some(Value::String(output)) => output.clone(),
                    other => content_text(other).map_err(|reason| BridgeError::field(field(), reason))?,
                };
                messages.push(json!({"role": "tool", "tool_call_id": call_id, "content": output}));
            }
            Some("reasoning") => {}
            Some(other) => return Err(BridgeError::field(field(), format!("input items of type '{other}' are not supported"))),
        }
    }
    Ok(messages)
}

/// A message's content as text: a string, or text parts (`input_text`, `output_text`, `text`).
fn content_text(content: Option<&Value>) -> Result<String, String> {
    match content {
        Some(Value::String(text)) => Ok(text.clone()),
        Some(Value::Array(parts)) => {
            let mut text = String::new();
            for (j, part) in parts.iter().enumerate() {
                match (part.get("type").and_then(Value::as_str), part.get("text").and_then(Value::as_str)) {
                    (Some("input_text" | "output_text" | "text"), Some(piece)) => text.push_str(piece),
                    (Some(kind), _) => return Err(format!("content part {j} has type '{kind}'; only text parts are supported")),
                    (None, _) => return Err(format!("content part {j} has no 'type'")),
                }
            }
            Ok(text)
        }
        _ => Err("content must be a string or a list of text parts".to_owned()),
    }
}

/// The assistant's turn as a chat message, for the conversation a later request continues.
pub fn assistant_message(parsed: &ParsedDelta) -> Value {
    let calls: Vec<Value> = parsed
        .tool_calls
        .iter()
        .map(|call| json!({"id": call.id, "type": "function", "function": {"name": call.name, "arguments": call.arguments}}))
        .collect();
    let mut message = json!({"role": "assistant", "content": parsed.content});
    if !calls.is_empty() {
        message["tool_calls"] = Value::Array(calls);
    }
    message
}

/// The response object (`object: "response"`).
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct ResponseObject {
    pub id: String,
    pub object: &'static str,
    pub created_at: u64,
    /// `queued`, `in_progress`, `completed`, `incomplete`, `cancelled` or `failed`.
    pub status: &'static str,
    /// Generated after the request was answered, and polled (`background: true`).
    pub background: bool,
    pub error: Option<ResponseError>,
    pub incomplete_details: Option<IncompleteDetails>,
    pub instructions: Option<String>,
    pub max_output_tokens: Option<u32>,
    pub model: String,
    pub output: Vec<OutputItem>,
    pub parallel_tool_calls: bool,
    pub previous_response_id: Option<String>,
    /// The conversation the response belongs to (`{"id": …}`).
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub conversation: Option<Value>,
    pub reasoning: Value,
    pub store: bool,
    pub temperature: f32,
    pub text: Value,
    pub tool_choice: Value,
    pub tools: Vec<Value>,
    pub top_p: f32,
    pub truncation: String,
    pub usage: Option<ResponseUsage>,
    pub user: Option<String>,
    #[schema(value_type = Object)]
    pub metadata: Map<String, Value>,
}

impl ResponseObject {
    /// The response before any output: what the request asked for, echoed.
    pub fn new(id: String, created_at: u64, request: &ResponsesRequest) -> ResponseObject {
        ResponseObject {
            id,
            object: "response",
            created_at,
            status: "in_progress",
            background: request.background.unwrap_or(false),
            error: None,
            incomplete_details: None,
            instructions: request.instructions.clone(),
            max_output_tokens: request.max_output_tokens,
            model: request.model.clone(),
            output: Vec::new(),
            parallel_tool_calls: request.parallel_tool_calls.unwrap_or(true),
            previous_response_id: request.previous_response_id.clone(),
            conversation: request.conversation_id().map(|id| json!({"id": id})),
            reasoning: request.reasoning.clone().unwrap_or_else(|| json!({"effort": null, "summary": null})),
            store: request.store.unwrap_or(true),
            temperature: request.temperature.unwrap_or(1.0),
            text: json!({"format": request.text.as_ref().and_then(|t| t.format.clone()).map_or(json!({"type": "text"}), Value::Object)}),
            tool_choice: request.tool_choice.clone().unwrap_or_else(|| json!("auto")),
            tools: request.tools.clone().unwrap_or_default(),
            top_p: request.top_p.unwrap_or(1.0),
            truncation: request.truncation.clone().unwrap_or_else(|| "disabled".to_owned()),
            usage: None,
            user: request.user.clone(),
            metadata: request.metadata.clone().unwrap_or_default(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct ResponseError {
    pub code: &'static str,
    pub message: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct IncompleteDetails {
    pub reason: &'static str,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct ResponseUsage {
    pub input_tokens: u32,
    pub input_tokens_details: CachedTokens,
    pub output_tokens: u32,
    pub output_tokens_details: ReasoningTokens,
    pub total_tokens: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct CachedTokens {
    pub cached_tokens: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct ReasoningTokens {
    pub reasoning_tokens: u32,
}

impl From<UsageBody> for ResponseUsage {
    fn from(usage: UsageBody) -> ResponseUsage {
        ResponseUsage {
            input_tokens: usage.prompt_tokens,
            input_tokens_details: CachedTokens { cached_tokens: usage.prompt_tokens_details.cached_tokens },
            output_tokens: usage.completion_tokens,
            output_tokens_details: ReasoningTokens { reasoning_tokens: 0 },
            total_tokens: usage.total_tokens,
        }
    }
}

/// One output item.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum OutputItem {
    Message { id: String, status: &'static str, role: &'static str, content: Vec<OutputText> },
    FunctionCall { id: String, call_id: String, name: String, arguments: String, status: &'static str },
    Reasoning { id: String, summary: Vec<Value>, content: Vec<ReasoningText> },
}

impl OutputItem {
    pub fn message(id: String, text: String, status: &'static str) -> OutputItem {
        let content = if status == "in_progress" { Vec::new() } else { vec![OutputText::new(text)] };
        OutputItem::Message { id, status, role: "assistant", content }
    }

    pub fn function_call(id: String, call: &ToolCall, arguments: String, status: &'static str) -> OutputItem {
        OutputItem::FunctionCall { id, call_id: call.id.clone(), name: call.name.clone(), arguments, status }
    }

    pub fn reasoning(id: String, text: String) -> OutputItem {
        let content = if text.is_empty() { Vec::new() } else { vec![ReasoningText::new(text)] };
        OutputItem::Reasoning { id, summary: Vec::new(), content }
    }
}

/// An `output_text` content part.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct OutputText {
    #[serde(rename = "type")]
    pub kind: &'static str,
    pub text: String,
    pub annotations: Vec<Value>,
    pub logprobs: Vec<Value>,
}

impl OutputText {
    pub fn new(text: String) -> OutputText {
        OutputText { kind: "output_text", text, annotations: Vec::new(), logprobs: Vec::new() }
    }
}

/// A `reasoning_text` content part.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct ReasoningText {
    #[serde(rename = "type")]
    pub kind: &'static str,
    pub text: String,
}

impl ReasoningText {
    pub fn new(text: String) -> ReasoningText {
        ReasoningText { kind: "reasoning_text", text }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::protocol::parse_json;

    #[test]
    fn items_become_chat_messages() {
        let request: ResponsesRequest = parse_json(
            br#"{"model": "m", "input": [
                {"role": "developer", "content": "Be brief."},
                {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "Weather in "}, {"type": "input_text", "text": "Paris?"}]},
                {"type": "reasoning", "id": "rs_1", "summary": []},
                {"type": "function_call", "call_id": "call_1", "name": "get_weather", "arguments": "{\"city\":\"Paris\"}"},
                {"type": "function_call", "call_id": "call_2", "name": "get_time", "arguments": "{}"},
                {"type": "function_call_output", "call_id": "call_1", "output": "18C"},
                {"type": "function_call_output", "call_id": "call_2", "output": [{"type": "input_text", "text": "noon"}]}
            ]}"#,
        )
        .unwrap();
        let messages = request.input_messages().unwrap();
        assert_eq!(messages.len(), 5);
        assert_eq!(messages[0], json!({"role": "system", "content": "Be brief."}));
        assert_eq!(messages[1], json!({"role": "user", "content": "Weather in Paris?"}));
        assert_eq!(messages[2]["tool_calls"].as_array().unwrap().len(), 2);
        assert_eq!(messages[3], json!({"role": "tool", "tool_call_id": "call_1", "content": "18C"}));
        assert_eq!(messages[4]["content"], "noon");
    }

    #[test]
    fn bad_inputs_name_the_item() {
        let bad = [
            (r#"{"model":"m","input":[]}"#, "input"),
            (r#"{"model":"m","input":[{"role":"robot","content":"x"}]}"#, "input[0]"),
            (r#"{"model":"m","input":[{"role":"user","content":[{"type":"input_image"}]}]}"#, "input[0]"),
            (r#"{"model":"m","input":["x", {"type":"web_search_call"}]}"#, "input[0]"),
            (r#"{"model":"m","input":[{"type":"function_call","name":"f"}]}"#, "input[0]"),
        ];
        for (body, field) in bad {
            let request: ResponsesRequest = parse_json(body.as_bytes()).unwrap();
            match request.input_messages() {
                Err(BridgeError::InvalidField { field: got, .. }) => assert_eq!(got, field, "{body}"),
                other => panic!("{body}: {other:?}"),
            }
        }
        let request: ResponsesRequest = parse_json(br#"{"model":"m","input":"x","text":{"format":{"type":"json"}}}"#).unwrap();
        assert!(request.options().is_err());
        let request: ResponsesRequest = parse_json(br#"{"model":"m","input":"x","max_output_tokens":0}"#).unwrap();
        assert!(request.options().is_err());
    }
}
