//! The router's counters and gauges on `/metrics`.

use std::sync::atomic::Ordering;

use super::Router;
use crate::sync::lock;

impl Router {
    /// Prometheus text for the router's counters.
    pub fn render_metrics(&self) -> String {
        let mut out = String::new();
        tritium_openai_bridge::metrics::encode_families(self.metric_families(), &mut out);
        out
    }

    /// The router's counters and gauges, read now.
    fn metric_families(&self) -> Vec<prometheus::proto::MetricFamily> {
        use prometheus::core::Collector;
        let c = &self.counters;
        let mut families = Vec::new();
        let f = &mut families;
        counter(f, "tritium_router_requests", "Requests routed to a worker.", c.routed.load(Ordering::Relaxed));
        counter(
            f,
            "tritium_router_retries",
            "Requests sent again to another worker after theirs could not be reached.",
            c.retried.load(Ordering::Relaxed),
        );
        counter(
            f,
            "tritium_router_migrations",
            "Language-model streams continued on another worker.",
            c.migrated.load(Ordering::Relaxed),
        );
        counter(f, "tritium_router_prompt_blocks", "KV blocks of routed prompts.", c.prompt_blocks.load(Ordering::Relaxed));
        counter(
            f,
            "tritium_router_kv_snapshots",
            "KV-index snapshots written to the shared store.",
            c.snapshots.load(Ordering::Relaxed),
        );
        counter(
            f,
            "tritium_router_rejected_busy",
            "Requests refused because every worker of their model was over its busy threshold.",
            c.rejected_busy.load(Ordering::Relaxed),
        );
        counter(
            f,
            "tritium_router_prompt_blocks_cached",
            "KV blocks of routed prompts the chosen worker already held, as its KV events reported.",
            c.prompt_blocks_cached.load(Ordering::Relaxed),
        );
        let indexed = lock(&self.kv).block_count();
        gauge(
            f,
            "tritium_router_kv_blocks_indexed",
            "KV blocks the workers' KV events say they hold (each counted once).",
            indexed,
        );
        let (waiting, queued) = self.queue_counts();
        gauge(f, "tritium_router_queue_waiting", "Requests waiting in the router's queue now.", waiting);
        counter(f, "tritium_router_queued", "Requests that waited in the router's queue.", queued);
        let predicted = lock(&self.predicted).len();
        let help = "KV blocks the router predicts workers hold from its own routing (--no-router-kv-events), per worker.";
        gauge(f, "tritium_router_kv_blocks_predicted", help, predicted);
        if let Ok(workers) = prometheus::IntGaugeVec::new(
            prometheus::Opts::new("tritium_router_workers", "Workers serving each model."),
            &["model"],
        ) {
            for (model, route) in self.table.load().iter() {
                workers.with_label_values(&[model.as_str()]).set(i64::try_from(route.len()).unwrap_or(i64::MAX));
            }
            families.extend(workers.collect());
        }
        families
    }
}

/// A counter `{name}_total` at `value`.
fn counter(families: &mut Vec<prometheus::proto::MetricFamily>, name: &str, help: &str, value: u64) {
    use prometheus::core::Collector;
    if let Ok(counter) = prometheus::IntCounter::new(format!("{name}_total"), help) {
        counter.inc_by(value);
        families.extend(counter.collect());
    }
}

fn gauge(families: &mut Vec<prometheus::proto::MetricFamily>, name: &str, help: &str, value: usize) {
    use prometheus::core::Collector;
    if let Ok(gauge) = prometheus::IntGauge::new(name, help) {
        gauge.set(i64::try_from(value).unwrap_or(i64::MAX));
        families.extend(gauge.collect());
    }
}
