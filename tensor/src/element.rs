//! Fixed-size element types and their little-endian raw layout.

use half::{bf16, f16};

use crate::DataType;

/// A fixed-size element type: `bool`, `u8`, `u16`, `u32`, `u64`, `i8`, `i16`, `i32`, `i64`,
/// `half::f16`, `half::bf16`, `f32`, `f64`.
///
/// The slice methods have element-by-element defaults; the implementations here override them
/// with loops over fixed-size chunks that the compiler turns into plain copies on little-endian
/// targets.
pub trait Element: Copy + Send + Sync + 'static {
    /// The KServe datatype whose raw layout this type reads and writes.
    const DATATYPE: DataType;
    /// Bytes per element in the raw layout.
    const SIZE: usize;

    /// Reads one element from its little-endian bytes.
    ///
    /// Callers pass exactly `SIZE` bytes; a shorter slice is read as if zero-padded rather than
    /// panicking. For `bool` any non-zero byte is `true`.
    fn read_le(bytes: &[u8]) -> Self;

    /// Appends the element's little-endian bytes to `out`.
    fn write_le(self, out: &mut Vec<u8>);

    /// Appends every value's little-endian bytes to `out`.
    fn write_slice_le(values: &[Self], out: &mut Vec<u8>) {
        out.reserve(values.len().saturating_mul(Self::SIZE));
        for &value in values {
            value.write_le(out);
        }
    }

    /// Reads every whole element of `bytes`; a trailing partial element is ignored.
    fn read_slice_le(bytes: &[u8]) -> Vec<Self> {
        bytes.chunks_exact(Self::SIZE).map(Self::read_le).collect()
    }
}

/// Copies up to `N` bytes into an array, zero-padding a short slice.
#[inline]
fn le_array<const N: usize>(bytes: &[u8]) -> [u8; N] {
    match bytes.first_chunk::<N>() {
        Some(array) => *array,
        None => {
            let mut array = [0u8; N];
            array[..bytes.len()].copy_from_slice(bytes);
            array
        }
    }
}

macro_rules! numeric_element {
    ($($ty:ty => $datatype:ident),* $(,)?) => {$(
        impl Element for $ty {
            const DATATYPE: DataType = DataType::$datatype;
            const SIZE: usize = std::mem::size_of::<$ty>();

            #[inline]
            fn read_le(bytes: &[u8]) -> Self {
                <$ty>::from_le_bytes(le_array(bytes))
            }

            #[inline]
            fn write_le(self, out: &mut Vec<u8>) {
                out.extend_from_slice(&self.to_le_bytes());
            }

            fn write_slice_le(values: &[Self], out: &mut Vec<u8>) {
                if cfg!(target_endian = "little") {
                    // The memory layout is the wire layout: one memcpy. An element-wise copy
                    // between two heap buffers a multiple of 4 KiB apart ran at a sixth of the
                    // speed (store-to-load 4K aliasing), which hit every size under malloc's
                    // mmap threshold.
                    out.extend_from_slice(bytemuck::cast_slice(values));
                    return;
                }
                // In-memory slices never exceed isize::MAX bytes, so this cannot overflow.
                let start = out.len();
                out.resize(start + values.len() * Self::SIZE, 0);
                for (chunk, value) in out[start..].chunks_exact_mut(Self::SIZE).zip(values) {
                    chunk.copy_from_slice(&value.to_le_bytes());
                }
            }

            fn read_slice_le(bytes: &[u8]) -> Vec<Self> {
                let whole = &bytes[..bytes.len() / Self::SIZE * Self::SIZE];
                if cfg!(target_endian = "little") {
                    // Copies whatever the alignment of `bytes`.
                    return bytemuck::pod_collect_to_vec(whole);
                }
                whole.chunks_exact(Self::SIZE).map(Self::read_le).collect()
            }
        }
    )*};
}

numeric_element! {
    u16 => Uint16,
    u32 => Uint32,
    u64 => Uint64,
    i8 => Int8,
    i16 => Int16,
    i32 => Int32,
    i64 => Int64,
    f16 => Fp16,
    bf16 => Bf16,
    f32 => Fp32,
    f64 => Fp64,
}

impl Element for u8 {
    const DATATYPE: DataType = DataType::Uint8;
    const SIZE: usize = 1;

    #[inline]
    fn read_le(bytes: &[u8]) -> Self {
        bytes.first().copied().unwrap_or(0)
    }

    #[inline]
    fn write_le(self, out: &mut Vec<u8>) {
        out.push(self);
    }

    fn write_slice_le(values: &[Self], out: &mut Vec<u8>) {
        out.extend_from_slice(values);
    }

    fn read_slice_le(bytes: &[u8]) -> Vec<Self> {
        bytes.to_vec()
    }
}

impl Element for bool {
    const DATATYPE: DataType = DataType::Bool;
    const SIZE: usize = 1;

    #[inline]
    fn read_le(bytes: &[u8]) -> Self {
        bytes.first().is_some_and(|&b| b != 0)
    }

    #[inline]
    fn write_le(self, out: &mut Vec<u8>) {
        out.push(u8::from(self));
    }

    fn write_slice_le(values: &[Self], out: &mut Vec<u8>) {
        out.extend(values.iter().map(|&b| u8::from(b)));
    }

    fn read_slice_le(bytes: &[u8]) -> Vec<Self> {
        bytes.iter().map(|&b| b != 0).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn round_trip<T: Element + PartialEq + std::fmt::Debug>(values: &[T]) {
        let mut one_by_one = Vec::new();
        for &v in values {
            v.write_le(&mut one_by_one);
        }
        let mut bulk = vec![0xAA];
        T::write_slice_le(values, &mut bulk);
        assert_eq!(&bulk[1..], &one_by_one[..], "{:?}", T::DATATYPE);
        assert_eq!(one_by_one.len(), values.len() * T::SIZE);
        assert_eq!(T::read_slice_le(&one_by_one), values);
        // Payloads sit anywhere in a request buffer: a misaligned slice reads the same.
        assert_eq!(T::read_slice_le(&bulk[1..]), values);
        let singles: Vec<T> = one_by_one.chunks(T::SIZE).map(T::read_le).collect();
        assert_eq!(singles, values);
        assert_eq!(Some(T::SIZE), T::DATATYPE.element_size());
    }

    #[test]
    fn every_element_type_round_trips() {
        round_trip(&[true, false, true]);
        round_trip(&[0u8, 1, 255]);
        round_trip(&[0u16, 1, u16::MAX]);
        round_trip(&[0u32, 7, u32::MAX]);
        round_trip(&[0u64, 7, u64::MAX]);
        round_trip(&[i8::MIN, -1, 0, i8::MAX]);
        round_trip(&[i16::MIN, -1, 0, i16::MAX]);
        round_trip(&[i32::MIN, -1, 0, i32::MAX]);
        round_trip(&[i64::MIN, -1, 0, i64::MAX]);
        round_trip(&[f16::from_f32(1.5), f16::NEG_INFINITY, f16::MAX]);
        round_trip(&[bf16::from_f32(-2.25), bf16::INFINITY, bf16::MIN_POSITIVE]);
        round_trip(&[1.5f32, -0.0, f32::MAX, f32::MIN_POSITIVE]);
        round_trip(&[1.5f64, -0.0, f64::MAX, f64::EPSILON]);
        round_trip::<f32>(&[]);
    }

    #[test]
    fn layout_is_little_endian() {
        let mut out = Vec::new();
        0x0102_0304u32.write_le(&mut out);
        (-2i16).write_le(&mut out);
        1.0f32.write_le(&mut out);
        assert_eq!(out, [4, 3, 2, 1, 0xFE, 0xFF, 0, 0, 0x80, 0x3F]);
        assert_eq!(f16::read_le(&[0x00, 0x3C]), f16::ONE);
        assert_eq!(bf16::read_le(&[0x80, 0x3F]), bf16::ONE);
    }

    #[test]
    fn any_non_zero_byte_is_true() {
        assert!(bool::read_le(&[2]));
        assert!(bool::read_le(&[0xFF]));
        assert!(!bool::read_le(&[0]));
        assert_eq!(bool::read_slice_le(&[0, 1, 2, 0]), [false, true, true, false]);
    }

    #[test]
    fn short_input_does_not_panic() {
        assert_eq!(u32::read_le(&[1, 2]), 0x0201);
        assert_eq!(u8::read_le(&[]), 0);
        assert!(!bool::read_le(&[]));
        assert_eq!(i64::read_slice_le(&[1, 0, 0, 0, 0, 0, 0, 0, 9]), [1]);
    }
}
