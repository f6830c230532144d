//! Events workers publish for frontends and routers: model changes now; KV-cache and load
//! reports when LLM workers arrive. The default bus is in memory; NATS is another
//! implementation of the same trait.

use async_trait::async_trait;
use tokio::sync::broadcast;

/// Events a subscriber may fall behind by before it sees `Lagged`.
const BUS_BUFFER: usize = 1024;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WorkerEvent {
    /// A worker's set of served models changed.
    ModelsChanged { worker: String, models: Vec<String> },
    /// How busy a worker is, for load-aware routing.
    Load { worker: String, active: u64, queued: u64 },
}

#[derive(Debug, thiserror::Error)]
pub enum EventError {
    #[error("event bus unavailable: {0}")]
    Unavailable(String),
}

#[async_trait]
pub trait EventBus: Send + Sync + std::fmt::Debug + 'static {
    async fn publish(&self, event: WorkerEvent) -> Result<(), EventError>;
    fn subscribe(&self) -> broadcast::Receiver<WorkerEvent>;
}

/// An event bus inside one process.
#[derive(Debug)]
pub struct MemoryEventBus {
    sender: broadcast::Sender<WorkerEvent>,
}

impl Default for MemoryEventBus {
    fn default() -> Self {
        MemoryEventBus { sender: broadcast::channel(BUS_BUFFER).0 }
    }
}

#[async_trait]
impl EventBus for MemoryEventBus {
    async fn publish(&self, event: WorkerEvent) -> Result<(), EventError> {
        // Publishing with nobody subscribed is normal.
        let _ = self.sender.send(event);
        Ok(())
    }

    fn subscribe(&self) -> broadcast::Receiver<WorkerEvent> {
        self.sender.subscribe()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn subscribers_see_what_is_published_after_they_subscribe() {
        let bus = MemoryEventBus::default();
        bus.publish(WorkerEvent::Load { worker: "early".into(), active: 1, queued: 0 }).await.expect("publish");
        let mut first = bus.subscribe();
        let mut second = bus.subscribe();
        let event = WorkerEvent::ModelsChanged { worker: "w".into(), models: vec!["identity".into()] };
        bus.publish(event.clone()).await.expect("publish");
        assert_eq!(first.recv().await.expect("first"), event);
        assert_eq!(second.recv().await.expect("second"), event);
        assert!(first.try_recv().is_err(), "nothing from before subscribing");
    }
}
