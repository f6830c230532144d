//! Options of a deployment beyond one process: discovery, events, routing, the engine choice,
//! and `tritium worker`'s own listener. Every option is also an environment variable.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, ValueEnum};
#[cfg(feature = "llm")]
use tritium_llm::MockOptions;
use tritium_worker::DeclaredModel;

use tritium_cluster::discovery::{DisaggregationMode, DiscoveryConfig, NamespaceScope};
use tritium_cluster::events::EventsConfig;
use tritium_cluster::remote::TransferOptions;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum DiscoveryKind {
    /// In this process: the embedded default, no external service.
    Mem,
    /// A folder shared by processes on one machine.
    File,
    /// A real etcd: leases with a TTL, watches.
    Etcd,
    /// The Kubernetes API (Dynamo's `kubernetes`).
    Kubernetes,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum EventsKind {
    /// In this process only.
    None,
    /// A NATS server.
    Nats,
    /// ZeroMQ sockets between the processes, found through discovery (Dynamo's default).
    Zmq,
}

/// `--request-plane`: how a frontend reaches its workers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum RequestPlane {
    /// Each worker's own listener (gRPC over HTTP/2 on TCP).
    Tcp,
    /// NATS subjects.
    Nats,
}

#[derive(Debug, Clone, Args)]
#[command(next_help_heading = "Cluster (discovery and events)")]
pub struct ClusterArgs {
    /// Where workers register and frontends find them (Dynamo's default is etcd; Tritium's is
    /// mem, so one process needs no service). `--discovery` is Tritium's name for it.
    #[arg(
        long = "discovery-backend",
        visible_alias = "discovery",
        env = "DYN_DISCOVERY_BACKEND",
        value_enum,
        default_value = "mem"
    )]
    pub discovery: DiscoveryKind,
    /// Keeps deployments sharing an etcd, a folder or a NATS server apart.
    #[arg(long, env = "DYN_NAMESPACE", default_value = "tritium")]
    pub namespace: String,
    /// A frontend's discovery scope: the workers and events of every namespace whose name starts
    /// with this (e.g. `prod-` for `prod-blue` and `prod-green` during a rolling update; empty for
    /// all namespaces) instead of --namespace alone. Workers always register in --namespace.
    #[arg(long, env = "DYN_NAMESPACE_PREFIX")]
    pub namespace_prefix: Option<String>,
    /// etcd client URLs, for --discovery-backend etcd (also Dynamo's `ETCD_ENDPOINTS`).
    #[arg(long, env = "TRITIUM_ETCD_ENDPOINTS", value_delimiter = ',')]
    pub etcd_endpoints: Vec<String>,
    /// The shared folder, for --discovery-backend file (also Dynamo's `DYN_FILE_KV`; default:
    /// `dynamo_store_kv` in the temporary folder, as Dynamo).
    #[arg(long, env = "TRITIUM_DISCOVERY_DIR")]
    pub discovery_dir: Option<PathBuf>,
    /// With --discovery-backend kubernetes: this pod's name, which a worker's DynamoWorkerMetadata
    /// object is named after (set it from the Downward API, as Dynamo's `POD_NAME`).
    #[arg(long, env = "POD_NAME")]
    pub pod_name: Option<String>,
    /// With --discovery-backend kubernetes: the Kubernetes namespace to register and watch in
    /// (default: the kubeconfig's, or the service account's).
    #[arg(long, env = "POD_NAMESPACE")]
    pub pod_namespace: Option<String>,
    /// With --discovery-backend kubernetes: this pod's uid, making the pod the owner of the
    /// worker's object so Kubernetes deletes it with the pod.
    #[arg(long, env = "POD_UID")]
    pub pod_uid: Option<String>,
    /// Seconds a worker's registration outlives its last keep-alive (a killed worker disappears
    /// after at most this long; Kubernetes discovery follows pod readiness instead).
    #[arg(long, env = "TRITIUM_LEASE_TTL_SECS", default_value_t = 10)]
    pub lease_ttl_secs: u64,
    /// Where workers publish KV-cache events and load. Unset: `zmq` with file or etcd discovery
    /// (as Dynamo), in the process only with mem. `--events` is Tritium's name for it.
    #[arg(long = "event-plane", visible_alias = "events", env = "DYN_EVENT_PLANE", value_enum)]
    pub events: Option<EventsKind>,
    /// The address a process binds its ZeroMQ event socket on (--event-plane zmq); subscribers
    /// learn the endpoint from discovery.
    #[arg(long, env = "DYN_EVENT_PLANE_HOST", default_value = "127.0.0.1", value_parser = crate::config::parse_host)]
    pub event_plane_host: IpAddr,
    /// ZeroMQ sockets (the event plane, Dynamo workers' KV events, a Dynamo-protocol worker's
    /// KV publisher) may bind and connect off loopback: say so only when the network between the
    /// processes is private, since ZeroMQ here has no authentication or encryption.
    #[arg(long, env = "TRITIUM_EVENT_PLANE_TRUSTED_NETWORK", value_parser = clap::builder::BoolishValueParser::new())]
    pub event_plane_trusted_network: bool,
    /// The NATS server, for --event-plane nats and --request-plane nats (also Dynamo's
    /// `NATS_SERVER`).
    #[arg(long, env = "TRITIUM_NATS_URL")]
    pub nats_url: Option<String>,
    /// How frontends reach workers: `tcp`, each worker's own listener; `nats`, subjects on the
    /// NATS server (the worker binds no port). Frontends reach workers of either kind when set
    /// to `nats`.
    #[arg(long, env = "DYN_REQUEST_PLANE", value_enum, default_value = "tcp")]
    pub request_plane: RequestPlane,
    /// The address Dynamo workers' response streams connect back to (with file, etcd or
    /// Kubernetes discovery, the Dynamo workers registered there are served too).
    #[arg(long, env = "DYN_TCP_RESPONSE_STREAM_HOST", default_value = "127.0.0.1", value_parser = crate::config::parse_host)]
    pub tcp_response_stream_host: IpAddr,
    /// The largest Dynamo request or response frame read or sent, in bytes, on both sides of
    /// Dynamo's TCP request plane (Dynamo's variable and default: 32 MiB).
    #[arg(long, env = "DYN_TCP_MAX_MESSAGE_SIZE", default_value_t = tritium_cluster::dynamo::MAX_MESSAGE_BYTES)]
    pub tcp_max_message_size: usize,
    /// A third-party engine reached over its own gRPC engine service (vLLM's `VllmEngine`), as
    /// the model NAME: `NAME=URL` (`host:port` or `http://host:port`; several URLs, comma-separated
    /// or in repeated options, form a pool the router routes between). Tritium templates and
    /// tokenizes with the engine's tokenizer; the engine gets token ids. On `tritium worker`, one
    /// URL per model: the engine is served and registered as the worker's model.
    #[arg(long = "engine-grpc", env = "TRITIUM_ENGINE_GRPC", value_name = "NAME=URL", value_delimiter = ';')]
    pub engine_grpc: Vec<tritium_cluster::engines::EngineSpec>,
    /// How long an engine reached over gRPC (--engine-grpc, `backend: "engine_grpc"`) may send
    /// nothing in the middle of a generation (queued, or computing a long prompt) before the
    /// request fails, in seconds.
    #[arg(long, env = "TRITIUM_ENGINE_GRPC_IDLE_TIMEOUT", default_value_t = 300)]
    pub engine_grpc_idle_timeout: u64,
    /// The largest message read from an engine reached over gRPC (a chunk of tokens, a piece of
    /// its tokenizer archive, a batch of KV events), in bytes.
    #[arg(long, env = "TRITIUM_ENGINE_GRPC_MAX_MESSAGE_SIZE", default_value_t = tritium_cluster::engines::DEFAULT_MAX_MESSAGE_BYTES)]
    pub engine_grpc_max_message_size: usize,
    /// The largest tokenizer archive read from an engine reached over gRPC (`GetTokenizer`), and
    /// the largest file unpacked from it, in bytes.
    #[arg(long, env = "TRITIUM_ENGINE_GRPC_MAX_TOKENIZER_SIZE", default_value_t = tritium_cluster::engines::DEFAULT_MAX_TOKENIZER_BYTES)]
    pub engine_grpc_max_tokenizer_size: usize,
    /// Worker-plane TLS (Dynamo's variable): this process's PEM certificate; with
    /// --tcp-tls-key-path, a worker serves its plane (Tritium's or Dynamo's request plane) over
    /// TLS, and a frontend the server Dynamo workers' response streams call home to.
    #[arg(long, env = "DYN_TCP_TLS_CERT_PATH", value_name = "PEM")]
    pub tcp_tls_cert_path: Option<PathBuf>,
    /// Worker-plane TLS: the PEM private key of --tcp-tls-cert-path.
    #[arg(long, env = "DYN_TCP_TLS_KEY_PATH", value_name = "PEM")]
    pub tcp_tls_key_path: Option<PathBuf>,
    /// Worker-plane TLS: the PEM CA certificates a worker dialed must chain to; workers are
    /// dialed over TLS when it (or --tcp-tls-insecure) is given.
    #[arg(long, env = "DYN_TCP_TLS_CA_CERT_PATH", value_name = "PEM")]
    pub tcp_tls_ca_cert_path: Option<PathBuf>,
    /// Worker-plane TLS: dial workers over TLS taking any certificate (local development only).
    #[arg(long, env = "DYN_TCP_TLS_INSECURE", value_parser = clap::builder::BoolishValueParser::new())]
    pub tcp_tls_insecure: bool,
    /// Worker-plane TLS: the name a dialed worker's certificate must carry, instead of the host
    /// it is dialed at (useful when dialing by address).
    #[arg(long, env = "DYN_TCP_TLS_SERVER_NAME", value_name = "NAME")]
    pub tcp_tls_server_name: Option<String>,
    /// Worker-plane TLS: how long a handshake may take, in seconds, on both ends.
    #[arg(long = "tcp-tls-handshake-timeout", env = "DYN_TCP_TLS_HANDSHAKE_TIMEOUT_SECS", default_value_t = 3)]
    pub tcp_tls_handshake_timeout_secs: u64,
    /// Worker-plane mutual TLS: the PEM certificate this process presents when it dials a worker.
    #[arg(long, env = "DYN_TCP_TLS_CLIENT_CERT_PATH", value_name = "PEM")]
    pub tcp_tls_client_cert_path: Option<PathBuf>,
    /// Worker-plane mutual TLS: the PEM private key of --tcp-tls-client-cert-path.
    #[arg(long, env = "DYN_TCP_TLS_CLIENT_KEY_PATH", value_name = "PEM")]
    pub tcp_tls_client_key_path: Option<PathBuf>,
    /// Worker-plane mutual TLS: the PEM CA certificates a worker requires its callers'
    /// certificates to chain to.
    #[arg(long, env = "DYN_TCP_TLS_CLIENT_CA_CERT_PATH", value_name = "PEM")]
    pub tcp_tls_client_ca_cert_path: Option<PathBuf>,
}

pub use tritium_cluster::config::{ClusterConfig, RequestPlaneConfig};

/// Bounds of `--tcp-max-message-size`: room for a control message, and what a frame's 32-bit
/// length can say.
const MIN_DYNAMO_MESSAGE: usize = 4 << 10;
const MAX_DYNAMO_MESSAGE: usize = u32::MAX as usize;

impl ClusterArgs {
    pub fn config(&self) -> Result<ClusterConfig, String> {
        let discovery = match self.discovery {
            DiscoveryKind::Mem => DiscoveryConfig::Memory,
            DiscoveryKind::File => DiscoveryConfig::File {
                dir: self.discovery_dir.clone().unwrap_or_else(|| std::env::temp_dir().join("dynamo_store_kv")),
            },
            DiscoveryKind::Etcd if self.etcd_endpoints.is_empty() => {
                return Err("--discovery-backend etcd needs --etcd-endpoints (or ETCD_ENDPOINTS)".into());
            }
            DiscoveryKind::Etcd => DiscoveryConfig::Etcd { endpoints: self.etcd_endpoints.clone() },
            #[cfg(feature = "kubernetes")]
            DiscoveryKind::Kubernetes => DiscoveryConfig::Kubernetes(tritium_cluster::discovery::kubernetes::KubernetesConfig {
                namespace: self.pod_namespace.clone().filter(|n| !n.is_empty()),
                pod_name: self.pod_name.clone().filter(|n| !n.is_empty()),
                pod_uid: self.pod_uid.clone().filter(|n| !n.is_empty()),
            }),
            #[cfg(not(feature = "kubernetes"))]
            DiscoveryKind::Kubernetes => {
                return Err("--discovery-backend kubernetes: this build has no Kubernetes support (the `kubernetes` cargo \
                     feature); use etcd or file"
                    .into());
            }
        };
        let kind = self.events.unwrap_or(match discovery {
            DiscoveryConfig::Memory => EventsKind::None,
            _ => EventsKind::Zmq,
        });
        let events = match (kind, &self.nats_url) {
            (EventsKind::None, _) => EventsConfig::None,
            (EventsKind::Nats, Some(url)) => EventsConfig::Nats { url: url.clone() },
            (EventsKind::Nats, None) => return Err("--event-plane nats needs --nats-url (or NATS_SERVER)".into()),
            (EventsKind::Zmq, _) if matches!(discovery, DiscoveryConfig::Memory) => {
                return Err("--event-plane zmq finds publishers through discovery: give --discovery-backend file or etcd".into());
            }
            (EventsKind::Zmq, _) => {
                tritium_cluster::events::zmq::ZmqNetwork::new(self.event_plane_trusted_network)
                    .check_bind(self.event_plane_host, "--event-plane-host (DYN_EVENT_PLANE_HOST)")?;
                EventsConfig::Zmq { bind: self.event_plane_host, trusted_network: self.event_plane_trusted_network }
            }
        };
        let request_plane = match (self.request_plane, &self.nats_url) {
            (RequestPlane::Tcp, _) => RequestPlaneConfig::Tcp,
            (RequestPlane::Nats, Some(url)) => RequestPlaneConfig::Nats { url: url.clone() },
            (RequestPlane::Nats, None) => return Err("--request-plane nats needs --nats-url (or NATS_SERVER)".into()),
        };
        if !(MIN_DYNAMO_MESSAGE..=MAX_DYNAMO_MESSAGE).contains(&self.tcp_max_message_size) {
            return Err(format!(
                "--tcp-max-message-size (DYN_TCP_MAX_MESSAGE_SIZE) must be between {MIN_DYNAMO_MESSAGE} and {MAX_DYNAMO_MESSAGE} bytes, not {}",
                self.tcp_max_message_size
            ));
        }
        if self.lease_ttl_secs == 0 {
            return Err("--lease-ttl-secs must be at least 1".into());
        }
        let plane_tls = tritium_cluster::remote::PlaneTlsFiles {
            cert: self.tcp_tls_cert_path.clone(),
            key: self.tcp_tls_key_path.clone(),
            ca: self.tcp_tls_ca_cert_path.clone(),
            insecure: self.tcp_tls_insecure,
            server_name: self.tcp_tls_server_name.clone().filter(|name| !name.is_empty()),
            handshake_timeout: Duration::from_secs(self.tcp_tls_handshake_timeout_secs),
            client_cert: self.tcp_tls_client_cert_path.clone(),
            client_key: self.tcp_tls_client_key_path.clone(),
            client_ca: self.tcp_tls_client_ca_cert_path.clone(),
        };
        plane_tls.check()?;
        if self.engine_grpc_idle_timeout == 0 {
            return Err("--engine-grpc-idle-timeout must be at least 1 second".into());
        }
        // A message must hold at least a chunk of tokens or a piece of an archive.
        if self.engine_grpc_max_message_size < 4096 || self.engine_grpc_max_tokenizer_size < 4096 {
            return Err("--engine-grpc-max-message-size and --engine-grpc-max-tokenizer-size must be at least 4096 bytes".into());
        }
        Ok(ClusterConfig {
            discovery,
            scope: NamespaceScope { own: self.namespace.clone(), watch_prefix: self.namespace_prefix.clone() },
            lease_ttl: Duration::from_secs(self.lease_ttl_secs),
            events,
            request_plane,
            response_stream_host: self.tcp_response_stream_host,
            dynamo_max_message: self.tcp_max_message_size,
            engines: self.engine_grpc.clone(),
            engine_limits: tritium_cluster::engines::EngineLimits {
                idle_timeout: Duration::from_secs(self.engine_grpc_idle_timeout),
                max_message: self.engine_grpc_max_message_size,
                max_tokenizer: self.engine_grpc_max_tokenizer_size,
            },
            plane_tls,
            zmq_trusted_network: self.event_plane_trusted_network,
            health: tritium_cluster::health::PlaneHealth::default(),
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
    /// With --request-plane nats: connections from frontends and peers open at once; more are
    /// refused until one closes (each frontend holds one per worker).
    #[arg(long, env = "TRITIUM_REQUEST_PLANE_MAX_CONNECTIONS", default_value_t = 1024,
          value_parser = clap::value_parser!(u32).range(1..))]
    pub request_plane_max_connections: u32,
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
    /// decode workers; `decode` generates, taking long prompts' blocks from a prefill worker
    /// (also Dynamo's `DYN_VLLM_DISAGGREGATION_MODE` / `DYN_TRTLLM_DISAGGREGATION_MODE`).
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
            // Set once the request plane is up (see `serve_worker`).
            dialer: tritium_cluster::remote::Dialer::default(),
        })
    }
}
