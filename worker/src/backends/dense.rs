//! `dense`: one fully connected layer, `OUTPUT0 = INPUT0 · W` (FP32, `[batch, k]` to
//! `[batch, n]`), with fixed weights `W[i][j] = ((7i + 13j) mod 17 - 8) / 64`, so a client can
//! check any answer. `k` and `n` are the config's input and output dims.
//!
//! A batch's product is the `gemm` crate's packed kernels, vectorized for the CPU it runs on (what
//! candle's CPU matmul calls). One row is a matrix-vector product, which the `gemm` crate serves poorly
//! (it packs `W` first: 3.3 ms a row here), so it is our own loop that streams `W` once, its
//! columns split over rayon's pool (1.7 ms; numpy's OpenBLAS AVX2 kernel: 1.1 ms).
//!
//! The built-in model is 4096 x 4096: its 64 MiB of weights do not fit a CPU's last-level cache,
//! so one row costs a read of `W` from memory, and a batch of many rows reads it once and costs
//! little more, as in a language model's decode step. (At 2048 x 2048 the 16 MiB stayed in a
//! 32 MiB L3 and one row was already compute-bound: batching gained 1.1-1.3x.)
//! That makes it the built-in model that shows what the dynamic batcher gains.

use std::sync::Arc;

use async_trait::async_trait;
use rayon::prelude::*;
use tritium_proto::ErrorCode;
use tritium_tensor::{DataType, Tensor};

use crate::scheduler_limits::instance_count;
use tritium_backend_api::{Backend, BackendContext, BackendError, BackendRequest, Engine, Responder};

/// Weights one layer may hold (the built-in model's 4096 x 4096 is 64 MiB).
const MAX_WEIGHTS: usize = 64 << 20;

#[derive(Debug)]
pub struct Dense {
    input: String,
    output: String,
    k: usize,
    n: usize,
    /// `[k, n]`.
    /// `W` as `k` rows of `n`.
    weights: Arc<[f32]>,
    /// One permit per instance of the config's `instance_group`: at most that many products run
    /// at once (each already spreads over every core), the rest wait their turn in order.
    instances: tokio::sync::Semaphore,
}

/// The weight at row `i`, column `j`.
pub fn weight(i: usize, j: usize) -> f32 {
    ((7 * i + 13 * j) % 17) as f32 / 64.0 - 8.0 / 64.0
}

impl Dense {
    pub fn from_context(context: &BackendContext<'_>) -> Result<Engine, String> {
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
        let weights: Arc<[f32]> = weights(k, n).into();
        let instances = tokio::sync::Semaphore::new(instance_count(config));
        Ok(Engine::tensors(Dense { input: input.name.clone(), output: output.name.clone(), k, n, weights, instances }))
    }
}

/// `W` as `k` rows of `n`. Each row repeats with a period of 17 columns, so it is written as 17
/// values and copied on: quick to build even in an unoptimized test build.
fn weights(k: usize, n: usize) -> Vec<f32> {
    let mut all = Vec::with_capacity(k * n);
    for i in 0..k {
        let row = all.len();
        all.extend((0..n.min(17)).map(|j| weight(i, j)));
        while all.len() - row < n {
            let take = (all.len() - row).min(n - (all.len() - row));
            all.extend_from_within(row..row + take);
        }
    }
    all
}

/// `x · W` for the `rows` rows of `x`.
fn multiply(x: &[f32], rows: usize, weights: &[f32], k: usize, n: usize) -> Vec<f32> {
    assert!(x.len() == rows * k && weights.len() == k * n, "x is rows x k and W is k x n");
    if rows == 1 {
        return multiply_row(x, weights, n);
    }
    let mut y = vec![0f32; rows * n];
    let threads = rayon::current_num_threads();
    let parallelism = if threads > 1 { gemm::Parallelism::Rayon(threads) } else { gemm::Parallelism::None };
    let stride = |columns: usize| isize::try_from(columns).unwrap_or(isize::MAX);
    // SAFETY: y is rows x n, x rows x k and W k x n, all row-major and contiguous (checked above),
    // so every offset gemm derives from these sizes and strides lies inside its slice; y is
    // written (read_dst false) and the inputs only read.
    unsafe {
        gemm::gemm(
            rows,
            n,
            k,
            y.as_mut_ptr(),
            1,
            stride(n),
            false,
            x.as_ptr(),
            1,
            stride(k),
            weights.as_ptr(),
            1,
            stride(n),
            0.0,
            1.0,
            false,
            false,
            false,
            parallelism,
        );
    }
    y
}

/// `x · W` for one row `x` and `W` as rows of `n`: each task of rayon's pool owns a span of
/// columns and adds eight rows of `W` at a time into it, so its part of `W` is read once, in
/// order, and its span of `y` is loaded and stored once per eight rows (once per row made this
/// loop store-bound: 4.5 ms a row against 1.7 ms).
fn multiply_row(x: &[f32], weights: &[f32], n: usize) -> Vec<f32> {
    const MIN_SPAN: usize = 256;
    const ROWS: usize = 8;
    let mut y = vec![0f32; n];
    let span = n.div_ceil(rayon::current_num_threads()).max(MIN_SPAN);
    y.par_chunks_mut(span).enumerate().for_each(|(chunk, out)| {
        let columns = chunk * span..chunk * span + out.len();
        let rows: Vec<&[f32]> = weights.chunks_exact(n).map(|row| &row[columns.clone()]).collect();
        for (block, xs) in rows.chunks(ROWS).zip(x.chunks(ROWS)) {
            match (<&[&[f32]; ROWS]>::try_from(block), <&[f32; ROWS]>::try_from(xs)) {
                (Ok(block), Ok(xs)) => add_eight_rows(out, block, xs),
                _ => {
                    for (row, xi) in block.iter().zip(xs) {
                        for (o, w) in out.iter_mut().zip(row.iter()) {
                            *o += xi * w;
                        }
                    }
                }
            }
        }
    });
    y
}

/// `out += Σ xs[r] · rows[r]` over eight rows, each at least `out.len()` long.
fn add_eight_rows(out: &mut [f32], rows: &[&[f32]; 8], xs: &[f32; 8]) {
    let n = out.len();
    let [r0, r1, r2, r3, r4, r5, r6, r7] = rows.map(|row| &row[..n]);
    for j in 0..n {
        out[j] += xs[0] * r0[j]
            + xs[1] * r1[j]
            + xs[2] * r2[j]
            + xs[3] * r3[j]
            + xs[4] * r4[j]
            + xs[5] * r5[j]
            + xs[6] * r6[j]
            + xs[7] * r7[j];
    }
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
        let weights = Arc::clone(&self.weights);
        let (k, n) = (self.k, self.n);
        let failed = |e: String| BackendError::failed(ErrorCode::Internal, format!("the dense layer failed: {e}"));
        let _instance = self.instances.acquire().await.map_err(|e| failed(e.to_string()))?;
        let y =
            tokio::task::spawn_blocking(move || multiply(&x, rows, &weights, k, n)).await.map_err(|e| failed(e.to_string()))?;
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
    fn the_weights_are_the_formula_at_every_size() {
        for (k, n) in [(1, 1), (3, 2), (5, 17), (4, 18), (3, 100), (2, 4096)] {
            let expected: Vec<f32> = (0..k).flat_map(|i| (0..n).map(move |j| weight(i, j))).collect();
            assert_eq!(weights(k, n), expected, "{k} x {n}");
        }
    }

    #[test]
    fn one_row_is_the_same_product() {
        for (k, n) in [(3, 2), (5, 300), (7, 1000), (8, 17), (21, 600)] {
            let weights = weights(k, n);
            let x: Vec<f32> = (0..k).map(|i| i as f32 / 8.0 - 0.5).collect();
            let y = multiply(&x, 1, &weights, k, n);
            let expected: Vec<f32> = (0..n).map(|j| (0..k).map(|i| x[i] * weight(i, j)).sum()).collect();
            assert_eq!(y, expected, "{k} x {n}: multiples of 1/512, exact in any order");
        }
    }

    #[test]
    fn rows_are_multiplied_independently() {
        let (k, n) = (3, 2);
        let weights = weights(k, n);
        let x = [1.0, 2.0, 3.0, 0.0, -1.0, 0.5];
        let y = multiply(&x, 2, &weights, k, n);
        for r in 0..2 {
            for j in 0..n {
                let expected: f32 = (0..k).map(|i| x[r * k + i] * weight(i, j)).sum();
                assert!((y[r * n + j] - expected).abs() < 1e-6, "row {r} col {j}");
            }
        }
    }
}
