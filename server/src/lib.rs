//! Tritium's server: the doors, as a library and as the `tritium` binary. It boots and configures
//! a process ([`config`], [`cli`]), and serves the KServe v2 / Triton gRPC door (with health and
//! reflection, over its own HTTP/2 transport: [`grpc`]), the KServe HTTP door and the OpenAI,
//! Responses and Anthropic routes ([`http`], [`llm`]), shared memory ([`shm`]), the metrics port
//! with its one registry ([`metrics`]) and the admission limits ([`restricted`], byte budgets).
//! Everything between processes (routing, discovery, events, the worker plane, `tritium worker`'s
//! node) is `tritium_cluster`'s; request tracing is `tritium_trace`'s; models, schedulers and the
//! registry are the core's (`tritium_worker`).
//!
//! Embedding it, e.g. in a test, on a pre-bound ephemeral listener:
//!
//! ```no_run
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! use tritium_server::{ServerConfig, spawn};
//!
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
//! let server = spawn(ServerConfig::default(), listener).await?;
//! println!("serving the built-in repository on {}", server.grpc_addr());
//! server.shutdown().await;
//! # Ok(()) }
//! ```

pub mod admin;
pub mod api_keys;
pub mod backends;
pub mod cli;
pub mod config;
mod connection;
pub(crate) mod dispatch;
pub mod error;
pub mod grpc;
mod h2_frames;
pub mod http;
pub mod llm;
pub mod logging;
pub mod metadata;
pub mod metrics;
pub mod settings;
pub mod restricted;
pub mod shm;
pub mod state;
pub mod tls;


use std::collections::HashSet;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tritium_proto::inference::grpc_inference_service_server::GrpcInferenceServiceServer;

use tritium_worker::{BackendRegistry, LocalWorker, ModelRepository, WorkerClient};

pub use config::{ResponseCompression, ServerConfig, TransportConfig};
use tritium_cluster::discovery::{self, Discovery};
pub use error::ServerError;
use tritium_cluster::events::{self, EventBus};
use grpc::InferenceService;
use llm::LlmFrontend;
use logging::{LogControl, LogState};
use tritium_cluster::remote;
use tritium_cluster::routing::{self, Router};
use shm::SharedMemoryRegistry;
use state::ServerState;

/// Errors that stop the server from starting or serving.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("{0}")]
    Worker(#[from] tritium_worker::WorkerError),
    #[error("reflection: {0}")]
    Reflection(#[from] tonic_reflection::server::Error),
    #[error("gRPC transport: {0}")]
    Transport(#[from] tonic::transport::Error),
    #[error("listener: {0}")]
    Io(#[from] std::io::Error),
    #[error("{0}")]
    Discovery(#[from] discovery::DiscoveryError),
    #[error("{0}")]
    Events(#[from] events::EventError),
    #[error("TLS: {0}")]
    Tls(String),
    #[error("tracing: {0}")]
    Trace(String),
    #[error("preprocessing: {0}")]
    Preprocess(String),
    #[error("{0}")]
    RequestPlane(String),
}

/// The in-process worker's id in the router (it is not registered in a shared discovery).
const LOCAL_WORKER_ID: &str = "in-process";

/// A server's parts before it serves: the model registry (loaded), the in-process worker, the
/// router, discovery and events (in memory by default), and settings.
pub struct Tritium {
    config: ServerConfig,
    state: Arc<ServerState>,
}

impl std::fmt::Debug for Tritium {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tritium").field("config", &self.config).finish()
    }
}

impl Tritium {
    /// Opens the model repository with the backends built in and loads its models.
    pub fn new(config: ServerConfig, log: LogControl) -> Result<Tritium, StartError> {
        Tritium::with_backends(config, log, BackendRegistry::default())
    }

    /// Like [`Tritium::new`], with backends of the caller's own added to the registry.
    pub fn with_backends(config: ServerConfig, log: LogControl, backends: BackendRegistry) -> Result<Tritium, StartError> {
        let backends = backends::backend_registry(&config.backends, backends);
        let repository = ModelRepository::open(config.repository.clone(), backends)?;
        let worker: Arc<dyn WorkerClient> = Arc::new(LocalWorker::new(Arc::clone(&repository)));
        let router = Router::new(
            config.router.clone(),
            Arc::clone(&repository),
            LOCAL_WORKER_ID,
            worker,
            config.transport.max_message_size,
        );
        let hard_stop = CancellationToken::new();
        let tracer = Arc::new(tritium_trace::Tracer::new(config.trace.clone()));
        let llm = Arc::new(
            LlmFrontend::new(
                Arc::clone(&repository),
                Arc::clone(&router),
                config.limits.completion,
                config.openai.formats,
                &config.openai.metrics_prefix,
                config.limits.preprocess,
                hard_stop.clone(),
            )
            .with_tracer(Arc::clone(&tracer))
            .with_load_timeout(config.limits.model_load_timeout)
            .with_lora_dir(config.lora_dir.clone())
            .with_preprocess_workers(
                tritium_openai_bridge::preprocess::workers::PreprocessWorkers::start(config.openai.preprocess)
                    .map_err(StartError::Preprocess)?,
            ),
        );
        let server_name = match config.server_name.as_str() {
            "" => config::DEFAULT_SERVER_NAME.to_string(),
            name => name.to_string(),
        };
        let state = Arc::new(ServerState {
            server_name,
            repository,
            router,
            llm,
            shm: SharedMemoryRegistry::with_policy(config.limits.shm.clone()),
            load_timeout: config.limits.model_load_timeout,
            log,
            tracer,
            stopping: CancellationToken::new(),
            hard_stop,
            planes: config.cluster.health.clone(),
        });
        Ok(Tritium { config, state })
    }

    pub fn repository(&self) -> &Arc<ModelRepository> {
        &self.state.repository
    }

    /// Cancel it when the grace period after shutdown began is over: the calls still running end
    /// at once with UNAVAILABLE (an error event on a stream, a 503), and [`Tritium::serve_all`]
    /// returns once their endings are sent.
    pub fn hard_stop(&self) -> CancellationToken {
        self.state.hard_stop.clone()
    }

    /// The language-model frontend (the OpenAI routes' hub), for the interactive chat.
    pub fn llm(&self) -> Arc<LlmFrontend> {
        Arc::clone(&self.state.llm)
    }

    /// Serves gRPC on `listener` until `shutdown` completes, then drains in-flight calls.
    pub async fn serve(self, listener: TcpListener, shutdown: impl Future<Output = ()> + Send) -> Result<(), StartError> {
        self.serve_all(Some(listener), None, None, shutdown).await
    }

    /// Serves gRPC on `grpc` and, when given, HTTP (KServe `/v2`, OpenAI `/v1`, health, metrics)
    /// on `http`, until `shutdown` completes; then both drain what is in flight.
    pub async fn serve_with_listeners(
        self,
        listener: TcpListener,
        http: Option<TcpListener>,
        shutdown: impl Future<Output = ()> + Send,
    ) -> Result<(), StartError> {
        self.serve_all(Some(listener), http, None, shutdown).await
    }

    /// With file, etcd or Kubernetes discovery, follows the Dynamo workers registered there too: their
    /// records, their response streams' server and their KV events. Returns the workers for the
    /// router's discovery follower.
    async fn follow_dynamo(
        &self,
        cluster: &config::ClusterConfig,
        stop: CancellationToken,
    ) -> Result<Option<tokio::sync::watch::Receiver<Arc<Vec<discovery::WorkerInstance>>>>, StartError> {
        use tritium_cluster::dynamo;
        let Some(store) = dynamo::store_for(&cluster.discovery).await.map_err(StartError::RequestPlane)? else {
            return Ok(None);
        };
        let tls = dynamo::DynamoTls::from_files(&cluster.plane_tls).map_err(StartError::Tls)?;
        let home = dynamo::CallHome::bind(cluster.response_stream_host, cluster.dynamo_max_message, tls, stop.clone()).await?;
        tracing::info!(address = %home.address(), "{}; their response streams call home here", dynamo::view::describe());
        self.state.router.set_dynamo_home(home);
        let followed = dynamo::follow(store, cluster.scope.clone(), stop.clone());
        if let Some(plane) = dynamo::event_plane_for(&cluster.events, &cluster.health).await.map_err(StartError::RequestPlane)? {
            let workers = followed.workers.clone();
            let router = Arc::clone(&self.state.router);
            let sink: dynamo::KvSink = Arc::new(move |worker, model, event| router.apply_kv_event(worker, model, event));
            dynamo::follow_kv_events(sink, plane, workers, followed.kv_publishers, cluster.scope.clone(), stop);
        }
        Ok(Some(followed.workers))
    }

    /// [`Tritium::serve_with_listeners`], with Triton's metrics on `metrics` when given, and no
    /// gRPC port when `listener` is `None` (`--no-kserve-grpc-server`).
    pub async fn serve_all(
        self,
        listener: Option<TcpListener>,
        http: Option<TcpListener>,
        metrics: Option<TcpListener>,
        shutdown: impl Future<Output = ()> + Send,
    ) -> Result<(), StartError> {
        self.serve_all_then(listener, http, metrics, shutdown, || {}).await
    }

    /// [`Tritium::serve_all`], calling `ready` once the cluster's planes (discovery, events, the
    /// NATS request plane) are connected and the doors are about to serve: a process that cannot
    /// join its cluster never says it is ready.
    pub async fn serve_all_then(
        self,
        listener: Option<TcpListener>,
        http: Option<TcpListener>,
        metrics: Option<TcpListener>,
        shutdown: impl Future<Output = ()> + Send,
        ready: impl FnOnce() + Send,
    ) -> Result<(), StartError> {
        let transport = &self.config.transport;
        let grpc_tls =
            self.config.tls.grpc.as_ref().map(|files| tls::acceptor(files, &[b"h2"])).transpose().map_err(StartError::Tls)?;
        let http_tls = self
            .config
            .tls
            .http
            .as_ref()
            .map(|files| tls::acceptor(files, &[b"h2", b"http/1.1"]))
            .transpose()
            .map_err(StartError::Tls)?;
        let stop = CancellationToken::new();
        self.state.tracer.start(stop.clone()).map_err(StartError::Trace)?;
        let cluster = &self.config.cluster;
        let discovery: Arc<dyn Discovery> = discovery::connect(&cluster.discovery, &cluster.scope, cluster.lease_ttl, &cluster.health).await?;
        let events: Arc<dyn EventBus> = events::connect(&cluster.events, &cluster.scope, Arc::clone(&discovery), &cluster.health).await?;
        let plane_tls = cluster.plane_tls.client().map_err(StartError::Tls)?;
        let dialer = match &cluster.request_plane {
            config::RequestPlaneConfig::Nats { url } => {
                remote::Dialer::nats(remote::NatsPlane::connect_reporting(url, &cluster.scope.own, &cluster.health).await.map_err(StartError::RequestPlane)?)
            }
            config::RequestPlaneConfig::Tcp => remote::Dialer::default(),
        };
        self.state.router.set_dialer(dialer.with_tls(plane_tls));
        let poller = self.state.repository.spawn_poller(stop.clone());
        if cluster.is_distributed() {
            routing::snapshot::start(&self.state.router, Arc::clone(&discovery), stop.clone()).await;
        }
        let mut listings: Vec<routing::Listing> = self.follow_dynamo(cluster, stop.clone()).await?.into_iter().collect();
        if !cluster.engines.is_empty() {
            let router = Arc::clone(&self.state.router);
            let loads: tritium_cluster::engines::follow::LoadSink = Arc::new(move |report| router.apply_load(report));
            let router = Arc::clone(&self.state.router);
            let kv: tritium_cluster::engines::kv::KvSink =
                Arc::new(move |worker, model, event| router.apply_kv_event(worker, model, event));
            listings.push(tritium_cluster::engines::follow(&cluster.engines, cluster.engine_limits, loads, kv, stop.clone()));
        }
        let follower =
            tokio::spawn(routing::follow_discovery(Arc::clone(&self.state.router), discovery, listings, stop.clone()));
        if self.state.router.options().replica_sync {
            routing::publish_replica_events(&self.state.router, Arc::clone(&events), stop.clone());
        }
        let event_follower = tokio::spawn(routing::follow_events(Arc::clone(&self.state.router), events, stop.clone()));
        ready();

        let (reporter, health) = tonic_health::server::health_reporter();
        grpc::health::publish(&reporter, &self.state.repository, &mut HashSet::new()).await;
        let health_task =
            tokio::spawn(grpc::health::follow_repository(reporter, Arc::clone(&self.state.repository), stop.clone()));

        let reflection_v1 = tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(tritium_proto::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
            .build_v1()?;
        let reflection_v1alpha = tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(tritium_proto::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
            .build_v1alpha()?;

        use tonic::codec::CompressionEncoding;
        let mut inference = GrpcInferenceServiceServer::new(InferenceService::new(Arc::clone(&self.state)))
            .max_decoding_message_size(transport.max_message_size)
            .max_encoding_message_size(transport.max_message_size)
            .accept_compressed(CompressionEncoding::Gzip)
            .accept_compressed(CompressionEncoding::Deflate)
            .accept_compressed(CompressionEncoding::Zstd);
        let response_encoding = match transport.response_compression {
            ResponseCompression::None => None,
            ResponseCompression::Gzip => Some(CompressionEncoding::Gzip),
            ResponseCompression::Deflate => Some(CompressionEncoding::Deflate),
            ResponseCompression::Zstd => Some(CompressionEncoding::Zstd),
        };
        if let Some(encoding) = response_encoding {
            inference = inference.send_compressed(encoding);
        }

        // One budget for request bytes being received, on both ports.
        let budget = Arc::new(grpc::budget::ByteBudget::new(transport.max_buffered_request_bytes));
        let routes = grpc::transport::Routes::new(inference)
            .with(health)
            .with(reflection_v1)
            .with(reflection_v1alpha)
            .guarded(Arc::clone(&budget), transport.max_message_size, self.config.limits.restricted.clone())
            .keyed(self.config.api_keys.clone());
        if let Some(keys) = &self.config.api_keys {
            keys.watch(stop.clone());
        }
        let http_task = http.map(|http_listener| {
            let limits = self.config.http_limits.clone();
            let kserve = http::kserve::KserveState::new(
                Arc::clone(&self.state),
                Arc::clone(&budget),
                limits.max_body_bytes,
                self.config.limits.http_restricted.clone(),
            );
            let router = http::keyed(
                http::router(kserve, limits.max_body_bytes, self.config.openai.api.clone()),
                self.config.api_keys.clone(),
                limits.max_body_bytes,
                &self.config.openai.api.paths.models,
            );
            let grpc = transport
                .on_http_port
                .then(|| http::GrpcCalls { routes: routes.clone().shared(), transport: transport.clone() });
            let stopping = self.state.stopping.clone();
            let budget = Arc::clone(&budget);
            tokio::spawn(http::serve_limited(http_listener, router, grpc, limits, budget, http_tls, async move {
                stopping.cancelled().await
            }))
        });
        let metrics_task = metrics.map(|metrics_listener| {
            let cpu = Arc::new(metrics::CpuSampler::new());
            let sampler = metrics::spawn_sampler(Arc::clone(&cpu), self.config.metrics.interval, stop.clone());
            let state = metrics::MetricsState::new(
                Arc::clone(&self.state.repository),
                Arc::clone(&self.state.llm),
                &self.state.tracer,
                cpu,
                &self.config.metrics,
            );
            if let Some(keys) = &self.config.api_keys {
                state.register(keys.counter());
            }
            let limits = self.config.http_limits.clone();
            let stopping = self.state.stopping.clone();
            let budget = Arc::clone(&budget);
            let server =
                tokio::spawn(http::serve_limited(metrics_listener, metrics::router(state), None, limits, budget, None, async move {
                    stopping.cancelled().await
                }));
            (server, sampler)
        });
        let stopping = self.state.stopping.clone();
        let shutdown = async move {
            shutdown.await;
            stopping.cancel();
        };
        match listener {
            Some(listener) => grpc::transport::serve(listener, routes, transport, grpc_tls, shutdown).await,
            None => shutdown.await,
        }
        stop.cancel();
        if let Some(http_task) = http_task {
            match http_task.await {
                Ok(Err(e)) => tracing::error!("HTTP server: {e}"),
                Err(e) => tracing::error!("HTTP server task: {e}"),
                Ok(Ok(())) => {}
            }
        }
        if let Some((server, sampler)) = metrics_task {
            if let Ok(Err(e)) = server.await {
                tracing::error!("metrics server: {e}");
            }
            let _ = sampler.await;
        }
        let _ = health_task.await;
        let _ = follower.await;
        let _ = event_follower.await;
        if let Some(poller) = poller {
            let _ = poller.await;
        }
        self.state.tracer.finish().await;
        Ok(())
    }
}

/// A running server: its address, and the means to stop it. Dropping it stops the server too.
#[derive(Debug)]
pub struct ServerHandle {
    grpc_addr: SocketAddr,
    http_addr: Option<SocketAddr>,
    shutdown: CancellationToken,
    task: Option<JoinHandle<Result<(), StartError>>>,
    repository: Arc<ModelRepository>,
}

impl ServerHandle {
    pub fn grpc_addr(&self) -> SocketAddr {
        self.grpc_addr
    }

    /// The HTTP address, when the server was given an HTTP listener.
    pub fn http_addr(&self) -> Option<SocketAddr> {
        self.http_addr
    }

    /// The models the server serves (for embedding and tests: their engines and statistics).
    pub fn repository(&self) -> &Arc<ModelRepository> {
        &self.repository
    }

    /// Stops accepting, finishes in-flight calls, and waits for the server to end.
    pub async fn shutdown(mut self) {
        self.shutdown.cancel();
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }
}

impl Drop for ServerHandle {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// Starts a server on a pre-bound listener (tests bind `127.0.0.1:0`), with the built-in backends
/// and logging left to the caller.
pub async fn spawn(config: ServerConfig, listener: TcpListener) -> Result<ServerHandle, StartError> {
    spawn_with_backends(config, listener, BackendRegistry::default()).await
}

pub async fn spawn_with_backends(
    config: ServerConfig,
    listener: TcpListener,
    backends: BackendRegistry,
) -> Result<ServerHandle, StartError> {
    spawn_with_listeners(config, listener, None, backends).await
}

/// Starts a server on pre-bound gRPC and (optionally) HTTP listeners.
pub async fn spawn_with_listeners(
    config: ServerConfig,
    grpc: TcpListener,
    http: Option<TcpListener>,
    backends: BackendRegistry,
) -> Result<ServerHandle, StartError> {
    let log =
        LogControl::detached(LogState { info: true, warning: true, error: true, verbose_level: 0, format: "default".into() });
    let tritium = tokio::task::spawn_blocking(move || Tritium::with_backends(config, log, backends))
        .await
        .map_err(|e| std::io::Error::other(format!("start-up task failed: {e}")))??;
    let grpc_addr = grpc.local_addr()?;
    let http_addr = http.as_ref().map(TcpListener::local_addr).transpose()?;
    let shutdown = CancellationToken::new();
    let stop = shutdown.clone();
    let repository = Arc::clone(tritium.repository());
    let task = tokio::spawn(tritium.serve_with_listeners(grpc, http, async move { stop.cancelled().await }));
    Ok(ServerHandle { grpc_addr, http_addr, shutdown, task: Some(task), repository })
}
