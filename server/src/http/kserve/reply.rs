//! What every KServe route answers with: Triton's error body `{"error": "..."}` under the HTTP
//! status of the error's class, JSON renderings of the protocol's messages, and response bodies
//! compressed as the client's `Accept-Encoding` asks.

use std::sync::OnceLock;

use axum::body::Body;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use prost_reflect::{DescriptorPool, DynamicMessage, SerializeOptions};
use tritium_proto::ErrorCode;

use crate::error::ServerError;

pub const JSON: &str = "application/json";
pub const PLAIN: &str = "text/plain";

/// An error answered as Triton's HTTP server does: the class's status and `{"error": message}`,
/// labelled JSON, or plain text where Triton labels it so (routing errors, health, and the
/// inference route's errors before the request is parsed).
#[derive(Debug)]
pub struct HttpError {
    pub status: StatusCode,
    pub message: String,
    pub plain: bool,
}

impl HttpError {
    pub fn new(status: StatusCode, message: impl Into<String>) -> HttpError {
        HttpError { status, message: message.into(), plain: false }
    }

    /// The same error labelled `text/plain`.
    pub fn plain(mut self) -> HttpError {
        self.plain = true;
        self
    }

    /// Triton's answer to a request its JSON reader could not take: 500, with the reader's words.
    pub fn unparsable(message: impl Into<String>) -> HttpError {
        HttpError::new(StatusCode::INTERNAL_SERVER_ERROR, message)
    }

    /// A member missing from a JSON object, in Triton's words.
    pub fn missing_member(field: &str) -> HttpError {
        HttpError::unparsable(format!("Unable to parse '{field}': attempt to access non-existing object member '{field}'"))
    }

    /// A JSON value of the wrong kind (`string`, `array`, `boolean`, `unsigned-integer`,
    /// `signed-integer`, `double`), in Triton's words, naming the field when given.
    pub fn wrong_kind(field: Option<&str>, kind: &str) -> HttpError {
        let what = if kind == "double" {
            "attempt to access JSON non-number as double".to_string()
        } else {
            format!("attempt to access JSON non-{kind} as {kind}")
        };
        match field {
            Some(field) => HttpError::unparsable(format!("Unable to parse '{field}': {what}")),
            None => HttpError::unparsable(what),
        }
    }

    /// A body that is not JSON: Triton's wording, with the byte offset of the fault.
    pub fn bad_json(body: &[u8], error: &serde_json::Error) -> HttpError {
        // At the end of the input the reader's offset is the body's length.
        let offset = if error.classify() == serde_json::error::Category::Eof {
            body.len()
        } else {
            byte_offset(body, error.line(), error.column())
        };
        let what = if body.iter().all(u8::is_ascii_whitespace) {
            "The document is empty."
        } else if error.to_string().starts_with("trailing characters") {
            "The document root must not be followed by other values."
        } else if error.to_string().starts_with("EOF while parsing an object")
            || error.to_string().starts_with("key must be a string")
        {
            "Missing a name for object member."
        } else {
            "Invalid value."
        };
        HttpError::unparsable(format!("failed to parse the request JSON buffer: {what} at {offset}"))
    }

    pub fn bad_request(message: impl Into<String>) -> HttpError {
        HttpError::new(StatusCode::BAD_REQUEST, message)
    }

    fn of_code(code: ErrorCode, message: String) -> HttpError {
        let status = StatusCode::from_u16(code.http_status()).unwrap_or(StatusCode::BAD_REQUEST);
        HttpError::new(status, message)
    }
}

/// The byte offset of serde's 1-based line and column (0 when unknown).
fn byte_offset(body: &[u8], line: usize, column: usize) -> usize {
    if line == 0 {
        return 0;
    }
    let start: usize = body.split(|b| *b == b'\n').take(line - 1).map(|l| l.len() + 1).sum();
    (start + column.saturating_sub(1)).min(body.len())
}

impl From<ServerError> for HttpError {
    fn from(error: ServerError) -> HttpError {
        HttpError::of_code(error.code(), error.to_string())
    }
}

impl IntoResponse for HttpError {
    fn into_response(self) -> Response {
        let body = serde_json::json!({ "error": self.message }).to_string();
        (self.status, [(header::CONTENT_TYPE, if self.plain { PLAIN } else { JSON })], body).into_response()
    }
}

pub type HttpResult = Result<Response, HttpError>;

/// A 200 with a JSON body.
pub fn json(value: &serde_json::Value) -> Response {
    ([(header::CONTENT_TYPE, JSON)], value.to_string()).into_response()
}

/// A 200 with no body, as Triton answers control calls (labelled JSON).
pub fn empty() -> Response {
    ([(header::CONTENT_TYPE, JSON)], "").into_response()
}

/// A 200 with no body, as Triton answers health checks (labelled plain text).
pub fn empty_plain() -> Response {
    ([(header::CONTENT_TYPE, PLAIN)], "").into_response()
}

/// Triton's answer to a path it does not serve.
pub fn not_found() -> HttpError {
    HttpError::new(StatusCode::NOT_FOUND, "Not Found").plain()
}

/// Triton's answer to a method a path does not take.
pub fn method_not_allowed() -> HttpError {
    HttpError::new(StatusCode::METHOD_NOT_ALLOWED, "Method Not Allowed")
}

fn pool() -> Option<&'static DescriptorPool> {
    static POOL: OnceLock<Option<DescriptorPool>> = OnceLock::new();
    POOL.get_or_init(|| DescriptorPool::decode(tritium_proto::FILE_DESCRIPTOR_SET).ok()).as_ref()
}

/// A protocol message as Triton's HTTP server renders it: proto field names, every field printed,
/// 64-bit integers as numbers.
pub fn message_json<M: prost::Message>(message: &M, full_name: &str) -> Result<serde_json::Value, HttpError> {
    let internal = |why: String| HttpError::new(StatusCode::INTERNAL_SERVER_ERROR, why);
    let descriptor = pool()
        .and_then(|pool| pool.get_message_by_name(full_name))
        .ok_or_else(|| internal(format!("message '{full_name}' is not in the compiled-in descriptors")))?;
    let mut dynamic = DynamicMessage::new(descriptor);
    dynamic.transcode_from(message).map_err(|e| internal(e.to_string()))?;
    let options = SerializeOptions::new().use_proto_field_name(true).skip_default_fields(false).stringify_64_bit_integers(false);
    dynamic.serialize_with_options(serde_json::value::Serializer, &options).map_err(|e| internal(e.to_string()))
}

/// Response compression the client accepts, as Triton chooses it: the first of gzip and deflate
/// named in `Accept-Encoding`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    Gzip,
    Deflate,
}

impl Compression {
    pub fn accepted(headers: &HeaderMap) -> Option<Compression> {
        let accept = headers.get(header::ACCEPT_ENCODING)?.to_str().ok()?;
        accept.split(',').find_map(|part| {
            let mut fields = part.split(';');
            let name = fields.next()?.trim();
            let refused = fields.any(|q| matches!(q.trim(), "q=0" | "q=0.0" | "q=0.00" | "q=0.000"));
            match name {
                _ if refused => None,
                n if n.eq_ignore_ascii_case("gzip") => Some(Compression::Gzip),
                n if n.eq_ignore_ascii_case("deflate") => Some(Compression::Deflate),
                _ => None,
            }
        })
    }

    fn name(self) -> &'static str {
        match self {
            Compression::Gzip => "gzip",
            Compression::Deflate => "deflate",
        }
    }

    /// `body` compressed; `None` if the encoder failed (the body then goes uncompressed).
    fn compress(self, body: &[u8]) -> Option<Vec<u8>> {
        use std::io::Write;
        let level = flate2::Compression::fast();
        match self {
            Compression::Gzip => {
                let mut encoder = flate2::write::GzEncoder::new(Vec::with_capacity(body.len() / 2 + 64), level);
                encoder.write_all(body).ok()?;
                encoder.finish().ok()
            }
            Compression::Deflate => {
                let mut encoder = flate2::write::ZlibEncoder::new(Vec::with_capacity(body.len() / 2 + 64), level);
                encoder.write_all(body).ok()?;
                encoder.finish().ok()
            }
        }
    }
}

/// A 200 carrying `body` with `headers`, compressed when the client asked for it.
pub fn body_response(body: Bytes, headers: &[(header::HeaderName, HeaderValue)], compression: Option<Compression>) -> Response {
    let mut response = Response::new(Body::empty());
    let map = response.headers_mut();
    for (name, value) in headers {
        map.insert(name.clone(), value.clone());
    }
    let body = match compression.and_then(|c| c.compress(&body).map(|packed| (c, packed))) {
        Some((compression, packed)) => {
            map.insert(header::CONTENT_ENCODING, HeaderValue::from_static(compression.name()));
            Bytes::from(packed)
        }
        None => body,
    };
    *response.body_mut() = Body::from(body);
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    fn accept(value: &str) -> Option<Compression> {
        let mut headers = HeaderMap::new();
        headers.insert(header::ACCEPT_ENCODING, HeaderValue::from_str(value).expect("header"));
        Compression::accepted(&headers)
    }

    #[test]
    fn the_first_known_accepted_encoding_wins() {
        assert_eq!(accept("gzip"), Some(Compression::Gzip));
        assert_eq!(accept("br, deflate, gzip"), Some(Compression::Deflate));
        assert_eq!(accept("gzip;q=0, deflate"), Some(Compression::Deflate));
        assert_eq!(accept("identity"), None);
        assert_eq!(Compression::accepted(&HeaderMap::new()), None);
    }

    #[test]
    fn errors_take_their_class_status() {
        let error = HttpError::from(ServerError::Unavailable { reason: "busy".into() });
        assert_eq!(error.status, StatusCode::SERVICE_UNAVAILABLE);
        let error = HttpError::from(ServerError::from(tritium_worker::WorkerError::ModelNotFound { name: "x".into() }));
        assert_eq!(error.status, StatusCode::NOT_FOUND);
    }
}
