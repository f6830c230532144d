//! Finding where a bracketed value (a JSON object or array, a Python list) ends in text that
//! arrives piece by piece, without rescanning what was already seen.

/// The scan of one value that starts with an opening bracket.
#[derive(Debug, Clone, Default)]
pub(super) struct Balance {
    /// Bytes of the text scanned so far.
    scanned: usize,
    depth: usize,
    /// The quote character of the string being read.
    quote: Option<char>,
    escaped: bool,
    /// The value's first character was not an opening bracket.
    broken: bool,
}

/// What the scan found so far.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Scan {
    /// The value is not finished yet.
    Open,
    /// The value ends just before this byte offset.
    Closed(usize),
    /// The text does not start with an opening bracket, or closes one it never opened.
    NotAValue,
}

impl Balance {
    /// Scans `text` (the whole value's text so far: what was scanned before is skipped).
    /// `quotes` are the string delimiters of the language (`"` for JSON, also `'` for Python).
    pub(super) fn scan(&mut self, text: &str, quotes: &[char]) -> Scan {
        if self.broken {
            return Scan::NotAValue;
        }
        for (at, c) in text[self.scanned.min(text.len())..].char_indices() {
            let at = self.scanned + at;
            if at == 0 && !matches!(c, '{' | '[' | '(') {
                self.broken = true;
                return Scan::NotAValue;
            }
            match self.quote {
                Some(_) if self.escaped => self.escaped = false,
                Some(_) if c == '\\' => self.escaped = true,
                Some(q) if c == q => self.quote = None,
                Some(_) => {}
                None if quotes.contains(&c) => self.quote = Some(c),
                None if matches!(c, '{' | '[' | '(') => self.depth += 1,
                None if matches!(c, '}' | ']' | ')') => {
                    if self.depth == 0 {
                        self.broken = true;
                        return Scan::NotAValue;
                    }
                    self.depth -= 1;
                    if self.depth == 0 {
                        self.scanned = at + 1;
                        return Scan::Closed(at + 1);
                    }
                }
                None => {}
            }
        }
        self.scanned = text.len();
        Scan::Open
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_end_across_pieces_and_ignores_brackets_in_strings() {
        let text = r#"{"a": "}{\"]", "b": [1, {"c": 2}]} tail"#;
        let end = text.find(" tail").unwrap();
        for split in 0..text.len() {
            if !text.is_char_boundary(split) {
                continue;
            }
            let mut balance = Balance::default();
            let first = balance.scan(&text[..split], &['"']);
            let outcome = if let Scan::Closed(at) = first { Scan::Closed(at) } else { balance.scan(text, &['"']) };
            assert_eq!(outcome, Scan::Closed(end), "split at {split}");
        }
        assert_eq!(Balance::default().scan("x{}", &['"']), Scan::NotAValue);
        assert_eq!(Balance::default().scan("[1, 2", &['"']), Scan::Open);
        assert_eq!(Balance::default().scan("[f(a='])'), g()] x", &['"', '\'']), Scan::Closed(16));
    }
}
