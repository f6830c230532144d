//! Incremental detokenization: generated token ids in, text deltas out, exactly as the
//! tokenizer would decode the whole sequence.
//!
//! Decoding one token at a time is wrong in two ways: byte-level BPE splits multi-byte UTF-8
//! characters (`é`, emoji, CJK) over several tokens, and some decoders treat the first token of
//! a string differently (SentencePiece drops its leading space). So each step decodes a short
//! window of recent ids twice, with and without the new one, and emits the difference; text that
//! ends in an incomplete character (U+FFFD) waits for the next token. Special tokens are skipped.

use std::sync::Arc;

use tokenizers::Tokenizer;

pub use table::DecodeTable;

mod table;

/// The decoding state of one sequence; make one with
/// `Preprocessor::detokenizer`.
#[derive(Debug)]
pub struct Detokenizer {
    tokenizer: Arc<Tokenizer>,
    /// The tokenizer's decoding, looked up (a byte-level tokenizer's).
    table: Option<Arc<DecodeTable>>,
    /// The window: ids before `read` were emitted already and are there as context.
    ids: Vec<u32>,
    read: usize,
    /// Special tokens shown as their text (a tool-call parser's markers), sorted.
    shown: Vec<u32>,
    /// The window's bytes, kept between tokens so that a step with the table allocates only
    /// the text it returns.
    scratch: Vec<u8>,
}

impl Detokenizer {
    /// `context`: ids decoded as if they came before the sequence but never emitted, so that a
    /// decoder that strips the first token's leading space keeps the space of the first
    /// generated token (a completion continues its prompt).
    pub(crate) fn new(tokenizer: Arc<Tokenizer>, table: Option<Arc<DecodeTable>>, context: Vec<u32>) -> Detokenizer {
        let read = context.len();
        Detokenizer { tokenizer, table, ids: context, read, shown: Vec::new(), scratch: Vec::new() }
    }

    /// Shows these special tokens as their text instead of skipping them (the markers an
    /// output parser looks for, such as Mistral's `[TOOL_CALLS]`).
    pub fn show_special(&mut self, mut ids: Vec<u32>) {
        ids.sort_unstable();
        ids.dedup();
        self.shown = ids;
    }

    /// Adds one generated token; returns the text it completes (often empty for a piece of a
    /// character or a special token).
    pub fn push(&mut self, id: u32) -> String {
        self.ids.push(id);
        let delta = match (&self.table, self.shown.is_empty()) {
            (Some(table), true) => {
                // `texts` without its two strings: the window's bytes once, read lossily as
                // `DecodeTable::decode` reads them, before and after the unread ids.
                let mut bytes = std::mem::take(&mut self.scratch);
                bytes.clear();
                table.append_bytes(&self.ids[..self.read], true, &mut bytes);
                let split = bytes.len();
                table.append_bytes(&self.ids[self.read..], true, &mut bytes);
                let delta = completed(&String::from_utf8_lossy(&bytes[..split]), &String::from_utf8_lossy(&bytes));
                self.scratch = bytes;
                delta
            }
            _ => {
                let (prefix, text) = self.texts();
                completed(&prefix, &text)
            }
        };
        let Some(delta) = delta else { return String::new() };
        // The emitted ids are the next step's context; older ones are no longer needed.
        self.ids.drain(..self.read);
        self.read = self.ids.len();
        delta
    }

    /// The end of the sequence: whatever was held back, with U+FFFD for incomplete characters.
    pub fn finish(&mut self) -> String {
        let (prefix, text) = self.texts();
        let rest = if text.len() > prefix.len() { suffix_after(&text, &prefix) } else { String::new() };
        self.ids.drain(..self.read);
        self.read = self.ids.len();
        rest
    }

    /// The window's text before and after the tokens not yet emitted.
    fn texts(&self) -> (String, String) {
        (self.decode(&self.ids[..self.read]), self.decode(&self.ids))
    }

    fn decode(&self, ids: &[u32]) -> String {
        if ids.is_empty() {
            return String::new();
        }
        if self.shown.is_empty() || !ids.iter().any(|id| self.shown.binary_search(id).is_ok()) {
            return self.decode_ids(ids, true);
        }
        let mut text = String::new();
        for piece in ids.split_inclusive(|id| self.shown.binary_search(id).is_ok()) {
            let (last, before) = piece.split_last().map_or((None, piece), |(last, before)| (Some(*last), before));
            match last.filter(|id| self.shown.binary_search(id).is_ok()) {
                Some(marker) => {
                    text.push_str(&self.decode_ids(before, true));
                    text.push_str(&self.decode_ids(&[marker], false));
                }
                None => text.push_str(&self.decode_ids(piece, true)),
            }
        }
        text
    }

    fn decode_ids(&self, ids: &[u32], skip_special_tokens: bool) -> String {
        match &self.table {
            Some(table) => table.decode(ids, skip_special_tokens),
            // Decoding fails only for ids the tokenizer does not know; they add no text.
            None => self.tokenizer.decode(ids, skip_special_tokens).unwrap_or_default(),
        }
    }
}

/// The text a step completes: `text` after `prefix`, unless `text` is no longer or ends in an
/// incomplete character.
fn completed(prefix: &str, text: &str) -> Option<String> {
    if text.len() <= prefix.len() || text.ends_with(char::REPLACEMENT_CHARACTER) {
        return None;
    }
    Some(suffix_after(text, prefix))
}

/// `text` after `prefix`; when a decoder is not prefix-stable, after their common start.
fn suffix_after(text: &str, prefix: &str) -> String {
    if let Some(rest) = text.strip_prefix(prefix) {
        return rest.to_owned();
    }
    let common = text
        .char_indices()
        .zip(prefix.chars())
        .find(|((_, a), b)| a != b)
        .map_or_else(|| prefix.len().min(text.len()), |((i, _), _)| i);
    text.get(common..).unwrap_or_default().to_owned()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn suffix_after_tolerates_unstable_prefixes() {
        assert_eq!(suffix_after("abcdef", "abc"), "def");
        assert_eq!(suffix_after("abXdef", "abc"), "Xdef");
        assert_eq!(suffix_after("ab", "abc"), "");
        assert_eq!(suffix_after("é!", "e"), "é!");
    }
}
