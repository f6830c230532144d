//! The limit server's answers: every model is an identity model (`INPUT0` FP32 `[-1]` ->
//! `OUTPUT0` FP32 `[-1]`, no batching) except `add_sub`, described with its two INT32 [16] inputs
//! and outputs; inference is an echo with no checks at all.

use std::collections::HashMap;

use tritium_proto::inference::infer_parameter::ParameterChoice;
use tritium_proto::inference::model_infer_response::InferOutputTensor;
use tritium_proto::inference::model_metadata_response::TensorMetadata;
use tritium_proto::inference::{
    DataType, InferParameter, ModelConfig, ModelInferRequest, ModelInferResponse, ModelInput, ModelMetadataResponse, ModelOutput,
    ModelStreamInferResponse,
};

/// The model every name stands for.
pub const MODEL: &str = "identity";
/// The only version there is.
pub const VERSION: &str = "1";

fn model_name(asked: &str) -> String {
    if asked.is_empty() { MODEL.to_string() } else { asked.to_string() }
}

/// Input *i* comes back as `OUTPUT<i>` with the same datatype and shape, its raw payload moved
/// over. Typed contents are ignored: perf_analyzer sends raw ones.
pub fn echo(request: ModelInferRequest) -> ModelInferResponse {
    let ModelInferRequest { model_name, id, inputs, raw_input_contents, .. } = request;
    let outputs = inputs
        .into_iter()
        .enumerate()
        .map(|(i, input)| InferOutputTensor {
            name: format!("OUTPUT{i}"),
            datatype: input.datatype,
            shape: input.shape,
            parameters: HashMap::new(),
            contents: None,
        })
        .collect();
    ModelInferResponse {
        model_name,
        model_version: VERSION.to_string(),
        id,
        parameters: HashMap::new(),
        outputs,
        raw_output_contents: raw_input_contents,
    }
}

/// [`echo`] as a stream answer: one response per request, marked final.
pub fn stream_echo(request: ModelInferRequest) -> ModelStreamInferResponse {
    let mut response = echo(request);
    response
        .parameters
        .insert("triton_final_response".to_string(), InferParameter { parameter_choice: Some(ParameterChoice::BoolParam(true)) });
    ModelStreamInferResponse { error_message: String::new(), infer_response: Some(response) }
}

/// The tensors a model is described with: `add_sub` gets its real two INT32 [16] inputs and
/// outputs (so perf_analyzer sends what it sends Tritium and Triton); every other name is
/// identity. Inference is the same echo either way.
fn tensors(name: &str) -> (DataType, Vec<i64>, usize) {
    if name == "add_sub" { (DataType::TypeInt32, vec![16], 2) } else { (DataType::TypeFp32, vec![-1], 1) }
}

fn kserve_name(datatype: DataType) -> &'static str {
    if datatype == DataType::TypeInt32 { "INT32" } else { "FP32" }
}

/// ModelMetadata of the model asked for (see [`tensors`]).
pub fn metadata(name: &str) -> ModelMetadataResponse {
    let (datatype, dims, count) = tensors(name);
    let tensor = |prefix: &str, i: usize| TensorMetadata {
        name: format!("{prefix}{i}"),
        datatype: kserve_name(datatype).to_string(),
        shape: dims.clone(),
    };
    ModelMetadataResponse {
        name: model_name(name),
        versions: vec![VERSION.to_string()],
        platform: MODEL.to_string(),
        inputs: (0..count).map(|i| tensor("INPUT", i)).collect(),
        outputs: (0..count).map(|i| tensor("OUTPUT", i)).collect(),
    }
}

/// ModelConfig of the model asked for (see [`tensors`]).
pub fn config(name: &str) -> ModelConfig {
    let (datatype, dims, count) = tensors(name);
    ModelConfig {
        name: model_name(name),
        backend: MODEL.to_string(),
        max_batch_size: 0,
        input: (0..count)
            .map(|i| ModelInput {
                name: format!("INPUT{i}"),
                data_type: datatype as i32,
                dims: dims.clone(),
                ..Default::default()
            })
            .collect(),
        output: (0..count)
            .map(|i| ModelOutput {
                name: format!("OUTPUT{i}"),
                data_type: datatype as i32,
                dims: dims.clone(),
                ..Default::default()
            })
            .collect(),
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::requests::{fp32_input, infer_request, int32_input};

    #[test]
    fn echo_moves_every_input_over() {
        let mut request = infer_request("add_sub", &[int32_input("INPUT0", 16), int32_input("INPUT1", 16)], &[]);
        request.id = "7".to_string();
        let payloads: Vec<_> = request.raw_input_contents.iter().map(|b| b.as_ptr()).collect();
        let response = echo(request);
        assert_eq!((response.model_name.as_str(), response.model_version.as_str(), response.id.as_str()), ("add_sub", "1", "7"));
        let names: Vec<_> = response.outputs.iter().map(|o| (o.name.as_str(), o.datatype.as_str(), o.shape.clone())).collect();
        assert_eq!(names, [("OUTPUT0", "INT32", vec![16]), ("OUTPUT1", "INT32", vec![16])]);
        let echoed: Vec<_> = response.raw_output_contents.iter().map(|b| b.as_ptr()).collect();
        assert_eq!(echoed, payloads);
        assert!(response.parameters.is_empty());
    }

    #[test]
    fn stream_answers_are_final() {
        let response = stream_echo(infer_request("identity", &[fp32_input("INPUT0", 4)], &["OUTPUT0"]));
        assert!(response.error_message.is_empty());
        let inner = response.infer_response.expect("a response");
        let flag = inner.parameters.get("triton_final_response").and_then(|p| p.parameter_choice.clone());
        assert_eq!(flag, Some(ParameterChoice::BoolParam(true)));
        assert_eq!(inner.raw_output_contents[0].len(), 16);
    }

    #[test]
    fn any_name_is_the_identity_model() {
        assert_eq!(metadata("").name, "identity");
        let meta = metadata("whatever");
        assert_eq!((meta.name.as_str(), meta.versions.as_slice()), ("whatever", &["1".to_string()][..]));
        assert_eq!((meta.inputs[0].name.as_str(), meta.inputs[0].datatype.as_str()), ("INPUT0", "FP32"));
        let config = config("identity");
        assert_eq!((config.backend.as_str(), config.max_batch_size), ("identity", 0));
        assert_eq!(config.output[0].dims, [-1]);
        assert_eq!(config.input[0].data_type, DataType::TypeFp32 as i32);
    }

    #[test]
    fn add_sub_is_described_with_its_real_tensors() {
        let meta = metadata("add_sub");
        let inputs: Vec<_> = meta.inputs.iter().map(|t| (t.name.as_str(), t.datatype.as_str(), t.shape.clone())).collect();
        assert_eq!(inputs, [("INPUT0", "INT32", vec![16]), ("INPUT1", "INT32", vec![16])]);
        assert_eq!(config("add_sub").output.len(), 2);
    }
}
