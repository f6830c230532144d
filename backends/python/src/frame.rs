//! Frames on a stub's control socket: `<u32 header length><u32 payload length><JSON header>
//! <payload>`, little-endian. The header says what the frame is (`op`); tensors too large for the
//! shared-memory region travel in the payload.

use std::io::{Read, Write};

use bytes::Bytes;
use serde_json::Value;

/// The largest header a stub may send: headers name tensors, never hold their bytes.
const MAX_HEADER_BYTES: usize = 16 << 20;

#[derive(Debug)]
pub struct Frame {
    pub header: Value,
    pub payload: Bytes,
}

impl Frame {
    pub fn op(&self) -> &str {
        self.header.get("op").and_then(Value::as_str).unwrap_or("")
    }
}

/// Reads one frame; `Ok(None)` at a clean end of stream. `max_payload` bounds inline tensor bytes.
pub fn read_frame(reader: &mut impl Read, max_payload: usize) -> std::io::Result<Option<Frame>> {
    let mut prefix = [0u8; 8];
    match reader.read_exact(&mut prefix) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e),
    }
    let length = |bytes: [u8; 4]| usize::try_from(u32::from_le_bytes(bytes)).unwrap_or(usize::MAX);
    let header_size = length([prefix[0], prefix[1], prefix[2], prefix[3]]);
    let payload_size = length([prefix[4], prefix[5], prefix[6], prefix[7]]);
    if header_size > MAX_HEADER_BYTES || payload_size > max_payload {
        return Err(invalid(format!(
            "a frame of {header_size} header and {payload_size} payload bytes is over the bounds ({MAX_HEADER_BYTES}, {max_payload})"
        )));
    }
    let mut header = vec![0u8; header_size];
    reader.read_exact(&mut header)?;
    let header: Value = serde_json::from_slice(&header).map_err(|e| invalid(format!("a frame header is not JSON: {e}")))?;
    let mut payload = vec![0u8; payload_size];
    reader.read_exact(&mut payload)?;
    Ok(Some(Frame { header, payload: Bytes::from(payload) }))
}

/// Writes one frame in a single write.
pub fn write_frame(writer: &mut impl Write, header: &Value, payload: &[&[u8]]) -> std::io::Result<()> {
    let header = serde_json::to_vec(header).map_err(|e| invalid(e.to_string()))?;
    let payload_size: usize = payload.iter().map(|p| p.len()).sum();
    let too_big = |_| invalid("a frame part is over 4 GiB".to_string());
    let mut buffer = Vec::with_capacity(8 + header.len() + payload_size);
    buffer.extend_from_slice(&u32::try_from(header.len()).map_err(too_big)?.to_le_bytes());
    buffer.extend_from_slice(&u32::try_from(payload_size).map_err(too_big)?.to_le_bytes());
    buffer.extend_from_slice(&header);
    for part in payload {
        buffer.extend_from_slice(part);
    }
    writer.write_all(&buffer)
}

fn invalid(message: String) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidData, message)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

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
