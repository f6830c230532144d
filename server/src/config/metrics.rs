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
    /// The metrics port (`--grpc-metrics-port`, Dynamo's metrics port beside its gRPC server, is
    /// another name for it).
    #[arg(long, visible_alias = "grpc-metrics-port", env = "TRITIUM_METRICS_PORT", default_value_t = 8002)]
    pub metrics_port: u16,
    /// Serve metrics on an inherited, already listening socket (file descriptor) instead of binding.
    #[arg(long, env = "TRITIUM_METRICS_LISTEN_FD")]
    pub metrics_listen_fd: Option<i32>,
    /// Milliseconds between samples of the CPU and memory gauges (model counters are read at
    /// each scrape).
    #[arg(long, env = "TRITIUM_METRICS_INTERVAL_MS", default_value_t = 2000)]
    pub metrics_interval_ms: u64,
    /// Triton's `<key>=<value>` metrics settings; repeatable: `summary_latencies=true` (latency
    /// quantiles per model), `summary_quantiles=0.5:0.05,0.9:0.01,...`, `histogram_latencies=true`
    /// (time to the first response of decoupled models).
    #[arg(long, env = "TRITIUM_METRICS_CONFIG", value_delimiter = ';')]
    pub metrics_config: Vec<String>,
}

impl MetricsArgs {
    pub fn addr(&self) -> SocketAddr {
        SocketAddr::new(self.metrics_address, self.metrics_port)
    }

    pub fn config(&self) -> Result<MetricsConfig, String> {
        let mut config = MetricsConfig::new(self.metrics_interval_ms);
        let mut summaries = false;
        for setting in self.metrics_config.iter().filter(|s| !s.is_empty()) {
            let bad = |why: &str| format!("--metrics-config '{setting}': {why}");
            let (key, value) = setting.split_once('=').ok_or_else(|| bad("expected <key>=<value>"))?;
            let flag = || match value.trim() {
                "true" | "1" => Ok(true),
                "false" | "0" => Ok(false),
                _ => Err(bad("expected true or false")),
            };
            match key.trim() {
                "summary_latencies" => summaries = flag()?,
                // Triton's `<quantile>:<error>,...`; the quantiles are computed exactly, so the
                // error is read and not needed.
                "summary_quantiles" => {
                    let mut quantiles = Vec::new();
                    for pair in value.split(',').map(str::trim).filter(|p| !p.is_empty()) {
                        let quantile = pair.split(':').next().unwrap_or("").trim();
                        match quantile.parse::<f64>() {
                            Ok(q) if (0.0..=1.0).contains(&q) => quantiles.push(q),
                            _ => return Err(bad("expected <quantile>:<error>,... with quantiles between 0 and 1")),
                        }
                    }
                    config.summary_quantiles = quantiles;
                }
                "histogram_latencies" => config.histogram_latencies = flag()?,
                other => {
                    return Err(bad(&format!(
                        "unknown setting '{other}' (summary_latencies, summary_quantiles, histogram_latencies)"
                    )));
                }
            }
        }
        config.summary_latencies = summaries;
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
        assert!(!config(&["--metrics-config", "summary_latencies=false"]).expect("off").summary_latencies);
        let on =
            config(&["--metrics-config", "summary_latencies=true", "--metrics-config", "summary_quantiles=0.5:0.05,0.99:0.001"])
                .expect("on");
        assert!(on.summary_latencies);
        assert_eq!(on.summary_quantiles, vec![0.5, 0.99]);
        assert!(config(&["--metrics-config", "summary_quantiles=2:0.1"]).expect_err("refused").contains("between 0 and 1"));
        assert!(config(&["--metrics-config", "histogram_latencies=true"]).expect("on").histogram_latencies);
        assert!(!config(&[]).expect("defaults").histogram_latencies);
        assert!(config(&["--metrics-config", "nonsense=1"]).expect_err("refused").contains("unknown setting"));
        assert!(config(&["--metrics-config", "summary_latencies"]).expect_err("refused").contains("<key>=<value>"));
    }
}
