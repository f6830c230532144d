//! No config field silently ignored: every field of Triton's `ModelConfig`, nested messages
//! included, is classified in one table ([`FIELDS`]) as supported, supported with a difference,
//! refused (the load fails naming the field) or warned (a field that only tunes performance, or
//! that Triton itself ignores without a GPU: the model loads and a warning names the field).
//!
//! [`check_fields`] walks a config as written (through the protobuf descriptor, so only the
//! fields that are set are seen) and applies the table; a unit test fails when
//! `model_config.proto` gains a field the table does not classify, and another keeps the book's
//! "Model configuration fields" table equal to [`fields_markdown`].
//!
//! ```
//! use tritium_repository::{check_fields, parse_config_text};
//!
//! let config = parse_config_text(r#"backend: "identity" optimization { priority: PRIORITY_MAX }"#)?;
//! let warnings = check_fields("m", &config)?;
//! assert_eq!(warnings[0].path, "optimization.priority");
//!
//! let config = parse_config_text(r#"backend: "identity" model_operations { op_library_filename: "x.so" }"#)?;
//! let refused = check_fields("m", &config).unwrap_err().to_string();
//! assert!(refused.contains("config field 'model_operations' is not supported by Tritium"), "{refused}");
//! # Ok::<(), tritium_repository::RepositoryError>(())
//! ```

mod table;
#[cfg(test)]
mod tests;

use prost_reflect::{DynamicMessage, Value};
use tritium_proto::inference::ModelConfig;

use super::RepositoryError;
use super::config::model_config_descriptor;
pub use table::FIELDS;

/// How Tritium treats one config field (a path of field names from `ModelConfig`, such as
/// `instance_group.rate_limiter`). A refused or warned field covers every field beneath it.
#[derive(Debug, Clone, Copy)]
pub enum Support {
    /// Does what Triton does with it.
    Supported,
    /// Does what Triton does, with the difference this says.
    Differs(&'static str),
    /// Not implemented: a config that sets it fails to load; the text says why.
    Refused(&'static str),
    /// Loads, and a warning names the field once per load; the text says why it can be ignored.
    Warned(&'static str),
    /// Decided by its value (and the model's backend): `doc` says how, for the book.
    Rule { rule: Rule, doc: &'static str },
}

/// A value-dependent decision; `None` accepts the value.
pub type Rule = fn(&Seen<'_>) -> Option<Verdict>;

/// What a [`Rule`] decides for a value it does not accept.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// The load fails with this reason (the full text after the model's name).
    Refuse(String),
    /// The model loads; this is the warning's text.
    Warn(String),
}

/// What a [`Rule`] sees: the value, the message holding it, and the model.
pub struct Seen<'a> {
    pub model: &'a str,
    /// The config's `backend`, or its `platform` when it names no backend.
    pub backend: &'a str,
    pub config: &'a ModelConfig,
    /// The message the field belongs to (an `instance_group` entry for `instance_group.kind`).
    pub parent: &'a DynamicMessage,
    /// The position of `parent` in its repeated field, if it is in one.
    pub index: Option<usize>,
    pub value: &'a Value,
}

/// One row of the table.
#[derive(Debug, Clone, Copy)]
pub struct Field {
    pub path: &'static str,
    pub support: Support,
}

/// A field of a config that loads but is ignored, named once per load.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldWarning {
    pub path: String,
    pub message: String,
}

/// Applies [`FIELDS`] to `config` as written for model `model`: an `InvalidConfig` error naming
/// every refused field, or the warnings for the ignored ones (each path once, in field order).
pub fn check_fields(model: &str, config: &ModelConfig) -> Result<Vec<FieldWarning>, RepositoryError> {
    let mut message = DynamicMessage::new(model_config_descriptor()?);
    message.transcode_from(config).map_err(|e| RepositoryError::Schema { reason: e.to_string() })?;
    let backend = if config.backend.is_empty() { config.platform.as_str() } else { config.backend.as_str() };
    let mut walk = Walk { model, backend, config, refused: Vec::new(), warnings: Vec::new() };
    walk.message(&message, "", None);
    if walk.refused.is_empty() {
        return Ok(walk.warnings);
    }
    Err(RepositoryError::InvalidConfig { model: model.to_string(), reason: walk.refused.join("; ") })
}

/// [`check_fields`], logging each warning (once per call, so once per model load).
pub fn audit_fields(model: &str, config: &ModelConfig) -> Result<(), RepositoryError> {
    for warning in check_fields(model, config)? {
        tracing::warn!(model, field = %warning.path, "{}", warning.message);
    }
    Ok(())
}

/// The table entry for `path`, if it has one of its own.
pub fn lookup(path: &str) -> Option<&'static Field> {
    FIELDS.iter().find(|f| f.path == path)
}

struct Walk<'a> {
    model: &'a str,
    backend: &'a str,
    config: &'a ModelConfig,
    refused: Vec<String>,
    warnings: Vec<FieldWarning>,
}

impl Walk<'_> {
    fn message(&mut self, message: &DynamicMessage, prefix: &str, index: Option<usize>) {
        for (field, value) in message.fields() {
            let path = if prefix.is_empty() { field.name().to_string() } else { format!("{prefix}.{}", field.name()) };
            let support = lookup(&path).map(|f| f.support);
            let verdict = match support {
                // The completeness test keeps this unreachable; refusing is the safe side.
                None => Some(Verdict::Refuse(not_supported(&path, "Tritium does not know this field"))),
                Some(Support::Supported | Support::Differs(_)) => None,
                Some(Support::Refused(why)) => Some(Verdict::Refuse(not_supported(&path, why))),
                Some(Support::Warned(why)) => Some(Verdict::Warn(ignored(&path, why))),
                Some(Support::Rule { rule, .. }) => {
                    let (model, backend, config) = (self.model, self.backend, self.config);
                    rule(&Seen { model, backend, config, parent: message, index, value })
                }
            };
            match verdict {
                Some(Verdict::Refuse(reason)) => {
                    if !self.refused.contains(&reason) {
                        self.refused.push(reason);
                    }
                }
                Some(Verdict::Warn(text)) => {
                    if !self.warnings.iter().any(|w| w.path == path) {
                        self.warnings.push(FieldWarning { path, message: text });
                    }
                }
                None => self.children(value, &path),
            }
        }
    }

    /// Walks the messages inside an accepted field: a message, a list's or a map's messages.
    fn children(&mut self, value: &Value, path: &str) {
        match value {
            Value::Message(inner) => self.message(inner, path, None),
            Value::List(items) => {
                for (i, item) in items.iter().enumerate() {
                    if let Value::Message(inner) = item {
                        self.message(inner, path, Some(i));
                    }
                }
            }
            Value::Map(entries) => {
                for item in entries.values() {
                    if let Value::Message(inner) = item {
                        self.message(inner, path, None);
                    }
                }
            }
            _ => {}
        }
    }
}

/// The refusal's words: `config field 'x' is not supported by Tritium: why`.
pub fn not_supported(path: &str, why: &str) -> String {
    format!("config field '{path}' is not supported by Tritium: {why}")
}

/// The warning's words.
pub fn ignored(path: &str, why: &str) -> String {
    format!("config field '{path}' is ignored by Tritium: {why}")
}

/// Every field path of `ModelConfig` (maps' message values under the map's own path), in
/// descriptor order.
pub fn all_paths() -> Result<Vec<String>, RepositoryError> {
    fn walk(descriptor: &prost_reflect::MessageDescriptor, prefix: &str, out: &mut Vec<String>, depth: usize) {
        for field in descriptor.fields() {
            let path = if prefix.is_empty() { field.name().to_string() } else { format!("{prefix}.{}", field.name()) };
            out.push(path.clone());
            let inner = match field.kind() {
                prost_reflect::Kind::Message(m) if m.is_map_entry() => match m.map_entry_value_field().kind() {
                    prost_reflect::Kind::Message(value) => Some(value),
                    _ => None,
                },
                prost_reflect::Kind::Message(m) => Some(m),
                _ => None,
            };
            // model_config.proto has no recursive message; the bound only guards a future one.
            if let Some(inner) = inner.filter(|_| depth < 16) {
                walk(&inner, &path, out, depth + 1);
            }
        }
    }
    let mut out = Vec::new();
    walk(&model_config_descriptor()?, "", &mut out, 0);
    Ok(out)
}

/// The book's table (docs/src/model-repository/config-fields.md) of every field and its status, generated from [`FIELDS`].
pub fn fields_markdown() -> String {
    let mut out = String::from("| field | status |\n|---|---|\n");
    for field in FIELDS {
        let status = match field.support {
            Support::Supported => "supported".to_string(),
            Support::Differs(how) => format!("supported, with a difference: {how}"),
            Support::Refused(why) => format!("**refused**: {why}"),
            Support::Warned(why) => format!("*warned*: {why}"),
            Support::Rule { doc, .. } => doc.to_string(),
        };
        out.push_str(&format!("| `{}` | {} |\n", field.path, status.replace('|', "\\|")));
    }
    out
}

/// The name Triton gives an instance group: its own, or `<model>_<index>`.
fn group_name(seen: &Seen<'_>) -> String {
    match seen.parent.get_field_by_name("name").as_deref() {
        Some(Value::String(name)) if !name.is_empty() => name.clone(),
        _ => format!("{}_{}", seen.model, seen.index.unwrap_or(0)),
    }
}

/// An enum or `int32` field beside the one a rule looks at (0 when unset).
fn sibling_i32(seen: &Seen<'_>, name: &str) -> i32 {
    match seen.parent.get_field_by_name(name).as_deref() {
        Some(Value::EnumNumber(n) | Value::I32(n)) => *n,
        _ => 0,
    }
}
