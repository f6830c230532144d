//! `POST /v2/models/{m}[/versions/{v}]/infer`: the JSON inference request (with Triton's binary
//! tensor extension) turned into the `ModelInferRequest` the gRPC path decodes, and the answer
//! turned back into JSON, with the outputs the client asked for as binary appended after it.
//!
//! Binary inputs are slices of the request body (no copy); JSON `data` is converted once into the
//! raw layout.

use std::collections::HashMap;

use bytes::Bytes;
use serde_json::{Map, Value};
use tritium_proto::inference::infer_parameter::ParameterChoice;
use tritium_proto::inference::model_infer_request::{InferInputTensor, InferRequestedOutputTensor};
use tritium_proto::inference::{InferParameter, ModelInferRequest, ModelInferResponse};
use tritium_tensor::DataType;

use super::json_tensor::{self, DataError};
use super::reply::HttpError;

const BINARY_DATA_SIZE: &str = "binary_data_size";
const BINARY_DATA: &str = "binary_data";
const BINARY_DATA_OUTPUT: &str = "binary_data_output";

/// Which outputs go back as binary: those named, else the request-level default.
#[derive(Debug, Default)]
pub struct BinaryOutputs {
    pub default: bool,
    pub by_name: HashMap<String, bool>,
}

impl BinaryOutputs {
    fn binary(&self, name: &str) -> bool {
        self.by_name.get(name).copied().unwrap_or(self.default)
    }
}

/// A parsed HTTP inference request.
#[derive(Debug)]
pub struct HttpInfer {
    pub request: ModelInferRequest,
    pub binary_outputs: BinaryOutputs,
}

/// The single input of a model, for a raw binary request (`Inference-Header-Content-Length: 0`).
#[derive(Debug)]
pub struct RawInput {
    pub name: String,
    pub datatype: DataType,
    /// The shape the body is taken as (the batch dimension, when the model has one, is 1).
    pub shape: Vec<i64>,
}

fn parse_error(what: impl std::fmt::Display) -> HttpError {
    HttpError::bad_request(format!("failed to parse the request JSON buffer: {what}"))
}

/// Parses the body: JSON alone, or (`header_length` given) the JSON header followed by binary
/// tensor data.
pub fn parse(model: &str, version: &str, body: Bytes, header_length: Option<usize>) -> Result<HttpInfer, HttpError> {
    let (json, binary) = match header_length {
        None => (body.clone(), Bytes::new()),
        Some(n) if n > body.len() => {
            return Err(HttpError::bad_request(format!(
                "Inference-Header-Content-Length ({n}) is larger than the request body ({} bytes)",
                body.len()
            )));
        }
        Some(n) => (body.slice(..n), body.slice(n..)),
    };
    let value: Value = serde_json::from_slice(&json).map_err(parse_error)?;
    let Value::Object(mut root) = value else { return Err(parse_error("the request is not a JSON object")) };

    let id = match root.remove("id") {
        None => String::new(),
        Some(Value::String(id)) => id,
        Some(_) => return Err(HttpError::bad_request("the request's 'id' must be a string")),
    };
    let mut binary_outputs = BinaryOutputs::default();
    let mut parameters = HashMap::new();
    if let Some(params) = root.remove("parameters") {
        for (key, value) in object(params, "the request's 'parameters'")? {
            if key == BINARY_DATA_OUTPUT {
                binary_outputs.default = value
                    .as_bool()
                    .ok_or_else(|| HttpError::bad_request(format!("parameter '{BINARY_DATA_OUTPUT}' must be a boolean")))?;
                continue;
            }
            parameters.insert(key.clone(), parameter(&key, value)?);
        }
    }

    let inputs = match root.remove("inputs") {
        Some(Value::Array(inputs)) => inputs,
        Some(_) => return Err(HttpError::bad_request("the request's 'inputs' must be an array")),
        None => return Err(HttpError::bad_request("the request has no 'inputs'")),
    };
    let mut cursor = 0usize;
    let mut tensors = Vec::with_capacity(inputs.len());
    let mut raw = Vec::with_capacity(inputs.len());
    for input in inputs {
        let (tensor, data) = input_tensor(model, input, &binary, &mut cursor)?;
        tensors.push(tensor);
        if let Some(data) = data {
            raw.push(data);
        }
    }
    if cursor != binary.len() {
        return Err(HttpError::bad_request(format!(
            "unexpected additional input data for model '{model}': the request carries {} bytes of binary data, its inputs name {cursor}",
            binary.len()
        )));
    }

    let mut outputs = Vec::new();
    if let Some(requested) = root.remove("outputs") {
        let Value::Array(requested) = requested else {
            return Err(HttpError::bad_request("the request's 'outputs' must be an array"));
        };
        for output in requested {
            outputs.push(output_tensor(output, &mut binary_outputs)?);
        }
    }
    Ok(HttpInfer {
        request: ModelInferRequest {
            model_name: model.to_string(),
            model_version: version.to_string(),
            id,
            parameters,
            inputs: tensors,
            outputs,
            raw_input_contents: raw,
        },
        binary_outputs,
    })
}

/// A raw binary request: the whole body is the one input's data, every output comes back binary.
pub fn parse_raw(model: &str, version: &str, body: Bytes, input: RawInput) -> HttpInfer {
    let mut shape = input.shape;
    if let Some(size) = input.datatype.element_size() {
        let known: i64 = shape.iter().filter(|d| **d >= 0).product();
        if let Some(dim) = shape.iter_mut().find(|d| **d < 0) {
            *dim = if known > 0 { (body.len() / size) as i64 / known } else { 0 };
        }
    } else {
        shape = vec![1];
    }
    HttpInfer {
        request: ModelInferRequest {
            model_name: model.to_string(),
            model_version: version.to_string(),
            inputs: vec![InferInputTensor {
                name: input.name,
                datatype: input.datatype.kserve_name().to_string(),
                shape,
                ..Default::default()
            }],
            raw_input_contents: vec![body],
            ..Default::default()
        },
        binary_outputs: BinaryOutputs { default: true, by_name: HashMap::new() },
    }
}

fn object(value: Value, what: &str) -> Result<Map<String, Value>, HttpError> {
    match value {
        Value::Object(map) => Ok(map),
        _ => Err(HttpError::bad_request(format!("{what} must be a JSON object"))),
    }
}

fn string(map: &mut Map<String, Value>, key: &str, what: &str) -> Result<String, HttpError> {
    match map.remove(key) {
        Some(Value::String(s)) => Ok(s),
        Some(_) => Err(HttpError::bad_request(format!("{what}'s '{key}' must be a string"))),
        None => Err(HttpError::bad_request(format!("{what} has no '{key}'"))),
    }
}

/// A JSON parameter value as a KServe parameter: booleans, integers (int64, or uint64 beyond
/// it), other numbers (double) and strings.
pub(super) fn parameter(key: &str, value: Value) -> Result<InferParameter, HttpError> {
    let choice = match value {
        Value::Bool(b) => ParameterChoice::BoolParam(b),
        Value::String(s) => ParameterChoice::StringParam(s),
        Value::Number(n) => match (n.as_i64(), n.as_u64(), n.as_f64()) {
            (Some(i), _, _) => ParameterChoice::Int64Param(i),
            (None, Some(u), _) => ParameterChoice::Uint64Param(u),
            (None, None, Some(d)) => ParameterChoice::DoubleParam(d),
            _ => return Err(HttpError::bad_request(format!("parameter '{key}' is not a representable number"))),
        },
        _ => {
            return Err(HttpError::bad_request(format!("parameter '{key}' must be a boolean, a number or a string")));
        }
    };
    Ok(InferParameter { parameter_choice: Some(choice) })
}

/// One input: its tensor, and its data (`None` for an input in shared memory).
fn input_tensor(
    model: &str,
    input: Value,
    binary: &Bytes,
    cursor: &mut usize,
) -> Result<(InferInputTensor, Option<Bytes>), HttpError> {
    let mut input = object(input, "an input")?;
    let name = string(&mut input, "name", "an input")?;
    let what = format!("input '{name}'");
    let datatype_name = string(&mut input, "datatype", &what)?;
    let shape = match input.remove("shape") {
        Some(Value::Array(dims)) => dims
            .iter()
            .map(|d| d.as_i64().ok_or_else(|| HttpError::bad_request(format!("{what}'s 'shape' must hold integers"))))
            .collect::<Result<Vec<i64>, _>>()?,
        Some(_) => return Err(HttpError::bad_request(format!("{what}'s 'shape' must be an array of integers"))),
        None => return Err(HttpError::bad_request(format!("{what} has no 'shape'"))),
    };
    let mut binary_size = None;
    let mut in_shm = false;
    let mut parameters = HashMap::new();
    if let Some(params) = input.remove("parameters") {
        for (key, value) in object(params, &format!("{what}'s 'parameters'"))? {
            if key == BINARY_DATA_SIZE {
                let size = value.as_u64().ok_or_else(|| {
                    HttpError::bad_request(format!("{what}'s '{BINARY_DATA_SIZE}' must be a non-negative integer"))
                })?;
                binary_size = Some(size);
                continue;
            }
            in_shm |= key == "shared_memory_region";
            parameters.insert(key.clone(), parameter(&key, value)?);
        }
    }
    let data = input.remove("data");
    let tensor = InferInputTensor { name: name.clone(), datatype: datatype_name.clone(), shape, parameters, contents: None };
    let bytes = match (binary_size, data) {
        (Some(_), Some(_)) => {
            return Err(HttpError::bad_request(format!(
                "{what} for model '{model}' has both 'data' and the '{BINARY_DATA_SIZE}' parameter"
            )));
        }
        (Some(size), None) => {
            let end = usize::try_from(size).ok().and_then(|s| cursor.checked_add(s)).filter(|end| *end <= binary.len());
            let Some(end) = end else {
                return Err(HttpError::bad_request(format!(
                    "{what} for model '{model}' declares {size} bytes of binary data, beyond the {} bytes sent",
                    binary.len() - *cursor
                )));
            };
            let slice = binary.slice(*cursor..end);
            *cursor = end;
            Some(slice)
        }
        (None, Some(data)) => {
            let Some(datatype) = DataType::from_kserve(&datatype_name) else {
                // The gRPC decoder names the datatype in its error.
                return Ok((tensor, Some(Bytes::new())));
            };
            let expected = tritium_tensor::element_count(&tensor.shape).unwrap_or(0);
            let (raw, count) =
                json_tensor::to_raw(datatype, &data, expected).map_err(|e| data_error(model, &name, datatype, e))?;
            if count != expected {
                return Err(HttpError::bad_request(format!(
                    "unexpected number of elements for input '{name}' for model '{model}': shape {:?} holds {expected}, 'data' has {count}",
                    tensor.shape
                )));
            }
            Some(Bytes::from(raw))
        }
        (None, None) if in_shm => None,
        (None, None) => Some(Bytes::new()),
    };
    Ok((tensor, bytes))
}

fn data_error(model: &str, input: &str, datatype: DataType, error: DataError) -> HttpError {
    let reason = match error {
        DataError::WrongKind { expected } => format!("expected {expected} elements for datatype {datatype}"),
        DataError::OutOfRange => format!("a value does not fit datatype {datatype}"),
        DataError::NoJsonForm => format!("datatype {datatype} has no JSON form; send it as binary data"),
        DataError::TooDeep => "its arrays are nested too deep".to_string(),
    };
    HttpError::bad_request(format!("unable to parse 'data' of input '{input}' for model '{model}': {reason}"))
}

fn output_tensor(output: Value, binary: &mut BinaryOutputs) -> Result<InferRequestedOutputTensor, HttpError> {
    let mut output = object(output, "an output")?;
    let name = string(&mut output, "name", "an output")?;
    let mut parameters = HashMap::new();
    if let Some(params) = output.remove("parameters") {
        for (key, value) in object(params, &format!("output '{name}''s 'parameters'"))? {
            if key == BINARY_DATA {
                let wanted = value
                    .as_bool()
                    .ok_or_else(|| HttpError::bad_request(format!("output '{name}''s '{BINARY_DATA}' must be a boolean")))?;
                binary.by_name.insert(name.clone(), wanted);
                continue;
            }
            parameters.insert(key.clone(), parameter(&key, value)?);
        }
    }
    Ok(InferRequestedOutputTensor { name, parameters })
}

/// The answer: the JSON header, then the binary outputs in order; the header's length when there
/// are any (for `Inference-Header-Content-Length`).
pub fn encode(response: ModelInferResponse, binary: &BinaryOutputs) -> Result<(Vec<u8>, Option<usize>), HttpError> {
    let ModelInferResponse { model_name, model_version, id, parameters, outputs, raw_output_contents } = response;
    let mut out = Vec::with_capacity(256 + raw_output_contents.iter().map(|r| r.len() * 4).sum::<usize>().min(64 << 20));
    let mut tail: Vec<Bytes> = Vec::new();
    out.extend_from_slice(b"{\"model_name\":");
    push_json(&mut out, &model_name);
    out.extend_from_slice(b",\"model_version\":");
    push_json(&mut out, &model_version);
    if !id.is_empty() {
        out.extend_from_slice(b",\"id\":");
        push_json(&mut out, &id);
    }
    if !parameters.is_empty() {
        out.extend_from_slice(b",\"parameters\":");
        push_json(&mut out, &parameters_json(&parameters));
    }
    out.extend_from_slice(b",\"outputs\":[");
    for (index, (output, raw)) in outputs.into_iter().zip(raw_output_contents).enumerate() {
        if index > 0 {
            out.push(b',');
        }
        out.extend_from_slice(b"{\"name\":");
        push_json(&mut out, &output.name);
        out.extend_from_slice(b",\"datatype\":");
        push_json(&mut out, &output.datatype);
        out.extend_from_slice(b",\"shape\":");
        push_json(&mut out, &output.shape);
        let mut params = parameters_json(&output.parameters);
        let in_shm = output.parameters.contains_key("shared_memory_region");
        if !in_shm && binary.binary(&output.name) {
            params.insert(BINARY_DATA_SIZE.to_string(), Value::from(raw.len()));
            tail.push(raw);
            out.extend_from_slice(b",\"parameters\":");
            push_json(&mut out, &params);
        } else {
            if !params.is_empty() {
                out.extend_from_slice(b",\"parameters\":");
                push_json(&mut out, &params);
            }
            if !in_shm {
                let datatype = DataType::from_kserve(&output.datatype).ok_or_else(|| {
                    HttpError::bad_request(format!("output '{}' has datatype '{}'", output.name, output.datatype))
                })?;
                out.extend_from_slice(b",\"data\":");
                json_tensor::write_json(datatype, &raw, &mut out).ok_or_else(|| {
                    HttpError::bad_request(format!(
                        "output '{}' of datatype {datatype} cannot be returned as JSON; request it as binary data",
                        output.name
                    ))
                })?;
            }
        }
        out.push(b'}');
    }
    out.extend_from_slice(b"]}");
    if tail.is_empty() {
        return Ok((out, None));
    }
    let header_length = out.len();
    out.reserve(tail.iter().map(Bytes::len).sum());
    for raw in tail {
        out.extend_from_slice(&raw);
    }
    Ok((out, Some(header_length)))
}

fn parameters_json(parameters: &HashMap<String, InferParameter>) -> Map<String, Value> {
    parameters
        .iter()
        .filter_map(|(key, p)| {
            let value = match p.parameter_choice.as_ref()? {
                ParameterChoice::BoolParam(b) => Value::from(*b),
                ParameterChoice::Int64Param(i) => Value::from(*i),
                ParameterChoice::Uint64Param(u) => Value::from(*u),
                ParameterChoice::DoubleParam(d) => Value::from(*d),
                ParameterChoice::StringParam(s) => Value::from(s.as_str()),
            };
            Some((key.clone(), value))
        })
        .collect()
}

/// Writes a small value (a string, integers, a map of plain values) as JSON; these always
/// serialize.
fn push_json<T: serde::Serialize + ?Sized>(out: &mut Vec<u8>, value: &T) {
    let _ = serde_json::to_writer(out, value);
}

#[cfg(test)]
#[path = "infer_tests.rs"]
mod tests;
