//! The portable kernel: the same per-block integer sums as the AVX2 one, accumulated in the same
//! order with the same roundings, so both give identical results.

use std::ops::Range;

use crate::operands::{Operand, Output, Packed};
use crate::packed::TILE;

/// All activation rows against the weight rows of `tiles`.
///
/// # Safety
/// The caller must own the columns of `tiles` in `out` (see [`Output::set_run`]).
pub(crate) unsafe fn compute(w: &Packed<'_>, a: &Operand<'_>, tiles: Range<usize>, out: &Output) {
    for t in tiles {
        let tile = w.tile(t);
        let columns = TILE.min(w.rows - t * TILE);
        for i in 0..a.rows {
            let (a_blocks, a_scales) = a.row(i);
            let mut sums = [0f32; TILE];
            for ((weights, block), &a_scale) in tile.iter().zip(a_blocks).zip(a_scales) {
                for (r, sum) in sums.iter_mut().enumerate() {
                    let products = block.qs.iter().enumerate().map(|(k, &x)| i32::from(weights.value(r, k)) * i32::from(x));
                    let dot: i32 = products.sum();
                    *sum += dot as f32 * (weights.d[r] * a_scale);
                }
            }
            // SAFETY: the caller owns this tile's columns (this function's contract).
            unsafe { out.set_run(i, t * TILE, &sums[..columns]) };
        }
    }
}
