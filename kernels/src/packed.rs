//! The kernel's weight layout: GGML Q8_0 rows regrouped in tiles of 8 rows. For each tile and
//! block position, the 8 rows' values are interleaved in groups of 4 (`qs[g]` holds values
//! `4g..4g + 4` of rows 0..8, 4 bytes per row), so one 256-bit register holds 4 values of 8
//! different rows, and one integer multiply-add against 4 broadcast activation values gives
//! partial sums for 8 outputs at once: the 8 lanes of the accumulator are the 8 outputs, and
//! there is nothing to sum horizontally. The scales sit next to the values, already f32.

use crate::{BlockQ8_0, QK8_0};

/// Rows per tile.
pub(crate) const TILE: usize = 8;

/// One block position of one tile: 8 rows x 32 values and their 8 scales (288 bytes).
#[repr(C, align(32))]
#[derive(Debug, Clone, Copy)]
pub(crate) struct TileBlock {
    /// `qs[g][4 * r + e]` is value `4g + e` of row `r`.
    pub qs: [[i8; 32]; 8],
    pub d: [f32; TILE],
}

impl TileBlock {
    const ZERO: TileBlock = TileBlock { qs: [[0; 32]; 8], d: [0.0; TILE] };

    /// Value `k` (0..32) of row `r` (0..8).
    pub(crate) fn value(&self, r: usize, k: usize) -> i8 {
        self.qs[k / 4][4 * r + k % 4]
    }
}

/// `rows x kb` GGML blocks (row-major) as tiles: `tiles[t * kb + b]` holds rows `8t..8t + 8` at
/// block `b`; rows past the end are zeros with scale 0.
pub(crate) fn pack(blocks: &[BlockQ8_0], rows: usize, kb: usize) -> Vec<TileBlock> {
    let tiles = rows.div_ceil(TILE);
    let mut packed = vec![TileBlock::ZERO; tiles * kb];
    for (row, row_blocks) in blocks.chunks_exact(kb.max(1)).take(rows).enumerate() {
        let (t, r) = (row / TILE, row % TILE);
        for (b, block) in row_blocks.iter().enumerate() {
            let tile = &mut packed[t * kb + b];
            for (g, group) in block.qs.chunks_exact(4).enumerate() {
                tile.qs[g][4 * r..4 * r + 4].copy_from_slice(group);
            }
            tile.d[r] = block.scale();
        }
    }
    packed
}

/// Row `row`'s block `b` back in GGML's form.
pub(crate) fn unpack(tiles: &[TileBlock], kb: usize, row: usize, b: usize) -> BlockQ8_0 {
    let tile = &tiles[row / TILE * kb + b];
    let r = row % TILE;
    let mut qs = [0i8; QK8_0];
    for (k, q) in qs.iter_mut().enumerate() {
        *q = tile.value(r, k);
    }
    BlockQ8_0 { d: half::f16::from_f32(tile.d[r]).to_bits(), qs }
}
