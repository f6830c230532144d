//! Triton's metrics on the metrics port (8002, `GET /metrics`), in the Prometheus text format with
//! Triton's names and labels (`model`, `version`): per model version, the request, inference and
//! execution counters and the cumulative durations of each phase, read at scrape time from the
//! same statistics ModelStatistics reports (so the two always agree), the pending requests, the
//! failures by reason; the host's CPU utilization and memory, sampled every
//! `--metrics-interval-ms`; the language-model and router metrics of the HTTP port; and the
//! custom metrics models declare (`tritium_backend_api::custom_metrics`).

mod cpu;
mod lifecycle;
pub mod registry;
mod triton;

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::get;
use tokio_util::sync::CancellationToken;
use tritium_worker::ModelRepository;

pub use cpu::CpuSampler;

use crate::llm::LlmFrontend;
use registry::{ScrapeCollector, register};

/// The content type of the metrics port's answer: Triton's (the Prometheus text format 0.0.4).
pub const TEXT_FORMAT: &str = "text/plain; charset=utf-8";

/// Triton's default summary quantiles.
pub const DEFAULT_QUANTILES: [f64; 5] = [0.5, 0.9, 0.95, 0.99, 0.999];

/// What `--metrics-interval-ms` and `--metrics-config` set.
#[derive(Debug, Clone, PartialEq)]
pub struct MetricsConfig {
    /// How often the CPU and memory gauges are sampled.
    pub interval: Duration,
    /// Latency summaries per model version (`summary_latencies=true`).
    pub summary_latencies: bool,
    pub summary_quantiles: Vec<f64>,
    /// The first-response histogram of decoupled models (`histogram_latencies=true`).
    pub histogram_latencies: bool,
}

impl MetricsConfig {
    pub fn new(interval_ms: u64) -> MetricsConfig {
        MetricsConfig {
            interval: Duration::from_millis(interval_ms.max(1)),
            summary_latencies: false,
            summary_quantiles: DEFAULT_QUANTILES.to_vec(),
            histogram_latencies: false,
        }
    }
}

impl Default for MetricsConfig {
    fn default() -> Self {
        MetricsConfig::new(2000)
    }
}

/// What a scrape reads: the metrics port's registry, and the families models declared.
#[derive(Clone)]
pub struct MetricsState {
    registry: Arc<prometheus::Registry>,
}

impl MetricsState {
    /// Registers every part of the server on the metrics port; also turns on the models' latency
    /// recording when `config` asks for summaries or histograms.
    pub fn new(
        repository: Arc<ModelRepository>,
        llm: Arc<LlmFrontend>,
        tracer: &tritium_trace::Tracer,
        cpu: Arc<CpuSampler>,
        config: &MetricsConfig,
    ) -> MetricsState {
        let quantiles: Option<Arc<[f64]>> = config.summary_latencies.then(|| Arc::from(config.summary_quantiles.as_slice()));
        if quantiles.is_some() {
            tritium_worker::stats::latency::enable();
        }
        if config.histogram_latencies {
            tritium_backend_api::first_response::enable();
        }
        let histograms = config.histogram_latencies;
        let registry = prometheus::Registry::new();
        let help = "Inference requests that succeeded";
        register(
            &registry,
            ScrapeCollector::new("nv_inference_request_success", help, move || {
                let mut families = triton::model_families(&repository);
                if histograms {
                    families.extend(triton::histogram_families(&repository));
                }
                if let Some(quantiles) = &quantiles {
                    families.extend(triton::summary_families(&repository, quantiles));
                }
                families.extend(lifecycle::families(&repository));
                families
            }),
        );
        register(&registry, ScrapeCollector::new("nv_cpu_utilization", "the host's CPU", move || cpu.families()));
        registry::register_llm(&registry, &llm);
        register(&registry, tracer.counters().clone());
        MetricsState { registry: Arc::new(registry) }
    }

    /// Adds a collector of another part of the server (the API keys' counter).
    pub fn register(&self, collector: impl prometheus::core::Collector + 'static) {
        register(&self.registry, collector);
    }

    /// Every metric, as the text the port serves: the registry's families, then those models
    /// declared (Triton's own text, in the format of Prometheus' C++ client).
    pub fn render(&self) -> String {
        let mut text = registry::encode(&self.registry);
        text.push_str(&tritium_backend_api::custom_metrics::render());
        text
    }
}

/// `GET /metrics` on the metrics port.
pub fn router(state: MetricsState) -> Router {
    Router::new().route("/metrics", get(scrape)).with_state(state)
}

async fn scrape(State(state): State<MetricsState>) -> impl IntoResponse {
    let text = tokio::task::spawn_blocking(move || state.render()).await.unwrap_or_default();
    ([(header::CONTENT_TYPE, TEXT_FORMAT)], text)
}

/// Samples the CPU and memory gauges every `interval` until `stop`.
pub fn spawn_sampler(cpu: Arc<CpuSampler>, interval: Duration, stop: CancellationToken) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut ticks = tokio::time::interval(interval);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = ticks.tick() => cpu.sample(),
                () = stop.cancelled() => return,
            }
        }
    })
}
