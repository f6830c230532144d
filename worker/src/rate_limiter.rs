//! Triton's rate limiter (`--rate-limit execution_count`): one per server, across every model.
//! An instance group's `rate_limiter { resources [...] priority }` says what each of its instances
//! holds while it executes; an execution starts only when its instance is free and every resource
//! it needs is, and is given back when the execution ends (its [`Grant`] dropped).
//!
//! A resource is counted per device (an instance's device: its GPU, or 0 for CPU instances) or,
//! marked `global`, once for the whole server. Its count is what `--rate-limit-resource` gives; with
//! no such flag, the largest count any loaded instance asks for (so every instance can run). Once
//! the flag is given, a resource it does not name has none, as in Triton, and a model whose
//! instance asks for more than a resource's count fails to load with Triton's words.
//!
//! Waiting executions are ordered as Triton's `ScaledPriority`: an instance's executions so far
//! times its `priority` (0 counts as 1), lowest first, then by arrival; an instance with priority 2
//! gets half the turns of one with priority 1. The first in that order that cannot get its
//! resources holds the others back (Triton's), so a large request is not starved by small ones.
//!
//! `--rate-limit off` (the default) ignores resources and priorities: models register nothing and
//! their schedulers never wait here.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use parking_lot::Mutex;
use tokio::sync::oneshot;
use tritium_backend_api::error::WorkerError;
use tritium_proto::ErrorCode;
use tritium_proto::inference::ModelConfig;
use tritium_proto::inference::model_instance_group::Kind;

/// `--rate-limit`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum RateLimitMode {
    /// Resources and priorities are ignored; an execution starts when its instance is free.
    #[default]
    Off,
    /// Executions wait for their instance's resources, in priority order.
    ExecutionCount,
}

/// One `--rate-limit-resource NAME:COUNT[:DEVICE]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResourceLimit {
    pub name: String,
    pub count: u64,
    /// `None`: the count of every device (and of a global resource).
    pub device: Option<i32>,
}

/// Where a resource's copies are counted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
enum Place {
    Global,
    Device(i32),
}

type Key = (Place, String);

/// The most instances one model version may register: each is a record here, and a config (which
/// a client's load may send) could ask for billions.
pub const MAX_INSTANCES: usize = 65_536;

#[derive(Debug)]
struct Instance {
    model: u64,
    /// What one execution holds.
    needs: Vec<(Key, u64)>,
    priority: u64,
    executions: u64,
    busy: bool,
    /// Its model was unloaded: it takes no more executions and leaves once idle.
    removed: bool,
}

impl Instance {
    fn scaled_priority(&self) -> u64 {
        self.executions.saturating_mul(self.priority.max(1))
    }
}

#[derive(Debug)]
struct Waiter {
    model: u64,
    /// The instance a sequence batcher's batch must run on; `None`: any of the model's.
    instance: Option<u64>,
    grant: oneshot::Sender<Grant>,
}

#[derive(Debug, Default)]
struct State {
    instances: BTreeMap<u64, Instance>,
    /// Waiting executions by arrival.
    waiters: BTreeMap<u64, Waiter>,
    available: HashMap<Key, u64>,
    allocated: HashMap<Key, u64>,
    next_id: u64,
}

/// The server's rate limiter; see the module docs.
#[derive(Debug, Default)]
pub struct RateLimiter {
    mode: RateLimitMode,
    explicit: Vec<ResourceLimit>,
    state: Mutex<State>,
}

impl RateLimiter {
    pub fn new(mode: RateLimitMode, resources: Vec<ResourceLimit>) -> Arc<RateLimiter> {
        Arc::new(RateLimiter { mode, explicit: resources, state: Mutex::default() })
    }

    pub fn mode(&self) -> RateLimitMode {
        self.mode
    }

    /// Executions waiting now.
    #[cfg(test)]
    pub(crate) fn waiting(&self) -> usize {
        self.state.lock().waiters.values().filter(|w| !w.grant.is_closed()).count()
    }

    /// Registers the instances of one model version; `None` when the limiter is off. An error,
    /// in Triton's words, when the resources cannot be served (an instance needs more than a
    /// resource's count, or one resource is both global and per device); nothing is registered then.
    pub fn register(self: &Arc<Self>, config: &ModelConfig) -> Result<Option<ModelRates>, String> {
        if self.mode == RateLimitMode::Off {
            return Ok(None);
        }
        let total =
            config.instance_group.iter().map(|g| usize::try_from(g.count.max(1)).unwrap_or(1)).fold(0, usize::saturating_add);
        if total > MAX_INSTANCES {
            return Err(format!(
                "the rate limiter serves at most {MAX_INSTANCES} instances of one model; the config asks for {total}"
            ));
        }
        let mut state = self.state.lock();
        let model = state.next_id;
        state.next_id += 1;
        let mut ids = Vec::new();
        for group in &config.instance_group {
            let limits = group.rate_limiter.clone().unwrap_or_default();
            let gpus: &[i32] = if group.kind == Kind::Cpu as i32 { &[] } else { &group.gpus };
            for k in 0..usize::try_from(group.count.max(1)).unwrap_or(1) {
                let device = if gpus.is_empty() { 0 } else { gpus[k % gpus.len()] };
                // A resource named twice counts once, its last count (Triton keeps them by name).
                let needs: BTreeMap<Key, u64> = limits
                    .resources
                    .iter()
                    .map(|r| {
                        let place = if r.global { Place::Global } else { Place::Device(device) };
                        ((place, r.name.clone()), u64::from(r.count))
                    })
                    .collect();
                let needs = needs.into_iter().collect();
                let id = state.next_id;
                state.next_id += 1;
                let priority = u64::from(limits.priority);
                state.instances.insert(id, Instance { model, needs, priority, executions: 0, busy: false, removed: false });
                ids.push(id);
            }
        }
        if ids.is_empty() {
            // A config with no instance group runs one instance, on device 0, needing nothing.
            let id = state.next_id;
            state.next_id += 1;
            state
                .instances
                .insert(id, Instance { model, needs: Vec::new(), priority: 1, executions: 0, busy: false, removed: false });
            ids.push(id);
        }
        if let Err(message) = self.recompute(&mut state) {
            for id in &ids {
                state.instances.remove(id);
            }
            // What was served before still fits.
            let _ = self.recompute(&mut state);
            return Err(message);
        }
        // Counts that grew may let waiting executions go.
        let unwanted = self.schedule(&mut state);
        drop(state);
        drop(unwanted);
        Ok(Some(ModelRates(Arc::new(Registration { limiter: Arc::clone(self), model, instances: ids }))))
    }

    /// Each resource's count from the instances registered and the flags (Triton's
    /// `ParseAndValidateResources`).
    fn recompute(&self, state: &mut State) -> Result<(), String> {
        let mut most: BTreeMap<Key, u64> = BTreeMap::new();
        for instance in state.instances.values().filter(|i| !i.removed) {
            for (key, count) in &instance.needs {
                let entry = most.entry(key.clone()).or_insert(0);
                *entry = (*entry).max(*count);
            }
        }
        for (place, name) in most.keys() {
            if *place == Place::Global && most.keys().any(|(p, n)| n == name && *p != Place::Global) {
                return Err(format!(
                    "Resource \"{name}\" is present as both global and device-specific resource in the model configuration."
                ));
            }
        }
        let mut available = HashMap::with_capacity(most.len());
        for ((place, name), needed) in most {
            let count = if self.explicit.is_empty() {
                needed
            } else {
                let given = self.explicit.iter().filter(|r| r.name == name).filter(|r| match place {
                    Place::Global => true,
                    Place::Device(device) => r.device.is_none_or(|d| d == device),
                });
                let count = given.map(|r| r.count).max().unwrap_or(0);
                if count < needed {
                    return Err(format!(
                        "Resource count for \"{name}\" is limited to {count} which will prevent scheduling of one or more \
                         model instances, the minimum required count is {needed}"
                    ));
                }
                count
            };
            available.insert((place, name), count);
        }
        state.available = available;
        Ok(())
    }

    /// Starts every waiting execution it can, in priority order, until the first that cannot
    /// get its resources. Grants whose waiter has gone come back, to be dropped once the lock
    /// is released (dropping one locks).
    fn schedule(self: &Arc<Self>, state: &mut State) -> Vec<Grant> {
        let mut unwanted = Vec::new();
        loop {
            state.waiters.retain(|_, w| !w.grant.is_closed());
            let Some((seq, instance)) = best_candidate(state) else { break };
            if !fits(state, instance) {
                break;
            }
            let Some(waiter) = state.waiters.remove(&seq) else { break };
            let Some(chosen) = state.instances.get_mut(&instance) else { break };
            chosen.busy = true;
            for (key, count) in &chosen.needs {
                *state.allocated.entry(key.clone()).or_insert(0) += count;
            }
            let grant = Grant { limiter: Arc::clone(self), instance };
            if let Err(grant) = waiter.grant.send(grant) {
                unwanted.push(grant);
            }
        }
        unwanted
    }

    fn release(self: &Arc<Self>, instance: u64) {
        let unwanted = {
            let mut state = self.state.lock();
            let State { instances, allocated, .. } = &mut *state;
            let mut gone = false;
            if let Some(done) = instances.get_mut(&instance) {
                done.busy = false;
                done.executions += 1;
                for (key, count) in &done.needs {
                    if let Some(held) = allocated.get_mut(key) {
                        *held = held.saturating_sub(*count);
                    }
                }
                gone = done.removed;
            }
            if gone {
                instances.remove(&instance);
            }
            self.schedule(&mut state)
        };
        drop(unwanted);
    }

    fn unregister(self: &Arc<Self>, ids: &[u64]) {
        let unwanted = {
            let mut state = self.state.lock();
            for id in ids {
                let busy = match state.instances.get_mut(id) {
                    Some(instance) => {
                        instance.removed = true;
                        instance.busy
                    }
                    None => continue,
                };
                if !busy {
                    state.instances.remove(id);
                }
            }
            // Fewer instances never need more than before.
            let _ = self.recompute(&mut state);
            self.schedule(&mut state)
        };
        drop(unwanted);
    }
}

/// The waiter to start next and the instance it would run on: each waiter, by arrival, takes
/// the free instance of its model that has had the fewest (scaled) turns; the pair with the
/// lowest scaled priority, then the earliest arrival, goes first.
fn best_candidate(state: &State) -> Option<(u64, u64)> {
    let mut free: HashMap<u64, Vec<(u64, u64)>> = HashMap::new();
    for (&id, instance) in state.instances.iter().filter(|(_, i)| !i.busy && !i.removed) {
        free.entry(instance.model).or_default().push((instance.scaled_priority(), id));
    }
    for instances in free.values_mut() {
        // Taken from the back: the fewest turns last.
        instances.sort_unstable_by(|a, b| b.cmp(a));
    }
    let mut best: Option<((u64, u64), u64)> = None;
    for (&seq, waiter) in &state.waiters {
        let Some(instances) = free.get_mut(&waiter.model) else { continue };
        let taken = match waiter.instance {
            Some(wanted) => instances.iter().position(|&(_, id)| id == wanted).map(|at| instances.remove(at)),
            None => instances.pop(),
        };
        let Some((scaled, instance)) = taken else { continue };
        if best.is_none_or(|(order, _)| (scaled, seq) < order) {
            best = Some(((scaled, seq), instance));
        }
    }
    best.map(|((_, seq), instance)| (seq, instance))
}

fn fits(state: &State, instance: u64) -> bool {
    let Some(instance) = state.instances.get(&instance) else { return false };
    instance.needs.iter().all(|(key, count)| {
        let held = state.allocated.get(key).copied().unwrap_or(0);
        held.saturating_add(*count) <= state.available.get(key).copied().unwrap_or(0)
    })
}

/// A load [`RateLimiter::register`] refused, in Triton's words and class.
pub(crate) fn load_refused(model: &str, version: i64, reason: String) -> WorkerError {
    WorkerError::Failed {
        code: ErrorCode::InvalidArg,
        message: format!(
            "load failed for model '{model}': version {version} is at UNAVAILABLE state: Invalid argument: {reason}"
        ),
    }
}

/// One model version's instances in the limiter; unregistered when the last clone goes.
#[derive(Debug, Clone)]
pub struct ModelRates(Arc<Registration>);

#[derive(Debug)]
struct Registration {
    limiter: Arc<RateLimiter>,
    model: u64,
    instances: Vec<u64>,
}

impl Drop for Registration {
    fn drop(&mut self) {
        self.limiter.unregister(&self.instances);
    }
}

impl ModelRates {
    /// Waits for an instance of the model (`instance`: that one, by its index in the config's
    /// instance groups) whose resources are free, and holds them until the grant is dropped.
    /// Dropping the future while it waits leaves the queue.
    pub async fn acquire(&self, instance: Option<usize>) -> Grant {
        let registration = &self.0;
        let limiter = &registration.limiter;
        let (sender, receiver) = oneshot::channel();
        let instance = instance.and_then(|i| registration.instances.get(i).copied());
        let unwanted = {
            let mut state = limiter.state.lock();
            let seq = state.next_id;
            state.next_id += 1;
            state.waiters.insert(seq, Waiter { model: registration.model, instance, grant: sender });
            limiter.schedule(&mut state)
        };
        drop(unwanted);
        let mut leave = LeaveOnDrop { limiter, receiver, granted: false };
        // The sender stays in the queue until it sends a grant: the queue keeps a waiter until
        // its receiver closes, which only `LeaveOnDrop` does.
        let grant = (&mut leave.receiver).await.expect("a rate limiter waiter is granted before it leaves the queue");
        leave.granted = true;
        grant
    }
}

/// A waiting execution whose future is dropped: a grant sent meanwhile is given back.
struct LeaveOnDrop<'a> {
    limiter: &'a Arc<RateLimiter>,
    receiver: oneshot::Receiver<Grant>,
    granted: bool,
}

impl Drop for LeaveOnDrop<'_> {
    fn drop(&mut self) {
        if self.granted {
            return;
        }
        self.receiver.close();
        // Granted before the close: dropping the grant gives it back.
        drop(self.receiver.try_recv());
        // The closed waiter leaves the queue on this pass, and may have held others back.
        let unwanted = {
            let mut state = self.limiter.state.lock();
            self.limiter.schedule(&mut state)
        };
        drop(unwanted);
    }
}

/// An execution's hold on its instance and resources, given back on drop.
#[derive(Debug)]
pub struct Grant {
    limiter: Arc<RateLimiter>,
    instance: u64,
}

impl Drop for Grant {
    fn drop(&mut self) {
        self.limiter.release(self.instance);
    }
}

#[cfg(test)]
#[path = "rate_limiter_tests.rs"]
mod tests;
