//! Every KServe datatype end to end: raw and typed inputs through an identity model of that type,
//! zero-element tensors, and add_sub arithmetic (integers wrap) for every numeric type. Outputs
//! always come back in `raw_output_contents`, one entry per output, with `contents` unset.

use bytes::Bytes;
use half::{bf16, f16};
use tritium_grpc_clients::{InferClient, InferRequestBuilder, output_tensor};
use tritium_proto::inference::model_infer_request::InferInputTensor;
use tritium_proto::inference::{InferTensorContents, ModelInferResponse};
use tritium_tensor::{DataType, Element, Tensor};
use tritium_tests::{TestServer, add_sub_config, identity_config, temp_repository, write_model};
use tritium_worker::RepositoryOptions;

fn config_type(datatype: DataType) -> String {
    match datatype {
        DataType::Bytes => "TYPE_STRING".to_string(),
        other => format!("TYPE_{}", other.kserve_name()),
    }
}

fn identity_model(datatype: DataType) -> String {
    format!("identity_{}", datatype.kserve_name().to_lowercase())
}

fn add_sub_model(datatype: DataType) -> String {
    format!("add_sub_{}", datatype.kserve_name().to_lowercase())
}

/// One identity model per datatype and one add_sub model (dims [4]) per numeric datatype.
async fn server() -> TestServer {
    let repository = temp_repository();
    for datatype in DataType::ALL {
        let name = identity_model(datatype);
        write_model(repository.path(), &name, &identity_config(&name, &config_type(datatype), 0), &[1]);
        if !matches!(datatype, DataType::Bool | DataType::Bytes) {
            let name = add_sub_model(datatype);
            write_model(repository.path(), &name, &add_sub_config(&name, &config_type(datatype), &[4], 0), &[1]);
        }
    }
    TestServer::with_repository(repository, RepositoryOptions::default()).await
}

/// Outputs only in raw form: one raw entry per output, no typed contents.
fn assert_raw_outputs(response: &ModelInferResponse, names: &[&str]) {
    let got: Vec<&str> = response.outputs.iter().map(|o| o.name.as_str()).collect();
    assert_eq!(got, names, "outputs of {}", response.model_name);
    assert_eq!(response.raw_output_contents.len(), names.len(), "one raw entry per output");
    for output in &response.outputs {
        assert_eq!(output.contents, None, "{}: typed contents must be unset", output.name);
    }
}

/// Sends `tensor` (raw) through the identity model of its datatype and checks the echo byte for byte.
async fn echo_raw(client: &mut InferClient, tensor: Tensor) {
    let model = identity_model(tensor.datatype);
    let request = InferRequestBuilder::new(&model).id(&model).input(tensor.clone()).build();
    let response = client.infer(request).await.unwrap_or_else(|e| panic!("{model}: {e}"));
    assert_eq!(
        (response.model_name.as_str(), response.model_version.as_str(), response.id.as_str()),
        (model.as_str(), "1", model.as_str())
    );
    assert_raw_outputs(&response, &["OUTPUT0"]);
    let output = &response.outputs[0];
    assert_eq!(output.datatype, tensor.datatype.kserve_name(), "{model}");
    assert_eq!(output.shape, tensor.shape, "{model}");
    assert_eq!(response.raw_output_contents[0], tensor.data, "{model}: payload");
}

/// Sends typed `contents` for `datatype` and checks the raw output equals `expected`.
async fn echo_typed(client: &mut InferClient, datatype: DataType, count: i64, contents: InferTensorContents, expected: Bytes) {
    let model = identity_model(datatype);
    let input = InferInputTensor {
        name: "INPUT0".into(),
        datatype: datatype.kserve_name().into(),
        shape: vec![count],
        parameters: Default::default(),
        contents: Some(contents),
    };
    let request = InferRequestBuilder::new(&model).input_tensor(input).build();
    let response = client.infer(request).await.unwrap_or_else(|e| panic!("{model} typed: {e}"));
    assert_raw_outputs(&response, &["OUTPUT0"]);
    assert_eq!(response.outputs[0].datatype, datatype.kserve_name());
    assert_eq!(response.outputs[0].shape, [count]);
    assert_eq!(response.raw_output_contents[0], expected, "{model}: typed input in the raw layout");
}

fn raw<T: Element>(values: &[T]) -> Bytes {
    Tensor::from_slice("x", vec![values.len() as i64], values).data
}

fn slice<T: Element>(values: &[T]) -> Tensor {
    Tensor::from_slice("INPUT0", vec![values.len() as i64], values)
}

#[tokio::test]
async fn every_datatype_round_trips_raw() {
    let server = server().await;
    let mut client = server.client().await;
    let tensors = vec![
        slice(&[true, false, true]),
        slice(&[0u8, 1, 128, 255]),
        slice(&[0u16, 1, 0x1234, u16::MAX]),
        slice(&[0u32, 1, 0x1234_5678, u32::MAX]),
        slice(&[0u64, 1, 0x1234_5678_9abc_def0, u64::MAX]),
        slice(&[i8::MIN, -1, 0, i8::MAX]),
        slice(&[i16::MIN, -1, 0, i16::MAX]),
        slice(&[i32::MIN, -1, 0, i32::MAX]),
        slice(&[i64::MIN, -1, 0, i64::MAX]),
        slice(&[f16::from_f32(0.5), f16::MIN, f16::MAX, f16::INFINITY, f16::NAN]),
        slice(&[bf16::from_f32(0.5), bf16::MIN, bf16::MAX, bf16::NEG_INFINITY, bf16::NAN]),
        slice(&[1.5f32, -0.0, f32::MIN_POSITIVE, f32::INFINITY, f32::NAN]),
        slice(&[1.5f64, -0.0, f64::MIN_POSITIVE, f64::MAX, f64::NAN]),
    ];
    let mut covered: Vec<DataType> = tensors.iter().map(|t| t.datatype).collect();
    for tensor in tensors {
        echo_raw(&mut client, tensor).await;
    }
    // BYTES: empty elements, embedded NULs and bytes that are not UTF-8 all survive.
    let items: [&[u8]; 5] = [b"hello", b"", b"\xff\xfe\x00", "\u{e9}t\u{e9}".as_bytes(), b"\x00"];
    let bytes = Tensor::from_byte_strings("INPUT0", vec![5], items);
    covered.push(bytes.datatype);
    echo_raw(&mut client, bytes.clone()).await;
    let echoed = client.infer(InferRequestBuilder::new("identity_bytes").input(bytes).build()).await.expect("BYTES");
    assert_eq!(output_tensor(&echoed, "OUTPUT0").expect("OUTPUT0").byte_strings().expect("BYTES layout"), items);
    covered.sort_by_key(|d| d.kserve_name());
    let mut all = DataType::ALL.to_vec();
    all.sort_by_key(|d| d.kserve_name());
    assert_eq!(covered, all, "every datatype is covered");
}

#[tokio::test]
async fn raw_bool_bytes_pass_through_unchanged() {
    let server = server().await;
    let mut client = server.client().await;
    // Triton 2.51 passes a raw BOOL byte of 2 through as it is.
    echo_raw(&mut client, Tensor::new("INPUT0", DataType::Bool, vec![3], Bytes::from_static(&[0, 1, 2]))).await;
}

#[tokio::test]
async fn typed_contents_come_back_in_the_raw_layout() {
    let server = server().await;
    let mut client = server.client().await;
    let c = InferTensorContents::default;
    let cases: Vec<(DataType, i64, InferTensorContents, Bytes)> = vec![
        (DataType::Bool, 3, InferTensorContents { bool_contents: vec![true, false, true], ..c() }, raw(&[1u8, 0, 1])),
        // UINT8 and UINT16 share uint_contents and keep the low bytes.
        (DataType::Uint8, 3, InferTensorContents { uint_contents: vec![300, 255, 0], ..c() }, raw(&[44u8, 255, 0])),
        (DataType::Uint16, 2, InferTensorContents { uint_contents: vec![70_000, 65_535], ..c() }, raw(&[4_464u16, 65_535])),
        (DataType::Uint32, 2, InferTensorContents { uint_contents: vec![u32::MAX, 7], ..c() }, raw(&[u32::MAX, 7])),
        (DataType::Uint64, 2, InferTensorContents { uint64_contents: vec![u64::MAX, 7], ..c() }, raw(&[u64::MAX, 7])),
        // INT8 and INT16 share int_contents: 300 -> 44, as Triton 2.51 does.
        (DataType::Int8, 4, InferTensorContents { int_contents: vec![300, -1, 127, -129], ..c() }, raw(&[44i8, -1, 127, 127])),
        (DataType::Int16, 2, InferTensorContents { int_contents: vec![70_000, -32_768], ..c() }, raw(&[4_464i16, -32_768])),
        (DataType::Int32, 2, InferTensorContents { int_contents: vec![i32::MIN, 5], ..c() }, raw(&[i32::MIN, 5])),
        (DataType::Int64, 2, InferTensorContents { int64_contents: vec![i64::MIN, 5], ..c() }, raw(&[i64::MIN, 5])),
        (DataType::Fp32, 2, InferTensorContents { fp32_contents: vec![1.5, -2.25], ..c() }, raw(&[1.5f32, -2.25])),
        (DataType::Fp64, 2, InferTensorContents { fp64_contents: vec![1.5, -2.25], ..c() }, raw(&[1.5f64, -2.25])),
        (
            DataType::Bytes,
            3,
            InferTensorContents {
                bytes_contents: vec![Bytes::from_static(b"a"), Bytes::new(), Bytes::from_static(b"\xff\x00")],
                ..c()
            },
            Bytes::from_static(b"\x01\x00\x00\x00a\x00\x00\x00\x00\x02\x00\x00\x00\xff\x00"),
        ),
    ];
    for (datatype, count, contents, expected) in cases {
        echo_typed(&mut client, datatype, count, contents, expected).await;
    }
}

#[tokio::test]
async fn zero_element_tensors_succeed() {
    let server = server().await;
    let mut client = server.client().await;
    echo_raw(&mut client, Tensor::from_slice::<f32>("INPUT0", vec![0], &[])).await;
    echo_raw(&mut client, Tensor::from_byte_strings("INPUT0", vec![0], Vec::<&[u8]>::new())).await;
    // With no raw entry at all, a zero-element input still has its (empty) data.
    for datatype in [DataType::Fp32, DataType::Bytes] {
        let model = identity_model(datatype);
        let input = InferInputTensor {
            name: "INPUT0".into(),
            datatype: datatype.kserve_name().into(),
            shape: vec![0],
            ..Default::default()
        };
        let response = client.infer(InferRequestBuilder::new(&model).input_tensor(input).build()).await.expect(&model);
        assert_raw_outputs(&response, &["OUTPUT0"]);
        assert_eq!(response.outputs[0].shape, [0]);
        assert!(response.raw_output_contents[0].is_empty(), "{model}: the entry is present and empty");
    }
}

/// Runs add_sub for `T` and checks both outputs.
async fn check_add_sub<T: Element + PartialEq + std::fmt::Debug>(
    client: &mut InferClient,
    a: [T; 4],
    b: [T; 4],
    sum: [T; 4],
    difference: [T; 4],
) {
    let model = add_sub_model(T::DATATYPE);
    let request = InferRequestBuilder::new(&model)
        .input(Tensor::from_slice("INPUT0", vec![4], &a))
        .input(Tensor::from_slice("INPUT1", vec![4], &b))
        .build();
    let response = client.infer(request).await.unwrap_or_else(|e| panic!("{model}: {e}"));
    assert_eq!((response.model_name.as_str(), response.model_version.as_str()), (model.as_str(), "1"));
    assert_raw_outputs(&response, &["OUTPUT0", "OUTPUT1"]);
    for output in &response.outputs {
        assert_eq!((output.datatype.as_str(), output.shape.as_slice()), (T::DATATYPE.kserve_name(), &[4][..]), "{model}");
    }
    let read = |name: &str| output_tensor(&response, name).expect(name).to_vec::<T>().expect("datatype");
    assert_eq!(read("OUTPUT0"), sum, "{model}: INPUT0 + INPUT1");
    assert_eq!(read("OUTPUT1"), difference, "{model}: INPUT0 - INPUT1");
}

macro_rules! unsigned {
    ($client:expr, $t:ty) => {
        check_add_sub::<$t>($client, [<$t>::MAX, 3, 0, 100], [1, 2, 1, 50], [0, 5, 1, 150], [<$t>::MAX - 1, 1, <$t>::MAX, 50])
            .await
    };
}
macro_rules! signed {
    ($client:expr, $t:ty) => {
        check_add_sub::<$t>(
            $client,
            [<$t>::MAX, <$t>::MIN, 5, -3],
            [1, 1, 7, -3],
            [<$t>::MIN, <$t>::MIN + 1, 12, -6],
            [<$t>::MAX - 1, <$t>::MAX, -2, 0],
        )
        .await
    };
}
macro_rules! float {
    ($client:expr, $t:ty, $from:expr) => {{
        let v = |xs: [f32; 4]| xs.map($from);
        check_add_sub::<$t>(
            $client,
            v([1.5, -2.0, 0.25, 100.0]),
            v([0.5, 4.0, 0.25, 28.0]),
            v([2.0, 2.0, 0.5, 128.0]),
            v([1.0, -6.0, 0.0, 72.0]),
        )
        .await
    }};
}

#[tokio::test]
async fn add_sub_for_every_numeric_datatype() {
    let server = server().await;
    let client = &mut server.client().await;
    // UINT8 spelled out: the sum and difference wrap.
    check_add_sub::<u8>(client, [250, 1, 0, 128], [10, 2, 1, 128], [4, 3, 1, 0], [240, 255, 255, 0]).await;
    unsigned!(client, u8);
    unsigned!(client, u16);
    unsigned!(client, u32);
    unsigned!(client, u64);
    signed!(client, i8);
    signed!(client, i16);
    signed!(client, i32);
    signed!(client, i64);
    float!(client, f16, f16::from_f32);
    float!(client, bf16, bf16::from_f32);
    float!(client, f32, |x| x);
    float!(client, f64, f64::from);
}
