//! An engine reached over its own gRPC service (`--engine-grpc`) as the router lists it
//! ([`super::WorkerAddress::Engine`]): where it is and the model card it described
//! (`crate::engines::describe`).

use std::sync::Arc;

use tritium_backend_api::llm::ModelCard;

/// One engine and the model it serves, as described by the engine itself.
#[derive(Debug, Clone, PartialEq)]
pub struct EngineTarget {
    /// The model's name on Tritium's doors (`--engine-grpc NAME=`).
    pub name: String,
    pub url: String,
    /// The name the engine serves the model under (for logs).
    pub served_name: String,
    pub card: Arc<ModelCard>,
    /// Tokens per KV block, when the engine says.
    pub block_size: Option<usize>,
    /// What the engine says it is (`vllm-grpc`, ...; may be empty).
    pub server_type: String,
}

// Equal descriptions are equal all through: the card holds no floating-point values.
impl Eq for EngineTarget {}
