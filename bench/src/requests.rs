//! Requests shaped like the ones perf_analyzer 2.60 sends (captured from the limit server): every
//! payload in `raw_input_contents`, no typed contents, every model output requested by name, and
//! `triton_enable_empty_final_response: true` (on unary calls too).

use std::collections::HashMap;

use bytes::Bytes;
use tritium_proto::inference::infer_parameter::ParameterChoice;
use tritium_proto::inference::model_infer_request::{InferInputTensor, InferRequestedOutputTensor};
use tritium_proto::inference::{InferParameter, ModelInferRequest};

/// One raw input: KServe datatype name, shape and little-endian payload.
#[derive(Debug, Clone)]
pub struct Input {
    pub name: String,
    pub datatype: &'static str,
    pub shape: Vec<i64>,
    pub data: Bytes,
}

/// A 1-D FP32 input of `n` elements (0.0, 1.0, ...).
pub fn fp32_input(name: &str, n: usize) -> Input {
    let data: Vec<u8> = (0..n).flat_map(|i| (i as f32).to_le_bytes()).collect();
    Input { name: name.to_string(), datatype: "FP32", shape: vec![n as i64], data: data.into() }
}

/// A 1-D INT32 input of `n` elements (0, 1, ...).
pub fn int32_input(name: &str, n: usize) -> Input {
    let data: Vec<u8> = (0..n).flat_map(|i| (i as i32).to_le_bytes()).collect();
    Input { name: name.to_string(), datatype: "INT32", shape: vec![n as i64], data: data.into() }
}

/// A request for `model` with `inputs` (payloads shared, not copied) asking for `outputs`.
pub fn infer_request(model: &str, inputs: &[Input], outputs: &[&str]) -> ModelInferRequest {
    ModelInferRequest {
        model_name: model.to_string(),
        model_version: String::new(),
        id: String::new(),
        parameters: HashMap::from([(
            "triton_enable_empty_final_response".to_string(),
            InferParameter { parameter_choice: Some(ParameterChoice::BoolParam(true)) },
        )]),
        inputs: inputs
            .iter()
            .map(|input| InferInputTensor {
                name: input.name.clone(),
                datatype: input.datatype.to_string(),
                shape: input.shape.clone(),
                parameters: HashMap::new(),
                contents: None,
            })
            .collect(),
        outputs: outputs
            .iter()
            .map(|name| InferRequestedOutputTensor { name: name.to_string(), parameters: HashMap::new() })
            .collect(),
        raw_input_contents: inputs.iter().map(|input| input.data.clone()).collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payloads_are_little_endian_and_shared() {
        let input = fp32_input("INPUT0", 3);
        assert_eq!(&input.data[..], [0.0f32, 1.0, 2.0].iter().flat_map(|v| v.to_le_bytes()).collect::<Vec<_>>());
        let request = infer_request("identity", std::slice::from_ref(&input), &["OUTPUT0"]);
        assert_eq!(request.raw_input_contents[0].as_ptr(), input.data.as_ptr());
        assert_eq!(request.inputs[0].shape, [3]);
        assert_eq!(request.outputs[0].name, "OUTPUT0");
        assert_eq!(int32_input("x", 2).data.len(), 8);
    }
}
