//! What a process of the cluster needs, resolved from the command line by the server's config:
//! discovery, events and the request plane ([`ClusterConfig`]), and a worker node's own settings
//! ([`NodeConfig`]).

use std::path::PathBuf;
use std::time::Duration;

use crate::discovery::{DeviceClass, DisaggregationMode, DiscoveryConfig, NamespaceScope};
use crate::events::EventsConfig;
use crate::remote::TransferOptions;

/// Discovery and events, resolved.
#[derive(Debug, Clone)]
pub struct ClusterConfig {
    pub discovery: DiscoveryConfig,
    /// The namespace this process registers and publishes in, and those it watches.
    pub scope: NamespaceScope,
    pub lease_ttl: Duration,
    pub events: EventsConfig,
    pub request_plane: RequestPlaneConfig,
    /// Where Dynamo workers' response streams call home (Dynamo's `DYN_TCP_RESPONSE_STREAM_HOST`).
    pub response_stream_host: std::net::IpAddr,
    /// The largest Dynamo request or response frame read or sent (Dynamo's
    /// `DYN_TCP_MAX_MESSAGE_SIZE`); the worker plane's message size lowers it further.
    pub dynamo_max_message: usize,
    /// Third-party engines reached over their own gRPC (`--engine-grpc`), each a worker of its model.
    pub engines: Vec<crate::engines::EngineSpec>,
    /// What each of those engines, and each `backend: "engine_grpc"` model, may cost.
    pub engine_limits: crate::engines::EngineLimits,
    /// TLS on the worker plane (`DYN_TCP_TLS_*`): what a worker serves with, what a process dials with.
    pub plane_tls: crate::remote::PlaneTlsFiles,
    /// `--event-plane-trusted-network`: ZeroMQ sockets may bind and connect off loopback.
    pub zmq_trusted_network: bool,
    /// Where this process's connections to etcd and NATS report a refusal of its credentials.
    pub health: crate::health::PlaneHealth,
}

/// `--request-plane`, resolved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RequestPlaneConfig {
    Tcp,
    Nats { url: String },
}

impl Default for ClusterConfig {
    fn default() -> ClusterConfig {
        ClusterConfig {
            discovery: DiscoveryConfig::Memory,
            scope: NamespaceScope::own("tritium"),
            lease_ttl: Duration::from_secs(10),
            events: EventsConfig::None,
            request_plane: RequestPlaneConfig::Tcp,
            response_stream_host: std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST),
            dynamo_max_message: crate::dynamo::MAX_MESSAGE_BYTES,
            engines: Vec::new(),
            engine_limits: crate::engines::EngineLimits::default(),
            plane_tls: crate::remote::PlaneTlsFiles {
                handshake_timeout: crate::remote::tls::DEFAULT_HANDSHAKE_TIMEOUT,
                ..Default::default()
            },
            zmq_trusted_network: false,
            health: crate::health::PlaneHealth::default(),
        }
    }
}

impl ClusterConfig {
    /// Whether workers may live in other processes.
    pub fn is_distributed(&self) -> bool {
        !matches!(self.discovery, DiscoveryConfig::Memory)
    }
}


/// What `tritium worker` serves with, beside its model repository.
#[derive(Debug, Clone)]
pub struct NodeConfig {
    pub cluster: ClusterConfig,
    pub max_message_size: usize,
    /// Token frontends must send (`--worker-token`).
    pub worker_token: Option<String>,
    pub disaggregation: DisaggregationMode,
    /// What it computes on (`--device-class`).
    pub device: DeviceClass,
    pub transfers: TransferOptions,
    /// Request tracing (`--trace-config`, `OTEL_*`): a worker's spans join the frontend's trace.
    pub trace: tritium_trace::config::TraceConfig,
    /// `--lora-dir`: where LoRA adapters loaded at run time (through a frontend) must lie.
    pub lora_dir: Option<PathBuf>,
    /// `--worker-protocol`: whose layout the worker registers in and whose requests it takes.
    pub protocol: WorkerProtocol,
    /// With `--worker-protocol dynamo`: the address its Dynamo request listener binds and
    /// advertises (`DYN_TCP_RPC_HOST`), and its engines' tokens per KV block.
    pub rpc_host: std::net::IpAddr,
    pub kv_block_size: usize,
}

/// `tritium worker --worker-protocol`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum WorkerProtocol {
    /// Tritium's worker plane (`worker.proto`) and records.
    #[default]
    Tritium,
    /// Dynamo's records, card and TCP request plane, for Dynamo's own frontend.
    Dynamo,
}
