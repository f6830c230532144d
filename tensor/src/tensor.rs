//! A named tensor: datatype, shape and a shared, zero-copy raw payload.

use bytes::Bytes;

use crate::shape::{element_count, expected_byte_size};
use crate::{DataType, Element, TensorError, bytes_codec};

/// A tensor in the KServe raw layout: fixed-size elements little-endian and row-major with no
/// padding, BYTES elements each prefixed with a 4-byte little-endian length.
///
/// `data` is a [`Bytes`], so slicing a request buffer or handing an output to several readers
/// never copies the payload.
#[derive(Debug, Clone, PartialEq)]
pub struct Tensor {
    pub name: String,
    pub datatype: DataType,
    pub shape: Vec<i64>,
    pub data: Bytes,
}

impl Tensor {
    /// Builds a tensor as given, without checks; see [`Tensor::validate`].
    pub fn new(name: impl Into<String>, datatype: DataType, shape: Vec<i64>, data: Bytes) -> Tensor {
        Tensor { name: name.into(), datatype, shape, data }
    }

    /// Builds a tensor of `T::DATATYPE` from values, in the little-endian raw layout.
    pub fn from_slice<T: Element>(name: impl Into<String>, shape: Vec<i64>, values: &[T]) -> Tensor {
        let mut data = Vec::with_capacity(std::mem::size_of_val(values));
        T::write_slice_le(values, &mut data);
        Tensor::new(name, T::DATATYPE, shape, Bytes::from(data))
    }

    /// Builds a BYTES tensor, each element prefixed with its 4-byte little-endian length.
    ///
    /// # Panics
    ///
    /// If an element is longer than `u32::MAX` bytes; see [`bytes_codec::try_encode`].
    pub fn from_byte_strings<I, S>(name: impl Into<String>, shape: Vec<i64>, items: I) -> Tensor
    where
        I: IntoIterator<Item = S>,
        S: AsRef<[u8]>,
    {
        Tensor::new(name, DataType::Bytes, shape, bytes_codec::encode(items))
    }

    /// Number of elements the shape describes, overflow-checked.
    pub fn element_count(&self) -> Result<usize, TensorError> {
        element_count(&self.shape)
    }

    /// Checks the payload against datatype and shape: fixed-size types need
    /// `data.len() == count * size`; BYTES must parse completely into exactly `count` elements
    /// (checked in Triton's order, see [`bytes_codec::check_count`]).
    pub fn validate(&self) -> Result<(), TensorError> {
        match expected_byte_size(self.datatype, &self.shape)? {
            Some(expected) => check_byte_size(expected, self.data.len()),
            None => bytes_codec::check_count(&self.data, self.element_count()?),
        }
    }

    /// Copies the elements out as `T`; the datatype must be `T::DATATYPE` and the payload must
    /// match the shape.
    pub fn to_vec<T: Element>(&self) -> Result<Vec<T>, TensorError> {
        self.expect_datatype(T::DATATYPE)?;
        if let Some(expected) = expected_byte_size(self.datatype, &self.shape)? {
            check_byte_size(expected, self.data.len())?;
        }
        Ok(T::read_slice_le(&self.data))
    }

    /// The elements of a BYTES tensor, borrowed from the payload.
    ///
    /// Fails on another datatype or a truncated payload; the count is not checked against the
    /// shape (that is [`Tensor::validate`]'s job).
    pub fn byte_strings(&self) -> Result<Vec<&[u8]>, TensorError> {
        self.expect_datatype(DataType::Bytes)?;
        bytes_codec::iter(&self.data).collect()
    }

    /// Like [`Tensor::byte_strings`], but each element is a [`Bytes`] sharing the payload, for
    /// callers that need owned elements without copying.
    pub fn byte_elements(&self) -> Result<Vec<Bytes>, TensorError> {
        self.expect_datatype(DataType::Bytes)?;
        bytes_codec::iter(&self.data).map(|element| element.map(|e| self.data.slice_ref(e))).collect()
    }

    /// Payload length in bytes.
    pub fn byte_size(&self) -> usize {
        self.data.len()
    }

    fn expect_datatype(&self, expected: DataType) -> Result<(), TensorError> {
        match self.datatype == expected {
            true => Ok(()),
            false => Err(TensorError::DatatypeMismatch { expected, actual: self.datatype }),
        }
    }
}

fn check_byte_size(expected: usize, actual: usize) -> Result<(), TensorError> {
    match expected == actual {
        true => Ok(()),
        false => Err(TensorError::ByteSizeMismatch { expected, actual }),
    }
}

#[cfg(test)]
mod tests {
    use half::{bf16, f16};

    use super::*;

    fn round_trip<T: Element + PartialEq + std::fmt::Debug>(values: &[T]) {
        let shape = vec![1, values.len() as i64];
        let tensor = Tensor::from_slice("t", shape.clone(), values);
        assert_eq!(tensor.datatype, T::DATATYPE);
        assert_eq!(tensor.shape, shape);
        assert_eq!(tensor.byte_size(), values.len() * T::SIZE);
        assert_eq!(tensor.validate(), Ok(()));
        assert_eq!(tensor.element_count(), Ok(values.len()));
        assert_eq!(tensor.to_vec::<T>(), Ok(values.to_vec()));
        // The same bytes, arriving raw, read back the same.
        let raw = Tensor::new("t", T::DATATYPE, shape, Bytes::copy_from_slice(&tensor.data));
        assert_eq!(raw, tensor);
    }

    #[test]
    fn every_fixed_size_datatype_round_trips() {
        round_trip(&[true, false, false]);
        round_trip(&[0u8, 128, 255]);
        round_trip(&[1u16, u16::MAX]);
        round_trip(&[1u32, u32::MAX]);
        round_trip(&[1u64, u64::MAX]);
        round_trip(&[-128i8, 0, 127]);
        round_trip(&[i16::MIN, i16::MAX]);
        round_trip(&[i32::MIN, i32::MAX]);
        round_trip(&[i64::MIN, i64::MAX]);
        round_trip(&[f16::from_f32(0.5), f16::MIN]);
        round_trip(&[bf16::from_f32(0.5), bf16::MAX]);
        round_trip(&[0.5f32, f32::MIN]);
        round_trip(&[0.5f64, f64::MIN]);
    }

    #[test]
    fn bytes_round_trip() {
        let items: [&[u8]; 4] = [b"hello", b"", b"\0\xFF", b"world"];
        let tensor = Tensor::from_byte_strings("s", vec![2, 2], items);
        assert_eq!(tensor.datatype, DataType::Bytes);
        assert_eq!(tensor.validate(), Ok(()));
        assert_eq!(tensor.byte_strings(), Ok(items.to_vec()));
        let owned = tensor.byte_elements().expect("valid");
        assert_eq!(owned, items.iter().map(|b| Bytes::copy_from_slice(b)).collect::<Vec<_>>());
        // Owned elements share the payload.
        assert_eq!(owned[0].as_ptr(), tensor.data[4..].as_ptr());
    }

    #[test]
    fn every_datatype_has_a_round_trip() {
        // Guards against a datatype added to ALL without an Element (or BYTES) path.
        let covered = [
            bool::DATATYPE,
            u8::DATATYPE,
            u16::DATATYPE,
            u32::DATATYPE,
            u64::DATATYPE,
            i8::DATATYPE,
            i16::DATATYPE,
            i32::DATATYPE,
            i64::DATATYPE,
            f16::DATATYPE,
            bf16::DATATYPE,
            f32::DATATYPE,
            f64::DATATYPE,
            DataType::Bytes,
        ];
        for datatype in DataType::ALL {
            assert!(covered.contains(&datatype), "{datatype}");
        }
    }

    #[test]
    fn zero_element_tensors_are_valid() {
        assert_eq!(Tensor::new("z", DataType::Fp32, vec![0], Bytes::new()).validate(), Ok(()));
        assert_eq!(Tensor::new("z", DataType::Bytes, vec![0], Bytes::new()).validate(), Ok(()));
        assert_eq!(Tensor::new("z", DataType::Int64, vec![3, 0, 5], Bytes::new()).validate(), Ok(()));
        assert_eq!(Tensor::from_slice::<f32>("z", vec![0], &[]).to_vec::<f32>(), Ok(vec![]));
        assert_eq!(Tensor::from_byte_strings("z", vec![0], Vec::<&[u8]>::new()).byte_strings(), Ok(vec![]));
        assert_eq!(
            Tensor::new("z", DataType::Fp32, vec![0], Bytes::from_static(&[0; 4])).validate(),
            Err(TensorError::ByteSizeMismatch { expected: 0, actual: 4 })
        );
        assert_eq!(
            Tensor::new("z", DataType::Bytes, vec![0], Bytes::from_static(b"\0\0\0\0")).validate(),
            Err(TensorError::ElementCountMismatch { expected: 0, actual: 1 })
        );
    }

    #[test]
    fn scalar_shape_has_one_element() {
        let t = Tensor::from_slice("s", vec![], &[7i32]);
        assert_eq!(t.validate(), Ok(()));
        assert_eq!(t.to_vec::<i32>(), Ok(vec![7]));
    }

    #[test]
    fn byte_size_mismatches_are_reported() {
        let t = Tensor::new("x", DataType::Fp32, vec![2, 2], Bytes::from_static(&[0; 12]));
        assert_eq!(t.validate(), Err(TensorError::ByteSizeMismatch { expected: 16, actual: 12 }));
        assert_eq!(t.to_vec::<f32>(), Err(TensorError::ByteSizeMismatch { expected: 16, actual: 12 }));
        let t = Tensor::new("x", DataType::Bool, vec![3], Bytes::from_static(&[1; 4]));
        assert_eq!(t.validate(), Err(TensorError::ByteSizeMismatch { expected: 3, actual: 4 }));
    }

    #[test]
    fn raw_bool_bytes_pass_through_and_read_as_true() {
        let t = Tensor::new("b", DataType::Bool, vec![3], Bytes::from_static(&[0, 1, 2]));
        assert_eq!(t.validate(), Ok(()));
        assert_eq!(&t.data[..], &[0, 1, 2]);
        assert_eq!(t.to_vec::<bool>(), Ok(vec![false, true, true]));
    }

    #[test]
    fn shape_errors_surface_from_validate() {
        let t = Tensor::new("x", DataType::Fp32, vec![-1, 4], Bytes::new());
        assert_eq!(t.validate(), Err(TensorError::NegativeDimension { dim: -1 }));
        assert_eq!(t.element_count(), Err(TensorError::NegativeDimension { dim: -1 }));
        for shape in [vec![i64::MAX, 2], vec![1 << 32, 1 << 32]] {
            for datatype in [DataType::Uint8, DataType::Bytes] {
                let t = Tensor::new("x", datatype, shape.clone(), Bytes::new());
                assert_eq!(t.validate(), Err(TensorError::ShapeOverflow { shape: shape.clone() }));
            }
        }
        let t = Tensor::new("x", DataType::Int16, vec![i64::MAX], Bytes::new());
        assert_eq!(t.to_vec::<i16>(), Err(TensorError::ShapeOverflow { shape: vec![i64::MAX] }));
    }

    #[test]
    fn bytes_validation() {
        let ok = Tensor::from_byte_strings("s", vec![2], ["a", "bc"]);
        assert_eq!(ok.validate(), Ok(()));
        let t = Tensor::new("s", DataType::Bytes, vec![3], ok.data.clone());
        assert_eq!(t.validate(), Err(TensorError::ElementCountMismatch { expected: 3, actual: 2 }));
        let t = Tensor::new("s", DataType::Bytes, vec![1], ok.data.clone());
        assert_eq!(t.validate(), Err(TensorError::ElementCountMismatch { expected: 1, actual: 2 }));
        // One element past the shape ends the check, whatever follows.
        let t = Tensor::new("s", DataType::Bytes, vec![1], ok.data.slice(..10));
        assert_eq!(t.validate(), Err(TensorError::ElementCountMismatch { expected: 1, actual: 2 }));
        // Short prefix after the first element, then a short body.
        let t = Tensor::new("s", DataType::Bytes, vec![2], ok.data.slice(..7));
        assert_eq!(t.validate(), Err(TensorError::TruncatedBytesPrefix { offset: 5, available: 2 }));
        assert_eq!(t.byte_strings(), Err(TensorError::TruncatedBytes { offset: 5 }));
        let t = Tensor::new("s", DataType::Bytes, vec![2], ok.data.slice(..10));
        assert_eq!(t.validate(), Err(TensorError::TruncatedBytes { offset: 5 }));
        assert_eq!(t.byte_elements(), Err(TensorError::TruncatedBytes { offset: 5 }));
        // Extra bytes after the last element are a truncated element, not ignored.
        let mut extra = ok.data.to_vec();
        extra.push(0);
        let t = Tensor::new("s", DataType::Bytes, vec![2], Bytes::from(extra));
        assert_eq!(t.validate(), Err(TensorError::TruncatedBytesPrefix { offset: 11, available: 1 }));
    }

    #[test]
    fn datatype_must_match() {
        let t = Tensor::from_slice("x", vec![2], &[1.0f32, 2.0]);
        assert_eq!(t.to_vec::<i32>(), Err(TensorError::DatatypeMismatch { expected: DataType::Int32, actual: DataType::Fp32 }));
        assert_eq!(t.byte_strings(), Err(TensorError::DatatypeMismatch { expected: DataType::Bytes, actual: DataType::Fp32 }));
        let s = Tensor::from_byte_strings("s", vec![1], ["a"]);
        assert_eq!(s.to_vec::<u8>(), Err(TensorError::DatatypeMismatch { expected: DataType::Uint8, actual: DataType::Bytes }));
    }

    #[test]
    fn from_slice_writes_little_endian() {
        let t = Tensor::from_slice("x", vec![2], &[1u16, 0x0203]);
        assert_eq!(&t.data[..], &[1, 0, 3, 2]);
        let t = Tensor::from_slice("x", vec![2], &[-1i8, 5]);
        assert_eq!(&t.data[..], &[0xFF, 5]);
        let t = Tensor::from_slice("x", vec![2], &[true, false]);
        assert_eq!(&t.data[..], &[1, 0]);
    }
}
