//! Batch invariance, bit for bit: a row's result from the Q8_0 product and from attention is the
//! same whatever rows are computed with it, however a prompt is cut into chunks, and however
//! the work is split over threads.

#![allow(clippy::unwrap_used)]

use proptest::prelude::*;

use crate::{
    AttentionDims, F32Matrix, Heads, PagedHeads, Parallel, Q8_0Matrix, Q8_0Rows, Serial, ThreadPool, causal_attention,
    paged_causal_attention,
};

fn values(n: usize, seed: u64) -> Vec<f32> {
    let mut state = seed.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1_442_695_040_888_963_407);
    (0..n)
        .map(|_| {
            state = state.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1_442_695_040_888_963_407);
            ((state >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * 4.0
        })
        .collect()
}

fn bits(values: &[f32]) -> Vec<u32> {
    values.iter().map(|v| v.to_bits()).collect()
}

/// A pool of 3 threads that splits every call it can (tiny work per thread).
struct EagerPool(ThreadPool);

impl Parallel for EagerPool {
    fn threads(&self) -> usize {
        self.0.threads()
    }
    fn min_work_per_thread(&self) -> usize {
        1
    }
    fn for_each(&self, tasks: usize, task: &(dyn Fn(usize) + Sync)) {
        self.0.for_each(tasks, task);
    }
}

fn eager() -> &'static EagerPool {
    static POOL: std::sync::OnceLock<EagerPool> = std::sync::OnceLock::new();
    POOL.get_or_init(|| EagerPool(ThreadPool::new(3)))
}

/// The attention output of positions `from..to` of one sequence whose keys and values (all
/// `total` of them) live in a paged cache under `rows`, queries taken from `q_all` (`[heads,
/// total, head_dim]`).
#[allow(clippy::too_many_arguments)]
fn attend_chunk(
    dims: (usize, usize, usize),
    q_all: &[f32],
    total: usize,
    k: &[f32],
    v: &[f32],
    capacity: usize,
    rows: &[u32],
    from: usize,
    to: usize,
    parallel: &dyn Parallel,
) -> Vec<f32> {
    let (heads, kv_heads, d) = dims;
    let new = to - from;
    let mut q = Vec::with_capacity(heads * new * d);
    for h in 0..heads {
        q.extend_from_slice(&q_all[(h * total + from) * d..(h * total + to) * d]);
    }
    let dims = AttentionDims { heads, kv_heads, head_dim: d, cached: from, new };
    let mut out = vec![f32::NAN; new * heads * d];
    let table = |data| PagedHeads { data, head_stride: capacity * d, rows: &rows[..to] };
    let query = Heads { data: &q, head_stride: new * d };
    paged_causal_attention(query, table(k), table(v), dims, 0.125, &mut out, parallel).unwrap();
    out
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    /// A prompt's attention outputs in one call equal those of any chunking of it, down to one
    /// position per call (decoding), through a scattered block table, serial or threaded.
    #[test]
    fn attention_rows_do_not_depend_on_the_chunking(
        total in 1usize..90,
        cuts in proptest::collection::vec(1usize..20, 1..12),
        groups in 1usize..4,
        kv_heads in 1usize..3,
        d in prop_oneof![Just(8usize), Just(12), Just(64)],
        seed in any::<u64>(),
    ) {
        let heads = groups * kv_heads;
        let block = 4;
        let blocks = total.div_ceil(block);
        let capacity = (blocks + 2) * block;
        // Logical block b in physical block (blocks + 1 - b): reversed, with a gap.
        let rows: Vec<u32> = (0..total).map(|j| ((blocks + 1 - j / block) * block + j % block) as u32).collect();
        let q = values(heads * total * d, seed);
        let k = values(kv_heads * capacity * d, seed ^ 1);
        let v = values(kv_heads * capacity * d, seed ^ 2);
        let dims = (heads, kv_heads, d);
        let whole = attend_chunk(dims, &q, total, &k, &v, capacity, &rows, 0, total, &Serial);
        prop_assert_eq!(bits(&whole), bits(&attend_chunk(dims, &q, total, &k, &v, capacity, &rows, 0, total, eager())));
        let mut chunked = Vec::new();
        let (mut from, mut cut) = (0, 0);
        while from < total {
            let to = total.min(from + cuts[cut % cuts.len()]);
            let parallel: &dyn Parallel = if cut % 2 == 0 { &Serial } else { eager() };
            chunked.extend(attend_chunk(dims, &q, total, &k, &v, capacity, &rows, from, to, parallel));
            from = to;
            cut += 1;
        }
        prop_assert_eq!(bits(&whole), bits(&chunked));
        let one_by_one: Vec<f32> =
            (0..total).flat_map(|t| attend_chunk(dims, &q, total, &k, &v, capacity, &rows, t, t + 1, &Serial)).collect();
        prop_assert_eq!(bits(&whole), bits(&one_by_one));
    }

    /// A Q8_0 product's output row is the same alone, at any place among any number of other
    /// rows, serial or threaded.
    #[test]
    fn product_rows_do_not_depend_on_the_other_rows(
        n in 1usize..40,
        kb in 1usize..6,
        others in 0usize..12,
        place in any::<prop::sample::Index>(),
        seed in any::<u64>(),
    ) {
        let k = kb * 32;
        let w = Q8_0Matrix::quantize(&values(n * k, seed), n, k).unwrap();
        let row = values(k, seed ^ 3);
        let mut alone = vec![0f32; n];
        w.matmul(&Q8_0Rows::quantize(&row, 1, k).unwrap(), &mut alone, &Serial).unwrap();
        let at = place.index(others + 1);
        let mut batch = values(others * k, seed ^ 4);
        batch.splice(at * k..at * k, row.iter().copied());
        let rows = others + 1;
        let activations = Q8_0Rows::quantize(&batch, rows, k).unwrap();
        for parallel in [&Serial as &dyn Parallel, eager()] {
            let mut out = vec![0f32; rows * n];
            w.matmul(&activations, &mut out, parallel).unwrap();
            prop_assert_eq!(bits(&alone), bits(&out[at * n..(at + 1) * n]));
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    /// A dense product's output row is the same alone or at any place among other rows, serial
    /// or threaded, and close to an f64 reference.
    #[test]
    fn dense_rows_do_not_depend_on_the_other_rows(
        n in 1usize..30,
        k in 1usize..70,
        others in 0usize..10,
        place in any::<prop::sample::Index>(),
        seed in any::<u64>(),
    ) {
        let weights = values(n * k, seed);
        let w = F32Matrix::new(&weights, n, k).unwrap();
        let row = values(k, seed ^ 3);
        let mut alone = vec![0f32; n];
        w.matmul(&row, 1, &mut alone, &Serial).unwrap();
        for (j, &got) in alone.iter().enumerate() {
            let exact: f64 = (0..k).map(|c| f64::from(row[c]) * f64::from(weights[j * k + c])).sum();
            let magnitude: f64 = (0..k).map(|c| (f64::from(row[c]) * f64::from(weights[j * k + c])).abs()).sum();
            prop_assert!((f64::from(got) - exact).abs() <= 1e-6 * magnitude + 1e-12, "{} vs {}", got, exact);
        }
        let at = place.index(others + 1);
        let mut batch = values(others * k, seed ^ 4);
        batch.splice(at * k..at * k, row.iter().copied());
        let rows = others + 1;
        for parallel in [&Serial as &dyn Parallel, eager()] {
            let mut out = vec![0f32; rows * n];
            w.matmul(&batch, rows, &mut out, parallel).unwrap();
            prop_assert_eq!(bits(&alone), bits(&out[at * n..(at + 1) * n]));
        }
    }
}

#[test]
fn the_dense_product_checks_its_shapes() {
    assert!(F32Matrix::new(&[0.0; 5], 2, 3).is_err());
    let w = F32Matrix::new(&[1.0; 6], 2, 3).unwrap();
    let mut out = vec![0f32; 4];
    assert!(w.matmul(&[1.0; 5], 2, &mut out, &Serial).is_err());
    assert!(w.matmul(&[1.0; 6], 2, &mut out[1..], &Serial).is_err());
    w.matmul(&[1.0; 6], 2, &mut out, &Serial).unwrap();
    assert_eq!(out, vec![3.0; 4]);
}

/// The contiguous and paged forms agree bit for bit on a long prompt (over a thousand positions)
/// computed whole and as a prefix plus a chunk.
#[test]
fn a_long_prompt_whole_equals_prefix_then_chunk() {
    let (heads, kv_heads, d, total) = (9, 3, 64, 1100);
    let q = values(heads * total * d, 7);
    let k = values(kv_heads * total * d, 8);
    let v = values(kv_heads * total * d, 9);
    let rows: Vec<u32> = (0..total as u32).collect();
    let dims = (heads, kv_heads, d);
    let whole = attend_chunk(dims, &q, total, &k, &v, total, &rows, 0, total, ThreadPool::global());
    let mut split = attend_chunk(dims, &q, total, &k, &v, total, &rows, 0, 1072, ThreadPool::global());
    split.extend(attend_chunk(dims, &q, total, &k, &v, total, &rows, 1072, total, &Serial));
    assert_eq!(bits(&whole), bits(&split));
    // And the contiguous entry point gives the same bits.
    let mut contiguous = vec![0f32; total * heads * d];
    let dims = AttentionDims { heads, kv_heads, head_dim: d, cached: 0, new: total };
    let flat = |data| Heads { data, head_stride: total * d };
    causal_attention(Heads { data: &q, head_stride: total * d }, flat(&k), flat(&v), dims, 0.125, &mut contiguous, &Serial)
        .unwrap();
    assert_eq!(bits(&whole), bits(&contiguous));
}
