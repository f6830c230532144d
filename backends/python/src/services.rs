//! What a stub asks of the server: business-logic scripting (BLS: a model.py running requests on
//! other models, through their own schedulers), model control (`is_model_ready`, `load_model`,
//! `unload_model`) and log lines. Requests run as tasks on the server's runtime; answers go back
//! as frames, their tensors inline.

use futures::StreamExt;
use parking_lot::Mutex;
use serde_json::{Value, json};
use std::collections::HashMap;
use std::sync::{Arc, Weak};
use tokio::runtime::Handle;
use tritium_backend_api::trace::RequestTrace;
use tritium_backend_api::{Host, InferOutcome, InferenceRequest, ParamValue, StreamItem, WorkerError};
use tritium_proto::ErrorCode;

use crate::frame::Frame;
use crate::region::Region;
use crate::wire::{error_number, inline_descriptors, tensors_of};

/// The connection of the stub that asked, as the services read its request and answer on it.
pub(crate) trait StubLink: Send + Sync + 'static {
    /// The stub's shared-memory region, where large tensors of its frames lie.
    fn region(&self) -> &Region;
    /// Sends a frame with a JSON header.
    fn send(&self, header: Value, payload: &[&[u8]]) -> std::io::Result<()>;
}

#[derive(Clone)]
pub struct Services {
    runtime: Option<Handle>,
    host: Weak<dyn Host>,
    traces: TraceRegistry,
}

/// A model's traced requests while they run, by the key the stub knows them by: a BLS call made
/// with `trace=request.trace()` becomes a child trace of its request, as in Triton.
#[derive(Clone, Default)]
pub struct TraceRegistry(Arc<Mutex<HashMap<u64, RequestTrace>>>);

impl TraceRegistry {
    /// Registers `trace` under `key` until the returned handle is dropped.
    pub fn register(&self, key: u64, trace: RequestTrace) -> TracedRequest {
        self.0.lock().insert(key, trace);
        TracedRequest { registry: self.clone(), key }
    }

    fn child(&self, key: u64, model: &str, version: Option<i64>) -> Option<RequestTrace> {
        self.0.lock().get(&key).map(|parent| parent.child(model.to_owned(), version))
    }
}

/// A request's place in its model's [`TraceRegistry`]; removed when dropped.
pub struct TracedRequest {
    registry: TraceRegistry,
    key: u64,
}

impl Drop for TracedRequest {
    fn drop(&mut self) {
        self.registry.0.lock().remove(&self.key);
    }
}

impl Services {
    pub fn new(host: Weak<dyn Host>) -> Services {
        Services { runtime: Handle::try_current().ok(), host, traces: TraceRegistry::default() }
    }

    /// The same services finding BLS calls' parents in `traces`.
    pub fn with_traces(self, traces: TraceRegistry) -> Services {
        Services { traces, ..self }
    }

    /// Starts a BLS request; its inputs are copied out of the region before this returns.
    pub(crate) fn bls<L: StubLink>(&self, conn: &Arc<L>, frame: &Frame) {
        let header = &frame.header;
        let id = header.get("id").cloned().unwrap_or(Value::Null);
        let inputs = match tensors_of(header.get("inputs"), conn.region(), &frame.payload) {
            Ok(inputs) => inputs,
            Err(why) => return answer_error(conn.as_ref(), &id, ErrorCode::InvalidArg, &format!("malformed BLS request: {why}")),
        };
        let mut request = match bls_request(header, inputs) {
            Ok(request) => request,
            Err(why) => return answer_error(conn.as_ref(), &id, ErrorCode::InvalidArg, &why),
        };
        if let Some(parent) = header.get("trace").and_then(Value::as_u64) {
            request.trace = self.traces.child(parent, &request.model_name, request.model_version);
            // A BLS call's id is its own (usually none), not its parent's, as in Triton.
            if let Some(trace) = &request.trace {
                trace.set_request_id(request.id.clone());
            }
        }
        let (Some(runtime), Some(host)) = (&self.runtime, self.host.upgrade()) else {
            return answer_error(conn.as_ref(), &id, ErrorCode::Unavailable, "the server is stopping");
        };
        let decoupled = header.get("decoupled").and_then(Value::as_bool).unwrap_or(false);
        let conn = Arc::clone(conn);
        let model = request.model_name.clone();
        runtime.spawn(async move {
            // A timeout is the request's own: its scheduler's queue enforces it, as in Triton.
            let outcome = run_bls(host.as_ref(), request, decoupled, conn.as_ref(), &id).await;
            if let Err(error) = outcome {
                answer_error(conn.as_ref(), &id, ErrorCode::Internal, &bls_error(&model, &error));
            }
        });
    }

    pub(crate) fn control<L: StubLink>(&self, conn: &Arc<L>, frame: &Frame) {
        let header = frame.header.clone();
        // A load's files (`file:` parameters) are copied out of the region before this returns.
        let files = match tensors_of(header.get("files"), conn.region(), &frame.payload) {
            Ok(files) => files.into_iter().map(|file| (file.name, file.data.to_vec())).collect::<Vec<_>>(),
            Err(why) => {
                let answer = json!({"op": "control_response", "id": header["id"], "error": format!("malformed load: {why}")});
                let _ = conn.send(answer, &[]);
                return;
            }
        };
        let conn = Arc::clone(conn);
        let (Some(runtime), Some(host)) = (&self.runtime, self.host.upgrade()) else {
            let _ = conn.send(json!({"op": "control_response", "id": header["id"], "error": "the server is stopping"}), &[]);
            return;
        };
        // Loading builds a model (its stubs, its initialize): never on the reader thread.
        runtime.spawn_blocking(move || {
            let model = header.get("model").and_then(Value::as_str).unwrap_or("");
            let mut answer = json!({"op": "control_response", "id": header["id"]});
            match header.get("action").and_then(Value::as_str) {
                Some("ready") => {
                    let version = header.get("version").and_then(Value::as_str).and_then(|v| v.parse().ok());
                    answer["ready"] = json!(host.is_ready(model, version));
                }
                Some(action @ ("load" | "unload")) => {
                    let config = header.get("config").and_then(Value::as_str).filter(|c| !c.is_empty());
                    let result = if action == "load" { host.load_files(model, config, files) } else { host.unload(model) };
                    if let Err(error) = result {
                        answer["error"] = json!(error.to_string());
                    }
                }
                _ => answer["error"] = json!("unknown model control action"),
            }
            let _ = conn.send(answer, &[]);
        });
    }

    /// A custom-metrics call (pb_utils.MetricFamily and Metric): answered at once, with the
    /// series' value or the error in Triton's words.
    pub(crate) fn metric<L: StubLink>(&self, conn: &L, header: &Value) {
        let mut answer = json!({"op": "control_response", "id": header["id"]});
        match metric_call(header) {
            Ok(value) => answer["value"] = json!(value),
            Err(why) => answer["error"] = json!(why),
        }
        let _ = conn.send(answer, &[]);
    }

    pub fn log(&self, instance: &str, header: &Value) {
        let message = header.get("message").and_then(Value::as_str).unwrap_or("");
        let file = header.get("file").and_then(Value::as_str).unwrap_or("");
        let line = header.get("line").and_then(Value::as_u64).unwrap_or(0);
        match header.get("level").and_then(Value::as_u64) {
            Some(1) => tracing::warn!(target: "python_model", instance, file, line, "{message}"),
            Some(2) => tracing::error!(target: "python_model", instance, file, line, "{message}"),
            Some(3) => tracing::debug!(target: "python_model", instance, file, line, "{message}"),
            _ => tracing::info!(target: "python_model", instance, file, line, "{message}"),
        }
    }
}

/// Runs the custom-metrics call a `metric` frame describes.
fn metric_call(header: &Value) -> Result<f64, String> {
    use tritium_backend_api::custom_metrics::{self, MetricKind, Operation};
    let family = header.get("family").and_then(Value::as_str).ok_or("a metric call without a family")?;
    let number = |key: &str| header.get(key).and_then(Value::as_f64).ok_or_else(|| format!("a metric call without a {key}"));
    let labels = || -> Result<custom_metrics::Labels, String> {
        let Some(labels) = header.get("labels").and_then(Value::as_object) else { return Ok(Vec::new()) };
        let mut labels = labels
            .iter()
            .map(|(k, v)| v.as_str().map(|v| (k.clone(), v.to_string())).ok_or("attempt to access JSON non-string as string"))
            .collect::<Result<custom_metrics::Labels, _>>()?;
        labels.sort();
        Ok(labels)
    };
    match header.get("action").and_then(Value::as_str) {
        Some("family") => {
            let description = header.get("description").and_then(Value::as_str).unwrap_or("");
            let kind =
                header.get("kind").and_then(Value::as_i64).and_then(MetricKind::from_number).ok_or("unknown metric kind")?;
            custom_metrics::declare_family(family, description, kind).map(|()| 0.0)
        }
        Some("metric") => {
            let buckets = match header.get("buckets") {
                None | Some(Value::Null) => None,
                Some(list) => Some(
                    list.as_array()
                        .ok_or("buckets must be a list of numbers")?
                        .iter()
                        .map(Value::as_f64)
                        .collect::<Option<Vec<f64>>>()
                        .ok_or("buckets must be a list of numbers")?,
                ),
            };
            custom_metrics::declare_metric(family, labels()?, buckets).map(|()| 0.0)
        }
        Some("increment") => custom_metrics::apply(family, &labels()?, Operation::Increment(number("value")?)),
        Some("set") => custom_metrics::apply(family, &labels()?, Operation::Set(number("value")?)),
        Some("observe") => custom_metrics::apply(family, &labels()?, Operation::Observe(number("value")?)),
        Some("value") => custom_metrics::apply(family, &labels()?, Operation::Value),
        _ => Err("unknown metric call".to_string()),
    }
}

/// The request a `bls` frame describes.
fn bls_request(header: &Value, inputs: Vec<tritium_tensor::Tensor>) -> Result<InferenceRequest, String> {
    let model = header.get("model").and_then(Value::as_str).ok_or("a BLS request without a model")?;
    let mut request = InferenceRequest::new(model, inputs);
    request.model_version = header.get("version").and_then(Value::as_i64).filter(|&v| v > 0);
    request.id = header.get("request_id").and_then(Value::as_str).unwrap_or("").to_string();
    request.requested_outputs = header
        .get("outputs")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|o| o.as_str().map(String::from))
        .collect();
    let parameters = header.get("parameters").and_then(Value::as_str).unwrap_or("{}");
    let parameters: serde_json::Map<String, Value> =
        serde_json::from_str(parameters).map_err(|e| format!("BLS request parameters are not a JSON object: {e}"))?;
    for (key, value) in parameters {
        let value = match value {
            Value::Bool(b) => ParamValue::Bool(b),
            Value::String(s) => ParamValue::String(s),
            Value::Number(n) if n.is_i64() => ParamValue::Int64(n.as_i64().unwrap_or_default()),
            _ => return Err(format!("BLS request parameter '{key}' must be a bool, an integer or a string")),
        };
        request.parameters.push((key, value));
    }
    match header.get("correlation_id") {
        Some(Value::Number(n)) if n.as_u64().is_some_and(|n| n > 0) => {
            let id = n.as_u64().unwrap_or_default();
            request.parameters.push(("sequence_id".into(), ParamValue::Int64(i64::from_ne_bytes(id.to_ne_bytes()))));
        }
        Some(Value::String(s)) if !s.is_empty() => request.parameters.push(("sequence_id".into(), ParamValue::String(s.clone()))),
        _ => {}
    }
    if let Some(timeout) = header.get("timeout").and_then(Value::as_i64).filter(|&t| t > 0) {
        request.parameters.push(("timeout".into(), ParamValue::Int64(timeout)));
    }
    let flags = header.get("flags").and_then(Value::as_u64).unwrap_or(0);
    if flags & 1 != 0 {
        request.parameters.push(("sequence_start".into(), ParamValue::Bool(true)));
    }
    if flags & 2 != 0 {
        request.parameters.push(("sequence_end".into(), ParamValue::Bool(true)));
    }
    Ok(request)
}

/// Why a BLS request failed: refused before it ran, or its run failed.
enum BlsError {
    Refused(WorkerError),
    Ran(WorkerError),
}

async fn run_bls(
    host: &dyn Host,
    request: InferenceRequest,
    decoupled: bool,
    conn: &impl StubLink,
    id: &Value,
) -> Result<(), BlsError> {
    let model = request.model_name.clone();
    match host.infer_run(request).await.map_err(BlsError::Refused)?.map_err(BlsError::Ran)? {
        InferOutcome::Single(response) => {
            answer(conn, id, &response.outputs, true);
            Ok(())
        }
        InferOutcome::Stream(_) if !decoupled => Err(BlsError::Refused(WorkerError::Failed {
            code: ErrorCode::InvalidArg,
            message: format!(
                "Model {model} is using the decoupled. The current BLS request call doesn't support models using the \
                 decoupled transaction policy. Please use 'decoupled=True' argument to the 'exec' or 'async_exec' calls \
                 for decoupled models.'"
            ),
        })),
        InferOutcome::Stream(mut stream) => {
            while let Some(item) = stream.next().await {
                match item {
                    StreamItem::Response(response) => {
                        answer(conn, id, &response.outputs, response.is_final);
                        if response.is_final {
                            return Ok(());
                        }
                    }
                    StreamItem::Complete => break,
                    StreamItem::Error(error) => return Err(BlsError::Ran(error)),
                }
            }
            answer(conn, id, &[], true);
            Ok(())
        }
    }
}

/// A failed BLS request's error, in Triton's words: a request the server refused before it ran
/// is prefixed with the model's name; what its run answered (the child model's execution, its
/// scheduler's queue) reaches the caller as it is, the child's own message.
fn bls_error(model: &str, error: &BlsError) -> String {
    let cause = match error {
        BlsError::Ran(WorkerError::Backend { source, .. }) => return source.to_string(),
        BlsError::Ran(other) => return other.to_string(),
        BlsError::Refused(
            WorkerError::ModelNotFound { .. } | WorkerError::NoAvailableVersions { .. } | WorkerError::VersionNotFound { .. },
        ) => format!("Failed for execute the inference request. Model '{model}' is not ready."),
        BlsError::Refused(other) => other.to_string(),
    };
    format!("Model {model} - Error when running inference: {cause}")
}

fn answer(conn: &impl StubLink, id: &Value, outputs: &[tritium_tensor::Tensor], last: bool) {
    let (descriptors, parts) = inline_descriptors(outputs);
    let header = json!({"op": "bls_response", "id": id, "outputs": descriptors, "final": last});
    // A stub that has gone needs no answer.
    let _ = conn.send(header, &parts);
}

fn answer_error(conn: &impl StubLink, id: &Value, code: ErrorCode, message: &str) {
    let header =
        json!({"op": "bls_response", "id": id, "final": true, "error": {"message": message, "code": error_number(code)}});
    let _ = conn.send(header, &[]);
}
