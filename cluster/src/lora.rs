//! LoRA adapters loaded and unloaded at run time across the cluster: forwarded to every remote
//! worker serving the base model, all or nothing. Loading into this process's engines is the
//! repository's (`tritium_worker::registry::adapters`), vLLM's HTTP routes are the server's.

use std::sync::Arc;
use std::time::Duration;

use tritium_worker::ModelRepository;
pub use tritium_worker::registry::{LoadAdapter, Refusal, check_names, choose_base, load_into, unload_local};

use crate::remote::RemoteWorker;

/// How long a frontend waits for an adapter its workers loaded (or unloaded) to show in its own
/// models, so the next request finds it.
const SETTLE_WITHIN: Duration = Duration::from_secs(15);

/// Loads `request` on every worker in `workers` (those serving its base model), all or nothing:
/// after a refusal, the workers that had loaded it unload it again. Then waits until the
/// repository serves the adapter (the workers registered it).
pub async fn load_on_workers(
    repository: &ModelRepository,
    workers: Vec<(Arc<str>, Arc<RemoteWorker>)>,
    base: &str,
    request: &LoadAdapter,
) -> Result<(), Refusal> {
    let mut loaded: Vec<&(Arc<str>, Arc<RemoteWorker>)> = Vec::new();
    for entry in &workers {
        let (id, worker) = entry;
        let call = tritium_proto::worker::LoadAdapterRequest {
            base_model: base.to_string(),
            name: request.name.clone(),
            path: request.path.clone(),
            load_inplace: request.inplace,
        };
        if let Err(error) = worker.load_adapter(call).await {
            for (id, worker) in loaded {
                if let Err(e) = worker.unload_adapter(&request.name).await {
                    tracing::warn!(worker = %id, adapter = %request.name, "unloading after a failed load elsewhere failed: {e}");
                }
            }
            return Err(Refusal::from_worker(id, error));
        }
        loaded.push(entry);
    }
    settle(repository, &request.name, true).await;
    Ok(())
}

/// Unloads adapter `name` from every worker in `workers`: `Ok(false)` when none held it.
pub async fn unload_on_workers(
    repository: &ModelRepository,
    workers: Vec<(Arc<str>, Arc<RemoteWorker>)>,
    name: &str,
) -> Result<bool, Refusal> {
    let mut found = false;
    for (id, worker) in &workers {
        found |= worker.unload_adapter(name).await.map_err(|e| Refusal::from_worker(id, e))?;
    }
    if found {
        settle(repository, name, false).await;
    }
    Ok(found)
}

/// Waits (bounded) until the repository serves `name` or no longer does.
async fn settle(repository: &ModelRepository, name: &str, served: bool) {
    let mut changes = repository.subscribe();
    let deadline = tokio::time::Instant::now() + SETTLE_WITHIN;
    while repository.resolve(name, None).is_ok() != served {
        match tokio::time::timeout_at(deadline, changes.changed()).await {
            Ok(Ok(())) => {}
            Ok(Err(_)) => return,
            Err(_) => {
                tracing::warn!(adapter = %name, "the workers' change did not reach this frontend within {SETTLE_WITHIN:?}");
                return;
            }
        }
    }
}

