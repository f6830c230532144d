//! Overflow-checked element counts and byte sizes of shapes.
//!
//! Shapes come straight from clients as `i64`s, so every product is checked: a shape like
//! `[1 << 32, 1 << 32]` must become an error, never a wrapped small number.

use crate::{DataType, TensorError};

/// Number of elements in `shape`; `[]` (a scalar) has one.
///
/// Negative dimensions give [`TensorError::NegativeDimension`]. A product above `usize::MAX` or
/// `i64::MAX` gives [`TensorError::ShapeOverflow`], unless a dimension is zero: then the count is
/// zero whatever the other dimensions are.
pub fn element_count(shape: &[i64]) -> Result<usize, TensorError> {
    if let Some(&dim) = shape.iter().find(|&&d| d < 0) {
        return Err(TensorError::NegativeDimension { dim });
    }
    if shape.contains(&0) {
        return Ok(0);
    }
    let mut count: i64 = 1;
    for &dim in shape {
        count = count.checked_mul(dim).ok_or_else(|| overflow(shape))?;
    }
    usize::try_from(count).map_err(|_| overflow(shape))
}

/// Raw byte size of a tensor of `datatype` and `shape`: `None` for BYTES, whose size depends on
/// its elements. Overflow-checked like [`element_count`], the byte size included.
pub fn expected_byte_size(datatype: DataType, shape: &[i64]) -> Result<Option<usize>, TensorError> {
    let count = element_count(shape)?;
    let Some(size) = datatype.element_size() else {
        return Ok(None);
    };
    count.checked_mul(size).filter(|&bytes| i64::try_from(bytes).is_ok()).map(Some).ok_or_else(|| overflow(shape))
}

/// Formats a shape the way Triton's messages do: `[-1,16]`.
pub fn format_shape(shape: &[i64]) -> String {
    let mut out = String::with_capacity(2 + shape.len() * 4);
    out.push('[');
    for (i, dim) in shape.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push_str(&dim.to_string());
    }
    out.push(']');
    out
}

fn overflow(shape: &[i64]) -> TensorError {
    TensorError::ShapeOverflow { shape: shape.to_vec() }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_ordinary_shapes() {
        assert_eq!(element_count(&[]), Ok(1));
        assert_eq!(element_count(&[1]), Ok(1));
        assert_eq!(element_count(&[2, 3, 4]), Ok(24));
        assert_eq!(element_count(&[0]), Ok(0));
        assert_eq!(element_count(&[4, 0, 7]), Ok(0));
    }

    #[test]
    fn negative_dimensions_are_rejected() {
        assert_eq!(element_count(&[-1]), Err(TensorError::NegativeDimension { dim: -1 }));
        assert_eq!(element_count(&[2, -3]), Err(TensorError::NegativeDimension { dim: -3 }));
        // The negative dimension wins over an overflow or a zero elsewhere.
        assert_eq!(element_count(&[i64::MAX, i64::MAX, -2]), Err(TensorError::NegativeDimension { dim: -2 }));
        assert_eq!(element_count(&[0, i64::MIN]), Err(TensorError::NegativeDimension { dim: i64::MIN }));
        assert_eq!(expected_byte_size(DataType::Fp32, &[-1, 4]), Err(TensorError::NegativeDimension { dim: -1 }));
        assert_eq!(expected_byte_size(DataType::Bytes, &[-1]), Err(TensorError::NegativeDimension { dim: -1 }));
    }

    #[test]
    fn overflowing_shapes_are_rejected() {
        for shape in [vec![i64::MAX, 2], vec![1 << 32, 1 << 32], vec![1 << 21, 1 << 21, 1 << 21], vec![3, i64::MAX / 2]] {
            assert_eq!(element_count(&shape), Err(TensorError::ShapeOverflow { shape: shape.clone() }), "{shape:?}");
            assert_eq!(expected_byte_size(DataType::Bytes, &shape), Err(TensorError::ShapeOverflow { shape }));
        }
        // Not an overflow when a dimension is zero.
        assert_eq!(element_count(&[i64::MAX, i64::MAX, 0]), Ok(0));
    }

    #[test]
    fn the_largest_counts_still_fit() {
        assert_eq!(element_count(&[i64::MAX]), Ok(i64::MAX as usize));
        assert_eq!(element_count(&[1 << 31, 1 << 31]), Ok(1 << 62));
        // The count fits but the byte size does not.
        let shape = [1i64 << 62];
        assert_eq!(expected_byte_size(DataType::Uint8, &shape), Ok(Some(1 << 62)));
        assert_eq!(expected_byte_size(DataType::Fp16, &shape), Err(TensorError::ShapeOverflow { shape: shape.to_vec() }));
        assert_eq!(expected_byte_size(DataType::Int64, &[i64::MAX]), Err(TensorError::ShapeOverflow { shape: vec![i64::MAX] }));
    }

    #[test]
    fn byte_sizes() {
        assert_eq!(expected_byte_size(DataType::Fp32, &[2, 3]), Ok(Some(24)));
        assert_eq!(expected_byte_size(DataType::Bool, &[5]), Ok(Some(5)));
        assert_eq!(expected_byte_size(DataType::Bf16, &[]), Ok(Some(2)));
        assert_eq!(expected_byte_size(DataType::Fp64, &[0]), Ok(Some(0)));
        assert_eq!(expected_byte_size(DataType::Bytes, &[2, 3]), Ok(None));
    }

    #[test]
    fn shapes_format_like_triton() {
        assert_eq!(format_shape(&[]), "[]");
        assert_eq!(format_shape(&[-1, 16]), "[-1,16]");
        assert_eq!(format_shape(&[3]), "[3]");
    }
}
