//! The worker's tensor models on Dynamo's request plane: an `NvCreateTensorRequest` becomes a
//! KServe request, checked against the model's config as any request to it is (Triton's
//! wording in the prologue when it does not fit), run on the local repository, and each
//! response goes home as an `NvCreateTensorResponse` item, a decoupled model's as a stream.

use std::sync::Arc;

use futures::StreamExt;
use serde::Deserialize;
use serde_json::{Map, Value as Json, json};
use tritium_backend_api::{InferOutcome, InferenceRequest, InferenceResponse, ParamValue, StreamItem};
use tritium_worker::{ValidInferRequest, WorkerClient};

use super::home::{CallHomeInfo, call_home};
use crate::dynamo::tensor::{WireTensor, tensor_json, tensor_of};

/// Dynamo's `NvCreateTensorRequest`, with the `outputs` `dynamo.triton` reads.
#[derive(Debug, Deserialize)]
struct TensorCall {
    #[serde(default)]
    id: Option<String>,
    model: String,
    tensors: Vec<WireTensor>,
    #[serde(default)]
    parameters: Map<String, Json>,
    #[serde(default)]
    outputs: Vec<OutputName>,
}

#[derive(Debug, Deserialize)]
struct OutputName {
    name: String,
}

/// The request `body` carries, checked against its model on `worker`'s repository.
pub fn validated(body: &Json, worker: &dyn WorkerClient) -> Result<ValidInferRequest, String> {
    let call: TensorCall = serde_json::from_value(body.clone()).map_err(|e| format!("not a tensor request Dynamo sends: {e}"))?;
    let repository = worker.local_repository().ok_or("this worker runs no models of its own")?;
    let inputs = call.tensors.into_iter().map(tensor_of).collect::<Result<Vec<_>, _>>()?;
    let mut request = InferenceRequest::new(call.model.clone(), inputs);
    request.id = call.id.unwrap_or_default();
    request.requested_outputs = call.outputs.into_iter().map(|output| output.name).collect();
    for (key, value) in call.parameters {
        request.parameters.push((key.clone(), parameter(&key, &value)?));
    }
    let version = repository.resolve(&call.model, None).map_err(|e| e.to_string())?;
    if version.is_language_model() || version.embedding_model().is_some() {
        return Err(format!("'{}' is not a tensor model", call.model));
    }
    version.validate(request).map_err(|e| e.to_string())
}

/// A request parameter as Dynamo's tensor protocol writes it: `{"int64": 5}`, `{"string": "x"}`, ...
fn parameter(key: &str, value: &Json) -> Result<ParamValue, String> {
    let refused = || format!("parameter '{key}' is {value}, not one of bool, int64, uint64, double, string");
    let (kind, inner) = value.as_object().filter(|map| map.len() == 1).and_then(|map| map.iter().next()).ok_or_else(refused)?;
    Ok(match (kind.as_str(), inner) {
        ("bool", Json::Bool(v)) => ParamValue::Bool(*v),
        ("int64", v) if v.is_i64() => ParamValue::Int64(v.as_i64().ok_or_else(refused)?),
        ("uint64", v) if v.is_u64() => ParamValue::Uint64(v.as_u64().ok_or_else(refused)?),
        ("double", v) if v.is_number() => ParamValue::Double(v.as_f64().ok_or_else(refused)?),
        ("string", Json::String(v)) => ParamValue::String(v.clone()),
        _ => return Err(refused()),
    })
}

/// Runs the request (or sends home why it cannot run) and streams its responses home.
pub async fn answer(worker: Arc<dyn WorkerClient>, request: Result<ValidInferRequest, String>, home: CallHomeInfo) {
    let started = match request {
        Ok(request) => worker.infer_stream(request).await.map_err(|e| e.to_string()),
        Err(refusal) => Err(refusal),
    };
    let Some((mut writer, cancelled)) = call_home(&home, started.as_ref().err().cloned()).await else { return };
    let Ok(outcome) = started else { return };
    match outcome {
        InferOutcome::Single(response) => {
            if !writer.item(item(&response)).await {
                return;
            }
        }
        InferOutcome::Stream(mut responses) => loop {
            let next = tokio::select! {
                // Dropping the stream cancels the request.
                () = cancelled.cancelled() => return,
                next = responses.next() => next,
            };
            let annotated = match next {
                Some(StreamItem::Response(response)) if response.outputs.is_empty() && response.is_final => continue,
                Some(StreamItem::Response(response)) => item(&response),
                Some(StreamItem::Error(e)) => json!({"event": "error", "comment": [e.to_string()]}),
                Some(StreamItem::Complete) | None => break,
            };
            let failed = annotated.get("event").is_some();
            if !writer.item(annotated).await || failed {
                break;
            }
        },
    }
    writer.finish().await;
}

/// One response as an `Annotated<NvCreateTensorResponse>`'s JSON; an output that cannot be
/// written becomes the item's error.
fn item(response: &InferenceResponse) -> Json {
    match response.outputs.iter().map(tensor_json).collect::<Result<Vec<_>, _>>() {
        Ok(tensors) => json!({"data": {"id": response.id, "model": &*response.model_name, "tensors": tensors}}),
        Err(e) => json!({"event": "error", "comment": [e]}),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn parameters_read_as_dynamo_writes_them() {
        assert_eq!(parameter("k", &json!({"int64": -3})).unwrap(), ParamValue::Int64(-3));
        assert_eq!(parameter("k", &json!({"uint64": 3})).unwrap(), ParamValue::Uint64(3));
        assert_eq!(parameter("k", &json!({"string": "x"})).unwrap(), ParamValue::String("x".into()));
        assert_eq!(parameter("k", &json!({"double": 1.5})).unwrap(), ParamValue::Double(1.5));
        assert!(parameter("k", &json!({"int64": "3"})).unwrap_err().contains("parameter 'k'"));
        assert!(parameter("k", &json!(3)).is_err());
        assert!(parameter("k", &json!({"bool": true, "int64": 1})).is_err());
    }
}
