//! The sampler: which requests are traced, at what level, and where their traces go. It owns the
//! TraceSetting values (global and per model) and compiles them, after every change, into one
//! policy per scope (the global one, and each model with values of its own), each with its own
//! rate counter and remaining count, as Triton keeps them.
//!
//! With every level `OFF` (the default) sampling is one relaxed atomic load and no allocation.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use parking_lot::Mutex;

use arc_swap::ArcSwap;
use tokio_util::sync::CancellationToken;
use tritium_backend_api::trace::{FinishedTrace, RequestTrace, TraceLevel, TraceSink};
use tritium_backend_api::trace_context::TraceContext;
use tritium_proto::inference::trace_setting_request::SettingValue as TraceInValue;
use tritium_proto::inference::trace_setting_response::SettingValue as TraceOutValue;

use super::metrics::TraceCounters;
use super::otlp::OtlpExporter;
use super::settings::{TraceSettings, Values, number};
use super::triton_file::FileWriter;
use crate::config::{TraceConfig, TraceMode};
use crate::error::TraceError;

/// One scope's sampling: the global settings, or a model's.
struct Policy {
    level: TraceLevel,
    /// Every `rate`-th request is traced; 0 traces none.
    rate: u64,
    seen: AtomicU64,
    /// Traces still to take; -1 for no limit.
    remaining: AtomicI64,
    sink: Arc<dyn TraceSink>,
}

impl Policy {
    fn is_on(&self) -> bool {
        !self.level.is_off() && self.rate > 0 && self.remaining.load(Ordering::Relaxed) != 0
    }

    /// Whether this request is traced: the `rate`-th, `2 rate`-th... request of the scope, while
    /// the count lasts.
    fn take(&self) -> bool {
        if self.level.is_off() || self.rate == 0 {
            return false;
        }
        let seen = self.seen.fetch_add(1, Ordering::Relaxed) + 1;
        if seen % self.rate != 0 {
            return false;
        }
        let counted = |left: i64| match left {
            0 => None,
            unlimited if unlimited < 0 => Some(unlimited),
            left => Some(left - 1),
        };
        self.remaining.fetch_update(Ordering::Relaxed, Ordering::Relaxed, counted).is_ok()
    }
}

struct Policies {
    global: Arc<Policy>,
    models: HashMap<String, Arc<Policy>>,
}

impl Policies {
    fn of(&self, model: &str) -> &Arc<Policy> {
        self.models.get(model).unwrap_or(&self.global)
    }
}

/// Sends finished traces to the OTLP exporter once serving has started it.
struct OtlpSink {
    exporter: Arc<OnceLock<OtlpExporter>>,
}

impl TraceSink for OtlpSink {
    fn finished(&self, trace: FinishedTrace) {
        if let Some(exporter) = self.exporter.get() {
            exporter.push(super::otlp_spans::spans(&trace));
        }
    }
}

/// Where traces go without a trace file: nowhere.
struct Nowhere;

impl TraceSink for Nowhere {
    fn finished(&self, _: FinishedTrace) {}
}

/// Samples requests and sends their traces to Triton's trace file or an OTLP collector.
pub struct Tracer {
    config: TraceConfig,
    settings: Mutex<TraceSettings>,
    policies: ArcSwap<Policies>,
    on: AtomicBool,
    files: OnceLock<Arc<FileWriter>>,
    otlp: Arc<OnceLock<OtlpExporter>>,
    /// The OTLP export task, awaited at shutdown so what is queued goes out.
    export_task: Mutex<Option<tokio::task::JoinHandle<()>>>,
    /// A worker process's tracer: a request whose caller sampled it is traced whatever the rate,
    /// so the frontend's trace goes on through the worker.
    follow_callers: bool,
    /// What export and the trace files did, for the metrics port.
    counters: TraceCounters,
}

impl std::fmt::Debug for Tracer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tracer").field("mode", &self.config.mode).field("on", &self.on).finish()
    }
}

impl Default for Tracer {
    fn default() -> Self {
        Tracer::new(TraceConfig::default())
    }
}

impl Tracer {
    /// This tracer's counters (spans exported and dropped, trace files written), a collector for
    /// the server's metrics registry.
    pub fn counters(&self) -> &TraceCounters {
        &self.counters
    }

    pub fn new(config: TraceConfig) -> Tracer {
        let settings = TraceSettings::new(config.initial_values());
        let tracer = Tracer {
            settings: Mutex::new(settings.clone()),
            policies: ArcSwap::from_pointee(Policies { global: Arc::new(Tracer::off()), models: HashMap::new() }),
            on: AtomicBool::new(false),
            files: OnceLock::new(),
            otlp: Arc::new(OnceLock::new()),
            export_task: Mutex::new(None),
            follow_callers: false,
            counters: TraceCounters::new(),
            config,
        };
        // Every scope's count starts from its setting, not from the placeholder's.
        tracer.compile(&settings, Some(""));
        tracer
    }

    /// This tracer as a worker process's: see [`Tracer::sample`].
    pub fn following_callers(mut self) -> Tracer {
        self.follow_callers = true;
        self
    }

    fn off() -> Policy {
        Policy { level: TraceLevel::OFF, rate: 0, seen: AtomicU64::new(0), remaining: AtomicI64::new(0), sink: Arc::new(Nowhere) }
    }

    pub fn mode(&self) -> TraceMode {
        self.config.mode
    }

    /// Starts the OTLP exporter (OpenTelemetry mode) on the current runtime; it sends what is
    /// queued and ends when `stop` is cancelled.
    pub fn start(&self, stop: CancellationToken) -> Result<(), String> {
        if self.config.mode == TraceMode::OpenTelemetry && self.otlp.get().is_none() {
            let (exporter, task) = OtlpExporter::spawn(&self.config.otlp, self.counters.clone(), stop)?;
            let _ = self.otlp.set(exporter);
            *self.export_task.lock() = Some(task);
        }
        Ok(())
    }

    /// At shutdown, once the export's stop token is cancelled: writes what the trace files hold
    /// and waits for the OTLP export of what is queued (each within its own timeout).
    pub async fn finish(&self) {
        if let Some(files) = self.files.get().cloned() {
            let _ = tokio::task::spawn_blocking(move || files.flush()).await;
        }
        let task = self.export_task.lock().take();
        if let Some(task) = task {
            let _ = tokio::time::timeout(self.config.otlp.export_timeout + std::time::Duration::from_secs(1), task).await;
        }
    }

    /// Whether any request may be traced now (one relaxed load): the doors read a caller's
    /// context only then.
    pub fn is_on(&self) -> bool {
        self.on.load(Ordering::Relaxed)
    }

    /// A trace for a request to `model` when the policy in force picks it (`caller`: the
    /// caller's `traceparent`, whose trace it continues); `None` otherwise. A worker process's
    /// tracer ([`Tracer::following_callers`]) traces every request its caller sampled, at its
    /// own level, so that one request's trace is whole across the processes.
    pub fn sample(&self, model: &str, request_id: &str, caller: Option<TraceContext>) -> Option<RequestTrace> {
        if !self.on.load(Ordering::Relaxed) {
            return None;
        }
        let policies = self.policies.load();
        let policy = policies.of(model);
        let followed = self.follow_callers && caller.as_ref().is_some_and(TraceContext::sampled) && !policy.level.is_off();
        if !followed && !policy.take() {
            return None;
        }
        if policy.remaining.load(Ordering::Relaxed) == 0 {
            self.refresh_on(&policies);
        }
        Some(RequestTrace::root(policy.level, model, None, request_id, caller, Arc::clone(&policy.sink)))
    }

    /// TraceSetting: applies `update` to `model`'s settings (`""`: the global ones) and returns
    /// the values now in force for it; a rejected update changes nothing.
    pub fn update(
        &self,
        model: &str,
        update: HashMap<String, TraceInValue>,
    ) -> Result<HashMap<String, TraceOutValue>, TraceError> {
        let mut settings = self.settings.lock();
        let update = settings.check(model, update, self.config.mode == TraceMode::Triton)?;
        if !update.is_empty() {
            let counted = update.contains_key("trace_count").then_some(model);
            settings.apply(model, update);
            self.compile(&settings, counted);
            // Triton writes a replaced setting's traces to its file at once.
            if let Some(files) = self.files.get() {
                files.write_held();
            }
        }
        let mut values = settings.effective(model);
        let remaining = self.policies.load().of(model).remaining.load(Ordering::Relaxed);
        values.insert("trace_count".to_owned(), vec![remaining.to_string()]);
        if self.config.mode == TraceMode::OpenTelemetry {
            // Triton's OpenTelemetry answer: the exporter's settings instead of the file's.
            values.remove("trace_file");
            values.remove("log_frequency");
            let otlp = &self.config.otlp;
            values.insert("url".to_owned(), vec![otlp.url.clone()]);
            for (key, value) in &otlp.resource {
                values.entry("resource".to_owned()).or_default().push(format!("{key}={value}"));
            }
            values.insert("bsp_max_export_batch_size".to_owned(), vec![otlp.max_export_batch_size.to_string()]);
            values.insert("bsp_schedule_delay".to_owned(), vec![otlp.schedule_delay.as_millis().to_string()]);
            values.insert("bsp_max_queue_size".to_owned(), vec![otlp.max_queue_size.to_string()]);
        }
        Ok(values.into_iter().map(|(k, value)| (k, TraceOutValue { value })).collect())
    }

    /// Builds the policies from `settings`, keeping each scope's counters unless its count was
    /// just set (`counted`: the scope whose `trace_count` the update set; `""` the global one,
    /// which models without a count of their own follow).
    fn compile(&self, settings: &TraceSettings, counted: Option<&str>) {
        let old = self.policies.load();
        let build = |scope: &str, values: &Values, previous: Option<&Arc<Policy>>| {
            let own_count = !scope.is_empty() && settings.own(scope).is_some_and(|own| own.contains_key("trace_count"));
            let reset = match counted {
                Some("") => scope.is_empty() || !own_count,
                Some(model) => model == scope,
                None => false,
            };
            let count = number(values, "trace_count").max(-1);
            let remaining = match previous {
                Some(p) if !reset => p.remaining.load(Ordering::Relaxed),
                _ => count,
            };
            // As in Triton, a new setting counts its requests afresh.
            Arc::new(Policy {
                level: level_of(values),
                rate: u64::try_from(number(values, "trace_rate")).unwrap_or(0),
                seen: AtomicU64::new(0),
                remaining: AtomicI64::new(remaining),
                sink: self.sink(values),
            })
        };
        let global = build("", &settings.effective(""), Some(&old.global));
        let models = settings
            .models()
            .map(|model| {
                (model.to_owned(), build(model, &settings.effective(model), old.models.get(model).or(Some(&old.global))))
            })
            .collect();
        let policies = Arc::new(Policies { global, models });
        self.refresh_on(&policies);
        self.policies.store(policies);
    }

    fn refresh_on(&self, policies: &Policies) {
        let on = policies.global.is_on() || policies.models.values().any(|p| p.is_on());
        self.on.store(on, Ordering::Relaxed);
    }

    fn sink(&self, values: &Values) -> Arc<dyn TraceSink> {
        match self.config.mode {
            TraceMode::OpenTelemetry => Arc::new(OtlpSink { exporter: Arc::clone(&self.otlp) }),
            TraceMode::Triton => {
                let file = values.get("trace_file").and_then(|f| f.first()).cloned().unwrap_or_default();
                if file.is_empty() {
                    // Triton traces to nowhere then; no writer thread is started for it.
                    return Arc::new(Nowhere);
                }
                let log_frequency = u64::try_from(number(values, "log_frequency")).unwrap_or(0);
                let writer = self.files.get_or_init(|| Arc::new(FileWriter::start(self.config.file_buffer_bytes, self.counters.clone())));
                writer.sink(file, log_frequency)
            }
        }
    }
}

/// `trace_level`'s list as a level (`TIMESTAMPS`, `TENSORS`, both, or neither).
fn level_of(values: &Values) -> TraceLevel {
    let levels = values.get("trace_level").map(Vec::as_slice).unwrap_or_default();
    TraceLevel { timestamps: levels.iter().any(|l| l == "TIMESTAMPS"), tensors: levels.iter().any(|l| l == "TENSORS") }
}
