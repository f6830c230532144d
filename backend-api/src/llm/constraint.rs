//! Structured output as a request states it: the grammar the generated text must follow. The
//! engine compiles it (with llguidance) and enforces it while sampling.

/// A grammar the output must follow.
#[derive(Debug, Clone, PartialEq)]
pub enum Constraint {
    /// Any JSON object.
    JsonObject,
    /// JSON valid for this schema (JSON text).
    JsonSchema(String),
    /// Text matching this regular expression (Rust `regex` syntax), whole.
    Regex(String),
    /// Exactly one of these strings.
    Choice(Vec<String>),
    /// A grammar in llguidance's Lark dialect.
    Lark(String),
}

impl Constraint {
    /// The grammar's size as the client wrote it.
    pub fn byte_len(&self) -> usize {
        match self {
            Constraint::JsonObject => 0,
            Constraint::JsonSchema(text) | Constraint::Regex(text) | Constraint::Lark(text) => text.len(),
            Constraint::Choice(choices) => choices.iter().map(|choice| choice.len() + 1).sum(),
        }
    }
}
