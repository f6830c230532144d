//! The metrics port's one registry: a `prometheus::Registry` per server, each part of the server
//! registered as a collector that reads its own state at scrape time (Triton's model families,
//! the host's CPU and memory, the language-model doors and engines, the router, the tracer). No
//! counter is process-wide, so two servers in one process keep separate counts.

use std::sync::Arc;

use prometheus::core::{Collector, Desc};
use prometheus::proto::MetricFamily;
use prometheus::{Registry, TextEncoder};

/// A collector whose families are made at each scrape by `collect`, named for the registry by
/// one descriptor (the registry only needs it to tell collectors apart).
pub struct ScrapeCollector<F> {
    desc: Desc,
    collect: F,
}

impl<F: Fn() -> Vec<MetricFamily> + Send + Sync> ScrapeCollector<F> {
    /// `name` is one family the collector yields, `help` its help.
    pub fn new(name: &str, help: &str, collect: F) -> ScrapeCollector<F> {
        let desc = Desc::new(name.to_string(), help.to_string(), Vec::new(), Default::default())
            .unwrap_or_else(|e| unreachable!("a valid metric name: {e}"));
        ScrapeCollector { desc, collect }
    }
}

impl<F: Fn() -> Vec<MetricFamily> + Send + Sync> Collector for ScrapeCollector<F> {
    fn desc(&self) -> Vec<&Desc> {
        vec![&self.desc]
    }

    fn collect(&self) -> Vec<MetricFamily> {
        (self.collect)()
    }
}

/// Registers `collector`; a second collector under the same name is a bug of ours, logged.
pub fn register(registry: &Registry, collector: impl Collector + 'static) {
    if let Err(e) = registry.register(Box::new(collector)) {
        tracing::error!("registering a metrics collector failed: {e}");
    }
}

/// Every family of `registry`, in the Prometheus text format 0.0.4.
pub fn encode(registry: &Registry) -> String {
    let mut text = String::new();
    if let Err(e) = TextEncoder::new().encode_utf8(&registry.gather(), &mut text) {
        tracing::warn!("encoding the metrics failed: {e}");
    }
    text
}

/// Registers the language-model doors' and engines' families and the router's: what the HTTP
/// port's `/metrics` serves, and part of the metrics port's registry.
pub fn register_llm(registry: &Registry, llm: &Arc<crate::llm::LlmFrontend>) {
    let frontend = Arc::clone(llm);
    let help = "Language model requests received";
    register(registry, ScrapeCollector::new("tritium_llm_requests_total", help, move || frontend.metric_families()));
    register(registry, tritium_cluster::routing::RouterMetrics::new(Arc::clone(llm.router())));
}

/// The HTTP port's registry: [`register_llm`]'s collectors alone.
pub fn llm_registry(llm: &Arc<crate::llm::LlmFrontend>) -> Registry {
    let registry = Registry::new();
    register_llm(&registry, llm);
    registry
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn collectors_are_read_at_each_scrape_and_empty_families_are_left_out() {
        let registry = Registry::new();
        let counter = prometheus::IntCounter::new("tritium_test_total", "a test counter").expect("a valid name");
        register(&registry, counter.clone());
        register(
            &registry,
            ScrapeCollector::new("tritium_test_empty", "nothing yet", || {
                let empty = prometheus::IntCounterVec::new(prometheus::Opts::new("tritium_test_empty", "nothing yet"), &["a"])
                    .expect("a valid name");
                empty.collect()
            }),
        );
        counter.inc_by(2);
        let text = encode(&registry);
        assert!(text.contains("tritium_test_total 2"), "{text}");
        assert!(!text.contains("tritium_test_empty"), "{text}");
        counter.inc();
        assert!(encode(&registry).contains("tritium_test_total 3"));
    }
}
