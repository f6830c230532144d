//! `grpc.health.v1.Health`: the server (`""` and the inference service name) is SERVING while
//! every model it was asked to serve is ready; each served model is a service name of its own.

use std::collections::HashSet;
use std::sync::Arc;

use tokio_util::sync::CancellationToken;
use tonic_health::ServingStatus;
use tonic_health::server::HealthReporter;
use tritium_worker::ModelRepository;

pub async fn publish(reporter: &HealthReporter, repository: &ModelRepository, known: &mut HashSet<String>) {
    let server = if repository.all_ready() { ServingStatus::Serving } else { ServingStatus::NotServing };
    reporter.set_service_status("", server).await;
    reporter.set_service_status(tritium_proto::SERVICE_NAME, server).await;
    let served: HashSet<String> = repository.served_models().iter().map(|m| m.name.clone()).collect();
    for name in &served {
        reporter.set_service_status(name, ServingStatus::Serving).await;
    }
    for gone in known.difference(&served) {
        reporter.set_service_status(gone, ServingStatus::NotServing).await;
    }
    *known = served;
}

/// Keeps the health statuses in step with the registry until `stop` is cancelled.
pub async fn follow_repository(reporter: HealthReporter, repository: Arc<ModelRepository>, stop: CancellationToken) {
    let mut changes = repository.subscribe();
    let mut known = HashSet::new();
    loop {
        publish(&reporter, &repository, &mut known).await;
        tokio::select! {
            _ = stop.cancelled() => break,
            changed = changes.changed() => if changed.is_err() { break },
        }
    }
    reporter.set_service_status("", ServingStatus::NotServing).await;
    reporter.set_service_status(tritium_proto::SERVICE_NAME, ServingStatus::NotServing).await;
}
