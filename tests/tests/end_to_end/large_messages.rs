//! Large tensors: a 64 MiB FP32 tensor through identity both ways, unary and streamed, under the
//! default 2 GiB - 1 message limit and with tuned HTTP/2 windows; and a server configured with a
//! small limit refuses bigger messages without going down.

use bytes::Bytes;
use futures::StreamExt;
use tonic::Code;
use tritium_grpc_clients::{InferClient, InferRequestBuilder, is_final};
use tritium_server::{ServerConfig, TransportConfig};
use tritium_tensor::{DataType, Tensor};
use tritium_tests::{TestServer, identity_request};

const SIZE: usize = 64 << 20;

/// A 64 MiB FP32 tensor whose bytes are not all alike, so a misplaced chunk would show.
fn big_tensor() -> Tensor {
    let data: Vec<u8> = (0..SIZE).map(|i| (i % 251) as u8 ^ (i >> 20) as u8).collect();
    Tensor::new("INPUT0", DataType::Fp32, vec![(SIZE / 4) as i64], Bytes::from(data))
}

async fn echo_unary(client: &mut InferClient, tensor: &Tensor) {
    let request = InferRequestBuilder::new("identity").id("big").input(tensor.clone()).build();
    let response = client.infer(request).await.expect("64 MiB through identity");
    assert_eq!(response.id, "big");
    assert_eq!(response.outputs.len(), 1);
    assert_eq!(response.outputs[0].shape, tensor.shape);
    assert_eq!(response.raw_output_contents.len(), 1);
    assert_eq!(response.raw_output_contents[0].len(), SIZE);
    assert!(response.raw_output_contents[0] == tensor.data, "the payload comes back byte for byte");
}

#[tokio::test]
async fn a_64_mib_tensor_round_trips_under_the_default_limit() {
    assert_eq!(TransportConfig::default().max_message_size, i32::MAX as usize, "Triton's default: 2 GiB - 1");
    let server = TestServer::builtin().await;
    let mut client = server.client().await;
    let tensor = big_tensor();
    echo_unary(&mut client, &tensor).await;
    // Twice on one connection: flow-control windows are returned properly.
    echo_unary(&mut client, &tensor).await;
}

#[tokio::test]
async fn a_64_mib_tensor_round_trips_on_a_stream() {
    let server = TestServer::builtin().await;
    let mut client = server.client().await;
    let tensor = big_tensor();
    let (sender, mut responses) = client.stream().await.expect("stream opens");
    for id in ["first", "second"] {
        sender.send(InferRequestBuilder::new("identity").id(id).input(tensor.clone()).build()).await.expect("send");
    }
    for id in ["first", "second"] {
        let reply = responses.next().await.expect("a reply").expect("not a status");
        assert_eq!(reply.error_message, "");
        let response = reply.infer_response.expect("response");
        assert_eq!(response.id, id);
        assert_eq!(is_final(&response), Some(true));
        assert!(response.raw_output_contents[0] == tensor.data, "{id}: byte for byte");
    }
}

#[tokio::test]
async fn tuned_http2_windows_serve_it_too() {
    let tensor = big_tensor();
    // The default is 16 MiB windows and 1 MiB frames: also hyper's own defaults, the adaptive
    // window, and HTTP/2's smallest (64 KiB - 1 windows, 16 KiB frames).
    let sized = |window: u32, frame: u32| TransportConfig {
        initial_connection_window_size: Some(window),
        initial_stream_window_size: Some(window),
        max_frame_size: Some(frame),
        ..TransportConfig::default()
    };
    let adaptive = TransportConfig { adaptive_window: true, ..TransportConfig::default() };
    for transport in [sized(1 << 20, 16 << 10), adaptive, sized(65_535, 16 << 10)] {
        let server = TestServer::start(ServerConfig { transport: transport.clone(), ..ServerConfig::default() }, None).await;
        let mut client = server.client().await;
        echo_unary(&mut client, &tensor).await;
        let small = client.infer(identity_request("identity", vec![2], &[1.0, 2.0])).await;
        assert!(small.is_ok(), "{transport:?}: small messages still flow");
    }
}

#[tokio::test]
async fn a_configured_limit_refuses_bigger_messages_and_keeps_serving() {
    let transport = TransportConfig { max_message_size: 1 << 20, ..TransportConfig::default() };
    let server = TestServer::start(ServerConfig { transport, ..ServerConfig::default() }, None).await;
    let mut client = server.client().await;
    let two_mib = vec![0.5f32; (2 << 20) / 4];
    let status = client
        .raw()
        .model_infer(identity_request("identity", vec![two_mib.len() as i64], &two_mib))
        .await
        .expect_err("over the limit");
    assert_eq!(status.code(), Code::OutOfRange, "{}", status.message());
    let fits = vec![0.5f32; (512 << 10) / 4];
    let response = client.infer(identity_request("identity", vec![fits.len() as i64], &fits)).await.expect("under the limit");
    assert_eq!(response.raw_output_contents[0].len(), 512 << 10);
}
