//! The ZeroMQ event plane (`--event-plane zmq`, Dynamo's default): no broker. Each publishing
//! process binds a PUB socket on its own address and advertises the endpoint with its record in
//! discovery; each subscribing process watches discovery and keeps one SUB socket connected to
//! every advertised endpoint of its namespaces, so events travel straight from worker to
//! frontend. Messages are `[topic, JSON event]`, the topic being the event's kind. A worker that
//! leaves discovery is disconnected; one that comes back is connected again.
//!
//! ZeroMQ here has no authentication and no encryption: the `zeromq` crate speaks only ZMTP's
//! NULL mechanism (it parses CURVE's name but cannot run its handshake), and Dynamo 1.6.1's own
//! ZeroMQ planes use none either, so CURVE would not interoperate. Every ZeroMQ socket is therefore
//! kept on loopback unless `--event-plane-trusted-network` says the network between the processes
//! is private ([`ZmqNetwork`]); across hosts NATS, with its TLS and credentials, is the secure plane.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
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

/// Where ZeroMQ sockets may bind and connect: loopback only, unless the operator says the
/// network is trusted (`--event-plane-trusted-network`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ZmqNetwork {
    trusted: bool,
}

/// The refusal's advice, shared by every ZeroMQ socket.
const OFF_LOOPBACK: &str = "ZeroMQ events carry no authentication or encryption, so they stay on loopback; give \
     --event-plane-trusted-network (TRITIUM_EVENT_PLANE_TRUSTED_NETWORK) if the network between the processes is \
     private, or use --event-plane nats with NATS's TLS and credentials";

impl ZmqNetwork {
    pub fn new(trusted: bool) -> ZmqNetwork {
        ZmqNetwork { trusted }
    }

    /// Whether a socket may bind on `ip` (an unspecified address binds every interface).
    pub fn check_bind(&self, ip: IpAddr, what: &str) -> Result<(), String> {
        if self.trusted || ip.is_loopback() {
            return Ok(());
        }
        Err(format!("{what} would bind on {ip}, off loopback: {OFF_LOOPBACK}"))
    }

    /// Whether a socket may connect to `endpoint` (`tcp://host:port`); a host that is not a
    /// loopback address (or `localhost`) is off loopback.
    pub fn check_endpoint(&self, endpoint: &str) -> Result<(), String> {
        if self.trusted || endpoint_is_loopback(endpoint) {
            return Ok(());
        }
        Err(format!("the ZeroMQ publisher {endpoint} is off loopback: {OFF_LOOPBACK}"))
    }
}

fn endpoint_is_loopback(endpoint: &str) -> bool {
    let Some(address) = endpoint.strip_prefix("tcp://") else { return false };
    let Some((host, _port)) = address.rsplit_once(':') else { return false };
    let host = host.trim_start_matches('[').trim_end_matches(']');
    host.eq_ignore_ascii_case("localhost")
        || host.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
        || host.parse::<Ipv4Addr>().is_ok_and(|ip| ip.is_loopback())
        || host.parse::<Ipv6Addr>().is_ok_and(|ip| ip.is_loopback())
}

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
    pub async fn start(bind: IpAddr, network: ZmqNetwork, discovery: Arc<dyn Discovery>) -> Result<ZmqEventBus, EventError> {
        network.check_bind(bind, "the ZeroMQ event socket (DYN_EVENT_PLANE_HOST)").map_err(EventError::Unavailable)?;
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
        tokio::spawn(follow_publishers(discovery, endpoint.clone(), network, sender.clone(), stop.clone()));
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
        WorkerEvent::ReplicaSession { .. } => "replica_session",
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
    network: ZmqNetwork,
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
                        tokio::spawn(subscribe_to(slot.key().clone(), network, sender.clone(), token.clone()));
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
async fn subscribe_to(endpoint: String, network: ZmqNetwork, sender: broadcast::Sender<WorkerEvent>, stop: CancellationToken) {
    subscribe_frames(&endpoint, network, "", "a ZeroMQ event publisher", stop, |message| {
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
/// A publisher `network` does not allow is not connected to (logged).
pub(crate) async fn subscribe_frames(
    endpoint: &str,
    network: ZmqNetwork,
    prefix: &str,
    what: &str,
    stop: CancellationToken,
    mut handle: impl FnMut(ZmqMessage),
) {
    if let Err(why) = network.check_endpoint(endpoint) {
        tracing::warn!(%endpoint, "not subscribing to {what}: {why}");
        return;
    }
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
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::discovery::MemoryDiscovery;
    use crate::discovery::{WorkerAddress, WorkerInstance};
    use crate::events::LoadReport;

    #[tokio::test]
    async fn events_go_from_a_registered_publisher_to_every_subscriber_and_stop_when_it_leaves() {
        let discovery: Arc<dyn Discovery> = Arc::new(MemoryDiscovery::new());
        let worker = ZmqEventBus::start(IpAddr::V4(Ipv4Addr::LOCALHOST), ZmqNetwork::new(false), Arc::clone(&discovery))
            .await
            .expect("worker bus");
        let frontend = ZmqEventBus::start(IpAddr::V4(Ipv4Addr::LOCALHOST), ZmqNetwork::new(false), Arc::clone(&discovery))
            .await
            .expect("frontend bus");
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

    #[test]
    fn sockets_stay_on_loopback_unless_the_network_is_trusted() {
        let guarded = ZmqNetwork::new(false);
        assert!(guarded.check_bind(IpAddr::V4(Ipv4Addr::LOCALHOST), "s").is_ok());
        assert!(guarded.check_bind("127.0.0.2".parse().unwrap(), "s").is_ok());
        assert!(guarded.check_bind(IpAddr::V6(Ipv6Addr::LOCALHOST), "s").is_ok());
        for off in ["0.0.0.0", "10.1.2.3", "::"] {
            let refusal = guarded.check_bind(off.parse().unwrap(), "the socket").unwrap_err();
            assert!(refusal.contains("--event-plane-trusted-network") && refusal.contains(off), "{refusal}");
        }
        for on in ["tcp://127.0.0.1:5557", "tcp://[::1]:5557", "tcp://localhost:5557", "tcp://127.9.9.9:1"] {
            assert!(guarded.check_endpoint(on).is_ok(), "{on}");
        }
        for off in ["tcp://10.1.2.3:5557", "tcp://[fe80::1]:5557", "tcp://worker-0:5557", "ipc:///tmp/x", "tcp://127.0.0.1"] {
            assert!(guarded.check_endpoint(off).unwrap_err().contains("--event-plane-trusted-network"), "{off}");
        }
        let trusted = ZmqNetwork::new(true);
        assert!(trusted.check_bind("0.0.0.0".parse().unwrap(), "s").is_ok());
        assert!(trusted.check_endpoint("tcp://10.1.2.3:5557").is_ok());
    }

    #[tokio::test]
    async fn a_publisher_off_loopback_is_not_subscribed_to() {
        let mut handled = 0;
        let subscribing = subscribe_frames(
            "tcp://10.255.255.1:5557",
            ZmqNetwork::new(false),
            "",
            "a test publisher",
            CancellationToken::new(),
            |_| handled += 1,
        );
        // Refused before any socket: the call returns at once instead of waiting for messages.
        tokio::time::timeout(Duration::from_secs(5), subscribing).await.expect("returned without connecting");
        assert_eq!(handled, 0);
    }
}
