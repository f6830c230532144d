//! Tritium's language and embedding model backends: the engine over candle (CPU; CUDA behind the
//! `cuda` feature) with a paged KV cache, continuous batching, prefix reuse, offload and KV
//! transfers for disaggregated serving (`tritium_llm`), a mock engine for routing tests without
//! weights (`tritium_mock_llm`), and BERT sentence embedders (`tritium_embed`).
//!
//! It implements the language-model contract of [`tritium_backend_api::llm`] and plugs into the
//! core like any backend, through [`register`].
//!
//! ```
//! use tritium_backend_api::BackendRegistry;
//!
//! let mut registry = BackendRegistry::default();
//! tritium_llm::register(&mut registry, tritium_llm::EngineOptions::default());
//! assert!(registry.contains(tritium_llm::LLM_BACKEND) && registry.contains(tritium_llm::EMBED_BACKEND));
//! ```

pub mod backend;
pub mod block_pool;
#[cfg(test)]
mod block_pool_tests;
mod card;
mod constraint;
pub mod embed;
mod engine;
mod engine_admit;
#[cfg(test)]
mod engine_cache_tests;
mod engine_draft;
mod engine_loop;
mod engine_state;
#[cfg(test)]
mod engine_tests;
mod export;
mod gguf_tokenizer;
#[cfg(test)]
mod kv_transfer_tests;
mod lora;
#[cfg(test)]
mod lora_tests;
pub mod mock;
mod model;
mod offload;
mod pins;
mod prompt_scores;
#[cfg(test)]
mod prompt_scores_tests;
mod sampler;
#[cfg(test)]
mod sampler_bias_tests;
#[cfg(test)]
mod scheduling_tests;
mod sequence;
mod speculation;
#[cfg(test)]
mod speculation_tests;
mod step_model;
pub mod test_models;

use tritium_backend_api::BackendRegistry;

pub use backend::{LLM_BACKEND, LlmFactory};
pub use card::{card_from_gguf, card_from_gguf_file, card_from_hf_dir, detect_kind};
pub use embed::{EMBED_BACKEND, embed_factory};
pub use engine::LlmEngine;
pub use engine_state::{EngineOptions, MAX_SPECULATIVE_TOKENS, SchedulingPolicy, SpeculativeOptions};
pub use mock::{MOCK_LLM_BACKEND, MockEngine, MockFactory, MockOptions, mock_config_text};
pub use model::default_device;
pub use offload::OffloadOptions;

/// Registers the language model backend (with `defaults` for what a config leaves out), the mock
/// language model and the embedder.
pub fn register(registry: &mut BackendRegistry, defaults: EngineOptions) {
    registry.register(LLM_BACKEND, LlmFactory { defaults });
    registry.register(MOCK_LLM_BACKEND, MockFactory::default());
    registry.register(EMBED_BACKEND, embed_factory());
}
