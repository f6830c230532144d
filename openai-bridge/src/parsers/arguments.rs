//! A call's arguments as the JSON text OpenAI sends: JSON the model wrote, minified as it
//! arrives (so the streamed pieces add up to the whole); or key/value parameters (the XML-like
//! families), each value typed by the tool's JSON schema.

use std::collections::HashMap;

use serde_json::Value;

/// The parameter types of the tools a request offered: tool name → parameter → JSON type.
#[derive(Debug, Clone, Default)]
pub struct ToolSchemas(HashMap<String, HashMap<String, String>>);

impl ToolSchemas {
    /// From each tool's name and its parameters' JSON schema.
    pub fn new<'a>(tools: impl IntoIterator<Item = (&'a str, &'a Value)>) -> ToolSchemas {
        let mut schemas = HashMap::new();
        for (name, parameters) in tools {
            let mut params = HashMap::new();
            if let Some(Value::Object(properties)) = parameters.get("properties") {
                for (key, schema) in properties.iter() {
                    if let Some(kind) = schema_type(schema) {
                        params.insert(key.clone(), kind);
                    }
                }
            }
            schemas.insert(name.to_owned(), params);
        }
        ToolSchemas(schemas)
    }

    fn param(&self, tool: &str, key: &str) -> Option<&str> {
        self.0.get(tool)?.get(key).map(String::as_str)
    }
}

/// A schema's type: `"type": "integer"`, the first non-null of `"type": [..]`, or an
/// `enum`/`const` of strings.
fn schema_type(schema: &Value) -> Option<String> {
    match schema.get("type") {
        Some(Value::String(kind)) => Some(kind.clone()),
        Some(Value::Array(kinds)) => kinds.iter().filter_map(Value::as_str).find(|kind| *kind != "null").map(str::to_owned),
        _ => match schema.get("enum").or_else(|| schema.get("const")) {
            Some(Value::Array(values)) if values.iter().all(Value::is_string) => Some("string".into()),
            Some(Value::String(_)) => Some("string".into()),
            _ => schema.get("properties").map(|_| "object".into()),
        },
    }
}

/// One parameter's text as a JSON value, by its declared type. Text that is not what the type
/// says stays a string (the model's words are never dropped); with no type known, JSON literals
/// are read as JSON and anything else is a string.
pub(super) fn typed_value(text: &str, kind: Option<&str>) -> Value {
    let trimmed = text.trim();
    let as_json = || serde_json::from_str::<Value>(trimmed).ok();
    let parsed = match kind {
        Some("string" | "str" | "text" | "varchar" | "char" | "enum") => None,
        Some("integer" | "int") => trimmed.parse::<i64>().ok().map(Value::from).or_else(|| as_json().filter(Value::is_number)),
        Some("number" | "float" | "double") => as_json().filter(Value::is_number),
        Some("boolean" | "bool") => match trimmed.to_ascii_lowercase().as_str() {
            "true" => Some(Value::Bool(true)),
            "false" => Some(Value::Bool(false)),
            _ => None,
        },
        Some("null") => as_json().filter(Value::is_null),
        Some("object") => as_json().filter(Value::is_object),
        Some("array") => as_json().filter(Value::is_array),
        _ => as_json().filter(|value| !value.is_string()),
    };
    parsed.unwrap_or_else(|| Value::String(text.to_owned()))
}

/// Arguments from key/value parameters, in the order the model wrote them.
#[derive(Debug, Default)]
pub(super) struct ArgumentsBuilder {
    text: String,
}

impl ArgumentsBuilder {
    /// Adds a parameter whose type the schema (or an explicit marker) decides.
    pub(super) fn typed(&mut self, schemas: &ToolSchemas, tool: &str, key: &str, text: &str) {
        let value = typed_value(text, schemas.param(tool, key));
        self.value(key, &value);
    }

    pub(super) fn value(&mut self, key: &str, value: &Value) {
        self.text.push(if self.text.is_empty() { '{' } else { ',' });
        self.text.push_str(&Value::String(key.to_owned()).to_string());
        self.text.push(':');
        self.text.push_str(&value.to_string());
    }

    pub(super) fn finish(mut self) -> String {
        if self.text.is_empty() {
            self.text.push('{');
        }
        self.text.push('}');
        self.text
    }
}

/// `text` without the whitespace outside its strings: the JSON a model wrote, as compact as
/// OpenAI sends arguments, keeping the model's key order, numbers and escapes byte for byte.
/// Works on pieces: `in_string`/`escaped` carry over from the previous piece.
#[derive(Debug, Default, Clone)]
pub(super) struct Minifier {
    in_string: bool,
    escaped: bool,
}

impl Minifier {
    pub(super) fn push(&mut self, text: &str, out: &mut String) {
        for c in text.chars() {
            if self.in_string {
                if self.escaped {
                    self.escaped = false;
                } else if c == '\\' {
                    self.escaped = true;
                } else if c == '"' {
                    self.in_string = false;
                }
                out.push(c);
            } else if !c.is_whitespace() {
                self.in_string = c == '"';
                out.push(c);
            }
        }
    }
}

/// Whole JSON text minified (see [`Minifier`]).
pub(super) fn minify(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    Minifier::default().push(text, &mut out);
    out
}

/// A JSON value's text as arguments: an object minified, a JSON string's contents (some models
/// write the arguments as a string holding JSON) as they are; anything else is not arguments.
pub(super) fn json_arguments(text: &str) -> Option<String> {
    match serde_json::from_str::<Value>(text).ok()? {
        Value::Object(_) => Some(minify(text)),
        Value::String(inner) => Some(inner),
        Value::Null => Some("{}".to_owned()),
        _ => None,
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn values_take_the_schemas_types_and_stay_text_otherwise() {
        let parameters = json!({"type": "object", "properties": {
            "zip": {"type": "string"}, "n": {"type": "integer"}, "x": {"type": ["number", "null"]},
            "ok": {"type": "boolean"}, "tags": {"type": "array"}, "unit": {"enum": ["c", "f"]}}});
        let schemas = ToolSchemas::new([("f", &parameters)]);
        let mut args = ArgumentsBuilder::default();
        for (key, text) in [("zip", "01234"), ("n", "42"), ("x", "1.5"), ("ok", "True"), ("tags", "[1, 2]"), ("unit", "c")] {
            args.typed(&schemas, "f", key, text);
        }
        args.typed(&schemas, "f", "n2", "7");
        args.typed(&schemas, "f", "free", "Paris");
        args.typed(&schemas, "f", "n", "many");
        let text = args.finish();
        assert_eq!(
            text,
            r#"{"zip":"01234","n":42,"x":1.5,"ok":true,"tags":[1, 2],"unit":"c","n2":7,"free":"Paris","n":"many"}"#
                .replace("[1, 2]", "[1,2]")
        );
        assert_eq!(ArgumentsBuilder::default().finish(), "{}");
    }

    #[test]
    fn minifying_keeps_strings_and_works_across_pieces() {
        let text = "{ \"a b\" : \"x \\\" y\" ,\n \"n\": 1.50e3 }";
        assert_eq!(minify(text), r#"{"a b":"x \" y","n":1.50e3}"#);
        let mut minifier = Minifier::default();
        let mut out = String::new();
        for c in text.chars() {
            minifier.push(&c.to_string(), &mut out);
        }
        assert_eq!(out, minify(text));
        assert_eq!(json_arguments("\"{\\\"a\\\":1}\"").as_deref(), Some("{\"a\":1}"));
        assert_eq!(json_arguments("[1]"), None);
    }
}
