//! A Dynamo worker's model card made into Tritium's [`ModelCard`]: the files the card names are
//! read (only under the file names a card uses, only regular files, at most
//! [`MAX_CARD_FILE_BYTES`]), their blake3 checksums verified, and the card built from them as
//! from a Hugging Face folder. A worker that hosts its own files (`http://…/v1/metadata/…`) is
//! asked for them over HTTP with the same bounds.

use std::path::Path;
use std::time::Duration;

use serde_json::Value as Json;
use tritium_backend_api::llm::{HfFiles, ModelCard, ModelKind, OutputParserNames, card_from_hf_files, template_of_config};

use super::records::{Card, CheckedFile};

/// The largest file a card may name (a big tokenizer.json is ~20 MiB).
pub const MAX_CARD_FILE_BYTES: u64 = 64 << 20;
/// How long fetching one worker-hosted file may take.
const FETCH_TIMEOUT: Duration = Duration::from_secs(10);

/// The file names a card's artifacts have; a card naming another file is refused (a discovery
/// record cannot make the frontend read an arbitrary file).
const ARTIFACT_NAMES: &[&str] = &[
    "tokenizer.json",
    "tokenizer_config.json",
    "config.json",
    "generation_config.json",
    "chat_template.jinja",
    "chat_template.json",
];

/// The client worker-hosted card files are fetched with (over https too).
pub fn http_client() -> reqwest::Client {
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::new()
}

/// Builds the card Tritium's frontend tokenizes with.
pub async fn model_card(card: &Card, http: &reqwest::Client) -> Result<ModelCard, String> {
    // A prefill worker's card names the model its decode workers serve.
    let kind = if card.generates() || card.role() == "prefill" {
        ModelKind::Generate
    } else if card.embeds() {
        ModelKind::Embed
    } else {
        return Err(format!("model type '{}' is not served from Dynamo workers", card.model_type));
    };
    let tokenizer = one_artifact(card.tokenizer.as_ref(), "hf_tokenizer_json", "tokenizer")?
        .ok_or_else(|| "the card names no tokenizer".to_string())?;
    let tokenizer_json =
        String::from_utf8(read_checked(tokenizer, http).await?).map_err(|_| "tokenizer.json is not UTF-8".to_string())?;
    let json = async |file: Option<&CheckedFile>| -> Result<Option<Json>, String> {
        let Some(file) = file else { return Ok(None) };
        let bytes = read_checked(file, http).await?;
        serde_json::from_slice(&bytes).map(Some).map_err(|e| format!("{} is not JSON: {e}", file_name(file)))
    };
    let tokenizer_config =
        json(one_artifact(card.prompt_formatter.as_ref(), "hf_tokenizer_config_json", "prompt formatter")?).await?;
    let mut config = json(one_artifact(card.model_info.as_ref(), "hf_config_json", "model info")?).await?;
    // The card's own context length stands in for a config.json without one.
    if let Some(length) = card.context_length()
        && let Some(map) = config.get_or_insert_with(|| Json::Object(Default::default())).as_object_mut()
    {
        map.entry("max_position_embeddings").or_insert(length.into());
    }
    let generation_config =
        json(one_artifact(card.gen_config.as_ref(), "hf_generation_config_json", "generation config")?).await?;
    let chat_template = match card.chat_template_file.as_ref().and_then(|files| files.values().next()) {
        Some(file) => {
            let bytes = read_checked(file, http).await?;
            if file_name(file).ends_with(".json") {
                let parsed: Json = serde_json::from_slice(&bytes).map_err(|e| format!("chat_template.json is not JSON: {e}"))?;
                template_of_config(&parsed)
            } else {
                Some(String::from_utf8(bytes).map_err(|_| "chat_template.jinja is not UTF-8".to_string())?)
            }
        }
        None => None,
    };
    let files =
        HfFiles { tokenizer_json, tokenizer_config, config, generation_config, chat_template, sentence_bert_config: None };
    let source = format!("dynamo:{}", card.slug.as_deref().unwrap_or(&card.display_name));
    let mut model_card = card_from_hf_files(files, kind, &source)?;
    if let Some(length) = card.context_length() {
        model_card.context_length = usize::try_from(length).unwrap_or(usize::MAX);
    }
    // As Dynamo's frontend: no limit of Tritium's own when a completion names none.
    model_card.default_completion_tokens = None;
    // The parsers the worker was started with (`--dyn-tool-call-parser` on `dynamo.vllm`, …).
    let runtime = card.runtime_config.clone().unwrap_or_default();
    model_card.parsers = OutputParserNames::checked(runtime.tool_call_parser, runtime.reasoning_parser, "runtime_config")?;
    Ok(model_card)
}

/// The card of a text-input model (`model_input: Text`): the frontend neither templates nor
/// tokenizes for it, so no file is read; the card only says it generates and how long its
/// context is.
pub fn text_input_card(card: &Card) -> ModelCard {
    ModelCard {
        // The kind /v1/models and the doors see: what it does besides the forwarded routes.
        kind: if card.generates() { ModelKind::Generate } else { ModelKind::Embed },
        tokenizer_json: String::new(),
        chat_template: None,
        bos_token: None,
        eos_token: None,
        eos_token_ids: Vec::new(),
        add_bos_token: false,
        context_length: card.context_length().map_or(0, |length| usize::try_from(length).unwrap_or(usize::MAX)),
        max_input_tokens: None,
        source: format!("dynamo:{} (text input)", card.slug.as_deref().unwrap_or(&card.display_name)),
        default_completion_tokens: None,
        // The worker parses its own output.
        parsers: OutputParserNames::default(),
    }
}

/// The one file of an artifact kind Tritium reads (`expected`); another kind is refused by name.
fn one_artifact<'a>(
    artifact: Option<&'a std::collections::BTreeMap<String, CheckedFile>>,
    expected: &str,
    what: &str,
) -> Result<Option<&'a CheckedFile>, String> {
    let Some(artifact) = artifact else { return Ok(None) };
    match artifact.get(expected) {
        Some(file) => Ok(Some(file)),
        None => match artifact.keys().next() {
            Some(kind) => Err(format!("the card's {what} is a '{kind}', which Tritium does not read (it reads '{expected}')")),
            None => Ok(None),
        },
    }
}

fn file_name(file: &CheckedFile) -> &str {
    file.path.rsplit('/').next().unwrap_or(&file.path)
}

/// The file's bytes, once its name, size and checksum are as the card says.
async fn read_checked(file: &CheckedFile, http: &reqwest::Client) -> Result<Vec<u8>, String> {
    let name = file_name(file);
    if !ARTIFACT_NAMES.contains(&name) {
        return Err(format!("the card names a file '{name}', which is not one a model card holds"));
    }
    let expected = file
        .checksum
        .strip_prefix("blake3:")
        .ok_or_else(|| format!("{name}: checksum '{}' is not blake3:<hex>", file.checksum))?;
    let limit = file.size.unwrap_or(MAX_CARD_FILE_BYTES).min(MAX_CARD_FILE_BYTES);
    let bytes = if file.path.starts_with("http://") || file.path.starts_with("https://") {
        fetch(&file.path, limit, http).await?
    } else if let Some(rest) = file.path.strip_prefix("hf://") {
        return Err(format!(
            "{name}: the card names a model hub file ({rest}); Tritium reads local and worker-hosted files only"
        ));
    } else {
        read_local(Path::new(&file.path), limit).await?
    };
    let actual = blake3::hash(&bytes).to_hex();
    if !actual.as_str().eq_ignore_ascii_case(expected) {
        return Err(format!("{name}: its blake3 checksum does not match the card's"));
    }
    Ok(bytes)
}

async fn read_local(path: &Path, limit: u64) -> Result<Vec<u8>, String> {
    let shown = path.display().to_string();
    let metadata = tokio::fs::metadata(path).await.map_err(|e| format!("cannot read {shown}: {}", e.kind()))?;
    if !metadata.is_file() {
        return Err(format!("{shown} is not a file"));
    }
    if metadata.len() > limit {
        return Err(format!("{shown} is {} bytes, over the {limit} its card allows", metadata.len()));
    }
    tokio::fs::read(path).await.map_err(|e| format!("cannot read {shown}: {}", e.kind()))
}

async fn fetch(url: &str, limit: u64, http: &reqwest::Client) -> Result<Vec<u8>, String> {
    let mut response = http
        .get(url)
        .timeout(FETCH_TIMEOUT)
        .send()
        .await
        .and_then(reqwest::Response::error_for_status)
        .map_err(|e| format!("cannot fetch {url}: {e}"))?;
    let mut bytes = Vec::new();
    while let Some(chunk) = response.chunk().await.map_err(|e| format!("cannot fetch {url}: {e}"))? {
        if (bytes.len() + chunk.len()) as u64 > limit {
            return Err(format!("{url} is over the {limit} bytes its card allows"));
        }
        bytes.extend_from_slice(&chunk);
    }
    Ok(bytes)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn write(dir: &Path, name: &str, text: &str) -> CheckedFile {
        let path = dir.join(name);
        std::fs::write(&path, text).unwrap();
        CheckedFile {
            path: path.display().to_string(),
            checksum: format!("blake3:{}", blake3::hash(text.as_bytes()).to_hex()),
            size: Some(text.len() as u64),
        }
    }

    fn card(tokenizer: CheckedFile, tokenizer_config: CheckedFile) -> Card {
        serde_json::from_value(serde_json::json!({
            "display_name": "tiny", "slug": "tiny", "model_type": "Chat | Completions", "model_input": "Tokens",
            "context_length": 0, "architectural_max_context_length": 256,
            "tokenizer": {"hf_tokenizer_json": tokenizer},
            "prompt_formatter": {"hf_tokenizer_config_json": tokenizer_config},
        }))
        .unwrap()
    }

    const TOKENIZER: &str = r#"{"model":{"type":"WordLevel","vocab":{"<s>":0,"</s>":1,"hi":2},"unk_token":"<s>"},
        "added_tokens":[{"id":1,"content":"</s>","special":true}]}"#;

    #[tokio::test]
    async fn a_card_with_verified_files_becomes_a_model_card() {
        let dir = tempfile::tempdir().unwrap();
        let tokenizer = write(dir.path(), "tokenizer.json", TOKENIZER);
        let config = write(dir.path(), "tokenizer_config.json", r#"{"eos_token":"</s>","chat_template":"{{ messages }}"}"#);
        let model_card = model_card(&card(tokenizer, config), &http_client()).await.unwrap();
        assert_eq!(model_card.kind, ModelKind::Generate);
        assert_eq!(model_card.context_length, 256);
        assert_eq!(model_card.eos_token_ids, vec![1]);
        assert_eq!(model_card.chat_template.as_deref(), Some("{{ messages }}"));
        assert_eq!(model_card.parsers, OutputParserNames::default());
    }

    #[tokio::test]
    async fn the_cards_parsers_are_kept_and_an_unknown_one_refused() {
        let dir = tempfile::tempdir().unwrap();
        let tokenizer = write(dir.path(), "tokenizer.json", TOKENIZER);
        let config = write(dir.path(), "tokenizer_config.json", "{}");
        let with = |tool: &str, reasoning: &str| {
            let mut card = card(tokenizer.clone(), config.clone());
            card.runtime_config = Some(
                serde_json::from_value(serde_json::json!({"tool_call_parser": tool, "reasoning_parser": reasoning})).unwrap(),
            );
            card
        };
        let made = model_card(&with("qwen3_coder", "qwen3"), &http_client()).await.unwrap();
        assert_eq!(made.parsers.tool_call_parser.as_deref(), Some("qwen3_coder"));
        assert_eq!(made.parsers.reasoning_parser.as_deref(), Some("qwen3"));
        let error = model_card(&with("json5", "qwen3"), &http_client()).await.unwrap_err();
        assert!(error.starts_with("runtime_config: unknown tool-call parser 'json5'; the known ones are hermes"), "{error}");
    }

    #[tokio::test]
    async fn a_file_that_does_not_match_its_checksum_or_name_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let mut tokenizer = write(dir.path(), "tokenizer.json", TOKENIZER);
        let config = write(dir.path(), "tokenizer_config.json", "{}");
        std::fs::write(dir.path().join("tokenizer.json"), TOKENIZER.replace("hi", "ho")).unwrap();
        let error = model_card(&card(tokenizer.clone(), config.clone()), &http_client()).await.unwrap_err();
        assert_eq!(error, "tokenizer.json: its blake3 checksum does not match the card's");
        tokenizer.path = "/etc/passwd".into();
        let error = model_card(&card(tokenizer, config), &http_client()).await.unwrap_err();
        assert!(error.contains("'passwd'") && !error.contains("root"), "{error}");
    }
}
