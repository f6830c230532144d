//! The transport's budgets under the attacks that once pinned gigabytes or descriptors: half-sent
//! messages that declare a large length, a small compressed body that inflates past the limit,
//! more connections than allowed, and connections that never send a call. Raw HTTP/2 (the `h2`
//! client), so nothing in a client library hides what the server does.

use std::io::Write;
use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};
use prost::Message;
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;
use tritium_server::ServerConfig;
use tritium_tests::{TestServer, identity_request};

async fn connect(server: &TestServer) -> h2::client::SendRequest<Bytes> {
    let tcp = TcpStream::connect(server.handle.grpc_addr()).await.expect("connects");
    let (send, connection) = h2::client::handshake(tcp).await.expect("HTTP/2 handshake");
    tokio::spawn(async move {
        let _ = connection.await;
    });
    send.ready().await.expect("ready")
}

fn model_infer(server: &TestServer, encoding: Option<&str>) -> http::Request<()> {
    let mut builder = super::transport::grpc_request(server, "ModelInfer");
    if let Some(encoding) = encoding {
        builder = builder.header("grpc-encoding", encoding);
    }
    builder.body(()).expect("a request")
}

fn framed(compressed: bool, declared: u32, payload: &[u8]) -> Bytes {
    let mut frame = BytesMut::new();
    frame.put_u8(u8::from(compressed));
    frame.put_u32(declared);
    frame.extend_from_slice(payload);
    frame.freeze()
}

/// The call's grpc-status and message, from its headers (trailers-only) or its trailers.
async fn grpc_status(response: h2::client::ResponseFuture) -> (String, String) {
    let response = response.await.expect("a response");
    let text = |headers: &http::HeaderMap, key: &str| headers.get(key).map(|v| v.to_str().unwrap_or_default().to_owned());
    let decoded = |message: Option<String>| message.unwrap_or_default().replace("%20", " ");
    if let Some(code) = text(response.headers(), "grpc-status") {
        return (code, decoded(text(response.headers(), "grpc-message")));
    }
    let mut body = response.into_body();
    while let Some(chunk) = body.data().await {
        let chunk = chunk.expect("data");
        let _ = body.flow_control().release_capacity(chunk.len());
    }
    let trailers = body.trailers().await.expect("trailers").expect("has trailers");
    (text(&trailers, "grpc-status").unwrap_or_default(), decoded(text(&trailers, "grpc-message")))
}

/// One whole ModelInfer call: `message` sent as one frame, compressed with `encoding` if given.
async fn call(
    send: &mut h2::client::SendRequest<Bytes>,
    server: &TestServer,
    encoding: Option<&str>,
    message: &[u8],
) -> (String, String) {
    let (response, mut body) = send.send_request(model_infer(server, encoding), false).expect("opens");
    body.send_data(framed(encoding.is_some(), message.len() as u32, message), true).expect("sends");
    grpc_status(response).await
}

async fn identity_still_answers(server: &TestServer) {
    let mut client = server.client().await;
    client.infer(identity_request("identity", vec![2], &[1.0, 2.0])).await.expect("identity answers");
}

#[tokio::test]
async fn half_sent_messages_are_charged_their_declared_length_and_refused_past_the_budget() {
    let mut config = ServerConfig::default();
    config.transport.max_buffered_request_bytes = 3 << 20;
    let server = TestServer::start(config, None).await;
    let mut send = connect(&server).await;
    // 1,000 calls (the default stream limit is 1,024) that each declare 2 MiB and send 3 bytes of
    // it: before the fix, tonic reserved the whole 2 MiB for each (2 GB in all). Now each holds
    // the 8 bytes that came.
    let mut held = Vec::new();
    for _ in 0..1000 {
        let (response, mut body) = send.send_request(model_infer(&server, None), false).expect("opens");
        body.send_data(framed(false, 2 << 20, b"abc"), false).expect("sends");
        held.push((response, body));
    }
    identity_still_answers(&server).await;
    // Calls that really send their bytes are refused past the budget, and nothing else changes.
    let filler = vec![0u8; 1 << 20];
    let mut bodies = Vec::new();
    let mut answers = futures::stream::FuturesUnordered::new();
    for (response, mut body) in held.drain(..4) {
        body.send_data(Bytes::from(filler.clone()), false).expect("sends");
        bodies.push(body);
        answers.push(grpc_status(response));
    }
    // The calls within the budget wait for the rest of their messages; the first answer is a refusal.
    let (code, message) = futures::StreamExt::next(&mut answers).await.expect("an answer");
    assert_eq!(code, "8", "RESOURCE_EXHAUSTED: {message}");
    assert!(message.contains("--max-buffered-request-bytes"), "{message}");
    drop(answers);
    identity_still_answers(&server).await;

    // The budget comes back when the held calls go away.
    for mut body in bodies.into_iter().chain(held.into_iter().map(|(_, body)| body)) {
        body.send_reset(h2::Reason::CANCEL);
    }
    let request = identity_request("identity", vec![1], &[7.0]).encode_to_vec();
    let (code, message) = call(&mut send, &server, None, &request).await;
    assert_eq!(code, "0", "{message}");
}

fn gzip(data: &[u8]) -> Vec<u8> {
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    encoder.write_all(data).expect("compresses");
    encoder.finish().expect("compresses")
}

#[tokio::test]
async fn a_compressed_bomb_stops_at_the_limit_and_a_real_compressed_call_is_served() {
    let mut config = ServerConfig::default();
    config.transport.max_buffered_request_bytes = 16 << 20;
    let server = TestServer::start(config, None).await;
    let mut send = connect(&server).await;

    // 64 MiB of zeros in about 64 KiB: before the fix it inflated up to the 2 GiB message limit.
    let bomb = gzip(&vec![0; 64 << 20]);
    assert!(bomb.len() < 1 << 20);
    let (code, message) = call(&mut send, &server, Some("gzip"), &bomb).await;
    assert_eq!(code, "8", "RESOURCE_EXHAUSTED: {message}");

    let request = gzip(&identity_request("identity", vec![3], &[1.0, 2.0, 3.0]).encode_to_vec());
    let (code, message) = call(&mut send, &server, Some("gzip"), &request).await;
    assert_eq!(code, "0", "{message}");
}

#[tokio::test]
async fn a_compressed_message_inflates_only_up_to_the_message_limit() {
    let mut config = ServerConfig::default();
    config.transport.max_message_size = 1 << 20;
    let server = TestServer::start(config, None).await;
    let mut send = connect(&server).await;
    let bomb = gzip(&vec![0; 4 << 20]);
    let (code, message) = call(&mut send, &server, Some("gzip"), &bomb).await;
    assert_eq!((code.as_str(), message.contains("size limit")), ("8", true), "{message}");
}

#[tokio::test]
async fn past_the_connection_limit_new_clients_wait_until_one_leaves() {
    let mut config = ServerConfig::default();
    config.transport.max_connections = 2;
    let server = TestServer::start(config, None).await;
    let first = connect(&server).await;
    let _second = connect(&server).await;
    let third = tokio::spawn({
        let mut client = tritium_grpc_clients::InferClient::from_channel(
            tonic::transport::Endpoint::from_shared(server.uri()).expect("uri").connect_lazy(),
        );
        async move { client.infer(identity_request("identity", vec![1], &[1.0])).await.map(|_| ()) }
    });
    // The server does not serve a third connection while two are open.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!third.is_finished(), "a third connection was served past the limit of 2");
    drop(first);
    let answered = tokio::time::timeout(Duration::from_secs(30), third).await.expect("served once one left");
    answered.expect("task").expect("the third client's call");
}

#[tokio::test]
async fn a_connection_that_sends_nothing_is_closed_at_the_handshake_deadline() {
    let mut config = ServerConfig::default();
    config.transport.header_timeout = Some(Duration::from_millis(200));
    let server = TestServer::start(config, None).await;
    let mut silent = TcpStream::connect(server.handle.grpc_addr()).await.expect("connects");
    let mut buffer = Vec::new();
    // The server's SETTINGS come first; then it closes the connection (end of stream).
    let read = tokio::time::timeout(Duration::from_secs(30), silent.read_to_end(&mut buffer)).await.expect("closed in time");
    read.expect("reads to the end");
    identity_still_answers(&server).await;
}

#[tokio::test]
async fn a_connection_that_goes_quiet_after_a_call_is_closed_at_the_idle_deadline() {
    let mut config = ServerConfig::default();
    config.transport.idle_timeout = Some(Duration::from_millis(300));
    let server = TestServer::start(config, None).await;
    let tcp = TcpStream::connect(server.handle.grpc_addr()).await.expect("connects");
    let (send, connection) = h2::client::handshake(tcp).await.expect("HTTP/2 handshake");
    let driven = tokio::spawn(connection);
    let mut send = send.ready().await.expect("ready");
    let request = identity_request("identity", vec![1], &[7.0]).encode_to_vec();
    assert_eq!(call(&mut send, &server, None, &request).await.0, "0");
    // Then nothing in either direction: the server closes the connection, which ends the driver.
    let ended = tokio::time::timeout(Duration::from_secs(30), driven).await.expect("closed in time");
    drop(ended);
}
