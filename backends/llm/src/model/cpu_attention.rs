//! Attention on the CPU, straight over the tensors' buffers with `tritium-kernels`' loops, for
//! decode rows and prompt chunks alike. One kernel for both is what makes a token's logits
//! independent of how its prompt was computed: the kernel gives a query row the same bits
//! whatever rows share its call (see `tritium_kernels::causal_attention`), where candle's GEMM
//! and softmax would sum in an order that depends on the chunk's shape, so a prompt prefilled
//! cold, in other chunks or over a prefix-cache hit would answer differently. (It also skips a
//! dozen candle ops per sequence and layer whose overhead was most of a decode step's cost
//! beyond its matmuls.) Speculative verification of k+1 positions, when it comes, must go
//! through this same path, so verified positions get the logits decoding them would.

use candle_core::{DType, Result, Storage, Tensor};
use tritium_kernels::{AttentionDims, Heads, PagedHeads, ThreadPool, paged_causal_attention};

/// Whether [`attend`] takes these queries: F32 on the CPU (every CPU model: the KV store has
/// the embeddings' type, F32 there).
pub(crate) fn applies(q: &Tensor) -> bool {
    q.device().is_cpu() && q.dtype() == DType::F32
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
                paged_causal_attention(q, k, v, dims, scale, out, ThreadPool::global()).map_err(candle_core::Error::wrap)
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
