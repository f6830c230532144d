//! Request tracing (Triton's trace API and OpenTelemetry). The trace core
//! (`tritium_backend_api::trace`) builds each sampled request's tree of timestamps; here:
//! the sampler that TraceSetting and `--trace-config` drive ([`tracer`]), Triton's trace file
//! ([`triton_file`], rendered by [`triton_json`]) and OTLP export ([`otlp_spans`], [`otlp`]),
//! and the doors' helpers that read a caller's W3C context and start a request's trace.

pub mod door;
pub mod generation;
pub mod hop;
pub mod otlp;
pub mod otlp_spans;
pub mod settings;
pub mod tracer;
pub mod triton_file;
pub mod triton_json;

use tritium_backend_api::trace_context::{TRACEPARENT, TRACESTATE, TraceContext};

pub use tracer::Tracer;

/// A caller's W3C context from HTTP headers or gRPC metadata (which are HTTP/2 headers); a
/// missing or malformed `traceparent` gives `None`, and the request starts a trace of its own.
pub fn caller(headers: &http::HeaderMap) -> Option<TraceContext> {
    let header = |name| headers.get(name).map(http::HeaderValue::as_bytes);
    TraceContext::from_headers(header(TRACEPARENT), header(TRACESTATE))
}

/// The tracing counters of the metrics port (export and file writing).
pub fn render_metrics() -> String {
    let mut text = otlp::render_metrics();
    text.push_str(&triton_file::render_metrics());
    text
}
