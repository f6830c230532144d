//! A finished trace as OpenTelemetry spans, in Triton 2.51's shape (recorded from the real
//! server: `tests/python/fixtures/triton_trace/opentelemetry.otlp.json`), and the sink that
//! queues them for export ([`super::otlp::OtlpExporter`]).
//!
//! A request is an `InferRequest` span (`SERVER`, the child of the caller's span when it sent a
//! `traceparent`) carrying the door's stamps as events; under it a span named after the model
//! with Triton's `triton.*` attributes, `REQUEST_START`, `QUEUE_START` and `REQUEST_END` as events
//! and the node's own attributes (router, GenAI) and named events (the first token); under that,
//! `compute` with the four `COMPUTE_*` events, and (Tritium's addition) `queue` from
//! `QUEUE_START` to `COMPUTE_START`. An ensemble step or a BLS call is a model span under its
//! parent's model span; the hop to a worker process a `CLIENT` span there, whose id the worker's
//! own `InferRequest` span names as its parent.

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
    let time = |ns: u64| UNIX_EPOCH + Duration::from_nanos(trace.unix_ns(ns));
    let finished = SystemTime::now();
    let event = |name: Cow<'static, str>, ns: u64, attributes: Vec<KeyValue>| {
        opentelemetry::trace::Event::new(name, time(ns), attributes, 0)
    };
    let mut out = Vec::with_capacity(trace.nodes.len() * 4);
    let mut push = |name: Cow<'static, str>,
                    id: [u8; 8],
                    parent: Option<[u8; 8]>,
                    kind,
                    range: (SystemTime, SystemTime),
                    attributes,
                    events: Vec<opentelemetry::trace::Event>,
                    remote: bool| {
        let mut span_events = SpanEvents::default();
        span_events.events = events;
        out.push(SpanData {
            span_context: SpanContext::new(trace_id, SpanId::from_bytes(id), TraceFlags::SAMPLED, false, state.clone()),
            parent_span_id: parent.map_or(SpanId::INVALID, SpanId::from_bytes),
            parent_span_is_remote: remote,
            span_kind: kind,
            name,
            start_time: range.0,
            end_time: range.1,
            attributes,
            dropped_attributes_count: 0,
            events: span_events,
            links: SpanLinks::default(),
            status: Status::Unset,
            instrumentation_scope: scope.clone(),
        });
    };
    for (index, node) in trace.nodes.iter().enumerate() {
        let stamps = |keep: &dyn Fn(TimestampKind) -> bool| -> Vec<(TimestampKind, u64)> {
            node.timestamps.iter().filter(|(k, _)| keep(*k)).copied().collect()
        };
        let range = |stamps: &[(TimestampKind, u64)]| match (stamps.iter().map(|s| s.1).min(), stamps.iter().map(|s| s.1).max()) {
            (Some(first), Some(last)) => (time(first), time(last)),
            _ => (finished, finished),
        };
        let kind_attribute = node.attributes.iter().find(|(k, _)| k == SPAN_KIND_ATTRIBUTE).map(|(_, v)| v);
        let parent_model = node.parent_id.and_then(|p| trace.nodes.iter().find(|n| n.id == p)).map(model_span_id);
        if matches!(kind_attribute, Some(AttrValue::Str(s)) if s == "client") {
            let all = stamps(&|_| true);
            push(
                "worker".into(),
                node.span_id,
                parent_model,
                SpanKind::Client,
                range(&all),
                attributes(&node.attributes),
                Vec::new(),
                false,
            );
            continue;
        }
        if index == 0 {
            let all = stamps(&|_| true);
            let door: Vec<_> =
                all.iter().filter(|(k, _)| k.is_door()).map(|(k, ns)| event(k.name().into(), *ns, Vec::new())).collect();
            let remote = trace.remote_parent.is_some();
            push(
                "InferRequest".into(),
                node.span_id,
                node.parent_span_id,
                SpanKind::Server,
                range(&all),
                Vec::new(),
                door,
                remote,
            );
        }
        let own = stamps(&|k| !k.is_door());
        let mut events: Vec<_> = own
            .iter()
            .filter(|(k, _)| matches!(k, TimestampKind::RequestStart | TimestampKind::QueueStart | TimestampKind::RequestEnd))
            .map(|(k, ns)| event(k.name().into(), *ns, Vec::new()))
            .collect();
        events.extend(node.events.iter().map(|e| event(e.name.clone(), e.ns, attributes(&e.attributes))));
        let model_id = model_span_id(node);
        let parent = if index == 0 { Some(node.span_id) } else { parent_model };
        let name: Cow<'static, str> = node.model_name.clone().into();
        push(name, model_id, parent, SpanKind::Server, range(&own), node_attributes(node), events, false);
        let stamp = |kind| node.timestamp(kind);
        if let (Some(q), Some(c)) = (stamp(TimestampKind::QueueStart), stamp(TimestampKind::ComputeStart)) {
            push(
                "queue".into(),
                derived(node.span_id, 1),
                Some(model_id),
                SpanKind::Internal,
                (time(q), time(c)),
                Vec::new(),
                Vec::new(),
                false,
            );
        }
        if let (Some(c), Some(e)) = (stamp(TimestampKind::ComputeStart), stamp(TimestampKind::ComputeEnd)) {
            let compute = [
                TimestampKind::ComputeStart,
                TimestampKind::ComputeInputEnd,
                TimestampKind::ComputeOutputStart,
                TimestampKind::ComputeEnd,
            ]
            .into_iter()
            .filter_map(|k| stamp(k).map(|t| event(k.name().into(), t, Vec::new())))
            .collect();
            push(
                "compute".into(),
                derived(node.span_id, 2),
                Some(model_id),
                SpanKind::Server,
                (time(c), time(e)),
                Vec::new(),
                compute,
                false,
            );
        }
    }
    out
}

/// The id of a node's model span: a request's own is under its `InferRequest` span (which has
/// the node's id, the one a hop's `traceparent` names); a step's or a call's is the node's id.
fn model_span_id(node: &TraceNode) -> [u8; 8] {
    if node.parent_id.is_none() { derived(node.span_id, 3) } else { node.span_id }
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
    use std::sync::Arc;
use parking_lot::Mutex;

    use tritium_backend_api::trace::{RequestTrace, TraceLevel};
    use tritium_backend_api::trace_context::TraceContext;

    use super::*;

    #[derive(Default)]
    struct Keep(Mutex<Vec<FinishedTrace>>);
    impl TraceSink for Keep {
        fn finished(&self, trace: FinishedTrace) {
            self.0.lock().push(trace);
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
        let traces = sink.0.lock();
        let spans = spans(&traces[0]);
        let names: Vec<&str> = spans.iter().map(|s| s.name.as_ref()).collect();
        assert_eq!(names, ["InferRequest", "ens", "queue", "compute", "step"]);
        let (request, model) = (&spans[0], &spans[1]);
        assert_eq!(request.span_context.trace_id().to_string(), "0af7651916cd43dd8448eb211c80319c");
        assert_eq!(request.parent_span_id.to_string(), "b7ad6b7169203331");
        assert!(request.parent_span_is_remote);
        assert_eq!(request.span_kind, SpanKind::Server);
        assert_eq!(model.parent_span_id, request.span_context.span_id());
        let events: Vec<&str> = model.events.iter().map(|e| e.name.as_ref()).collect();
        assert_eq!(events, ["REQUEST_START", "QUEUE_START", "REQUEST_END"]);
        assert!(model.start_time <= model.end_time);
        for child in &spans[2..] {
            assert_eq!(child.parent_span_id, model.span_context.span_id());
            assert_ne!(child.span_context.span_id(), model.span_context.span_id());
        }
        assert_eq!(spans[3].events.len(), 2, "COMPUTE_START and COMPUTE_END");
        assert!(spans[4].attributes.iter().any(|kv| kv.key.as_str() == "gen_ai.request.model"));
        assert!(spans[4].attributes.iter().any(|kv| kv.key.as_str() == "triton.model_name" && kv.value.as_str() == "step"));
    }
}
