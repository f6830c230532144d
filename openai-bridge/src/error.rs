//! The bridge's errors, each with the [`ErrorCode`] that picks its gRPC status and HTTP status.

use tritium_backend_api::llm::GenerateError;
use tritium_proto::ErrorCode;

#[derive(Debug, Clone, thiserror::Error, PartialEq)]
pub enum BridgeError {
    /// A request field is missing, malformed or out of range; `field` names it.
    #[error("{field}: {reason}")]
    InvalidField { field: String, reason: String },
    /// The request body is not valid JSON, or not the expected shape.
    #[error("{0}")]
    InvalidBody(String),
    #[error("the model '{0}' does not exist")]
    ModelNotFound(String),
    /// The model exists but cannot do this (e.g. chat on an embedder).
    #[error("the model '{model}' does not support {what}")]
    Unsupported { model: String, what: String },
    #[error("tokenizer: {0}")]
    Tokenizer(String),
    #[error("chat template: {0}")]
    Template(String),
    #[error(transparent)]
    Generate(#[from] GenerateError),
    #[error("{0}")]
    Internal(String),
    /// The request is too large for the server to take on (HTTP 413).
    #[error("{0}")]
    TooLarge(String),
    /// The server's grace period for in-flight requests ended before this one did.
    #[error("the server is shutting down: its grace period for requests in flight has ended")]
    ShuttingDown,
    /// A bounded resource of the frontend is full (HTTP 429): the caller should retry later.
    #[error("{0}")]
    Busy(String),
}

impl BridgeError {
    pub fn field(field: impl Into<String>, reason: impl Into<String>) -> BridgeError {
        BridgeError::InvalidField { field: field.into(), reason: reason.into() }
    }

    pub fn code(&self) -> ErrorCode {
        match self {
            BridgeError::InvalidField { .. } | BridgeError::InvalidBody(_) | BridgeError::Template(_) => ErrorCode::InvalidArg,
            BridgeError::Tokenizer(_) => ErrorCode::InvalidArg,
            BridgeError::ModelNotFound(_) => ErrorCode::NotFound,
            BridgeError::Unsupported { .. } => ErrorCode::Unsupported,
            BridgeError::Generate(e) => e.code(),
            BridgeError::Internal(_) => ErrorCode::Internal,
            // gRPC has no status of its own for it; Triton answers too-large inputs so.
            BridgeError::TooLarge(_) => ErrorCode::InvalidArg,
            BridgeError::ShuttingDown => ErrorCode::Unavailable,
            BridgeError::Busy(_) => ErrorCode::ResourceExhausted,
        }
    }

    /// The HTTP status: its code's, except 413 for [`BridgeError::TooLarge`] (no code maps to it).
    pub fn http_status(&self) -> u16 {
        match self {
            BridgeError::TooLarge(_) => 413,
            _ => self.code().http_status(),
        }
    }
}
