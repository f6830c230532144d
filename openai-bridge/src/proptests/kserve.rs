//! Property tests of the KServe LLM request parser: any inputs and parameters.

use bytes::Bytes;
use proptest::collection::vec;
use proptest::prelude::*;
use serde_json::{Map, Value};
use tritium_backend_api::ParamValue;
use tritium_tensor::{DataType, Tensor, bytes_codec};

use super::{FIELDS, config, json_object, sampling_spec};
use crate::BridgeError;
use crate::kserve::parse_infer_request;

/// A KServe LLM input: the right names mostly, any datatype and shape, text or random payloads.
fn kserve_input() -> impl Strategy<Value = Tensor> {
    let name = proptest::sample::select(vec![
        "text_input",
        "text_input",
        "streaming",
        "stream",
        "sampling_parameters",
        "exclude_input_in_output",
        "other",
    ]);
    let datatype =
        prop_oneof![3 => Just(DataType::Bytes), 1 => Just(DataType::Bool), 1 => proptest::sample::select(DataType::ALL.to_vec())];
    let shape = proptest::sample::select(vec![vec![1], vec![1], vec![1, 1], vec![2], vec![], vec![-1]]);
    let text = prop_oneof![
        "[a-z ]{0,8}".prop_map(String::into_bytes),
        json_object().prop_map(|o| Value::Object(o).to_string().into_bytes()),
        vec(any::<u8>(), 0..8),
    ];
    let payload = prop_oneof![text.prop_map(|t| bytes_codec::encode([t])), vec(any::<u8>(), 0..10).prop_map(Bytes::from),];
    (name, datatype, shape, payload).prop_map(|(name, datatype, shape, data)| Tensor::new(name, datatype, shape, data))
}

/// Inputs that make a valid request, shuffled in among arbitrary ones.
fn kserve_inputs() -> impl Strategy<Value = Vec<Tensor>> {
    let text = "[a-z ]{0,8}".prop_map(|t| Tensor::from_byte_strings("text_input", vec![1], [t]));
    let streaming = any::<bool>().prop_map(|b| Tensor::from_slice("streaming", vec![1, 1], &[b]));
    let sampling = sampling_spec()
        .prop_map(|(body, _)| Tensor::from_byte_strings("sampling_parameters", vec![1], [Value::Object(body).to_string()]));
    let good = (proptest::option::weighted(0.9, text), proptest::option::of(streaming), proptest::option::of(sampling));
    (good, vec(kserve_input(), 0..2)).prop_map(|((text, streaming, sampling), others)| {
        sampling.into_iter().chain(streaming).chain(text).chain(others).collect()
    })
}

fn param_value() -> impl Strategy<Value = ParamValue> {
    prop_oneof![
        any::<bool>().prop_map(ParamValue::Bool),
        (-3i64..40).prop_map(ParamValue::Int64),
        any::<i64>().prop_map(ParamValue::Int64),
        any::<u64>().prop_map(ParamValue::Uint64),
        any::<f64>().prop_map(ParamValue::Double),
        proptest::sample::select(vec!["1", " 2 ", "0.5", "true", "[\"x\"]", "[1, 2]", "", "nan", "1e40"])
            .prop_map(|s| ParamValue::String(s.into())),
    ]
}

proptest! {
    #![proptest_config(config())]

    /// KServe LLM requests: any inputs and parameters give a request whose options validate,
    /// whose prompt is the last `text_input`, or an error naming an input or parameter.
    #[test]
    fn arbitrary_kserve_llm_requests(
        inputs in kserve_inputs(),
        parameters in vec((proptest::sample::select(FIELDS).prop_map(str::to_string), param_value()), 0..4),
    ) {
        match parse_infer_request("m", &inputs, &parameters) {
            Ok(request) => {
                prop_assert_eq!(request.options.validate(), Ok(()));
                let last = inputs.iter().rev().find(|t| t.name == "text_input").and_then(|t| t.byte_strings().ok());
                prop_assert_eq!(last.map(|e| e.concat()), Some(request.prompt.into_bytes()));
            }
            Err(BridgeError::InvalidField { field, .. }) => {
                // Keys of a `sampling_parameters` object become parameters too.
                let json_keys: Vec<String> = inputs
                    .iter()
                    .filter(|t| t.name == "sampling_parameters")
                    .filter_map(|t| serde_json::from_slice::<Map<String, Value>>(t.byte_strings().ok()?.first()?).ok())
                    .flat_map(|object| object.into_iter().map(|(key, _)| key))
                    .collect();
                let known = inputs.iter().any(|t| t.name == field)
                    || parameters.iter().any(|(name, _)| *name == field)
                    || json_keys.contains(&field)
                    || field == "text_input"
                    || field.starts_with("sampling_parameters");
                prop_assert!(known, "{}", field);
            }
            Err(other) => prop_assert!(false, "{:?}", other),
        }
    }
}
