//! `POST /v2/models/{m}[/versions/{v}]/infer`: the JSON inference request (with Triton's binary
//! tensor extension) turned into the `ModelInferRequest` the gRPC path decodes, and the answer
//! turned back into JSON, with the outputs the client asked for as binary appended after it.
//!
//! Binary inputs are slices of the request body (no copy); JSON `data` is converted once into the
//! raw layout.

use std::collections::HashMap;

use bytes::Bytes;
use serde_json::value::RawValue;
use serde_json::{Map, Value};
use tritium_proto::inference::infer_parameter::ParameterChoice;
use tritium_proto::inference::model_infer_request::{InferInputTensor, InferRequestedOutputTensor};
use tritium_proto::inference::{InferParameter, ModelInferRequest, ModelInferResponse};
use tritium_tensor::DataType;

use super::json_tensor::{self, DataError};
use super::non_finite;
use super::reply::HttpError;

const BINARY_DATA_SIZE: &str = "binary_data_size";
const BINARY_DATA: &str = "binary_data";
const BINARY_DATA_OUTPUT: &str = "binary_data_output";
const CLASSIFICATION: &str = "classification";
const SHARED_MEMORY_REGION: &str = "shared_memory_region";

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

/// Parses the body: JSON alone, or (`header_length` given) the JSON header followed by binary
/// tensor data. Errors are Triton's, word for word.
pub fn parse(model: &str, version: &str, body: Bytes, header_length: Option<usize>) -> Result<HttpInfer, HttpError> {
    let (json, binary) = match header_length {
        None => (body.clone(), Bytes::new()),
        Some(n) => (body.slice(..n.min(body.len())), body.slice(n.min(body.len())..)),
    };
    // The members as JSON text: each is read on its own, so tensor data never becomes a tree.
    let members_error = |json: &[u8], e: &serde_json::Error| match e.classify() {
        serde_json::error::Category::Data => HttpError::missing_member("inputs"),
        _ => HttpError::bad_json(json, e),
    };
    let (members, non_finite): (HashMap<String, Box<RawValue>>, bool) = match serde_json::from_slice(&json) {
        Ok(members) => (members, false),
        // Read again only when it failed: a body with NaN or an infinity is rare, its copy bounded by the body limit.
        Err(e) => match (e.classify(), non_finite::rewrite(&json)) {
            (serde_json::error::Category::Syntax, Some(rewritten)) => {
                (serde_json::from_slice(&rewritten).map_err(|e| members_error(&rewritten, &e))?, true)
            }
            _ => return Err(members_error(&json, &e)),
        },
    };
    let (mut root, inputs) = split_raw(members, "inputs")?;

    let id = match root.remove("id") {
        None => String::new(),
        Some(Value::String(id)) => id,
        Some(_) => return Err(HttpError::wrong_kind(Some("id"), "string")),
    };
    let mut binary_outputs = BinaryOutputs::default();
    let mut parameters = HashMap::new();
    if let Some(params) = root.remove("parameters") {
        let Value::Object(params) = params else {
            return Err(HttpError::unparsable("failed to get request params.: attempt to get members for non-object"));
        };
        for (key, value) in params {
            if key == BINARY_DATA_OUTPUT {
                binary_outputs.default =
                    value.as_bool().ok_or_else(|| HttpError::wrong_kind(Some(BINARY_DATA_OUTPUT), "boolean"))?;
                continue;
            }
            check_reserved(&key, &value)?;
            parameters.insert(key.clone(), non_finite_parameter(parameter(&key, value)?, non_finite));
        }
    }

    let inputs: Vec<Box<RawValue>> = match inputs {
        Some(inputs) => serde_json::from_str(inputs.get()).map_err(|_| HttpError::wrong_kind(Some("inputs"), "array"))?,
        None => return Err(HttpError::missing_member("inputs")),
    };
    let mut cursor = 0usize;
    let mut tensors = Vec::with_capacity(inputs.len());
    let mut raw = Vec::with_capacity(inputs.len());
    for input in inputs {
        let (tensor, data) = input_tensor(model, &input, &binary, &mut cursor, non_finite)?;
        tensors.push(tensor);
        if let Some(data) = data {
            raw.push(data);
        }
    }
    if cursor != binary.len() {
        return Err(HttpError::bad_request(format!("unexpected additional input data for model '{model}'")));
    }

    let mut outputs = Vec::new();
    if let Some(requested) = root.remove("outputs") {
        let Value::Array(requested) = requested else { return Err(HttpError::wrong_kind(Some("outputs"), "array")) };
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

/// An object's members as values, but for one kept as raw text.
type Split = (Map<String, Value>, Option<Box<RawValue>>);

/// `members` as JSON values, but for the one named `keep`, left as text.
fn split_raw(members: HashMap<String, Box<RawValue>>, keep: &str) -> Result<Split, HttpError> {
    let mut kept = None;
    let mut values = Map::new();
    for (key, raw) in members {
        if key == keep {
            kept = Some(raw);
        } else {
            // The text the parser has just accepted as a raw value may still be beyond a tree of
            // values: a number an f64 cannot hold (1e400), arrays nested past serde_json's limit.
            let value = serde_json::from_str(raw.get())
                .map_err(|e| HttpError::bad_request(format!("Unable to parse '{key}': {}", json_tensor::without_position(&e))))?;
            values.insert(key, value);
        }
    }
    Ok((values, kept))
}

/// The reserved parameters Triton reads with a type: `sequence_id` an unsigned integer or a
/// string, `sequence_start` and `sequence_end` booleans, `priority` and `timeout` unsigned.
fn check_reserved(key: &str, value: &Value) -> Result<(), HttpError> {
    // Triton's HTTP door takes no `triton_` key, not even the empty-final-response switch (a
    // stream's, which HTTP has not).
    if key.starts_with("triton_") {
        return Err(HttpError::new(
            axum::http::StatusCode::BAD_REQUEST,
            "parameter keys starting with 'triton_' are reserved for Triton usage and should not be specified.",
        ));
    }
    let fits = match key {
        "sequence_id" => value.is_u64() || value.is_string(),
        "sequence_start" | "sequence_end" => value.is_boolean(),
        "priority" | "timeout" => value.is_u64(),
        _ => return Ok(()),
    };
    if fits {
        return Ok(());
    }
    let kind = match key {
        "sequence_id" => "string",
        "sequence_start" | "sequence_end" => "boolean",
        _ => "unsigned-integer",
    };
    Err(HttpError::wrong_kind(Some(key), kind))
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

fn string(map: &mut Map<String, Value>, key: &str) -> Result<String, HttpError> {
    match map.remove(key) {
        Some(Value::String(s)) => Ok(s),
        Some(_) => Err(HttpError::wrong_kind(Some(key), "string")),
        None => Err(HttpError::missing_member(key)),
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
            return Err(HttpError::bad_request(format!(
                "parameter '{key}' has invalid type. It should be either 'int', 'bool', or 'string'."
            )));
        }
    };
    Ok(InferParameter { parameter_choice: Some(choice) })
}

/// A parameter of a body read with `non_finite::rewrite`: the stand-in of `NaN` or an infinity is
/// the double it stood for, as Triton reads it.
fn non_finite_parameter(parameter: InferParameter, non_finite: bool) -> InferParameter {
    match &parameter.parameter_choice {
        Some(ParameterChoice::StringParam(text)) if non_finite => match non_finite::sentinel_value(text) {
            Some(value) => InferParameter { parameter_choice: Some(ParameterChoice::DoubleParam(value)) },
            None => parameter,
        },
        _ => parameter,
    }
}

const ONE_OF: &str = "Input must set only one of the following fields: 'data', 'binary_data_size' in 'parameters', 'shared_memory_region' in 'parameters'.";

/// One input: its tensor, and its data (`None` for an input in shared memory).
fn input_tensor(
    model: &str,
    input: &RawValue,
    binary: &Bytes,
    cursor: &mut usize,
    non_finite: bool,
) -> Result<(InferInputTensor, Option<Bytes>), HttpError> {
    let input: HashMap<String, Box<RawValue>> =
        serde_json::from_str(input.get()).map_err(|_| HttpError::missing_member("name"))?;
    let (mut input, data) = split_raw(input, "data")?;
    let name = string(&mut input, "name")?;
    let datatype_name = string(&mut input, "datatype")?;
    let shape = match input.remove("shape") {
        Some(Value::Array(dims)) => dims
            .iter()
            .map(|d| {
                d.as_u64()
                    .and_then(|d| i64::try_from(d).ok())
                    .ok_or_else(|| HttpError::wrong_kind(Some("shape"), "unsigned-integer"))
            })
            .collect::<Result<Vec<i64>, _>>()?,
        Some(_) => return Err(HttpError::wrong_kind(Some("shape"), "array")),
        None => return Err(HttpError::missing_member("shape")),
    };
    let datatype = DataType::from_kserve(&datatype_name)
        .ok_or_else(|| HttpError::bad_request(format!("invalid datatype for input {name}")))?;
    let mut binary_size = None;
    let mut in_shm = false;
    let mut parameters = HashMap::new();
    if let Some(params) = input.remove("parameters") {
        let Value::Object(params) = params else {
            return Err(HttpError::unparsable("failed to get input params.: attempt to get members for non-object"));
        };
        for (key, value) in params {
            if key == BINARY_DATA_SIZE {
                let size = value.as_u64().ok_or_else(|| HttpError::wrong_kind(Some(BINARY_DATA_SIZE), "unsigned-integer"))?;
                binary_size = Some(size);
                continue;
            }
            in_shm |= key == SHARED_MEMORY_REGION;
            parameters.insert(key.clone(), non_finite_parameter(parameter(&key, value)?, non_finite));
        }
    }
    let set: Vec<&str> =
        [("'data'", data.is_some()), ("'binary_data_size'", binary_size.is_some()), ("'shared_memory_region'", in_shm)]
            .iter()
            .filter(|(_, set)| *set)
            .map(|(name, _)| *name)
            .collect();
    if set.len() != 1 {
        let which = if set.is_empty() { "But no field is set".to_string() } else { format!("But set {}", set.join(" ")) };
        return Err(HttpError::bad_request(format!("{ONE_OF} {which}")));
    }
    let tensor = InferInputTensor { name: name.clone(), datatype: datatype_name, shape, parameters, contents: None };
    let bytes = if let Some(size) = binary_size {
        let left = binary.len() - *cursor;
        let size = usize::try_from(size).unwrap_or(usize::MAX);
        if size > left {
            return Err(HttpError::bad_request(format!(
                "unexpected size for input '{name}', expecting {} additional bytes for model '{model}'",
                size - left
            )));
        }
        let slice = binary.slice(*cursor..*cursor + size);
        *cursor += size;
        Some(slice)
    } else if let Some(data) = data {
        // Triton reads `data` as an array, however many elements the shape has.
        if !data.get().trim_start().starts_with('[') {
            return Err(HttpError::wrong_kind(Some("data"), "array"));
        }
        let expected = tritium_tensor::element_count(&tensor.shape).unwrap_or(usize::MAX);
        let raw = if datatype == DataType::Bytes {
            // Triton counts strings when it validates the request (after the shape), naming how
            // many came: one more than the shape holds is enough to tell.
            json_tensor::to_raw_up_to(datatype, &data, expected.saturating_add(1), json_tensor::MAX_DEPTH)
                .map_err(|e| data_error(&name, datatype, e))?
                .0
        } else {
            let (raw, count) = json_tensor::to_raw_streaming(datatype, &data, expected, json_tensor::MAX_DEPTH, non_finite)
                .map_err(|e| data_error(&name, datatype, e))?;
            if count != expected {
                return Err(HttpError::unparsable("Unable to parse 'data': Shape does not match true shape of 'data' field"));
            }
            raw
        };
        Some(Bytes::from(raw))
    } else {
        None
    };
    Ok((tensor, bytes))
}

pub(super) fn data_error(input: &str, datatype: DataType, error: DataError) -> HttpError {
    let kind = match datatype {
        DataType::Bool => "boolean",
        DataType::Fp32 | DataType::Fp64 => "double",
        DataType::Uint8 | DataType::Uint16 | DataType::Uint32 | DataType::Uint64 => "unsigned-integer",
        _ => "signed-integer",
    };
    match error {
        DataError::WrongKind { .. } if datatype == DataType::Bytes => {
            HttpError::unparsable("Unable to parse JSON bytes array: attempt to access JSON non-string as string")
        }
        DataError::WrongKind { .. } => HttpError::wrong_kind(Some("data"), kind),
        // Triton narrows such a value silently; refusing it is kept on purpose.
        DataError::OutOfRange if matches!(datatype, DataType::Fp32 | DataType::Fp64) => HttpError::wrong_kind(Some("data"), kind),
        DataError::OutOfRange => HttpError::bad_request(format!(
            "Unable to parse 'data': a value of input '{input}' is not a {datatype} (an integer out of its range, or a fraction)"
        )),
        DataError::NoJsonForm => HttpError::bad_request(format!(
            "receiving {datatype} data via JSON is not supported. Please use the binary data format for input {input}"
        )),
        // A number where a boolean or a string belongs is the wrong kind however large it is.
        DataError::NumberOutOfRange { .. } if matches!(datatype, DataType::Bool | DataType::Bytes) => {
            data_error(input, datatype, DataError::WrongKind { expected: kind })
        }
        DataError::NumberOutOfRange { number } => HttpError::bad_request(format!(
            "Unable to parse 'data' of input '{input}': the number {number} is out of range for {datatype}"
        )),
        DataError::Unparsable { reason } => {
            HttpError::bad_request(format!("Unable to parse 'data' of input '{input}': {reason}"))
        }
        DataError::TooDeep => HttpError::unparsable("Unable to parse 'data': the arrays are nested too deep"),
        DataError::TooMany => HttpError::unparsable("Unable to parse 'data': Shape does not match true shape of 'data' field"),
    }
}

fn output_tensor(output: Value, binary: &mut BinaryOutputs) -> Result<InferRequestedOutputTensor, HttpError> {
    let Value::Object(mut output) = output else { return Err(HttpError::missing_member("name")) };
    let name = string(&mut output, "name")?;
    // A listed output is binary only when it says so.
    binary.by_name.insert(name.clone(), false);
    let mut parameters = HashMap::new();
    let mut binary_asked = false;
    if let Some(params) = output.remove("parameters") {
        let Value::Object(params) = params else {
            return Err(HttpError::unparsable("failed to get output params.: attempt to get members for non-object"));
        };
        for (key, value) in params {
            match key.as_str() {
                BINARY_DATA => {
                    let wanted = value.as_bool().ok_or_else(|| HttpError::wrong_kind(Some(BINARY_DATA), "boolean"))?;
                    binary.by_name.insert(name.clone(), wanted);
                    binary_asked = wanted;
                }
                CLASSIFICATION => {
                    let count = value.as_u64().ok_or_else(|| {
                        HttpError::unparsable(
                            "Unable to set 'classification': attempt to access JSON non-unsigned-integer as unsigned-integer",
                        )
                    })?;
                    // Zero asks for no classification.
                    if count > 0 {
                        parameters.insert(key.clone(), parameter(&key, value)?);
                    }
                }
                _ => {
                    parameters.insert(key.clone(), parameter(&key, value)?);
                }
            }
        }
    }
    if binary_asked && parameters.contains_key(SHARED_MEMORY_REGION) {
        return Err(HttpError::bad_request("Output can't set both 'shared_memory_region' and 'binary_data'"));
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
        let in_shm = output.parameters.contains_key(SHARED_MEMORY_REGION);
        // Triton's HTTP answer does not repeat where an output in shared memory went.
        let mut params = parameters_json(&output.parameters);
        params.retain(|key, _| !key.starts_with("shared_memory_"));
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
                json_tensor::write_json(datatype, &raw, json_tensor::JsonFlavor::Triton, &mut out).ok_or_else(|| {
                    HttpError::bad_request(format!(
                        "sending {datatype} data via JSON is not supported. Please use the binary data format for output"
                    ))
                    .plain()
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
