//! Tritium's tensors: the KServe v2 datatypes, overflow-checked shapes, zero-copy payloads, the
//! BYTES codec, typed `InferTensorContents` conversion and payload validation.
//!
//! Everything here is synchronous and transport-free, so the gRPC and HTTP front ends, the
//! router and the backends share one definition of what a valid tensor is. Payloads are
//! [`bytes::Bytes`] in the KServe raw layout (little-endian, row-major, BYTES elements with
//! 4-byte length prefixes), so a request buffer becomes a tensor without copying.
//!
//! ```
//! use tritium_tensor::{DataType, Tensor, TensorError};
//!
//! // A client's raw FP32 input: 2x2 little-endian floats.
//! let dt = DataType::from_kserve("FP32").expect("known datatype");
//! let raw: Vec<u8> = [1.0f32, 2.0, 3.0, 4.0].iter().flat_map(|v| v.to_le_bytes()).collect();
//! let input = Tensor::new("x", dt, vec![2, 2], raw.into());
//! input.validate()?;
//! assert_eq!(input.to_vec::<f32>()?, [1.0, 2.0, 3.0, 4.0]);
//!
//! // A payload that does not match its shape.
//! let short = Tensor::new("x", DataType::Fp32, vec![2, 2], input.data.slice(..12));
//! assert_eq!(short.validate().unwrap_err().to_string(), "expected 16 bytes, got 12");
//!
//! // BYTES outputs.
//! let out = Tensor::from_byte_strings("y", vec![2], ["hello", "world"]);
//! assert_eq!(out.byte_strings()?, [&b"hello"[..], &b"world"[..]]);
//! # Ok::<(), TensorError>(())
//! ```

pub mod bytes_codec;
pub mod contents;
mod datatype;
mod element;
mod error;
pub mod shape;
mod tensor;

#[cfg(test)]
mod proptests;

pub use bytes_codec::BytesIter;
pub use datatype::DataType;
pub use element::Element;
pub use error::TensorError;
pub use shape::{element_count, expected_byte_size, format_shape};
pub use tensor::Tensor;
