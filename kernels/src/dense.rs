//! `out = activations x weights^T` for dense f32 weights, batch-invariant: every output is the
//! same two running sums over the inner dimension (even and odd positions, each in ascending
//! order, added at the end) whatever the number of activation rows, the row's place among them
//! or the split over threads. A GEMM library picks its blocking and its reduction splits by the
//! shape of the call, so the same row multiplied alone (a decode step) and among a prompt chunk's
//! rows would come out different in the last bits, and a cached prompt would answer differently
//! from a cold one. Weights are packed at load into tiles of 8 output rows interleaved by
//! position (one 256-bit load holds position `c` of all 8), the same idea as `packed.rs`.

use std::ops::Range;

use crate::parallel::Parallel;
use crate::{ShapeError, check_len};

/// Output rows per tile.
const TILE: usize = 8;
/// Activation rows per register tile.
const MR: usize = 4;

/// A dense `[rows, cols]` f32 weight matrix (one row per output) in the kernel's layout.
#[derive(Debug, Clone)]
pub struct F32Matrix {
    rows: usize,
    cols: usize,
    /// Tile `t`, position `c`, row `r` of the tile at `(t * cols + c) * TILE + r`; rows past
    /// the end are zero.
    tiles: Vec<f32>,
}

impl F32Matrix {
    /// Packs `weights` (`rows x cols`, row-major).
    pub fn new(weights: &[f32], rows: usize, cols: usize) -> Result<F32Matrix, ShapeError> {
        check_len("f32 weights", rows * cols, weights.len())?;
        let mut tiles = vec![0f32; rows.div_ceil(TILE) * cols * TILE];
        for (row, values) in weights.chunks_exact(cols.max(1)).take(rows).enumerate() {
            let (t, r) = (row / TILE, row % TILE);
            for (c, &value) in values.iter().enumerate() {
                tiles[(t * cols + c) * TILE + r] = value;
            }
        }
        Ok(F32Matrix { rows, cols, tiles })
    }

    pub fn rows(&self) -> usize {
        self.rows
    }

    pub fn cols(&self) -> usize {
        self.cols
    }

    /// `out[i * rows + j] = x[i] . self[j]` for `m` activation rows `x` (`m x cols`).
    pub fn matmul(&self, x: &[f32], m: usize, out: &mut [f32], parallel: &dyn Parallel) -> Result<(), ShapeError> {
        check_len("f32 activations", m * self.cols, x.len())?;
        check_len("output", m * self.rows, out.len())?;
        if m == 0 || self.rows == 0 {
            return Ok(());
        }
        let tiles = self.rows.div_ceil(TILE);
        // In the Q8_0 product's unit, block products of 32 multiply-adds.
        let work = m * self.rows * self.cols / 32;
        let threads = parallel.threads().min(work / parallel.min_work_per_thread().max(1)).max(1);
        let output = Shared { ptr: out.as_mut_ptr(), len: out.len() };
        if threads == 1 {
            // SAFETY: one call owns every column.
            unsafe { self.compute(x, m, 0..tiles, &output) };
            return Ok(());
        }
        let chunk = tiles.div_ceil(threads * 4);
        let tasks = tiles.div_ceil(chunk);
        // SAFETY: task t owns the columns of tiles t * chunk.., disjoint from the others'; `out`
        // stays borrowed until every task has returned.
        parallel.for_each(tasks, &|t| unsafe { self.compute(x, m, t * chunk..tiles.min((t + 1) * chunk), &output) });
        Ok(())
    }

    /// # Safety
    /// The caller must own the output columns of `tiles`.
    unsafe fn compute(&self, x: &[f32], m: usize, tiles: Range<usize>, out: &Shared) {
        #[cfg(target_arch = "x86_64")]
        if is_x86_feature_detected!("avx2") {
            // SAFETY: AVX2 was just detected; the columns are the caller's.
            return unsafe { self.compute_avx2(x, m, tiles, out) };
        }
        // SAFETY: the columns are the caller's.
        unsafe { self.compute_portable(x, m, tiles, out) }
    }

    /// The portable loops compiled for AVX2 (the 8-lane sums become registers); Rust fuses no
    /// multiply-add by itself, so the roundings are the same.
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2")]
    unsafe fn compute_avx2(&self, x: &[f32], m: usize, tiles: Range<usize>, out: &Shared) {
        // SAFETY: forwarded contract.
        unsafe { self.compute_portable(x, m, tiles, out) }
    }

    #[inline(always)]
    unsafe fn compute_portable(&self, x: &[f32], m: usize, tiles: Range<usize>, out: &Shared) {
        for t in tiles {
            let tile = &self.tiles[t * self.cols * TILE..(t + 1) * self.cols * TILE];
            let columns = TILE.min(self.rows - t * TILE);
            let mut i = 0;
            while i < m {
                let rows = MR.min(m - i);
                let mut sums = [[0f32; TILE]; MR];
                match rows {
                    4 => self.tile::<4>(tile, x, i, &mut sums),
                    3 => self.tile::<3>(tile, x, i, &mut sums),
                    2 => self.tile::<2>(tile, x, i, &mut sums),
                    _ => self.tile::<1>(tile, x, i, &mut sums),
                }
                for (r, sum) in sums.iter().take(rows).enumerate() {
                    // SAFETY: the caller owns this tile's columns (contract).
                    unsafe { out.set((i + r) * self.rows + t * TILE, &sum[..columns]) };
                }
                i += rows;
            }
        }
    }

    /// Activation rows `i..i + R` against one tile: per output, positions `0, 2, 4, ..` summed
    /// into one accumulator and `1, 3, 5, ..` into another (two chains, so even a single row is
    /// not bound by the latency of one), then the two added.
    #[inline(always)]
    fn tile<const R: usize>(&self, tile: &[f32], x: &[f32], i: usize, sums: &mut [[f32; TILE]; MR]) {
        let cols = self.cols;
        let rows: [&[f32]; R] = std::array::from_fn(|r| &x[(i + r) * cols..(i + r + 1) * cols]);
        let mut even = [[0f32; TILE]; R];
        let mut odd = [[0f32; TILE]; R];
        let pairs = cols / 2;
        for p in 0..pairs {
            let (c0, c1) = (2 * p, 2 * p + 1);
            let w0 = &tile[c0 * TILE..c0 * TILE + TILE];
            let w1 = &tile[c1 * TILE..c1 * TILE + TILE];
            for r in 0..R {
                let (a0, a1) = (rows[r][c0], rows[r][c1]);
                for l in 0..TILE {
                    even[r][l] += a0 * w0[l];
                    odd[r][l] += a1 * w1[l];
                }
            }
        }
        if cols % 2 == 1 {
            let c = cols - 1;
            let w = &tile[c * TILE..c * TILE + TILE];
            for r in 0..R {
                for l in 0..TILE {
                    even[r][l] += rows[r][c] * w[l];
                }
            }
        }
        for r in 0..R {
            for l in 0..TILE {
                sums[r][l] = even[r][l] + odd[r][l];
            }
        }
    }
}

/// The output of one product, shared by its tasks, each writing only its own columns.
struct Shared {
    ptr: *mut f32,
    len: usize,
}

// SAFETY: a pointer into a `&mut [f32]` that `matmul` borrows until every task has returned;
// tasks write disjoint elements.
unsafe impl Sync for Shared {}

impl Shared {
    /// # Safety
    /// The caller must own elements `index..index + values.len()` during the product.
    unsafe fn set(&self, index: usize, values: &[f32]) {
        assert!(index + values.len() <= self.len, "outputs {index}..+{} outside the product", values.len());
        // SAFETY: in bounds (checked above); the elements are the caller's (contract).
        unsafe { std::ptr::copy_nonoverlapping(values.as_ptr(), self.ptr.add(index), values.len()) };
    }
}
