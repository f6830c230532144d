//! Triton's `classification` output parameter: instead of an output's values, the top `count`
//! of them per batch row as BYTES strings `"<value>:<index>"`, highest first (equal values in
//! index order), `"<value>:<index>:<label>"` when the output's config names a `label_filename`
//! whose line of that index is not empty. A batching model's output keeps its batch dimension:
//! `[batch, count]`; others give `[count]`. Values print as C++'s `std::to_string` prints them
//! (`0.500000`, `42`).

use std::sync::Arc;

use bytes::Bytes;
use half::{bf16, f16};
use tritium_repository::Labels;
use tritium_tensor::{DataType, Tensor};

use crate::error::ServerError;

/// An output the client wants classified.
#[derive(Debug, Clone, PartialEq)]
pub struct Classification {
    pub output: String,
    pub count: usize,
    /// Whether the output's first dimension is the batch (the model batches).
    pub batched: bool,
    /// The output's labels, read when the model loaded.
    pub labels: Option<Arc<Labels>>,
}

/// One element: its sort key and how it prints.
fn element(datatype: DataType, raw: &[u8]) -> Option<(f64, String)> {
    let float = |v: f64| (v, format!("{v:.6}"));
    Some(match datatype {
        DataType::Int8 => (f64::from(raw[0] as i8), (raw[0] as i8).to_string()),
        DataType::Uint8 => (f64::from(raw[0]), raw[0].to_string()),
        DataType::Int16 => {
            let v = i16::from_le_bytes(raw.try_into().ok()?);
            (f64::from(v), v.to_string())
        }
        DataType::Uint16 => {
            let v = u16::from_le_bytes(raw.try_into().ok()?);
            (f64::from(v), v.to_string())
        }
        DataType::Int32 => {
            let v = i32::from_le_bytes(raw.try_into().ok()?);
            (f64::from(v), v.to_string())
        }
        DataType::Uint32 => {
            let v = u32::from_le_bytes(raw.try_into().ok()?);
            (f64::from(v), v.to_string())
        }
        DataType::Int64 => {
            let v = i64::from_le_bytes(raw.try_into().ok()?);
            (v as f64, v.to_string())
        }
        DataType::Uint64 => {
            let v = u64::from_le_bytes(raw.try_into().ok()?);
            (v as f64, v.to_string())
        }
        DataType::Fp16 => float(f64::from(f16::from_le_bytes(raw.try_into().ok()?))),
        DataType::Bf16 => float(f64::from(bf16::from_le_bytes(raw.try_into().ok()?))),
        DataType::Fp32 => float(f64::from(f32::from_le_bytes(raw.try_into().ok()?))),
        DataType::Fp64 => float(f64::from_le_bytes(raw.try_into().ok()?)),
        DataType::Bool | DataType::Bytes => return None,
    })
}

/// The classified form of `tensor`.
pub fn classify(tensor: Tensor, wanted: &Classification) -> Result<Tensor, ServerError> {
    let unsupported = || ServerError::InvalidArgument {
        reason: format!("class result not available for output '{}' due to unsupported type '{}'", tensor.name, tensor.datatype),
    };
    let size = tensor.datatype.element_size().filter(|_| !matches!(tensor.datatype, DataType::Bool)).ok_or_else(unsupported)?;
    let total = tensor.data.len() / size;
    let rows = if wanted.batched { tensor.shape.first().copied().unwrap_or(1).max(1) as usize } else { 1 };
    let per_row = total.checked_div(rows).unwrap_or(0);
    let count = wanted.count.min(per_row);
    let mut data = Vec::new();
    for row in 0..rows {
        let mut entries = Vec::with_capacity(per_row);
        for index in 0..per_row {
            let at = (row * per_row + index) * size;
            let raw = tensor.data.get(at..at + size).ok_or_else(unsupported)?;
            entries.push((index, element(tensor.datatype, raw).ok_or_else(unsupported)?));
        }
        // Stable: equal values keep index order.
        entries.sort_by(|a, b| b.1.0.partial_cmp(&a.1.0).unwrap_or(std::cmp::Ordering::Equal));
        for (index, (_, printed)) in entries.into_iter().take(count) {
            let text = format!("{printed}:{index}");
            let label = wanted.labels.as_ref().and_then(|labels| labels.get(index)).filter(|label| !label.is_empty());
            let len = text.len() + label.map_or(0, |label| 1 + label.len());
            data.extend_from_slice(&(len as u32).to_le_bytes());
            data.extend_from_slice(text.as_bytes());
            if let Some(label) = label {
                data.push(b':');
                data.extend_from_slice(label);
            }
        }
    }
    let shape = if wanted.batched { vec![rows as i64, count as i64] } else { vec![count as i64] };
    Ok(Tensor::new(tensor.name, DataType::Bytes, shape, Bytes::from(data)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strings(tensor: &Tensor) -> Vec<String> {
        let mut out = Vec::new();
        let mut rest = &tensor.data[..];
        while rest.len() >= 4 {
            let len = u32::from_le_bytes(rest[..4].try_into().expect("4")) as usize;
            out.push(String::from_utf8(rest[4..4 + len].to_vec()).expect("utf8"));
            rest = &rest[4 + len..];
        }
        out
    }

    #[test]
    fn top_values_per_row_highest_first() {
        let values: Vec<u8> = [3i32, 9, 9, 1, 5, 7].iter().flat_map(|v| v.to_le_bytes()).collect();
        let tensor = Tensor::new("OUT", DataType::Int32, vec![2, 3], Bytes::from(values));
        let wanted = Classification { output: "OUT".into(), count: 2, batched: true, labels: None };
        let classified = classify(tensor, &wanted).expect("classifies");
        assert_eq!(classified.shape, vec![2, 2]);
        assert_eq!(strings(&classified), ["9:1", "9:2", "7:2", "5:1"]);
    }

    #[test]
    fn floats_print_like_std_to_string_and_count_is_capped() {
        let values: Vec<u8> = [0.25f32, 0.5].iter().flat_map(|v| v.to_le_bytes()).collect();
        let tensor = Tensor::new("P", DataType::Fp32, vec![2], Bytes::from(values));
        let classified =
            classify(tensor, &Classification { output: "P".into(), count: 5, batched: false, labels: None }).expect("ok");
        assert_eq!(classified.shape, vec![2]);
        assert_eq!(strings(&classified), ["0.500000:1", "0.250000:0"]);
    }

    #[test]
    fn labels_follow_the_index_as_triton_prints_them() {
        let floats = |values: &[f32]| Bytes::from(values.iter().flat_map(|v| v.to_le_bytes()).collect::<Vec<u8>>());
        // Class 2 has an empty line, which Triton leaves out; class 5 is past the file's end.
        let labels = Some(Arc::new(Labels::parse(Bytes::from_static(b"TENCH\nGOLDFISH\n\nSHARK\nHEN\n")).expect("labels")));
        // Each batch row's classes are indexed from 0.
        let rows = Tensor::new("P", DataType::Fp32, vec![2, 3], floats(&[0.1, 0.7, 0.2, 0.9, 0.3, 0.4]));
        let wanted = Classification { output: "P".into(), count: 3, batched: true, labels: labels.clone() };
        let classified = classify(rows, &wanted).expect("classifies");
        assert_eq!(classified.shape, vec![2, 3]);
        assert_eq!(
            strings(&classified),
            ["0.700000:1:GOLDFISH", "0.200000:2", "0.100000:0:TENCH", "0.900000:0:TENCH", "0.400000:2", "0.300000:1:GOLDFISH"]
        );
        let one = Tensor::new("P", DataType::Fp32, vec![6], floats(&[0.0, 0.1, 0.0, 0.3, 0.2, 0.9]));
        let wanted = Classification { output: "P".into(), count: 3, batched: false, labels };
        assert_eq!(strings(&classify(one, &wanted).expect("classifies")), ["0.900000:5", "0.300000:3:SHARK", "0.200000:4:HEN"]);
    }

    #[test]
    fn strings_cannot_be_classified() {
        let tensor = Tensor::new("S", DataType::Bytes, vec![1], Bytes::from_static(&[1, 0, 0, 0, b'a']));
        let error = classify(tensor, &Classification { output: "S".into(), count: 1, batched: false, labels: None })
            .expect_err("refused");
        assert!(error.to_string().contains("unsupported type 'BYTES'"), "{error}");
    }
}
