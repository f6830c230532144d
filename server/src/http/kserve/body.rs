//! Reading a KServe request body within its bounds: at most the port's body limit as sent, and,
//! when the client compressed it (`Content-Encoding: gzip` or `deflate`), at most the same limit
//! once inflated, the inflated bytes charged to the server-wide request-byte budget while the
//! request holds them.

use std::io::Read;
use std::sync::Arc;

use axum::body::Body;
use axum::http::{HeaderMap, StatusCode, header};
use bytes::Bytes;
use http_body_util::BodyExt;

use super::reply::HttpError;
use crate::grpc::budget::ByteBudget;
use crate::http::{BodyStalled, BudgetExhausted};

/// Inflating more than this is done off the async runtime.
const INLINE_INFLATE_BYTES: usize = 256 << 10;

/// A request body, and the budget charge of its inflated bytes (given back on drop).
#[derive(Debug)]
pub struct RequestBody {
    pub bytes: Bytes,
    charge: Option<(Arc<ByteBudget>, u64)>,
}

impl Drop for RequestBody {
    fn drop(&mut self) {
        if let Some((budget, bytes)) = self.charge.take() {
            budget.give_back(bytes);
        }
    }
}

fn too_large(limit: usize) -> HttpError {
    HttpError::new(
        StatusCode::PAYLOAD_TOO_LARGE,
        format!("request body exceeds the server's limit of {limit} bytes (--http-max-input-size)"),
    )
}

/// Reads the whole body, refusing more than `limit` bytes.
pub async fn read(body: Body, headers: &HeaderMap, limit: usize) -> Result<Bytes, HttpError> {
    let declared = headers.get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit as u64) {
        return Err(too_large(limit));
    }
    let mut body = body;
    let mut frames: Vec<Bytes> = Vec::new();
    let mut total = 0usize;
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| {
            if caused_by::<BudgetExhausted>(&e) {
                HttpError::new(StatusCode::SERVICE_UNAVAILABLE, BudgetExhausted.to_string())
            } else if caused_by::<BodyStalled>(&e) {
                HttpError::new(StatusCode::REQUEST_TIMEOUT, format!("failed to read the request body: {e}"))
            } else {
                HttpError::bad_request(format!("failed to read the request body: {e}"))
            }
        })?;
        let Ok(data) = frame.into_data() else { continue };
        total = total.saturating_add(data.len());
        if total > limit {
            return Err(too_large(limit));
        }
        // Kept as they came, never reserved from the declared length: a client that declares
        // 64 MiB and sends slowly holds only what it sent.
        frames.push(data);
    }
    // The usual single-frame body is kept without a copy; several are joined once, into exactly
    // their size (a buffer grown as they came would hold up to twice that, and copy on the way).
    Ok(match frames.len() {
        0 => Bytes::new(),
        1 => frames.pop().unwrap_or_default(),
        _ => {
            let mut joined = Vec::with_capacity(total);
            frames.drain(..).for_each(|frame| joined.extend_from_slice(&frame));
            Bytes::from(joined)
        }
    })
}

fn caused_by<E: std::error::Error + 'static>(error: &axum::Error) -> bool {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(error);
    while let Some(e) = source {
        if e.is::<E>() {
            return true;
        }
        source = e.source();
    }
    false
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Encoding {
    Gzip,
    Deflate,
}

/// The body's `Content-Encoding`, named as Triton takes it: `gzip`, `deflate` or `identity` in
/// lower case (HTTP calls codings case-insensitive, but Triton answers `GZIP` with 501, and
/// clients send lower case).
fn encoding(headers: &HeaderMap) -> Result<Option<Encoding>, HttpError> {
    let Some(value) = headers.get(header::CONTENT_ENCODING) else { return Ok(None) };
    match value.to_str().unwrap_or("").trim() {
        "" | "identity" => Ok(None),
        "gzip" => Ok(Some(Encoding::Gzip)),
        "deflate" => Ok(Some(Encoding::Deflate)),
        _ => Err(HttpError::new(StatusCode::NOT_IMPLEMENTED, "Unsupported compression type").plain()),
    }
}

/// Reads the body and inflates it as its `Content-Encoding` says.
pub async fn read_request(
    body: Body,
    headers: &HeaderMap,
    limit: usize,
    budget: &Arc<ByteBudget>,
) -> Result<RequestBody, HttpError> {
    let encoding = encoding(headers)?;
    let sent = read(body, headers, limit).await?;
    let Some(encoding) = encoding else { return Ok(RequestBody { bytes: sent, charge: None }) };
    let inflated = if sent.len() <= INLINE_INFLATE_BYTES {
        inflate(&sent, encoding, limit, budget)?
    } else {
        let budget = Arc::clone(budget);
        tokio::task::spawn_blocking(move || inflate(&sent, encoding, limit, &budget))
            .await
            .map_err(|e| HttpError::new(StatusCode::INTERNAL_SERVER_ERROR, format!("inflating the request failed: {e}")))??
    };
    Ok(inflated)
}

/// Inflates `compressed` in steps, charging the budget for the output buffer by its capacity as
/// it grows (while it grows, the old buffer and the new are both held, and both are charged);
/// more than `limit` bytes out is refused with 413 (a small body that inflates to gigabytes stops
/// there), more than the budget with 503.
fn inflate(compressed: &[u8], encoding: Encoding, limit: usize, budget: &Arc<ByteBudget>) -> Result<RequestBody, HttpError> {
    let mut reader: Box<dyn Read + '_> = match encoding {
        Encoding::Gzip => Box::new(flate2::read::MultiGzDecoder::new(compressed)),
        Encoding::Deflate => Box::new(flate2::read::ZlibDecoder::new(compressed)),
    };
    let mut out = RequestBody { bytes: Bytes::new(), charge: Some((Arc::clone(budget), 0)) };
    let charge = |bytes: usize, out: &mut RequestBody| -> Result<(), HttpError> {
        if let Some((budget, charged)) = out.charge.as_mut() {
            if !budget.take(bytes as u64) {
                return Err(HttpError::new(StatusCode::SERVICE_UNAVAILABLE, BudgetExhausted.to_string()));
            }
            *charged += bytes as u64;
        }
        Ok(())
    };
    let give_back = |bytes: usize, out: &mut RequestBody| {
        if let Some((budget, charged)) = out.charge.as_mut() {
            budget.give_back(bytes as u64);
            *charged -= bytes as u64;
        }
    };
    let first = compressed.len().saturating_mul(4).min(limit).max(64);
    charge(first, &mut out)?;
    let mut buffer: Vec<u8> = Vec::with_capacity(first);
    let mut chunk = vec![0u8; 64 << 10];
    loop {
        let read = reader.read(&mut chunk).map_err(|e| {
            let name = if encoding == Encoding::Gzip { "gzip" } else { "deflate" };
            HttpError::bad_request(format!("failed to decompress the {name} request body: {e}"))
        })?;
        if read == 0 {
            break;
        }
        if buffer.len() + read > limit {
            return Err(too_large(limit));
        }
        if buffer.len() + read > buffer.capacity() {
            let old = buffer.capacity();
            let grown = (old.saturating_mul(2)).max(buffer.len() + read).min(limit);
            charge(grown, &mut out)?;
            let mut bigger = Vec::with_capacity(grown);
            bigger.extend_from_slice(&buffer);
            buffer = bigger;
            give_back(old, &mut out);
        }
        buffer.extend_from_slice(&chunk[..read]);
    }
    out.bytes = Bytes::from(buffer);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use super::*;

    fn gzip(data: &[u8]) -> Vec<u8> {
        let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        encoder.write_all(data).expect("write");
        encoder.finish().expect("finish")
    }

    #[test]
    fn inflates_within_the_limit_and_gives_the_charge_back() {
        let budget = Arc::new(ByteBudget::new(1 << 20));
        let body = inflate(&gzip(b"hello"), Encoding::Gzip, 100, &budget).expect("inflates");
        assert_eq!(&body.bytes[..], b"hello");
        // Charged by what was allocated (the first buffer: four times the compressed size, at
        // most the limit), not by the five bytes filled.
        assert_eq!(budget.used(), 100);
        drop(body);
        assert_eq!(budget.used(), 0);
    }

    #[test]
    fn a_bomb_stops_at_the_limit() {
        let budget = Arc::new(ByteBudget::new(1 << 30));
        let bomb = gzip(&vec![0u8; 50 << 20]);
        assert!(bomb.len() < 100 << 10);
        let error = inflate(&bomb, Encoding::Gzip, 1 << 20, &budget).expect_err("refused");
        assert_eq!(error.status, StatusCode::PAYLOAD_TOO_LARGE);
        assert_eq!(budget.used(), 0);
    }

    #[test]
    fn a_bomb_stops_at_the_budget_counted_by_capacity() {
        let budget = Arc::new(ByteBudget::new(4 << 20));
        let bomb = gzip(&vec![0u8; 50 << 20]);
        let error = inflate(&bomb, Encoding::Gzip, 64 << 20, &budget).expect_err("refused");
        assert_eq!(error.status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(budget.used(), 0, "everything given back");
        // Just under the budget fits, growth included: 1 MiB out needs 2 MiB + 1 MiB while growing.
        let fits = gzip(&vec![7u8; 1 << 20]);
        let body = inflate(&fits, Encoding::Gzip, 64 << 20, &budget).expect("fits");
        assert_eq!(body.bytes.len(), 1 << 20);
        assert!(budget.used() >= 1 << 20 && budget.used() <= 2 << 20, "{}", budget.used());
    }

    #[test]
    fn codings_are_named_in_lower_case_as_triton_takes_them() {
        let headers = |value: &'static str| {
            let mut headers = HeaderMap::new();
            headers.insert(header::CONTENT_ENCODING, axum::http::HeaderValue::from_static(value));
            headers
        };
        assert_eq!(encoding(&HeaderMap::new()).expect("none"), None);
        for (value, expected) in
            [("gzip", Some(Encoding::Gzip)), (" deflate ", Some(Encoding::Deflate)), ("identity", None), ("", None)]
        {
            assert_eq!(encoding(&headers(value)).expect(value), expected, "{value}");
        }
        for value in ["GZIP", "Gzip", "DEFLATE", "IDENTITY", "br", "gzip, deflate"] {
            let error = encoding(&headers(value)).expect_err(value);
            assert_eq!(error.status, StatusCode::NOT_IMPLEMENTED, "{value}");
        }
    }

    #[test]
    fn garbage_is_a_bad_request() {
        let budget = Arc::new(ByteBudget::new(1 << 20));
        let error = inflate(b"not gzip at all", Encoding::Gzip, 100, &budget).expect_err("refused");
        assert_eq!(error.status, StatusCode::BAD_REQUEST);
        let error = inflate(b"not zlib", Encoding::Deflate, 100, &budget).expect_err("refused");
        assert_eq!(error.status, StatusCode::BAD_REQUEST);
    }
}
