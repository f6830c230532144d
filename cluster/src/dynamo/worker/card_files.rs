//! A Tritium language or embedding model's card in Dynamo's shape: its tokenizer, tokenizer config (chat
//! template, special tokens), `config.json` and `generation_config.json` written as Hugging Face
//! files into a folder, each named in the card with its size and blake3 checksum, so Dynamo's
//! frontend (or Tritium's) templates and tokenizes for it.

use std::path::Path;

use serde_json::{Value as Json, json};
use tritium_backend_api::llm::ModelCard;

/// The files of `card` written under `folder`, and the card naming them (`card_json`) for the
/// model `name` with `block_size` tokens per KV block.
pub async fn write_card(folder: &Path, name: &str, card: &ModelCard, block_size: usize) -> Result<Json, String> {
    let model_type = match card.kind {
        tritium_backend_api::llm::ModelKind::Generate => "Chat | Completions",
        tritium_backend_api::llm::ModelKind::Embed => "Embedding",
    };
    tokio::fs::create_dir_all(folder).await.map_err(|e| format!("cannot create {}: {e}", folder.display()))?;
    let eos_ids: Vec<u32> = card.eos_token_ids.clone();
    let tokenizer_config = json!({
        "chat_template": card.chat_template,
        "bos_token": card.bos_token,
        "eos_token": card.eos_token,
        "add_bos_token": card.add_bos_token,
        "model_max_length": card.context_length,
    });
    let config = json!({
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "max_position_embeddings": card.context_length,
        "eos_token_id": eos_ids,
    });
    let generation_config = json!({"eos_token_id": eos_ids});
    let tokenizer = checked(folder, "tokenizer.json", card.tokenizer_json.as_bytes()).await?;
    let tokenizer_config = checked(folder, "tokenizer_config.json", tokenizer_config.to_string().as_bytes()).await?;
    let config = checked(folder, "config.json", config.to_string().as_bytes()).await?;
    let generation_config = checked(folder, "generation_config.json", generation_config.to_string().as_bytes()).await?;
    Ok(json!({
        "display_name": name,
        "slug": slug(name),
        "source_path": folder.display().to_string(),
        "model_info": {"hf_config_json": config},
        "tokenizer": {"hf_tokenizer_json": tokenizer},
        "prompt_formatter": {"hf_tokenizer_config_json": tokenizer_config},
        "gen_config": {"hf_generation_config_json": generation_config},
        "architectural_max_context_length": card.context_length,
        "context_length": card.context_length,
        "kv_cache_block_size": block_size,
        "migration_limit": 0,
        "model_type": model_type,
        "model_input": "Tokens",
        "worker_type": "aggregated",
        "needs": [],
        // Dynamo's frontend applies the parsers a worker's card names, as Tritium's does.
        "runtime_config": {
            "context_length": card.context_length,
            "tool_call_parser": card.parsers.tool_call_parser,
            "reasoning_parser": card.parsers.reasoning_parser,
        },
    }))
}

/// Writes one file and describes it as Dynamo's `CheckedFile`.
async fn checked(folder: &Path, name: &str, bytes: &[u8]) -> Result<Json, String> {
    let path = folder.join(name);
    tokio::fs::write(&path, bytes).await.map_err(|e| format!("cannot write {}: {e}", path.display()))?;
    Ok(
        json!({"path": path.display().to_string(), "checksum": format!("blake3:{}", blake3::hash(bytes).to_hex()), "size": bytes.len()}),
    )
}

/// Dynamo's slug: lowercase letters, digits and `-`/`_`, other characters as `_`.
fn slug(name: &str) -> String {
    name.chars().map(|c| if c.is_ascii_alphanumeric() || c == '-' || c == '_' { c.to_ascii_lowercase() } else { '_' }).collect()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use tritium_backend_api::llm::{ModelKind, OPENAI_COMPLETION_TOKENS};

    use super::*;
    use crate::dynamo::records::Card;

    #[tokio::test]
    async fn the_written_card_reads_back_with_verified_checksums() {
        let dir = tempfile::tempdir().unwrap();
        let card = ModelCard {
            kind: ModelKind::Generate,
            tokenizer_json: r#"{"model":{"type":"WordLevel","vocab":{"a":0,"</s>":1},"unk_token":"a"}}"#.into(),
            chat_template: Some("{{ messages }}".into()),
            bos_token: None,
            eos_token: Some("</s>".into()),
            eos_token_ids: vec![1],
            add_bos_token: false,
            context_length: 512,
            max_input_tokens: None,
            source: "test".into(),
            default_completion_tokens: Some(OPENAI_COMPLETION_TOKENS),
            parsers: tritium_backend_api::llm::OutputParserNames {
                tool_call_parser: Some("hermes".into()),
                reasoning_parser: Some("qwen3".into()),
            },
        };
        let card_json = write_card(dir.path(), "Tiny Model", &card, 16).await.unwrap();
        assert_eq!(card_json["slug"], "tiny_model");
        let read: Card = serde_json::from_value(card_json).unwrap();
        let model_card = crate::dynamo::card::model_card(&read, &crate::dynamo::card::http_client()).await.unwrap();
        assert_eq!(model_card.tokenizer_json, card.tokenizer_json);
        assert_eq!(model_card.chat_template, card.chat_template);
        assert_eq!(model_card.eos_token_ids, vec![1]);
        assert_eq!(model_card.context_length, 512);
        assert_eq!(model_card.parsers, card.parsers, "the parsers go through runtime_config");
    }
}

/// The card of a tensor model, as `dynamo.triton` registers Triton's: Triton's `ModelConfig`
/// as protobuf bytes in `tensor_model_config`, no tokenizer.
pub fn tensor_card(name: &str, config: &tritium_proto::inference::ModelConfig) -> Json {
    use prost::Message;
    json!({
        "display_name": name, "slug": name, "model_info": null, "tokenizer": null,
        "context_length": 0, "kv_cache_block_size": 0, "migration_limit": 0,
        "model_type": "TensorBased", "model_input": "Tensor", "worker_type": "aggregated", "needs": [],
        "tensor_model_config": {"name": "", "inputs": [], "outputs": [], "triton_model_config": config.encode_to_vec()},
    })
}
