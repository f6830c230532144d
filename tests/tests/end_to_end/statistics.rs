//! ModelStatistics with Triton's meaning: per-version counts and nanoseconds that grow with each
//! successful inference (perf_analyzer watches `queue.count`), inference vs execution counts for
//! batches, all served models for an empty name, and INVALID_ARGUMENT for unknown models and versions.

use tonic::Code;
use tritium_grpc_clients::{InferClient, InferRequestBuilder};
use tritium_proto::inference::{InferStatistics, ModelStatistics, ModelStatisticsRequest, StatisticDuration};
use tritium_tensor::Tensor;
use tritium_tests::{TestServer, assert_status, identity_request, repeat_request, repeat_value};

fn add_sub_request(i: i32) -> tritium_proto::inference::ModelInferRequest {
    InferRequestBuilder::new("add_sub")
        .input(Tensor::from_slice("INPUT0", vec![16], &[i; 16]))
        .input(Tensor::from_slice("INPUT1", vec![16], &[1; 16]))
        .build()
}

async fn one(client: &mut InferClient, name: &str) -> ModelStatistics {
    let mut stats = client.statistics(name, "").await.expect("statistics");
    assert_eq!(stats.len(), 1, "one served version of {name}");
    stats.remove(0)
}

fn durations(stats: &ModelStatistics) -> InferStatistics {
    stats.inference_stats.expect("inference_stats")
}

fn count(duration: Option<StatisticDuration>) -> u64 {
    duration.expect("duration").count
}

#[tokio::test]
async fn successful_inferences_count_in_every_phase() {
    let server = TestServer::builtin().await;
    let mut client = server.client().await;
    let before = one(&mut client, "add_sub").await;
    assert_eq!((before.inference_count, before.execution_count, before.last_inference), (0, 0, 0));
    assert_eq!(count(durations(&before).success), 0);

    const N: u64 = 5;
    for i in 0..N as i32 {
        client.infer(add_sub_request(i)).await.expect("add_sub");
    }
    let stats = one(&mut client, "add_sub").await;
    assert_eq!((stats.name.as_str(), stats.version.as_str()), ("add_sub", "1"));
    assert_eq!(stats.version.parse::<i64>().ok(), Some(1), "perf_analyzer parses the version as a number");
    assert_eq!(stats.inference_count, N);
    assert_eq!(stats.execution_count, N);
    assert!(stats.last_inference > 0, "milliseconds since the epoch of the last inference");
    let d = durations(&stats);
    for (phase, duration) in [
        ("success", d.success),
        ("queue", d.queue),
        ("compute_input", d.compute_input),
        ("compute_infer", d.compute_infer),
        ("compute_output", d.compute_output),
    ] {
        let duration = duration.unwrap_or_else(|| panic!("{phase} is reported"));
        assert_eq!(duration.count, N, "{phase} count");
        assert!(duration.ns > 0, "{phase} ns");
    }
    assert_eq!(d.fail, Some(StatisticDuration { count: 0, ns: 0 }));
    assert_eq!(d.cache_hit, Some(StatisticDuration { count: 0, ns: 0 }));
    assert_eq!(d.cache_miss, Some(StatisticDuration { count: 0, ns: 0 }));

    // Other models are untouched.
    let identity = one(&mut client, "identity").await;
    assert_eq!((identity.inference_count, identity.execution_count), (0, 0));
}

#[tokio::test]
async fn a_batch_is_several_inferences_in_one_execution() {
    let server = TestServer::builtin().await;
    let mut client = server.client().await;
    client.infer(identity_request("identity_batch", vec![1, 2], &[1.0, 2.0])).await.expect("batch of 1");
    client.infer(identity_request("identity_batch", vec![3, 2], &[0.0; 6])).await.expect("batch of 3");
    let stats = one(&mut client, "identity_batch").await;
    assert_eq!(stats.inference_count, 1 + 3, "each batch element is an inference");
    assert_eq!(stats.execution_count, 2, "each request is one execution");
    assert_eq!(count(durations(&stats).success), 2, "success counts requests");
}

#[tokio::test]
async fn decoupled_requests_count_once_and_model_errors_count_as_failures() {
    let server = TestServer::builtin().await;
    let mut client = server.client().await;
    let (sender, mut responses) = client.stream().await.expect("stream opens");
    sender.send(repeat_request("ok", 3, None, true)).await.expect("send");
    let replies = tritium_grpc_clients::take_responses(&mut responses, 4).await.expect("4 replies");
    let values: Vec<i32> = replies[..3].iter().map(|r| repeat_value(r.infer_response.as_ref().expect("response"))).collect();
    assert_eq!(values, [0, 1, 2]);
    // The model itself rejects a negative count: a failure, reported in-band.
    sender.send(repeat_request("bad", -1, None, true)).await.expect("send");
    let failed = tritium_grpc_clients::take_responses(&mut responses, 1).await.expect("1 reply");
    assert!(failed[0].error_message.contains("IN must be >= 0, got -1"), "{:?}", failed[0].error_message);

    let stats = one(&mut client, "repeat").await;
    let d = durations(&stats);
    assert_eq!(count(d.success), 1, "one decoupled request, however many responses");
    assert_eq!(count(d.fail), 1, "an error from the model is a failed inference");
    assert!(d.fail.expect("fail").ns > 0);
    assert_eq!((stats.inference_count, stats.execution_count), (1, 1));
}

#[tokio::test]
async fn an_empty_name_lists_every_served_model() {
    let server = TestServer::builtin().await;
    let mut client = server.client().await;
    client.infer(identity_request("identity", vec![1], &[1.0])).await.expect("identity");
    let stats = client.statistics("", "").await.expect("statistics");
    let listed: Vec<(&str, &str)> = stats.iter().map(|s| (s.name.as_str(), s.version.as_str())).collect();
    let builtins = ["accumulate", "add_sub", "add_sub_twice", "dense", "identity", "identity_batch", "repeat"];
    assert_eq!(listed, builtins.map(|name| (name, "1")));
    let identity = stats.iter().find(|s| s.name == "identity").expect("identity");
    assert_eq!(identity.inference_count, 1);
    let named = client.statistics("identity", "1").await.expect("identity version 1");
    assert_eq!(named.len(), 1);
    assert_eq!((named[0].name.as_str(), named[0].version.as_str(), named[0].inference_count), ("identity", "1", 1));
}

#[tokio::test]
async fn unknown_models_and_versions_are_invalid_arguments() {
    let server = TestServer::builtin().await;
    let mut client = server.client().await;
    let ask = |name: &str, version: &str| ModelStatisticsRequest { name: name.into(), version: version.into() };
    assert_status(
        client.raw().model_statistics(ask("nope", "")).await,
        Code::InvalidArgument,
        "requested model 'nope' is not available",
    );
    assert_status(
        client.raw().model_statistics(ask("identity", "2")).await,
        Code::InvalidArgument,
        "requested model version is not available for model 'identity'",
    );
    let bad_version = client.raw().model_statistics(ask("identity", "abc")).await;
    assert_eq!(bad_version.expect_err("not a version").code(), Code::InvalidArgument);
}

#[tokio::test]
async fn failed_validation_does_not_count() {
    let server = TestServer::builtin().await;
    let mut client = server.client().await;
    let wrong_shape = InferRequestBuilder::new("add_sub")
        .input(Tensor::from_slice("INPUT0", vec![2], &[1i32, 2]))
        .input(Tensor::from_slice("INPUT1", vec![2], &[1i32, 2]))
        .build();
    let status = client.raw().model_infer(wrong_shape).await.expect_err("shape mismatch");
    assert_eq!(status.code(), Code::InvalidArgument);
    let stats = one(&mut client, "add_sub").await;
    let d = durations(&stats);
    assert_eq!((count(d.success), count(d.fail), count(d.queue)), (0, 0, 0));
    assert_eq!((stats.inference_count, stats.execution_count), (0, 0));
}
