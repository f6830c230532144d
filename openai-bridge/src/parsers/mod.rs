//! A model's raw output split into what the APIs return apart: reasoning, the answer's text and
//! tool calls. Models write all three into one token stream in their family's format
//! (`<think>…</think>`, harmony channels, hermes `<tool_call>{…}</tool_call>`, llama3 JSON,
//! mistral `[TOOL_CALLS]`, pythonic `[f(a=1)]`, Qwen3-Coder's `<function=…>`, DeepSeek's DSML,
//! Kimi's sections, …: every parser name Dynamo's workers may name, see [`formats`]); the server
//! is told which format with `--dyn-reasoning-parser` / `--dyn-tool-call-parser`, a Dynamo
//! worker's model card, or a repository model's parameters.
//!
//! [`OutputParser`] works on streamed text: each [`OutputParser::push`] returns what is certain
//! so far. Text that may begin a marker is held back until it is ruled out, and a tool call is
//! returned once, complete, when its last character has arrived (never a half call). Output that
//! looks like a call but does not parse is given back as text, so nothing the model said is lost.
//!
//! ```
//! use tritium_openai_bridge::parsers::{OutputParser, ReasoningFormat, ToolCallFormat};
//!
//! let mut parser = OutputParser::new(Some(ReasoningFormat::Think), Some(ToolCallFormat::Hermes));
//! let mut calls = Vec::new();
//! let mut reasoning = String::new();
//! for piece in ["<thi", "nk>Weather needed.</think>\n<tool_", "call>\n{\"name\": \"get_weather\", ",
//!               "\"arguments\": {\"city\": \"Paris\"}}\n</tool_call>"] {
//!     let delta = parser.push(piece);
//!     reasoning += &delta.reasoning;
//!     calls.extend(delta.tool_calls);
//! }
//! calls.extend(parser.finish().tool_calls);
//! assert_eq!(reasoning, "Weather needed.");
//! assert_eq!(calls[0].name, "get_weather");
//! assert_eq!(calls[0].arguments, r#"{"city":"Paris"}"#);
//! ```

mod arguments;
mod balance;
mod blocks;
mod channels;
mod forced;
pub mod formats;
mod markers;
mod pythonic;
mod reasoning;
mod streaming;
mod tool_calls;
mod write;
mod xml_calls;

use std::sync::atomic::{AtomicU64, Ordering};

use serde_json::Value;
use tritium_backend_api::llm::OutputParserNames;

pub use self::arguments::ToolSchemas;
pub use self::formats::{REASONING_PARSERS, ReasoningFormat, TOOL_CALL_PARSERS, ToolCallFormat};
use self::forced::ForcedStream;
use self::reasoning::ReasoningSplitter;
use self::tool_calls::ToolCallSplitter;

/// The server's choice of output formats (the same for every model it serves).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct OutputFormats {
    pub tool_calls: Option<ToolCallFormat>,
    pub reasoning: Option<ReasoningFormat>,
}

impl OutputFormats {
    /// The marker strings the detokenizer must keep when these formats are parsed.
    pub fn markers(&self, with_tools: bool) -> Vec<&'static str> {
        let mut markers = Vec::new();
        if let (true, Some(format)) = (with_tools, self.tool_calls) {
            markers.extend_from_slice(format.markers());
        }
        if let Some(format) = self.reasoning {
            markers.extend_from_slice(format.markers());
        }
        let mut seen = std::collections::HashSet::new();
        markers.retain(|marker| seen.insert(*marker));
        markers
    }

    /// These formats with a model's own choices (its card's parser names) in their place.
    pub fn for_model(&self, names: &OutputParserNames) -> Result<OutputFormats, String> {
        let mut formats = *self;
        if let Some(name) = &names.tool_call_parser {
            formats.tool_calls = Some(ToolCallFormat::from_name(name).ok_or_else(|| format!("unknown tool-call parser '{name}'"))?);
        }
        if let Some(name) = &names.reasoning_parser {
            formats.reasoning = Some(ReasoningFormat::from_name(name).ok_or_else(|| format!("unknown reasoning parser '{name}'"))?);
        }
        Ok(formats)
    }

    /// A parser for one response; tool calls are looked for only when the request offered tools
    /// (`Some`, with their schemas, which type the parameters of the key/value formats).
    pub fn parser(&self, tools: Option<ToolSchemas>) -> Option<OutputParser> {
        let format = self.tool_calls.filter(|_| tools.is_some());
        (format.is_some() || self.reasoning.is_some()).then(|| OutputParser {
            reasoning: self.reasoning.map(ReasoningSplitter::new),
            tools: format.map(|format| ToolCallSplitter::new(format, tools.unwrap_or_default())),
            forced: None,
        })
    }
}

/// One complete tool call.
#[derive(Debug, Clone, PartialEq)]
pub struct ToolCall {
    /// `call_…`, unique in this process (Mistral's own call id when it wrote one).
    pub id: String,
    pub name: String,
    /// The arguments as JSON text (an object, as OpenAI sends them).
    pub arguments: String,
}

impl ToolCall {
    /// A call from a parsed name and arguments: an object is serialized, a string (some models
    /// write the arguments as a JSON string) is kept as it is.
    fn new(name: String, arguments: Value) -> ToolCall {
        let arguments = match arguments {
            Value::String(text) => text,
            Value::Null => "{}".to_owned(),
            other => other.to_string(),
        };
        ToolCall::with_arguments(name, arguments)
    }

    /// A call whose arguments are already JSON text.
    fn with_arguments(name: String, arguments: String) -> ToolCall {
        ToolCall { id: new_call_id(), name, arguments }
    }
}

/// `call_` and 24 hex digits, unique in this process and unlikely to repeat across restarts.
pub fn new_call_id() -> String {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos() as u64);
    format!("call_{nanos:016x}{:08x}", n as u32)
}

/// A streamed tool call, piece by piece: its start (id and name), then its arguments' JSON text
/// in pieces. Calls never interleave: the pieces after a `Start` belong to that call until the
/// next `Start`, and a call's pieces add up to its [`ToolCall::arguments`] exactly.
#[derive(Debug, Clone, PartialEq)]
pub enum CallPiece {
    Start { id: String, name: String },
    Arguments(String),
}

/// What one push made certain.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ParsedDelta {
    pub reasoning: String,
    pub content: String,
    /// Calls whose last piece has arrived (each was announced in `call_pieces` first).
    pub tool_calls: Vec<ToolCall>,
    /// The calls as they stream: what the streaming doors send.
    pub call_pieces: Vec<CallPiece>,
}

impl ParsedDelta {
    pub fn is_empty(&self) -> bool {
        self.reasoning.is_empty() && self.content.is_empty() && self.tool_calls.is_empty() && self.call_pieces.is_empty()
    }

    pub fn extend(&mut self, other: ParsedDelta) {
        self.reasoning.push_str(&other.reasoning);
        self.content.push_str(&other.content);
        self.tool_calls.extend(other.tool_calls);
        self.call_pieces.extend(other.call_pieces);
    }

    /// A complete call: the pieces not streamed yet (all of them when `streamed` is not this
    /// call), then the call itself.
    fn complete(&mut self, call: ToolCall, streamed: &mut Option<StreamedCall>) {
        let sent = match streamed.take() {
            Some(streamed) if streamed.id == call.id => streamed.sent,
            _ => {
                self.call_pieces.push(CallPiece::Start { id: call.id.clone(), name: call.name.clone() });
                0
            }
        };
        match call.arguments.get(sent..) {
            Some("") => {}
            Some(rest) => self.call_pieces.push(CallPiece::Arguments(rest.to_owned())),
            // Streamed text the whole call does not start with: cannot happen for the formats
            // here (both come from one reading of the same text); the client has what was sent.
            None => tracing::warn!(call = %call.name, "a streamed call's arguments differ from its whole text"),
        }
        self.tool_calls.push(call);
    }
}

/// The call whose pieces are streaming: its id and how many bytes of its arguments went out.
#[derive(Debug, Clone)]
pub(super) struct StreamedCall {
    pub id: String,
    pub sent: usize,
}

/// Calls a grammar wrote (`tool_choice` made one mandatory): the whole output is JSON.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ForcedCalls {
    /// The output is this tool's arguments.
    Named(String),
    /// The output is an array of `{"name": …, "arguments": {…}}`.
    Any,
}

/// The parse of one response's streamed text; see the module docs.
#[derive(Debug)]
pub struct OutputParser {
    reasoning: Option<ReasoningSplitter>,
    tools: Option<ToolCallSplitter>,
    /// With forced calls: the output, which is the calls.
    forced: Option<ForcedStream>,
}

impl OutputParser {
    pub fn new(reasoning: Option<ReasoningFormat>, tools: Option<ToolCallFormat>) -> OutputParser {
        OutputFormats { tool_calls: tools, reasoning }.parser(Some(ToolSchemas::default())).unwrap_or(OutputParser {
            reasoning: None,
            tools: None,
            forced: None,
        })
    }

    /// A parser for output whose calls a grammar forced: the output is the calls' JSON, which
    /// streams as it arrives.
    pub fn forced(reasoning: Option<ReasoningFormat>, calls: ForcedCalls) -> OutputParser {
        OutputParser { reasoning: reasoning.map(ReasoningSplitter::new), tools: None, forced: Some(ForcedStream::new(calls)) }
    }

    pub fn push(&mut self, text: &str) -> ParsedDelta {
        let (reasoning, content) = match &mut self.reasoning {
            Some(splitter) => splitter.push(text),
            None => (String::new(), text.to_owned()),
        };
        let mut delta = self.tools_push(&content);
        delta.reasoning = reasoning;
        delta
    }

    /// The end of the output: everything held back, as text when it never became a marker.
    pub fn finish(&mut self) -> ParsedDelta {
        let (reasoning, content) = match &mut self.reasoning {
            Some(splitter) => splitter.finish(),
            None => (String::new(), String::new()),
        };
        let mut delta = self.tools_push(&content);
        delta.reasoning = reasoning;
        if let Some(tools) = &mut self.tools {
            delta.extend(tools.finish());
        }
        if let Some(forced) = self.forced.take() {
            delta.extend(forced.finish());
        }
        delta
    }

    fn tools_push(&mut self, content: &str) -> ParsedDelta {
        if let Some(forced) = &mut self.forced {
            return forced.push(content);
        }
        match &mut self.tools {
            Some(tools) if !content.is_empty() => tools.push(content),
            Some(_) => ParsedDelta::default(),
            None => ParsedDelta { content: content.to_owned(), ..Default::default() },
        }
    }

    /// The whole output at once: the unary responses' path.
    pub fn parse_all(mut self, text: &str) -> ParsedDelta {
        let mut delta = self.push(text);
        delta.extend(self.finish());
        delta
    }
}

#[cfg(test)]
mod tests;
#[cfg(test)]
mod stream_tests;
