//! The worker plane end to end: a `WorkerService` on 127.0.0.1:0, reached by a `RemoteWorker`.
//! Each worker runs on a runtime of its own, so a test can kill it the way a crash would: every
//! task and socket of the worker goes at once.

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use tokio::runtime::Runtime;
use tokio_stream::wrappers::TcpListenerStream;
use tonic::transport::Server;
use tritium_proto::ErrorCode;
use tritium_tensor::{DataType, Tensor};
use tritium_worker::{
    DeclaredModel, InferOutcome, InferenceRequest, LocalWorker, ModelRepository, RepositoryOptions, StreamItem,
    ValidInferRequest, WorkerClient, WorkerError,
};

use super::{InFlight, RemoteWorker, WorkerService};

const MAX_MESSAGE: usize = 64 << 20;
/// Bounds every wait, so a broken test fails instead of hanging.
const DEADLINE: Duration = Duration::from_secs(30);

/// A worker serving `repository` on an ephemeral port, on its own runtime.
pub(super) struct TestWorker {
    pub uri: String,
    pub in_flight: InFlight,
    runtime: Option<Runtime>,
}

impl TestWorker {
    pub fn start(repository: Arc<ModelRepository>) -> TestWorker {
        TestWorker::start_with_token(repository, None)
    }

    /// A worker that refuses calls without `token` (when given).
    pub fn start_with_token(repository: Arc<ModelRepository>, token: Option<&'static str>) -> TestWorker {
        TestWorker::serve(WorkerService::new(repository), token)
    }

    /// A worker serving `service`.
    pub fn serve(service: WorkerService, token: Option<&'static str>) -> TestWorker {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("binds an ephemeral port");
        listener.set_nonblocking(true).expect("non-blocking listener");
        let uri = format!("http://{}", listener.local_addr().expect("bound address"));
        let in_flight = service.in_flight();
        let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().expect("a runtime");
        runtime.spawn(async move {
            let listener = tokio::net::TcpListener::from_std(listener).expect("registers the listener");
            let served = Server::builder()
                .add_service(service.into_server_with_token(MAX_MESSAGE, token))
                .serve_with_incoming(TcpListenerStream::new(listener))
                .await;
            if let Err(e) = served {
                eprintln!("test worker stopped: {e}");
            }
        });
        TestWorker { uri, in_flight, runtime: Some(runtime) }
    }

    pub fn client(&self) -> RemoteWorker {
        RemoteWorker::new("w1", &self.uri, MAX_MESSAGE).expect("a client")
    }

    /// Drops every task and socket of the worker, like a crash.
    pub fn kill(&mut self) {
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

impl Drop for TestWorker {
    fn drop(&mut self) {
        self.kill();
    }
}

fn builtin() -> Arc<ModelRepository> {
    ModelRepository::open(
        RepositoryOptions::default(),
        crate::test_backends(),
    )
    .expect("the built-in repository")
}

pub(super) fn declared(models: &[(&str, String)]) -> Arc<ModelRepository> {
    let declared =
        models.iter().map(|(name, text)| DeclaredModel { name: name.to_string(), config_text: text.clone() }).collect();
    ModelRepository::open(
        RepositoryOptions { declared, ..Default::default() },
        crate::test_backends(),
    )
    .expect("the declared models load")
}

/// A request validated as the frontend does before sending it, against the built-in models.
fn valid(request: InferenceRequest) -> ValidInferRequest {
    builtin().validate(request).expect("valid for the built-in models")
}

fn repeat(count: i32, delay_ms: u32) -> ValidInferRequest {
    let mut inputs = vec![Tensor::from_slice("IN", vec![1], &[count])];
    if delay_ms > 0 {
        inputs.push(Tensor::from_slice("DELAY_MS", vec![1], &[delay_ms]));
    }
    let mut request = InferenceRequest::new("repeat", inputs);
    request.id = "r".into();
    valid(request)
}

async fn next<S: futures::Stream + Unpin>(stream: &mut S) -> Option<S::Item> {
    tokio::time::timeout(DEADLINE, stream.next()).await.expect("the next item in time")
}

#[tokio::test]
async fn identity_and_add_sub_answer_through_the_worker() {
    let worker = TestWorker::start(builtin());
    let remote = worker.client();
    assert_eq!(remote.id(), "w1");

    let mut request = InferenceRequest::new("identity", vec![Tensor::from_slice("INPUT0", vec![3], &[1.5f32, -2.0, 3.25])]);
    request.id = "id-1".into();
    request.model_version = Some(1);
    let response = remote.infer(valid(request)).await.expect("identity answers");
    assert_eq!((&*response.model_name, response.model_version, response.id.as_str()), ("identity", 1, "id-1"));
    assert!(response.is_final);
    assert_eq!(response.outputs.len(), 1);
    assert_eq!(response.outputs[0].name, "OUTPUT0");
    assert_eq!(response.outputs[0].shape, [3]);
    assert_eq!(response.outputs[0].to_vec::<f32>().expect("FP32"), [1.5, -2.0, 3.25]);

    let a: Vec<i32> = (0..16).collect();
    let b: Vec<i32> = (0..16).map(|i| 100 - i * 3).collect();
    let mut request = InferenceRequest::new(
        "add_sub",
        vec![Tensor::from_slice("INPUT0", vec![16], &a), Tensor::from_slice("INPUT1", vec![16], &b)],
    );
    request.requested_outputs = vec!["OUTPUT1".into()];
    let response = remote.infer(valid(request)).await.expect("add_sub answers");
    let names: Vec<&str> = response.outputs.iter().map(|t| t.name.as_str()).collect();
    assert_eq!(names, ["OUTPUT1"], "only the requested output comes back");
    let difference: Vec<i32> = a.iter().zip(&b).map(|(x, y)| x - y).collect();
    assert_eq!(response.outputs[0].to_vec::<i32>().expect("INT32"), difference);

    let request = InferenceRequest::new(
        "add_sub",
        vec![Tensor::from_slice("INPUT0", vec![16], &a), Tensor::from_slice("INPUT1", vec![16], &b)],
    );
    let response = remote.infer(valid(request)).await.expect("add_sub answers");
    let sum: Vec<i32> = a.iter().zip(&b).map(|(x, y)| x + y).collect();
    assert_eq!(response.outputs[0].to_vec::<i32>().expect("INT32"), sum);
}

#[tokio::test]
async fn bytes_tensors_and_parameters_round_trip() {
    let config = "backend: \"identity\"\ninput [ { name: \"IN\", data_type: TYPE_STRING, dims: [ -1 ] } ]\n\
                  output [ { name: \"OUT\", data_type: TYPE_STRING, dims: [ -1 ] } ]\n";
    let repository = declared(&[("echo", format!("name: \"echo\"\n{config}"))]);
    let worker = TestWorker::start(Arc::clone(&repository));
    let items: [&[u8]; 3] = [b"hello", b"", b"\x00\xffbinary"];
    let mut request = InferenceRequest::new("echo", vec![Tensor::from_byte_strings("IN", vec![3], items)]);
    request.parameters = vec![("custom".into(), tritium_worker::ParamValue::String("x".into()))];
    let response = worker.client().infer(repository.validate(request).expect("valid")).await.expect("echo answers");
    assert_eq!(response.outputs[0].datatype, DataType::Bytes);
    assert_eq!(response.outputs[0].byte_strings().expect("BYTES"), items);
}

#[tokio::test]
async fn a_decoupled_model_streams_and_a_plain_one_answers_once() {
    let worker = TestWorker::start(builtin());
    let remote = worker.client();
    let Ok(InferOutcome::Stream(mut responses)) = remote.infer_stream(repeat(3, 0)).await else {
        panic!("repeat is decoupled: its answers stream");
    };
    for expected in 0..3 {
        let Some(StreamItem::Response(response)) = next(&mut responses).await else { panic!("response {expected}") };
        assert_eq!(response.outputs[0].to_vec::<i32>().expect("INT32"), [expected]);
        assert_eq!((&*response.model_name, response.id.as_str()), ("repeat", "r"));
        assert!(!response.is_final, "a decoupled response is never final; Complete ends the request");
    }
    assert!(matches!(next(&mut responses).await, Some(StreamItem::Complete)));
    assert!(next(&mut responses).await.is_none(), "nothing follows Complete");

    let request = InferenceRequest::new("identity", vec![Tensor::from_slice("INPUT0", vec![1], &[7.0f32])]);
    let Ok(InferOutcome::Single(response)) = remote.infer_stream(valid(request)).await else {
        panic!("identity is a plain model: one answer");
    };
    assert!(response.is_final);
    assert_eq!(response.outputs[0].to_vec::<f32>().expect("FP32"), [7.0]);
}

/// The frontend validates against its stand-in of the worker's model; the worker validates what
/// arrives again (a process boundary is a trust boundary). A stand-in that no longer matches the
/// worker's model (say the worker reloaded it) is caught there, with the worker's exact error.
#[tokio::test]
async fn the_worker_validates_again_and_its_errors_come_back_with_their_class_and_exact_message() {
    let stale = "name: \"identity\"\nbackend: \"identity\"\n\
                 input [ { name: \"INPUT0\", data_type: TYPE_INT32, dims: [ -1 ] } ]\n\
                 output [ { name: \"OUTPUT0\", data_type: TYPE_INT32, dims: [ -1 ] } ]\n";
    let frontend = declared(&[("identity", stale.to_string())]);
    let repository = builtin();
    let worker = TestWorker::start(Arc::clone(&repository));
    let bad = || {
        let mut request = InferenceRequest::new("identity", vec![Tensor::from_slice("INPUT0", vec![2], &[1i32, 2])]);
        request.id = "bad-1".into();
        request
    };
    let local = repository.validate(bad()).expect_err("INT32 is the wrong datatype for the worker's identity");
    let sent = frontend.validate(bad()).expect("INT32 is right for the stale stand-in");
    let remote = worker.client().infer(sent).await.expect_err("the worker checks again");
    let WorkerError::Failed { code, message } = remote else { panic!("the worker's own error, got {remote:?}") };
    assert_eq!(code, ErrorCode::InvalidArg);
    assert_eq!(message, local.to_string());
    assert!(message.contains("data-type is 'INT32'"), "{message}");
    let in_process = LocalWorker::new(Arc::clone(&repository))
        .infer(frontend.validate(bad()).expect("valid for the stand-in"))
        .await
        .expect_err("the in-process worker adopts it against its own version, and refuses");
    assert_eq!(in_process.to_string(), local.to_string());

    let unknown = declared(&[("nope", "name: \"nope\"\nbackend: \"identity\"\n".to_string())]);
    let gone = unknown.validate(InferenceRequest::new("nope", Vec::new())).expect("valid at the frontend");
    let error = worker.client().infer(gone).await.expect_err("unknown to the worker");
    assert!(matches!(&error, WorkerError::Failed { code: ErrorCode::NotFound, .. }), "{error:?}");
    assert_eq!(error.to_string(), "Request for unknown model: 'nope' is not found");

    // Unary calls on a decoupled model are refused by the worker, as in process.
    let error = worker.client().infer(repeat(1, 0)).await.expect_err("decoupled");
    assert!(matches!(&error, WorkerError::Failed { code: ErrorCode::Unsupported, .. }), "{error:?}");
    let error = worker.client().generate("identity", Default::default()).await.expect_err("not a language model");
    assert_eq!(error.to_string(), "the model 'identity' is not a language model");
    assert_eq!(error.code(), ErrorCode::Unsupported);
}

#[tokio::test]
async fn a_worker_nobody_serves_is_unreachable() {
    let port = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("binds");
        listener.local_addr().expect("address").port()
    };
    let remote = RemoteWorker::new("gone", &format!("http://127.0.0.1:{port}"), MAX_MESSAGE).expect("a lazy client");
    let request = valid(InferenceRequest::new("identity", vec![Tensor::from_slice("INPUT0", vec![1], &[1.0f32])]));
    let error = tokio::time::timeout(DEADLINE, remote.infer(request)).await.expect("fails in time").expect_err("nobody listens");
    assert!(matches!(&error, WorkerError::Unreachable { worker, .. } if worker == "gone"), "{error:?}");
    assert_eq!(error.code(), ErrorCode::Unavailable);
    let error = tokio::time::timeout(DEADLINE, remote.generate("llm", Default::default()))
        .await
        .expect("fails in time")
        .expect_err("nobody listens");
    assert!(matches!(error, WorkerError::Unreachable { .. }), "{error:?}");
    let error = tokio::time::timeout(DEADLINE, remote.infer_stream(repeat(1, 0))).await.expect("in time").expect_err("nobody");
    assert!(matches!(error, WorkerError::Unreachable { .. }), "{error:?}");
    let error = remote.describe_models().await.expect_err("nobody listens");
    assert!(matches!(error, WorkerError::Unreachable { .. }), "{error:?}");

    let invalid = RemoteWorker::new("bad", "not a uri", MAX_MESSAGE).expect_err("an invalid address");
    assert_eq!(invalid.code(), ErrorCode::InvalidArg);
}

#[tokio::test]
async fn a_worker_killed_mid_stream_is_unreachable_not_a_hang() {
    let mut worker = TestWorker::start(builtin());
    let Ok(InferOutcome::Stream(mut responses)) = worker.client().infer_stream(repeat(10_000, 10)).await else {
        panic!("repeat streams");
    };
    assert!(matches!(next(&mut responses).await, Some(StreamItem::Response(_))));
    worker.kill();
    loop {
        match next(&mut responses).await {
            Some(StreamItem::Response(_)) => continue,
            Some(StreamItem::Error(WorkerError::Unreachable { worker, .. })) => {
                assert_eq!(worker, "w1");
                break;
            }
            other => panic!("expected the worker to be unreachable, got {other:?}"),
        }
    }
}

#[tokio::test]
async fn dropping_a_stream_ends_the_call_on_the_worker_and_draining_refuses_new_ones() {
    let worker = TestWorker::start(builtin());
    let remote = worker.client();
    let Ok(InferOutcome::Stream(mut responses)) = remote.infer_stream(repeat(10_000, 10)).await else {
        panic!("repeat streams");
    };
    assert!(matches!(next(&mut responses).await, Some(StreamItem::Response(_))));
    assert_eq!(worker.in_flight.count(), 1, "the stream is in flight on the worker");
    drop(responses);
    tokio::time::timeout(DEADLINE, worker.in_flight.drained()).await.expect("the dropped stream ends on the worker");

    worker.in_flight.drain();
    let request = valid(InferenceRequest::new("identity", vec![Tensor::from_slice("INPUT0", vec![1], &[1.0f32])]));
    let error = remote.infer(request).await.expect_err("a draining worker takes no new calls");
    let WorkerError::NotStarted { message, .. } = &error else { panic!("the worker's own refusal, got {error:?}") };
    assert_eq!((error.code(), message.as_str()), (ErrorCode::Unavailable, super::DRAINING_MESSAGE));
    let error = remote.infer_stream(repeat(1, 0)).await.expect_err("refused too");
    assert!(matches!(error, WorkerError::NotStarted { .. }), "{error:?}");
    assert!(remote.describe_models().await.is_ok(), "describing is not work, and still answers");
}

#[tokio::test]
async fn describe_models_lists_the_built_in_models_with_their_configs() {
    let worker = TestWorker::start(builtin());
    let mut models = worker.client().describe_models().await.expect("describes");
    models.sort_by(|a, b| a.name.cmp(&b.name));
    let listed: Vec<(&str, i64)> = models.iter().map(|m| (m.name.as_str(), m.version)).collect();
    assert_eq!(
        listed,
        [
            ("accumulate", 1),
            ("add_sub", 1),
            ("add_sub_twice", 1),
            ("dense", 1),
            ("identity", 1),
            ("identity_batch", 1),
            ("repeat", 1)
        ]
    );
    for model in &models {
        assert_eq!(model.config.name, model.name);
        assert!(model.card.is_none(), "{} is a tensor model", model.name);
    }
    let batch = models.iter().find(|m| m.name == "identity_batch").expect("listed");
    assert_eq!(batch.config.max_batch_size, 8);
    let repeat = models.iter().find(|m| m.name == "repeat").expect("listed");
    assert!(repeat.config.model_transaction_policy.as_ref().is_some_and(|p| p.decoupled));
    let inputs: Vec<&str> = repeat.config.input.iter().map(|i| i.name.as_str()).collect();
    assert_eq!(inputs, ["IN", "DELAY_MS"]);
}

#[tokio::test]
async fn a_worker_with_a_token_serves_only_frontends_that_send_it() {
    let worker = TestWorker::start_with_token(builtin(), Some("s3cret"));
    let request = || valid(InferenceRequest::new("identity", vec![Tensor::from_slice("INPUT0", vec![1], &[1.0f32])]));
    let refused = worker.client().infer(request()).await.expect_err("no token, no service");
    assert!(refused.to_string().contains("worker-plane token"), "{refused}");
    let wrong = RemoteWorker::with_token("w1", &worker.uri, MAX_MESSAGE, Some("guess")).expect("a client");
    assert!(wrong.infer(request()).await.is_err(), "a wrong token is refused");
    let right = RemoteWorker::with_token("w1", &worker.uri, MAX_MESSAGE, Some("s3cret")).expect("a client");
    right.infer(request()).await.expect("the token opens the door");
}
