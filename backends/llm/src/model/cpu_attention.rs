//! A decoding sequence's attention on the CPU, straight over the tensors' buffers with
//! `tritium-kernels`' loop instead of a dozen candle ops (slice, copy, two matmuls, softmax,
//! reshapes) per sequence and layer. For one new position those ops cost far more in overhead
//! than in arithmetic, and a batched step pays them once per sequence, so they were most of
//! what a batch costs beyond its matmuls. (candle's f32 matmul also asks `num_cpus` for the
//! physical core count on every call, which reads `/proc/cpuinfo`.)

use candle_core::{DType, Result, Storage, Tensor};
use tritium_kernels::{AttentionDims, Heads, PagedHeads, paged_causal_attention};

/// Whether [`attend`] takes a sequence that feeds `new` positions: decode rows on the CPU. A
/// prompt chunk stays with candle, whose GEMM is the faster for many rows at once.
pub(crate) fn applies(q: &Tensor, new: usize) -> bool {
    new == 1 && q.device().is_cpu() && q.dtype() == DType::F32
}

/// One layer of the paged KV store and a sequence's rows in it.
pub(crate) struct Paged<'a> {
    /// `[kv_heads, store rows, head_dim]`.
    pub keys: &'a Tensor,
    pub values: &'a Tensor,
    /// Physical rows of the sequence's positions, the new ones included.
    pub rows: &'a [u32],
}

/// Attention of the `new` rows at `offset` of `q` (`[heads, rows, head_dim]`, contiguous) over
/// the sequence's keys and values read in place through its rows, written to `out`
/// (`[new, heads * head_dim]`).
pub(crate) fn attend(q: &Tensor, offset: usize, kv: Paged<'_>, cached: usize, scale: f32, out: &mut [f32]) -> Result<()> {
    let (heads, rows, head_dim) = q.dims3()?;
    let (kv_heads, _, _) = kv.keys.dims3()?;
    let Some(new) = kv.rows.len().checked_sub(cached) else { candle_core::bail!("fewer rows than cached positions") };
    let dims = AttentionDims { heads, kv_heads, head_dim, cached, new };
    with_rows(q, head_dim, |q_data, q_stride| {
        if q_stride != rows * head_dim {
            candle_core::bail!("the queries are not contiguous");
        }
        let q = Heads { data: q_data.get(offset * head_dim..).unwrap_or_default(), head_stride: q_stride };
        with_rows(kv.keys, head_dim, |k_data, k_stride| {
            with_rows(kv.values, head_dim, |v_data, v_stride| {
                let k = PagedHeads { data: k_data, head_stride: k_stride, rows: kv.rows };
                let v = PagedHeads { data: v_data, head_stride: v_stride, rows: kv.rows };
                paged_causal_attention(q, k, v, dims, scale, out).map_err(candle_core::Error::wrap)
            })
        })
    })
}

/// `f` over the f32 buffer of a CPU tensor `[heads, positions, head_dim]` whose rows are
/// contiguous, from its first element, with the distance between its heads.
fn with_rows<R>(t: &Tensor, head_dim: usize, f: impl FnOnce(&[f32], usize) -> Result<R>) -> Result<R> {
    let (storage, layout) = t.storage_and_layout();
    let Storage::Cpu(cpu) = &*storage else { candle_core::bail!("CPU attention got a tensor on {:?}", t.device()) };
    let stride = layout.stride();
    if stride.len() != 3 || stride[2] != 1 || stride[1] != head_dim {
        candle_core::bail!("CPU attention needs contiguous rows, got strides {stride:?}");
    }
    let data = cpu.as_slice::<f32>()?;
    f(data.get(layout.start_offset()..).unwrap_or_default(), stride[0])
}
