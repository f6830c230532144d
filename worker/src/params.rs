//! Triton's reserved request parameters, checked once for every transport.

use tritium_backend_api::request::{ParamValue, Parameters};

/// What the reserved parameters of a request ask for.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RequestOptions {
    pub sequence_id: Option<SequenceId>,
    pub sequence_start: bool,
    pub sequence_end: bool,
    pub priority: u64,
    pub timeout_us: Option<i64>,
    /// `triton_enable_empty_final_response`: send an empty final response on streams.
    pub enable_empty_final_response: bool,
}

/// A sequence's correlation id: a number (Triton's uint64; an int64 parameter is read as its
/// bits) or a string.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum SequenceId {
    Number(u64),
    Text(String),
}

impl std::fmt::Display for SequenceId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SequenceId::Number(n) => write!(f, "{n}"),
            SequenceId::Text(s) => f.write_str(s),
        }
    }
}

/// Validates reserved keys and value types; returns the parsed options or the reason a client
/// sees (without the request-id prefix).
pub fn parse_request_options(model: &str, parameters: &Parameters) -> Result<RequestOptions, String> {
    let mut options = RequestOptions::default();
    for (key, value) in parameters {
        match (key.as_str(), value) {
            ("sequence_id", ParamValue::Int64(0)) => {}
            ("sequence_id", ParamValue::Int64(n)) => options.sequence_id = Some(SequenceId::Number(*n as u64)),
            ("sequence_id", ParamValue::String(s)) if s.is_empty() => {}
            ("sequence_id", ParamValue::String(s)) => options.sequence_id = Some(SequenceId::Text(s.clone())),
            ("sequence_id", other) => {
                return Err(format!(
                    "invalid value type for 'sequence_id' parameter for model '{model}', expected int64_param or string_param, got {}",
                    other.kind()
                ));
            }
            ("sequence_start", ParamValue::Bool(b)) => options.sequence_start = *b,
            ("sequence_end", ParamValue::Bool(b)) => options.sequence_end = *b,
            ("sequence_start" | "sequence_end", other) => {
                return Err(format!(
                    "invalid value type for '{key}' parameter for model '{model}', expected bool_param, got {}",
                    other.kind()
                ));
            }
            ("priority", ParamValue::Uint64(p)) => options.priority = *p,
            ("priority", ParamValue::Int64(p)) if *p >= 0 => options.priority = *p as u64,
            ("priority", ParamValue::Int64(p)) => {
                return Err(format!("invalid value {p} for 'priority' parameter for model '{model}', expected a value >= 0"));
            }
            ("priority", other) => {
                return Err(format!(
                    "invalid value type for 'priority' parameter for model '{model}', expected int64_param or uint64_param, got {}",
                    other.kind()
                ));
            }
            ("timeout", ParamValue::Int64(t)) => options.timeout_us = Some(*t),
            ("timeout", other) => {
                return Err(format!(
                    "invalid value type for 'timeout' parameter for model '{model}', expected int64_param, got {}",
                    other.kind()
                ));
            }
            // Forwarded headers and the HTTP binary-output switch are accepted and have no
            // meaning over gRPC.
            ("headers" | "binary_data_output", _) => {}
            ("triton_enable_empty_final_response", ParamValue::Bool(b)) => options.enable_empty_final_response = *b,
            ("triton_enable_empty_final_response", other) => {
                return Err(format!(
                    "invalid value type for 'triton_enable_empty_final_response' parameter for model '{model}', expected bool_param, got {}",
                    other.kind()
                ));
            }
            (k, _) if k.starts_with("triton_") => {
                return Err(format!(
                    "parameter keys starting with 'triton_' are reserved for Triton usage and should not be specified, got '{k}' for model '{model}'"
                ));
            }
            (k, ParamValue::Uint64(_)) => {
                return Err(format!(
                    "invalid value type for parameter '{k}' for model '{model}': uint64_param is not supported for custom parameters"
                ));
            }
            _ => {}
        }
    }
    Ok(options)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(items: &[(&str, ParamValue)]) -> Parameters {
        items.iter().map(|(k, v)| (k.to_string(), v.clone())).collect()
    }

    #[test]
    fn accepts_what_clients_send() {
        let p = params(&[
            ("triton_enable_empty_final_response", ParamValue::Bool(true)),
            ("priority", ParamValue::Uint64(2)),
            ("sequence_id", ParamValue::String("abc".into())),
            ("custom", ParamValue::Double(1.5)),
            ("headers", ParamValue::String("x".into())),
        ]);
        let options = parse_request_options("m", &p).expect("valid");
        assert!(options.enable_empty_final_response);
        assert_eq!(options.priority, 2);
        assert_eq!(options.sequence_id, Some(SequenceId::Text("abc".into())));
    }

    #[test]
    fn rejects_reserved_and_mistyped() {
        for bad in [
            params(&[("triton_foo", ParamValue::Bool(true))]),
            params(&[("sequence_id", ParamValue::Bool(true))]),
            params(&[("sequence_start", ParamValue::Int64(1))]),
            params(&[("priority", ParamValue::Int64(-1))]),
            params(&[("priority", ParamValue::String("high".into()))]),
            params(&[("timeout", ParamValue::Double(1.0))]),
            params(&[("mine", ParamValue::Uint64(1))]),
        ] {
            let err = parse_request_options("m", &bad).expect_err("must be rejected");
            assert!(err.contains("'m'"), "{err}");
        }
    }
}
