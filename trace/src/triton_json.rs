//! A finished trace as the JSON objects Triton 2.51 writes to its trace file, recorded from the
//! real server (`tests/python/fixtures/triton_trace/`): per node, at level `TIMESTAMPS`, one
//! object naming it (`id`, `model_name`, `model_version`, then `request_id` when the request had
//! one and `parent_id` for an ensemble step or a BLS call), one `{"id", "timestamps": [{"name",
//! "ns"}]}` object per stamp, and at level `TENSORS` one `{"id", "activity", "tensor": {"name",
//! "data", "shape", "dtype"}}` object per tensor. Children come before their parent, as Triton
//! writes a node when it is released. Values are written as C++'s streams print them (`2.5`,
//! `1e-07`, `1.23457e+08`, `inf`, `nan`).
//!
//! One deliberate difference: Triton writes a BYTES element's bytes raw between quotes, which
//! leaves the file unreadable as JSON when an element holds a quote, a backslash or bytes that
//! are not UTF-8; here the `data` string is escaped (and invalid UTF-8 replaced) so the file
//! always parses.

use std::fmt::Write as _;

use serde_json::{Map, Value, json};
use tritium_backend_api::trace::{FinishedTrace, TimestampKind, TraceNode};
use tritium_tensor::{DataType, Tensor};

/// The trace's objects, comma-separated (the file's writer joins traces into one array).
pub fn render(trace: &FinishedTrace) -> String {
    let mut objects: Vec<Value> = Vec::new();
    for node in trace.nodes.iter().skip(1).rev().chain(trace.nodes.first()) {
        if super::hop::is_hop(&node.attributes) {
            continue;
        }
        node_objects(trace, node, &mut objects);
    }
    let mut out = String::new();
    for (i, object) in objects.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push_str(&object.to_string());
    }
    out
}

fn node_objects(trace: &FinishedTrace, node: &TraceNode, out: &mut Vec<Value>) {
    if trace.level.timestamps {
        let mut head = Map::new();
        head.insert("id".into(), json!(node.id));
        head.insert("model_name".into(), json!(node.model_name));
        head.insert("model_version".into(), json!(node.model_version.unwrap_or(-1)));
        if !node.request_id.is_empty() {
            head.insert("request_id".into(), json!(node.request_id));
        }
        if let Some(parent) = node.parent_id {
            head.insert("parent_id".into(), json!(parent));
        }
        // Triton's order: the HTTP receive stamps, the header, the core's stamps (the tensors
        // after QUEUE_START), then the door's other stamps.
        let stamp = |kind: TimestampKind, ns: u64| json!({"id": node.id, "timestamps": [{"name": kind.name(), "ns": ns}]});
        let receive = |kind: TimestampKind| matches!(kind, TimestampKind::HttpRecvStart | TimestampKind::HttpRecvEnd);
        out.extend(node.timestamps.iter().filter(|(k, _)| receive(*k)).map(|(k, ns)| stamp(*k, *ns)));
        out.push(Value::Object(head));
        let mut tensors_written = !trace.level.tensors;
        for (kind, ns) in node.timestamps.iter().filter(|(k, _)| !k.is_door()) {
            out.push(stamp(*kind, *ns));
            if *kind == TimestampKind::QueueStart && !tensors_written {
                tensor_objects(node, out);
                tensors_written = true;
            }
        }
        if !tensors_written {
            tensor_objects(node, out);
        }
        out.extend(node.timestamps.iter().filter(|(k, _)| k.is_door() && !receive(*k)).map(|(k, ns)| stamp(*k, *ns)));
    } else if trace.level.tensors {
        tensor_objects(node, out);
    }
}

fn tensor_objects(node: &TraceNode, out: &mut Vec<Value>) {
    for record in &node.tensors {
        let tensor = &record.tensor;
        let shape = tensor.shape.iter().map(i64::to_string).collect::<Vec<_>>().join(",");
        out.push(json!({
            "id": node.id,
            "activity": record.activity.name(),
            "tensor": {"name": tensor.name, "data": data(tensor), "shape": shape, "dtype": tensor.datatype.kserve_name()},
        }));
    }
}

/// A tensor's elements, comma-separated, as Triton prints them.
fn data(tensor: &Tensor) -> String {
    let bytes: &[u8] = &tensor.data;
    let mut out = String::new();
    let mut push = |value: &dyn std::fmt::Display| {
        if !out.is_empty() {
            out.push(',');
        }
        let _ = write!(out, "{value}");
    };
    macro_rules! each {
        ($t:ty, $f:expr) => {
            for chunk in bytes.chunks_exact(std::mem::size_of::<$t>()) {
                let value = <$t>::from_le_bytes(chunk.try_into().unwrap_or_default());
                push(&$f(value));
            }
        };
    }
    match tensor.datatype {
        DataType::Bool => each!(u8, |v: u8| u8::from(v != 0)),
        DataType::Uint8 => each!(u8, |v| v),
        DataType::Uint16 => each!(u16, |v| v),
        DataType::Uint32 => each!(u32, |v| v),
        DataType::Uint64 => each!(u64, |v| v),
        DataType::Int8 => each!(i8, |v| v),
        DataType::Int16 => each!(i16, |v| v),
        DataType::Int32 => each!(i32, |v| v),
        DataType::Int64 => each!(i64, |v| v),
        DataType::Fp16 => each!(u16, |v| CppFloat(f64::from(half::f16::from_bits(v).to_f32()))),
        DataType::Bf16 => each!(u16, |v| CppFloat(f64::from(half::bf16::from_bits(v).to_f32()))),
        DataType::Fp32 => each!(f32, |v| CppFloat(f64::from(v))),
        DataType::Fp64 => each!(f64, CppFloat),
        DataType::Bytes => {
            let mut rest = bytes;
            while rest.len() >= 4 {
                let length = u32::from_le_bytes([rest[0], rest[1], rest[2], rest[3]]) as usize;
                let Some(element) = rest.get(4..4 + length) else { break };
                push(&format_args!("\"{}\"", String::from_utf8_lossy(element)));
                rest = &rest[4 + length..];
            }
        }
    }
    out
}

/// A float as C++'s default stream format prints it (`%g`: six significant digits, trailing
/// zeros dropped, an exponent below 1e-4 or from 1e6 on).
struct CppFloat(f64);

impl std::fmt::Display for CppFloat {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let v = self.0;
        if v.is_nan() {
            return f.write_str(if v.is_sign_negative() { "-nan" } else { "nan" });
        }
        if v.is_infinite() {
            return f.write_str(if v < 0.0 { "-inf" } else { "inf" });
        }
        if v == 0.0 {
            return f.write_str(if v.is_sign_negative() { "-0" } else { "0" });
        }
        let scientific = format!("{v:.5e}");
        let (mantissa, exponent) = scientific.split_once('e').unwrap_or((&scientific, "0"));
        let exponent: i32 = exponent.parse().unwrap_or(0);
        if !(-5..6).contains(&exponent) {
            let mantissa = trim_zeros(mantissa);
            let sign = if exponent < 0 { '-' } else { '+' };
            return write!(f, "{mantissa}e{sign}{:02}", exponent.abs());
        }
        let decimals = usize::try_from(5 - exponent).unwrap_or(0);
        f.write_str(trim_zeros(&format!("{v:.decimals$}")))
    }
}

fn trim_zeros(number: &str) -> &str {
    if number.contains('.') { number.trim_end_matches('0').trim_end_matches('.') } else { number }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn floats_print_as_cpp_streams() {
        // The values and the text of the recorded Triton 2.51 trace file (tensors.trace.json).
        let values = [0.1f32, 1e-7, 123_456_789.0, 1.0 / 3.0, 1e20, -0.0, f32::INFINITY, f32::NAN, 1.0, 2.5, -3.0];
        let printed: Vec<String> = values.iter().map(|v| CppFloat(f64::from(*v)).to_string()).collect();
        assert_eq!(printed, ["0.1", "1e-07", "1.23457e+08", "0.333333", "1e+20", "-0", "inf", "nan", "1", "2.5", "-3"]);
        assert_eq!(CppFloat(0.0001).to_string(), "0.0001");
        assert_eq!(CppFloat(999_999.0).to_string(), "999999");
        assert_eq!(CppFloat(1_000_000.0).to_string(), "1e+06");
    }

    #[test]
    fn bytes_elements_are_quoted_and_the_file_stays_json() {
        let mut raw = Vec::new();
        for element in [&b"ab"[..], b"c\"d", b"\x00\xff"] {
            raw.extend_from_slice(&(element.len() as u32).to_le_bytes());
            raw.extend_from_slice(element);
        }
        let tensor = Tensor::new("INPUT0", DataType::Bytes, vec![3], raw.into());
        let data = data(&tensor);
        assert!(data.starts_with("\"ab\",\"c\"d\","), "{data}");
        let object = json!({ "data": data }).to_string();
        assert!(serde_json::from_str::<Value>(&object).is_ok());
    }
}
