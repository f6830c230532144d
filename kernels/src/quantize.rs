//! Rows of f32 to Q8_0, as GGML's reference quantizer (and candle's) does it: per 32 values,
//! `d = max|x| / 127` and `q = round(x / d)` (halves away from zero), so activations quantized
//! here give the same integers as candle's.

use half::f16;

use crate::{BlockQ8_0, QK8_0, ShapeError, blocks_per_row, check_len};

/// Quantizes `rows` rows of `cols` values (row-major) to Q8_0 blocks, `cols / 32` per row.
pub fn quantize_rows_q8_0(x: &[f32], rows: usize, cols: usize) -> Result<Vec<BlockQ8_0>, ShapeError> {
    let kb = blocks_per_row(cols)?;
    check_len("f32 rows", rows * cols, x.len())?;
    let mut blocks = vec![BlockQ8_0 { d: 0, qs: [0; QK8_0] }; rows * kb];
    #[cfg(target_arch = "x86_64")]
    if is_x86_feature_detected!("avx2") {
        // SAFETY: AVX2 was just detected.
        unsafe { avx2::quantize(x, &mut blocks) };
        return Ok(blocks);
    }
    quantize_portable(x, &mut blocks);
    Ok(blocks)
}

pub(crate) fn quantize_portable(x: &[f32], blocks: &mut [BlockQ8_0]) {
    for (values, block) in x.chunks_exact(QK8_0).zip(blocks.iter_mut()) {
        *block = quantize_block(values);
    }
}

fn quantize_block(values: &[f32]) -> BlockQ8_0 {
    let amax = values.iter().fold(0f32, |m, v| m.max(v.abs()));
    let d = amax / 127.0;
    let id = if d != 0.0 { 1.0 / d } else { 0.0 };
    let mut qs = [0i8; QK8_0];
    for (q, &v) in qs.iter_mut().zip(values) {
        // |v * id| <= 127 up to rounding, so the cast never saturates past -127..=127.
        *q = (v * id).round() as i8;
    }
    BlockQ8_0 { d: f16::from_f32(d).to_bits(), qs }
}

/// Activation rows in Q8_0, with their scales also as f32 (the kernel's form).
#[derive(Debug, Clone, Default)]
pub struct Q8_0Rows {
    pub(crate) rows: usize,
    pub(crate) cols: usize,
    pub(crate) blocks: Vec<BlockQ8_0>,
    pub(crate) scales: Vec<f32>,
}

impl Q8_0Rows {
    /// Quantizes `rows` rows of `cols` f32 values.
    pub fn quantize(x: &[f32], rows: usize, cols: usize) -> Result<Q8_0Rows, ShapeError> {
        let blocks = quantize_rows_q8_0(x, rows, cols)?;
        Ok(Q8_0Rows::with_scales(blocks, rows, cols))
    }

    /// Rows already in Q8_0. Values must be in -127..=127 (what a Q8_0 quantizer makes).
    pub fn from_blocks(blocks: Vec<BlockQ8_0>, rows: usize, cols: usize) -> Result<Q8_0Rows, ShapeError> {
        check_len("Q8_0 activation blocks", rows * blocks_per_row(cols)?, blocks.len())?;
        if blocks.iter().any(|b| b.qs.contains(&i8::MIN)) {
            return Err(ShapeError::ActivationOutOfRange);
        }
        Ok(Q8_0Rows::with_scales(blocks, rows, cols))
    }

    fn with_scales(blocks: Vec<BlockQ8_0>, rows: usize, cols: usize) -> Q8_0Rows {
        let scales = blocks.iter().map(BlockQ8_0::scale).collect();
        Q8_0Rows { rows, cols, blocks, scales }
    }

    pub fn rows(&self) -> usize {
        self.rows
    }

    pub fn cols(&self) -> usize {
        self.cols
    }

    pub fn blocks(&self) -> &[BlockQ8_0] {
        &self.blocks
    }
}

/// The same quantizer in AVX2: the same amax, scale and rounding (halves away from zero, built
/// from a truncation and the exact remainder), so the blocks are identical to the portable ones
/// (NaN inputs aside).
#[cfg(target_arch = "x86_64")]
pub(crate) mod avx2 {
    use std::arch::x86_64::*;

    use half::f16;

    use crate::{BlockQ8_0, QK8_0};

    #[target_feature(enable = "avx2")]
    pub(crate) fn quantize(x: &[f32], blocks: &mut [BlockQ8_0]) {
        let sign = _mm256_set1_ps(-0.0);
        let half = _mm256_set1_ps(0.5);
        let one = _mm256_set1_ps(1.0);
        // packs interleave the 128-bit lanes; this puts the 32 bytes back in order.
        let order = _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7);
        for (values, block) in x.chunks_exact(QK8_0).zip(blocks.iter_mut()) {
            // SAFETY: `values` is 32 f32; each load reads 8 of them.
            let v: [__m256; 4] = std::array::from_fn(|i| unsafe { _mm256_loadu_ps(values.as_ptr().add(8 * i)) });
            let abs = v.map(|v| _mm256_andnot_ps(sign, v));
            let max8 = _mm256_max_ps(_mm256_max_ps(abs[0], abs[1]), _mm256_max_ps(abs[2], abs[3]));
            let max4 = _mm_max_ps(_mm256_castps256_ps128(max8), _mm256_extractf128_ps::<1>(max8));
            let max2 = _mm_max_ps(max4, _mm_movehl_ps(max4, max4));
            let amax = _mm_cvtss_f32(_mm_max_ss(max2, _mm_movehdup_ps(max2)));
            let d = amax / 127.0;
            let id = _mm256_set1_ps(if d != 0.0 { 1.0 / d } else { 0.0 });
            let q = v.map(|v| {
                let scaled = _mm256_mul_ps(v, id);
                let whole = _mm256_round_ps::<{ _MM_FROUND_TO_ZERO | _MM_FROUND_NO_EXC }>(scaled);
                let rest = _mm256_andnot_ps(sign, _mm256_sub_ps(scaled, whole));
                let away = _mm256_or_ps(_mm256_and_ps(scaled, sign), one);
                let bump = _mm256_and_ps(_mm256_cmp_ps::<_CMP_GE_OQ>(rest, half), away);
                _mm256_cvttps_epi32(_mm256_add_ps(whole, bump))
            });
            let bytes = _mm256_packs_epi16(_mm256_packs_epi32(q[0], q[1]), _mm256_packs_epi32(q[2], q[3]));
            let bytes = _mm256_permutevar8x32_epi32(bytes, order);
            // SAFETY: `qs` is 32 bytes, exactly one unaligned 256-bit store.
            unsafe { _mm256_storeu_si256(block.qs.as_mut_ptr().cast(), bytes) };
            block.d = f16::from_f32(d).to_bits();
        }
    }
}
