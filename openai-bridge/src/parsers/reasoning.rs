//! `<think>…</think>` reasoning split from the answer, over streamed text.

use super::ReasoningFormat;
use crate::stop::partial_match;

const OPEN: &str = "<think>";
const CLOSE: &str = "</think>";

#[derive(Debug)]
pub(super) struct ReasoningSplitter {
    in_reasoning: bool,
    /// DeepSeek-R1 style: nothing but whitespace seen yet, so a leading `<think>` is dropped.
    leading: bool,
    /// Text that may be the start of the marker looked for.
    held: String,
    /// While `leading`: how much of `held` is known to be whitespace (not scanned again).
    blank: usize,
}

impl ReasoningSplitter {
    pub(super) fn new(format: ReasoningFormat) -> ReasoningSplitter {
        let starts_inside = format == ReasoningFormat::DeepseekR1;
        ReasoningSplitter { in_reasoning: starts_inside, leading: starts_inside, held: String::new(), blank: 0 }
    }

    /// Returns (reasoning, content) that are certain now.
    pub(super) fn push(&mut self, text: &str) -> (String, String) {
        self.held.push_str(text);
        let (mut reasoning, mut content) = (String::new(), String::new());
        if self.leading {
            let rest = self.held[self.blank.min(self.held.len())..].trim_start();
            self.blank = self.held.len() - rest.len();
            if rest.is_empty() || (OPEN.starts_with(rest) && rest.len() < OPEN.len()) {
                return (reasoning, content);
            }
            self.leading = false;
            if let Some(after) = rest.strip_prefix(OPEN) {
                self.held = after.to_owned();
            }
        }
        loop {
            let (marker, out) = if self.in_reasoning { (CLOSE, &mut reasoning) } else { (OPEN, &mut content) };
            match self.held.find(marker) {
                Some(at) => {
                    out.push_str(&self.held[..at]);
                    self.held.drain(..at + marker.len());
                    self.in_reasoning = !self.in_reasoning;
                }
                None => {
                    let keep = partial_match(&self.held, marker);
                    out.push_str(&self.held[..self.held.len() - keep]);
                    self.held.drain(..self.held.len() - keep);
                    return (reasoning, content);
                }
            }
        }
    }

    /// The end: held text goes where it was heading (a cut-off marker is plain text).
    pub(super) fn finish(&mut self) -> (String, String) {
        let held = std::mem::take(&mut self.held);
        if self.in_reasoning { (held, String::new()) } else { (String::new(), held) }
    }
}
