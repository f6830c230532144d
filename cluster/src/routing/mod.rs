//! The router: for each request, the worker that runs it. gRPC and HTTP ask the same router,
//! which is itself a [`WorkerClient`]: it picks a worker by `--router-mode`, retries requests
//! that did not start (and stateless tensor requests) on another worker when one dies, and
//! migrates language-model streams. Its table is built from discovery: every worker instance
//! and the models it serves. The in-process worker is a client handed over directly; workers in
//! other processes are reached with [`crate::remote::RemoteWorker`].

mod admission;
mod affinity;
pub mod active;
pub mod busy;
mod disagg;
mod dynamo_members;
mod engine_members;
mod failover;
mod follow;
pub mod kv_index;
mod load;
mod metrics;
pub mod policy;
pub mod predicted;
pub mod queue;
mod remote_models;
pub mod scoring;
pub mod sessions;
pub mod snapshot;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use parking_lot::Mutex;
use std::time::Instant;

use arc_swap::ArcSwap;
use tritium_worker::{ByName, ModelRepository, WorkerClient, WorkerError};

pub use failover::hint_of;
pub use follow::{Listing, follow_discovery, follow_events, publish_replica_events, publish_worker};
pub use metrics::RouterMetrics;
pub use policy::{RouterMode, RouterOptions, WORKER_ID_HEADER, WORKER_ID_PARAMETER};

use crate::discovery::{DisaggregationMode, WorkerAddress, WorkerInstance};
use crate::events::LoadReport;
use busy::BusyThresholds;
use kv_index::KvIndex;
use policy::{Choice, PickContext};
use predicted::PredictedIndex;
use remote_models::RemoteModels;

/// One worker the router can send a model's requests to.
#[derive(Debug, Clone)]
struct Member {
    id: Arc<str>,
    client: Arc<dyn WorkerClient>,
    /// In this process: nothing to fail over from, so calls go straight through.
    local: bool,
    outstanding: Arc<AtomicU64>,
    /// Until when a worker that could not be reached is passed over.
    suspect_until: Arc<Mutex<Option<Instant>>>,
    /// Its part in disaggregated serving.
    mode: DisaggregationMode,
    /// What it computes on.
    device: crate::discovery::DeviceClass,
    /// For a Dynamo worker: its models, their tokens per block (the KV events name blocks by
    /// Dynamo's hashes) and their LoRA adapters, which seed their block names.
    dynamo_target: Option<Arc<crate::discovery::dynamo_target::DynamoTarget>>,
    /// For an engine reached over its gRPC: its KV block size, which its blocks are named by.
    engine_block_size: Option<usize>,
}

impl Member {
    /// A worker in another process, as discovery lists it.
    fn remote(id: Arc<str>, client: Arc<dyn WorkerClient>, instance: &WorkerInstance) -> Member {
        Member {
            id,
            client,
            local: false,
            outstanding: Arc::default(),
            suspect_until: Arc::default(),
            mode: instance.mode,
            device: instance.device,
            dynamo_target: None,
            engine_block_size: None,
        }
    }

    fn begin(&self) -> Outstanding {
        self.outstanding.fetch_add(1, Ordering::Relaxed);
        Outstanding(Arc::clone(&self.outstanding))
    }

    fn is_suspect(&self, now: Instant) -> bool {
        self.suspect_until.lock().is_some_and(|until| until > now)
    }
}

/// Counts one request outstanding on a worker until dropped.
#[derive(Debug)]
struct Outstanding(Arc<AtomicU64>);

impl Drop for Outstanding {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

type Route = Arc<[Member]>;

/// Counters of routing decisions, for `/metrics`.
#[derive(Debug, Default)]
pub struct RouterCounters {
    pub routed: AtomicU64,
    /// Requests sent again to another worker because theirs could not be reached.
    pub retried: AtomicU64,
    /// Language-model streams continued on another worker.
    pub migrated: AtomicU64,
    /// KV blocks of routed prompts, and how many of them the chosen worker held (from its events).
    pub prompt_blocks: AtomicU64,
    pub prompt_blocks_cached: AtomicU64,
    /// Requests refused because every worker of their model was over its busy threshold.
    pub rejected_busy: AtomicU64,
    /// KV-index snapshots written to the shared store.
    pub snapshots: AtomicU64,
    /// KV events applied since the last snapshot.
    kv_events_since_snapshot: AtomicU64,
}

pub struct Router {
    /// This router, for tasks that outlive a call (stream migration).
    this: std::sync::Weak<Router>,
    options: RouterOptions,
    repository: Arc<ModelRepository>,
    local_id: Arc<str>,
    /// Answers requests no instance claims: the in-process worker, whose registry gives Triton's
    /// precise errors (unknown model, no available versions, ...).
    fallback: Arc<dyn WorkerClient>,
    max_message_size: usize,
    /// Every worker known from discovery (and in-process clients handed over), by id.
    members: Mutex<HashMap<Arc<str>, (Member, WorkerAddress)>>,
    /// Model name -> the workers serving it; replaced whole on every discovery change.
    table: ArcSwap<ByName<Route>>,
    kv: Mutex<KvIndex>,
    /// What the router predicts workers hold, when it does not follow their KV events.
    predicted: Mutex<PredictedIndex>,
    /// The load this router's own requests put on each worker (`--router-track-*`).
    active: Arc<active::ActiveLoad>,
    /// Where language-model requests wait while every worker is full (`--router-queue-threshold`).
    queue: Option<queue::RouterQueue>,
    /// This router's name among its replicas, and where its predictions go to be published
    /// (`--router-replica-sync`; set once the event plane is up).
    replica_id: String,
    replica_out: std::sync::OnceLock<tokio::sync::mpsc::Sender<crate::events::WorkerEvent>>,
    /// How workers are reached (`--request-plane`; set once the plane is up, TCP if never).
    dialer: std::sync::OnceLock<crate::remote::Dialer>,
    /// Where Dynamo workers' response streams call home (set when Dynamo workers are followed).
    dynamo_home: std::sync::OnceLock<Arc<crate::dynamo::CallHome>>,
    /// Requests other replicas told of, counted here too (`--router-replica-sync`), by (router,
    /// number), with when they started.
    mirrored: Mutex<Mirrored>,
    /// Notified when `--router-snapshot-threshold` KV events have been applied since the last snapshot.
    snapshot_due: tokio::sync::Notify,
    loads: Arc<Mutex<HashMap<(String, String), LoadReport>>>,
    remote_models: RemoteModels,
    turn: AtomicUsize,
    counters: RouterCounters,
    busy: Arc<BusyThresholds>,
    /// Sessions bound to workers (`--router-session-affinity-ttl-secs`; `None`: off).
    sessions: Option<Arc<sessions::Sessions>>,
}

/// Other replicas' requests counted here, by (router, number), with when they started; and when
/// those whose end never came were last swept.
struct Mirrored {
    requests: HashMap<(String, u64), (Instant, active::ActiveRequest)>,
    swept: Instant,
}

/// A routing decision: the worker, and what scoring learned about the prompt there.
struct Picked {
    member: Member,
    /// Set when the prompt was scored against the workers.
    prompt: Option<PromptBlocks>,
}

/// A prompt's block hashes, and how many of them the chosen worker holds.
struct PromptBlocks {
    hashes: Vec<tritium_backend_api::kv::BlockHash>,
    cached: usize,
}

impl Picked {
    fn unscored(member: Member) -> Picked {
        Picked { member, prompt: None }
    }
}

impl std::fmt::Debug for Router {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Router").field("mode", &self.options.mode).finish_non_exhaustive()
    }
}

impl Router {
    /// A router whose fallback is the in-process worker `local_id` serving `repository`.
    pub fn new(
        options: RouterOptions,
        repository: Arc<ModelRepository>,
        local_id: &str,
        local: Arc<dyn WorkerClient>,
        max_message_size: usize,
    ) -> Arc<Router> {
        let local_id: Arc<str> = Arc::from(local_id);
        let member = Member {
            id: Arc::clone(&local_id),
            client: Arc::clone(&local),
            local: true,
            outstanding: Arc::default(),
            suspect_until: Arc::default(),
            mode: DisaggregationMode::Agg,
            device: Default::default(),
            dynamo_target: None,
            engine_block_size: None,
        };
        let loads = Arc::new(Mutex::new(HashMap::new()));
        let busy = Arc::new(BusyThresholds::new(options.busy_threshold));
        let predicted = Mutex::new(PredictedIndex::new(options.prediction_ttl));
        let lighter = Arc::new(tokio::sync::Notify::new());
        let active = active::ActiveLoad::notifying(options.tracking, options.kv_block_size, Arc::clone(&lighter));
        let queue = options.queue.map(|queue| queue::RouterQueue::new(queue, lighter));
        let sessions = options.affinity.map(sessions::Sessions::new);
        Arc::new_cyclic(|this| Router {
            busy,
            sessions,
            this: this.clone(),
            options,
            remote_models: RemoteModels::new(Arc::clone(&loads)),
            repository,
            members: Mutex::new(HashMap::from([(Arc::clone(&local_id), (member, WorkerAddress::InProcess))])),
            local_id,
            fallback: local,
            max_message_size,
            table: ArcSwap::from_pointee(ByName::default()),
            kv: Mutex::new(KvIndex::new()),
            predicted,
            active,
            queue,
            replica_id: format!("router-{:016x}", rand::random::<u64>()),
            replica_out: std::sync::OnceLock::new(),
            dialer: std::sync::OnceLock::new(),
            dynamo_home: std::sync::OnceLock::new(),
            snapshot_due: tokio::sync::Notify::new(),
            mirrored: Mutex::new(Mirrored { requests: HashMap::new(), swept: Instant::now() }),
            loads,
            turn: AtomicUsize::new(0),
            counters: RouterCounters::default(),
        })
    }

    /// A client discovery lists as in-process under `id`; `local: false` makes the router treat
    /// it as remote (failover, migration), for tests.
    #[cfg(test)]
    fn add_member_for_test(&self, id: &str, client: Arc<dyn WorkerClient>, local: bool) {
        let id: Arc<str> = Arc::from(id);
        let member = Member {
            id: Arc::clone(&id),
            client,
            local,
            outstanding: Arc::default(),
            suspect_until: Arc::default(),
            mode: DisaggregationMode::Agg,
            device: Default::default(),
            dynamo_target: None,
            engine_block_size: None,
        };
        self.members.lock().insert(id, (member, WorkerAddress::InProcess));
    }

    /// Reaches workers through `dialer` from now on (call before following discovery).
    pub fn set_dialer(&self, dialer: crate::remote::Dialer) {
        let _ = self.dialer.set(dialer);
    }

    /// Reaches Dynamo workers with response streams calling `home` (call before following them).
    pub fn set_dynamo_home(&self, home: Arc<crate::dynamo::CallHome>) {
        let _ = self.dynamo_home.set(home);
    }

    pub fn options(&self) -> &RouterOptions {
        &self.options
    }

    pub fn counters(&self) -> &RouterCounters {
        &self.counters
    }

    /// The worker ids serving `model` now (for tests and diagnostics).
    pub fn workers_of(&self, model: &str) -> Vec<String> {
        self.table.load().get(model).map(|route| route.iter().map(|m| m.id.to_string()).collect()).unwrap_or_default()
    }

    /// Rebuilds the table from the instances discovery lists, connecting to new remote workers
    /// and describing their models, so that remote models show in metadata and the index.
    pub async fn apply(&self, instances: &[WorkerInstance]) {
        let fresh = self.update_members(instances);
        for (id, client) in fresh {
            match tokio::time::timeout(std::time::Duration::from_secs(5), client.describe_models()).await {
                Ok(Ok(models)) => self.remote_models.described(&id, models),
                Ok(Err(e)) => tracing::warn!(worker = %id, "describing the worker's models failed: {e}"),
                Err(_) => tracing::warn!(worker = %id, "describing the worker's models timed out"),
            }
        }
        let ids: Vec<Arc<str>> = self.members.lock().keys().cloned().collect();
        self.remote_models.retain(&ids);
        self.repository.set_remote_models(self.remote_models.served_models());
    }

    /// Brings `members` and the table in line with `instances`; returns the remote workers to
    /// describe (new ones, and ones whose models changed).
    fn update_members(&self, instances: &[WorkerInstance]) -> Vec<(Arc<str>, Arc<crate::remote::RemoteWorker>)> {
        let mut members = self.members.lock();
        let mut to_describe = Vec::new();
        let plain = crate::remote::Dialer::default();
        let mut listed: Vec<Arc<str>> = Vec::new();
        let mut table: HashMap<String, Vec<Member>> = HashMap::new();
        for instance in instances {
            let existing = members.get(instance.id.as_str()).filter(|(member, address)| {
                *address == instance.address && member.mode == instance.mode && member.device == instance.device
            });
            let member = match (existing, &instance.address) {
                (Some((member, _)), address) => {
                    if let WorkerAddress::Grpc(_) = address
                        && !self.remote_models.serves_exactly(&instance.id, &instance.models)
                        && let Some(remote) = self.remote_models.client(&instance.id)
                    {
                        to_describe.push((Arc::clone(&member.id), remote));
                    }
                    member.clone()
                }
                (None, WorkerAddress::Grpc(uri)) => {
                    let remote = match crate::remote::RemoteWorker::dial(
                        &instance.id,
                        uri,
                        self.max_message_size,
                        self.options.worker_token.as_deref(),
                        self.dialer.get().unwrap_or(&plain),
                    ) {
                        Ok(remote) => Arc::new(remote),
                        Err(e) => {
                            tracing::warn!(worker = %instance.id, %uri, "cannot reach this worker: {e}");
                            continue;
                        }
                    };
                    let id: Arc<str> = Arc::from(instance.id.as_str());
                    let member = Member::remote(Arc::clone(&id), Arc::clone(&remote) as Arc<dyn WorkerClient>, instance);
                    self.remote_models.connected(&id, Arc::clone(&remote));
                    to_describe.push((Arc::clone(&id), remote));
                    members.insert(Arc::clone(&id), (member.clone(), instance.address.clone()));
                    tracing::info!(worker = %id, %uri, models = ?instance.models, "worker joined");
                    member
                }
                (None, WorkerAddress::Dynamo(target)) => {
                    let Some(member) = self.dynamo_member(instance, target) else { continue };
                    members.insert(Arc::clone(&member.id), (member.clone(), instance.address.clone()));
                    member
                }
                (None, WorkerAddress::Engine(target)) => {
                    let Some(member) = self.engine_member(instance, target) else { continue };
                    members.insert(Arc::clone(&member.id), (member.clone(), instance.address.clone()));
                    member
                }
                // An in-process worker this router was not handed a client for: not routable.
                (None, WorkerAddress::InProcess) => continue,
            };
            listed.push(Arc::clone(&member.id));
            for model in &instance.models {
                table.entry(model.clone()).or_default().push(member.clone());
            }
        }
        let gone: Vec<Arc<str>> =
            members.keys().filter(|id| !listed.contains(id) && id.as_ref() != self.local_id.as_ref()).cloned().collect();
        for id in gone {
            members.remove(&id);
            self.kv.lock().remove_worker(&id);
            self.predicted.lock().remove_worker(&id);
            self.active.remove_worker(&id);
            self.loads.lock().retain(|(worker, _), _| *worker != *id);
            tracing::info!(worker = %id, "worker left");
        }
        self.table.store(Arc::new(table.into_iter().map(|(model, route)| (model, Route::from(route))).collect()));
        to_describe
    }

    /// The worker for a request to `model`, or `None` when no instance serves it (the caller
    /// uses the in-process fallback). `tried` are passed over; so are suspects, unless only
    /// suspects are left. A stream being migrated may go to any worker, even in `direct` mode.
    /// A `sticky` request (one sequence of a stateful model) goes to the same worker every time
    /// while the workers stay the same: rendezvous hashing, so a worker joining or leaving moves
    /// only the sequences that must move.
    fn pick(
        &self,
        model: &str,
        tokens: Option<&[u32]>,
        hint: Option<&str>,
        sticky: Option<u64>,
        tried: &[Arc<str>],
        migrating: bool,
    ) -> Result<Option<Picked>, WorkerError> {
        let table = self.table.load();
        let Some(route) = table.get(model).filter(|route| !route.is_empty()) else { return Ok(None) };
        let mode = match self.options.mode {
            RouterMode::Direct if migrating => RouterMode::LeastLoaded,
            mode => mode,
        };
        // A request that names its worker goes there in every mode (Dynamo's
        // `backend_instance_id`); in `direct` mode it must name one.
        if mode == RouterMode::Direct || (hint.is_some() && !migrating) {
            let Some(wanted) = hint else {
                return Err(WorkerError::Failed {
                    code: tritium_proto::ErrorCode::InvalidArg,
                    message: format!(
                        "the router is in 'direct' mode: name the worker for model '{model}' with the request parameter '{WORKER_ID_PARAMETER}' (HTTP: header '{WORKER_ID_HEADER}')"
                    ),
                });
            };
            return match route.iter().find(|m| &*m.id == wanted) {
                // A named worker is still held to its busy threshold.
                Some(member) if !tried.contains(&member.id) => Ok(self
                    .not_busy(model, vec![member], migrating)?
                    .first()
                    .map(|member| Picked::unscored(Member::clone(member)))),
                Some(_) => Ok(None),
                // The other workers' names are not told: a client learns only what it named.
                None => Err(WorkerError::Failed {
                    code: tritium_proto::ErrorCode::NotFound,
                    message: format!("worker '{wanted}' does not serve model '{model}'"),
                }),
            };
        }
        let now = Instant::now();
        let untried: Vec<&Member> = route.iter().filter(|m| !tried.contains(&m.id)).collect();
        let healthy: Vec<&Member> = untried.iter().copied().filter(|m| !m.is_suspect(now)).collect();
        let candidates = if healthy.is_empty() { untried } else { healthy };
        if candidates.is_empty() {
            return Ok(None);
        }
        let candidates = self.not_busy(model, candidates, migrating)?;
        if let Some(key) = sticky {
            let score = |member: &&&Member| {
                use std::hash::{Hash, Hasher};
                let mut hasher = std::hash::DefaultHasher::new();
                (key, member.id.as_ref()).hash(&mut hasher);
                hasher.finish()
            };
            self.counters.routed.fetch_add(1, Ordering::Relaxed);
            return Ok(candidates.iter().max_by_key(score).map(|member| Picked::unscored(Member::clone(member))));
        }
        // One worker and nothing to learn from the prompt: no scoring.
        if candidates.len() == 1 && (tokens.is_none() || candidates[0].local) {
            self.counters.routed.fetch_add(1, Ordering::Relaxed);
            return Ok(Some(Picked::unscored(candidates[0].clone())));
        }
        // A Tritium worker's adapter: its blocks hash from the adapter's seed and its KV events
        // come under the model it adapts.
        let adapter = self.remote_models.tritium_adapter(model);
        let index_model = adapter.as_ref().map_or(model, |(base, _)| base.as_str());
        let hashes = tokens.map(|t| match &adapter {
            Some((_, seed)) => tritium_backend_api::kv::block_hashes_from(*seed, t, self.options.kv_block_size),
            None => self.prompt_hashes(model, &candidates, t),
        });
        let tracked = |member: &Member| match (&hashes, self.options.kv.tracked) {
            (Some(hashes), true) => self.active.candidate(&member.id, model, hashes),
            _ => active::CandidateLoad::default(),
        };
        let loads = self.loads.lock();
        let choices: Vec<Choice> = candidates
            .iter()
            .map(|m| {
                let report = loads.get(&(m.id.to_string(), model.to_string()));
                Choice {
                    id: Arc::clone(&m.id),
                    outstanding: m.outstanding.load(Ordering::Relaxed),
                    reported_active: report.map_or(0, |r| r.active),
                    reported_queued: report.map_or(0, |r| r.queued),
                    kv_used: report.map_or(0, |r| r.kv_used),
                    kv_capacity: report.map_or(0, |r| r.kv_capacity),
                    tracked: tracked(m),
                    accelerator: m.device == crate::discovery::DeviceClass::Accelerator,
                }
            })
            .collect();
        drop(loads);
        let overlaps = hashes.as_ref().map(|h| match self.options.kv_events {
            true => self.kv.lock().overlaps(index_model, h),
            false => self.predicted.lock().overlaps(model, h, now),
        });
        let context = PickContext {
            overlaps: overlaps.as_ref().zip(hashes.as_ref()).map(|(o, h)| (o, h.len())),
            turn: self.turn.fetch_add(1, Ordering::Relaxed),
            accelerator_weight: self.options.accelerator_weight,
        };
        let index = policy::pick(mode, &choices, &context, &self.options.kv, &mut rand::rng()).unwrap_or(0);
        let chosen = candidates[index].clone();
        self.counters.routed.fetch_add(1, Ordering::Relaxed);
        if !self.options.kv_events
            && mode == RouterMode::Kv
            && let Some(hashes) = &hashes
        {
            self.predicted.lock().routed(&chosen.id, model, hashes, now);
            self.share_routing(&chosen.id, model, hashes);
        }
        let trace = tritium_backend_api::trace::current();
        if let Some(trace) = &trace {
            trace.set_attribute("tritium.router.mode", mode.as_str());
            trace.set_attribute("tritium.router.worker", chosen.id.to_string());
            trace.set_attribute("tritium.router.candidates", candidates.len());
        }
        let hit = overlaps.as_ref().map_or(0, |overlaps| overlaps.get(chosen.id.as_ref()).copied().unwrap_or(0));
        if let (Some(hashes), Some(_)) = (&hashes, &overlaps) {
            self.counters.prompt_blocks.fetch_add(hashes.len() as u64, Ordering::Relaxed);
            self.counters.prompt_blocks_cached.fetch_add(hit as u64, Ordering::Relaxed);
            if let Some(trace) = &trace {
                trace.set_attribute("tritium.router.prompt_blocks", hashes.len());
                trace.set_attribute("tritium.router.kv_overlap_blocks", hit);
            }
        }
        let prompt = hashes.map(|hashes| PromptBlocks { hashes, cached: hit });
        Ok(Some(Picked { member: chosen, prompt }))
    }

    /// The in-process client when it alone can take requests for `model` (the single-process
    /// default): such requests skip scoring, bookkeeping and failover altogether.
    pub(crate) fn sole_local(&self, model: &str) -> Option<Arc<dyn WorkerClient>> {
        self.with_sole_local(model, |client| Arc::clone(client))
    }

    /// Whether the in-process worker alone takes `model`'s requests and runs them on `repository`
    /// (see [`Router::sole_local`]): then a request validated against that repository runs on
    /// the version it was checked against, with no routing.
    pub fn serves_only_locally(&self, model: &str, repository: &ModelRepository) -> bool {
        self.with_sole_local(model, |client| client.local_repository().is_some_and(|r| std::ptr::eq(r.as_ref(), repository)))
            .unwrap_or(false)
    }

    fn with_sole_local<T>(&self, model: &str, f: impl FnOnce(&Arc<dyn WorkerClient>) -> T) -> Option<T> {
        if self.options.mode == RouterMode::Direct {
            return None;
        }
        match self.table.load().get(model) {
            Some(route) if route.len() == 1 && route[0].local => Some(f(&route[0].client)),
            Some(_) => None,
            None => Some(f(&self.fallback)),
        }
    }

    fn mark_suspect(&self, member: &Member) {
        *member.suspect_until.lock() = Some(Instant::now() + self.options.suspect_for);
    }
}

#[cfg(test)]
mod tests;
