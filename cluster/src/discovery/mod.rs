//! Discovery: which workers exist and which models each serves. Frontends list and watch it;
//! workers register themselves. The default is in memory (one process, nothing external);
//! etcd and a shared folder are other implementations of the same trait.

pub mod dynamo_target;
pub mod engine_target;
mod etcd;
mod file;
#[cfg(feature = "kubernetes")]
pub mod kubernetes;
mod memory;
#[cfg(test)]
pub(crate) mod testing;
#[cfg(test)]
mod tests;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use tokio::sync::broadcast;

pub use etcd::EtcdDiscovery;
pub use file::FileDiscovery;
pub use memory::MemoryDiscovery;

/// How a frontend reaches a worker.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WorkerAddress {
    /// In this process, through a client the router was given directly.
    InProcess,
    /// A worker process serving the worker request plane at this URI.
    Grpc(String),
    /// A Dynamo worker instance, found in Dynamo's own records (never registered by Tritium).
    #[serde(skip)]
    Dynamo(Arc<dynamo_target::DynamoTarget>),
    /// A third-party engine reached over its own gRPC service (`--engine-grpc`), as it described itself.
    #[serde(skip)]
    Engine(Arc<engine_target::EngineTarget>),
}

/// A worker's part in disaggregated serving (Dynamo's `--disaggregation-mode` and values).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum DisaggregationMode {
    /// Prefill and decode (every worker before disaggregation).
    #[default]
    Agg,
    /// Prefill only: computes prompts' KV blocks for decode workers.
    Prefill,
    /// Generates, taking long prompts' KV blocks from a prefill worker.
    Decode,
}

/// What a worker computes on, for `--router-mode device-aware-weighted`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum DeviceClass {
    /// The CPU (records from before device classes too).
    #[default]
    Cpu,
    /// A GPU or another accelerator.
    Accelerator,
}

/// One worker and the models it serves now.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkerInstance {
    pub id: String,
    pub address: WorkerAddress,
    pub models: Vec<String>,
    /// Absent in records of workers from before disaggregation: aggregated.
    #[serde(default)]
    pub mode: DisaggregationMode,
    /// Where it publishes its events on the ZeroMQ event plane (`tcp://host:port`); absent
    /// on other planes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub events: Option<String>,
    /// What it computes on.
    #[serde(default)]
    pub device: DeviceClass,
}

/// A change seen by watchers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DiscoveryEvent {
    /// A worker registered, or changed its models.
    Up(WorkerInstance),
    /// A worker left (deregistered, or its lease expired).
    Down { id: String },
    /// Changes may have been missed (the backend's watch was re-established): list again.
    Resync,
}

#[derive(Debug, thiserror::Error)]
pub enum DiscoveryError {
    #[error("discovery backend unavailable: {0}")]
    Unavailable(String),
    #[error("invalid {what} {value:?}: {reason}")]
    Invalid { what: &'static str, value: String, reason: &'static str },
}

impl DiscoveryError {
    pub fn code(&self) -> tritium_proto::ErrorCode {
        match self {
            DiscoveryError::Unavailable(_) => tritium_proto::ErrorCode::Unavailable,
            DiscoveryError::Invalid { .. } => tritium_proto::ErrorCode::InvalidArg,
        }
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
    /// Stores a small document shared by this namespace's processes (the routers' KV-index
    /// snapshot), replacing any before it; at most [`MAX_DOCUMENT_BYTES`].
    async fn put_document(&self, name: &str, bytes: Vec<u8>) -> Result<(), DiscoveryError>;
    /// The document stored under `name` in this namespace, if any.
    async fn get_document(&self, name: &str) -> Result<Option<Vec<u8>>, DiscoveryError>;
    /// Removes the document; a missing one is fine.
    async fn delete_document(&self, name: &str) -> Result<(), DiscoveryError>;
}

/// The largest shared document: under etcd's default request limit (1.5 MiB).
pub const MAX_DOCUMENT_BYTES: usize = 1 << 20;

/// Refuses a document name that is not one path segment, or a document over the bound.
pub(crate) fn check_document(name: &str, bytes: Option<&[u8]>) -> Result<(), DiscoveryError> {
    check_segment("document name", name)?;
    match bytes {
        Some(bytes) if bytes.len() > MAX_DOCUMENT_BYTES => Err(DiscoveryError::Unavailable(format!(
            "document {name} is {} bytes, over the {MAX_DOCUMENT_BYTES} a shared document may hold",
            bytes.len()
        ))),
        _ => Ok(()),
    }
}

/// The namespaces a process watches. A process registers in its own namespace and, by default,
/// watches only that one; a frontend given a prefix (`--namespace-prefix`) watches every namespace
/// whose name starts with it, such as the old and new worker sets of a rolling update
/// (`prod-a1f3`, `prod-b72c`). An empty prefix watches every namespace. Worker ids must then be
/// unique across the watched namespaces (the default ids are).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NamespaceScope {
    pub own: String,
    pub watch_prefix: Option<String>,
}

impl NamespaceScope {
    /// Only `namespace`, registered in and watched.
    pub fn own(namespace: impl Into<String>) -> NamespaceScope {
        NamespaceScope { own: namespace.into(), watch_prefix: None }
    }

    /// Whether workers of `namespace` are seen.
    pub fn watches(&self, namespace: &str) -> bool {
        match &self.watch_prefix {
            Some(prefix) => namespace.starts_with(prefix.as_str()),
            None => namespace == self.own,
        }
    }

    /// Both names as [`check_segment`] wants them (an empty prefix is allowed: every namespace).
    pub(crate) fn check(&self) -> Result<(), DiscoveryError> {
        check_segment("namespace", &self.own)?;
        match self.watch_prefix.as_deref() {
            Some(prefix) if !prefix.is_empty() => check_segment("namespace prefix", prefix),
            _ => Ok(()),
        }
    }
}

/// Which discovery backend to use.
#[derive(Debug, Clone)]
pub enum DiscoveryConfig {
    /// This process only.
    Memory,
    /// Processes on one machine sharing a folder.
    File { dir: PathBuf },
    /// An etcd cluster.
    Etcd { endpoints: Vec<String> },
    /// The Kubernetes API: DynamoWorkerMetadata objects and EndpointSlice readiness.
    #[cfg(feature = "kubernetes")]
    Kubernetes(kubernetes::KubernetesConfig),
}

/// Builds the backend `config` names. Workers' records live `lease_ttl` after their last renewal
/// (the in-memory backend has no leases and ignores it, and the namespaces).
/// A refusal of the process's etcd credentials while running is reported to `health`.
pub async fn connect(
    config: &DiscoveryConfig,
    scope: &NamespaceScope,
    lease_ttl: Duration,
    health: &crate::health::PlaneHealth,
) -> Result<Arc<dyn Discovery>, DiscoveryError> {
    Ok(match config {
        DiscoveryConfig::Memory => Arc::new(MemoryDiscovery::new()),
        DiscoveryConfig::File { dir } => Arc::new(FileDiscovery::new(dir.clone(), scope, lease_ttl)?),
        DiscoveryConfig::Etcd { endpoints } => {
            Arc::new(EtcdDiscovery::connect_reporting(endpoints, scope, lease_ttl, health.clone()).await?)
        }
        #[cfg(feature = "kubernetes")]
        DiscoveryConfig::Kubernetes(config) => Arc::new(kubernetes::KubeDiscovery::connect(config, scope).await?),
    })
}

/// Worker ids and namespaces become file names and key segments, so each must be one plain
/// path segment. Names starting with a dot are refused too: that also rules out `.` and `..`,
/// and leaves dot-files free for the file backend's temporary files.
pub(crate) fn check_segment(what: &'static str, value: &str) -> Result<(), DiscoveryError> {
    let reason = if value.is_empty() {
        "must not be empty"
    } else if value.contains(['/', '\\']) {
        "must not contain a path separator"
    } else if value.starts_with('.') {
        "must not start with '.'"
    } else if value.chars().any(char::is_control) {
        "must not contain control characters"
    } else {
        return Ok(());
    };
    Err(DiscoveryError::Invalid { what, value: value.to_string(), reason })
}

pub(crate) fn check_ttl(ttl: Duration) -> Result<(), DiscoveryError> {
    if ttl.is_zero() {
        return Err(DiscoveryError::Invalid { what: "lease TTL", value: format!("{ttl:?}"), reason: "must be positive" });
    }
    Ok(())
}
