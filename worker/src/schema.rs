//! A model's tensor contract, computed once at load from its config, and the validation of every
//! request against it (Triton's `Normalize`/`ValidateRequestInputs` rules and messages).

use std::path::Path;
use std::sync::Arc;

use tritium_proto::inference::ModelConfig;
use tritium_repository::Labels;
use tritium_tensor::{DataType, Tensor};

use tritium_backend_api::error::{WorkerError, datatype_reason, shape_text, tensor_reason};
use tritium_backend_api::request::InferenceRequest;

/// The config inputs a request names, by position in the config. Models have few inputs, so a
/// scan per input and a bit mask cost less than hashing every name.
enum SeenInputs {
    Mask(u64),
    Flags(Vec<bool>),
}

impl SeenInputs {
    fn new(inputs: usize) -> SeenInputs {
        if inputs <= 64 { SeenInputs::Mask(0) } else { SeenInputs::Flags(vec![false; inputs]) }
    }

    /// Marks `index`; false when it was marked already.
    fn insert(&mut self, index: usize) -> bool {
        match self {
            SeenInputs::Mask(mask) => {
                let bit = 1u64 << index;
                let fresh = *mask & bit == 0;
                *mask |= bit;
                fresh
            }
            SeenInputs::Flags(flags) => !std::mem::replace(&mut flags[index], true),
        }
    }

    fn contains(&self, index: usize) -> bool {
        match self {
            SeenInputs::Mask(mask) => *mask & (1u64 << index) != 0,
            SeenInputs::Flags(flags) => flags[index],
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct TensorSpec {
    pub name: String,
    pub datatype: DataType,
    /// Config dims, without the batch dimension; -1 matches any size.
    pub dims: Vec<i64>,
    pub optional: bool,
    /// `reshape` from the config: the shape the backend sees (after the batch dimension).
    pub reshape: Option<Vec<i64>>,
    /// An output's `label_filename`, read at load ([`ModelSchema::with_labels`]), for classification.
    pub labels: Option<Arc<Labels>>,
}

#[derive(Debug, Clone)]
pub struct ModelSchema {
    pub model: String,
    pub max_batch_size: i64,
    pub inputs: Vec<TensorSpec>,
    pub outputs: Vec<TensorSpec>,
    pub decoupled: bool,
    /// Whether any input has a `reshape`: most models have none, and then the backend gets the
    /// client's shapes as they are.
    reshapes: bool,
    /// Whether any output has a `reshape`.
    reshapes_outputs: bool,
}

impl ModelSchema {
    pub fn from_config(config: &ModelConfig) -> Result<ModelSchema, String> {
        let spec = |name: &str, data_type: i32, dims: &[i64], optional: bool, reshape: Option<Vec<i64>>| {
            let datatype = DataType::from_config(data_type)
                .ok_or_else(|| format!("tensor '{name}' has an invalid data_type {data_type}"))?;
            Ok::<_, String>(TensorSpec { name: name.to_string(), datatype, dims: dims.to_vec(), optional, reshape, labels: None })
        };
        let inputs = config
            .input
            .iter()
            .map(|i| spec(&i.name, i.data_type, &i.dims, i.optional, i.reshape.as_ref().map(|r| r.shape.clone())))
            .collect::<Result<Vec<_>, _>>()?;
        let outputs = config
            .output
            .iter()
            .map(|o| spec(&o.name, o.data_type, &o.dims, false, o.reshape.as_ref().map(|r| r.shape.clone())))
            .collect::<Result<Vec<_>, _>>()?;
        let reshapes = inputs.iter().any(|i| i.reshape.is_some());
        let reshapes_outputs = outputs.iter().any(|o| o.reshape.is_some());
        Ok(ModelSchema {
            reshapes,
            reshapes_outputs,
            model: config.name.clone(),
            max_batch_size: i64::from(config.max_batch_size),
            inputs,
            outputs,
            decoupled: config.model_transaction_policy.as_ref().is_some_and(|p| p.decoupled),
        })
    }

    /// Reads the label file each output of `config` names, from the model folder, once: the
    /// model does not load when one is missing, outside the folder or over its bounds.
    pub fn with_labels(mut self, config: &ModelConfig, model_dir: Option<&Path>) -> Result<ModelSchema, String> {
        for output in config.output.iter().filter(|o| !o.label_filename.is_empty()) {
            let labels =
                Labels::read(model_dir, &output.label_filename).map_err(|why| format!("output '{}': {why}", output.name))?;
            if let Some(spec) = self.outputs.iter_mut().find(|s| s.name == output.name) {
                spec.labels = Some(Arc::new(labels));
            }
        }
        Ok(self)
    }

    /// The labels of output `name`, if its config names a label file.
    pub fn labels(&self, name: &str) -> Option<&Arc<Labels>> {
        self.outputs.iter().find(|s| s.name == name).and_then(|s| s.labels.as_ref())
    }

    pub fn batched(&self) -> bool {
        self.max_batch_size > 0
    }

    /// The shape clients see in metadata: a leading -1 when the model batches.
    pub fn public_shape(&self, spec: &TensorSpec) -> Vec<i64> {
        if self.batched() { std::iter::once(-1).chain(spec.dims.iter().copied()).collect() } else { spec.dims.clone() }
    }

    /// Triton's sentence for a request with the wrong number of inputs (with an empty `missing`
    /// list it prints a lone `]`, as Triton does).
    fn input_count_message(&self, request: &InferenceRequest, missing: &[&str]) -> String {
        let required = self.inputs.iter().filter(|s| !s.optional).count();
        let expected = if required == self.inputs.len() {
            format!("expected {required} inputs")
        } else {
            format!("expected number of inputs between {required} and {}", self.inputs.len())
        };
        let got: Vec<String> = request.inputs.iter().map(|t| format!("'{}'", t.name)).collect();
        let missing: Vec<String> = missing.iter().map(|n| format!("'{n}'")).collect();
        let missing = if missing.is_empty() { "]".to_string() } else { format!("[{}]", missing.join(",")) };
        format!(
            "{expected} but got {} inputs for model '{}'. Got input(s) [{}], but missing required input(s) {missing}. Please provide all required input(s).",
            request.inputs.len(),
            self.model,
            got.join(",")
        )
    }

    /// Checks a request against the contract. The request is left as the client sent it (so it
    /// can travel to a worker process and be checked there again); [`ModelSchema::reshape`]
    /// gives the backend its shapes.
    pub fn validate(&self, request: &InferenceRequest) -> Result<(), WorkerError> {
        let model = self.model.as_str();
        let invalid = |reason: String| WorkerError::invalid(&request.id, reason);
        let unprefixed = |message: String| WorkerError::Failed { code: tritium_proto::ErrorCode::InvalidArg, message };

        // More inputs than the model has: Triton counts before it looks at names.
        if request.inputs.len() > self.inputs.len() {
            // ...but after a name given twice.
            let inputs = &request.inputs;
            if let Some(twice) = inputs.iter().enumerate().find(|(i, t)| inputs[..*i].iter().any(|u| u.name == t.name)) {
                return Err(invalid(format!("input '{}' already exists in request", twice.1.name)));
            }
            return Err(invalid(self.input_count_message(request, &[])));
        }
        let mut seen = SeenInputs::new(self.inputs.len());
        for input in &request.inputs {
            // Triton words an unknown input or output without the request id.
            let Some(index) = self.inputs.iter().position(|s| s.name == input.name) else {
                return Err(unprefixed(format!("unexpected inference input '{}' for model '{model}'", input.name)));
            };
            if !seen.insert(index) {
                return Err(invalid(format!("input '{}' already exists in request", input.name)));
            }
        }
        let missing: Vec<&str> = self
            .inputs
            .iter()
            .enumerate()
            .filter(|(index, s)| !s.optional && !seen.contains(*index))
            .map(|(_, s)| s.name.as_str())
            .collect();
        if !missing.is_empty() {
            return Err(invalid(self.input_count_message(request, &missing)));
        }

        let mut batch: Option<i64> = None;
        for input in &request.inputs {
            // Every name was found above.
            let Some(spec) = self.inputs.iter().find(|s| s.name == input.name) else { continue };
            if input.datatype != spec.datatype {
                return Err(invalid(datatype_reason(model, &input.name, input.datatype, spec.datatype)));
            }
            if input.shape.iter().any(|&d| d < 0) {
                return Err(invalid(format!(
                    "All input dimensions should be specified for input '{}' for model '{model}', got {}",
                    input.name,
                    shape_text(&input.shape)
                )));
            }
            let dims = if self.batched() {
                let Some((&first, rest)) = input.shape.split_first() else {
                    return Err(invalid(format!(
                        "input '{}' has no shape but model requires batch dimension for '{model}'",
                        input.name
                    )));
                };
                match batch {
                    None => batch = Some(first),
                    Some(b) if b != first => {
                        return Err(invalid(format!(
                            "input '{}' batch size does not match other inputs for '{model}'",
                            input.name
                        )));
                    }
                    Some(_) => {}
                }
                if first > self.max_batch_size {
                    return Err(invalid(format!(
                        "inference request batch-size must be <= {} for '{model}'",
                        self.max_batch_size
                    )));
                }
                rest
            } else {
                &input.shape[..]
            };
            let matches = dims.len() == spec.dims.len() && dims.iter().zip(&spec.dims).all(|(&d, &s)| s == -1 || d == s);
            if !matches {
                let note = if self.batched() {
                    ". NOTE: Setting a non-zero max_batch_size in the model config requires a batch dimension to be prepended to each input shape. If you want to specify the full shape including the batch dim in your input dims config, try setting max_batch_size to zero. See the model configuration docs for more info on max_batch_size."
                } else {
                    ". "
                };
                return Err(invalid(format!(
                    "unexpected shape for input '{}' for model '{model}'. Expected {}, got {}{note}",
                    input.name,
                    shape_text(&self.public_shape(spec)),
                    shape_text(&input.shape)
                )));
            }
            input.validate().map_err(|e| invalid(tensor_reason(model, &input.name, &e)))?;
        }

        for name in &request.requested_outputs {
            if !self.outputs.iter().any(|s| &s.name == name) {
                return Err(unprefixed(format!("unexpected inference output '{name}' for model '{model}'")));
            }
        }
        Ok(())
    }

    /// Gives validated inputs the shapes the backend sees: a config `reshape` replaces the dims
    /// after the batch dimension, its variable-size dimensions taking, in order, the sizes the
    /// request gave the variable-size dimensions of `dims` (Triton's `Normalize`).
    pub fn reshape(&self, inputs: &mut [Tensor]) {
        if !self.reshapes {
            return;
        }
        for input in inputs {
            let Some(spec) = self.inputs.iter().find(|s| s.name == input.name) else { continue };
            let Some(reshape) = &spec.reshape else { continue };
            let batch = usize::from(self.batched()).min(input.shape.len());
            if let Some(shape) = map_variable_dims(&input.shape[batch..], &spec.dims, reshape) {
                input.shape = input.shape[..batch].iter().copied().chain(shape).collect();
            }
        }
    }

    /// Gives a backend's outputs the shapes clients see: an output with a config `reshape` comes
    /// back in the config's `dims` (after the batch dimension), its variable-size dimensions
    /// taking the sizes the backend gave the variable-size dimensions of the reshape, as Triton
    /// reports it. An output that does not fit the reshape is left as the backend made it.
    /// Whether any output has a `reshape` (else [`ModelSchema::reshape_outputs`] does nothing).
    pub fn reshapes_outputs(&self) -> bool {
        self.reshapes_outputs
    }

    pub fn reshape_outputs(&self, outputs: &mut [Tensor]) {
        if !self.reshapes_outputs {
            return;
        }
        for output in outputs {
            let Some(spec) = self.outputs.iter().find(|s| s.name == output.name) else { continue };
            let Some(reshape) = &spec.reshape else { continue };
            let batch = usize::from(self.batched()).min(output.shape.len());
            let Some(shape) = map_variable_dims(&output.shape[batch..], reshape, &spec.dims) else { continue };
            if shape.iter().product::<i64>() == output.shape[batch..].iter().product::<i64>() {
                output.shape = output.shape[..batch].iter().copied().chain(shape).collect();
            }
        }
    }
}

/// `to` with each -1 replaced, in order, by the size `actual` has where `from` has a -1; None when
/// `actual` is not of `from`'s rank or `from` has fewer variable-size dimensions than `to` (then
/// the tensor is not one the config describes, and is left alone).
fn map_variable_dims(actual: &[i64], from: &[i64], to: &[i64]) -> Option<Vec<i64>> {
    if actual.len() != from.len() {
        return None;
    }
    let mut sizes = from.iter().zip(actual).filter(|(d, _)| **d == -1).map(|(_, &size)| size);
    to.iter().map(|&d| if d == -1 { sizes.next() } else { Some(d) }).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use tritium_proto::inference::{ModelInput, ModelOutput, ModelTensorReshape};

    fn config(max_batch_size: i32) -> ModelConfig {
        let input = |name: &str, dims: Vec<i64>, optional: bool| ModelInput {
            name: name.into(),
            data_type: DataType::Fp32.to_config() as i32,
            dims,
            optional,
            ..Default::default()
        };
        ModelConfig {
            name: "m".into(),
            max_batch_size,
            input: vec![
                ModelInput { reshape: Some(ModelTensorReshape { shape: vec![2, 2] }), ..input("A", vec![4], false) },
                input("B", vec![-1], true),
            ],
            output: vec![ModelOutput {
                name: "Y".into(),
                data_type: DataType::Fp32.to_config() as i32,
                dims: vec![4],
                ..Default::default()
            }],
            ..Default::default()
        }
    }

    fn request(inputs: Vec<Tensor>) -> InferenceRequest {
        InferenceRequest::new("m", inputs)
    }

    #[test]
    fn an_output_with_a_reshape_comes_back_in_the_configs_dims() {
        let config = ModelConfig {
            name: "m".into(),
            max_batch_size: 4,
            output: vec![ModelOutput {
                name: "label".into(),
                data_type: tritium_proto::inference::DataType::TypeInt64 as i32,
                dims: vec![1],
                reshape: Some(ModelTensorReshape { shape: vec![] }),
                ..Default::default()
            }],
            ..Default::default()
        };
        let schema = ModelSchema::from_config(&config).unwrap();
        let mut outputs = [Tensor::from_slice("label", vec![3], &[1i64, 2, 3])];
        schema.reshape_outputs(&mut outputs);
        assert_eq!(outputs[0].shape, [3, 1]);
    }

    #[test]
    fn reshapes_map_variable_size_dimensions_both_ways_batched_or_not() {
        let tensor = |name: &str, dims: Vec<i64>, reshape: Vec<i64>| (name.to_string(), dims, reshape);
        let config = |max_batch_size: i32, inputs: &[(String, Vec<i64>, Vec<i64>)], outputs: &[(String, Vec<i64>, Vec<i64>)]| {
            ModelConfig {
                name: "m".into(),
                max_batch_size,
                input: inputs
                    .iter()
                    .map(|(name, dims, shape)| ModelInput {
                        name: name.clone(),
                        data_type: DataType::Fp32.to_config() as i32,
                        dims: dims.clone(),
                        reshape: Some(ModelTensorReshape { shape: shape.clone() }),
                        ..Default::default()
                    })
                    .collect(),
                output: outputs
                    .iter()
                    .map(|(name, dims, shape)| ModelOutput {
                        name: name.clone(),
                        data_type: DataType::Fp32.to_config() as i32,
                        dims: dims.clone(),
                        reshape: Some(ModelTensorReshape { shape: shape.clone() }),
                        ..Default::default()
                    })
                    .collect(),
                ..Default::default()
            }
        };
        // Triton's quickstart densenet_onnx: no batching, [3,224,224] <-> [1,3,224,224], [1000] <-> [1,1000,1,1].
        let densenet = config(
            0,
            &[tensor("data_0", vec![3, 224, 224], vec![1, 3, 224, 224])],
            &[tensor("fc6_1", vec![1000], vec![1, 1000, 1, 1])],
        );
        let schema = ModelSchema::from_config(&densenet).expect("schema");
        let mut inputs = [Tensor::from_slice("data_0", vec![3, 224, 224], &vec![0f32; 3 * 224 * 224])];
        schema.validate(&request(inputs.to_vec())).expect("the client sends the config's dims");
        schema.reshape(&mut inputs);
        assert_eq!(inputs[0].shape, [1, 3, 224, 224]);
        let mut outputs = [Tensor::from_slice("fc6_1", vec![1, 1000, 1, 1], &[0f32; 1000])];
        schema.reshape_outputs(&mut outputs);
        assert_eq!(outputs[0].shape, [1000]);

        // Batched, with variable-size dimensions: [2,-1] <-> [-1,2] and a stretch [4,-1] <-> [2,2,-1].
        let variable = config(
            8,
            &[tensor("A", vec![2, -1], vec![-1, 2]), tensor("B", vec![4, -1], vec![2, 2, -1])],
            &[tensor("Y", vec![-1, 3], vec![3, -1])],
        );
        let schema = ModelSchema::from_config(&variable).expect("schema");
        let mut inputs =
            [Tensor::from_slice("A", vec![5, 2, 3], &[0f32; 30]), Tensor::from_slice("B", vec![5, 4, 7], &[0f32; 140])];
        schema.reshape(&mut inputs);
        assert_eq!(inputs[0].shape, [5, 3, 2], "the batch stays, -1 takes the client's 3");
        assert_eq!(inputs[1].shape, [5, 2, 2, 7]);
        let mut outputs = [Tensor::from_slice("Y", vec![5, 3, 6], &[0f32; 90])];
        schema.reshape_outputs(&mut outputs);
        assert_eq!(outputs[0].shape, [5, 6, 3]);
        // An output the backend made in another shape is left as it is.
        let mut odd = [Tensor::from_slice("Y", vec![5, 90], &[0f32; 450])];
        schema.reshape_outputs(&mut odd);
        assert_eq!(odd[0].shape, [5, 90]);

        // An empty reshape is a scalar: [1] to the client, [] (after the batch) to the backend.
        let scalar = config(4, &[tensor("S", vec![1], vec![])], &[tensor("T", vec![1], vec![])]);
        let schema = ModelSchema::from_config(&scalar).expect("schema");
        let mut inputs = [Tensor::from_slice("S", vec![3, 1], &[0f32; 3])];
        schema.reshape(&mut inputs);
        assert_eq!(inputs[0].shape, [3]);
        let unbatched = config(0, &[tensor("S", vec![1], vec![])], &[]);
        let mut inputs = [Tensor::from_slice("S", vec![1], &[0f32; 1])];
        ModelSchema::from_config(&unbatched).expect("schema").reshape(&mut inputs);
        assert!(inputs[0].shape.is_empty());
    }

    #[test]
    fn optional_inputs_may_be_left_out_and_reshape_applies_after_the_batch_dimension() {
        let schema = ModelSchema::from_config(&config(4)).expect("schema");
        let mut ok = request(vec![Tensor::from_slice("A", vec![2, 4], &[0f32; 8])]);
        schema.validate(&ok).expect("valid without the optional input");
        assert_eq!(ok.inputs[0].shape, vec![2, 4], "validation leaves the client's shape");
        schema.reshape(&mut ok.inputs);
        assert_eq!(ok.inputs[0].shape, vec![2, 2, 2], "batch kept, then the reshape");
        assert_eq!(schema.public_shape(&schema.inputs[1]), vec![-1, -1]);
    }

    #[test]
    fn a_missing_required_input_names_the_range_when_some_are_optional() {
        let schema = ModelSchema::from_config(&config(0)).expect("schema");
        let missing = request(vec![Tensor::from_slice("B", vec![1], &[0f32])]);
        let message = schema.validate(&missing).expect_err("A is required").to_string();
        assert!(message.contains("expected number of inputs between 1 and 2 but got 1 inputs for model 'm'"), "{message}");
        assert!(message.contains("missing required input(s) ['A']"), "{message}");
        assert!(message.starts_with("[request id: <id_unknown>] "), "{message}");
    }

    #[test]
    fn zero_element_tensors_are_valid() {
        let schema = ModelSchema::from_config(&config(0)).expect("schema");
        let empty = request(vec![Tensor::from_slice("A", vec![4], &[0f32; 4]), Tensor::from_slice::<f32>("B", vec![0], &[])]);
        schema.validate(&empty).expect("a zero-element optional input is fine");
    }

    /// Past 64 inputs the seen set is a vector instead of a bit mask: both must find duplicates
    /// and missing inputs alike.
    #[test]
    fn duplicates_and_missing_inputs_are_found_with_more_than_64_inputs() {
        for count in [3usize, 64, 65, 130] {
            let input = |i: usize| ModelInput {
                name: format!("I{i}"),
                data_type: DataType::Fp32.to_config() as i32,
                dims: vec![1],
                ..Default::default()
            };
            let config = ModelConfig { name: "wide".into(), input: (0..count).map(input).collect(), ..Default::default() };
            let schema = ModelSchema::from_config(&config).expect("schema");
            let tensor = |i: usize| Tensor::from_slice(format!("I{i}"), vec![1], &[0f32]);

            let all = request((0..count).rev().map(tensor).collect());
            schema.validate(&all).expect("every input once, in any order");

            let last = count - 1;
            let twice = request((0..count).map(tensor).chain([tensor(last)]).collect());
            let message = schema.validate(&twice).expect_err("a duplicate").to_string();
            assert!(message.contains(&format!("input 'I{last}' already exists in request")), "{count}: {message}");

            let short = request((0..last).map(tensor).collect());
            let message = schema.validate(&short).expect_err("one missing").to_string();
            assert!(message.contains(&format!("missing required input(s) ['I{last}']")), "{count}: {message}");
        }
    }
}
