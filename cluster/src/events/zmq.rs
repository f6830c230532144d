//! The ZeroMQ event plane (`--event-plane zmq`, Dynamo's default): no broker. Each publishing
//! process binds a PUB socket on its own address and advertises the endpoint with its record in
//! discovery; each subscribing process watches discovery and keeps one SUB socket connected to
//! every advertised endpoint of its namespaces, so events travel straight from worker to
//! frontend. Messages are `[topic, JSON event]`, the topic being the event's kind. A worker that
//! leaves discovery is disconnected; one that comes back is connected again.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use tokio::sync::{Mutex, broadcast};
use tokio_util::sync::CancellationToken;
use zeromq::{Socket, SocketRecv, SocketSend, ZmqMessage};

use super::{BUS_BUFFER, EventBus, EventError, WorkerEvent};
use crate::discovery::Discovery;

/// How often the set of publishers is listed again even without a discovery event.
const RELIST_EVERY: Duration = Duration::from_secs(5);

/// See the module docs.
pub struct ZmqEventBus {
    publisher: Mutex<zeromq::PubSocket>,
    endpoint: String,
    sender: broadcast::Sender<WorkerEvent>,
    stop: CancellationToken,
}

impl std::fmt::Debug for ZmqEventBus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ZmqEventBus").field("endpoint", &self.endpoint).finish_non_exhaustive()
    }
}

impl ZmqEventBus {
    /// Binds the PUB socket on `bind` (a port the system picks) and starts following the
    /// publishers `discovery` lists.
    pub async fn start(bind: IpAddr, discovery: Arc<dyn Discovery>) -> Result<ZmqEventBus, EventError> {
        let mut publisher = zeromq::PubSocket::new();
        let bound = publisher
            .bind(&format!("tcp://{}:0", host(bind)))
            .await
            .map_err(|e| EventError::Unavailable(format!("binding the ZeroMQ event socket on {bind}: {e}")))?;
        let endpoint = match bound {
            zeromq::Endpoint::Tcp(_, port) if bind.is_unspecified() => format!("tcp://127.0.0.1:{port}"),
            other => other.to_string(),
        };
        let sender = broadcast::channel(BUS_BUFFER).0;
        let stop = CancellationToken::new();
        tokio::spawn(follow_publishers(discovery, endpoint.clone(), sender.clone(), stop.clone()));
        tracing::info!(%endpoint, "ZeroMQ event plane bound");
        Ok(ZmqEventBus { publisher: Mutex::new(publisher), endpoint, sender, stop })
    }
}

impl Drop for ZmqEventBus {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// `ip` as the host of a ZeroMQ TCP endpoint.
fn host(ip: IpAddr) -> String {
    match ip {
        IpAddr::V6(v6) => format!("[{v6}]"),
        IpAddr::V4(v4) => v4.to_string(),
    }
}

fn topic(event: &WorkerEvent) -> &'static str {
    match event {
        WorkerEvent::ModelsChanged { .. } => "models",
        WorkerEvent::Load(_) => "load",
        WorkerEvent::Kv { .. } => "kv",
        WorkerEvent::Routed { .. } => "routed",
        WorkerEvent::ReplicaLoad { .. } => "replica_load",
    }
}

#[async_trait]
impl EventBus for ZmqEventBus {
    async fn publish(&self, event: WorkerEvent) -> Result<(), EventError> {
        let payload = serde_json::to_vec(&event).map_err(EventError::Encode)?;
        let message = ZmqMessage::try_from(vec![Bytes::from_static(topic(&event).as_bytes()), Bytes::from(payload)])
            .map_err(|e| EventError::Unavailable(format!("building a ZeroMQ message: {e}")))?;
        self.publisher.lock().await.send(message).await.map_err(|e| EventError::Unavailable(format!("publishing on ZeroMQ: {e}")))
    }

    fn subscribe(&self) -> broadcast::Receiver<WorkerEvent> {
        self.sender.subscribe()
    }

    fn endpoint(&self) -> Option<String> {
        Some(self.endpoint.clone())
    }
}

/// Keeps one subscriber per publisher that discovery lists (other than `own`), until `stop`.
async fn follow_publishers(
    discovery: Arc<dyn Discovery>,
    own: String,
    sender: broadcast::Sender<WorkerEvent>,
    stop: CancellationToken,
) {
    let mut watch = discovery.watch();
    let mut subscribed: HashMap<String, CancellationToken> = HashMap::new();
    loop {
        match discovery.instances().await {
            Ok(instances) => {
                let wanted: Vec<String> =
                    instances.into_iter().filter_map(|instance| instance.events).filter(|endpoint| *endpoint != own).collect();
                subscribed.retain(|endpoint, token| {
                    let keep = wanted.contains(endpoint);
                    if !keep {
                        token.cancel();
                    }
                    keep
                });
                for endpoint in wanted {
                    if let std::collections::hash_map::Entry::Vacant(slot) = subscribed.entry(endpoint) {
                        let token = stop.child_token();
                        tokio::spawn(subscribe_to(slot.key().clone(), sender.clone(), token.clone()));
                        slot.insert(token);
                    }
                }
            }
            Err(e) => tracing::warn!("listing the ZeroMQ event publishers failed: {e}"),
        }
        tokio::select! {
            _ = stop.cancelled() => return,
            event = watch.recv() => if let Err(broadcast::error::RecvError::Closed) = event { return },
            _ = tokio::time::sleep(RELIST_EVERY) => {}
        }
    }
}

/// Feeds the events `endpoint` publishes into `sender` until `stop`.
async fn subscribe_to(endpoint: String, sender: broadcast::Sender<WorkerEvent>, stop: CancellationToken) {
    subscribe_frames(&endpoint, "", "a ZeroMQ event publisher", stop, |message| {
        let Some(payload) = message.get(1) else { return };
        match serde_json::from_slice::<WorkerEvent>(payload) {
            // Nobody subscribed is normal.
            Ok(event) => drop(sender.send(event)),
            Err(e) => tracing::warn!(%endpoint, "skipping an event that does not decode: {e}"),
        }
    })
    .await
}

/// Connects a SUB socket to `endpoint` for the topics starting with `prefix` and hands each
/// message to `handle` until `stop` or the subscription ends (`what` names the publisher in logs).
pub(crate) async fn subscribe_frames(
    endpoint: &str,
    prefix: &str,
    what: &str,
    stop: CancellationToken,
    mut handle: impl FnMut(ZmqMessage),
) {
    let mut socket = zeromq::SubSocket::new();
    let connected = async {
        socket.subscribe(prefix).await?;
        socket.connect(endpoint).await
    };
    if let Err(e) = connected.await {
        tracing::warn!(%endpoint, "connecting to {what} failed: {e}");
        return;
    }
    tracing::debug!(%endpoint, "subscribed to {what}");
    loop {
        let message = tokio::select! {
            _ = stop.cancelled() => return,
            message = socket.recv() => message,
        };
        match message {
            Ok(message) => handle(message),
            Err(e) => {
                tracing::warn!(%endpoint, "the subscription to {what} ended: {e}");
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use super::*;
    use crate::discovery::MemoryDiscovery;
    use crate::discovery::{WorkerAddress, WorkerInstance};
    use crate::events::LoadReport;

    #[tokio::test]
    async fn events_go_from_a_registered_publisher_to_every_subscriber_and_stop_when_it_leaves() {
        let discovery: Arc<dyn Discovery> = Arc::new(MemoryDiscovery::new());
        let worker = ZmqEventBus::start(IpAddr::V4(Ipv4Addr::LOCALHOST), Arc::clone(&discovery)).await.expect("worker bus");
        let frontend = ZmqEventBus::start(IpAddr::V4(Ipv4Addr::LOCALHOST), Arc::clone(&discovery)).await.expect("frontend bus");
        let mut heard = frontend.subscribe();
        let record = WorkerInstance {
            id: "w".into(),
            address: WorkerAddress::Grpc("http://127.0.0.1:1".into()),
            models: vec!["m".into()],
            mode: Default::default(),
            events: worker.endpoint(),
            device: Default::default(),
        };
        discovery.register(record).await.expect("register");
        let event = WorkerEvent::Load(LoadReport { worker: "w".into(), model: "m".into(), active: 3, ..Default::default() });
        // A SUB socket drops what was published before it connected: publish until one arrives.
        let received = tokio::time::timeout(Duration::from_secs(10), async {
            loop {
                worker.publish(event.clone()).await.expect("publish");
                if let Ok(Ok(got)) = tokio::time::timeout(Duration::from_millis(100), heard.recv()).await {
                    return got;
                }
            }
        })
        .await
        .expect("an event within 10 s");
        assert_eq!(received, event);
        discovery.deregister("w").await.expect("deregister");
    }
}
