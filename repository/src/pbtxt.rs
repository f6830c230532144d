//! A narrow pre-pass over protobuf text format for the one piece of the grammar `prost-reflect`'s
//! parser does not accept: a message list without a colon, `input [ { ... } ]`.
//!
//! The text-format spec makes the colon optional before a message value or a message list
//! (`MessageField = FieldName, [":"], (MessageValue | MessageList)`), and Triton's own examples
//! write `input [ ... ]` almost everywhere. `prost-reflect` 0.16 accepts `input { ... }` but
//! requires `input: [ ... ]`, so we insert the colon. Everything else (strings, comments, values)
//! passes through byte for byte, and the real parser still does all the parsing.
//!
//! It also bounds nesting before that parser runs: `prost-reflect` recurses once per nested
//! message and has no depth limit, and an `Any` expansion (`[x/inference.ModelConfig] { ... }`)
//! can nest without end: 2,000 of them (53 KB of text) overflowed a 2 MiB thread stack in a debug
//! build and aborted the process instead of failing the load.

use std::borrow::Cow;

/// The last significant token seen, as far as deciding whether a `[` opens a colon-less list.
#[derive(Clone, Copy, PartialEq)]
enum Last {
    /// Start of input, or punctuation other than `:` and `-`.
    Other,
    /// `:` or `-`: an identifier right after one is a value (an enum name, `inf`), not a field name.
    ValueIntro,
    /// A field name: an identifier not preceded by `:` or `-`.
    FieldName,
    /// An identifier used as a value, a number or a string.
    Value,
}

/// Returns `text` with `:` inserted between a field name and a `[` that directly follows it.
pub(crate) fn insert_list_colons(text: &str) -> Cow<'_, str> {
    let bytes = text.as_bytes();
    let mut insert_at = Vec::new();
    let mut last = Last::Other;
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        match b {
            b'#' => {
                i = skip_comment(bytes, i);
                continue;
            }
            b'"' | b'\'' => {
                i = skip_string(bytes, i);
                last = Last::Value;
                continue;
            }
            b'A'..=b'Z' | b'a'..=b'z' | b'_' => {
                while i < bytes.len() && is_word(bytes[i]) {
                    i += 1;
                }
                let after_value_intro = last == Last::ValueIntro;
                last = if after_value_intro { Last::Value } else { Last::FieldName };
                continue;
            }
            b'0'..=b'9' | b'.' => {
                while i < bytes.len() && (is_word(bytes[i]) || bytes[i] == b'.') {
                    i += 1;
                }
                last = Last::Value;
                continue;
            }
            b'[' => {
                if last == Last::FieldName {
                    insert_at.push(i);
                }
                last = Last::Other;
            }
            b':' | b'-' => last = Last::ValueIntro,
            b if b.is_ascii_whitespace() => {}
            _ => last = Last::Other,
        }
        i += 1;
    }

    if insert_at.is_empty() {
        return Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + insert_at.len());
    let mut copied = 0;
    for at in insert_at {
        // `at` is the index of an ASCII `[`, so it is a char boundary.
        out.push_str(&text[copied..at]);
        out.push(':');
        copied = at;
    }
    out.push_str(&text[copied..]);
    Cow::Owned(out)
}

/// The index of the newline that ends the `#` comment starting at `i` (or the end of the text).
fn skip_comment(bytes: &[u8], i: usize) -> usize {
    bytes[i..].iter().position(|&b| b == b'\n').map_or(bytes.len(), |n| i + n)
}

/// Deepest nesting of `{`, `<` and `[` a config may use. `ModelConfig` itself needs about six
/// levels; protobuf's own text parser stops at 100 nested messages.
pub(crate) const MAX_NESTING: usize = 100;

/// Fails when brackets outside strings and comments nest deeper than [`MAX_NESTING`].
pub(crate) fn check_nesting(text: &str) -> Result<(), String> {
    let bytes = text.as_bytes();
    let mut depth = 0usize;
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'#' => {
                i = skip_comment(bytes, i);
                continue;
            }
            b'"' | b'\'' => {
                i = skip_string(bytes, i);
                continue;
            }
            b'{' | b'<' | b'[' => {
                depth += 1;
                if depth > MAX_NESTING {
                    return Err(format!("nesting deeper than {MAX_NESTING} levels at byte {i}"));
                }
            }
            b'}' | b'>' | b']' => depth = depth.saturating_sub(1),
            _ => {}
        }
        i += 1;
    }
    Ok(())
}

fn is_word(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'_'
}

/// The index just past the string literal opening at `start` (or the end of input if unclosed,
/// which the real parser then reports).
fn skip_string(bytes: &[u8], start: usize) -> usize {
    let quote = bytes[start];
    let mut i = start + 1;
    while i < bytes.len() {
        match bytes[i] {
            b'\\' => i += 2,
            b if b == quote => return i + 1,
            b'\n' => return i,
            _ => i += 1,
        }
    }
    bytes.len()
}

#[cfg(test)]
mod tests {
    use super::{MAX_NESTING, check_nesting, insert_list_colons};

    #[test]
    fn inserts_a_colon_only_where_a_list_follows_a_field_name() {
        let cases = [
            ("input [ { name: \"a\" } ]", "input :[ { name: \"a\" } ]"),
            ("input[{}] output [{}]", "input:[{}] output :[{}]"),
            ("a: 1\nb [ 2 ]", "a: 1\nb :[ 2 ]"),
            ("x { dims [1] }", "x { dims :[1] }"),
            ("{ a: \"s\", dims [ 16 ] }", "{ a: \"s\", dims :[ 16 ] }"),
        ];
        for (input, expected) in cases {
            assert_eq!(insert_list_colons(input), expected, "{input:?}");
        }
    }

    #[test]
    fn leaves_everything_else_alone() {
        for text in [
            "dims: [ 16 ]",
            "input: [ { name: \"x [\" } ]",
            "name: 'it''s [' # input [ in a comment\n",
            "s: \"esc \\\" input [\"",
            "kind: KIND_CPU [ext.field]: 1",
            "v: -inf [ext]: 2",
            "",
            "name: \"ünïcode\"",
        ] {
            assert_eq!(insert_list_colons(text), text, "{text:?}");
        }
    }

    #[test]
    fn bounds_nesting_outside_strings_and_comments() {
        let nested = |depth: usize| format!("{}{}", "a {".repeat(depth), "}".repeat(depth));
        assert_eq!(check_nesting(&nested(MAX_NESTING)), Ok(()));
        let too_deep = check_nesting(&nested(MAX_NESTING + 1));
        assert_eq!(too_deep, Err("nesting deeper than 100 levels at byte 302".to_string()));
        // Siblings do not add up; brackets in strings and comments do not count.
        assert_eq!(check_nesting(&nested(60).repeat(2)), Ok(()));
        assert_eq!(check_nesting("input [ { dims: [1] } ] s: \"[[[[{\" # <<<<{{{{"), Ok(()));
        assert_eq!(check_nesting(&format!("s: \"{}\"", "{".repeat(1000))), Ok(()));
        assert!(check_nesting(&"<[".repeat(51)).is_err());
    }
}
