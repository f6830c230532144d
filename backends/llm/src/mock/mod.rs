//! A mock language model for testing and benchmarking routing with many workers on a CPU: the
//! real engine (continuous batching, the block pool with prefix reuse, LRU eviction, preemption
//! and [`KvEvent`](tritium_backend_api::kv::KvEvent) announcements, KV transfers) over a simulated model with no
//! weights, whose steps take the time the options say. Its card has a byte-level tokenizer (one token per UTF-8 byte) and a ChatML
//! template, so the OpenAI frontend drives it like any model.
//!
//! As a registry entry it is the `tritium_mock_llm` backend; its options are config parameters:
//!
//! ```text
//! backend: "tritium_mock_llm"
//! parameters { key: "decode_ms_per_step" value { string_value: "10" } }
//! parameters { key: "kv_blocks" value { string_value: "4096" } }
//! ```
//!
//! ```
//! use tritium_backend_api::llm::{GenerateRequest, LanguageModel};
//! use tritium_llm::{MockEngine, MockOptions};
//!
//! let engine = MockEngine::new("mock", MockOptions { decode_ms_per_step: 1, ..MockOptions::default() });
//! let stream = engine.generate(GenerateRequest { prompt: vec![72, 105], ..Default::default() });
//! assert!(stream.is_ok());
//! ```

mod card;
mod engine;
mod options;
#[cfg(test)]
mod tests;

use std::path::Path;

use tritium_backend_api::llm::complete_llm_config;
use tritium_backend_api::{BackendContext, BackendFactory, Engine};
use tritium_proto::inference::ModelConfig;

pub use card::{ENDOFTEXT_ID, IM_END_ID, IM_START_ID, MOCK_VOCAB_SIZE, mock_card};
pub use engine::MockEngine;
pub use options::{MockError, MockOptions, mock_config_text};

/// The backend name a `config.pbtxt` gives for the mock language model.
pub const MOCK_LLM_BACKEND: &str = "tritium_mock_llm";

/// Builds `tritium_mock_llm` models, with `defaults` for the options a config does not set.
#[derive(Debug, Clone, Default)]
pub struct MockFactory {
    pub defaults: MockOptions,
}

impl BackendFactory for MockFactory {
    fn create(&self, context: &BackendContext<'_>) -> Result<Engine, String> {
        let options = MockOptions::from_config(context.config, &self.defaults).map_err(|e| e.to_string())?;
        tritium_backend_api::warn_unread_parameters(context.model_name, "mock engine", context.config, &MockOptions::read_keys());
        let engine = MockEngine::try_new(context.model_name, options).map_err(|e| e.to_string())?;
        tracing::info!(model = %context.model_name, options = ?engine.options(), "mock language model started");
        Ok(Engine::Language(engine))
    }

    fn complete_config(&self, config: &mut ModelConfig, _: Option<&Path>) -> Result<(), String> {
        complete_llm_config(config);
        Ok(())
    }
}
