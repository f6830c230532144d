//! Triton's generate extension: `POST /v2/models/{m}[/versions/{v}]/generate` takes a flat JSON
//! object whose members are the model's inputs by name (plus `id` and `parameters`) and answers
//! one JSON object with the outputs as members; `/generate_stream` answers every response of the
//! request (several from a decoupled or language model) as a server-sent event. Any model can be
//! called this way, tensor models and language models alike.

use std::collections::HashMap;
use std::convert::Infallible;
use std::time::Instant;

use axum::body::Body;
use axum::extract::rejection::PathRejection;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, header};
use axum::response::sse::{Event, Sse};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use futures::{Stream, StreamExt};
use serde_json::value::RawValue;
use serde_json::{Map, Value};
use std::sync::Arc;
use tritium_proto::inference::model_infer_request::InferInputTensor;
use tritium_proto::inference::{InferParameter, ModelInferRequest, ModelInferResponse};
use tritium_tensor::DataType;

use tritium_worker::{InferOutcome, ModelVersion, StreamItem};

use super::reply::{self, HttpError, HttpResult};
use super::{KserveState, ModelPath, body, json_tensor, model_path};
use crate::error::ServerError;
use crate::grpc::convert::{decode_for_model, encode_response};

/// The optional BOOL inputs a model reads as "stream the answer" (`streaming` for Tritium's
/// language models, `stream` for Triton's vLLM-style ones): `/generate_stream` sets it when the
/// request does not.
const STREAM_INPUTS: &[&str] = &["streaming", "stream"];

/// The generate request as a KServe request: each model input from the member of its name.
fn request_of(
    state: &KserveState,
    path: &ModelPath,
    body: &[u8],
    stream: bool,
) -> Result<(ModelInferRequest, Arc<ModelVersion>), HttpError> {
    // The members as JSON text: inputs are read straight into their tensors, never as a tree.
    let mut members: HashMap<String, Box<RawValue>> = serde_json::from_slice(body).map_err(|e| match e.classify() {
        serde_json::error::Category::Data => HttpError::unparsable("attempt to get members for non-object"),
        _ => HttpError::bad_json(body, &e),
    })?;
    let small = |raw: Box<RawValue>| serde_json::from_str::<Value>(raw.get()).unwrap_or(Value::Null);
    let version = path.version();
    let resolved = super::resolve(state, path)?;
    let id = match members.remove("id").map(small) {
        None => String::new(),
        Some(Value::String(id)) => id,
        Some(_) => return Err(HttpError::bad_request("the generate request's 'id' must be a string")),
    };
    let mut parameters: HashMap<String, InferParameter> = HashMap::new();
    if let Some(params) = members.remove("parameters").map(small) {
        let Value::Object(params) = params else {
            return Err(HttpError::bad_request("the generate request's 'parameters' must be a JSON object"));
        };
        for (key, value) in params {
            parameters.insert(key.clone(), super::infer::parameter(&key, value)?);
        }
    }
    let schema = &resolved.schema;
    let mut inputs = Vec::new();
    let mut raw = Vec::new();
    for spec in &schema.inputs {
        let streams = stream && spec.optional && spec.datatype == DataType::Bool && STREAM_INPUTS.contains(&spec.name.as_str());
        let fallback = || streams.then(|| RawValue::from_string("true".to_string()).ok()).flatten();
        // A missing input is left to the validation, which names every one missing.
        let Some(value) = members.remove(&spec.name).or_else(fallback) else { continue };
        // A scalar or a flat array, as Triton reads them.
        let (data, count) = json_tensor::to_raw_streaming(spec.datatype, &value, usize::MAX, 1, false).map_err(|e| match e {
            json_tensor::DataError::TooDeep => {
                HttpError::unparsable("Unable to parse 'data': Shape does not match true shape of 'data' field")
            }
            e => super::infer::data_error(&spec.name, spec.datatype, e),
        })?;
        let shape = shape_for(&spec.dims, count, schema.max_batch_size > 0).ok_or_else(|| {
            HttpError::bad_request(format!("The schema can not convert input '{}' to tensor with proper shape", spec.name))
        })?;
        inputs.push(InferInputTensor {
            name: spec.name.clone(),
            datatype: spec.datatype.kserve_name().to_string(),
            shape,
            ..Default::default()
        });
        raw.push(Bytes::from(data));
    }
    // Members that name no input are request parameters, as Triton takes them.
    for (key, value) in members.into_iter().map(|(key, raw)| (key, small(raw))) {
        if matches!(value, Value::Bool(_) | Value::Number(_) | Value::String(_)) {
            parameters.insert(key.clone(), super::infer::parameter(&key, value)?);
        } else {
            return Err(HttpError::bad_request(format!(
                "member '{key}' of the generate request for model '{}' is neither an input nor a parameter value",
                path.model
            )));
        }
    }
    let request = ModelInferRequest {
        model_name: path.model.clone(),
        model_version: version,
        id,
        parameters,
        inputs,
        outputs: Vec::new(),
        raw_input_contents: raw,
    };
    Ok((request, resolved))
}

/// The config's dims holding `count` elements (a variable dimension takes what is left), with
/// a batch dimension of 1 for a batching model; `None` when they cannot.
fn shape_for(dims: &[i64], count: usize, batched: bool) -> Option<Vec<i64>> {
    let known: i64 = dims.iter().filter(|d| **d >= 0).product();
    let count = i64::try_from(count).ok()?;
    let mut shape = dims.to_vec();
    match shape.iter().filter(|d| **d < 0).count() {
        0 if known == count => {}
        1 if known > 0 && count % known == 0 => {
            for dim in shape.iter_mut().filter(|d| **d < 0) {
                *dim = count / known;
            }
        }
        _ => return None,
    }
    if batched {
        shape.insert(0, 1);
    }
    Some(shape)
}

/// One response as the generate JSON: outputs by name, one element as a scalar.
fn response_json(response: ModelInferResponse) -> Result<Value, HttpError> {
    let mut out = Map::new();
    out.insert("model_name".into(), Value::from(response.model_name));
    out.insert("model_version".into(), Value::from(response.model_version));
    if !response.id.is_empty() {
        out.insert("id".into(), Value::from(response.id));
    }
    for (output, raw) in response.outputs.into_iter().zip(response.raw_output_contents) {
        let datatype = DataType::from_kserve(&output.datatype)
            .ok_or_else(|| HttpError::bad_request(format!("output '{}' has datatype '{}'", output.name, output.datatype)))?;
        let mut text = Vec::new();
        json_tensor::write_json(datatype, &raw, json_tensor::JsonFlavor::Strict, &mut text)
            .ok_or_else(|| HttpError::bad_request(format!("output '{}' of datatype {datatype} has no JSON form", output.name)))?;
        let value: Value = serde_json::from_slice(&text).unwrap_or(Value::Null);
        let value = match value {
            Value::Array(mut items) if items.len() == 1 => items.remove(0),
            other => other,
        };
        out.insert(output.name, value);
    }
    Ok(Value::Object(out))
}

async fn read_request(
    state: &KserveState,
    path: &ModelPath,
    headers: &HeaderMap,
    body: Body,
    stream: bool,
) -> Result<(ModelInferRequest, Arc<ModelVersion>), HttpError> {
    // Triton's generate routes take no compressed body.
    let encoding = headers.get(header::CONTENT_ENCODING).map(|v| v.to_str().unwrap_or("").trim().to_ascii_lowercase());
    if encoding.is_some_and(|e| !e.is_empty() && e != "identity") {
        return Err(HttpError::bad_request("Unsupported content-encoding, only 'identity' is supported."));
    }
    let body = body::read_request(body, headers, state.max_body_bytes, &state.budget).await?;
    request_of(state, path, &body.bytes, stream)
}

pub(super) async fn generate(
    State(state): State<KserveState>,
    path: Result<Path<ModelPath>, PathRejection>,
    key: Option<axum::Extension<tritium_backend_api::trace::ApiKeyName>>,
    headers: HeaderMap,
    body: Body,
) -> HttpResult {
    let arrived = Instant::now();
    let path = model_path(path)?;
    let _in_use = crate::dispatch::load_on_demand(&state.server, &path.model).await?;
    let (request, resolved) = read_request(&state, &path, &headers, body, false).await?;
    let received = super::Received { headers: &headers, key: key.as_deref(), arrived, read: Instant::now() };
    let (response, trace) = super::run_infer(&state, request, resolved, received).await?;
    let _sent = tritium_trace::door::Sending::http(trace);
    let json = response_json(response)?;
    // Triton does not compress generate answers.
    Ok(reply::body_response(
        Bytes::from(json.to_string()),
        &[(header::CONTENT_TYPE, HeaderValue::from_static(reply::JSON))],
        None,
    ))
}

fn event(result: Result<Value, HttpError>) -> Result<Event, Infallible> {
    let value = result.unwrap_or_else(|e| serde_json::json!({ "error": e.message }));
    Ok(Event::default().data(value.to_string()))
}

pub(super) async fn generate_stream(
    State(state): State<KserveState>,
    path: Result<Path<ModelPath>, PathRejection>,
    key: Option<axum::Extension<tritium_backend_api::trace::ApiKeyName>>,
    headers: HeaderMap,
    body: Body,
) -> HttpResult {
    let arrived = Instant::now();
    let path = model_path(path)?;
    let _in_use = crate::dispatch::load_on_demand(&state.server, &path.model).await?;
    let (request, resolved) = read_request(&state, &path, &headers, body, true).await?;
    let mut decoded = decode_for_model(request, &state.server.shm, &state.server.repository, Some(resolved), arrived)?;
    let read = Instant::now();
    // Held by the stream: the trace ends with its last event.
    let trace = tritium_trace::door::http_received(&state.server.tracer, &mut decoded.request, &headers, arrived, read);
    if let Some(trace) = &trace {
        trace.name_api_key(key.as_deref());
    }
    let admitted = crate::dispatch::admit(&state.server, decoded.request, decoded.model)?;
    let outcome = crate::dispatch::streamed(&state.server, admitted).await?;
    let sent = tritium_trace::door::Sending::http(trace);
    let grpc = std::sync::Arc::clone(&state.server);
    let regions = decoded.shm;
    let events: std::pin::Pin<Box<dyn Stream<Item = Result<Event, Infallible>> + Send>> = match outcome {
        InferOutcome::Single(response) => {
            let json = encode_response(response, &regions, &grpc.shm, None).map_err(HttpError::from).and_then(response_json);
            Box::pin(futures::stream::once(async move { event(json) }))
        }
        InferOutcome::Stream(responses) => Box::pin(responses.filter_map(move |item| {
            let _ = &sent;
            let json = match item {
                StreamItem::Response(response) => {
                    Some(encode_response(response, &regions, &grpc.shm, None).map_err(HttpError::from).and_then(response_json))
                }
                StreamItem::Complete => None,
                StreamItem::Error(e) => Some(Err(HttpError::from(ServerError::from(e)))),
            };
            std::future::ready(json.map(event))
        })),
    };
    let mut response: Response = Sse::new(events).into_response();
    response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("text/event-stream; charset=utf-8"));
    Ok(response)
}

#[cfg(test)]
mod tests {
    use super::shape_for;

    #[test]
    fn shapes_come_from_the_config() {
        assert_eq!(shape_for(&[16], 16, false), Some(vec![16]));
        assert_eq!(shape_for(&[16], 3, false), None);
        assert_eq!(shape_for(&[-1], 3, true), Some(vec![1, 3]));
        assert_eq!(shape_for(&[2, -1], 6, false), Some(vec![2, 3]));
        assert_eq!(shape_for(&[2, -1], 5, false), None);
        assert_eq!(shape_for(&[-1, -1], 4, false), None);
    }
}
