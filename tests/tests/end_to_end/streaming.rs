//! ModelStreamInfer: plain models answer in request order with `triton_final_response=true`;
//! decoupled responses carry `false`, the end is marked only by the opt-in empty final response,
//! requests interleave while each keeps its own order, and a client that goes away cancels its work.

use std::time::Duration;

use futures::StreamExt;
use tritium_grpc_clients::{InferRequestBuilder, is_final, output_tensor, take_responses};
use tritium_proto::inference::infer_parameter::ParameterChoice;
use tritium_proto::inference::{ModelInferResponse, ModelStreamInferResponse};
use tritium_tensor::Tensor;
use tritium_tests::{TestServer, identity_request, repeat_request, repeat_value};

/// Unwraps a stream reply that must not be an error.
fn ok(reply: ModelStreamInferResponse) -> ModelInferResponse {
    assert_eq!(reply.error_message, "", "no in-band error expected");
    reply.infer_response.expect("infer_response")
}

/// Reads the next reply, failing rather than hanging if none comes.
async fn next(responses: &mut tonic::Streaming<ModelStreamInferResponse>) -> ModelInferResponse {
    let reply = tokio::time::timeout(Duration::from_secs(10), responses.next())
        .await
        .expect("a response within 10 s")
        .expect("the stream is open")
        .expect("not a status");
    ok(reply)
}

fn assert_empty_final(response: &ModelInferResponse, id: &str) {
    assert_eq!(response.id, id);
    assert_eq!(response.model_name, "repeat");
    assert_eq!(response.model_version, "", "Triton leaves the version empty on the empty final");
    assert!(response.outputs.is_empty() && response.raw_output_contents.is_empty(), "no outputs");
    assert_eq!(is_final(response), Some(true));
}

fn assert_repeat(response: &ModelInferResponse, id: &str, value: i32) {
    assert_eq!((response.id.as_str(), response.model_name.as_str(), response.model_version.as_str()), (id, "repeat", "1"));
    assert_eq!(is_final(response), Some(false), "{id}: a decoupled response is never final");
    assert_eq!(repeat_value(response), value, "{id}");
}

#[tokio::test]
async fn plain_model_answers_in_request_order_and_final() {
    let server = TestServer::builtin().await;
    let mut client = server.client().await;
    let (sender, mut responses) = client.stream().await.expect("stream opens");
    for i in 0..20 {
        let mut request = identity_request("identity", vec![2], &[i as f32, -(i as f32)]);
        request.id = format!("r{i}");
        sender.send(request).await.expect("send");
    }
    let replies = take_responses(&mut responses, 20).await.expect("20 replies");
    assert_eq!(replies.len(), 20);
    for (i, reply) in replies.into_iter().enumerate() {
        let response = ok(reply);
        assert_eq!(response.id, format!("r{i}"), "responses come in request order");
        assert_eq!((response.model_name.as_str(), response.model_version.as_str()), ("identity", "1"));
        assert_eq!(is_final(&response), Some(true));
        let output = output_tensor(&response, "OUTPUT0").expect("OUTPUT0").to_vec::<f32>().expect("FP32");
        assert_eq!(output, [i as f32, -(i as f32)]);
    }
    drop(sender);
    assert!(responses.next().await.is_none(), "the call ends once the client half-closes and all is answered");
}

#[tokio::test]
async fn decoupled_responses_then_the_opt_in_empty_final() {
    let server = TestServer::builtin().await;
    let mut client = server.client().await;
    let (sender, mut responses) = client.stream().await.expect("stream opens");
    sender.send(repeat_request("three", 3, None, true)).await.expect("send");
    for value in 0..3 {
        assert_repeat(&next(&mut responses).await, "three", value);
    }
    assert_empty_final(&next(&mut responses).await, "three");
    // Nothing more for that request: the next reply belongs to the next request.
    sender.send(identity_request("identity", vec![1], &[7.0])).await.expect("send");
    let after = next(&mut responses).await;
    assert_eq!(after.model_name, "identity");
}

#[tokio::test]
async fn without_the_flag_nothing_marks_the_end() {
    let server = TestServer::builtin().await;
    let mut client = server.client().await;
    let (sender, mut responses) = client.stream().await.expect("stream opens");
    sender.send(repeat_request("first", 3, None, false)).await.expect("send");
    for value in 0..3 {
        assert_repeat(&next(&mut responses).await, "first", value);
    }
    sender.send(repeat_request("second", 1, None, false)).await.expect("send");
    assert_repeat(&next(&mut responses).await, "second", 0);
    // And a count of zero without the flag sends nothing at all.
    sender.send(repeat_request("none", 0, None, false)).await.expect("send");
    sender.send(repeat_request("third", 1, None, true)).await.expect("send");
    assert_repeat(&next(&mut responses).await, "third", 0);
    assert_empty_final(&next(&mut responses).await, "third");
}

#[tokio::test]
async fn zero_responses_with_the_flag_is_only_the_empty_final() {
    let server = TestServer::builtin().await;
    let mut client = server.client().await;
    let (sender, mut responses) = client.stream().await.expect("stream opens");
    sender.send(repeat_request("zero", 0, None, true)).await.expect("send");
    assert_empty_final(&next(&mut responses).await, "zero");
    sender.send(repeat_request("one", 1, None, true)).await.expect("send");
    assert_repeat(&next(&mut responses).await, "one", 0);
    assert_empty_final(&next(&mut responses).await, "one");
}

#[tokio::test]
async fn decoupled_requests_interleave_and_keep_their_own_order() {
    let server = TestServer::builtin().await;
    let mut client = server.client().await;
    let (sender, mut responses) = client.stream().await.expect("stream opens");
    sender.send(repeat_request("a", 4, Some(30), true)).await.expect("send");
    sender.send(repeat_request("b", 4, Some(30), true)).await.expect("send");
    let mut seen = Vec::new();
    while seen.iter().filter(|r: &&ModelInferResponse| r.outputs.is_empty()).count() < 2 {
        seen.push(next(&mut responses).await);
    }
    assert_eq!(seen.len(), 10, "4 responses and an empty final for each");
    for id in ["a", "b"] {
        let own: Vec<&ModelInferResponse> = seen.iter().filter(|r| r.id == id).collect();
        assert_eq!(own.len(), 5, "{id}");
        for (value, response) in own[..4].iter().enumerate() {
            assert_repeat(response, id, value as i32);
        }
        assert_empty_final(own[4], id);
    }
    let first_final = seen.iter().position(|r| r.outputs.is_empty()).expect("a final");
    for id in ["a", "b"] {
        let first = seen.iter().position(|r| r.id == id).expect("a response");
        assert!(first < first_final, "{id} answered before either request finished: {:?}", ids(&seen));
    }
}

fn ids(responses: &[ModelInferResponse]) -> Vec<String> {
    responses.iter().map(|r| format!("{}:{}", r.id, r.outputs.len())).collect()
}

#[tokio::test]
async fn requested_outputs_are_honoured_on_a_stream() {
    let server = TestServer::builtin().await;
    let mut client = server.client().await;
    let (sender, mut responses) = client.stream().await.expect("stream opens");
    let a: Vec<i32> = (0..16).collect();
    let b = vec![2i32; 16];
    let request = InferRequestBuilder::new("add_sub")
        .id("subset")
        .input(Tensor::from_slice("INPUT0", vec![16], &a))
        .input(Tensor::from_slice("INPUT1", vec![16], &b))
        .output("OUTPUT1")
        .build();
    sender.send(request).await.expect("send");
    let response = next(&mut responses).await;
    assert_eq!(response.id, "subset");
    let names: Vec<&str> = response.outputs.iter().map(|o| o.name.as_str()).collect();
    assert_eq!(names, ["OUTPUT1"], "only the requested output");
    assert_eq!(response.raw_output_contents.len(), 1);
    let difference = output_tensor(&response, "OUTPUT1").expect("OUTPUT1").to_vec::<i32>().expect("INT32");
    assert_eq!(difference, a.iter().map(|x| x - 2).collect::<Vec<_>>());
    assert_eq!(is_final(&response), Some(true));
}

#[tokio::test]
async fn a_client_that_goes_away_does_not_hang_the_server() {
    let server = TestServer::builtin().await;
    let mut client = server.client().await;
    let (sender, mut responses) = client.stream().await.expect("stream opens");
    sender.send(repeat_request("long", 1000, Some(5), true)).await.expect("send");
    for value in 0..3 {
        assert_repeat(&next(&mut responses).await, "long", value);
    }
    // Going away mid-request: the call is reset, and its 5 s of work is abandoned.
    drop(responses);
    drop(sender);

    let (sender, mut responses) = client.stream().await.expect("a new stream opens on the same channel");
    sender.send(repeat_request("short", 2, None, true)).await.expect("send");
    assert_repeat(&next(&mut responses).await, "short", 0);
    assert_repeat(&next(&mut responses).await, "short", 1);
    assert_empty_final(&next(&mut responses).await, "short");
    let unary = client.infer(identity_request("identity", vec![1], &[1.0])).await.expect("unary still served");
    assert_eq!(unary.model_name, "identity");

    let stats = client.statistics("repeat", "").await.expect("statistics");
    let inference = stats[0].inference_stats.expect("inference stats");
    assert_eq!(inference.success.expect("success").count, 1, "only the finished request is a success");
    assert_eq!(stats[0].execution_count, 1);
}

#[tokio::test]
async fn a_dropped_request_stops_running() {
    let server = TestServer::builtin().await;
    let mut client = server.client().await;
    let (sender, mut responses) = client.stream().await.expect("stream opens");
    // 100 responses 5 ms apart: about 0.5 s of work if it were left to run.
    sender.send(repeat_request("dropped", 100, Some(5), false)).await.expect("send");
    assert_repeat(&next(&mut responses).await, "dropped", 0);
    drop((sender, responses));

    // At least 0.75 s of work of our own: had the dropped request kept running, it would have
    // finished (and counted as a success) before this one does. A correct server can't fail this.
    let (sender, mut responses) = client.stream().await.expect("stream opens");
    sender.send(repeat_request("after", 150, Some(5), true)).await.expect("send");
    for value in 0..150 {
        assert_repeat(&next(&mut responses).await, "after", value);
    }
    assert_empty_final(&next(&mut responses).await, "after");
    let stats = client.statistics("repeat", "1").await.expect("statistics");
    let inference = stats[0].inference_stats.expect("inference stats");
    assert_eq!(inference.success.expect("success").count, 1, "the dropped request was cancelled, not completed");
    assert_eq!(inference.fail.expect("fail").count, 0, "a cancelled request is not a failure either");
}

#[tokio::test]
async fn a_model_error_comes_in_band_marked_final() {
    let server = TestServer::builtin().await;
    let mut client = server.client().await;
    let (sender, mut responses) = client.stream().await.expect("stream opens");
    // The repeat model itself rejects a negative count.
    sender.send(repeat_request("negative", -1, None, true)).await.expect("send");
    let reply =
        tokio::time::timeout(Duration::from_secs(10), responses.next()).await.expect("in time").expect("open").expect("in-band");
    assert!(reply.error_message.contains("IN must be >= 0, got -1"), "{:?}", reply.error_message);
    let failed = reply.infer_response.expect("the failed request is identified");
    assert_eq!((failed.id.as_str(), failed.model_name.as_str()), ("negative", "repeat"));
    // As Triton 2.51 sends a model's error (tests/python_backend/FINDINGS.md): it ends its request.
    assert_eq!(is_final(&failed), Some(true), "a model's error carries triton_final_response: true");
    // No empty final follows an error, and the stream goes on.
    sender.send(repeat_request("after", 1, None, true)).await.expect("send");
    assert_repeat(&next(&mut responses).await, "after", 0);
    assert_empty_final(&next(&mut responses).await, "after");
}

#[tokio::test]
async fn the_empty_final_flag_is_harmless_on_plain_models() {
    let server = TestServer::builtin().await;
    let mut client = server.client().await;
    let flagged = |id: &str| {
        InferRequestBuilder::new("identity")
            .id(id)
            .input(Tensor::from_slice("INPUT0", vec![1], &[1f32]))
            .parameter("triton_enable_empty_final_response", ParameterChoice::BoolParam(true))
            .build()
    };
    // perf_analyzer and the C++ client send the flag on every request, unary ones included.
    let unary = client.infer(flagged("unary")).await.expect("the flag is accepted on ModelInfer");
    assert_eq!(unary.id, "unary");
    let (sender, mut responses) = client.stream().await.expect("stream opens");
    sender.send(flagged("one")).await.expect("send");
    sender.send(flagged("two")).await.expect("send");
    for id in ["one", "two"] {
        let response = next(&mut responses).await;
        assert_eq!(response.id, id, "one final response per request, no extra empty one");
        assert_eq!(is_final(&response), Some(true));
        assert_eq!(response.outputs.len(), 1);
    }
}

#[tokio::test]
async fn a_half_closed_stream_ends_once_its_requests_are_answered() {
    let server = TestServer::builtin().await;
    let mut client = server.client().await;
    let (sender, mut responses) = client.stream().await.expect("stream opens");
    // A decoupled request still running when the client stops sending, then a plain one.
    sender.send(repeat_request("slow", 3, Some(20), true)).await.expect("send");
    let mut plain = identity_request("identity", vec![1], &[1.0]);
    plain.id = "plain".into();
    sender.send(plain).await.expect("send");
    drop(sender);
    let mut received = Vec::new();
    let ended = tokio::time::timeout(Duration::from_secs(10), async {
        while let Some(reply) = responses.next().await {
            received.push(ok(reply.expect("not a status")));
        }
    })
    .await;
    assert!(ended.is_ok(), "the call must end after the last response; got {} responses", received.len());
    assert_eq!(received.len(), 5, "3 repeats, the empty final and the identity answer");
    assert_empty_final(received.iter().rfind(|r| r.id == "slow").expect("slow responses"), "slow");
}
