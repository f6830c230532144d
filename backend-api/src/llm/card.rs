//! The model card: what the frontend needs to talk to a language or embedding model without
//! touching its weights: the tokenizer, the chat template, special tokens and limits. Workers
//! build it when they load a model and hand it to the frontend (serialisable, so a remote worker
//! can publish it); the engine crate reads it from a model's files.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ModelKind {
    /// A causal language model: completions and chat.
    Generate,
    /// A sentence embedder: `/v1/embeddings`.
    Embed,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelCard {
    pub kind: ModelKind,
    /// A Hugging Face `tokenizer.json`, as text (built from the GGUF metadata when the model has none).
    pub tokenizer_json: String,
    /// A Jinja chat template (from `tokenizer_config.json` or the GGUF `tokenizer.chat_template`).
    pub chat_template: Option<String>,
    /// The text of the BOS and EOS tokens, for templates that refer to them.
    pub bos_token: Option<String>,
    pub eos_token: Option<String>,
    /// Token ids that end a sequence (the EOS token and, e.g., `<|im_end|>` or `<|eot_id|>`).
    pub eos_token_ids: Vec<u32>,
    /// Whether a raw prompt gets the BOS token in front when tokenized.
    pub add_bos_token: bool,
    /// The longest sequence (prompt plus completion) the model takes.
    pub context_length: usize,
    /// For embedders: inputs longer than this many tokens are truncated.
    pub max_input_tokens: Option<usize>,
    /// Where the model came from (a file or folder), for `/v1/models` and logs.
    pub source: String,
}
