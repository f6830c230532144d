//! The router: for each request, the worker that runs it. gRPC (and later HTTP) ask the same
//! router. Its table is built from discovery: every worker instance and the models it serves.
//! In-process workers are reached through clients handed to the router; workers in other
//! processes through remote clients (the distributed issue adds those).

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use arc_swap::ArcSwap;
use tokio::sync::broadcast::error::RecvError;
use tokio_util::sync::CancellationToken;
use tritium_worker::{ModelRepository, WorkerClient};

use crate::discovery::{Discovery, WorkerAddress, WorkerInstance};
use crate::events::{EventBus, WorkerEvent};

type Route = Arc<[Arc<dyn WorkerClient>]>;

#[derive(Debug)]
pub struct Router {
    /// Answers requests no instance claims: the in-process worker, whose registry gives Triton's
    /// precise errors (unknown model, no available versions, ...).
    fallback: Arc<dyn WorkerClient>,
    /// Clients of the workers this router can reach, by worker id.
    clients: Mutex<HashMap<String, Arc<dyn WorkerClient>>>,
    /// Model name -> the workers serving it; replaced whole on every discovery change.
    table: ArcSwap<HashMap<String, Route>>,
    next: AtomicUsize,
}

impl Router {
    /// A router whose fallback is the in-process worker `local_id`.
    pub fn new(local_id: &str, local: Arc<dyn WorkerClient>) -> Router {
        Router {
            fallback: Arc::clone(&local),
            clients: Mutex::new(HashMap::from([(local_id.to_string(), local)])),
            table: ArcSwap::from_pointee(HashMap::new()),
            next: AtomicUsize::new(0),
        }
    }

    /// The worker for a request to `model`: round-robin among the workers serving it.
    pub fn route(&self, model: &str) -> Arc<dyn WorkerClient> {
        let table = self.table.load();
        match table.get(model) {
            Some(workers) if workers.len() == 1 => Arc::clone(&workers[0]),
            Some(workers) if !workers.is_empty() => {
                let turn = self.next.fetch_add(1, Ordering::Relaxed);
                Arc::clone(&workers[turn % workers.len()])
            }
            _ => Arc::clone(&self.fallback),
        }
    }

    /// Rebuilds the table from the instances discovery lists.
    pub fn apply(&self, instances: &[WorkerInstance]) {
        let clients = self.lock_clients();
        let mut table: HashMap<String, Vec<Arc<dyn WorkerClient>>> = HashMap::new();
        for instance in instances {
            let Some(client) = clients.get(&instance.id) else {
                if let WorkerAddress::Grpc(uri) = &instance.address {
                    tracing::warn!(worker = %instance.id, %uri, "no client for a remote worker yet; not routing to it");
                }
                continue;
            };
            for model in &instance.models {
                table.entry(model.clone()).or_default().push(Arc::clone(client));
            }
        }
        self.table.store(Arc::new(table.into_iter().map(|(model, workers)| (model, Route::from(workers))).collect()));
    }

    fn lock_clients(&self) -> MutexGuard<'_, HashMap<String, Arc<dyn WorkerClient>>> {
        self.clients.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// Keeps the router's table in step with discovery until `stop` is cancelled.
pub async fn follow_discovery(router: Arc<Router>, discovery: Arc<dyn Discovery>, stop: CancellationToken) {
    let mut watch = discovery.watch();
    loop {
        match discovery.instances().await {
            Ok(instances) => router.apply(&instances),
            Err(e) => tracing::warn!("discovery listing failed: {e}"),
        }
        // Any change, or having fallen behind, means: list again.
        tokio::select! {
            _ = stop.cancelled() => return,
            event = watch.recv() => if let Err(RecvError::Closed) = event { return },
        }
    }
}

/// Registers the in-process worker's models in discovery and announces changes on the event
/// bus, following the registry until `stop` is cancelled; deregisters on the way out.
pub async fn publish_local_worker(
    id: String,
    repository: Arc<ModelRepository>,
    discovery: Arc<dyn Discovery>,
    events: Arc<dyn EventBus>,
    stop: CancellationToken,
) {
    let mut changes = repository.subscribe();
    loop {
        let models: Vec<String> = repository.served_models().iter().map(|m| m.name.clone()).collect();
        let instance = WorkerInstance { id: id.clone(), address: WorkerAddress::InProcess, models: models.clone() };
        if let Err(e) = discovery.register(instance).await {
            tracing::warn!("registering the in-process worker failed: {e}");
        }
        if let Err(e) = events.publish(WorkerEvent::ModelsChanged { worker: id.clone(), models }).await {
            tracing::warn!("publishing a model change failed: {e}");
        }
        tokio::select! {
            _ = stop.cancelled() => break,
            changed = changes.changed() => if changed.is_err() { break },
        }
    }
    let _ = discovery.deregister(&id).await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use async_trait::async_trait;
    use tritium_worker::{InferOutcome, InferenceRequest, InferenceResponse, WorkerError};

    /// A worker that says who it is in the response id.
    #[derive(Debug)]
    struct Named(&'static str);

    #[async_trait]
    impl WorkerClient for Named {
        async fn infer(&self, request: InferenceRequest) -> Result<InferenceResponse, WorkerError> {
            Ok(InferenceResponse {
                model_name: Arc::from(request.model_name.as_str()),
                model_version: 1,
                id: self.0.to_string(),
                outputs: Vec::new(),
                is_final: true,
            })
        }

        async fn infer_stream(&self, request: InferenceRequest) -> Result<InferOutcome, WorkerError> {
            self.infer(request).await.map(InferOutcome::Single)
        }
    }

    async fn who(router: &Router, model: &str) -> String {
        router.route(model).infer(InferenceRequest::new(model, Vec::new())).await.map(|r| r.id).unwrap_or_default()
    }

    #[tokio::test]
    async fn routes_by_model_round_robin_and_falls_back_to_the_local_worker() {
        let router = Router::new("local", Arc::new(Named("local")));
        router.lock_clients().insert("other".into(), Arc::new(Named("other")));
        let instance = |id: &str, models: &[&str]| WorkerInstance {
            id: id.to_string(),
            address: WorkerAddress::InProcess,
            models: models.iter().map(|m| m.to_string()).collect(),
        };
        router.apply(&[instance("local", &["identity", "add_sub"]), instance("other", &["add_sub"]), instance("ghost", &["x"])]);
        assert_eq!(who(&router, "identity").await, "local");
        let turns = [who(&router, "add_sub").await, who(&router, "add_sub").await];
        assert!(turns.contains(&"local".to_string()) && turns.contains(&"other".to_string()), "{turns:?}");
        assert_eq!(who(&router, "unknown").await, "local", "unclaimed models fall back to the local registry");
        assert_eq!(who(&router, "x").await, "local", "a worker without a client is not routed to");
    }
}
