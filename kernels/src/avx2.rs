//! The AVX2 kernel over the tiled layout (`packed.rs`): for a tile of 8 weight rows and up to
//! `MR` activation rows, each 256-bit weight load holds 4 values of all 8 rows, and each
//! activation row broadcasts its 4 matching values. The block dot products use GGML's trick:
//! `maddubs` multiplies unsigned by signed bytes, so the weights go in as `|w|` and the
//! activations as `a * sign(w)` (`_mm256_sign_epi8`); `madd` with ones widens the 16-bit pair
//! sums to i32, whose 8 lanes are the 8 rows' sums. The integers are exact: a 16-bit pair is at
//! most 2 * 128 * 127 < 2^15 because activations stay within -127..=127. Each block's sum is
//! scaled and added in f32 exactly as the portable kernel does it.

use std::arch::x86_64::*;
use std::ops::Range;

use crate::operands::{Operand, Output, Packed};
use crate::packed::{TILE, TileBlock};

/// Whether the CPU runs this kernel.
pub(crate) fn available() -> bool {
    is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma")
}

/// Activation rows per pass over a chunk's weights: keeps their blocks in L1/L2 for prefill.
const ROW_BLOCK: usize = 32;
/// Activation rows per register tile: `2 * MR` accumulators plus the weights fit 16 registers.
const MR: usize = 4;

/// All activation rows against the weight rows of `tiles`.
///
/// # Safety
/// The CPU must have AVX2 and FMA ([`available`]), and the caller must own the columns of
/// `tiles` in `out` (see [`Output::set_run`]).
pub(crate) unsafe fn compute(w: &Packed<'_>, a: &Operand<'_>, tiles: Range<usize>, out: &Output) {
    for row_block in (0..a.rows).step_by(ROW_BLOCK) {
        let row_end = a.rows.min(row_block + ROW_BLOCK);
        for t in tiles.clone() {
            let columns = TILE.min(w.rows - t * TILE);
            let mut i = row_block;
            while i < row_end {
                let mr = MR.min(row_end - i);
                let mut sums = [[0f32; TILE]; MR];
                // SAFETY: AVX2 and FMA are present (this function's contract).
                unsafe {
                    match mr {
                        4 => tile::<4>(w.tile(t), a, i, &mut sums),
                        3 => tile::<3>(w.tile(t), a, i, &mut sums),
                        2 => tile::<2>(w.tile(t), a, i, &mut sums),
                        _ => tile::<1>(w.tile(t), a, i, &mut sums),
                    }
                }
                for (r, row) in sums.iter().take(mr).enumerate() {
                    // SAFETY: the caller owns this tile's columns (contract).
                    unsafe { out.set_run(i + r, t * TILE, &row[..columns]) };
                }
                i += mr;
            }
        }
    }
}

/// The 8 outputs of activation rows `i..i + R` against one tile's blocks, into `sums[..R]`.
#[target_feature(enable = "avx2,fma")]
fn tile<const R: usize>(tile: &[TileBlock], a: &Operand<'_>, i: usize, sums: &mut [[f32; TILE]; MR]) {
    let rows: [_; R] = std::array::from_fn(|r| a.row(i + r));
    let ones = _mm256_set1_epi16(1);
    let mut acc = [_mm256_setzero_ps(); R];
    for (b, weights) in tile.iter().enumerate() {
        let mut dots = [_mm256_setzero_si256(); R];
        for g in 0..8 {
            let w = load(&weights.qs[g]);
            let w_abs = _mm256_abs_epi8(w);
            for r in 0..R {
                let a4 = _mm256_set1_epi32(group(&rows[r].0[b].qs, g));
                let pairs = _mm256_maddubs_epi16(w_abs, _mm256_sign_epi8(a4, w));
                dots[r] = _mm256_add_epi32(dots[r], _mm256_madd_epi16(pairs, ones));
            }
        }
        // SAFETY: `d` is 8 f32, exactly one unaligned 256-bit load.
        let w_scales = unsafe { _mm256_loadu_ps(weights.d.as_ptr()) };
        for r in 0..R {
            // Separate multiply and add, not FMA: the same roundings as the portable kernel.
            let scales = _mm256_mul_ps(w_scales, _mm256_set1_ps(rows[r].1[b]));
            acc[r] = _mm256_add_ps(acc[r], _mm256_mul_ps(_mm256_cvtepi32_ps(dots[r]), scales));
        }
    }
    for r in 0..R {
        // SAFETY: `sums[r]` is 8 f32, exactly one unaligned 256-bit store.
        unsafe { _mm256_storeu_ps(sums[r].as_mut_ptr(), acc[r]) };
    }
}

/// Values `4g..4g + 4` of an activation block as one i32 (for broadcasting).
#[inline(always)]
fn group(qs: &[i8; 32], g: usize) -> i32 {
    i32::from_le_bytes([qs[4 * g] as u8, qs[4 * g + 1] as u8, qs[4 * g + 2] as u8, qs[4 * g + 3] as u8])
}

#[target_feature(enable = "avx2")]
fn load(values: &[i8; 32]) -> __m256i {
    // SAFETY: 32 bytes, exactly one unaligned 256-bit load.
    unsafe { _mm256_loadu_si256(values.as_ptr().cast()) }
}
