//! Discovery: which workers exist and which models each serves. Frontends list and watch it;
//! workers register themselves. The default is in memory (one process, nothing external);
//! etcd and a shared folder are other implementations of the same trait.

mod memory;

use async_trait::async_trait;
use tokio::sync::broadcast;

pub use memory::MemoryDiscovery;

/// How a frontend reaches a worker.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WorkerAddress {
    /// In this process, through a client the router was given directly.
    InProcess,
    /// A worker process serving the worker request plane at this URI.
    Grpc(String),
}

/// One worker and the models it serves now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkerInstance {
    pub id: String,
    pub address: WorkerAddress,
    pub models: Vec<String>,
}

/// A change seen by watchers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DiscoveryEvent {
    /// A worker registered, or changed its models.
    Up(WorkerInstance),
    /// A worker left (deregistered, or its lease expired).
    Down { id: String },
}

#[derive(Debug, thiserror::Error)]
pub enum DiscoveryError {
    #[error("discovery backend unavailable: {0}")]
    Unavailable(String),
}

impl DiscoveryError {
    pub fn code(&self) -> tritium_proto::ErrorCode {
        tritium_proto::ErrorCode::Unavailable
    }
}

#[async_trait]
pub trait Discovery: Send + Sync + std::fmt::Debug + 'static {
    /// Adds a worker, or replaces its record (same id).
    async fn register(&self, instance: WorkerInstance) -> Result<(), DiscoveryError>;
    /// Removes a worker; unknown ids are fine.
    async fn deregister(&self, id: &str) -> Result<(), DiscoveryError>;
    /// Every registered worker, by id.
    async fn instances(&self) -> Result<Vec<WorkerInstance>, DiscoveryError>;
    /// Changes from now on. A watcher that falls behind gets `Lagged` and should list again.
    fn watch(&self) -> broadcast::Receiver<DiscoveryEvent>;
}
