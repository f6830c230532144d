//! Request tracing's exporters (issue 42). The trace core (`tritium_backend_api::trace`) builds
//! each sampled request's tree of timestamps; a finished tree goes to the sink the sampler chose.
//! Here: the OpenTelemetry sink, which turns a tree into OTLP spans ([`otlp_spans`]) and sends them
//! in batches from a bounded queue ([`otlp`]). Not yet wired to `--trace-config`: the sampler and
//! the Triton trace-file writer come next.

pub mod otlp;
pub mod otlp_spans;
