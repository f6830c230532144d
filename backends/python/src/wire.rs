//! Tensors and errors as JSON frames (BLS requests and answers) describe them: `{"name",
//! "datatype", "shape", "size"}` with the bytes at `"shm"` (a region offset) or `"inline"` (an
//! offset in the frame's payload); the errors a response carries, in either kind of frame.

use bytes::Bytes;
use serde_json::{Value, json};
use tritium_backend_api::BackendError;
use tritium_proto::ErrorCode;
use tritium_tensor::{DataType, Tensor};

use crate::region::Region;

/// One response of a model: its outputs. (Triton 2.51's `InferenceResponse` takes no parameters;
/// those a model of a later version's API sets are not forwarded.)
#[derive(Debug)]
pub struct Reply {
    pub outputs: Vec<Tensor>,
}

/// The tensors a frame names, their bytes copied out of the stub's part of the region or sliced
/// from the payload. Every offset and size is checked: the stub runs a user's code.
pub fn tensors_of(descriptors: Option<&Value>, region: &Region, payload: &Bytes) -> Result<Vec<Tensor>, String> {
    let Some(descriptors) = descriptors else { return Ok(Vec::new()) };
    let descriptors = descriptors.as_array().ok_or("outputs is not a list")?;
    descriptors.iter().map(|d| tensor_of(d, region, payload)).collect()
}

fn tensor_of(desc: &Value, region: &Region, payload: &Bytes) -> Result<Tensor, String> {
    let name = desc.get("name").and_then(Value::as_str).ok_or("a tensor without a name")?;
    let datatype = desc.get("datatype").and_then(Value::as_str).ok_or("a tensor without a datatype")?;
    let datatype = DataType::from_kserve(datatype).ok_or_else(|| format!("tensor '{name}' has unknown datatype '{datatype}'"))?;
    let shape = desc
        .get("shape")
        .and_then(Value::as_array)
        .ok_or_else(|| format!("tensor '{name}' has no shape"))?
        .iter()
        .map(Value::as_i64)
        .collect::<Option<Vec<i64>>>()
        .ok_or_else(|| format!("tensor '{name}' has a shape that is not a list of integers"))?;
    let size = desc.get("size").and_then(Value::as_u64).and_then(|s| usize::try_from(s).ok()).ok_or("a tensor without a size")?;
    let location = match desc.get("shm").and_then(Value::as_u64) {
        Some(offset) => Location::Region(offset),
        None => Location::Inline(desc.get("inline").and_then(Value::as_u64).unwrap_or(u64::MAX)),
    };
    Ok(Tensor::new(name, datatype, shape, tensor_data(name, location, size, region, payload)?))
}

/// Where a tensor the stub sent has its bytes.
pub enum Location {
    /// At this offset of the stub's region (copied out).
    Region(u64),
    /// At this offset of the frame's payload (shared, no copy).
    Inline(u64),
}

/// The `size` bytes of tensor `name` at `location`; an error when they lie outside.
pub fn tensor_data(name: &str, location: Location, size: usize, region: &Region, payload: &Bytes) -> Result<Bytes, String> {
    match location {
        Location::Region(offset) => {
            let offset = usize::try_from(offset).map_err(|_| "offset out of range")?;
            let copied =
                region.read_output(offset, size).ok_or_else(|| format!("tensor '{name}' lies outside the stub's region"))?;
            Ok(Bytes::from(copied))
        }
        Location::Inline(offset) => {
            let offset = usize::try_from(offset).unwrap_or(usize::MAX);
            let end = offset.checked_add(size).filter(|&end| end <= payload.len());
            let end = end.ok_or_else(|| format!("tensor '{name}' lies outside its frame"))?;
            Ok(payload.slice(offset..end))
        }
    }
}

/// Bytes of the stub's region a JSON frame (a BLS request) named: what the server has copied out by now.
pub fn shm_bytes(header: &Value) -> usize {
    header
        .get("inputs")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter(|d| d.get("shm").is_some())
        .filter_map(|d| d.get("size").and_then(Value::as_u64))
        .map(|s| usize::try_from(s).unwrap_or(0))
        .sum()
}

/// A `TritonError` a response carried: its message, with the gRPC class its code names (the
/// request got its response: it counts as a success, as in Triton's statistics).
pub fn request_error(message: &str, code: i64) -> BackendError {
    let code = match code {
        0 => ErrorCode::Unknown,
        2 => ErrorCode::NotFound,
        3 => ErrorCode::InvalidArg,
        4 => ErrorCode::Unavailable,
        5 => ErrorCode::Unsupported,
        6 => ErrorCode::AlreadyExists,
        7 => ErrorCode::Cancelled,
        _ => ErrorCode::Internal,
    };
    BackendError::Answered { code, message: message.to_string() }
}

/// A response the server cannot take apart.
pub fn malformed(why: &str) -> BackendError {
    BackendError::failed(ErrorCode::Internal, format!("the python model's response is malformed: {why}"))
}

/// pb_utils' number of an error class.
pub fn error_number(code: ErrorCode) -> i64 {
    match code {
        ErrorCode::Unknown => 0,
        ErrorCode::Internal | ErrorCode::ResourceExhausted | ErrorCode::PermissionDenied => 1,
        ErrorCode::NotFound => 2,
        ErrorCode::InvalidArg => 3,
        ErrorCode::Unavailable => 4,
        ErrorCode::Unsupported => 5,
        ErrorCode::AlreadyExists => 6,
        ErrorCode::Cancelled => 7,
    }
}

/// Descriptors of tensors sent inline (BLS answers), with the payload parts they point into.
pub fn inline_descriptors(tensors: &[Tensor]) -> (Vec<Value>, Vec<&[u8]>) {
    let mut offset = 0usize;
    let mut parts = Vec::with_capacity(tensors.len());
    let descriptors = tensors
        .iter()
        .map(|t| {
            let desc = json!({
                "name": t.name, "datatype": t.datatype.kserve_name(), "shape": t.shape, "size": t.data.len(), "inline": offset,
            });
            offset += t.data.len();
            parts.push(t.data.as_ref());
            desc
        })
        .collect();
    (descriptors, parts)
}
