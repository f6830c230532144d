//! The tasks that keep the router current: discovery (which workers serve which models), the
//! event bus (load reports and KV-cache announcements), and the in-process worker's own
//! registration.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::broadcast::error::RecvError;
use tokio_util::sync::CancellationToken;
use tritium_worker::ModelRepository;

use super::Router;
use crate::discovery::{DisaggregationMode, Discovery, WorkerAddress, WorkerInstance};
use crate::events::{EventBus, WorkerEvent};

/// Re-lists this often even without a watch event, so a worker whose description failed is
/// described again.
const RELIST_EVERY: Duration = Duration::from_secs(5);

/// Workers listed beside discovery's: the Dynamo workers of Dynamo's records, the engines of
/// `--engine-grpc`.
pub type Listing = tokio::sync::watch::Receiver<Arc<Vec<WorkerInstance>>>;

/// Keeps the router's table in step with discovery, with the workers each of `listings` lists
/// (Dynamo's workers, engines) and with the in-process worker's own models (which are not
/// registered in a shared discovery: other frontends could not reach them) until `stop` is
/// cancelled.
pub async fn follow_discovery(
    router: Arc<Router>,
    discovery: Arc<dyn Discovery>,
    mut listings: Vec<Listing>,
    stop: CancellationToken,
) {
    let mut watch = discovery.watch();
    let mut local_changes = router.repository.subscribe();
    loop {
        match discovery.instances().await {
            Ok(mut instances) => {
                for listing in &mut listings {
                    instances.extend(listing.borrow_and_update().iter().cloned());
                }
                instances.retain(|i| *i.id != *router.local_id);
                let local = router.repository.local_models().iter().map(|m| m.name.clone()).collect();
                instances.push(WorkerInstance {
                    id: router.local_id.to_string(),
                    address: WorkerAddress::InProcess,
                    models: local,
                    mode: DisaggregationMode::Agg,
                    events: None,
                    device: crate::discovery::DeviceClass::default(),
                });
                router.apply(&instances).await;
            }
            Err(e) => tracing::warn!("discovery listing failed: {e}"),
        }
        // Any change, or having fallen behind, means: list again.
        tokio::select! {
            _ = stop.cancelled() => return,
            event = watch.recv() => if let Err(RecvError::Closed) = event { return },
            changed = local_changes.changed() => if changed.is_err() { return },
            (changed, at) = any_changed(&mut listings) => {
                if changed.is_err() { listings.remove(at); }
            }
            _ = tokio::time::sleep(RELIST_EVERY) => {}
        }
    }
}

/// Waits for any of `listings` to change: the result and which one (never, for none).
async fn any_changed(listings: &mut [Listing]) -> (Result<(), tokio::sync::watch::error::RecvError>, usize) {
    if listings.is_empty() {
        return std::future::pending().await;
    }
    let changes = listings.iter_mut().map(|listing| Box::pin(listing.changed()));
    let (changed, at, _) = futures::future::select_all(changes).await;
    (changed, at)
}

/// KV events waiting for one of the router's event threads, at most (the subscription lags,
/// and says so, beyond it).
const EVENT_THREAD_QUEUE: usize = 4096;

/// Feeds the router's KV index and load table from the event bus until `stop` is cancelled.
/// KV events are applied by `--router-event-threads` tasks, each worker's on the same one so
/// they apply in order.
pub async fn follow_events(router: Arc<Router>, events: Arc<dyn EventBus>, stop: CancellationToken) {
    let mut subscription = events.subscribe();
    let appliers = kv_appliers(&router, stop.clone());
    loop {
        let event = tokio::select! {
            _ = stop.cancelled() => return,
            event = subscription.recv() => event,
        };
        match event {
            // Without KV events (`--no-router-kv-events`) the router predicts what workers hold.
            Ok(WorkerEvent::Kv { worker, model, event }) => {
                if router.options.kv_events {
                    let shard = shard_of(&worker, appliers.len());
                    if appliers[shard].try_send((worker, model, event)).is_err() {
                        tracing::warn!("the router's event threads are behind; a KV event was dropped");
                    }
                }
            }
            Ok(WorkerEvent::Load(report)) => {
                router.loads.lock().insert((report.worker.clone(), report.model.clone()), report);
            }
            Ok(WorkerEvent::ModelsChanged { .. }) => {}
            Ok(WorkerEvent::Routed { router: from, worker, model, blocks }) => {
                router.replica_routed(&from, &worker, &model, &blocks)
            }
            Ok(WorkerEvent::ReplicaLoad { router: from, request, change }) => router.replica_load(&from, request, change),
            Ok(WorkerEvent::ReplicaSession { router: from, session, worker }) => router.replica_session(&from, &session, &worker),
            Err(RecvError::Lagged(missed)) => {
                tracing::warn!(
                    missed,
                    "the router fell behind the event bus; its KV index may miss blocks until workers report again"
                );
            }
            Err(RecvError::Closed) => return,
        }
    }
}

type KvUpdate = (String, String, tritium_backend_api::kv::KvEvent);

/// Starts the router's event threads; each applies the KV events it is sent to the index.
fn kv_appliers(router: &Arc<Router>, stop: CancellationToken) -> Vec<tokio::sync::mpsc::Sender<KvUpdate>> {
    (0..router.options.event_threads.max(1))
        .map(|_| {
            let (sender, mut receiver) = tokio::sync::mpsc::channel::<KvUpdate>(EVENT_THREAD_QUEUE);
            let (router, stop) = (Arc::clone(router), stop.clone());
            tokio::spawn(async move {
                loop {
                    let update = tokio::select! {
                        _ = stop.cancelled() => return,
                        update = receiver.recv() => match update { Some(update) => update, None => return },
                    };
                    let (worker, model, event) = update;
                    router.kv.lock().apply(&worker, &model, &event);
                    router.kv_event_applied();
                }
            });
            sender
        })
        .collect()
}

/// The event thread of `worker`'s KV events.
fn shard_of(worker: &str, shards: usize) -> usize {
    use std::hash::{Hash, Hasher};
    let mut hasher = std::hash::DefaultHasher::new();
    worker.hash(&mut hasher);
    (hasher.finish() % shards.max(1) as u64) as usize
}

/// Predictions this router shares with its replicas wait at most this many deep to be published.
const REPLICA_QUEUE: usize = 1024;

/// Publishes the router's routing decisions on `events` for the other replicas until `stop`.
pub fn publish_replica_events(router: &Arc<Router>, events: Arc<dyn EventBus>, stop: CancellationToken) {
    let (sender, mut receiver) = tokio::sync::mpsc::channel(REPLICA_QUEUE);
    router.publish_replica_events(sender);
    tokio::spawn(async move {
        loop {
            let event = tokio::select! {
                _ = stop.cancelled() => return,
                event = receiver.recv() => match event { Some(event) => event, None => return },
            };
            if let Err(e) = events.publish(event).await {
                tracing::warn!("sharing a routing decision with the other routers failed: {e}");
            }
        }
    });
}

/// Registers a worker (in this process or serving the worker plane at an address, in its
/// disaggregation `mode`) with the models its repository loaded, re-registering on every change, until `stop` is cancelled;
/// then deregisters.
#[allow(clippy::too_many_arguments)]
pub async fn publish_worker(
    id: String,
    address: WorkerAddress,
    mode: DisaggregationMode,
    device: crate::discovery::DeviceClass,
    repository: Arc<ModelRepository>,
    discovery: Arc<dyn Discovery>,
    events: Arc<dyn EventBus>,
    stop: CancellationToken,
) {
    let mut changes = repository.subscribe();
    loop {
        let models = repository.served_names();
        let instance = WorkerInstance {
            id: id.clone(),
            address: address.clone(),
            models: models.clone(),
            mode,
            events: events.endpoint(),
            device,
        };
        if let Err(e) = discovery.register(instance).await {
            tracing::warn!(worker = %id, "registering in discovery failed: {e}");
        }
        if let Err(e) = events.publish(WorkerEvent::ModelsChanged { worker: id.clone(), models }).await {
            tracing::warn!("publishing a model change failed: {e}");
        }
        tokio::select! {
            _ = stop.cancelled() => break,
            changed = changes.changed() => if changed.is_err() { break },
        }
    }
    if let Err(e) = discovery.deregister(&id).await {
        tracing::warn!(worker = %id, "deregistering failed: {e}");
    }
}
