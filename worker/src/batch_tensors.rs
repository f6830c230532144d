//! Stacking requests along the batch dimension and splitting a batch's outputs back: the tensor
//! side of the dynamic batcher. Splitting slices the backend's buffers (no copy) for fixed-size
//! types; BYTES tensors are cut at element boundaries.

use bytes::{Bytes, BytesMut};
use tritium_tensor::{DataType, Tensor};

/// Whether two requests' inputs may share a batch: the same names, datatypes and shapes after
/// the batch dimension; an input `ragged` names may differ in shape (not in rank).
pub fn compatible(a: &[Tensor], b: &[Tensor], ragged: impl Fn(&str) -> bool) -> bool {
    a.len() == b.len()
        && a.iter().zip(b).all(|(x, y)| {
            x.name == y.name
                && x.datatype == y.datatype
                && x.shape.len() == y.shape.len()
                && (x.shape.get(1..) == y.shape.get(1..) || ragged(&x.name))
        })
}

/// The inputs of several requests stacked along dimension 0 (one request's inputs as they are).
pub fn stack(requests: Vec<Vec<Tensor>>) -> Vec<Tensor> {
    let mut requests = requests.into_iter();
    let Some(first) = requests.next() else { return Vec::new() };
    let rest: Vec<Vec<Tensor>> = requests.collect();
    if rest.is_empty() {
        return first;
    }
    first
        .into_iter()
        .enumerate()
        .map(|(index, tensor)| {
            let others = || rest.iter().map(|inputs| &inputs[index]);
            let rows: i64 =
                tensor.shape.first().copied().unwrap_or(1) + others().map(|t| t.shape.first().copied().unwrap_or(1)).sum::<i64>();
            let mut data = BytesMut::with_capacity(tensor.data.len() + others().map(|t| t.data.len()).sum::<usize>());
            data.extend_from_slice(&tensor.data);
            others().for_each(|t| data.extend_from_slice(&t.data));
            let mut shape = tensor.shape.clone();
            if let Some(first_dim) = shape.first_mut() {
                *first_dim = rows;
            }
            Tensor::new(tensor.name, tensor.datatype, shape, data.freeze())
        })
        .collect()
}

/// Splits a batch's outputs into one set per request, `rows[i]` rows each; every output must have
/// the batch's rows in its first dimension.
pub fn split(outputs: Vec<Tensor>, rows: &[i64]) -> Result<Vec<Vec<Tensor>>, String> {
    let total: i64 = rows.iter().sum();
    let mut parts: Vec<Vec<Tensor>> = rows.iter().map(|_| Vec::with_capacity(outputs.len())).collect();
    for output in outputs {
        if output.shape.first() != Some(&total) {
            return Err(format!(
                "the backend's output '{}' has shape {:?}, which does not start with the batch's {total} rows",
                output.name, output.shape
            ));
        }
        let row_elements: usize = output.shape[1..].iter().map(|&d| usize::try_from(d).unwrap_or(0)).product();
        let bounds = row_bounds(&output, row_elements, total)?;
        let mut row = 0usize;
        for (part, &count) in parts.iter_mut().zip(rows) {
            let count = usize::try_from(count).unwrap_or(0);
            let data = output.data.slice(bounds[row]..bounds[row + count]);
            let mut shape = output.shape.clone();
            shape[0] = count as i64;
            part.push(Tensor::new(output.name.clone(), output.datatype, shape, data));
            row += count;
        }
    }
    Ok(parts)
}

/// The byte offset where each row starts, and the end: `total + 1` offsets.
fn row_bounds(output: &Tensor, row_elements: usize, total: i64) -> Result<Vec<usize>, String> {
    let rows = usize::try_from(total).unwrap_or(0);
    if output.datatype != DataType::Bytes {
        let row_bytes = row_elements * output.datatype.element_size().unwrap_or(1);
        if output.data.len() != row_bytes * rows {
            return Err(format!(
                "the backend's output '{}' holds {} bytes, its shape needs {}",
                output.name,
                output.data.len(),
                row_bytes * rows
            ));
        }
        return Ok((0..=rows).map(|r| r * row_bytes).collect());
    }
    let mut bounds = Vec::with_capacity(rows + 1);
    let mut offset = 0usize;
    let data: &Bytes = &output.data;
    for _ in 0..rows {
        bounds.push(offset);
        for _ in 0..row_elements {
            let prefix = data.get(offset..offset + 4).ok_or_else(|| truncated(output))?;
            let length = u32::from_le_bytes([prefix[0], prefix[1], prefix[2], prefix[3]]) as usize;
            offset = offset.checked_add(4 + length).filter(|&end| end <= data.len()).ok_or_else(|| truncated(output))?;
        }
    }
    bounds.push(offset);
    Ok(bounds)
}

fn truncated(output: &Tensor) -> String {
    format!("the backend's BYTES output '{}' ends inside an element", output.name)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn stacked_then_split_gives_each_request_its_rows_back() {
        let a = vec![Tensor::from_slice("X", vec![1, 2], &[1.0f32, 2.0]), Tensor::from_byte_strings("S", vec![1, 1], ["a"])];
        let b = vec![
            Tensor::from_slice("X", vec![2, 2], &[3.0f32, 4.0, 5.0, 6.0]),
            Tensor::from_byte_strings("S", vec![2, 1], ["bb", ""]),
        ];
        assert!(compatible(&a, &b, |_| false));
        let stacked = stack(vec![a.clone(), b.clone()]);
        assert_eq!(stacked[0].shape, [3, 2]);
        assert_eq!(stacked[0].to_vec::<f32>().unwrap(), [1.0, 2.0, 3.0, 4.0, 5.0, 6.0]);
        assert_eq!(stacked[1].byte_strings().unwrap(), [&b"a"[..], b"bb", b""]);
        let parts = split(stacked, &[1, 2]).unwrap();
        assert_eq!(parts, [a, b]);
    }

    #[test]
    fn different_shapes_or_names_do_not_share_a_batch() {
        let x =
            |shape: Vec<i64>| vec![Tensor::from_slice("X", shape.clone(), &vec![0.0f32; shape.iter().product::<i64>() as usize])];
        let plain = |_: &str| false;
        assert!(!compatible(&x(vec![1, 2]), &x(vec![1, 3]), plain));
        assert!(compatible(&x(vec![1, 2]), &x(vec![4, 2]), plain));
        let y = vec![Tensor::from_slice("Y", vec![1, 2], &[0.0f32, 0.0])];
        assert!(!compatible(&x(vec![1, 2]), &y, plain));
        // A ragged input may differ in shape, not in rank, name or datatype.
        let ragged = |name: &str| name == "X";
        assert!(compatible(&x(vec![1, 2]), &x(vec![1, 3]), ragged));
        assert!(!compatible(&x(vec![1, 2]), &x(vec![3]), ragged));
        assert!(!compatible(&x(vec![1, 2]), &y, ragged));
    }

    #[test]
    fn an_output_without_the_batch_rows_is_an_error() {
        let error = split(vec![Tensor::from_slice("Y", vec![2], &[1i32, 2])], &[1, 2]).unwrap_err();
        assert!(error.contains("does not start with the batch's 3 rows"), "{error}");
    }
}
