//! The NATS request plane on a real `nats-server`: raw tunnels, then the worker service over it.

use std::time::Duration;

use futures::StreamExt;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;
use tonic::transport::Server;
use tritium_proto::ErrorCode;
use tritium_tensor::Tensor;
use tritium_worker::{InferOutcome, InferenceRequest, StreamItem, WorkerClient, WorkerError};

use super::*;
use crate::test_nats::NatsServer;
use crate::remote::{RemoteWorker, WorkerService};

const MAX_MESSAGE: usize = 64 << 20;
/// Bounds every wait, so a broken test fails instead of hanging.
const DEADLINE: Duration = Duration::from_secs(30);

async fn plane(server: &NatsServer, name: &str) -> Arc<NatsPlane> {
    NatsPlane::connect(server.url(), name).await.expect("connects to nats-server")
}

fn stem(listener: &NatsListener) -> String {
    listener.address().strip_prefix(SCHEME).expect("a nats: address").to_string()
}

/// Accepts connections in the background, handing each over.
fn accept_all(mut listener: NatsListener) -> mpsc::UnboundedReceiver<DuplexStream> {
    let (sender, receiver) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Some(stream) = listener.accept().await {
            if sender.send(stream).is_err() {
                return;
            }
        }
    });
    receiver
}

#[test]
fn reply_subjects_are_checked() {
    assert!(valid_subject("_INBOX.abc123"));
    assert!(valid_subject("a.b-c.d_e"));
    for bad in ["", "a..b", "a.*", "a.>", "a b", ".a", "a.", &"x".repeat(MAX_SUBJECT + 1)] {
        assert!(!valid_subject(bad), "{bad:?} is refused");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn megabytes_cross_a_tunnel_both_ways_intact_and_the_end_arrives() {
    let server = NatsServer::start();
    let (worker, frontend) = (plane(&server, "worker").await, plane(&server, "frontend").await);
    let listener = worker.listen("ns.with dots", "w 1", 4).await.expect("listens");
    assert!(listener.address().starts_with("nats:tritium.ns_with_dots.workers.w_1."), "{}", listener.address());
    let stem = stem(&listener);
    let mut accepted = accept_all(listener);
    let client = tokio::time::timeout(DEADLINE, frontend.dial(&stem)).await.expect("in time").expect("dials");
    let echo = accepted.recv().await.expect("the worker side");
    // The worker side echoes everything back, then ends its direction.
    tokio::spawn(async move {
        let (mut reader, mut writer) = tokio::io::split(echo);
        tokio::io::copy(&mut reader, &mut writer).await.expect("echoes");
        writer.shutdown().await.expect("ends");
    });
    let sent: Vec<u8> = (0..3 * 1024 * 1024 + 17u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8).collect();
    let (mut reader, mut writer) = tokio::io::split(client);
    let to_send = sent.clone();
    let writing = tokio::spawn(async move {
        writer.write_all(&to_send).await.expect("writes");
        writer.shutdown().await.expect("ends");
        writer
    });
    let mut received = Vec::new();
    tokio::time::timeout(DEADLINE, reader.read_to_end(&mut received)).await.expect("in time").expect("reads to the end");
    drop(writing.await);
    assert_eq!(received.len(), sent.len());
    assert!(received == sent, "the bytes come back unchanged and in order");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_past_the_bound_are_refused_until_one_closes() {
    let server = NatsServer::start();
    let (worker, frontend) = (plane(&server, "worker").await, plane(&server, "frontend").await);
    let listener = worker.listen("ns", "w1", 1).await.expect("listens");
    let stem = stem(&listener);
    let open = listener.open.clone();
    let mut accepted = accept_all(listener);
    let first = frontend.dial(&stem).await.expect("the first connects");
    let first_worker_side = accepted.recv().await.expect("accepted");
    let refused = frontend.dial(&stem).await.expect_err("a second is over the bound");
    assert_eq!(refused.kind(), io::ErrorKind::ConnectionRefused);
    assert!(refused.to_string().contains("1 request-plane connections open (--request-plane-max-connections)"), "{refused}");
    drop((first, first_worker_side));
    let deadline = tokio::time::Instant::now() + DEADLINE;
    while open.get() > 0 {
        assert!(tokio::time::Instant::now() < deadline, "the closed tunnel is let go");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    frontend.dial(&stem).await.expect("a connection fits again");
}

#[tokio::test]
async fn no_worker_on_the_subject_is_unreachable_at_once_and_tcp_refuses_nats_addresses() {
    let server = NatsServer::start();
    let dialer = Dialer::nats(plane(&server, "frontend").await);
    let remote = RemoteWorker::dial("gone", "nats:tritium.ns.workers.gone.0", MAX_MESSAGE, None, &dialer).expect("lazy");
    let started = std::time::Instant::now();
    let error = remote.describe_models().await.expect_err("nobody answers");
    assert!(matches!(&error, WorkerError::Unreachable { .. }), "{error:?}");
    assert!(error.to_string().contains("no worker listens on tritium.ns.workers.gone.0.connect"), "{error}");
    assert!(started.elapsed() < CONNECT_TIMEOUT, "no responders is known at once, not after the timeout");

    let error = RemoteWorker::dial("w", "nats:tritium.ns.workers.w.0", MAX_MESSAGE, None, &Dialer::default()).expect_err("refused");
    let WorkerError::Failed { code: ErrorCode::InvalidArg, message } = error else { panic!("{error:?}") };
    assert!(message.contains("start this process with --request-plane nats"), "{message}");
}

/// A worker service on its own runtime (so a test can kill it as a crash would), listening on
/// the NATS plane; returns the runtime and the subject stem.
fn serve_worker_on_nats(url: String) -> (tokio::runtime::Runtime, String) {
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().expect("a runtime");
    let (stem_tx, stem_rx) = std::sync::mpsc::channel();
    runtime.spawn(async move {
        let plane = NatsPlane::connect(&url, "worker").await.expect("connects");
        let listener = plane.listen("ns", "w1", 8).await.expect("listens");
        stem_tx.send(stem(&listener)).expect("the test waits");
        let repository = crate::remote::tests::declared(&[]);
        let service = WorkerService::new(repository).into_server(MAX_MESSAGE);
        let served = Server::builder()
            .http2_keepalive_interval(Some(KEEPALIVE_INTERVAL))
            .http2_keepalive_timeout(Some(KEEPALIVE_TIMEOUT))
            .add_service(service)
            .serve_with_incoming(listener.incoming())
            .await;
        if let Err(e) = served {
            eprintln!("test worker stopped: {e}");
        }
    });
    let stem = stem_rx.recv_timeout(DEADLINE).expect("the worker listens");
    (runtime, stem)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_worker_service_answers_over_nats_and_a_killed_worker_ends_its_stream_as_unreachable() {
    let server = NatsServer::start();
    let (runtime, stem) = serve_worker_on_nats(server.url().to_string());
    let dialer = Dialer::nats(plane(&server, "frontend").await);
    let remote = RemoteWorker::dial("w1", &format!("nats:{stem}"), MAX_MESSAGE, None, &dialer).expect("lazy");
    let models = remote.describe_models().await.expect("describes");
    assert!(models.iter().any(|m| m.name == "identity"), "the built-in models are listed");

    let repository = crate::remote::tests::declared(&[]);
    let request = InferenceRequest::new("identity", vec![Tensor::from_slice("INPUT0", vec![3], &[1.5f32, -2.0, 3.25])]);
    let response = remote.infer(repository.validate(request).expect("valid")).await.expect("identity answers");
    assert_eq!(response.outputs[0].to_vec::<f32>().expect("FP32"), [1.5, -2.0, 3.25]);

    // A decoupled model streams; the worker dies in the middle.
    let mut inputs = vec![Tensor::from_slice("IN", vec![1], &[1000i32])];
    inputs.push(Tensor::from_slice("DELAY_MS", vec![1], &[50u32]));
    let request = repository.validate(InferenceRequest::new("repeat", inputs)).expect("valid");
    let Ok(InferOutcome::Stream(mut responses)) = remote.infer_stream(request).await else { panic!("repeat streams") };
    let first = tokio::time::timeout(DEADLINE, responses.next()).await.expect("in time");
    assert!(matches!(first, Some(StreamItem::Response(_))), "the stream started");
    runtime.shutdown_background();
    let ended = tokio::time::timeout(DEADLINE, async {
        loop {
            match responses.next().await {
                Some(StreamItem::Response(_)) => continue,
                other => return other,
            }
        }
    })
    .await
    .expect("a dead worker is noticed by keep-alive");
    let Some(StreamItem::Error(error)) = ended else { panic!("the stream fails: {ended:?}") };
    assert!(matches!(error, WorkerError::Unreachable { .. }), "as unreachable, so the router migrates it: {error:?}");
}
