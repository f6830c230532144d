//! The kernels against an f64 reference on the same quantized values, the AVX2 kernel against
//! the portable one, and the quantizer against GGML's rules.

#![allow(clippy::unwrap_used)]

use crate::matmul::matmul_scalar;
use crate::*;

/// A small deterministic generator (xorshift64*), so failures reproduce.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// Uniform in [-1, 1).
    fn unit(&mut self) -> f32 {
        (self.next() >> 40) as f32 / (1u64 << 23) as f32 - 1.0
    }

    fn values(&mut self, n: usize, scale: f32) -> Vec<f32> {
        (0..n).map(|_| self.unit() * scale).collect()
    }
}

/// Always splits, into as many tasks as asked: exercises the chunking on any product size.
struct EagerThreads;

impl Parallel for EagerThreads {
    fn threads(&self) -> usize {
        3
    }
    fn min_work_per_thread(&self) -> usize {
        1
    }
    fn for_each(&self, tasks: usize, task: &(dyn Fn(usize) + Sync)) {
        ScopedThreads::new(3).for_each(tasks, task);
    }
}

/// The exact product of the quantized values, in f64, and the sum of the terms' magnitudes
/// (what bounds the f32 rounding of any summation order).
fn reference(w: &Q8_0Matrix, a: &Q8_0Rows) -> (Vec<f64>, Vec<f64>) {
    let kb = w.cols() / QK8_0;
    let w_blocks = w.to_blocks();
    let mut exact = vec![0f64; a.rows() * w.rows()];
    let mut magnitude = vec![0f64; a.rows() * w.rows()];
    for i in 0..a.rows() {
        for j in 0..w.rows() {
            for b in 0..kb {
                let (wb, ab) = (&w_blocks[j * kb + b], &a.blocks()[i * kb + b]);
                let dot: i64 = wb.qs.iter().zip(&ab.qs).map(|(&x, &y)| i64::from(x) * i64::from(y)).sum();
                let term = dot as f64 * f64::from(wb.scale()) * f64::from(ab.scale());
                exact[i * w.rows() + j] += term;
                magnitude[i * w.rows() + j] += term.abs();
            }
        }
    }
    (exact, magnitude)
}

fn product(w: &Q8_0Matrix, a: &Q8_0Rows, parallel: &dyn Parallel) -> Vec<f32> {
    let mut out = vec![f32::NAN; a.rows() * w.rows()];
    w.matmul(a, &mut out, parallel).unwrap();
    out
}

fn scalar_product(w: &Q8_0Matrix, a: &Q8_0Rows) -> Vec<f32> {
    let mut out = vec![f32::NAN; a.rows() * w.rows()];
    matmul_scalar(w, a, &mut out);
    out
}

fn assert_close(what: &str, got: &[f32], exact: &[f64], magnitude: &[f64]) {
    for (index, ((&g, &e), &mag)) in got.iter().zip(exact).zip(magnitude).enumerate() {
        // f32 accumulation over at most a few hundred blocks: well inside 1e-5 of the terms.
        let tolerance = 1e-5 * mag + 1e-30;
        assert!((f64::from(g) - e).abs() <= tolerance, "{what}: output {index} is {g}, exact {e} (tolerance {tolerance})");
    }
}

#[test]
fn products_match_an_f64_reference_for_odd_shapes() {
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    for m in 1..=9 {
        for (n, k) in [(1, 32), (3, 64), (5, 96), (17, 576), (33, 160), (8, 1536)] {
            let w = Q8_0Matrix::quantize(&rng.values(n * k, 0.05), n, k).unwrap();
            let a = Q8_0Rows::quantize(&rng.values(m * k, 3.0), m, k).unwrap();
            let (exact, magnitude) = reference(&w, &a);
            let shape = format!("m={m} n={n} k={k}");
            let serial = product(&w, &a, &Serial);
            assert_close(&format!("{shape} serial"), &serial, &exact, &magnitude);
            assert_eq!(scalar_product(&w, &a), serial, "{shape}: the portable kernel differs");
            let threaded = product(&w, &a, &EagerThreads);
            assert_eq!(threaded, product(&w, &a, &Serial), "{shape}: chunking changed a result");
            assert_eq!(product(&w, &a, ThreadPool::global()), threaded, "{shape}: the pool changed a result");
        }
    }
}

#[test]
fn packing_keeps_every_block() {
    let mut rng = Rng(3);
    let (n, k) = (13, 96);
    let blocks = quantize_rows_q8_0(&rng.values(n * k, 1.0), n, k).unwrap();
    assert_eq!(Q8_0Matrix::from_blocks(&blocks, n, k).unwrap().to_blocks(), blocks);
}

#[test]
fn the_simd_kernel_sums_exactly_the_same_integers_as_the_portable_one() {
    // Scales of 1 make every term an integer, so any summation order gives the same f32 and the
    // outputs are the exact integer dot products. Weights include -128 (GGUF files may hold it).
    let mut rng = Rng(42);
    let one = half::f16::from_f32(1.0).to_bits();
    let mut blocks = |count: usize, low: i64| -> Vec<BlockQ8_0> {
        (0..count)
            .map(|_| {
                let mut qs = [0i8; QK8_0];
                for q in &mut qs {
                    *q = (low + (rng.next() % (128 - low) as u64) as i64) as i8;
                }
                BlockQ8_0 { d: one, qs }
            })
            .collect()
    };
    let (m, n, k) = (7, 13, 2048);
    let mut w_blocks = blocks(n * k / QK8_0, -128);
    w_blocks[0].qs = [-128; QK8_0];
    let mut a_blocks = blocks(m * k / QK8_0, -127);
    a_blocks[0].qs = [-127; QK8_0];
    let w = Q8_0Matrix::new(w_blocks, n, k).unwrap();
    let a = Q8_0Rows::from_blocks(a_blocks, m, k).unwrap();
    let (exact, _) = reference(&w, &a);
    let exact: Vec<f32> = exact.iter().map(|&e| e as f32).collect();
    assert_eq!(product(&w, &a, &Serial), exact);
    assert_eq!(scalar_product(&w, &a), exact);
}

#[test]
fn quantizing_follows_ggml() {
    let mut values = vec![0f32; 64];
    values[0] = -2.54; // the block's largest magnitude: d = 2.54 / 127 = 0.02
    values[1] = 0.01; // exactly half a step: rounds away from zero
    values[2] = -0.01;
    values[3] = 0.0299; // just under 1.5 steps
    values[4] = 1.27;
    let blocks = quantize_rows_q8_0(&values, 2, 32).unwrap();
    assert_eq!(blocks.len(), 2);
    assert_eq!(blocks[0].d, half::f16::from_f32(0.02).to_bits());
    assert_eq!(&blocks[0].qs[..5], &[-127, 1, -1, 1, 64]);
    assert_eq!(blocks[1], BlockQ8_0 { d: 0, qs: [0; QK8_0] }, "an all-zero block has scale 0");
    assert!(matches!(quantize_rows_q8_0(&values, 1, 48), Err(ShapeError::NotBlockAligned { cols: 48 })));
    assert!(matches!(quantize_rows_q8_0(&values, 3, 32), Err(ShapeError::Length { .. })));
}

#[test]
fn the_simd_quantizer_gives_the_portable_blocks() {
    let mut rng = Rng(11);
    let mut x = rng.values(64 * 32, 4.0);
    // A block with scale 1 and values halfway between integers: rounding must go away from zero.
    x[..32].iter_mut().enumerate().for_each(|(i, v)| *v = i as f32 - 15.5);
    x[31] = 127.0;
    x[32..64].fill(0.0);
    let blocks = quantize_rows_q8_0(&x, 64, 32).unwrap();
    let mut portable = blocks.clone();
    crate::quantize::quantize_portable(&x, &mut portable);
    assert_eq!(blocks, portable);
    assert_eq!(&portable[0].qs[..4], &[-16, -15, -14, -13]);
    assert_eq!(portable[0].qs[15], -1); // -0.5
    assert_eq!(portable[0].qs[16], 1); // 0.5
}

#[test]
fn blocks_read_from_ggml_bytes() {
    let mut bytes = vec![0u8; 68];
    bytes[0..2].copy_from_slice(&0x3C00u16.to_le_bytes()); // f16 1.0
    bytes[2] = 0xFF; // -1
    bytes[33] = 0x7F; // 127
    bytes[34..36].copy_from_slice(&0xBC00u16.to_le_bytes()); // f16 -1.0
    let blocks = BlockQ8_0::from_bytes(&bytes).unwrap();
    assert_eq!(blocks.len(), 2);
    assert_eq!((blocks[0].scale(), blocks[0].qs[0], blocks[0].qs[31]), (1.0, -1, 127));
    assert_eq!(blocks[1].scale(), -1.0);
    assert!(BlockQ8_0::from_bytes(&bytes[..67]).is_err());
}

#[test]
fn the_free_function_checks_its_shapes() {
    let mut rng = Rng(7);
    let (m, n, k) = (3, 10, 64);
    let w_f32 = rng.values(n * k, 1.0);
    let a_f32 = rng.values(m * k, 1.0);
    let weights = quantize_rows_q8_0(&w_f32, n, k).unwrap();
    let activations = quantize_rows_q8_0(&a_f32, m, k).unwrap();
    let mut out = vec![0f32; m * n];
    matmul_q8_0(&weights, &activations, m, n, k, &mut out).unwrap();
    let matrix = Q8_0Matrix::from_blocks(&weights, n, k).unwrap();
    let expected = product(&matrix, &Q8_0Rows::quantize(&a_f32, m, k).unwrap(), &Serial);
    assert_eq!(out, expected);

    assert!(matmul_q8_0(&weights, &activations, m, n, k, &mut out[1..]).is_err());
    assert!(matmul_q8_0(&weights[1..], &activations, m, n, k, &mut out).is_err());
    assert!(matmul_q8_0(&weights, &activations, m, n, 48, &mut out).is_err());
    let mut bad = activations.clone();
    bad[0].qs[5] = i8::MIN;
    assert_eq!(matmul_q8_0(&weights, &bad, m, n, k, &mut out), Err(ShapeError::ActivationOutOfRange));
    let other = Q8_0Rows::quantize(&rng.values(m * 32, 1.0), m, 32).unwrap();
    let w = Q8_0Matrix::from_blocks(&weights, n, k).unwrap();
    assert!(matches!(w.matmul(&other, &mut out, &Serial), Err(ShapeError::Mismatch { weight_cols: 64, activation_cols: 32 })));
}
