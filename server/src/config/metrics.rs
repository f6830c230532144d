//! The metrics port's flags, with Triton's names: `--allow-metrics`, `--metrics-address`,
//! `--metrics-port`, `--metrics-interval-ms` and `--metrics-config <key>=<value>`.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use clap::Args;

use crate::metrics::MetricsConfig;

#[derive(Debug, Clone, Args)]
#[command(next_help_heading = "Metrics (Triton's nv_* on the metrics port)")]
pub struct MetricsArgs {
    /// Serve Prometheus metrics on the metrics port.
    #[arg(long, env = "TRITIUM_ALLOW_METRICS", default_value_t = true, action = clap::ArgAction::Set)]
    pub allow_metrics: bool,
    #[arg(long, env = "TRITIUM_METRICS_ADDRESS", default_value_t = IpAddr::V4(Ipv4Addr::UNSPECIFIED))]
    pub metrics_address: IpAddr,
    #[arg(long, env = "TRITIUM_METRICS_PORT", default_value_t = 8002)]
    pub metrics_port: u16,
    /// Serve metrics on an inherited, already listening socket (file descriptor) instead of binding.
    #[arg(long, env = "TRITIUM_METRICS_LISTEN_FD")]
    pub metrics_listen_fd: Option<i32>,
    /// Milliseconds between samples of the CPU and memory gauges (model counters are read at
    /// each scrape).
    #[arg(long, env = "TRITIUM_METRICS_INTERVAL_MS", default_value_t = 2000)]
    pub metrics_interval_ms: u64,
    /// Triton's `<key>=<value>` metrics settings; repeatable. `summary_latencies` and
    /// `histogram_latencies` take true or false.
    #[arg(long, env = "TRITIUM_METRICS_CONFIG", value_delimiter = ';')]
    pub metrics_config: Vec<String>,
}

impl MetricsArgs {
    pub fn addr(&self) -> SocketAddr {
        SocketAddr::new(self.metrics_address, self.metrics_port)
    }

    pub fn config(&self) -> Result<MetricsConfig, String> {
        let mut config = MetricsConfig::new(self.metrics_interval_ms);
        for setting in self.metrics_config.iter().filter(|s| !s.is_empty()) {
            let bad = |why: &str| format!("--metrics-config '{setting}': {why}");
            let (key, value) = setting.split_once('=').ok_or_else(|| bad("expected <key>=<value>"))?;
            let flag = match value.trim() {
                "true" | "1" => true,
                "false" | "0" => false,
                _ => return Err(bad("expected true or false")),
            };
            match key.trim() {
                "summary_latencies" => config.summary_latencies = flag,
                "histogram_latencies" => config.histogram_latencies = flag,
                other => return Err(bad(&format!("unknown setting '{other}' (summary_latencies, histogram_latencies)"))),
            }
        }
        Ok(config)
    }
}
