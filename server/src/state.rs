//! The state every door of the server shares (gRPC, KServe REST, the OpenAI routes, metrics),
//! built once at start.

use std::sync::Arc;

use tritium_worker::ModelRepository;

use crate::logging::LogControl;
use crate::shm::SharedMemoryRegistry;

/// What the gRPC and HTTP handlers share: the model registry, the router, the language-model
/// frontend, shared memory and the server's settings.
#[derive(Debug)]
pub struct ServerState {
    /// ServerMetadata's name.
    pub server_name: String,
    pub repository: Arc<ModelRepository>,
    pub router: Arc<tritium_cluster::routing::Router>,
    /// Language and embedding models: preprocessing, the KServe text mapping, metrics.
    pub llm: Arc<crate::llm::LlmFrontend>,
    pub shm: SharedMemoryRegistry,
    /// How long a client waits for a model load before it is answered with an error.
    pub load_timeout: std::time::Duration,
    pub log: LogControl,
    /// Request tracing: TraceSetting's values and the sampler.
    pub tracer: Arc<tritium_trace::Tracer>,
    /// Cancelled when the server begins to shut down: open streams stop taking requests, finish
    /// what they have, and end, so an idle stream does not hold the shutdown up.
    pub stopping: tokio_util::sync::CancellationToken,
    /// Cancelled when the grace period after `stopping` ends (`--exit-timeout-secs`): every call
    /// still running ends at once with UNAVAILABLE (an error event, a 503), so that the process
    /// exits with none cut off without a word.
    pub hard_stop: tokio_util::sync::CancellationToken,
    /// Whether etcd and NATS still take this process's credentials.
    pub planes: tritium_cluster::health::PlaneHealth,
}

impl ServerState {
    /// Ready: every model that must load has, and no cluster service refuses this process.
    pub fn is_ready(&self) -> bool {
        self.repository.all_ready() && self.planes.is_ready()
    }
}
