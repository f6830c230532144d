//! Tool calls written back as a model family writes them, for chat templates that know nothing
//! of `tool_calls` (SmolLM2's ChatML, many base templates): an earlier assistant turn's calls
//! become its text, so the model sees what it called. Each format is the one its parser reads.

use serde_json::Value;

use super::ToolCallFormat;

impl ToolCallFormat {
    /// `calls` (name, arguments object or text) as this family's output text.
    pub fn write_calls(self, calls: &[(&str, &Value)]) -> String {
        use ToolCallFormat::*;
        let each = |write: &dyn Fn(usize, &str, &Value) -> String, separator: &str| {
            calls.iter().enumerate().map(|(i, (name, arguments))| write(i, name, arguments)).collect::<Vec<_>>().join(separator)
        };
        let array =
            || calls.iter().map(|(name, arguments)| named_object(name, "arguments", arguments)).collect::<Vec<_>>().join(", ");
        match self {
            Hermes | Qwen3 => each(
                &|_, name, arguments| format!("<tool_call>\n{}\n</tool_call>", named_object(name, "arguments", arguments)),
                "\n",
            ),
            Llama3Json => each(&|_, name, arguments| named_object(name, "parameters", arguments), "; "),
            Mistral => format!("[TOOL_CALLS][{}]", array()),
            Pythonic => format!("[{}]", each(&|_, name, arguments| python_call(name, arguments), ", ")),
            NemotronDeci => format!("<TOOLCALL>[{}]</TOOLCALL>", array()),
            Jamba => format!("<tool_calls>[{}]</tool_calls>", array()),
            Phi4 => format!("functools[{}]", array()),
            DeepseekV3 => format!(
                "<｜tool▁calls▁begin｜>{}<｜tool▁calls▁end｜>",
                each(
                    &|_, name, arguments| format!(
                        "<｜tool▁call▁begin｜>function<｜tool▁sep｜>{name}\n```json\n{}\n```<｜tool▁call▁end｜>",
                        json_text(arguments)
                    ),
                    "\n"
                )
            ),
            DeepseekV31 => format!(
                "<｜tool▁calls▁begin｜>{}<｜tool▁calls▁end｜>",
                each(
                    &|_, name, arguments| format!(
                        "<｜tool▁call▁begin｜>{name}<｜tool▁sep｜>{}<｜tool▁call▁end｜>",
                        json_text(arguments)
                    ),
                    ""
                )
            ),
            DeepseekV32 => invokes("｜DSML｜", "function_calls", calls),
            DeepseekV4 => invokes("｜DSML｜", "tool_calls", calls),
            DeepseekV41 => invokes("｜DSML｜ ", "calls", calls),
            MuseGlimmer => invokes("atem:", "function_calls", calls),
            Qwen3Coder => each(
                &|_, name, arguments| {
                    let parameters: String =
                        pairs(arguments).map(|(key, value)| format!("<parameter={key}>\n{value}\n</parameter>\n")).collect();
                    format!("<tool_call>\n<function={name}>\n{parameters}</function>\n</tool_call>")
                },
                "\n",
            ),
            MinimaxM2 => {
                let invokes = each(
                    &|_, name, arguments| {
                        let parameters: String = pairs(arguments)
                            .map(|(key, value)| format!("<parameter name=\"{key}\">{value}</parameter>\n"))
                            .collect();
                        format!("<invoke name=\"{name}\">\n{parameters}</invoke>")
                    },
                    "\n",
                );
                format!("<minimax:tool_call>\n{invokes}\n</minimax:tool_call>")
            }
            MinimaxM3 => {
                const NS: &str = "]<]minimax[>[";
                let invokes = each(
                    &|_, name, arguments| {
                        let parameters: String =
                            pairs(arguments).map(|(key, value)| format!("{NS}<{key}>{value}{NS}</{key}>")).collect();
                        format!("{NS}<invoke name=\"{name}\">{parameters}{NS}</invoke>")
                    },
                    "\n",
                );
                format!("{NS}<tool_call>\n{invokes}\n{NS}</tool_call>")
            }
            Glm => each(
                &|_, name, arguments| {
                    let parameters: String = pairs(arguments)
                        .map(|(key, value)| format!("<arg_key>{key}</arg_key>\n<arg_value>{value}</arg_value>\n"))
                        .collect();
                    format!("<tool_call>{name}\n{parameters}</tool_call>")
                },
                "\n",
            ),
            KimiK2 => format!(
                "<|tool_calls_section_begin|>{}<|tool_calls_section_end|>",
                each(
                    &|i, name, arguments| format!(
                        "<|tool_call_begin|>functions.{name}:{i}<|tool_call_argument_begin|>{}<|tool_call_end|>",
                        json_text(arguments)
                    ),
                    ""
                )
            ),
            KimiK3 => format!(
                "<|open|>tools<|sep|>{}<|close|>tools<|sep|>",
                each(
                    &|i, name, arguments| {
                        let parameters: String = typed_pairs(arguments)
                            .map(|(key, kind, value)| {
                                format!("<|open|>argument key=\"{key}\" type=\"{kind}\"<|sep|>{value}<|close|>argument<|sep|>")
                            })
                            .collect();
                        format!("<|open|>call tool=\"{name}\" index=\"{}\"<|sep|>{parameters}<|close|>call<|sep|>", i + 1)
                    },
                    ""
                )
            ),
            Harmony => each(
                &|_, name, arguments| {
                    format!(
                        "<|start|>assistant<|channel|>commentary to=functions.{name} <|constrain|>json<|message|>{}<|call|>",
                        json_text(arguments)
                    )
                },
                "",
            ),
            Gemma4 => each(&|_, name, arguments| format!("<|tool_call>call:{name}{}<tool_call|>", gemma_literal(arguments)), ""),
            Inkling => each(
                &|_, name, arguments| {
                    let call = named_object(name, "args", arguments);
                    format!("<|message_model|>{name}<|content_invoke_tool_json|>{call}<|end_message|>")
                },
                "",
            ),
        }
    }
}

/// The arguments' JSON text (a client's text that is not JSON is kept as it is).
fn json_text(arguments: &Value) -> String {
    match arguments {
        Value::String(text) => text.clone(),
        other => other.to_string(),
    }
}

/// An object's fields as (key, value text): strings raw, the rest as JSON, as the key/value
/// families' templates write them.
fn pairs(arguments: &Value) -> impl Iterator<Item = (String, String)> + '_ {
    typed_pairs(arguments).map(|(key, _, value)| (key, value))
}

/// (key, JSON type, value text) for each field of an object.
fn typed_pairs(arguments: &Value) -> impl Iterator<Item = (String, &'static str, String)> + '_ {
    let fields = match arguments {
        Value::Object(fields) => Some(fields),
        _ => None,
    };
    fields.into_iter().flat_map(|fields| fields.iter()).map(|(key, value)| {
        let (kind, text) = match value {
            Value::String(text) => ("string", text.clone()),
            Value::Number(_) => ("number", value.to_string()),
            Value::Bool(_) => ("boolean", value.to_string()),
            Value::Null => ("null", value.to_string()),
            Value::Array(_) => ("array", value.to_string()),
            Value::Object(_) => ("object", value.to_string()),
        };
        (key.clone(), kind, text)
    })
}

/// DSML or ATEM: `<{p}invoke name="f">` with `<{p}parameter name="k" string="…">` children.
fn invokes(prefix: &str, block: &str, calls: &[(&str, &Value)]) -> String {
    let mut out = format!("<{prefix}{block}>\n");
    for (name, arguments) in calls {
        out.push_str(&format!("<{prefix}invoke name=\"{name}\">\n"));
        for (key, kind, value) in typed_pairs(arguments) {
            let string = kind == "string";
            out.push_str(&format!("<{prefix}parameter name=\"{key}\" string=\"{string}\">{value}</{prefix}parameter>\n"));
        }
        out.push_str(&format!("</{prefix}invoke>\n"));
    }
    out.push_str(&format!("</{prefix}{block}>"));
    out
}

/// Gemma 4's literal: bare keys, `<|"|>` around strings.
fn gemma_literal(value: &Value) -> String {
    match value {
        Value::String(text) => format!("<|\"|>{text}<|\"|>"),
        Value::Array(items) => format!("[{}]", items.iter().map(gemma_literal).collect::<Vec<_>>().join(",")),
        Value::Object(fields) => {
            format!(
                "{{{}}}",
                fields.iter().map(|(key, item)| format!("{key}:{}", gemma_literal(item))).collect::<Vec<_>>().join(",")
            )
        }
        other => other.to_string(),
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
