//! System shared memory with real POSIX segments, as tritonclient and perf_analyzer use it:
//! register/status/unregister, Triton 2.51's codes for bad registrations, inputs read from and
//! outputs written to regions at offsets, and the CUDA RPCs answered UNIMPLEMENTED.

use std::collections::HashMap;

use tonic::Code;
use tritium_grpc_clients::{InferClient, InferRequestBuilder, output_tensor};
use tritium_proto::inference::infer_parameter::ParameterChoice;
use tritium_proto::inference::model_infer_request::{InferInputTensor, InferRequestedOutputTensor};
use tritium_proto::inference::system_shared_memory_status_response::RegionStatus;
use tritium_proto::inference::{
    CudaSharedMemoryRegisterRequest, CudaSharedMemoryStatusRequest, CudaSharedMemoryUnregisterRequest, InferParameter,
    ModelInferRequest, SystemSharedMemoryRegisterRequest, SystemSharedMemoryStatusRequest, SystemSharedMemoryUnregisterRequest,
};
use tritium_tensor::Tensor;
use tritium_tests::{Segment, TestServer, assert_status};

async fn register(client: &mut InferClient, name: &str, key: &str, offset: u64, byte_size: u64) -> Result<(), tonic::Status> {
    let request = SystemSharedMemoryRegisterRequest { name: name.into(), key: key.into(), offset, byte_size };
    client.raw().system_shared_memory_register(request).await.map(|_| ())
}

async fn status(client: &mut InferClient, name: &str) -> Result<HashMap<String, RegionStatus>, tonic::Status> {
    let request = SystemSharedMemoryStatusRequest { name: name.into() };
    Ok(client.raw().system_shared_memory_status(request).await?.into_inner().regions)
}

async fn unregister(client: &mut InferClient, name: &str) -> Result<(), tonic::Status> {
    let request = SystemSharedMemoryUnregisterRequest { name: name.into() };
    client.raw().system_shared_memory_unregister(request).await.map(|_| ())
}

fn region(name: &str, key: &str, offset: u64, byte_size: u64) -> RegionStatus {
    RegionStatus { name: name.into(), key: key.into(), offset, byte_size }
}

fn shm_params(region: &str, offset: i64, byte_size: i64) -> HashMap<String, InferParameter> {
    let p = |choice| InferParameter { parameter_choice: Some(choice) };
    HashMap::from([
        ("shared_memory_region".to_string(), p(ParameterChoice::StringParam(region.into()))),
        ("shared_memory_offset".to_string(), p(ParameterChoice::Int64Param(offset))),
        ("shared_memory_byte_size".to_string(), p(ParameterChoice::Int64Param(byte_size))),
    ])
}

fn shm_input(name: &str, region: &str, offset: i64) -> InferInputTensor {
    InferInputTensor {
        name: name.into(),
        datatype: "INT32".into(),
        shape: vec![16],
        parameters: shm_params(region, offset, 64),
        contents: None,
    }
}

fn shm_output(request: &mut ModelInferRequest, name: &str, region: &str, offset: i64, byte_size: i64) {
    request.outputs.push(InferRequestedOutputTensor { name: name.into(), parameters: shm_params(region, offset, byte_size) });
}

fn le_bytes(values: &[i32]) -> Vec<u8> {
    values.iter().flat_map(|v| v.to_le_bytes()).collect()
}

fn le_values(bytes: &[u8]) -> Vec<i32> {
    bytes.chunks_exact(4).map(|c| i32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect()
}

#[tokio::test]
async fn register_status_and_unregister() {
    let server = TestServer::with_shared_memory().await;
    let mut client = server.client().await;
    let segment = Segment::create("status", 256);
    let key = segment.key();
    assert!(status(&mut client, "").await.expect("status").is_empty());

    register(&mut client, "low", &key, 0, 128).await.expect("register low");
    register(&mut client, "high", &key, 128, 128).await.expect("register high");
    let one = status(&mut client, "high").await.expect("status of one");
    assert_eq!(one, HashMap::from([("high".to_string(), region("high", &key, 128, 128))]));
    let all = status(&mut client, "").await.expect("status of all");
    assert_eq!(
        all,
        HashMap::from([("low".to_string(), region("low", &key, 0, 128)), ("high".to_string(), region("high", &key, 128, 128))])
    );
    assert_eq!(status(&mut client, "nope").await.expect_err("unknown region").code(), Code::NotFound);

    unregister(&mut client, "low").await.expect("unregister one");
    assert_eq!(status(&mut client, "").await.expect("status").keys().collect::<Vec<_>>(), ["high"]);
    unregister(&mut client, "nope").await.expect("unregistering an unknown name is OK");
    register(&mut client, "again", &key, 0, 64).await.expect("register again");
    unregister(&mut client, "").await.expect("unregister all");
    assert!(status(&mut client, "").await.expect("status").is_empty());
    // A name is free again once unregistered.
    register(&mut client, "low", &key, 0, 256).await.expect("register a freed name");
}

#[tokio::test]
async fn bad_registrations_get_tritons_codes() {
    let server = TestServer::with_shared_memory().await;
    let mut client = server.client().await;
    let segment = Segment::create("bad", 128);
    let key = segment.key();
    register(&mut client, "taken", &key, 0, 64).await.expect("register");
    assert_status(
        register(&mut client, "taken", &key, 64, 64).await,
        Code::AlreadyExists,
        "shared memory region 'taken' already in manager",
    );

    let missing = "/tritium_e2e_no_such_segment";
    assert_status(
        register(&mut client, "missing", missing, 0, 64).await,
        Code::Internal,
        "Unable to open shared memory region: '/tritium_e2e_no_such_segment'",
    );
    for (offset, byte_size) in [(0, 129), (64, 65), (128, 1), (u64::MAX, 2)] {
        let status = register(&mut client, "too_big", &key, offset, byte_size).await.expect_err("larger than the segment");
        assert_eq!(status.code(), Code::InvalidArgument, "{offset}+{byte_size}: {}", status.message());
        assert!(
            status.message().starts_with("failed to register shared memory region 'too_big': invalid args"),
            "{}",
            status.message()
        );
    }
    let reserved = register(&mut client, "reserved", "/triton_python_backend_shm_region_x", 0, 8).await;
    assert_eq!(reserved.expect_err("reserved prefix").code(), Code::InvalidArgument);
    // Nothing but the first registration stuck.
    assert_eq!(status(&mut client, "").await.expect("status").keys().collect::<Vec<_>>(), ["taken"]);
}

#[tokio::test]
async fn add_sub_reads_inputs_and_writes_outputs_at_offsets() {
    let server = TestServer::with_shared_memory().await;
    let mut client = server.client().await;
    let inputs = Segment::create("in", 512);
    let outputs = Segment::create("out", 512);
    let a: Vec<i32> = (0..16).collect();
    let b: Vec<i32> = (0..16).map(|i| 100 * i).collect();
    // The region starts 64 bytes into the segment; tensor offsets are relative to the region.
    inputs.write(64 + 16, &le_bytes(&a));
    inputs.write(64 + 200, &le_bytes(&b));
    register(&mut client, "inputs", &inputs.key(), 64, 448).await.expect("register inputs");
    register(&mut client, "outputs", &outputs.key(), 0, 512).await.expect("register outputs");

    let mut request = InferRequestBuilder::new("add_sub")
        .id("shm")
        .input_tensor(shm_input("INPUT0", "inputs", 16))
        .input_tensor(shm_input("INPUT1", "inputs", 200))
        .build();
    shm_output(&mut request, "OUTPUT0", "outputs", 8, 64);
    shm_output(&mut request, "OUTPUT1", "outputs", 300, 100);
    let response = client.infer(request).await.expect("add_sub through shared memory");

    assert_eq!(response.id, "shm");
    let described: Vec<(&str, &str, &[i64])> =
        response.outputs.iter().map(|o| (o.name.as_str(), o.datatype.as_str(), o.shape.as_slice())).collect();
    assert_eq!(described, [("OUTPUT0", "INT32", &[16][..]), ("OUTPUT1", "INT32", &[16][..])], "metadata still listed");
    assert_eq!(response.raw_output_contents.len(), 2, "one raw entry per output");
    assert!(response.raw_output_contents.iter().all(|raw| raw.is_empty()), "the data went to shared memory");
    let sums: Vec<i32> = a.iter().zip(&b).map(|(x, y)| x + y).collect();
    let differences: Vec<i32> = a.iter().zip(&b).map(|(x, y)| x - y).collect();
    assert_eq!(le_values(&outputs.read(8, 64)), sums);
    assert_eq!(le_values(&outputs.read(300, 64)), differences);
    assert_eq!(outputs.read(0, 8), [0; 8], "nothing written before the offset");
    assert_eq!(outputs.read(300 + 64, 36), [0; 36], "nothing written past the output");
}

#[tokio::test]
async fn shared_memory_and_raw_inputs_mix() {
    let server = TestServer::with_shared_memory().await;
    let mut client = server.client().await;
    let segment = Segment::create("mixed", 64);
    let a = vec![7i32; 16];
    segment.write(0, &le_bytes(&a));
    register(&mut client, "mixed", &segment.key(), 0, 64).await.expect("register");
    // INPUT0 from shared memory, INPUT1 as the first (and only) raw entry.
    let request = InferRequestBuilder::new("add_sub")
        .input_tensor(shm_input("INPUT0", "mixed", 0))
        .input(Tensor::from_slice("INPUT1", vec![16], &[2i32; 16]))
        .output("OUTPUT1")
        .build();
    assert_eq!(request.raw_input_contents.len(), 1);
    let response = client.infer(request).await.expect("mixed inputs");
    assert_eq!(output_tensor(&response, "OUTPUT1").expect("OUTPUT1").to_vec::<i32>().expect("INT32"), [5; 16]);
}

#[tokio::test]
async fn an_output_region_too_small_is_internal() {
    let server = TestServer::with_shared_memory().await;
    let mut client = server.client().await;
    let segment = Segment::create("small", 256);
    register(&mut client, "small", &segment.key(), 0, 256).await.expect("register");
    let mut request = InferRequestBuilder::new("add_sub")
        .input(Tensor::from_slice("INPUT0", vec![16], &[1i32; 16]))
        .input(Tensor::from_slice("INPUT1", vec![16], &[1i32; 16]))
        .build();
    shm_output(&mut request, "OUTPUT0", "small", 0, 32);
    assert_status(
        client.raw().model_infer(request).await,
        Code::Internal,
        "shared memory size specified with the request for output 'OUTPUT0' (32 bytes) should be at least 64 bytes to hold the results",
    );
    // An output range outside the region is the client's mistake.
    let mut request = InferRequestBuilder::new("add_sub")
        .input(Tensor::from_slice("INPUT0", vec![16], &[1i32; 16]))
        .input(Tensor::from_slice("INPUT1", vec![16], &[1i32; 16]))
        .build();
    shm_output(&mut request, "OUTPUT0", "small", 224, 64);
    let status = client.raw().model_infer(request).await.expect_err("past the region");
    assert_eq!(status.code(), Code::InvalidArgument, "{}", status.message());
}

#[tokio::test]
async fn cuda_shared_memory_answers_as_triton_without_a_gpu() {
    let server = TestServer::with_shared_memory().await;
    let mut client = server.client().await;
    let raw = client.raw();
    let status = raw.cuda_shared_memory_status(CudaSharedMemoryStatusRequest { name: String::new() }).await.expect("status");
    assert!(status.into_inner().regions.is_empty());
    assert_status(
        raw.cuda_shared_memory_status(CudaSharedMemoryStatusRequest { name: "gpu".into() }).await,
        Code::NotFound,
        "Unable to find cuda shared memory region: 'gpu'",
    );
    let register = CudaSharedMemoryRegisterRequest { name: "gpu".into(), raw_handle: vec![0; 64], device_id: 0, byte_size: 64 };
    assert_status(
        raw.cuda_shared_memory_register(register).await,
        Code::InvalidArgument,
        "failed to register shared memory region: invalid args",
    );
    // perf_analyzer and Triton's shm examples call this first.
    raw.cuda_shared_memory_unregister(CudaSharedMemoryUnregisterRequest { name: String::new() }).await.expect("unregister");
}

#[tokio::test]
async fn an_output_may_overlap_its_input_in_one_region() {
    let server = TestServer::with_shared_memory().await;
    let mut client = server.client().await;
    let segment = Segment::create("overlap", 64);
    let values = [1.5f32, 2.5, 3.5, 4.5];
    segment.write(0, &values.iter().flat_map(|v| v.to_le_bytes()).collect::<Vec<u8>>());
    register(&mut client, "overlap", &segment.key(), 0, 64).await.expect("register");
    // identity echoes INPUT0 (bytes 0..16) into OUTPUT0 at bytes 8..24 of the same region.
    let input = InferInputTensor {
        name: "INPUT0".into(),
        datatype: "FP32".into(),
        shape: vec![4],
        parameters: shm_params("overlap", 0, 16),
        contents: None,
    };
    let mut request = InferRequestBuilder::new("identity").input_tensor(input).build();
    shm_output(&mut request, "OUTPUT0", "overlap", 8, 16);
    let response = client.infer(request).await.expect("identity through one region");
    assert_eq!(response.outputs[0].shape, [4]);
    assert!(response.raw_output_contents[0].is_empty());
    let echoed: Vec<f32> = segment.read(8, 16).chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect();
    assert_eq!(echoed, values, "the copy behaves as memmove");
}
