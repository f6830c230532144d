//! The operands of a Q8_0 product as the kernels (AVX2 and scalar) take them: packed weights,
//! activation rows and the shared output, shapes already checked by `matmul`.

use crate::BlockQ8_0;
use crate::packed::TileBlock;

/// Packed weights, shapes already checked: `rows` rows of `kb` blocks, in tiles of 8 rows.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Packed<'a> {
    pub rows: usize,
    pub kb: usize,
    pub tiles: &'a [TileBlock],
}

impl<'a> Packed<'a> {
    /// Tile `t`'s `kb` blocks.
    pub(crate) fn tile(&self, t: usize) -> &'a [TileBlock] {
        &self.tiles[t * self.kb..(t + 1) * self.kb]
    }
}

/// Activation rows, shapes already checked: `rows` rows of `kb` blocks and their scales.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Operand<'a> {
    pub rows: usize,
    pub kb: usize,
    pub blocks: &'a [BlockQ8_0],
    pub scales: &'a [f32],
}

impl<'a> Operand<'a> {
    pub(crate) fn row(&self, i: usize) -> (&'a [BlockQ8_0], &'a [f32]) {
        let range = i * self.kb..(i + 1) * self.kb;
        (&self.blocks[range.clone()], &self.scales[range])
    }
}

/// The `[m, n_out]` output, shared by the chunks of one product: each chunk writes only its own
/// columns, so no element is written twice and none is read.
pub(crate) struct Output {
    ptr: *mut f32,
    len: usize,
    n_out: usize,
}

// SAFETY: `Output` is only a pointer into a `&mut [f32]` that outlives the product (`run`
// holds the borrow until every task has returned); tasks write disjoint elements (`set_run`).
unsafe impl Sync for Output {}

impl Output {
    /// The output of a product into `out`, `n_out` values a row.
    pub(crate) fn new(out: &mut [f32], n_out: usize) -> Output {
        Output { ptr: out.as_mut_ptr(), len: out.len(), n_out }
    }

    /// Writes outputs `(row, col..col + values.len())`.
    ///
    /// # Safety
    /// The caller must own those columns in this product: each task of `run` owns its own
    /// tiles' columns, and no other thread may write or read them meanwhile.
    pub(crate) unsafe fn set_run(&self, row: usize, col: usize, values: &[f32]) {
        let index = row * self.n_out + col;
        let count = values.len();
        assert!(col + count <= self.n_out && index + count <= self.len, "outputs ({row}, {col}..+{count}) outside the product");
        // SAFETY: in bounds (checked above); the caller owns these columns (contract).
        unsafe { std::ptr::copy_nonoverlapping(values.as_ptr(), self.ptr.add(index), values.len()) };
    }
}
