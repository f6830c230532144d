//! The router's side of engines reached over their own gRPC (`--engine-grpc`): a member for each
//! engine the follower lists, its model described from the engine's own card, and its loads.

use std::sync::Arc;

use tonic::transport::Endpoint;

use super::{Member, Router};
use crate::discovery::WorkerInstance;
use crate::engines::{EngineTarget, EngineWorker};
use crate::events::LoadReport;

impl Router {
    /// A member for the engine `target`, or `None` when its URL cannot be dialled (logged).
    pub(super) fn engine_member(&self, instance: &WorkerInstance, target: &Arc<EngineTarget>) -> Option<Member> {
        let channel = match Endpoint::from_shared(target.url.clone()) {
            Ok(endpoint) => endpoint.connect_timeout(crate::engines::CONNECT_TIMEOUT).tcp_nodelay(true).connect_lazy(),
            Err(e) => {
                tracing::warn!(worker = %instance.id, "cannot reach this engine: {e}");
                return None;
            }
        };
        let client = EngineWorker::new(&instance.id, Arc::clone(target), channel, &self.options.engine_limits);
        let id: Arc<str> = Arc::from(instance.id.as_str());
        self.remote_models.described(&id, vec![remote_model(target)]);
        tracing::info!(worker = %id, url = %target.url, model = %target.name, "engine joined");
        Some(Member { engine_block_size: target.block_size, ..Member::remote(id, Arc::new(client), instance) })
    }

    /// Takes an engine's load report (read by the engine follower) into the load table.
    pub fn apply_load(&self, report: LoadReport) {
        self.loads.lock().insert((report.worker.clone(), report.model.clone()), report);
    }
}

/// The model an engine serves, as the frontend's registry lists it: a language model (with
/// the language-model tensors on KServe) or an embedder (served on `/v1/embeddings`).
fn remote_model(target: &EngineTarget) -> crate::remote::RemoteModel {
    let mut config =
        tritium_proto::inference::ModelConfig { name: target.name.clone(), backend: "engine_grpc".into(), ..Default::default() };
    if target.card.kind == tritium_backend_api::llm::ModelKind::Generate {
        tritium_backend_api::llm::complete_llm_config(&mut config);
    }
    crate::remote::RemoteModel {
        name: target.name.clone(),
        version: 1,
        config,
        card: Some(Arc::clone(&target.card)),
        labels: Vec::new(),
        adapter_of: None,
        adapter_kv_seed: None,
        text_input: None,
    }
}
