//! `out = activations x weights^T` for Q8_0 weights `[n_out, k]` and Q8_0 activations `[m, k]`:
//! the shapes checked once, the output columns split into chunks for the threads, each chunk
//! run by the AVX2 kernel when the CPU has it and by the portable one otherwise.

use std::ops::Range;

use crate::operands::{Operand, Output, Packed};
use crate::packed::{TILE, TileBlock, pack, unpack};
use crate::parallel::Parallel;
use crate::pool::ThreadPool;
use crate::quantize::Q8_0Rows;
use crate::{BlockQ8_0, ShapeError, blocks_per_row, check_len};

/// A weight matrix in Q8_0 (`[rows, cols]`, one row per output), held in the kernel's layout:
/// tiles of 8 rows with interleaved values and f32 scales (see `packed.rs`).
#[derive(Debug, Clone)]
pub struct Q8_0Matrix {
    rows: usize,
    cols: usize,
    tiles: Vec<TileBlock>,
}

impl Q8_0Matrix {
    /// `rows x cols` weights given as GGML Q8_0 blocks, `cols / 32` per row.
    pub fn new(blocks: Vec<BlockQ8_0>, rows: usize, cols: usize) -> Result<Q8_0Matrix, ShapeError> {
        Q8_0Matrix::from_blocks(&blocks, rows, cols)
    }

    /// As [`Q8_0Matrix::new`], from borrowed blocks.
    pub fn from_blocks(blocks: &[BlockQ8_0], rows: usize, cols: usize) -> Result<Q8_0Matrix, ShapeError> {
        let kb = blocks_per_row(cols)?;
        check_len("Q8_0 weight blocks", rows * kb, blocks.len())?;
        Ok(Q8_0Matrix { rows, cols, tiles: pack(blocks, rows, kb) })
    }

    /// Quantizes f32 weights (`rows x cols`, row-major).
    pub fn quantize(weights: &[f32], rows: usize, cols: usize) -> Result<Q8_0Matrix, ShapeError> {
        Q8_0Matrix::new(crate::quantize_rows_q8_0(weights, rows, cols)?, rows, cols)
    }

    pub fn rows(&self) -> usize {
        self.rows
    }

    pub fn cols(&self) -> usize {
        self.cols
    }

    /// The weights back in GGML's layout, row-major.
    pub fn to_blocks(&self) -> Vec<BlockQ8_0> {
        let kb = self.cols / crate::QK8_0;
        (0..self.rows).flat_map(|row| (0..kb).map(move |b| unpack(&self.tiles, kb, row, b))).collect()
    }

    /// `out[i * rows + j] = activations[i] . self[j]`: `out` is `[activations.rows(), self.rows()]`.
    pub fn matmul(&self, activations: &Q8_0Rows, out: &mut [f32], parallel: &dyn Parallel) -> Result<(), ShapeError> {
        if activations.cols != self.cols {
            return Err(ShapeError::Mismatch { weight_cols: self.cols, activation_cols: activations.cols });
        }
        check_len("output", activations.rows * self.rows, out.len())?;
        let w = self.view();
        let a = Operand { rows: activations.rows, kb: w.kb, blocks: &activations.blocks, scales: &activations.scales };
        run(&w, &a, out, parallel);
        Ok(())
    }

    fn view(&self) -> Packed<'_> {
        Packed { rows: self.rows, kb: self.cols / crate::QK8_0, tiles: &self.tiles }
    }
}

/// `out = activations x weights^T` on GGML blocks: `weights` is `n_out x k` and `activations`
/// is `m x k` (both `k / 32` blocks per row, row-major), `out` is `m x n_out`. Spreads large
/// products over the machine's cores ([`ThreadPool::global`](crate::ThreadPool::global)). The
/// weights are repacked on every call: for repeated products keep a [`Q8_0Matrix`].
pub fn matmul_q8_0(
    weights: &[BlockQ8_0],
    activations: &[BlockQ8_0],
    m: usize,
    n_out: usize,
    k: usize,
    out: &mut [f32],
) -> Result<(), ShapeError> {
    let matrix = Q8_0Matrix::from_blocks(weights, n_out, k)?;
    let activations = Q8_0Rows::from_blocks(activations.to_vec(), m, k)?;
    matrix.matmul(&activations, out, ThreadPool::global())
}

/// Chunks per thread: enough to even out threads that run slower (shared cores).
const CHUNKS_PER_THREAD: usize = 4;

fn run(w: &Packed<'_>, a: &Operand<'_>, out: &mut [f32], parallel: &dyn Parallel) {
    let (m, n) = (a.rows, w.rows);
    if m == 0 || n == 0 {
        return;
    }
    let output = Output::new(out, n);
    let tiles = n.div_ceil(TILE);
    let work = m * n * w.kb;
    let threads = parallel.threads().min(work / parallel.min_work_per_thread().max(1)).max(1);
    if threads == 1 {
        // SAFETY: one task owns every column.
        return unsafe { compute(w, a, 0..tiles, &output) };
    }
    let chunk = tiles.div_ceil(threads * CHUNKS_PER_THREAD);
    let tasks = tiles.div_ceil(chunk);
    // SAFETY: task t owns the columns of tiles t * chunk..(t + 1) * chunk, disjoint from every
    // other task's; `for_each` runs each task once and returns only when all have returned,
    // while `out` is still borrowed here.
    parallel.for_each(tasks, &|t| unsafe { compute(w, a, t * chunk..tiles.min((t + 1) * chunk), &output) });
}

/// All activation rows against the weight rows of `tiles`.
///
/// # Safety
/// The caller must own the columns of `tiles` in `out` (see [`Output::set_run`]).
unsafe fn compute(w: &Packed<'_>, a: &Operand<'_>, tiles: Range<usize>, out: &Output) {
    #[cfg(target_arch = "x86_64")]
    if crate::avx2::available() {
        // SAFETY: AVX2 and FMA were just detected; the columns are the caller's.
        return unsafe { crate::avx2::compute(w, a, tiles, out) };
    }
    // SAFETY: the columns are the caller's.
    unsafe { crate::scalar::compute(w, a, tiles, out) }
}

/// The portable kernel on its own, for tests that compare it with the AVX2 one.
#[cfg(test)]
pub(crate) fn matmul_scalar(w: &Q8_0Matrix, a: &Q8_0Rows, out: &mut [f32]) {
    let w = w.view();
    let a = Operand { rows: a.rows, kb: w.kb, blocks: &a.blocks, scales: &a.scales };
    let output = Output::new(out, w.rows);
    // SAFETY: one call owns every column.
    unsafe { crate::scalar::compute(&w, &a, 0..w.rows.div_ceil(TILE), &output) };
}
