//! Client bytes as a KServe request: protobuf-decoded, every input resolved to one payload
//! (typed contents, or the next raw payload) and checked; then the same bytes split into a
//! datatype, a shape and a raw payload. A tensor that validates must read back through the typed
//! API to its own bytes, and one that does not must fail the typed read the same way.

#![no_main]

use bytes::Bytes;
use half::{bf16, f16};
use libfuzzer_sys::fuzz_target;
use prost::Message;
use tritium_proto::inference::ModelInferRequest;
use tritium_tensor::{DataType, Element, Tensor, TensorError, bytes_codec, contents};

fuzz_target!(|data: &[u8]| {
    if let Ok(request) = ModelInferRequest::decode(data) {
        let mut raw = request.raw_input_contents.iter();
        for input in &request.inputs {
            let Some(datatype) = DataType::from_kserve(&input.datatype) else { continue };
            let typed = input.contents.as_ref().filter(|c| contents::has_typed_data(c));
            let payload = match typed {
                Some(typed) => match contents::typed_to_raw(datatype, typed) {
                    Ok(payload) => payload,
                    Err(error) => {
                        assert!(matches!(error, TensorError::UnexpectedTypedField { .. } | TensorError::NoTypedField { .. }));
                        continue;
                    }
                },
                None => raw.next().cloned().unwrap_or_default(),
            };
            check(&Tensor::new(input.name.clone(), datatype, input.shape.clone(), payload));
        }
    }

    // [datatype byte][rank byte][rank little-endian i64 dims][payload]
    if let [kind, rank, rest @ ..] = data {
        let datatype = DataType::ALL[usize::from(*kind) % DataType::ALL.len()];
        let (dims, payload) = rest.split_at((usize::from(*rank) % 6 * 8).min(rest.len()));
        let shape = dims.chunks_exact(8).map(|d| i64::from_le_bytes(d.try_into().expect("8 bytes"))).collect();
        check(&Tensor::new("x", datatype, shape, Bytes::copy_from_slice(payload)));
    }
});

fn check(tensor: &Tensor) {
    let validated = tensor.validate();
    let reencoded = reencode(tensor);
    match (&validated, tensor.datatype) {
        (Ok(()), DataType::Bool) => {
            let canonical: Vec<u8> = tensor.data.iter().map(|&b| u8::from(b != 0)).collect();
            assert_eq!(reencoded.as_deref(), Ok(&canonical[..]));
        }
        (Ok(()), _) => assert_eq!(reencoded.as_ref(), Ok(&tensor.data)),
        // BYTES reads do not compare the element count with the shape.
        (Err(_), DataType::Bytes) => {
            if let Ok(again) = reencoded {
                assert_eq!(again, tensor.data);
            }
        }
        (Err(error), _) => assert_eq!(reencoded.as_ref().err(), Some(error)),
    }
    if let Err(error) = validated {
        assert_eq!(error.code(), tritium_proto::ErrorCode::InvalidArg);
    }
}

/// The payload read through the typed API and written again.
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
