//! `config.pbtxt` and Triton's JSON config: parsing with the real protobuf text-format and JSON
//! mappings (through `prost-reflect` and the compiled-in descriptor set), rendering back to JSON,
//! and the checks Triton applies before a model may load.

use std::collections::HashSet;
use std::sync::OnceLock;

use prost_reflect::{DescriptorPool, DeserializeOptions, DynamicMessage, MessageDescriptor, SerializeOptions};
use tritium_proto::inference::model_version_policy::{Latest, PolicyChoice};
use tritium_proto::inference::{DataType, ModelConfig, ModelTensorReshape, ModelVersionPolicy};

use super::RepositoryError;
use super::pbtxt::{check_nesting, insert_list_colons};

const MODEL_CONFIG: &str = "inference.ModelConfig";

/// The `inference.ModelConfig` descriptor, decoded once from [`tritium_proto::FILE_DESCRIPTOR_SET`].
pub(crate) fn model_config_descriptor() -> Result<MessageDescriptor, RepositoryError> {
    static DESCRIPTOR: OnceLock<Result<MessageDescriptor, String>> = OnceLock::new();
    DESCRIPTOR
        .get_or_init(|| {
            let pool = DescriptorPool::decode(tritium_proto::FILE_DESCRIPTOR_SET).map_err(|e| e.to_string())?;
            pool.get_message_by_name(MODEL_CONFIG).ok_or_else(|| format!("message '{MODEL_CONFIG}' missing"))
        })
        .clone()
        .map_err(|reason| RepositoryError::Schema { reason })
}

fn parse_error(reason: impl std::fmt::Display) -> RepositoryError {
    RepositoryError::ConfigParse { model: String::new(), reason: reason.to_string() }
}

fn to_model_config(message: &DynamicMessage) -> Result<ModelConfig, RepositoryError> {
    message.transcode_to::<ModelConfig>().map_err(parse_error)
}

/// Parses protobuf text format (the contents of `config.pbtxt`) into a [`ModelConfig`].
///
/// Accepts the colon-less message lists Triton's examples use (`input [ { ... } ]`), which the
/// text-format spec allows and `prost-reflect` alone does not (see `pbtxt.rs`).
///
/// Nesting deeper than 100 levels is a parse error rather than a stack overflow (see `pbtxt.rs`).
///
/// Errors leave the model name empty; callers that know it add it with
/// [`RepositoryError::with_model`].
pub fn parse_config_text(text: &str) -> Result<ModelConfig, RepositoryError> {
    check_nesting(text).map_err(parse_error)?;
    let text = insert_list_colons(text);
    let message = DynamicMessage::parse_text_format(model_config_descriptor()?, &text).map_err(parse_error)?;
    to_model_config(&message)
}

/// Parses Triton's JSON form of a config, as sent in `RepositoryModelLoad`'s `config` parameter.
///
/// This is the protobuf JSON mapping: enums by name (`"TYPE_FP32"`) or number, 64-bit integers as
/// numbers or strings, field names in `snake_case` or `lowerCamelCase`. Unknown fields are
/// rejected, as Triton's parser does.
pub fn parse_config_json(json: &str) -> Result<ModelConfig, RepositoryError> {
    let mut deserializer = serde_json::Deserializer::from_str(json);
    let message =
        DynamicMessage::deserialize_with_options(model_config_descriptor()?, &mut deserializer, &DeserializeOptions::new())
            .map_err(parse_error)?;
    deserializer.end().map_err(parse_error)?;
    to_model_config(&message)
}

/// Renders a config as Triton does for its config endpoints: proto field names, enums by name,
/// every scalar and list printed even when default, 64-bit integers as JSON numbers.
pub fn config_to_json(config: &ModelConfig) -> Result<serde_json::Value, RepositoryError> {
    let mut message = DynamicMessage::new(model_config_descriptor()?);
    message.transcode_from(config).map_err(|e| RepositoryError::Schema { reason: e.to_string() })?;
    let options = SerializeOptions::new().use_proto_field_name(true).skip_default_fields(false).stringify_64_bit_integers(false);
    message
        .serialize_with_options(serde_json::value::Serializer, &options)
        .map_err(|e| RepositoryError::Schema { reason: e.to_string() })
}

/// [`config_to_json`] as a compact string, for logs and tests.
pub fn render_config_json(config: &ModelConfig) -> Result<String, RepositoryError> {
    Ok(config_to_json(config)?.to_string())
}

/// What Triton's core fills into every non-ensemble config once its backend has completed it:
/// one CPU instance group named after the model when there is none (a group without a name
/// gets `<model>_<index>`, without a count 1, AUTO becomes CPU), and the default optimization
/// policy (pinned input and output memory on).
pub fn fill_core_defaults(config: &mut ModelConfig) {
    use tritium_proto::inference::model_instance_group::Kind;
    use tritium_proto::inference::model_optimization_policy::PinnedMemoryBuffer;
    use tritium_proto::inference::{ModelInstanceGroup, ModelOptimizationPolicy};
    if config.instance_group.is_empty() {
        config.instance_group.push(ModelInstanceGroup { name: config.name.clone(), ..Default::default() });
    }
    let model = config.name.clone();
    for (index, group) in config.instance_group.iter_mut().enumerate() {
        if group.name.is_empty() {
            group.name = format!("{model}_{index}");
        }
        if group.kind == Kind::Auto as i32 {
            group.kind = Kind::Cpu as i32;
        }
        if group.count < 1 {
            group.count = 1;
        }
    }
    if config.optimization.is_none() {
        config.optimization = Some(ModelOptimizationPolicy {
            input_pinned_memory: Some(PinnedMemoryBuffer { enable: true }),
            output_pinned_memory: Some(PinnedMemoryBuffer { enable: true }),
            ..Default::default()
        });
    }
}

/// Normalizes and validates the config of the model in folder `name`.
///
/// Fills an empty `name` and a missing `version_policy` (latest 1, Triton's default); rejects a
/// different name, a negative `max_batch_size`, a `latest` policy of zero versions, and inputs or
/// outputs without a name, with a repeated name, without a valid `data_type`, without `dims`, with
/// a dimension other than -1 or a positive size, or with a `reshape` that cannot hold what `dims`
/// holds.
pub fn normalize_config(name: &str, mut config: ModelConfig) -> Result<ModelConfig, RepositoryError> {
    if config.name.is_empty() {
        config.name = name.to_string();
    } else if config.name != name {
        return Err(RepositoryError::NameMismatch { dir: name.to_string(), name: config.name });
    }
    let invalid = |reason: String| RepositoryError::InvalidConfig { model: name.to_string(), reason };

    if config.max_batch_size < 0 {
        return Err(invalid(format!("'max_batch_size' must be non-negative value, got {}", config.max_batch_size)));
    }

    match config.version_policy.as_ref().and_then(|p| p.policy_choice.as_ref()) {
        None => {
            config.version_policy =
                Some(ModelVersionPolicy { policy_choice: Some(PolicyChoice::Latest(Latest { num_versions: 1 })) });
        }
        Some(PolicyChoice::Latest(latest)) if latest.num_versions == 0 => {
            return Err(invalid("'version_policy.latest.num_versions' must be at least 1".to_string()));
        }
        Some(_) => {}
    }

    fn reshape(r: &Option<ModelTensorReshape>) -> Option<&[i64]> {
        r.as_ref().map(|r| r.shape.as_slice())
    }
    let inputs = config.input.iter().map(|i| (i.name.as_str(), i.data_type, i.dims.as_slice(), reshape(&i.reshape)));
    check_tensors("model input", inputs).map_err(invalid)?;
    let outputs = config.output.iter().map(|o| (o.name.as_str(), o.data_type, o.dims.as_slice(), reshape(&o.reshape)));
    check_tensors("model output", outputs).map_err(invalid)?;
    Ok(config)
}

/// Triton's `ValidateIOShape` for one side (inputs or outputs); the error names the tensor and field.
type TensorShape<'a> = (&'a str, i32, &'a [i64], Option<&'a [i64]>);

fn check_tensors<'a>(kind: &str, tensors: impl Iterator<Item = TensorShape<'a>>) -> Result<(), String> {
    let mut seen = HashSet::new();
    for (index, (name, data_type, dims, reshape)) in tensors.enumerate() {
        if name.is_empty() {
            return Err(format!("{kind} {index} must specify 'name'"));
        }
        if !seen.insert(name) {
            return Err(format!("{kind} '{name}' is specified more than once"));
        }
        match DataType::try_from(data_type) {
            Ok(DataType::TypeInvalid) => return Err(format!("{kind} '{name}' must specify 'data_type'")),
            Err(_) => return Err(format!("{kind} '{name}' has unknown 'data_type' {data_type}")),
            Ok(_) => {}
        }
        if dims.is_empty() {
            return Err(format!("{kind} '{name}' must specify 'dims'"));
        }
        if let Some(dim) = dims.iter().find(|&&d| d != -1 && d < 1) {
            return Err(format!(
                "{kind} '{name}' dimension must be integer >= 1, or -1 to indicate a variable-size \
                 dimension, got {dim} in 'dims'"
            ));
        }
        if let Some(reshape) = reshape {
            check_reshape(dims, reshape).map_err(|why| format!("{kind} '{name}' {why}"))?;
        }
    }
    Ok(())
}

/// Triton's rules for `reshape`: positive sizes or -1; as many elements as `dims` (an empty
/// reshape, a scalar, for dims of one element); with variable-size dimensions, the same number of
/// them, and the fixed stretches between them of the same sizes (`[2,4,-1,6]` -> `[8,-1,1,6]`).
fn check_reshape(dims: &[i64], reshape: &[i64]) -> Result<(), String> {
    if reshape.iter().any(|&d| d != -1 && d < 1) {
        return Err("reshape dimensions must be integer >= 1, or -1 to indicate a variable-size dimension".to_string());
    }
    // Triton's element count: -1 when any dimension is variable, 0 for no dimensions.
    let count = |shape: &[i64]| -> i64 {
        if shape.contains(&-1) {
            -1
        } else if shape.is_empty() {
            0
        } else {
            shape.iter().fold(1i64, |n, &d| n.saturating_mul(d))
        }
    };
    let (dims_size, reshape_size) = (count(dims), count(reshape));
    if dims_size != reshape_size && (reshape_size != 0 || dims_size != 1) {
        return Err("has different size for dims and reshape".to_string());
    }
    if dims_size == -1 {
        let stretches = |shape: &[i64]| -> Vec<i64> {
            shape.split(|&d| d == -1).map(|run| run.iter().fold(1i64, |n, &d| n.saturating_mul(d))).collect()
        };
        let (from, to) = (stretches(dims), stretches(reshape));
        if from.len() != to.len() {
            return Err("has different number of variable-size dimensions for dims and reshape".to_string());
        }
        if from != to {
            return Err("has different size for dims and reshape".to_string());
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use tritium_proto::inference::model_config::SchedulingChoice;
    use tritium_proto::inference::model_version_policy::{All, Specific};

    const REALISTIC: &str = r#"
# A realistic config, as people write them for Triton.
name: "simple"
backend: "identity"
max_batch_size: 8   # batching on
input [
  {
    name: "INPUT0"
    data_type: TYPE_FP32
    dims: [ 16 ]
  },
  {
    name: "INPUT1"
    data_type: TYPE_STRING
    dims: [ -1, 4 ]
  }
]
output [ { name: "OUTPUT0", data_type: TYPE_FP32, dims: [ 16 ] } ]
output { name: "OUTPUT1" data_type: TYPE_INT64 dims: 2 dims: 3 }
instance_group [ { count: 2 kind: KIND_CPU } ]
dynamic_batching { }
version_policy: { specific { versions: [1, 3] } }
model_transaction_policy { decoupled: true }
parameters { key: "x" value { string_value: "y" } }
parameters: { key: "z", value: { string_value: "w" } }
"#;

    #[test]
    fn parses_a_realistic_config_pbtxt() {
        let config = parse_config_text(REALISTIC).expect("parses");
        assert_eq!(config.name, "simple");
        assert_eq!(config.backend, "identity");
        assert_eq!(config.max_batch_size, 8);
        let names: Vec<_> = config.input.iter().map(|i| i.name.as_str()).collect();
        assert_eq!(names, ["INPUT0", "INPUT1"]);
        assert_eq!(config.input[0].data_type, DataType::TypeFp32 as i32);
        assert_eq!(config.input[1].data_type, DataType::TypeString as i32);
        assert_eq!(config.input[1].dims, [-1, 4]);
        assert_eq!(config.output.len(), 2);
        assert_eq!(config.output[1].dims, [2, 3]);
        assert_eq!(config.output[1].data_type, DataType::TypeInt64 as i32);
        assert_eq!(config.instance_group.len(), 1);
        assert_eq!(config.instance_group[0].count, 2);
        assert!(matches!(config.scheduling_choice, Some(SchedulingChoice::DynamicBatching(_))));
        let policy = config.version_policy.as_ref().and_then(|p| p.policy_choice.clone());
        assert_eq!(policy, Some(PolicyChoice::Specific(Specific { versions: vec![1, 3] })));
        assert_eq!(config.model_transaction_policy.map(|p| p.decoupled), Some(true));
        assert_eq!(config.parameters.get("x").map(|p| p.string_value.as_str()), Some("y"));
        assert_eq!(config.parameters.get("z").map(|p| p.string_value.as_str()), Some("w"));
        let normalized = normalize_config("simple", config).expect("valid");
        assert_eq!(normalized.name, "simple");
    }

    #[test]
    fn rejects_garbage_text_with_a_clear_error() {
        let err = parse_config_text("name: \"m\"\nthis is { not a config").expect_err("fails").with_model("m");
        assert!(matches!(err, RepositoryError::ConfigParse { .. }), "{err:?}");
        let message = err.to_string();
        assert!(message.starts_with("failed to parse the configuration of model 'm': "), "{message}");
        let err = parse_config_text("max_batch_size: \"eight\"").expect_err("fails");
        assert_eq!(err.code(), tritium_proto::ErrorCode::InvalidArg);
        let err = parse_config_text("no_such_field: 1").expect_err("fails");
        assert!(err.to_string().contains("no_such_field"), "{err}");
        let err = parse_config_text("input { data_type: TYPE_FLOAT }").expect_err("fails");
        assert!(err.to_string().contains("TYPE_FLOAT"), "{err}");
    }

    #[test]
    fn parses_json_overrides() {
        let json = r#"{"name":"m","backend":"identity","max_batch_size":8,
            "input":[{"name":"INPUT0","data_type":"TYPE_FP32","dims":[16]}],
            "output":[{"name":"OUTPUT0","dataType":"TYPE_FP32","dims":["16", -1]}],
            "dynamic_batching":{},
            "versionPolicy":{"latest":{"num_versions":2}}}"#;
        let config = parse_config_json(json).expect("parses");
        assert_eq!(config.name, "m");
        assert_eq!(config.max_batch_size, 8);
        assert_eq!(config.input[0].dims, [16]);
        assert_eq!(config.input[0].data_type, DataType::TypeFp32 as i32);
        assert_eq!(config.output[0].dims, [16, -1]);
        assert_eq!(config.output[0].data_type, DataType::TypeFp32 as i32);
        assert!(matches!(config.scheduling_choice, Some(SchedulingChoice::DynamicBatching(_))));
        let policy = config.version_policy.and_then(|p| p.policy_choice);
        assert_eq!(policy, Some(PolicyChoice::Latest(Latest { num_versions: 2 })));

        for bad in ["{", r#"{"bogus":1}"#, r#"{"input":[{"data_type":"TYPE_NOPE"}]}"#, "{} trailing"] {
            let err = parse_config_json(bad).expect_err("fails");
            assert!(matches!(err, RepositoryError::ConfigParse { .. }), "{bad}: {err:?}");
        }
    }

    #[test]
    fn renders_json_like_triton_and_round_trips() {
        let config = normalize_config("simple", parse_config_text(REALISTIC).expect("parses")).expect("valid");
        let json = config_to_json(&config).expect("renders");
        assert_eq!(json["name"], "simple");
        assert_eq!(json["max_batch_size"], 8);
        assert_eq!(json["input"][0]["data_type"], "TYPE_FP32");
        assert_eq!(json["input"][1]["dims"], serde_json::json!([-1, 4]));
        assert_eq!(json["input"][0]["is_shape_tensor"], false);
        assert_eq!(json["model_transaction_policy"]["decoupled"], true);
        assert!(json.get("dynamic_batching").is_some());
        assert!(json.get("sequence_batching").is_none());
        let text = render_config_json(&config).expect("renders");
        assert_eq!(parse_config_json(&text).expect("round trip"), config);
    }

    #[test]
    fn normalize_fills_defaults() {
        let config = normalize_config("m", ModelConfig::default()).expect("valid");
        assert_eq!(config.name, "m");
        let policy = config.version_policy.and_then(|p| p.policy_choice);
        assert_eq!(policy, Some(PolicyChoice::Latest(Latest { num_versions: 1 })));
        let all = ModelConfig {
            version_policy: Some(ModelVersionPolicy { policy_choice: Some(PolicyChoice::All(All {})) }),
            ..Default::default()
        };
        let kept = normalize_config("m", all).expect("valid").version_policy.and_then(|p| p.policy_choice);
        assert_eq!(kept, Some(PolicyChoice::All(All {})));
    }

    fn invalid(text: &str) -> String {
        let config = parse_config_text(text).expect("parses");
        let err = normalize_config("m", config).expect_err("fails");
        assert_eq!(err.code(), tritium_proto::ErrorCode::InvalidArg, "{err}");
        err.to_string()
    }

    #[test]
    fn normalize_rejects_what_triton_rejects() {
        assert_eq!(
            invalid("name: \"other\""),
            "unexpected directory name 'm' for model 'other', directory name must equal model name"
        );
        assert_eq!(
            invalid("max_batch_size: -1"),
            "invalid configuration of model 'm': 'max_batch_size' must be non-negative value, got -1"
        );
        assert_eq!(
            invalid("input { data_type: TYPE_FP32 dims: 1 }"),
            "invalid configuration of model 'm': model input 0 must specify 'name'"
        );
        assert!(invalid("output { name: \"\" data_type: TYPE_FP32 dims: 1 }").contains("output 0 must specify 'name'"));
        let dup = "input { name: \"A\" data_type: TYPE_FP32 dims: 1 } input { name: \"A\" data_type: TYPE_FP32 dims: 1 }";
        assert!(invalid(dup).contains("input 'A' is specified more than once"));
        assert!(invalid("output { name: \"O\" dims: 1 }").contains("model output 'O' must specify 'data_type'"));
        assert!(invalid("output { name: \"O\" data_type: 99 dims: 1 }").contains("unknown 'data_type' 99"));
        assert!(invalid("input { name: \"I\" data_type: TYPE_FP32 }").contains("input 'I' must specify 'dims'"));
        let zero_dim = invalid("input { name: \"I\" data_type: TYPE_FP32 dims: [4, 0] }");
        let expected = "model input 'I' dimension must be integer >= 1, or -1 to indicate a variable-size dimension";
        assert!(zero_dim.ends_with(&format!("{expected}, got 0 in 'dims'")), "{zero_dim}");
        assert!(invalid("input { name: \"I\" data_type: TYPE_FP32 dims: [-2] }").contains("got -2 in 'dims'"));
        assert!(invalid("version_policy { latest { } }").contains("'version_policy.latest.num_versions'"));
        let same_name_both_sides =
            "input { name: \"T\" data_type: TYPE_FP32 dims: -1 } output { name: \"T\" data_type: TYPE_FP32 dims: -1 }";
        assert!(normalize_config("m", parse_config_text(same_name_both_sides).expect("parses")).is_ok());
    }

    #[test]
    fn a_reshape_must_hold_what_dims_hold() {
        let with = |dims: &str, reshape: &str| {
            let text = format!("input {{ name: \"I\" data_type: TYPE_FP32 dims: {dims} reshape {{ shape: {reshape} }} }}");
            normalize_config("m", parse_config_text(&text).expect("parses")).map(|_| ()).map_err(|e| e.to_string())
        };
        // Triton's quickstart densenet_onnx, a scalar, variable stretches that agree.
        for (dims, reshape) in [("[3,224,224]", "[1,3,224,224]"), ("[1]", "[]"), ("[2,4,-1,6]", "[8,-1,1,6]"), ("[-1]", "[-1,1]")]
        {
            assert_eq!(with(dims, reshape), Ok(()), "{dims} -> {reshape}");
        }
        let prefix = "invalid configuration of model 'm': model input 'I' ";
        for (dims, reshape, why) in [
            ("[3,224,224]", "[1,3,224]", "has different size for dims and reshape"),
            ("[2]", "[]", "has different size for dims and reshape"),
            ("[4,-1]", "[2,-1]", "has different size for dims and reshape"),
            ("[4,-1]", "[4]", "has different size for dims and reshape"),
            ("[-1,-1]", "[-1]", "has different number of variable-size dimensions for dims and reshape"),
            ("[4]", "[4,0]", "reshape dimensions must be integer >= 1, or -1 to indicate a variable-size dimension"),
        ] {
            assert_eq!(with(dims, reshape), Err(format!("{prefix}{why}")), "{dims} -> {reshape}");
        }
    }
}
