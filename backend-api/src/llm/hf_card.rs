//! A [`ModelCard`] from a model's Hugging Face files: the tokenizer, its config with the chat
//! template and special tokens, `config.json`'s context length and `generation_config.json`'s
//! end-of-sequence ids. Pure JSON work, so engines loading a folder and frontends reading a
//! remote worker's files (Dynamo's model cards) build the same card.

use std::path::Path;

use serde_json::Value as Json;

use super::{ModelCard, ModelKind};

/// The contents of a model's Hugging Face files; the JSON ones parsed, `None` when absent.
#[derive(Debug, Default)]
pub struct HfFiles {
    pub tokenizer_json: String,
    pub tokenizer_config: Option<Json>,
    pub config: Option<Json>,
    pub generation_config: Option<Json>,
    /// A template kept beside the config (`chat_template.jinja`, or `chat_template.json`'s), used
    /// when `tokenizer_config.json` has none.
    pub chat_template: Option<String>,
    /// Embedders: `sentence_bert_config.json` (its `max_seq_length`).
    pub sentence_bert_config: Option<Json>,
}

/// The Hugging Face files of the model folder `dir` (`tokenizer.json` required, the others when
/// present; `sentence_bert_config.json` for embedders), each read whole up to `max_file` bytes.
/// Errors name the file, never its contents.
pub fn hf_files_from_dir(dir: &Path, kind: ModelKind, max_file: u64) -> Result<HfFiles, String> {
    let source = dir.display();
    let tokenizer_json = read_hf_text(dir, "tokenizer.json", max_file)?
        .ok_or_else(|| format!("{source}: there is no tokenizer.json; only models with a tokenizer.json are supported"))?;
    let chat_template = match read_hf_text(dir, "chat_template.jinja", max_file)? {
        Some(template) => Some(template),
        // Newer `transformers` write the template next to the config instead of into it.
        None => read_hf_json(dir, "chat_template.json", max_file)?.as_ref().and_then(template_of_config),
    };
    Ok(HfFiles {
        tokenizer_json,
        tokenizer_config: read_hf_json(dir, "tokenizer_config.json", max_file)?,
        config: read_hf_json(dir, "config.json", max_file)?,
        generation_config: read_hf_json(dir, "generation_config.json", max_file)?,
        chat_template,
        sentence_bert_config: match kind {
            ModelKind::Embed => read_hf_json(dir, "sentence_bert_config.json", max_file)?,
            ModelKind::Generate => None,
        },
    })
}

/// `dir/name` as text, at most `limit` bytes; `None` when there is no such file.
fn read_hf_text(dir: &Path, name: &str, limit: u64) -> Result<Option<String>, String> {
    use std::io::Read;
    let path = dir.join(name);
    let file = match std::fs::File::open(&path) {
        Ok(file) => file,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(format!("cannot read {}: {}", path.display(), e.kind())),
    };
    let mut bytes = Vec::new();
    file.take(limit.saturating_add(1))
        .read_to_end(&mut bytes)
        .map_err(|e| format!("cannot read {}: {}", path.display(), e.kind()))?;
    if bytes.len() as u64 > limit {
        return Err(format!("{} is larger than {limit} bytes", path.display()));
    }
    String::from_utf8(bytes).map(Some).map_err(|_| format!("{} is not UTF-8 text", path.display()))
}

/// `dir/name` parsed as JSON, at most `limit` bytes; `None` when there is no such file.
pub fn read_hf_json(dir: &Path, name: &str, limit: u64) -> Result<Option<Json>, String> {
    match read_hf_text(dir, name, limit)? {
        None => Ok(None),
        Some(text) => {
            serde_json::from_str(&text).map(Some).map_err(|e| format!("{} is not valid JSON: {e}", dir.join(name).display()))
        }
    }
}

/// The card of a model in the Hugging Face layout, from its files' contents (`source` names the
/// model in errors and on the card). A frontend reads them from a folder, or from the files a
/// remote worker's card names.
///
/// Padding and truncation are removed from the tokenizer: the engines batch and limit inputs
/// themselves and need every encoding at its real length (MiniLM ships fixed padding to 128).
pub fn card_from_hf_files(files: HfFiles, kind: ModelKind, source: &str) -> Result<ModelCard, String> {
    let fail = |e: String| format!("{source}: {e}");
    let text = files.tokenizer_json;
    let mut tokenizer: Json = serde_json::from_str(&text).map_err(|e| fail(format!("tokenizer.json is not valid JSON: {e}")))?;
    let tokenizer_config = files.tokenizer_config.unwrap_or(Json::Null);
    let config = files.config.unwrap_or(Json::Null);
    let generation_config = files.generation_config.unwrap_or(Json::Null);

    let chat_template = template_of_config(&tokenizer_config).or(files.chat_template);
    let config_id = |key: &str| token_ids(config.get(key).or_else(|| text_config(&config, key)));
    let bos_token = special_token_text(&tokenizer_config, "bos_token")
        .or_else(|| config_id("bos_token_id").first().and_then(|&id| token_text(&tokenizer, id)));
    let mut eos_token_ids = token_ids(generation_config.get("eos_token_id"));
    if eos_token_ids.is_empty() {
        eos_token_ids = config_id("eos_token_id");
    }
    let eos_token = special_token_text(&tokenizer_config, "eos_token")
        .or_else(|| eos_token_ids.first().and_then(|&id| token_text(&tokenizer, id)));
    if let Some(id) = eos_token.as_deref().and_then(|text| token_id(&tokenizer, text)) {
        push_unique(&mut eos_token_ids, id);
    }
    let add_bos_token = match tokenizer_config.get("add_bos_token").and_then(Json::as_bool) {
        Some(add) => add,
        None => bos_token.as_deref().is_some_and(|bos| post_processor_adds(&tokenizer, bos)),
    };
    let context_length = context_length(&config, &tokenizer_config).ok_or_else(|| {
        fail("config.json has no max_position_embeddings (nor n_positions, max_sequence_length, seq_length)".into())
    })?;
    let max_input_tokens = match kind {
        ModelKind::Generate => None,
        ModelKind::Embed => {
            let sbert = files.sentence_bert_config.unwrap_or(Json::Null);
            let limit = sbert.get("max_seq_length").and_then(json_usize).unwrap_or(512);
            Some(limit.min(context_length))
        }
    };

    let fixed = ["padding", "truncation"].iter().any(|key| tokenizer.get(*key).is_some_and(|v| !v.is_null()));
    let tokenizer_json = if fixed {
        if let Some(map) = tokenizer.as_object_mut() {
            map.insert("padding".into(), Json::Null);
            map.insert("truncation".into(), Json::Null);
        }
        serde_json::to_string(&tokenizer).map_err(|e| fail(format!("cannot write tokenizer.json: {e}")))?
    } else {
        text
    };
    Ok(ModelCard {
        kind,
        tokenizer_json,
        chat_template,
        bos_token,
        eos_token,
        eos_token_ids,
        add_bos_token,
        context_length,
        max_input_tokens,
        source: source.to_owned(),
        default_completion_tokens: Some(super::OPENAI_COMPLETION_TOKENS),
        parsers: Default::default(),
    })
}

/// A `tokenizer_config.json`'s (or `chat_template.json`'s) `chat_template`: a string, or a list
/// of `{name, template}` of which "default" is the one.
pub fn template_of_config(tokenizer_config: &Json) -> Option<String> {
    match tokenizer_config.get("chat_template")? {
        Json::String(template) => Some(template.clone()),
        Json::Array(named) => named
            .iter()
            .find(|t| t.get("name").and_then(Json::as_str) == Some("default"))
            .and_then(|t| t.get("template")?.as_str())
            .map(str::to_owned),
        _ => None,
    }
}

/// `bos_token`/`eos_token`: a string or an added-token object with `content`.
fn special_token_text(tokenizer_config: &Json, key: &str) -> Option<String> {
    match tokenizer_config.get(key)? {
        Json::String(text) => Some(text.clone()),
        Json::Object(token) => token.get("content")?.as_str().map(str::to_owned),
        _ => None,
    }
}

/// An id or a list of ids.
fn token_ids(value: Option<&Json>) -> Vec<u32> {
    let one = |v: &Json| v.as_u64().and_then(|id| u32::try_from(id).ok());
    match value {
        Some(Json::Array(ids)) => ids.iter().filter_map(one).collect(),
        Some(v) => one(v).into_iter().collect(),
        None => Vec::new(),
    }
}

/// Multimodal configs keep the language model's settings under `text_config`.
fn text_config<'a>(config: &'a Json, key: &str) -> Option<&'a Json> {
    config.get("text_config")?.get(key)
}

fn context_length(config: &Json, tokenizer_config: &Json) -> Option<usize> {
    for key in ["max_position_embeddings", "n_positions", "max_sequence_length", "seq_length"] {
        if let Some(n) = config.get(key).or_else(|| text_config(config, key)).and_then(json_usize) {
            return Some(n);
        }
    }
    // `model_max_length` is a huge sentinel when the tokenizer has no limit.
    tokenizer_config.get("model_max_length").and_then(json_usize).filter(|&n| n <= 10_000_000)
}

fn json_usize(value: &Json) -> Option<usize> {
    value.as_u64().and_then(|n| usize::try_from(n).ok())
}

fn token_id(tokenizer: &Json, text: &str) -> Option<u32> {
    let added = tokenizer
        .get("added_tokens")
        .and_then(Json::as_array)
        .and_then(|tokens| tokens.iter().find(|t| t.get("content").and_then(Json::as_str) == Some(text))?.get("id")?.as_u64());
    let id = added.or_else(|| match tokenizer.get("model")?.get("vocab")? {
        Json::Object(vocab) => vocab.get(text)?.as_u64(),
        // Unigram: a list of `[piece, score]`, the id being the index.
        Json::Array(pieces) => pieces.iter().position(|p| p.get(0).and_then(Json::as_str) == Some(text)).map(|i| i as u64),
        _ => None,
    })?;
    u32::try_from(id).ok()
}

fn token_text(tokenizer: &Json, id: u32) -> Option<String> {
    let id = u64::from(id);
    let added = tokenizer
        .get("added_tokens")
        .and_then(Json::as_array)
        .and_then(|tokens| tokens.iter().find(|t| t.get("id").and_then(Json::as_u64) == Some(id))?.get("content")?.as_str());
    let text = added.or_else(|| match tokenizer.get("model")?.get("vocab")? {
        Json::Object(vocab) => vocab.iter().find(|(_, v)| v.as_u64() == Some(id)).map(|(k, _)| k.as_str()),
        Json::Array(pieces) => pieces.get(usize::try_from(id).ok()?)?.get(0)?.as_str(),
        _ => None,
    })?;
    Some(text.to_owned())
}

/// Whether the tokenizer's own post-processor puts `token` first (Llama 3 adds BOS that way,
/// with no `add_bos_token` in its config).
fn post_processor_adds(tokenizer: &Json, token: &str) -> bool {
    let Some(post) = tokenizer.get("post_processor") else {
        return false;
    };
    let steps = match post.get("processors").and_then(Json::as_array) {
        Some(steps) => steps.iter().collect(),
        None => vec![post],
    };
    steps.iter().any(|step| {
        step.get("type").and_then(Json::as_str) == Some("TemplateProcessing")
            && step.pointer("/single/0/SpecialToken/id").and_then(Json::as_str) == Some(token)
    })
}

pub fn push_unique(ids: &mut Vec<u32>, id: u32) {
    if !ids.contains(&id) {
        ids.push(id);
    }
}
