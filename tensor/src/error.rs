//! The one error type of this crate.
//!
//! Messages are short and carry no model or tensor name: callers prefix them with the context
//! they know ("input 'X' for model 'M': ...").

use tritium_proto::ErrorCode;

use crate::DataType;
use crate::shape::format_shape;

/// Why a shape, payload or typed contents field does not describe a valid tensor.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TensorError {
    /// A shape holds a dimension below zero (a request must give every dimension).
    #[error("shape has negative dimension {dim}")]
    NegativeDimension { dim: i64 },
    /// The element count (or byte size) of a shape does not fit in `usize` or `i64`.
    #[error("element count of shape {} overflows", format_shape(shape))]
    ShapeOverflow { shape: Vec<i64> },
    /// A fixed-size payload's length does not match its datatype and shape.
    #[error("expected {expected} bytes, got {actual}")]
    ByteSizeMismatch { expected: usize, actual: usize },
    /// A BYTES payload holds a different number of elements than its shape asks for.
    #[error("expected {expected} BYTES elements, got {actual}")]
    ElementCountMismatch { expected: usize, actual: usize },
    /// A BYTES payload ends inside the length prefix or the body of the element starting at `offset`.
    #[error("BYTES data truncated in the element starting at byte {offset}")]
    TruncatedBytes { offset: usize },
    /// A BYTES payload ends inside the 4-byte length prefix of the element starting at `offset`,
    /// `available` bytes of it there ([`Tensor::validate`](crate::Tensor::validate) tells this
    /// from a cut body, as Triton does).
    #[error("BYTES data ends {available} bytes into the 4-byte length prefix of the element starting at byte {offset}")]
    TruncatedBytesPrefix { offset: usize, available: usize },
    /// The tensor's datatype is not the one the caller asked for.
    #[error("expected datatype {expected}, got {actual}")]
    DatatypeMismatch { expected: DataType, actual: DataType },
    /// Typed contents arrived in a field that does not carry `datatype`.
    #[error("unexpected explicit tensor data in {field} for datatype {datatype}")]
    UnexpectedTypedField { field: &'static str, datatype: DataType },
    /// Typed contents arrived for FP16 or BF16, which can only be sent as raw contents.
    #[error("datatype {datatype} has no typed contents field, send it as raw contents")]
    NoTypedField { datatype: DataType },
    /// A BYTES element too long for its 4-byte length prefix.
    #[error("BYTES element of {len} bytes does not fit a 4-byte length prefix")]
    BytesElementTooLarge { len: usize },
}

impl TensorError {
    /// The protocol error class: every tensor error is the client's, so always `InvalidArg`.
    pub fn code(&self) -> ErrorCode {
        ErrorCode::InvalidArg
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_are_short_and_precise() {
        let cases = [
            (TensorError::NegativeDimension { dim: -1 }, "shape has negative dimension -1"),
            (TensorError::ShapeOverflow { shape: vec![i64::MAX, 2] }, "element count of shape [9223372036854775807,2] overflows"),
            (TensorError::ByteSizeMismatch { expected: 16, actual: 12 }, "expected 16 bytes, got 12"),
            (TensorError::ElementCountMismatch { expected: 2, actual: 3 }, "expected 2 BYTES elements, got 3"),
            (TensorError::TruncatedBytes { offset: 9 }, "BYTES data truncated in the element starting at byte 9"),
            (
                TensorError::TruncatedBytesPrefix { offset: 9, available: 2 },
                "BYTES data ends 2 bytes into the 4-byte length prefix of the element starting at byte 9",
            ),
            (
                TensorError::DatatypeMismatch { expected: DataType::Fp32, actual: DataType::Int32 },
                "expected datatype FP32, got INT32",
            ),
            (
                TensorError::UnexpectedTypedField { field: "int_contents", datatype: DataType::Fp32 },
                "unexpected explicit tensor data in int_contents for datatype FP32",
            ),
            (
                TensorError::NoTypedField { datatype: DataType::Fp16 },
                "datatype FP16 has no typed contents field, send it as raw contents",
            ),
            (
                TensorError::BytesElementTooLarge { len: 1 << 32 },
                "BYTES element of 4294967296 bytes does not fit a 4-byte length prefix",
            ),
        ];
        for (error, message) in cases {
            assert_eq!(error.to_string(), message);
            assert_eq!(error.code(), ErrorCode::InvalidArg);
        }
    }
}
