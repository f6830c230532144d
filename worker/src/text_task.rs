//! Tensor models the OpenAI door serves as text scorers or classifiers: a cross-encoder (`/v1/score`,
//! `/v1/rerank`) or a sequence classifier (`/classify`), named by the config parameter
//! `openai_task` (`score` or `classify`), with the tokenizer its inputs were trained with
//! (`tokenizer.json` in the model folder, or the file the `tokenizer` parameter names). Its
//! tensors stay its own: `input_ids`, `attention_mask` and `token_type_ids` (those it declares,
//! INT64 `[batch, tokens]`) in, its first output (FP32 `[batch, classes]`) out; KServe clients reach
//! it as any model.

use std::path::Path;

use tritium_backend_api::config_parameter;
use tritium_proto::inference::ModelConfig;

/// The config parameter naming the task.
pub const TASK_PARAMETER: &str = "openai_task";
/// The largest tokenizer file read (a large multilingual vocabulary is about 20 MiB).
pub const MAX_TOKENIZER_BYTES: usize = 64 << 20;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TextTaskKind {
    /// Each input is a pair of texts; the first output's first value is the pair's score.
    Score,
    /// Each input is a text; the first output holds a logit per class.
    Classify,
}

#[derive(Debug, Clone)]
pub struct TextTask {
    pub kind: TextTaskKind,
    /// The `tokenizer.json` text.
    pub tokenizer_json: String,
}

impl TextTask {
    /// The task `config` names, its tokenizer read from `model_dir`; `None` when it names none.
    pub fn from_config(config: &ModelConfig, model_dir: Option<&Path>) -> Result<Option<TextTask>, String> {
        let kind = match config_parameter(config, TASK_PARAMETER).map(str::trim) {
            None | Some("") => return Ok(None),
            Some("score") => TextTaskKind::Score,
            Some("classify") => TextTaskKind::Classify,
            Some(other) => return Err(format!("parameter {TASK_PARAMETER} '{other}': the tasks are 'score' and 'classify'")),
        };
        if config.output.is_empty() {
            return Err(format!("parameter {TASK_PARAMETER}: the model declares no output to read scores from"));
        }
        let file = config_parameter(config, "tokenizer").filter(|f| !f.is_empty()).unwrap_or("tokenizer.json");
        tritium_repository::model_files::confined(file).map_err(|why| format!("parameter tokenizer {why}"))?;
        let bytes = tritium_repository::model_files::read_model_file(model_dir, "", file, MAX_TOKENIZER_BYTES)?;
        let tokenizer_json = String::from_utf8(bytes.to_vec()).map_err(|_| format!("'{file}' is not UTF-8"))?;
        Ok(Some(TextTask { kind, tokenizer_json }))
    }
}
