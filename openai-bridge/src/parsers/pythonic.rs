//! Pythonic tool calls: `[get_weather(city='Paris', days=3), get_time()]`, keyword arguments
//! whose values are Python literals (strings, numbers, `True`/`False`/`None`, lists, tuples,
//! dicts), turned into JSON.

use serde_json::{Map, Number, Value};

/// Literals nest at most this deep (the parser recurses).
const MAX_DEPTH: usize = 64;

/// The calls of a whole bracketed list, or `None` when it is not one.
pub(super) fn parse_calls(text: &str) -> Option<Vec<(String, Value)>> {
    let mut parser = Parser { text, at: 0 };
    parser.expect('[')?;
    let mut calls = Vec::new();
    loop {
        parser.skip_space();
        if parser.eat(']') {
            break;
        }
        if !calls.is_empty() {
            parser.expect(',')?;
            parser.skip_space();
            if parser.eat(']') {
                break;
            }
        }
        calls.push(parser.call()?);
    }
    parser.skip_space();
    (parser.at == text.len() && !calls.is_empty()).then_some(calls)
}

/// The calls of a list still arriving whose names are certain (their `(` has come), each with
/// the JSON text its arguments are certain to begin with: the keyword arguments whose value a `,`
/// or `)` has ended, written as the whole call's arguments are (the object not closed). A call
/// whose `)` has come has its whole text; what cannot be read stops the list there.
pub(super) fn partial_calls(text: &str) -> Vec<(String, String)> {
    let mut parser = Parser { text, at: 0 };
    let mut calls = Vec::new();
    if parser.expect('[').is_none() {
        return calls;
    }
    loop {
        parser.skip_space();
        if parser.peek().is_none_or(|c| c == ']') {
            return calls;
        }
        if !calls.is_empty() && parser.expect(',').is_none() {
            return calls;
        }
        parser.skip_space();
        let Some(name) = parser.name() else { return calls };
        if parser.expect('(').is_none() {
            return calls;
        }
        let mut arguments = Map::new();
        let closed = loop {
            parser.skip_space();
            if parser.eat(')') {
                break true;
            }
            if !arguments.is_empty() {
                if parser.expect(',').is_none() {
                    break false;
                }
                parser.skip_space();
                if parser.eat(')') {
                    break true;
                }
            }
            let Some(key) = parser.name() else { break false };
            if parser.expect('=').is_none() || arguments.contains_key(&key) {
                break false;
            }
            let Some(value) = parser.value(0) else { break false };
            // A value is certain once what follows it says it ended (a number may go on).
            parser.skip_space();
            if !matches!(parser.peek(), Some(',' | ')')) {
                break false;
            }
            arguments.insert(key, value);
        };
        let mut json = Value::Object(arguments).to_string();
        if !closed {
            json.pop();
        }
        calls.push((name, json));
        if !closed {
            return calls;
        }
    }
}

struct Parser<'a> {
    text: &'a str,
    at: usize,
}

impl Parser<'_> {
    fn rest(&self) -> &str {
        &self.text[self.at..]
    }

    fn peek(&self) -> Option<char> {
        self.rest().chars().next()
    }

    fn skip_space(&mut self) {
        let rest = self.rest();
        self.at += rest.len() - rest.trim_start().len();
    }

    fn eat(&mut self, c: char) -> bool {
        let found = self.peek() == Some(c);
        if found {
            self.at += c.len_utf8();
        }
        found
    }

    fn expect(&mut self, c: char) -> Option<()> {
        self.skip_space();
        self.eat(c).then_some(())
    }

    /// A dotted name: `get_weather`, `tools.search`.
    fn name(&mut self) -> Option<String> {
        self.skip_space();
        let len = self.rest().find(|c: char| !(c.is_alphanumeric() || c == '_' || c == '.')).unwrap_or(self.rest().len());
        let name = self.rest()[..len].to_owned();
        if name.is_empty() || name.starts_with(|c: char| c.is_ascii_digit()) {
            return None;
        }
        self.at += len;
        Some(name)
    }

    fn call(&mut self) -> Option<(String, Value)> {
        let name = self.name()?;
        self.expect('(')?;
        let mut arguments = Map::new();
        loop {
            self.skip_space();
            if self.eat(')') {
                break;
            }
            if !arguments.is_empty() {
                self.expect(',')?;
                self.skip_space();
                if self.eat(')') {
                    break;
                }
            }
            let key = self.name()?;
            self.expect('=')?;
            let value = self.value(0)?;
            // Python refuses a repeated keyword; so does this reader (a streamed call's first
            // value would not be its last).
            if arguments.insert(key, value).is_some() {
                return None;
            }
        }
        Some((name, Value::Object(arguments)))
    }

    fn value(&mut self, depth: usize) -> Option<Value> {
        if depth > MAX_DEPTH {
            return None;
        }
        self.skip_space();
        match self.peek()? {
            '\'' | '"' => self.string().map(Value::String),
            '[' => self.sequence('[', ']', depth).map(Value::Array),
            '(' => self.sequence('(', ')', depth).map(Value::Array),
            '{' => self.dict(depth),
            c if c == '-' || c == '+' || c == '.' || c.is_ascii_digit() => self.number(),
            _ => match self.name()?.as_str() {
                "True" | "true" => Some(Value::Bool(true)),
                "False" | "false" => Some(Value::Bool(false)),
                "None" | "null" => Some(Value::Null),
                _ => None,
            },
        }
    }

    fn sequence(&mut self, open: char, close: char, depth: usize) -> Option<Vec<Value>> {
        self.expect(open)?;
        let mut items = Vec::new();
        loop {
            self.skip_space();
            if self.eat(close) {
                return Some(items);
            }
            if !items.is_empty() {
                self.expect(',')?;
                self.skip_space();
                if self.eat(close) {
                    return Some(items);
                }
            }
            items.push(self.value(depth + 1)?);
        }
    }

    fn dict(&mut self, depth: usize) -> Option<Value> {
        self.expect('{')?;
        let mut fields = Map::new();
        loop {
            self.skip_space();
            if self.eat('}') {
                return Some(Value::Object(fields));
            }
            if !fields.is_empty() {
                self.expect(',')?;
                self.skip_space();
                if self.eat('}') {
                    return Some(Value::Object(fields));
                }
            }
            let key = match self.value(depth + 1)? {
                Value::String(key) => key,
                Value::Number(n) => n.to_string(),
                _ => return None,
            };
            self.expect(':')?;
            fields.insert(key, self.value(depth + 1)?);
        }
    }

    fn number(&mut self) -> Option<Value> {
        let len = self.rest().find(|c: char| !(c.is_ascii_alphanumeric() || "+-._".contains(c))).unwrap_or(self.rest().len());
        let literal = self.rest()[..len].replace('_', "");
        self.at += len;
        if let Ok(int) = literal.parse::<i64>() {
            return Some(Value::Number(int.into()));
        }
        literal.parse::<f64>().ok().and_then(Number::from_f64).map(Value::Number)
    }

    /// A single- or double-quoted string with Python's common escapes.
    fn string(&mut self) -> Option<String> {
        let quote = self.peek()?;
        self.at += 1;
        let mut out = String::new();
        let mut chars = self.rest().char_indices();
        while let Some((i, c)) = chars.next() {
            match c {
                c if c == quote => {
                    self.at += i + 1;
                    return Some(out);
                }
                '\\' => {
                    let (_, escaped) = chars.next()?;
                    match escaped {
                        'n' => out.push('\n'),
                        't' => out.push('\t'),
                        'r' => out.push('\r'),
                        '0' => out.push('\0'),
                        'u' => {
                            let hex: String = (0..4).filter_map(|_| chars.next().map(|(_, h)| h)).collect();
                            out.push(u32::from_str_radix(&hex, 16).ok().and_then(char::from_u32)?);
                        }
                        other => out.push(other),
                    }
                }
                c => out.push(c),
            }
        }
        None
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn calls_with_every_literal() {
        let calls = parse_calls(
            r#"[get_weather(city='San Francisco', days=3, metric=True), tools.search(q="it's \"here\"", n=-1.5e2, tags=['a', ("b", None)], opts={'k': {'x': False}},), get_time()]"#,
        )
        .unwrap();
        assert_eq!(calls.len(), 3);
        assert_eq!(calls[0], ("get_weather".into(), json!({"city": "San Francisco", "days": 3, "metric": true})));
        assert_eq!(
            calls[1],
            (
                "tools.search".into(),
                json!({"q": "it's \"here\"", "n": -150.0, "tags": ["a", ["b", null]], "opts": {"k": {"x": false}}})
            )
        );
        assert_eq!(calls[2], ("get_time".into(), json!({})));
    }

    #[test]
    fn not_calls() {
        for text in ["[]", "[1, 2]", "[f(1)]", "[f(a=1) g()]", "[f(a=x)]", "[f(a='open)]", "[f(a=1)] trailing", "[3f()]"] {
            assert_eq!(parse_calls(text), None, "{text}");
        }
        let deep = format!("[f(a={}{})]", "[".repeat(100), "]".repeat(100));
        assert_eq!(parse_calls(&deep), None);
        assert_eq!(parse_calls("[f(a=1, a=2)]"), None, "a repeated keyword");
    }

    #[test]
    fn a_list_still_arriving_gives_the_arguments_certain_so_far() {
        let whole = r#"[get_weather(city='Paris', days=3), get_time()]"#;
        let final_text = |i: usize| parse_calls(whole).unwrap()[i].1.to_string();
        assert_eq!(partial_calls("[get_wea"), vec![]);
        assert_eq!(partial_calls("[get_weather("), vec![("get_weather".into(), "{".into())]);
        assert_eq!(partial_calls("[get_weather(city='Par"), vec![("get_weather".into(), "{".into())]);
        assert_eq!(partial_calls("[get_weather(city='Paris'"), vec![("get_weather".into(), "{".into())]);
        assert_eq!(partial_calls("[get_weather(city='Paris',"), vec![("get_weather".into(), r#"{"city":"Paris""#.into())]);
        assert_eq!(partial_calls("[get_weather(city='Paris', days=3"), vec![("get_weather".into(), r#"{"city":"Paris""#.into())]);
        let both = partial_calls("[get_weather(city='Paris', days=3), get_time(");
        assert_eq!(both, vec![("get_weather".into(), final_text(0)), ("get_time".into(), "{".into())]);
        for cut in 0..=whole.len() {
            for (i, (_, text)) in partial_calls(&whole[..cut]).iter().enumerate() {
                assert!(final_text(i).starts_with(text.as_str()), "{cut}: {text}");
            }
        }
        assert_eq!(partial_calls("[f(a=1, a="), vec![("f".into(), r#"{"a":1"#.into())]);
    }
}
