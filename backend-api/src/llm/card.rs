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
    /// What `/v1/completions` generates at most when a request names no `max_tokens`: OpenAI's
    /// 16 for Tritium's engines; `None` for models served by Dynamo workers, which Dynamo's
    /// frontend sends no limit for (the worker's token budget, else the context, applies).
    #[serde(default = "openai_completion_tokens")]
    pub default_completion_tokens: Option<u32>,
    /// The tool-call and reasoning parsers the model's output needs, when it names them.
    #[serde(default)]
    pub parsers: super::OutputParserNames,
}

/// OpenAI's default `max_tokens` for `/v1/completions`.
pub const OPENAI_COMPLETION_TOKENS: u32 = 16;

fn openai_completion_tokens() -> Option<u32> {
    Some(OPENAI_COMPLETION_TOKENS)
}

impl ModelCard {
    /// The tokens a language model may still generate after a prompt of `prompt_tokens`, or why
    /// the prompt cannot fit its context (the one wording every door uses). A card without a
    /// context length, or an embedder's, takes any prompt.
    pub fn room_after(&self, prompt_tokens: usize) -> Result<usize, String> {
        if self.kind != ModelKind::Generate || self.context_length == 0 {
            return Ok(usize::MAX);
        }
        match self.context_length.checked_sub(prompt_tokens) {
            Some(room) if room > 0 => Ok(room),
            _ => Err(format!("the prompt has {prompt_tokens} tokens; the model's context length is {}", self.context_length)),
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn card(kind: ModelKind, context_length: usize) -> ModelCard {
        ModelCard {
            kind,
            tokenizer_json: String::new(),
            chat_template: None,
            bos_token: None,
            eos_token: None,
            eos_token_ids: Vec::new(),
            add_bos_token: false,
            context_length,
            max_input_tokens: None,
            source: "test".into(),
            default_completion_tokens: Some(OPENAI_COMPLETION_TOKENS),
            parsers: Default::default(),
        }
    }

    #[test]
    fn a_prompt_leaves_room_or_is_refused_in_one_wording() {
        let generate = card(ModelKind::Generate, 10);
        assert_eq!(generate.room_after(4).unwrap(), 6);
        assert_eq!(generate.room_after(9).unwrap(), 1);
        for too_long in [10, 11] {
            assert_eq!(
                generate.room_after(too_long).unwrap_err(),
                format!("the prompt has {too_long} tokens; the model's context length is 10")
            );
        }
        assert_eq!(card(ModelKind::Embed, 10).room_after(50).unwrap(), usize::MAX);
    }
}
