//! A finished trace as OpenTelemetry spans, and the sink that queues them for export
//! ([`super::otlp::OtlpExporter`]).
//!
//! Each node of the trace (the request, each ensemble step and BLS call) is one `InferRequest`
//! span, as Triton names it, a child of its parent node's span (the root's parent is the caller's
//! span when it sent a `traceparent`). Its Triton stamps are its events, named as in the trace
//! file, and its start and end are its first and last stamps. Under it, `queue` spans the wait
//! (`QUEUE_START` to `COMPUTE_START`) and `compute` the execution (`COMPUTE_START` to
//! `COMPUTE_END`, with `COMPUTE_INPUT_END` and `COMPUTE_OUTPUT_START` as events). The node's
//! attributes (router, worker, GenAI) and named events (the first token) ride on its span.

use std::borrow::Cow;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use opentelemetry::trace::{SpanContext, SpanId, SpanKind, Status, TraceFlags, TraceId, TraceState};
use opentelemetry::{InstrumentationScope, KeyValue, Value};
use opentelemetry_sdk::trace::{SpanData, SpanEvents, SpanLinks};
use tritium_backend_api::trace::{AttrValue, FinishedTrace, TimestampKind, TraceNode, TraceSink};

use super::otlp::OtlpExporter;

/// The attribute a node's creator sets to make its span of another kind than `INTERNAL`
/// (`"client"` for the hop to a worker process, `"server"` for a worker's own root).
pub const SPAN_KIND_ATTRIBUTE: &str = "tritium.span.kind";

/// Queues each finished trace's spans on the exporter; never blocks.
#[derive(Debug, Clone)]
pub struct OtlpSink {
    exporter: OtlpExporter,
}

impl OtlpSink {
    pub fn new(exporter: OtlpExporter) -> OtlpSink {
        OtlpSink { exporter }
    }
}

impl TraceSink for OtlpSink {
    fn finished(&self, trace: FinishedTrace) {
        self.exporter.push(spans(&trace));
    }
}

/// The spans of `trace`, parents before children.
pub fn spans(trace: &FinishedTrace) -> Vec<SpanData> {
    let scope = InstrumentationScope::builder("tritium").with_version(env!("CARGO_PKG_VERSION")).build();
    let trace_id = TraceId::from_bytes(trace.trace_id);
    let state =
        trace.remote_parent.as_ref().and_then(|p| p.tracestate()).and_then(|s| s.parse::<TraceState>().ok()).unwrap_or_default();
    let context =
        |span_id: [u8; 8]| SpanContext::new(trace_id, SpanId::from_bytes(span_id), TraceFlags::SAMPLED, false, state.clone());
    let time = |ns: u64| UNIX_EPOCH + Duration::from_nanos(trace.unix_ns(ns));
    let finished = SystemTime::now();
    let mut out = Vec::with_capacity(trace.nodes.len() * 3);
    for (index, node) in trace.nodes.iter().enumerate() {
        let first = node.timestamps.iter().map(|(_, ns)| *ns).min();
        let last = node.timestamps.iter().map(|(_, ns)| *ns).max();
        let (start, end) = match (first, last) {
            (Some(first), Some(last)) => (time(first), time(last)),
            _ => (finished, finished),
        };
        let mut events = SpanEvents::default();
        events.events = node
            .timestamps
            .iter()
            .map(|(kind, ns)| opentelemetry::trace::Event::new(kind.name(), time(*ns), Vec::new(), 0))
            .chain(
                node.events
                    .iter()
                    .map(|e| opentelemetry::trace::Event::new(e.name.clone(), time(e.ns), attributes(&e.attributes), 0)),
            )
            .collect();
        let kind = match node.attributes.iter().find(|(k, _)| k == SPAN_KIND_ATTRIBUTE).map(|(_, v)| v) {
            Some(AttrValue::Str(s)) if s == "client" => SpanKind::Client,
            Some(AttrValue::Str(s)) if s == "server" => SpanKind::Server,
            _ if index == 0 => SpanKind::Server,
            _ => SpanKind::Internal,
        };
        let parent = node.parent_span_id.map_or(SpanId::INVALID, SpanId::from_bytes);
        let remote = index == 0 && trace.remote_parent.is_some();
        let span = |name: &'static str, span_id: [u8; 8], parent: SpanId, kind: SpanKind, start, end, attrs, events| SpanData {
            span_context: context(span_id),
            parent_span_id: parent,
            parent_span_is_remote: remote && name == "InferRequest",
            span_kind: kind,
            name: Cow::Borrowed(name),
            start_time: start,
            end_time: end,
            attributes: attrs,
            dropped_attributes_count: 0,
            events,
            links: SpanLinks::default(),
            status: Status::Unset,
            instrumentation_scope: scope.clone(),
        };
        out.push(span("InferRequest", node.span_id, parent, kind, start, end, node_attributes(node), events));
        let stamp = |kind| node.timestamp(kind).map(time);
        let own = SpanId::from_bytes(node.span_id);
        if let (Some(q), Some(c)) = (stamp(TimestampKind::QueueStart), stamp(TimestampKind::ComputeStart)) {
            out.push(span("queue", derived(node.span_id, 1), own, SpanKind::Internal, q, c, Vec::new(), SpanEvents::default()));
        }
        if let (Some(c), Some(e)) = (stamp(TimestampKind::ComputeStart), stamp(TimestampKind::ComputeEnd)) {
            let mut events = SpanEvents::default();
            events.events = [TimestampKind::ComputeInputEnd, TimestampKind::ComputeOutputStart]
                .into_iter()
                .filter_map(|k| stamp(k).map(|t| opentelemetry::trace::Event::new(k.name(), t, Vec::new(), 0)))
                .collect();
            out.push(span("compute", derived(node.span_id, 2), own, SpanKind::Internal, c, e, Vec::new(), events));
        }
    }
    out
}

/// Triton's span attributes, then the node's own (its span-kind marker left out).
fn node_attributes(node: &TraceNode) -> Vec<KeyValue> {
    let mut out = vec![
        KeyValue::new("triton.model_name", node.model_name.clone()),
        KeyValue::new("triton.model_version", node.model_version.unwrap_or(-1)),
        KeyValue::new("triton.trace_id", i64::try_from(node.id).unwrap_or(i64::MAX)),
        KeyValue::new("triton.trace_parent_id", node.parent_id.map_or(0, |p| i64::try_from(p).unwrap_or(i64::MAX))),
    ];
    if !node.request_id.is_empty() {
        out.push(KeyValue::new("triton.request_id", node.request_id.clone()));
    }
    out.extend(attributes(&node.attributes).into_iter().filter(|kv| kv.key.as_str() != SPAN_KIND_ATTRIBUTE));
    out
}

fn attributes(attributes: &[(Cow<'static, str>, AttrValue)]) -> Vec<KeyValue> {
    attributes
        .iter()
        .map(|(k, v)| {
            let value = match v {
                AttrValue::Str(s) => Value::from(s.clone()),
                AttrValue::I64(i) => Value::I64(*i),
                AttrValue::F64(f) => Value::F64(*f),
                AttrValue::Bool(b) => Value::Bool(*b),
            };
            KeyValue::new(k.clone(), value)
        })
        .collect()
}

/// A span id for a node's `queue` (1) or `compute` (2) span: the node's id mixed with the salt
/// (SplitMix64's finalizer), never zero.
fn derived(span_id: [u8; 8], salt: u64) -> [u8; 8] {
    let mut z = u64::from_be_bytes(span_id) ^ salt.wrapping_mul(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^= z >> 31;
    if z == 0 { 1u64.to_be_bytes() } else { z.to_be_bytes() }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use tritium_backend_api::trace::{RequestTrace, TraceLevel};
    use tritium_backend_api::trace_context::TraceContext;

    use super::*;

    #[derive(Default)]
    struct Keep(Mutex<Vec<FinishedTrace>>);
    impl TraceSink for Keep {
        fn finished(&self, trace: FinishedTrace) {
            self.0.lock().unwrap_or_else(|p| p.into_inner()).push(trace);
        }
    }

    #[test]
    fn nodes_become_spans_under_the_callers_span() {
        let sink = Arc::new(Keep::default());
        let caller = TraceContext::parse("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01", None);
        let root = RequestTrace::root(TraceLevel::TIMESTAMPS, "ens", Some(1), "r1", caller, sink.clone());
        for kind in [TimestampKind::RequestStart, TimestampKind::QueueStart, TimestampKind::ComputeStart] {
            root.stamp(kind);
        }
        let step = root.child("step", Some(2));
        step.set_attribute("gen_ai.request.model", "step");
        step.stamp(TimestampKind::RequestStart);
        drop(step);
        for kind in [TimestampKind::ComputeEnd, TimestampKind::RequestEnd] {
            root.stamp(kind);
        }
        drop(root);
        let traces = sink.0.lock().unwrap_or_else(|p| p.into_inner());
        let spans = spans(&traces[0]);
        let names: Vec<&str> = spans.iter().map(|s| s.name.as_ref()).collect();
        assert_eq!(names, ["InferRequest", "queue", "compute", "InferRequest"]);
        let root = &spans[0];
        assert_eq!(root.span_context.trace_id().to_string(), "0af7651916cd43dd8448eb211c80319c");
        assert_eq!(root.parent_span_id.to_string(), "b7ad6b7169203331");
        assert!(root.parent_span_is_remote);
        assert_eq!(root.span_kind, SpanKind::Server);
        assert_eq!(root.events.len(), 5);
        assert!(root.start_time <= root.end_time);
        for child in &spans[1..] {
            assert_eq!(child.parent_span_id, root.span_context.span_id());
            assert_ne!(child.span_context.span_id(), root.span_context.span_id());
        }
        assert!(spans[3].attributes.iter().any(|kv| kv.key.as_str() == "gen_ai.request.model"));
        assert!(spans[3].attributes.iter().any(|kv| kv.key.as_str() == "triton.model_name" && kv.value.as_str() == "step"));
    }
}
