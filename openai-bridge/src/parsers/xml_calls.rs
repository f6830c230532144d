//! The families that write a call as its name and key/value parameters in tag-like markup
//! (Qwen3-Coder, MiniMax, DSML, ATEM, GLM, Kimi K3) or Gemma 4's own literal syntax. Values are
//! typed by the tool's schema ([`super::arguments`]) unless the markup says the type.

use serde_json::{Map, Value};

use super::ToolCall;
use super::arguments::{ArgumentsBuilder, ToolSchemas, typed_value};

/// Qwen3-Coder: `<function=name>` then `<parameter=key>\nvalue\n</parameter>`s, in a
/// `<tool_call>` block (several functions may share one) or bare (`open` is `<function=`).
pub(super) fn functions(open: &str, body: &str, schemas: &ToolSchemas) -> Option<Vec<ToolCall>> {
    if open == "<function=" {
        return function(body, schemas).map(|call| vec![call]);
    }
    let mut calls = Vec::new();
    let mut rest = body;
    while let Some(start) = rest.find("<function=") {
        if !rest[..start].trim().is_empty() {
            return None;
        }
        let after = &rest[start + "<function=".len()..];
        let end = after.find("</function>").unwrap_or(after.len());
        calls.push(function(&after[..end], schemas)?);
        rest = after.get(end + "</function>".len()..).unwrap_or("");
    }
    (!calls.is_empty() && rest.trim().is_empty()).then_some(calls)
}

/// `name>` and the parameters; a parameter's end may be missing before the next one.
fn function(text: &str, schemas: &ToolSchemas) -> Option<ToolCall> {
    let (name, mut rest) = text.split_once('>')?;
    let name = plain_name(name)?;
    let mut args = ArgumentsBuilder::default();
    loop {
        let trimmed = rest.trim_start();
        if trimmed.is_empty() {
            break;
        }
        let after = trimmed.strip_prefix("<parameter=")?;
        let (key, after) = after.split_once('>')?;
        let (end, next) = match (after.find("</parameter>"), after.find("<parameter=")) {
            (Some(close), Some(open)) if open < close => (open, open),
            (Some(close), _) => (close, close + "</parameter>".len()),
            (None, Some(open)) => (open, open),
            (None, None) => (after.len(), after.len()),
        };
        let value = &after[..end];
        // The template writes `\n{value}\n`; those two newlines are markup, not the value.
        let value = value.strip_prefix('\n').unwrap_or(value);
        let value = value.strip_suffix('\n').unwrap_or(value);
        args.typed(schemas, name, key.trim(), value);
        rest = &after[next..];
    }
    Some(ToolCall::with_arguments(name.to_owned(), args.finish()))
}

/// `<{p}invoke name="f">` … `</{p}invoke>` with `<{p}parameter name="k" [string="true"]>v</{p}parameter>`
/// (MiniMax-M2 with no prefix, DSML with `｜DSML｜`, ATEM with `atem:`).
pub(super) fn invokes(prefix: &str, body: &str, schemas: &ToolSchemas) -> Option<Vec<ToolCall>> {
    let invoke_open = format!("<{prefix}invoke");
    let invoke_close = format!("</{prefix}invoke>");
    let parameter_open = format!("<{prefix}parameter");
    let parameter_close = format!("</{prefix}parameter>");
    let mut calls = Vec::new();
    let mut rest = body;
    while let Some(start) = rest.find(&invoke_open) {
        if !rest[..start].trim().is_empty() {
            return None;
        }
        let after = &rest[start + invoke_open.len()..];
        let (head, after) = after.split_once('>')?;
        let name = attribute(head, "name")?;
        let name = plain_name(&name)?.to_owned();
        let end = after.find(&invoke_close)?;
        let mut inner = &after[..end];
        rest = &after[end + invoke_close.len()..];
        let mut args = ArgumentsBuilder::default();
        while let Some(at) = inner.find(&parameter_open) {
            let after = &inner[at + parameter_open.len()..];
            let (head, after) = after.split_once('>')?;
            let key = attribute(head, "name")?;
            let close = after.find(&parameter_close)?;
            let value = &after[..close];
            match attribute(head, "string").as_deref() {
                Some("true") => args.value(&key, &Value::String(value.to_owned())),
                Some("false") => args.value(&key, &typed_value(value, Some("json"))),
                _ => args.typed(schemas, &name, &key, value),
            }
            inner = &after[close + parameter_close.len()..];
        }
        inner.trim().is_empty().then_some(())?;
        calls.push(ToolCall::with_arguments(name, args.finish()));
    }
    (!calls.is_empty() && rest.trim().is_empty()).then_some(calls)
}

/// MiniMax M3: M2's invocations with every tag behind `]<]minimax[>[` and each parameter an
/// element named after its key: `<invoke name="f"><city>Paris</city></invoke>`.
pub(super) fn minimax_m3(body: &str, schemas: &ToolSchemas) -> Option<Vec<ToolCall>> {
    let body = body.replace("]<]minimax[>[", "");
    let mut calls = Vec::new();
    let mut rest = body.as_str();
    while let Some(start) = rest.find("<invoke") {
        if !rest[..start].trim().is_empty() {
            return None;
        }
        let (head, after) = rest[start + "<invoke".len()..].split_once('>')?;
        let name = attribute(head, "name")?;
        let name = plain_name(&name)?.to_owned();
        let end = after.find("</invoke>")?;
        let mut inner = after[..end].trim_start();
        rest = &after[end + "</invoke>".len()..];
        let mut args = ArgumentsBuilder::default();
        while let Some(tag) = inner.strip_prefix('<') {
            let (key, after) = tag.split_once('>')?;
            let close = format!("</{key}>");
            let at = after.find(&close)?;
            args.typed(schemas, &name, key, &after[..at]);
            inner = after[at + close.len()..].trim_start();
        }
        inner.is_empty().then_some(())?;
        calls.push(ToolCall::with_arguments(name, args.finish()));
    }
    (!calls.is_empty() && rest.trim().is_empty()).then_some(calls)
}

/// GLM-4.5 to 4.7: `name` then `<arg_key>k</arg_key><arg_value>v</arg_value>` pairs.
pub(super) fn glm(body: &str, schemas: &ToolSchemas) -> Option<Vec<ToolCall>> {
    let (name, mut rest) = match body.find("<arg_key>") {
        Some(at) => (&body[..at], &body[at..]),
        None => (body, ""),
    };
    let name = plain_name(name.trim())?;
    let mut args = ArgumentsBuilder::default();
    loop {
        let trimmed = rest.trim_start();
        if trimmed.is_empty() {
            break;
        }
        let after = trimmed.strip_prefix("<arg_key>")?;
        let (key, after) = after.split_once("</arg_key>")?;
        let after = after.trim_start().strip_prefix("<arg_value>")?;
        let (value, after) = after.split_once("</arg_value>")?;
        args.typed(schemas, name, key.trim(), value);
        rest = after;
    }
    Some(vec![ToolCall::with_arguments(name.to_owned(), args.finish())])
}

/// Kimi K3's XTML: `<|open|>call tool="f" index="1"<|sep|>` with
/// `<|open|>argument key="k" type="string"<|sep|>v<|close|>argument<|sep|>`s (or one
/// `<|open|>json<|sep|>{…}<|close|>json<|sep|>`), ended by `<|close|>call<|sep|>`.
pub(super) fn kimi_k3(body: &str, schemas: &ToolSchemas) -> Option<Vec<ToolCall>> {
    const SEP: &str = "<|sep|>";
    let mut calls = Vec::new();
    let mut rest = body;
    while let Some(start) = rest.find("<|open|>call") {
        if !rest[..start].trim().is_empty() {
            return None;
        }
        let (head, after) = rest[start + "<|open|>call".len()..].split_once(SEP)?;
        let name = attribute(head, "tool")?;
        let name = plain_name(&name)?.to_owned();
        let (mut inner, after) = after.split_once("<|close|>call<|sep|>")?;
        rest = after;
        let mut arguments = None;
        let mut args = ArgumentsBuilder::default();
        loop {
            inner = inner.trim_start();
            if let Some(json) = inner.strip_prefix("<|open|>json").and_then(|json| json.split_once(SEP)) {
                let (value, after) = json.1.split_once("<|close|>json<|sep|>")?;
                arguments = Some(super::arguments::json_arguments(value.trim())?);
                inner = after;
            } else if let Some(argument) = inner.strip_prefix("<|open|>argument") {
                let (head, after) = argument.split_once(SEP)?;
                let (value, after) = after.split_once("<|close|>argument<|sep|>")?;
                let key = attribute(head, "key")?;
                match attribute(head, "type").as_deref() {
                    Some("string") => args.value(&key, &Value::String(value.to_owned())),
                    Some(kind) => args.value(&key, &typed_value(value, Some(kind))),
                    None => args.typed(schemas, &name, &key, value),
                }
                inner = after;
            } else if inner.is_empty() {
                break;
            } else {
                return None;
            }
        }
        calls.push(ToolCall::with_arguments(name, arguments.unwrap_or_else(|| args.finish())));
    }
    (!calls.is_empty() && rest.trim().is_empty()).then_some(calls)
}

/// Gemma 4: `call:name{key:<|"|>text<|"|>,n:42,o:{…},l:[…]}`, bare keys and `<|"|>` strings.
pub(super) fn gemma4(body: &str) -> Option<Vec<ToolCall>> {
    let call = body.trim().strip_prefix("call:")?;
    let brace = call.find('{')?;
    let name = plain_name(call[..brace].trim())?;
    let mut reader = GemmaReader { text: &call[brace..], depth: 0 };
    let Value::Object(fields) = reader.value()? else {
        return None;
    };
    reader.text.trim().is_empty().then_some(())?;
    let mut args = ArgumentsBuilder::default();
    for (key, value) in &fields {
        args.value(key, value);
    }
    Some(vec![ToolCall::with_arguments(name.to_owned(), args.finish())])
}

/// A Gemma 4 call still arriving: its name once its `{` has come, and the JSON text its arguments
/// are certain to begin with (the members a `,` or `}` has ended, written as [`gemma4`] writes the
/// whole call's, the object not closed).
pub(super) fn gemma4_partial(body: &str) -> Option<(String, String)> {
    let call = body.trim_start().strip_prefix("call:")?;
    let brace = call.find('{')?;
    let name = plain_name(call[..brace].trim())?;
    let mut reader = GemmaReader { text: &call[brace + 1..], depth: 1 };
    let mut fields = Map::new();
    while let Some(key) = reader.key() {
        let Some(value) = reader.value() else { break };
        let rest = reader.text.trim_start();
        if !rest.starts_with([',', '}']) || fields.contains_key(&key) {
            break;
        }
        fields.insert(key, value);
        match rest.strip_prefix(',') {
            Some(after) => reader.text = after,
            None => break,
        }
    }
    let mut args = ArgumentsBuilder::default();
    for (key, value) in &fields {
        args.value(key, value);
    }
    let mut text = args.finish();
    text.pop();
    Some((name.to_owned(), text))
}

const GEMMA_QUOTE: &str = "<|\"|>";

/// Objects and arrays nested deeper than this are not a call (and would cost a stack frame each).
const MAX_GEMMA_DEPTH: usize = 64;

struct GemmaReader<'a> {
    text: &'a str,
    depth: usize,
}

impl GemmaReader<'_> {
    fn value(&mut self) -> Option<Value> {
        self.depth += 1;
        let value = if self.depth > MAX_GEMMA_DEPTH { None } else { self.value_here() };
        self.depth -= 1;
        value
    }

    fn value_here(&mut self) -> Option<Value> {
        self.text = self.text.trim_start();
        if let Some(rest) = self.text.strip_prefix(GEMMA_QUOTE) {
            let end = rest.find(GEMMA_QUOTE)?;
            self.text = &rest[end + GEMMA_QUOTE.len()..];
            return Some(Value::String(rest[..end].to_owned()));
        }
        if let Some(rest) = self.text.strip_prefix('{') {
            self.text = rest;
            let mut fields = Map::new();
            while !self.close('}') {
                let key = self.key()?;
                // A repeated key is not a call (a streamed call's first value would not be its last).
                if fields.insert(key, self.value()?).is_some() {
                    return None;
                }
                self.separator('}')?;
            }
            return Some(Value::Object(fields));
        }
        if let Some(rest) = self.text.strip_prefix('[') {
            self.text = rest;
            let mut items = Vec::new();
            while !self.close(']') {
                items.push(self.value()?);
                self.separator(']')?;
            }
            return Some(Value::Array(items));
        }
        let end = self.text.find([',', '}', ']']).unwrap_or(self.text.len());
        let literal = self.text[..end].trim();
        self.text = &self.text[end..];
        (!literal.is_empty()).then_some(())?;
        Some(serde_json::from_str(literal).unwrap_or_else(|_| Value::String(literal.to_owned())))
    }

    /// A member's key (quoted, or bare up to its `:`) and the `:` after it.
    fn key(&mut self) -> Option<String> {
        let key = match self.text.trim_start().strip_prefix(GEMMA_QUOTE) {
            Some(quoted) => {
                let end = quoted.find(GEMMA_QUOTE)?;
                self.text = &quoted[end + GEMMA_QUOTE.len()..];
                quoted[..end].to_owned()
            }
            None => {
                let end = self.text.find(':')?;
                let key = self.text[..end].trim().to_owned();
                self.text = &self.text[end..];
                key
            }
        };
        self.text = self.text.trim_start().strip_prefix(':')?;
        Some(key)
    }

    /// Consumes `close` (after whitespace) when it is next.
    fn close(&mut self, close: char) -> bool {
        let trimmed = self.text.trim_start();
        match trimmed.strip_prefix(close) {
            Some(rest) => {
                self.text = rest;
                true
            }
            None => {
                self.text = trimmed;
                false
            }
        }
    }

    /// After a member: a comma, or the container's end (left for `close`).
    fn separator(&mut self, close: char) -> Option<()> {
        let trimmed = self.text.trim_start();
        if let Some(rest) = trimmed.strip_prefix(',') {
            self.text = rest;
            return Some(());
        }
        self.text = trimmed;
        trimmed.starts_with(close).then_some(())
    }
}

/// `key="value"` (or `'value'`, or unquoted up to whitespace) in a tag's head; `name` also
/// stands first and unquoted after `=` when the tag is `<invoke name=…>`.
fn attribute(head: &str, key: &str) -> Option<String> {
    let mut rest = head;
    loop {
        let at = rest.find(&format!("{key}="))?;
        let before_ok = at == 0 || rest[..at].ends_with(|c: char| c.is_whitespace());
        let value = &rest[at + key.len() + 1..];
        if !before_ok {
            rest = value;
            continue;
        }
        let value = value.trim_start();
        return match value.chars().next()? {
            quote @ ('"' | '\'') => value[1..].split_once(quote).map(|(inside, _)| inside.to_owned()),
            _ => Some(value.split_whitespace().next()?.trim_end_matches('/').to_owned()),
        };
    }
}

/// A function name as models write it: no whitespace or markup characters.
fn plain_name(name: &str) -> Option<&str> {
    let name = name.trim();
    let ok = !name.is_empty() && name.len() <= 256 && !name.contains(|c: char| c.is_whitespace() || "<>{}\"'".contains(c));
    ok.then_some(name)
}
