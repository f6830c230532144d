//! Frames on a stub's control socket: `<u32 header length><u32 payload length><header>
//! <payload>`, little-endian. The header is JSON saying what the frame is (`op`), or for the hot
//! frames binary (`binary.rs`, told apart by its first byte); tensors too large for the
//! shared-memory region travel in the payload.

use std::io::Read;

use bytes::Bytes;
use serde_json::Value;
use tokio::io::{AsyncRead, AsyncReadExt};

/// The largest header a stub may send: headers name tensors, never hold their bytes.
const MAX_HEADER_BYTES: usize = 16 << 20;

/// A frame with a JSON header.
#[derive(Debug)]
pub struct Frame {
    pub header: Value,
    pub payload: Bytes,
}

impl Frame {
    pub fn op(&self) -> &str {
        self.header.get("op").and_then(Value::as_str).unwrap_or("")
    }

    pub fn json(header: &[u8], payload: Bytes) -> std::io::Result<Frame> {
        let header = serde_json::from_slice(header).map_err(|e| invalid(format!("a frame header is not JSON: {e}")))?;
        Ok(Frame { header, payload })
    }
}

/// Reads one frame's header into `header` (reused from frame to frame) and returns its payload;
/// `Ok(None)` at a clean end of stream. `max_payload` bounds inline tensor bytes.
pub fn read_raw(reader: &mut impl Read, header: &mut Vec<u8>, max_payload: usize) -> std::io::Result<Option<Bytes>> {
    let mut prefix = [0u8; 8];
    match reader.read_exact(&mut prefix) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e),
    }
    let payload_size = sized(header, prefix, max_payload)?;
    reader.read_exact(header)?;
    if payload_size == 0 {
        return Ok(Some(Bytes::new()));
    }
    let mut payload = vec![0u8; payload_size];
    reader.read_exact(&mut payload)?;
    Ok(Some(Bytes::from(payload)))
}

/// As [`read_raw`], from a socket the runtime watches.
pub async fn read_raw_async(
    reader: &mut (impl AsyncRead + Unpin),
    header: &mut Vec<u8>,
    max_payload: usize,
) -> std::io::Result<Option<Bytes>> {
    let mut prefix = [0u8; 8];
    match reader.read_exact(&mut prefix).await {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e),
    }
    let payload_size = sized(header, prefix, max_payload)?;
    reader.read_exact(header).await?;
    if payload_size == 0 {
        return Ok(Some(Bytes::new()));
    }
    let mut payload = vec![0u8; payload_size];
    reader.read_exact(&mut payload).await?;
    Ok(Some(Bytes::from(payload)))
}

/// Checks a frame's prefix against the bounds and sizes `header` to take the header; returns the
/// payload's size.
fn sized(header: &mut Vec<u8>, prefix: [u8; 8], max_payload: usize) -> std::io::Result<usize> {
    let length = |bytes: [u8; 4]| usize::try_from(u32::from_le_bytes(bytes)).unwrap_or(usize::MAX);
    let header_size = length([prefix[0], prefix[1], prefix[2], prefix[3]]);
    let payload_size = length([prefix[4], prefix[5], prefix[6], prefix[7]]);
    if header_size > MAX_HEADER_BYTES || payload_size > max_payload {
        return Err(invalid(format!(
            "a frame of {header_size} header and {payload_size} payload bytes is over the bounds ({MAX_HEADER_BYTES}, {max_payload})"
        )));
    }
    if header.capacity() > 1 << 20 && header_size < 1 << 16 {
        *header = Vec::with_capacity(1 << 16);
    }
    header.clear();
    header.resize(header_size, 0);
    Ok(payload_size)
}

/// Reads one frame with a JSON header; `Ok(None)` at a clean end of stream.
pub fn read_frame(reader: &mut impl Read, max_payload: usize) -> std::io::Result<Option<Frame>> {
    let mut header = Vec::new();
    match read_raw(reader, &mut header, max_payload)? {
        Some(payload) => Frame::json(&header, payload).map(Some),
        None => Ok(None),
    }
}

/// Builds a whole frame in `buffer` (cleared first, kept by the caller from frame to frame):
/// `header` appends the header's bytes.
pub fn build(
    buffer: &mut Vec<u8>,
    header: impl FnOnce(&mut Vec<u8>) -> std::io::Result<()>,
    payload: &[&[u8]],
) -> std::io::Result<()> {
    buffer.clear();
    buffer.extend_from_slice(&[0; 8]);
    header(buffer)?;
    let too_big = |_| invalid("a frame part is over 4 GiB".to_string());
    let header_size = u32::try_from(buffer.len() - 8).map_err(too_big)?;
    let payload_size = u32::try_from(payload.iter().map(|p| p.len()).sum::<usize>()).map_err(too_big)?;
    buffer[..4].copy_from_slice(&header_size.to_le_bytes());
    buffer[4..8].copy_from_slice(&payload_size.to_le_bytes());
    buffer.reserve(payload_size as usize);
    for part in payload {
        buffer.extend_from_slice(part);
    }
    Ok(())
}

fn invalid(message: String) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidData, message)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    /// Writes one frame with a JSON header in a single write.
    fn write_frame(writer: &mut impl std::io::Write, header: &Value, payload: &[&[u8]]) -> std::io::Result<()> {
        let mut buffer = Vec::new();
        build(&mut buffer, |b| serde_json::to_writer(b, header).map_err(|e| invalid(e.to_string())), payload)?;
        writer.write_all(&buffer)
    }

    #[test]
    fn a_frame_round_trips_and_a_clean_end_is_none() {
        let mut wire = Vec::new();
        write_frame(&mut wire, &serde_json::json!({"op": "x", "n": 1}), &[b"ab", b"c"]).unwrap();
        let mut reader = wire.as_slice();
        let frame = read_frame(&mut reader, 16).unwrap().unwrap();
        assert_eq!((frame.op(), frame.payload.as_ref()), ("x", b"abc".as_ref()));
        assert!(read_frame(&mut reader, 16).unwrap().is_none());
    }

    #[test]
    fn an_oversized_or_garbled_frame_is_an_error() {
        let mut wire = Vec::new();
        write_frame(&mut wire, &serde_json::json!({"op": "x"}), &[&[0u8; 32]]).unwrap();
        assert!(read_frame(&mut wire.as_slice(), 16).is_err());
        let garbled = [2u8, 0, 0, 0, 0, 0, 0, 0, b'{', b'{'];
        assert!(read_frame(&mut garbled.as_slice(), 16).is_err());
    }
}
