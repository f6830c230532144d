//! The mock engine's settings: its simulated costs and limits, read from (and written to) the
//! `parameters` of a `config.pbtxt`.

use tritium_proto::inference::ModelConfig;

use tritium_backend_api::ConfigParams;
use tritium_backend_api::kv::DEFAULT_KV_BLOCK_SIZE;

use super::MOCK_LLM_BACKEND;
use crate::engine_state::SchedulingPolicy;

const POLICY_KEY: &str = "scheduling_policy";

/// What the mock engine pretends to cost and how much it holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MockOptions {
    /// Simulated prefill time per prompt token not found in the KV cache.
    pub prefill_us_per_token: u64,
    /// Simulated time of one decode step, whatever the batch size.
    pub decode_ms_per_step: u64,
    /// Tokens per KV block.
    pub block_size: usize,
    /// Blocks the KV cache holds.
    pub kv_blocks: usize,
    /// Sequences in the running batch.
    pub max_sequences: usize,
    /// Requests that may wait for a place; beyond it requests are refused.
    pub max_queue: usize,
    /// The longest sequence, prompt plus completion.
    pub context_length: usize,
    /// How waiting requests are ordered (`scheduling_policy`).
    pub scheduling_policy: SchedulingPolicy,
}

impl Default for MockOptions {
    fn default() -> MockOptions {
        MockOptions {
            prefill_us_per_token: 50,
            decode_ms_per_step: 10,
            block_size: DEFAULT_KV_BLOCK_SIZE,
            kv_blocks: 4096,
            max_sequences: 32,
            max_queue: 256,
            context_length: 8192,
            scheduling_policy: SchedulingPolicy::Fcfs,
        }
    }
}

/// Why mock options were refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MockError {
    #[error("parameter '{key}' {reason}")]
    InvalidOption { key: &'static str, reason: String },
    /// A parameter that does not read as its type, in [`ConfigParams`]' words.
    #[error("{0}")]
    Unreadable(String),
    #[error("starting the mock engine: {0}")]
    Start(String),
}

impl MockOptions {
    /// The parameter keys, in the order [`values`](Self::values) gives them.
    const KEYS: [&'static str; 7] =
        ["prefill_us_per_token", "decode_ms_per_step", "block_size", "kv_blocks", "max_sequences", "max_queue", "context_length"];

    /// Every parameter key the mock engine reads.
    pub fn read_keys() -> [&'static str; 8] {
        let [a, b, c, d, e, f, g] = Self::KEYS;
        [a, b, c, d, e, f, g, POLICY_KEY]
    }

    fn values(&self) -> [u64; 7] {
        let n = |v: usize| v as u64;
        [
            self.prefill_us_per_token,
            self.decode_ms_per_step,
            n(self.block_size),
            n(self.kv_blocks),
            n(self.max_sequences),
            n(self.max_queue),
            n(self.context_length),
        ]
    }

    /// Sizes and limits must be at least 1 (the delays may be 0).
    pub fn validate(&self) -> Result<(), MockError> {
        for (key, value) in Self::KEYS.into_iter().zip(self.values()).skip(2) {
            if value == 0 {
                return Err(MockError::InvalidOption { key, reason: "must be at least 1".to_string() });
            }
        }
        Ok(())
    }

    /// The options a model config sets in its `parameters`, `defaults` for the others.
    pub fn from_config(config: &ModelConfig, defaults: &MockOptions) -> Result<MockOptions, MockError> {
        let params = ConfigParams::of(config);
        let number = |key: &'static str, default: u64| params.number(key, default).map_err(MockError::Unreadable);
        let size = |key: &'static str, default: usize| -> Result<usize, MockError> {
            let value = number(key, default as u64)?;
            usize::try_from(value).map_err(|_| MockError::InvalidOption { key, reason: format!("{value} is too large") })
        };
        let options = MockOptions {
            prefill_us_per_token: number("prefill_us_per_token", defaults.prefill_us_per_token)?,
            decode_ms_per_step: number("decode_ms_per_step", defaults.decode_ms_per_step)?,
            block_size: size("block_size", defaults.block_size)?,
            kv_blocks: size("kv_blocks", defaults.kv_blocks)?,
            max_sequences: size("max_sequences", defaults.max_sequences)?,
            max_queue: size("max_queue", defaults.max_queue)?,
            context_length: size("context_length", defaults.context_length)?,
            scheduling_policy: match tritium_backend_api::config_parameter(config, POLICY_KEY) {
                Some(name) => name.parse().map_err(|reason| MockError::InvalidOption { key: POLICY_KEY, reason })?,
                None => defaults.scheduling_policy,
            },
        };
        options.validate()?;
        Ok(options)
    }

    /// The `parameters` entries that set these options, as `config.pbtxt` text.
    pub fn to_config_parameters(&self) -> String {
        let policy = match self.scheduling_policy {
            SchedulingPolicy::Fcfs => "fcfs",
            SchedulingPolicy::Priority => "priority",
        };
        Self::KEYS
            .into_iter()
            .zip(self.values().map(|value| value.to_string()))
            .chain([(POLICY_KEY, policy.to_string())])
            .map(|(key, value)| format!("parameters {{ key: \"{key}\" value {{ string_value: \"{value}\" }} }}\n"))
            .collect()
    }
}

/// The `config.pbtxt` text of a model served by the mock engine with these options, for a model
/// declared without a repository folder (what `tritium serve --engine mock` serves).
pub fn mock_config_text(name: &str, options: &MockOptions) -> String {
    // Escaped as JSON, which the text format reads alike for quotes and backslashes.
    let quoted = serde_json::Value::from(name).to_string();
    format!("name: {quoted}\nbackend: \"{MOCK_LLM_BACKEND}\"\n{}", options.to_config_parameters())
}
