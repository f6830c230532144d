//! Completion options: the sampling and stopping knobs every front end accepts (OpenAI JSON,
//! KServe request parameters), validated once against OpenAI's ranges and turned into the
//! worker's [`GenerateRequest`].
//!
//! ```
//! use tritium_openai_bridge::sampling::CompletionOptions;
//!
//! let options = CompletionOptions { temperature: Some(3.0), ..Default::default() };
//! let error = options.validate().unwrap_err();
//! assert!(error.to_string().starts_with("temperature:"));
//! ```

use tritium_backend_api::llm::{Constraint, GenerateRequest, ModelCard, Priority, SamplingOptions, StopOptions};
use tritium_backend_api::{ParamValue, Parameters};

use crate::BridgeError;

/// OpenAI allows 4 stop strings; vLLM allows any number. 16 keeps the per-token matching cheap.
pub const DEFAULT_MAX_STOP_STRINGS: usize = 16;
/// The text stream holds back as many bytes as the longest stop string, and matches each one
/// against every token's text.
pub const DEFAULT_MAX_STOP_STRING_BYTES: usize = 1024;
/// `stop_token_ids` are checked on every generated token.
pub const DEFAULT_MAX_STOP_TOKEN_IDS: usize = 64;
/// Prompts one `/v1/completions` request may list (each is a sequence in the engine); also the
/// most sequences one request may start (prompts times `best_of`).
pub const DEFAULT_MAX_PROMPTS: usize = 64;
/// `n` and `best_of` at most.
pub const DEFAULT_MAX_CHOICES: usize = 16;
/// OpenAI's limit on `logprobs` / `top_logprobs`.
pub const MAX_LOGPROBS: u32 = 20;

/// The server's bounds on the stopping conditions of one completion (flags of `tritium serve`):
/// each costs work on every generated token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CompletionLimits {
    pub max_stop_strings: usize,
    pub max_stop_string_bytes: usize,
    pub max_stop_token_ids: usize,
    /// Prompts in one completion request, and sequences one request starts.
    pub max_prompts: usize,
    /// `n` and `best_of`.
    pub max_choices: usize,
}

impl Default for CompletionLimits {
    fn default() -> Self {
        CompletionLimits {
            max_stop_strings: DEFAULT_MAX_STOP_STRINGS,
            max_stop_string_bytes: DEFAULT_MAX_STOP_STRING_BYTES,
            max_stop_token_ids: DEFAULT_MAX_STOP_TOKEN_IDS,
            max_prompts: DEFAULT_MAX_PROMPTS,
            max_choices: DEFAULT_MAX_CHOICES,
        }
    }
}

/// What a client may ask of one completion, before it is checked. `None` means the default.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct CompletionOptions {
    pub max_tokens: Option<u32>,
    pub temperature: Option<f32>,
    pub top_p: Option<f32>,
    /// 0 or -1 turn top-k off.
    pub top_k: Option<i64>,
    pub seed: Option<u64>,
    pub presence_penalty: Option<f32>,
    pub frequency_penalty: Option<f32>,
    pub repetition_penalty: Option<f32>,
    /// Stop strings, matched by the frontend on the detokenized text.
    pub stop: Vec<String>,
    pub stop_token_ids: Vec<u32>,
    pub ignore_eos: bool,
    pub min_tokens: Option<u32>,
    /// Report each token's log-probability and this many alternatives.
    pub logprobs: Option<u32>,
    /// A grammar the output must follow (`response_format`, guided decoding, forced tool calls).
    pub constraint: Option<Constraint>,
    /// Score the prompt too, with this many alternatives per position.
    pub prompt_logprobs: Option<u32>,
    /// vLLM's `min_p` (0..=1; 0 is off).
    pub min_p: Option<f32>,
    /// OpenAI's `logit_bias`: token id and bias (-100..=100), ids distinct.
    pub logit_bias: Vec<(u32, f32)>,
    /// vLLM's `priority`: lower first, 0 the default (Dynamo's higher-first hints are turned
    /// around on the way in). Used under `--scheduling-policy priority`.
    pub priority: Option<i64>,
    /// Dynamo's `strict_priority` tier: a higher tier always first.
    pub strict_priority: Option<u32>,
    /// The LoRA adapter of the model to run with (KServe's `lora_name`; on the OpenAI routes the
    /// adapter is named as the model).
    pub adapter: Option<String>,
    /// Explicit prompt caching: the prompt prefix to keep in the engine's prefix cache (set by the
    /// door from the request's cache breakpoints, once the prompt is tokenized).
    pub pin: Option<tritium_backend_api::llm::PrefixPin>,
}

impl CompletionOptions {
    /// Checks every field against OpenAI's (and vLLM's, for the extras) ranges; the error names
    /// the field. The server's own bounds are [`CompletionOptions::check_limits`].
    pub fn validate(&self) -> Result<(), BridgeError> {
        if let Some(max_tokens) = self.max_tokens
            && max_tokens < 1
        {
            return Err(BridgeError::field("max_tokens", "must be at least 1"));
        }
        check_range("temperature", self.temperature, 0.0..=2.0)?;
        if let Some(top_p) = self.top_p
            && !(top_p > 0.0 && top_p <= 1.0)
        {
            return Err(BridgeError::field("top_p", format!("must be in (0, 1], got {top_p}")));
        }
        if let Some(top_k) = self.top_k
            && top_k < -1
        {
            return Err(BridgeError::field("top_k", format!("must be -1, 0 (off) or positive, got {top_k}")));
        }
        check_range("presence_penalty", self.presence_penalty, -2.0..=2.0)?;
        check_range("frequency_penalty", self.frequency_penalty, -2.0..=2.0)?;
        if let Some(penalty) = self.repetition_penalty
            && !(penalty > 0.0 && penalty.is_finite())
        {
            return Err(BridgeError::field("repetition_penalty", format!("must be greater than 0, got {penalty}")));
        }
        // An empty stop string would match before the first token.
        if self.stop.iter().any(String::is_empty) {
            return Err(BridgeError::field("stop", "stop strings must not be empty"));
        }
        if let (Some(min), Some(max)) = (self.min_tokens, self.max_tokens)
            && min > max
        {
            return Err(BridgeError::field("min_tokens", format!("must not exceed max_tokens ({max}), got {min}")));
        }
        if let Some(logprobs) = self.logprobs
            && logprobs > MAX_LOGPROBS
        {
            return Err(BridgeError::field("logprobs", format!("must be between 0 and {MAX_LOGPROBS}, got {logprobs}")));
        }
        if let Some(top) = self.prompt_logprobs
            && top > MAX_LOGPROBS
        {
            return Err(BridgeError::field("prompt_logprobs", format!("must be between 0 and {MAX_LOGPROBS}, got {top}")));
        }
        check_range("min_p", self.min_p, 0.0..=1.0)?;
        if let Some(priority) = self.priority
            && i32::try_from(priority).is_err()
        {
            return Err(BridgeError::field("priority", format!("must be between {} and {}, got {priority}", i32::MIN, i32::MAX)));
        }
        if let Some((token, bias)) = self.logit_bias.iter().find(|(_, bias)| !(-100.0..=100.0).contains(bias)) {
            return Err(BridgeError::field(
                "logit_bias",
                format!("the bias of token {token} must be between -100 and 100, got {bias}"),
            ));
        }
        Ok(())
    }

    /// Checks `logit_bias` against the model's vocabulary (`vocab_size` ids).
    pub fn check_vocabulary(&self, vocab_size: usize) -> Result<(), BridgeError> {
        match self.logit_bias.iter().find(|(token, _)| *token as usize >= vocab_size) {
            Some((token, _)) => Err(BridgeError::field(
                "logit_bias",
                format!("token id {token} is out of the model's vocabulary (ids 0 to {})", vocab_size.saturating_sub(1)),
            )),
            None => Ok(()),
        }
    }

    /// Checks the stopping conditions against the server's bounds.
    pub fn check_limits(&self, limits: &CompletionLimits) -> Result<(), BridgeError> {
        if self.stop.len() > limits.max_stop_strings {
            return Err(BridgeError::field(
                "stop",
                format!("at most {} stop strings are allowed, got {}", limits.max_stop_strings, self.stop.len()),
            ));
        }
        if let Some(long) = self.stop.iter().find(|stop| stop.len() > limits.max_stop_string_bytes) {
            return Err(BridgeError::field(
                "stop",
                format!("a stop string may be at most {} bytes long, got one of {}", limits.max_stop_string_bytes, long.len()),
            ));
        }
        if self.stop_token_ids.len() > limits.max_stop_token_ids {
            return Err(BridgeError::field(
                "stop_token_ids",
                format!("at most {} stop token ids are allowed, got {}", limits.max_stop_token_ids, self.stop_token_ids.len()),
            ));
        }
        Ok(())
    }

    /// Validates and builds the engine's request for an already tokenized prompt.
    ///
    /// `max_tokens` defaults to `default_max_tokens`, else to the room the context leaves, and is
    /// capped to that room either way.
    pub fn to_generate_request(
        &self,
        prompt: Vec<u32>,
        card: &ModelCard,
        default_max_tokens: Option<u32>,
        limits: &CompletionLimits,
    ) -> Result<GenerateRequest, BridgeError> {
        self.validate()?;
        self.check_limits(limits)?;
        if prompt.is_empty() {
            return Err(BridgeError::field("prompt", "the prompt is empty"));
        }
        let room = card.room_after(prompt.len()).map_err(|reason| BridgeError::field("prompt", reason))?;
        let room = u32::try_from(room).unwrap_or(u32::MAX);
        let max_tokens = self.max_tokens.or(default_max_tokens).unwrap_or(room).min(room);
        let defaults = SamplingOptions::default();
        let sampling = SamplingOptions {
            temperature: self.temperature.unwrap_or(defaults.temperature),
            top_p: self.top_p.unwrap_or(defaults.top_p),
            top_k: match self.top_k {
                Some(k) if k > 0 => usize::try_from(k).unwrap_or(usize::MAX),
                _ => 0,
            },
            seed: self.seed,
            presence_penalty: self.presence_penalty.unwrap_or(defaults.presence_penalty),
            frequency_penalty: self.frequency_penalty.unwrap_or(defaults.frequency_penalty),
            repetition_penalty: self.repetition_penalty.unwrap_or(defaults.repetition_penalty),
            min_p: self.min_p.unwrap_or(defaults.min_p),
            logit_bias: self.logit_bias.clone(),
        };
        let stop = StopOptions {
            max_tokens: Some(max_tokens),
            stop_token_ids: self.stop_token_ids.clone(),
            ignore_eos: self.ignore_eos,
            min_tokens: self.min_tokens.unwrap_or(0).min(max_tokens),
        };
        Ok(GenerateRequest {
            model_version: None,
            prompt,
            sampling,
            stop,
            logprobs: self.logprobs,
            constraint: self.constraint.clone(),
            prompt_logprobs: self.prompt_logprobs,
            adapter: self.adapter.clone(),
            pin: self.pin,
            priority: Priority {
                tier: self.strict_priority.unwrap_or(0),
                level: self.priority.map_or(0, |p| i32::try_from(p).unwrap_or(if p < 0 { i32::MIN } else { i32::MAX })),
            },
        })
    }

    /// Reads the options from KServe request parameters (the names of the OpenAI fields).
    ///
    /// Numbers may arrive as int64, uint64, double or a numeric string; an integral double is
    /// fine where an integer is wanted. `stop` and `stop_token_ids` are JSON arrays in a string
    /// (a `stop` string that is not a JSON array is one stop string). Parameters the bridge does
    /// not know (Triton's own, such as `triton_enable_empty_final_response`) are ignored.
    pub fn from_kserve_parameters(params: &Parameters) -> Result<CompletionOptions, BridgeError> {
        let mut options = CompletionOptions::default();
        for (name, value) in params {
            let name = name.as_str();
            match name {
                "max_tokens" => options.max_tokens = Some(param_u32(name, value)?),
                "min_tokens" => options.min_tokens = Some(param_u32(name, value)?),
                "logprobs" => options.logprobs = Some(param_u32(name, value)?),
                "temperature" => options.temperature = Some(param_f32(name, value)?),
                "top_p" => options.top_p = Some(param_f32(name, value)?),
                "presence_penalty" => options.presence_penalty = Some(param_f32(name, value)?),
                "frequency_penalty" => options.frequency_penalty = Some(param_f32(name, value)?),
                "repetition_penalty" => options.repetition_penalty = Some(param_f32(name, value)?),
                "top_k" => options.top_k = Some(param_i64(name, value)?),
                "seed" => options.seed = Some(param_u64(name, value)?),
                "ignore_eos" => options.ignore_eos = param_bool(name, value)?,
                "stop" => options.stop = param_stop(value)?,
                "stop_token_ids" => options.stop_token_ids = param_token_ids(name, value)?,
                "min_p" => options.min_p = Some(param_f32(name, value)?),
                "logit_bias" => options.logit_bias = param_logit_bias(value)?,
                "priority" => options.priority = triton_priority(param_u64(name, value)?),
                "lora_name" => match value {
                    ParamValue::String(adapter) if !adapter.is_empty() => options.adapter = Some(adapter.clone()),
                    other => return Err(wrong_type(name, "an adapter's name", other)),
                },
                _ => {}
            }
        }
        Ok(options)
    }
}

/// Triton's `priority` request field, on the engine's scale: 0 is the default level (the
/// engine's 0); levels from 1 go ahead of it, level 1 first, as Triton's levels go ahead of a
/// default level set last.
fn triton_priority(level: u64) -> Option<i64> {
    match level {
        0 => None,
        level => Some(i64::from(i32::MIN) + i64::try_from(level).unwrap_or(i64::MAX).min(i64::from(i32::MAX))),
    }
}

/// `n` as a KServe parameter: at least 1 (the server's bound is checked where the limits are).
pub fn param_choices(field: &str, value: &ParamValue) -> Result<u32, BridgeError> {
    match param_u32(field, value)? {
        0 => Err(BridgeError::field(field, "must be at least 1, got 0")),
        n => Ok(n),
    }
}

/// `logit_bias` as a KServe parameter: OpenAI's JSON object in a string (`{"123": -100}`).
fn param_logit_bias(value: &ParamValue) -> Result<Vec<(u32, f32)>, BridgeError> {
    let ParamValue::String(text) = value else { return Err(wrong_type("logit_bias", "a JSON object in a string", value)) };
    let map: serde_json::Map<String, serde_json::Value> = serde_json::from_str(text)
        .map_err(|_| BridgeError::field("logit_bias", "expected a JSON object of token ids to biases"))?;
    logit_bias_of(&map)
}

/// OpenAI's `logit_bias` object: token ids (as strings) to biases; an id written twice (`"7"`,
/// `"07"`) keeps its last bias, so each id is biased once.
pub fn logit_bias_of(map: &serde_json::Map<String, serde_json::Value>) -> Result<Vec<(u32, f32)>, BridgeError> {
    let biases: Result<std::collections::BTreeMap<u32, f32>, BridgeError> = map
        .iter()
        .map(|(token, bias)| {
            let id = token
                .trim()
                .parse::<u32>()
                .map_err(|_| BridgeError::field("logit_bias", format!("'{token}' is not a token id")))?;
            let bias = bias
                .as_f64()
                .filter(|b| b.is_finite())
                .ok_or_else(|| BridgeError::field("logit_bias", format!("the bias of token {id} is not a number")))?;
            Ok((id, bias as f32))
        })
        .collect();
    Ok(biases?.into_iter().collect())
}

fn check_range(field: &str, value: Option<f32>, range: std::ops::RangeInclusive<f32>) -> Result<(), BridgeError> {
    match value {
        Some(v) if !range.contains(&v) => {
            Err(BridgeError::field(field, format!("must be between {} and {}, got {v}", range.start(), range.end())))
        }
        _ => Ok(()),
    }
}

fn wrong_type(name: &str, expected: &str, value: &ParamValue) -> BridgeError {
    BridgeError::field(name, format!("expected {expected}, got {} {}", value.kind(), describe(value)))
}

fn describe(value: &ParamValue) -> String {
    match value {
        ParamValue::Bool(b) => b.to_string(),
        ParamValue::Int64(i) => i.to_string(),
        ParamValue::Uint64(u) => u.to_string(),
        ParamValue::Double(d) => d.to_string(),
        ParamValue::String(s) => format!("{s:?}"),
    }
}

/// An integer parameter as i128, so every source type converts without loss before range checks.
fn param_integer(name: &str, value: &ParamValue) -> Result<i128, BridgeError> {
    let integral = |d: f64| (d.is_finite() && d.fract() == 0.0 && d.abs() < 1e30).then_some(d as i128);
    let parsed = match value {
        ParamValue::Int64(i) => Some(i128::from(*i)),
        ParamValue::Uint64(u) => Some(i128::from(*u)),
        ParamValue::Double(d) => integral(*d),
        ParamValue::String(s) => {
            let s = s.trim();
            s.parse::<i128>().ok().or_else(|| s.parse::<f64>().ok().and_then(integral))
        }
        ParamValue::Bool(_) => None,
    };
    parsed.ok_or_else(|| wrong_type(name, "an integer", value))
}

fn param_u32(name: &str, value: &ParamValue) -> Result<u32, BridgeError> {
    let v = param_integer(name, value)?;
    u32::try_from(v).map_err(|_| BridgeError::field(name, format!("must be between 0 and {}, got {v}", u32::MAX)))
}

fn param_u64(name: &str, value: &ParamValue) -> Result<u64, BridgeError> {
    let v = param_integer(name, value)?;
    u64::try_from(v).map_err(|_| BridgeError::field(name, format!("must be between 0 and {}, got {v}", u64::MAX)))
}

fn param_i64(name: &str, value: &ParamValue) -> Result<i64, BridgeError> {
    let v = param_integer(name, value)?;
    i64::try_from(v).map_err(|_| BridgeError::field(name, format!("is out of range: {v}")))
}

fn param_f32(name: &str, value: &ParamValue) -> Result<f32, BridgeError> {
    let v = match value {
        ParamValue::Int64(i) => Some(*i as f64),
        ParamValue::Uint64(u) => Some(*u as f64),
        ParamValue::Double(d) => Some(*d),
        ParamValue::String(s) => s.trim().parse::<f64>().ok(),
        ParamValue::Bool(_) => None,
    };
    match v {
        Some(v) if v.is_finite() => Ok(v as f32),
        _ => Err(wrong_type(name, "a number", value)),
    }
}

fn param_bool(name: &str, value: &ParamValue) -> Result<bool, BridgeError> {
    match value {
        ParamValue::Bool(b) => Ok(*b),
        ParamValue::Int64(0) | ParamValue::Uint64(0) => Ok(false),
        ParamValue::Int64(1) | ParamValue::Uint64(1) => Ok(true),
        ParamValue::String(s) if s.eq_ignore_ascii_case("true") => Ok(true),
        ParamValue::String(s) if s.eq_ignore_ascii_case("false") => Ok(false),
        _ => Err(wrong_type(name, "a bool", value)),
    }
}

fn param_stop(value: &ParamValue) -> Result<Vec<String>, BridgeError> {
    let ParamValue::String(s) = value else {
        return Err(wrong_type("stop", "a string (a stop string or a JSON array of them)", value));
    };
    // Only a string that is a JSON array counts as a list; anything else is a literal stop string.
    match serde_json::from_str::<serde_json::Value>(s) {
        Ok(serde_json::Value::Array(items)) => items
            .into_iter()
            .map(|item| match item {
                serde_json::Value::String(stop) => Ok(stop),
                other => Err(BridgeError::field("stop", format!("expected a JSON array of strings, found {other}"))),
            })
            .collect(),
        _ => Ok(vec![s.clone()]),
    }
}

fn param_token_ids(name: &str, value: &ParamValue) -> Result<Vec<u32>, BridgeError> {
    match value {
        ParamValue::String(s) => serde_json::from_str::<Vec<u32>>(s)
            .map_err(|e| BridgeError::field(name, format!("expected a JSON array of token ids: {e}"))),
        ParamValue::Int64(_) | ParamValue::Uint64(_) => Ok(vec![param_u32(name, value)?]),
        _ => Err(wrong_type(name, "a JSON array of token ids", value)),
    }
}

#[cfg(test)]
mod tests;
