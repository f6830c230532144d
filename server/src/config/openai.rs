//! The flags of the OpenAI and Anthropic doors: how model output is parsed into reasoning and
//! tool calls (Dynamo's `--dyn-tool-call-parser` / `--dyn-reasoning-parser`), whether Anthropic's
//! Messages API is served, and the bounds of the Responses API's store.

use std::time::Duration;

use clap::Args;
use tritium_openai_bridge::parsers::{OutputFormats, ReasoningFormat, ToolCallFormat};
use tritium_openai_bridge::response_store::{DEFAULT_STORE_BYTES, DEFAULT_STORE_ENTRIES, StoreLimits};
use tritium_openai_bridge::routes::ApiSettings;

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
    #[arg(long, env = "DYN_ENABLE_ANTHROPIC_API")]
    pub enable_anthropic_api: bool,
    /// Responses the Responses API keeps for `previous_response_id`, at most (the oldest go first).
    #[arg(long, env = "TRITIUM_RESPONSES_STORE_ENTRIES", default_value_t = DEFAULT_STORE_ENTRIES)]
    pub responses_store_entries: usize,
    /// JSON bytes of all stored responses and their conversations, at most.
    #[arg(long, env = "TRITIUM_RESPONSES_STORE_BYTES", default_value_t = DEFAULT_STORE_BYTES)]
    pub responses_store_bytes: usize,
    /// Seconds a stored response is kept.
    #[arg(long, env = "TRITIUM_RESPONSES_STORE_TTL_SECS", default_value_t = 3600)]
    pub responses_store_ttl_secs: u64,
}

/// What the flags resolve to.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OpenAiSettings {
    pub formats: OutputFormats,
    pub api: ApiSettings,
}

impl OpenAiArgs {
    pub fn settings(&self) -> Result<OpenAiSettings, String> {
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
        Ok(OpenAiSettings {
            formats: OutputFormats { tool_calls, reasoning },
            api: ApiSettings { anthropic: self.enable_anthropic_api, store },
        })
    }
}
