//! The server's errors and their one mapping to gRPC status.

use tritium_proto::ErrorCode;
use tritium_worker::WorkerError;

use crate::shm::ShmError;

#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error(transparent)]
    Worker(#[from] WorkerError),
    #[error(transparent)]
    Shm(#[from] ShmError),
    #[error("{reason}")]
    InvalidArgument { reason: String },
    #[error("{reason}")]
    NotFound { reason: String },
    #[error("{what}")]
    Unsupported { what: String },
    #[error("{reason}")]
    Unavailable { reason: String },
    /// The request's API key may not use the model it names.
    #[error("{reason}")]
    PermissionDenied { reason: String },
    #[error("{0}")]
    Internal(String),
    #[error(transparent)]
    Bridge(#[from] tritium_openai_bridge::BridgeError),
    #[error(transparent)]
    Trace(#[from] tritium_trace::TraceError),
}

impl ServerError {
    pub fn code(&self) -> ErrorCode {
        match self {
            ServerError::Worker(e) => e.code(),
            ServerError::Shm(e) => e.code(),
            ServerError::InvalidArgument { .. } => ErrorCode::InvalidArg,
            ServerError::NotFound { .. } => ErrorCode::NotFound,
            ServerError::Unsupported { .. } => ErrorCode::Unsupported,
            ServerError::Unavailable { .. } => ErrorCode::Unavailable,
            ServerError::PermissionDenied { .. } => ErrorCode::PermissionDenied,
            ServerError::Internal(_) => ErrorCode::Internal,
            ServerError::Bridge(e) => e.code(),
            ServerError::Trace(e) => e.code(),
        }
    }

    /// A request the transport adapter rejects before it reaches a model; `reason` names the
    /// model and the tensor or parameter.
    pub(crate) fn invalid(id: &str, reason: impl Into<String>) -> ServerError {
        ServerError::Worker(WorkerError::invalid(id, reason))
    }
}

impl From<ServerError> for tonic::Status {
    fn from(error: ServerError) -> tonic::Status {
        error.code().status(error.to_string())
    }
}
