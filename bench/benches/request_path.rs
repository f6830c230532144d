//! The in-process request path, no network: a request shaped like perf_analyzer's goes through
//! `decode_request`, the in-process worker on the built-in repository, `encode_response` and
//! protobuf serialization, which is everything Tritium does per ModelInfer call besides HTTP/2.
//!
//! - `request_path`: that path from a decoded `ModelInferRequest` to response bytes.
//! - `stages`: the same path, one step at a time, for identity FP32[16].
//! - `wire`: bytes in, bytes out (protobuf decode of the request included, as tonic does it),
//!   Tritium's path beside the limit server's echo.
//! - `prost_decode`: `ModelInferRequest` from a `Bytes` buffer alone.
//!
//! `cargo bench -p tritium-bench --bench request_path` (add `-- --quick` for a fast pass).

use std::hint::black_box;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use criterion::{BatchSize, BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use prost::Message;
use tokio::runtime::Runtime;
use tritium_bench::{limit, requests};
use tritium_proto::inference::ModelInferRequest;
use tritium_server::grpc::convert::{decode_request, encode_response};
use tritium_server::shm::SharedMemoryRegistry;
use tritium_worker::{InferenceRequest, InferenceResponse, LocalWorker, ModelRepository, RepositoryOptions, WorkerClient};

/// A request to time, with the throughput to report for it.
struct Case {
    name: &'static str,
    request: ModelInferRequest,
    throughput: Throughput,
}

fn cases() -> Vec<Case> {
    use requests::{fp32_input, infer_request, int32_input};
    let large = 4 << 20;
    vec![
        Case {
            name: "identity_fp32_16",
            request: infer_request("identity", &[fp32_input("INPUT0", 16)], &["OUTPUT0"]),
            throughput: Throughput::Elements(1),
        },
        Case {
            name: "identity_fp32_4MiB",
            request: infer_request("identity", &[fp32_input("INPUT0", large / 4)], &["OUTPUT0"]),
            throughput: Throughput::Bytes(large as u64),
        },
        Case {
            name: "add_sub_int32_16",
            request: infer_request("add_sub", &[int32_input("INPUT0", 16), int32_input("INPUT1", 16)], &["OUTPUT0", "OUTPUT1"]),
            throughput: Throughput::Elements(1),
        },
    ]
}

/// What a Tritium server holds for the path: the built-in repository behind the in-process
/// worker, and an (empty) shared-memory registry.
struct Server {
    repository: Arc<ModelRepository>,
    worker: LocalWorker,
    shm: SharedMemoryRegistry,
}

impl Server {
    fn new() -> Server {
        let repository = ModelRepository::open(RepositoryOptions::default(), tritium_worker::builtin_backends())
            .expect("the built-in repository loads");
        Server { worker: LocalWorker::new(Arc::clone(&repository)), repository, shm: SharedMemoryRegistry::new() }
    }

    /// Validation (version resolution included) and the run, as the dispatcher does them.
    async fn run(&self, request: InferenceRequest) -> InferenceResponse {
        let valid = self.repository.validate(request).expect("a valid request");
        self.worker.infer(valid).await.expect("inference succeeds")
    }

    /// ModelInfer as the gRPC handler runs it, plus the serialization tonic does afterwards.
    async fn infer(&self, request: ModelInferRequest) -> Vec<u8> {
        let decoded = decode_request(request, &self.shm, Instant::now()).expect("a valid request");
        let response = self.run(decoded.request).await;
        encode_response(response, &decoded.shm, &self.shm, None).expect("encodes").encode_to_vec()
    }
}

fn runtime() -> Runtime {
    tokio::runtime::Builder::new_current_thread().enable_all().build().expect("a tokio runtime")
}

fn request_path(c: &mut Criterion) {
    let rt = runtime();
    let server = &Server::new();
    let mut group = c.benchmark_group("request_path");
    for case in cases() {
        group.throughput(case.throughput);
        group.bench_with_input(BenchmarkId::from_parameter(case.name), &case.request, |b, request| {
            // The response bytes are dropped inside the timed routine, as tonic drops them once
            // written: a batch of 4 MiB responses kept alive would time page faults, not the path.
            let routine = |request| async move { server.infer(request).await.len() };
            b.to_async(&rt).iter_batched(|| request.clone(), routine, BatchSize::SmallInput)
        });
    }
    group.finish();
}

fn stages(c: &mut Criterion) {
    let rt = runtime();
    let server = &Server::new();
    let request = requests::infer_request("identity", &[requests::fp32_input("INPUT0", 16)], &["OUTPUT0"]);
    let decode = || decode_request(request.clone(), &server.shm, Instant::now()).expect("a valid request");
    let infer = |decoded: tritium_server::grpc::convert::Decoded| async move { server.run(decoded.request).await };
    let response = rt.block_on(infer(decode()));
    let encoded = encode_response(response.clone(), &Default::default(), &server.shm, None).expect("encodes");

    let mut group = c.benchmark_group("stages");
    group.throughput(Throughput::Elements(1));
    group.bench_function("decode_request", |b| {
        b.iter_batched(|| request.clone(), |r| decode_request(r, &server.shm, Instant::now()), BatchSize::SmallInput)
    });
    group.bench_function("worker_infer", |b| b.to_async(&rt).iter_batched(decode, infer, BatchSize::SmallInput));
    group.bench_function("encode_response", |b| {
        b.iter_batched(|| response.clone(), |r| encode_response(r, &Default::default(), &server.shm, None), BatchSize::SmallInput)
    });
    group.bench_function("encode_to_vec", |b| b.iter(|| black_box(&encoded).encode_to_vec()));
    group.finish();
}

fn wire(c: &mut Criterion) {
    let rt = runtime();
    let server = &Server::new();
    let mut group = c.benchmark_group("wire");
    for case in cases() {
        let bytes = Bytes::from(case.request.encode_to_vec());
        group.throughput(case.throughput);
        group.bench_with_input(BenchmarkId::new("tritium", case.name), &bytes, |b, bytes| {
            b.to_async(&rt).iter(|| async {
                let request = ModelInferRequest::decode(bytes.clone()).expect("decodes");
                server.infer(request).await
            })
        });
        group.bench_with_input(BenchmarkId::new("limit", case.name), &bytes, |b, bytes| {
            b.iter(|| limit::echo(ModelInferRequest::decode(bytes.clone()).expect("decodes")).encode_to_vec())
        });
    }
    group.finish();
}

fn prost_decode(c: &mut Criterion) {
    let mut group = c.benchmark_group("prost_decode");
    for case in cases() {
        let bytes = Bytes::from(case.request.encode_to_vec());
        group.throughput(case.throughput);
        group.bench_with_input(BenchmarkId::from_parameter(case.name), &bytes, |b, bytes| {
            // A `Bytes` buffer lets the raw payloads be slices of it rather than copies.
            b.iter(|| ModelInferRequest::decode(black_box(bytes.clone())).expect("decodes"))
        });
    }
    group.finish();
}

criterion_group!(benches, request_path, stages, wire, prost_decode);
criterion_main!(benches);
