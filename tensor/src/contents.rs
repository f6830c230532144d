//! Typed `InferTensorContents` to the raw layout, following Triton's rules.
//!
//! Clients normally send `raw_input_contents`; typed contents come from grpcurl/JSON users and
//! third-party clients. Each datatype has exactly one typed field, INT8/INT16 and UINT8/UINT16
//! share the 32-bit fields and are narrowed by keeping the low bytes (Triton turns INT8 300 into
//! 44), and FP16/BF16 have no typed field at all.

use bytes::Bytes;
use tritium_proto::inference::InferTensorContents;

use crate::{DataType, Element, TensorError, bytes_codec};

const BOOL: &str = "bool_contents";
const INT: &str = "int_contents";
const INT64: &str = "int64_contents";
const UINT: &str = "uint_contents";
const UINT64: &str = "uint64_contents";
const FP32: &str = "fp32_contents";
const FP64: &str = "fp64_contents";
const BYTES: &str = "bytes_contents";

/// Name of the typed field that carries `datatype` (`"fp32_contents"`, ...), `None` for FP16/BF16.
pub fn field_for(datatype: DataType) -> Option<&'static str> {
    match datatype {
        DataType::Bool => Some(BOOL),
        DataType::Int8 | DataType::Int16 | DataType::Int32 => Some(INT),
        DataType::Int64 => Some(INT64),
        DataType::Uint8 | DataType::Uint16 | DataType::Uint32 => Some(UINT),
        DataType::Uint64 => Some(UINT64),
        DataType::Fp32 => Some(FP32),
        DataType::Fp64 => Some(FP64),
        DataType::Bytes => Some(BYTES),
        DataType::Fp16 | DataType::Bf16 => None,
    }
}

/// True when any typed field holds at least one value.
pub fn has_typed_data(contents: &InferTensorContents) -> bool {
    first_filled_field(contents, None).is_some()
}

/// Converts typed contents to the raw layout for `datatype`.
///
/// Only the field for `datatype` may hold data; a value in any other field gives
/// [`TensorError::UnexpectedTypedField`] naming that field, and any typed data for FP16/BF16
/// gives [`TensorError::NoTypedField`]. An empty field gives an empty payload: checking it
/// against the shape is [`Tensor::validate`](crate::Tensor::validate)'s job.
pub fn typed_to_raw(datatype: DataType, contents: &InferTensorContents) -> Result<Bytes, TensorError> {
    let Some(field) = field_for(datatype) else {
        return match has_typed_data(contents) {
            true => Err(TensorError::NoTypedField { datatype }),
            false => Ok(Bytes::new()),
        };
    };
    if let Some(field) = first_filled_field(contents, Some(field)) {
        return Err(TensorError::UnexpectedTypedField { field, datatype });
    }
    let c = contents;
    Ok(match datatype {
        DataType::Bool => narrow(&c.bool_contents, u8::from),
        DataType::Int8 => narrow(&c.int_contents, |v| v as i8),
        DataType::Int16 => narrow(&c.int_contents, |v| v as i16),
        DataType::Int32 => copy(&c.int_contents),
        DataType::Int64 => copy(&c.int64_contents),
        DataType::Uint8 => narrow(&c.uint_contents, |v| v as u8),
        DataType::Uint16 => narrow(&c.uint_contents, |v| v as u16),
        DataType::Uint32 => copy(&c.uint_contents),
        DataType::Uint64 => copy(&c.uint64_contents),
        DataType::Fp32 => copy(&c.fp32_contents),
        DataType::Fp64 => copy(&c.fp64_contents),
        DataType::Bytes => return encode_bytes(&c.bytes_contents),
        DataType::Fp16 | DataType::Bf16 => Bytes::new(),
    })
}

/// The first non-empty typed field other than `except`.
fn first_filled_field(c: &InferTensorContents, except: Option<&'static str>) -> Option<&'static str> {
    [
        (BOOL, c.bool_contents.is_empty()),
        (INT, c.int_contents.is_empty()),
        (INT64, c.int64_contents.is_empty()),
        (UINT, c.uint_contents.is_empty()),
        (UINT64, c.uint64_contents.is_empty()),
        (FP32, c.fp32_contents.is_empty()),
        (FP64, c.fp64_contents.is_empty()),
        (BYTES, c.bytes_contents.is_empty()),
    ]
    .into_iter()
    .find(|&(name, empty)| !empty && Some(name) != except)
    .map(|(name, _)| name)
}

fn copy<T: Element>(values: &[T]) -> Bytes {
    let mut out = Vec::with_capacity(values.len() * T::SIZE);
    T::write_slice_le(values, &mut out);
    Bytes::from(out)
}

/// Keeps the low bytes of each value, as Triton does when the field is wider than the datatype.
fn narrow<S: Copy, T: Element>(values: &[S], cast: impl Fn(S) -> T) -> Bytes {
    let mut out = Vec::with_capacity(values.len() * T::SIZE);
    for &value in values {
        cast(value).write_le(&mut out);
    }
    Bytes::from(out)
}

fn encode_bytes(items: &[Bytes]) -> Result<Bytes, TensorError> {
    let mut out = Vec::new();
    // An overflowing total is impossible for data that fits in memory; without the hint the
    // vector just grows.
    if let Some(len) = bytes_codec::encoded_len(items) {
        let _ = out.try_reserve_exact(len);
    }
    for item in items {
        bytes_codec::push(&mut out, item)?;
    }
    Ok(Bytes::from(out))
}

#[cfg(test)]
mod tests {
    use half::{bf16, f16};

    use super::*;
    use crate::Tensor;

    fn raw(datatype: DataType, contents: InferTensorContents) -> Result<Bytes, TensorError> {
        typed_to_raw(datatype, &contents)
    }

    #[test]
    fn every_typed_datatype_converts() {
        let ints = vec![-1, 0, 7];
        let cases: Vec<(DataType, InferTensorContents, Vec<u8>)> = vec![
            (DataType::Bool, InferTensorContents { bool_contents: vec![true, false], ..Default::default() }, vec![1, 0]),
            (DataType::Int8, InferTensorContents { int_contents: ints.clone(), ..Default::default() }, vec![0xFF, 0, 7]),
            (
                DataType::Int16,
                InferTensorContents { int_contents: ints.clone(), ..Default::default() },
                vec![0xFF, 0xFF, 0, 0, 7, 0],
            ),
            (
                DataType::Int32,
                InferTensorContents { int_contents: ints, ..Default::default() },
                vec![0xFF, 0xFF, 0xFF, 0xFF, 0, 0, 0, 0, 7, 0, 0, 0],
            ),
            (DataType::Uint8, InferTensorContents { uint_contents: vec![1, 255], ..Default::default() }, vec![1, 255]),
            (DataType::Uint16, InferTensorContents { uint_contents: vec![0x0102], ..Default::default() }, vec![2, 1]),
            (DataType::Uint32, InferTensorContents { uint_contents: vec![0x0102_0304], ..Default::default() }, vec![4, 3, 2, 1]),
            (
                DataType::Bytes,
                InferTensorContents { bytes_contents: vec![Bytes::from_static(b"hi")], ..Default::default() },
                b"\x02\0\0\0hi".to_vec(),
            ),
        ];
        for (datatype, contents, expected) in cases {
            assert_eq!(raw(datatype, contents).as_deref(), Ok(&expected[..]), "{datatype}");
        }
    }

    #[test]
    fn wide_types_round_trip_through_tensors() {
        let i64s = vec![i64::MIN, -1, i64::MAX];
        let u64s = vec![0, u64::MAX];
        let f32s = vec![1.5f32, -0.25, f32::INFINITY];
        let f64s = vec![1e300, -0.0];
        let check = |datatype: DataType, contents: InferTensorContents, n: i64| {
            let data = typed_to_raw(datatype, &contents).expect("converts");
            let tensor = Tensor::new("x", datatype, vec![n], data);
            tensor.validate().expect("valid");
            tensor
        };
        let t = check(DataType::Int64, InferTensorContents { int64_contents: i64s.clone(), ..Default::default() }, 3);
        assert_eq!(t.to_vec::<i64>(), Ok(i64s));
        let t = check(DataType::Uint64, InferTensorContents { uint64_contents: u64s.clone(), ..Default::default() }, 2);
        assert_eq!(t.to_vec::<u64>(), Ok(u64s));
        let t = check(DataType::Fp32, InferTensorContents { fp32_contents: f32s.clone(), ..Default::default() }, 3);
        assert_eq!(t.to_vec::<f32>(), Ok(f32s));
        let t = check(DataType::Fp64, InferTensorContents { fp64_contents: f64s.clone(), ..Default::default() }, 2);
        assert_eq!(t.to_vec::<f64>(), Ok(f64s));
        let items = vec![Bytes::from_static(b"a"), Bytes::new(), Bytes::from_static(b"\0xyz")];
        let t = check(DataType::Bytes, InferTensorContents { bytes_contents: items.clone(), ..Default::default() }, 3);
        assert_eq!(t.byte_strings(), Ok(items.iter().map(|b| &b[..]).collect()));
    }

    #[test]
    fn narrowing_keeps_the_low_bytes_like_triton() {
        let int = |v: Vec<i32>| InferTensorContents { int_contents: v, ..Default::default() };
        let uint = |v: Vec<u32>| InferTensorContents { uint_contents: v, ..Default::default() };
        assert_eq!(raw(DataType::Int8, int(vec![300, -129, 128])).as_deref(), Ok(&[44, 0x7F, 0x80][..]));
        assert_eq!(raw(DataType::Uint8, uint(vec![300, 256, u32::MAX])).as_deref(), Ok(&[44, 0, 0xFF][..]));
        assert_eq!(raw(DataType::Int16, int(vec![70000])).as_deref(), Ok(&4464i16.to_le_bytes()[..]));
        assert_eq!(raw(DataType::Uint16, uint(vec![0x1_0005])).as_deref(), Ok(&[5, 0][..]));
        let t = Tensor::new("x", DataType::Int8, vec![1], raw(DataType::Int8, int(vec![300])).expect("converts"));
        assert_eq!(t.to_vec::<i8>(), Ok(vec![44]));
    }

    #[test]
    fn wrong_field_is_rejected_with_its_name() {
        let fp32 = InferTensorContents { fp32_contents: vec![1.0], ..Default::default() };
        assert_eq!(
            raw(DataType::Int32, fp32.clone()),
            Err(TensorError::UnexpectedTypedField { field: "fp32_contents", datatype: DataType::Int32 })
        );
        assert_eq!(
            raw(DataType::Fp64, fp32),
            Err(TensorError::UnexpectedTypedField { field: "fp32_contents", datatype: DataType::Fp64 })
        );
        let int64 = InferTensorContents { int64_contents: vec![1], ..Default::default() };
        assert_eq!(
            raw(DataType::Int32, int64),
            Err(TensorError::UnexpectedTypedField { field: "int64_contents", datatype: DataType::Int32 })
        );
        let bytes = InferTensorContents { bytes_contents: vec![Bytes::new()], ..Default::default() };
        assert_eq!(
            raw(DataType::Uint8, bytes),
            Err(TensorError::UnexpectedTypedField { field: "bytes_contents", datatype: DataType::Uint8 })
        );
    }

    #[test]
    fn mixed_fields_are_rejected_even_with_the_right_one_filled() {
        let mixed = InferTensorContents { int_contents: vec![1], uint_contents: vec![2], ..Default::default() };
        assert_eq!(
            raw(DataType::Int32, mixed.clone()),
            Err(TensorError::UnexpectedTypedField { field: "uint_contents", datatype: DataType::Int32 })
        );
        assert_eq!(
            raw(DataType::Uint32, mixed),
            Err(TensorError::UnexpectedTypedField { field: "int_contents", datatype: DataType::Uint32 })
        );
    }

    #[test]
    fn half_precision_has_no_typed_field() {
        for datatype in [DataType::Fp16, DataType::Bf16] {
            assert_eq!(field_for(datatype), None);
            let fp32 = InferTensorContents { fp32_contents: vec![1.0], ..Default::default() };
            assert_eq!(raw(datatype, fp32), Err(TensorError::NoTypedField { datatype }));
            let uint = InferTensorContents { uint_contents: vec![0x3C00], ..Default::default() };
            assert_eq!(raw(datatype, uint), Err(TensorError::NoTypedField { datatype }));
            assert_eq!(raw(datatype, InferTensorContents::default()), Ok(Bytes::new()));
        }
        // Raw half data is fine; it just cannot come typed.
        let t = Tensor::from_slice("h", vec![1], &[f16::ONE]);
        assert_eq!(t.validate(), Ok(()));
        let t = Tensor::from_slice("h", vec![1], &[bf16::ONE]);
        assert_eq!(t.validate(), Ok(()));
    }

    #[test]
    fn empty_contents_give_empty_payloads() {
        for datatype in DataType::ALL {
            assert_eq!(raw(datatype, InferTensorContents::default()), Ok(Bytes::new()), "{datatype}");
        }
        let zero = Tensor::new("z", DataType::Fp32, vec![0], raw(DataType::Fp32, InferTensorContents::default()).expect("empty"));
        assert_eq!(zero.validate(), Ok(()));
        let zero =
            Tensor::new("z", DataType::Bytes, vec![0], raw(DataType::Bytes, InferTensorContents::default()).expect("empty"));
        assert_eq!(zero.validate(), Ok(()));
    }

    #[test]
    fn detects_typed_data_and_names_fields() {
        assert!(!has_typed_data(&InferTensorContents::default()));
        assert!(has_typed_data(&InferTensorContents { bool_contents: vec![false], ..Default::default() }));
        assert!(has_typed_data(&InferTensorContents { bytes_contents: vec![Bytes::new()], ..Default::default() }));
        assert!(has_typed_data(&InferTensorContents { fp64_contents: vec![0.0], ..Default::default() }));
        assert_eq!(field_for(DataType::Int8), Some("int_contents"));
        assert_eq!(field_for(DataType::Uint16), Some("uint_contents"));
        assert_eq!(field_for(DataType::Fp32), Some("fp32_contents"));
        assert_eq!(field_for(DataType::Bytes), Some("bytes_contents"));
        assert_eq!(field_for(DataType::Bool), Some("bool_contents"));
    }

    #[test]
    fn output_capacity_is_exact() {
        let contents = InferTensorContents { fp32_contents: vec![1.0; 1000], ..Default::default() };
        assert_eq!(raw(DataType::Fp32, contents).map(|b| b.len()), Ok(4000));
        let items = vec![Bytes::from_static(b"abc"); 10];
        assert_eq!(encode_bytes(&items).map(|b| b.len()), Ok(70));
    }
}
