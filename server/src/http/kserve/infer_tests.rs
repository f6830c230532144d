use serde_json::json;

use super::*;

fn parse_json(value: serde_json::Value) -> Result<HttpInfer, HttpError> {
    parse("m", "", Bytes::from(value.to_string()), None)
}

#[test]
fn json_inputs_become_raw_contents_in_order() {
    let parsed = parse_json(json!({
        "id": "r1",
        "parameters": {"priority": 2, "binary_data_output": true, "flag": false},
        "inputs": [
            {"name": "A", "datatype": "INT32", "shape": [2], "data": [1, 2]},
            {"name": "B", "datatype": "BYTES", "shape": [1], "data": ["hi"]}
        ],
        "outputs": [{"name": "X", "parameters": {"binary_data": false}}, {"name": "Y"}]
    }))
    .expect("parses");
    let request = &parsed.request;
    assert_eq!(request.id, "r1");
    assert_eq!(request.raw_input_contents.len(), 2);
    assert_eq!(&request.raw_input_contents[0][..], &[1, 0, 0, 0, 2, 0, 0, 0]);
    assert_eq!(&request.raw_input_contents[1][..], &[2, 0, 0, 0, b'h', b'i']);
    assert!(!request.parameters.contains_key("binary_data_output"));
    assert_eq!(request.parameters["priority"].parameter_choice, Some(ParameterChoice::Int64Param(2)));
    // A listed output is binary only when it says so; the request-level default covers the rest.
    assert!(!parsed.binary_outputs.binary("X"));
    assert!(!parsed.binary_outputs.binary("Y"));
    assert!(parsed.binary_outputs.binary("Z"));
}

#[test]
fn binary_inputs_are_slices_of_the_body() {
    let header = json!({"inputs": [
        {"name": "A", "datatype": "FP32", "shape": [1], "parameters": {"binary_data_size": 4}},
        {"name": "B", "datatype": "FP32", "shape": [1], "data": [2.0]}
    ]})
    .to_string();
    let mut body = header.clone().into_bytes();
    body.extend_from_slice(&1.5f32.to_le_bytes());
    let parsed = parse("m", "", Bytes::from(body), Some(header.len())).expect("parses");
    assert_eq!(&parsed.request.raw_input_contents[0][..], &1.5f32.to_le_bytes());
    assert!(!parsed.request.inputs[0].parameters.contains_key("binary_data_size"));

    let short = parse("m", "", Bytes::from(header.clone()), Some(header.len())).expect_err("no binary bytes");
    assert_eq!(short.status, axum::http::StatusCode::BAD_REQUEST);
    assert_eq!(short.message, "unexpected size for input 'A', expecting 4 additional bytes for model 'm'");
}

#[test]
fn malformed_requests_are_refused_in_triton_s_words() {
    use axum::http::StatusCode;
    for (body, status, message) in [
        ("", StatusCode::INTERNAL_SERVER_ERROR, "failed to parse the request JSON buffer: The document is empty. at 0"),
        (
            "{",
            StatusCode::INTERNAL_SERVER_ERROR,
            "failed to parse the request JSON buffer: Missing a name for object member. at 1",
        ),
        (
            "[]",
            StatusCode::INTERNAL_SERVER_ERROR,
            "Unable to parse 'inputs': attempt to access non-existing object member 'inputs'",
        ),
        (
            r#"{"inputs": 3}"#,
            StatusCode::INTERNAL_SERVER_ERROR,
            "Unable to parse 'inputs': attempt to access JSON non-array as array",
        ),
        (
            r#"{"inputs": [{"name": "A"}]}"#,
            StatusCode::INTERNAL_SERVER_ERROR,
            "Unable to parse 'datatype': attempt to access non-existing object member 'datatype'",
        ),
        (
            r#"{"id": 5, "inputs": []}"#,
            StatusCode::INTERNAL_SERVER_ERROR,
            "Unable to parse 'id': attempt to access JSON non-string as string",
        ),
        (
            r#"{"inputs": [{"name": "A", "datatype": "FP33", "shape": [1], "data": [1]}]}"#,
            StatusCode::BAD_REQUEST,
            "invalid datatype for input A",
        ),
    ] {
        let error = parse("m", "", Bytes::from(body), None).expect_err(body);
        assert_eq!((error.status, error.message.as_str()), (status, message), "{body}");
    }
    let wrong_count = parse_json(json!({"inputs": [{"name": "A", "datatype": "INT32", "shape": [3], "data": [1, 2]}]}));
    assert_eq!(
        wrong_count.expect_err("count").message,
        "Unable to parse 'data': Shape does not match true shape of 'data' field"
    );
    let neither = parse_json(json!({"inputs": [{"name": "A", "datatype": "INT32", "shape": [1]}]})).expect_err("no data");
    assert!(neither.message.ends_with("But no field is set"), "{}", neither.message);
    let out_of_range = parse_json(json!({"inputs": [{"name": "A", "datatype": "INT8", "shape": [1], "data": [300]}]}));
    assert_eq!(out_of_range.expect_err("range").status, StatusCode::BAD_REQUEST);
}

#[test]
fn outputs_are_json_or_binary_as_asked() {
    let response = ModelInferResponse {
        model_name: "m".into(),
        model_version: "1".into(),
        id: String::new(),
        parameters: HashMap::new(),
        outputs: vec![
            tritium_proto::inference::model_infer_response::InferOutputTensor {
                name: "J".into(),
                datatype: "INT32".into(),
                shape: vec![2],
                ..Default::default()
            },
            tritium_proto::inference::model_infer_response::InferOutputTensor {
                name: "B".into(),
                datatype: "INT32".into(),
                shape: vec![1],
                ..Default::default()
            },
        ],
        raw_output_contents: vec![Bytes::from_static(&[1, 0, 0, 0, 2, 0, 0, 0]), Bytes::from_static(&[7, 0, 0, 0])],
    };
    let binary = BinaryOutputs { default: false, by_name: HashMap::from([("B".to_string(), true)]) };
    let (body, header) = encode(response, &binary).expect("encodes");
    let header = header.expect("a binary part");
    let json: serde_json::Value = serde_json::from_slice(&body[..header]).expect("json header");
    assert_eq!(json["outputs"][0]["data"], json!([1, 2]));
    assert_eq!(json["outputs"][1]["parameters"]["binary_data_size"], json!(4));
    assert_eq!(&body[header..], &[7, 0, 0, 0]);
}

#[test]
fn numbers_beyond_an_f64_are_a_bad_request_that_names_where() {
    use axum::http::StatusCode;
    let digits = "9".repeat(10_000);
    for (body, message) in [
        (
            r#"{"inputs":[{"name":"INPUT0","datatype":"FP32","shape":[1],"data":[1e400]}]}"#.to_string(),
            "Unable to parse 'data' of input 'INPUT0': the number 1e400 is out of range for FP32".to_string(),
        ),
        (
            format!(r#"{{"inputs":[{{"name":"IN","datatype":"INT64","shape":[1],"data":[{digits}]}}]}}"#),
            format!(
                "Unable to parse 'data' of input 'IN': the number {}… (10000 characters) is out of range for INT64",
                &digits[..24]
            ),
        ),
        (
            r#"{"parameters":{"a":1e400},"inputs":[]}"#.to_string(),
            "Unable to parse 'parameters': number out of range".to_string(),
        ),
        (
            r#"{"inputs":[{"name":"A","datatype":"FP32","shape":1e400,"data":[1]}]}"#.to_string(),
            "Unable to parse 'shape': number out of range".to_string(),
        ),
    ] {
        let error = parse("m", "", Bytes::from(body), None).expect_err("refused");
        assert_eq!((error.status, error.message), (StatusCode::BAD_REQUEST, message));
    }
}

#[test]
fn data_must_be_an_array_and_integers_read_as_triton_reads_them() {
    use axum::http::StatusCode;
    let input = |datatype: &str, data: serde_json::Value| {
        parse_json(json!({"inputs": [{"name": "A", "datatype": datatype, "shape": [1], "data": data}]}))
    };
    for data in [json!(1.5), json!("x"), json!(null), json!({"a": 1})] {
        let error = input("FP32", data.clone()).expect_err("not an array");
        assert_eq!(
            (error.status, error.message.as_str()),
            (StatusCode::INTERNAL_SERVER_ERROR, "Unable to parse 'data': attempt to access JSON non-array as array"),
            "{data}"
        );
    }
    let negative = input("UINT8", json!([-1])).expect_err("negative");
    assert_eq!(
        (negative.status, negative.message.as_str()),
        (
            StatusCode::INTERNAL_SERVER_ERROR,
            "Unable to parse 'data': attempt to access JSON non-unsigned-integer as unsigned-integer"
        )
    );
    let past_int64 = input("INT32", json!([1u64 << 63])).expect_err("past int64");
    assert_eq!(past_int64.message, "Unable to parse 'data': attempt to access JSON non-signed-integer as signed-integer");
    // Narrowing would lose the value: refused, where Triton narrows.
    assert_eq!(input("UINT8", json!([256])).expect_err("narrowing").status, StatusCode::BAD_REQUEST);
}

#[test]
fn bytes_strings_are_counted_by_the_validation_not_the_reader() {
    let bytes = |shape: serde_json::Value, data: serde_json::Value| {
        parse_json(json!({"inputs": [{"name": "A", "datatype": "BYTES", "shape": shape, "data": data}]}))
            .expect("left to the validation")
            .request
            .raw_input_contents
    };
    // Fewer than the shape: all of them, for the validation to count.
    assert_eq!(&bytes(json!([3]), json!(["a", "b"]))[0][..], b"\x01\0\0\0a\x01\0\0\0b");
    // More: one past the shape is enough to tell, and the reading stops there.
    assert_eq!(&bytes(json!([1]), json!(["a", "b", "c", "d"]))[0][..], b"\x01\0\0\0a\x01\0\0\0b");
    assert_eq!(&bytes(json!([2, 2]), json!([["a"], ["b"]]))[0][..], b"\x01\0\0\0a\x01\0\0\0b");
}

#[test]
fn an_output_asks_for_shared_memory_or_binary_data_not_both() {
    use axum::http::StatusCode;
    let output = |parameters: serde_json::Value| {
        parse_json(json!({
            "inputs": [{"name": "A", "datatype": "INT32", "shape": [1], "data": [1]}],
            "outputs": [{"name": "X", "parameters": parameters}]
        }))
    };
    for parameters in [
        json!({"shared_memory_region": "r", "shared_memory_byte_size": 4, "binary_data": true}),
        json!({"binary_data": true, "shared_memory_region": "r", "shared_memory_byte_size": 4}),
    ] {
        let error = output(parameters).expect_err("both");
        assert_eq!(
            (error.status, error.message.as_str()),
            (StatusCode::BAD_REQUEST, "Output can't set both 'shared_memory_region' and 'binary_data'")
        );
    }
    output(json!({"shared_memory_region": "r", "shared_memory_byte_size": 4, "binary_data": false})).expect("not binary");
    let parsed = parse_json(json!({
        "parameters": {"binary_data_output": true},
        "inputs": [{"name": "A", "datatype": "INT32", "shape": [1], "data": [1]}],
        "outputs": [{"name": "X", "parameters": {"shared_memory_region": "r", "shared_memory_byte_size": 4}}]
    }));
    parsed.expect("the request-level default is not the output asking");
}

#[test]
fn json_outputs_lose_nothing_as_triton_writes_them() {
    let output = |datatype: &str, raw: Vec<u8>| ModelInferResponse {
        model_name: "m".into(),
        model_version: "1".into(),
        outputs: vec![tritium_proto::inference::model_infer_response::InferOutputTensor {
            name: "O".into(),
            datatype: datatype.into(),
            shape: vec![2],
            ..Default::default()
        }],
        raw_output_contents: vec![Bytes::from(raw)],
        ..Default::default()
    };
    let floats = [f32::INFINITY, f32::NEG_INFINITY].iter().flat_map(|v| v.to_le_bytes()).collect();
    let (body, header) = encode(output("FP32", floats), &BinaryOutputs::default()).expect("encodes");
    assert_eq!(header, None);
    assert!(body.ends_with(br#""data":[Infinity,-Infinity]}]}"#), "{}", String::from_utf8_lossy(&body));
    let strings = b"\x02\0\0\0\xff\xfe\x01\0\0\0\"".to_vec();
    let (body, _) = encode(output("BYTES", strings), &BinaryOutputs::default()).expect("encodes");
    assert!(body.ends_with(b"\"data\":[\"\xff\xfe\",\"\\\"\"]}]}"), "{}", String::from_utf8_lossy(&body));
}

#[test]
fn nan_and_the_infinities_are_numbers_as_triton_reads_them() {
    let body = r#"{"parameters": {"p": -Inf, "q": "N"}, "inputs": [
        {"name": "A", "datatype": "FP32", "shape": [6], "data": [NaN, -NaN, Inf, -Inf, Infinity, -Infinity]},
        {"name": "B", "datatype": "FP64", "shape": [2], "data": [[1.5], [Infinity]]},
        {"name": "S", "datatype": "BYTES", "shape": [1], "data": ["NaN"]}]}"#;
    let parsed = parse("m", "", Bytes::from(body), None).expect("parses");
    let floats: Vec<f32> =
        parsed.request.raw_input_contents[0].chunks(4).map(|b| f32::from_le_bytes(b.try_into().expect("4 bytes"))).collect();
    assert!(floats[0].is_nan() && floats[1].is_nan());
    assert_eq!(&floats[2..], &[f32::INFINITY, f32::NEG_INFINITY, f32::INFINITY, f32::NEG_INFINITY]);
    let doubles: Vec<f64> =
        parsed.request.raw_input_contents[1].chunks(8).map(|b| f64::from_le_bytes(b.try_into().expect("8 bytes"))).collect();
    assert_eq!(doubles, [1.5, f64::INFINITY]);
    assert_eq!(&parsed.request.raw_input_contents[2][4..], b"NaN", "a string stays a string");
    let parameters = &parsed.request.parameters;
    assert_eq!(parameters["p"].parameter_choice, Some(ParameterChoice::DoubleParam(f64::NEG_INFINITY)));

    // Integers take none of them, a string stand-in is no number in a plain body, and what
    // rapidjson refuses stays refused with its words.
    for (body, message) in [
        (
            r#"{"inputs": [{"name": "A", "datatype": "INT32", "shape": [1], "data": [NaN]}]}"#,
            "Unable to parse 'data': attempt to access JSON non-signed-integer as signed-integer",
        ),
        (
            r#"{"inputs": [{"name": "A", "datatype": "FP32", "shape": [1], "data": ["N"]}]}"#,
            "Unable to parse 'data': attempt to access JSON non-number as double",
        ),
        (
            r#"{"inputs": [{"name": "A", "datatype": "FP32", "shape": [1], "data": [nan]}]}"#,
            "failed to parse the request JSON buffer: Invalid value. at 70",
        ),
    ] {
        let error = parse("m", "", Bytes::from(body), None).expect_err(body);
        assert_eq!(error.message, message, "{body}");
    }
}
