//! Causal self-attention of one sequence's new positions over its KV cache, in f32, for the
//! decode step: a handful of new positions against a few hundred cached ones is far too small
//! for a GEMM library (and for a framework's per-op overhead) to pay; plain loops over
//! contiguous rows do it in microseconds. Query heads are grouped over KV heads (GQA) the way
//! llama's `repeat_kv` does it: query head `h` reads KV head `h / (heads / kv_heads)`.

use crate::ShapeError;

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
trait RowMap: Copy {
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

/// `out[t, h * head_dim..]` = softmax over `j <= cached + t` of `scale * q[h, t] . k[g, j]`,
/// weighting `v[g, j]`, with `g = h / (heads / kv_heads)`. `q` holds the `new` rows of each
/// head; `k` and `v` hold `cached + new` rows of each KV head (the new ones included); `out` is
/// `[new, heads * head_dim]`.
pub fn causal_attention(
    q: Heads<'_>,
    k: Heads<'_>,
    v: Heads<'_>,
    dims: AttentionDims,
    scale: f32,
    out: &mut [f32],
) -> Result<(), ShapeError> {
    let total = dims.cached + dims.new;
    checked_attention(q, k, v, dims, scale, out, total)
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
) -> Result<(), ShapeError> {
    let total = dims.cached + dims.new;
    crate::check_len("block table positions", total, k.rows.len().min(v.rows.len()))?;
    let reach = k.rows[..total].iter().chain(&v.rows[..total]).max().map_or(0, |&r| r as usize + 1);
    checked_attention(q, k, v, dims, scale, out, reach)
}

/// Checks the shapes (`rows` rows of each KV head must fit) and runs the fastest loop there is.
fn checked_attention<K: RowMap>(
    q: Heads<'_>,
    k: K,
    v: K,
    dims: AttentionDims,
    scale: f32,
    out: &mut [f32],
    rows: usize,
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
    #[cfg(target_arch = "x86_64")]
    if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") {
        // SAFETY: AVX2 and FMA were just detected.
        unsafe { attend_avx2(q, k, v, dims, scale, out) };
        return Ok(());
    }
    attend(q, k, v, dims, scale, out);
    Ok(())
}

fn check_fits(what: &'static str, data: &[f32], needed: usize) -> Result<(), ShapeError> {
    let actual = data.len();
    if actual >= needed { Ok(()) } else { Err(ShapeError::Length { what, expected: needed, actual }) }
}

/// The same loops compiled for AVX2 and FMA (the 8-lane sums below become single registers).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
fn attend_avx2<K: RowMap>(q: Heads<'_>, k: K, v: K, dims: AttentionDims, scale: f32, out: &mut [f32]) {
    attend(q, k, v, dims, scale, out);
}

#[inline(always)]
fn attend<K: RowMap>(q: Heads<'_>, k: K, v: K, dims: AttentionDims, scale: f32, out: &mut [f32]) {
    let AttentionDims { heads, kv_heads, head_dim: d, cached, new } = dims;
    let group = heads / kv_heads;
    let mut scores = vec![0f32; cached + new];
    let (k_data, v_data) = (k.data(), v.data());
    for h in 0..heads {
        let g = h / group;
        let (k_head, v_head) = (g * k.head_stride(), g * v.head_stride());
        for t in 0..new {
            let query = &q.data[h * q.head_stride + t * d..][..d];
            let seen = cached + t + 1;
            let mut max = f32::NEG_INFINITY;
            for (j, score) in scores[..seen].iter_mut().enumerate() {
                *score = dot(query, &k_data[k_head + k.row(j) * d..][..d]) * scale;
                max = max.max(*score);
            }
            let mut sum = 0f32;
            for score in &mut scores[..seen] {
                *score = (*score - max).exp();
                sum += *score;
            }
            let row = &mut out[(t * heads + h) * d..][..d];
            row.fill(0.0);
            for (j, &p) in scores[..seen].iter().enumerate() {
                let value = &v_data[v_head + v.row(j) * d..][..d];
                for (o, &x) in row.iter_mut().zip(value) {
                    *o += p * x;
                }
            }
            let norm = 1.0 / sum;
            row.iter_mut().for_each(|o| *o *= norm);
        }
    }
}

/// A dot product in 8 independent lanes, so it vectorizes (f32 sums are not reassociated).
#[inline(always)]
fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut lanes = [0f32; 8];
    let (a8, a_rest) = a.split_at(a.len() / 8 * 8);
    let (b8, b_rest) = b.split_at(a8.len());
    for (x, y) in a8.chunks_exact(8).zip(b8.chunks_exact(8)) {
        for l in 0..8 {
            lanes[l] += x[l] * y[l];
        }
    }
    let tail: f32 = a_rest.iter().zip(b_rest).map(|(x, y)| x * y).sum();
    lanes.iter().sum::<f32>() + tail
}
