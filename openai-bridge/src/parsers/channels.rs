//! Output made of messages with headers (harmony's channels, Inkling's content kinds, Muse's
//! recipients): each message's header says whether its body is reasoning, the answer, or a
//! tool call, which is passed on to the tool-call parser as the model wrote it.

use super::ReasoningFormat;
use super::markers::{earliest, held_back};

/// A header longer than this never ends: what looked like one is the answer's text.
const MAX_HEADER_BYTES: usize = 512;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Class {
    Reasoning,
    Content,
    Tool,
}

#[derive(Debug)]
struct ChannelSyntax {
    /// Markers that begin a message's header.
    starts: &'static [&'static str],
    /// Markers that end a header (and begin the body).
    header_ends: &'static [&'static str],
    /// Markers that end a body; a new message's start ends it too.
    body_ends: &'static [&'static str],
    /// Markers dropped between messages.
    ignored: &'static [&'static str],
    /// The prompt ends with the first message's start: the output begins with its header.
    starts_in_header: bool,
    /// A tool message is passed on with its markers (the tool-call parser reads the header).
    tool_markup: bool,
    classify: fn(header: &str, header_end: &str) -> Class,
}

fn syntax(format: ReasoningFormat) -> ChannelSyntax {
    match format {
        ReasoningFormat::Inkling => ChannelSyntax {
            starts: &["<|message_model|>"],
            header_ends: &["<|content_thinking|>", "<|content_text|>", "<|content_invoke_tool_json|>"],
            body_ends: &["<|end_message|>"],
            ignored: &["<|content_model_end_sampling|>"],
            starts_in_header: false,
            tool_markup: true,
            classify: |_, end| match end {
                "<|content_thinking|>" => Class::Reasoning,
                "<|content_invoke_tool_json|>" => Class::Tool,
                _ => Class::Content,
            },
        },
        ReasoningFormat::MuseGlimmer => ChannelSyntax {
            starts: &["<|start|>"],
            header_ends: &["<|message|>"],
            body_ends: &["<|eom|>", "<|eot|>"],
            ignored: &[],
            starts_in_header: true,
            tool_markup: false,
            classify: |header, _| match header.split_once("to=").map(|(_, to)| to.split_whitespace().next().unwrap_or("")) {
                Some("self") => Class::Reasoning,
                None | Some("user") | Some("") => Class::Content,
                Some(_) => Class::Tool,
            },
        },
        // gpt-oss's harmony, the default of this splitter.
        _ => ChannelSyntax {
            starts: &["<|start|>", "<|channel|>"],
            header_ends: &["<|message|>"],
            body_ends: &["<|end|>", "<|call|>", "<|return|>"],
            ignored: &[],
            starts_in_header: false,
            tool_markup: true,
            classify: |header, _| {
                if header.contains("analysis") {
                    Class::Reasoning
                } else if header.contains("to=") {
                    Class::Tool
                } else {
                    Class::Content
                }
            },
        },
    }
}

#[derive(Debug)]
enum State {
    Outside,
    /// In a header that began with this marker.
    Header(&'static str),
    Body(Class),
}

#[derive(Debug)]
pub(super) struct ChannelSplitter {
    syntax: ChannelSyntax,
    state: State,
    held: String,
}

impl ChannelSplitter {
    pub(super) fn new(format: ReasoningFormat) -> ChannelSplitter {
        let syntax = syntax(format);
        let state = if syntax.starts_in_header { State::Header("") } else { State::Outside };
        ChannelSplitter { syntax, state, held: String::new() }
    }

    /// Returns (reasoning, content) that are certain now.
    pub(super) fn push(&mut self, text: &str) -> (String, String) {
        self.held.push_str(text);
        let (mut reasoning, mut content) = (String::new(), String::new());
        while self.step(&mut reasoning, &mut content) {}
        (reasoning, content)
    }

    pub(super) fn finish(&mut self) -> (String, String) {
        let held = std::mem::take(&mut self.held);
        match self.state {
            State::Outside | State::Body(Class::Content | Class::Tool) => (String::new(), held),
            State::Header(start) => (String::new(), format!("{start}{held}")),
            State::Body(Class::Reasoning) => (held, String::new()),
        }
    }

    /// One step; false when more text is needed.
    fn step(&mut self, reasoning: &mut String, content: &mut String) -> bool {
        let (starts, header_ends, body_ends, ignored, tool_markup) =
            (self.syntax.starts, self.syntax.header_ends, self.syntax.body_ends, self.syntax.ignored, self.syntax.tool_markup);
        match self.state {
            State::Outside => {
                let groups: [&[&str]; 3] = [starts, header_ends, ignored];
                let Some((at, group, marker)) = earliest(&self.held, &groups) else {
                    let keep = held_back(&self.held, &groups);
                    content.extend(self.held.drain(..self.held.len() - keep));
                    return false;
                };
                content.extend(self.held.drain(..at));
                self.held.drain(..marker.len());
                match group {
                    0 => self.state = State::Header(marker),
                    1 => self.begin_body("", "", marker, content),
                    _ => {}
                }
                true
            }
            State::Header(start) => {
                let Some((at, _, marker)) = earliest(&self.held, &[header_ends]) else {
                    if self.held.len() > MAX_HEADER_BYTES {
                        content.push_str(start);
                        content.push_str(&std::mem::take(&mut self.held));
                        self.state = State::Outside;
                    }
                    return false;
                };
                let header = self.held[..at].to_owned();
                self.held.drain(..at + marker.len());
                self.begin_body(start, &header, marker, content);
                true
            }
            State::Body(class) => {
                let groups: [&[&str]; 2] = [body_ends, starts];
                let out = |text: &str, reasoning: &mut String, content: &mut String| match class {
                    Class::Reasoning => reasoning.push_str(text),
                    _ => content.push_str(text),
                };
                let Some((at, group, marker)) = earliest(&self.held, &groups) else {
                    let keep = held_back(&self.held, &groups);
                    let text: String = self.held.drain(..self.held.len() - keep).collect();
                    out(&text, reasoning, content);
                    return false;
                };
                let text: String = self.held.drain(..at).collect();
                out(&text, reasoning, content);
                if group == 0 {
                    self.held.drain(..marker.len());
                    if class == Class::Tool && tool_markup {
                        content.push_str(marker);
                    }
                }
                self.state = State::Outside;
                true
            }
        }
    }

    fn begin_body(&mut self, start: &str, header: &str, end: &str, content: &mut String) {
        let class = (self.syntax.classify)(header, end);
        if class == Class::Tool && self.syntax.tool_markup {
            content.push_str(start);
            content.push_str(header);
            content.push_str(end);
        }
        self.state = State::Body(class);
    }
}
