//! Prometheus metrics for language models, per `model` and `protocol` (`grpc` or `http`):
//! requests, errors by code, cancellations, queue time, time to first token, inter-token latency
//! and token counts, plus the engines' own gauges and counters at scrape time.
//!
//! Each request gets a [`RequestObserver`]; the generate pipeline feeds it and its drop counts a
//! request that never finished as cancelled. The output is the OpenMetrics text format (serve it
//! with [`CONTENT_TYPE`]); Prometheus scrapes it natively.
//!
//! ```
//! use tritium_openai_bridge::metrics::LlmMetrics;
//! use tritium_backend_api::llm::FinishReason;
//!
//! let metrics = LlmMetrics::new();
//! let mut observer = metrics.observer("tiny", "http");
//! observer.prompt_tokens(5);
//! observer.token();
//! observer.finished(FinishReason::Stop);
//! let text = metrics.render(&[]);
//! assert!(text.contains(r#"tritium_llm_requests_total{model="tiny",protocol="http"} 1"#));
//! ```

use std::sync::Arc;
use std::time::{Duration, Instant};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::encoding::text::{encode_eof, encode_registry};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::{Registry, Unit};
use tritium_backend_api::llm::{EngineStats, FinishReason};
use tritium_proto::ErrorCode;

use crate::BridgeError;

/// The content type of [`LlmMetrics::render`]'s output.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    model: String,
    protocol: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ErrorLabels {
    model: String,
    protocol: String,
    code: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct EngineLabels {
    model: String,
}

type HistogramFamily = Family<RequestLabels, Histogram, fn() -> Histogram>;

fn queue_histogram() -> Histogram {
    // 1 ms .. ~33 s
    Histogram::new(exponential_buckets(0.001, 2.0, 16))
}

fn ttft_histogram() -> Histogram {
    // 5 ms .. ~82 s
    Histogram::new(exponential_buckets(0.005, 2.0, 15))
}

fn itl_histogram() -> Histogram {
    // 1 ms .. ~16 s
    Histogram::new(exponential_buckets(0.001, 2.0, 15))
}

#[derive(Debug)]
struct Families {
    requests: Family<RequestLabels, Counter>,
    errors: Family<ErrorLabels, Counter>,
    cancelled: Family<RequestLabels, Counter>,
    queue_time: HistogramFamily,
    ttft: HistogramFamily,
    itl: HistogramFamily,
    generated_tokens: Family<RequestLabels, Counter>,
    prompt_tokens: Family<RequestLabels, Counter>,
}

/// The registry of LLM request metrics; share it (`Arc`) between the gRPC and HTTP front ends.
#[derive(Debug)]
pub struct LlmMetrics {
    families: Arc<Families>,
    registry: Registry,
    prefix: String,
}

impl Default for LlmMetrics {
    fn default() -> LlmMetrics {
        LlmMetrics::new()
    }
}

/// The metric names' default prefix (`--metrics-prefix` changes it).
pub const DEFAULT_PREFIX: &str = "tritium_llm";

/// A Prometheus metric name: `[a-zA-Z_:][a-zA-Z0-9_:]*`.
pub fn valid_metric_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || c == ':')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
}

impl LlmMetrics {
    pub fn new() -> LlmMetrics {
        LlmMetrics::with_prefix(DEFAULT_PREFIX)
    }

    /// Metrics named `{prefix}_requests_total`, … (a prefix that is not a valid metric name
    /// falls back to the default).
    pub fn with_prefix(prefix: &str) -> LlmMetrics {
        let prefix = if valid_metric_name(prefix) { prefix } else { DEFAULT_PREFIX };
        let families = Families {
            requests: Family::default(),
            errors: Family::default(),
            cancelled: Family::default(),
            queue_time: Family::new_with_constructor(queue_histogram),
            ttft: Family::new_with_constructor(ttft_histogram),
            itl: Family::new_with_constructor(itl_histogram),
            generated_tokens: Family::default(),
            prompt_tokens: Family::default(),
        };
        let mut registry = Registry::with_prefix(prefix);
        // Counters get their `_total` suffix from the encoder.
        registry.register("requests", "Language model requests received", families.requests.clone());
        registry.register("request_errors", "Language model requests that failed, by error code", families.errors.clone());
        registry.register(
            "requests_cancelled",
            "Language model requests whose client went away before the end",
            families.cancelled.clone(),
        );
        registry.register_with_unit(
            "queue_time",
            "Time sequences waited for a place in the running batch",
            Unit::Seconds,
            families.queue_time.clone(),
        );
        registry.register_with_unit(
            "time_to_first_token",
            "Time from a request's arrival to its first generated token",
            Unit::Seconds,
            families.ttft.clone(),
        );
        registry.register_with_unit(
            "inter_token_latency",
            "Time between consecutive generated tokens of a request",
            Unit::Seconds,
            families.itl.clone(),
        );
        registry.register("generated_tokens", "Tokens generated", families.generated_tokens.clone());
        registry.register("prompt_tokens", "Prompt tokens received", families.prompt_tokens.clone());
        LlmMetrics { families: Arc::new(families), registry, prefix: prefix.to_owned() }
    }

    /// Starts observing one request (counted at once). `protocol` is `"grpc"` or `"http"`.
    ///
    /// Create it only once the model is known to exist, so unknown names never become labels.
    pub fn observer(&self, model: &str, protocol: &'static str) -> RequestObserver {
        let labels = RequestLabels { model: model.to_string(), protocol: protocol.to_string() };
        let families = &self.families;
        families.requests.get_or_create(&labels).inc();
        // Cloned handles share the family's atomics, so per-token updates skip the family lock.
        RequestObserver {
            generated_tokens: families.generated_tokens.get_or_create_owned(&labels),
            ttft: families.ttft.get_or_create_owned(&labels),
            itl: families.itl.get_or_create_owned(&labels),
            families: Arc::clone(families),
            labels,
            started: Instant::now(),
            last_token: None,
            prompt_tokens: None,
            open: true,
        }
    }

    /// The whole exposition: the request metrics, then one series per engine of `engines`
    /// (model name, stats), then the `# EOF` marker.
    pub fn render(&self, engines: &[(String, EngineStats)]) -> String {
        let mut out = String::new();
        self.encode(&mut out, engines);
        // Writing to a String cannot fail.
        let _ = encode_eof(&mut out);
        out
    }

    /// Like [`LlmMetrics::render`] without the `# EOF` marker, for a caller that appends more.
    pub fn encode(&self, out: &mut String, engines: &[(String, EngineStats)]) {
        let _ = encode_registry(out, &self.registry);
        let _ = encode_registry(out, &engine_registry(&self.prefix, engines));
    }
}

fn engine_registry(prefix: &str, engines: &[(String, EngineStats)]) -> Registry {
    let mut registry = Registry::with_prefix(prefix);
    let gauge = |registry: &mut Registry, name: &str, help: &str, value: fn(&EngineStats) -> usize| {
        let family = Family::<EngineLabels, Gauge>::default();
        for (model, stats) in engines {
            family.get_or_create(&EngineLabels { model: model.clone() }).set(i64::try_from(value(stats)).unwrap_or(i64::MAX));
        }
        registry.register(name, help, family);
    };
    gauge(&mut registry, "engine_running_sequences", "Sequences in the running batch", |s| s.running);
    gauge(&mut registry, "engine_waiting_sequences", "Sequences waiting for a place in the batch", |s| s.waiting);
    gauge(&mut registry, "engine_kv_tokens_used", "KV-cache tokens in blocks held by running sequences", |s| s.kv_tokens_used);
    gauge(&mut registry, "engine_kv_blocks_cached", "KV-cache blocks in the prefix cache, in use or idle", |s| {
        s.kv_blocks_cached
    });
    gauge(&mut registry, "engine_kv_tokens_capacity", "KV-cache token budget", |s| s.kv_tokens_capacity);
    let counter = |registry: &mut Registry, name: &str, help: &str, value: fn(&EngineStats) -> u64| {
        let family = Family::<EngineLabels, Counter>::default();
        for (model, stats) in engines {
            family.get_or_create(&EngineLabels { model: model.clone() }).inc_by(value(stats));
        }
        registry.register(name, help, family);
    };
    counter(&mut registry, "engine_generated_tokens", "Tokens the engine generated", |s| s.tokens_generated);
    counter(&mut registry, "engine_prompt_tokens", "Prompt tokens the engine prefilled", |s| s.prompt_tokens);
    counter(&mut registry, "engine_prompt_tokens_cached", "Prompt tokens found in the KV cache and not recomputed", |s| {
        s.prompt_tokens_cached
    });
    counter(&mut registry, "engine_finished_sequences", "Sequences finished", |s| s.sequences_finished);
    counter(&mut registry, "engine_cancelled_sequences", "Sequences stopped because their client went away", |s| {
        s.sequences_cancelled
    });
    counter(&mut registry, "engine_rejected_sequences", "Requests refused because the queue was full", |s| s.sequences_rejected);
    counter(&mut registry, "engine_kv_blocks_offloaded", "KV blocks written to the offload tier", |s| s.kv_blocks_offloaded);
    counter(&mut registry, "engine_kv_blocks_restored", "KV blocks read back from the offload tier instead of computed", |s| {
        s.kv_blocks_restored
    });
    counter(&mut registry, "engine_preempted_sequences", "Sequences that gave their KV blocks up and waited to resume", |s| {
        s.sequences_preempted
    });
    counter(&mut registry, "engine_decode_steps", "Decode steps run", |s| s.decode_steps);
    counter(&mut registry, "engine_decode_rows", "Sequences carried by decode steps, in total", |s| s.decode_rows);
    registry
}

/// The label value of an error code.
pub fn code_label(code: ErrorCode) -> &'static str {
    match code {
        ErrorCode::Unknown => "unknown",
        ErrorCode::Internal => "internal",
        ErrorCode::NotFound => "not_found",
        ErrorCode::InvalidArg => "invalid_argument",
        ErrorCode::Unavailable => "unavailable",
        ErrorCode::Unsupported => "unsupported",
        ErrorCode::AlreadyExists => "already_exists",
        ErrorCode::Cancelled => "cancelled",
        ErrorCode::ResourceExhausted => "resource_exhausted",
    }
}

/// Records one request. It ends with [`RequestObserver::finished`] or [`RequestObserver::failed`];
/// dropped before either, the request counts as cancelled.
#[derive(Debug)]
pub struct RequestObserver {
    families: Arc<Families>,
    labels: RequestLabels,
    generated_tokens: Counter,
    ttft: Histogram,
    itl: Histogram,
    started: Instant,
    last_token: Option<Instant>,
    prompt_tokens: Option<u32>,
    open: bool,
}

impl RequestObserver {
    /// Records the prompt's length; the first call counts, later ones are ignored. The pipeline
    /// also reports it for usage when a stop string ends the request before the engine does.
    pub fn prompt_tokens(&mut self, tokens: u32) {
        if self.prompt_tokens.is_none() {
            self.prompt_tokens = Some(tokens);
            self.families.prompt_tokens.get_or_create(&self.labels).inc_by(u64::from(tokens));
        }
    }

    /// The prompt length recorded so far.
    pub fn known_prompt_tokens(&self) -> Option<u32> {
        self.prompt_tokens
    }

    /// One generated token arrived: the first one's delay is the time to first token, the
    /// others' the inter-token latency.
    pub fn token(&mut self) {
        let now = Instant::now();
        match self.last_token {
            None => self.ttft.observe(now.duration_since(self.started).as_secs_f64()),
            Some(last) => self.itl.observe(now.duration_since(last).as_secs_f64()),
        }
        self.last_token = Some(now);
        self.generated_tokens.inc();
    }

    /// How long the engine queued the sequence.
    pub fn queued(&mut self, queued_for: Duration) {
        self.families.queue_time.get_or_create(&self.labels).observe(queued_for.as_secs_f64());
    }

    /// The request ended normally (a finish reason of `Cancelled` counts as cancelled).
    pub fn finished(&mut self, reason: FinishReason) {
        if std::mem::replace(&mut self.open, false) && reason == FinishReason::Cancelled {
            self.families.cancelled.get_or_create(&self.labels).inc();
        }
    }

    /// The request failed; counted once, by the error's code.
    pub fn failed(&mut self, error: &BridgeError) {
        if std::mem::replace(&mut self.open, false) {
            let labels = ErrorLabels {
                model: self.labels.model.clone(),
                protocol: self.labels.protocol.clone(),
                code: code_label(error.code()).to_string(),
            };
            self.families.errors.get_or_create(&labels).inc();
        }
    }
}

impl Drop for RequestObserver {
    fn drop(&mut self) {
        if self.open {
            self.families.cancelled.get_or_create(&self.labels).inc();
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use std::collections::{HashMap, HashSet};

    use tritium_backend_api::llm::GenerateError;

    use super::*;

    /// A small OpenMetrics text parser: checks the framing and returns `sample line -> value`.
    pub(crate) fn parse_exposition(text: &str) -> HashMap<String, f64> {
        let mut types: HashMap<String, String> = HashMap::new();
        let mut helps: HashSet<String> = HashSet::new();
        let mut samples = HashMap::new();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.last(), Some(&"# EOF"), "the exposition ends with # EOF");
        for line in &lines[..lines.len() - 1] {
            if let Some(rest) = line.strip_prefix("# HELP ") {
                let (name, help) = rest.split_once(' ').expect("HELP name text");
                assert!(!help.is_empty(), "{line}");
                helps.insert(name.to_string());
            } else if let Some(rest) = line.strip_prefix("# TYPE ") {
                let (name, kind) = rest.split_once(' ').expect("TYPE name kind");
                assert!(["counter", "gauge", "histogram"].contains(&kind), "{line}");
                assert!(helps.contains(name), "TYPE before HELP: {line}");
                types.insert(name.to_string(), kind.to_string());
            } else if let Some(rest) = line.strip_prefix("# UNIT ") {
                assert!(rest.ends_with(" seconds"), "{line}");
            } else {
                assert!(!line.starts_with('#'), "unexpected comment {line}");
                let (series, value) = line.rsplit_once(' ').expect("sample value");
                let value: f64 = value.parse().unwrap_or_else(|_| panic!("bad value in {line}"));
                let name = series.split('{').next().expect("name");
                assert!(name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'), "{line}");
                if let Some(labels) = series.strip_prefix(name)
                    && !labels.is_empty()
                {
                    let inner = labels.strip_prefix('{').and_then(|l| l.strip_suffix('}')).expect("braced labels");
                    for pair in inner.split(',') {
                        let (key, value) = pair.split_once('=').expect("label=value");
                        assert!(key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'), "{line}");
                        assert!(value.starts_with('"') && value.ends_with('"'), "{line}");
                    }
                }
                let family = types
                    .keys()
                    .filter(|family| name.starts_with(family.as_str()))
                    .max_by_key(|family| family.len())
                    .unwrap_or_else(|| panic!("sample without TYPE: {line}"));
                let suffix = &name[family.len()..];
                let allowed: &[&str] = match types[family].as_str() {
                    "counter" => &["_total", "_created"],
                    "gauge" => &[""],
                    _ => &["_bucket", "_sum", "_count", "_created"],
                };
                assert!(allowed.contains(&suffix), "{line}");
                samples.insert(series.to_string(), value);
            }
        }
        samples
    }

    #[test]
    fn requests_are_counted_by_outcome() {
        let metrics = LlmMetrics::new();
        let mut ok = metrics.observer("m", "http");
        ok.prompt_tokens(7);
        ok.prompt_tokens(99);
        ok.token();
        ok.token();
        ok.token();
        ok.queued(Duration::from_millis(3));
        ok.finished(FinishReason::Length);
        drop(ok);
        let mut failed = metrics.observer("m", "grpc");
        failed.failed(&BridgeError::Generate(GenerateError::Overloaded { model: "m".into(), running: 1, waiting: 1, limit: 1 }));
        drop(failed);
        let mut invalid = metrics.observer("m", "grpc");
        invalid.failed(&BridgeError::field("temperature", "too hot"));
        invalid.failed(&BridgeError::field("temperature", "counted once"));
        drop(invalid);
        let mut dropped = metrics.observer("m", "http");
        dropped.token();
        drop(dropped);

        let engines = vec![(
            "m".to_string(),
            EngineStats {
                running: 2,
                waiting: 1,
                kv_tokens_used: 300,
                kv_tokens_capacity: 4096,
                decode_steps: 9,
                ..Default::default()
            },
        )];
        let text = metrics.render(&engines);
        let samples = parse_exposition(&text);
        let get = |series: &str| samples.get(series).copied().unwrap_or_else(|| panic!("{series} missing in\n{text}"));
        assert_eq!(get(r#"tritium_llm_requests_total{model="m",protocol="http"}"#), 2.0);
        assert_eq!(get(r#"tritium_llm_requests_total{model="m",protocol="grpc"}"#), 2.0);
        assert_eq!(get(r#"tritium_llm_request_errors_total{model="m",protocol="grpc",code="resource_exhausted"}"#), 1.0);
        assert_eq!(get(r#"tritium_llm_request_errors_total{model="m",protocol="grpc",code="invalid_argument"}"#), 1.0);
        assert_eq!(get(r#"tritium_llm_requests_cancelled_total{model="m",protocol="http"}"#), 1.0);
        assert_eq!(get(r#"tritium_llm_generated_tokens_total{model="m",protocol="http"}"#), 4.0);
        assert_eq!(get(r#"tritium_llm_prompt_tokens_total{model="m",protocol="http"}"#), 7.0);
        assert_eq!(get(r#"tritium_llm_time_to_first_token_seconds_count{model="m",protocol="http"}"#), 2.0);
        assert_eq!(get(r#"tritium_llm_inter_token_latency_seconds_count{model="m",protocol="http"}"#), 2.0);
        assert_eq!(get(r#"tritium_llm_queue_time_seconds_count{model="m",protocol="http"}"#), 1.0);
        assert_eq!(get(r#"tritium_llm_queue_time_seconds_bucket{le="+Inf",model="m",protocol="http"}"#), 1.0);
        assert_eq!(get(r#"tritium_llm_engine_running_sequences{model="m"}"#), 2.0);
        assert_eq!(get(r#"tritium_llm_engine_waiting_sequences{model="m"}"#), 1.0);
        assert_eq!(get(r#"tritium_llm_engine_kv_tokens_used{model="m"}"#), 300.0);
        assert_eq!(get(r#"tritium_llm_engine_kv_tokens_capacity{model="m"}"#), 4096.0);
        assert_eq!(get(r#"tritium_llm_engine_decode_steps_total{model="m"}"#), 9.0);
        assert_eq!(get(r#"tritium_llm_engine_cancelled_sequences_total{model="m"}"#), 0.0);
        for family in ["tritium_llm_requests", "tritium_llm_engine_decode_rows"] {
            assert!(text.contains(&format!("# TYPE {family} counter\n")), "{family}");
        }
        assert!(text.contains("# TYPE tritium_llm_time_to_first_token_seconds histogram\n"));
        assert!(text.contains("# TYPE tritium_llm_engine_kv_tokens_used gauge\n"));
    }

    #[test]
    fn the_prefix_names_every_series() {
        let metrics = LlmMetrics::with_prefix("dynamo_frontend");
        metrics.observer("m", "http").finished(tritium_backend_api::llm::FinishReason::Stop);
        let text = metrics.render(&[("m".to_string(), EngineStats::default())]);
        assert!(text.contains(r#"dynamo_frontend_requests_total{model="m",protocol="http"} 1"#), "{text}");
        assert!(text.contains("dynamo_frontend_engine_running_sequences"), "{text}");
        assert!(!text.contains("tritium_llm"), "{text}");
        assert!(!valid_metric_name("9lives") && !valid_metric_name("a-b") && valid_metric_name("a:b_c"));
        let fallback = LlmMetrics::with_prefix("bad name");
        fallback.observer("m", "http").finished(tritium_backend_api::llm::FinishReason::Stop);
        assert!(fallback.render(&[]).contains("tritium_llm_requests_total"));
    }
}
