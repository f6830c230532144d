//! The attacks of the trust-boundary issue on shared memory and the model repository, each as it
//! was found: a client that shrinks its segment, loads whose config names a FIFO or a file outside
//! the model folder, overrides of built-in models and of a model's backend, shared memory off by
//! default, and restricted protocols. After each, the server still answers a normal request.

use std::collections::HashMap;
use std::time::Duration;

use tonic::Code;
use tonic::metadata::MetadataValue;
use tritium_grpc_clients::InferRequestBuilder;
use tritium_proto::inference::infer_parameter::ParameterChoice;
use tritium_proto::inference::model_infer_request::InferInputTensor;
use tritium_proto::inference::{InferParameter, LogSettingsRequest, ModelInferRequest, SystemSharedMemoryRegisterRequest};
use tritium_server::ServerConfig;
use tritium_server::restricted::RestrictedProtocols;
use tritium_server::shm::ShmPolicy;
use tritium_tensor::Tensor;
use tritium_tests::{
    Segment, TestServer, assert_status, assert_status_contains, identity_config, identity_request, load_model, temp_repository,
    write_model,
};
use tritium_worker::{ControlMode, RepositoryOptions};

async fn identity_still_answers(server: &TestServer) {
    let mut client = server.client().await;
    let reply = client.infer(identity_request("identity", vec![2], &[1.0, 2.0])).await.expect("identity answers");
    assert_eq!(reply.model_name, "identity");
}

async fn register(server: &TestServer, name: &str, key: &str, byte_size: u64) -> Result<(), tonic::Status> {
    let mut client = server.client().await;
    let request = SystemSharedMemoryRegisterRequest { name: name.into(), key: key.into(), offset: 0, byte_size };
    client.raw().system_shared_memory_register(request).await.map(|_| ())
}

fn shm_identity_request(region: &str, byte_size: i64) -> ModelInferRequest {
    let p = |choice| InferParameter { parameter_choice: Some(choice) };
    let parameters = HashMap::from([
        ("shared_memory_region".to_string(), p(ParameterChoice::StringParam(region.into()))),
        ("shared_memory_byte_size".to_string(), p(ParameterChoice::Int64Param(byte_size))),
    ]);
    let input = InferInputTensor {
        name: "INPUT0".into(),
        datatype: "FP32".into(),
        shape: vec![byte_size / 4],
        parameters,
        contents: None,
    };
    ModelInferRequest { model_name: "identity".into(), inputs: vec![input], ..Default::default() }
}

#[tokio::test]
async fn a_segment_shrunk_by_its_client_is_refused_instead_of_crashing_the_server() {
    let server = TestServer::with_shared_memory().await;
    let mut client = server.client().await;
    let segment = Segment::create("shrunk", 1 << 16);
    segment.write(0, &1.5f32.to_le_bytes());
    register(&server, "shrunk", &segment.key(), 1 << 16).await.expect("registers");
    let reply = client.infer(shm_identity_request("shrunk", 1 << 16)).await.expect("reads the region");
    assert_eq!(&reply.raw_output_contents[0][..4], &1.5f32.to_le_bytes());

    // Before the fix the next read of the mapping raised SIGBUS and killed the server.
    segment.resize(0);
    let status =
        client.raw().model_infer(shm_identity_request("shrunk", 1 << 16)).await.expect_err("a truncated region is refused");
    assert_eq!(status.code(), Code::Internal, "{}", status.message());
    assert!(status.message().contains("'shrunk' is no longer usable"), "{}", status.message());
    identity_still_answers(&server).await;
}

#[tokio::test]
async fn shared_memory_is_off_unless_enabled_and_a_key_prefix_confines_it() {
    let server = TestServer::builtin().await;
    let segment = Segment::create("off", 4096);
    assert_status(
        register(&server, "off", &segment.key(), 4096).await,
        Code::Unavailable,
        "system shared memory is disabled on this server (start it with --allow-shared-memory or --shm-key-prefix)",
    );

    let mut config = ServerConfig::default();
    config.limits.shm = ShmPolicy { enabled: true, key_prefix: Some("/tritium_e2e_allowed".into()), max_regions: 1 };
    let server = TestServer::start(config, None).await;
    let status = register(&server, "other", &segment.key(), 4096).await.expect_err("a key outside the prefix");
    assert_eq!(status.code(), Code::Unavailable);
    assert!(status.message().contains("keys must start with '/tritium_e2e_allowed'"), "{}", status.message());
    identity_still_answers(&server).await;
}

#[tokio::test]
async fn the_number_of_regions_is_bounded() {
    let mut config = ServerConfig::default();
    config.limits.shm = ShmPolicy { max_regions: 2, ..ShmPolicy::any_key() };
    let server = TestServer::start(config, None).await;
    let segment = Segment::create("count", 4096);
    register(&server, "r1", &segment.key(), 64).await.expect("first");
    register(&server, "r2", &segment.key(), 64).await.expect("second");
    assert_status(
        register(&server, "r3", &segment.key(), 64).await,
        Code::ResourceExhausted,
        "failed to register shared memory region 'r3': the server already has 2 regions registered (--shm-max-regions)",
    );
}

/// A repository in explicit mode with an identity model and an LLM folder whose file is `file`.
fn explicit_repository() -> tempfile::TempDir {
    let repository = temp_repository();
    write_model(repository.path(), "identity", &identity_config("identity", "TYPE_FP32", 0), &[1]);
    let llm = "backend: \"tritium_llm\"\nparameters { key: \"model_path\" value { string_value: \"weights.gguf\" } }\n";
    let dir = write_model(repository.path(), "llm", llm, &[1]);
    std::fs::write(dir.join("weights.gguf"), b"NOTGGUF-secret-bytes").expect("writes a fake weights file");
    repository
}

async fn explicit_server() -> TestServer {
    let options =
        RepositoryOptions { control_mode: ControlMode::Explicit, startup_models: vec!["identity".into()], ..Default::default() };
    TestServer::with_repository(explicit_repository(), options).await
}

#[tokio::test]
async fn a_fifo_as_model_file_fails_the_load_at_once_and_other_loads_go_on() {
    let server = explicit_server().await;
    let dir = server.repository_path().expect("a repository").join("llm");
    let fifo = std::ffi::CString::new(dir.join("pipe").to_str().expect("utf-8").to_owned()).expect("no NUL");
    // SAFETY: a valid path string.
    assert_eq!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o600) }, 0, "mkfifo");
    let mut client = server.client().await;
    let config = r#"{"backend": "tritium_llm", "parameters": {"model_path": {"string_value": "pipe"}}}"#;
    // Before the fix, opening the FIFO blocked the load forever while it held the repository lock.
    let loaded =
        tokio::time::timeout(Duration::from_secs(60), load_model(&mut client, "llm", Some(config))).await.expect("answers");
    assert_status_contains(loaded, Code::Internal, &["model_path 'pipe' is not a regular file or a folder"]);
    let again = tokio::time::timeout(Duration::from_secs(60), load_model(&mut client, "identity", None)).await.expect("answers");
    again.expect("another load goes through");
    identity_still_answers(&server).await;
}

#[tokio::test]
async fn a_config_override_cannot_leave_the_model_folder_nor_echo_file_bytes() {
    let server = explicit_server().await;
    let mut client = server.client().await;
    for path in ["/etc/passwd", "../identity/config.pbtxt", "weights/../../identity/config.pbtxt"] {
        let config = format!(r#"{{"backend": "tritium_llm", "parameters": {{"model_path": {{"string_value": "{path}"}}}}}}"#);
        let status = load_model(&mut client, "llm", Some(&config)).await.expect_err("a path outside the folder");
        assert!(status.message().contains("must be a relative path inside the model folder"), "{path}: {}", status.message());
    }
    // A file inside the folder that is not a model: the error names it but never quotes it.
    let status = load_model(&mut client, "llm", None).await.expect_err("not a GGUF file");
    assert!(status.message().contains("not a readable GGUF file"), "{}", status.message());
    assert!(!status.message().contains("NOTG") && !status.message().contains("magic"), "{}", status.message());
    identity_still_answers(&server).await;
}

#[tokio::test]
async fn an_override_may_not_change_the_backend_nor_touch_a_built_in_model() {
    let server = explicit_server().await;
    let mut client = server.client().await;
    let to_llm = r#"{"backend": "tritium_llm", "parameters": {"model_path": {"string_value": "x.gguf"}}}"#;
    assert_status_contains(
        load_model(&mut client, "identity", Some(to_llm)).await,
        Code::Internal,
        &["a config override may not change the model's backend ('identity' to 'tritium_llm')"],
    );

    let options =
        RepositoryOptions { control_mode: ControlMode::Explicit, startup_models: vec!["*".into()], ..Default::default() };
    let builtin = TestServer::start(ServerConfig { repository: options, ..ServerConfig::default() }, None).await;
    let mut client = builtin.client().await;
    assert_status_contains(
        load_model(&mut client, "identity", Some(to_llm)).await,
        Code::Internal,
        &["built in or declared on the command line; its config cannot be overridden"],
    );
    identity_still_answers(&builtin).await;
}

#[tokio::test]
async fn restricted_protocols_need_their_header_and_inference_stays_open() {
    let mut config = ServerConfig::default();
    config.limits.restricted = RestrictedProtocols::parse(
        "--grpc-restricted-protocol",
        &["model-repository,logging,shared-memory:admin-key=s3cret".into()],
        tritium_server::restricted::GRPC_HEADER_PREFIX,
    )
    .expect("parses");
    let server = TestServer::start(config, None).await;
    let mut client = server.client().await;
    assert_status(
        client.raw().log_settings(LogSettingsRequest::default()).await,
        Code::Unavailable,
        "This protocol is restricted, expecting header 'triton-grpc-protocol-admin-key'",
    );
    // The bare key is not the header Triton reads.
    let mut bare = tonic::Request::new(LogSettingsRequest::default());
    bare.metadata_mut().insert("admin-key", MetadataValue::from_static("s3cret"));
    assert_status(
        client.raw().log_settings(bare).await,
        Code::Unavailable,
        "This protocol is restricted, expecting header 'triton-grpc-protocol-admin-key'",
    );
    let mut request = tonic::Request::new(LogSettingsRequest::default());
    request.metadata_mut().insert("triton-grpc-protocol-admin-key", MetadataValue::from_static("s3cret"));
    client.raw().log_settings(request).await.expect("with the header, the call is served");
    identity_still_answers(&server).await;
}

/// A KServe request on a language model runs on the version it names: it once ran on the latest,
/// whatever it asked for (and the worker plane always sent "latest").
#[tokio::test]
async fn a_language_model_request_runs_on_the_version_it_names() {
    let repository = temp_repository();
    let config = "backend: \"tritium_mock_llm\"\nversion_policy: { all: {} }\n\
                  parameters { key: \"decode_ms_per_step\" value { string_value: \"0\" } }\n";
    write_model(repository.path(), "mock", config, &[1, 2]);
    let server = TestServer::with_repository(repository, RepositoryOptions::default()).await;
    let mut client = server.client().await;
    let request = |version: &str| {
        InferRequestBuilder::new("mock")
            .version(version)
            .input(Tensor::from_byte_strings("text_input", vec![1], ["hi"]))
            .parameter("max_tokens", ParameterChoice::Int64Param(2))
            .build()
    };
    let finished = |version: i64| {
        let model = server.handle.repository().resolve("mock", Some(version)).expect("served");
        model.language_model().expect("a language model").stats().sequences_finished
    };
    let response = client.infer(request("1")).await.expect("version 1 answers");
    assert_eq!(response.model_version, "1");
    assert_eq!((finished(1), finished(2)), (1, 0), "version 1's engine ran it, not the latest's");
    let response = client.infer(request("")).await.expect("the latest answers");
    assert_eq!(response.model_version, "2");
    assert_eq!((finished(1), finished(2)), (1, 1));
    let missing = client.infer(request("3")).await.expect_err("no version 3").to_string();
    assert!(missing.contains("'mock' version 3 is not found"), "{missing}");
}

/// The stopping-condition bounds come from the server's flags: a completion within the lowered
/// bounds runs, one past them gets INVALID_ARGUMENT naming `stop`, and the server goes on.
#[tokio::test]
async fn a_language_models_stop_bounds_are_the_servers_flags() {
    let repository = temp_repository();
    let config = "backend: \"tritium_mock_llm\"\n\
                  parameters { key: \"decode_ms_per_step\" value { string_value: \"0\" } }\n";
    write_model(repository.path(), "mock", config, &[1]);
    let mut config = ServerConfig {
        repository: RepositoryOptions { paths: vec![repository.path().to_path_buf()], ..RepositoryOptions::default() },
        ..ServerConfig::default()
    };
    config.limits.completion.max_stop_strings = 2;
    config.limits.completion.max_stop_string_bytes = 4;
    let server = TestServer::start(config, Some(repository)).await;
    let mut client = server.client().await;
    let request = |stops: &[&str]| {
        let quoted: Vec<String> = stops.iter().map(|s| format!("\"{s}\"")).collect();
        let stops = format!("{{\"stop\": [{}], \"max_tokens\": 2}}", quoted.join(","));
        InferRequestBuilder::new("mock")
            .input(Tensor::from_byte_strings("text_input", vec![1], ["hi"]))
            .input(Tensor::from_byte_strings("sampling_parameters", vec![1], [stops.as_str()]))
            .build()
    };
    client.infer(request(&["abcd", "z"])).await.expect("two stop strings of at most 4 bytes are within the bounds");
    for (stops, wording) in [(&["a", "b", "c"][..], "at most 2 stop strings"), (&["abcde"][..], "at most 4 bytes")] {
        let error = client.infer(request(stops)).await.expect_err("past a bound").to_string();
        assert!(error.contains("invalid argument") && error.contains("stop: ") && error.contains(wording), "{error}");
    }
    client.infer(request(&[])).await.expect("the server goes on");
}
