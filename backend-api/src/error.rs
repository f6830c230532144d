//! The worker's errors, one structured variant per failure a client or model can cause.
//!
//! `Display` gives Triton's client-visible text (clients match on prefixes such as
//! `Request for unknown model`); [`WorkerError::code`] gives the class.

use tritium_proto::ErrorCode;
use tritium_tensor::{DataType, TensorError};

use tritium_repository::RepositoryError;

use crate::llm::GenerateError;

#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    #[error("input '{name}' is missing")]
    MissingInput { name: String },
    #[error("{0}")]
    Tensor(#[from] TensorError),
    #[error("a model that is not decoupled sent more than one response")]
    ExtraResponse,
    #[error("the model sent no response")]
    NoResponse,
    #[error("the request was cancelled")]
    Cancelled,
    #[error("{message}")]
    Failed { code: ErrorCode, message: String },
    /// An error whose message is whole as it is, not prefixed with the model: a scheduler's
    /// refusal before any backend ran (a timeout in the queue, a sequence's rules), worded as
    /// Triton words it, or an ensemble step's error, which names the ensemble itself.
    #[error("{message}")]
    Refused { code: ErrorCode, message: String },
    /// The model ran the request and answered it with this error, whole as it is (Triton's python
    /// backend's `TritonError` responses): the request counts as executed and successful in the
    /// statistics, as it got its response.
    #[error("{message}")]
    Answered { code: ErrorCode, message: String },
    /// The scheduler's queue is full (UNAVAILABLE).
    #[error("Exceeds maximum queue size")]
    QueueFull,
}

impl BackendError {
    pub fn code(&self) -> ErrorCode {
        match self {
            BackendError::MissingInput { .. } | BackendError::Tensor(_) => ErrorCode::InvalidArg,
            BackendError::ExtraResponse | BackendError::NoResponse => ErrorCode::Internal,
            BackendError::Cancelled => ErrorCode::Cancelled,
            BackendError::Failed { code, .. } | BackendError::Refused { code, .. } | BackendError::Answered { code, .. } => *code,
            BackendError::QueueFull => ErrorCode::Unavailable,
        }
    }

    pub fn failed(code: ErrorCode, message: impl Into<String>) -> BackendError {
        BackendError::Failed { code, message: message.into() }
    }

    pub fn refused(code: ErrorCode, message: impl Into<String>) -> BackendError {
        BackendError::Refused { code, message: message.into() }
    }
}

/// What a request to the core can fail with: the model's or version's state, the request's
/// fit, a backend's or an engine's failure, the repository's, a remote worker's.
#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    #[error("Request for unknown model: '{name}' is not found")]
    ModelNotFound { name: String },
    #[error("Request for unknown model: '{name}' version {version} is not found")]
    VersionNotFound { name: String, version: i64 },
    #[error("Request for unknown model: '{name}' has no available versions")]
    NoAvailableVersions { name: String },
    #[error("Request for unknown model: '{name}' version {version} is not at ready state")]
    VersionNotReady { name: String, version: i64 },
    #[error("failed to get model version from specified version string '{version}', version should be an integral value >= 0")]
    InvalidVersion { version: String },
    #[error("ModelInfer RPC doesn't support models with decoupled transaction policy")]
    DecoupledUnary { model: String },
    /// A request that does not fit the model's inputs, outputs or parameters; `reason` is the
    /// full Triton-style sentence naming the model and the tensor or parameter.
    #[error("{} {reason}", RequestId(id))]
    InvalidRequest { id: String, reason: String },
    #[error("model '{model}' version {version}: {source}")]
    Backend { model: String, version: i64, source: BackendError },
    #[error("failed to load '{name}', {reason}")]
    LoadFailed { name: String, reason: String },
    #[error("{0}")]
    Repository(#[from] RepositoryError),
    #[error("explicit model load / unload is not allowed if polling is enabled")]
    ModelControlDisabled,
    #[error("the model '{model}' is not a language model")]
    NotLanguageModel { model: String },
    #[error("the model '{model}' is not an embedding model")]
    NotEmbeddingModel { model: String },
    /// A failure with its class given, e.g. by the frontend's bridge or a remote worker.
    #[error("{message}")]
    Failed { code: ErrorCode, message: String },
    /// A language or embedding model refused or failed a request.
    #[error("{source}")]
    Generate { model: String, source: GenerateError },
    /// A remote worker could not be reached, or its connection broke before it answered: the
    /// request may not have run (or, for a stateless one, may safely run again elsewhere).
    #[error("worker '{worker}' is unreachable: {message}")]
    Unreachable { worker: String, message: String },
    /// A remote worker refused the call before starting it (it is draining): another worker may
    /// run it. `message` is the worker's.
    #[error("{message}")]
    NotStarted { worker: String, message: String },
}

impl WorkerError {
    pub fn code(&self) -> ErrorCode {
        match self {
            WorkerError::ModelNotFound { .. } | WorkerError::VersionNotFound { .. } | WorkerError::NoAvailableVersions { .. } => {
                ErrorCode::NotFound
            }
            WorkerError::VersionNotReady { .. } | WorkerError::ModelControlDisabled => ErrorCode::Unavailable,
            WorkerError::InvalidVersion { .. } | WorkerError::InvalidRequest { .. } => ErrorCode::InvalidArg,
            WorkerError::DecoupledUnary { .. } => ErrorCode::Unsupported,
            WorkerError::Backend { source, .. } => source.code(),
            WorkerError::LoadFailed { .. } => ErrorCode::Internal,
            WorkerError::Repository(e) => e.code(),
            WorkerError::NotLanguageModel { .. } | WorkerError::NotEmbeddingModel { .. } => ErrorCode::Unsupported,
            WorkerError::Generate { source, .. } => source.code(),
            WorkerError::Failed { code, .. } => *code,
            WorkerError::Unreachable { .. } | WorkerError::NotStarted { .. } => ErrorCode::Unavailable,
        }
    }

    pub fn invalid(id: &str, reason: impl Into<String>) -> WorkerError {
        WorkerError::InvalidRequest { id: id.to_string(), reason: reason.into() }
    }
}

/// Triton's prefix of a request's error message: `[request id: <id>]`, `<id_unknown>` when the
/// client gave none. Every message that names the request is written through it.
#[derive(Debug, Clone, Copy)]
pub struct RequestId<'a>(pub &'a str);

impl std::fmt::Display for RequestId<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let id = if self.0.is_empty() { "<id_unknown>" } else { self.0 };
        write!(f, "[request id: {id}]")
    }
}

/// Formats a shape like Triton: `[-1,16]`.
pub fn shape_text(shape: &[i64]) -> String {
    let dims: Vec<String> = shape.iter().map(i64::to_string).collect();
    format!("[{}]", dims.join(","))
}

/// A tensor-level problem with an input, phrased with the model and input named.
pub fn tensor_reason(model: &str, input: &str, err: &TensorError) -> String {
    match err {
        TensorError::ByteSizeMismatch { expected, actual } => {
            format!("input byte size mismatch for input '{input}' for model '{model}'. Expected {expected}, got {actual}")
        }
        // Triton stops at the first element past the shape and names it.
        TensorError::ElementCountMismatch { expected, actual } if actual > expected => format!(
            "unexpected number of string elements {actual} for inference input '{input}' for model '{model}', expecting {expected}"
        ),
        TensorError::ElementCountMismatch { expected, actual } => {
            format!("expected {expected} string elements for inference input '{input}' for model '{model}', got {actual}")
        }
        TensorError::TruncatedBytesPrefix { available, .. } => format!(
            "incomplete string length indicator for inference input '{input}' for model '{model}', expecting 4 bytes but \
             only {available} bytes available. Please make sure the string length indicator is in one buffer."
        ),
        TensorError::NegativeDimension { .. } => {
            format!("All input dimensions should be specified for input '{input}' for model '{model}'")
        }
        other => format!("input '{input}' for model '{model}': {other}"),
    }
}

pub fn datatype_reason(model: &str, input: &str, got: DataType, expected: DataType) -> String {
    format!("inference input '{input}' data-type is '{got}', but model '{model}' expects '{expected}'")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bytes_errors_are_worded_as_triton_words_them() {
        let reason = |err: TensorError| tensor_reason("m", "IN", &err);
        assert_eq!(
            reason(TensorError::ElementCountMismatch { expected: 3, actual: 2 }),
            "expected 3 string elements for inference input 'IN' for model 'm', got 2"
        );
        assert_eq!(
            reason(TensorError::ElementCountMismatch { expected: 1, actual: 2 }),
            "unexpected number of string elements 2 for inference input 'IN' for model 'm', expecting 1"
        );
        assert_eq!(
            reason(TensorError::TruncatedBytesPrefix { offset: 6, available: 3 }),
            "incomplete string length indicator for inference input 'IN' for model 'm', expecting 4 bytes but only 3 \
             bytes available. Please make sure the string length indicator is in one buffer."
        );
        assert_eq!(
            reason(TensorError::TruncatedBytes { offset: 0 }),
            "input 'IN' for model 'm': BYTES data truncated in the element starting at byte 0"
        );
    }
}
