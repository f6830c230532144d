//! Structured output as the APIs ask for it, turned into the engine's [`Constraint`]:
//! `response_format` (chat), `text.format` (responses), the guided-decoding fields of `nvext`
//! (`guided_json`, `guided_regex`, `guided_choice`, `guided_grammar`), and tool calls that
//! `tool_choice` makes mandatory.

use serde_json::{Map, Value, json};
use tritium_backend_api::llm::Constraint;

use super::{ToolChoice, Tools};
use crate::BridgeError;

/// Most strings one `guided_choice` may offer.
pub const MAX_CHOICES: usize = 256;

/// `response_format` / `text.format`: `text` (none), `json_object`, or `json_schema` with the
/// schema under `json_schema.schema` (chat) or `schema` (responses).
pub fn format_constraint(format: Option<&Map<String, Value>>, field: &str) -> Result<Option<Constraint>, BridgeError> {
    let Some(format) = format else {
        return Ok(None);
    };
    match format.get("type").and_then(Value::as_str) {
        Some("text") => Ok(None),
        Some("json_object") => Ok(Some(Constraint::JsonObject)),
        Some("json_schema") => {
            let schema = format.get("json_schema").and_then(|inner| inner.get("schema")).or_else(|| format.get("schema"));
            match schema {
                Some(schema @ (Value::Object(_) | Value::Bool(_))) => Ok(Some(Constraint::JsonSchema(schema.to_string()))),
                Some(_) => Err(BridgeError::field(field, "the JSON schema must be an object")),
                None => Err(BridgeError::field(field, "a json_schema format needs a schema")),
            }
        }
        Some(other) => {
            Err(BridgeError::field(field, format!("type must be 'text', 'json_object' or 'json_schema', got '{other}'")))
        }
        None => Err(BridgeError::field(field, "a format needs a 'type'")),
    }
}

/// The guided-decoding fields (vLLM's names, under `nvext`): at most one may be given.
#[derive(Debug, Clone, Default, PartialEq, serde::Deserialize)]
pub struct Guided {
    pub guided_json: Option<Value>,
    pub guided_regex: Option<String>,
    pub guided_choice: Option<Vec<String>>,
    pub guided_grammar: Option<String>,
}

impl Guided {
    /// The constraint the fields ask for; `field` is where they sit (`nvext`, or "" at the top).
    pub fn constraint(&self, field: &str) -> Result<Option<Constraint>, BridgeError> {
        let name = |inner: &str| if field.is_empty() { inner.to_string() } else { format!("{field}.{inner}") };
        let given = [
            self.guided_json.is_some(),
            self.guided_regex.is_some(),
            self.guided_choice.is_some(),
            self.guided_grammar.is_some(),
        ];
        if given.iter().filter(|&&g| g).count() > 1 {
            return Err(BridgeError::field(
                if field.is_empty() { "guided_json" } else { field },
                "give at most one of guided_json, guided_regex, guided_choice and guided_grammar",
            ));
        }
        if let Some(schema) = &self.guided_json {
            return match schema {
                // A schema given as JSON text, as vLLM also accepts.
                Value::String(text) => Ok(Some(Constraint::JsonSchema(text.clone()))),
                Value::Object(_) | Value::Bool(_) => Ok(Some(Constraint::JsonSchema(schema.to_string()))),
                _ => Err(BridgeError::field(name("guided_json"), "must be a JSON schema")),
            };
        }
        if let Some(regex) = &self.guided_regex {
            return Ok(Some(Constraint::Regex(regex.clone())));
        }
        if let Some(choices) = &self.guided_choice {
            if choices.is_empty() || choices.len() > MAX_CHOICES {
                let reason = format!("must hold 1 to {MAX_CHOICES} strings, got {}", choices.len());
                return Err(BridgeError::field(name("guided_choice"), reason));
            }
            return Ok(Some(Constraint::Choice(choices.clone())));
        }
        Ok(self.guided_grammar.clone().map(Constraint::Lark))
    }
}

/// What `tool_choice` forces: with `required` the output is a JSON array of one or more calls
/// (`[{"name": …, "arguments": {…}}]`), with a named tool it is that tool's arguments. The
/// model's own call format does not matter then; the grammar writes the calls.
pub fn forced_calls(tools: &Tools) -> Option<Constraint> {
    let schema = match &tools.choice {
        ToolChoice::Named(name) => tools.specs.iter().find(|spec| &spec.name == name)?.parameters.clone(),
        ToolChoice::Required => {
            let calls: Vec<Value> = tools
                .specs
                .iter()
                .map(|spec| {
                    json!({"type": "object", "properties": {"name": {"const": spec.name}, "arguments": spec.parameters},
                           "required": ["name", "arguments"], "additionalProperties": false})
                })
                .collect();
            json!({"type": "array", "minItems": 1, "items": {"anyOf": calls}})
        }
        ToolChoice::Auto | ToolChoice::None => return None,
    };
    Some(Constraint::JsonSchema(schema.to_string()))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::protocol::ToolSpec;

    fn format(value: Value) -> Result<Option<Constraint>, BridgeError> {
        format_constraint(value.as_object(), "response_format")
    }

    #[test]
    fn formats() {
        assert_eq!(format(json!({"type": "text"})).unwrap(), None);
        assert_eq!(format(json!({"type": "json_object"})).unwrap(), Some(Constraint::JsonObject));
        let chat = json!({"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "object"}}});
        let responses = json!({"type": "json_schema", "name": "x", "schema": {"type": "object"}});
        assert_eq!(format(chat).unwrap(), format(responses).unwrap());
        for bad in
            [json!({"type": "json_schema"}), json!({"type": "yaml"}), json!({}), json!({"type": "json_schema", "schema": 3})]
        {
            assert!(format(bad.clone()).is_err(), "{bad}");
        }
    }

    #[test]
    fn guided_fields() {
        let guided = |value: Value| serde_json::from_value::<Guided>(value).unwrap().constraint("nvext");
        assert_eq!(guided(json!({"guided_regex": "a+"})).unwrap(), Some(Constraint::Regex("a+".into())));
        assert_eq!(guided(json!({"guided_choice": ["a", "b"]})).unwrap(), Some(Constraint::Choice(vec!["a".into(), "b".into()])));
        assert_eq!(
            guided(json!({"guided_json": "{\"type\": \"object\"}"})).unwrap(),
            Some(Constraint::JsonSchema("{\"type\": \"object\"}".into()))
        );
        assert!(guided(json!({"guided_regex": "a", "guided_choice": ["a"]})).is_err());
        assert!(guided(json!({"guided_choice": []})).is_err());
        assert_eq!(guided(json!({})).unwrap(), None);
    }

    #[test]
    fn forced_tool_calls() {
        let spec = |name: &str| ToolSpec { name: name.into(), description: None, parameters: json!({"type": "object"}) };
        let tools = Tools { specs: vec![spec("a"), spec("b")], choice: ToolChoice::Named("b".into()) };
        assert_eq!(forced_calls(&tools), Some(Constraint::JsonSchema(json!({"type": "object"}).to_string())));
        let tools = Tools { choice: ToolChoice::Required, ..tools };
        let Some(Constraint::JsonSchema(schema)) = forced_calls(&tools) else { panic!("a schema") };
        let schema: Value = serde_json::from_str(&schema).unwrap();
        assert_eq!(schema["items"]["anyOf"][1]["properties"]["name"]["const"], "b");
        assert_eq!(forced_calls(&Tools { choice: ToolChoice::Auto, ..tools }), None);
    }
}
