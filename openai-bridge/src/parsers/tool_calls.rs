//! Tool calls split from the answer's text, over streamed text, in each family's format.

use super::arguments::{ToolSchemas, json_arguments};
use super::balance::{Balance, Scan};
use super::blocks::{BlockSyntax, block_syntax, json_calls};
use super::markers::{earliest, floor_boundary, held_back};
use super::streaming::BlockStream;
use super::{ParsedDelta, ToolCall, ToolCallFormat, pythonic};

const PYTHON_TAG: &str = "<|python_tag|>";
const MISTRAL_CALLS: &str = "[TOOL_CALLS]";
const MISTRAL_ARGS: &str = "[ARGS]";
const MISTRAL_CALL_ID: &str = "[CALL_ID]";
const PHI4_CALLS: &str = "functools";
const PYTHON_START: &str = "<|python_start|>";
const PYTHON_END: &str = "<|python_end|>";
/// A Mistral call's name comes before its arguments; longer than this it is not a name.
const MAX_NAME_BYTES: usize = 256;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Only whitespace so far (formats whose calls must start the output).
    Start,
    /// Plain text, watching for the opening marker.
    Text,
    /// Inside a call (or list of calls) whose end has not arrived.
    Call,
}

#[derive(Debug)]
pub(super) struct ToolCallSplitter {
    format: ToolCallFormat,
    block: Option<BlockSyntax>,
    /// The opening marker of the block being read.
    open: &'static str,
    schemas: ToolSchemas,
    /// The calls of the block being read, as they stream.
    stream: BlockStream,
    state: State,
    /// Text not yet given out: a possible marker, or the call being read.
    held: String,
    /// Where the search for the closing marker in `held` goes on from (before a call: how much
    /// of `held` is known to be whitespace).
    searched: usize,
    balance: Balance,
    /// Everything since the call began, given back as text when it does not parse.
    raw: String,
    /// Whitespace at the end of the text so far, given out only when more text follows, so the
    /// blank lines around calls do not become content.
    trailing_space: String,
    calls_seen: bool,
}

impl ToolCallSplitter {
    pub(super) fn new(format: ToolCallFormat, schemas: ToolSchemas) -> ToolCallSplitter {
        let state = match format {
            ToolCallFormat::Llama3Json | ToolCallFormat::Pythonic => State::Start,
            _ => State::Text,
        };
        ToolCallSplitter {
            format,
            block: block_syntax(format),
            open: "",
            schemas,
            stream: BlockStream::default(),
            state,
            held: String::new(),
            searched: 0,
            balance: Balance::default(),
            raw: String::new(),
            trailing_space: String::new(),
            calls_seen: false,
        }
    }

    pub(super) fn push(&mut self, text: &str) -> ParsedDelta {
        let mut out = ParsedDelta::default();
        self.held.push_str(text);
        if self.state != State::Text {
            self.raw.push_str(text);
        }
        while self.step(&mut out) {}
        out
    }

    pub(super) fn finish(&mut self) -> ParsedDelta {
        let mut out = ParsedDelta::default();
        let held = std::mem::take(&mut self.held);
        match self.state {
            State::Text => self.emit(&held, &mut out),
            // A block the end of the output cut before its closing marker: often still whole.
            State::Call if self.block.is_some() => match self.read_block(&held) {
                Some(calls) => self.block_calls(calls, &mut out),
                None => {
                    self.stream = BlockStream::default();
                    self.fall_back(&mut out);
                }
            },
            State::Start | State::Call => {
                self.fall_back(&mut out);
            }
        }
        if !self.calls_seen {
            out.content.push_str(&std::mem::take(&mut self.trailing_space));
        }
        out
    }

    /// One step of the state machine; false when it needs more text.
    fn step(&mut self, out: &mut ParsedDelta) -> bool {
        if let Some(block) = self.block {
            return match self.state {
                State::Text => self.block_text(block, out),
                _ => self.block_body(block, out),
            };
        }
        match (self.state, self.format) {
            (State::Start, _) => self.start(),
            (State::Text, ToolCallFormat::Mistral) => self.text_until(&[MISTRAL_CALLS], out),
            (State::Text, ToolCallFormat::Phi4) => self.text_until(&[PHI4_CALLS], out),
            (State::Text, _) => {
                let held = std::mem::take(&mut self.held);
                self.emit(&held, out);
                false
            }
            (State::Call, ToolCallFormat::Mistral) => self.mistral_calls(out),
            (State::Call, ToolCallFormat::Phi4) => self.json_value_calls(out),
            (State::Call, ToolCallFormat::Pythonic) => self.python_calls(out),
            (State::Call, _) => self.json_calls(out),
        }
    }

    /// Formats whose calls begin the output: an optional tag, then the opening bracket.
    fn start(&mut self) -> bool {
        let (tag, bracket) = match self.format {
            ToolCallFormat::Pythonic => (PYTHON_START, '['),
            _ => (PYTHON_TAG, '{'),
        };
        // `held[..searched]` is whitespace seen on earlier pushes: not scanned again.
        let known = self.searched.min(self.held.len());
        let rest = self.held[known..].trim_start();
        self.searched = self.held.len() - rest.len();
        if rest.is_empty() || (tag.starts_with(rest) && rest.len() < tag.len()) {
            return false;
        }
        if let Some(after) = rest.strip_prefix(tag) {
            self.held = after.trim_start().to_owned();
            self.begin_call();
        } else if rest.starts_with(bracket) {
            self.held = rest.to_owned();
            self.begin_call();
        } else {
            self.state = State::Text;
            self.searched = 0;
            self.raw.clear();
        }
        true
    }

    fn begin_call(&mut self) {
        self.state = State::Call;
        self.balance = Balance::default();
        self.searched = 0;
    }

    /// Text up to the first of `markers`, which opens a call.
    fn text_until(&mut self, markers: &[&'static str], out: &mut ParsedDelta) -> bool {
        match earliest(&self.held, &[markers]) {
            Some((at, _, marker)) => {
                let before: String = self.held.drain(..at + marker.len()).collect();
                self.emit(&before[..at], out);
                self.open = marker;
                self.raw = marker.to_owned();
                self.raw.push_str(&self.held);
                self.begin_call();
                true
            }
            None => {
                let keep = held_back(&self.held, &[markers]);
                let text: String = self.held.drain(..self.held.len() - keep).collect();
                self.emit(&text, out);
                false
            }
        }
    }

    /// Text up to a block's opening marker, without the markup the format drops from it.
    fn block_text(&mut self, block: BlockSyntax, out: &mut ParsedDelta) -> bool {
        let opens = block.opens();
        match earliest(&self.held, &[&opens, block.dropped]) {
            Some((at, 1, marker)) => {
                let text: String = self.held.drain(..at + marker.len()).collect();
                self.emit(&text[..at], out);
                true
            }
            Some(_) => self.text_until(&opens, out),
            None => {
                let keep = held_back(&self.held, &[&opens, block.dropped]);
                let text: String = self.held.drain(..self.held.len() - keep).collect();
                self.emit(&text, out);
                false
            }
        }
    }

    /// A block's body up to its closing marker, read as calls (given back as text when not).
    fn block_body(&mut self, block: BlockSyntax, out: &mut ParsedDelta) -> bool {
        let close = block.close_of(self.open);
        let from = floor_boundary(&self.held, self.searched);
        let Some(at) = self.held[from..].find(close).map(|at| from + at) else {
            self.searched = self.held.len().saturating_sub(close.len());
            self.stream.advance(self.format, self.open, &self.held, &self.schemas, out);
            return false;
        };
        match self.read_block(&self.held[..at]) {
            Some(calls) => self.block_calls(calls, out),
            None => {
                if self.stream.started() {
                    tracing::warn!("a tool-call block whose calls had begun to stream does not read as calls; given as text");
                }
                self.stream = BlockStream::default();
                let block = format!("{}{}{close}", self.open, &self.held[..at]);
                self.emit(&block, out);
            }
        }
        self.held.drain(..at + close.len());
        self.state = State::Text;
        true
    }

    /// The calls of an unfinished JSON value given out as far as they go; always false (more text
    /// is needed).
    fn stream_so_far(&mut self, out: &mut ParsedDelta) -> bool {
        self.stream.advance(self.format, self.open, &self.held, &self.schemas, out);
        false
    }

    /// A whole block's calls, with the pieces of each not streamed yet.
    fn block_calls(&mut self, calls: Vec<ToolCall>, out: &mut ParsedDelta) {
        self.calls_seen = true;
        self.trailing_space.clear();
        self.raw.clear();
        self.stream.finish(calls, out);
    }

    fn read_block(&self, body: &str) -> Option<Vec<ToolCall>> {
        let block = self.block?;
        (block.read)(self.open, body, &self.schemas)
    }

    /// Llama 3: JSON objects, joined by `;`, each one call.
    fn json_calls(&mut self, out: &mut ParsedDelta) -> bool {
        if !self.skip_separators() {
            return false;
        }
        if !self.held.starts_with('{') {
            return self.after_calls(out);
        }
        match self.balance.scan(&self.held, &['"']) {
            Scan::Open => self.stream_so_far(out),
            Scan::NotAValue => self.fall_back(out),
            Scan::Closed(end) => match json_calls(&self.held[..end]).filter(|calls| calls.len() == 1) {
                Some(calls) => {
                    self.held.drain(..end);
                    self.block_calls(calls, out);
                    self.balance = Balance::default();
                    true
                }
                None => self.fall_back(out),
            },
        }
    }

    /// Mistral: a JSON array of calls, or `name[ARGS]{…}` (maybe with `[CALL_ID]id`).
    fn mistral_calls(&mut self, out: &mut ParsedDelta) -> bool {
        if !self.trim_held() {
            return false;
        }
        if self.held.starts_with(['[', '{']) {
            return self.json_value_calls(out);
        }
        let Some(brace) = self.held.find('{') else {
            return self.held.len() > MAX_NAME_BYTES && self.fall_back(out);
        };
        let head = &self.held[..brace];
        let (name, id) = match head.split_once(MISTRAL_CALL_ID) {
            Some((name, rest)) => (name, Some(rest.trim_end_matches(MISTRAL_ARGS).trim())),
            None => (head.trim_end_matches(MISTRAL_ARGS), None),
        };
        let name = name.trim();
        if name.is_empty() || !name.chars().all(|c| c.is_alphanumeric() || "_-.".contains(c)) {
            return self.fall_back(out);
        }
        let (name, id) = (name.to_owned(), id.filter(|id| !id.is_empty()).map(str::to_owned));
        // The scan goes on from where the last push left it; the arguments are not copied.
        let mut balance = std::mem::take(&mut self.balance);
        let scan = balance.scan(&self.held[brace..], &['"']);
        self.balance = balance;
        match scan {
            Scan::Open => self.stream_so_far(out),
            Scan::NotAValue => self.fall_back(out),
            Scan::Closed(end) => match json_arguments(&self.held[brace..brace + end]) {
                Some(arguments) => {
                    self.held.drain(..brace + end);
                    let mut call = ToolCall::with_arguments(name, arguments);
                    if let Some(id) = id {
                        call.id = id;
                    }
                    self.block_calls(vec![call], out);
                    self.state = State::Text;
                    true
                }
                None => self.fall_back(out),
            },
        }
    }

    /// One JSON value of calls (an array, or one object) after the marker (Mistral, Phi-4).
    fn json_value_calls(&mut self, out: &mut ParsedDelta) -> bool {
        if !self.trim_held() {
            return false;
        }
        match self.balance.scan(&self.held, &['"']) {
            Scan::Open => self.stream_so_far(out),
            Scan::NotAValue => self.fall_back(out),
            Scan::Closed(end) => match json_calls(&self.held[..end]) {
                Some(calls) => {
                    self.held.drain(..end);
                    self.block_calls(calls, out);
                    self.state = State::Text;
                    true
                }
                None => self.fall_back(out),
            },
        }
    }

    /// Drops the whitespace before the calls (it is dropped anyway; holding it would make every
    /// push scan it again); false when nothing else has arrived yet.
    fn trim_held(&mut self) -> bool {
        let rest = self.held.trim_start();
        if rest.is_empty() {
            self.held.clear();
            return false;
        }
        if rest.len() != self.held.len() {
            self.held = rest.to_owned();
            self.balance = Balance::default();
        }
        true
    }

    /// Pythonic: one bracketed list of calls.
    fn python_calls(&mut self, out: &mut ParsedDelta) -> bool {
        match self.balance.scan(&self.held, &['"', '\'']) {
            Scan::Open => self.stream_so_far(out),
            Scan::NotAValue => self.fall_back(out),
            Scan::Closed(end) => match pythonic::parse_calls(&self.held[..end]) {
                Some(calls) => {
                    self.held.drain(..end);
                    let calls = calls.into_iter().map(|(name, arguments)| ToolCall::new(name, arguments)).collect();
                    self.block_calls(calls, out);
                    let rest = self.held.trim_start();
                    self.held = rest.strip_prefix(PYTHON_END).unwrap_or(rest).to_owned();
                    self.state = State::Text;
                    true
                }
                None => self.fall_back(out),
            },
        }
    }

    /// Drops whitespace and `;` between Llama calls; false when nothing else is left yet.
    fn skip_separators(&mut self) -> bool {
        let rest = self.held.trim_start_matches(|c: char| c.is_whitespace() || c == ';');
        if rest.len() != self.held.len() {
            self.held = rest.to_owned();
            self.balance = Balance::default();
        }
        !self.held.is_empty()
    }

    /// Text after the last call: the rest is the answer's text.
    fn after_calls(&mut self, out: &mut ParsedDelta) -> bool {
        if !self.calls_seen {
            return self.fall_back(out);
        }
        self.state = State::Text;
        true
    }

    /// What looked like a call is not one: everything since it began is text again (given out
    /// as it is: scanning it again would find the same marker).
    fn fall_back(&mut self, out: &mut ParsedDelta) -> bool {
        if self.stream.started() {
            tracing::warn!("tool-call text whose calls had begun to stream does not read as calls; given as text");
        }
        self.stream = BlockStream::default();
        let raw = std::mem::take(&mut self.raw);
        self.held.clear();
        self.state = State::Text;
        self.emit(&raw, out);
        true
    }

    fn emit(&mut self, text: &str, out: &mut ParsedDelta) {
        if text.is_empty() {
            return;
        }
        let trimmed = text.trim_end();
        if trimmed.is_empty() {
            self.trailing_space.push_str(text);
            return;
        }
        out.content.push_str(&std::mem::take(&mut self.trailing_space));
        out.content.push_str(trimmed);
        self.trailing_space.push_str(&text[trimmed.len()..]);
    }
}
