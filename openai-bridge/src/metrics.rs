//! Prometheus metrics for language models, per `model` and `protocol` (`grpc` or `http`):
//! requests, errors by code, cancellations, queue time, time to first token, inter-token latency
//! and token counts, plus the engines' own gauges and counters at scrape time.
//!
//! Each request gets a [`RequestObserver`]; the generate pipeline feeds it and its drop counts a
//! request that never finished as cancelled. The output is the Prometheus text format 0.0.4
//! (serve it with [`CONTENT_TYPE`]), written by the `prometheus` crate, the one metrics library of
//! the server (Triton's counters keep their names without `_total`, which OpenMetrics forbids).
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

use prometheus::core::Collector;
use prometheus::{Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGaugeVec, Opts, TextEncoder};
use tritium_backend_api::llm::{EngineStats, FinishReason, GenerateRequest};
use tritium_backend_api::trace::{RequestTrace, TimestampKind};
use tritium_proto::ErrorCode;

use crate::BridgeError;
use crate::preprocess::PrefixCacheCounters;

mod tokenizer_cache;

/// The content type of [`LlmMetrics::render`]'s output.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

const REQUEST_LABELS: &[&str] = &["model", "protocol"];

/// `count` bucket bounds from `start`, each `factor` times the last.
fn buckets(start: f64, factor: f64, count: usize) -> Vec<f64> {
    std::iter::successors(Some(start), |bound| Some(bound * factor)).take(count).collect()
}

#[derive(Debug)]
struct Families {
    requests: IntCounterVec,
    errors: IntCounterVec,
    cancelled: IntCounterVec,
    queue_time: HistogramVec,
    ttft: HistogramVec,
    itl: HistogramVec,
    generated_tokens: IntCounterVec,
    prompt_tokens: IntCounterVec,
}

impl Families {
    fn new(prefix: &str) -> Families {
        let counter = |name: &str, help: &str, labels: &[&str]| {
            IntCounterVec::new(Opts::new(format!("{prefix}_{name}_total"), help), labels)
                .unwrap_or_else(|e| unreachable!("a valid metric name: {e}"))
        };
        let histogram = |name: &str, help: &str, bounds: Vec<f64>| {
            HistogramVec::new(HistogramOpts::new(format!("{prefix}_{name}_seconds"), help).buckets(bounds), REQUEST_LABELS)
                .unwrap_or_else(|e| unreachable!("a valid metric name: {e}"))
        };
        Families {
            requests: counter("requests", "Language model requests received", REQUEST_LABELS),
            errors: counter(
                "request_errors",
                "Language model requests that failed, by error code",
                &["model", "protocol", "code"],
            ),
            cancelled: counter(
                "requests_cancelled",
                "Language model requests whose client went away before the end",
                REQUEST_LABELS,
            ),
            // 1 ms .. ~33 s
            queue_time: histogram(
                "queue_time",
                "Time sequences waited for a place in the running batch",
                buckets(0.001, 2.0, 16),
            ),
            // 5 ms .. ~82 s
            ttft: histogram(
                "time_to_first_token",
                "Time from a request's arrival to its first generated token",
                buckets(0.005, 2.0, 15),
            ),
            // 1 ms .. ~16 s
            itl: histogram(
                "inter_token_latency",
                "Time between consecutive generated tokens of a request",
                buckets(0.001, 2.0, 15),
            ),
            generated_tokens: counter("generated_tokens", "Tokens generated", REQUEST_LABELS),
            prompt_tokens: counter("prompt_tokens", "Prompt tokens received", REQUEST_LABELS),
        }
    }

    fn collect(&self) -> Vec<prometheus::proto::MetricFamily> {
        let collectors: [&dyn Collector; 8] = [
            &self.requests,
            &self.errors,
            &self.cancelled,
            &self.queue_time,
            &self.ttft,
            &self.itl,
            &self.generated_tokens,
            &self.prompt_tokens,
        ];
        collectors.iter().flat_map(|collector| collector.collect()).collect()
    }
}

/// The LLM request metrics; share it (`Arc`) between the gRPC and HTTP front ends.
#[derive(Debug)]
pub struct LlmMetrics {
    families: Arc<Families>,
    tokenizer_cache: tokenizer_cache::TokenizerCacheFamilies,
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
        LlmMetrics {
            families: Arc::new(Families::new(prefix)),
            tokenizer_cache: tokenizer_cache::TokenizerCacheFamilies::new(prefix),
            prefix: prefix.to_owned(),
        }
    }

    /// Where `model`'s tokenizer prefix cache counts its hits, misses and size.
    pub fn tokenizer_cache(&self, model: &str) -> PrefixCacheCounters {
        self.tokenizer_cache.counters(model)
    }

    /// Starts observing one request (counted at once). `protocol` is `"grpc"` or `"http"`.
    ///
    /// Create it only once the model is known to exist, so unknown names never become labels.
    pub fn observer(&self, model: &str, protocol: &'static str) -> RequestObserver {
        let families = &self.families;
        let labels = [model, protocol];
        families.requests.with_label_values(&labels).inc();
        // The handles share the family's atomics, so per-token updates skip the family's lock.
        RequestObserver {
            generated_tokens: families.generated_tokens.with_label_values(&labels),
            ttft: families.ttft.with_label_values(&labels),
            itl: families.itl.with_label_values(&labels),
            families: Arc::clone(families),
            model: model.to_owned(),
            protocol,
            started: Instant::now(),
            last_token: None,
            prompt_tokens: None,
            open: true,
            trace: None,
            completion_tokens: 0,
        }
    }

    /// The whole exposition: the request metrics, then one series per engine of `engines`
    /// (model name, stats).
    pub fn render(&self, engines: &[(String, EngineStats)]) -> String {
        let mut out = String::new();
        self.encode(&mut out, engines);
        out
    }

    /// Appends [`LlmMetrics::render`]'s exposition to `out`.
    pub fn encode(&self, out: &mut String, engines: &[(String, EngineStats)]) {
        encode_families(self.metric_families(engines), out);
    }

    /// The request families and the engines' gauges and counters, read now (for a server's
    /// metrics registry).
    pub fn metric_families(&self, engines: &[(String, EngineStats)]) -> Vec<prometheus::proto::MetricFamily> {
        let mut families = self.families.collect();
        families.extend(self.tokenizer_cache.collect());
        families.extend(engine_families(&self.prefix, engines));
        families
    }
}

/// Appends `families` to `out` in the Prometheus text format; a family with no series yet (a
/// labelled counter before its first increment) is left out, as the encoder refuses it.
pub fn encode_families(mut families: Vec<prometheus::proto::MetricFamily>, out: &mut String) {
    families.retain(|family| !family.get_metric().is_empty());
    if let Err(e) = TextEncoder::new().encode_utf8(&families, out) {
        tracing::warn!("encoding the metrics failed: {e}");
    }
}

fn engine_families(prefix: &str, engines: &[(String, EngineStats)]) -> Vec<prometheus::proto::MetricFamily> {
    let mut families = Vec::new();
    let mut gauge = |name: &str, help: &str, value: fn(&EngineStats) -> usize| {
        let Ok(family) = IntGaugeVec::new(Opts::new(format!("{prefix}_{name}"), help), &["model"]) else { return };
        for (model, stats) in engines {
            family.with_label_values(&[model.as_str()]).set(i64::try_from(value(stats)).unwrap_or(i64::MAX));
        }
        families.extend(family.collect());
    };
    gauge("engine_running_sequences", "Sequences in the running batch", |s| s.running);
    gauge("engine_waiting_sequences", "Sequences waiting for a place in the batch", |s| s.waiting);
    gauge("engine_kv_tokens_used", "KV-cache tokens in blocks held by running sequences", |s| s.kv_tokens_used);
    gauge("engine_kv_blocks_cached", "KV-cache blocks in the prefix cache, in use or idle", |s| s.kv_blocks_cached);
    gauge("engine_kv_tokens_capacity", "KV-cache token budget", |s| s.kv_tokens_capacity);
    let mut counter = |name: &str, help: &str, value: fn(&EngineStats) -> u64| {
        let Ok(family) = IntCounterVec::new(Opts::new(format!("{prefix}_{name}_total"), help), &["model"]) else { return };
        for (model, stats) in engines {
            family.with_label_values(&[model.as_str()]).inc_by(value(stats));
        }
        families.extend(family.collect());
    };
    counter("engine_generated_tokens", "Tokens the engine generated", |s| s.tokens_generated);
    counter("engine_prompt_tokens", "Prompt tokens the engine prefilled", |s| s.prompt_tokens);
    counter("engine_prompt_tokens_cached", "Prompt tokens found in the KV cache and not recomputed", |s| s.prompt_tokens_cached);
    counter("engine_finished_sequences", "Sequences finished", |s| s.sequences_finished);
    counter("engine_cancelled_sequences", "Sequences stopped because their client went away", |s| s.sequences_cancelled);
    counter("engine_rejected_sequences", "Requests refused because the queue was full", |s| s.sequences_rejected);
    counter("engine_kv_blocks_offloaded", "KV blocks written to the offload tier", |s| s.kv_blocks_offloaded);
    counter("engine_kv_blocks_restored", "KV blocks read back from the offload tier instead of computed", |s| {
        s.kv_blocks_restored
    });
    counter("engine_preempted_sequences", "Sequences that gave their KV blocks up and waited to resume", |s| {
        s.sequences_preempted
    });
    counter("engine_decode_steps", "Decode steps run", |s| s.decode_steps);
    counter("engine_decode_rows", "Sequences carried by decode steps, in total", |s| s.decode_rows);
    counter("spec_decode_num_drafts", "Speculative proposals verified", |s| s.spec_decode_drafts);
    counter("spec_decode_num_draft_tokens", "Tokens proposed by speculative decoding", |s| s.spec_decode_draft_tokens);
    counter("spec_decode_num_accepted_tokens", "Proposed tokens the model kept", |s| s.spec_decode_accepted_tokens);
    families
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
        ErrorCode::PermissionDenied => "permission_denied",
    }
}

/// Records one request. It ends with [`RequestObserver::finished`] or [`RequestObserver::failed`];
/// dropped before either, the request counts as cancelled.
#[derive(Debug)]
pub struct RequestObserver {
    families: Arc<Families>,
    model: String,
    protocol: &'static str,
    generated_tokens: IntCounter,
    ttft: Histogram,
    itl: Histogram,
    started: Instant,
    last_token: Option<Instant>,
    prompt_tokens: Option<u32>,
    open: bool,
    /// The request's trace when the sampler picked it: the observer writes the OpenTelemetry
    /// GenAI attributes and the first token's event on it.
    trace: Option<RequestTrace>,
    completion_tokens: u32,
}

impl RequestObserver {
    fn labels(&self) -> [&str; 2] {
        [&self.model, self.protocol]
    }

    /// Traces this request (`None`: not sampled): stamps its start now and names the model.
    pub fn with_trace(mut self, trace: Option<RequestTrace>) -> RequestObserver {
        if let Some(trace) = &trace {
            trace.stamp(TimestampKind::RequestStart);
            trace.set_attribute("gen_ai.request.model", self.model.clone());
        }
        self.trace = trace;
        self
    }

    /// The request's trace, if it is sampled.
    pub fn trace(&self) -> Option<&RequestTrace> {
        self.trace.as_ref()
    }

    /// The generation's limits, on the trace (`gen_ai.request.*`).
    pub fn request(&self, request: &GenerateRequest) {
        if let Some(trace) = &self.trace {
            if let Some(max) = request.stop.max_tokens {
                trace.set_attribute("gen_ai.request.max_tokens", max);
            }
            trace.set_attribute("gen_ai.request.temperature", f64::from(request.sampling.temperature));
            trace.set_attribute("gen_ai.request.top_p", f64::from(request.sampling.top_p));
        }
    }

    /// Prompt tokens the engine found in its prefix cache, on the trace.
    pub fn cached_tokens(&self, cached: u32) {
        if let Some(trace) = &self.trace {
            trace.set_attribute("tritium.prefix_cache.hit_tokens", cached);
        }
    }

    fn end_trace(&mut self, reason: &str) {
        if let Some(trace) = self.trace.take() {
            trace.set_attribute("gen_ai.usage.output_tokens", self.completion_tokens);
            trace.set_attribute("gen_ai.response.finish_reasons", reason.to_owned());
            trace.stamp(TimestampKind::RequestEnd);
        }
    }

    /// Records the prompt's length; the first call counts, later ones are ignored. The pipeline
    /// also reports it for usage when a stop string ends the request before the engine does.
    pub fn prompt_tokens(&mut self, tokens: u32) {
        if self.prompt_tokens.is_none() {
            self.prompt_tokens = Some(tokens);
            if let Some(trace) = &self.trace {
                trace.set_attribute("gen_ai.usage.input_tokens", tokens);
            }
            self.families.prompt_tokens.with_label_values(&self.labels()).inc_by(u64::from(tokens));
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
            None => {
                self.ttft.observe(now.duration_since(self.started).as_secs_f64());
                if let Some(trace) = &self.trace {
                    trace.event("first_token", Vec::new());
                }
            }
            Some(last) => self.itl.observe(now.duration_since(last).as_secs_f64()),
        }
        self.last_token = Some(now);
        self.completion_tokens = self.completion_tokens.saturating_add(1);
        self.generated_tokens.inc();
    }

    /// How long the engine queued the sequence.
    pub fn queued(&mut self, queued_for: Duration) {
        self.families.queue_time.with_label_values(&self.labels()).observe(queued_for.as_secs_f64());
    }

    /// The request ended normally (a finish reason of `Cancelled` counts as cancelled).
    pub fn finished(&mut self, reason: FinishReason) {
        if std::mem::replace(&mut self.open, false) && reason == FinishReason::Cancelled {
            self.families.cancelled.with_label_values(&self.labels()).inc();
        }
        self.end_trace(reason.as_str());
    }

    /// The request failed; counted once, by the error's code.
    pub fn failed(&mut self, error: &BridgeError) {
        if std::mem::replace(&mut self.open, false) {
            let labels = [self.model.as_str(), self.protocol, code_label(error.code())];
            self.families.errors.with_label_values(&labels).inc();
        }
        if let Some(trace) = &self.trace {
            trace.set_attribute("error.type", code_label(error.code()));
        }
        self.end_trace("error");
    }
}

impl Drop for RequestObserver {
    fn drop(&mut self) {
        if self.open {
            self.families.cancelled.with_label_values(&self.labels()).inc();
        }
        self.end_trace("cancelled");
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use std::collections::{HashMap, HashSet};

    use tritium_backend_api::llm::GenerateError;

    use super::*;

    /// A small Prometheus text (0.0.4) parser: checks the framing and returns `sample line -> value`.
    pub(crate) fn parse_exposition(text: &str) -> HashMap<String, f64> {
        let mut types: HashMap<String, String> = HashMap::new();
        let mut helps: HashSet<String> = HashSet::new();
        let mut samples = HashMap::new();
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("# HELP ") {
                let (name, help) = rest.split_once(' ').expect("HELP name text");
                assert!(!help.is_empty(), "{line}");
                helps.insert(name.to_string());
            } else if let Some(rest) = line.strip_prefix("# TYPE ") {
                let (name, kind) = rest.split_once(' ').expect("TYPE name kind");
                assert!(["counter", "gauge", "histogram"].contains(&kind), "{line}");
                assert!(helps.contains(name), "TYPE before HELP: {line}");
                types.insert(name.to_string(), kind.to_string());
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
                    "counter" | "gauge" => &[""],
                    _ => &["_bucket", "_sum", "_count"],
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
        assert_eq!(get(r#"tritium_llm_request_errors_total{code="resource_exhausted",model="m",protocol="grpc"}"#), 1.0);
        assert_eq!(get(r#"tritium_llm_request_errors_total{code="invalid_argument",model="m",protocol="grpc"}"#), 1.0);
        assert_eq!(get(r#"tritium_llm_requests_cancelled_total{model="m",protocol="http"}"#), 1.0);
        assert_eq!(get(r#"tritium_llm_generated_tokens_total{model="m",protocol="http"}"#), 4.0);
        assert_eq!(get(r#"tritium_llm_prompt_tokens_total{model="m",protocol="http"}"#), 7.0);
        assert_eq!(get(r#"tritium_llm_time_to_first_token_seconds_count{model="m",protocol="http"}"#), 2.0);
        assert_eq!(get(r#"tritium_llm_inter_token_latency_seconds_count{model="m",protocol="http"}"#), 2.0);
        assert_eq!(get(r#"tritium_llm_queue_time_seconds_count{model="m",protocol="http"}"#), 1.0);
        assert_eq!(get(r#"tritium_llm_queue_time_seconds_bucket{model="m",protocol="http",le="+Inf"}"#), 1.0);
        assert_eq!(get(r#"tritium_llm_engine_running_sequences{model="m"}"#), 2.0);
        assert_eq!(get(r#"tritium_llm_engine_waiting_sequences{model="m"}"#), 1.0);
        assert_eq!(get(r#"tritium_llm_engine_kv_tokens_used{model="m"}"#), 300.0);
        assert_eq!(get(r#"tritium_llm_engine_kv_tokens_capacity{model="m"}"#), 4096.0);
        assert_eq!(get(r#"tritium_llm_engine_decode_steps_total{model="m"}"#), 9.0);
        assert_eq!(get(r#"tritium_llm_engine_cancelled_sequences_total{model="m"}"#), 0.0);
        for family in ["tritium_llm_requests_total", "tritium_llm_engine_decode_rows_total"] {
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
