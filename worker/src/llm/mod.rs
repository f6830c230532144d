//! Language and embedding models: the token-level interface the frontend drives
//! ([`LanguageModel`], [`EmbeddingModel`]), the model card it preprocesses with, and the CPU/CUDA
//! engine over candle with continuous batching.

pub mod backend;
mod card;
mod engine;
#[cfg(test)]
mod engine_tests;
mod gguf_tokenizer;
mod model;
mod sampler;
mod types;

use std::sync::Arc;

use async_trait::async_trait;

pub use backend::{LLM_BACKEND, LlmBackend, LlmFactory, complete_llm_config};
pub use card::{ModelCard, ModelKind, detect_kind};
pub use engine::{EngineOptions, LlmEngine};
pub use model::default_device;
pub use types::{
    EngineStats, FinishReason, GenerateError, GenerateEvent, GenerateRequest, GeneratedToken, SamplingOptions, StopOptions,
    TokenStream,
};

/// A causal language model as the frontend sees it: token ids in, token ids out.
pub trait LanguageModel: Send + Sync + 'static {
    fn card(&self) -> &Arc<ModelCard>;
    /// Queues a sequence; its tokens arrive on the stream. Fails at once when the queue is full
    /// or the request cannot fit the model.
    fn generate(&self, request: GenerateRequest) -> Result<TokenStream, GenerateError>;
    fn stats(&self) -> EngineStats;
}

/// A sentence embedder: token ids of each input in, one vector per input out.
#[async_trait]
pub trait EmbeddingModel: Send + Sync + 'static {
    fn card(&self) -> &Arc<ModelCard>;
    async fn embed(&self, inputs: Vec<Vec<u32>>) -> Result<Vec<Vec<f32>>, GenerateError>;
}
