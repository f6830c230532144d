//! Feeds Dynamo workers' KV events to the router: one ZeroMQ subscription per publisher the
//! records advertise, or one NATS subscription to every watched namespace's `kv-events`
//! subjects. Each event names its worker by instance id; it is applied to the router's index
//! under that worker's member id, for each model the worker serves.

use std::collections::HashMap;
use std::sync::Arc;

use futures::StreamExt;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::kv_events::{router_events, zmq_envelope};
use tritium_backend_api::kv::KvEvent;

use crate::discovery::{NamespaceScope, WorkerAddress, WorkerInstance};

/// Where decoded events go: `(worker id, model, event)`, the router's index in a frontend.
pub type KvSink = Arc<dyn Fn(&str, &str, &KvEvent) + Send + Sync>;

/// Where Dynamo's workers publish KV events: the event plane the frontend was started with.
#[derive(Clone)]
pub enum DynamoEventPlane {
    /// Direct ZeroMQ publishers, found in the records (off loopback only on a trusted network).
    Zmq(crate::events::zmq::ZmqNetwork),
    Nats(async_nats::Client),
}

/// The plane Dynamo workers' KV events come on, for the frontend's `--event-plane`.
pub async fn event_plane_for(
    events: &crate::events::EventsConfig,
    health: &crate::health::PlaneHealth,
) -> Result<Option<DynamoEventPlane>, String> {
    use crate::events::EventsConfig;
    Ok(match events {
        EventsConfig::Zmq { trusted_network, .. } => {
            Some(DynamoEventPlane::Zmq(crate::events::zmq::ZmqNetwork::new(*trusted_network)))
        }
        EventsConfig::Nats { url } => {
            let (options, used) = crate::credentials::nats_options_from_env(
                async_nats::ConnectOptions::new().event_callback(health.nats_events("NATS (Dynamo KV events)")),
            )
            .map_err(|e| format!("Dynamo workers' KV events: {e}"))?;
            match options.connect(url.as_str()).await {
                Ok(client) => Some(DynamoEventPlane::Nats(client)),
                Err(e) => return Err(format!("Dynamo workers' KV events: cannot reach NATS at {url}: {e}{}", used.hint())),
            }
        }
        EventsConfig::None => None,
    })
}

type Workers = watch::Receiver<Arc<Vec<WorkerInstance>>>;

/// Hands Dynamo workers' KV events to `router` until `stop`.
pub fn follow_kv_events(
    router: KvSink,
    plane: DynamoEventPlane,
    workers: Workers,
    mut publishers: watch::Receiver<Arc<Vec<String>>>,
    scope: NamespaceScope,
    stop: CancellationToken,
) {
    match plane {
        DynamoEventPlane::Zmq(network) => {
            tokio::spawn(async move {
                let mut subscribed: HashMap<String, CancellationToken> = HashMap::new();
                loop {
                    let wanted = publishers.borrow_and_update().clone();
                    subscribed.retain(|endpoint, token| {
                        let keep = wanted.contains(endpoint);
                        if !keep {
                            token.cancel();
                        }
                        keep
                    });
                    for endpoint in wanted.iter() {
                        if !subscribed.contains_key(endpoint) {
                            let token = stop.child_token();
                            tokio::spawn(subscribe_zmq(
                                endpoint.clone(),
                                network,
                                Arc::clone(&router),
                                workers.clone(),
                                token.clone(),
                            ));
                            subscribed.insert(endpoint.clone(), token);
                        }
                    }
                    tokio::select! {
                        _ = stop.cancelled() => return,
                        changed = publishers.changed() => if changed.is_err() { return },
                    }
                }
            });
        }
        DynamoEventPlane::Nats(client) => {
            tokio::spawn(subscribe_nats(client, router, workers, scope, stop));
        }
    }
}

async fn subscribe_zmq(
    endpoint: String,
    network: crate::events::zmq::ZmqNetwork,
    router: KvSink,
    workers: Workers,
    stop: CancellationToken,
) {
    let what = "a Dynamo worker's KV events";
    crate::events::zmq::subscribe_frames(&endpoint, network, "kv-events", what, stop, |message| {
        let frames: Vec<&[u8]> = message.iter().map(|frame| frame.as_ref()).collect();
        match zmq_envelope(&frames) {
            Ok(Some(envelope)) => apply(&router, &workers, &envelope, None),
            Ok(None) => {}
            Err(e) => tracing::warn!(%endpoint, "a Dynamo KV event is refused: {e}"),
        }
    })
    .await
}

async fn subscribe_nats(
    client: async_nats::Client,
    router: KvSink,
    workers: Workers,
    scope: NamespaceScope,
    stop: CancellationToken,
) {
    let mut subscription = match client.subscribe("namespace.*.component.*.endpoint.*.kv-events").await {
        Ok(subscription) => subscription,
        Err(e) => {
            tracing::warn!("subscribing to Dynamo workers' KV events on NATS failed: {e}");
            return;
        }
    };
    loop {
        let message = tokio::select! {
            _ = stop.cancelled() => return,
            message = subscription.next() => match message { Some(message) => message, None => return },
        };
        // namespace.{ns}.component.{c}.endpoint.{e}.kv-events
        let namespace = message.subject.split('.').nth(1).unwrap_or("");
        if !scope.watches(namespace) {
            continue;
        }
        apply(&router, &workers, &message.payload, Some(namespace));
    }
}

/// Applies one envelope's events to the workers they name.
fn apply(router: &KvSink, workers: &Workers, envelope: &[u8], namespace: Option<&str>) {
    let events = match router_events(envelope) {
        Ok(events) => events,
        Err(e) => {
            tracing::warn!("a Dynamo KV event is refused: {e}");
            return;
        }
    };
    let workers = workers.borrow().clone();
    for (instance, event) in events {
        let suffix = format!("/{instance:x}");
        let worker = workers.iter().find(|w| {
            matches!(&w.address, WorkerAddress::Dynamo(target)
                if target.key.ends_with(&suffix) && namespace.is_none_or(|ns| target.key.starts_with(&format!("{ns}/"))))
        });
        // Events of a worker not (yet) listed: it is indexed once it is, from its next events.
        let Some(worker) = worker else { continue };
        for model in &worker.models {
            router(&worker.id, model, &event);
        }
    }
}
