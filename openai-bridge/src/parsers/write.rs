//! Tool calls written back as a model family writes them, for chat templates that know nothing
//! of `tool_calls` (SmolLM2's ChatML, many base templates): an earlier assistant turn's calls
//! become its text, so the model sees what it called. Each format is the one its parser reads.

use serde_json::Value;

use super::ToolCallFormat;

impl ToolCallFormat {
    /// `calls` (name, arguments object or text) as this family's output text.
    pub fn write_calls(self, calls: &[(&str, &Value)]) -> String {
        match self {
            ToolCallFormat::Hermes => calls
                .iter()
                .map(|(name, arguments)| format!("<tool_call>\n{}\n</tool_call>", named_object(name, "arguments", arguments)))
                .collect::<Vec<_>>()
                .join("\n"),
            ToolCallFormat::Llama3Json => {
                calls.iter().map(|(name, arguments)| named_object(name, "parameters", arguments)).collect::<Vec<_>>().join("; ")
            }
            ToolCallFormat::Mistral => {
                let calls: Vec<String> =
                    calls.iter().map(|(name, arguments)| named_object(name, "arguments", arguments)).collect();
                format!("[TOOL_CALLS][{}]", calls.join(", "))
            }
            ToolCallFormat::Pythonic => {
                let calls: Vec<String> = calls.iter().map(|(name, arguments)| python_call(name, arguments)).collect();
                format!("[{}]", calls.join(", "))
            }
        }
    }
}

/// `{"name": …, "<key>": …}`, the name first as models write it.
fn named_object(name: &str, key: &str, arguments: &Value) -> String {
    format!("{{\"name\": {}, \"{key}\": {arguments}}}", Value::String(name.to_string()))
}

/// `name(key=value, …)` with the arguments as Python literals; arguments that are not an
/// object (text the client sent that is not JSON) become one positional string.
fn python_call(name: &str, arguments: &Value) -> String {
    let mut out = format!("{name}(");
    match arguments {
        Value::Object(fields) => {
            for (i, (key, value)) in fields.iter().enumerate() {
                if i > 0 {
                    out.push_str(", ");
                }
                out.push_str(key);
                out.push('=');
                python_literal(value, &mut out);
            }
        }
        Value::Null => {}
        other => python_literal(other, &mut out),
    }
    out.push(')');
    out
}

fn python_literal(value: &Value, out: &mut String) {
    match value {
        Value::Null => out.push_str("None"),
        Value::Bool(true) => out.push_str("True"),
        Value::Bool(false) => out.push_str("False"),
        Value::Number(number) => out.push_str(&number.to_string()),
        // A JSON string literal is a valid Python one, escapes included.
        Value::String(text) => out.push_str(&Value::String(text.clone()).to_string()),
        Value::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push_str(", ");
                }
                python_literal(item, out);
            }
            out.push(']');
        }
        Value::Object(fields) => {
            out.push('{');
            for (i, (key, item)) in fields.iter().enumerate() {
                if i > 0 {
                    out.push_str(", ");
                }
                out.push_str(&Value::String(key.clone()).to_string());
                out.push_str(": ");
                python_literal(item, out);
            }
            out.push('}');
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::super::OutputParser;
    use super::*;

    /// What each format writes, its own parser reads back as the same calls.
    #[test]
    fn each_format_reads_back_what_it_writes() {
        let weather = json!({"city": "Paris", "days": 3, "metric": true, "hours": [6, 12], "extra": null, "note": "a \"b\"\n"});
        let time = json!({});
        let calls = [("get_weather", &weather), ("get_time", &time)];
        for format in ToolCallFormat::NAMES.map(|name| ToolCallFormat::from_name(name).expect("known")) {
            let text = format.write_calls(&calls);
            let parsed = OutputParser::new(None, Some(format)).parse_all(&text);
            assert_eq!(parsed.content.trim(), "", "{format:?} left text: {text}");
            let read: Vec<(String, Value)> = parsed
                .tool_calls
                .into_iter()
                .map(|call| (call.name, serde_json::from_str(&call.arguments).expect("arguments are JSON")))
                .collect();
            assert_eq!(
                read,
                vec![("get_weather".to_string(), weather.clone()), ("get_time".to_string(), time.clone())],
                "{format:?}: {text}"
            );
        }
    }

    #[test]
    fn hermes_writes_one_block_per_call() {
        let arguments = json!({"city": "Paris"});
        assert_eq!(
            ToolCallFormat::Hermes.write_calls(&[("get_weather", &arguments)]),
            "<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\":\"Paris\"}}\n</tool_call>"
        );
    }
}
