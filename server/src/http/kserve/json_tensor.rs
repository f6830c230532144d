//! Tensor data in the JSON form of the KServe REST protocol: `data` as a flat or nested row-major
//! array of numbers, booleans (BOOL) or strings (BYTES), turned into the raw little-endian layout
//! the rest of the server uses, and raw outputs written back as flat JSON arrays.

use serde_json::Value;
use tritium_tensor::DataType;

/// Why a JSON `data` array could not be read, with the element at fault.
#[derive(Debug, PartialEq)]
pub enum DataError {
    /// An element is not of the JSON kind the datatype needs.
    WrongKind {
        expected: &'static str,
    },
    /// A number is outside the datatype's range or not an integer where one is needed.
    OutOfRange,
    /// FP16 and BF16 have no JSON form.
    NoJsonForm,
    /// A number JSON allows but an f64 cannot hold (`1e400`, an integer of hundreds of digits):
    /// its text, cut short when long.
    NumberOutOfRange {
        number: String,
    },
    /// Any other reason the JSON parser gave up (a string escape it refuses, as a lone surrogate).
    Unparsable {
        reason: String,
    },
    TooDeep,
    /// More elements than the shape holds.
    TooMany,
}

/// Nested arrays deeper than this are refused (each level is a recursion).
pub const MAX_DEPTH: usize = 64;

/// Appends one element (a JSON scalar, or anything else to refuse) in the layout of `datatype`.
/// With `non_finite`, a float type also takes the string stand-ins of `NaN` and the infinities
/// (see `non_finite.rs`).
fn append(datatype: DataType, value: &Value, non_finite: bool, out: &mut Vec<u8>) -> Result<(), DataError> {
    match datatype {
        DataType::Bool => {
            let b = value.as_bool().ok_or(DataError::WrongKind { expected: "boolean" })?;
            out.push(u8::from(b));
        }
        DataType::Bytes => {
            let s = value.as_str().ok_or(DataError::WrongKind { expected: "string" })?;
            let len = u32::try_from(s.len()).map_err(|_| DataError::OutOfRange)?;
            out.extend_from_slice(&len.to_le_bytes());
            out.extend_from_slice(s.as_bytes());
        }
        DataType::Fp16 | DataType::Bf16 => return Err(DataError::NoJsonForm),
        DataType::Fp32 => out.extend_from_slice(&(number(value, non_finite)? as f32).to_le_bytes()),
        DataType::Fp64 => out.extend_from_slice(&number(value, non_finite)?.to_le_bytes()),
        DataType::Int8 => out.extend_from_slice(&signed::<i8>(value)?.to_le_bytes()),
        DataType::Int16 => out.extend_from_slice(&signed::<i16>(value)?.to_le_bytes()),
        DataType::Int32 => out.extend_from_slice(&signed::<i32>(value)?.to_le_bytes()),
        DataType::Int64 => out.extend_from_slice(&signed::<i64>(value)?.to_le_bytes()),
        DataType::Uint8 => out.extend_from_slice(&unsigned::<u8>(value)?.to_le_bytes()),
        DataType::Uint16 => out.extend_from_slice(&unsigned::<u16>(value)?.to_le_bytes()),
        DataType::Uint32 => out.extend_from_slice(&unsigned::<u32>(value)?.to_le_bytes()),
        DataType::Uint64 => out.extend_from_slice(&unsigned::<u64>(value)?.to_le_bytes()),
    }
    Ok(())
}

fn number(value: &Value, non_finite: bool) -> Result<f64, DataError> {
    let stand_in = || value.as_str().filter(|_| non_finite).and_then(super::non_finite::sentinel_value);
    value.as_f64().or_else(stand_in).ok_or(DataError::WrongKind { expected: "number" })
}

/// As Triton's reader takes an integer: a signed type reads an int64 and an unsigned one a
/// uint64, so a fraction, a negative number for an unsigned type or one past int64 for a signed
/// type is the wrong kind. A 64-bit integer beyond the type's own range is out of range (Triton
/// narrows it).
fn signed<T: TryFrom<i64>>(value: &Value) -> Result<T, DataError> {
    let n = value.as_i64().ok_or(DataError::WrongKind { expected: "integer" })?;
    T::try_from(n).map_err(|_| DataError::OutOfRange)
}

fn unsigned<T: TryFrom<u64>>(value: &Value) -> Result<T, DataError> {
    let n = value.as_u64().ok_or(DataError::WrongKind { expected: "integer" })?;
    T::try_from(n).map_err(|_| DataError::OutOfRange)
}

/// Flattens `data` (the JSON text of a scalar or of nested arrays) into the raw layout of
/// `datatype`, with the element count. It is read as it goes, without a JSON tree of it (a tree
/// costs tens of bytes per number, the raw layout at most 8), and reading stops as soon as there
/// are more than `expected` elements.
/// Arrays nest at most `max_depth` deep (1: a scalar or a flat array). `non_finite`: the body was
/// rewritten by `non_finite::rewrite`, whose stand-ins the float types take back.
pub fn to_raw_streaming(
    datatype: DataType,
    data: &serde_json::value::RawValue,
    expected: usize,
    max_depth: usize,
    non_finite: bool,
) -> Result<(Vec<u8>, usize), DataError> {
    read(datatype, data, expected, max_depth, false, non_finite)
}

/// As [`to_raw_streaming`], but more than `limit` elements is no error: the reading stops quietly
/// after `limit` of them, and those are returned (for BYTES, whose count Triton checks after the
/// JSON is read, naming how many it found).
pub fn to_raw_up_to(
    datatype: DataType,
    data: &serde_json::value::RawValue,
    limit: usize,
    max_depth: usize,
) -> Result<(Vec<u8>, usize), DataError> {
    read(datatype, data, limit, max_depth, true, false)
}

fn read(
    datatype: DataType,
    data: &serde_json::value::RawValue,
    expected: usize,
    max_depth: usize,
    stop_quietly: bool,
    non_finite: bool,
) -> Result<(Vec<u8>, usize), DataError> {
    let mut state = Stream {
        datatype,
        out: Vec::with_capacity(expected.saturating_mul(datatype.element_size().unwrap_or(8)).min(data.get().len() * 4)),
        count: 0,
        expected,
        max_depth: max_depth.min(MAX_DEPTH),
        error: None,
        stop_quietly,
        stopped: false,
        non_finite,
    };
    let mut reader = serde_json::Deserializer::from_str(data.get());
    let read = serde::de::DeserializeSeed::deserialize(Elements { state: &mut state, depth: 0 }, &mut reader);
    match (read, state.error) {
        (_, Some(error)) => Err(error),
        (Err(_), None) if state.stopped => Ok((state.out, state.count)),
        (Err(error), None) => Err(parser_error(data.get(), &error)),
        (Ok(()), None) => Ok((state.out, state.count)),
    }
}

/// Digits of a refused number shown in its error, at most.
const NUMBER_SHOWN: usize = 24;

/// An error of the JSON parser itself, not of the reading (which keeps its own in `Stream`): the
/// request's parser has already checked `data` as JSON, so what is left is a number an f64 cannot
/// hold or a string escape serde_json refuses, each told as what it is.
fn parser_error(text: &str, error: &serde_json::Error) -> DataError {
    let reason = without_position(error);
    if reason != "number out of range" {
        return DataError::Unparsable { reason };
    }
    let number = number_at(text, error.line(), error.column()).unwrap_or("");
    let number = if number.len() > NUMBER_SHOWN {
        format!("{}… ({} characters)", &number[..NUMBER_SHOWN], number.len())
    } else {
        number.to_string()
    };
    DataError::NumberOutOfRange { number }
}

/// serde_json's message without the position it ends with (a position within one member of the
/// request, of no use to the client).
pub fn without_position(error: &serde_json::Error) -> String {
    let message = error.to_string();
    match message.rsplit_once(" at line ") {
        Some((reason, _)) => reason.to_string(),
        None => message,
    }
}

/// The number in `text` around serde_json's error position (`line` and `column` from 1, the
/// column in bytes, on a character of the number).
fn number_at(text: &str, line: usize, column: usize) -> Option<&str> {
    let is_number = |b: &u8| b.is_ascii_digit() || matches!(b, b'-' | b'+' | b'.' | b'e' | b'E');
    let start_of_line: usize = text.split_inclusive('\n').take(line.saturating_sub(1)).map(str::len).sum();
    let at = start_of_line + column.saturating_sub(1);
    let bytes = text.as_bytes();
    if !bytes.get(at).is_some_and(is_number) {
        return None;
    }
    let start = bytes[..at].iter().rposition(|b| !is_number(b)).map_or(0, |i| i + 1);
    let end = bytes[at..].iter().position(|b| !is_number(b)).map_or(bytes.len(), |i| at + i);
    // Only ASCII bytes were taken, so both ends are character boundaries.
    text.get(start..end)
}

struct Stream {
    datatype: DataType,
    out: Vec<u8>,
    count: usize,
    expected: usize,
    max_depth: usize,
    error: Option<DataError>,
    /// More than `expected` elements ends the reading without an error.
    stop_quietly: bool,
    stopped: bool,
    /// Float types take `NaN`'s and the infinities' stand-ins.
    non_finite: bool,
}

impl Stream {
    /// Appends one scalar; `Err` (with the reason kept in `error`, or `stopped` set) stops the
    /// reading.
    fn push(&mut self, value: Value) -> Result<(), ()> {
        if self.count >= self.expected {
            if self.stop_quietly {
                self.stopped = true;
            } else {
                self.error = Some(DataError::TooMany);
            }
            return Err(());
        }
        append(self.datatype, &value, self.non_finite, &mut self.out).map_err(|e| self.error = Some(e))?;
        self.count += 1;
        Ok(())
    }
}

/// An element of `data` at `depth`: a scalar, or an array of elements.
struct Elements<'a> {
    state: &'a mut Stream,
    depth: usize,
}

impl<'de> serde::de::DeserializeSeed<'de> for Elements<'_> {
    type Value = ();

    fn deserialize<D: serde::Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        deserializer.deserialize_any(self)
    }
}

macro_rules! scalar {
    ($name:ident, $t:ty, $make:expr) => {
        fn $name<E: serde::de::Error>(self, v: $t) -> Result<(), E> {
            self.state.push($make(v)).map_err(|()| E::custom("stop"))
        }
    };
}

impl<'de> serde::de::Visitor<'de> for Elements<'_> {
    type Value = ();

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("tensor data")
    }

    scalar!(visit_bool, bool, Value::Bool);
    scalar!(visit_i64, i64, Value::from);
    scalar!(visit_u64, u64, Value::from);
    scalar!(visit_f64, f64, Value::from);
    scalar!(visit_str, &str, Value::from);

    fn visit_unit<E: serde::de::Error>(self) -> Result<(), E> {
        self.state.push(Value::Null).map_err(|()| E::custom("stop"))
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(self, _: A) -> Result<(), A::Error> {
        self.state.push(Value::Object(Default::default())).map_err(|()| serde::de::Error::custom("stop"))
    }

    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut items: A) -> Result<(), A::Error> {
        if self.depth >= self.state.max_depth {
            self.state.error = Some(DataError::TooDeep);
            return Err(serde::de::Error::custom("stop"));
        }
        while items.next_element_seed(Elements { state: &mut *self.state, depth: self.depth + 1 })?.is_some() {}
        Ok(())
    }
}

/// How outputs are written as JSON.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JsonFlavor {
    /// As Triton writes them, losing nothing: a float that is not finite as `Infinity`,
    /// `-Infinity` or `NaN` (not JSON, but what Triton's clients read: Python's json, rapidjson),
    /// and a BYTES element's bytes as they are, escaped where JSON escapes text but never
    /// replaced, so an element that is not UTF-8 comes back whole (tritonclient then asks for
    /// `binary_data`, as it does of Triton).
    Triton,
    /// Strict JSON, for an answer that is read back as a JSON tree: a float that is not finite
    /// as `null`, a BYTES element as text (sequences that are not UTF-8 replaced).
    Strict,
}

/// Appends `raw` (the layout of `datatype`) to `out` as a flat JSON array; `None` (and `out` as
/// it was) when the datatype has no JSON form (FP16, BF16) or the bytes do not hold whole
/// elements. Each element is written as it is read, with no list of them in between.
pub fn write_json(datatype: DataType, raw: &[u8], flavor: JsonFlavor, out: &mut Vec<u8>) -> Option<()> {
    let start = out.len();
    let written = write_array(datatype, raw, flavor, out);
    if written.is_none() {
        out.truncate(start);
    }
    written
}

fn write_array(datatype: DataType, raw: &[u8], flavor: JsonFlavor, out: &mut Vec<u8>) -> Option<()> {
    fn items<const N: usize>(raw: &[u8], out: &mut Vec<u8>, mut write: impl FnMut([u8; N], &mut Vec<u8>)) -> Option<()> {
        if !raw.len().is_multiple_of(N) {
            return None;
        }
        out.push(b'[');
        for (index, chunk) in raw.chunks_exact(N).enumerate() {
            if index > 0 {
                out.push(b',');
            }
            write(chunk.try_into().unwrap_or([0; N]), out);
        }
        out.push(b']');
        Some(())
    }
    // A number or a boolean always serializes.
    fn scalar<T: serde::Serialize>(out: &mut Vec<u8>, value: T) {
        let _ = serde_json::to_writer(out, &value);
    }
    // As Triton prints floats: the double of each (0.1f32 is 0.10000000149011612).
    let float = |value: f64, out: &mut Vec<u8>| match flavor {
        JsonFlavor::Triton if value.is_nan() => out.extend_from_slice(b"NaN"),
        JsonFlavor::Triton if value == f64::INFINITY => out.extend_from_slice(b"Infinity"),
        JsonFlavor::Triton if value == f64::NEG_INFINITY => out.extend_from_slice(b"-Infinity"),
        // serde_json writes what is not finite as null.
        _ => scalar(out, value),
    };
    match datatype {
        DataType::Bool => items::<1>(raw, out, |b, out| scalar(out, b[0] != 0)),
        DataType::Int8 => items(raw, out, |b, out| scalar(out, i8::from_le_bytes(b))),
        DataType::Int16 => items(raw, out, |b, out| scalar(out, i16::from_le_bytes(b))),
        DataType::Int32 => items(raw, out, |b, out| scalar(out, i32::from_le_bytes(b))),
        DataType::Int64 => items(raw, out, |b, out| scalar(out, i64::from_le_bytes(b))),
        DataType::Uint8 => items(raw, out, |b, out| scalar(out, u8::from_le_bytes(b))),
        DataType::Uint16 => items(raw, out, |b, out| scalar(out, u16::from_le_bytes(b))),
        DataType::Uint32 => items(raw, out, |b, out| scalar(out, u32::from_le_bytes(b))),
        DataType::Uint64 => items(raw, out, |b, out| scalar(out, u64::from_le_bytes(b))),
        DataType::Fp32 => items(raw, out, |b, out| float(f64::from(f32::from_le_bytes(b)), out)),
        DataType::Fp64 => items(raw, out, |b, out| float(f64::from_le_bytes(b), out)),
        DataType::Fp16 | DataType::Bf16 => None,
        DataType::Bytes => {
            out.push(b'[');
            let mut rest = raw;
            let mut first = true;
            while !rest.is_empty() {
                let len = u32::from_le_bytes(rest.get(..4)?.try_into().ok()?) as usize;
                let item = rest.get(4..4 + len)?;
                if !std::mem::take(&mut first) {
                    out.push(b',');
                }
                match flavor {
                    JsonFlavor::Triton => push_string(out, item),
                    JsonFlavor::Strict => scalar(out, String::from_utf8_lossy(item)),
                }
                rest = &rest[4 + len..];
            }
            out.push(b']');
            Some(())
        }
    }
}

/// Writes `bytes` as a JSON string, escaped as serde_json escapes text (`"`, `\`, and control
/// characters), every other byte as it is.
fn push_string(out: &mut Vec<u8>, bytes: &[u8]) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    out.reserve(bytes.len() + 2);
    out.push(b'"');
    let mut plain = 0;
    for (at, &byte) in bytes.iter().enumerate() {
        let short = match byte {
            b'"' => b'"',
            b'\\' => b'\\',
            b'\n' => b'n',
            b'\r' => b'r',
            b'\t' => b't',
            0x08 => b'b',
            0x0c => b'f',
            0..0x20 => 0,
            _ => continue,
        };
        out.extend_from_slice(&bytes[plain..at]);
        plain = at + 1;
        if short == 0 {
            out.extend_from_slice(&[b'\\', b'u', b'0', b'0', HEX[usize::from(byte >> 4)], HEX[usize::from(byte & 0xf)]]);
        } else {
            out.extend_from_slice(&[b'\\', short]);
        }
    }
    out.extend_from_slice(&bytes[plain..]);
    out.push(b'"');
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn to_raw(datatype: DataType, data: &Value, expected: usize) -> Result<(Vec<u8>, usize), DataError> {
        let text = serde_json::value::RawValue::from_string(data.to_string()).expect("json");
        to_raw_streaming(datatype, &text, expected, MAX_DEPTH, false)
    }

    #[test]
    fn nested_and_flat_arrays_give_the_same_bytes() {
        let flat = to_raw(DataType::Int32, &json!([1, 2, 3, 4]), 4).expect("flat");
        let nested = to_raw(DataType::Int32, &json!([[1, 2], [3, 4]]), 4).expect("nested");
        assert_eq!(flat, nested);
        assert_eq!(flat.1, 4);
        assert_eq!(&flat.0[..4], &1i32.to_le_bytes());
    }

    #[test]
    fn kinds_and_ranges_are_checked() {
        assert_eq!(to_raw(DataType::Int32, &json!(["a"]), 1).expect_err("refused"), DataError::WrongKind { expected: "integer" });
        assert_eq!(to_raw(DataType::Int8, &json!([300]), 1).expect_err("refused"), DataError::OutOfRange);
        assert_eq!(to_raw(DataType::Uint8, &json!([256]), 1).expect_err("refused"), DataError::OutOfRange);
        assert_eq!(to_raw(DataType::Int32, &json!([1.5]), 1).expect_err("refused"), DataError::WrongKind { expected: "integer" });
        assert_eq!(to_raw(DataType::Int32, &json!([1u64 << 40]), 1).expect_err("refused"), DataError::OutOfRange);
        assert_eq!(to_raw(DataType::Int32, &json!([-(1i64 << 40)]), 1).expect_err("refused"), DataError::OutOfRange);
        // What a 64-bit reading of the type's sign cannot take is the wrong kind, as Triton says.
        assert_eq!(to_raw(DataType::Uint8, &json!([-1]), 1).expect_err("refused"), DataError::WrongKind { expected: "integer" });
        assert_eq!(to_raw(DataType::Uint64, &json!([-1]), 1).expect_err("refused"), DataError::WrongKind { expected: "integer" });
        assert_eq!(
            to_raw(DataType::Int32, &json!([1u64 << 63]), 1).expect_err("refused"),
            DataError::WrongKind { expected: "integer" }
        );
        assert_eq!(
            to_raw(DataType::Int64, &json!([u64::MAX]), 1).expect_err("refused"),
            DataError::WrongKind { expected: "integer" }
        );
        assert_eq!(to_raw(DataType::Uint64, &json!([u64::MAX]), 1).expect("fits").0, u64::MAX.to_le_bytes());
        assert_eq!(to_raw(DataType::Int64, &json!([i64::MIN]), 1).expect("fits").0, i64::MIN.to_le_bytes());
        assert_eq!(to_raw(DataType::Fp16, &json!([1.0]), 1).expect_err("refused"), DataError::NoJsonForm);
        assert_eq!(to_raw(DataType::Bool, &json!([1]), 1).expect_err("refused"), DataError::WrongKind { expected: "boolean" });
        let mut deep = json!(1);
        for _ in 0..100 {
            deep = json!([deep]);
        }
        assert_eq!(to_raw(DataType::Int32, &deep, 1).expect_err("refused"), DataError::TooDeep);
    }

    #[test]
    fn streaming_reads_elements_and_stops_early() {
        use serde_json::value::RawValue;
        let raw = |text: &str| RawValue::from_string(text.to_string()).expect("raw");
        let (bytes, count) = to_raw_streaming(DataType::Fp32, &raw("[0.5, -1, 2e3]"), 3, MAX_DEPTH, false).expect("floats");
        assert_eq!(count, 3);
        assert_eq!(&bytes[..4], &0.5f32.to_le_bytes());
        assert_eq!(to_raw_streaming(DataType::Uint8, &raw("7"), 1, MAX_DEPTH, false).expect("scalar"), (vec![7], 1));
        assert_eq!(
            to_raw_streaming(DataType::Int32, &raw("[1, 2, 3]"), 2, MAX_DEPTH, false).expect_err("too many"),
            DataError::TooMany
        );
        assert_eq!(
            to_raw_streaming(DataType::Int32, &raw(r#"[1, {"a": 1}]"#), 2, MAX_DEPTH, false).expect_err("object"),
            DataError::WrongKind { expected: "integer" }
        );
        assert_eq!(to_raw_streaming(DataType::Int32, &raw("[[1]]"), 1, 1, false).expect_err("flat only"), DataError::TooDeep);
        assert_eq!(to_raw_streaming(DataType::Int32, &raw("[1, 2]"), usize::MAX, 1, false).expect("flat").1, 2);
    }

    #[test]
    fn reading_up_to_a_limit_stops_quietly_after_it() {
        use serde_json::value::RawValue;
        let raw = |text: &str| RawValue::from_string(text.to_string()).expect("raw");
        let (bytes, count) = to_raw_up_to(DataType::Bytes, &raw(r#"["a", "b", "c", "d"]"#), 2, MAX_DEPTH).expect("two");
        assert_eq!(count, 2);
        assert_eq!(bytes, b"\x01\0\0\0a\x01\0\0\0b");
        assert_eq!(to_raw_up_to(DataType::Bytes, &raw(r#"[["a"], ["b"]]"#), 3, MAX_DEPTH).expect("fewer").1, 2);
        // What is read before the limit is still checked.
        assert_eq!(
            to_raw_up_to(DataType::Bytes, &raw(r#"["a", 1, "c"]"#), 2, MAX_DEPTH).expect_err("a number"),
            DataError::WrongKind { expected: "string" }
        );
    }

    #[test]
    fn numbers_beyond_an_f64_are_out_of_range_not_too_deep() {
        use serde_json::value::RawValue;
        let read = |datatype, text: &str| {
            let raw = RawValue::from_string(text.to_string()).expect("raw");
            to_raw_streaming(datatype, &raw, 8, MAX_DEPTH, false)
        };
        let out_of_range = |number: &str| DataError::NumberOutOfRange { number: number.to_string() };
        assert_eq!(read(DataType::Fp32, "[1e400]").expect_err("refused"), out_of_range("1e400"));
        assert_eq!(read(DataType::Fp64, "[1, 2,\n  -1.5e400 ]").expect_err("refused"), out_of_range("-1.5e400"));
        assert_eq!(
            read(DataType::Int32, "[[1e99999999999999999999]]").expect_err("refused"),
            out_of_range("1e99999999999999999999")
        );
        let digits = "9".repeat(10_000);
        assert_eq!(
            read(DataType::Fp32, &format!("[{digits}]")).expect_err("refused"),
            out_of_range(&format!("{}… (10000 characters)", &digits[..NUMBER_SHOWN]))
        );
        // What an f64 holds is read as before: a long fraction, an underflow to zero, 1e39 (an
        // FP32 infinity, as a cast gives it).
        assert_eq!(read(DataType::Fp64, &format!("[0.{digits}]")).expect("long fraction").0, 1.0f64.to_le_bytes());
        assert_eq!(read(DataType::Fp32, "[1e-400]").expect("underflow").0, 0.0f32.to_le_bytes());
        assert_eq!(read(DataType::Fp32, "[1e39]").expect("wide").0, f32::INFINITY.to_le_bytes());
        // Another parser refusal keeps serde_json's reason, without its position.
        assert_eq!(
            read(DataType::Bytes, r#"["\ud800"]"#).expect_err("refused"),
            DataError::Unparsable { reason: "unexpected end of hex escape".to_string() }
        );
    }

    #[test]
    fn bytes_round_trip_through_the_length_prefixed_layout() {
        let (raw, count) = to_raw(DataType::Bytes, &json!(["ab", ""]), 2).expect("bytes");
        assert_eq!(count, 2);
        for flavor in [JsonFlavor::Triton, JsonFlavor::Strict] {
            let mut out = Vec::new();
            write_json(DataType::Bytes, &raw, flavor, &mut out).expect("writes");
            assert_eq!(String::from_utf8(out).expect("utf8"), r#"["ab",""]"#);
        }
    }

    fn written(datatype: DataType, raw: &[u8], flavor: JsonFlavor) -> Vec<u8> {
        let mut out = Vec::new();
        write_json(datatype, raw, flavor, &mut out).expect("writes");
        out
    }

    #[test]
    fn outputs_are_flat_json_arrays() {
        let raw: Vec<u8> = [1.5f32, -2.0].iter().flat_map(|v| v.to_le_bytes()).collect();
        assert_eq!(written(DataType::Fp32, &raw, JsonFlavor::Triton), b"[1.5,-2.0]");
        assert_eq!(written(DataType::Fp32, &0.1f32.to_le_bytes(), JsonFlavor::Triton), b"[0.10000000149011612]");
        assert_eq!(written(DataType::Fp32, &[], JsonFlavor::Triton), b"[]");
        let raw: Vec<u8> = [-1i64, i64::MAX].iter().flat_map(|v| v.to_le_bytes()).collect();
        assert_eq!(written(DataType::Int64, &raw, JsonFlavor::Triton), b"[-1,9223372036854775807]");
        assert_eq!(written(DataType::Uint8, &[0, 255], JsonFlavor::Triton), b"[0,255]");
        assert_eq!(written(DataType::Bool, &[1, 0], JsonFlavor::Triton), b"[true,false]");
        // Nothing is left behind when the bytes do not hold whole elements.
        let mut out = b"kept".to_vec();
        assert!(write_json(DataType::Int32, &[1, 2, 3], JsonFlavor::Triton, &mut out).is_none());
        assert!(write_json(DataType::Bytes, &[1, 0, 0, 0, b'a', 9, 0, 0, 0, 1], JsonFlavor::Triton, &mut out).is_none());
        assert!(write_json(DataType::Fp16, &[0, 0], JsonFlavor::Triton, &mut out).is_none());
        assert_eq!(out, b"kept");
    }

    #[test]
    fn floats_that_are_not_finite_are_written_as_triton_writes_them() {
        let raw: Vec<u8> = [f32::INFINITY, f32::NEG_INFINITY, f32::NAN, 1.0].iter().flat_map(|v| v.to_le_bytes()).collect();
        assert_eq!(written(DataType::Fp32, &raw, JsonFlavor::Triton), b"[Infinity,-Infinity,NaN,1.0]");
        assert_eq!(written(DataType::Fp32, &raw, JsonFlavor::Strict), b"[null,null,null,1.0]");
        let raw: Vec<u8> = [f64::NEG_INFINITY, 0.5].iter().flat_map(|v| v.to_le_bytes()).collect();
        assert_eq!(written(DataType::Fp64, &raw, JsonFlavor::Triton), b"[-Infinity,0.5]");
    }

    #[test]
    fn bytes_that_are_not_utf8_come_back_whole_in_triton_s_flavor() {
        let raw = b"\x03\0\0\0\xff\xfeA\x02\0\0\0\"\n";
        assert_eq!(written(DataType::Bytes, raw, JsonFlavor::Triton), b"[\"\xff\xfeA\",\"\\\"\\n\"]");
        assert_eq!(written(DataType::Bytes, raw, JsonFlavor::Strict), "[\"\u{fffd}\u{fffd}A\",\"\\\"\\n\"]".as_bytes());
    }

    #[test]
    fn text_is_escaped_as_serde_json_escapes_it() {
        let mut every: String = (0u8..0x80).map(char::from).collect();
        every.push_str("w\u{f6}rld \u{1f600} \u{2028}");
        for text in [every.as_str(), "", "plain", "\"\\", "a\u{0}b\u{1f}\u{7f}"] {
            let mut ours = Vec::new();
            push_string(&mut ours, text.as_bytes());
            assert_eq!(ours, serde_json::to_vec(text).expect("serializes"), "{text:?}");
        }
    }
}
