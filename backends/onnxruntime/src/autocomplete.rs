//! Triton's auto-complete for ONNX models: what `config.pbtxt` leaves out (inputs, outputs,
//! `max_batch_size`, the platform, the dynamic batcher) comes from the model's own signature, and
//! what it states must agree with it.

use tritium_proto::inference::model_config::SchedulingChoice;
use tritium_proto::inference::{
    DataType as ConfigDataType, ModelConfig, ModelDynamicBatching, ModelInput, ModelOutput, ModelTensorReshape,
};
use tritium_tensor::DataType;

/// One input or output as the ONNX graph declares it. A dimension the graph leaves symbolic or
/// unknown is -1.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TensorSpec {
    pub name: String,
    pub datatype: DataType,
    pub dims: Vec<i64>,
}

/// The inputs and outputs of an ONNX graph (initializers are not inputs).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Signature {
    pub inputs: Vec<TensorSpec>,
    pub outputs: Vec<TensorSpec>,
}

impl Signature {
    /// Whether every input and output has a variable first dimension: only then can requests be
    /// stacked along it.
    pub fn batches(&self) -> bool {
        self.inputs.iter().chain(&self.outputs).all(|t| t.dims.first() == Some(&-1))
    }
}

/// Fills in `config` from `signature`, as Triton's onnxruntime backend does: only when the config
/// lists no inputs or no outputs, and then only that side, with every tensor of the model.
/// `default_max_batch_size` is `--backend-config=onnxruntime,default-max-batch-size=N`.
pub fn complete(config: &mut ModelConfig, signature: &Signature, default_max_batch_size: i32) -> Result<(), String> {
    // As in Triton, batch inputs count as inputs the config gives.
    if (!config.input.is_empty() || !config.batch_input.is_empty()) && !config.output.is_empty() {
        return Ok(());
    }
    let batches = signature.batches();
    if batches && config.max_batch_size == 0 {
        config.max_batch_size = default_max_batch_size.max(0);
    } else if !batches && config.max_batch_size != 0 {
        return Err(format!(
            "autofill failed for model '{}': model does not support batching while non-zero max_batch_size is specified",
            config.name
        ));
    }
    if batches && config.max_batch_size > 1 && config.scheduling_choice.is_none() {
        config.scheduling_choice = Some(SchedulingChoice::DynamicBatching(ModelDynamicBatching::default()));
    }
    let batching = config.max_batch_size > 0;
    // A tensor with no dims left once the batch dim is taken is [1], reshaped to a scalar.
    let config_dims = |spec: &TensorSpec| -> (Vec<i64>, Option<ModelTensorReshape>) {
        let dims = if batching { spec.dims[1..].to_vec() } else { spec.dims.clone() };
        match (dims.is_empty(), batching) {
            (true, true) => (vec![1], Some(ModelTensorReshape { shape: vec![] })),
            (true, false) => (vec![1], None),
            (false, _) => (dims, None),
        }
    };
    let (mut server_inputs, server_outputs) = sequence_tensors(config);
    server_inputs.extend(batch_input_targets(config));
    if config.input.is_empty() {
        config.input = signature
            .inputs
            .iter()
            .filter(|spec| !server_inputs.contains(&spec.name))
            .map(|spec| {
                let (dims, reshape) = config_dims(spec);
                ModelInput { name: spec.name.clone(), data_type: config_type(spec.datatype), dims, reshape, ..Default::default() }
            })
            .collect();
    }
    if config.output.is_empty() {
        config.output = signature
            .outputs
            .iter()
            .filter(|spec| !server_outputs.contains(&spec.name))
            .map(|spec| {
                let (dims, reshape) = config_dims(spec);
                ModelOutput {
                    name: spec.name.clone(),
                    data_type: config_type(spec.datatype),
                    dims,
                    reshape,
                    ..Default::default()
                }
            })
            .collect();
    }
    Ok(())
}

/// The tensors the sequence batcher fills in (control inputs, state inputs) and takes back (state
/// outputs): model tensors that are not the client's, so not the config's inputs and outputs.
fn sequence_tensors(config: &ModelConfig) -> (Vec<String>, Vec<String>) {
    let Some(SchedulingChoice::SequenceBatching(batching)) = &config.scheduling_choice else { return Default::default() };
    let controls = batching.control_input.iter().map(|c| c.name.clone());
    let inputs = controls.chain(batching.state.iter().map(|s| s.input_name.clone())).collect();
    (inputs, batching.state.iter().map(|s| s.output_name.clone()).collect())
}

/// The model inputs the server makes for each batch (`batch_input` targets).
fn batch_input_targets(config: &ModelConfig) -> impl Iterator<Item = String> + '_ {
    config.batch_input.iter().flat_map(|b| b.target_name.iter().cloned())
}

fn config_type(datatype: DataType) -> i32 {
    datatype.to_config() as i32
}

/// Triton's load-time checks of a config against the model it names: every required model
/// input is in the config, the config names no tensor the model lacks, and types and shapes agree.
/// A tensor with a `reshape` is compared by that shape (what the model sees; the core reshapes
/// requests from `dims` and outputs back to it). A ragged input is one flat tensor to the model
/// (`[-1]`); each batch input target must be a model input of the batch input's datatype; a batch
/// output target's shape is not compared.
pub fn check(config: &ModelConfig, signature: &Signature) -> Result<(), String> {
    let model = &config.name;
    let optional = config.input.iter().filter(|i| i.optional).count();
    let (server_inputs, _) = sequence_tensors(config);
    let expected = config.input.len() + server_inputs.len() + batch_input_targets(config).count();
    if expected - optional != signature.inputs.len() {
        return Err(format!(
            "unable to load model '{model}', configuration expects {expected} inputs, model provides {}",
            signature.inputs.len()
        ));
    }
    for name in &server_inputs {
        find(&signature.inputs, name, "input")?;
    }
    for batch_input in &config.batch_input {
        for target in &batch_input.target_name {
            let spec = find(&signature.inputs, target, "input")?;
            check_datatype(model, "batch input", spec, batch_input.data_type)?;
        }
    }
    let batching = config.max_batch_size > 0;
    for input in &config.input {
        let spec = find(&signature.inputs, &input.name, "input")?;
        if input.allow_ragged_batch {
            check_datatype(model, "input", spec, input.data_type)?;
            check_ragged(model, spec)?;
            continue;
        }
        check_tensor(model, "input", spec, input.data_type, model_shape(&input.dims, &input.reshape), batching, true)?;
    }
    for output in &config.output {
        let spec = find(&signature.outputs, &output.name, "output")?;
        // A scattered batch output's shape need not match the model's, as in Triton.
        if config.batch_output.iter().any(|b| b.target_name.contains(&output.name)) {
            check_datatype(model, "output", spec, output.data_type)?;
            continue;
        }
        check_tensor(model, "output", spec, output.data_type, model_shape(&output.dims, &output.reshape), batching, false)?;
    }
    Ok(())
}

/// The shape the model sees of a config tensor: its `reshape` if it has one (empty: a scalar).
fn model_shape<'c>(dims: &'c [i64], reshape: &'c Option<ModelTensorReshape>) -> &'c [i64] {
    reshape.as_ref().map_or(dims, |r| &r.shape)
}

fn find<'s>(specs: &'s [TensorSpec], name: &str, kind: &str) -> Result<&'s TensorSpec, String> {
    specs.iter().find(|s| s.name == name).ok_or_else(|| {
        let mut allowed: Vec<&str> = specs.iter().map(|s| s.name.as_str()).collect();
        allowed.sort_unstable();
        format!("unexpected inference {kind} '{name}', allowed {kind}s are: {}", allowed.join(", "))
    })
}

fn shape(dims: &[i64]) -> String {
    format!("[{}]", dims.iter().map(i64::to_string).collect::<Vec<_>>().join(","))
}

fn check_datatype(model: &str, kind: &str, spec: &TensorSpec, data_type: i32) -> Result<(), String> {
    if DataType::from_config(data_type) == Some(spec.datatype) {
        return Ok(());
    }
    Err(format!(
        // The model side in the server's names, as Triton prints it: strings are TYPE_BYTES.
        "unable to load model '{model}', configuration expects datatype {} for {kind} '{}', model provides TYPE_{}",
        ConfigDataType::try_from(data_type).map_or("TYPE_INVALID", |t| t.as_str_name()),
        spec.name,
        spec.datatype.kserve_name()
    ))
}

/// Triton's onnxruntime backend concatenates a ragged input's requests into one 1-D tensor, so
/// the model must take `[-1]`. Its words, double space too.
fn check_ragged(model: &str, spec: &TensorSpec) -> Result<(), String> {
    let name = &spec.name;
    if spec.dims != [-1] {
        return Err(format!(
            "unable to load model '{model}', configuration expects model provides input with shape [-1]  for ragged input \
             '{name}', model provides {}",
            shape(&spec.dims)
        ));
    }
    Ok(())
}

fn check_tensor(
    model: &str,
    kind: &str,
    spec: &TensorSpec,
    data_type: i32,
    dims: &[i64],
    batching: bool,
    wildcard: bool,
) -> Result<(), String> {
    let name = &spec.name;
    check_datatype(model, kind, spec, data_type)?;
    if batching && spec.dims.first() != Some(&-1) {
        return Err(format!(
            "model '{model}', tensor '{name}': for the model to support batching the shape should have at least 1 dimension and \
             the first dimension must be -1; but shape expected by the model is {}",
            shape(&spec.dims)
        ));
    }
    let model_dims = if batching { &spec.dims[1..] } else { &spec.dims[..] };
    // A scalar is [1] in a config (reshaped to []).
    let stated: &[i64] = if model_dims.is_empty() && dims == [1] { &[] } else { dims };
    let agree = stated.len() == model_dims.len() && stated.iter().zip(model_dims).all(|(&c, &m)| c == m || (wildcard && m == -1));
    if !agree {
        let complete = if batching { [&[-1], dims].concat() } else { dims.to_vec() };
        let explanation = if batching {
            format!(
                "{} dimensions (an initial batch dimension because max_batch_size > 0 followed by the explicit tensor shape, \
                 making complete shape {})",
                complete.len(),
                shape(&complete)
            )
        } else {
            format!("{} dimensions (shape {})", dims.len(), shape(dims))
        };
        return Err(format!(
            "model '{model}', tensor '{name}': the model expects {} dimensions (shape {}) but the model configuration specifies \
             {explanation}",
            spec.dims.len(),
            shape(&spec.dims)
        ));
    }
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn spec(name: &str, datatype: DataType, dims: &[i64]) -> TensorSpec {
        TensorSpec { name: name.into(), datatype, dims: dims.to_vec() }
    }

    fn cnn() -> Signature {
        Signature {
            inputs: vec![spec("data", DataType::Fp32, &[-1, 3, 224, 224])],
            outputs: vec![spec("prob", DataType::Fp32, &[-1, 1000])],
        }
    }

    fn empty(name: &str) -> ModelConfig {
        ModelConfig { name: name.into(), ..Default::default() }
    }

    fn input(name: &str, data_type: ConfigDataType, dims: Vec<i64>) -> ModelInput {
        ModelInput { name: name.into(), data_type: data_type as i32, dims, ..Default::default() }
    }

    #[test]
    fn an_empty_config_gets_the_models_signature_batching_and_the_dynamic_batcher() {
        let mut config = empty("cnn");
        complete(&mut config, &cnn(), 4).unwrap();
        assert_eq!(config.max_batch_size, 4);
        assert_eq!(config.input[0].name, "data");
        assert_eq!(config.input[0].data_type, ConfigDataType::TypeFp32 as i32);
        assert_eq!(config.input[0].dims, [3, 224, 224]);
        assert_eq!(config.output[0].dims, [1000]);
        assert!(matches!(config.scheduling_choice, Some(SchedulingChoice::DynamicBatching(_))));
        check(&config, &cnn()).unwrap();
    }

    #[test]
    fn a_fixed_first_dimension_means_no_batching_and_a_stated_batch_size_fails() {
        let fixed =
            Signature { inputs: vec![spec("x", DataType::Int64, &[1, -1])], outputs: vec![spec("y", DataType::Int64, &[1])] };
        let mut config = empty("fixed");
        complete(&mut config, &fixed, 4).unwrap();
        assert_eq!(config.max_batch_size, 0);
        assert_eq!(config.input[0].dims, [1, -1]);
        assert!(config.scheduling_choice.is_none());
        let error = complete(&mut ModelConfig { max_batch_size: 8, ..empty("fixed") }, &fixed, 4).unwrap_err();
        assert_eq!(
            error,
            "autofill failed for model 'fixed': model does not support batching while non-zero max_batch_size is specified"
        );
    }

    #[test]
    fn a_stated_max_batch_size_is_kept_one_gets_no_batcher_and_a_default_of_zero_turns_batching_off() {
        let mut config = ModelConfig { max_batch_size: 1, ..empty("cnn") };
        complete(&mut config, &cnn(), 4).unwrap();
        assert_eq!(config.max_batch_size, 1);
        assert!(config.scheduling_choice.is_none());
        let mut config = empty("cnn");
        complete(&mut config, &cnn(), 0).unwrap();
        assert_eq!(config.max_batch_size, 0);
        assert_eq!(config.input[0].dims, [-1, 3, 224, 224]);
    }

    #[test]
    fn a_rank_one_tensor_of_a_batching_model_is_one_element_reshaped_to_a_scalar() {
        let labels =
            Signature { inputs: vec![spec("x", DataType::Fp32, &[-1, 4])], outputs: vec![spec("label", DataType::Int64, &[-1])] };
        let mut config = empty("clf");
        complete(&mut config, &labels, 4).unwrap();
        assert_eq!(config.output[0].dims, [1]);
        assert_eq!(config.output[0].reshape, Some(ModelTensorReshape { shape: vec![] }));
        check(&config, &labels).unwrap();
    }

    #[test]
    fn a_reshape_is_what_the_model_is_compared_with_batched_or_not() {
        let reshaped = |dims: Vec<i64>, shape: Vec<i64>| (dims, ModelTensorReshape { shape });
        let config =
            |max_batch_size: i32, given: (Vec<i64>, ModelTensorReshape), output: (Vec<i64>, ModelTensorReshape)| ModelConfig {
                max_batch_size,
                input: vec![ModelInput { reshape: Some(given.1), ..input("data_0", ConfigDataType::TypeFp32, given.0) }],
                output: vec![ModelOutput {
                    name: "fc6_1".into(),
                    data_type: ConfigDataType::TypeFp32 as i32,
                    dims: output.0,
                    reshape: Some(output.1),
                    ..Default::default()
                }],
                ..empty("densenet_onnx")
            };
        // Triton's quickstart densenet_onnx: a fixed batch of one inside the model.
        let densenet = Signature {
            inputs: vec![spec("data_0", DataType::Fp32, &[1, 3, 224, 224])],
            outputs: vec![spec("fc6_1", DataType::Fp32, &[1, 1000, 1, 1])],
        };
        let quickstart = config(0, reshaped(vec![3, 224, 224], vec![1, 3, 224, 224]), reshaped(vec![1000], vec![1, 1000, 1, 1]));
        check(&quickstart, &densenet).unwrap();
        let mut unreshaped = quickstart.clone();
        unreshaped.input[0].reshape = None;
        assert!(check(&unreshaped, &densenet).unwrap_err().contains("the model expects 4 dimensions (shape [1,3,224,224])"));
        let mut wrong_output = quickstart.clone();
        wrong_output.output[0].reshape = Some(ModelTensorReshape { shape: vec![1, 1000] });
        assert_eq!(
            check(&wrong_output, &densenet).unwrap_err(),
            "model 'densenet_onnx', tensor 'fc6_1': the model expects 4 dimensions (shape [1,1000,1,1]) but the model \
             configuration specifies 2 dimensions (shape [1,1000])"
        );
        // Batched: the batch dimension, then the reshape.
        let batched = Signature {
            inputs: vec![spec("data_0", DataType::Fp32, &[-1, 3, 224, 224])],
            outputs: vec![spec("fc6_1", DataType::Fp32, &[-1, 1000, 1, 1])],
        };
        let config8 = config(8, reshaped(vec![3 * 224 * 224], vec![3, 224, 224]), reshaped(vec![1000], vec![1000, 1, 1]));
        check(&config8, &batched).unwrap();
        // An empty reshape is a scalar per batch row.
        let rows = Signature {
            inputs: vec![spec("data_0", DataType::Fp32, &[-1])],
            outputs: vec![spec("fc6_1", DataType::Fp32, &[-1])],
        };
        check(&config(4, reshaped(vec![1], vec![]), reshaped(vec![1], vec![])), &rows).unwrap();
    }

    #[test]
    fn only_the_missing_side_is_filled_and_a_full_config_is_left_alone() {
        let mut config = ModelConfig {
            max_batch_size: 8,
            input: vec![input("data", ConfigDataType::TypeFp32, vec![3, 224, 224])],
            ..empty("cnn")
        };
        complete(&mut config, &cnn(), 4).unwrap();
        assert_eq!(config.output.len(), 1);
        assert_eq!(config.max_batch_size, 8);
        let mut full = config.clone();
        full.max_batch_size = 0;
        complete(&mut full, &cnn(), 4).unwrap();
        assert_eq!(full.max_batch_size, 0, "inputs and outputs given: nothing is completed");
    }

    #[test]
    fn a_config_that_disagrees_with_the_model_fails_the_load_in_tritons_words() {
        let two_inputs = Signature {
            inputs: vec![spec("a", DataType::Fp32, &[-1, 4]), spec("b", DataType::Int32, &[-1, 4])],
            outputs: vec![spec("y", DataType::Fp32, &[-1, 4])],
        };
        let with_inputs = |inputs: Vec<ModelInput>| ModelConfig {
            max_batch_size: 8,
            input: inputs,
            output: vec![ModelOutput {
                name: "y".into(),
                data_type: ConfigDataType::TypeFp32 as i32,
                dims: vec![4],
                ..Default::default()
            }],
            ..empty("m")
        };
        let a = || input("a", ConfigDataType::TypeFp32, vec![4]);
        check(&with_inputs(vec![a(), input("b", ConfigDataType::TypeInt32, vec![4])]), &two_inputs).unwrap();
        let cases = [
            (vec![a()], "unable to load model 'm', configuration expects 1 inputs, model provides 2"),
            (
                vec![a(), input("b", ConfigDataType::TypeInt64, vec![4])],
                "unable to load model 'm', configuration expects datatype TYPE_INT64 for input 'b', model provides TYPE_INT32",
            ),
            (
                vec![a(), input("c", ConfigDataType::TypeInt32, vec![4])],
                "unexpected inference input 'c', allowed inputs are: a, b",
            ),
            (
                vec![a(), input("b", ConfigDataType::TypeInt32, vec![4, 1])],
                "model 'm', tensor 'b': the model expects 2 dimensions (shape [-1,4]) but the model configuration specifies 3 \
                 dimensions (an initial batch dimension because max_batch_size > 0 followed by the explicit tensor shape, making \
                 complete shape [-1,4,1])",
            ),
        ];
        for (inputs, expected) in cases {
            assert_eq!(check(&with_inputs(inputs), &two_inputs).unwrap_err(), expected);
        }
        let fixed =
            Signature { inputs: vec![spec("x", DataType::Fp32, &[1, 3])], outputs: vec![spec("y", DataType::Fp32, &[1, 3])] };
        let config = ModelConfig {
            max_batch_size: 2,
            input: vec![input("x", ConfigDataType::TypeFp32, vec![3])],
            output: vec![ModelOutput {
                name: "y".into(),
                data_type: ConfigDataType::TypeFp32 as i32,
                dims: vec![3],
                ..Default::default()
            }],
            ..empty("f")
        };
        let error = check(&config, &fixed).unwrap_err();
        assert!(error.ends_with("the first dimension must be -1; but shape expected by the model is [1,3]"), "{error}");
    }

    #[test]
    fn a_ragged_input_is_flat_to_the_model_and_batch_inputs_are_model_inputs() {
        use tritium_proto::inference::BatchInput;
        use tritium_proto::inference::batch_input::Kind;
        let segments = Signature {
            inputs: vec![spec("INPUT", DataType::Fp32, &[-1]), spec("INDEX", DataType::Int32, &[-1])],
            outputs: vec![spec("SUM", DataType::Fp32, &[-1, 1])],
        };
        let index = |data_type: ConfigDataType| BatchInput {
            kind: Kind::BatchAccumulatedElementCount as i32,
            target_name: vec!["INDEX".into()],
            data_type: data_type as i32,
            source_input: vec!["INPUT".into()],
        };
        let ragged = ModelInput { allow_ragged_batch: true, ..input("INPUT", ConfigDataType::TypeFp32, vec![-1]) };
        let config = ModelConfig {
            max_batch_size: 8,
            input: vec![ragged],
            batch_input: vec![index(ConfigDataType::TypeInt32)],
            output: vec![ModelOutput {
                name: "SUM".into(),
                data_type: ConfigDataType::TypeFp32 as i32,
                dims: vec![1],
                ..Default::default()
            }],
            ..empty("m")
        };
        check(&config, &segments).unwrap();
        let mut completed = ModelConfig { output: vec![], ..config.clone() };
        complete(&mut completed, &segments, 4).unwrap();
        assert_eq!(completed.output.len(), 1);
        let mut inputs_only = ModelConfig { input: vec![], output: vec![], ..config.clone() };
        complete(&mut inputs_only, &segments, 4).unwrap();
        assert_eq!(inputs_only.input.iter().map(|i| i.name.as_str()).collect::<Vec<_>>(), ["INPUT"], "INDEX is the server's");

        let error = |config: ModelConfig| check(&config, &segments).unwrap_err();
        assert_eq!(
            error(ModelConfig { batch_input: vec![], ..config.clone() }),
            "unable to load model 'm', configuration expects 1 inputs, model provides 2"
        );
        assert_eq!(
            error(ModelConfig { batch_input: vec![index(ConfigDataType::TypeFp32)], ..config.clone() }),
            "unable to load model 'm', configuration expects datatype TYPE_FP32 for batch input 'INDEX', model provides TYPE_INT32"
        );
        // A scattered batch output: [-1] in the model, [-1] after the batch dimension in the config.
        let doubling =
            Signature { inputs: vec![spec("INPUT", DataType::Fp32, &[-1])], outputs: vec![spec("OUT", DataType::Fp32, &[-1])] };
        let scattered = ModelConfig {
            batch_input: vec![],
            output: vec![ModelOutput {
                name: "OUT".into(),
                data_type: ConfigDataType::TypeFp32 as i32,
                dims: vec![-1],
                ..Default::default()
            }],
            batch_output: vec![tritium_proto::inference::BatchOutput {
                target_name: vec!["OUT".into()],
                kind: 0,
                source_input: vec!["INPUT".into()],
            }],
            ..config.clone()
        };
        check(&scattered, &doubling).unwrap();
        let unscattered = ModelConfig { batch_output: vec![], ..scattered };
        assert!(check(&unscattered, &doubling).unwrap_err().contains("the model expects 1 dimensions"));
        let two_dims =
            Signature { inputs: vec![spec("INPUT", DataType::Fp32, &[-1, 4]), segments.inputs[1].clone()], ..segments };
        assert_eq!(
            check(&config, &two_dims).unwrap_err(),
            "unable to load model 'm', configuration expects model provides input with shape [-1]  for ragged input 'INPUT', \
             model provides [-1,4]"
        );
    }
}
