//! GPT-2's pre-tokenizer split, scanned by hand: the pieces `tokenizers` finds with the regex
//! `'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+` (leftmost-first,
//! backtracking), optionally after `Digits` has isolated each numeric character.
//!
//! Characters are classed as the regex engine classes them (`regex`'s Unicode tables, not std's,
//! which may be of another Unicode version): ASCII from a table, the Basic Multilingual Plane from
//! a table built once per process, the rest by asking `regex` each time (rare in prompts).

use std::sync::OnceLock;

use regex::Regex;

const LETTER: u8 = 1;
const NUMBER: u8 = 2;
const SPACE: u8 = 4;

/// Each ASCII character's class (most of a prompt): the scan reads these bytes without decoding.
const ASCII_CLASSES: [u8; 128] = {
    let mut table = [0u8; 128];
    let mut index = 0;
    while index < 128 {
        let b = index as u8;
        table[index] = if b.is_ascii_alphabetic() {
            LETTER
        } else if b.is_ascii_digit() {
            NUMBER
        } else if matches!(b, b' ' | b'\t' | b'\n' | 0x0B | 0x0C | b'\r') {
            SPACE
        } else {
            0
        };
        index += 1;
    }
    table
};

/// The class of `c`: `LETTER`, `NUMBER`, `SPACE` or 0 (anything else).
#[inline]
fn class(c: char) -> u8 {
    let code = c as u32;
    if code < 0x80 {
        return ASCII_CLASSES[code as usize];
    }
    match usize::try_from(code).ok().and_then(|index| bmp_classes().get(index)) {
        Some(&class) => class,
        None => Classifier::get().class_of(c),
    }
}

/// The character starting at byte `at` of `text` (a character boundary), ASCII without decoding.
#[inline]
fn char_at(text: &str, at: usize) -> Option<char> {
    match text.as_bytes().get(at) {
        Some(&b) if b < 0x80 => Some(char::from(b)),
        Some(_) => text.get(at..)?.chars().next(),
        None => None,
    }
}

/// Regexes answering one class each, as the tokenizer's regex engine sees them.
struct Classifier {
    letter: Regex,
    number: Regex,
    space: Regex,
}

impl Classifier {
    fn get() -> &'static Classifier {
        static CLASSIFIER: OnceLock<Classifier> = OnceLock::new();
        CLASSIFIER.get_or_init(|| {
            let compile = |pattern: &str| Regex::new(pattern).unwrap_or_else(|e| unreachable!("a valid class: {e}"));
            Classifier { letter: compile(r"\A\p{L}\z"), number: compile(r"\A\p{N}\z"), space: compile(r"\A\s\z") }
        })
    }

    fn class_of(&self, c: char) -> u8 {
        let mut buffer = [0u8; 4];
        let text: &str = c.encode_utf8(&mut buffer);
        if self.letter.is_match(text) {
            LETTER
        } else if self.number.is_match(text) {
            NUMBER
        } else if self.space.is_match(text) {
            SPACE
        } else {
            0
        }
    }
}

/// The class of every Basic Multilingual Plane character (surrogates: 0), built once.
fn bmp_classes() -> &'static [u8] {
    static CLASSES: OnceLock<Box<[u8]>> = OnceLock::new();
    CLASSES.get_or_init(|| {
        let classifier = Classifier::get();
        (0..=0xFFFFu32).map(|code| char::from_u32(code).map_or(0, |c| classifier.class_of(c))).collect()
    })
}

/// Calls `piece` with each pre-token of `text` in order (`digits`: each numeric character is a
/// piece of its own first, as `Digits { individual_digits: true }` does before the regex).
pub(super) fn split<'t>(text: &'t str, digits: bool, mut piece: impl FnMut(&'t str)) {
    if !digits {
        return scan(text, &mut piece);
    }
    let mut start = 0;
    for (index, c) in text.char_indices() {
        if c.is_numeric() {
            if start < index {
                scan(&text[start..index], &mut piece);
            }
            let end = index + c.len_utf8();
            scan(&text[index..end], &mut piece);
            start = end;
        }
    }
    if start < text.len() {
        scan(&text[start..], &mut piece);
    }
}

/// The regex's matches in `text`, which cover it: every character is a letter, a number, a space
/// or something else, and each has an alternative starting with it.
fn scan<'t>(text: &'t str, piece: &mut impl FnMut(&'t str)) {
    let bytes = text.as_bytes();
    let mut start = 0;
    while start < text.len() {
        let end = match_at(text, bytes, start);
        piece(&text[start..end]);
        start = end;
    }
}

/// The end of the regex's leftmost-first match starting at `start` (never empty).
fn match_at(text: &str, bytes: &[u8], start: usize) -> usize {
    let Some(first) = char_at(text, start) else { return start };
    // 's|'t|'re|'ve|'m|'ll|'d
    if first == '\'' {
        let after = &bytes[start + 1..];
        match after {
            [b's' | b't' | b'm' | b'd', ..] => return start + 2,
            [b'r', b'e', ..] | [b'v', b'e', ..] | [b'l', b'l', ..] => return start + 3,
            _ => {}
        }
    }
    // ` ?\p{L}+`, ` ?\p{N}+`, ` ?[^\s\p{L}\p{N}]+`: a run of one class, after an optional space.
    let (run_class, run_start) = if first == ' ' {
        match char_at(text, start + 1) {
            Some(second) if class(second) != SPACE => (class(second), start + 1),
            _ => (SPACE, start),
        }
    } else {
        (class(first), start)
    };
    if run_class != SPACE {
        return run_end(text, run_start, run_class);
    }
    // `\s+(?!\S)`, else `\s+`: the whitespace run, less its last character when something other
    // than whitespace follows (that character then starts the next match).
    let end = run_end(text, start, SPACE);
    if end == text.len() {
        return end;
    }
    let last = text[start..end].chars().next_back().map_or(0, char::len_utf8);
    if end - last > start { end - last } else { end }
}

/// Where the run of `class` characters starting at `from` ends: ASCII a byte at a time from a
/// table, anything else decoded.
fn run_end(text: &str, from: usize, run: u8) -> usize {
    let bytes = text.as_bytes();
    let mut at = from;
    while let Some(&b) = bytes.get(at) {
        if b < 0x80 {
            if ASCII_CLASSES[usize::from(b)] != run {
                return at;
            }
            at += 1;
        } else {
            let Some(c) = char_at(text, at) else { return text.len() };
            if class(c) != run {
                return at;
            }
            at += c.len_utf8();
        }
    }
    text.len()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pieces(text: &str, digits: bool) -> Vec<String> {
        let mut out = Vec::new();
        split(text, digits, |p| out.push(p.to_owned()));
        out
    }

    #[test]
    fn splits_as_gpt2s_regex() {
        assert_eq!(pieces("Hello world", false), ["Hello", " world"]);
        assert_eq!(pieces("it's  a\ttest\n\nok  ", false), ["it", "'s", " ", " a", "\t", "test", "\n", "\n", "ok", "  "]);
        assert_eq!(pieces(" 123 !? x'y", false), [" 123", " !?", " x", "'", "y"]);
        assert_eq!(pieces("a1b22", true), ["a", "1", "b", "2", "2"]);
        assert_eq!(pieces("Grüße, 東京!", false), ["Grüße", ",", " 東京", "!"]);
        assert_eq!(pieces("   \u{3000}x", false), ["   ", "\u{3000}", "x"]);
    }

    #[test]
    fn classes_match_the_regex_engine() {
        let classifier = Classifier::get();
        let others = ['é', 'ß', '東', '٣', '½', 'Ⅻ', '\u{85}', '\u{a0}', '\u{2028}', '😀', '\u{0301}', '\u{1d400}', '\u{1f100}'];
        for c in (0..128u8).map(char::from).chain(others) {
            assert_eq!(class(c), classifier.class_of(c), "{c:?}");
        }
        assert_eq!(class('\u{1d400}'), LETTER);
        assert_eq!(class('\u{0301}'), 0);
    }
}
