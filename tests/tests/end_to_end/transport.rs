//! The HTTP/2 server under the gRPC services (server/src/grpc/transport.rs): routing by service
//! name, the client's deadline, the maximum connection age and its grace, and a shutdown that
//! lets a call in flight finish.

use std::time::{Duration, Instant};

use http::uri::PathAndQuery;
use prost::Message;
use tokio::net::TcpStream;
use tonic::Code;
use tritium_grpc_clients::InferRequestBuilder;
use tritium_proto::inference::infer_parameter::ParameterChoice;
use tritium_proto::inference::{ModelStreamInferResponse, ServerLiveRequest, ServerLiveResponse};
use tritium_server::ServerConfig;
use tritium_tensor::Tensor;
use tritium_tests::{TestServer, identity_config, identity_request, temp_repository, write_model};
use tritium_worker::{ControlMode, RepositoryOptions};

/// A repository with `identity` and `slow`, a mock language model that takes `ms_per_token` per
/// generated token.
async fn server_with_slow_model(ms_per_token: u64, config: ServerConfig) -> TestServer {
    let repository = temp_repository();
    write_model(repository.path(), "identity", &identity_config("identity", "TYPE_FP32", 0), &[1]);
    let slow = format!(
        "backend: \"tritium_mock_llm\"\nparameters {{ key: \"decode_ms_per_step\" value {{ string_value: \"{ms_per_token}\" }} }}\n"
    );
    write_model(repository.path(), "slow", &slow, &[1]);
    let options =
        RepositoryOptions { control_mode: ControlMode::None, paths: vec![repository.path().to_path_buf()], ..Default::default() };
    TestServer::start(ServerConfig { repository: options, ..config }, Some(repository)).await
}

fn slow_prompt(max_tokens: i64) -> InferRequestBuilder {
    InferRequestBuilder::new("slow")
        .input(Tensor::from_byte_strings("text_input", vec![1], ["hello"]))
        .parameter("max_tokens", ParameterChoice::Int64Param(max_tokens))
        .parameter("ignore_eos", ParameterChoice::BoolParam(true))
}

async fn identity_still_answers(server: &TestServer) {
    let mut client = server.client().await;
    let response = client.infer(identity_request("identity", vec![2], &[1.0, 2.0])).await.expect("identity answers");
    assert_eq!(response.model_name, "identity");
}

#[tokio::test]
async fn an_unknown_service_or_method_is_unimplemented_and_the_server_goes_on() {
    let server = TestServer::builtin().await;
    let channel = tonic::transport::Endpoint::from_shared(server.uri()).expect("uri").connect().await.expect("connects");
    for path in ["/no.such.Service/ServerLive", "/inference.GRPCInferenceService/NoSuchMethod", "/inference.GRPCInferenceService"]
    {
        let mut grpc = tonic::client::Grpc::new(channel.clone());
        grpc.ready().await.expect("ready");
        let called = grpc
            .unary::<ServerLiveRequest, ServerLiveResponse, _>(
                tonic::Request::new(ServerLiveRequest {}),
                PathAndQuery::from_static(path),
                tonic_prost::ProstCodec::default(),
            )
            .await;
        let status = called.expect_err(path);
        assert_eq!(status.code(), Code::Unimplemented, "{path}: {status:?}");
    }
    identity_still_answers(&server).await;
}

#[tokio::test]
async fn a_call_past_the_clients_deadline_ends_deadline_exceeded() {
    // 200 tokens at 25 ms each: five seconds, far past the 300 ms deadline. tonic's and gRPC's
    // clients enforce a deadline themselves, so this one is sent over raw HTTP/2: the status is
    // the server's.
    let server = server_with_slow_model(25, ServerConfig::default()).await;
    let (send, _driven) = raw_connection(&server).await;
    let mut send = send.ready().await.expect("ready for a stream");
    let message = slow_prompt(200).input(Tensor::from_slice("streaming", vec![1], &[false])).build().encode_to_vec();
    let mut frame = vec![0];
    frame.extend_from_slice(&u32::try_from(message.len()).expect("small").to_be_bytes());
    frame.extend_from_slice(&message);
    let request = grpc_request(&server, "ModelInfer").header("grpc-timeout", "300m").body(()).expect("a request");
    let started = Instant::now();
    let (response, mut body) = send.send_request(request, false).expect("sends the headers");
    body.send_data(frame.into(), true).expect("sends the message");
    let response = tokio::time::timeout(Duration::from_secs(20), response).await.expect("an answer in time").expect("a response");
    let header = |name: &str| response.headers().get(name).and_then(|v| v.to_str().ok()).map(str::to_owned);
    assert_eq!((header("grpc-status"), header("grpc-message")), (Some("4".into()), Some("Deadline%20Exceeded".into())));
    assert!(started.elapsed() < Duration::from_secs(4), "the server waited for the whole call: {:?}", started.elapsed());

    // A deadline the call meets changes nothing.
    let mut client = server.client().await;
    let mut request = tonic::Request::new(identity_request("identity", vec![1], &[3.0]));
    request.set_timeout(Duration::from_secs(30));
    client.raw().model_infer(request).await.expect("a call inside its deadline answers");
    identity_still_answers(&server).await;
}

pub(super) fn grpc_request(server: &TestServer, method: &str) -> http::request::Builder {
    http::Request::builder()
        .method("POST")
        .uri(format!("{}/inference.GRPCInferenceService/{method}", server.uri()))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
}

#[tokio::test]
async fn one_connection_holds_more_than_hyper_s_default_200_streams() {
    let server = TestServer::builtin().await;
    let client = server.client().await;
    // Each stream stays open, waiting for requests, so all of them are open at once; a connection
    // limited to 200 streams would leave the last ones waiting for their response headers.
    let mut open = Vec::new();
    for _ in 0..250 {
        let mut client = client.clone();
        open.push(tokio::spawn(async move { client.stream().await }));
    }
    let mut streams = Vec::new();
    for opening in open {
        let opened = tokio::time::timeout(Duration::from_secs(30), opening).await.expect("every stream opens in time");
        streams.push(opened.expect("task").expect("the stream opens"));
    }
    let (sender, mut responses) = streams.pop().expect("a stream");
    sender.send(identity_request("identity", vec![1], &[4.0])).await.expect("sends");
    let reply = next_reply(&mut responses).await;
    assert!(reply.error_message.is_empty(), "{}", reply.error_message);
}

/// Opens a raw HTTP/2 connection to `server` and drives it on a task; the task ends when the
/// server closes the connection.
async fn raw_connection(server: &TestServer) -> (h2::client::SendRequest<bytes::Bytes>, tokio::task::JoinHandle<()>) {
    let tcp = TcpStream::connect(server.handle.grpc_addr()).await.expect("connects");
    let (send, connection) = h2::client::handshake(tcp).await.expect("HTTP/2 handshake");
    let driven = tokio::spawn(async move {
        let _ = connection.await;
    });
    (send, driven)
}

#[tokio::test]
async fn connections_go_away_at_their_maximum_age_and_close_after_its_grace() {
    let mut config = ServerConfig::default();
    config.transport.max_connection_age = Some(Duration::from_millis(300));
    config.transport.max_connection_age_grace = Some(Duration::from_millis(300));
    let server = TestServer::start(config, None).await;

    // An idle connection is closed once it is older than the maximum age.
    let (_idle, idle_closed) = raw_connection(&server).await;
    tokio::time::timeout(Duration::from_secs(20), idle_closed).await.expect("closed at its age").expect("task");

    // A connection with a call that never ends is closed when the grace is over.
    let (send, busy_closed) = raw_connection(&server).await;
    let mut send = send.ready().await.expect("ready for a stream");
    let request = grpc_request(&server, "ModelStreamInfer").body(()).expect("a request");
    // The request body stays open: the server's stream waits for requests that never come.
    let (_response, _body) = send.send_request(request, false).expect("sends the headers");
    tokio::time::timeout(Duration::from_secs(20), busy_closed).await.expect("closed after the grace").expect("task");

    identity_still_answers(&server).await;
}

async fn next_reply(responses: &mut tonic::Streaming<ModelStreamInferResponse>) -> ModelStreamInferResponse {
    let next = tokio::time::timeout(Duration::from_secs(60), futures::StreamExt::next(responses));
    next.await.expect("a response in time").expect("the stream is open").expect("no transport error")
}

#[tokio::test]
async fn shutdown_lets_a_stream_in_flight_finish_and_then_refuses_connections() {
    let server = server_with_slow_model(20, ServerConfig::default()).await;
    let address = server.handle.grpc_addr();
    let mut client = server.client().await;
    let (sender, mut responses) = client.stream().await.expect("stream");
    sender.send(slow_prompt(25).input(Tensor::from_slice("streaming", vec![1], &[true])).build()).await.expect("sends");
    let first = next_reply(&mut responses).await;
    assert!(first.error_message.is_empty(), "{}", first.error_message);

    // The first token is out, so the call is in flight: stop the server under it.
    let TestServer { handle, repository } = server;
    let stopped = tokio::spawn(handle.shutdown());
    let mut tokens = 1;
    loop {
        let reply = next_reply(&mut responses).await;
        assert!(reply.error_message.is_empty(), "{}", reply.error_message);
        let response = reply.infer_response.expect("a response");
        if tritium_grpc_clients::is_final(&response) == Some(true) {
            break;
        }
        tokens += 1;
    }
    assert!(tokens >= 24, "the stream was cut short after {tokens} tokens");
    tokio::time::timeout(Duration::from_secs(60), stopped).await.expect("shutdown ends once the stream has").expect("task");
    drop(repository);
    assert!(TcpStream::connect(address).await.is_err(), "the listener is closed after shutdown");
}
