//! In-memory discovery for a single process.

use std::collections::BTreeMap;
use parking_lot::Mutex;

use async_trait::async_trait;
use tokio::sync::broadcast;

use super::{Discovery, DiscoveryError, DiscoveryEvent, WorkerInstance, check_document};

/// Events a watcher may fall behind by before it must list again.
const WATCH_BUFFER: usize = 256;

#[derive(Debug)]
pub struct MemoryDiscovery {
    instances: Mutex<BTreeMap<String, WorkerInstance>>,
    events: broadcast::Sender<DiscoveryEvent>,
    documents: Mutex<BTreeMap<String, Vec<u8>>>,
}

impl Default for MemoryDiscovery {
    fn default() -> Self {
        MemoryDiscovery {
            instances: Mutex::new(BTreeMap::new()),
            events: broadcast::channel(WATCH_BUFFER).0,
            documents: Mutex::new(BTreeMap::new()),
        }
    }
}

impl MemoryDiscovery {
    pub fn new() -> MemoryDiscovery {
        MemoryDiscovery::default()
    }
}

#[async_trait]
impl Discovery for MemoryDiscovery {
    async fn register(&self, instance: WorkerInstance) -> Result<(), DiscoveryError> {
        self.instances.lock().insert(instance.id.clone(), instance.clone());
        // No watcher is not an error.
        let _ = self.events.send(DiscoveryEvent::Up(instance));
        Ok(())
    }

    async fn deregister(&self, id: &str) -> Result<(), DiscoveryError> {
        if self.instances.lock().remove(id).is_some() {
            let _ = self.events.send(DiscoveryEvent::Down { id: id.to_string() });
        }
        Ok(())
    }

    async fn instances(&self) -> Result<Vec<WorkerInstance>, DiscoveryError> {
        Ok(self.instances.lock().values().cloned().collect())
    }

    fn watch(&self) -> broadcast::Receiver<DiscoveryEvent> {
        self.events.subscribe()
    }

    async fn put_document(&self, name: &str, bytes: Vec<u8>) -> Result<(), DiscoveryError> {
        check_document(name, Some(&bytes))?;
        self.documents.lock().insert(name.to_string(), bytes);
        Ok(())
    }

    async fn get_document(&self, name: &str) -> Result<Option<Vec<u8>>, DiscoveryError> {
        check_document(name, None)?;
        Ok(self.documents.lock().get(name).cloned())
    }

    async fn delete_document(&self, name: &str) -> Result<(), DiscoveryError> {
        check_document(name, None)?;
        self.documents.lock().remove(name);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::discovery::WorkerAddress;

    fn worker(id: &str, models: &[&str]) -> WorkerInstance {
        WorkerInstance {
            id: id.to_string(),
            address: WorkerAddress::Grpc(format!("http://{id}")),
            models: models.iter().map(|m| m.to_string()).collect(),
            mode: Default::default(),
            events: None,
            device: Default::default(),
        }
    }

    #[tokio::test]
    async fn register_replace_and_leave_are_listed_and_watched() {
        let discovery = MemoryDiscovery::new();
        let mut watch = discovery.watch();
        discovery.register(worker("a", &["identity"])).await.expect("register");
        discovery.register(worker("b", &["add_sub"])).await.expect("register");
        discovery.register(worker("a", &["identity", "repeat"])).await.expect("replace");
        let listed = discovery.instances().await.expect("list");
        assert_eq!(listed, vec![worker("a", &["identity", "repeat"]), worker("b", &["add_sub"])]);
        discovery.deregister("b").await.expect("deregister");
        discovery.deregister("nobody").await.expect("unknown ids are fine");
        let mut seen = Vec::new();
        while let Ok(event) = watch.try_recv() {
            seen.push(event);
        }
        assert_eq!(
            seen,
            vec![
                DiscoveryEvent::Up(worker("a", &["identity"])),
                DiscoveryEvent::Up(worker("b", &["add_sub"])),
                DiscoveryEvent::Up(worker("a", &["identity", "repeat"])),
                DiscoveryEvent::Down { id: "b".to_string() },
            ]
        );
    }
}
