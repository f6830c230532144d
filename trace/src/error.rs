//! The errors TraceSetting answers with, mapped once to the protocol's codes.

use tritium_proto::ErrorCode;

/// A TraceSetting request the tracer refuses; the server answers it with [`TraceError::code`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TraceError {
    #[error("{reason}")]
    InvalidArgument { reason: String },
    #[error("{what}")]
    Unsupported { what: String },
}

impl TraceError {
    pub fn code(&self) -> ErrorCode {
        match self {
            TraceError::InvalidArgument { .. } => ErrorCode::InvalidArg,
            TraceError::Unsupported { .. } => ErrorCode::Unsupported,
        }
    }
}
