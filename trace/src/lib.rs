//! Request tracing (Triton's trace API and OpenTelemetry). The trace core
//! (`tritium_backend_api::trace`) builds each sampled request's tree of timestamps; this crate
//! holds the rest: `--trace-config` ([`config`]), the sampler that TraceSetting drives
//! ([`tracer`]), Triton's trace file ([`triton_file`], rendered by [`triton_json`]), OTLP export
//! ([`otlp_spans`], [`otlp`]), and the stamps the layers add: a door's receive and send
//! ([`door`]), the hop to a worker process ([`hop`]) and a worker's own generation
//! ([`generation`]).
//!
//! It sits below the server and the cluster and above the seam: it knows requests
//! (`tritium_backend_api`) but no worker, router or door. A door samples a request and stamps it:
//!
//! ```
//! use tritium_trace::{Tracer, config::TraceConfig};
//!
//! let tracer = Tracer::new(TraceConfig::default());
//! // Off by default (Triton's `trace_level` OFF): nothing is sampled.
//! assert!(tracer.sample("simple", "request-1", None).is_none());
//! ```

pub mod config;
pub mod door;
pub mod error;
pub mod generation;
pub mod hop;
pub mod metrics;
pub mod otlp;
pub mod otlp_spans;
pub mod settings;
pub mod tracer;
pub mod triton_file;
pub mod triton_json;

use tritium_backend_api::trace_context::{TRACEPARENT, TRACESTATE, TraceContext};

pub use error::TraceError;
pub use tracer::Tracer;

/// A caller's W3C context from HTTP headers or gRPC metadata (which are HTTP/2 headers); a
/// missing or malformed `traceparent` gives `None`, and the request starts a trace of its own.
pub fn caller(headers: &http::HeaderMap) -> Option<TraceContext> {
    let header = |name| headers.get(name).map(http::HeaderValue::as_bytes);
    TraceContext::from_headers(header(TRACEPARENT), header(TRACESTATE))
}
