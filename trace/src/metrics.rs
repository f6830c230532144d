//! The tracer's counters on the metrics port. Each [`Tracer`](crate::Tracer) has its own, so two
//! servers in one process (the Python package can run several) count apart; the server registers
//! them in its metrics registry as one collector.

use prometheus::core::{Collector, Desc};
use prometheus::proto::MetricFamily;
use prometheus::{IntCounter, IntCounterVec, Opts};

/// Spans exported or dropped on the way to an OTLP collector, and traces written to or dropped
/// before Triton trace files.
#[derive(Debug, Clone)]
pub struct TraceCounters {
    spans_exported: IntCounter,
    spans_dropped: IntCounterVec,
    pub(crate) dropped_queue_full: IntCounter,
    pub(crate) dropped_export_failed: IntCounter,
    pub(crate) file_traces: IntCounter,
    pub(crate) file_dropped: IntCounter,
}

fn counter(name: &str, help: &str) -> IntCounter {
    IntCounter::new(name, help).unwrap_or_else(|e| unreachable!("a valid metric name: {e}"))
}

impl TraceCounters {
    pub fn new() -> TraceCounters {
        let spans_dropped = IntCounterVec::new(
            Opts::new(
                "tritium_trace_spans_dropped_total",
                "Spans of sampled requests never exported: the export queue was full, or the collector refused or did not answer.",
            ),
            &["reason"],
        )
        .unwrap_or_else(|e| unreachable!("a valid metric name: {e}"));
        TraceCounters {
            spans_exported: counter("tritium_trace_spans_exported_total", "Spans an OTLP collector accepted."),
            dropped_queue_full: spans_dropped.with_label_values(&["queue_full"]),
            dropped_export_failed: spans_dropped.with_label_values(&["export_failed"]),
            spans_dropped,
            file_traces: counter("tritium_trace_file_traces_total", "Traces written to Triton trace files."),
            file_dropped: counter(
                "tritium_trace_dropped_total",
                "Sampled traces dropped before their trace file was written: the writer's queue or --trace-file-buffer-bytes was full.",
            ),
        }
    }

    pub(crate) fn exported(&self, spans: u64) {
        self.spans_exported.inc_by(spans);
    }
}

impl Default for TraceCounters {
    fn default() -> TraceCounters {
        TraceCounters::new()
    }
}

impl Collector for TraceCounters {
    fn desc(&self) -> Vec<&Desc> {
        let mut descs = self.spans_exported.desc();
        descs.extend(self.spans_dropped.desc());
        descs.extend(self.file_traces.desc());
        descs.extend(self.file_dropped.desc());
        descs
    }

    fn collect(&self) -> Vec<MetricFamily> {
        let mut families = self.spans_exported.collect();
        families.extend(self.spans_dropped.collect());
        families.extend(self.file_traces.collect());
        families.extend(self.file_dropped.collect());
        families
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn two_tracers_count_apart() {
        let (a, b) = (TraceCounters::new(), TraceCounters::new());
        a.exported(3);
        a.file_dropped.inc();
        let value = |counters: &TraceCounters, name: &str| {
            counters.collect().into_iter().find(|f| f.name() == name).map(|f| f.get_metric()[0].get_counter().get_value())
        };
        assert_eq!(value(&a, "tritium_trace_spans_exported_total"), Some(3.0));
        assert_eq!(value(&b, "tritium_trace_spans_exported_total"), Some(0.0));
        assert_eq!(value(&a, "tritium_trace_dropped_total"), Some(1.0));
        assert_eq!(value(&b, "tritium_trace_dropped_total"), Some(0.0));
        let reasons = a.collect().into_iter().find(|f| f.name() == "tritium_trace_spans_dropped_total").map(|f| f.get_metric().len());
        assert_eq!(reasons, Some(2), "both reasons are shown, at zero");
    }
}
