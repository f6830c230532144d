//! Tritium's cluster: everything that spreads requests over workers and keeps processes in touch.
//!
//! - [`routing`]: the [`routing::Router`] every door hands requests to: the route table per model
//!   (the in-process worker and remote ones), policies (round robin, random, KV-aware), the KV
//!   index fed by workers' events, busy thresholds and the queue, failover, retries and stream
//!   migration, disaggregated prefill, router snapshots and replica sync.
//! - [`discovery`]: where workers register and frontends find them (memory, a folder, etcd,
//!   Kubernetes).
//! - [`events`]: the event planes (NATS, ZeroMQ, in memory) carrying KV events, load reports and
//!   routing decisions.
//! - [`remote`]: both ends of the worker plane (`worker.proto`): the service a worker serves, the
//!   client a frontend dials, their own conversions, the NATS tunnel and KV pulls between workers.
//! - [`dynamo`]: Dynamo's workers, found in Dynamo's stores and called over Dynamo's request
//!   plane.
//! - [`engines`]: third-party engines (vLLM's gRPC engine service) called over their own gRPC.
//! - [`node`]: a worker process's serve loop (`tritium worker`).
//! - [`lora`]: LoRA adapters loaded at run time, fanned out over the workers serving a base model.
//! - [`credentials`]: NATS and etcd credentials from Dynamo's variables.
//!
//! It sits below the server (which owns the doors, boot and command line) and above the core
//! (`tritium_worker`) and the tracer (`tritium_trace`); it never reaches a door or the OpenAI
//! bridge. In one process, the router serves the in-process worker alone:
//!
//! ```
//! # fn run() -> Result<(), Box<dyn std::error::Error>> {
//! use std::sync::Arc;
//! use prometheus::core::Collector;
//! use tritium_cluster::routing::{Router, RouterMetrics, RouterOptions};
//! use tritium_worker::{LocalWorker, ModelRepository, RepositoryOptions, WorkerClient, builtin_backends};
//!
//! let repository = ModelRepository::open(RepositoryOptions::default(), builtin_backends())?;
//! let worker: Arc<dyn WorkerClient> = Arc::new(LocalWorker::new(Arc::clone(&repository)));
//! let router = Router::new(RouterOptions::default(), repository, "in-process", worker, 64 << 20);
//! let families = RouterMetrics::new(router).collect();
//! assert!(families.iter().any(|family| family.name() == "tritium_router_requests_total"));
//! # Ok(()) }
//! ```

pub mod config;
pub mod credentials;
pub mod discovery;
pub mod dynamo;
pub mod engines;
pub mod events;
pub mod health;
pub mod lora;
pub mod node;
pub mod remote;
pub mod routing;
#[cfg(test)]
pub(crate) mod test_nats;

/// The backends the cluster's own tests load models with: the built-ins and the language-model
/// engine.
#[cfg(test)]
pub(crate) fn test_backends() -> tritium_worker::BackendRegistry {
    let mut registry = tritium_worker::builtin_backends();
    tritium_llm::register(&mut registry, Default::default());
    registry
}
