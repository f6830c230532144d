//! OpenTelemetry export (`--trace-config mode=opentelemetry`, or Dynamo's `OTEL_EXPORT_ENABLED`):
//! finished traces, already turned into spans ([`super::otlp_spans`]), wait in a bounded queue and
//! a task of their own sends them in batches to an OTLP collector, over HTTP protobuf (Triton's
//! `opentelemetry,url=`) or gRPC, with the `opentelemetry-otlp` exporter.
//!
//! Nothing here is on a request's path: the queue is filled off it (by the trace core's writer) and
//! holds at most `bsp_max_queue_size` spans; a trace that does not fit is dropped whole, and a batch
//! the collector refuses, or does not answer within the export timeout, is dropped too. Both are
//! counted in `tritium_trace_spans_dropped_total{reason}` on the metrics port, so a dead or hanging
//! collector costs spans, never a request's time.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use parking_lot::Mutex;

use opentelemetry::KeyValue;
use opentelemetry_otlp::{Protocol, WithExportConfig};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::trace::{SpanData, SpanExporter as _};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::metrics::TraceCounters;

/// Triton's default collector (OTLP/HTTP).
pub const DEFAULT_HTTP_URL: &str = "http://localhost:4318/v1/traces";
/// Dynamo's default collector (OTLP/gRPC).
pub const DEFAULT_GRPC_URL: &str = "http://localhost:4317";
/// Triton's `service.name` unless `resource=service.name=...` or `OTEL_SERVICE_NAME` says otherwise.
pub const DEFAULT_SERVICE_NAME: &str = "triton-inference-server";

/// The most spans one `bsp_max_queue_size` may hold, and one batch: past it a hanging collector
/// would hold that many traces' memory.
pub const MAX_QUEUE_SIZE: usize = 1 << 20;
/// The longest `bsp_schedule_delay`, in milliseconds (an hour).
pub const MAX_SCHEDULE_DELAY_MS: u64 = 3_600_000;

/// OTLP's two transports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OtlpProtocol {
    /// OTLP/HTTP with protobuf bodies (Triton's only one).
    HttpProtobuf,
    Grpc,
}

/// Where and how spans go: Triton's `--trace-config opentelemetry,...` keys.
#[derive(Debug, Clone, PartialEq)]
pub struct OtlpSettings {
    /// `url`: the collector's traces endpoint (HTTP: the full `/v1/traces` URL; gRPC: the server).
    pub url: String,
    /// `protocol`: `http/protobuf` (default) or `grpc`.
    pub protocol: OtlpProtocol,
    /// `resource=KEY=VALUE`, repeatable, in order; `service.name` among them names the service.
    pub resource: Vec<(String, String)>,
    /// `bsp_max_export_batch_size` (Triton's default 512).
    pub max_export_batch_size: usize,
    /// `bsp_schedule_delay` in milliseconds (5000).
    pub schedule_delay: Duration,
    /// `bsp_max_queue_size` (2048).
    pub max_queue_size: usize,
    /// How long one batch may take to export before it is given up (and its spans counted dropped).
    pub export_timeout: Duration,
}

impl Default for OtlpSettings {
    fn default() -> Self {
        OtlpSettings {
            url: DEFAULT_HTTP_URL.to_owned(),
            protocol: OtlpProtocol::HttpProtobuf,
            resource: Vec::new(),
            max_export_batch_size: 512,
            schedule_delay: Duration::from_millis(5000),
            max_queue_size: 2048,
            export_timeout: Duration::from_secs(10),
        }
    }
}

impl OtlpSettings {
    /// Applies one `--trace-config opentelemetry,KEY=VALUE`; the error names the key and why, in
    /// the words of Triton's own refusal where it has one.
    pub fn set(&mut self, key: &str, value: &str) -> Result<(), String> {
        match key {
            "url" => {
                let parsed: http::Uri = value.parse().map_err(|_| format!("opentelemetry url '{value}' is not a URL"))?;
                if parsed.host().is_none() {
                    return Err(format!("opentelemetry url '{value}' has no host"));
                }
                // `grpc://` (or `grpcs://`) picks OTLP/gRPC, whose endpoint is the same address over HTTP/2.
                self.url = match parsed.scheme_str() {
                    Some("http" | "https") => value.to_owned(),
                    Some(scheme @ ("grpc" | "grpcs")) => {
                        self.protocol = OtlpProtocol::Grpc;
                        let secure = if scheme == "grpcs" { "https" } else { "http" };
                        format!("{secure}{}", &value[scheme.len()..])
                    }
                    _ => return Err(format!("opentelemetry url '{value}' must be an http://, https:// or grpc:// URL")),
                };
            }
            "protocol" => {
                self.protocol = match value {
                    "http/protobuf" | "http" => OtlpProtocol::HttpProtobuf,
                    "grpc" => OtlpProtocol::Grpc,
                    _ => return Err(format!("opentelemetry protocol '{value}' is neither 'http/protobuf' nor 'grpc'")),
                }
            }
            "resource" => {
                let (k, v) = value
                    .split_once('=')
                    .filter(|(k, _)| !k.is_empty())
                    .ok_or_else(|| format!("opentelemetry resource '{value}' is not KEY=VALUE"))?;
                self.resource.push((k.to_owned(), v.to_owned()));
            }
            "bsp_max_export_batch_size" => self.max_export_batch_size = bounded(key, value, 1, MAX_QUEUE_SIZE as u64)? as usize,
            "bsp_max_queue_size" => self.max_queue_size = bounded(key, value, 1, MAX_QUEUE_SIZE as u64)? as usize,
            "bsp_schedule_delay" => self.schedule_delay = Duration::from_millis(bounded(key, value, 1, MAX_SCHEDULE_DELAY_MS)?),
            _ => return Err(format!("unknown opentelemetry trace setting '{key}'")),
        }
        Ok(())
    }

    /// The service name the resource gives (or the default).
    pub fn service_name(&self) -> &str {
        self.resource.iter().rev().find(|(k, _)| k == "service.name").map_or(DEFAULT_SERVICE_NAME, |(_, v)| v.as_str())
    }

    fn resource(&self) -> Resource {
        let mut attributes = vec![KeyValue::new("service.name", self.service_name().to_owned())];
        attributes
            .extend(self.resource.iter().filter(|(k, _)| k != "service.name").map(|(k, v)| KeyValue::new(k.clone(), v.clone())));
        Resource::builder_empty().with_attributes(attributes).build()
    }
}

/// What Dynamo's variables ask for ([`from_env`]).
#[derive(Debug, Clone, PartialEq)]
pub struct OtelEnv {
    pub settings: OtlpSettings,
    /// Trace every `rate`-th request (`OTEL_TRACES_SAMPLER_ARG` is a ratio: 0.1 is every tenth);
    /// 0 when the ratio is 0 (export on, nothing sampled).
    pub rate: u64,
}

/// Dynamo's switches, read through `var` (the config module's environment): `OTEL_EXPORT_ENABLED`
/// (`1`/`true`) turns export on, to `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` (OTLP/gRPC, default
/// `http://localhost:4317`; `OTEL_EXPORTER_OTLP_TRACES_PROTOCOL` or `OTEL_EXPORTER_OTLP_PROTOCOL`
/// `http/protobuf` switches to HTTP), as the service `OTEL_SERVICE_NAME`, sampling the ratio
/// `OTEL_TRACES_SAMPLER_ARG` (default every request), batching as the standard `OTEL_BSP_*`
/// variables say. `None` when export is not enabled.
pub fn from_env(var: impl Fn(&str) -> Option<String>) -> Result<Option<OtelEnv>, String> {
    let enabled = var("OTEL_EXPORT_ENABLED").map(|v| v.trim().to_ascii_lowercase());
    match enabled.as_deref() {
        None | Some("" | "0" | "false" | "no" | "off") => return Ok(None),
        Some("1" | "true" | "yes" | "on") => {}
        Some(other) => return Err(format!("OTEL_EXPORT_ENABLED='{other}' is neither true nor false")),
    }
    let mut settings = OtlpSettings { protocol: OtlpProtocol::Grpc, url: DEFAULT_GRPC_URL.to_owned(), ..OtlpSettings::default() };
    let protocol = var("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL").or_else(|| var("OTEL_EXPORTER_OTLP_PROTOCOL"));
    if let Some(protocol) = protocol.filter(|p| !p.is_empty()) {
        settings.set("protocol", &protocol).map_err(|e| format!("OTEL_EXPORTER_OTLP_PROTOCOL: {e}"))?;
    }
    if let Some(url) = var("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT").filter(|u| !u.is_empty()) {
        settings.set("url", &url).map_err(|e| format!("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT: {e}"))?;
    } else if settings.protocol == OtlpProtocol::HttpProtobuf {
        settings.url = DEFAULT_HTTP_URL.to_owned();
    }
    if let Some(name) = var("OTEL_SERVICE_NAME").filter(|n| !n.is_empty()) {
        settings.resource.push(("service.name".to_owned(), name));
    }
    for (name, key) in [
        ("OTEL_BSP_SCHEDULE_DELAY", "bsp_schedule_delay"),
        ("OTEL_BSP_MAX_QUEUE_SIZE", "bsp_max_queue_size"),
        ("OTEL_BSP_MAX_EXPORT_BATCH_SIZE", "bsp_max_export_batch_size"),
    ] {
        if let Some(value) = var(name).filter(|v| !v.is_empty()) {
            settings.set(key, value.trim()).map_err(|e| format!("{name}: {e}"))?;
        }
    }
    let rate = match var("OTEL_TRACES_SAMPLER_ARG").filter(|a| !a.is_empty()) {
        None => 1,
        Some(arg) => match arg.trim().parse::<f64>() {
            Ok(ratio) if ratio == 0.0 => 0,
            Ok(ratio) if ratio > 0.0 && ratio <= 1.0 => (1.0 / ratio).round() as u64,
            _ => return Err(format!("OTEL_TRACES_SAMPLER_ARG='{arg}' is not a ratio from 0 to 1")),
        },
    };
    Ok(Some(OtelEnv { settings, rate }))
}

fn bounded(key: &str, value: &str, min: u64, max: u64) -> Result<u64, String> {
    value
        .parse::<u64>()
        .ok()
        .filter(|n| (min..=max).contains(n))
        .ok_or_else(|| format!("opentelemetry {key} '{value}' must be an integer from {min} to {max}"))
}

/// The bounded queue between the trace core's writer and the export task.
struct Queue {
    spans: Mutex<VecDeque<SpanData>>,
    capacity: usize,
    batch: usize,
    ready: Notify,
    counters: TraceCounters,
}

/// The handle the OTLP sink pushes finished traces' spans through; cloning shares the queue.
#[derive(Clone)]
pub struct OtlpExporter {
    queue: Arc<Queue>,
}

impl std::fmt::Debug for OtlpExporter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OtlpExporter").field("capacity", &self.queue.capacity).finish()
    }
}

impl OtlpExporter {
    /// Builds the exporter and starts its task on the current runtime; the task sends what is left
    /// (within the export timeout) and ends when `stop` is cancelled. An error is a setting the
    /// exporter refuses (the URL), for the operator at startup.
    pub fn spawn(
        settings: &OtlpSettings,
        counters: TraceCounters,
        stop: CancellationToken,
    ) -> Result<(OtlpExporter, tokio::task::JoinHandle<()>), String> {
        let mut exporter = build_exporter(settings)?;
        exporter.set_resource(&settings.resource());
        let queue = Arc::new(Queue {
            spans: Mutex::new(VecDeque::new()),
            capacity: settings.max_queue_size,
            batch: settings.max_export_batch_size.min(settings.max_queue_size),
            ready: Notify::new(),
            counters,
        });
        let task = ExportTask {
            queue: queue.clone(),
            exporter,
            delay: settings.schedule_delay,
            timeout: settings.export_timeout,
            failing: AtomicBool::new(false),
        };
        let task = tokio::spawn(task.run(stop));
        Ok((OtlpExporter { queue }, task))
    }

    /// Queues one finished trace's spans, or drops them all (counted) when they do not fit: a
    /// trace is exported whole or not at all, so no span arrives without its parent.
    pub fn push(&self, spans: Vec<SpanData>) {
        let n = spans.len();
        let mut queue = self.queue.spans.lock();
        if queue.len() + n > self.queue.capacity {
            drop(queue);
            self.queue.counters.dropped_queue_full.inc_by(n as u64);
            return;
        }
        queue.extend(spans);
        let full = queue.len() >= self.queue.batch;
        drop(queue);
        if full {
            self.queue.ready.notify_one();
        }
    }
}

fn build_exporter(settings: &OtlpSettings) -> Result<opentelemetry_otlp::SpanExporter, String> {
    // reqwest is built without a TLS provider of its own: an https:// collector uses ring, the
    // tree's one (a provider installed already is kept).
    let _ = rustls::crypto::ring::default_provider().install_default();
    let built = match settings.protocol {
        OtlpProtocol::HttpProtobuf => opentelemetry_otlp::SpanExporter::builder()
            .with_http()
            .with_protocol(Protocol::HttpBinary)
            .with_endpoint(settings.url.clone())
            .with_timeout(settings.export_timeout)
            .build(),
        OtlpProtocol::Grpc => opentelemetry_otlp::SpanExporter::builder()
            .with_tonic()
            .with_protocol(Protocol::Grpc)
            .with_endpoint(settings.url.clone())
            .with_timeout(settings.export_timeout)
            .build(),
    };
    built.map_err(|e| format!("the OpenTelemetry exporter for '{}' could not be built: {e}", settings.url))
}

struct ExportTask {
    queue: Arc<Queue>,
    exporter: opentelemetry_otlp::SpanExporter,
    delay: Duration,
    timeout: Duration,
    /// The last export failed: the next failure is not logged again, the next success is.
    failing: AtomicBool,
}

impl ExportTask {
    async fn run(self, stop: CancellationToken) {
        loop {
            let stopping = tokio::select! {
                () = self.queue.ready.notified() => false,
                () = tokio::time::sleep(self.delay) => false,
                () = stop.cancelled() => true,
            };
            // Everything queued goes out, a batch at a time; on a stop, within one timeout.
            loop {
                let batch = self.take();
                if batch.is_empty() {
                    break;
                }
                self.export(batch).await;
                if stopping {
                    continue;
                }
                if self.queued() < self.queue.batch {
                    break;
                }
            }
            if stopping {
                let _ = self.exporter.shutdown_with_timeout(self.timeout);
                return;
            }
        }
    }

    fn queued(&self) -> usize {
        self.queue.spans.lock().len()
    }

    fn take(&self) -> Vec<SpanData> {
        let mut queue = self.queue.spans.lock();
        let n = queue.len().min(self.queue.batch);
        queue.drain(..n).collect()
    }

    async fn export(&self, batch: Vec<SpanData>) {
        let n = batch.len() as u64;
        let outcome = match tokio::time::timeout(self.timeout, self.exporter.export(batch)).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(e.to_string()),
            Err(_) => Err(format!("no answer within {:?}", self.timeout)),
        };
        match outcome {
            Ok(()) => {
                self.queue.counters.exported(n);
                if self.failing.swap(false, Ordering::Relaxed) {
                    tracing::info!("exporting trace spans works again");
                }
            }
            Err(e) => {
                self.queue.counters.dropped_export_failed.inc_by(n);
                if !self.failing.swap(true, Ordering::Relaxed) {
                    tracing::warn!("exporting {n} trace spans failed ({e}); spans are dropped until the collector answers");
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn triton_keys_and_bounds() {
        let mut s = OtlpSettings::default();
        s.set("url", "http://collector:4318/v1/traces").expect("url");
        s.set("resource", "service.name=edge").expect("resource");
        s.set("resource", "deployment.environment=test=1").expect("resource with '=' in the value");
        s.set("bsp_max_queue_size", "16").expect("queue");
        s.set("bsp_schedule_delay", "100").expect("delay");
        s.set("bsp_max_export_batch_size", "4").expect("batch");
        s.set("protocol", "grpc").expect("protocol");
        assert_eq!(s.service_name(), "edge");
        assert_eq!(s.resource[1], ("deployment.environment".to_owned(), "test=1".to_owned()));
        assert_eq!((s.max_queue_size, s.max_export_batch_size), (16, 4));
        assert_eq!(s.schedule_delay, Duration::from_millis(100));
        assert_eq!(s.protocol, OtlpProtocol::Grpc);
        for (key, value) in [
            ("url", "collector:4318"),
            ("url", "ftp://collector/v1/traces"),
            ("resource", "novalue"),
            ("resource", "=v"),
            ("bsp_max_queue_size", "0"),
            ("bsp_max_queue_size", "99999999999"),
            ("bsp_schedule_delay", "-1"),
            ("protocol", "json"),
            ("nope", "1"),
        ] {
            assert!(s.set(key, value).is_err(), "{key}={value} was accepted");
        }
        assert_eq!(OtlpSettings::default().service_name(), DEFAULT_SERVICE_NAME);
        let mut grpc = OtlpSettings::default();
        grpc.set("url", "grpc://collector:4317").expect("a grpc:// url");
        assert_eq!((grpc.protocol, grpc.url.as_str()), (OtlpProtocol::Grpc, "http://collector:4317"));
        grpc.set("url", "grpcs://collector:4317").expect("a grpcs:// url");
        assert_eq!(grpc.url, "https://collector:4317");
    }

    #[test]
    fn dynamo_variables() {
        let env = |pairs: &'static [(&'static str, &'static str)]| {
            move |k: &str| pairs.iter().find(|(name, _)| *name == k).map(|(_, v)| (*v).to_owned())
        };
        assert_eq!(from_env(env(&[])), Ok(None));
        assert_eq!(from_env(env(&[("OTEL_EXPORT_ENABLED", "false")])), Ok(None));
        let on = from_env(env(&[("OTEL_EXPORT_ENABLED", "1")])).expect("valid").expect("enabled");
        assert_eq!((on.settings.protocol, on.settings.url.as_str(), on.rate), (OtlpProtocol::Grpc, DEFAULT_GRPC_URL, 1));
        let full = from_env(env(&[
            ("OTEL_EXPORT_ENABLED", "true"),
            ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "http://tempo:4318/v1/traces"),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf"),
            ("OTEL_SERVICE_NAME", "frontend"),
            ("OTEL_TRACES_SAMPLER_ARG", "0.25"),
        ]))
        .expect("valid")
        .expect("enabled");
        assert_eq!(full.settings.protocol, OtlpProtocol::HttpProtobuf);
        assert_eq!((full.settings.service_name(), full.rate), ("frontend", 4));
        assert!(from_env(env(&[("OTEL_EXPORT_ENABLED", "maybe")])).is_err());
        assert!(from_env(env(&[("OTEL_EXPORT_ENABLED", "1"), ("OTEL_TRACES_SAMPLER_ARG", "2")])).is_err());
        assert_eq!(
            from_env(env(&[("OTEL_EXPORT_ENABLED", "1"), ("OTEL_TRACES_SAMPLER_ARG", "0")])).expect("ok").expect("on").rate,
            0
        );
    }
}
