//! The output parsers a model may ask for by name (its Dynamo model card's `runtime_config`, a
//! repository config's parameters): the names Dynamo 1.6.1's workers may write, and Tritium's
//! own `think`. The frontend maps each to its family's markup; here they are only checked, so a
//! worker or a repository naming a parser nobody has is refused where it is loaded.

use serde::{Deserialize, Serialize};

/// Every tool-call parser name.
pub const TOOL_CALL_PARSER_NAMES: [&str; 36] = [
    "hermes",
    "qwen25",
    "qwen3",
    "default",
    "llama3_json",
    "mistral",
    "pythonic",
    "phi4",
    "nemotron_deci",
    "jamba",
    "harmony",
    "deepseek_v3",
    "deepseek_v3_1",
    "deepseek_v3_2",
    "deepseek_v4",
    "deepseek-v4",
    "deepseekv4",
    "deepseek_v41",
    "qwen3_coder",
    "nemotron_nano",
    "minimax_m2",
    "minimax_m3",
    "minimax-m3",
    "minimax_m3_nom",
    "minimax-m3-nom",
    "glm45",
    "glm47",
    "kimi_k2",
    "kimi_k25",
    "kimi_k3",
    "kimi-k3",
    "gemma4",
    "gemma-4",
    "inkling",
    "muse",
    "muse_glimmer",
];

/// Every reasoning parser name.
pub const REASONING_PARSER_NAMES: [&str; 36] = [
    "think",
    "basic",
    "qwen3",
    "qwen3_coder",
    "glm45",
    "glm47",
    "nemotron_deci",
    "deepseek_r1",
    "deepseek_v3",
    "deepseek_v3_1",
    "deepseek_v3_2",
    "step3",
    "nemotron_nano",
    "deepseek_v4",
    "deepseek-v4",
    "deepseekv4",
    "deepseek_v41",
    "nemotron_v3",
    "nemotron3",
    "kimi",
    "kimi_k2",
    "kimi_k25",
    "kimi_k3",
    "kimi-k3",
    "mistral",
    "gpt_oss",
    "granite",
    "minimax_append_think",
    "minimax_m2",
    "minimax_m3",
    "minimax-m3",
    "gemma4",
    "gemma-4",
    "inkling",
    "muse",
    "muse_glimmer",
];

/// The parsers one model's output is read with; `None` leaves the server's choice.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct OutputParserNames {
    #[serde(default)]
    pub tool_call_parser: Option<String>,
    #[serde(default)]
    pub reasoning_parser: Option<String>,
}

impl OutputParserNames {
    /// Both names, checked: an unknown one is an error naming `field` and the known names.
    pub fn checked(tool_call_parser: Option<String>, reasoning_parser: Option<String>, field: &str) -> Result<Self, String> {
        let check = |name: &Option<String>, kind: &str, known: &[&str]| match name {
            Some(name) if !known.contains(&name.as_str()) => {
                Err(format!("{field}: unknown {kind} parser '{name}'; the known ones are {}", known.join(", ")))
            }
            _ => Ok(()),
        };
        check(&tool_call_parser, "tool-call", &TOOL_CALL_PARSER_NAMES)?;
        check(&reasoning_parser, "reasoning", &REASONING_PARSER_NAMES)?;
        Ok(OutputParserNames { tool_call_parser, reasoning_parser })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_names_are_refused_naming_the_known_ones() {
        let error = OutputParserNames::checked(Some("json".into()), None, "runtime_config").unwrap_err();
        assert!(
            error.starts_with("runtime_config: unknown tool-call parser 'json'; the known ones are hermes, qwen25"),
            "{error}"
        );
        let error = OutputParserNames::checked(None, Some("o1".into()), "parameters").unwrap_err();
        assert!(error.contains("unknown reasoning parser 'o1'") && error.contains("gpt_oss"), "{error}");
        let names = OutputParserNames::checked(Some("kimi_k2".into()), Some("kimi_k25".into()), "x");
        assert_eq!(names.map(|n| n.tool_call_parser), Ok(Some("kimi_k2".to_string())));
    }
}
