//! The read-only RPCs about the server and its models: ServerLive/Ready, ServerMetadata,
//! ModelReady, ModelMetadata and ModelConfig, on the built-in repository, with Triton 2.51's
//! codes and messages for unknown models and versions.

use tonic::Code;
use tritium_proto::inference::model_metadata_response::TensorMetadata;
use tritium_proto::inference::model_version_policy::{Latest, PolicyChoice};
use tritium_proto::inference::{
    DataType, ModelConfigRequest, ModelMetadataRequest, ModelReadyRequest, ModelVersionPolicy, ServerLiveRequest,
    ServerMetadataRequest, ServerReadyRequest,
};
use tritium_server::grpc::EXTENSIONS;
use tritium_tests::{TestServer, assert_status};

fn tensor(name: &str, datatype: &str, shape: &[i64]) -> TensorMetadata {
    TensorMetadata { name: name.into(), datatype: datatype.into(), shape: shape.to_vec() }
}

#[tokio::test]
async fn server_is_live_and_ready() {
    let server = TestServer::builtin().await;
    let mut client = server.client().await;
    let live = client.raw().server_live(ServerLiveRequest {}).await.expect("ServerLive").into_inner();
    assert!(live.live);
    let ready = client.raw().server_ready(ServerReadyRequest {}).await.expect("ServerReady").into_inner();
    assert!(ready.ready);
}

#[tokio::test]
async fn server_metadata_advertises_exactly_what_is_implemented() {
    let server = TestServer::builtin().await;
    let mut client = server.client().await;
    let metadata = client.raw().server_metadata(ServerMetadataRequest {}).await.expect("ServerMetadata").into_inner();
    // Triton's clients check the name (simple_grpc_health_metadata.py); version and extensions are ours.
    assert_eq!(metadata.name, "triton");
    assert_eq!(metadata.version, env!("CARGO_PKG_VERSION"));
    let advertised: Vec<&str> = metadata.extensions.iter().map(String::as_str).collect();
    assert_eq!(advertised, EXTENSIONS, "exactly the list in service.rs, in its order");
    assert_eq!(
        advertised,
        [
            "classification",
            "sequence",
            "model_repository",
            "schedule_policy",
            "model_configuration",
            "system_shared_memory",
            "binary_tensor_data",
            "parameters",
            "statistics",
            "trace",
            "logging"
        ]
    );
    // perf_analyzer turns server statistics on only when this is advertised.
    assert!(advertised.contains(&"statistics"));
    // Not implemented here, so never advertised.
    for absent in ["cuda_shared_memory"] {
        assert!(!advertised.contains(&absent), "{absent} must not be advertised");
    }
}

#[tokio::test]
async fn model_ready_follows_triton_for_unknown_names_and_versions() {
    let server = TestServer::builtin().await;
    let mut client = server.client().await;
    for model in ["identity", "identity_batch", "add_sub", "repeat"] {
        assert!(client.model_ready(model, "").await.expect("ModelReady"), "{model} latest");
        assert!(client.model_ready(model, "1").await.expect("ModelReady"), "{model} version 1");
    }
    // Unknown models and versions are simply not ready: OK with ready=false, not NOT_FOUND.
    let ask = |name: &str, version: &str| ModelReadyRequest { name: name.into(), version: version.into() };
    let unknown = client.raw().model_ready(ask("nope", "")).await.expect("OK for an unknown model").into_inner();
    assert!(!unknown.ready);
    let missing = client.raw().model_ready(ask("identity", "2")).await.expect("OK for an unknown version").into_inner();
    assert!(!missing.ready);
    let missing = client.raw().model_ready(ask("nope", "3")).await.expect("OK for both unknown").into_inner();
    assert!(!missing.ready);
    // A version that is not a number is a malformed request.
    let bad = "failed to get model version from specified version string 'abc', version should be an integral value >= 0";
    assert_status(client.raw().model_ready(ask("identity", "abc")).await, Code::InvalidArgument, bad);
    let negative = client.raw().model_ready(ask("identity", "-1")).await;
    assert_eq!(negative.expect_err("-1 is not a version").code(), Code::InvalidArgument);
}

#[tokio::test]
async fn model_metadata_has_kserve_datatypes_and_batch_dimensions() {
    let server = TestServer::builtin().await;
    let mut client = server.client().await;

    let identity = client.model_metadata("identity", "").await.expect("identity metadata");
    assert_eq!(identity.name, "identity");
    assert_eq!(identity.versions, ["1"]);
    assert_eq!(identity.platform, "identity");
    assert_eq!(identity.inputs, [tensor("INPUT0", "FP32", &[-1])]);
    assert_eq!(identity.outputs, [tensor("OUTPUT0", "FP32", &[-1])]);

    // A batching model shows the batch dimension as a leading -1.
    let batch = client.model_metadata("identity_batch", "").await.expect("identity_batch metadata");
    assert_eq!(batch.versions, ["1"]);
    assert_eq!(batch.inputs, [tensor("INPUT0", "FP32", &[-1, -1])]);
    assert_eq!(batch.outputs, [tensor("OUTPUT0", "FP32", &[-1, -1])]);

    let add_sub = client.model_metadata("add_sub", "1").await.expect("add_sub metadata");
    assert_eq!(add_sub.versions, ["1"]);
    assert_eq!(add_sub.inputs, [tensor("INPUT0", "INT32", &[16]), tensor("INPUT1", "INT32", &[16])]);
    assert_eq!(add_sub.outputs, [tensor("OUTPUT0", "INT32", &[16]), tensor("OUTPUT1", "INT32", &[16])]);

    let repeat = client.model_metadata("repeat", "").await.expect("repeat metadata");
    assert_eq!(repeat.inputs, [tensor("IN", "INT32", &[1]), tensor("DELAY_MS", "UINT32", &[1])]);
    assert_eq!(repeat.outputs, [tensor("OUT", "INT32", &[1])]);
}

#[tokio::test]
async fn model_metadata_errors_name_the_model_and_version() {
    let server = TestServer::builtin().await;
    let mut client = server.client().await;
    let ask = |name: &str, version: &str| ModelMetadataRequest { name: name.into(), version: version.into() };
    assert_status(
        client.raw().model_metadata(ask("identity", "2")).await,
        Code::NotFound,
        "Request for unknown model: 'identity' version 2 is not found",
    );
    assert_status(
        client.raw().model_metadata(ask("nope", "")).await,
        Code::NotFound,
        "Request for unknown model: 'nope' is not found",
    );
    assert_status(
        client.raw().model_metadata(ask("identity", "abc")).await,
        Code::InvalidArgument,
        "failed to get model version from specified version string 'abc', version should be an integral value >= 0",
    );
}

#[tokio::test]
async fn model_config_is_the_full_normalized_config() {
    let server = TestServer::builtin().await;
    let mut client = server.client().await;
    let latest_one = Some(ModelVersionPolicy { policy_choice: Some(PolicyChoice::Latest(Latest { num_versions: 1 })) });

    let identity = client.model_config("identity", "").await.expect("identity config");
    assert_eq!(identity.name, "identity");
    assert_eq!(identity.backend, "identity");
    assert_eq!(identity.max_batch_size, 0);
    assert_eq!(identity.version_policy, latest_one, "the default policy is filled in");
    assert_eq!(identity.input.len(), 1);
    assert_eq!(identity.input[0].name, "INPUT0");
    assert_eq!(identity.input[0].data_type, DataType::TypeFp32 as i32);
    assert_eq!(identity.input[0].data_type, 11, "TYPE_FP32 is 11 on the wire");
    assert_eq!(identity.input[0].dims, [-1]);
    assert_eq!(identity.output[0].name, "OUTPUT0");
    assert_eq!(identity.output[0].data_type, 11);
    assert!(!identity.model_transaction_policy.unwrap_or_default().decoupled);

    let batch = client.model_config("identity_batch", "1").await.expect("identity_batch config");
    assert_eq!(batch.name, "identity_batch");
    assert_eq!(batch.max_batch_size, 8);
    assert_eq!(batch.input[0].dims, [-1], "config dims exclude the batch dimension");

    let add_sub = client.model_config("add_sub", "").await.expect("add_sub config");
    assert_eq!(add_sub.backend, "add_sub");
    let inputs: Vec<(&str, i32, &[i64])> =
        add_sub.input.iter().map(|t| (t.name.as_str(), t.data_type, t.dims.as_slice())).collect();
    assert_eq!(inputs, [("INPUT0", 8, &[16][..]), ("INPUT1", 8, &[16])]);
    let outputs: Vec<(&str, i32, &[i64])> =
        add_sub.output.iter().map(|t| (t.name.as_str(), t.data_type, t.dims.as_slice())).collect();
    assert_eq!(outputs, [("OUTPUT0", 8, &[16][..]), ("OUTPUT1", 8, &[16])]);
    assert_eq!(DataType::TypeInt32 as i32, 8);

    let repeat = client.model_config("repeat", "").await.expect("repeat config");
    assert_eq!(repeat.backend, "tritium_repeat");
    assert!(repeat.model_transaction_policy.expect("transaction policy").decoupled, "perf_analyzer reads this");
    assert_eq!(repeat.input[1].name, "DELAY_MS");
    assert_eq!(repeat.input[1].data_type, DataType::TypeUint32 as i32);
    assert_eq!(repeat.input[1].data_type, 4);
    assert!(repeat.input[1].optional);
    assert!(!repeat.input[0].optional);

    let ask = |name: &str, version: &str| ModelConfigRequest { name: name.into(), version: version.into() };
    assert_status(
        client.raw().model_config(ask("nope", "")).await,
        Code::NotFound,
        "Request for unknown model: 'nope' is not found",
    );
    assert_status(
        client.raw().model_config(ask("identity", "2")).await,
        Code::NotFound,
        "Request for unknown model: 'identity' version 2 is not found",
    );
}
