//! Tritium's CPU compute kernels, for the LLM engine's decode step.
//!
//! A decode step multiplies a few activation rows (one per running sequence) by every weight
//! matrix of the model. With GGML's Q8_0 blocks (32 weights, one f16 scale) on both sides, the
//! cost is the integer dot products; candle's CPU path makes one dot product per (activation row,
//! weight row) with a single accumulator, so a step of 8 rows costs 8 steps of one. Here the
//! weights are repacked at load into tiles of 8 rows whose values interleave, and a
//! register-tiled kernel uses each weight load for 8 output columns and up to 4 activation rows,
//! so rows that share a step are much cheaper than rows that do not. The integer part is the
//! standard AVX2 trick (`sign` + `maddubs` + `madd`), selected at run time; other CPUs get a
//! portable kernel with exactly the same integer sums and roundings.
//!
//! Also here: a dense f32 product with the same guarantee ([`F32Matrix`]), causal attention over a KV cache ([`causal_attention`]), batch-invariant (a row's
//! result does not depend on the rows computed with it), and the thread pool the products split
//! over ([`ThreadPool`]).
//!
//! ```
//! use tritium_kernels::{Q8_0Matrix, Q8_0Rows, ThreadPool};
//!
//! // A 3 x 64 weight matrix and 2 activation rows of 64.
//! let weights: Vec<f32> = (0..3 * 64).map(|i| ((i * 7) % 13) as f32 - 6.0).collect();
//! let x: Vec<f32> = (0..2 * 64).map(|i| ((i * 5) % 11) as f32 * 0.25).collect();
//! let w = Q8_0Matrix::quantize(&weights, 3, 64)?;
//! let a = Q8_0Rows::quantize(&x, 2, 64)?;
//! let mut out = vec![0.0; 2 * 3];
//! w.matmul(&a, &mut out, ThreadPool::global())?;
//! let exact: f32 = (0..64).map(|k| weights[k] * x[k]).sum();
//! assert!((out[0] - exact).abs() < 0.02 * exact.abs());
//! # Ok::<(), tritium_kernels::ShapeError>(())
//! ```

mod attention;
mod attention_layout;
mod attention_rows;
#[cfg(target_arch = "x86_64")]
mod avx2;
mod dense;
mod matmul;
mod operands;
mod packed;
mod parallel;
mod pool;
mod quantize;
mod scalar;
#[cfg(test)]
mod tests;
#[cfg(test)]
mod tests_attention;
#[cfg(test)]
mod tests_invariance;
#[cfg(test)]
mod tests_pool;

pub use attention::{causal_attention, paged_causal_attention};
pub use attention_layout::{AttentionDims, Heads, PagedHeads};
pub use dense::F32Matrix;
pub use matmul::{Q8_0Matrix, matmul_q8_0};
pub use parallel::{Parallel, ScopedThreads, Serial};
pub use pool::ThreadPool;
pub use quantize::{Q8_0Rows, quantize_rows_q8_0};

/// Values per Q8_0 block.
pub const QK8_0: usize = 32;

/// GGML's Q8_0 block, byte for byte (34 bytes): an f16 scale (its bits) and 32 signed 8-bit
/// values; value `i` is `qs[i] * d`.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BlockQ8_0 {
    pub d: u16,
    pub qs: [i8; QK8_0],
}

const _: () = assert!(std::mem::size_of::<BlockQ8_0>() == 34);

impl BlockQ8_0 {
    /// The block's scale as f32.
    pub fn scale(&self) -> f32 {
        half::f16::from_bits(self.d).to_f32()
    }

    /// Reads GGML's little-endian encoding: 34 bytes per block, as in a GGUF file or candle's
    /// `QTensor::data()`.
    pub fn from_bytes(bytes: &[u8]) -> Result<Vec<BlockQ8_0>, ShapeError> {
        if !bytes.len().is_multiple_of(34) {
            let (what, actual) = ("Q8_0 bytes (34 per block)", bytes.len());
            return Err(ShapeError::Length { what, expected: actual / 34 * 34, actual });
        }
        Ok(bytes
            .chunks_exact(34)
            .map(|b| {
                let mut qs = [0i8; QK8_0];
                for (q, &byte) in qs.iter_mut().zip(&b[2..]) {
                    *q = byte as i8;
                }
                BlockQ8_0 { d: u16::from_le_bytes([b[0], b[1]]), qs }
            })
            .collect())
    }
}

/// Shapes that do not fit together.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ShapeError {
    /// Rows must be made of whole blocks.
    NotBlockAligned { cols: usize },
    /// A buffer of the wrong size.
    Length { what: &'static str, expected: usize, actual: usize },
    /// The inner dimensions of a product differ.
    Mismatch { weight_cols: usize, activation_cols: usize },
    /// An activation value of -128: the AVX2 kernel's sign trick needs |q| <= 127, which
    /// GGML's quantizer (and ours) always gives.
    ActivationOutOfRange,
}

impl std::fmt::Display for ShapeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ShapeError::NotBlockAligned { cols } => write!(f, "{cols} columns is not a multiple of the block size {QK8_0}"),
            ShapeError::Length { what, expected, actual } => write!(f, "{what}: expected {expected} elements, got {actual}"),
            ShapeError::Mismatch { weight_cols, activation_cols } => {
                write!(f, "weights have {weight_cols} columns but activations have {activation_cols}")
            }
            ShapeError::ActivationOutOfRange => write!(f, "a Q8_0 activation value is -128 (expected -127..=127)"),
        }
    }
}

impl std::error::Error for ShapeError {}

pub(crate) fn check_len(what: &'static str, expected: usize, actual: usize) -> Result<(), ShapeError> {
    if expected == actual { Ok(()) } else { Err(ShapeError::Length { what, expected, actual }) }
}

pub(crate) fn blocks_per_row(cols: usize) -> Result<usize, ShapeError> {
    if cols.is_multiple_of(QK8_0) { Ok(cols / QK8_0) } else { Err(ShapeError::NotBlockAligned { cols }) }
}
