//! Tensor models of Dynamo workers (`model_input: Tensor`, model type `TensorBased`, as
//! `dynamo.triton` registers Triton's models): the card's `tensor_model_config` becomes the
//! model's KServe config, a KServe request becomes Dynamo's `NvCreateTensorRequest` (each tensor
//! flattened into typed values: `{"metadata": {name, data_type, shape}, "data": {data_type,
//! values}}`), and each `NvCreateTensorResponse` item of the response stream becomes a KServe
//! response. FP16 and BF16 values travel as their 16-bit patterns, as Dynamo 1.6.1's tensor
//! workers read them (numbers are read back too); BYTES elements as arrays of byte values.

use std::sync::Arc;

use bytes::Bytes;
use prost::Message;
use serde::Deserialize;
use serde_json::{Map, Value as Json, json};
use tritium_backend_api::{InferenceRequest, InferenceResponse, ParamValue, is_reserved};
use tritium_proto::inference::{ModelConfig, ModelInput, ModelOutput};
use tritium_tensor::{DataType, Tensor};

use super::records::{TensorMetadata, TensorModelConfig};

/// Dynamo's name of a datatype.
pub fn dynamo_type(datatype: DataType) -> &'static str {
    match datatype {
        DataType::Bool => "Bool",
        DataType::Uint8 => "Uint8",
        DataType::Uint16 => "Uint16",
        DataType::Uint32 => "Uint32",
        DataType::Uint64 => "Uint64",
        DataType::Int8 => "Int8",
        DataType::Int16 => "Int16",
        DataType::Int32 => "Int32",
        DataType::Int64 => "Int64",
        DataType::Fp16 => "Float16",
        DataType::Bf16 => "BFloat16",
        DataType::Fp32 => "Float32",
        DataType::Fp64 => "Float64",
        DataType::Bytes => "Bytes",
    }
}

/// The datatype Dynamo names `name`.
pub fn from_dynamo_type(name: &str) -> Option<DataType> {
    DataType::ALL.into_iter().find(|&datatype| dynamo_type(datatype) == name)
}

/// The KServe config of the Dynamo tensor model `name`: Triton's own `ModelConfig` when the
/// card carries one, else one made of the card's inputs and outputs.
pub fn model_config(name: &str, config: &TensorModelConfig) -> Result<ModelConfig, String> {
    let mut model = match config.triton_model_config.as_deref() {
        Some(bytes) if !bytes.is_empty() => {
            ModelConfig::decode(bytes).map_err(|e| format!("its triton_model_config is not a Triton ModelConfig: {e}"))?
        }
        _ => {
            let data_type = |meta: &TensorMetadata| {
                from_dynamo_type(&meta.data_type).map(|datatype| datatype.to_config() as i32).ok_or_else(|| {
                    format!("tensor '{}' has the data type '{}', which Dynamo does not name", meta.name, meta.data_type)
                })
            };
            let input = |meta: &TensorMetadata| {
                Ok(ModelInput {
                    name: meta.name.clone(),
                    data_type: data_type(meta)?,
                    dims: meta.shape.clone(),
                    ..Default::default()
                })
            };
            let output = |meta: &TensorMetadata| {
                Ok(ModelOutput {
                    name: meta.name.clone(),
                    data_type: data_type(meta)?,
                    dims: meta.shape.clone(),
                    ..Default::default()
                })
            };
            ModelConfig {
                input: config.inputs.iter().map(input).collect::<Result<_, String>>()?,
                output: config.outputs.iter().map(output).collect::<Result<_, String>>()?,
                ..Default::default()
            }
        }
    };
    if model.input.is_empty() {
        return Err("its tensor model config names no inputs".into());
    }
    model.name = name.to_string();
    Ok(model)
}

/// A KServe request as Dynamo's `NvCreateTensorRequest` for `model`. Requested outputs go as
/// `outputs` (what `dynamo.triton` reads) only when the client named some.
pub fn tensor_request(request: &InferenceRequest, model: &str) -> Result<Json, String> {
    let tensors = request.inputs.iter().map(tensor_json).collect::<Result<Vec<_>, _>>()?;
    let mut body = Map::new();
    body.insert("id".into(), if request.id.is_empty() { Json::Null } else { request.id.clone().into() });
    body.insert("model".into(), model.into());
    body.insert("tensors".into(), tensors.into());
    let parameters: Map<String, Json> = request
        .parameters
        .iter()
        .filter(|(key, _)| !is_reserved(key))
        .map(|(key, value)| {
            let value = match value {
                ParamValue::Bool(v) => json!({"bool": v}),
                ParamValue::Int64(v) => json!({"int64": v}),
                ParamValue::String(v) => json!({"string": v}),
                ParamValue::Double(v) => json!({"double": v}),
                ParamValue::Uint64(v) => json!({"uint64": v}),
            };
            (key.clone(), value)
        })
        .collect();
    if !parameters.is_empty() {
        body.insert("parameters".into(), parameters.into());
    }
    if !request.requested_outputs.is_empty() {
        let outputs: Vec<Json> = request.requested_outputs.iter().map(|name| json!({"name": name})).collect();
        body.insert("outputs".into(), outputs.into());
    }
    Ok(Json::Object(body))
}

/// A tensor as Dynamo's `{"metadata", "data"}` with typed values.
pub fn tensor_json(tensor: &Tensor) -> Result<Json, String> {
    let fail = |e: tritium_tensor::TensorError| format!("input '{}': {e}", tensor.name);
    let numbers = |values: Vec<Json>| Json::Array(values);
    let halves = || tensor.data.chunks_exact(2).map(|b| Json::from(u16::from_le_bytes([b[0], b[1]]))).collect();
    let values = match tensor.datatype {
        DataType::Bool => numbers(tensor.data.iter().map(|&b| Json::Bool(b != 0)).collect()),
        DataType::Uint8 => numbers(tensor.data.iter().map(|&b| Json::from(b)).collect()),
        DataType::Uint16 => numbers(tensor.to_vec::<u16>().map_err(fail)?.into_iter().map(Json::from).collect()),
        DataType::Uint32 => numbers(tensor.to_vec::<u32>().map_err(fail)?.into_iter().map(Json::from).collect()),
        DataType::Uint64 => numbers(tensor.to_vec::<u64>().map_err(fail)?.into_iter().map(Json::from).collect()),
        DataType::Int8 => numbers(tensor.to_vec::<i8>().map_err(fail)?.into_iter().map(Json::from).collect()),
        DataType::Int16 => numbers(tensor.to_vec::<i16>().map_err(fail)?.into_iter().map(Json::from).collect()),
        DataType::Int32 => numbers(tensor.to_vec::<i32>().map_err(fail)?.into_iter().map(Json::from).collect()),
        DataType::Int64 => numbers(tensor.to_vec::<i64>().map_err(fail)?.into_iter().map(Json::from).collect()),
        DataType::Fp16 | DataType::Bf16 => numbers(halves()),
        DataType::Fp32 => numbers(tensor.to_vec::<f32>().map_err(fail)?.into_iter().map(|x| Json::from(f64::from(x))).collect()),
        DataType::Fp64 => numbers(tensor.to_vec::<f64>().map_err(fail)?.into_iter().map(Json::from).collect()),
        DataType::Bytes => {
            numbers(tensor.byte_strings().map_err(fail)?.into_iter().map(|element| Json::from(element.to_vec())).collect())
        }
    };
    let data_type = dynamo_type(tensor.datatype);
    Ok(json!({
        "metadata": {"name": tensor.name, "data_type": data_type, "shape": tensor.shape},
        "data": {"data_type": data_type, "values": values},
    }))
}

/// Dynamo's `NvCreateTensorResponse`.
#[derive(Debug, Default, Deserialize)]
pub struct TensorResponse {
    #[serde(default)]
    pub tensors: Vec<WireTensor>,
}

#[derive(Debug, Deserialize)]
pub struct WireTensor {
    pub metadata: WireMetadata,
    pub data: WireData,
}

#[derive(Debug, Deserialize)]
pub struct WireMetadata {
    pub name: String,
    pub data_type: String,
    #[serde(default)]
    pub shape: Vec<i64>,
}

#[derive(Debug, Deserialize)]
pub struct WireData {
    pub data_type: String,
    #[serde(default)]
    pub values: Vec<Json>,
}

/// One response item as a KServe response of `model` (version `version`) to request `id`,
/// holding only the `requested` outputs when the client named some.
pub fn response_of(
    item: TensorResponse,
    model: &Arc<str>,
    version: i64,
    id: &str,
    requested: &[String],
) -> Result<InferenceResponse, String> {
    let outputs = item
        .tensors
        .into_iter()
        .filter(|t| requested.is_empty() || requested.contains(&t.metadata.name))
        .map(tensor_of)
        .collect::<Result<Vec<_>, _>>()?;
    Ok(InferenceResponse {
        model_name: Arc::clone(model),
        model_version: version,
        id: id.to_string(),
        outputs,
        is_final: false,
        parameters: Vec::new(),
    })
}

/// A tensor the worker sent, checked: a known data type, the same in metadata and data, and as
/// many values as the shape holds.
pub fn tensor_of(wire: WireTensor) -> Result<Tensor, String> {
    let name = wire.metadata.name;
    let fail = |why: String| format!("tensor '{name}' {why}");
    let datatype = from_dynamo_type(&wire.metadata.data_type)
        .ok_or_else(|| fail(format!("has the data type '{}', which Dynamo does not name", wire.metadata.data_type)))?;
    if wire.data.data_type != wire.metadata.data_type {
        return Err(fail(format!(
            "says '{}' in its metadata and '{}' in its data",
            wire.metadata.data_type, wire.data.data_type
        )));
    }
    let mut count: usize = 1;
    for &dim in &wire.metadata.shape {
        let dim = usize::try_from(dim).map_err(|_| fail(format!("has a negative dimension in {:?}", wire.metadata.shape)))?;
        count = count.checked_mul(dim).ok_or_else(|| fail("has a shape too large".into()))?;
    }
    let values = wire.data.values;
    if values.len() != count {
        return Err(fail(format!("has {} values for the shape {:?}", values.len(), wire.metadata.shape)));
    }
    let bad = |value: &Json| fail(format!("holds {value}, which is not a {}", datatype.kserve_name()));
    let mut data = Vec::with_capacity(count.saturating_mul(datatype.element_size().unwrap_or(8)));
    for value in &values {
        match datatype {
            DataType::Bool => data.push(u8::from(value.as_bool().ok_or_else(|| bad(value))?)),
            DataType::Uint8 => data.push(integer::<u8>(value).ok_or_else(|| bad(value))?),
            DataType::Uint16 => data.extend(integer::<u16>(value).ok_or_else(|| bad(value))?.to_le_bytes()),
            DataType::Uint32 => data.extend(integer::<u32>(value).ok_or_else(|| bad(value))?.to_le_bytes()),
            DataType::Uint64 => data.extend(value.as_u64().ok_or_else(|| bad(value))?.to_le_bytes()),
            DataType::Int8 => data.extend(integer::<i8>(value).ok_or_else(|| bad(value))?.to_le_bytes()),
            DataType::Int16 => data.extend(integer::<i16>(value).ok_or_else(|| bad(value))?.to_le_bytes()),
            DataType::Int32 => data.extend(integer::<i32>(value).ok_or_else(|| bad(value))?.to_le_bytes()),
            DataType::Int64 => data.extend(value.as_i64().ok_or_else(|| bad(value))?.to_le_bytes()),
            DataType::Fp16 | DataType::Bf16 => {
                let bits = match integer::<u16>(value) {
                    Some(bits) => bits,
                    None => {
                        let number = value.as_f64().ok_or_else(|| bad(value))?;
                        match datatype {
                            DataType::Fp16 => half::f16::from_f64(number).to_bits(),
                            _ => half::bf16::from_f64(number).to_bits(),
                        }
                    }
                };
                data.extend(bits.to_le_bytes());
            }
            DataType::Fp32 => data.extend((value.as_f64().ok_or_else(|| bad(value))? as f32).to_le_bytes()),
            DataType::Fp64 => data.extend(value.as_f64().ok_or_else(|| bad(value))?.to_le_bytes()),
            DataType::Bytes => {
                let element = byte_string(value).ok_or_else(|| bad(value))?;
                let length = u32::try_from(element.len()).map_err(|_| fail("has an element over 4 GiB".into()))?;
                data.extend(length.to_le_bytes());
                data.extend(element);
            }
        }
    }
    Ok(Tensor::new(name, datatype, wire.metadata.shape, Bytes::from(data)))
}

/// An integer value that fits `T` (an integral float such as `3.0` included).
fn integer<T: TryFrom<i64>>(value: &Json) -> Option<T> {
    let number = match value {
        Json::Number(n) => {
            n.as_i64().or_else(|| n.as_f64().filter(|f| f.fract() == 0.0 && f.abs() < 9.0e15).map(|f| f as i64))?
        }
        _ => return None,
    };
    T::try_from(number).ok()
}

/// A BYTES element: an array of byte values, or a string (its UTF-8 bytes).
fn byte_string(value: &Json) -> Option<Vec<u8>> {
    match value {
        Json::String(text) => Some(text.as_bytes().to_vec()),
        Json::Array(items) => items.iter().map(integer::<u8>).collect(),
        _ => None,
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn a_request_flattens_each_tensor_into_typed_values() {
        let mut request = InferenceRequest::new(
            "add_sub",
            vec![
                Tensor::from_slice::<f32>("INPUT0", vec![2], &[1.5, -2.0]),
                Tensor::from_byte_strings("TEXT", vec![1], [b"hi".as_slice()]),
                Tensor::from_slice::<half::f16>("HALF", vec![1], &[half::f16::from_f32(1.0)]),
            ],
        );
        request.parameters.push(("scale".into(), ParamValue::Double(2.0)));
        request.parameters.push(("sequence_id".into(), ParamValue::Int64(1)));
        let body = tensor_request(&request, "add_sub").unwrap();
        assert_eq!(body["tensors"][0]["metadata"], json!({"name": "INPUT0", "data_type": "Float32", "shape": [2]}));
        assert_eq!(body["tensors"][0]["data"], json!({"data_type": "Float32", "values": [1.5, -2.0]}));
        assert_eq!(body["tensors"][1]["data"]["values"], json!([[104, 105]]));
        assert_eq!(body["tensors"][2]["data"]["values"], json!([0x3c00]));
        assert_eq!(body["parameters"], json!({"scale": {"double": 2.0}}), "reserved parameters stay here");
        assert!(body.get("outputs").is_none());
    }

    #[test]
    fn a_response_item_becomes_kserve_outputs_and_bad_ones_are_refused() {
        let item: TensorResponse = serde_json::from_value(json!({"id": "1", "model": "m", "tensors": [
            {"metadata": {"name": "SUM", "data_type": "Int32", "shape": [2]}, "data": {"data_type": "Int32", "values": [3, -4]}},
            {"metadata": {"name": "TEXT", "data_type": "Bytes", "shape": [1]}, "data": {"data_type": "Bytes", "values": [[111, 107]]}},
        ]}))
        .unwrap();
        let model: Arc<str> = Arc::from("m");
        let response = response_of(item, &model, 1, "1", &[]).unwrap();
        assert_eq!(response.outputs[0].to_vec::<i32>().unwrap(), vec![3, -4]);
        assert_eq!(response.outputs[1].byte_strings().unwrap(), vec![b"ok".as_slice()]);
        let wrong = |tensor: Json| {
            let item: TensorResponse = serde_json::from_value(json!({"tensors": [tensor]})).unwrap();
            response_of(item, &model, 1, "1", &[]).unwrap_err()
        };
        let short = wrong(
            json!({"metadata": {"name": "X", "data_type": "Int32", "shape": [3]}, "data": {"data_type": "Int32", "values": [1]}}),
        );
        assert!(short.contains("1 values for the shape [3]"), "{short}");
        let overflow = wrong(
            json!({"metadata": {"name": "X", "data_type": "Int8", "shape": [1]}, "data": {"data_type": "Int8", "values": [300]}}),
        );
        assert!(overflow.contains("not a INT8"), "{overflow}");
        let mixed = wrong(
            json!({"metadata": {"name": "X", "data_type": "Int8", "shape": [1]}, "data": {"data_type": "Int16", "values": [3]}}),
        );
        assert!(mixed.contains("'Int8' in its metadata"), "{mixed}");
        let huge = wrong(
            json!({"metadata": {"name": "X", "data_type": "Int8", "shape": [i64::MAX, 4]}, "data": {"data_type": "Int8", "values": []}}),
        );
        assert!(huge.contains("too large"), "{huge}");
    }

    #[test]
    fn a_config_comes_from_the_metadata_or_from_tritons_own_bytes() {
        let meta =
            |name: &str, data_type: &str| TensorMetadata { name: name.into(), data_type: data_type.into(), shape: vec![-1] };
        let config = TensorModelConfig {
            inputs: vec![meta("A", "Float32")],
            outputs: vec![meta("B", "Bytes")],
            triton_model_config: None,
        };
        let made = model_config("m", &config).unwrap();
        assert_eq!((made.name.as_str(), made.input[0].dims.as_slice()), ("m", [-1].as_slice()));
        assert_eq!(made.output[0].data_type, DataType::Bytes.to_config() as i32);
        let triton = ModelConfig { name: "other".into(), max_batch_size: 8, input: made.input.clone(), ..Default::default() };
        let config = TensorModelConfig { triton_model_config: Some(triton.encode_to_vec()), ..Default::default() };
        let made = model_config("m", &config).unwrap();
        assert_eq!((made.name.as_str(), made.max_batch_size), ("m", 8));
        let config = TensorModelConfig { triton_model_config: Some(vec![0xff, 0xff]), ..Default::default() };
        assert!(model_config("m", &config).unwrap_err().contains("not a Triton ModelConfig"));
    }
}
