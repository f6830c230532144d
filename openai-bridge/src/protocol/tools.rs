//! Tools as the three APIs declare them (chat's `{"type": "function", "function": {…}}`, the
//! Responses API's flat `{"type": "function", "name": …}`, Anthropic's `{"name", "input_schema"}`),
//! checked and brought to one shape: chat's, which is what chat templates read.

use serde_json::{Map, Value, json};

use crate::BridgeError;

/// At most this many tools per request: each is rendered into the prompt.
pub const MAX_TOOLS: usize = 128;

/// One function the model may call.
#[derive(Debug, Clone, PartialEq)]
pub struct ToolSpec {
    pub name: String,
    pub description: Option<String>,
    /// A JSON schema of the arguments (`{}`: anything).
    pub parameters: Value,
}

impl ToolSpec {
    /// Chat's shape, for the template.
    pub fn to_chat_json(&self) -> Value {
        let mut function = Map::new();
        function.insert("name".into(), Value::String(self.name.clone()));
        if let Some(description) = &self.description {
            function.insert("description".into(), Value::String(description.clone()));
        }
        function.insert("parameters".into(), self.parameters.clone());
        json!({"type": "function", "function": Value::Object(function)})
    }
}

/// Whether the model may, must or must not call tools.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum ToolChoice {
    None,
    #[default]
    Auto,
    Required,
    /// This tool.
    Named(String),
}

/// The tools of a request and the choice among them.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Tools {
    pub specs: Vec<ToolSpec>,
    pub choice: ToolChoice,
}

impl Tools {
    /// True when the output is to be searched for calls.
    pub fn offered(&self) -> bool {
        !self.specs.is_empty() && self.choice != ToolChoice::None
    }

    /// The template variables: `tools` in chat's shape (absent with no tools), `tool_choice`.
    pub fn template_variables(&self, extra: &mut Map<String, Value>) {
        if self.specs.is_empty() {
            return;
        }
        extra.insert("tools".into(), Value::Array(self.specs.iter().map(ToolSpec::to_chat_json).collect()));
        let choice = match &self.choice {
            ToolChoice::None => json!("none"),
            ToolChoice::Auto => json!("auto"),
            ToolChoice::Required => json!("required"),
            ToolChoice::Named(name) => json!({"type": "function", "function": {"name": name}}),
        };
        extra.insert("tool_choice".into(), choice);
    }

    /// Chat's `tools` and `tool_choice`.
    pub fn from_chat(tools: Option<&[Value]>, choice: Option<&Value>) -> Result<Tools, BridgeError> {
        let specs = each_tool(tools, "tools", |tool| {
            if tool.get("type").and_then(Value::as_str) != Some("function") {
                return Err("only tools of type 'function' are supported".to_owned());
            }
            let function = tool.get("function").and_then(Value::as_object).ok_or("a function tool needs a 'function' object")?;
            spec(function, "parameters")
        })?;
        let choice = match choice {
            None | Some(Value::Null) => ToolChoice::Auto,
            Some(Value::String(word)) => word_choice(word, "tool_choice")?,
            Some(Value::Object(object)) => {
                let name = object.get("function").and_then(|f| f.get("name")).and_then(Value::as_str);
                match (object.get("type").and_then(Value::as_str), name) {
                    (Some("function"), Some(name)) => ToolChoice::Named(name.to_owned()),
                    _ => {
                        return Err(BridgeError::field(
                            "tool_choice",
                            "expected {\"type\": \"function\", \"function\": {\"name\": …}}",
                        ));
                    }
                }
            }
            Some(_) => return Err(BridgeError::field("tool_choice", "expected a string or an object")),
        };
        Tools { specs, choice }.checked("tool_choice")
    }

    /// The Responses API's `tools` (flat function tools) and `tool_choice`.
    pub fn from_responses(tools: Option<&[Value]>, choice: Option<&Value>) -> Result<Tools, BridgeError> {
        let specs = each_tool(tools, "tools", |tool| match tool.get("type").and_then(Value::as_str) {
            Some("function") => spec(tool.as_object().ok_or("a tool must be an object")?, "parameters"),
            Some(other) => Err(format!("tools of type '{other}' are not supported; only 'function' tools are")),
            None => Err("a tool needs a 'type'".to_owned()),
        })?;
        let choice = match choice {
            None | Some(Value::Null) => ToolChoice::Auto,
            Some(Value::String(word)) => word_choice(word, "tool_choice")?,
            Some(Value::Object(object)) => {
                match (object.get("type").and_then(Value::as_str), object.get("name").and_then(Value::as_str)) {
                    (Some("function"), Some(name)) => ToolChoice::Named(name.to_owned()),
                    _ => return Err(BridgeError::field("tool_choice", "expected {\"type\": \"function\", \"name\": …}")),
                }
            }
            Some(_) => return Err(BridgeError::field("tool_choice", "expected a string or an object")),
        };
        Tools { specs, choice }.checked("tool_choice")
    }

    /// Anthropic's `tools` (`name`, `description`, `input_schema`) and `tool_choice`
    /// (`{"type": "auto" | "any" | "tool" | "none"}`).
    pub fn from_anthropic(tools: Option<&[Value]>, choice: Option<&Value>) -> Result<Tools, BridgeError> {
        let specs = each_tool(tools, "tools", |tool| match tool.get("type").and_then(Value::as_str) {
            None | Some("custom") => spec(tool.as_object().ok_or("a tool must be an object")?, "input_schema"),
            Some(other) => Err(format!("tools of type '{other}' are not supported; only custom tools are")),
        })?;
        let choice = match choice {
            None | Some(Value::Null) => ToolChoice::Auto,
            Some(Value::Object(object)) => match object.get("type").and_then(Value::as_str) {
                Some("auto") => ToolChoice::Auto,
                Some("any") => ToolChoice::Required,
                Some("none") => ToolChoice::None,
                Some("tool") => match object.get("name").and_then(Value::as_str) {
                    Some(name) => ToolChoice::Named(name.to_owned()),
                    None => return Err(BridgeError::field("tool_choice.name", "is required with type 'tool'")),
                },
                _ => return Err(BridgeError::field("tool_choice.type", "must be 'auto', 'any', 'tool' or 'none'")),
            },
            Some(_) => return Err(BridgeError::field("tool_choice", "expected an object")),
        };
        Tools { specs, choice }.checked("tool_choice")
    }

    /// A named tool must be one of the tools; a call cannot be required of no tools.
    fn checked(self, field: &str) -> Result<Tools, BridgeError> {
        match &self.choice {
            ToolChoice::Named(name) if !self.specs.iter().any(|spec| &spec.name == name) => {
                Err(BridgeError::field(field, format!("names the tool '{name}', which is not among the tools")))
            }
            ToolChoice::Named(_) | ToolChoice::Required if self.specs.is_empty() => {
                Err(BridgeError::field(field, "requires a tool call, but no tools were given"))
            }
            _ => Ok(self),
        }
    }
}

fn word_choice(word: &str, field: &str) -> Result<ToolChoice, BridgeError> {
    match word {
        "none" => Ok(ToolChoice::None),
        "auto" => Ok(ToolChoice::Auto),
        "required" => Ok(ToolChoice::Required),
        other => Err(BridgeError::field(field, format!("must be 'none', 'auto', 'required' or a named function, got '{other}'"))),
    }
}

fn each_tool(
    tools: Option<&[Value]>,
    field: &str,
    mut parse: impl FnMut(&Value) -> Result<ToolSpec, String>,
) -> Result<Vec<ToolSpec>, BridgeError> {
    let tools = tools.unwrap_or_default();
    if tools.len() > MAX_TOOLS {
        return Err(BridgeError::field(field, format!("at most {MAX_TOOLS} tools are allowed, got {}", tools.len())));
    }
    let mut specs: Vec<ToolSpec> = Vec::with_capacity(tools.len());
    for (i, tool) in tools.iter().enumerate() {
        let spec = parse(tool).map_err(|reason| BridgeError::field(format!("{field}[{i}]"), reason))?;
        if specs.iter().any(|other| other.name == spec.name) {
            return Err(BridgeError::field(format!("{field}[{i}]"), format!("the tool name '{}' is used twice", spec.name)));
        }
        specs.push(spec);
    }
    Ok(specs)
}

/// `name`, `description` and the schema under `schema_key` of one tool object.
fn spec(object: &Map<String, Value>, schema_key: &str) -> Result<ToolSpec, String> {
    let name = match object.get("name") {
        Some(Value::String(name)) if valid_name(name) => name.clone(),
        Some(Value::String(name)) => {
            return Err(format!("the tool name '{name}' must be 1 to 64 letters, digits, '_' or '-'"));
        }
        _ => return Err("a tool needs a string 'name'".to_owned()),
    };
    let description = match object.get("description") {
        None | Some(Value::Null) => None,
        Some(Value::String(text)) => Some(text.clone()),
        Some(_) => return Err("a tool's 'description' must be a string".to_owned()),
    };
    let parameters = match object.get(schema_key) {
        None | Some(Value::Null) => json!({"type": "object", "properties": {}}),
        Some(schema @ Value::Object(_)) => schema.clone(),
        Some(_) => return Err(format!("a tool's '{schema_key}' must be a JSON schema object")),
    };
    Ok(ToolSpec { name, description, parameters })
}

/// OpenAI's rule for function names.
fn valid_name(name: &str) -> bool {
    (1..=64).contains(&name.len()) && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-' || c == '.')
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn field_of(error: BridgeError) -> String {
        match error {
            BridgeError::InvalidField { field, .. } => field,
            other => panic!("expected InvalidField, got {other:?}"),
        }
    }

    #[test]
    fn the_three_shapes_agree() {
        let schema = json!({"type": "object", "properties": {"city": {"type": "string"}}});
        let chat = Tools::from_chat(
            Some(&[json!({"type": "function", "function": {"name": "get_weather", "description": "d", "parameters": schema}})]),
            Some(&json!({"type": "function", "function": {"name": "get_weather"}})),
        )
        .unwrap();
        let responses = Tools::from_responses(
            Some(&[json!({"type": "function", "name": "get_weather", "description": "d", "parameters": schema})]),
            Some(&json!({"type": "function", "name": "get_weather"})),
        )
        .unwrap();
        let anthropic = Tools::from_anthropic(
            Some(&[json!({"name": "get_weather", "description": "d", "input_schema": schema})]),
            Some(&json!({"type": "tool", "name": "get_weather"})),
        )
        .unwrap();
        assert_eq!(chat, responses);
        assert_eq!(chat, anthropic);
        assert!(chat.offered());
        let mut extra = Map::new();
        chat.template_variables(&mut extra);
        assert_eq!(extra["tools"][0]["function"]["parameters"], schema);
    }

    #[test]
    fn bad_tools_name_their_field() {
        let cases: Vec<(Result<Tools, BridgeError>, &str)> = vec![
            (Tools::from_chat(Some(&[json!({"type": "retrieval"})]), None), "tools[0]"),
            (Tools::from_chat(Some(&[json!({"type": "function", "function": {"name": "a b"}})]), None), "tools[0]"),
            (
                Tools::from_chat(Some(&[json!({"type": "function", "function": {"name": "f", "parameters": 3}})]), None),
                "tools[0]",
            ),
            (Tools::from_chat(None, Some(&json!("required"))), "tool_choice"),
            (Tools::from_chat(None, Some(&json!("sometimes"))), "tool_choice"),
            (
                Tools::from_chat(
                    Some(&[json!({"type": "function", "function": {"name": "f"}})]),
                    Some(&json!({"type": "function", "function": {"name": "g"}})),
                ),
                "tool_choice",
            ),
            (Tools::from_responses(Some(&[json!({"type": "web_search"})]), None), "tools[0]"),
            (Tools::from_anthropic(Some(&[json!({"name": "f"}), json!({"name": "f"})]), None), "tools[1]"),
            (Tools::from_anthropic(Some(&[json!({"name": "f"})]), Some(&json!({"type": "tool"}))), "tool_choice.name"),
        ];
        for (outcome, field) in cases {
            assert_eq!(field_of(outcome.expect_err(field)), field);
        }
        let none = Tools::from_chat(Some(&[json!({"type": "function", "function": {"name": "f"}})]), Some(&json!("none")));
        assert!(!none.unwrap().offered());
    }
}
