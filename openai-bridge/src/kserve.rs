//! The KServe v2 / Triton face of a language model, as Triton's vLLM backend and Dynamo's KServe
//! frontend shape it: a decoupled model with a `text_input` BYTES input, an optional `streaming`
//! BOOL input, and `text_output` / `finish_reason` BYTES outputs. Sampling options arrive as
//! request parameters named like the OpenAI fields (see
//! [`CompletionOptions::from_kserve_parameters`]).
//!
//! ```
//! use tritium_openai_bridge::kserve::{parse_infer_request, response_outputs};
//! use tritium_tensor::Tensor;
//! use tritium_backend_api::ParamValue;
//! use tritium_backend_api::llm::FinishReason;
//!
//! let inputs = [Tensor::from_byte_strings("text_input", vec![1], ["Hello"])];
//! let parameters = vec![("max_tokens".to_string(), ParamValue::Int64(8))];
//! let request = parse_infer_request("tiny", &inputs, &parameters)?;
//! assert_eq!((request.prompt.as_str(), request.streaming, request.options.max_tokens), ("Hello", false, Some(8)));
//!
//! let outputs = response_outputs(" world", Some(FinishReason::Length));
//! assert_eq!(outputs[1].byte_strings()?, [b"length"]);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use tritium_backend_api::Parameters;
use tritium_backend_api::llm::FinishReason;
use tritium_tensor::{DataType, Tensor};

use crate::BridgeError;
use crate::sampling::CompletionOptions;

pub const TEXT_INPUT: &str = "text_input";
pub const STREAMING: &str = "streaming";
/// Triton's vLLM backend calls the streaming flag `stream`; both are accepted.
pub const STREAM_ALIAS: &str = "stream";
/// Triton's vLLM backend takes sampling options as a JSON object in this BYTES input.
pub const SAMPLING_PARAMETERS: &str = "sampling_parameters";
/// Triton's vLLM backend input; accepted and ignored, since outputs never repeat the prompt.
pub const EXCLUDE_INPUT_IN_OUTPUT: &str = "exclude_input_in_output";
pub const TEXT_OUTPUT: &str = "text_output";
pub const FINISH_REASON: &str = "finish_reason";

/// Fills in the KServe signature of an LLM; the worker owns it, since it loads the model.
pub use tritium_backend_api::llm::complete_llm_config;

/// A KServe inference request for an LLM, parsed.
#[derive(Debug, Clone, PartialEq)]
pub struct KserveLlmRequest {
    pub prompt: String,
    /// One response per text delta (`true`) or one response with the whole text.
    pub streaming: bool,
    /// When `max_tokens` is `None`, the card's `default_completion_tokens` applies: 16 on
    /// Tritium's models (OpenAI's `/v1/completions` and Triton's vLLM backend), none on a Dynamo
    /// worker's (Dynamo sends none; its token budget fills it).
    pub options: CompletionOptions,
    /// Choices (the `n` parameter): `text_output` and `finish_reason` hold one element each.
    pub n: u32,
    /// Candidates generated (`best_of`, at least `n`): the `n` most likely are answered.
    pub best_of: u32,
}

/// Reads `text_input` (one BYTES element of shape `[1]` or `[1, 1]`, UTF-8), the optional
/// `streaming` BOOL and the sampling parameters. `sampling_parameters` (a JSON object input)
/// is read too; request parameters win over it.
pub fn parse_infer_request(model: &str, inputs: &[Tensor], parameters: &Parameters) -> Result<KserveLlmRequest, BridgeError> {
    let mut prompt = None;
    let mut streaming = false;
    let mut json_parameters = Parameters::new();
    for input in inputs {
        match input.name.as_str() {
            TEXT_INPUT => prompt = Some(single_string(input)?),
            STREAMING | STREAM_ALIAS => streaming = single_bool(input)?,
            // Triton's vLLM backend prepends the prompt to a non-streamed `text_output` when this is
            // false (its default); Tritium's `text_output` is the generated text alone, so it takes
            // `true` and refuses `false` rather than answering otherwise than asked.
            EXCLUDE_INPUT_IN_OUTPUT => {
                if !single_bool(input)? {
                    return Err(BridgeError::field(
                        EXCLUDE_INPUT_IN_OUTPUT,
                        format!(
                            "false (the prompt prepended to text_output) is not supported for model '{model}': its \
                             text_output is the generated text alone; send true or leave the input out"
                        ),
                    ));
                }
            }
            SAMPLING_PARAMETERS => json_parameters = sampling_parameters(&single_string(input)?)?,
            other => {
                return Err(BridgeError::field(
                    other,
                    format!("unexpected inference input for model '{model}'; it takes '{TEXT_INPUT}' and '{STREAMING}'"),
                ));
            }
        }
    }
    let prompt = prompt.ok_or_else(|| BridgeError::field(TEXT_INPUT, format!("the input is missing for model '{model}'")))?;
    json_parameters.extend(parameters.iter().cloned());
    let options = CompletionOptions::from_kserve_parameters(&json_parameters)?;
    let count = |field: &str| json_parameters.iter().rev().find(|(name, _)| name == field).map(|(_, value)| value);
    let n = count("n").map(|value| crate::sampling::param_choices("n", value)).transpose()?.unwrap_or(1);
    if n > 1 && streaming {
        return Err(BridgeError::field("n", "more than one choice is not supported with streaming"));
    }
    let best_of = count("best_of").map(|value| crate::sampling::param_choices("best_of", value)).transpose()?.unwrap_or(n);
    if best_of < n {
        return Err(BridgeError::field("best_of", format!("must be at least n ({n}), got {best_of}")));
    }
    if best_of > n && streaming {
        return Err(BridgeError::field("best_of", "best_of greater than n is not supported with streaming"));
    }
    options.validate()?;
    Ok(KserveLlmRequest { prompt, streaming, options, n, best_of })
}

fn single_element(input: &Tensor, expected: DataType) -> Result<&Tensor, BridgeError> {
    let name = input.name.as_str();
    if input.datatype != expected {
        return Err(BridgeError::field(
            name,
            format!("expected datatype {}, got {}", expected.kserve_name(), input.datatype.kserve_name()),
        ));
    }
    if !matches!(input.shape.as_slice(), [1] | [1, 1]) {
        return Err(BridgeError::field(name, format!("expected one element of shape [1] or [1,1], got {:?}", input.shape)));
    }
    input.validate().map_err(|e| BridgeError::field(name, e.to_string()))?;
    Ok(input)
}

fn single_string(input: &Tensor) -> Result<String, BridgeError> {
    let input = single_element(input, DataType::Bytes)?;
    let elements = input.byte_strings().map_err(|e| BridgeError::field(&input.name, e.to_string()))?;
    let [element] = elements.as_slice() else {
        return Err(BridgeError::field(&input.name, format!("expected one element, got {}", elements.len())));
    };
    std::str::from_utf8(element)
        .map(str::to_string)
        .map_err(|e| BridgeError::field(&input.name, format!("the text is not valid UTF-8: {e}")))
}

fn single_bool(input: &Tensor) -> Result<bool, BridgeError> {
    let input = single_element(input, DataType::Bool)?;
    let values = input.to_vec::<bool>().map_err(|e| BridgeError::field(&input.name, e.to_string()))?;
    Ok(values.first().copied().unwrap_or(false))
}

/// Turns a `sampling_parameters` JSON object into request parameters of the same names.
fn sampling_parameters(json: &str) -> Result<Parameters, BridgeError> {
    use serde_json::Value;
    use tritium_backend_api::ParamValue;
    let object: serde_json::Map<String, Value> = serde_json::from_str(json)
        .map_err(|e| BridgeError::field(SAMPLING_PARAMETERS, format!("expected a JSON object: {e}")))?;
    let mut parameters = Parameters::new();
    for (name, value) in object {
        let value = match value {
            Value::Null => continue,
            Value::Bool(b) => ParamValue::Bool(b),
            Value::Number(n) => match (n.as_i64(), n.as_u64(), n.as_f64()) {
                (Some(i), _, _) => ParamValue::Int64(i),
                (None, Some(u), _) => ParamValue::Uint64(u),
                (None, None, Some(d)) => ParamValue::Double(d),
                _ => return Err(BridgeError::field(format!("{SAMPLING_PARAMETERS}.{name}"), "unrepresentable number")),
            },
            Value::String(s) => ParamValue::String(s),
            // Lists (`stop`, `stop_token_ids`) travel as JSON text, as request parameters do.
            list @ Value::Array(_) => ParamValue::String(list.to_string()),
            Value::Object(_) => {
                return Err(BridgeError::field(format!("{SAMPLING_PARAMETERS}.{name}"), "nested objects are not supported"));
            }
        };
        parameters.push((name, value));
    }
    Ok(parameters)
}

/// The outputs of one response: `text_output` (the text, shape `[1]`) and `finish_reason`
/// (shape `[1]` with the reason once finished, shape `[0]` before).
pub fn response_outputs(text: &str, finish: Option<FinishReason>) -> Vec<Tensor> {
    let finish_reason = match finish {
        Some(reason) => Tensor::from_byte_strings(FINISH_REASON, vec![1], [reason.as_str()]),
        None => Tensor::from_byte_strings(FINISH_REASON, vec![0], Vec::<&str>::new()),
    };
    vec![Tensor::from_byte_strings(TEXT_OUTPUT, vec![1], [text]), finish_reason]
}

/// The outputs of `n` whole choices: element `i` of `text_output` and `finish_reason` is choice `i`'s.
pub fn choices_outputs(choices: &[(&str, FinishReason)]) -> Vec<Tensor> {
    let shape = vec![i64::try_from(choices.len()).unwrap_or(i64::MAX)];
    vec![
        Tensor::from_byte_strings(TEXT_OUTPUT, shape.clone(), choices.iter().map(|(text, _)| *text)),
        Tensor::from_byte_strings(FINISH_REASON, shape, choices.iter().map(|(_, reason)| reason.as_str())),
    ]
}

#[cfg(test)]
mod tests {
    use tritium_backend_api::ParamValue;

    use super::*;

    fn text(value: &str) -> Tensor {
        Tensor::from_byte_strings(TEXT_INPUT, vec![1], [value])
    }

    use tritium_proto::inference::{DataType as ConfigDataType, ModelConfig, ModelInput, ModelTransactionPolicy};

    fn field_of(error: BridgeError) -> String {
        match error {
            BridgeError::InvalidField { field, .. } => field,
            other => panic!("expected InvalidField, got {other:?}"),
        }
    }

    #[test]
    fn config_gets_the_llm_signature() {
        let mut config = ModelConfig { name: "tiny".into(), max_batch_size: 8, ..Default::default() };
        complete_llm_config(&mut config);
        let inputs: Vec<_> = config.input.iter().map(|i| (i.name.as_str(), i.data_type, i.dims.clone(), i.optional)).collect();
        assert_eq!(
            inputs,
            [
                (TEXT_INPUT, ConfigDataType::TypeString as i32, vec![1], false),
                (STREAMING, ConfigDataType::TypeBool as i32, vec![1], true),
                (SAMPLING_PARAMETERS, ConfigDataType::TypeString as i32, vec![1], true),
                (EXCLUDE_INPUT_IN_OUTPUT, ConfigDataType::TypeBool as i32, vec![1], true)
            ]
        );
        let outputs: Vec<_> = config.output.iter().map(|o| (o.name.as_str(), o.data_type, o.dims.clone())).collect();
        assert_eq!(
            outputs,
            [
                (TEXT_OUTPUT, ConfigDataType::TypeString as i32, vec![-1]),
                (FINISH_REASON, ConfigDataType::TypeString as i32, vec![-1])
            ]
        );
        assert_eq!(config.max_batch_size, 0);
        assert_eq!(config.model_transaction_policy, Some(ModelTransactionPolicy { decoupled: true }));

        let mut custom = ModelConfig { input: vec![ModelInput { name: "x".into(), ..Default::default() }], ..Default::default() };
        complete_llm_config(&mut custom);
        assert_eq!(custom.input.len(), 1);
        assert!(custom.output.is_empty());
        assert_eq!(custom.model_transaction_policy, Some(ModelTransactionPolicy { decoupled: true }));
    }

    #[test]
    fn requests_parse() {
        let streaming = Tensor::from_slice(STREAMING, vec![1], &[true]);
        let parameters = vec![
            ("temperature".to_string(), ParamValue::Double(0.0)),
            ("triton_enable_empty_final_response".to_string(), ParamValue::Bool(true)),
        ];
        let request = parse_infer_request("m", &[text("héllo"), streaming], &parameters).expect("valid");
        assert_eq!(request.prompt, "héllo");
        assert!(request.streaming);
        assert_eq!(request.options.temperature, Some(0.0));
        assert_eq!(request.options.max_tokens, None);

        let two_d = Tensor::from_byte_strings(TEXT_INPUT, vec![1, 1], ["x"]);
        let stream = Tensor::from_slice(STREAM_ALIAS, vec![1, 1], &[false]);
        let request = parse_infer_request("m", &[two_d, stream], &vec![]).expect("valid");
        assert_eq!(request.prompt, "x");
        assert!(!request.streaming);
    }

    #[test]
    fn exclude_input_in_output_is_taken_true_and_refused_false() {
        let exclude = |value: bool| Tensor::from_slice(EXCLUDE_INPUT_IN_OUTPUT, vec![1], &[value]);
        let request = parse_infer_request("m", &[text("a"), exclude(true)], &vec![]).expect("true is what it does");
        assert_eq!(request.prompt, "a");
        let error = parse_infer_request("m", &[text("a"), exclude(false)], &vec![]).expect_err("false");
        assert!(error.to_string().contains("the prompt prepended to text_output"), "{error}");
        assert_eq!(field_of(error), EXCLUDE_INPUT_IN_OUTPUT);
    }

    #[test]
    fn sampling_parameters_input_is_read_and_parameters_win() {
        let json = Tensor::from_byte_strings(
            SAMPLING_PARAMETERS,
            vec![1],
            [r#"{"max_tokens": 5, "temperature": 0.7, "stop": ["\n"], "top_p": null}"#],
        );
        let parameters = vec![("max_tokens".to_string(), ParamValue::Int64(9))];
        let request = parse_infer_request("m", &[text("a"), json], &parameters).expect("valid");
        assert_eq!(request.options.max_tokens, Some(9));
        assert_eq!(request.options.temperature, Some(0.7));
        assert_eq!(request.options.stop, vec!["\n".to_string()]);
    }

    #[test]
    fn bad_inputs_name_the_input() {
        let cases: Vec<(Vec<Tensor>, Parameters, &str)> = vec![
            (vec![], vec![], TEXT_INPUT),
            (vec![Tensor::from_byte_strings(TEXT_INPUT, vec![2], ["a", "b"])], vec![], TEXT_INPUT),
            (vec![Tensor::from_byte_strings(TEXT_INPUT, vec![1, 2], ["a", "b"])], vec![], TEXT_INPUT),
            (vec![Tensor::from_byte_strings(TEXT_INPUT, vec![1], [b"\xff\xfe".as_slice()])], vec![], TEXT_INPUT),
            (vec![Tensor::from_slice(TEXT_INPUT, vec![1], &[1i32])], vec![], TEXT_INPUT),
            (vec![Tensor::from_byte_strings(TEXT_INPUT, vec![1], ["a", "b"])], vec![], TEXT_INPUT),
            (vec![text("a"), Tensor::from_slice(STREAMING, vec![1], &[1i32])], vec![], STREAMING),
            (vec![text("a"), Tensor::from_slice(STREAMING, vec![2], &[true, false])], vec![], STREAMING),
            (vec![text("a"), Tensor::from_byte_strings("image", vec![1], ["x"])], vec![], "image"),
            (vec![text("a")], vec![("temperature".to_string(), ParamValue::Double(9.0))], "temperature"),
            (vec![text("a")], vec![("max_tokens".to_string(), ParamValue::String("many".into()))], "max_tokens"),
            (vec![text("a"), Tensor::from_byte_strings(SAMPLING_PARAMETERS, vec![1], ["[1]"])], vec![], SAMPLING_PARAMETERS),
        ];
        for (inputs, parameters, field) in cases {
            let error = parse_infer_request("m", &inputs, &parameters).expect_err(field);
            assert_eq!(field_of(error), field, "{inputs:?}");
        }
    }

    #[test]
    fn outputs_carry_the_finish_reason_only_at_the_end() {
        let outputs = response_outputs("Hi", None);
        assert_eq!(outputs[0].name, TEXT_OUTPUT);
        assert_eq!(outputs[0].shape, vec![1]);
        assert_eq!(outputs[0].byte_strings(), Ok(vec![&b"Hi"[..]]));
        assert_eq!(outputs[1].name, FINISH_REASON);
        assert_eq!(outputs[1].shape, vec![0]);
        assert_eq!(outputs[1].validate(), Ok(()));
        assert_eq!(outputs[1].byte_strings(), Ok(vec![]));

        let outputs = response_outputs("", Some(FinishReason::Stop));
        assert_eq!(outputs[0].byte_strings(), Ok(vec![&b""[..]]));
        assert_eq!(outputs[1].shape, vec![1]);
        assert_eq!(outputs[1].byte_strings(), Ok(vec![&b"stop"[..]]));
    }

    #[test]
    fn n_is_read_and_refused_with_streaming_or_zero() {
        let n = |value: u64| vec![("n".to_string(), ParamValue::Uint64(value))];
        assert_eq!(parse_infer_request("m", &[text("a")], &n(3)).expect("valid").n, 3);
        assert_eq!(parse_infer_request("m", &[text("a")], &vec![]).expect("valid").n, 1);
        assert_eq!(field_of(parse_infer_request("m", &[text("a")], &n(0)).expect_err("zero")), "n");
        let streaming = Tensor::from_slice(STREAMING, vec![1], &[true]);
        assert_eq!(field_of(parse_infer_request("m", &[text("a"), streaming], &n(2)).expect_err("streamed")), "n");
    }

    #[test]
    fn best_of_is_at_least_n_defaults_to_it_and_is_refused_with_streaming() {
        let counts = |n: u64, best_of: u64| {
            vec![("n".to_string(), ParamValue::Uint64(n)), ("best_of".to_string(), ParamValue::Uint64(best_of))]
        };
        let parsed = parse_infer_request("m", &[text("a")], &counts(2, 5)).expect("valid");
        assert_eq!((parsed.n, parsed.best_of), (2, 5));
        let n_only = vec![("n".to_string(), ParamValue::Uint64(3))];
        assert_eq!(parse_infer_request("m", &[text("a")], &n_only).expect("valid").best_of, 3);
        assert_eq!(field_of(parse_infer_request("m", &[text("a")], &counts(3, 2)).expect_err("fewer")), "best_of");
        assert_eq!(field_of(parse_infer_request("m", &[text("a")], &counts(1, 0)).expect_err("zero")), "best_of");
        let streaming = Tensor::from_slice(STREAMING, vec![1], &[true]);
        let refused = parse_infer_request("m", &[text("a"), streaming], &counts(1, 2)).expect_err("streamed");
        assert_eq!(field_of(refused), "best_of");
    }
}
