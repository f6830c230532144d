//! A loaded Python model version as the worker sees it: requests go to an instance's stub as one
//! `execute` (a list when the dynamic batcher grouped them), answers come back checked against
//! the config; a decoupled request's responses stream as the model sends them.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use serde_json::{Value, json};
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use tritium_backend_api::{Backend, BackendError, BackendRequest, ParamValue, Responder, StreamedRequest, is_reserved};
use tritium_proto::ErrorCode;
use tritium_proto::inference::ModelConfig;
use tritium_proto::inference::model_config::SchedulingChoice;
use tritium_tensor::Tensor;

use crate::binary;
use crate::pool::{Instances, Job};
use crate::services::TraceRegistry;
use crate::stub::{Answer, Deadline, StreamEvent, Stub, StubRequest};
use crate::wire::Reply;

pub struct PythonModel {
    decoupled: bool,
    /// The config's output names, then its sequence states' output names (kept for the sequence
    /// batcher, which never shows them to the client).
    outputs: Arc<[String]>,
    /// The same, as `execute` carries them: every request that asks for all outputs shares them.
    all_outputs: Bytes,
    instances: Instances,
    next_key: AtomicU64,
    /// How long one `execute` may run before its stub is ended (`execute-timeout-seconds`).
    execute_timeout: Option<Duration>,
    name: String,
    /// Traced requests running now, for their BLS calls.
    traces: TraceRegistry,
}

impl PythonModel {
    pub fn new(
        config: &ModelConfig,
        decoupled: bool,
        instances: Instances,
        execute_timeout: Option<Duration>,
        traces: TraceRegistry,
    ) -> PythonModel {
        let states = match &config.scheduling_choice {
            Some(SchedulingChoice::SequenceBatching(batching)) => batching.state.as_slice(),
            _ => &[],
        };
        let outputs: Arc<[String]> =
            config.output.iter().map(|o| o.name.clone()).chain(states.iter().map(|s| s.output_name.clone())).collect();
        let all_outputs = binary::encode_names(outputs.iter().map(String::as_str));
        PythonModel {
            decoupled,
            outputs,
            all_outputs,
            instances,
            next_key: AtomicU64::new(1),
            execute_timeout,
            name: config.name.clone(),
            traces,
        }
    }

    /// How long an `execute` of this model may run (Triton's per-request `timeout` only bounds
    /// the dynamic batcher's queue, before the model runs, as in Triton).
    fn deadline(&self) -> Option<Deadline> {
        self.execute_timeout.map(|limit| Deadline {
            limit,
            code: ErrorCode::Unavailable,
            message: format!(
                "the model '{}' did not return from execute within {} s (execute_timeout_seconds); its stub is started again",
                self.name,
                limit.as_secs_f64()
            ),
        })
    }

    /// What the stub's `InferenceRequest` shows of a request.
    fn stub_request(&self, request: BackendRequest) -> StubRequest {
        let mut correlation_id = None;
        let mut flags = 0u32;
        let mut timeout = 0u64;
        let mut custom = serde_json::Map::new();
        for (key, value) in &request.parameters {
            match (key.as_str(), value) {
                ("sequence_id", ParamValue::Int64(n)) => correlation_id = Some(json!(u64::from_ne_bytes(n.to_ne_bytes()))),
                ("sequence_id", ParamValue::Uint64(n)) => correlation_id = Some(json!(n)),
                ("sequence_id", ParamValue::String(s)) => correlation_id = Some(json!(s)),
                ("sequence_start", ParamValue::Bool(true)) => flags |= 1,
                ("sequence_end", ParamValue::Bool(true)) => flags |= 2,
                ("timeout", ParamValue::Int64(t)) => timeout = u64::try_from(*t).unwrap_or(0),
                ("timeout", ParamValue::Uint64(t)) => timeout = *t,
                (key, _) if is_reserved(key) => {}
                (key, ParamValue::Bool(b)) => drop(custom.insert(key.to_string(), json!(b))),
                (key, ParamValue::Int64(n)) => drop(custom.insert(key.to_string(), json!(n))),
                (key, ParamValue::Uint64(n)) => drop(custom.insert(key.to_string(), json!(n))),
                (key, ParamValue::Double(d)) => drop(custom.insert(key.to_string(), json!(d))),
                (key, ParamValue::String(s)) => drop(custom.insert(key.to_string(), json!(s))),
            }
        }
        let outputs = if request.requested_outputs.is_empty() {
            self.all_outputs.clone()
        } else {
            binary::encode_names(request.requested_outputs.iter().map(String::as_str))
        };
        // Only what differs from the stub's defaults (empty id, 0, no parameters), and most
        // requests have none of it: nothing to encode or decode.
        let mut extras = serde_json::Map::new();
        if !request.id.is_empty() {
            extras.insert("request_id".into(), json!(request.id));
        }
        if let Some(correlation_id) = correlation_id {
            extras.insert("correlation_id".into(), correlation_id);
        }
        if timeout != 0 {
            extras.insert("timeout".into(), json!(timeout));
        }
        if !custom.is_empty() {
            extras.insert("parameters".into(), json!(Value::Object(custom).to_string()));
        }
        let key = self.next_key.fetch_add(1, Ordering::Relaxed);
        let trace = request.trace.map(|trace| {
            extras.insert("trace".into(), json!({"key": key, "traceparent": trace.context().traceparent()}));
            self.traces.register(key, trace)
        });
        let extras = if extras.is_empty() { Vec::new() } else { Value::Object(extras).to_string().into_bytes() };
        StubRequest { key, flags, outputs, extras, inputs: request.inputs, trace }
    }

    /// Runs plain requests as one `execute`; one answer per request.
    async fn run(&self, requests: Vec<BackendRequest>) -> Result<Vec<Answer>, BackendError> {
        let count = requests.len();
        let requests: Vec<StubRequest> = requests.into_iter().map(|r| self.stub_request(r)).collect();
        let deadline = self.deadline();
        let (reply, answer) = oneshot::channel();
        self.instances.submit(Job { requests, streams: Vec::new(), reply, taken_by: None, deadline });
        let executed = answer.await.map_err(|_| BackendError::failed(ErrorCode::Internal, "the Python stub went away"))??;
        if executed.answers.len() != count {
            return Err(BackendError::failed(ErrorCode::Internal, "the Python stub answered a different number of requests"));
        }
        Ok(executed.answers)
    }

    /// The outputs of one reply the config names (Triton drops the others, and passes a datatype or
    /// shape other than the config's through as the model made it), each checked to be whole.
    fn checked(&self, reply: Reply) -> Result<Vec<Tensor>, BackendError> {
        checked(&self.outputs, reply)
    }

    async fn execute_decoupled(&self, request: BackendRequest, responder: &mut Responder) -> Result<(), BackendError> {
        let cancel = request.cancel.clone();
        let request = self.stub_request(request);
        let key = request.key;
        let (sender, events) = mpsc::unbounded_channel::<StreamEvent>();
        // Held until the stream ends: a request whose client went away before an instance took it
        // is dropped from the queue.
        let (reply, _executed) = oneshot::channel();
        let taken_by = Arc::new(OnceLock::new());
        let deadline = self.deadline();
        let job = Job { requests: vec![request], streams: vec![sender], reply, taken_by: Some(Arc::clone(&taken_by)), deadline };
        self.instances.submit(job);
        stream_answers(&taken_by, key, events, cancel.as_ref(), &self.outputs, responder).await
    }

    /// A dynamic batch of decoupled requests as one `execute`: returns when the model's
    /// `execute` has returned; each request's responses go on streaming to its responder.
    async fn execute_decoupled_batch(&self, requests: Vec<StreamedRequest>) {
        let mut stub_requests = Vec::with_capacity(requests.len());
        let mut senders = Vec::with_capacity(requests.len());
        let mut streams = Vec::with_capacity(requests.len());
        for StreamedRequest { request, responder, done } in requests {
            let cancel = request.cancel.clone();
            let stub_request = self.stub_request(request);
            let (sender, events) = mpsc::unbounded_channel::<StreamEvent>();
            streams.push((stub_request.key, events, cancel, responder, done));
            stub_requests.push(stub_request);
            senders.push(sender);
        }
        let (reply, executed) = oneshot::channel();
        let taken_by = Arc::new(OnceLock::new());
        let deadline = self.deadline();
        let job = Job { requests: stub_requests, streams: senders, reply, taken_by: Some(Arc::clone(&taken_by)), deadline };
        self.instances.submit(job);
        for (key, events, cancel, mut responder, done) in streams {
            let (taken_by, outputs) = (Arc::clone(&taken_by), Arc::clone(&self.outputs));
            tokio::spawn(async move {
                let result = stream_answers(&taken_by, key, events, cancel.as_ref(), &outputs, &mut responder).await;
                let _ = done.send((responder, result));
            });
        }
        // The instance takes the next batch once the model's `execute` has returned.
        let _ = executed.await;
    }
}

/// The outputs of one reply the config names (Triton drops the others, and passes a datatype or
/// shape other than the config's through as the model made it), each checked to be whole.
fn checked(names: &[String], reply: Reply) -> Result<Vec<Tensor>, BackendError> {
    let mut outputs = reply.outputs;
    outputs.retain(|output| names.contains(&output.name));
    for output in &outputs {
        output.validate()?;
    }
    Ok(outputs)
}

/// Forwards a decoupled request's responses to `responder` until the model marks one final;
/// a cancelled request or a client gone cancels it in the stub.
async fn stream_answers(
    stub: &OnceLock<Arc<Stub>>,
    key: u64,
    mut events: mpsc::UnboundedReceiver<StreamEvent>,
    cancel: Option<&CancellationToken>,
    outputs: &[String],
    responder: &mut Responder,
) -> Result<(), BackendError> {
    loop {
        let event = tokio::select! {
            event = events.recv() => event,
            () = cancelled(cancel) => {
                stub.get().inspect(|stub| stub.cancel(key));
                return Err(BackendError::Cancelled);
            }
        };
        let Some(StreamEvent { answer, last }) = event else { return Ok(()) };
        if let Some(reply) = answer? {
            let outputs = checked(outputs, reply)?;
            let sent = if last { responder.send_final(outputs).await } else { responder.send(outputs).await };
            if let Err(error) = sent {
                stub.get().inspect(|stub| stub.cancel(key));
                return Err(error);
            }
        }
        if last {
            return Ok(());
        }
    }
}

async fn cancelled(token: Option<&CancellationToken>) {
    match token {
        Some(token) => token.cancelled().await,
        None => std::future::pending().await,
    }
}

#[async_trait]
impl Backend for PythonModel {
    fn is_ready(&self) -> bool {
        self.instances.is_ready()
    }

    async fn execute(&self, request: BackendRequest, responder: &mut Responder) -> Result<(), BackendError> {
        if self.decoupled {
            return self.execute_decoupled(request, responder).await;
        }
        let answer = self.run(vec![request]).await?.pop().ok_or(BackendError::NoResponse)?;
        responder.send(self.checked(answer?)?).await
    }

    fn takes_request_lists(&self) -> bool {
        !self.decoupled
    }

    async fn execute_streams(&self, requests: Vec<StreamedRequest>) {
        self.execute_decoupled_batch(requests).await;
    }

    async fn execute_list(&self, requests: Vec<BackendRequest>) -> Vec<Result<Vec<Tensor>, BackendError>> {
        let count = requests.len();
        match self.run(requests).await {
            Ok(answers) => answers.into_iter().map(|a| a.and_then(|reply| self.checked(reply))).collect(),
            Err(error) => (0..count).map(|_| Err(crate::pool::copy(&error))).collect(),
        }
    }
}

impl Drop for PythonModel {
    fn drop(&mut self) {
        self.instances.stop();
    }
}
