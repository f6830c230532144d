//! The hot frames in binary: `execute` (server to stub), `executed` and `response` (stub to
//! server) carry a struct-packed header instead of JSON, so neither side builds or parses a JSON
//! document per request. Their header's first byte is the op, never `{` (which opens every JSON
//! header); the rare control frames stay JSON. All little-endian:
//!
//! - `execute`: `u8 1, 3 × u8 0, u32 requests, u64 ack, u64 id`, then per request
//!   `u64 key, u32 flags, u32 outputs bytes, u32 inputs bytes, u32 extras bytes`, the outputs
//!   (per name `u32 length` and its UTF-8), the inputs (per tensor `u32 name length, u32 rank,
//!   u8 datatype`, the name, `rank × i64`), the extras (a JSON object of what differs from the
//!   defaults, or nothing), then per input `u64 location, u64 size`. A request's outputs and
//!   inputs parts repeat from one request to the next: the stub decodes each distinct one once.
//! - `executed`: `u8 2, u8 flags, u16 0, u32 responses, u64 id`; flag 1: the execute failed and
//!   a `u32 length` and its UTF-8 message follow instead of responses.
//! - `response` (a decoupled model's): `u8 3, u8 flags, u16 0, u32 0 or 1, u64 request key`, then
//!   its response unless flag 2 (no response: only the final flag, 1).
//! - A response: `u32 outputs, i32 error code (-1: none), u32 error length`, the error's UTF-8,
//!   then per output `u32 name length, u32 rank, u8 datatype, 3 × u8 0, u64 location, u64 size`,
//!   the name, `rank × i64`.
//!
//! A datatype is Triton's number (the config's `TYPE_*`). A location with its top bit set is an
//! offset in the frame's payload, else an offset in the shared-memory region. Every length a
//! stub sends is checked against what is left of the header before it is used.

use bytes::Bytes;
use tritium_backend_api::BackendError;
use tritium_tensor::{DataType, Tensor, bytes_codec};

use crate::region::Region;
use crate::wire::{Location, Reply, malformed, request_error, tensor_data};

pub const EXECUTE: u8 = 1;
pub const EXECUTED: u8 = 2;
pub const RESPONSE: u8 = 3;
/// The location bit of bytes in the frame's payload.
pub const INLINE: u64 = 1 << 63;
/// Tensors up to this size travel in the frame itself, either way: less work for both sides than
/// a block of the region (the stub's `SMALL` is the same).
pub const SMALL: usize = 4096;
/// `executed`: the execute raised; `response`: the request's last.
const FAILED: u8 = 1;
const FINAL: u8 = 1;
const EMPTY: u8 = 2;

/// Whether a frame header is a binary one (its op), or JSON (`None`).
pub fn op(header: &[u8]) -> Option<u8> {
    header.first().copied().filter(|&b| b != b'{')
}

/// Appends the head of an `execute` of `requests` requests.
pub fn execute_head(buffer: &mut Vec<u8>, requests: u32, ack: u64, id: u64) {
    buffer.extend_from_slice(&[EXECUTE, 0, 0, 0]);
    buffer.extend_from_slice(&requests.to_le_bytes());
    buffer.extend_from_slice(&ack.to_le_bytes());
    buffer.extend_from_slice(&id.to_le_bytes());
}

/// The names of a request's outputs as `execute` carries them: KServe's BYTES layout. No name
/// reaches 4 GiB (a request is smaller); one that did would leave the list empty (every output).
pub fn encode_names<'a>(names: impl IntoIterator<Item = &'a str>) -> Bytes {
    bytes_codec::try_encode(names).unwrap_or_default()
}

/// Appends one request of an `execute`; `locations` pairs each input with where its bytes are.
pub fn request(buffer: &mut Vec<u8>, key: u64, flags: u32, outputs: &[u8], extras: &[u8], inputs: &[(Tensor, u64)]) {
    let inputs_at = buffer.len() + 16;
    buffer.extend_from_slice(&key.to_le_bytes());
    buffer.extend_from_slice(&flags.to_le_bytes());
    put_len(buffer, outputs.len());
    buffer.extend_from_slice(&[0; 4]);
    put_len(buffer, extras.len());
    buffer.extend_from_slice(outputs);
    let start = buffer.len();
    for (tensor, _) in inputs {
        put_len(buffer, tensor.name.len());
        put_len(buffer, tensor.shape.len());
        buffer.push(datatype_number(tensor.datatype));
        buffer.extend_from_slice(tensor.name.as_bytes());
        tensor.shape.iter().for_each(|d| buffer.extend_from_slice(&d.to_le_bytes()));
    }
    let size = u32::try_from(buffer.len() - start).unwrap_or(u32::MAX);
    buffer[inputs_at..inputs_at + 4].copy_from_slice(&size.to_le_bytes());
    buffer.extend_from_slice(extras);
    for (tensor, location) in inputs {
        buffer.extend_from_slice(&location.to_le_bytes());
        buffer.extend_from_slice(&(tensor.data.len() as u64).to_le_bytes());
    }
}

/// Lengths on the wire are u32; the frame writer refuses a header over 4 GiB before any of it goes.
fn put_len(buffer: &mut Vec<u8>, len: usize) {
    buffer.extend_from_slice(&u32::try_from(len).unwrap_or(u32::MAX).to_le_bytes());
}

fn datatype_number(datatype: DataType) -> u8 {
    u8::try_from(datatype.to_config() as i32).unwrap_or(0)
}

/// An `executed` frame: which execute, and its answers (one per request) or the error it raised.
pub struct ExecutedFrame {
    pub id: u64,
    pub outcome: Result<Vec<Result<Reply, BackendError>>, String>,
    /// Bytes of the stub's region the frame named (the server has copied them out).
    pub shm_bytes: usize,
}

/// A `response` frame of a decoupled request: `None` for one with no response (only the flag).
pub struct ResponseFrame {
    pub key: u64,
    pub last: bool,
    pub answer: Option<Result<Reply, BackendError>>,
    pub shm_bytes: usize,
}

pub fn parse_executed(header: &[u8], region: &Region, payload: &Bytes) -> Result<ExecutedFrame, String> {
    let mut cursor = Cursor { bytes: header, at: 0 };
    let (flags, count, id) = cursor.head(EXECUTED)?;
    if flags & FAILED != 0 {
        let message = cursor.text()?.into_owned();
        return Ok(ExecutedFrame { id, outcome: Err(message), shm_bytes: 0 });
    }
    // Each response takes at least 12 bytes: no allocation larger than the header backs.
    let mut answers = Vec::with_capacity(count.min(cursor.left() / 12));
    let mut shm_bytes = 0;
    for _ in 0..count {
        answers.push(cursor.response(region, payload, &mut shm_bytes)?);
    }
    cursor.end()?;
    Ok(ExecutedFrame { id, outcome: Ok(answers), shm_bytes })
}

pub fn parse_response(header: &[u8], region: &Region, payload: &Bytes) -> Result<ResponseFrame, String> {
    let mut cursor = Cursor { bytes: header, at: 0 };
    let (flags, count, key) = cursor.head(RESPONSE)?;
    if count != usize::from(flags & EMPTY == 0) {
        return Err(format!("a response frame of {count} responses (one, or none when EMPTY)"));
    }
    let mut shm_bytes = 0;
    let answer = if flags & EMPTY != 0 { None } else { Some(cursor.response(region, payload, &mut shm_bytes)?) };
    cursor.end()?;
    Ok(ResponseFrame { key, last: flags & FINAL != 0, answer, shm_bytes })
}

/// Reads a stub's header; every read is bounds-checked (an error, never a panic).
struct Cursor<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Cursor<'a> {
    fn left(&self) -> usize {
        self.bytes.len() - self.at
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], String> {
        let end = self.at.checked_add(n).filter(|&end| end <= self.bytes.len());
        let end =
            end.ok_or_else(|| format!("a header cut short ({} bytes, {n} more wanted at {})", self.bytes.len(), self.at))?;
        let taken = &self.bytes[self.at..end];
        self.at = end;
        Ok(taken)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], String> {
        let mut out = [0u8; N];
        out.copy_from_slice(self.take(N)?);
        Ok(out)
    }

    fn u32(&mut self) -> Result<usize, String> {
        usize::try_from(u32::from_le_bytes(self.array()?)).map_err(|_| "a length out of range".to_string())
    }

    fn u64(&mut self) -> Result<u64, String> {
        Ok(u64::from_le_bytes(self.array()?))
    }

    fn text(&mut self) -> Result<std::borrow::Cow<'a, str>, String> {
        let len = self.u32()?;
        Ok(String::from_utf8_lossy(self.take(len)?))
    }

    fn end(&self) -> Result<(), String> {
        if self.left() == 0 { Ok(()) } else { Err(format!("{} bytes after the header's end", self.left())) }
    }

    /// `(flags, count, id)` of a frame whose op must be `op`.
    fn head(&mut self, op: u8) -> Result<(u8, usize, u64), String> {
        let [got, flags, _, _] = self.array()?;
        if got != op {
            return Err(format!("op {got} where {op} was expected"));
        }
        Ok((flags, self.u32()?, self.u64()?))
    }

    /// One response: its error, or its outputs copied out of the region or sliced from the payload.
    /// What is malformed inside an output (a datatype, a location) fails that response only.
    fn response(
        &mut self,
        region: &Region,
        payload: &Bytes,
        shm_bytes: &mut usize,
    ) -> Result<Result<Reply, BackendError>, String> {
        let count = self.u32()?;
        let code = i32::from_le_bytes(self.array()?);
        let message = self.text()?;
        let mut outputs = Vec::with_capacity(count.min(self.left() / 28));
        let mut problem = None;
        for _ in 0..count {
            let name_len = self.u32()?;
            let rank = self.u32()?;
            let [datatype, _, _, _] = self.array()?;
            let location = self.u64()?;
            let size = usize::try_from(self.u64()?).map_err(|_| "a tensor size out of range")?;
            let name = String::from_utf8_lossy(self.take(name_len)?).into_owned();
            let dims = self.take(rank.checked_mul(8).ok_or("a rank out of range")?)?;
            let shape = dims.chunks_exact(8).map(|d| i64::from_le_bytes(d.try_into().unwrap_or([0; 8]))).collect();
            match tensor(name, datatype, shape, location, size, region, payload) {
                Ok(tensor) => {
                    // Only what was read from the region counts (a size the stub made up does not).
                    if location & INLINE == 0 {
                        *shm_bytes = shm_bytes.saturating_add(size);
                    }
                    outputs.push(tensor);
                }
                Err(why) => problem = problem.or(Some(why)),
            }
        }
        if code >= 0 {
            return Ok(Err(request_error(&message, i64::from(code))));
        }
        Ok(match problem {
            Some(why) => Err(malformed(&why)),
            None => Ok(Reply { outputs }),
        })
    }
}

fn tensor(
    name: String,
    datatype: u8,
    shape: Vec<i64>,
    location: u64,
    size: usize,
    region: &Region,
    payload: &Bytes,
) -> Result<Tensor, String> {
    let datatype =
        DataType::from_config(i32::from(datatype)).ok_or_else(|| format!("tensor '{name}' has unknown datatype {datatype}"))?;
    let location = if location & INLINE == 0 { Location::Region(location) } else { Location::Inline(location & !INLINE) };
    let data = tensor_data(&name, location, size, region, payload)?;
    Ok(Tensor::new(name, datatype, shape, data))
}

#[cfg(test)]
#[path = "binary_tests.rs"]
mod tests;
