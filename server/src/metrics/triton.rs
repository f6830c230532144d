//! The per-model families with Triton's names, built from each version's statistics at scrape
//! time. Counters of durations are in microseconds, as Triton's are.

use prometheus::proto::{Bucket, Counter, Gauge, Histogram, LabelPair, Metric, MetricFamily, MetricType, Quantile, Summary};
use tritium_backend_api::first_response::BUCKETS_MS;
use tritium_worker::{ModelRepository, ModelVersion};

fn label(name: &str, value: &str) -> LabelPair {
    let mut pair = LabelPair::default();
    pair.set_name(name.to_string());
    pair.set_value(value.to_string());
    pair
}

pub(super) fn family(name: &str, help: &str, kind: MetricType, metrics: Vec<Metric>) -> MetricFamily {
    let mut family = MetricFamily::default();
    family.set_name(name.to_string());
    family.set_help(help.to_string());
    family.set_field_type(kind);
    family.set_metric(metrics);
    family
}

fn counter(labels: Vec<LabelPair>, value: f64) -> Metric {
    let mut counter = Counter::default();
    counter.set_value(value);
    let mut metric = Metric::from_label(labels);
    metric.set_counter(counter);
    metric
}

pub(super) fn gauge(labels: Vec<LabelPair>, value: f64) -> Metric {
    let mut gauge = Gauge::default();
    gauge.set_value(value);
    let mut metric = Metric::from_label(labels);
    metric.set_gauge(gauge);
    metric
}

/// One family's name, help and how to read its value from a version.
struct CounterSpec {
    name: &'static str,
    help: &'static str,
    value: fn(&tritium_worker::StatsSnapshot) -> f64,
}

fn micros(ns: u64) -> f64 {
    (ns / 1000) as f64
}

const COUNTERS: &[CounterSpec] = &[
    CounterSpec {
        name: "nv_inference_request_success",
        help: "Inference requests that succeeded, whatever their batch size",
        value: |s| s.success.0 as f64,
    },
    CounterSpec {
        name: "nv_inference_count",
        help: "Inferences performed (a batch of n requests counts n)",
        value: |s| s.inference_count as f64,
    },
    CounterSpec {
        name: "nv_inference_exec_count",
        help: "Model executions performed (a batch counts once)",
        value: |s| s.execution_count as f64,
    },
    CounterSpec {
        name: "nv_inference_request_duration_us",
        help: "Cumulative time successful requests took, end to end, in microseconds",
        value: |s| micros(s.success.1),
    },
    CounterSpec {
        name: "nv_inference_queue_duration_us",
        help: "Cumulative time successful requests waited in the queue, in microseconds",
        value: |s| micros(s.queue.1),
    },
    CounterSpec {
        name: "nv_inference_compute_input_duration_us",
        help: "Cumulative time spent preparing the inputs of successful requests, in microseconds",
        value: |s| micros(s.compute_input.1),
    },
    CounterSpec {
        name: "nv_inference_compute_infer_duration_us",
        help: "Cumulative time the model ran for successful requests, in microseconds",
        value: |s| micros(s.compute_infer.1),
    },
    CounterSpec {
        name: "nv_inference_compute_output_duration_us",
        help: "Cumulative time spent producing the outputs of successful requests, in microseconds",
        value: |s| micros(s.compute_output.1),
    },
];

/// Every served model version, ordered by model name then version.
fn versions(repository: &ModelRepository) -> Vec<std::sync::Arc<ModelVersion>> {
    let mut models = repository.served_models();
    models.sort_by(|a, b| a.name.cmp(&b.name));
    models.iter().flat_map(|m| m.versions.values().cloned().collect::<Vec<_>>()).collect()
}

/// A version's labels: `model`, `version`, `extra`, and one `_<key>` per `metric_tags` entry of
/// its config (as Triton labels them), sorted by name as Triton prints them.
fn version_labels(version: &ModelVersion, extra: &[(&str, &str)]) -> Vec<LabelPair> {
    let number = version.version.to_string();
    let mut labels = vec![label("model", &version.name), label("version", &number)];
    labels.extend(extra.iter().map(|(name, value)| label(name, value)));
    labels.extend(version.config.metric_tags.iter().map(|(key, value)| label(&format!("_{key}"), value)));
    labels.sort_by(|a, b| a.name().cmp(b.name()));
    labels
}

/// The per-model families.
pub fn model_families(repository: &ModelRepository) -> Vec<MetricFamily> {
    let versions = versions(repository);
    let rows: Vec<(&ModelVersion, tritium_worker::StatsSnapshot)> =
        versions.iter().map(|v| (v.as_ref(), v.stats.snapshot())).collect();
    let labels = |served: &ModelVersion| version_labels(served, &[]);
    let mut families = Vec::with_capacity(COUNTERS.len() + 2);
    let mut failures = Vec::new();
    for (served, _) in &rows {
        for (reason, count) in served.stats.failures_by_reason() {
            failures.push(counter(version_labels(served, &[("reason", reason.as_str())]), count as f64));
        }
    }
    for spec in COUNTERS {
        let metrics = rows.iter().map(|(served, snapshot)| counter(labels(served), (spec.value)(snapshot)));
        families.push(family(spec.name, spec.help, MetricType::COUNTER, metrics.collect()));
        if spec.name == "nv_inference_request_success" {
            families.push(family(
                "nv_inference_request_failure",
                "Inference requests that failed, by reason (REJECTED, CANCELED, BACKEND, OTHER)",
                MetricType::COUNTER,
                std::mem::take(&mut failures),
            ));
        }
    }
    let pending = rows.iter().map(|(served, _)| gauge(labels(served), served.stats.pending_count() as f64));
    families.push(family(
        "nv_inference_pending_request_count",
        "Requests queued or running in the model now",
        MetricType::GAUGE,
        pending.collect(),
    ));
    families.extend(cache_families(&rows));
    families.extend(cache_gauges(repository));
    // A family without samples is not printed at all, as Triton prints none before a model loads.
    families.retain(|f| !f.get_metric().is_empty());
    families
}

/// The response cache's per-model counters, for the versions that cache their responses (as
/// Triton, which has them only for models with `response_cache` enabled).
fn cache_families(rows: &[(&ModelVersion, tritium_worker::StatsSnapshot)]) -> Vec<MetricFamily> {
    type Read = fn(&tritium_worker::StatsSnapshot) -> f64;
    const CACHE: [(&str, &str, Read); 4] = [
        ("nv_cache_num_hits_per_model", "Number of cache hits per model", |s| s.cache_hit.0 as f64),
        ("nv_cache_num_misses_per_model", "Number of cache misses per model", |s| s.cache_miss.0 as f64),
        ("nv_cache_hit_duration_per_model", "Total cache hit duration per model, in microseconds", |s| micros(s.cache_hit.1)),
        ("nv_cache_miss_duration_per_model", "Total cache miss (insert+lookup) duration per model, in microseconds", |s| {
            micros(s.cache_miss.1)
        }),
    ];
    let cached: Vec<_> = rows.iter().filter(|(served, _)| served.caches_responses()).collect();
    CACHE
        .iter()
        .map(|(name, help, read)| {
            let metrics = cached.iter().map(|(served, snapshot)| counter(version_labels(served, &[]), read(snapshot))).collect();
            family(name, help, MetricType::COUNTER, metrics)
        })
        .collect()
}

/// The gauges of a response cache kept in this process (`--cache-config local`), as Triton's
/// local cache reports them.
fn cache_gauges(repository: &ModelRepository) -> Vec<MetricFamily> {
    let Some(g) = repository.response_cache().and_then(|cache| cache.gauges()) else { return Vec::new() };
    let one = |name: &str, help: &str, value: f64| family(name, help, MetricType::GAUGE, vec![gauge(Vec::new(), value)]);
    vec![
        one("nv_cache_util", "Cache utilization [0.0 - 1.0]", g.utilization),
        one("nv_cache_num_entries", "Number of responses stored in response cache", g.entries as f64),
        one("nv_cache_num_hits", "Number of cache hits in response cache", g.hits as f64),
        one("nv_cache_num_misses", "Number of cache misses in response cache", g.misses as f64),
        one("nv_cache_num_lookups", "Number of cache lookups in response cache", (g.hits + g.misses) as f64),
        one("nv_cache_num_evictions", "Number of cache evictions in response cache", g.evictions as f64),
    ]
}

/// The latency summaries Triton serves with `summary_latencies=true`, per phase: the quantiles
/// over the model's recent requests (NaN when it had none lately), the count and the sum in
/// microseconds over every successful request.
pub fn summary_families(repository: &ModelRepository, quantiles: &[f64]) -> Vec<MetricFamily> {
    const SUMMARIES: [(&str, &str); 5] = [
        ("nv_inference_request_summary_us", "Latencies of successful requests, end to end, in microseconds"),
        ("nv_inference_queue_summary_us", "Time successful requests waited in the queue, in microseconds"),
        ("nv_inference_compute_input_summary_us", "Time spent preparing the inputs of successful requests, in microseconds"),
        ("nv_inference_compute_infer_summary_us", "Time the model ran for successful requests, in microseconds"),
        ("nv_inference_compute_output_summary_us", "Time spent producing the outputs of successful requests, in microseconds"),
    ];
    let mut metrics: [Vec<Metric>; 5] = Default::default();
    for version in versions(repository) {
        let snapshot = version.stats.snapshot();
        let sums = [snapshot.success, snapshot.queue, snapshot.compute_input, snapshot.compute_infer, snapshot.compute_output];
        let recent = version.stats.latencies.quantiles(quantiles);
        for (phase, out) in metrics.iter_mut().enumerate() {
            let mut summary = Summary::default();
            summary.set_sample_count(sums[phase].0);
            summary.set_sample_sum(micros(sums[phase].1));
            let values = recent.as_ref().map(|r| r[phase].clone()).unwrap_or_else(|| vec![f64::NAN; quantiles.len()]);
            summary.set_quantile(
                quantiles
                    .iter()
                    .zip(values)
                    .map(|(q, v)| {
                        let mut quantile = Quantile::default();
                        quantile.set_quantile(*q);
                        quantile.set_value(v);
                        quantile
                    })
                    .collect(),
            );
            let mut metric = Metric::from_label(version_labels(&version, &[]));
            metric.set_summary(summary);
            out.push(metric);
        }
    }
    SUMMARIES
        .iter()
        .zip(metrics)
        .filter(|(_, metrics)| !metrics.is_empty())
        .map(|((name, help), metrics)| family(name, help, MetricType::SUMMARY, metrics))
        .collect()
}

/// The first-response histogram served with `histogram_latencies=true`: one series per version of
/// every decoupled model, from its load on (as Triton 2.52 and later serve it; 2.51 accepts the
/// setting and serves nothing).
pub fn histogram_families(repository: &ModelRepository) -> Vec<MetricFamily> {
    let metrics: Vec<Metric> = versions(repository)
        .iter()
        .filter(|version| version.decoupled())
        .map(|version| {
            let snapshot = version.stats.first_response.snapshot();
            let mut histogram = Histogram::default();
            histogram.set_sample_count(snapshot.count);
            histogram.set_sample_sum(snapshot.sum_ms as f64);
            histogram.set_bucket(
                BUCKETS_MS
                    .iter()
                    .zip(snapshot.cumulative)
                    .map(|(bound, count)| {
                        let mut bucket = Bucket::default();
                        bucket.set_upper_bound(*bound as f64);
                        bucket.set_cumulative_count(count);
                        bucket
                    })
                    .collect(),
            );
            let mut metric = Metric::from_label(version_labels(version, &[]));
            metric.set_histogram(histogram);
            metric
        })
        .collect();
    if metrics.is_empty() {
        return Vec::new();
    }
    let help = "Time from a decoupled request's arrival to its first response, in whole milliseconds";
    vec![family("nv_inference_first_response_histogram_ms", help, MetricType::HISTOGRAM, metrics)]
}
