//! Protocol-neutral requests and responses: what a transport hands the worker after decoding,
//! and what it gets back. Nothing here knows about gRPC or HTTP.

use std::sync::Arc;
use std::time::Instant;

use tritium_tensor::Tensor;

use crate::error::WorkerError;
use crate::trace::RequestTrace;

/// A request or tensor parameter value (KServe's `InferParameter` choices).
#[derive(Debug, Clone, PartialEq)]
pub enum ParamValue {
    Bool(bool),
    Int64(i64),
    String(String),
    Double(f64),
    Uint64(u64),
}

impl ParamValue {
    /// The KServe field name of this choice, for error messages.
    pub fn kind(&self) -> &'static str {
        match self {
            ParamValue::Bool(_) => "bool_param",
            ParamValue::Int64(_) => "int64_param",
            ParamValue::String(_) => "string_param",
            ParamValue::Double(_) => "double_param",
            ParamValue::Uint64(_) => "uint64_param",
        }
    }
}

/// Request parameters in arrival order; requests carry few, so a Vec beats a map.
pub type Parameters = Vec<(String, ParamValue)>;

/// One inference request, inputs already resolved to raw little-endian payloads.
#[derive(Debug, Clone)]
pub struct InferenceRequest {
    pub model_name: String,
    /// `None` asks for the latest ready version.
    pub model_version: Option<i64>,
    pub id: String,
    pub inputs: Vec<Tensor>,
    /// Output names to return, in the order asked; empty means every output of the model.
    pub requested_outputs: Vec<String>,
    pub parameters: Parameters,
    /// When the transport received the request; the queue statistic starts here.
    pub arrived: Instant,
    /// The request's trace when the sampler picked it; `None` (the common case) records nothing.
    pub trace: Option<RequestTrace>,
}

impl InferenceRequest {
    pub fn new(model_name: impl Into<String>, inputs: Vec<Tensor>) -> InferenceRequest {
        InferenceRequest {
            model_name: model_name.into(),
            model_version: None,
            id: String::new(),
            inputs,
            requested_outputs: Vec::new(),
            parameters: Vec::new(),
            arrived: Instant::now(),
            trace: None,
        }
    }
}

/// One response of a model: the single answer of a plain model, or one of the 0..n answers of a
/// decoupled one.
#[derive(Debug, Clone)]
pub struct InferenceResponse {
    pub model_name: Arc<str>,
    pub model_version: i64,
    pub id: String,
    pub outputs: Vec<Tensor>,
    /// True on the last response of the request.
    pub is_final: bool,
    /// Integer response parameters (a language model's `cached_tokens` on its last response).
    pub parameters: Vec<(String, i64)>,
}

/// Whether `key` is one of the request parameters Triton's core takes for itself (the sequence's,
/// the scheduler's, any `triton_` key), as opposed to those the model sees. `headers` and
/// `binary_data_output` are the model's too, as in Triton 2.51 (its HTTP door consumes
/// `binary_data_output` before the core; its gRPC door passes it on).
pub fn is_reserved(key: &str) -> bool {
    matches!(key, "sequence_id" | "sequence_start" | "sequence_end" | "priority" | "timeout") || key.starts_with("triton_")
}

/// Parses a KServe version string: `""` means the latest ready version.
pub fn parse_version(version: &str) -> Result<Option<i64>, WorkerError> {
    if version.is_empty() {
        return Ok(None);
    }
    match version.parse::<i64>() {
        Ok(v) if v >= 0 => Ok(Some(v)),
        _ => Err(WorkerError::InvalidVersion { version: version.to_string() }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_parse_like_triton() {
        assert_eq!(parse_version("").ok(), Some(None));
        assert_eq!(parse_version("3").ok(), Some(Some(3)));
        assert!(matches!(parse_version("-1"), Err(WorkerError::InvalidVersion { .. })));
        assert!(matches!(parse_version("abc"), Err(WorkerError::InvalidVersion { .. })));
        assert!(matches!(parse_version("99999999999999999999"), Err(WorkerError::InvalidVersion { .. })));
    }
}
