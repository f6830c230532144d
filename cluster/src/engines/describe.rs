//! What an engine serves, asked of the engine: `GetModelInfo` (the model's name, kind, context
//! length and end-of-sequence ids), `GetServerInfo` (its KV block size) and `GetTokenizer` (a
//! zip of the tokenizer's Hugging Face files, streamed in pieces and checked against the SHA-256
//! its last piece carries), made into the [`ModelCard`] the frontend templates and tokenizes with.
//! The archive is read in memory, bounded in size and per file; nothing is written to disk.

use std::io::Read;
use std::sync::Arc;

use serde_json::Value as Json;
use sha2::Digest;
use tonic::transport::Channel;
use tritium_backend_api::llm::{HfFiles, ModelKind, card_from_hf_files, push_unique, template_of_config};
use tritium_proto::engine::vllm_engine_client::VllmEngineClient;
use tritium_proto::engine::{GetModelInfoRequest, GetServerInfoRequest, GetTokenizerRequest};

use super::{CALL_TIMEOUT, EngineLimits};
pub use crate::discovery::engine_target::EngineTarget;

/// Asks the engine at `url` (on `channel`) what it serves, under the name `name`; its tokenizer
/// comes from `GetTokenizer` unless `tokenizer` gives the files.
pub async fn describe(
    name: &str,
    url: &str,
    channel: Channel,
    limits: &EngineLimits,
    tokenizer: Option<HfFiles>,
) -> Result<EngineTarget, String> {
    let mut client = VllmEngineClient::new(channel).max_decoding_message_size(limits.max_message);
    let info = deadline(client.get_model_info(GetModelInfoRequest {}), "GetModelInfo").await?;
    let server = deadline(client.get_server_info(GetServerInfoRequest {}), "GetServerInfo").await?;
    let files = match tokenizer {
        Some(files) => files,
        None => hf_files(&tokenizer_archive(&mut client, limits.max_tokenizer).await?, limits.max_tokenizer as u64)?,
    };
    let kind = if info.is_generation { ModelKind::Generate } else { ModelKind::Embed };
    let source = format!("engine-grpc:{url}");
    let mut card = card_from_hf_files(files, kind, &source)?;
    if info.max_context_length > 0 {
        card.context_length = info.max_context_length as usize;
    }
    for id in info.eos_token_ids.iter().filter_map(|&id| u32::try_from(id).ok()) {
        push_unique(&mut card.eos_token_ids, id);
    }
    if kind == ModelKind::Generate && card.eos_token_ids.is_empty() {
        return Err("the engine names no end-of-sequence token, and its tokenizer files none either".into());
    }
    Ok(EngineTarget {
        name: name.to_string(),
        url: url.to_string(),
        served_name: info.served_model_name,
        card: Arc::new(card),
        block_size: usize::try_from(server.block_size).ok().filter(|size| *size > 0),
        server_type: server.server_type,
    })
}

/// A unary call under [`CALL_TIMEOUT`], its failure named after the RPC.
pub(super) async fn deadline<T>(
    call: impl Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    rpc: &str,
) -> Result<T, String> {
    match tokio::time::timeout(CALL_TIMEOUT, call).await {
        Ok(Ok(response)) => Ok(response.into_inner()),
        Ok(Err(status)) => Err(format!("{rpc} failed: {} ({:?})", status.message(), status.code())),
        Err(_) => Err(format!("{rpc} did not answer within {} s", CALL_TIMEOUT.as_secs())),
    }
}

/// The tokenizer archive, whole, within `max` bytes and [`CALL_TIMEOUT`].
async fn tokenizer_archive(client: &mut VllmEngineClient<Channel>, max: usize) -> Result<Vec<u8>, String> {
    let read = async {
        let mut stream = client
            .get_tokenizer(GetTokenizerRequest {})
            .await
            .map_err(|s| format!("GetTokenizer failed: {} ({:?})", s.message(), s.code()))?
            .into_inner();
        let mut archive = Vec::new();
        let mut digest = None;
        while let Some(chunk) = stream.message().await.map_err(|s| format!("GetTokenizer broke off: {}", s.message()))? {
            if archive.len() + chunk.data.len() > max {
                return Err(format!("the tokenizer archive is over {max} bytes (--engine-grpc-max-tokenizer-size)"));
            }
            archive.extend_from_slice(&chunk.data);
            if !chunk.sha256.is_empty() {
                digest = Some(chunk.sha256);
            }
        }
        if let Some(expected) = digest {
            let actual: String = sha2::Sha256::digest(&archive).iter().map(|b| format!("{b:02x}")).collect();
            if !actual.eq_ignore_ascii_case(expected.trim()) {
                return Err("the tokenizer archive does not match the SHA-256 the engine sent with it".to_string());
            }
        }
        Ok(archive)
    };
    tokio::time::timeout(CALL_TIMEOUT, read)
        .await
        .map_err(|_| format!("GetTokenizer did not finish within {} s", CALL_TIMEOUT.as_secs()))?
}

/// The Hugging Face files in a tokenizer archive (top-level names only; others are ignored), each
/// at most `max_file` bytes unpacked.
pub fn hf_files(archive: &[u8], max_file: u64) -> Result<HfFiles, String> {
    let mut zip = zip::ZipArchive::new(std::io::Cursor::new(archive))
        .map_err(|e| format!("the tokenizer archive is not a zip file: {e}"))?;
    let mut files = HfFiles::default();
    let mut tokenizer_json = None;
    let mut jinja_template = None;
    for index in 0..zip.len() {
        let mut entry = zip.by_index(index).map_err(|e| format!("the tokenizer archive cannot be read: {e}"))?;
        let name = entry.name().map_err(|e| format!("the tokenizer archive names a file unreadably: {e}"))?.into_owned();
        let wanted = matches!(
            name.as_str(),
            "tokenizer.json" | "tokenizer_config.json" | "config.json" | "generation_config.json" | "chat_template.json"
        ) || (name.ends_with(".jinja") && !name.contains('/'));
        if !wanted {
            continue;
        }
        if entry.size() > max_file {
            return Err(format!("{name} in the tokenizer archive is over {max_file} bytes unpacked"));
        }
        let mut text = String::new();
        (&mut entry)
            .take(max_file + 1)
            .read_to_string(&mut text)
            .map_err(|e| format!("{name} in the tokenizer archive cannot be read as text: {e}"))?;
        if text.len() as u64 > max_file {
            return Err(format!("{name} in the tokenizer archive is over {max_file} bytes unpacked"));
        }
        let json = |text: &str| -> Result<Json, String> {
            serde_json::from_str(text).map_err(|e| format!("{name} in the tokenizer archive is not JSON: {e}"))
        };
        match name.as_str() {
            "tokenizer.json" => tokenizer_json = Some(text),
            "tokenizer_config.json" => files.tokenizer_config = Some(json(&text)?),
            "config.json" => files.config = Some(json(&text)?),
            "generation_config.json" => files.generation_config = Some(json(&text)?),
            "chat_template.json" => files.chat_template = template_of_config(&json(&text)?),
            // `chat_template.jinja` first; another template file only when it is the one there.
            "chat_template.jinja" => jinja_template = Some(text),
            _ => {
                jinja_template.get_or_insert(text);
            }
        }
    }
    files.tokenizer_json = tokenizer_json.ok_or("the tokenizer archive has no tokenizer.json")?;
    if files.chat_template.is_none() {
        files.chat_template = jinja_template;
    }
    // The engine's own context length stands in for a config.json without one.
    let config = files.config.get_or_insert_with(|| Json::Object(Default::default()));
    if let Some(map) = config.as_object_mut() {
        map.entry("max_position_embeddings").or_insert(Json::from(0));
    }
    Ok(files)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::io::Write;

    use super::*;

    fn archive(files: &[(&str, &str)]) -> Vec<u8> {
        let mut zip = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
        for (name, text) in files {
            zip.start_file(*name, zip::write::SimpleFileOptions::default()).unwrap();
            zip.write_all(text.as_bytes()).unwrap();
        }
        zip.finish().unwrap().into_inner()
    }

    #[test]
    fn the_archive_gives_the_tokenizer_config_and_template() {
        let zip = archive(&[
            ("tokenizer.json", "{\"model\": {}}"),
            ("tokenizer_config.json", "{\"eos_token\": \"</s>\"}"),
            ("chat_template.jinja", "{{ messages }}"),
            ("nested/chat_template.jinja", "ignored"),
            ("README.md", "ignored"),
        ]);
        let files = hf_files(&zip, 1 << 20).unwrap();
        assert_eq!(files.tokenizer_json, "{\"model\": {}}");
        assert_eq!(files.chat_template.as_deref(), Some("{{ messages }}"));
        assert_eq!(files.tokenizer_config.unwrap()["eos_token"], "</s>");
    }

    #[test]
    fn a_broken_archive_is_refused_by_what_is_wrong() {
        assert!(hf_files(b"not a zip", 1 << 20).unwrap_err().contains("not a zip file"));
        let no_tokenizer = archive(&[("config.json", "{}")]);
        assert!(hf_files(&no_tokenizer, 1 << 20).unwrap_err().contains("no tokenizer.json"));
        let bad_json = archive(&[("tokenizer.json", "{}"), ("config.json", "{oops")]);
        assert!(hf_files(&bad_json, 1 << 20).unwrap_err().contains("config.json in the tokenizer archive is not JSON"));
    }

    #[test]
    fn a_file_past_the_bound_is_refused_unpacked_or_not() {
        // Highly compressible: small in the archive, large unpacked.
        let big = format!("{{\"pad\": \"{}\"}}", "a".repeat(10_000));
        let zip = archive(&[("tokenizer.json", &big)]);
        assert!(zip.len() < 1_000);
        let error = hf_files(&zip, 5_000).unwrap_err();
        assert!(error.contains("tokenizer.json in the tokenizer archive is over 5000 bytes unpacked"), "{error}");
        assert!(hf_files(&zip, 20_000).is_ok());
    }
}
