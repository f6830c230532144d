//! The loops behind [`causal_attention`](crate::causal_attention): per query head, its new rows
//! in tiles of up to [`TILE`], whose dot products against each key run side by side (separate
//! dependency chains that hide each other's latency, one load of the key for all of them). A
//! row's own operations are the same in every tile size, so tiling, like splitting the rows over
//! threads, changes no bit of any row (see the module docs of `attention.rs`).

use crate::attention_layout::{AttentionDims, Heads, RowMap};
use crate::parallel::Parallel;

/// Query rows computed side by side.
const TILE: usize = 4;
/// Query rows per task when a call is split over threads.
const TASK_ROWS: usize = 16;

/// One call's operands, shapes already checked.
pub(crate) struct Geometry<'a, K> {
    pub q: Heads<'a>,
    pub k: K,
    pub v: K,
    pub dims: AttentionDims,
    pub scale: f32,
}

/// Every new row of every head into `out` (`[new, heads * head_dim]`).
pub(crate) fn run<K: RowMap>(g: Geometry<'_, K>, out: &mut [f32], parallel: &dyn Parallel) {
    let AttentionDims { heads, head_dim, cached, new, .. } = g.dims;
    let blocks = new.div_ceil(TASK_ROWS);
    let tasks = heads * blocks;
    // In the matmul's unit, block products of 32 multiply-adds: two products of `head_dim` per
    // (row, key), `cached + new / 2` keys per row on average.
    let work = heads * new * (cached + new.div_ceil(2)) * head_dim / 16;
    let threads = parallel.threads().min(work / parallel.min_work_per_thread().max(1)).max(1);
    let out = SharedRows { ptr: out.as_mut_ptr(), len: out.len(), width: head_dim };
    let task = |i: usize| {
        let (h, block) = (i / blocks, i % blocks);
        let rows = block * TASK_ROWS..new.min((block + 1) * TASK_ROWS);
        // SAFETY: task `i` alone writes rows `(t, h)` for its head and rows (below).
        unsafe { head_rows(&g, h, rows.start, rows.end, &out) };
    };
    if threads == 1 {
        (0..tasks).for_each(task);
    } else {
        parallel.for_each(tasks, &task);
    }
}

/// The output of one call, shared by its tasks: row `(t, h)` is `width` values at
/// `(t * heads + h) * width`, written by exactly one task.
struct SharedRows {
    ptr: *mut f32,
    len: usize,
    width: usize,
}

// SAFETY: a pointer into a `&mut [f32]` that `run` borrows until every task has returned; the
// tasks write disjoint rows (`write`).
unsafe impl Sync for SharedRows {}

impl SharedRows {
    /// # Safety
    /// The caller must be the only one to write or read output row `index` during the call.
    unsafe fn write(&self, index: usize, values: &[f32]) {
        let start = index * self.width;
        assert!(values.len() == self.width && start + self.width <= self.len, "attention row {index} outside the output");
        // SAFETY: in bounds (checked above); the row is the caller's alone (contract).
        unsafe { std::ptr::copy_nonoverlapping(values.as_ptr(), self.ptr.add(start), self.width) };
    }
}

/// Rows `start..end` of head `h`, with the AVX2 build of the loops when the CPU has it.
///
/// # Safety
/// The caller must own output rows `(start..end, h)`.
unsafe fn head_rows<K: RowMap>(g: &Geometry<'_, K>, h: usize, start: usize, end: usize, out: &SharedRows) {
    #[cfg(target_arch = "x86_64")]
    if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") {
        // SAFETY: AVX2 and FMA were just detected; the rows are the caller's.
        return unsafe { head_rows_avx2(g, h, start, end, out) };
    }
    // SAFETY: the rows are the caller's.
    unsafe { head_rows_portable(g, h, start, end, out) }
}

/// The same loops compiled for AVX2 (the 8-lane sums become single registers). Rust never
/// fuses a multiply and an add by itself, so the roundings are the portable build's.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn head_rows_avx2<K: RowMap>(g: &Geometry<'_, K>, h: usize, start: usize, end: usize, out: &SharedRows) {
    // SAFETY: forwarded contract.
    unsafe { head_rows_portable(g, h, start, end, out) }
}

#[inline(always)]
unsafe fn head_rows_portable<K: RowMap>(g: &Geometry<'_, K>, h: usize, start: usize, end: usize, out: &SharedRows) {
    let d = g.dims.head_dim;
    let stride = g.dims.cached + end;
    let mut scratch = Scratch { scores: vec![0f32; TILE * stride], stride, acc: vec![0f32; TILE * d] };
    let mut t = start;
    while t < end {
        let rows = TILE.min(end - t);
        match rows {
            4 => tile::<K, 4>(g, h, t, &mut scratch),
            3 => tile::<K, 3>(g, h, t, &mut scratch),
            2 => tile::<K, 2>(g, h, t, &mut scratch),
            _ => tile::<K, 1>(g, h, t, &mut scratch),
        }
        for r in 0..rows {
            // SAFETY: the caller owns rows `(start..end, h)` (contract).
            unsafe { out.write((t + r) * g.dims.heads + h, &scratch.acc[r * d..][..d]) };
        }
        t += rows;
    }
}

/// A tile's working memory: `TILE` rows of scores (`stride` apart) and of outputs.
struct Scratch {
    scores: Vec<f32>,
    stride: usize,
    acc: Vec<f32>,
}

/// New rows `t0..t0 + R` of head `h` into `scratch.acc[..R * head_dim]`. Row `t0 + r` sees keys
/// `0..cached + t0 + r + 1`: the keys every row of the tile sees are read once for all of them,
/// then each row goes on alone over the keys only it sees, in the same ascending order.
#[inline(always)]
fn tile<K: RowMap, const R: usize>(g: &Geometry<'_, K>, h: usize, t0: usize, scratch: &mut Scratch) {
    let AttentionDims { heads, kv_heads, head_dim: d, cached, .. } = g.dims;
    let kv_head = h / (heads / kv_heads);
    let (k_data, k_head) = (g.k.data(), kv_head * g.k.head_stride());
    let (v_data, v_head) = (g.v.data(), kv_head * g.v.head_stride());
    let queries: [&[f32]; R] = std::array::from_fn(|r| &g.q.data[h * g.q.head_stride + (t0 + r) * d..][..d]);
    let seen: [usize; R] = std::array::from_fn(|r| cached + t0 + r + 1);
    let Scratch { scores, stride, acc } = scratch;
    let stride = *stride;
    let key = |j: usize| &k_data[k_head + g.k.row(j) * d..][..d];
    let value = |j: usize| &v_data[v_head + g.v.row(j) * d..][..d];

    for j in 0..seen[0] {
        let key = key(j);
        for r in 0..R {
            scores[r * stride + j] = dot(queries[r], key) * g.scale;
        }
    }
    for r in 1..R {
        for j in seen[0]..seen[r] {
            scores[r * stride + j] = dot(queries[r], key(j)) * g.scale;
        }
    }

    let mut norms = [0f32; R];
    for r in 0..R {
        let row = &mut scores[r * stride..][..seen[r]];
        let max = row.iter().fold(f32::NEG_INFINITY, |m, &s| m.max(s));
        let mut sum = 0f32;
        for s in row.iter_mut() {
            *s = (*s - max).exp();
            sum += *s;
        }
        norms[r] = 1.0 / sum;
    }

    acc[..R * d].fill(0.0);
    for j in 0..seen[0] {
        let value = value(j);
        for r in 0..R {
            let p = scores[r * stride + j];
            for (o, &x) in acc[r * d..][..d].iter_mut().zip(value) {
                *o += p * x;
            }
        }
    }
    for r in 1..R {
        for j in seen[0]..seen[r] {
            let p = scores[r * stride + j];
            for (o, &x) in acc[r * d..][..d].iter_mut().zip(value(j)) {
                *o += p * x;
            }
        }
    }
    for r in 0..R {
        acc[r * d..][..d].iter_mut().for_each(|o| *o *= norms[r]);
    }
}

/// A dot product in 8 independent lanes, so it vectorizes (f32 sums are not reassociated), the
/// lanes then summed in order: the same operations for every row.
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
