//! The router's side of Dynamo's workers: a member for each one discovery lists, and prompts
//! hashed as their KV events name blocks.

use std::sync::Arc;

use tritium_backend_api::kv::{BlockHash, KvEvent, block_hashes};

use super::{Member, Router};
use crate::discovery::WorkerInstance;
use crate::discovery::dynamo_target::DynamoTarget;

impl Router {
    /// A member for the Dynamo worker `target` (its models described from its cards), or `None`
    /// when it cannot be reached from here (logged).
    pub(super) fn dynamo_member(&self, instance: &WorkerInstance, target: &Arc<DynamoTarget>) -> Option<Member> {
        let Some(home) = self.dynamo_home.get() else {
            tracing::warn!(worker = %instance.id, "a Dynamo worker is listed, but this router has no response-stream server for it");
            return None;
        };
        let nats = self.dialer.get().and_then(|dialer| dialer.nats_plane()).map(|plane| plane.client().clone());
        let client =
            match crate::dynamo::DynamoWorker::new(&instance.id, Arc::clone(target), Arc::clone(home), nats, self.max_message_size) {
                Ok(client) => client,
                Err(e) => {
                    tracing::warn!(worker = %instance.id, "cannot reach this Dynamo worker: {e}");
                    return None;
                }
            };
        let id: Arc<str> = Arc::from(instance.id.as_str());
        self.remote_models.described(&id, crate::dynamo::view::remote_models(target));
        tracing::info!(worker = %id, endpoint = %target.endpoint, models = ?instance.models, "Dynamo worker joined");
        Some(Member { dynamo_target: Some(Arc::clone(target)), ..Member::remote(id, Arc::new(client), instance) })
    }

    /// A prompt's block hashes as the candidates' KV events name blocks: Dynamo's hashes and
    /// block size when every candidate is a Dynamo worker of one block size (seeded with the
    /// adapter's name when `model` is a LoRA adapter of theirs, as Dynamo's router seeds them),
    /// Tritium's otherwise.
    pub(super) fn prompt_hashes(&self, model: &str, candidates: &[&Member], tokens: &[u32]) -> Vec<BlockHash> {
        // Engines reached over their gRPC: Tritium's hashes over their own block size.
        let engine_size = |m: &Member| m.engine_block_size;
        if let Some(size) = candidates.first().and_then(|m| engine_size(m))
            && candidates.iter().all(|m| engine_size(m) == Some(size))
        {
            return block_hashes(tokens, size);
        }
        let block_size = |m: &Member| m.dynamo_target.as_ref().and_then(|target| target.kv_block_size());
        let dynamo = candidates.first().and_then(|m| block_size(m));
        match dynamo {
            Some(size) if candidates.iter().all(|m| block_size(m) == Some(size)) => {
                let lora = candidates
                    .first()
                    .and_then(|m| m.dynamo_target.as_ref())
                    .and_then(|target| target.models.iter().find(|m| m.name == model))
                    .and_then(|m| m.lora.as_deref());
                crate::dynamo::kv_events::block_hashes(tokens, size, lora)
            }
            _ => block_hashes(tokens, self.options.kv_block_size),
        }
    }

    /// Applies a KV event of `worker` (one not on Tritium's event bus: a Dynamo worker) to the
    /// index, unless the router predicts instead (`--no-router-kv-events`).
    pub fn apply_kv_event(&self, worker: &str, model: &str, event: &KvEvent) {
        if self.options.kv_events {
            self.kv.lock().apply(worker, model, event);
            self.kv_event_applied();
        }
    }
}
