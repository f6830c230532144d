//! The operands of [`causal_attention`](crate::causal_attention) as its loops read them: the
//! shape of one sequence's attention, and where the query, key and value rows of each head live
//! (contiguous, or a paged KV cache). `attention.rs` checks them and `attention_rows.rs` runs
//! over them.

/// The shape of one sequence's attention.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AttentionDims {
    pub heads: usize,
    pub kv_heads: usize,
    pub head_dim: usize,
    /// Positions already cached before the new ones.
    pub cached: usize,
    /// New positions: new position `t` sees cached positions `0..=cached + t`.
    pub new: usize,
}

/// Where rows live in a buffer: row `r` of head `h` starts at `h * head_stride + r * head_dim`.
#[derive(Debug, Clone, Copy)]
pub struct Heads<'a> {
    pub data: &'a [f32],
    pub head_stride: usize,
}

/// A paged KV cache: logical position `j` of head `h` lives in row `rows[j]`, at
/// `h * head_stride + rows[j] * head_dim` (a sequence's block table, spelled out per position).
#[derive(Debug, Clone, Copy)]
pub struct PagedHeads<'a> {
    pub data: &'a [f32],
    pub head_stride: usize,
    pub rows: &'a [u32],
}

/// Where a key or value row lives.
pub(crate) trait RowMap: Copy + Sync {
    fn data(&self) -> &[f32];
    fn head_stride(&self) -> usize;
    fn row(&self, position: usize) -> usize;
}

impl RowMap for Heads<'_> {
    fn data(&self) -> &[f32] {
        self.data
    }
    fn head_stride(&self) -> usize {
        self.head_stride
    }
    #[inline(always)]
    fn row(&self, position: usize) -> usize {
        position
    }
}

impl RowMap for PagedHeads<'_> {
    fn data(&self) -> &[f32] {
        self.data
    }
    fn head_stride(&self) -> usize {
        self.head_stride
    }
    #[inline(always)]
    fn row(&self, position: usize) -> usize {
        self.rows[position] as usize
    }
}
