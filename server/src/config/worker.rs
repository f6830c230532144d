//! `tritium worker`'s command line: the engines it runs, its listener on the worker plane, its
//! part in disaggregated serving, its device class, and the cluster it registers in.

use clap::Args;
use tritium_cluster::config::NodeConfig;
use tritium_worker::RepositoryOptions;

use super::repository::repository_options;
use super::{
    CacheArgs, ClusterArgs, DisaggregationArgs, EngineArgs, LoggingArgs, ModelArgs, ModelControlMode,
    RateLimitArgs, RepositoryArgs, WorkerListenArgs, trace,
};

#[derive(Debug, Clone, Args)]
pub struct WorkerArgs {
    #[command(flatten)]
    pub repository: RepositoryArgs,
    #[command(flatten)]
    pub models: ModelArgs,
    #[command(flatten)]
    pub engine: EngineArgs,
    #[command(flatten)]
    pub listen: WorkerListenArgs,
    #[command(flatten)]
    pub disaggregation: DisaggregationArgs,
    #[command(flatten)]
    pub cluster: ClusterArgs,
    #[command(flatten)]
    pub logging: LoggingArgs,
    #[command(flatten)]
    pub runtime: super::runtime::RuntimeArgs,
    #[command(flatten)]
    pub rate_limit: RateLimitArgs,
    #[command(flatten)]
    pub cache: CacheArgs,
    #[command(flatten)]
    pub trace: trace::TraceArgs,
    /// What this worker computes on, for frontends in `--router-mode device-aware-weighted`:
    /// `auto` is `accelerator` when its language models run on a GPU (the `cuda` build with one
    /// present), else `cpu`; declare it for other backends.
    #[arg(long, env = "TRITIUM_DEVICE_CLASS", default_value = "auto", value_parser = ["auto", "cpu", "accelerator"])]
    pub device_class: String,
    /// Tokens per KV block of this worker's engines, real and mock (Dynamo's name; it replaces
    /// --llm-kv-block-size and --mock-block-size). Frontends routing by KV need the same.
    #[arg(long, env = "DYN_KV_CACHE_BLOCK_SIZE")]
    pub kv_cache_block_size: Option<usize>,
    /// Largest message accepted or sent on the worker plane, in bytes.
    #[arg(long, env = "TRITIUM_WORKER_MAX_MESSAGE_SIZE", default_value_t = i32::MAX as usize)]
    pub worker_max_message_size: usize,
    /// Whose layout the worker registers in: `tritium` (the worker plane, for Tritium's
    /// frontends) or `dynamo` (Dynamo's records, model card and TCP request plane, so Dynamo's
    /// own frontend serves its language, embedding and tensor models; needs --discovery-backend file, etcd
    /// or kubernetes and --request-plane tcp).
    #[arg(long, env = "TRITIUM_WORKER_PROTOCOL", value_enum, default_value = "tritium")]
    pub worker_protocol: tritium_cluster::config::WorkerProtocol,
    /// With --worker-protocol dynamo: the address the Dynamo request listener binds and
    /// advertises (Dynamo's `DYN_TCP_RPC_HOST`).
    #[arg(long, env = "DYN_TCP_RPC_HOST", default_value = "127.0.0.1", value_parser = crate::config::parse_host)]
    pub tcp_rpc_host: std::net::IpAddr,
    /// Seconds to let in-flight requests finish after SIGTERM before exiting anyway.
    #[arg(long, env = "TRITIUM_EXIT_TIMEOUT_SECS", default_value_t = 30)]
    pub exit_timeout_secs: u64,
}

/// `--device-class` resolved: `auto` asks the language-model engine where it runs.
fn device_class(text: &str) -> tritium_cluster::discovery::DeviceClass {
    use tritium_cluster::discovery::DeviceClass;
    match text {
        "cpu" => DeviceClass::Cpu,
        "accelerator" => DeviceClass::Accelerator,
        #[cfg(feature = "llm")]
        _ if tritium_llm::default_device().is_cuda() => DeviceClass::Accelerator,
        _ => DeviceClass::Cpu,
    }
}

/// `tritium worker --engine-grpc NAME=URL`: one `backend: "engine_grpc"` model per engine, served
/// and registered like the worker's other models. A worker stands for one engine per model: a
/// pool is several workers (or `--engine-grpc NAME=URL,URL` on a frontend).
fn engine_models(specs: &[tritium_cluster::engines::EngineSpec]) -> Result<Vec<tritium_worker::DeclaredModel>, String> {
    use tritium_cluster::engines::backend::ENGINE_GRPC_BACKEND;
    let mut declared = Vec::new();
    for spec in tritium_cluster::engines::merged(specs) {
        let [url] = spec.urls.as_slice() else {
            return Err(format!(
                "--engine-grpc {}: a worker serves one engine per model; start one worker per engine, or give the pool to a frontend",
                spec.name
            ));
        };
        let quoted = serde_json::to_string(url).map_err(|e| e.to_string())?;
        let name = &spec.name;
        let config_text = format!(
            "name: \"{name}\"\nbackend: \"{ENGINE_GRPC_BACKEND}\"\nparameters {{ key: \"url\" value {{ string_value: {quoted} }} }}\n"
        );
        declared.push(tritium_worker::DeclaredModel { name: name.clone(), config_text });
    }
    Ok(declared)
}

/// What `tritium worker` needs, resolved: the repository it opens with its backends, and what
/// its node serves with.
#[derive(Debug, Clone)]
pub struct WorkerConfig {
    pub repository: RepositoryOptions,
    pub backends: crate::backends::BackendsConfig,
    pub node: NodeConfig,
}

impl WorkerArgs {
    pub fn worker_config(&self) -> Result<WorkerConfig, String> {
        if self.repository.model_control_mode == ModelControlMode::OnDemand {
            // A worker advertises the models it has loaded, so none would ever reach it to load.
            return Err("--model-control-mode on-demand: a worker serves only the models it has loaded; use it on serve".into());
        }
        if self.cluster.discovery == super::cluster::DiscoveryKind::Kubernetes
            && self.cluster.pod_name.as_deref().is_none_or(str::is_empty)
        {
            return Err("--discovery-backend kubernetes: a worker registers in a DynamoWorkerMetadata object named after its \
                 pod; set POD_NAME (--pod-name), with POD_UID and POD_NAMESPACE, from the Downward API"
                .into());
        }
        if self.cluster.namespace_prefix.is_some() {
            return Err("--namespace-prefix scopes what a frontend watches; a worker registers in --namespace alone".into());
        }
        if self.worker_protocol == tritium_cluster::config::WorkerProtocol::Dynamo {
            use super::cluster::{DiscoveryKind, RequestPlane};
            if !matches!(self.cluster.discovery, DiscoveryKind::File | DiscoveryKind::Etcd | DiscoveryKind::Kubernetes) {
                return Err("--worker-protocol dynamo registers in Dynamo's file store, etcd or Kubernetes objects: give --discovery-backend file, etcd or kubernetes".into());
            }
            if self.cluster.request_plane != RequestPlane::Tcp {
                return Err("--worker-protocol dynamo takes Dynamo's requests on its TCP listener: give --request-plane tcp".into());
            }
            // Its KV events go out on a ZeroMQ publisher bound beside the request listener.
            tritium_cluster::events::zmq::ZmqNetwork::new(self.cluster.event_plane_trusted_network)
                .check_bind(self.tcp_rpc_host, "--worker-protocol dynamo's KV-event publisher (DYN_TCP_RPC_HOST)")?;
        }
        #[cfg_attr(not(feature = "llm"), allow(unused_mut))]
        let (mut models, mut engine) = (self.models.clone(), self.engine.clone());
        match self.kv_cache_block_size {
            Some(0) => return Err("--kv-cache-block-size must be at least 1".into()),
            #[cfg(feature = "llm")]
            Some(size) => {
                models.llm_kv_block_size = size;
                engine.mock_block_size = size;
            }
            _ => {}
        }
        let cluster = self.cluster.config()?;
        let mut repository = repository_options(&self.repository, &models, &engine, true)?;
        repository.declared.extend(engine_models(&self.cluster.engine_grpc)?);
        Ok(WorkerConfig {
            repository: RepositoryOptions {
                rate_limiter: self.rate_limit.limiter()?,
                response_cache: self.cache.build()?,
                ..repository
            },
            backends: crate::backends::BackendsConfig {
                engines: cluster.engine_limits,
                ..self.repository.backends(&models)?
            },
            node: NodeConfig {
                cluster,
                max_message_size: self.worker_max_message_size,
                trace: self.trace.config(|name| std::env::var(name).ok())?,
                lora_dir: self.models.lora_dir.clone(),
                protocol: self.worker_protocol,
                rpc_host: self.tcp_rpc_host,
                kv_block_size: self.kv_cache_block_size.unwrap_or(tritium_backend_api::kv::DEFAULT_KV_BLOCK_SIZE),
                worker_token: self.listen.worker_token.clone().filter(|t| !t.is_empty()),
                disaggregation: self.disaggregation.disaggregation_mode,
                device: device_class(&self.device_class),
                transfers: self.disaggregation.transfer_options(
                    self.listen.worker_token.clone().filter(|t| !t.is_empty()),
                    self.worker_max_message_size,
                )?,
            },
        })
    }
}
