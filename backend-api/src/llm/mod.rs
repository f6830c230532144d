//! The language-model contract: what the OpenAI bridge, the router and remote workers exchange
//! with an engine. Token ids in, token ids out ([`LanguageModel`]), vectors for embedders
//! ([`EmbeddingModel`]), the [`ModelCard`] the frontend tokenizes with, structured-output
//! [`Constraint`]s, KV-cache events and KV-block transfers. No weights, no candle: the engines
//! (`tritium-llm`) implement it.

mod card;
mod hf_card;
mod parser_names;
mod constraint;
mod kv_transfer;
mod text_input;
mod types;
#[cfg(feature = "vocabulary")]
mod vocab;

use std::sync::Arc;

use async_trait::async_trait;
use tritium_proto::inference::DataType as ConfigDataType;
use tritium_proto::inference::{ModelConfig, ModelInput, ModelOutput, ModelTransactionPolicy};

pub use card::{ModelCard, ModelKind, OPENAI_COMPLETION_TOKENS};
pub use parser_names::{OutputParserNames, REASONING_PARSER_NAMES, TOOL_CALL_PARSER_NAMES};
pub use hf_card::{HfFiles, card_from_hf_files, hf_files_from_dir, push_unique, read_hf_json, template_of_config};
pub use constraint::Constraint;
pub use kv_transfer::{ExportedBlock, ImportedBlocks, KvExport, TransferLayout};
pub use text_input::{OpenAiApi, OpenAiChunks, OpenAiRequest, PrefillHandoff};
pub use types::{
    AdapterInfo, EngineStats, FinishReason, GenerateError, GenerateEvent, GenerateRequest, GeneratedToken, PrefillSource, PrefixPin,
    Priority, PromptLogprob, SamplingOptions, StopOptions, TokenStream,
};
#[cfg(feature = "vocabulary")]
pub use vocab::{Vocabulary, byte_level_inverse};

/// The first character of a session key the server derived itself (a Responses API
/// conversation's), which no client header can carry (header values hold no control characters):
/// a router whose session table is full routes such a request without affinity rather than
/// refusing it, as the client asked for none.
pub const IMPLIED_SESSION_MARK: char = '\u{2}';

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

    /// The LoRA adapters loaded, by name.
    fn adapters(&self) -> Vec<AdapterInfo> {
        Vec::new()
    }

    /// Loads the LoRA adapter at `path` (a GGUF adapter or a PEFT folder) as `name`.
    fn load_adapter(&self, name: &str, path: &std::path::Path) -> Result<AdapterInfo, GenerateError> {
        let _ = (name, path);
        Err(GenerateError::InvalidRequest("this model's engine cannot load LoRA adapters".to_string()))
    }

    /// Unloads adapter `name`; sequences already running with it finish with it. `Ok(false)`
    /// when no adapter has that name.
    fn unload_adapter(&self, name: &str) -> Result<bool, GenerateError> {
        let _ = name;
        Ok(false)
    }
}

/// A sentence embedder: token ids of each input in, one vector per input out.
#[async_trait]
pub trait EmbeddingModel: Send + Sync + 'static {
    fn card(&self) -> &Arc<ModelCard>;
    async fn embed(&self, inputs: Vec<Vec<u32>>) -> Result<Vec<Vec<f32>>, GenerateError>;
}

/// Gives a language model's config its KServe face when the config declares no inputs and no
/// outputs: inputs `text_input` BYTES [1] and the optional `streaming` BOOL [1],
/// `sampling_parameters` BYTES [1] (a JSON object) and `exclude_input_in_output` BOOL [1], outputs
/// `text_output` and `finish_reason` BYTES [-1], no batching dimension. A language model always
/// answers with a stream, so it is always decoupled.
pub fn complete_llm_config(config: &mut ModelConfig) {
    let bytes = ConfigDataType::TypeString as i32;
    if config.input.is_empty() && config.output.is_empty() {
        config.max_batch_size = 0;
        let optional = |name: &str, data_type: ConfigDataType| ModelInput {
            name: name.into(),
            data_type: data_type as i32,
            dims: vec![1],
            optional: true,
            ..Default::default()
        };
        config.input = vec![
            ModelInput { name: "text_input".into(), data_type: bytes, dims: vec![1], ..Default::default() },
            optional("streaming", ConfigDataType::TypeBool),
            optional("sampling_parameters", ConfigDataType::TypeString),
            optional("exclude_input_in_output", ConfigDataType::TypeBool),
        ];
        config.output = vec![
            ModelOutput { name: "text_output".into(), data_type: bytes, dims: vec![-1], ..Default::default() },
            ModelOutput { name: "finish_reason".into(), data_type: bytes, dims: vec![-1], ..Default::default() },
        ];
    }
    config.model_transaction_policy = Some(ModelTransactionPolicy { decoupled: true });
}
