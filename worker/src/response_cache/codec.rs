//! The bytes of a cached response in a shared store: a tag, then each output's name, datatype,
//! shape and data, every length given before what it counts. What is read back is checked as
//! hostile (another process, or anyone with access to the store, may have written it): a value
//! that does not parse, or whose data does not fit its shape, is a miss.

use std::sync::Arc;

use bytes::{Buf, Bytes};
use tritium_tensor::{DataType, Tensor};

const TAG: &[u8; 8] = b"TRTRC\x00\x00\x01";
/// More outputs or dimensions than any model declares: a value claiming more is not ours.
const MAX_TENSORS: u32 = 4096;
const MAX_DIMS: u32 = 64;

/// `outputs` as bytes for a shared store.
pub fn encode_outputs(outputs: &[Tensor]) -> Vec<u8> {
    let size: usize = outputs.iter().map(|t| 32 + t.name.len() + 8 * t.shape.len() + t.data.len()).sum();
    let mut out = Vec::with_capacity(TAG.len() + 4 + size);
    out.extend_from_slice(TAG);
    out.extend_from_slice(&(outputs.len() as u32).to_le_bytes());
    for t in outputs {
        let dt = t.datatype.kserve_name();
        out.extend_from_slice(&(t.name.len() as u32).to_le_bytes());
        out.extend_from_slice(t.name.as_bytes());
        out.push(dt.len() as u8);
        out.extend_from_slice(dt.as_bytes());
        out.extend_from_slice(&(t.shape.len() as u32).to_le_bytes());
        for d in &t.shape {
            out.extend_from_slice(&d.to_le_bytes());
        }
        out.extend_from_slice(&(t.data.len() as u64).to_le_bytes());
        out.extend_from_slice(&t.data);
    }
    out
}

/// The outputs in `value`, or `None` when it is not a well-formed entry.
pub fn decode_outputs(value: Bytes) -> Option<Arc<[Tensor]>> {
    let mut buf = value;
    if buf.len() < TAG.len() + 4 || &buf[..TAG.len()] != TAG {
        return None;
    }
    buf.advance(TAG.len());
    let count = buf.get_u32_le();
    if count > MAX_TENSORS {
        return None;
    }
    let mut outputs = Vec::with_capacity(count as usize);
    for _ in 0..count {
        let name_len = read_u32(&mut buf)? as usize;
        let name = take(&mut buf, name_len)?;
        let name = String::from_utf8(name.to_vec()).ok()?;
        let dt_len = read_u8(&mut buf)? as usize;
        let datatype = DataType::from_kserve(std::str::from_utf8(&take(&mut buf, dt_len)?).ok()?)?;
        let dims = read_u32(&mut buf)?;
        if dims > MAX_DIMS {
            return None;
        }
        let mut shape = Vec::with_capacity(dims as usize);
        for _ in 0..dims {
            if buf.remaining() < 8 {
                return None;
            }
            shape.push(buf.get_i64_le());
        }
        if buf.remaining() < 8 {
            return None;
        }
        let len = usize::try_from(buf.get_u64_le()).ok()?;
        let data = take(&mut buf, len)?;
        let tensor = Tensor::new(name, datatype, shape, data);
        tensor.validate().ok()?;
        outputs.push(tensor);
    }
    buf.is_empty().then(|| Arc::from(outputs))
}

fn read_u32(buf: &mut Bytes) -> Option<u32> {
    (buf.remaining() >= 4).then(|| buf.get_u32_le())
}

fn read_u8(buf: &mut Bytes) -> Option<u8> {
    (buf.remaining() >= 1).then(|| buf.get_u8())
}

fn take(buf: &mut Bytes, len: usize) -> Option<Bytes> {
    (buf.remaining() >= len).then(|| buf.split_to(len))
}
