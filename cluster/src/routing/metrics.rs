//! The router's counters and gauges on `/metrics`, read at each scrape: [`RouterMetrics`] is the
//! collector a server registers in its metrics registry.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use prometheus::core::{Collector, Desc};
use prometheus::proto::MetricFamily;

use super::Router;

/// The router's metrics as a collector (its families are built at each scrape, from the router's
/// counters, queue, indexes and route table).
pub struct RouterMetrics {
    router: Arc<Router>,
    desc: Desc,
}

impl RouterMetrics {
    pub fn new(router: Arc<Router>) -> RouterMetrics {
        let desc = Desc::new("tritium_router_requests_total".into(), "Requests routed to a worker.".into(), vec![], Default::default())
            .unwrap_or_else(|e| unreachable!("a valid metric name: {e}"));
        RouterMetrics { router, desc }
    }
}

impl Collector for RouterMetrics {
    fn desc(&self) -> Vec<&Desc> {
        vec![&self.desc]
    }

    fn collect(&self) -> Vec<MetricFamily> {
        self.router.metric_families()
    }
}

impl Router {
    /// The router's counters and gauges, read now.
    pub fn metric_families(&self) -> Vec<prometheus::proto::MetricFamily> {
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
        if let Some(sessions) = &self.sessions {
            let help = "Requests of a session bound to a worker (--router-session-affinity-ttl-secs) that went there.";
            counter(f, "tritium_router_session_affinity_hits", help, sessions.hits.load(Ordering::Relaxed));
            let help = "Requests that started a session (new, or idle past its TTL) and bound it to their worker.";
            counter(f, "tritium_router_session_affinity_misses", help, sessions.misses.load(Ordering::Relaxed));
            gauge(f, "tritium_router_session_affinity_sessions", "Sessions the router holds now.", sessions.len());
        }
        let indexed = self.kv.lock().block_count();
        gauge(
            f,
            "tritium_router_kv_blocks_indexed",
            "KV blocks the workers' KV events say they hold (each counted once).",
            indexed,
        );
        let (waiting, queued) = self.queue_counts();
        gauge(f, "tritium_router_queue_waiting", "Requests waiting in the router's queue now.", waiting);
        counter(f, "tritium_router_queued", "Requests that waited in the router's queue.", queued);
        let predicted = self.predicted.lock().len();
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
