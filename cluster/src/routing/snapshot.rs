//! Dynamo's router snapshots: the KV index (which worker holds which blocks, from their KV
//! events) is written to the namespace's shared store in discovery every
//! `--router-snapshot-threshold` KV events, so a frontend that starts later, or restarts, routes
//! prefixes the workers cached before it came up to them at once instead of learning them again.
//! `--router-reset-states` starts from nothing and deletes the stored snapshot.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;
use tritium_backend_api::kv::{BlockHash, KvEvent};

use super::Router;
use crate::discovery::{Discovery, MAX_DOCUMENT_BYTES};

/// The snapshot's name in the shared store.
pub const SNAPSHOT_DOCUMENT: &str = "router-kv-snapshot";

#[derive(Debug, Serialize, Deserialize)]
struct Snapshot {
    entries: Vec<Entry>,
}

#[derive(Debug, Serialize, Deserialize)]
struct Entry {
    worker: String,
    model: String,
    blocks: Vec<BlockHash>,
}

/// The router's KV index as a snapshot document; `Err` when it would be over the store's bound.
fn encode(router: &Router) -> Result<Vec<u8>, String> {
    let entries =
        router.kv.lock().snapshot().into_iter().map(|(worker, model, blocks)| Entry { worker, model, blocks }).collect();
    let bytes = serde_json::to_vec(&Snapshot { entries }).map_err(|e| format!("encoding the KV-index snapshot: {e}"))?;
    match bytes.len() > MAX_DOCUMENT_BYTES {
        true => Err(format!("the KV index is {} bytes as a snapshot, over the {MAX_DOCUMENT_BYTES} one may hold", bytes.len())),
        false => Ok(bytes),
    }
}

/// Loads a stored snapshot into the router's index; how many blocks it held.
fn restore(router: &Router, bytes: &[u8]) -> Result<usize, String> {
    let snapshot: Snapshot =
        serde_json::from_slice(bytes).map_err(|e| format!("the stored KV-index snapshot does not decode: {e}"))?;
    let mut index = router.kv.lock();
    let mut blocks = 0;
    for entry in snapshot.entries {
        blocks += entry.blocks.len();
        index.apply(&entry.worker, &entry.model, &KvEvent::Stored { parent: None, blocks: entry.blocks });
    }
    Ok(blocks)
}

/// Restores the stored snapshot (or, with `--router-reset-states`, deletes it), then writes a
/// new one whenever the router has applied `--router-snapshot-threshold` KV events since the
/// last, until `stop`.
pub async fn start(router: &Arc<Router>, discovery: Arc<dyn Discovery>, stop: CancellationToken) {
    if !router.options.kv_events {
        return;
    }
    if router.options.reset_states {
        match discovery.delete_document(SNAPSHOT_DOCUMENT).await {
            Ok(()) => tracing::info!("router state reset: the stored KV-index snapshot is deleted"),
            Err(e) => tracing::warn!("deleting the stored KV-index snapshot failed: {e}"),
        }
    } else {
        match discovery.get_document(SNAPSHOT_DOCUMENT).await {
            Ok(Some(bytes)) => match restore(router, &bytes) {
                Ok(blocks) => tracing::info!(blocks, "KV index restored from the stored snapshot"),
                Err(e) => tracing::warn!("{e}; starting from an empty index"),
            },
            Ok(None) => {}
            Err(e) => tracing::warn!("reading the stored KV-index snapshot failed: {e}"),
        }
    }
    let router = Arc::clone(router);
    tokio::spawn(async move {
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                () = router.snapshot_due.notified() => {}
            }
            let written = match encode(&router) {
                Ok(bytes) => discovery.put_document(SNAPSHOT_DOCUMENT, bytes).await.map_err(|e| e.to_string()),
                Err(e) => Err(e),
            };
            match written {
                Ok(()) => {
                    router.counters.snapshots.fetch_add(1, Ordering::Relaxed);
                }
                Err(e) => tracing::warn!("writing the KV-index snapshot failed: {e}"),
            }
        }
    });
}
