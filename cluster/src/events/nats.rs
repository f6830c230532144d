//! The event bus over NATS core (no JetStream): every process of one namespace publishes its
//! events on `tritium.{namespace}.events.{kind}.{worker}` and hears all of them, its own
//! included, through one wildcard subscription on `tritium.{namespace}.events.>`.
//!
//! Delivery is NATS core's: at most once, in order per publisher. Subscribers that must not miss
//! state (a KV index, a load table) rebuild it from the next events after a reconnect; that is
//! what the events are designed for.

use std::time::Duration;

use async_nats::{Client, ConnectOptions, Subscriber};
use async_trait::async_trait;
use bytes::Bytes;
use futures::StreamExt;
use tokio::sync::broadcast;
use tokio::task::JoinHandle;

use super::{EventBus, EventError, WorkerEvent};
use crate::discovery::NamespaceScope;

/// Events a subscriber may fall behind by before it sees `Lagged`. Larger than the memory bus's:
/// KV events from a whole fleet arrive here.
const NATS_BUS_BUFFER: usize = 4096;

/// How long `connect` waits for the server to confirm the subscription.
const ROUND_TRIP_WITHIN: Duration = Duration::from_secs(10);

/// An event bus shared by every process connected to one NATS server (or cluster) and namespace.
#[derive(Debug)]
pub struct NatsEventBus {
    client: Client,
    /// `tritium.{namespace}.events`, namespace already sanitized.
    prefix: String,
    sender: broadcast::Sender<WorkerEvent>,
    forward: JoinHandle<()>,
}

impl NatsEventBus {
    /// Connects to `url` (e.g. `nats://127.0.0.1:4222`) and subscribes to the events of the
    /// scope's namespaces before returning, so nothing published after this returns is missed.
    /// Events are published in the scope's own namespace.
    pub async fn connect(url: &str, scope: &NamespaceScope) -> Result<NatsEventBus, EventError> {
        Self::connect_reporting(url, scope, &crate::health::PlaneHealth::default()).await
    }

    /// [`NatsEventBus::connect`], telling `health` when the server refuses the process's
    /// credentials while running, and when it takes them back.
    pub async fn connect_reporting(
        url: &str,
        scope: &NamespaceScope,
        health: &crate::health::PlaneHealth,
    ) -> Result<NatsEventBus, EventError> {
        let connect_error = |e: &dyn std::fmt::Display| EventError::Connect { url: url.to_string(), reason: e.to_string() };
        let options =
            ConnectOptions::new().name(format!("tritium/{}", scope.own)).event_callback(health.nats_events("NATS (events)"));
        let (options, used) = crate::credentials::nats_options_from_env(options).map_err(|e| connect_error(&e))?;
        let client = options.connect(url).await.map_err(|e| connect_error(&format!("{e}{}", used.hint())))?;
        let prefix = format!("tritium.{}.events", token(&scope.own));
        // NATS wildcards match whole tokens, so a namespace prefix subscribes to every namespace
        // and keeps those whose token starts with it.
        let (subject, namespace_prefix) = match &scope.watch_prefix {
            None => (format!("{prefix}.>"), None),
            Some(watched) => ("tritium.*.events.>".to_string(), Some(sanitized(watched))),
        };
        let subscriber = client.subscribe(subject).await.map_err(|e| connect_error(&e))?;
        round_trip(&client).await.map_err(|e| connect_error(&e))?;
        let sender = broadcast::channel(NATS_BUS_BUFFER).0;
        let forward = tokio::spawn(forward(subscriber, namespace_prefix, sender.clone()));
        tracing::info!(%url, %prefix, "event bus connected to NATS");
        Ok(NatsEventBus { client, prefix, sender, forward })
    }

    /// The subject `event` is published on.
    fn subject(&self, event: &WorkerEvent) -> String {
        let (kind, worker) = match event {
            WorkerEvent::ModelsChanged { worker, .. } => ("models", worker),
            WorkerEvent::Load(report) => ("load", &report.worker),
            WorkerEvent::Kv { worker, .. } => ("kv", worker),
            WorkerEvent::Routed { router, .. } => ("routed", router),
            WorkerEvent::ReplicaLoad { router, .. } => ("replica_load", router),
            WorkerEvent::ReplicaSession { router, .. } => ("replica_session", router),
        };
        format!("{}.{kind}.{}", self.prefix, token(worker))
    }
}

#[async_trait]
impl EventBus for NatsEventBus {
    async fn publish(&self, event: WorkerEvent) -> Result<(), EventError> {
        let payload = serde_json::to_vec(&event).map_err(EventError::Encode)?;
        // This only queues the message; the client's connection task writes it out.
        self.client
            .publish(self.subject(&event), payload.into())
            .await
            .map_err(|e| EventError::Unavailable(format!("publishing to NATS: {e}")))
    }

    fn subscribe(&self) -> broadcast::Receiver<WorkerEvent> {
        self.sender.subscribe()
    }

    /// Waits until the server has taken everything published so far. Having written it to the
    /// socket is not enough: a connection closed right after, with unread data from the server
    /// in its buffer, is reset, and the server may drop what it had not read yet.
    async fn flush(&self) -> Result<(), EventError> {
        self.client.flush().await.map_err(|e| EventError::Unavailable(format!("flushing to NATS: {e}")))?;
        round_trip(&self.client).await.map_err(|e| EventError::Unavailable(format!("flushing to NATS: {e}")))
    }
}

impl Drop for NatsEventBus {
    fn drop(&mut self) {
        self.forward.abort();
        // Once its last handle is gone the client stops without writing what is still queued;
        // a flush holding a handle gets published events out first, when a runtime is still
        // there to run it. Call `flush` before dropping to be sure.
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            let client = self.client.clone();
            runtime.spawn(async move {
                if let Err(e) = client.flush().await {
                    tracing::debug!("flushing NATS events on drop failed: {e}");
                }
            });
        }
    }
}

/// Returns once the server has processed everything `client` sent before (its subscriptions
/// above all): the server routes a message back to its sender only after what came ahead of it
/// on the same connection. `Client::flush` is not enough; it only empties the local buffer.
async fn round_trip(client: &Client) -> Result<(), String> {
    let inbox = client.new_inbox();
    let mut echo = client.subscribe(inbox.clone()).await.map_err(|e| e.to_string())?;
    client.publish(inbox, Bytes::new()).await.map_err(|e| e.to_string())?;
    match tokio::time::timeout(ROUND_TRIP_WITHIN, echo.next()).await {
        Ok(Some(_)) => Ok(()),
        Ok(None) => Err("the connection closed".to_string()),
        Err(_) => Err(format!("no answer from the server within {ROUND_TRIP_WITHIN:?}")),
    }
}

/// Feeds the watched namespaces' messages into the broadcast channel until the subscription
/// ends; with a `namespace_prefix`, the subject's namespace token must start with it.
async fn forward(mut subscriber: Subscriber, namespace_prefix: Option<String>, sender: broadcast::Sender<WorkerEvent>) {
    while let Some(message) = subscriber.next().await {
        if let Some(prefix) = &namespace_prefix {
            let namespace = message.subject.split('.').nth(1).unwrap_or_default();
            if !namespace.starts_with(prefix.as_str()) {
                continue;
            }
        }
        match serde_json::from_slice::<WorkerEvent>(&message.payload) {
            // Nobody subscribed is normal.
            Ok(event) => drop(sender.send(event)),
            Err(e) => tracing::warn!(subject = %message.subject, "skipping an event that does not decode: {e}"),
        }
    }
    tracing::debug!("NATS event subscription ended");
}

/// `name` as one NATS subject token: `.`, `*`, `>`, whitespace and control characters become
/// `_` (they separate tokens or are wildcards), and an empty name becomes `_`.
pub(crate) fn token(name: &str) -> String {
    if name.is_empty() {
        return "_".to_string();
    }
    sanitized(name)
}

/// `name` with the characters [`token`] replaces replaced (an empty name stays empty).
fn sanitized(name: &str) -> String {
    name.chars().map(|c| if matches!(c, '.' | '*' | '>') || c.is_whitespace() || c.is_control() { '_' } else { c }).collect()
}

#[cfg(test)]
mod tests {
    use tritium_backend_api::kv::KvEvent;

    use crate::test_nats::NatsServer;
    use super::*;
    use crate::events::{EventsConfig, LoadReport, connect};

    async fn next(events: &mut broadcast::Receiver<WorkerEvent>) -> WorkerEvent {
        tokio::time::timeout(Duration::from_secs(10), events.recv()).await.expect("an event within 10 s").expect("recv")
    }

    fn one_of_each(worker: &str) -> Vec<WorkerEvent> {
        let kv = |event| WorkerEvent::Kv { worker: worker.into(), model: "llm".into(), event };
        vec![
            WorkerEvent::ModelsChanged { worker: worker.into(), models: vec!["identity".into(), "llm".into()] },
            WorkerEvent::Load(LoadReport {
                worker: worker.into(),
                model: "llm".into(),
                active: 3,
                queued: 1,
                kv_used: 640,
                kv_capacity: 4096,
                max_batched_tokens: 256,
                prompt_tokens: 1000,
                prompt_tokens_cached: 512,
                tokens_generated: 77,
            }),
            kv(KvEvent::Stored { parent: Some(u64::MAX), blocks: vec![1, 2, 0xdead_beef_dead_beef] }),
            kv(KvEvent::Removed { blocks: vec![2] }),
            kv(KvEvent::Cleared),
        ]
    }

    #[tokio::test]
    async fn buses_of_one_namespace_see_each_others_events_and_other_namespaces_do_not() {
        let server = NatsServer::start();
        let a = NatsEventBus::connect(server.url(), &NamespaceScope::own("prod")).await.expect("a");
        let discovery = std::sync::Arc::new(crate::discovery::MemoryDiscovery::new());
        let b = connect(&EventsConfig::Nats { url: server.url().to_string() }, &NamespaceScope::own("prod"), discovery, &Default::default())
            .await
            .expect("b");
        let elsewhere = NatsEventBus::connect(server.url(), &NamespaceScope::own("staging")).await.expect("elsewhere");
        let (mut at_a, mut at_b, mut at_elsewhere) = (a.subscribe(), b.subscribe(), elsewhere.subscribe());

        for event in one_of_each("worker-a") {
            a.publish(event).await.expect("publish");
        }
        for event in one_of_each("worker-a") {
            assert_eq!(next(&mut at_b).await, event);
            assert_eq!(next(&mut at_a).await, event, "a bus hears its own events, like the memory bus");
        }
        for event in one_of_each("worker-b") {
            b.publish(event).await.expect("publish");
        }
        for event in one_of_each("worker-b") {
            assert_eq!(next(&mut at_a).await, event);
        }

        // Published after the server routed everything above: had any of it matched the other
        // namespace, it would be queued ahead of this.
        let marker = WorkerEvent::ModelsChanged { worker: "staging-worker".into(), models: Vec::new() };
        elsewhere.publish(marker.clone()).await.expect("publish");
        assert_eq!(next(&mut at_elsewhere).await, marker, "nothing from another namespace came first");
        assert!(at_elsewhere.try_recv().is_err());
    }

    #[tokio::test]
    async fn a_namespace_prefix_hears_every_namespace_starting_with_it_and_publishes_in_its_own() {
        let server = NatsServer::start();
        let frontend = NamespaceScope { own: "prod".into(), watch_prefix: Some("prod-".into()) };
        let frontend = NatsEventBus::connect(server.url(), &frontend).await.expect("frontend");
        let blue = NatsEventBus::connect(server.url(), &NamespaceScope::own("prod-blue")).await.expect("blue");
        let green = NatsEventBus::connect(server.url(), &NamespaceScope::own("prod-green")).await.expect("green");
        let other = NatsEventBus::connect(server.url(), &NamespaceScope::own("production")).await.expect("other");
        let (mut at_frontend, mut at_blue) = (frontend.subscribe(), blue.subscribe());

        let event = |worker: &str| WorkerEvent::ModelsChanged { worker: worker.into(), models: Vec::new() };
        other.publish(event("production-worker")).await.expect("publish");
        other.flush().await.expect("flush");
        blue.publish(event("blue-worker")).await.expect("publish");
        blue.flush().await.expect("flush");
        green.publish(event("green-worker")).await.expect("publish");
        assert_eq!(next(&mut at_frontend).await, event("blue-worker"), "'production' does not start with 'prod-'");
        assert_eq!(next(&mut at_frontend).await, event("green-worker"));

        // The frontend's own events go to its own namespace, which `prod-blue` does not hear.
        assert_eq!(next(&mut at_blue).await, event("blue-worker"));
        frontend.publish(event("frontend")).await.expect("publish");
        frontend.flush().await.expect("flush");
        blue.publish(event("marker")).await.expect("publish");
        assert_eq!(next(&mut at_blue).await, event("marker"), "the frontend's event did not reach prod-blue");
    }

    #[tokio::test]
    async fn subject_characters_in_a_worker_id_are_replaced_in_the_subject_and_kept_in_the_payload() {
        let server = NatsServer::start();
        let raw = async_nats::connect(server.url()).await.expect("raw client");
        let mut on_subject = raw.subscribe("tritium.prod.events.kv.node_1_gpu_0_x_").await.expect("subscribe");
        round_trip(&raw).await.expect("subscribed");
        let (a, b) = (
            NatsEventBus::connect(server.url(), &NamespaceScope::own("prod")).await.expect("a"),
            NatsEventBus::connect(server.url(), &NamespaceScope::own("prod")).await.expect("b"),
        );
        let mut at_b = b.subscribe();

        let event = WorkerEvent::Kv {
            worker: "node.1.gpu*0 x>".into(),
            model: "llm.v2".into(),
            event: KvEvent::Stored { parent: None, blocks: vec![7] },
        };
        a.publish(event.clone()).await.expect("publish");
        assert_eq!(next(&mut at_b).await, event, "the worker id arrives intact");
        let message = tokio::time::timeout(Duration::from_secs(10), on_subject.next())
            .await
            .expect("a message within 10 s")
            .expect("subscription open");
        assert_eq!(serde_json::from_slice::<WorkerEvent>(&message.payload).expect("json"), event);
    }

    #[tokio::test]
    async fn messages_that_do_not_decode_are_skipped() {
        let server = NatsServer::start();
        let bus = NatsEventBus::connect(server.url(), &NamespaceScope::own("prod")).await.expect("bus");
        let mut events = bus.subscribe();
        let raw = async_nats::connect(server.url()).await.expect("raw client");
        raw.publish("tritium.prod.events.kv.w", "not json".into()).await.expect("publish");
        raw.publish("tritium.prod.events.load.w", r#"{"type":"no_such_event"}"#.into()).await.expect("publish");
        raw.flush().await.expect("flush");
        let event = one_of_each("w").remove(0);
        raw.publish("tritium.prod.events.models.w", serde_json::to_vec(&event).expect("json").into()).await.expect("publish");
        assert_eq!(next(&mut events).await, event);
    }

    // A flush is the guarantee: the drop's own flush is best effort (it failed under load in CI).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn events_published_before_a_flush_are_delivered() {
        let server = NatsServer::start();
        let receiver = NatsEventBus::connect(server.url(), &NamespaceScope::own("prod")).await.expect("receiver");
        let mut events = receiver.subscribe();
        let load = |active| WorkerEvent::Load(LoadReport { worker: "w".into(), active, ..Default::default() });
        {
            let flushed = NatsEventBus::connect(server.url(), &NamespaceScope::own("prod")).await.expect("flushed");
            for active in 0..500 {
                flushed.publish(load(active)).await.expect("publish");
            }
            flushed.flush().await.expect("flush");
        }
        for active in 0..500 {
            assert_eq!(next(&mut events).await, load(active));
        }
    }

    #[test]
    fn tokens_replace_separators_wildcards_and_whitespace() {
        assert_eq!(token("node.1.gpu*0 x>\t"), "node_1_gpu_0_x__");
        assert_eq!(token(""), "_");
        assert_eq!(token("wörker-7_a"), "wörker-7_a");
    }
}
