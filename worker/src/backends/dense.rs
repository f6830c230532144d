//! `dense`: one fully connected layer, `OUTPUT0 = INPUT0 · W` (FP32, `[batch, k]` to
//! `[batch, n]`), with fixed weights `W[i][j] = ((7i + 13j) mod 17 - 8) / 64`, so a client can
//! check any answer. `k` and `n` are the config's input and output dims.
//!
//! The product is candle's CPU matmul (the `gemm` crate's packed kernels, vectorized for the CPU
//! it runs on). With one row a call is bound by reading `W`; a batch of many rows reads it once
//! and costs little more, as in a language model's decode step. That makes it the built-in model
//! that shows what the dynamic batcher gains.

use std::sync::Arc;

use async_trait::async_trait;
use candle_core::{Device, Tensor as Matrix};
use tritium_proto::ErrorCode;
use tritium_tensor::{DataType, Tensor};

use crate::backend::{Backend, BackendContext, BackendError, BackendRequest, Responder};

/// Weights one layer may hold (the built-in model's 2048 x 2048 is 16 MiB).
const MAX_WEIGHTS: usize = 64 << 20;

#[derive(Debug)]
pub struct Dense {
    input: String,
    output: String,
    k: usize,
    n: usize,
    /// `[k, n]`.
    weights: Matrix,
}

/// The weight at row `i`, column `j`.
pub fn weight(i: usize, j: usize) -> f32 {
    ((7 * i + 13 * j) % 17) as f32 / 64.0 - 8.0 / 64.0
}

impl Dense {
    pub fn from_context(context: &BackendContext<'_>) -> Result<Arc<dyn Backend>, String> {
        let config = context.config;
        let ([input], [output]) = (config.input.as_slice(), config.output.as_slice()) else {
            return Err("the dense backend needs one input and one output".to_string());
        };
        let fp32 = |t: i32| DataType::from_config(t) == Some(DataType::Fp32);
        let [k] = input.dims.as_slice() else { return Err("the dense backend's input must have one fixed dim".to_string()) };
        let [n] = output.dims.as_slice() else { return Err("the dense backend's output must have one fixed dim".to_string()) };
        let (Ok(k), Ok(n)) = (usize::try_from(*k), usize::try_from(*n)) else {
            return Err("the dense backend's dims must be fixed".to_string());
        };
        if !fp32(input.data_type) || !fp32(output.data_type) {
            return Err("the dense backend works on TYPE_FP32".to_string());
        }
        if k.checked_mul(n).is_none_or(|size| size > MAX_WEIGHTS) {
            return Err(format!("the dense backend holds at most {MAX_WEIGHTS} weights"));
        }
        let weights: Vec<f32> = (0..k).flat_map(|i| (0..n).map(move |j| weight(i, j))).collect();
        let weights = Matrix::from_vec(weights, (k, n), &Device::Cpu).map_err(|e| e.to_string())?;
        Ok(Arc::new(Dense { input: input.name.clone(), output: output.name.clone(), k, n, weights }))
    }
}

/// `x · W` for the `rows` rows of `x`.
fn multiply(x: Vec<f32>, rows: usize, weights: &Matrix) -> candle_core::Result<Vec<f32>> {
    let (k, _) = weights.dims2()?;
    Matrix::from_vec(x, (rows, k), &Device::Cpu)?.matmul(weights)?.flatten_all()?.to_vec1()
}

#[async_trait]
impl Backend for Dense {
    async fn execute(&self, request: BackendRequest, responder: &mut Responder) -> Result<(), BackendError> {
        let input = request.input(&self.input)?;
        let x = input.to_vec::<f32>()?;
        let rows = x.len() / self.k;
        if x.len() != rows * self.k {
            let message = format!("'{}' must have {} values per row", self.input, self.k);
            return Err(BackendError::failed(ErrorCode::InvalidArg, message));
        }
        let weights = self.weights.clone();
        let failed = |e: String| BackendError::failed(ErrorCode::Internal, format!("the dense layer failed: {e}"));
        let y = tokio::task::spawn_blocking(move || multiply(x, rows, &weights))
            .await
            .map_err(|e| failed(e.to_string()))?
            .map_err(|e| failed(e.to_string()))?;
        let n = self.n;
        let mut shape = input.shape.clone();
        if let Some(last) = shape.last_mut() {
            *last = i64::try_from(n).unwrap_or(i64::MAX);
        }
        responder.send(vec![Tensor::from_slice(self.output.clone(), shape, &y)]).await
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn rows_are_multiplied_independently() {
        let (k, n) = (3, 2);
        let weights: Vec<f32> = (0..k).flat_map(|i| (0..n).map(move |j| weight(i, j))).collect();
        let weights = Matrix::from_vec(weights, (k, n), &Device::Cpu).unwrap();
        let x = [1.0, 2.0, 3.0, 0.0, -1.0, 0.5];
        let y = multiply(x.to_vec(), 2, &weights).unwrap();
        for r in 0..2 {
            for j in 0..n {
                let expected: f32 = (0..k).map(|i| x[r * k + i] * weight(i, j)).sum();
                assert!((y[r * n + j] - expected).abs() < 1e-6, "row {r} col {j}");
            }
        }
    }
}
