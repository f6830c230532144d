//! A worker node (`tritium worker`): engines in their own process. Over a model repository the
//! server opened, it serves the models on the worker request plane (with `grpc.health.v1`), registers in discovery under a lease, and
//! publishes its language models' KV-cache events and load on the event bus. On shutdown it
//! deregisters first (frontends stop sending), refuses what still arrives (frontends run it
//! elsewhere), lets what is in flight finish, then exits.

use std::sync::Arc;
use std::time::Duration;

use futures::FutureExt;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tonic::transport::Server;
use tonic::transport::server::TcpIncoming;

use tritium_worker::ModelRepository;

use crate::config::{NodeConfig, WorkerProtocol};
use crate::discovery::{self, DiscoveryError, WorkerAddress, WorkerInstance};
use crate::events::{self, EventBus, EventError, LoadReport, WorkerEvent};
use crate::remote::{NatsListener, WorkerService};
use crate::routing::publish_worker;
use tritium_trace::Tracer;

/// How often a worker reports its load.
const LOAD_EVERY: Duration = Duration::from_millis(500);

/// Where a worker process takes calls on the worker plane.
#[derive(Debug)]
pub enum PlaneListener {
    /// Its own TCP listener, dialed at `advertised`, over TLS when `tls` is given.
    Tcp { listener: TcpListener, advertised: String, tls: Option<crate::remote::ServerTls> },
    /// Subjects on the NATS request plane.
    Nats(NatsListener),
}

impl PlaneListener {
    /// What discovery advertises for it.
    pub fn address(&self) -> String {
        match self {
            PlaneListener::Tcp { advertised, .. } => advertised.clone(),
            PlaneListener::Nats(listener) => listener.address(),
        }
    }
}

/// Why a worker node stopped serving, or never started.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    #[error("{0}")]
    Discovery(#[from] DiscoveryError),
    #[error("{0}")]
    Events(#[from] EventError),
    #[error("tracing: {0}")]
    Trace(String),
    #[error("the worker plane: {0}")]
    Transport(#[from] tonic::transport::Error),
    #[error("Dynamo's layout: {0}")]
    Dynamo(String),
}

/// A worker process's parts before it serves: its settings and its loaded repository.
pub struct WorkerNode {
    config: NodeConfig,
    repository: Arc<ModelRepository>,
}

impl std::fmt::Debug for WorkerNode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WorkerNode").finish_non_exhaustive()
    }
}

/// A default worker id: host name, process id and a random suffix.
pub fn default_worker_id() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").map(|h| h.trim().to_string()).unwrap_or_default();
    let host = if host.is_empty() { "worker".to_string() } else { host };
    format!("{host}-{}-{:04x}", std::process::id(), rand::random::<u16>())
}

impl WorkerNode {
    /// A node serving `repository` (opened, its models loaded, by the caller).
    pub fn new(config: NodeConfig, repository: Arc<ModelRepository>) -> WorkerNode {
        WorkerNode { config, repository }
    }

    pub fn repository(&self) -> &Arc<ModelRepository> {
        &self.repository
    }

    /// Serves on `listener`, registered as `id` at its address, until `shutdown` completes; then
    /// drains for at most `drain_timeout`. `registered` is called once the worker is in
    /// discovery (frontends can find it; the listener queues their calls).
    pub async fn serve(
        self,
        listener: PlaneListener,
        id: String,
        shutdown: impl std::future::Future<Output = ()> + Send,
        drain_timeout: Duration,
        registered: impl FnOnce(),
    ) -> Result<(), NodeError> {
        let advertised = listener.address();
        let cluster = &self.config.cluster;
        let discovery = discovery::connect(&cluster.discovery, &cluster.scope, cluster.lease_ttl, &cluster.health).await?;
        let events = events::connect(&cluster.events, &cluster.scope, Arc::clone(&discovery), &cluster.health).await?;
        let tracer = Arc::new(Tracer::new(self.config.trace.clone()).following_callers());
        let trace_stop = CancellationToken::new();
        tracer.start(trace_stop.clone()).map_err(NodeError::Trace)?;
        let service = WorkerService::new(Arc::clone(&self.repository))
            .with_transfers(self.config.transfers.clone())
            .with_tracer(Arc::clone(&tracer))
            .with_lora_dir(self.config.lora_dir.clone());
        let in_flight = service.in_flight();
        let (reporter, health) = tonic_health::server::health_reporter();
        reporter.set_service_status("", tonic_health::ServingStatus::Serving).await;
        let name = <tritium_proto::worker::worker_server::WorkerServer<WorkerService> as tonic::server::NamedService>::NAME;
        reporter.set_service_status(name, tonic_health::ServingStatus::Serving).await;
        // Not serving while etcd or NATS refuses this worker's credentials.
        let mut planes = cluster.health.subscribe();
        let following = reporter.clone();
        let planes_stop = CancellationToken::new();
        let following_planes = planes_stop.clone();
        tokio::spawn(async move {
            loop {
                let status = if *planes.borrow_and_update() {
                    tonic_health::ServingStatus::Serving
                } else {
                    tonic_health::ServingStatus::NotServing
                };
                following.set_service_status("", status).await;
                tokio::select! {
                    _ = following_planes.cancelled() => return,
                    changed = planes.changed() => if changed.is_err() { return },
                }
            }
        });

        // The first registration before `registered`, so a caller's start returns once frontends
        // can find the worker; the publisher registers again (idempotent) and follows changes.
        let models = self.repository.served_names();
        let first = WorkerInstance {
            id: id.clone(),
            address: WorkerAddress::Grpc(advertised.clone()),
            models,
            mode: self.config.disaggregation,
            events: events.endpoint(),
            device: self.config.device,
        };
        let publishing = CancellationToken::new();
        let publisher = match self.config.protocol {
            WorkerProtocol::Tritium => {
                if let Err(e) = discovery.register(first).await {
                    tracing::warn!(worker = %id, "registering in discovery failed: {e}");
                }
                tokio::spawn(publish_worker(
                    id.clone(),
                    WorkerAddress::Grpc(advertised),
                    self.config.disaggregation,
                    self.config.device,
                    Arc::clone(&self.repository),
                    discovery,
                    Arc::clone(&events),
                    publishing.clone(),
                ))
            }
            // Registered in Dynamo's layout alone; the worker plane stays up, unadvertised.
            WorkerProtocol::Dynamo => self.start_dynamo(publishing.clone()).await?,
        };
        registered();
        let reporting = tokio::spawn(report_engines(id, Arc::clone(&self.repository), events, publishing.clone()));

        let stop_serving = CancellationToken::new();
        let router = Server::builder()
            // A peer that vanished without closing (a NATS tunnel has no socket to reset) is let go.
            .http2_keepalive_interval(Some(crate::remote::nats_plane::KEEPALIVE_INTERVAL))
            .http2_keepalive_timeout(Some(crate::remote::nats_plane::KEEPALIVE_TIMEOUT))
            .add_service(health)
            .add_service(service.into_server_with_token(self.config.max_message_size, self.config.worker_token.as_deref()));
        let stopped = stop_serving.clone().cancelled_owned();
        let mut server: std::pin::Pin<Box<dyn std::future::Future<Output = Result<(), tonic::transport::Error>> + Send>> =
            match listener {
                PlaneListener::Tcp { listener, tls: None, .. } => {
                    Box::pin(router.serve_with_incoming_shutdown(TcpIncoming::from(listener).with_nodelay(Some(true)), stopped))
                }
                PlaneListener::Tcp { listener, tls: Some(tls), .. } => {
                    Box::pin(router.serve_with_incoming_shutdown(tls.incoming(listener), stopped))
                }
                PlaneListener::Nats(listener) => Box::pin(router.serve_with_incoming_shutdown(listener.incoming(), stopped)),
            };
        let mut shutdown = Box::pin(shutdown.fuse());
        let served = tokio::select! {
            served = &mut server => Some(served),
            () = &mut shutdown => None,
        };
        // Leave discovery first, so frontends stop sending; refuse stragglers (their frontends
        // run them elsewhere); let what runs finish.
        publishing.cancel();
        let _ = publisher.await;
        let _ = reporting.await;
        planes_stop.cancel();
        reporter.set_service_status("", tonic_health::ServingStatus::NotServing).await;
        in_flight.drain();
        if tokio::time::timeout(drain_timeout, in_flight.drained()).await.is_err() {
            tracing::warn!(in_flight = in_flight.count(), "requests still running after {drain_timeout:?}; exiting anyway");
        }
        stop_serving.cancel();
        match served {
            Some(served) => served?,
            None => {
                if tokio::time::timeout(Duration::from_secs(2), server).await.is_err() {
                    tracing::warn!("connections still open after draining; closing them");
                }
            }
        }
        trace_stop.cancel();
        tracer.finish().await;
        Ok(())
    }
}

impl WorkerNode {
    /// Registers in Dynamo's layout and serves Dynamo's request plane until `stop`.
    async fn start_dynamo(&self, stop: CancellationToken) -> Result<tokio::task::JoinHandle<()>, NodeError> {
        let cluster = &self.config.cluster;
        let store = crate::dynamo::store_for(&cluster.discovery)
            .await
            .map_err(NodeError::Dynamo)?
            .ok_or_else(|| NodeError::Dynamo("Dynamo's layout needs --discovery-backend file, etcd or kubernetes".into()))?;
        let config = crate::dynamo::worker::DynamoWorkerConfig {
            rpc_host: self.config.rpc_host,
            namespace: cluster.scope.own.clone(),
            component: "tritium".into(),
            max_message_size: self.config.max_message_size.min(cluster.dynamo_max_message),
            block_size: self.config.kv_block_size,
            tls: crate::dynamo::DynamoTls::from_files(&cluster.plane_tls).map_err(NodeError::Dynamo)?,
            zmq_network: crate::events::zmq::ZmqNetwork::new(cluster.zmq_trusted_network),
        };
        crate::dynamo::worker::start(store, Arc::clone(&self.repository), config, stop).await.map_err(NodeError::Dynamo)
    }
}

/// Forwards every language model's KV-cache events to the bus and reports load, until `stop`.
async fn report_engines(worker: String, repository: Arc<ModelRepository>, events: Arc<dyn EventBus>, stop: CancellationToken) {
    let mut forwarders = Vec::new();
    for model in repository.local_models() {
        let Some(engine) = model.latest().and_then(|v| v.language_model()) else { continue };
        let Some(mut kv_events) = engine.kv_events() else { continue };
        let (events, worker, name, stop) = (Arc::clone(&events), worker.clone(), model.name.clone(), stop.clone());
        forwarders.push(tokio::spawn(async move {
            loop {
                let event = tokio::select! {
                    _ = stop.cancelled() => return,
                    event = kv_events.recv() => event,
                };
                let event = match event {
                    Ok(event) => event,
                    // Routers missed blocks: tell them to forget this worker's and rebuild.
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => tritium_backend_api::kv::KvEvent::Cleared,
                    Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
                };
                let message = WorkerEvent::Kv { worker: worker.clone(), model: name.clone(), event };
                if let Err(e) = events.publish(message).await {
                    tracing::warn!("publishing a KV event failed: {e}");
                }
            }
        }));
    }
    let mut ticker = tokio::time::interval(LOAD_EVERY);
    loop {
        tokio::select! {
            _ = stop.cancelled() => break,
            _ = ticker.tick() => {}
        }
        for model in repository.local_models() {
            let Some(engine) = model.latest().and_then(|v| v.language_model()) else { continue };
            let stats = engine.stats();
            let report = LoadReport {
                worker: worker.clone(),
                model: model.name.clone(),
                active: stats.running as u64,
                queued: stats.waiting as u64,
                kv_used: stats.kv_tokens_used as u64,
                kv_capacity: stats.kv_tokens_capacity as u64,
                max_batched_tokens: stats.max_batched_tokens as u64,
                prompt_tokens: stats.prompt_tokens,
                prompt_tokens_cached: stats.prompt_tokens_cached,
                tokens_generated: stats.tokens_generated,
            };
            if let Err(e) = events.publish(WorkerEvent::Load(report)).await {
                tracing::warn!("publishing a load report failed: {e}");
            }
        }
    }
    for forwarder in forwarders {
        let _ = forwarder.await;
    }
    if let Err(e) = events.flush().await {
        tracing::warn!("flushing events on the way out failed: {e}");
    }
}
