//! Property tests of everything here that reads client bytes: shapes, raw payloads, the BYTES
//! layout, typed contents and the protobuf messages that carry them.
//!
//! Each property compares the crate against a small, deliberately naive model of the rules
//! (i128 arithmetic for shapes, a byte-by-byte BYTES parser, `to_le_bytes` per value), so a wrong
//! answer fails as surely as a panic. The fuzz targets in `fuzz/` drive the same entry points.

use bytes::Bytes;
use half::{bf16, f16};
use proptest::collection::vec;
use proptest::prelude::*;
use prost::Message;
use tritium_proto::inference::model_infer_request::InferInputTensor;
use tritium_proto::inference::{InferTensorContents, ModelInferRequest};

use crate::{DataType, Element, Tensor, TensorError, bytes_codec, contents, element_count, expected_byte_size};

/// Cases per property: the suite stays well under a second on two cores. `PROPTEST_CASES=100000`
/// runs a longer search locally.
fn config() -> ProptestConfig {
    match std::env::var_os("PROPTEST_CASES") {
        Some(_) => ProptestConfig::default(),
        None => ProptestConfig::with_cases(256),
    }
}

fn datatype() -> impl Strategy<Value = DataType> {
    proptest::sample::select(DataType::ALL.to_vec())
}

fn fixed_size_datatype() -> impl Strategy<Value = DataType> {
    datatype().prop_filter("fixed-size", |dt| dt.element_size().is_some())
}

/// Mostly small dimensions, with the edges a hostile client would send.
fn dim() -> impl Strategy<Value = i64> {
    prop_oneof![
        6 => 0i64..4,
        1 => any::<i64>(),
        1 => (i64::MAX - 4)..=i64::MAX,
        1 => proptest::sample::select(vec![-1, i64::MIN, 1 << 31, 1 << 32, 1 << 62, i64::MAX / 2 + 1]),
    ]
}

fn shape() -> impl Strategy<Value = Vec<i64>> {
    vec(dim(), 0..5)
}

/// Payloads that are sometimes valid BYTES data: a few elements, then maybe a stray tail.
fn payload() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        vec(any::<u8>(), 0..48),
        (vec(vec(any::<u8>(), 0..6), 0..4), vec(any::<u8>(), 0..6), any::<bool>()).prop_map(|(items, tail, keep)| {
            let mut data = bytes_codec::encode(items).to_vec();
            if keep {
                data.extend(tail);
            }
            data
        }),
    ]
}

/// The element count the shape describes, in i128 so nothing can wrap.
fn model_count(shape: &[i64]) -> Result<usize, TensorError> {
    if let Some(&dim) = shape.iter().find(|&&d| d < 0) {
        return Err(TensorError::NegativeDimension { dim });
    }
    if shape.contains(&0) {
        return Ok(0);
    }
    let mut count = 1i128;
    for &d in shape {
        // Both factors are at most i64::MAX, so the product fits in an i128.
        count *= i128::from(d);
        if count > i128::from(i64::MAX) {
            return Err(TensorError::ShapeOverflow { shape: shape.to_vec() });
        }
    }
    Ok(count as usize)
}

/// The element count and raw byte size (`None` for BYTES); a byte size past `i64::MAX` is an
/// overflow even where the count alone fits.
fn model_shape(datatype: DataType, shape: &[i64]) -> Result<(usize, Option<usize>), TensorError> {
    let count = model_count(shape)?;
    let Some(size) = datatype.element_size() else { return Ok((count, None)) };
    match count as i128 * size as i128 {
        bytes if bytes > i128::from(i64::MAX) => Err(TensorError::ShapeOverflow { shape: shape.to_vec() }),
        bytes => Ok((count, Some(bytes as usize))),
    }
}

/// The BYTES layout read the slow way: elements, or the offset of the element that is cut short.
fn model_elements(data: &[u8]) -> Result<Vec<&[u8]>, usize> {
    let mut elements = Vec::new();
    let mut at = 0;
    while at < data.len() {
        let Some(&[a, b, c, d]) = data.get(at..at + 4) else { return Err(at) };
        let len = u32::from_le_bytes([a, b, c, d]) as usize;
        let Some(body) = data.get(at + 4..at + 4 + len) else { return Err(at) };
        elements.push(body);
        at += 4 + len;
    }
    Ok(elements)
}

/// What [`Tensor::validate`] should answer: BYTES elements walked in order, as Triton walks
/// them (a cut prefix, one element past the count, a cut body), then the count.
fn model_validate(tensor: &Tensor) -> Result<(), TensorError> {
    let (count, bytes) = model_shape(tensor.datatype, &tensor.shape)?;
    match bytes {
        Some(expected) if expected == tensor.data.len() => return Ok(()),
        Some(expected) => return Err(TensorError::ByteSizeMismatch { expected, actual: tensor.data.len() }),
        None => {}
    }
    let data = &tensor.data[..];
    let (mut at, mut seen) = (0, 0);
    while at < data.len() {
        let Some(&[a, b, c, d]) = data.get(at..at + 4) else {
            return Err(TensorError::TruncatedBytesPrefix { offset: at, available: data.len() - at });
        };
        seen += 1;
        if seen > count {
            return Err(TensorError::ElementCountMismatch { expected: count, actual: seen });
        }
        let len = u32::from_le_bytes([a, b, c, d]) as usize;
        if data.get(at + 4..at + 4 + len).is_none() {
            return Err(TensorError::TruncatedBytes { offset: at });
        }
        at += 4 + len;
    }
    match seen == count {
        true => Ok(()),
        false => Err(TensorError::ElementCountMismatch { expected: count, actual: seen }),
    }
}

/// Decodes the payload through the typed API and encodes it again.
fn reencode(tensor: &Tensor) -> Result<Bytes, TensorError> {
    fn via<T: Element>(tensor: &Tensor) -> Result<Bytes, TensorError> {
        Ok(Tensor::from_slice("r", tensor.shape.clone(), &tensor.to_vec::<T>()?).data)
    }
    match tensor.datatype {
        DataType::Bool => via::<bool>(tensor),
        DataType::Uint8 => via::<u8>(tensor),
        DataType::Uint16 => via::<u16>(tensor),
        DataType::Uint32 => via::<u32>(tensor),
        DataType::Uint64 => via::<u64>(tensor),
        DataType::Int8 => via::<i8>(tensor),
        DataType::Int16 => via::<i16>(tensor),
        DataType::Int32 => via::<i32>(tensor),
        DataType::Int64 => via::<i64>(tensor),
        DataType::Fp16 => via::<f16>(tensor),
        DataType::Bf16 => via::<bf16>(tensor),
        DataType::Fp32 => via::<f32>(tensor),
        DataType::Fp64 => via::<f64>(tensor),
        DataType::Bytes => bytes_codec::try_encode(tensor.byte_strings()?),
    }
}

/// What a payload reads back as: itself, except that any non-zero BOOL byte is `true` (1).
fn canonical(datatype: DataType, data: &[u8]) -> Vec<u8> {
    match datatype {
        DataType::Bool => data.iter().map(|&b| u8::from(b != 0)).collect(),
        _ => data.to_vec(),
    }
}

/// Checks one tensor against the model, and that a valid one round-trips through the typed API.
fn check_tensor(tensor: &Tensor) -> Result<(), TestCaseError> {
    let expected = model_validate(tensor);
    prop_assert_eq!(tensor.validate(), expected.clone());
    prop_assert_eq!(tensor.element_count(), model_count(&tensor.shape));
    let reencoded = reencode(tensor);
    match (tensor.datatype, expected) {
        (datatype, Ok(())) => prop_assert_eq!(reencoded, Ok(Bytes::from(canonical(datatype, &tensor.data)))),
        // `byte_strings` reads the elements without comparing their count to the shape.
        (DataType::Bytes, Err(_)) => match model_elements(&tensor.data) {
            Ok(_) => prop_assert_eq!(reencoded, Ok(tensor.data.clone())),
            Err(offset) => prop_assert_eq!(reencoded, Err(TensorError::TruncatedBytes { offset })),
        },
        // `to_vec` checks the payload against the shape first, so it fails exactly like `validate`.
        (_, Err(error)) => prop_assert_eq!(reencoded, Err(error)),
    }
    Ok(())
}

/// Typed contents with most fields empty, so that the right field alone is often filled.
fn typed_contents() -> impl Strategy<Value = InferTensorContents> {
    fn field<T: Arbitrary + Clone>() -> impl Strategy<Value = Vec<T>> {
        prop_oneof![3 => Just(Vec::new()), 1 => vec(any::<T>(), 1..5)]
    }
    let bytes = prop_oneof![3 => Just(Vec::new()), 1 => vec(vec(any::<u8>(), 0..5).prop_map(Bytes::from), 1..4)];
    (field(), field(), field(), field(), field(), field(), field(), bytes).prop_map(
        |(
            bool_contents,
            int_contents,
            int64_contents,
            uint_contents,
            uint64_contents,
            fp32_contents,
            fp64_contents,
            bytes_contents,
        )| {
            InferTensorContents {
                bool_contents,
                int_contents,
                int64_contents,
                uint_contents,
                uint64_contents,
                fp32_contents,
                fp64_contents,
                bytes_contents,
            }
        },
    )
}

/// What [`contents::typed_to_raw`] should give: the one field of the datatype, each value
/// narrowed to the datatype's width and written little-endian.
fn model_typed(datatype: DataType, c: &InferTensorContents) -> Result<(usize, Vec<u8>), TensorError> {
    let filled = [
        ("bool_contents", c.bool_contents.len()),
        ("int_contents", c.int_contents.len()),
        ("int64_contents", c.int64_contents.len()),
        ("uint_contents", c.uint_contents.len()),
        ("uint64_contents", c.uint64_contents.len()),
        ("fp32_contents", c.fp32_contents.len()),
        ("fp64_contents", c.fp64_contents.len()),
        ("bytes_contents", c.bytes_contents.len()),
    ];
    let own = contents::field_for(datatype);
    let mut others = filled.iter().filter(|&&(name, len)| len > 0 && Some(name) != own);
    match (own, others.next()) {
        (None, Some(_)) => return Err(TensorError::NoTypedField { datatype }),
        (Some(_), Some(&(field, _))) => return Err(TensorError::UnexpectedTypedField { field, datatype }),
        _ => {}
    }
    let le = |values: Vec<Vec<u8>>| (values.len(), values.concat());
    Ok(match datatype {
        DataType::Bool => le(c.bool_contents.iter().map(|&b| vec![u8::from(b)]).collect()),
        DataType::Int8 => le(c.int_contents.iter().map(|&v| (v as i8).to_le_bytes().to_vec()).collect()),
        DataType::Int16 => le(c.int_contents.iter().map(|&v| (v as i16).to_le_bytes().to_vec()).collect()),
        DataType::Int32 => le(c.int_contents.iter().map(|&v| v.to_le_bytes().to_vec()).collect()),
        DataType::Int64 => le(c.int64_contents.iter().map(|&v| v.to_le_bytes().to_vec()).collect()),
        DataType::Uint8 => le(c.uint_contents.iter().map(|&v| (v as u8).to_le_bytes().to_vec()).collect()),
        DataType::Uint16 => le(c.uint_contents.iter().map(|&v| (v as u16).to_le_bytes().to_vec()).collect()),
        DataType::Uint32 => le(c.uint_contents.iter().map(|&v| v.to_le_bytes().to_vec()).collect()),
        DataType::Uint64 => le(c.uint64_contents.iter().map(|&v| v.to_le_bytes().to_vec()).collect()),
        DataType::Fp32 => le(c.fp32_contents.iter().map(|&v| v.to_le_bytes().to_vec()).collect()),
        DataType::Fp64 => le(c.fp64_contents.iter().map(|&v| v.to_le_bytes().to_vec()).collect()),
        DataType::Bytes => le(c.bytes_contents.iter().map(|b| [&(b.len() as u32).to_le_bytes()[..], &b[..]].concat()).collect()),
        DataType::Fp16 | DataType::Bf16 => (0, Vec::new()),
    })
}

/// A request as a client could build it: datatype names valid or not, any shape, typed or raw data.
fn infer_request() -> impl Strategy<Value = ModelInferRequest> {
    let name = prop_oneof![
        4 => datatype().prop_map(|dt| dt.kserve_name().to_string()),
        1 => proptest::sample::select(vec!["", "fp32", "STRING", "FP8", " BYTES"]).prop_map(str::to_string),
    ];
    let input = (name, shape(), proptest::option::of(typed_contents())).prop_map(|(datatype, shape, contents)| {
        InferInputTensor { name: "x".into(), datatype, shape, contents, ..Default::default() }
    });
    (vec(input, 0..4), vec(payload().prop_map(Bytes::from), 0..4)).prop_map(|(inputs, raw_input_contents)| ModelInferRequest {
        model_name: "m".into(),
        inputs,
        raw_input_contents,
        ..Default::default()
    })
}

/// The tensor crate's part of decoding a request: datatype, payload (typed or the next raw one).
fn check_request(request: &ModelInferRequest) -> Result<(), TestCaseError> {
    let mut raw = request.raw_input_contents.iter();
    for input in &request.inputs {
        let Some(datatype) = DataType::from_kserve(&input.datatype) else {
            prop_assert!(DataType::ALL.iter().all(|dt| dt.kserve_name() != input.datatype));
            continue;
        };
        let typed = input.contents.as_ref().filter(|c| contents::has_typed_data(c));
        let data = match typed {
            Some(typed) => {
                let converted = contents::typed_to_raw(datatype, typed);
                prop_assert_eq!(converted.clone().map(|b| b.to_vec()), model_typed(datatype, typed).map(|(_, raw)| raw));
                match converted {
                    Ok(data) => data,
                    Err(_) => continue,
                }
            }
            None => raw.next().cloned().unwrap_or_default(),
        };
        check_tensor(&Tensor::new(input.name.clone(), datatype, input.shape.clone(), data))?;
    }
    Ok(())
}

proptest! {
    #![proptest_config(config())]

    /// Any datatype, shape and payload: `validate`, `element_count`, `to_vec` and `byte_strings`
    /// answer exactly as the model does, and what validates re-encodes to its own bytes.
    #[test]
    fn arbitrary_tensors_validate_like_the_model(datatype in datatype(), shape in shape(), data in payload()) {
        check_tensor(&Tensor::new("x", datatype, shape, Bytes::from(data)))?;
    }

    /// A payload of exactly the right size always validates and round-trips through typed values;
    /// one byte more or less is a `ByteSizeMismatch` naming both sizes.
    #[test]
    fn exact_fixed_size_payloads_round_trip(
        (datatype, shape, data) in (fixed_size_datatype(), vec(0i64..4, 0..4)).prop_flat_map(|(datatype, shape)| {
            let count: i64 = shape.iter().product();
            let size = datatype.element_size().unwrap_or(1);
            (Just(datatype), Just(shape), vec(any::<u8>(), count as usize * size))
        }),
        extra in any::<u8>(),
    ) {
        let tensor = Tensor::new("x", datatype, shape.clone(), Bytes::from(data.clone()));
        prop_assert_eq!(tensor.validate(), Ok(()));
        prop_assert_eq!(reencode(&tensor), Ok(Bytes::from(canonical(datatype, &data))));
        let expected = data.len();
        let mut longer = data.clone();
        longer.push(extra);
        let long = Tensor::new("x", datatype, shape.clone(), Bytes::from(longer));
        prop_assert_eq!(long.validate(), Err(TensorError::ByteSizeMismatch { expected, actual: expected + 1 }));
        if expected > 0 {
            let short = Tensor::new("x", datatype, shape, tensor.data.slice(..expected - 1));
            prop_assert_eq!(short.validate(), Err(TensorError::ByteSizeMismatch { expected, actual: expected - 1 }));
        }
    }

    /// Shapes with huge or negative dimensions are errors (or an honest size mismatch) found
    /// from the shape alone: an empty payload never makes the decoder allocate for the shape.
    #[test]
    fn huge_and_negative_shapes_are_errors(
        datatype in datatype(),
        shape in vec(prop_oneof![1i64..3, (1i64 << 31)..=i64::MAX, i64::MIN..0], 1..5),
    ) {
        let tensor = Tensor::new("x", datatype, shape.clone(), Bytes::new());
        let model = model_shape(datatype, &shape);
        prop_assert_eq!(element_count(&shape), model_count(&shape));
        prop_assert_eq!(expected_byte_size(datatype, &shape), model.clone().map(|(_, bytes)| bytes));
        match model {
            Err(error) => prop_assert_eq!(tensor.validate(), Err(error)),
            Ok((count, Some(expected))) => {
                prop_assert_eq!(tensor.validate(), Err(TensorError::ByteSizeMismatch { expected, actual: 0 }));
                prop_assert!(count > 0);
            }
            Ok((count, None)) => prop_assert_eq!(tensor.validate(), Err(TensorError::ElementCountMismatch { expected: count, actual: 0 })),
        }
        check_tensor(&tensor)?;
    }

    /// Arbitrary bytes parse as BYTES exactly like the slow parser: the same elements, or one
    /// `TruncatedBytes` at the same offset and then nothing; what parses re-encodes to itself.
    #[test]
    fn arbitrary_bytes_parse_like_the_model(data in payload()) {
        let parsed: Vec<Result<&[u8], TensorError>> = bytes_codec::iter(&data).collect();
        match model_elements(&data) {
            Ok(elements) => {
                prop_assert_eq!(parsed, elements.iter().map(|&e| Ok(e)).collect::<Vec<_>>());
                prop_assert_eq!(bytes_codec::count(&data), Ok(elements.len()));
                prop_assert_eq!(bytes_codec::try_encode(&elements), Ok(Bytes::from(data.clone())));
            }
            Err(offset) => {
                prop_assert_eq!(parsed.last(), Some(&Err(TensorError::TruncatedBytes { offset })));
                prop_assert!(parsed[..parsed.len() - 1].iter().all(Result::is_ok));
                prop_assert_eq!(bytes_codec::count(&data), Err(TensorError::TruncatedBytes { offset }));
            }
        }
    }

    /// A list of elements encodes, parses back to itself, validates against its own count and
    /// fails against any other; every cut inside an element names that element's offset.
    #[test]
    fn byte_element_lists_round_trip(items in vec(vec(any::<u8>(), 0..12), 0..6), cut in any::<prop::sample::Index>()) {
        let data = bytes_codec::encode(&items);
        let n = items.len();
        prop_assert_eq!(bytes_codec::encoded_len(&items), Some(data.len()));
        let tensor = Tensor::new("s", DataType::Bytes, vec![1, n as i64], data.clone());
        prop_assert_eq!(tensor.validate(), Ok(()));
        prop_assert_eq!(tensor.byte_strings(), Ok(items.iter().map(Vec::as_slice).collect::<Vec<_>>()));
        prop_assert_eq!(tensor.byte_elements(), Ok(items.iter().map(|i| Bytes::copy_from_slice(i)).collect::<Vec<_>>()));
        let more = Tensor::new("s", DataType::Bytes, vec![n as i64 + 1], data.clone());
        prop_assert_eq!(more.validate(), Err(TensorError::ElementCountMismatch { expected: n + 1, actual: n }));

        // Element starts, and the end of the data.
        let starts: Vec<usize> = items.iter().scan(0, |at, item| { let start = *at; *at += 4 + item.len(); Some(start) }).collect();
        let cut = cut.index(data.len() + 1);
        let expected = match starts.iter().rposition(|&start| start < cut) {
            Some(i) if cut < starts[i] + 4 + items[i].len() => Err(TensorError::TruncatedBytes { offset: starts[i] }),
            Some(i) => Ok(i + 1),
            None => Ok(0),
        };
        prop_assert_eq!(bytes_codec::count(&data[..cut]), expected);
    }

    /// Typed contents convert exactly as the model says, errors naming the offending field, and
    /// what converts is a valid tensor of that many elements.
    #[test]
    fn typed_contents_convert_like_the_model(datatype in datatype(), contents in typed_contents()) {
        let converted = contents::typed_to_raw(datatype, &contents);
        let model = model_typed(datatype, &contents);
        prop_assert_eq!(converted.clone().map(|b| b.to_vec()), model.clone().map(|(_, raw)| raw));
        if let (Ok(data), Ok((count, _))) = (converted, model) {
            check_tensor(&Tensor::new("x", datatype, vec![count as i64], data))?;
        }
    }

    /// Requests survive the protobuf round trip (compared as bytes: NaN is not equal to itself),
    /// and every input decodes like the model.
    #[test]
    fn infer_requests_decode_like_the_model(request in infer_request()) {
        let wire = request.encode_to_vec();
        let decoded = ModelInferRequest::decode(&wire[..]);
        prop_assert_eq!(decoded.as_ref().map(Message::encode_to_vec), Ok(wire));
        check_request(&request)?;
    }

    /// Arbitrary and corrupted protobuf bytes either fail to decode or decode to a request whose
    /// inputs still follow the model.
    #[test]
    fn corrupted_protobuf_decodes_or_fails(
        request in infer_request(),
        flips in vec((any::<prop::sample::Index>(), any::<u8>()), 0..4),
        noise in vec(any::<u8>(), 0..64),
        use_noise in any::<bool>(),
    ) {
        let mut wire = match use_noise {
            true => noise,
            false => request.encode_to_vec(),
        };
        if !wire.is_empty() {
            for (at, byte) in flips {
                let at = at.index(wire.len());
                wire[at] ^= byte;
            }
        }
        if let Ok(decoded) = ModelInferRequest::decode(&wire[..]) {
            check_request(&decoded)?;
        }
        if let Ok(contents) = InferTensorContents::decode(&wire[..]) {
            for datatype in DataType::ALL {
                let converted = contents::typed_to_raw(datatype, &contents).map(|b| b.to_vec());
                prop_assert_eq!(converted, model_typed(datatype, &contents).map(|(_, raw)| raw));
            }
        }
    }
}
