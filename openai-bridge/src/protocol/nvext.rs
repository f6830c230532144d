//! `nvext`, the request extensions Dynamo's frontend documents, on completions, chat and
//! responses. Unknown fields are refused (a typo must not be silently ignored).
//!
//! - `greed_sampling`: greedy decoding whatever the sampling fields say.
//! - `ignore_eos`, `top_k`, `repetition_penalty`: the engine's knobs.
//! - `guided_json` / `guided_regex` / `guided_choice` / `guided_grammar`: structured output.
//! - `token_data`: the prompt, already tokenized (no template, no tokenizer).
//! - `use_raw_prompt`: chat without the template: the messages' contents, joined by newlines,
//!   tokenized with the tokenizer's special tokens.
//! - `backend_instance_id`: the worker to run on (a worker id as the router names workers).
//! - `annotations`: out-of-band SSE events before the first chunk of a stream:
//!   `formatted_prompt` (the prompt text) and `token_ids` (the prompt's ids).
//! - `extra_fields`: `worker_id` and `timing` in the response's own `nvext` object.
//! - `agent_hints`: `priority` (higher first, the opposite of vLLM's top-level `priority`, which
//!   it replaces) and `strict_priority` (a tier: a higher one always first) order the engine's
//!   queue under `--scheduling-policy priority`; `speculative_prefill` (chat) computes the next
//!   turn's prefix once the answer is known; `osl` (expected output length) is checked and, as in
//!   Dynamo without `--router-track-output-blocks`, changes nothing.

use serde::de::Error as _;
use serde::{Deserialize, Deserializer};
use serde_json::Value;

use super::Guided;
use crate::BridgeError;
use crate::sampling::CompletionOptions;

/// The annotations a stream can carry.
pub const ANNOTATIONS: [&str; 2] = ["formatted_prompt", "token_ids"];
/// The response fields `extra_fields` can ask for.
pub const EXTRA_FIELDS: [&str; 2] = ["worker_id", "timing"];

#[derive(Debug, Clone, Default, PartialEq, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NvExt {
    pub greed_sampling: Option<bool>,
    pub use_raw_prompt: Option<bool>,
    pub annotations: Option<Vec<String>>,
    #[serde(default, deserialize_with = "worker_id")]
    pub backend_instance_id: Option<String>,
    pub token_data: Option<Vec<u32>>,
    pub ignore_eos: Option<bool>,
    pub top_k: Option<i64>,
    pub repetition_penalty: Option<f32>,
    pub min_p: Option<f32>,
    pub extra_fields: Option<Vec<String>>,
    pub guided_json: Option<Value>,
    pub guided_regex: Option<String>,
    pub guided_choice: Option<Vec<String>>,
    pub guided_grammar: Option<String>,
    pub agent_hints: Option<AgentHints>,
}

/// Dynamo's per-request serving hints for agent workloads.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AgentHints {
    /// Higher first.
    pub priority: Option<i64>,
    /// A queue tier: a higher tier always goes ahead of a lower one.
    pub strict_priority: Option<u32>,
    /// Expected output tokens.
    pub osl: Option<u32>,
    pub speculative_prefill: Option<bool>,
}

impl AgentHints {
    /// Applies the priorities to `options` (turned into vLLM's lower-first convention).
    pub fn apply(&self, options: &mut CompletionOptions) -> Result<(), BridgeError> {
        if let Some(priority) = self.priority {
            let level = i32::try_from(priority).ok().and_then(i32::checked_neg).ok_or_else(|| {
                BridgeError::field(
                    "nvext.agent_hints.priority",
                    format!("must be between {} and {}, got {priority}", -i32::MAX, i32::MAX),
                )
            })?;
            options.priority = Some(i64::from(level));
        }
        if self.strict_priority.is_some() {
            options.strict_priority = self.strict_priority;
        }
        Ok(())
    }
}

/// A worker id: Dynamo's are numbers, ours are strings; both are accepted.
fn worker_id<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<String>, D::Error> {
    match Option::<Value>::deserialize(deserializer)? {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(id)) if !id.is_empty() => Ok(Some(id)),
        Some(Value::Number(n)) if n.is_u64() => Ok(Some(n.to_string())),
        Some(_) => Err(D::Error::custom("backend_instance_id must be a worker id (a string or an unsigned integer)")),
    }
}

impl NvExt {
    /// Applies the sampling and structured-output fields to `options`; checks the others.
    pub fn apply(&self, options: &mut CompletionOptions) -> Result<(), BridgeError> {
        for (name, list, known) in
            [("annotations", &self.annotations, &ANNOTATIONS[..]), ("extra_fields", &self.extra_fields, &EXTRA_FIELDS[..])]
        {
            if let Some(unknown) = list.iter().flatten().find(|item| !known.contains(&item.as_str())) {
                let reason = format!("'{unknown}' is not one of {}", known.join(", "));
                return Err(BridgeError::field(format!("nvext.{name}"), reason));
            }
        }
        if let Some(hints) = &self.agent_hints {
            hints.apply(options)?;
        }
        if self.greed_sampling == Some(true) {
            options.temperature = Some(0.0);
        }
        if let Some(ignore_eos) = self.ignore_eos {
            options.ignore_eos = ignore_eos;
        }
        if self.top_k.is_some() {
            options.top_k = self.top_k;
        }
        if self.repetition_penalty.is_some() {
            options.repetition_penalty = self.repetition_penalty;
        }
        if let Some(min_p) = self.min_p {
            if !(0.0..=1.0).contains(&min_p) {
                return Err(BridgeError::field("nvext.min_p", format!("must be between 0 and 1, got {min_p}")));
            }
            options.min_p = Some(min_p);
        }
        let guided = Guided {
            guided_json: self.guided_json.clone(),
            guided_regex: self.guided_regex.clone(),
            guided_choice: self.guided_choice.clone(),
            guided_grammar: self.guided_grammar.clone(),
        };
        if let Some(constraint) = guided.constraint("nvext")? {
            if options.constraint.is_some() {
                return Err(BridgeError::field("nvext", "guided decoding is given twice (response_format, top-level guided_* or nvext)"));
            }
            options.constraint = Some(constraint);
        }
        options.validate().map_err(|error| match error {
            BridgeError::InvalidField { field, reason } if field == "top_k" || field == "repetition_penalty" => {
                BridgeError::field(format!("nvext.{field}"), reason)
            }
            other => other,
        })
    }

    pub fn annotates(&self, name: &str) -> bool {
        self.annotations.iter().flatten().any(|a| a == name)
    }

    pub fn wants(&self, field: &str) -> bool {
        self.extra_fields.iter().flatten().any(|f| f == field)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use serde_json::json;
    use tritium_backend_api::llm::Constraint;

    use super::*;
    use crate::protocol::{ChatCompletionRequest, parse_json};

    #[test]
    fn fields_apply_and_unknown_ones_are_refused() {
        let nvext: NvExt = serde_json::from_value(json!({"greed_sampling": true, "top_k": 5, "ignore_eos": true,
            "guided_choice": ["a", "b"], "backend_instance_id": 7, "extra_fields": ["timing"]}))
        .unwrap();
        let mut options = CompletionOptions { temperature: Some(0.9), ..Default::default() };
        nvext.apply(&mut options).unwrap();
        assert_eq!((options.temperature, options.top_k, options.ignore_eos), (Some(0.0), Some(5), true));
        assert_eq!(options.constraint, Some(Constraint::Choice(vec!["a".into(), "b".into()])));
        assert_eq!(nvext.backend_instance_id.as_deref(), Some("7"));
        assert!(nvext.wants("timing") && !nvext.wants("worker_id"));

        let error = parse_json::<ChatCompletionRequest>(br#"{"model":"m","messages":[],"nvext":{"greedy":true}}"#).unwrap_err();
        assert!(error.to_string().starts_with("nvext: unknown field `greedy`"), "{error}");
        for (bad, field) in [
            (json!({"annotations": ["everything"]}), "nvext.annotations"),
            (json!({"extra_fields": ["gpu"]}), "nvext.extra_fields"),
            (json!({"top_k": -5}), "nvext.top_k"),
            (json!({"guided_regex": "a", "guided_json": {}}), "nvext"),
        ] {
            let nvext: NvExt = serde_json::from_value(bad.clone()).unwrap();
            match nvext.apply(&mut CompletionOptions::default()) {
                Err(BridgeError::InvalidField { field: got, .. }) => assert_eq!(got, field, "{bad}"),
                other => panic!("{bad}: {other:?}"),
            }
        }
        assert!(serde_json::from_value::<NvExt>(json!({"backend_instance_id": -1})).is_err());
    }

    #[test]
    fn agent_hints_turn_dynamo_priorities_into_the_engines_and_replace_vllms() {
        let nvext: NvExt = serde_json::from_value(json!({"agent_hints": {"priority": 10, "strict_priority": 2, "osl": 100,
            "speculative_prefill": true}}))
        .unwrap();
        let mut options = CompletionOptions { priority: Some(3), ..Default::default() };
        nvext.apply(&mut options).unwrap();
        assert_eq!((options.priority, options.strict_priority), (Some(-10), Some(2)), "higher first becomes lower first");

        let mut untouched = CompletionOptions { priority: Some(3), ..Default::default() };
        let tier_only: NvExt = serde_json::from_value(json!({"agent_hints": {"strict_priority": 1}})).unwrap();
        tier_only.apply(&mut untouched).unwrap();
        assert_eq!((untouched.priority, untouched.strict_priority), (Some(3), Some(1)));

        let out_of_range: NvExt = serde_json::from_value(json!({"agent_hints": {"priority": i64::from(i32::MIN)}})).unwrap();
        match out_of_range.apply(&mut CompletionOptions::default()) {
            Err(BridgeError::InvalidField { field, .. }) => assert_eq!(field, "nvext.agent_hints.priority"),
            other => panic!("{other:?}"),
        }
        assert!(serde_json::from_value::<NvExt>(json!({"agent_hints": {"urgency": 1}})).is_err());
    }
}
