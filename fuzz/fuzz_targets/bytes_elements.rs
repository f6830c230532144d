//! Arbitrary bytes as a BYTES payload (4-byte little-endian length, then the element): either
//! every element parses and the list encodes back to exactly these bytes, or the iterator yields
//! one `TruncatedBytes` inside the data, after the elements before it, and then stops.

#![no_main]

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use tritium_tensor::{DataType, Tensor, TensorError, bytes_codec};

fuzz_target!(|data: &[u8]| {
    let items: Vec<Result<&[u8], TensorError>> = bytes_codec::iter(data).collect();
    let count = bytes_codec::count(data);
    match items.iter().position(Result::is_err) {
        None => {
            let elements: Vec<&[u8]> = items.into_iter().flatten().collect();
            assert_eq!(count, Ok(elements.len()));
            assert_eq!(bytes_codec::encoded_len(&elements), Some(data.len()));
            assert_eq!(&bytes_codec::encode(&elements)[..], data);
            let tensor = Tensor::new("s", DataType::Bytes, vec![elements.len() as i64], Bytes::copy_from_slice(data));
            assert_eq!(tensor.validate(), Ok(()));
            assert_eq!(tensor.byte_strings(), Ok(elements));
        }
        Some(at) => {
            assert_eq!(at, items.len() - 1, "the error ends the iteration");
            let Err(TensorError::TruncatedBytes { offset }) = items[at] else { panic!("{:?}", items[at]) };
            assert!(offset < data.len());
            assert_eq!(count, Err(TensorError::TruncatedBytes { offset }));
            // The elements before the cut are themselves a complete payload.
            assert_eq!(bytes_codec::count(&data[..offset]), Ok(at));
        }
    }
});
