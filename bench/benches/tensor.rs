//! Tensor decode and encode at 64 B, 64 KiB and 4 MiB: typed contents to the raw layout (FP32
//! and BYTES), payload validation, the BYTES codec and the typed views. Throughput is payload
//! bytes, so the numbers read as GB/s.
//!
//! `cargo bench -p tritium-bench --bench tensor` (add `-- --quick` for a fast pass).

use std::hint::black_box;

use bytes::Bytes;
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use tritium_proto::inference::InferTensorContents;
use tritium_tensor::{DataType, Tensor, bytes_codec, contents};

const SIZES: [(usize, &str); 3] = [(64, "64B"), (64 << 10, "64KiB"), (4 << 20, "4MiB")];

/// Encoded size of one BYTES element: a 4-byte prefix and a 12-byte body, word-sized strings
/// so the per-element work shows.
const ELEMENT: usize = 16;

fn floats(size: usize) -> Vec<f32> {
    (0..size / 4).map(|i| i as f32).collect()
}

fn strings(size: usize) -> Vec<Bytes> {
    (0..size / ELEMENT).map(|i| Bytes::from(format!("{i:012}"))).collect()
}

fn typed_to_raw(c: &mut Criterion) {
    let mut group = c.benchmark_group("typed_to_raw");
    for (size, label) in SIZES {
        group.throughput(Throughput::Bytes(size as u64));
        let fp32 = InferTensorContents { fp32_contents: floats(size), ..Default::default() };
        group.bench_with_input(BenchmarkId::new("FP32", label), &fp32, |b, typed| {
            b.iter(|| contents::typed_to_raw(DataType::Fp32, black_box(typed)))
        });
        let bytes = InferTensorContents { bytes_contents: strings(size), ..Default::default() };
        group.bench_with_input(BenchmarkId::new("BYTES", label), &bytes, |b, typed| {
            b.iter(|| contents::typed_to_raw(DataType::Bytes, black_box(typed)))
        });
    }
    group.finish();
}

fn validate(c: &mut Criterion) {
    let mut group = c.benchmark_group("validate");
    for (size, label) in SIZES {
        group.throughput(Throughput::Bytes(size as u64));
        let values = floats(size);
        let fp32 = Tensor::from_slice("x", vec![values.len() as i64], &values);
        group.bench_with_input(BenchmarkId::new("FP32", label), &fp32, |b, t| b.iter(|| black_box(t).validate()));
        let items = strings(size);
        let text = Tensor::from_byte_strings("s", vec![items.len() as i64], &items);
        group.bench_with_input(BenchmarkId::new("BYTES", label), &text, |b, t| b.iter(|| black_box(t).validate()));
    }
    group.finish();
}

fn bytes_count(c: &mut Criterion) {
    let mut group = c.benchmark_group("bytes_codec_count");
    for (size, label) in SIZES {
        group.throughput(Throughput::Bytes(size as u64));
        let data = bytes_codec::encode(strings(size));
        group.bench_with_input(BenchmarkId::from_parameter(label), &data, |b, data| {
            b.iter(|| bytes_codec::count(black_box(data)))
        });
    }
    group.finish();
}

fn typed_views(c: &mut Criterion) {
    let mut group = c.benchmark_group("typed_views");
    for (size, label) in SIZES {
        group.throughput(Throughput::Bytes(size as u64));
        let values = floats(size);
        let shape = vec![values.len() as i64];
        group.bench_with_input(BenchmarkId::new("from_slice_f32", label), &values, |b, values| {
            b.iter(|| Tensor::from_slice("x", shape.clone(), black_box(values)))
        });
        let tensor = Tensor::from_slice("x", shape.clone(), &values);
        group.bench_with_input(BenchmarkId::new("to_vec_f32", label), &tensor, |b, t| b.iter(|| black_box(t).to_vec::<f32>()));
    }
    group.finish();
}

criterion_group!(benches, typed_to_raw, validate, bytes_count, typed_views);
criterion_main!(benches);
