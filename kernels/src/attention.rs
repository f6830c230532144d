//! Causal self-attention of one sequence's new positions over its KV cache, in f32, for every
//! forward pass on the CPU: a decode step's one new position and a prompt chunk's many alike.
//! Query heads are grouped over KV heads (GQA) the way llama's `repeat_kv` does it: query head
//! `h` reads KV head `h / (heads / kv_heads)`.
//!
//! Batch-invariant by design: the output of one query row is computed by the same sequence of
//! floating-point operations whatever else is computed with it. Its scores are dot products in
//! a fixed lane order against keys `0..=position` in ascending order, its softmax is one exact
//! pass (max, then `exp` and a sum in key order), and its weighted sum of values adds keys in
//! ascending order. How many new rows the call has, where the row sits among them, whether a
//! key was written by this call or an earlier one, and how the rows are split over threads
//! change only which rows run side by side, never a row's arithmetic. So a prompt prefilled
//! whole, in chunks of any size, or on top of a prefix cache gives the same bits as decoding
//! it one token at a time (see `attention_rows.rs` for the loops).

use crate::ShapeError;
use crate::attention_layout::{AttentionDims, Heads, PagedHeads, RowMap};
use crate::attention_rows::{self, Geometry};
use crate::parallel::Parallel;

/// `out[t, h * head_dim..]` = softmax over `j <= cached + t` of `scale * q[h, t] . k[g, j]`,
/// weighting `v[g, j]`, with `g = h / (heads / kv_heads)`. `q` holds the `new` rows of each
/// head; `k` and `v` hold `cached + new` rows of each KV head (the new ones included); `out` is
/// `[new, heads * head_dim]`. Large calls (long prompt chunks) split their rows over `parallel`'s
/// threads, which changes no result.
pub fn causal_attention(
    q: Heads<'_>,
    k: Heads<'_>,
    v: Heads<'_>,
    dims: AttentionDims,
    scale: f32,
    out: &mut [f32],
    parallel: &dyn Parallel,
) -> Result<(), ShapeError> {
    let total = dims.cached + dims.new;
    checked_attention(q, k, v, dims, scale, out, total, parallel)
}

/// [`causal_attention`] over a paged cache: position `j` of the keys and values is row
/// `k.rows[j]` (`rows` covers `cached + new` positions; `k` and `v` share one block table).
pub fn paged_causal_attention(
    q: Heads<'_>,
    k: PagedHeads<'_>,
    v: PagedHeads<'_>,
    dims: AttentionDims,
    scale: f32,
    out: &mut [f32],
    parallel: &dyn Parallel,
) -> Result<(), ShapeError> {
    let total = dims.cached + dims.new;
    crate::check_len("block table positions", total, k.rows.len().min(v.rows.len()))?;
    let reach = k.rows[..total].iter().chain(&v.rows[..total]).max().map_or(0, |&r| r as usize + 1);
    checked_attention(q, k, v, dims, scale, out, reach, parallel)
}

/// Checks the shapes (`rows` rows of each KV head must fit) and runs the loops.
#[allow(clippy::too_many_arguments)]
fn checked_attention<K: RowMap>(
    q: Heads<'_>,
    k: K,
    v: K,
    dims: AttentionDims,
    scale: f32,
    out: &mut [f32],
    rows: usize,
    parallel: &dyn Parallel,
) -> Result<(), ShapeError> {
    let AttentionDims { heads, kv_heads, head_dim, new, .. } = dims;
    if heads == 0 || kv_heads == 0 || heads % kv_heads != 0 || head_dim == 0 {
        let what = "attention heads (a multiple of the KV heads)";
        return Err(ShapeError::Length { what, expected: kv_heads.max(1), actual: heads });
    }
    let reach = |rows: usize, count: usize, stride: usize| (count - 1) * stride + rows * head_dim;
    if new == 0 {
        return crate::check_len("attention output", 0, out.len());
    }
    check_fits("queries", q.data, reach(new, heads, q.head_stride))?;
    check_fits("keys", k.data(), reach(rows, kv_heads, k.head_stride()))?;
    check_fits("values", v.data(), reach(rows, kv_heads, v.head_stride()))?;
    crate::check_len("attention output", new * heads * head_dim, out.len())?;
    attention_rows::run(Geometry { q, k, v, dims, scale }, out, parallel);
    Ok(())
}

fn check_fits(what: &'static str, data: &[f32], needed: usize) -> Result<(), ShapeError> {
    let actual = data.len();
    if actual >= needed { Ok(()) } else { Err(ShapeError::Length { what, expected: needed, actual }) }
}
