//! Language models in the model registry: the `tritium_llm` backend. A `config.pbtxt` names it
//! and points at the weights; the KServe inputs and outputs (`text_input`, `streaming` ->
//! `text_output`, `finish_reason`, decoupled) are filled in when the config leaves them out.
//!
//! ```text
//! backend: "tritium_llm"
//! parameters { key: "model_path" value { string_value: "SmolLM2-135M-Instruct.Q4_1.gguf" } }
//! parameters { key: "max_sequences" value { string_value: "8" } }
//! parameters { key: "scheduling_policy" value { string_value: "priority" } }
//! parameters { key: "tool_call_parser" value { string_value: "hermes" } }
//! parameters { key: "reasoning_parser" value { string_value: "qwen3" } }
//! ```

use std::path::{Path, PathBuf};
use std::sync::Arc;

use tritium_backend_api::llm::{OutputParserNames, complete_llm_config};
use tritium_backend_api::{BackendContext, BackendFactory, ConfigParams, Engine, config_parameter};
use tritium_proto::inference::ModelConfig;

use crate::engine::LlmEngine;
use crate::engine_state::EngineOptions;

/// The backend name a `config.pbtxt` gives for a language model.
pub const LLM_BACKEND: &str = "tritium_llm";
/// The config parameter naming the weights (a GGUF file or a Hugging Face folder), relative to
/// the model folder unless absolute.
pub const MODEL_PATH_PARAMETER: &str = "model_path";

/// Builds `tritium_llm` models: loads the weights named by `model_path` and starts an engine,
/// with `defaults` for the options a config does not set.
#[derive(Debug, Clone, Default)]
pub struct LlmFactory {
    pub defaults: EngineOptions,
}

impl BackendFactory for LlmFactory {
    fn create(&self, context: &BackendContext<'_>) -> Result<Engine, String> {
        let path = model_path(context.config, context.model_dir)?;
        let options = engine_options(context.config, &self.defaults)?;
        tritium_backend_api::warn_unread_parameters(context.model_name, "language-model", context.config, &READ_PARAMETERS);
        let device = super::model::default_device();
        let (model, mut card) = super::model::load(&path, &device)?;
        card.parsers = OutputParserNames::checked(
            config_parameter(context.config, "tool_call_parser").filter(|name| !name.is_empty()).map(str::to_owned),
            config_parameter(context.config, "reasoning_parser").filter(|name| !name.is_empty()).map(str::to_owned),
            "parameters",
        )?;
        let engine = LlmEngine::start(context.model_name, model, card, options)?;
        tracing::info!(model = %context.model_name, path = %path.display(), "language model loaded");
        Ok(Engine::Language(Arc::new(engine)))
    }

    fn complete_config(&self, config: &mut ModelConfig, _: Option<&Path>) -> Result<(), String> {
        complete_llm_config(config);
        Ok(())
    }
}

/// The model parameters a language model's load reads (the engine's options, its weights, its
/// output parsers).
const READ_PARAMETERS: [&str; 13] = [
    MODEL_PATH_PARAMETER,
    "tool_call_parser",
    "reasoning_parser",
    "max_sequences",
    "max_kv_tokens",
    "max_queue",
    "prefill_chunk",
    "max_constraint_bytes",
    "kv_block_size",
    "prefix_caching",
    "max_loras",
    "max_lora_rank",
    "scheduling_policy",
];

/// The weights a config points at, resolved against the model folder.
pub fn model_path(config: &ModelConfig, model_dir: Option<&Path>) -> Result<PathBuf, String> {
    let Some(path) = config_parameter(config, MODEL_PATH_PARAMETER).filter(|p| !p.is_empty()) else {
        return Err(format!("the config has no '{MODEL_PATH_PARAMETER}' parameter naming the weights"));
    };
    tritium_backend_api::model_files::resolve_model_file(model_dir, path).map_err(|why| format!("{MODEL_PATH_PARAMETER} {why}"))
}

fn engine_options(config: &ModelConfig, defaults: &EngineOptions) -> Result<EngineOptions, String> {
    let params = ConfigParams::of(config);
    Ok(EngineOptions {
        max_sequences: params.number("max_sequences", defaults.max_sequences)?,
        max_kv_tokens: params.number("max_kv_tokens", defaults.max_kv_tokens)?,
        max_queue: params.number("max_queue", defaults.max_queue)?,
        prefill_chunk: params.number("prefill_chunk", defaults.prefill_chunk)?,
        max_constraint_bytes: params.number("max_constraint_bytes", defaults.max_constraint_bytes)?,
        kv_block_size: params.number("kv_block_size", defaults.kv_block_size)?,
        offload: defaults.offload.clone(),
        prefix_caching: params.flag("prefix_caching", defaults.prefix_caching)?,
        speculative: defaults.speculative,
        draft_model_path: defaults.draft_model_path.clone(),
        loras: defaults.loras.clone(),
        max_loras: params.number("max_loras", defaults.max_loras)?,
        max_lora_rank: params.number("max_lora_rank", defaults.max_lora_rank)?,
        max_pinned_kv_permille: defaults.max_pinned_kv_permille,
        scheduling_policy: match config_parameter(config, "scheduling_policy") {
            Some(name) => name.parse().map_err(|why| format!("parameter 'scheduling_policy': {why}"))?,
            None => defaults.scheduling_policy,
        },
    })
}
