//! The chat-template environment: minijinja set up the way Hugging Face's
//! `apply_chat_template` renders (jinja2 with `trim_blocks` and `lstrip_blocks`, Python string
//! and dict methods, `raise_exception`, `strftime_now`, Python's `json.dumps` as `tojson`), and
//! OpenAI messages turned into what templates expect.

mod concat;

use std::borrow::Cow;
use std::time::{SystemTime, UNIX_EPOCH};

use minijinja::value::{Kwargs, Value};
use minijinja::{Environment, Error, ErrorKind};
use serde::Serialize;
use serde_json::Value as Json;

use crate::error::BridgeError;
use crate::parsers::ToolCallFormat;

pub(super) fn environment() -> Environment<'static> {
    let mut env = Environment::new();
    if let Some(syntax) = syntax() {
        env.set_syntax(syntax);
    }
    env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
    env.add_function("raise_exception", |message: String| -> Result<Value, Error> {
        Err(Error::new(ErrorKind::InvalidOperation, message).with_source(Raised))
    });
    env.add_function("strftime_now", |format: String| strftime(&format, now_unix()));
    env.add_filter("tojson", tojson);
    env
}

/// As Hugging Face renders chat templates (jinja2 with trim_blocks and lstrip_blocks).
fn syntax() -> Option<minijinja::syntax::SyntaxConfig> {
    minijinja::syntax::SyntaxConfig::builder().trim_blocks(true).lstrip_blocks(true).build().ok()
}

/// Compiles `source` into `env` as `name`, with its string-joining output tags written one
/// operand at a time where that renders the same ([`concat`]). A template that does not compile
/// fails with its own error.
pub(super) fn add_chat_template(env: &mut Environment<'static>, name: &'static str, source: &str) -> Result<(), Error> {
    env.add_template_owned(name, source.to_owned())?;
    if let Some(split) = syntax().and_then(|syntax| concat::split_concatenations(source, syntax))
        && env.add_template_owned(name, split).is_err()
    {
        env.add_template_owned(name, source.to_owned())?;
    }
    Ok(())
}

/// Marks an error as the template's own `raise_exception`, whose message is shown as it is.
#[derive(Debug)]
struct Raised;

impl std::fmt::Display for Raised {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("raised by the template")
    }
}

impl std::error::Error for Raised {}

pub(super) fn describe(e: &Error) -> String {
    let raised = std::error::Error::source(e).is_some_and(|s| s.is::<Raised>());
    match (raised, e.detail()) {
        (true, Some(message)) => message.to_owned(),
        _ => e.to_string(),
    }
}

/// Python's `json.dumps` as HF's `tojson` calls it: `", "`/`": "` separators, non-ASCII kept,
/// nothing HTML-escaped (minijinja's own filter escapes `<`, `>`, `&` and `'`, which would
/// change tool schemas in prompts). Keys come out in the order the value holds them: sorted, for
/// objects from a request (Python would keep the client's order).
fn tojson(value: &Value, kwargs: Kwargs) -> Result<Value, Error> {
    let indent: Option<usize> = kwargs.get("indent")?;
    let ensure_ascii: Option<bool> = kwargs.get("ensure_ascii")?;
    // Accepted for compatibility: keys are in one fixed order already.
    let _: Option<bool> = kwargs.get("sort_keys")?;
    kwargs.assert_all_used()?;
    let mut out = Vec::new();
    let written = match indent {
        Some(n) => {
            let spaces = vec![b' '; n];
            let mut ser =
                serde_json::Serializer::with_formatter(&mut out, serde_json::ser::PrettyFormatter::with_indent(&spaces));
            value.serialize(&mut ser)
        }
        None => value.serialize(&mut serde_json::Serializer::with_formatter(&mut out, PythonFormatter)),
    };
    written.map_err(|e| Error::new(ErrorKind::InvalidOperation, "cannot serialize to JSON").with_source(e))?;
    let mut text = String::from_utf8(out).map_err(|e| Error::new(ErrorKind::InvalidOperation, e.to_string()))?;
    if ensure_ascii == Some(true) {
        text = escape_non_ascii(&text);
    }
    Ok(Value::from_safe_string(text))
}

/// `json.dumps`' default separators: `", "` between items, `": "` after keys.
struct PythonFormatter;

impl serde_json::ser::Formatter for PythonFormatter {
    fn begin_array_value<W: ?Sized + std::io::Write>(&mut self, writer: &mut W, first: bool) -> std::io::Result<()> {
        if first { Ok(()) } else { writer.write_all(b", ") }
    }

    fn begin_object_key<W: ?Sized + std::io::Write>(&mut self, writer: &mut W, first: bool) -> std::io::Result<()> {
        if first { Ok(()) } else { writer.write_all(b", ") }
    }

    fn begin_object_value<W: ?Sized + std::io::Write>(&mut self, writer: &mut W) -> std::io::Result<()> {
        writer.write_all(b": ")
    }
}

/// Non-ASCII can only occur inside JSON strings, so escaping it everywhere is safe.
fn escape_non_ascii(json: &str) -> String {
    let mut out = String::with_capacity(json.len());
    for c in json.chars() {
        if c.is_ascii() {
            out.push(c);
        } else {
            for unit in c.encode_utf16(&mut [0; 2]) {
                out.push_str(&format!("\\u{unit:04x}"));
            }
        }
    }
    out
}

/// What a chat template renders from: the caller's `extra` variables, then the standard ones
/// (which `extra` cannot replace).
pub(super) struct TemplateContext<'a> {
    pub(super) extra: Option<&'a serde_json::Map<String, Json>>,
    pub(super) messages: Vec<Cow<'a, Json>>,
    pub(super) add_generation_prompt: bool,
    pub(super) bos_token: &'a str,
    pub(super) eos_token: &'a str,
}

impl Serialize for TemplateContext<'_> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        const STANDARD: [&str; 4] = ["messages", "add_generation_prompt", "bos_token", "eos_token"];
        let mut map = serializer.serialize_map(None)?;
        for (key, value) in self.extra.into_iter().flatten().filter(|(key, _)| !STANDARD.contains(&key.as_str())) {
            map.serialize_entry(key, value)?;
        }
        map.serialize_entry("messages", &self.messages)?;
        map.serialize_entry("add_generation_prompt", &self.add_generation_prompt)?;
        map.serialize_entry("bos_token", self.bos_token)?;
        map.serialize_entry("eos_token", self.eos_token)?;
        map.end()
    }
}

/// Messages as templates expect them: `content` a string (text parts joined by newlines) or
/// null; every other field passed through. With `calls_as_text` (a template that never reads
/// `tool_calls`), an assistant turn's calls are appended to its text in that format and a null
/// `content` becomes a string, so the template neither fails on it nor hides the calls. A message
/// already so (an agent's long history, mostly) is borrowed, not copied.
pub(super) fn normalize_messages(
    messages: &[Json],
    calls_as_text: Option<ToolCallFormat>,
) -> Result<Vec<Cow<'_, Json>>, BridgeError> {
    messages
        .iter()
        .enumerate()
        .map(|(i, message)| {
            let Json::Object(fields) = message else {
                return Err(BridgeError::field(format!("messages[{i}]"), "must be an object"));
            };
            let content_is_text = matches!(fields.get("content"), Some(Json::String(_)));
            let as_is = !matches!(fields.get("content"), Some(Json::Array(_)))
                && !matches!(fields.get("tool_calls"), Some(Json::Array(_)))
                && (calls_as_text.is_none() || content_is_text);
            if as_is {
                return Ok(Cow::Borrowed(message));
            }
            let mut fields = fields.clone();
            if let Some(Json::Array(parts)) = fields.get("content") {
                let text =
                    join_text_parts(parts).map_err(|reason| BridgeError::field(format!("messages[{i}].content"), reason))?;
                fields.insert("content".into(), Json::String(text));
            }
            if let Some(Json::Array(calls)) = fields.get_mut("tool_calls") {
                calls.iter_mut().for_each(arguments_as_object);
            }
            if let Some(format) = calls_as_text {
                write_calls_into_content(&mut fields, format);
            }
            Ok(Cow::Owned(Json::Object(fields)))
        })
        .collect()
}

fn write_calls_into_content(fields: &mut serde_json::Map<String, Json>, format: ToolCallFormat) {
    let has_calls = matches!(fields.get("tool_calls"), Some(Json::Array(calls)) if !calls.is_empty());
    // The common turn (text, no calls) is left as it is: nothing to copy.
    if !has_calls && matches!(fields.get("content"), Some(Json::String(_))) {
        return;
    }
    let mut text = match fields.get("content") {
        Some(Json::String(text)) => text.clone(),
        _ => String::new(),
    };
    if let Some(Json::Array(calls)) = fields.get("tool_calls") {
        let calls: Vec<(&str, &Json)> = calls
            .iter()
            .filter_map(|call| {
                let function = call.get("function")?;
                Some((function.get("name")?.as_str()?, function.get("arguments").unwrap_or(&Json::Null)))
            })
            .collect();
        if !calls.is_empty() {
            if !text.is_empty() {
                text.push('\n');
            }
            text.push_str(&format.write_calls(&calls));
        }
    }
    fields.insert("content".into(), Json::String(text));
}

/// OpenAI sends a call's arguments as JSON text; templates (Qwen's, Llama's, Hermes') expect the
/// object, as Hugging Face documents.
fn arguments_as_object(call: &mut Json) {
    let Some(arguments) = call.get_mut("function").and_then(|function| function.get_mut("arguments")) else {
        return;
    };
    if let Some(object @ Json::Object(_)) = arguments.as_str().and_then(|text| serde_json::from_str(text).ok()) {
        *arguments = object;
    }
}

fn join_text_parts(parts: &[Json]) -> Result<String, String> {
    let mut texts = Vec::with_capacity(parts.len());
    for (j, part) in parts.iter().enumerate() {
        match part.get("type").and_then(Json::as_str) {
            Some("text") => match part.get("text").and_then(Json::as_str) {
                Some(text) => texts.push(text),
                None => return Err(format!("part {j} has type 'text' but no string 'text'")),
            },
            Some(other) => return Err(format!("part {j} has type '{other}'; only 'text' parts are supported")),
            None => return Err(format!("part {j} has no 'type'")),
        }
    }
    Ok(texts.join("\n"))
}

fn now_unix() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(0))
}

/// `strftime_now` for templates (Llama 3 writes today's date): the common C conversions, in UTC.
fn strftime(format: &str, unix: i64) -> String {
    const DAYS: [&str; 7] = ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"];
    const MONTHS: [&str; 12] = [
        "January",
        "February",
        "March",
        "April",
        "May",
        "June",
        "July",
        "August",
        "September",
        "October",
        "November",
        "December",
    ];
    let days = unix.div_euclid(86_400);
    let secs = unix.rem_euclid(86_400);
    let (hour, minute, second) = (secs / 3600, secs % 3600 / 60, secs % 60);
    let (year, month, day) = civil_from_days(days);
    let weekday = DAYS[usize::try_from((days + 3).rem_euclid(7)).unwrap_or(0)];
    let month_name = MONTHS[usize::try_from(month - 1).unwrap_or(0)];
    let day_of_year = days - days_from_civil(year, 1, 1) + 1;
    let mut out = String::new();
    let mut chars = format.chars();
    while let Some(c) = chars.next() {
        if c != '%' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('Y') => out.push_str(&year.to_string()),
            Some('y') => out.push_str(&format!("{:02}", year.rem_euclid(100))),
            Some('m') => out.push_str(&format!("{month:02}")),
            Some('d') => out.push_str(&format!("{day:02}")),
            Some('e') => out.push_str(&format!("{day:2}")),
            Some('j') => out.push_str(&format!("{day_of_year:03}")),
            Some('H') => out.push_str(&format!("{hour:02}")),
            Some('I') => out.push_str(&format!("{:02}", (hour + 11) % 12 + 1)),
            Some('p') => out.push_str(if hour < 12 { "AM" } else { "PM" }),
            Some('M') => out.push_str(&format!("{minute:02}")),
            Some('S') => out.push_str(&format!("{second:02}")),
            Some('B') => out.push_str(month_name),
            Some('b') | Some('h') => out.push_str(&month_name[..3]),
            Some('A') => out.push_str(weekday),
            Some('a') => out.push_str(&weekday[..3]),
            Some('F') => out.push_str(&format!("{year}-{month:02}-{day:02}")),
            Some('T') => out.push_str(&format!("{hour:02}:{minute:02}:{second:02}")),
            Some('%') => out.push('%'),
            Some(other) => {
                out.push('%');
                out.push(other);
            }
            None => out.push('%'),
        }
    }
    out
}

/// Howard Hinnant's `civil_from_days`: days since 1970-01-01 to (year, month, day).
fn civil_from_days(days: i64) -> (i64, i64, i64) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let mp = if month > 2 { month - 3 } else { month + 9 };
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn strftime_formats_utc_dates() {
        // 2024-02-29 13:05:09 UTC, a Thursday.
        let t = 1_709_211_909;
        assert_eq!(strftime("%d %b %Y", t), "29 Feb 2024");
        assert_eq!(strftime("%A %B %e %j %H:%M:%S %I%p %y %F %%", t), "Thursday February 29 060 13:05:09 01PM 24 2024-02-29 %");
        assert_eq!(strftime("%Y-%m-%d %a", 0), "1970-01-01 Thu");
        let env = environment();
        let year = env.render_str("{{ strftime_now('%Y') }}", ()).unwrap();
        assert!(year.starts_with("20"), "{year}");
    }
}
