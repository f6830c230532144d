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
    /// `histogram_latencies` take false (true is refused: not supported yet).
    #[arg(long, env = "TRITIUM_METRICS_CONFIG", value_delimiter = ';')]
    pub metrics_config: Vec<String>,
}

impl MetricsArgs {
    pub fn addr(&self) -> SocketAddr {
        SocketAddr::new(self.metrics_address, self.metrics_port)
    }

    pub fn config(&self) -> Result<MetricsConfig, String> {
        let config = MetricsConfig::new(self.metrics_interval_ms);
        for setting in self.metrics_config.iter().filter(|s| !s.is_empty()) {
            let bad = |why: &str| format!("--metrics-config '{setting}': {why}");
            let (key, value) = setting.split_once('=').ok_or_else(|| bad("expected <key>=<value>"))?;
            let flag = match value.trim() {
                "true" | "1" => true,
                "false" | "0" => false,
                _ => return Err(bad("expected true or false")),
            };
            match key.trim() {
                // Latency summaries and histograms are not served yet: asking for them is refused
                // rather than ignored.
                "summary_latencies" | "histogram_latencies" if flag => {
                    return Err(bad("latency summaries and histograms are not supported yet; the nv_* counters are"));
                }
                "summary_latencies" | "histogram_latencies" => {}
                other => return Err(bad(&format!("unknown setting '{other}' (summary_latencies, histogram_latencies)"))),
            }
        }
        Ok(config)
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Parser)]
    struct Flags {
        #[command(flatten)]
        metrics: MetricsArgs,
    }

    fn config(args: &[&str]) -> Result<MetricsConfig, String> {
        Flags::try_parse_from([&["tritium"], args].concat()).map_err(|e| e.to_string())?.metrics.config()
    }

    #[test]
    fn metrics_flags() {
        assert_eq!(config(&[]).expect("defaults").interval, std::time::Duration::from_millis(2000));
        assert_eq!(config(&["--metrics-interval-ms", "500"]).expect("interval").interval.as_millis(), 500);
        assert!(config(&["--metrics-config", "summary_latencies=false"]).is_ok());
        assert!(config(&["--metrics-config", "summary_latencies=true"]).expect_err("refused").contains("not supported yet"));
        assert!(config(&["--metrics-config", "nonsense=1"]).expect_err("refused").contains("unknown setting"));
        assert!(config(&["--metrics-config", "summary_latencies"]).expect_err("refused").contains("<key>=<value>"));
    }
}
