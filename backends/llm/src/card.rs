//! The model card: what the frontend needs to talk to a language or embedding model without
//! touching its weights: the tokenizer, the chat template, special tokens and limits. Workers
//! build it when they load a model and hand it to the frontend (serialisable, so a remote worker
//! can publish it).

//!
//! The struct itself is the seam's (`tritium_backend_api::llm::ModelCard`); this file reads it from
//! a GGUF file's metadata or a Hugging Face folder.
use std::fs;
use std::path::Path;

use candle_core::quantized::gguf_file::Content;

use serde_json::Value as Json;

use tritium_backend_api::llm::{ModelCard, ModelKind, card_from_hf_files, push_unique};

use crate::gguf_tokenizer::{self, meta_bool, meta_str, meta_u64, token_at};

/// The card of a GGUF model, from its metadata alone (the tokenizer is rebuilt from
/// `tokenizer.ggml.*`). `source` names the file in errors and on the card.
pub fn card_from_gguf(content: &Content, source: &str) -> Result<ModelCard, String> {
    let md = &content.metadata;
    let fail = |e: String| format!("{source}: {e}");
    let tokenizer = gguf_tokenizer::build(md).map_err(fail)?;
    let token = |key: &str| -> Result<Option<(u32, String)>, String> {
        match meta_u64(md, key).map_err(fail)? {
            None => Ok(None),
            Some(id) => {
                let text = token_at(&tokenizer.tokens, id, key).map_err(fail)?;
                let id = u32::try_from(id).map_err(|_| fail(format!("{key} is {id}, past u32")))?;
                Ok(Some((id, text)))
            }
        }
    };
    let bos = token("tokenizer.ggml.bos_token_id")?;
    let eos = token("tokenizer.ggml.eos_token_id")?;
    let mut eos_token_ids = Vec::new();
    for key in ["tokenizer.ggml.eos_token_id", "tokenizer.ggml.eot_token_id", "tokenizer.ggml.eom_token_id"] {
        if let Some((id, _)) = token(key)? {
            push_unique(&mut eos_token_ids, id);
        }
    }
    let add_bos_token = meta_bool(md, "tokenizer.ggml.add_bos_token").map_err(fail)?.unwrap_or(tokenizer.default_add_bos);
    if add_bos_token && bos.is_none() {
        return Err(fail("tokenizer.ggml.add_bos_token is true, but tokenizer.ggml.bos_token_id is not set".into()));
    }
    let arch =
        meta_str(md, "general.architecture").map_err(fail)?.ok_or_else(|| fail("general.architecture is missing".into()))?;
    let key = format!("{arch}.context_length");
    let context_length = meta_u64(md, &key).map_err(fail)?.ok_or_else(|| fail(format!("{key} is missing")))?;
    Ok(ModelCard {
        kind: ModelKind::Generate,
        tokenizer_json: tokenizer.json,
        chat_template: meta_str(md, "tokenizer.chat_template").map_err(fail)?.map(str::to_owned),
        bos_token: bos.map(|(_, text)| text),
        eos_token: eos.map(|(_, text)| text),
        eos_token_ids,
        add_bos_token,
        context_length: usize::try_from(context_length).map_err(|_| fail(format!("{key} is too large")))?,
        max_input_tokens: None,
        source: source.to_owned(),
        default_completion_tokens: Some(tritium_backend_api::llm::OPENAI_COMPLETION_TOKENS),
        parsers: Default::default(),
    })
}

/// Reads the metadata of the GGUF file at `path` (not its tensors) and builds the card.
pub fn card_from_gguf_file(path: &Path) -> Result<ModelCard, String> {
    let mut file = fs::File::open(path).map_err(|e| format!("cannot open {}: {e}", path.display()))?;
    let content = Content::read(&mut file).map_err(|e| {
        tracing::debug!(path = %path.display(), "not a GGUF file: {e}");
        format!("{} is not a GGUF file", path.display())
    })?;
    card_from_gguf(&content, &path.display().to_string())
}

/// The largest Hugging Face file read from a model folder (a tokenizer.json is tens of MB).
const MAX_HF_FILE: u64 = 512 << 20;

/// The card of a model in the Hugging Face layout: `tokenizer.json`, `tokenizer_config.json`,
/// `config.json`, `generation_config.json` and, for embedders, `sentence_bert_config.json`, read
/// from `dir` and built by [`card_from_hf_files`].
pub fn card_from_hf_dir(dir: &Path, kind: ModelKind) -> Result<ModelCard, String> {
    card_from_hf_files(tritium_backend_api::llm::hf_files_from_dir(dir, kind, MAX_HF_FILE)?, kind, &dir.display().to_string())
}

/// What `path` holds: a `.gguf` file is a language model; a Hugging Face folder is told apart by
/// its sentence-transformers files or its `config.json`.
pub fn detect_kind(path: &Path) -> Result<ModelKind, String> {
    let shown = path.display();
    let meta = fs::metadata(path).map_err(|e| format!("{shown}: {e}"))?;
    if meta.is_file() {
        if path.extension().is_some_and(|ext| ext.eq_ignore_ascii_case("gguf")) {
            return Ok(ModelKind::Generate);
        }
        return Err(format!("{shown}: a model file must be a .gguf; other models are Hugging Face folders"));
    }
    if path.join("modules.json").is_file() || path.join("sentence_bert_config.json").is_file() {
        return Ok(ModelKind::Embed);
    }
    let config = read_json(path, "config.json")?.ok_or_else(|| {
        format!("{shown}: cannot tell what kind of model this is: it is not a .gguf file and has no config.json")
    })?;
    let architectures: Vec<&str> = config
        .get("architectures")
        .and_then(Json::as_array)
        .map(|list| list.iter().filter_map(Json::as_str).collect())
        .unwrap_or_default();
    let model_type = config.get("model_type").and_then(Json::as_str).unwrap_or("");
    let generates =
        |name: &&str| ["ForCausalLM", "LMHeadModel", "ForConditionalGeneration"].iter().any(|suffix| name.ends_with(suffix));
    let encoder = |name: &&str| {
        ["Bert", "Roberta"].iter().any(|family| name.contains(family))
            && !name.ends_with("ForMaskedLM")
            && !name.ends_with("LMHeadModel")
    };
    if architectures.iter().any(encoder) {
        return Ok(ModelKind::Embed);
    }
    if ENCODER_TYPES.contains(&model_type) && !architectures.iter().any(generates) {
        return Ok(ModelKind::Embed);
    }
    if GENERATOR_TYPES.contains(&model_type) || architectures.iter().any(generates) {
        return Ok(ModelKind::Generate);
    }
    Err(format!(
        "{shown}: cannot tell what kind of model this is from config.json (model_type {model_type:?}, \
         architectures {architectures:?}): expected a causal language model or a BERT-style sentence embedder"
    ))
}

const ENCODER_TYPES: &[&str] = &["bert", "roberta", "xlm-roberta", "distilbert", "modernbert", "nomic_bert", "mpnet"];
const GENERATOR_TYPES: &[&str] = &[
    "llama",
    "mistral",
    "mixtral",
    "qwen2",
    "qwen2_moe",
    "qwen3",
    "qwen3_moe",
    "gemma",
    "gemma2",
    "gemma3",
    "gemma3_text",
    "phi",
    "phi3",
    "starcoder2",
    "stablelm",
    "olmo",
    "olmo2",
    "smollm3",
    "granite",
    "gpt2",
    "gpt_neox",
];

fn read_json(dir: &Path, name: &str) -> Result<Option<Json>, String> {
    tritium_backend_api::llm::read_hf_json(dir, name, MAX_HF_FILE)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
pub(crate) mod tests {
    use std::str::FromStr;

    use tokenizers::Tokenizer;

    use super::*;

    pub(crate) const SMOLLM2: &str = crate::test_models::SMOLLM2_GGUF;
    pub(crate) const MINILM: &str = crate::test_models::MINILM_DIR;
    pub(crate) use crate::test_models::installed_model as model_path;

    fn encode(tokenizer: &Tokenizer, text: &str) -> Vec<u32> {
        tokenizer.encode(text, false).unwrap().get_ids().to_vec()
    }

    #[test]
    fn smollm2_card_from_gguf() {
        let card = card_from_gguf_file(&model_path(SMOLLM2)).unwrap();
        assert_eq!(card.kind, ModelKind::Generate);
        assert_eq!(card.bos_token.as_deref(), Some("<|im_start|>"));
        assert_eq!(card.eos_token.as_deref(), Some("<|im_end|>"));
        assert!(card.eos_token_ids.contains(&2), "{:?}", card.eos_token_ids);
        assert!(!card.add_bos_token);
        assert_eq!(card.context_length, 8192);
        assert_eq!(card.max_input_tokens, None);
        assert!(card.chat_template.as_deref().is_some_and(|t| t.contains("<|im_start|>")));

        let tokenizer = Tokenizer::from_str(&card.tokenizer_json).unwrap();
        assert_eq!(tokenizer.get_vocab_size(true), 49152);
        // Golden ids from llama.cpp's tokenization of this model (digits are split one by one).
        assert_eq!(encode(&tokenizer, "Hello world! 12345"), vec![19556, 905, 17, 216, 33, 34, 35, 36, 37]);
        assert_eq!(encode(&tokenizer, "Café déjà vu."), vec![51, 1939, 2756, 32564, 90, 16739, 386, 101, 30]);
        assert_eq!(encode(&tokenizer, "  multiple   spaces"), vec![216, 2701, 256, 5600]);
        assert_eq!(encode(&tokenizer, "The capital of France is"), vec![504, 3575, 282, 4649, 314]);
        let chat = encode(&tokenizer, "<|im_start|>user\nHi<|im_end|>");
        assert_eq!((chat[0], chat[chat.len() - 1]), (1, 2));

        for text in ["Hello world! 12345", "Grüße aus Köln 🙂 日本語 naïve", "  two\n\nlines\t tab"] {
            let ids = encode(&tokenizer, text);
            assert_eq!(tokenizer.decode(&ids, true).unwrap(), text);
        }
        assert_eq!(tokenizer.decode(&chat, true).unwrap(), "user\nHi");
    }

    #[test]
    fn minilm_card_from_hf_dir() {
        let dir = model_path(MINILM);
        assert_eq!(detect_kind(&dir).unwrap(), ModelKind::Embed);
        let card = card_from_hf_dir(&dir, ModelKind::Embed).unwrap();
        assert_eq!(card.kind, ModelKind::Embed);
        assert_eq!(card.context_length, 512);
        assert_eq!(card.max_input_tokens, Some(256));
        assert_eq!(card.chat_template, None);
        let tokenizer = Tokenizer::from_str(&card.tokenizer_json).unwrap();
        let ids = tokenizer.encode("A man is eating food.", true).unwrap().get_ids().to_vec();
        assert!(ids.len() < 128, "{ids:?}");
        assert_eq!((ids[0], ids[ids.len() - 1]), (101, 102));
    }

    #[test]
    fn hf_dir_reads_templates_special_tokens_and_eos_ids() {
        let gguf_card = card_from_gguf_file(&model_path(SMOLLM2)).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let write = |name: &str, text: &str| fs::write(dir.path().join(name), text).unwrap();
        write("tokenizer.json", &gguf_card.tokenizer_json);
        write(
            "tokenizer_config.json",
            r#"{"add_bos_token": true, "bos_token": "<|im_start|>",
                "eos_token": {"content": "<|endoftext|>", "special": true},
                "chat_template": [{"name": "tool_use", "template": "T"}, {"name": "default", "template": "D"}]}"#,
        );
        write("generation_config.json", r#"{"eos_token_id": [2, 5]}"#);
        write(
            "config.json",
            r#"{"model_type": "llama", "architectures": ["LlamaForCausalLM"],
                                 "max_position_embeddings": 2048, "eos_token_id": 7}"#,
        );
        assert_eq!(detect_kind(dir.path()).unwrap(), ModelKind::Generate);
        let card = card_from_hf_dir(dir.path(), ModelKind::Generate).unwrap();
        assert_eq!(card.chat_template.as_deref(), Some("D"));
        assert_eq!(card.bos_token.as_deref(), Some("<|im_start|>"));
        assert_eq!(card.eos_token.as_deref(), Some("<|endoftext|>"));
        assert_eq!(card.eos_token_ids, vec![2, 5, 0]);
        assert!(card.add_bos_token);
        assert_eq!(card.context_length, 2048);
        assert_eq!(card.max_input_tokens, None);

        // Without generation_config.json the ids come from config.json; a lone template file counts.
        fs::remove_file(dir.path().join("generation_config.json")).unwrap();
        write("tokenizer_config.json", "{}");
        write("chat_template.jinja", "J");
        let card = card_from_hf_dir(dir.path(), ModelKind::Generate).unwrap();
        assert_eq!(card.eos_token_ids, vec![7]);
        assert_eq!(card.chat_template.as_deref(), Some("J"));
        assert_eq!(card.bos_token, None);
        assert!(!card.add_bos_token);

        // A post-processor that writes BOS first (as Llama 3's does) means BOS is added.
        let mut tokenizer: Json = serde_json::from_str(&gguf_card.tokenizer_json).unwrap();
        tokenizer["post_processor"] = serde_json::json!({"type": "Sequence", "processors": [
            {"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": false, "use_regex": true},
            {"type": "TemplateProcessing",
             "single": [{"SpecialToken": {"id": "<|im_start|>", "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}],
             "pair": [], "special_tokens": {}},
        ]});
        write("tokenizer.json", &tokenizer.to_string());
        write("config.json", r#"{"max_position_embeddings": 2048, "bos_token_id": 1}"#);
        let card = card_from_hf_dir(dir.path(), ModelKind::Generate).unwrap();
        assert_eq!(card.bos_token.as_deref(), Some("<|im_start|>"));
        assert!(card.add_bos_token);
    }

    #[test]
    fn detect_kind_tells_models_apart() {
        assert_eq!(detect_kind(&model_path(SMOLLM2)).unwrap(), ModelKind::Generate);
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("config.json");
        let kind = |json: &str| {
            fs::write(&config, json).unwrap();
            detect_kind(dir.path())
        };
        assert_eq!(kind(r#"{"architectures": ["XLMRobertaModel"]}"#), Ok(ModelKind::Embed));
        assert_eq!(kind(r#"{"model_type": "bert", "architectures": ["BertForMaskedLM"]}"#), Ok(ModelKind::Embed));
        assert_eq!(kind(r#"{"model_type": "qwen2"}"#), Ok(ModelKind::Generate));
        assert_eq!(kind(r#"{"architectures": ["MistralForCausalLM"]}"#), Ok(ModelKind::Generate));
        let err = kind(r#"{"model_type": "whisper"}"#).unwrap_err();
        assert!(err.contains(&dir.path().display().to_string()) && err.contains("whisper"), "{err}");
        fs::remove_file(&config).unwrap();
        let err = detect_kind(dir.path()).unwrap_err();
        assert!(err.contains("no config.json"), "{err}");
        let other = dir.path().join("weights.bin");
        fs::write(&other, b"x").unwrap();
        assert!(detect_kind(&other).unwrap_err().contains(".gguf"));
        assert!(detect_kind(&dir.path().join("absent")).is_err());
    }
}
