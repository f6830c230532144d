//! Events workers publish for frontends and routers: model changes, load reports and KV-cache
//! announcements. The default bus is in memory; NATS is another implementation of the same trait.

pub(crate) mod nats;
pub mod zmq;

use std::sync::Arc;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use tokio::sync::broadcast;
use tritium_backend_api::kv::KvEvent;

use crate::discovery::NamespaceScope;

pub use nats::NatsEventBus;
pub use zmq::ZmqEventBus;

/// Events a subscriber may fall behind by before it sees `Lagged`.
const BUS_BUFFER: usize = 1024;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum WorkerEvent {
    /// A worker's set of served models changed.
    ModelsChanged { worker: String, models: Vec<String> },
    /// How busy a worker is with one model, for load-aware routing.
    Load(LoadReport),
    /// A worker's engine stored or evicted KV-cache blocks of one model.
    Kv { worker: String, model: String, event: KvEvent },
    /// A frontend's router sent a prompt with these block hashes to `worker`, so it predicts
    /// them cached there (`--router-replica-sync`: the other routers predict the same).
    Routed { router: String, worker: String, model: String, blocks: Vec<tritium_backend_api::kv::BlockHash> },
    /// A frontend's router started, prefilled or ended request `request` (its own number) on a
    /// worker (`--router-replica-sync`: the other routers count that load too).
    ReplicaLoad { router: String, request: u64, change: LoadChange },
    /// A frontend's router bound agent session `session` to `worker` (`--router-replica-sync`
    /// with session affinity: the other routers bind it there too, best-effort, as Dynamo's do).
    ReplicaSession { router: String, session: String, worker: String },
}

/// What happened to one request a router counts as load (see [`WorkerEvent::ReplicaLoad`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum LoadChange {
    Started { worker: String, model: String, blocks: Vec<tritium_backend_api::kv::BlockHash>, prefill_tokens: u64 },
    Prefilled,
    Ended,
}

/// One worker's load on one model.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LoadReport {
    pub worker: String,
    pub model: String,
    /// Sequences (or requests) running now.
    pub active: u64,
    /// Waiting for a place.
    pub queued: u64,
    /// KV-cache use and capacity, in tokens (0 and 0 for models without one).
    pub kv_used: u64,
    pub kv_capacity: u64,
    /// Prompt tokens one engine step prefills at most (0: unknown; absent from older workers).
    #[serde(default)]
    pub max_batched_tokens: u64,
    /// Counters since the engine started: prompt tokens, those found in the KV cache (not
    /// recomputed), and tokens generated.
    pub prompt_tokens: u64,
    pub prompt_tokens_cached: u64,
    pub tokens_generated: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum EventError {
    #[error("event bus unavailable: {0}")]
    Unavailable(String),
    #[error("cannot connect to the event bus at {url}: {reason}")]
    Connect { url: String, reason: String },
    #[error("cannot encode an event: {0}")]
    Encode(#[source] serde_json::Error),
}

impl EventError {
    pub fn code(&self) -> tritium_proto::ErrorCode {
        match self {
            EventError::Unavailable(_) | EventError::Connect { .. } => tritium_proto::ErrorCode::Unavailable,
            EventError::Encode(_) => tritium_proto::ErrorCode::Internal,
        }
    }
}

#[async_trait]
pub trait EventBus: Send + Sync + std::fmt::Debug + 'static {
    async fn publish(&self, event: WorkerEvent) -> Result<(), EventError>;
    fn subscribe(&self) -> broadcast::Receiver<WorkerEvent>;
    /// Waits until everything published so far has left this process; call it before a graceful
    /// shutdown. Buses that deliver on `publish` have nothing to do.
    async fn flush(&self) -> Result<(), EventError> {
        Ok(())
    }

    /// Where subscribers connect to hear this bus's events, for planes without a broker (ZeroMQ);
    /// it goes into the process's record in discovery.
    fn endpoint(&self) -> Option<String> {
        None
    }
}

/// Which event bus to use.
#[derive(Debug, Clone, Default)]
pub enum EventsConfig {
    /// In memory: events reach subscribers in this process only.
    #[default]
    None,
    /// A NATS server (or cluster) shared by every process of a namespace.
    Nats { url: String },
    /// ZeroMQ sockets between the processes, found through discovery; publishers bind on `bind`.
    /// Off loopback only when `trusted_network` says the network is private
    /// ([`zmq::ZmqNetwork`]).
    Zmq { bind: std::net::IpAddr, trusted_network: bool },
}

/// The event bus `config` names, publishing in the scope's own namespace and hearing the
/// namespaces it watches.
pub async fn connect(
    config: &EventsConfig,
    scope: &NamespaceScope,
    discovery: Arc<dyn crate::discovery::Discovery>,
    health: &crate::health::PlaneHealth,
) -> Result<Arc<dyn EventBus>, EventError> {
    Ok(match config {
        EventsConfig::None => Arc::new(MemoryEventBus::default()),
        EventsConfig::Nats { url } => Arc::new(NatsEventBus::connect_reporting(url, scope, health).await?),
        EventsConfig::Zmq { bind, trusted_network } => {
            Arc::new(ZmqEventBus::start(*bind, zmq::ZmqNetwork::new(*trusted_network), discovery).await?)
        }
    })
}

/// An event bus inside one process.
#[derive(Debug)]
pub struct MemoryEventBus {
    sender: broadcast::Sender<WorkerEvent>,
}

impl Default for MemoryEventBus {
    fn default() -> Self {
        MemoryEventBus { sender: broadcast::channel(BUS_BUFFER).0 }
    }
}

#[async_trait]
impl EventBus for MemoryEventBus {
    async fn publish(&self, event: WorkerEvent) -> Result<(), EventError> {
        // Publishing with nobody subscribed is normal.
        let _ = self.sender.send(event);
        Ok(())
    }

    fn subscribe(&self) -> broadcast::Receiver<WorkerEvent> {
        self.sender.subscribe()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn subscribers_see_what_is_published_after_they_subscribe() {
        let bus = MemoryEventBus::default();
        bus.publish(WorkerEvent::Load(LoadReport { worker: "early".into(), ..Default::default() })).await.expect("publish");
        let mut first = bus.subscribe();
        let mut second = bus.subscribe();
        let event = WorkerEvent::ModelsChanged { worker: "w".into(), models: vec!["identity".into()] };
        bus.publish(event.clone()).await.expect("publish");
        assert_eq!(first.recv().await.expect("first"), event);
        assert_eq!(second.recv().await.expect("second"), event);
        assert!(first.try_recv().is_err(), "nothing from before subscribing");
    }

    #[tokio::test]
    async fn no_events_config_gives_a_memory_bus() {
        let discovery = Arc::new(crate::discovery::MemoryDiscovery::new());
        let bus = connect(&EventsConfig::None, &NamespaceScope::own("any"), discovery, &Default::default()).await.expect("memory bus");
        let mut events = bus.subscribe();
        let event = WorkerEvent::ModelsChanged { worker: "w".into(), models: Vec::new() };
        bus.publish(event.clone()).await.expect("publish");
        bus.flush().await.expect("flush");
        assert_eq!(events.recv().await.expect("event"), event);
        assert!(format!("{bus:?}").starts_with("MemoryEventBus"), "{bus:?}");
    }
}
