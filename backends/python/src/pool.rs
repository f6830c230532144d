//! A model version's instances: one stub per `instance_group` instance, each running one
//! `execute` at a time, the most recently idle first. Requests that find every instance busy wait
//! in order, and the instance that finishes an `execute` takes the next of them at once, where
//! its stub's answer is read: no task to wake between one `execute` and the next. A stub
//! that dies is started again (with its model's `initialize`) at once, or by the next request
//! where that failed; the model is not ready while any instance has no live stub.

use std::collections::VecDeque;
use std::sync::{Arc, OnceLock, Weak};

use parking_lot::Mutex;
use serde_json::Value;
use tokio::runtime::Handle;
use tokio::sync::{mpsc, oneshot};
use tritium_backend_api::BackendError;
use tritium_proto::ErrorCode;

use crate::services::Services;
use crate::stub::{Deadline, Executed, StreamEvent, Stub, StubRequest, StubSpec};

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

/// Requests for one `execute`, as they wait for an instance.
pub struct Job {
    pub requests: Vec<StubRequest>,
    /// A decoupled execute's streams, one per request (empty for a plain one).
    pub streams: Vec<mpsc::UnboundedSender<StreamEvent>>,
    /// The `executed` frame's answers, or why there are none.
    pub reply: oneshot::Sender<Result<Executed, BackendError>>,
    /// Set to the stub that takes the job (through which a decoupled request is cancelled).
    pub taken_by: Option<Arc<OnceLock<Arc<Stub>>>>,
    /// How long the job's `execute` may run (the model's execute timeout).
    pub deadline: Option<Deadline>,
}

impl Job {
    /// Nobody waits for the answer any more (the client went away while the job waited).
    fn abandoned(&self) -> bool {
        self.reply.is_closed()
    }

    fn fail(self, error: BackendError) {
        for stream in &self.streams {
            let _ = stream.send(StreamEvent { answer: Err(copy(&error)), last: true });
        }
        let _ = self.reply.send(Err(error));
    }
}

/// The same error again (one for each request it fails), its kind kept.
pub(crate) fn copy(error: &BackendError) -> BackendError {
    match error {
        BackendError::Refused { code, message } => BackendError::refused(*code, message.clone()),
        BackendError::Answered { code, message } => BackendError::Answered { code: *code, message: message.clone() },
        other => BackendError::failed(other.code(), other.to_string()),
    }
}

fn stopped() -> BackendError {
    BackendError::failed(ErrorCode::Unavailable, "the model's instances have stopped")
}

#[derive(Default)]
struct Queue {
    idle: Vec<Slot>,
    waiting: VecDeque<Job>,
    stopped: bool,
}

struct Shared {
    queue: Mutex<Queue>,
    /// Every instance's current stub, idle or busy: stopping the model ends them all.
    stubs: Mutex<Vec<Option<Arc<Stub>>>>,
    launcher: Launcher,
    /// Where a stub is started again (never where a stub's frames are read, nor on a runtime worker).
    runtime: Option<Handle>,
}

pub struct Instances {
    shared: Arc<Shared>,
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
        let queue = Queue { idle: slots, ..Queue::default() };
        let runtime = Handle::try_current().ok();
        let shared = Arc::new(Shared { queue: Mutex::new(queue), stubs: Mutex::new(stubs), launcher, runtime });
        for (index, stub) in shared.stubs.lock().iter().enumerate() {
            if let Some(stub) = stub {
                shared.watch(index, stub);
            }
        }
        let mut live = LIVE.lock();
        live.retain(|weak| weak.strong_count() > 0);
        live.push(Arc::downgrade(&shared));
        Ok(Instances { shared })
    }

    /// Whether every instance has a live stub (false while one is being started again).
    pub fn is_ready(&self) -> bool {
        !self.shared.queue.lock().stopped && self.shared.stubs.lock().iter().all(|s| s.as_ref().is_some_and(|s| s.is_alive()))
    }

    /// Runs `job` on the most recently idle instance, or queues it until one is free; its
    /// answer comes on `job.reply` (and its streams).
    pub fn submit(&self, job: Job) {
        let slot = {
            let mut queue = self.shared.queue.lock();
            if queue.stopped {
                drop(queue);
                return job.fail(stopped());
            }
            match queue.idle.pop() {
                Some(slot) => slot,
                None => return queue.waiting.push_back(job),
            }
        };
        self.shared.run(slot, job);
    }

    /// Finalizes every instance's model and ends its stub (unload, shutdown); a stub still busy
    /// with an `execute` is ended once the timeout for its `finalize` has passed.
    pub fn stop(&self) {
        // Each finalize may take up to the stub timeout: off the caller's thread, all at once;
        // `stop_all` waits for them before the process exits.
        for stub in self.shared.take_stubs() {
            if let Ok(handle) = std::thread::Builder::new().name("python-stop".into()).spawn(move || stub.stop()) {
                let mut stopping = STOPPING.lock();
                stopping.retain(|h| !h.is_finished());
                stopping.push(handle);
            }
        }
    }
}

impl Shared {
    fn run(self: &Arc<Self>, slot: Slot, job: Job) {
        match slot.stub.clone().filter(|stub| stub.is_alive()) {
            Some(stub) => self.dispatch(stub, slot, job),
            None => self.restart(slot, Some(job)),
        }
    }

    fn dispatch(self: &Arc<Self>, stub: Arc<Stub>, slot: Slot, job: Job) {
        if let Some(taken_by) = &job.taken_by {
            let _ = taken_by.set(Arc::clone(&stub));
        }
        let shared = Arc::clone(self);
        stub.execute(job.requests, job.streams, job.reply, Box::new(move || shared.finished(slot)), job.deadline);
    }

    /// An instance's `execute` is over (or its stub died): it takes the oldest job still
    /// wanted, or goes idle (starting its stub again first if it died).
    fn finished(self: &Arc<Self>, slot: Slot) {
        let job = {
            let mut queue = self.queue.lock();
            if queue.stopped {
                return;
            }
            loop {
                match queue.waiting.pop_front() {
                    Some(job) if job.abandoned() => continue,
                    Some(job) => break job,
                    None if slot.stub.as_ref().is_some_and(|s| !s.is_alive()) => {
                        drop(queue);
                        return self.restart(slot, None);
                    }
                    None => return queue.idle.push(slot),
                }
            }
        };
        self.run(slot, job);
    }

    /// Calls [`Shared::exited`] when the stub of instance `index` exits.
    fn watch(self: &Arc<Self>, index: usize, stub: &Stub) {
        let shared = Arc::downgrade(self);
        stub.on_exit(Box::new(move || {
            if let Some(shared) = shared.upgrade() {
                shared.exited(index);
            }
        }));
    }

    /// The stub of instance `index` exited: an idle instance starts another at once (a busy one
    /// does when its `execute` is settled, in [`Shared::finished`]).
    fn exited(self: &Arc<Self>, index: usize) {
        let slot = {
            let mut queue = self.queue.lock();
            let found =
                queue.idle.iter().position(|slot| slot.index == index && slot.stub.as_ref().is_some_and(|s| !s.is_alive()));
            match found {
                Some(at) if !queue.stopped => queue.idle.remove(at),
                _ => return,
            }
        };
        self.restart(slot, None);
    }

    /// Starts the slot's stub again, off this thread, then runs `job` on it (or the next job
    /// waiting). Where the start fails the instance goes idle without a stub: the next job tries again.
    fn restart(self: &Arc<Self>, mut slot: Slot, job: Option<Job>) {
        let shared = Arc::clone(self);
        let work = move || {
            tracing::warn!(instance = %slot.name, "the Python stub is not running; starting it again");
            let stub = match shared.launcher.launch(&slot.name) {
                Ok(stub) => Arc::new(stub),
                Err(why) => {
                    tracing::warn!(instance = %slot.name, "the Python stub could not be started again: {why}");
                    slot.stub = None;
                    let Some(job) = job else {
                        let mut queue = shared.queue.lock();
                        if !queue.stopped {
                            queue.idle.push(slot);
                        }
                        return;
                    };
                    job.fail(BackendError::failed(
                        ErrorCode::Internal,
                        format!("the Python stub could not be started again: {why}"),
                    ));
                    return shared.finished(slot);
                }
            };
            if shared.queue.lock().stopped {
                stub.kill();
                return job.into_iter().for_each(|job| job.fail(stopped()));
            }
            if let Some(entry) = shared.stubs.lock().get_mut(slot.index) {
                *entry = Some(Arc::clone(&stub));
            }
            shared.watch(slot.index, &stub);
            slot.stub = Some(Arc::clone(&stub));
            match job {
                Some(job) => shared.dispatch(stub, slot, job),
                None => shared.finished(slot),
            }
        };
        match &self.runtime {
            Some(runtime) => drop(runtime.spawn_blocking(work)),
            None => work(),
        }
    }

    fn take_stubs(&self) -> Vec<Arc<Stub>> {
        let waiting = {
            let mut queue = self.queue.lock();
            queue.stopped = true;
            queue.idle.clear();
            std::mem::take(&mut queue.waiting)
        };
        waiting.into_iter().for_each(|job| job.fail(stopped()));
        std::mem::take(&mut *self.stubs.lock()).into_iter().flatten().collect()
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
        std::mem::take(&mut *LIVE.lock()).iter().filter_map(Weak::upgrade).flat_map(|s| s.take_stubs()).collect();
    let stopping: Vec<_> = stubs.into_iter().map(|stub| std::thread::spawn(move || stub.stop())).collect();
    for handle in stopping.into_iter().chain(std::mem::take(&mut *STOPPING.lock())) {
        let _ = handle.join();
    }
    // What no model owns any more: stubs still in `initialize` (a load that timed out goes on
    // in the background), and every descendant of a stub that left its process group.
    let ended = crate::process::end_all();
    if ended > 0 {
        tracing::warn!("ended {ended} process(es) left by Python stubs");
    }
}
