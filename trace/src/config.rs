//! `--trace-config`, with Triton's keys and defaults, and Dynamo's `OTEL_*` variables.
//!
//! Triton's forms: `KEY=VALUE` for the global keys (`mode`, `rate`, `count`, `level`, the last
//! repeatable to get both levels), `triton,KEY=VALUE` for the trace file (`file`,
//! `log-frequency`) and `opentelemetry,KEY=VALUE` for the exporter (`url`, `resource`, `bsp_*`,
//! and Tritium's `protocol=grpc`). Without `mode=` on the command line, `OTEL_EXPORT_ENABLED=1`
//! selects OpenTelemetry as Dynamo does, its other variables filling what the flags leave.

use std::collections::HashMap;

use clap::Args;

use crate::otlp::{self, OtlpSettings};
use crate::settings::TRACE_DEFAULTS;

/// Where sampled traces go.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum TraceMode {
    /// Triton's trace file (`triton,file=`).
    #[default]
    Triton,
    /// OTLP export (`opentelemetry,url=`).
    OpenTelemetry,
}

impl TraceMode {
    pub fn name(self) -> &'static str {
        match self {
            TraceMode::Triton => "triton",
            TraceMode::OpenTelemetry => "opentelemetry",
        }
    }
}

/// The most a trace file's writer holds before it writes (`--trace-file-buffer-bytes`).
pub const DEFAULT_FILE_BUFFER_BYTES: u64 = 64 << 20;

#[derive(Debug, Clone, Args, Default)]
#[command(next_help_heading = "Tracing")]
pub struct TraceArgs {
    /// Triton's trace settings, repeatable: `mode=triton|opentelemetry`, `rate=N`, `count=N`,
    /// `level=OFF|TIMESTAMPS|TENSORS`, `triton,file=PATH`, `triton,log-frequency=N`,
    /// `opentelemetry,url=URL`, `opentelemetry,resource=KEY=VALUE`,
    /// `opentelemetry,bsp_max_export_batch_size=N`, `opentelemetry,bsp_schedule_delay=MS`,
    /// `opentelemetry,bsp_max_queue_size=N`, `opentelemetry,protocol=http/protobuf|grpc`.
    #[arg(long = "trace-config", value_name = "SETTING")]
    pub trace_config: Vec<String>,
    /// Bytes of finished traces a trace file's writer holds until it writes them (at shutdown
    /// without `log-frequency`); past it, traces are dropped and counted.
    #[arg(long, env = "TRITIUM_TRACE_FILE_BUFFER_BYTES", default_value_t = DEFAULT_FILE_BUFFER_BYTES)]
    pub trace_file_buffer_bytes: u64,
}

/// The tracing configuration, resolved.
#[derive(Debug, Clone, PartialEq)]
pub struct TraceConfig {
    pub mode: TraceMode,
    /// TraceSetting's start-up values (`trace_level`, `trace_rate`, ...).
    values: HashMap<String, Vec<String>>,
    pub otlp: OtlpSettings,
    pub file_buffer_bytes: u64,
}

impl Default for TraceConfig {
    fn default() -> Self {
        TraceConfig {
            mode: TraceMode::Triton,
            values: TRACE_DEFAULTS.iter().map(|(k, v)| (k.to_string(), vec![v.to_string()])).collect(),
            otlp: OtlpSettings::default(),
            file_buffer_bytes: DEFAULT_FILE_BUFFER_BYTES,
        }
    }
}

impl TraceConfig {
    /// TraceSetting's values at start.
    pub fn initial_values(&self) -> HashMap<String, Vec<String>> {
        self.values.clone()
    }

    /// The value of one TraceSetting key at start.
    pub fn value(&self, key: &str) -> &[String] {
        self.values.get(key).map(Vec::as_slice).unwrap_or_default()
    }
}

impl TraceArgs {
    /// Resolves the flags, reading Dynamo's variables through `env`.
    pub fn config(&self, env: impl Fn(&str) -> Option<String>) -> Result<TraceConfig, String> {
        let mut config = TraceConfig { file_buffer_bytes: self.trace_file_buffer_bytes.max(1), ..TraceConfig::default() };
        let mut mode = None;
        let mut levels: Vec<String> = Vec::new();
        let mut rate_set = false;
        let mut otlp_set = false;
        for setting in &self.trace_config {
            let (section, pair) = match setting.split_once(',') {
                Some((section, pair)) if !section.contains('=') => (Some(section), pair),
                _ => (None, setting.as_str()),
            };
            let (key, value) = pair
                .split_once('=')
                .ok_or_else(|| format!("--trace-config '{setting}': expected KEY=VALUE or SECTION,KEY=VALUE"))?;
            match (section, key) {
                (None, "mode") => {
                    mode = Some(match value {
                        "triton" => TraceMode::Triton,
                        "opentelemetry" => TraceMode::OpenTelemetry,
                        _ => return Err(format!("--trace-config mode '{value}': expected 'triton' or 'opentelemetry'")),
                    })
                }
                (None, "rate") => {
                    if positive(setting, value)? == 0 {
                        return Err(format!("--trace-config '{setting}': the sample rate must be non-zero"));
                    }
                    rate_set = true;
                    config.set("trace_rate", value);
                }
                (None, "count") => {
                    match value.parse::<i64>() {
                        Ok(n) if n >= -1 => {}
                        _ => {
                            return Err(format!("--trace-config '{setting}': count must be -1 (no limit) or a number of traces"));
                        }
                    }
                    config.set("trace_count", value);
                }
                (None, "level") => match value {
                    "OFF" => levels.clear(),
                    "TIMESTAMPS" | "TENSORS" => levels.push(value.to_owned()),
                    _ => return Err(format!("--trace-config '{setting}': level must be OFF, TIMESTAMPS or TENSORS")),
                },
                (Some("triton"), "file") => config.set("trace_file", value),
                (Some("triton"), "log-frequency" | "log_frequency") => {
                    value.parse::<u64>().map_err(|_| format!("--trace-config '{setting}': log-frequency must be a number"))?;
                    config.set("log_frequency", value);
                }
                (Some("opentelemetry"), key) => {
                    config.otlp.set(key, value).map_err(|e| format!("--trace-config '{setting}': {e}"))?;
                    otlp_set = true;
                }
                (Some(section), _) if section != "triton" => {
                    return Err(format!("--trace-config '{setting}': unknown section '{section}' (triton, opentelemetry)"));
                }
                _ => return Err(format!("--trace-config '{setting}': unknown setting '{key}'")),
            }
        }
        if mode.is_none()
            && let Some(otel) = otlp::from_env(&env)?
        {
            mode = Some(TraceMode::OpenTelemetry);
            if !otlp_set {
                config.otlp = otel.settings;
            }
            if levels.is_empty() {
                levels.push("TIMESTAMPS".to_owned());
            }
            if !rate_set {
                config.set("trace_rate", &otel.rate.to_string());
            }
        }
        config.mode = mode.unwrap_or_default();
        levels.dedup();
        if !levels.is_empty() {
            config.values.insert("trace_level".to_owned(), levels);
        }
        config.set("trace_mode", config.mode.name());
        if config.traces_nowhere() {
            // Triton starts so too; its traces go nowhere.
            tracing::warn!("--trace-config level is on but no trace file is given (triton,file=PATH): nothing is traced");
        }
        Ok(config)
    }
}

impl TraceConfig {
    /// A level is on in Triton's mode without a file to write to.
    pub fn traces_nowhere(&self) -> bool {
        self.mode == TraceMode::Triton
            && self.value("trace_level").iter().any(|l| l != "OFF")
            && self.value("trace_file").iter().all(String::is_empty)
    }

    fn set(&mut self, key: &str, value: &str) {
        self.values.insert(key.to_owned(), vec![value.to_owned()]);
    }
}

fn positive(setting: &str, value: &str) -> Result<u32, String> {
    value.parse::<u32>().map_err(|_| format!("--trace-config '{setting}': rate must be a whole number of requests"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(args: &[&str], env: &[(&str, &str)]) -> Result<TraceConfig, String> {
        let args = TraceArgs {
            trace_config: args.iter().map(|s| (*s).to_owned()).collect(),
            trace_file_buffer_bytes: DEFAULT_FILE_BUFFER_BYTES,
        };
        args.config(|k| env.iter().find(|(n, _)| *n == k).map(|(_, v)| (*v).to_owned()))
    }

    #[test]
    fn triton_keys() {
        let c = config(
            &["rate=1", "count=5", "level=TIMESTAMPS", "level=TENSORS", "triton,file=/t/x.json", "triton,log-frequency=2"],
            &[],
        )
        .expect("valid");
        assert_eq!(c.mode, TraceMode::Triton);
        assert_eq!(c.value("trace_level"), ["TIMESTAMPS", "TENSORS"]);
        assert_eq!((c.value("trace_rate"), c.value("trace_count")), (&["1".to_owned()][..], &["5".to_owned()][..]));
        assert_eq!((c.value("trace_file")[0].as_str(), c.value("log_frequency")[0].as_str()), ("/t/x.json", "2"));
        let nowhere = config(&["level=TIMESTAMPS"], &[]).expect("starts, as Triton does");
        assert!(nowhere.traces_nowhere());
        let defaults = config(&[], &[]).expect("defaults");
        assert_eq!(defaults.initial_values(), TraceConfig::default().initial_values());
    }

    #[test]
    fn opentelemetry_keys_and_dynamo_variables() {
        let c =
            config(&["mode=opentelemetry", "opentelemetry,url=http://c:4318/v1/traces", "level=TIMESTAMPS"], &[]).expect("ok");
        assert_eq!((c.mode, c.otlp.url.as_str()), (TraceMode::OpenTelemetry, "http://c:4318/v1/traces"));
        assert_eq!(c.value("trace_mode"), ["opentelemetry"]);
        let env = [
            ("OTEL_EXPORT_ENABLED", "1"),
            ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "http://c:4317"),
            ("OTEL_TRACES_SAMPLER_ARG", "0.5"),
        ];
        let dynamo = config(&[], &env).expect("ok");
        assert_eq!((dynamo.mode, dynamo.value("trace_rate")[0].as_str()), (TraceMode::OpenTelemetry, "2"));
        assert_eq!(dynamo.value("trace_level"), ["TIMESTAMPS"]);
        // The flags win: mode=triton ignores the variables.
        assert_eq!(config(&["mode=triton"], &env).expect("ok").mode, TraceMode::Triton);
        assert_eq!(config(&["rate=7"], &env).expect("ok").value("trace_rate"), ["7"]);
    }

    #[test]
    fn bad_values_are_refused_at_start() {
        for bad in [
            &["rate=x"][..],
            &["count=-5"],
            &["level=ALL"],
            &["mode=jaeger"],
            &["triton,log-frequency=often"],
            &["nokey"],
            &["zipkin,url=http://x"],
            &["opentelemetry,bsp_max_queue_size=0"],
            &["rate=0"],
        ] {
            assert!(config(bad, &[]).is_err(), "{bad:?} was accepted");
        }
    }
}
