//! A model version's instances: one stub per `instance_group` instance, each running one
//! `execute` at a time, the most recently idle first. A stub that died is started again (with its
//! model's `initialize`) by the next request that takes its instance.

use std::sync::{Arc, Mutex, MutexGuard, Weak};

use serde_json::Value;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tritium_proto::ErrorCode;
use tritium_worker::BackendError;

use crate::services::Services;
use crate::stub::{Stub, StubSpec};

/// Starts the stub of one instance and initializes its model.
pub struct Launcher {
    pub spec: StubSpec,
    /// The `init` frame, without the instance's own name.
    pub init: Value,
    pub services: Services,
}

impl Launcher {
    pub fn launch(&self, instance: &str) -> Result<Stub, String> {
        let spec = StubSpec { name: instance.to_string(), ..self.spec.clone() };
        let stub = Stub::start(&spec, self.services.clone())?;
        let mut init = self.init.clone();
        init["args"]["model_instance_name"] = Value::String(instance.to_string());
        stub.call(init, None)?;
        Ok(stub)
    }
}

struct Slot {
    index: usize,
    name: String,
    stub: Option<Arc<Stub>>,
}

struct Shared {
    idle: Mutex<Vec<Slot>>,
    /// Every instance's current stub, idle or busy: stopping the model ends them all.
    stubs: Mutex<Vec<Option<Arc<Stub>>>>,
    free: Arc<Semaphore>,
    launcher: Launcher,
}

pub struct Instances {
    shared: Arc<Shared>,
}

/// An instance taken for one execute; dropping it gives the instance back.
pub struct Lease {
    shared: Arc<Shared>,
    slot: Option<Slot>,
    _permit: OwnedSemaphorePermit,
}

impl Lease {
    pub fn stub(&self) -> Option<&Arc<Stub>> {
        self.slot.as_ref().and_then(|s| s.stub.as_ref())
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        if let Some(slot) = self.slot.take() {
            lock(&self.shared.idle).push(slot);
        }
    }
}

impl Instances {
    /// Starts every instance (named `<group>_<index>`), failing the load if any fails.
    pub fn start(names: Vec<String>, launcher: Launcher) -> Result<Instances, String> {
        let mut slots = Vec::with_capacity(names.len());
        let mut stubs = Vec::with_capacity(names.len());
        for (index, name) in names.into_iter().enumerate() {
            let stub = Arc::new(launcher.launch(&name)?);
            stubs.push(Some(Arc::clone(&stub)));
            slots.push(Slot { index, name, stub: Some(stub) });
        }
        // The first instance is used first.
        slots.reverse();
        let free = Arc::new(Semaphore::new(slots.len()));
        let shared = Arc::new(Shared { idle: Mutex::new(slots), stubs: Mutex::new(stubs), free, launcher });
        let mut live = lock(&LIVE);
        live.retain(|weak| weak.strong_count() > 0);
        live.push(Arc::downgrade(&shared));
        Ok(Instances { shared })
    }

    /// Takes the most recently idle instance, waiting while all are busy; one whose stub died is
    /// started again first.
    pub async fn acquire(&self) -> Result<Lease, BackendError> {
        let stopped = || BackendError::failed(ErrorCode::Unavailable, "the model's instances have stopped");
        let permit = Arc::clone(&self.shared.free).acquire_owned().await.map_err(|_| stopped())?;
        let slot = lock(&self.shared.idle).pop().ok_or_else(stopped)?;
        let mut lease = Lease { shared: Arc::clone(&self.shared), slot: Some(slot), _permit: permit };
        if lease.stub().is_some_and(|s| s.is_alive()) {
            return Ok(lease);
        }
        let name = lease.slot.as_ref().map(|s| s.name.clone()).unwrap_or_default();
        tracing::warn!(instance = %name, "the Python stub is not running; starting it again");
        let shared = Arc::clone(&self.shared);
        let launched = tokio::task::spawn_blocking(move || shared.launcher.launch(&name))
            .await
            .map_err(|e| BackendError::failed(ErrorCode::Internal, e.to_string()))?;
        let stub = launched.map_err(|why| {
            BackendError::failed(ErrorCode::Internal, format!("the Python stub could not be started again: {why}"))
        })?;
        let stub = Arc::new(stub);
        if let Some(slot) = lease.slot.as_mut() {
            if self.shared.free.is_closed() {
                stub.kill();
                return Err(stopped());
            }
            if let Some(entry) = lock(&self.shared.stubs).get_mut(slot.index) {
                *entry = Some(Arc::clone(&stub));
            }
            slot.stub = Some(stub);
        }
        Ok(lease)
    }

    /// Finalizes every instance's model and ends its stub (unload, shutdown); a stub still busy
    /// with an `execute` is ended once the timeout for its `finalize` has passed.
    pub fn stop(&self) {
        // Each finalize may take up to the stub timeout: off the caller's thread, all at once;
        // `stop_all` waits for them before the process exits.
        for stub in self.shared.take_stubs() {
            if let Ok(handle) = std::thread::Builder::new().name("python-stop".into()).spawn(move || stub.stop()) {
                let mut stopping = lock(&STOPPING);
                stopping.retain(|h| !h.is_finished());
                stopping.push(handle);
            }
        }
    }
}

impl Shared {
    fn take_stubs(&self) -> Vec<Arc<Stub>> {
        self.free.close();
        lock(&self.idle).clear();
        std::mem::take(&mut *lock(&self.stubs)).into_iter().flatten().collect()
    }
}

/// Every model version's instances, for [`stop_all`].
static LIVE: Mutex<Vec<Weak<Shared>>> = Mutex::new(Vec::new());
/// Stubs being stopped after an unload, for [`stop_all`] to wait for.
static STOPPING: Mutex<Vec<std::thread::JoinHandle<()>>> = Mutex::new(Vec::new());

/// Finalizes the models of every python-backend instance and ends their stubs, waiting for all
/// (each bounded by the stub timeout): the server's last step before it exits.
pub fn stop_all() {
    let stubs: Vec<Arc<Stub>> =
        std::mem::take(&mut *lock(&LIVE)).iter().filter_map(Weak::upgrade).flat_map(|s| s.take_stubs()).collect();
    let stopping: Vec<_> = stubs.into_iter().map(|stub| std::thread::spawn(move || stub.stop())).collect();
    for handle in stopping.into_iter().chain(std::mem::take(&mut *lock(&STOPPING))) {
        let _ = handle.join();
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}
