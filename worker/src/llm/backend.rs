//! Language models in the model registry: the `tritium_llm` backend. A `config.pbtxt` names it
//! and points at the weights; the KServe inputs and outputs (`text_input`, `streaming` ->
//! `text_output`, `finish_reason`, decoupled) are filled in when the config leaves them out.
//!
//! ```text
//! backend: "tritium_llm"
//! parameters { key: "model_path" value { string_value: "SmolLM2-135M-Instruct.Q4_1.gguf" } }
//! parameters { key: "max_sequences" value { string_value: "8" } }
//! ```

use std::path::{Path, PathBuf};
use std::sync::Arc;

use async_trait::async_trait;
use tritium_proto::ErrorCode;
use tritium_proto::inference::DataType as ConfigDataType;
use tritium_proto::inference::{ModelConfig, ModelInput, ModelOutput, ModelTransactionPolicy};

use super::LanguageModel;
use super::engine::{EngineOptions, LlmEngine};
use crate::backend::{Backend, BackendContext, BackendError, BackendFactory, BackendRequest, Responder, config_parameter};

/// The backend name a `config.pbtxt` gives for a language model.
pub const LLM_BACKEND: &str = "tritium_llm";
/// The config parameter naming the weights (a GGUF file or a Hugging Face folder), relative to
/// the model folder unless absolute.
pub const MODEL_PATH_PARAMETER: &str = "model_path";

/// A language model as a registry entry. Its KServe requests are served by the frontend's
/// bridge (tokenization happens there), so tensors never reach [`Backend::execute`].
pub struct LlmBackend {
    name: String,
    engine: Arc<LlmEngine>,
}

#[async_trait]
impl Backend for LlmBackend {
    async fn execute(&self, _: BackendRequest, _: &mut Responder) -> Result<(), BackendError> {
        Err(BackendError::failed(
            ErrorCode::Unsupported,
            format!("the model '{}' is a language model; send text_input through the frontend", self.name),
        ))
    }

    fn language_model(&self) -> Option<Arc<dyn LanguageModel>> {
        Some(Arc::clone(&self.engine) as Arc<dyn LanguageModel>)
    }
}

/// Builds `tritium_llm` models: loads the weights named by `model_path` and starts an engine,
/// with `defaults` for the options a config does not set.
#[derive(Debug, Clone, Default)]
pub struct LlmFactory {
    pub defaults: EngineOptions,
}

impl BackendFactory for LlmFactory {
    fn create(&self, context: &BackendContext<'_>) -> Result<Arc<dyn Backend>, String> {
        let path = model_path(context.config, context.model_dir)?;
        let options = engine_options(context.config, &self.defaults)?;
        let device = super::model::default_device();
        let (model, card) = super::model::load(&path, &device)?;
        let engine = LlmEngine::start(context.model_name, model, card, options)?;
        tracing::info!(model = %context.model_name, path = %path.display(), "language model loaded");
        Ok(Arc::new(LlmBackend { name: context.model_name.to_string(), engine: Arc::new(engine) }))
    }

    fn complete_config(&self, config: &mut ModelConfig, _: Option<&Path>) -> Result<(), String> {
        complete_llm_config(config);
        Ok(())
    }
}

/// The weights a config points at, resolved against the model folder.
pub fn model_path(config: &ModelConfig, model_dir: Option<&Path>) -> Result<PathBuf, String> {
    let Some(path) = config_parameter(config, MODEL_PATH_PARAMETER).filter(|p| !p.is_empty()) else {
        return Err(format!("the config has no '{MODEL_PATH_PARAMETER}' parameter naming the weights"));
    };
    crate::repository::model_files::resolve_model_file(model_dir, path).map_err(|why| format!("{MODEL_PATH_PARAMETER} {why}"))
}

fn engine_options(config: &ModelConfig, defaults: &EngineOptions) -> Result<EngineOptions, String> {
    let number = |key: &str, default: usize| -> Result<usize, String> {
        match config_parameter(config, key) {
            None | Some("") => Ok(default),
            Some(text) => text.trim().parse().map_err(|_| format!("parameter '{key}' must be a whole number, not '{text}'")),
        }
    };
    Ok(EngineOptions {
        max_sequences: number("max_sequences", defaults.max_sequences)?,
        max_kv_tokens: number("max_kv_tokens", defaults.max_kv_tokens)?,
        max_queue: number("max_queue", defaults.max_queue)?,
        prefill_chunk: number("prefill_chunk", defaults.prefill_chunk)?,
        max_constraint_bytes: number("max_constraint_bytes", defaults.max_constraint_bytes)?,
        kv_block_size: number("kv_block_size", defaults.kv_block_size)?,
        offload: defaults.offload.clone(),
        prefix_caching: match config_parameter(config, "prefix_caching").map(str::trim) {
            None | Some("") => defaults.prefix_caching,
            Some("true") => true,
            Some("false") => false,
            Some(text) => return Err(format!("parameter 'prefix_caching' must be true or false, not '{text}'")),
        },
    })
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
