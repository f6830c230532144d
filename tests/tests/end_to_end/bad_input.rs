//! Malformed requests, one table: each gets Triton's status code and a message naming the model
//! and the tensor or parameter; the server stays up, and on a stream the error comes in-band with
//! the request id while later requests on the same stream still succeed.

use std::collections::HashMap;
use std::ffi::CString;

use bytes::Bytes;
use futures::StreamExt;
use tonic::Code;
use tritium_grpc_clients::{InferClient, InferRequestBuilder, output_tensor};
use tritium_proto::inference::infer_parameter::ParameterChoice;
use tritium_proto::inference::model_infer_request::{InferInputTensor, InferRequestedOutputTensor};
use tritium_proto::inference::{InferParameter, InferTensorContents, ModelInferRequest, SystemSharedMemoryRegisterRequest};
use tritium_tensor::Tensor;
use tritium_tests::{TestServer, identity_config, temp_repository, write_model};
use tritium_worker::RepositoryOptions;

struct Case {
    name: &'static str,
    request: ModelInferRequest,
    code: Code,
    /// Every one of these must appear in the message.
    says: &'static [&'static str],
    /// Decoupled-model cases only fail on the unary RPC.
    unary_only: bool,
}

fn f32_raw(values: &[f32]) -> Bytes {
    Tensor::from_slice("x", vec![values.len() as i64], values).data
}

fn input(name: &str, datatype: &str, shape: &[i64]) -> InferInputTensor {
    InferInputTensor { name: name.into(), datatype: datatype.into(), shape: shape.to_vec(), ..Default::default() }
}

fn with_params(mut tensor: InferInputTensor, params: &[(&str, ParameterChoice)]) -> InferInputTensor {
    for (key, value) in params {
        tensor.parameters.insert(key.to_string(), InferParameter { parameter_choice: Some(value.clone()) });
    }
    tensor
}

fn identity_ok() -> InferRequestBuilder {
    InferRequestBuilder::new("identity").input(Tensor::from_slice("INPUT0", vec![4], &[1f32, 2., 3., 4.]))
}

fn add_sub_input(name: &str, shape: Vec<i64>) -> Tensor {
    let count = shape.iter().product::<i64>() as usize;
    Tensor::from_slice(name, shape, &vec![1i32; count])
}

fn case(name: &'static str, request: ModelInferRequest, code: Code, says: &'static [&'static str]) -> Case {
    Case { name, request, code, says, unary_only: false }
}

fn cases() -> Vec<Case> {
    use ParameterChoice::*;
    let shm_input = |params: &[(&str, ParameterChoice)]| {
        InferRequestBuilder::new("identity").input_tensor(with_params(input("INPUT0", "FP32", &[4]), params)).build()
    };
    vec![
        case(
            "unknown model",
            InferRequestBuilder::new("nope").build(),
            Code::NotFound,
            &["Request for unknown model: 'nope' is not found"],
        ),
        case(
            "unknown version",
            identity_ok().version("7").build(),
            Code::NotFound,
            &["Request for unknown model: 'identity' version 7 is not found"],
        ),
        case("non-numeric version", identity_ok().version("abc").build(), Code::InvalidArgument, &["version string 'abc'"]),
        case("negative version", identity_ok().version("-1").build(), Code::InvalidArgument, &["version string '-1'"]),
        case(
            "wrong datatype",
            InferRequestBuilder::new("identity").input(Tensor::from_slice("INPUT0", vec![2], &[1i32, 2])).build(),
            Code::InvalidArgument,
            &["inference input 'INPUT0' data-type is 'INT32', but model 'identity' expects 'FP32'"],
        ),
        case(
            "not a KServe datatype",
            InferRequestBuilder::new("identity").input_tensor(input("INPUT0", "FLOAT", &[1])).raw(f32_raw(&[1.])).build(),
            Code::InvalidArgument,
            &["'INPUT0'", "'FLOAT'", "'identity'"],
        ),
        case(
            "shape mismatch",
            InferRequestBuilder::new("add_sub")
                .input(add_sub_input("INPUT0", vec![8]))
                .input(add_sub_input("INPUT1", vec![16]))
                .build(),
            Code::InvalidArgument,
            &["unexpected shape for input 'INPUT0' for model 'add_sub'. Expected [16], got [8]"],
        ),
        case(
            "-1 in a request shape",
            InferRequestBuilder::new("identity").input_tensor(input("INPUT0", "FP32", &[-1])).raw(f32_raw(&[1.])).build(),
            Code::InvalidArgument,
            &["All input dimensions should be specified for input 'INPUT0' for model 'identity'"],
        ),
        case(
            "byte size mismatch",
            InferRequestBuilder::new("identity").input_tensor(input("INPUT0", "FP32", &[4])).raw(f32_raw(&[1., 2., 3.])).build(),
            Code::InvalidArgument,
            &["input byte size mismatch for input 'INPUT0' for model 'identity'. Expected 16, got 12"],
        ),
        case(
            "truncated BYTES body",
            InferRequestBuilder::new("identity_bytes")
                .input_tensor(input("INPUT0", "BYTES", &[1]))
                .raw(Bytes::from_static(&[5, 0, 0, 0, b'a', b'b']))
                .build(),
            Code::InvalidArgument,
            &["'INPUT0'", "'identity_bytes'"],
        ),
        case(
            "truncated BYTES length prefix",
            InferRequestBuilder::new("identity_bytes")
                .input_tensor(input("INPUT0", "BYTES", &[1]))
                .raw(Bytes::from_static(&[1, 0]))
                .build(),
            Code::InvalidArgument,
            &["incomplete string length indicator for inference input 'INPUT0' for model 'identity_bytes'", "only 2 bytes"],
        ),
        case(
            "BYTES element count below the shape",
            InferRequestBuilder::new("identity_bytes")
                .input_tensor(input("INPUT0", "BYTES", &[2]))
                .raw(Bytes::from_static(&[1, 0, 0, 0, b'a']))
                .build(),
            Code::InvalidArgument,
            &["'INPUT0'", "'identity_bytes'"],
        ),
        case(
            "typed and raw mixed",
            InferRequestBuilder::new("identity")
                .input_tensor(InferInputTensor {
                    contents: Some(InferTensorContents { fp32_contents: vec![1., 2.], ..Default::default() }),
                    ..input("INPUT0", "FP32", &[2])
                })
                .raw(f32_raw(&[1., 2.]))
                .build(),
            Code::InvalidArgument,
            &["contents field must not be specified when using raw_input_contents for 'INPUT0' for model 'identity'"],
        ),
        case(
            "typed field of the wrong type",
            InferRequestBuilder::new("identity")
                .input_tensor(InferInputTensor {
                    contents: Some(InferTensorContents { int_contents: vec![1, 2], ..Default::default() }),
                    ..input("INPUT0", "FP32", &[2])
                })
                .build(),
            Code::InvalidArgument,
            &["unexpected explicit tensor data for input tensor 'INPUT0' for model 'identity'", "int_contents"],
        ),
        case(
            "typed BYTES data for FP32",
            InferRequestBuilder::new("identity")
                .input_tensor(InferInputTensor {
                    contents: Some(InferTensorContents { bytes_contents: vec![Bytes::from_static(b"x")], ..Default::default() }),
                    ..input("INPUT0", "FP32", &[1])
                })
                .build(),
            Code::InvalidArgument,
            &["'INPUT0'", "'identity'", "bytes_contents"],
        ),
        case(
            "typed element count below the shape",
            InferRequestBuilder::new("identity")
                .input_tensor(InferInputTensor {
                    contents: Some(InferTensorContents { fp32_contents: vec![1., 2., 3.], ..Default::default() }),
                    ..input("INPUT0", "FP32", &[4])
                })
                .build(),
            Code::InvalidArgument,
            &["input byte size mismatch for input 'INPUT0' for model 'identity'. Expected 16, got 12"],
        ),
        case(
            "missing input",
            InferRequestBuilder::new("add_sub").input(add_sub_input("INPUT0", vec![16])).build(),
            Code::InvalidArgument,
            &["expected 2 inputs but got 1 inputs for model 'add_sub'", "missing required input(s) ['INPUT1']"],
        ),
        case(
            // Triton counts the inputs before it looks at their names (recorded over HTTP, the same core).
            "extra input",
            identity_ok().input(Tensor::from_slice("INPUT9", vec![1], &[1f32])).build(),
            Code::InvalidArgument,
            &["expected 1 inputs but got 2 inputs for model 'identity'"],
        ),
        case(
            "same input twice",
            identity_ok().input(Tensor::from_slice("INPUT0", vec![1], &[1f32])).build(),
            Code::InvalidArgument,
            &["input 'INPUT0' already exists in request"],
        ),
        case(
            "no data for an input",
            InferRequestBuilder::new("identity").input_tensor(input("INPUT0", "FP32", &[4])).build(),
            Code::InvalidArgument,
            &["unable to find data for input tensor 'INPUT0' for model 'identity' in request."],
        ),
        case(
            "batch over max_batch_size",
            InferRequestBuilder::new("identity_batch").input(Tensor::from_slice("INPUT0", vec![9, 1], &[0f32; 9])).build(),
            Code::InvalidArgument,
            &["inference request batch-size must be <= 8 for 'identity_batch'"],
        ),
        case(
            "no batch dimension",
            InferRequestBuilder::new("identity_batch").input(Tensor::from_slice("INPUT0", vec![], &[0f32])).build(),
            Code::InvalidArgument,
            &["input 'INPUT0' has no shape but model requires batch dimension for 'identity_batch'"],
        ),
        case(
            "inputs with different batch sizes",
            InferRequestBuilder::new("add_sub_batch")
                .input(add_sub_input("INPUT0", vec![2, 16]))
                .input(add_sub_input("INPUT1", vec![3, 16]))
                .build(),
            Code::InvalidArgument,
            &["input 'INPUT1' batch size does not match other inputs for 'add_sub_batch'"],
        ),
        case(
            "batched shape without the batch dimension",
            InferRequestBuilder::new("add_sub_batch")
                .input(add_sub_input("INPUT0", vec![2]))
                .input(add_sub_input("INPUT1", vec![2]))
                .build(),
            Code::InvalidArgument,
            &["unexpected shape for input 'INPUT0' for model 'add_sub_batch'. Expected [-1,16], got [2]", "NOTE"],
        ),
        case(
            "unknown requested output",
            identity_ok().output("NOPE").build(),
            Code::InvalidArgument,
            &["unexpected inference output 'NOPE' for model 'identity'"],
        ),
        case(
            "reserved triton_ parameter",
            identity_ok().parameter("triton_secret", BoolParam(true)).build(),
            Code::InvalidArgument,
            // Triton 2.51's gRPC door's own words, without the key or the model.
            &["parameter keys starting with 'triton_' are reserved for Triton usage. Only the following keys starting with 'triton_' are allowed: triton_enable_empty_final_response"],
        ),
        case(
            "sequence_id of the wrong type",
            identity_ok().parameter("sequence_id", BoolParam(true)).build(),
            Code::InvalidArgument,
            &["invalid value type for 'sequence_id' parameter for model 'identity'"],
        ),
        case(
            "negative priority",
            identity_ok().parameter("priority", Int64Param(-3)).build(),
            Code::InvalidArgument,
            &["'priority' parameter for model 'identity'"],
        ),
        case(
            "priority as a string",
            identity_ok().parameter("priority", StringParam("high".into())).build(),
            Code::InvalidArgument,
            &["invalid value type for 'priority' parameter for model 'identity'"],
        ),
        case(
            "sequence_start as an int",
            identity_ok().parameter("sequence_start", Int64Param(1)).build(),
            Code::InvalidArgument,
            &["invalid value type for 'sequence_start' parameter for model 'identity'"],
        ),
        case(
            "custom uint64 parameter",
            identity_ok().parameter("mine", Uint64Param(1)).build(),
            Code::InvalidArgument,
            &["'mine'", "'identity'", "uint64_param"],
        ),
        case(
            "parameter without a value",
            {
                let mut r = identity_ok().build();
                r.parameters.insert("empty".into(), InferParameter { parameter_choice: None });
                r
            },
            Code::InvalidArgument,
            &["parameter 'empty' for model 'identity' has no value"],
        ),
        case(
            "unknown shared-memory region",
            shm_input(&[("shared_memory_region", StringParam("nope".into())), ("shared_memory_byte_size", Int64Param(16))]),
            Code::NotFound,
            &["Unable to find system shared memory region: 'nope'"],
        ),
        case(
            "shared-memory region without a byte size",
            shm_input(&[("shared_memory_region", StringParam("region64".into()))]),
            Code::InvalidArgument,
            &["'shared_memory_byte_size' is required", "'INPUT0'", "'identity'"],
        ),
        case(
            "shared-memory offset without a region",
            shm_input(&[("shared_memory_offset", Int64Param(0))]),
            Code::InvalidArgument,
            &["'shared_memory_offset' given without 'shared_memory_region'", "'INPUT0'"],
        ),
        case(
            "shared-memory read past the region",
            shm_input(&[
                ("shared_memory_region", StringParam("region64".into())),
                ("shared_memory_offset", Int64Param(56)),
                ("shared_memory_byte_size", Int64Param(16)),
            ]),
            Code::InvalidArgument,
            &["region64", "exceeds"],
        ),
        case(
            "shared-memory size that overflows",
            shm_input(&[
                ("shared_memory_region", StringParam("region64".into())),
                ("shared_memory_offset", Uint64Param(u64::MAX - 4)),
                ("shared_memory_byte_size", Uint64Param(16)),
            ]),
            Code::InvalidArgument,
            &["region64"],
        ),
        case(
            "negative shared-memory offset",
            shm_input(&[
                ("shared_memory_region", StringParam("region64".into())),
                ("shared_memory_offset", Int64Param(-8)),
                ("shared_memory_byte_size", Int64Param(16)),
            ]),
            Code::InvalidArgument,
            &["'shared_memory_offset'", "must not be negative"],
        ),
        case(
            "element count that overflows",
            InferRequestBuilder::new("identity_2d")
                .input_tensor(input("INPUT0", "FP32", &[1 << 32, 1 << 32]))
                .raw(f32_raw(&[1.]))
                .build(),
            Code::InvalidArgument,
            &["'INPUT0'", "'identity_2d'"],
        ),
        case(
            "byte size that overflows",
            InferRequestBuilder::new("identity").input_tensor(input("INPUT0", "FP32", &[1 << 62])).raw(f32_raw(&[1.])).build(),
            Code::InvalidArgument,
            &["'INPUT0'", "'identity'"],
        ),
        case(
            "classification with shared memory",
            {
                let mut r = identity_ok().build();
                let mut output = InferRequestedOutputTensor { name: "OUTPUT0".into(), parameters: HashMap::new() };
                for (k, v) in [
                    ("classification", Int64Param(1)),
                    ("shared_memory_region", StringParam("region64".into())),
                    ("shared_memory_byte_size", Int64Param(16)),
                ] {
                    output.parameters.insert(k.into(), InferParameter { parameter_choice: Some(v) });
                }
                r.outputs.push(output);
                r
            },
            Code::InvalidArgument,
            &["output can't set both 'shared_memory_region' and 'classification'", "'OUTPUT0'"],
        ),
        Case {
            name: "unary call to a decoupled model",
            request: InferRequestBuilder::new("repeat").input(Tensor::from_slice("IN", vec![1], &[2i32])).build(),
            code: Code::Unimplemented,
            says: &["ModelInfer RPC doesn't support models with decoupled transaction policy"],
            unary_only: true,
        },
    ]
}

const ADD_SUB_BATCH: &str = r#"
name: "add_sub_batch"
backend: "add_sub"
max_batch_size: 8
input [ { name: "INPUT0", data_type: TYPE_INT32, dims: [ 16 ] }, { name: "INPUT1", data_type: TYPE_INT32, dims: [ 16 ] } ]
output [ { name: "OUTPUT0", data_type: TYPE_INT32, dims: [ 16 ] }, { name: "OUTPUT1", data_type: TYPE_INT32, dims: [ 16 ] } ]
"#;
const ADD_SUB: &str = r#"
backend: "add_sub"
input [ { name: "INPUT0", data_type: TYPE_INT32, dims: [ 16 ] }, { name: "INPUT1", data_type: TYPE_INT32, dims: [ 16 ] } ]
output [ { name: "OUTPUT0", data_type: TYPE_INT32, dims: [ 16 ] }, { name: "OUTPUT1", data_type: TYPE_INT32, dims: [ 16 ] } ]
"#;
const IDENTITY_2D: &str = r#"
backend: "identity"
input [ { name: "INPUT0", data_type: TYPE_FP32, dims: [ -1, -1 ] } ]
output [ { name: "OUTPUT0", data_type: TYPE_FP32, dims: [ -1, -1 ] } ]
"#;
const REPEAT: &str = r#"
backend: "tritium_repeat"
model_transaction_policy { decoupled: true }
input [ { name: "IN", data_type: TYPE_INT32, dims: [ 1 ] } ]
output [ { name: "OUT", data_type: TYPE_INT32, dims: [ 1 ] } ]
"#;

/// A real POSIX shared-memory segment, unlinked on drop.
struct Segment(CString);

impl Segment {
    fn create(size: usize) -> Segment {
        static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let name = CString::new(format!("/tritium_bad_input_{}_{n}", std::process::id())).expect("no NUL");
        // SAFETY: plain libc calls on a name we own; the descriptor is closed before returning.
        unsafe {
            let fd = libc::shm_open(name.as_ptr(), libc::O_CREAT | libc::O_RDWR, 0o600);
            assert!(fd >= 0, "shm_open");
            assert_eq!(libc::ftruncate(fd, size as libc::off_t), 0, "ftruncate");
            libc::close(fd);
        }
        Segment(name)
    }

    fn key(&self) -> String {
        self.0.to_string_lossy().into_owned()
    }
}

impl Drop for Segment {
    fn drop(&mut self) {
        // SAFETY: unlinking a name we created.
        unsafe { libc::shm_unlink(self.0.as_ptr()) };
    }
}

async fn server_with_models() -> (TestServer, Segment) {
    let repository = temp_repository();
    let root = repository.path();
    write_model(root, "identity", &identity_config("identity", "TYPE_FP32", 0), &[1]);
    write_model(root, "identity_batch", &identity_config("identity_batch", "TYPE_FP32", 8), &[1]);
    write_model(root, "identity_bytes", &identity_config("identity_bytes", "TYPE_STRING", 0), &[1]);
    write_model(root, "identity_2d", IDENTITY_2D, &[1]);
    write_model(root, "add_sub", ADD_SUB, &[1]);
    write_model(root, "add_sub_batch", ADD_SUB_BATCH, &[1]);
    write_model(root, "repeat", REPEAT, &[1]);
    let mut config = tritium_server::ServerConfig::default();
    config.repository = RepositoryOptions { paths: vec![repository.path().to_path_buf()], ..RepositoryOptions::default() };
    config.limits.shm = tritium_server::shm::ShmPolicy::any_key();
    let server = TestServer::start(config, Some(repository)).await;
    let segment = Segment::create(64);
    let mut client = server.client().await;
    client
        .raw()
        .system_shared_memory_register(SystemSharedMemoryRegisterRequest {
            name: "region64".into(),
            key: segment.key(),
            offset: 0,
            byte_size: 64,
        })
        .await
        .expect("register region64");
    (server, segment)
}

async fn assert_still_serving(client: &mut InferClient) {
    let response = client.infer(identity_ok().build()).await.expect("a good request still succeeds");
    let output = output_tensor(&response, "OUTPUT0").expect("OUTPUT0");
    assert_eq!(output.to_vec::<f32>().expect("fp32"), vec![1., 2., 3., 4.]);
}

#[tokio::test]
async fn each_malformed_request_gets_tritons_code_and_a_precise_message() {
    let (server, _segment) = server_with_models().await;
    let mut client = server.client().await;
    let cases = cases();
    assert!(cases.len() >= 30, "the table must cover at least 30 cases, has {}", cases.len());
    let mut failures = Vec::new();
    for case in cases {
        match client.raw().model_infer(case.request).await {
            Ok(_) => failures.push(format!("{}: succeeded", case.name)),
            Err(status) => {
                if status.code() != case.code {
                    failures.push(format!(
                        "{}: code {:?}, expected {:?} ({})",
                        case.name,
                        status.code(),
                        case.code,
                        status.message()
                    ));
                }
                for needle in case.says {
                    if !status.message().contains(needle) {
                        failures.push(format!("{}: message {:?} lacks {:?}", case.name, status.message(), needle));
                    }
                }
            }
        }
        assert_still_serving(&mut client).await;
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    let stats = client.statistics("identity", "").await.expect("statistics");
    let fail = stats[0].inference_stats.as_ref().and_then(|s| s.fail).map(|d| d.count);
    assert_eq!(fail, Some(0), "validation failures do not count as failed inferences");
}

#[tokio::test]
async fn on_a_stream_errors_come_in_band_and_the_stream_stays_open() {
    let (server, _segment) = server_with_models().await;
    let mut client = server.client().await;
    let (sender, mut responses) = client.stream().await.expect("stream opens");
    let cases: Vec<Case> = cases().into_iter().filter(|c| !c.unary_only).collect();
    for (i, case) in cases.iter().enumerate() {
        let mut request = case.request.clone();
        request.id = format!("bad-{i}");
        sender.send(request).await.expect("send");
        let reply = responses.next().await.expect("a response").expect("in-band, not a status");
        assert!(!reply.error_message.is_empty(), "{}: expected an error", case.name);
        for needle in case.says {
            assert!(reply.error_message.contains(needle), "{}: {:?} lacks {:?}", case.name, reply.error_message, needle);
        }
        let echoed = reply.infer_response.expect("the failed request is identified");
        assert_eq!(echoed.id, format!("bad-{i}"), "{}", case.name);
        assert_eq!(echoed.model_name, case.request.model_name, "{}", case.name);
    }
    sender.send(identity_ok().id("good").build()).await.expect("send");
    let reply = responses.next().await.expect("a response").expect("ok");
    assert_eq!(reply.error_message, "");
    let response = reply.infer_response.expect("response");
    assert_eq!(response.id, "good");
    assert_eq!(output_tensor(&response, "OUTPUT0").expect("OUTPUT0").to_vec::<f32>().expect("fp32"), vec![1., 2., 3., 4.]);
}

/// As Triton 2.51 does (checked on its own server): with `triton_grpc_error: true`, a request's
/// own errors (bad version, unknown model, wrong inputs) are still answered in-band and the stream
/// goes on; the first failure of a model that was running the request ends the stream with its
/// status.
#[tokio::test]
async fn triton_grpc_error_header_keeps_request_errors_in_band_and_ends_the_stream_on_a_model_failure() {
    let (server, _segment) = server_with_models().await;
    let mut client = server.client().await;
    let mut metadata = tonic::metadata::MetadataMap::new();
    metadata.insert("triton_grpc_error", "true".parse().expect("ascii"));
    let (sender, mut responses) = client.stream_with(metadata).await.expect("stream opens");
    let bad_requests = [
        (identity_ok().version("abc").id("bad-version").build(), "version string 'abc'"),
        (InferRequestBuilder::new("nope").id("bad-model").build(), "'nope' is not found"),
        (
            InferRequestBuilder::new("identity")
                .id("bad-type")
                .input(Tensor::from_slice("INPUT0", vec![4], &[1i32, 2, 3, 4]))
                .build(),
            "data-type is 'INT32'",
        ),
    ];
    for (request, needle) in bad_requests {
        let id = request.id.clone();
        sender.send(request).await.expect("send");
        let reply = responses.next().await.expect("an item").expect("in-band, not a status");
        assert!(reply.error_message.contains(needle), "{id}: {:?} lacks {needle:?}", reply.error_message);
        assert_eq!(reply.infer_response.map(|r| r.id).as_deref(), Some(id.as_str()));
    }
    sender.send(identity_ok().id("good").build()).await.expect("send");
    let reply = responses.next().await.expect("an item").expect("the stream is still open");
    assert_eq!(reply.error_message, "");

    // repeat refuses a negative count while it runs: a model failure, which ends the stream.
    let failing = InferRequestBuilder::new("repeat").id("fails").input(Tensor::from_slice("IN", vec![1], &[-1i32])).build();
    sender.send(failing).await.expect("send");
    let status = responses.next().await.expect("an item").expect_err("a status, not an in-band error");
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(status.message().contains("IN must be >= 0, got -1"), "{}", status.message());
    assert!(responses.next().await.is_none(), "the stream ends after the error");
    assert_still_serving(&mut client).await;
}
