//! Options of a deployment beyond one process: discovery, events, routing, the engine choice,
//! and `tritium worker`'s own listener. Every option is also an environment variable.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, ValueEnum};
#[cfg(feature = "llm")]
use tritium_llm::MockOptions;
use tritium_worker::DeclaredModel;

use crate::discovery::{DisaggregationMode, DiscoveryConfig, NamespaceScope};
use crate::events::EventsConfig;
use crate::remote::TransferOptions;
use crate::routing::kv_index::KvScoring;
use crate::routing::{RouterMode, RouterOptions};

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum DiscoveryKind {
    /// In this process: the embedded default, no external service.
    Mem,
    /// A folder shared by processes on one machine.
    File,
    /// A real etcd: leases with a TTL, watches.
    Etcd,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum EventsKind {
    /// In this process only.
    None,
    /// A NATS server.
    Nats,
}

#[derive(Debug, Clone, Args)]
#[command(next_help_heading = "Cluster (discovery and events)")]
pub struct ClusterArgs {
    /// Where workers register and frontends find them.
    #[arg(long, env = "TRITIUM_DISCOVERY", value_enum, default_value = "mem")]
    pub discovery: DiscoveryKind,
    /// Keeps deployments sharing an etcd, a folder or a NATS server apart.
    #[arg(long, env = "TRITIUM_NAMESPACE", default_value = "tritium")]
    pub namespace: String,
    /// A frontend's discovery scope: the workers and events of every namespace whose name starts
    /// with this (e.g. `prod-` for `prod-blue` and `prod-green` during a rolling update; empty for
    /// all namespaces) instead of --namespace alone. Workers always register in --namespace.
    #[arg(long, env = "TRITIUM_NAMESPACE_PREFIX")]
    pub namespace_prefix: Option<String>,
    /// etcd client URLs, for --discovery etcd.
    #[arg(long, env = "TRITIUM_ETCD_ENDPOINTS", value_delimiter = ',')]
    pub etcd_endpoints: Vec<String>,
    /// The shared folder, for --discovery file.
    #[arg(long, env = "TRITIUM_DISCOVERY_DIR")]
    pub discovery_dir: Option<PathBuf>,
    /// Seconds a worker's registration outlives its last keep-alive (a killed worker disappears
    /// after at most this long).
    #[arg(long, env = "TRITIUM_LEASE_TTL_SECS", default_value_t = 10)]
    pub lease_ttl_secs: u64,
    /// Where workers publish KV-cache events and load.
    #[arg(long, env = "TRITIUM_EVENTS", value_enum, default_value = "none")]
    pub events: EventsKind,
    /// The NATS server, for --events nats.
    #[arg(long, env = "TRITIUM_NATS_URL")]
    pub nats_url: Option<String>,
}

/// Discovery and events, resolved.
#[derive(Debug, Clone)]
pub struct ClusterConfig {
    pub discovery: DiscoveryConfig,
    /// The namespace this process registers and publishes in, and those it watches.
    pub scope: NamespaceScope,
    pub lease_ttl: Duration,
    pub events: EventsConfig,
}

impl Default for ClusterConfig {
    fn default() -> ClusterConfig {
        ClusterConfig {
            discovery: DiscoveryConfig::Memory,
            scope: NamespaceScope::own("tritium"),
            lease_ttl: Duration::from_secs(10),
            events: EventsConfig::None,
        }
    }
}

impl ClusterConfig {
    /// Whether workers may live in other processes.
    pub fn is_distributed(&self) -> bool {
        !matches!(self.discovery, DiscoveryConfig::Memory)
    }
}

impl ClusterArgs {
    pub fn config(&self) -> Result<ClusterConfig, String> {
        let discovery = match self.discovery {
            DiscoveryKind::Mem => DiscoveryConfig::Memory,
            DiscoveryKind::File => {
                DiscoveryConfig::File { dir: self.discovery_dir.clone().ok_or("--discovery file needs --discovery-dir")? }
            }
            DiscoveryKind::Etcd if self.etcd_endpoints.is_empty() => return Err("--discovery etcd needs --etcd-endpoints".into()),
            DiscoveryKind::Etcd => DiscoveryConfig::Etcd { endpoints: self.etcd_endpoints.clone() },
        };
        let events = match (self.events, &self.nats_url) {
            (EventsKind::None, _) => EventsConfig::None,
            (EventsKind::Nats, Some(url)) => EventsConfig::Nats { url: url.clone() },
            (EventsKind::Nats, None) => return Err("--events nats needs --nats-url".into()),
        };
        if self.lease_ttl_secs == 0 {
            return Err("--lease-ttl-secs must be at least 1".into());
        }
        Ok(ClusterConfig {
            discovery,
            scope: NamespaceScope { own: self.namespace.clone(), watch_prefix: self.namespace_prefix.clone() },
            lease_ttl: Duration::from_secs(self.lease_ttl_secs),
            events,
        })
    }
}

#[derive(Debug, Clone, Args)]
#[command(next_help_heading = "Routing")]
pub struct RouterArgs {
    /// Token sent to remote workers on the worker plane (they must be started with the same).
    #[arg(long = "worker-token", env = "TRITIUM_WORKER_TOKEN", hide_env_values = true)]
    pub worker_token: Option<String>,
    /// How a request's worker is chosen among those serving its model.
    #[arg(long, env = "TRITIUM_ROUTER_MODE", value_enum, default_value = "round-robin")]
    pub router_mode: RouterMode,
    /// Times a language-model stream whose worker died is continued on another worker; 0 ends
    /// such streams with UNAVAILABLE.
    #[arg(long, env = "TRITIUM_MIGRATION_LIMIT", default_value_t = 3)]
    pub migration_limit: u32,
    /// Tokens per KV block (must match the workers' engines).
    #[arg(long, env = "TRITIUM_KV_BLOCK_SIZE", default_value_t = tritium_backend_api::kv::DEFAULT_KV_BLOCK_SIZE)]
    pub kv_block_size: usize,
    /// kv mode: weight of the cached-prefix share in a worker's score.
    #[arg(long, env = "TRITIUM_KV_OVERLAP_WEIGHT", default_value_t = 1.0)]
    pub kv_overlap_weight: f64,
    /// kv mode: weight of the load in a worker's score.
    #[arg(long, env = "TRITIUM_KV_LOAD_WEIGHT", default_value_t = 1.0)]
    pub kv_load_weight: f64,
    /// kv mode: 0 picks the best score; higher values sample from softmax(score / temperature).
    #[arg(long, env = "TRITIUM_KV_TEMPERATURE", default_value_t = 0.0)]
    pub kv_temperature: f64,
    /// A language-model worker whose KV cache is fuller than this fraction (0..1] is busy: the
    /// router passes it over, and refuses requests (503, Retry-After) when all are. Per model:
    /// `POST /busy_threshold`. Unset: workers are never busy.
    #[arg(long, env = "DYN_ACTIVE_DECODE_BLOCKS_THRESHOLD")]
    pub active_decode_blocks_threshold: Option<f64>,
    /// With prefill workers (`tritium worker --disaggregation-mode prefill`) serving a model: a
    /// prompt whose part the chosen decode worker lacks is longer than this many tokens is
    /// prefilled on a prefill worker; shorter ones are prefilled where they decode.
    #[arg(long, env = "TRITIUM_MAX_LOCAL_PREFILL_LENGTH", default_value_t = crate::routing::policy::DEFAULT_MAX_LOCAL_PREFILL_LENGTH)]
    pub max_local_prefill_length: usize,
}

impl RouterArgs {
    pub fn options(&self, lease_ttl: Duration) -> Result<RouterOptions, String> {
        if self.kv_block_size == 0 {
            return Err("--kv-block-size must be at least 1".into());
        }
        if !(self.kv_temperature >= 0.0 && self.kv_temperature.is_finite()) {
            return Err("--kv-temperature must be a finite number >= 0".into());
        }
        Ok(RouterOptions {
            mode: self.router_mode,
            kv: KvScoring {
                overlap_weight: self.kv_overlap_weight,
                load_weight: self.kv_load_weight,
                temperature: self.kv_temperature,
            },
            kv_block_size: self.kv_block_size,
            migration_limit: self.migration_limit,
            suspect_for: lease_ttl,
            worker_token: self.worker_token.clone().filter(|t| !t.is_empty()),
            busy_threshold: self
                .active_decode_blocks_threshold
                .map(crate::routing::busy::BusyThresholds::check)
                .transpose()
                .map_err(|e| format!("--active-decode-blocks-threshold: {e}"))?,
            max_local_prefill_length: self.max_local_prefill_length,
        })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum EngineKind {
    /// Real models on candle (CPU, or CUDA when built with it).
    Candle,
    /// Simulated prefill and decode times with a real block KV cache, for routing tests.
    Mock,
}

#[derive(Debug, Clone, Args)]
#[command(next_help_heading = "Engine")]
pub struct EngineArgs {
    /// `mock` serves one simulated language model per --model-name (default name: mock-llm).
    #[arg(long, env = "TRITIUM_ENGINE", value_enum, default_value = "candle")]
    pub engine: EngineKind,
    #[cfg(feature = "llm")]
    #[arg(long, env = "TRITIUM_MOCK_PREFILL_US_PER_TOKEN", default_value_t = MockOptions::default().prefill_us_per_token)]
    pub mock_prefill_us_per_token: u64,
    #[cfg(feature = "llm")]
    #[arg(long, env = "TRITIUM_MOCK_DECODE_MS_PER_STEP", default_value_t = MockOptions::default().decode_ms_per_step)]
    pub mock_decode_ms_per_step: u64,
    #[cfg(feature = "llm")]
    #[arg(long, env = "TRITIUM_MOCK_KV_BLOCKS", default_value_t = MockOptions::default().kv_blocks)]
    pub mock_kv_blocks: usize,
    #[cfg(feature = "llm")]
    #[arg(long, env = "TRITIUM_MOCK_BLOCK_SIZE", default_value_t = MockOptions::default().block_size)]
    pub mock_block_size: usize,
    #[cfg(feature = "llm")]
    #[arg(long, env = "TRITIUM_MOCK_MAX_SEQUENCES", default_value_t = MockOptions::default().max_sequences)]
    pub mock_max_sequences: usize,
}

impl EngineArgs {
    /// The mock models `--engine mock` declares (none for candle).
    #[cfg(not(feature = "llm"))]
    pub fn mock_models(&self, _names: &[String]) -> Result<Vec<DeclaredModel>, String> {
        match self.engine {
            EngineKind::Mock => Err("--engine mock: this server was built without the llm feature".to_string()),
            EngineKind::Candle => Ok(Vec::new()),
        }
    }

    /// The mock models `--engine mock` declares (none for candle).
    #[cfg(feature = "llm")]
    pub fn mock_models(&self, names: &[String], policy: tritium_llm::SchedulingPolicy) -> Result<Vec<DeclaredModel>, String> {
        use tritium_llm::mock_config_text;
        if self.engine != EngineKind::Mock {
            return Ok(Vec::new());
        }
        let options = MockOptions {
            prefill_us_per_token: self.mock_prefill_us_per_token,
            decode_ms_per_step: self.mock_decode_ms_per_step,
            kv_blocks: self.mock_kv_blocks,
            block_size: self.mock_block_size,
            max_sequences: self.mock_max_sequences,
            scheduling_policy: policy,
            ..MockOptions::default()
        };
        let default_name = ["mock-llm".to_string()];
        let names = if names.is_empty() { &default_name[..] } else { names };
        let declared = |name: &String| DeclaredModel { name: name.clone(), config_text: mock_config_text(name, &options) };
        Ok(names.iter().map(declared).collect())
    }
}

#[derive(Debug, Clone, Args)]
#[command(next_help_heading = "Worker request plane")]
pub struct WorkerListenArgs {
    /// Address the worker plane binds: loopback unless told otherwise. Any other address needs
    /// --worker-token, so only frontends that hold it are served.
    #[arg(long, env = "TRITIUM_WORKER_ADDRESS", default_value_t = IpAddr::V4(Ipv4Addr::LOCALHOST))]
    pub worker_address: IpAddr,
    /// Token frontends must send on every worker-plane call (`authorization: Bearer <token>`).
    #[arg(long = "worker-token", env = "TRITIUM_WORKER_TOKEN", hide_env_values = true)]
    pub worker_token: Option<String>,
    #[arg(long, env = "TRITIUM_WORKER_PORT", default_value_t = 8011)]
    pub worker_port: u16,
    /// Serve on an inherited, already listening socket (file descriptor) instead of binding.
    #[arg(long, env = "TRITIUM_WORKER_LISTEN_FD")]
    pub worker_listen_fd: Option<i32>,
    /// host:port frontends dial (default: the bound address, with 127.0.0.1 for 0.0.0.0).
    #[arg(long, env = "TRITIUM_ADVERTISE_ADDRESS")]
    pub advertise_address: Option<String>,
    /// This worker's id in discovery (default: host name, process id and a random suffix).
    #[arg(long, env = "TRITIUM_WORKER_ID")]
    pub worker_id: Option<String>,
}

impl WorkerListenArgs {
    pub fn addr(&self) -> SocketAddr {
        SocketAddr::new(self.worker_address, self.worker_port)
    }

    /// The URI frontends dial to reach a worker bound at `bound`.
    pub fn advertised_uri(&self, bound: SocketAddr) -> String {
        match &self.advertise_address {
            Some(address) if address.contains("://") => address.clone(),
            Some(address) => format!("http://{address}"),
            None if bound.ip().is_unspecified() => format!("http://127.0.0.1:{}", bound.port()),
            None => format!("http://{bound}"),
        }
    }
}

#[derive(Debug, Clone, Args)]
#[command(next_help_heading = "Disaggregated prefill and decode")]
pub struct DisaggregationArgs {
    /// This worker's part: `agg` prefills and decodes; `prefill` computes prompts' KV blocks for
    /// decode workers; `decode` generates, taking long prompts' blocks from a prefill worker.
    #[arg(long, env = "TRITIUM_DISAGGREGATION_MODE", value_enum, default_value = "agg")]
    pub disaggregation_mode: DisaggregationMode,
    /// Prefills for other workers this worker runs at once; beyond it they are refused and the
    /// decode worker computes the prompt itself.
    #[arg(long, env = "TRITIUM_MAX_REMOTE_PREFILLS", default_value_t = TransferOptions::default().max_prefills)]
    pub max_remote_prefills: usize,
    /// Seconds a decode worker waits for a prompt's KV blocks before computing the rest itself.
    #[arg(long, env = "TRITIUM_KV_TRANSFER_TIMEOUT_SECS", default_value_t = TransferOptions::default().timeout.as_secs())]
    pub kv_transfer_timeout_secs: u64,
}

impl DisaggregationArgs {
    /// The transfer bounds, with the worker-plane `token` sent to prefill workers.
    pub fn transfer_options(&self, token: Option<String>, max_message_size: usize) -> Result<TransferOptions, String> {
        if self.max_remote_prefills == 0 || self.kv_transfer_timeout_secs == 0 {
            return Err("--max-remote-prefills and --kv-transfer-timeout-secs must be at least 1".into());
        }
        Ok(TransferOptions {
            max_prefills: self.max_remote_prefills,
            timeout: Duration::from_secs(self.kv_transfer_timeout_secs),
            token,
            max_message_size,
        })
    }
}
