//! The flags of the OpenAI and Anthropic doors: how model output is parsed into reasoning and
//! tool calls (Dynamo's `--dyn-tool-call-parser` / `--dyn-reasoning-parser`), whether Anthropic's
//! Messages API is served, and the bounds of the Responses API's store.

use std::time::Duration;

use clap::Args;
use tritium_openai_bridge::parsers::{OutputFormats, ReasoningFormat, ToolCallFormat};
use tritium_openai_bridge::preprocess::workers::{MAX_PREPROCESS_WORKERS, PreprocessExecution, PromptEncoder};
use tritium_openai_bridge::preprocess::{
    DEFAULT_TOKENIZER_CACHE_BYTES, DEFAULT_TOKENIZER_CACHE_ENTRIES, DEFAULT_WORD_CACHE_ENTRIES, PrefixCacheLimits,
};
use tritium_openai_bridge::response_store::{DEFAULT_STORE_BYTES, DEFAULT_STORE_ENTRIES, StoreLimits};
use tritium_openai_bridge::routes::{ApiPaths, ApiSettings, DEFAULT_BODY_LIMIT_BYTES, valid_route_path};

#[derive(Debug, Clone, Args)]
pub struct OpenAiArgs {
    /// How the served models write tool calls: hermes (`<tool_call>` JSON; Qwen, Hermes),
    /// llama3_json, mistral (`[TOOL_CALLS]`) or pythonic (Llama 3.2/4). Unset: calls stay text.
    #[arg(long, env = "DYN_TOOL_CALL_PARSER", value_parser = ToolCallFormat::NAMES)]
    pub dyn_tool_call_parser: Option<String>,
    /// How the served models mark reasoning: think (`<think>…</think>`; Qwen3) or deepseek_r1
    /// (the template opens `<think>`). It comes back as `reasoning_content` / thinking blocks.
    #[arg(long, env = "DYN_REASONING_PARSER", value_parser = ["think", "qwen3", "deepseek_r1"])]
    pub dyn_reasoning_parser: Option<String>,
    /// Serve Anthropic's Messages API (`/v1/messages`, `/v1/messages/count_tokens`).
    #[arg(long, env = "DYN_ENABLE_ANTHROPIC_API", default_value_t = false, num_args = 0..=1, default_missing_value = "true",
          action = clap::ArgAction::Set, value_parser = clap::builder::BoolishValueParser::new())]
    pub enable_anthropic_api: bool,
    /// Turns --enable-anthropic-api off (it wins over --enable-anthropic-api and its variable).
    #[arg(long)]
    pub no_enable_anthropic_api: bool,
    /// Responses the Responses API keeps for `previous_response_id`, at most (the oldest go first).
    #[arg(long, env = "TRITIUM_RESPONSES_STORE_ENTRIES", default_value_t = DEFAULT_STORE_ENTRIES)]
    pub responses_store_entries: usize,
    /// JSON bytes of all stored responses and their conversations, at most.
    #[arg(long, env = "TRITIUM_RESPONSES_STORE_BYTES", default_value_t = DEFAULT_STORE_BYTES)]
    pub responses_store_bytes: usize,
    /// Seconds a stored response is kept (at most a year).
    #[arg(long, env = "TRITIUM_RESPONSES_STORE_TTL_SECS", default_value_t = 3600,
          value_parser = clap::value_parser!(u64).range(1..=MAX_STORE_TTL_SECS))]
    pub responses_store_ttl_secs: u64,
    /// Where stored responses live besides this process: `memory` (this process only) or
    /// `redis://[user:password@]host[:port][/db]`, a Redis that several frontends share, so a
    /// `previous_response_id` from one continues on another.
    #[arg(long, env = "TRITIUM_RESPONSES_STORE", default_value = "memory", hide_env_values = true)]
    pub responses_store: String,
    /// Background responses (`background: true`) this frontend generates at once, at most;
    /// more are refused with 429.
    #[arg(long, env = "TRITIUM_RESPONSES_BACKGROUND_MAX", default_value_t = tritium_openai_bridge::routes::DEFAULT_BACKGROUND_LIMIT)]
    pub responses_background_max: usize,
    /// Prefix of the language-model metrics' names (`{prefix}_requests_total`, …); Dynamo's
    /// frontend uses `dynamo_frontend`.
    #[arg(long, env = "DYN_METRICS_PREFIX", default_value = tritium_openai_bridge::metrics::DEFAULT_PREFIX)]
    pub metrics_prefix: String,
    /// Chat with the first language model in the terminal (stdin and stdout); the end of input
    /// (or `/quit`) stops the server.
    #[arg(short = 'i', long, env = "DYN_INTERACTIVE", default_value_t = false, num_args = 0..=1, default_missing_value = "true",
          action = clap::ArgAction::Set, value_parser = clap::builder::BoolishValueParser::new())]
    pub interactive: bool,
    /// Turns --interactive off (it wins over --interactive and its variable).
    #[arg(long)]
    pub no_interactive: bool,
    /// Megabytes of one request body on the OpenAI and Anthropic routes, at most (413 beyond);
    /// --http-max-body-bytes caps it.
    #[arg(long, env = "DYN_HTTP_BODY_LIMIT_MB", default_value_t = DEFAULT_BODY_LIMIT_BYTES >> 20)]
    pub http_body_limit_mb: usize,
    /// Who renders chat templates and tokenizes: `dynamo`, the frontend's own Rust preprocessor
    /// (Tritium's). `vllm` and `sglang` need those Python packages in the frontend, which Tritium
    /// does not embed.
    #[arg(long = "dyn-chat-processor", env = "DYN_CHAT_PROCESSOR", default_value = "dynamo", value_parser = ["dynamo", "vllm", "sglang"])]
    pub chat_processor: String,
    /// Log each chat-template rendering and tokenization: its queueing and running time, size,
    /// thread, and the steps in flight.
    #[arg(long, env = "DYN_DEBUG_PERF", default_value_t = false, num_args = 0..=1, default_missing_value = "true",
          action = clap::ArgAction::Set, value_parser = clap::builder::BoolishValueParser::new())]
    pub dyn_debug_perf: bool,
    /// Turns --dyn-debug-perf off (it wins over --dyn-debug-perf and its variable).
    #[arg(long)]
    pub no_dyn_debug_perf: bool,
    /// Threads of their own that render chat templates and tokenize, off the threads serving
    /// connections; 0 keeps short texts on those threads and long ones on tokio's blocking pool.
    #[arg(long = "dyn-preprocess-workers", env = "DYN_PREPROCESS_WORKERS", default_value_t = 0)]
    pub preprocess_workers: usize,
    /// The prompt encoder: `default` (Tritium's byte-level BPE encoder for GPT-2-shaped
    /// tokenizers, Hugging Face's tokenizers for the rest), `fastokens`, or `tokenizers` (Hugging
    /// Face's for every tokenizer); all give the same ids. `basetenkenizer` is refused: it has no
    /// Rust crate.
    #[arg(long, env = "DYN_TOKENIZER", default_value = "default",
          value_parser = ["default", "fastokens", "tokenizers", "basetenkenizer"])]
    pub tokenizer: String,
    /// With --tokenizer fastokens: a tokenizer fastokens cannot load is encoded by tokenizers,
    /// with a warning; --no-tokenizer-fallback fails that model's requests instead.
    #[arg(long, env = "DYN_TOKENIZER_FALLBACK", default_value_t = true, num_args = 0..=1, default_missing_value = "true",
          action = clap::ArgAction::Set, value_parser = clap::builder::BoolishValueParser::new())]
    pub tokenizer_fallback: bool,
    /// Turns --tokenizer-fallback off (it wins over --tokenizer-fallback and its variable).
    #[arg(long)]
    pub no_tokenizer_fallback: bool,
    /// The tokenizer prefix cache: a prompt's token ids reused up to the longest prefix (cut at a
    /// special token) tokenized before, so a shared system prompt or a conversation's earlier
    /// turns are not tokenized again. `0`, `false` or `off` turns it off (Dynamo's
    /// `DYN_TOKENIZER_CACHE=0`).
    #[arg(long, env = "DYN_TOKENIZER_CACHE", default_value = "1", value_parser = switch)]
    pub tokenizer_cache: bool,
    /// Bytes one model's tokenizer prefix cache may hold, its entries charged their token ids and
    /// index.
    #[arg(long, env = "DYN_TOKENIZER_CACHE_BYTES", default_value_t = DEFAULT_TOKENIZER_CACHE_BYTES)]
    pub tokenizer_cache_bytes: u64,
    /// Prompt pieces one model's tokenizer prefix cache may hold.
    #[arg(long, default_value_t = DEFAULT_TOKENIZER_CACHE_ENTRIES, value_parser = clap::value_parser!(u64).range(1..))]
    pub tokenizer_cache_entries: u64,
    /// Whether a prompt that reuses a cached prefix caches the pieces after it too; `0` keeps
    /// only what whole misses cached (Dynamo's `DYN_TOKENIZER_CACHE_EXTEND=0`).
    #[arg(long, env = "DYN_TOKENIZER_CACHE_EXTEND", default_value = "1", value_parser = switch)]
    pub tokenizer_cache_extend: bool,
    /// Words (pre-tokens) whose ids one model's byte-level BPE encoder keeps, so a frequent word
    /// is merged once; 64 bytes each, allocated when the model loads; 0 keeps none.
    #[arg(long, default_value_t = DEFAULT_WORD_CACHE_ENTRIES as u64, value_parser = clap::value_parser!(u64).range(0..=1 << 24))]
    pub tokenizer_word_cache_entries: u64,
}

/// Dynamo's on/off variables: `0` (and `false`, `off`, `no`) is off, any other value on.
fn switch(value: &str) -> Result<bool, String> {
    Ok(!matches!(value.trim().to_ascii_lowercase().as_str(), "0" | "false" | "off" | "no"))
}

/// Dynamo's path overrides: the variable names its code reads, and the `_ENV`-suffixed ones its
/// documentation gives.
type PathField = fn(&mut ApiPaths) -> &mut String;

const PATH_VARIABLES: [(&str, PathField); 6] = [
    ("DYN_HTTP_SVC_CHAT_PATH", |p| &mut p.chat),
    ("DYN_HTTP_SVC_CMP_PATH", |p| &mut p.completions),
    ("DYN_HTTP_SVC_EMB_PATH", |p| &mut p.embeddings),
    ("DYN_HTTP_SVC_RESPONSES_PATH", |p| &mut p.responses),
    ("DYN_HTTP_SVC_MODELS_PATH", |p| &mut p.models),
    ("DYN_HTTP_SVC_ANTHROPIC_PATH", |p| &mut p.messages),
];

/// The routes' paths from the environment (`env` reads a variable).
pub fn api_paths(env: &impl Fn(&str) -> Option<String>) -> Result<ApiPaths, String> {
    let mut paths = ApiPaths::default();
    for (name, field) in PATH_VARIABLES {
        let suffixed = format!("{name}_ENV");
        let Some((variable, path)) = env(name).map(|p| (name.to_string(), p)).or_else(|| env(&suffixed).map(|p| (suffixed, p)))
        else {
            continue;
        };
        if !valid_route_path(&path) {
            return Err(format!(
                "{variable}={path:?} is not a route path (it must start with '/' and hold no '{{', '}}' or '*')"
            ));
        }
        *field(&mut paths) = path;
    }
    let all = [&paths.chat, &paths.completions, &paths.embeddings, &paths.responses, &paths.models, &paths.messages];
    if let Some(twice) = all.iter().enumerate().find_map(|(i, p)| all[i + 1..].contains(p).then_some(p)) {
        return Err(format!("two OpenAI routes would be mounted at {twice}"));
    }
    Ok(paths)
}

/// What the flags resolve to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OpenAiSettings {
    pub formats: OutputFormats,
    pub api: ApiSettings,
    pub metrics_prefix: String,
    /// `--dyn-preprocess-workers` and `--dyn-debug-perf`.
    pub preprocess: PreprocessExecution,
}

impl Default for OpenAiSettings {
    fn default() -> Self {
        OpenAiSettings {
            formats: OutputFormats::default(),
            api: ApiSettings::default(),
            metrics_prefix: tritium_openai_bridge::metrics::DEFAULT_PREFIX.to_owned(),
            preprocess: PreprocessExecution::default(),
        }
    }
}

/// A year: `Instant` arithmetic past this could overflow, and nothing needs longer.
const MAX_STORE_TTL_SECS: u64 = 365 * 24 * 3600;

impl OpenAiArgs {
    pub fn settings(&self, env: &impl Fn(&str) -> Option<String>) -> Result<OpenAiSettings, String> {
        let tool_calls = self
            .dyn_tool_call_parser
            .as_deref()
            .map(|name| ToolCallFormat::from_name(name).ok_or_else(|| format!("unknown --dyn-tool-call-parser '{name}'")))
            .transpose()?;
        let reasoning = self
            .dyn_reasoning_parser
            .as_deref()
            .map(|name| ReasoningFormat::from_name(name).ok_or_else(|| format!("unknown --dyn-reasoning-parser '{name}'")))
            .transpose()?;
        let store = StoreLimits {
            max_entries: self.responses_store_entries,
            max_bytes: self.responses_store_bytes,
            ttl: Duration::from_secs(self.responses_store_ttl_secs),
        };
        if !tritium_openai_bridge::metrics::valid_metric_name(&self.metrics_prefix) {
            return Err(format!("--metrics-prefix '{}' is not a metric name ([a-zA-Z_:][a-zA-Z0-9_:]*)", self.metrics_prefix));
        }
        if self.chat_processor != "dynamo" {
            return Err(format!(
                "--dyn-chat-processor {}: that processor runs {}'s Python preprocessing inside the frontend, which Tritium \
                 does not embed; 'dynamo' (the frontend's own Rust preprocessor) is the one Tritium serves",
                self.chat_processor,
                if self.chat_processor == "vllm" { "vLLM" } else { "SGLang" }
            ));
        }
        if self.tokenizer == "basetenkenizer" {
            return Err("--tokenizer basetenkenizer: Baseten's tokenizer has no Rust library Tritium can embed; use \
                        default, fastokens or tokenizers"
                .into());
        }
        if self.preprocess_workers > MAX_PREPROCESS_WORKERS {
            return Err(format!(
                "--dyn-preprocess-workers must be at most {MAX_PREPROCESS_WORKERS}, got {}",
                self.preprocess_workers
            ));
        }
        Ok(OpenAiSettings {
            preprocess: PreprocessExecution {
                workers: self.preprocess_workers,
                debug_perf: self.dyn_debug_perf && !self.no_dyn_debug_perf,
                encoder: match self.tokenizer.as_str() {
                    "fastokens" => PromptEncoder::Fastokens,
                    "tokenizers" => PromptEncoder::Tokenizers,
                    _ => PromptEncoder::Default,
                },
                tokenizer_fallback: self.tokenizer_fallback && !self.no_tokenizer_fallback,
                prefix_cache: PrefixCacheLimits {
                    bytes: if self.tokenizer_cache { self.tokenizer_cache_bytes } else { 0 },
                    entries: self.tokenizer_cache_entries,
                    extend: self.tokenizer_cache_extend,
                },
                word_cache_entries: usize::try_from(self.tokenizer_word_cache_entries).unwrap_or(DEFAULT_WORD_CACHE_ENTRIES),
            },
            metrics_prefix: self.metrics_prefix.clone(),
            formats: OutputFormats { tool_calls, reasoning },
            api: ApiSettings {
                anthropic: self.enable_anthropic_api && !self.no_enable_anthropic_api,
                store,
                shared_store: shared_store(&self.responses_store)?,
                background_limit: self.responses_background_max,
                max_body_bytes: self.http_body_limit_mb.max(1).saturating_mul(1 << 20),
                paths: api_paths(env)?,
                // The server names it at the HTTP door (`x-tritium-worker`).
                worker_header: None,
            },
        })
    }
}

/// `--responses-store`: none for `memory`, else the Redis it names (checked now, connected at
/// first use).
fn shared_store(value: &str) -> Result<Option<tritium_openai_bridge::shared_store::SharedStore>, String> {
    use tritium_openai_bridge::shared_store::{RedisResponses, SharedStore};
    match value {
        "memory" => Ok(None),
        url if url.starts_with("redis://") => Ok(Some(SharedStore(std::sync::Arc::new(RedisResponses::new(url)?)))),
        url if url.starts_with("rediss://") => Err("--responses-store: rediss:// (Redis over TLS) is not built in; use redis://".into()),
        _ => Err("--responses-store must be 'memory' or a redis:// URL".into()),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[derive(clap::Parser)]
    struct Flags {
        #[command(flatten)]
        openai: OpenAiArgs,
    }

    fn preprocess(args: &[&str]) -> Result<PreprocessExecution, String> {
        let flags = <Flags as clap::Parser>::try_parse_from([&["tritium"], args].concat()).map_err(|e| e.to_string())?;
        Ok(flags.openai.settings(&|_| None)?.preprocess)
    }

    #[test]
    fn the_prompt_encoder_and_its_word_cache_come_from_their_flags() {
        let default = preprocess(&[]).unwrap();
        assert_eq!((default.encoder, default.word_cache_entries), (PromptEncoder::Default, DEFAULT_WORD_CACHE_ENTRIES));
        let chosen = preprocess(&["--tokenizer", "tokenizers", "--tokenizer-word-cache-entries", "0"]).unwrap();
        assert_eq!((chosen.encoder, chosen.word_cache_entries), (PromptEncoder::Tokenizers, 0));
        assert_eq!(preprocess(&["--tokenizer", "fastokens"]).unwrap().encoder, PromptEncoder::Fastokens);
        assert!(preprocess(&["--tokenizer-word-cache-entries", "16777217"]).unwrap_err().contains("16777216"));
    }

    #[test]
    fn paths_come_from_either_name_and_are_checked() {
        let env = |vars: &'static [(&'static str, &'static str)]| {
            move |name: &str| vars.iter().find(|(n, _)| *n == name).map(|(_, v)| v.to_string())
        };
        let paths = api_paths(&env(&[("DYN_HTTP_SVC_CHAT_PATH", "/chat"), ("DYN_HTTP_SVC_RESPONSES_PATH_ENV", "/r")])).unwrap();
        assert_eq!((paths.chat.as_str(), paths.responses.as_str(), paths.models.as_str()), ("/chat", "/r", "/v1/models"));
        for bad in ["chat", "/v1/{x}", "/a/*b", "/"] {
            let vars: &'static [(&'static str, &'static str)] = Box::leak(Box::new([("DYN_HTTP_SVC_CHAT_PATH", bad)]));
            assert!(api_paths(&env(vars)).is_err(), "{bad}");
        }
        assert!(api_paths(&env(&[("DYN_HTTP_SVC_CHAT_PATH", "/v1/models")])).unwrap_err().contains("two"));
    }
}
