//! Reasoning split from the answer, over streamed text: marker pairs (`<think>…</think>` and
//! each family's own), harmony-like channels, or nothing split at all.

use super::ReasoningFormat;
use super::channels::ChannelSplitter;
use super::markers::{earliest, held_back};

/// A family whose reasoning sits between an opening and a closing marker.
#[derive(Debug)]
struct TagSyntax {
    opens: &'static [&'static str],
    closes: &'static [&'static str],
    /// The chat template opened the reasoning: the output starts inside it.
    starts_inside: bool,
    /// Markers that end the reasoning without its closing marker (a tool call's start); they
    /// stay in the answer's text for the tool-call parser.
    exits: &'static [&'static str],
    /// Dropped right after an opening marker (Gemma 4's `thought` label ends with a newline).
    after_open: &'static str,
}

const THINK: &[&str] = &["<think>"];
const UNTHINK: &[&str] = &["</think>"];

fn tag_syntax(format: ReasoningFormat) -> Option<TagSyntax> {
    use ReasoningFormat::*;
    let think = |starts_inside, exits| TagSyntax { opens: THINK, closes: UNTHINK, starts_inside, exits, after_open: "" };
    Some(match format {
        Think => think(false, &[]),
        DeepseekR1 => think(true, &[]),
        DeepseekV4 => think(false, &["<｜DSML｜tool_calls>", "<｜DSML｜invoke name=", "<｜DSML｜ calls>"]),
        NemotronV3 => think(true, &["<tool_call>"]),
        KimiK25 => think(true, &["<|tool_calls_section_begin|>"]),
        MinimaxM2 => think(true, &["<minimax:tool_call>", "<invoke name="]),
        Kimi => {
            TagSyntax { opens: &["◁think▷"], closes: &["◁/think▷"], starts_inside: false, exits: &[], after_open: "" }
        }
        KimiK3 => TagSyntax {
            opens: &["<|open|>think<|sep|>"],
            closes: &["<|close|>think<|sep|>"],
            starts_inside: true,
            exits: &["<|open|>response<|sep|>", "<|open|>tools<|sep|>"],
            after_open: "",
        },
        Mistral => TagSyntax { opens: &["[THINK]"], closes: &["[/THINK]"], starts_inside: true, exits: &[], after_open: "" },
        Granite => TagSyntax {
            opens: &["Here is my thought process:", "Here's my thought process:"],
            closes: &["Here is my response:", "Here's my response:"],
            starts_inside: false,
            exits: &[],
            after_open: "",
        },
        MinimaxM3 => TagSyntax {
            opens: &["<mm:think>"],
            closes: &["</mm:think>"],
            starts_inside: true,
            exits: &["]<]minimax[>["],
            after_open: "",
        },
        Gemma4 => TagSyntax {
            opens: &["<|channel>thought"],
            closes: &["<channel|>"],
            starts_inside: false,
            exits: &["<|tool_call>"],
            after_open: "\n",
        },
        GptOss | Inkling | MuseGlimmer | MinimaxAppendThink => return None,
    })
}

#[derive(Debug)]
pub(super) enum ReasoningSplitter {
    Tags(TagSplitter),
    Channels(ChannelSplitter),
    /// MiniMax's append-think: the answer's text gets `<think>` in front, nothing is split off.
    AppendThink {
        started: bool,
    },
}

impl ReasoningSplitter {
    pub(super) fn new(format: ReasoningFormat) -> ReasoningSplitter {
        if format == ReasoningFormat::MinimaxAppendThink {
            return ReasoningSplitter::AppendThink { started: false };
        }
        match tag_syntax(format) {
            Some(syntax) => ReasoningSplitter::Tags(TagSplitter::new(syntax)),
            None => ReasoningSplitter::Channels(ChannelSplitter::new(format)),
        }
    }

    /// Returns (reasoning, content) that are certain now.
    pub(super) fn push(&mut self, text: &str) -> (String, String) {
        match self {
            ReasoningSplitter::Tags(tags) => tags.push(text),
            ReasoningSplitter::Channels(channels) => channels.push(text),
            ReasoningSplitter::AppendThink { started } => {
                if text.is_empty() {
                    return (String::new(), String::new());
                }
                let prefix = if std::mem::replace(started, true) { "" } else { "<think>" };
                (String::new(), format!("{prefix}{text}"))
            }
        }
    }

    /// The end: held text goes where it was heading (a cut-off marker is plain text).
    pub(super) fn finish(&mut self) -> (String, String) {
        match self {
            ReasoningSplitter::Tags(tags) => tags.finish(),
            ReasoningSplitter::Channels(channels) => channels.finish(),
            ReasoningSplitter::AppendThink { .. } => (String::new(), String::new()),
        }
    }
}

#[derive(Debug)]
pub(super) struct TagSplitter {
    syntax: TagSyntax,
    in_reasoning: bool,
    /// Starting inside: nothing but whitespace seen yet, so a leading opening marker is dropped.
    leading: bool,
    /// Text that may be the start of a marker looked for.
    held: String,
    /// While `leading`: how much of `held` is known to be whitespace (not scanned again).
    blank: usize,
    /// `syntax.after_open` may still follow the opening marker just seen.
    after_open: bool,
}

impl TagSplitter {
    fn new(syntax: TagSyntax) -> TagSplitter {
        let inside = syntax.starts_inside;
        TagSplitter { syntax, in_reasoning: inside, leading: inside, held: String::new(), blank: 0, after_open: false }
    }

    fn push(&mut self, text: &str) -> (String, String) {
        self.held.push_str(text);
        let (mut reasoning, mut content) = (String::new(), String::new());
        if self.leading {
            let rest = self.held[self.blank.min(self.held.len())..].trim_start();
            self.blank = self.held.len() - rest.len();
            if rest.is_empty() || self.syntax.opens.iter().any(|open| open.starts_with(rest) && rest.len() < open.len()) {
                return (reasoning, content);
            }
            self.leading = false;
            if let Some(after) = self.syntax.opens.iter().find_map(|open| rest.strip_prefix(open)) {
                self.held = after.to_owned();
                self.after_open = !self.syntax.after_open.is_empty();
            }
        }
        loop {
            if self.after_open {
                let label = self.syntax.after_open;
                if self.held.len() < label.len() && label.starts_with(self.held.as_str()) {
                    return (reasoning, content);
                }
                if let Some(rest) = self.held.strip_prefix(label) {
                    self.held = rest.to_owned();
                }
                self.after_open = false;
            }
            let (found, out) = if self.in_reasoning {
                (earliest(&self.held, &[self.syntax.closes, self.syntax.exits]), &mut reasoning)
            } else {
                (earliest(&self.held, &[self.syntax.opens]), &mut content)
            };
            match found {
                Some((at, group, marker)) => {
                    out.push_str(&self.held[..at]);
                    // An exit marker stays: it begins the answer's tool call.
                    let end = if group == 1 { at } else { at + marker.len() };
                    self.held.drain(..end);
                    self.after_open = !self.in_reasoning && !self.syntax.after_open.is_empty();
                    self.in_reasoning = !self.in_reasoning;
                }
                None => {
                    let groups: &[&[&str]] =
                        if self.in_reasoning { &[self.syntax.closes, self.syntax.exits] } else { &[self.syntax.opens] };
                    let keep = held_back(&self.held, groups);
                    out.push_str(&self.held[..self.held.len() - keep]);
                    self.held.drain(..self.held.len() - keep);
                    return (reasoning, content);
                }
            }
        }
    }

    fn finish(&mut self) -> (String, String) {
        let held = std::mem::take(&mut self.held);
        if self.in_reasoning { (held, String::new()) } else { (String::new(), held) }
    }
}
