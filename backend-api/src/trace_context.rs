//! W3C Trace Context (`traceparent` / `tracestate`), read from a caller's gRPC metadata or HTTP
//! headers so that a caller's trace continues through Tritium, and written on the hops Tritium
//! makes itself (the worker plane).
//!
//! Every byte here is the client's: a header that is not exactly what the W3C recommendation
//! allows (version `00` with four fields, lowercase hex of the right lengths, ids not all zero,
//! version `ff`) is ignored and the request starts a trace of its own; it is never an error.
//!
//! ```
//! use tritium_backend_api::trace_context::TraceContext;
//!
//! let parent = TraceContext::parse("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01", Some("vendor=1"));
//! let parent = parent.expect("a valid traceparent");
//! assert!(parent.sampled());
//! assert_eq!(parent.tracestate(), Some("vendor=1"));
//! assert!(TraceContext::parse("00-0af7651916cd43dd8448eb211c80319c-0000000000000000-01", None).is_none());
//! ```

use std::fmt;

/// The header names, as HTTP/2 and gRPC metadata carry them (lowercase).
pub const TRACEPARENT: &str = "traceparent";
pub const TRACESTATE: &str = "tracestate";

/// The longest `tracestate` kept: 32 list members of at most 256 bytes each plus their commas
/// (the recommendation's own bound); a longer one is dropped, the `traceparent` still honoured.
pub const MAX_TRACESTATE_BYTES: usize = 32 * 257;

/// A remote span: the caller's trace id, the id of its span (our root span's parent), its flags,
/// and the vendor state passed along untouched.
#[derive(Clone, PartialEq, Eq)]
pub struct TraceContext {
    pub trace_id: [u8; 16],
    pub span_id: [u8; 8],
    pub flags: u8,
    tracestate: Option<Box<str>>,
}

impl TraceContext {
    /// A context of our own making (the worker plane's hop), with no vendor state.
    pub fn new(trace_id: [u8; 16], span_id: [u8; 8], sampled: bool) -> TraceContext {
        TraceContext { trace_id, span_id, flags: u8::from(sampled), tracestate: None }
    }

    /// Reads a `traceparent` (and its `tracestate`, if any); `None` when the `traceparent` is
    /// malformed. A future version (not `00`, not `ff`) is read by its first four fields, as the
    /// recommendation asks.
    pub fn parse(traceparent: &str, tracestate: Option<&str>) -> Option<TraceContext> {
        let value = traceparent.trim_matches(|c| c == ' ' || c == '\t').as_bytes();
        if value.len() < 55 {
            return None;
        }
        let version = hex_byte(&value[0..2])?;
        let future = match version {
            0x00 => false,
            0xff => return None,
            _ => true,
        };
        if value.len() > 55 && (!future || value[55] != b'-') {
            return None;
        }
        if value[2] != b'-' || value[35] != b'-' || value[52] != b'-' {
            return None;
        }
        let mut trace_id = [0u8; 16];
        for (i, byte) in trace_id.iter_mut().enumerate() {
            *byte = hex_byte(&value[3 + 2 * i..5 + 2 * i])?;
        }
        let mut span_id = [0u8; 8];
        for (i, byte) in span_id.iter_mut().enumerate() {
            *byte = hex_byte(&value[36 + 2 * i..38 + 2 * i])?;
        }
        let flags = hex_byte(&value[53..55])?;
        if trace_id == [0; 16] || span_id == [0; 8] {
            return None;
        }
        let tracestate = tracestate
            .map(|s| s.trim_matches(|c| c == ' ' || c == '\t'))
            .filter(|s| !s.is_empty() && s.len() <= MAX_TRACESTATE_BYTES && s.bytes().all(|b| (0x20..0x7f).contains(&b)))
            .map(Box::from);
        Some(TraceContext { trace_id, span_id, flags, tracestate })
    }

    /// From raw header values (HTTP headers or gRPC metadata, which are HTTP/2 headers): a
    /// `traceparent` that is missing, not UTF-8 or malformed gives `None`; a bad `tracestate` is
    /// dropped alone.
    pub fn from_headers(traceparent: Option<&[u8]>, tracestate: Option<&[u8]>) -> Option<TraceContext> {
        let traceparent = std::str::from_utf8(traceparent?).ok()?;
        TraceContext::parse(traceparent, tracestate.and_then(|s| std::str::from_utf8(s).ok()))
    }

    /// The caller asked for this trace to be recorded (flag `01`).
    pub fn sampled(&self) -> bool {
        self.flags & 1 == 1
    }

    pub fn tracestate(&self) -> Option<&str> {
        self.tracestate.as_deref()
    }

    /// Keeps `state` as this context's `tracestate` (already checked by whoever made it).
    pub fn with_tracestate(mut self, state: Option<&str>) -> TraceContext {
        self.tracestate = state.filter(|s| s.len() <= MAX_TRACESTATE_BYTES).map(Box::from);
        self
    }

    /// The `traceparent` header for this context (version `00`).
    pub fn traceparent(&self) -> String {
        format!("00-{}-{}-{:02x}", hex(&self.trace_id), hex(&self.span_id), self.flags)
    }

    /// The trace id as 32 lowercase hex digits, as OTLP viewers show it.
    pub fn trace_id_hex(&self) -> String {
        hex(&self.trace_id)
    }
}

impl fmt::Debug for TraceContext {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.traceparent())
    }
}

/// Lowercase hex of `bytes`.
pub fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        out.push(char::from(DIGITS[usize::from(b >> 4)]));
        out.push(char::from(DIGITS[usize::from(b & 0xf)]));
    }
    out
}

/// Two lowercase hex digits (the recommendation refuses uppercase).
fn hex_byte(pair: &[u8]) -> Option<u8> {
    fn digit(c: u8) -> Option<u8> {
        match c {
            b'0'..=b'9' => Some(c - b'0'),
            b'a'..=b'f' => Some(c - b'a' + 10),
            _ => None,
        }
    }
    Some(digit(pair[0])? << 4 | digit(pair[1])?)
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";

    #[test]
    fn parses_and_writes_back() {
        let ctx = TraceContext::parse(GOOD, None).expect("valid");
        assert_eq!(ctx.traceparent(), GOOD);
        assert_eq!(ctx.trace_id_hex(), "0af7651916cd43dd8448eb211c80319c");
        assert!(ctx.sampled());
        let unsampled = TraceContext::parse(&GOOD.replace("-01", "-00"), None).expect("valid");
        assert!(!unsampled.sampled());
    }

    #[test]
    fn malformed_headers_are_ignored() {
        for bad in [
            "",
            "garbage",
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331",
            "00-0AF7651916CD43DD8448EB211C80319C-b7ad6b7169203331-01",
            "00-00000000000000000000000000000000-b7ad6b7169203331-01",
            "00-0af7651916cd43dd8448eb211c80319c-0000000000000000-01",
            "ff-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01-extra",
            "00_0af7651916cd43dd8448eb211c80319c_b7ad6b7169203331_01",
            "0g-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b716920333é-01",
        ] {
            assert!(TraceContext::parse(bad, None).is_none(), "{bad:?} was accepted");
        }
    }

    #[test]
    fn header_bytes() {
        assert!(TraceContext::from_headers(Some(GOOD.as_bytes()), Some(b"\xff")).is_some_and(|c| c.tracestate().is_none()));
        assert!(TraceContext::from_headers(Some(b"\xff\xfe"), None).is_none());
        assert!(TraceContext::from_headers(None, Some(b"k=v")).is_none());
    }

    #[test]
    fn future_versions_are_read_by_their_first_fields() {
        let future = "cc-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01-what-comes-next";
        assert!(TraceContext::parse(future, None).is_some());
    }

    #[test]
    fn tracestate_is_bounded_and_printable() {
        let long = "a=".to_owned() + &"b".repeat(MAX_TRACESTATE_BYTES);
        assert_eq!(TraceContext::parse(GOOD, Some(&long)).expect("valid").tracestate(), None);
        assert_eq!(TraceContext::parse(GOOD, Some("k=\u{7}")).expect("valid").tracestate(), None);
        assert_eq!(TraceContext::parse(GOOD, Some(" k=v ")).expect("valid").tracestate(), Some("k=v"));
    }
}
