//! Dynamo's frames on the wire, in both directions:
//!
//! - the request frame a frontend writes on a worker's TCP listener: `u16` endpoint path, `u16`
//!   JSON headers, `u32` payload, all big-endian length-prefixed;
//! - the worker's acknowledgement of it: `u32` length and its text (empty: accepted);
//! - the two-part message carried as the request payload and as every frame of the call-home
//!   response stream: `u64` header length, `u64` body length, `u64` checksum (0: none), header,
//!   body.
//!
//! Every length is checked against a bound before anything is allocated for it.

use bytes::{Buf, BufMut, Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt};

/// A two-part header (a control message) is small; a larger one is refused before it is read.
pub const MAX_HEADER_BYTES: usize = 1 << 20;
/// An acknowledgement is an empty string or a short refusal.
const MAX_ACK_BYTES: usize = 64 << 10;
const TWO_PART_PREFIX: usize = 24;

#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    #[error("connection closed")]
    Closed,
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("a Dynamo frame's {what} is {len} bytes, over the {limit} allowed")]
    TooLarge { what: &'static str, len: u64, limit: usize },
    #[error("a Dynamo frame's {what} is too long to send ({len} bytes)")]
    CannotEncode { what: &'static str, len: usize },
}

/// One two-part message: a header (JSON control message) and a body (payload), either empty.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TwoPart {
    pub header: Bytes,
    pub body: Bytes,
}

impl TwoPart {
    pub fn header_only(header: impl Into<Bytes>) -> TwoPart {
        TwoPart { header: header.into(), body: Bytes::new() }
    }

    pub fn encode(&self, out: &mut BytesMut) {
        out.reserve(self.encoded_len());
        self.encode_head(out);
        out.put_slice(&self.body);
    }

    /// What [`TwoPart::encode`] writes before the body.
    pub fn encode_head(&self, out: &mut BytesMut) {
        out.put_u64(self.header.len() as u64);
        out.put_u64(self.body.len() as u64);
        // Dynamo's release builds send 0, and check the checksum only when it is not.
        out.put_u64(0);
        out.put_slice(&self.header);
    }

    /// The bytes [`TwoPart::encode`] writes.
    pub fn encoded_len(&self) -> usize {
        TWO_PART_PREFIX + self.header.len() + self.body.len()
    }

    pub fn to_bytes(&self) -> Bytes {
        let mut out = BytesMut::new();
        self.encode(&mut out);
        out.freeze()
    }

    /// Reads one message, refusing a body over `max_body` (and a header over
    /// [`MAX_HEADER_BYTES`]); `Closed` when the stream ends cleanly before a message.
    pub async fn read<R: AsyncRead + Unpin>(reader: &mut R, max_body: usize) -> Result<TwoPart, FrameError> {
        let mut prefix = [0u8; TWO_PART_PREFIX];
        match reader.read_exact(&mut prefix).await {
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Err(FrameError::Closed),
            Err(e) => return Err(e.into()),
        }
        let mut prefix = &prefix[..];
        let header_len = prefix.get_u64();
        let body_len = prefix.get_u64();
        check("header", header_len, MAX_HEADER_BYTES)?;
        check("body", body_len, max_body)?;
        // One allocation and one read for both parts.
        let total = header_len.saturating_add(body_len);
        let mut both = read_bounded(reader, "message", total, MAX_HEADER_BYTES.saturating_add(max_body)).await?;
        let header = both.split_to(header_len as usize);
        Ok(TwoPart { header, body: both })
    }

    /// Decodes one message held whole in `bytes` (a request payload).
    pub fn decode(mut bytes: Bytes, max_body: usize) -> Result<TwoPart, FrameError> {
        if bytes.len() < TWO_PART_PREFIX {
            return Err(FrameError::Closed);
        }
        let header_len = bytes.get_u64();
        let body_len = bytes.get_u64();
        let _checksum = bytes.get_u64();
        check("header", header_len, MAX_HEADER_BYTES)?;
        check("body", body_len, max_body)?;
        let (header_len, body_len) = (header_len as usize, body_len as usize);
        if bytes.len() != header_len + body_len {
            return Err(FrameError::TooLarge { what: "payload", len: bytes.len() as u64, limit: header_len + body_len });
        }
        let header = bytes.split_to(header_len);
        Ok(TwoPart { header, body: bytes })
    }
}

fn check(what: &'static str, len: u64, limit: usize) -> Result<(), FrameError> {
    if len > limit as u64 { Err(FrameError::TooLarge { what, len, limit }) } else { Ok(()) }
}

async fn read_bounded<R: AsyncRead + Unpin>(
    reader: &mut R,
    what: &'static str,
    len: u64,
    limit: usize,
) -> Result<Bytes, FrameError> {
    check(what, len, limit)?;
    let mut buffer = vec![0u8; len as usize];
    reader.read_exact(&mut buffer).await?;
    Ok(Bytes::from(buffer))
}

/// The frame that carries one request to a worker's TCP listener, whole (the client writes its
/// head and a long payload apart: [`request_frame_head`]).
#[cfg(test)]
pub fn request_frame(endpoint_path: &str, headers: &[u8], payload: &[u8]) -> Result<Bytes, FrameError> {
    let mut out = request_frame_head(endpoint_path, headers, payload.len(), payload.len())?;
    out.put_slice(payload);
    Ok(out.freeze())
}

/// A request frame up to its payload, for a payload of `payload_len` bytes, with room for
/// `reserve` more.
pub fn request_frame_head(
    endpoint_path: &str,
    headers: &[u8],
    payload_len: usize,
    reserve: usize,
) -> Result<BytesMut, FrameError> {
    let path_len = u16::try_from(endpoint_path.len())
        .map_err(|_| FrameError::CannotEncode { what: "endpoint path", len: endpoint_path.len() })?;
    let headers_len =
        u16::try_from(headers.len()).map_err(|_| FrameError::CannotEncode { what: "headers", len: headers.len() })?;
    let length = u32::try_from(payload_len).map_err(|_| FrameError::CannotEncode { what: "payload", len: payload_len })?;
    let mut out = BytesMut::with_capacity(8 + endpoint_path.len() + headers.len() + reserve);
    out.put_u16(path_len);
    out.put_slice(endpoint_path.as_bytes());
    out.put_u16(headers_len);
    out.put_slice(headers);
    out.put_u32(length);
    Ok(out)
}

/// One request frame as a worker reads it: the endpoint path, the headers and the payload.
#[derive(Debug)]
pub struct RequestFrame {
    pub endpoint_path: String,
    pub headers: Bytes,
    pub payload: Bytes,
}

impl RequestFrame {
    /// Reads one request frame, refusing a payload over `max_payload`.
    pub async fn read<R: AsyncRead + Unpin>(reader: &mut R, max_payload: usize) -> Result<RequestFrame, FrameError> {
        let path_len = match reader.read_u16().await {
            Ok(len) => len,
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Err(FrameError::Closed),
            Err(e) => return Err(e.into()),
        };
        let path = read_bounded(reader, "endpoint path", u64::from(path_len), usize::from(u16::MAX)).await?;
        let headers_len = reader.read_u16().await?;
        let headers = read_bounded(reader, "headers", u64::from(headers_len), usize::from(u16::MAX)).await?;
        let payload_len = reader.read_u32().await?;
        let payload = read_bounded(reader, "payload", u64::from(payload_len), max_payload).await?;
        Ok(RequestFrame { endpoint_path: String::from_utf8_lossy(&path).into_owned(), headers, payload })
    }
}

/// The acknowledgement a worker writes for each request frame, in order.
pub fn ack_frame(text: &str) -> Bytes {
    let mut out = BytesMut::with_capacity(4 + text.len());
    out.put_u32(text.len() as u32);
    out.put_slice(text.as_bytes());
    out.freeze()
}

/// Reads one acknowledgement: empty means accepted.
pub async fn read_ack<R: AsyncRead + Unpin>(reader: &mut R) -> Result<String, FrameError> {
    let len = match reader.read_u32().await {
        Ok(len) => len,
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Err(FrameError::Closed),
        Err(e) => return Err(e.into()),
    };
    let text = read_bounded(reader, "acknowledgement", u64::from(len), MAX_ACK_BYTES).await?;
    Ok(String::from_utf8_lossy(&text).into_owned())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn two_part_round_trips_and_refuses_oversized_parts_before_reading_them() {
        let message = TwoPart { header: Bytes::from_static(b"{\"a\":1}"), body: Bytes::from_static(b"body") };
        let bytes = message.to_bytes();
        assert_eq!(&bytes[..8], &7u64.to_be_bytes());
        assert_eq!(&bytes[8..16], &4u64.to_be_bytes());
        assert_eq!(&bytes[16..24], &0u64.to_be_bytes());
        assert_eq!(TwoPart::read(&mut &bytes[..], 16).await.unwrap(), message);
        assert_eq!(TwoPart::decode(bytes.clone(), 16).unwrap(), message);
        let refused = TwoPart::read(&mut &bytes[..], 3).await.unwrap_err();
        assert!(matches!(refused, FrameError::TooLarge { what: "body", len: 4, limit: 3 }), "{refused}");
        // A header claiming 2^63 bytes is refused without allocating it.
        let mut hostile = BytesMut::new();
        hostile.put_u64(1 << 63);
        hostile.put_u64(0);
        hostile.put_u64(0);
        assert!(matches!(TwoPart::read(&mut &hostile[..], 16).await, Err(FrameError::TooLarge { what: "header", .. })));
        assert!(matches!(TwoPart::read(&mut &b""[..], 16).await, Err(FrameError::Closed)));
    }

    #[test]
    fn a_frame_written_in_parts_is_the_frame_written_whole() {
        let payload = TwoPart { header: Bytes::from_static(b"{\"id\":1}"), body: Bytes::from(vec![7u8; 40_000]) };
        let whole = request_frame("p/generate", b"{}", &payload.to_bytes()).unwrap();
        let mut parts = request_frame_head("p/generate", b"{}", payload.encoded_len(), 0).unwrap();
        payload.encode_head(&mut parts);
        parts.put_slice(&payload.body);
        assert_eq!(parts.freeze(), whole);
    }

    #[tokio::test]
    async fn request_frames_and_acks_round_trip() {
        let frame = request_frame("0a/ns/backend/generate", b"{\"x-endpoint-path\":\"p\"}", b"payload").unwrap();
        assert_eq!(&frame[..2], &22u16.to_be_bytes());
        let read = RequestFrame::read(&mut &frame[..], 1024).await.unwrap();
        assert_eq!(read.endpoint_path, "0a/ns/backend/generate");
        assert_eq!(&read.payload[..], b"payload");
        assert!(matches!(RequestFrame::read(&mut &frame[..], 3).await, Err(FrameError::TooLarge { what: "payload", .. })));
        let ack = ack_frame("Server overloaded: busy");
        assert_eq!(read_ack(&mut &ack[..]).await.unwrap(), "Server overloaded: busy");
        assert_eq!(read_ack(&mut &ack_frame("")[..]).await.unwrap(), "");
    }
}
