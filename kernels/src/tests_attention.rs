//! Attention against a naive f64 softmax on the same numbers.

#![allow(clippy::unwrap_used)]

use crate::{AttentionDims, Heads, PagedHeads, Serial, causal_attention, paged_causal_attention};

fn values(n: usize, seed: u32) -> Vec<f32> {
    (0..n).map(|i| ((i as u32).wrapping_mul(2_654_435_761).wrapping_add(seed) >> 8) as f32 / (1u32 << 24) as f32 - 0.5).collect()
}

#[test]
fn matches_a_naive_softmax_with_grouped_heads_and_strided_caches() {
    for (heads, kv_heads, head_dim, cached, new) in [(9, 3, 64, 0, 1), (9, 3, 64, 37, 1), (4, 2, 12, 5, 3), (2, 2, 8, 0, 4)] {
        let capacity = cached + new + 7; // the cache buffers are larger than what is filled
        let q_stride = new * head_dim + 5;
        let q = values(heads * q_stride, 1);
        let k = values(kv_heads * capacity * head_dim, 2);
        let v = values(kv_heads * capacity * head_dim, 3);
        let scale = 1.0 / (head_dim as f32).sqrt();
        let dims = AttentionDims { heads, kv_heads, head_dim, cached, new };
        let mut out = vec![f32::NAN; new * heads * head_dim];
        let kv = |data| Heads { data, head_stride: capacity * head_dim };
        causal_attention(Heads { data: &q, head_stride: q_stride }, kv(&k), kv(&v), dims, scale, &mut out, &Serial).unwrap();

        let group = heads / kv_heads;
        for h in 0..heads {
            let g = h / group;
            for t in 0..new {
                let query = &q[h * q_stride + t * head_dim..][..head_dim];
                let row = |data: &[f32], j: usize| data[g * capacity * head_dim + j * head_dim..][..head_dim].to_vec();
                let seen = cached + t + 1;
                let dot = |j: usize| row(&k, j).iter().zip(query).map(|(&a, &b)| f64::from(a) * f64::from(b)).sum::<f64>();
                let scores: Vec<f64> = (0..seen).map(|j| dot(j) * f64::from(scale)).collect();
                let max = scores.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                let weights: Vec<f64> = scores.iter().map(|s| (s - max).exp()).collect();
                let total: f64 = weights.iter().sum();
                for e in 0..head_dim {
                    let expected: f64 = (0..seen).map(|j| weights[j] / total * f64::from(row(&v, j)[e])).sum();
                    let got = out[(t * heads + h) * head_dim + e];
                    let what = format!("heads {heads}/{kv_heads} t {t} h {h} e {e}");
                    assert!((f64::from(got) - expected).abs() < 1e-5, "{what}: {got} vs {expected}");
                }
            }
        }
    }
}

#[test]
fn refuses_buffers_too_small() {
    let dims = AttentionDims { heads: 4, kv_heads: 2, head_dim: 8, cached: 3, new: 1 };
    let q = vec![0f32; 4 * 8];
    let kv = vec![0f32; 2 * 4 * 8];
    let heads = |data| Heads { data, head_stride: 4 * 8 };
    let mut out = vec![0f32; 4 * 8];
    assert!(causal_attention(Heads { data: &q, head_stride: 8 }, heads(&kv), heads(&kv), dims, 1.0, &mut out, &Serial).is_ok());
    assert!(
        causal_attention(Heads { data: &q, head_stride: 8 }, heads(&kv[1..]), heads(&kv), dims, 1.0, &mut out, &Serial).is_err()
    );
    assert!(
        causal_attention(Heads { data: &q[1..], head_stride: 8 }, heads(&kv), heads(&kv), dims, 1.0, &mut out, &Serial).is_err()
    );
    assert!(
        causal_attention(Heads { data: &q, head_stride: 8 }, heads(&kv), heads(&kv), dims, 1.0, &mut out[1..], &Serial).is_err()
    );
    let bad = AttentionDims { heads: 3, ..dims };
    assert!(causal_attention(Heads { data: &q, head_stride: 8 }, heads(&kv), heads(&kv), bad, 1.0, &mut out, &Serial).is_err());
}

/// The same cache laid out in scattered blocks gives bit-for-bit the same output as the
/// contiguous one, and a block table pointing past the buffers is refused.
#[test]
fn a_paged_cache_gives_the_contiguous_result_and_a_bad_table_is_refused() {
    let (heads, kv_heads, head_dim, block) = (6, 2, 16, 4usize);
    for (cached, new) in [(0usize, 1usize), (9, 1), (13, 3), (31, 1)] {
        let total = cached + new;
        let blocks = total.div_ceil(block);
        let capacity = (blocks + 3) * block;
        let q = values(heads * new * head_dim, 4);
        let k = values(kv_heads * total * head_dim, 5);
        let v = values(kv_heads * total * head_dim, 6);
        // Logical block b in physical block (blocks + 2 - b): reversed, with a gap.
        let physical = |b: usize| blocks + 2 - b;
        let rows: Vec<u32> = (0..total).map(|j| (physical(j / block) * block + j % block) as u32).collect();
        let scatter = |src: &[f32]| {
            let mut paged = vec![f32::NAN; kv_heads * capacity * head_dim];
            for g in 0..kv_heads {
                for j in 0..total {
                    let to = g * capacity * head_dim + rows[j] as usize * head_dim;
                    paged[to..to + head_dim].copy_from_slice(&src[(g * total + j) * head_dim..][..head_dim]);
                }
            }
            paged
        };
        let (paged_k, paged_v) = (scatter(&k), scatter(&v));
        let dims = AttentionDims { heads, kv_heads, head_dim, cached, new };
        let query = Heads { data: &q, head_stride: new * head_dim };
        let mut contiguous = vec![0f32; new * heads * head_dim];
        let flat = |data| Heads { data, head_stride: total * head_dim };
        causal_attention(query, flat(&k), flat(&v), dims, 0.25, &mut contiguous, &Serial).unwrap();
        let mut paged = vec![0f32; new * heads * head_dim];
        let table = |data| PagedHeads { data, head_stride: capacity * head_dim, rows: &rows };
        paged_causal_attention(query, table(&paged_k), table(&paged_v), dims, 0.25, &mut paged, &Serial).unwrap();
        assert_eq!(paged, contiguous, "cached {cached} new {new}");

        let mut past_the_end = rows.clone();
        past_the_end[0] = capacity as u32;
        let bad = PagedHeads { data: &paged_k, head_stride: capacity * head_dim, rows: &past_the_end };
        assert!(paged_causal_attention(query, bad, table(&paged_v), dims, 0.25, &mut paged, &Serial).is_err());
        let short = PagedHeads { rows: &rows[..total - 1], ..table(&paged_k) };
        assert!(paged_causal_attention(query, short, table(&paged_v), dims, 0.25, &mut paged, &Serial).is_err());
    }
}
