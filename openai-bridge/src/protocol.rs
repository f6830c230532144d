//! The OpenAI HTTP API as serde types: the requests of `/v1/completions`, `/v1/chat/completions`
//! and `/v1/embeddings` (with vLLM's sampling extras), the responses and streaming chunks,
//! `/v1/models`, and the error body.
//!
//! Unknown JSON fields are ignored; a field of the wrong type is an error naming the field
//! ([`parse_json`]). Each generating request turns into [`CompletionOptions`] with `options()`.
//!
//! ```
//! use tritium_openai_bridge::protocol::{CompletionRequest, Prompt, Prompts, parse_json};
//!
//! let request: CompletionRequest = parse_json(br#"{"model": "tiny", "prompt": ["Hi", [1, 2]], "max_tokens": 4}"#)?;
//! assert_eq!(request.prompt, Prompts(vec![Prompt::Text("Hi".into()), Prompt::Tokens(vec![1, 2])]));
//! assert_eq!(request.options()?.max_tokens, Some(4));
//!
//! let error = parse_json::<CompletionRequest>(br#"{"model": "tiny", "prompt": "Hi", "top_p": "high"}"#).unwrap_err();
//! assert!(error.to_string().starts_with("top_p:"));
//! # Ok::<(), tritium_openai_bridge::BridgeError>(())
//! ```

mod anthropic;
mod cache_control;
mod nvext;
mod responses;
mod responses_api;
mod structured;
mod tools;

use serde::de::{DeserializeOwned, Error as _};
use serde::{Deserialize, Deserializer};
use serde_json::{Map, Value};

pub use self::anthropic::*;
pub use self::cache_control::{CacheBreakpoint, DEFAULT_CACHE_TTL, LONG_CACHE_TTL, cache_ttl, chat_breakpoint};
pub use self::nvext::{ANNOTATIONS, AgentHints, EXTRA_FIELDS, NvExt};
pub use self::responses::*;
pub use self::responses_api::*;
pub use self::structured::{Guided, MAX_CHOICES, forced_calls, format_constraint};
pub use self::tools::{MAX_TOOLS, ToolChoice, ToolSpec, Tools};
use crate::BridgeError;
use crate::sampling::{CompletionLimits, CompletionOptions, MAX_LOGPROBS};

/// Parses a request body: bad JSON, a non-object, or a field of the wrong type give a
/// [`BridgeError`] whose message names the field.
pub fn parse_json<T: DeserializeOwned>(body: &[u8]) -> Result<T, BridgeError> {
    // An object is read straight into its type: a JSON tree first cost a map and a key per field.
    // Whatever that refuses (a duplicate field, say, which the tree takes the last of) is decided
    // by the tree, as before, which also names the field.
    if body.trim_ascii_start().first() == Some(&b'{')
        && let Ok(parsed) = serde_json::from_slice::<T>(body)
    {
        return Ok(parsed);
    }
    parse_json_tree(body)
}

/// [`parse_json`] through a JSON tree: what it decides for a body its type refuses.
pub(crate) fn parse_json_tree<T: DeserializeOwned>(body: &[u8]) -> Result<T, BridgeError> {
    let value: Value =
        serde_json::from_slice(body).map_err(|e| BridgeError::InvalidBody(format!("the request body is not valid JSON: {e}")))?;
    if !value.is_object() {
        return Err(BridgeError::InvalidBody("the request body must be a JSON object".into()));
    }
    // Taken apart, not copied: an agent's request is its whole conversation.
    let error = match T::deserialize(value) {
        Ok(parsed) => return Ok(parsed),
        Err(error) => error.to_string(),
    };
    // Only a refused body is parsed twice, to find the field to name.
    let value: Value =
        serde_json::from_slice(body).map_err(|e| BridgeError::InvalidBody(format!("the request body is not valid JSON: {e}")))?;
    if let Some(field) = error.strip_prefix("missing field `").and_then(|rest| rest.strip_suffix('`')) {
        return Err(BridgeError::field(field, "is required"));
    }
    Err(match culprit::<T>(value, &error) {
        Some(field) => BridgeError::field(field, error),
        None => BridgeError::InvalidBody(error),
    })
}

/// serde's errors on a `Value` carry no path. The culprit is the top-level field whose removal
/// makes the error go away or change (fields are visited in order and the first bad one is
/// reported). A required field's removal only says "missing field", so a required culprit is
/// the one field whose removal says that and nothing else changes the error.
fn culprit<T: DeserializeOwned>(mut value: Value, error: &str) -> Option<String> {
    // Bounded: unknown fields never cause errors, and a body with thousands of keys must not
    // cost thousands of parses.
    const MAX_TRIES: usize = 64;
    let keys: Vec<String> = value.as_object()?.keys().take(MAX_TRIES).cloned().collect();
    let mut required = None;
    for key in keys {
        let removed = value.as_object_mut()?.remove(&key)?;
        let outcome = T::deserialize(&value).map_err(|e| e.to_string());
        value.as_object_mut()?.insert(key.clone(), removed);
        match outcome {
            Ok(_) => return Some(key),
            Err(other) if other == format!("missing field `{key}`") => {
                required.get_or_insert(key);
            }
            Err(other) if other != error => return Some(key),
            Err(_) => {}
        }
    }
    required
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Deserialize, utoipa::ToSchema)]
pub struct StreamOptions {
    #[serde(default)]
    pub include_usage: bool,
}

/// A completion prompt: text, or token ids.
#[derive(Debug, Clone, PartialEq)]
pub enum Prompt {
    Text(String),
    Tokens(Vec<u32>),
}

/// `prompt`: one prompt or a list of them, each answered by its own choice. The server bounds
/// the list ([`CompletionLimits::max_prompts`](crate::sampling::CompletionLimits)).
#[derive(Debug, Clone, PartialEq)]
pub struct Prompts(pub Vec<Prompt>);

impl<'de> Deserialize<'de> for Prompts {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Prompts, D::Error> {
        const EXPECTED: &str = "expected a string, an array of strings, an array of token ids or an array of token id arrays";
        match Value::deserialize(deserializer)? {
            Value::String(text) => Ok(Prompts(vec![Prompt::Text(text)])),
            Value::Array(items) if items.is_empty() => Err(D::Error::custom("the prompt is empty")),
            Value::Array(items) if items.iter().all(Value::is_number) => {
                token_ids(&items).map(|ids| Prompts(vec![Prompt::Tokens(ids)])).ok_or_else(|| D::Error::custom(EXPECTED))
            }
            Value::Array(items) => items
                .into_iter()
                .map(|item| match item {
                    Value::String(text) => Some(Prompt::Text(text)),
                    Value::Array(ids) if !ids.is_empty() => token_ids(&ids).map(Prompt::Tokens),
                    _ => None,
                })
                .collect::<Option<Vec<_>>>()
                .map(Prompts)
                .ok_or_else(|| D::Error::custom(EXPECTED)),
            _ => Err(D::Error::custom(EXPECTED)),
        }
    }
}

fn token_ids(items: &[Value]) -> Option<Vec<u32>> {
    items.iter().map(|v| v.as_u64().and_then(|id| u32::try_from(id).ok())).collect()
}

/// `stop`: a string or a list of strings.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Stop(pub Vec<String>);

impl<'de> Deserialize<'de> for Stop {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Stop, D::Error> {
        match Value::deserialize(deserializer)? {
            Value::Null => Ok(Stop(Vec::new())),
            Value::String(s) => Ok(Stop(vec![s])),
            Value::Array(items) => items
                .into_iter()
                .map(|item| match item {
                    Value::String(s) => Ok(s),
                    _ => Err(D::Error::custom("expected a string or an array of strings")),
                })
                .collect::<Result<_, _>>()
                .map(Stop),
            _ => Err(D::Error::custom("expected a string or an array of strings")),
        }
    }
}

/// The sampling fields `/v1/completions` and `/v1/chat/completions` share.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, utoipa::ToSchema)]
pub struct SamplingFields {
    pub temperature: Option<f32>,
    pub top_p: Option<f32>,
    pub n: Option<u32>,
    /// A string or a list of strings.
    #[schema(value_type = Option<serde_json::Value>)]
    pub stop: Option<Stop>,
    pub seed: Option<u64>,
    pub presence_penalty: Option<f32>,
    pub frequency_penalty: Option<f32>,
    // vLLM's extras.
    pub top_k: Option<i64>,
    pub repetition_penalty: Option<f32>,
    pub min_tokens: Option<u32>,
    pub ignore_eos: Option<bool>,
    pub stop_token_ids: Option<Vec<u32>>,
    /// vLLM's: leave out tokens less likely than `min_p` times the most likely one (0..=1).
    pub min_p: Option<f32>,
    /// Token ids (as strings) to biases from -100 (banned) to 100 (all but forced), added to the
    /// logits before sampling.
    #[schema(value_type = Option<Object>)]
    pub logit_bias: Option<Map<String, Value>>,
    /// vLLM's: the request's place under `--scheduling-policy priority`, lower first (0 is the
    /// default; `nvext.agent_hints.priority`, higher first, takes its place when both are given).
    pub priority: Option<i64>,
    /// vLLM's guided decoding at the top level, where Dynamo's frontend reads it too (also
    /// accepted under `nvext`); at most one, and not with `response_format`.
    #[schema(value_type = Option<Object>)]
    pub guided_json: Option<Value>,
    pub guided_regex: Option<String>,
    pub guided_choice: Option<Vec<String>>,
    pub guided_grammar: Option<String>,
    /// vLLM's; refused by name: Tritium's engine and its grammar library decide whitespace and the
    /// library themselves.
    pub guided_whitespace_pattern: Option<String>,
    pub guided_decoding_backend: Option<String>,
}

impl SamplingFields {
    /// How many choices to answer with (`n`) and to generate (`best_of`, at least `n`: the `n` most
    /// likely are answered), within the server's bounds.
    pub fn choices(&self, best_of: Option<u32>, stream: bool, limits: &CompletionLimits) -> Result<(usize, usize), BridgeError> {
        let n = self.n.unwrap_or(1);
        let max = limits.max_choices;
        if n == 0 || n as usize > max {
            return Err(BridgeError::field("n", format!("must be between 1 and {max}, got {n}")));
        }
        let best_of = best_of.unwrap_or(n);
        if best_of < n || best_of as usize > max {
            return Err(BridgeError::field("best_of", format!("must be between n ({n}) and {max}, got {best_of}")));
        }
        if best_of > n && stream {
            return Err(BridgeError::field("best_of", "best_of greater than n is not supported with stream"));
        }
        Ok((n as usize, best_of as usize))
    }

    fn guided(&self) -> Guided {
        Guided {
            guided_json: self.guided_json.clone(),
            guided_regex: self.guided_regex.clone(),
            guided_choice: self.guided_choice.clone(),
            guided_grammar: self.guided_grammar.clone(),
        }
    }

    fn options(&self, max_tokens: Option<u32>, logprobs: Option<u32>) -> Result<CompletionOptions, BridgeError> {
        for (field, given) in [
            ("guided_whitespace_pattern", self.guided_whitespace_pattern.is_some()),
            ("guided_decoding_backend", self.guided_decoding_backend.is_some()),
        ] {
            if given {
                return Err(BridgeError::field(field, "is not supported: the engine's grammar library (llguidance) decides it"));
            }
        }
        let logit_bias = match &self.logit_bias {
            Some(map) => crate::sampling::logit_bias_of(map)?,
            None => Vec::new(),
        };
        let options = CompletionOptions {
            max_tokens,
            temperature: self.temperature,
            top_p: self.top_p,
            top_k: self.top_k,
            seed: self.seed,
            presence_penalty: self.presence_penalty,
            frequency_penalty: self.frequency_penalty,
            repetition_penalty: self.repetition_penalty,
            stop: self.stop.clone().unwrap_or_default().0,
            stop_token_ids: self.stop_token_ids.clone().unwrap_or_default(),
            ignore_eos: self.ignore_eos.unwrap_or(false),
            min_tokens: self.min_tokens,
            logprobs,
            constraint: self.guided().constraint("")?,
            prompt_logprobs: None,
            min_p: self.min_p,
            logit_bias,
            priority: self.priority,
            strict_priority: None,
            adapter: None,
            pin: None,
        };
        options.validate()?;
        Ok(options)
    }
}

/// `POST /v1/completions`.
#[derive(Debug, Clone, PartialEq, Deserialize, utoipa::ToSchema)]
pub struct CompletionRequest {
    pub model: String,
    /// A string, a list of strings, token ids, or a list of token-id lists (one choice each).
    #[schema(value_type = serde_json::Value)]
    pub prompt: Prompts,
    pub max_tokens: Option<u32>,
    #[serde(default)]
    pub stream: bool,
    pub stream_options: Option<StreamOptions>,
    /// Report this many alternatives per token (0..=20).
    pub logprobs: Option<u32>,
    /// Answer the prompt before the completion, with its tokens' log-probabilities when
    /// `logprobs` is set (prompt scoring; `max_tokens: 0` scores the prompt alone).
    pub echo: Option<bool>,
    /// vLLM's: each prompt token's log-probability and this many alternatives, in the choice's
    /// `prompt_logprobs` (0..=20).
    pub prompt_logprobs: Option<u32>,
    /// Generate this many choices and answer with the `n` most likely (at least `n`; not with
    /// `stream`).
    pub best_of: Option<u32>,
    pub user: Option<String>,
    pub nvext: Option<NvExt>,
    #[serde(flatten)]
    pub sampling: SamplingFields,
}

impl CompletionRequest {
    pub fn options(&self) -> Result<CompletionOptions, BridgeError> {
        let echo = self.echo.unwrap_or(false);
        if echo && self.stream {
            return Err(BridgeError::field("echo", "echo is not supported with stream"));
        }
        if self.prompt_logprobs.is_some() && self.stream {
            return Err(BridgeError::field("prompt_logprobs", "prompt_logprobs is not supported with stream"));
        }
        if let Some(top) = self.prompt_logprobs
            && top > MAX_LOGPROBS
        {
            return Err(BridgeError::field("prompt_logprobs", format!("must be between 0 and {MAX_LOGPROBS}, got {top}")));
        }
        // The engine always makes the token after the prompt (from the prompt's last row, at no
        // extra cost); with `max_tokens: 0` the route leaves it out.
        let max_tokens = if self.prompt_only() { Some(1) } else { self.max_tokens };
        let mut options = self.sampling.options(max_tokens, self.logprobs)?;
        options.prompt_logprobs = match (echo.then_some(self.logprobs).flatten(), self.prompt_logprobs) {
            (Some(a), Some(b)) => Some(a.max(b)),
            (a, b) => a.or(b),
        };
        if let Some(nvext) = &self.nvext {
            nvext.apply(&mut options)?;
        }
        Ok(options)
    }

    /// `max_tokens: 0` with `echo` or `prompt_logprobs`: the prompt is scored, nothing generated.
    pub fn prompt_only(&self) -> bool {
        self.max_tokens == Some(0) && (self.echo == Some(true) || self.prompt_logprobs.is_some())
    }

    pub fn include_usage(&self) -> bool {
        self.stream_options.is_some_and(|o| o.include_usage)
    }
}

/// `POST /v1/chat/completions`. Messages stay JSON: the chat template reads them.
#[derive(Debug, Clone, PartialEq, Deserialize, utoipa::ToSchema)]
pub struct ChatCompletionRequest {
    pub model: String,
    #[schema(value_type = Vec<Object>)]
    pub messages: Vec<Map<String, Value>>,
    pub max_tokens: Option<u32>,
    /// OpenAI's newer name for `max_tokens`; it wins when both are given.
    pub max_completion_tokens: Option<u32>,
    #[serde(default)]
    pub stream: bool,
    pub stream_options: Option<StreamOptions>,
    pub logprobs: Option<bool>,
    pub top_logprobs: Option<u32>,
    #[schema(value_type = Option<Object>)]
    pub response_format: Option<Map<String, Value>>,
    /// Passed to the chat template.
    pub tools: Option<Vec<Value>>,
    pub tool_choice: Option<Value>,
    /// vLLM's extra template variables.
    #[schema(value_type = Option<Object>)]
    pub chat_template_kwargs: Option<Map<String, Value>>,
    /// vLLM's switch; on by default.
    pub add_generation_prompt: Option<bool>,
    pub user: Option<String>,
    /// vLLM takes it on chat too; here only when it equals `n` (a chat answers its `n` choices).
    pub best_of: Option<u32>,
    pub nvext: Option<NvExt>,
    #[serde(flatten)]
    pub sampling: SamplingFields,
}

impl ChatCompletionRequest {
    pub fn options(&self) -> Result<CompletionOptions, BridgeError> {
        let logprobs = match (self.logprobs.unwrap_or(false), self.top_logprobs) {
            (true, top) => Some(top.unwrap_or(0)),
            (false, Some(_)) => return Err(BridgeError::field("top_logprobs", "requires logprobs to be true")),
            (false, None) => None,
        };
        if let Some(top) = self.top_logprobs
            && top > MAX_LOGPROBS
        {
            return Err(BridgeError::field("top_logprobs", format!("must be between 0 and {MAX_LOGPROBS}, got {top}")));
        }
        if self.max_completion_tokens == Some(0) {
            return Err(BridgeError::field("max_completion_tokens", "must be at least 1"));
        }
        let mut options = self.sampling.options(self.max_completion_tokens.or(self.max_tokens), logprobs)?;
        if let Some(format) = format_constraint(self.response_format.as_ref(), "response_format")? {
            if options.constraint.is_some() {
                return Err(BridgeError::field("response_format", "cannot be combined with guided decoding"));
            }
            options.constraint = Some(format);
        }
        if let Some(nvext) = &self.nvext {
            nvext.apply(&mut options)?;
        }
        Ok(options)
    }

    pub fn include_usage(&self) -> bool {
        self.stream_options.is_some_and(|o| o.include_usage)
    }

    /// The messages for the template: each needs a string `role`; content given as a list of
    /// text parts is joined into one string, since templates expect text.
    pub fn template_messages(&self) -> Result<Vec<Value>, BridgeError> {
        Self::as_template_messages(self.messages.clone())
    }

    /// [`Self::template_messages`], taken out of the request rather than copied (an agent's
    /// request is its whole conversation); `messages` is empty after.
    pub fn take_template_messages(&mut self) -> Result<Vec<Value>, BridgeError> {
        Self::as_template_messages(std::mem::take(&mut self.messages))
    }

    fn as_template_messages(messages: Vec<Map<String, Value>>) -> Result<Vec<Value>, BridgeError> {
        if messages.is_empty() {
            return Err(BridgeError::field("messages", "at least one message is required"));
        }
        messages
            .into_iter()
            .enumerate()
            .map(|(i, mut message)| {
                if !message.get("role").is_some_and(Value::is_string) {
                    return Err(BridgeError::field(format!("messages[{i}].role"), "a string role is required"));
                }
                if let Some(Value::Array(parts)) = message.get("content") {
                    let text =
                        join_text_parts(parts).map_err(|reason| BridgeError::field(format!("messages[{i}].content"), reason))?;
                    message.insert("content".into(), Value::String(text));
                }
                Ok(Value::Object(message))
            })
            .collect()
    }

    /// The request's tools, checked.
    pub fn tools(&self) -> Result<Tools, BridgeError> {
        Tools::from_chat(self.tools.as_deref(), self.tool_choice.as_ref())
    }

    /// Template variables beyond `messages`: `tools`, `tool_choice` and `chat_template_kwargs`.
    pub fn template_extra(&self, tools: &Tools) -> Option<Map<String, Value>> {
        let mut extra = self.chat_template_kwargs.clone().unwrap_or_default();
        tools.template_variables(&mut extra);
        (!extra.is_empty()).then_some(extra)
    }
}

fn join_text_parts(parts: &[Value]) -> Result<String, String> {
    let mut text = String::new();
    for part in parts {
        match (part.get("type").and_then(Value::as_str), part.get("text").and_then(Value::as_str)) {
            (Some("text"), Some(piece)) => text.push_str(piece),
            (kind, _) => return Err(format!("only text content parts are supported, got {}", kind.unwrap_or("an untyped part"))),
        }
    }
    Ok(text)
}

/// `POST /v1/embeddings` input: texts or token ids.
#[derive(Debug, Clone, PartialEq)]
pub enum EmbeddingInput {
    Texts(Vec<String>),
    Tokens(Vec<Vec<u32>>),
}

impl EmbeddingInput {
    pub fn len(&self) -> usize {
        match self {
            EmbeddingInput::Texts(texts) => texts.len(),
            EmbeddingInput::Tokens(tokens) => tokens.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl<'de> Deserialize<'de> for EmbeddingInput {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<EmbeddingInput, D::Error> {
        const EXPECTED: &str = "expected a string, an array of strings, an array of token ids or an array of token id arrays";
        match Value::deserialize(deserializer)? {
            Value::String(text) => Ok(EmbeddingInput::Texts(vec![text])),
            Value::Array(items) if items.iter().all(Value::is_string) => {
                Ok(EmbeddingInput::Texts(items.into_iter().filter_map(|v| v.as_str().map(str::to_string)).collect()))
            }
            Value::Array(items) if items.iter().all(Value::is_number) => {
                token_ids(&items).map(|ids| EmbeddingInput::Tokens(vec![ids])).ok_or_else(|| D::Error::custom(EXPECTED))
            }
            Value::Array(items) => items
                .iter()
                .map(|item| item.as_array().and_then(|ids| token_ids(ids)))
                .collect::<Option<Vec<_>>>()
                .map(EmbeddingInput::Tokens)
                .ok_or_else(|| D::Error::custom(EXPECTED)),
            _ => Err(D::Error::custom(EXPECTED)),
        }
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum EncodingFormat {
    #[default]
    Float,
    Base64,
}

/// `POST /v1/embeddings`.
#[derive(Debug, Clone, PartialEq, Deserialize, utoipa::ToSchema)]
pub struct EmbeddingRequest {
    pub model: String,
    /// A string, a list of strings, token ids, or a list of token-id lists.
    #[schema(value_type = serde_json::Value)]
    pub input: EmbeddingInput,
    pub encoding_format: Option<EncodingFormat>,
    pub dimensions: Option<u32>,
    pub user: Option<String>,
}

impl EmbeddingRequest {
    /// Checks what the bridge does not support and that no input is empty.
    pub fn validate(&self) -> Result<(), BridgeError> {
        if self.dimensions.is_some() {
            return Err(BridgeError::field("dimensions", "choosing the number of dimensions is not supported"));
        }
        if self.input.is_empty() {
            return Err(BridgeError::field("input", "at least one input is required"));
        }
        let empty = match &self.input {
            EmbeddingInput::Texts(texts) => texts.iter().position(String::is_empty),
            EmbeddingInput::Tokens(tokens) => tokens.iter().position(Vec::is_empty),
        };
        match empty {
            Some(i) => Err(BridgeError::field(format!("input[{i}]"), "must not be empty")),
            None => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests;
