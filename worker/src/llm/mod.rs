//! Language and embedding models: the token-level interface the frontend drives
//! ([`LanguageModel`], [`EmbeddingModel`]), the model card it preprocesses with, and the CPU/CUDA
//! engine over candle with continuous batching.

pub mod backend;
pub mod block_pool;
#[cfg(test)]
mod block_pool_tests;
mod card;
mod constraint;
mod engine;
#[cfg(test)]
mod engine_cache_tests;
mod engine_loop;
#[cfg(test)]
mod engine_tests;
mod gguf_tokenizer;
mod kv_transfer;
#[cfg(test)]
mod kv_transfer_tests;
pub mod mock;
mod model;
mod offload;
mod sampler;
mod sequence;
mod step_model;
mod types;
mod vocab;

use std::sync::Arc;

use async_trait::async_trait;

pub use backend::{LLM_BACKEND, LlmBackend, LlmFactory, complete_llm_config};
pub use card::{ModelCard, ModelKind, detect_kind};
pub use constraint::Constraint;
pub use engine::{EngineOptions, LlmEngine};
pub use kv_transfer::{ExportedBlock, ImportedBlocks, KvExport, TransferLayout};
pub use offload::OffloadOptions;
pub use mock::{MOCK_LLM_BACKEND, MockEngine, MockFactory, MockOptions, mock_declared_model};
pub use model::default_device;
pub use types::{
    EngineStats, FinishReason, GenerateError, GenerateEvent, GenerateRequest, GeneratedToken, PrefillSource, SamplingOptions, StopOptions,
    TokenStream,
};
pub use vocab::Vocabulary;

/// A causal language model as the frontend sees it: token ids in, token ids out.
pub trait LanguageModel: Send + Sync + 'static {
    fn card(&self) -> &Arc<ModelCard>;
    /// Queues a sequence; its tokens arrive on the stream. Fails at once when the queue is full
    /// or the request cannot fit the model.
    fn generate(&self, request: GenerateRequest) -> Result<TokenStream, GenerateError>;
    fn stats(&self) -> EngineStats;
    /// The engine's KV-cache announcements from now on, for engines that keep a block cache
    /// (a KV-aware router indexes them); `None` for engines that do not.
    fn kv_events(&self) -> Option<tokio::sync::broadcast::Receiver<crate::kv::KvEvent>> {
        None
    }

    /// How the engine's KV blocks are laid out, for engines that can move blocks to and from
    /// another (disaggregated prefill and decode); `None` for engines that cannot.
    fn kv_layout(&self) -> Option<TransferLayout> {
        None
    }

    /// Computes the full blocks of `prompt` from `first_block` on (all but the block holding its
    /// last token) and hands each out as it is written.
    fn export_prefix(&self, prompt: Vec<u32>, first_block: usize) -> Result<KvExport, GenerateError> {
        let _ = (prompt, first_block);
        Err(GenerateError::InvalidRequest("this model's engine cannot prefill for another worker".to_string()))
    }

    /// [`generate`](LanguageModel::generate), starting from blocks another engine computed
    /// (engines that cannot take them compute everything).
    fn generate_with_prefix(&self, request: GenerateRequest, prefix: ImportedBlocks) -> Result<TokenStream, GenerateError> {
        let _ = prefix;
        self.generate(request)
    }
}

/// A sentence embedder: token ids of each input in, one vector per input out.
#[async_trait]
pub trait EmbeddingModel: Send + Sync + 'static {
    fn card(&self) -> &Arc<ModelCard>;
    async fn embed(&self, inputs: Vec<Vec<u32>>) -> Result<Vec<Vec<f32>>, GenerateError>;
}
