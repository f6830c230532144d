//! Third-party engines reached over their own gRPC service: vLLM's `VllmEngine`, the
//! tokens-in, tokens-out contract SGLang's gateway also drives SGLang, TensorRT-LLM and MLX
//! through (`--engine-grpc NAME=URL`). Tritium templates, tokenizes, detokenizes and applies
//! stop strings from the engine's own tokenizer; the engine gets token ids and sends token ids
//! back, and the router treats each engine as one more worker of the model.
//!
//! - [`EngineSpec`]: the option's value, a model name and the engines serving it;
//! - [`describe`]: an engine's model card, from `GetModelInfo`, `GetServerInfo` and the
//!   tokenizer archive `GetTokenizer` streams;
//! - [`client`]: [`EngineWorker`], the router's client of one engine (`Generate`, `Abort` when
//!   the client goes away, `Embed`);
//! - [`backend`]: the same, as a model repository's `backend: "engine_grpc"` model;
//! - [`follow`]: each engine's `grpc.health.v1` status and loads, as the workers the router lists;
//! - [`kv`]: its KV events renamed with Tritium's block hashes, for the KV-aware router.

pub mod backend;
pub mod client;
pub mod describe;
pub mod follow;
pub mod kv;

use std::time::Duration;

pub use client::EngineWorker;
pub use describe::EngineTarget;
pub use follow::follow;

/// How long connecting to an engine may take.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// The deadline of every unary call (model and server info, loads, health, abort).
pub const CALL_TIMEOUT: Duration = Duration::from_secs(30);
/// The default largest tokenizer archive read from an engine (and file unpacked from it).
pub const DEFAULT_MAX_TOKENIZER_BYTES: usize = 64 << 20;
/// The default largest message read from an engine.
pub const DEFAULT_MAX_MESSAGE_BYTES: usize = 16 << 20;

/// What one engine may cost: `--engine-grpc-idle-timeout`, `--engine-grpc-max-message-size` and
/// `--engine-grpc-max-tokenizer-size`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EngineLimits {
    /// How long a generation may go without a message (before its first token, and between two).
    pub idle_timeout: Duration,
    /// The largest message read from the engine (a chunk of tokens, a piece of the tokenizer
    /// archive, a batch of KV events, a vector).
    pub max_message: usize,
    /// The largest tokenizer archive read, and the largest file unpacked from it.
    pub max_tokenizer: usize,
}

impl Default for EngineLimits {
    fn default() -> EngineLimits {
        EngineLimits {
            idle_timeout: client::DEFAULT_IDLE_TIMEOUT,
            max_message: DEFAULT_MAX_MESSAGE_BYTES,
            max_tokenizer: DEFAULT_MAX_TOKENIZER_BYTES,
        }
    }
}

/// `--engine-grpc NAME=URL[,URL...]`: the model `name`, served by the engines at `urls` (several
/// form a pool the router routes between).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EngineSpec {
    pub name: String,
    pub urls: Vec<String>,
}

impl std::str::FromStr for EngineSpec {
    type Err = String;

    fn from_str(value: &str) -> Result<EngineSpec, String> {
        let (name, urls) =
            value.split_once('=').ok_or_else(|| format!("'{value}' is not NAME=URL (e.g. smollm2=http://127.0.0.1:50051)"))?;
        let name = name.trim();
        if name.is_empty() || name.chars().any(|c| c.is_whitespace() || c == '/') {
            return Err(format!("'{name}' is not a model name (no spaces or '/')"));
        }
        let mut checked = Vec::new();
        for url in urls.split(',').map(str::trim).filter(|url| !url.is_empty()) {
            checked.push(engine_url(url)?);
        }
        if checked.is_empty() {
            return Err(format!("--engine-grpc {name}= names no engine URL"));
        }
        Ok(EngineSpec { name: name.to_string(), urls: checked })
    }
}

/// An engine's address as a URI: `host:port` gets `http://`; `https://` is refused by name
/// (TLS to engines is not built yet).
fn engine_url(url: &str) -> Result<String, String> {
    let url = if url.contains("://") { url.to_string() } else { format!("http://{url}") };
    let uri: http::Uri = url.parse().map_err(|e| format!("'{url}' is not an engine URL: {e}"))?;
    match uri.scheme_str() {
        Some("http") if uri.port_u16().is_some() && uri.host().is_some() => Ok(url),
        Some("http") => Err(format!("'{url}' names no port")),
        Some(scheme) => Err(format!("'{url}': the '{scheme}' scheme is not supported for engines (http only)")),
        None => Err(format!("'{url}' is not an engine URL")),
    }
}

/// The specs naming one model, merged into one pool each (`--engine-grpc m=A --engine-grpc m=B`).
pub fn merged(specs: &[EngineSpec]) -> Vec<EngineSpec> {
    let mut merged: Vec<EngineSpec> = Vec::new();
    for spec in specs {
        match merged.iter_mut().find(|m| m.name == spec.name) {
            Some(pool) => {
                for url in &spec.urls {
                    if !pool.urls.contains(url) {
                        pool.urls.push(url.clone());
                    }
                }
            }
            None => merged.push(spec.clone()),
        }
    }
    merged
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn a_spec_is_a_name_and_its_engines() {
        let spec: EngineSpec = "smollm2=127.0.0.1:5000, http://10.0.0.2:5001".parse().unwrap();
        assert_eq!(spec.name, "smollm2");
        assert_eq!(spec.urls, ["http://127.0.0.1:5000", "http://10.0.0.2:5001"]);
        for bad in ["smollm2", "=127.0.0.1:1", "a b=127.0.0.1:1", "m=", "m=127.0.0.1", "m=https://h:1", "m=unix:///x"] {
            assert!(bad.parse::<EngineSpec>().is_err(), "{bad}");
        }
    }

    #[test]
    fn specs_of_one_model_form_one_pool() {
        let specs: Vec<EngineSpec> = ["m=h:1", "n=h:2", "m=h:3", "m=h:1"].iter().map(|s| s.parse().unwrap()).collect();
        let merged = merged(&specs);
        assert_eq!(merged.len(), 2);
        assert_eq!(merged[0].urls, ["http://h:1", "http://h:3"]);
    }
}
