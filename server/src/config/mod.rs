//! The `tritium` command line. Every option is also an environment variable (`TRITIUM_…`);
//! Triton's flag names and default ports are kept where Triton has them. This is the only module
//! that reads the environment.

pub mod aic;
pub mod auth;
pub mod cache;
pub mod cluster;
pub mod dump;
pub mod env_alias;
pub mod keepalive;
pub mod limits;
pub mod metrics;
pub mod openai;
pub mod rate_limit;
pub mod repository;
pub mod router;
mod router_inert;
pub mod runtime;
pub mod tls;
pub use tritium_trace::config as trace;
pub mod worker;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};
use tritium_worker::RepositoryOptions;

use crate::config::repository::repository_options;
use tritium_cluster::routing::RouterOptions;
pub use cache::CacheArgs;
pub use cluster::{ClusterArgs, ClusterConfig, DisaggregationArgs, EngineArgs, RequestPlaneConfig, WorkerListenArgs};
pub use keepalive::{KeepaliveArgs, KeepaliveConfig};
pub use limits::{HttpLimits, LimitArgs, Limits};
pub use metrics::MetricsArgs;
pub use openai::{OpenAiArgs, OpenAiSettings};
pub use rate_limit::RateLimitArgs;
pub use repository::{ModelArgs, ModelControlMode, RepositoryArgs};
pub use router::RouterArgs;
pub use tls::{TlsArgs, TlsConfig};
pub use worker::{WorkerArgs, WorkerConfig};

#[derive(Debug, Parser)]
#[command(name = "tritium", version, about = "A KServe v2 / Triton-compatible inference server")]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
    /// Write every option's resolved value and its source (command line, environment, default)
    /// as JSON to this file at start; secrets are redacted.
    #[arg(long, global = true, env = "DYN_DUMP_CONFIG_TO")]
    pub dump_config_to: Option<PathBuf>,
}

impl Cli {
    /// The command line, each option reading whichever of its variables is set (its own first;
    /// see [`env_alias`]).
    pub fn command_with_env() -> clap::Command {
        use clap::CommandFactory;
        env_alias::with_env_aliases(Cli::command(), env_alias::process_has)
    }

    /// Parses `args` (the program name first) as the `tritium` binary does.
    pub fn parse_args<I, T>(args: I) -> Result<Cli, clap::Error>
    where
        I: IntoIterator<Item = T>,
        T: Into<std::ffi::OsString> + Clone,
    {
        use clap::FromArgMatches;
        Cli::from_arg_matches(&Cli::command_with_env().try_get_matches_from(args)?)
    }
}

// Parsed once at start: the size of the serve variant costs nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Serve a model repository over gRPC (the built-in one when none is given).
    Serve(ServeArgs),
    /// Run engines in their own process and serve them to frontends over the worker request
    /// plane, registered in discovery.
    Worker(WorkerArgs),
}

#[derive(Debug, Clone, Args)]
pub struct ServeArgs {
    #[command(flatten)]
    pub repository: RepositoryArgs,
    #[command(flatten)]
    pub models: ModelArgs,
    #[command(flatten)]
    pub grpc: GrpcArgs,
    #[command(flatten)]
    pub http: HttpArgs,
    #[command(flatten)]
    pub metrics: MetricsArgs,
    #[command(flatten)]
    pub tls: TlsArgs,
    #[command(flatten)]
    pub logging: LoggingArgs,
    #[command(flatten)]
    pub runtime: runtime::RuntimeArgs,
    #[command(flatten)]
    pub engine: EngineArgs,
    #[command(flatten)]
    pub cluster: ClusterArgs,
    #[command(flatten)]
    pub router: RouterArgs,
    #[command(flatten)]
    pub prefill_load_model: aic::PrefillLoadModelArgs,
    #[command(flatten)]
    pub limits: LimitArgs,
    #[command(flatten)]
    pub openai: OpenAiArgs,
    #[command(flatten)]
    pub rate_limit: RateLimitArgs,
    #[command(flatten)]
    pub cache: CacheArgs,
    #[command(flatten)]
    pub trace: trace::TraceArgs,
    #[command(flatten)]
    pub auth: auth::AuthArgs,
    /// Seconds to let in-flight calls finish after SIGTERM or Ctrl-C before exiting anyway.
    #[arg(long, env = "TRITIUM_EXIT_TIMEOUT_SECS", default_value_t = 30)]
    pub exit_timeout_secs: u64,
    /// The name ServerMetadata answers with. Triton's clients (its health/metadata examples)
    /// check for "triton"; the version and extensions stay Tritium's. Triton's `--id` is an alias.
    #[arg(long, alias = "id", env = "TRITIUM_SERVER_NAME", default_value = DEFAULT_SERVER_NAME)]
    pub server_name: String,
}

/// What ServerMetadata names the server unless `--server-name` says otherwise: Triton's default.
pub const DEFAULT_SERVER_NAME: &str = "triton";

#[derive(Debug, Clone, Args)]
#[command(next_help_heading = "HTTP (OpenAI /v1, health, metrics)")]
pub struct HttpArgs {
    /// Serve the HTTP surface.
    #[arg(long, env = "TRITIUM_ALLOW_HTTP", default_value_t = true, action = clap::ArgAction::Set)]
    pub allow_http: bool,
    /// The address the HTTP port binds (an IP address, or `localhost`). `--http-address` is
    /// Tritium's name.
    #[arg(long = "http-host", visible_alias = "http-address", env = "DYN_HTTP_HOST", default_value_t = IpAddr::V4(Ipv4Addr::UNSPECIFIED),
          value_parser = parse_host)]
    pub http_address: IpAddr,
    #[arg(long, env = "DYN_HTTP_PORT", default_value_t = 8000)]
    pub http_port: u16,
    /// Serve HTTP on an inherited, already listening socket (file descriptor) instead of binding.
    #[arg(long, env = "TRITIUM_HTTP_LISTEN_FD")]
    pub http_listen_fd: Option<i32>,
}

impl GrpcArgs {
    /// Whether KServe gRPC is served at all.
    pub fn serves_grpc(&self) -> bool {
        self.kserve_grpc_server != Some(false) && !self.no_kserve_grpc_server
    }

    /// Whether gRPC gets a port of its own: always, unless `--kserve-grpc-server` was given the
    /// way Dynamo's frontend takes it (gRPC on `--http-port`) and no gRPC port was named.
    pub fn own_port(&self) -> bool {
        self.serves_grpc()
            && (self.kserve_grpc_server.is_none() || self.grpc_port.is_some() || self.grpc_listen_fd.is_some())
    }
}

/// An address to bind: an IP address, or `localhost` (the IPv4 loopback).
pub fn parse_host(text: &str) -> Result<IpAddr, String> {
    match text {
        "localhost" => Ok(IpAddr::V4(Ipv4Addr::LOCALHOST)),
        _ => text.parse().map_err(|_| format!("'{text}' is not an IP address (or localhost)")),
    }
}

/// The gRPC port when none is named: Triton's.
pub const DEFAULT_GRPC_PORT: u16 = 8001;

#[derive(Debug, Clone, Args)]
#[command(next_help_heading = "gRPC")]
pub struct GrpcArgs {
    /// Serve KServe gRPC. Unset (Tritium's default): on, on the gRPC port and on the HTTP port.
    /// Given (as Dynamo's frontend takes it): gRPC on --http-port, and on a port of its own only
    /// when --grpc-port or --grpc-listen-fd is given too. `false`: no gRPC anywhere.
    #[arg(long, env = "DYN_KSERVE_GRPC_SERVER", num_args = 0..=1, default_missing_value = "true",
          action = clap::ArgAction::Set, value_parser = clap::builder::BoolishValueParser::new())]
    pub kserve_grpc_server: Option<bool>,
    /// Turns --kserve-grpc-server off (it wins over --kserve-grpc-server and its variable): no gRPC port.
    #[arg(long)]
    pub no_kserve_grpc_server: bool,
    #[arg(long, env = "TRITIUM_GRPC_ADDRESS", default_value_t = IpAddr::V4(Ipv4Addr::UNSPECIFIED))]
    pub grpc_address: IpAddr,
    /// The gRPC port [default: 8001].
    #[arg(long, env = "TRITIUM_GRPC_PORT")]
    pub grpc_port: Option<u16>,
    /// Serve on an inherited, already listening socket (file descriptor) instead of binding.
    #[arg(long, env = "TRITIUM_GRPC_LISTEN_FD")]
    pub grpc_listen_fd: Option<i32>,
    /// Largest message accepted or sent, in bytes (default 2 GiB - 1, as Triton).
    #[arg(long, env = "TRITIUM_GRPC_MAX_MESSAGE_SIZE", default_value_t = i32::MAX as usize)]
    pub grpc_max_message_size: usize,
    /// HTTP/2 connection-level flow-control window, bytes (alias env DYN_GRPC_INITIAL_CONNECTION_WINDOW_SIZE;
    /// default 16 MiB).
    #[arg(long, env = "TRITIUM_GRPC_INITIAL_CONNECTION_WINDOW_SIZE")]
    pub grpc_initial_connection_window_size: Option<u32>,
    /// HTTP/2 stream-level flow-control window, bytes (alias env DYN_GRPC_INITIAL_STREAM_WINDOW_SIZE;
    /// default 16 MiB).
    #[arg(long, env = "TRITIUM_GRPC_INITIAL_STREAM_WINDOW_SIZE")]
    pub grpc_initial_stream_window_size: Option<u32>,
    /// Let HTTP/2 size its windows from a bandwidth-delay estimate (overrides the fixed sizes).
    #[arg(long, env = "TRITIUM_GRPC_ADAPTIVE_WINDOW")]
    pub grpc_adaptive_window: bool,
    /// Largest HTTP/2 frame the server accepts, bytes (default 1 MiB).
    #[arg(long, env = "TRITIUM_GRPC_MAX_FRAME_SIZE")]
    pub grpc_max_frame_size: Option<u32>,
    #[command(flatten)]
    pub keepalive: KeepaliveArgs,
    /// Milliseconds of silence before the kernel probes a connection (TCP keepalive); 0 disables.
    /// The default, 2 hours, is Triton's keepalive time.
    #[arg(long, env = "TRITIUM_GRPC_TCP_KEEPALIVE_TIME", default_value_t = 7_200_000)]
    pub grpc_tcp_keepalive_time: u64,
    /// Milliseconds after which a connection is asked to go away (GOAWAY) so load balancers can
    /// rebalance; 0 disables.
    #[arg(long, env = "TRITIUM_GRPC_MAX_CONNECTION_AGE", default_value_t = 0)]
    pub grpc_max_connection_age: u64,
    /// Milliseconds a connection past its age may take to finish its calls.
    #[arg(long, env = "TRITIUM_GRPC_MAX_CONNECTION_AGE_GRACE", default_value_t = 0)]
    pub grpc_max_connection_age_grace: u64,
    /// Compress responses for clients that accept it. Off by default, as in Triton: clients
    /// such as perf_analyzer advertise gzip and deflate, and compressing small tensors costs far
    /// more CPU than it saves.
    #[arg(long, env = "TRITIUM_GRPC_RESPONSE_COMPRESSION", value_enum, default_value = "none")]
    pub grpc_response_compression: ResponseCompression,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, ValueEnum)]
pub enum ResponseCompression {
    #[default]
    None,
    Gzip,
    Deflate,
    Zstd,
}

#[derive(Debug, Clone, Args)]
#[command(next_help_heading = "Logging")]
pub struct LoggingArgs {
    /// Verbose logging level: 0 is off, 1 debug, 2 and above trace.
    #[arg(long, env = "TRITIUM_LOG_VERBOSE", default_value_t = 0)]
    pub log_verbose: u32,
    #[arg(long, env = "TRITIUM_LOG_INFO", default_value_t = true, action = clap::ArgAction::Set)]
    pub log_info: bool,
    #[arg(long, env = "TRITIUM_LOG_WARNING", default_value_t = true, action = clap::ArgAction::Set)]
    pub log_warning: bool,
    #[arg(long, env = "TRITIUM_LOG_ERROR", default_value_t = true, action = clap::ArgAction::Set)]
    pub log_error: bool,
}

/// HTTP/2 and connection settings of the gRPC listener.
#[derive(Debug, Clone, PartialEq)]
pub struct TransportConfig {
    pub max_message_size: usize,
    pub initial_connection_window_size: Option<u32>,
    pub initial_stream_window_size: Option<u32>,
    pub adaptive_window: bool,
    pub max_frame_size: Option<u32>,
    /// The server's keepalive pings and its policy on the client's.
    pub keepalive: KeepaliveConfig,
    /// Idle time before the kernel probes a connection.
    pub tcp_keepalive: Option<Duration>,
    pub max_connection_age: Option<Duration>,
    pub max_connection_age_grace: Option<Duration>,
    pub response_compression: ResponseCompression,
    /// Connections open at once.
    pub max_connections: usize,
    /// Streams one connection may have open; `None` for no limit.
    pub max_concurrent_streams: Option<u32>,
    /// Request bytes being received, server-wide.
    pub max_buffered_request_bytes: u64,
    /// A connection that has made no call by then is closed.
    pub header_timeout: Option<Duration>,
    /// A connection that received nothing for this long is closed.
    pub idle_timeout: Option<Duration>,
    /// gRPC calls are also served on the HTTP port (HTTP/2 requests of content type
    /// `application/grpc`), as Dynamo's frontend serves them with `--kserve-grpc-server`.
    pub on_http_port: bool,
}

/// HTTP/2 flow-control windows, connection and stream: a 4 MiB tensor crosses in one window
/// instead of waiting for four WINDOW_UPDATEs (bench/README.md, "HTTP/2 windows"). A connection
/// holds at most this much that the server has not read yet.
pub const DEFAULT_WINDOW: u32 = 16 << 20;

/// Largest frame clients may send: large tensors arrive in 64x fewer frames than with HTTP/2's
/// 16 KiB, each one copied once.
pub const DEFAULT_MAX_FRAME: u32 = 1 << 20;

impl Default for TransportConfig {
    fn default() -> Self {
        TransportConfig {
            max_message_size: i32::MAX as usize,
            initial_connection_window_size: Some(DEFAULT_WINDOW),
            initial_stream_window_size: Some(DEFAULT_WINDOW),
            adaptive_window: false,
            max_frame_size: Some(DEFAULT_MAX_FRAME),
            keepalive: KeepaliveConfig::default(),
            tcp_keepalive: Some(Duration::from_secs(7200)),
            max_connection_age: None,
            max_connection_age_grace: None,
            response_compression: ResponseCompression::None,
            max_connections: limits::DEFAULT_MAX_CONNECTIONS,
            max_concurrent_streams: Some(limits::DEFAULT_MAX_STREAMS),
            max_buffered_request_bytes: limits::DEFAULT_BUFFERED_BYTES,
            header_timeout: Some(Duration::from_secs(10)),
            idle_timeout: Some(Duration::from_secs(300)),
            on_http_port: true,
        }
    }
}

/// Everything the server needs, built once from the command line (or by hand when embedding).
#[derive(Debug, Clone, Default)]
pub struct ServerConfig {
    pub repository: RepositoryOptions,
    pub transport: TransportConfig,
    /// The backend crates' settings (language-model engine bounds, ONNX Runtime, Python).
    pub backends: crate::backends::BackendsConfig,
    /// Discovery and events (in memory by default).
    pub cluster: ClusterConfig,
    pub router: RouterOptions,
    /// Shared memory, model-load deadline and restricted protocols.
    pub limits: Limits,
    /// Connections, deadlines and body size of the HTTP port.
    pub http_limits: HttpLimits,
    /// What the metrics port reports, and how often it samples the host.
    pub metrics: crate::metrics::MetricsConfig,
    /// TLS of the gRPC and HTTP ports (off by default).
    pub tls: TlsConfig,
    /// ServerMetadata's name (`--server-name`); empty: [`DEFAULT_SERVER_NAME`].
    pub server_name: String,
    /// Output parsers, the Anthropic API and the Responses store.
    pub openai: OpenAiSettings,
    /// Request tracing: Triton's `--trace-config`, or Dynamo's `OTEL_*` variables.
    pub trace: trace::TraceConfig,
    /// `--lora-dir`: where LoRA adapters loaded over HTTP must lie (`None`: no loading at run time).
    pub lora_dir: Option<std::path::PathBuf>,
    /// `--api-key`, `--api-key-file`: the keys every inference door asks for (`None`: open).
    pub api_keys: Option<std::sync::Arc<crate::api_keys::ApiKeys>>,
}

fn millis(ms: u64) -> Option<Duration> {
    (ms > 0).then(|| Duration::from_millis(ms))
}

impl ServeArgs {
    /// Parses `tritium serve` arguments, with Dynamo's window-size variables as fallbacks.
    pub fn server_config(&self) -> Result<ServerConfig, String> {
        self.server_config_with_env(|name| std::env::var(name).ok())
    }

    /// [`ServeArgs::server_config`] reading the fallback variables through `env`.
    pub fn server_config_with_env(&self, env: impl Fn(&str) -> Option<String>) -> Result<ServerConfig, String> {
        let grpc = &self.grpc;
        let env_u32 = |name: &str| env(name).and_then(|v| v.trim().parse::<u32>().ok());
        let cluster = self.cluster.config()?;
        let mut router = self.router.options(cluster.lease_ttl)?;
        router.engine_limits = cluster.engine_limits;
        self.prefill_load_model.check()?;
        if router.replica_sync && !matches!(cluster.events, tritium_cluster::events::EventsConfig::Nats { .. }) {
            // Frontends are not in discovery, so ZeroMQ subscribers would never find one another.
            return Err("--router-replica-sync shares routing state between frontends over NATS: give --event-plane nats".into());
        }
        // A frontend of remote workers serves the built-in models only when asked to load them.
        let builtins = !cluster.is_distributed();
        let limits = &self.limits;
        Ok(ServerConfig {
            server_name: self.server_name.clone(),
            openai: self.openai.settings(&env)?,
            trace: self.trace.config(&env)?,
            lora_dir: self.models.lora_dir.clone(),
            api_keys: self.auth.keys()?,
            tls: self.tls.config()?,
            metrics: self.metrics.config()?,
            backends: crate::backends::BackendsConfig {
                engines: cluster.engine_limits,
                ..self.repository.backends(&self.models)?
            },
            http_limits: limits.http_limits(),
            limits: limits.limits()?,
            repository: RepositoryOptions {
                rate_limiter: self.rate_limit.limiter()?,
                response_cache: self.cache.build()?,
                ..repository_options(&self.repository, &self.models, &self.engine, builtins)?
            },
            router,
            cluster,
            transport: TransportConfig {
                max_message_size: grpc.grpc_max_message_size,
                initial_connection_window_size: grpc
                    .grpc_initial_connection_window_size
                    .or_else(|| env_u32("DYN_GRPC_INITIAL_CONNECTION_WINDOW_SIZE"))
                    .or(Some(DEFAULT_WINDOW)),
                initial_stream_window_size: grpc
                    .grpc_initial_stream_window_size
                    .or_else(|| env_u32("DYN_GRPC_INITIAL_STREAM_WINDOW_SIZE"))
                    .or(Some(DEFAULT_WINDOW)),
                adaptive_window: grpc.grpc_adaptive_window,
                max_frame_size: grpc.grpc_max_frame_size.or(Some(DEFAULT_MAX_FRAME)),
                keepalive: grpc.keepalive.config(),
                tcp_keepalive: millis(grpc.grpc_tcp_keepalive_time),
                max_connection_age: millis(grpc.grpc_max_connection_age),
                max_connection_age_grace: millis(grpc.grpc_max_connection_age_grace),
                response_compression: grpc.grpc_response_compression,
                max_connections: limits.grpc_max_connections.max(1),
                max_concurrent_streams: (limits.grpc_max_concurrent_streams > 0).then_some(limits.grpc_max_concurrent_streams),
                max_buffered_request_bytes: limits.max_buffered_request_bytes,
                header_timeout: millis(limits.grpc_header_timeout),
                idle_timeout: millis(limits.grpc_idle_timeout),
                on_http_port: grpc.serves_grpc(),
            },
        })
    }

    pub fn grpc_addr(&self) -> SocketAddr {
        SocketAddr::new(self.grpc.grpc_address, self.grpc.grpc_port.unwrap_or(DEFAULT_GRPC_PORT))
    }

    pub fn http_addr(&self) -> SocketAddr {
        SocketAddr::new(self.http.http_address, self.http.http_port)
    }
}

#[cfg(test)]
mod tests {
    use tritium_worker::ControlMode;

    use super::*;

    fn parse(args: &[&str]) -> ServeArgs {
        let cli = Cli::try_parse_from(std::iter::once("tritium").chain(args.iter().copied())).expect("parses");
        match cli.command {
            Command::Serve(serve) => serve,
            Command::Worker(_) => panic!("expected serve"),
        }
    }

    #[test]
    fn defaults_follow_triton() {
        let serve = parse(&["serve"]);
        assert_eq!(serve.grpc_addr().port(), 8001);
        let config = serve.server_config().unwrap();
        assert_eq!(config.transport.max_message_size, i32::MAX as usize);
        assert!(config.repository.paths.is_empty());
        assert_eq!(config.repository.control_mode, ControlMode::None);
    }

    #[test]
    fn a_responses_store_ttl_past_a_year_is_refused() {
        assert!(Cli::try_parse_from(["tritium", "serve", "--responses-store-ttl-secs", "31536000"]).is_ok());
        for bad in ["31536001", "18446744073709551615", "0"] {
            assert!(Cli::try_parse_from(["tritium", "serve", "--responses-store-ttl-secs", bad]).is_err(), "{bad}");
        }
    }

    /// A backend's own flags, on a server built without that backend (`--no-default-features`,
    /// which CI tests too), are refused by name rather than ignored.
    #[test]
    #[cfg(not(any(feature = "llm", feature = "onnxruntime", feature = "python")))]
    fn a_backend_flag_without_its_backend_is_refused() {
        let refused = |args: &[&str]| parse(args).server_config().expect_err("refused").to_string();
        assert_eq!(
            refused(&["serve", "--onnxruntime-library", "/lib/libonnxruntime.so"]),
            "--onnxruntime-library: this server was built without the onnxruntime feature"
        );
        assert_eq!(
            refused(&["serve", "--python-interpreter", "/usr/bin/python3"]),
            "--python-interpreter: this server was built without the python feature"
        );
        assert_eq!(refused(&["serve", "--engine", "mock"]), "--engine mock: this server was built without the llm feature");
        let model = std::env::temp_dir();
        let model = model.to_string_lossy();
        assert_eq!(
            refused(&["serve", "--model-path", &model]),
            format!("--model-path {model}: this server was built without the llm feature")
        );
        assert!(parse(&["serve"]).server_config().is_ok(), "the built-in repository alone serves");
    }

    #[test]
    fn explicit_mode_with_load_all() {
        let serve = parse(&["serve", "--model-control-mode=explicit", "--load-model=*", "--load-model", "a"]);
        let config = serve.server_config().unwrap();
        assert_eq!(config.repository.control_mode, ControlMode::Explicit);
        assert_eq!(config.repository.startup_models, vec!["*".to_string(), "a".to_string()]);
    }

    #[test]
    fn on_demand_mode_with_its_limits_and_pins() {
        let serve = parse(&["serve", "--model-control-mode=on-demand", "--max-loaded-models=2", "--pin-model=a,b"]);
        let config = serve.server_config().unwrap();
        assert_eq!(config.repository.control_mode, ControlMode::OnDemand);
        assert_eq!(config.repository.on_demand.max_loaded_models, Some(2));
        assert_eq!(config.repository.on_demand.memory_budget, None);
        assert_eq!(config.repository.on_demand.pinned, ["a", "b"]);
        let cli = Cli::try_parse_from(["tritium", "worker", "--model-control-mode", "on-demand"]).expect("parses");
        let Command::Worker(worker) = cli.command else { panic!("expected worker") };
        assert!(worker.worker_config().expect_err("refused").contains("a worker serves only the models it has loaded"));
    }

    #[test]
    fn dynamo_window_variables_are_aliases_and_flags_win() {
        let env = |name: &str| match name {
            "DYN_GRPC_INITIAL_CONNECTION_WINDOW_SIZE" => Some("33554432".to_string()),
            "DYN_GRPC_INITIAL_STREAM_WINDOW_SIZE" => Some("4194304".to_string()),
            _ => None,
        };
        let config = parse(&["serve"]).server_config_with_env(env).unwrap();
        assert_eq!(config.transport.initial_connection_window_size, Some(32 << 20));
        assert_eq!(config.transport.initial_stream_window_size, Some(4 << 20));
        let config = parse(&["serve", "--grpc-initial-stream-window-size=65536"]).server_config_with_env(env).unwrap();
        assert_eq!(config.transport.initial_stream_window_size, Some(65536));
    }

    #[test]
    fn window_sizes_from_flags() {
        let serve =
            parse(&["serve", "--grpc-initial-connection-window-size", "16777216", "--grpc-initial-stream-window-size=1048576"]);
        let config = serve.server_config().unwrap();
        assert_eq!(config.transport.initial_connection_window_size, Some(16 << 20));
        assert_eq!(config.transport.initial_stream_window_size, Some(1 << 20));
    }

    #[test]
    fn the_tokenizing_budget_has_defaults_and_bounds() {
        use tritium_openai_bridge::preprocess::{DEFAULT_MAX_TOKENIZING_BYTES, PreprocessLimits};
        let config = parse(&["serve"]).server_config().unwrap();
        assert_eq!(config.limits.preprocess, PreprocessLimits::default());
        assert_eq!(config.limits.preprocess.max_bytes, DEFAULT_MAX_TOKENIZING_BYTES);
        let serve = parse(&["serve", "--max-tokenizing-bytes", "536870912", "--max-concurrent-tokenizations", "3"]);
        let limits = serve.server_config().unwrap().limits.preprocess;
        assert_eq!(limits, PreprocessLimits { max_bytes: 512 << 20, max_concurrent: 3 });
        for bad in [&["serve", "--max-concurrent-tokenizations", "0"][..], &["serve", "--max-tokenizing-bytes", "1024"]] {
            assert!(Cli::try_parse_from(std::iter::once("tritium").chain(bad.iter().copied())).is_err(), "{bad:?}");
        }
    }
}
