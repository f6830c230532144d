//! `/v2/cudasharedmemory/...` on a server without CUDA: no region is ever registered, so status
//! lists none and unregistering is a no-op, as on Triton; a register request is read and checked
//! as Triton checks it, and a well-formed one fails with Triton's words on a machine without a GPU
//! (the gRPC door shares them: `crate::admin::cuda_shm_*`).

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::HeaderMap;
use serde_json::Value;

use super::KserveState;
use super::admin::{json_body, json_object};
use super::reply::{self, HttpError, HttpResult};

/// The size of a `cudaIpcMemHandle_t`.
const IPC_HANDLE_BYTES: usize = 64;

pub(super) async fn status_all() -> HttpResult {
    Ok(reply::json(&Value::Array(Vec::new())))
}

pub(super) async fn status(Path(region): Path<String>) -> HttpResult {
    crate::admin::cuda_shm_status(&region)?;
    Ok(reply::json(&Value::Array(Vec::new())))
}

pub(super) async fn unregister() -> HttpResult {
    Ok(reply::empty())
}

/// The length `text` decodes to when it is standard base64, else `None`.
fn base64_length(text: &str) -> Option<usize> {
    let bytes = text.as_bytes();
    if bytes.is_empty() || !bytes.len().is_multiple_of(4) {
        return None;
    }
    let padding = bytes.iter().rev().take_while(|b| **b == b'=').count();
    let body = &bytes[..bytes.len() - padding];
    if padding > 2 || !body.iter().all(|b| b.is_ascii_alphanumeric() || *b == b'+' || *b == b'/') {
        return None;
    }
    Some(bytes.len() / 4 * 3 - padding)
}

/// A registration without a region name in the path is refused before the body is read.
pub(super) async fn register_unnamed() -> HttpResult {
    Err(HttpError::bad_request("'region name' is necessary to register cuda shared memory region"))
}

pub(super) async fn register(
    State(state): State<KserveState>,
    Path(_region): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> HttpResult {
    let request = json_object(json_body(&state, &headers, body, false).await?)?;
    let Some(handle) = request.get("raw_handle") else {
        return Err(HttpError::bad_request("Shared memory register request has no 'raw_handle' field"));
    };
    for field in ["device_id", "byte_size"] {
        match request.get(field) {
            None => {
                return Err(HttpError::unparsable(format!("attempt to access non-existing object member '{field}'")));
            }
            Some(value) if !value.is_u64() => return Err(HttpError::wrong_kind(None, "unsigned-integer")),
            Some(_) => {}
        }
    }
    let encoded = handle.get("b64").and_then(Value::as_str).unwrap_or("");
    if base64_length(encoded) != Some(IPC_HANDLE_BYTES) {
        return Err(HttpError::bad_request("'raw_handle' must be a valid base64 encoded cudaIpcMemHandle_t"));
    }
    crate::admin::cuda_shm_register()?;
    Ok(reply::empty())
}

#[cfg(test)]
mod tests {
    use super::base64_length;

    #[test]
    fn base64_lengths() {
        assert_eq!(base64_length("AAAA"), Some(3));
        assert_eq!(base64_length("AA=="), Some(1));
        assert_eq!(base64_length(&"A".repeat(88)), Some(66));
        assert_eq!(base64_length("A*AA"), None);
        assert_eq!(base64_length("AAA"), None);
        assert_eq!(base64_length(""), None);
    }
}
