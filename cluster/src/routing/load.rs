//! The router's side of load it tracks and shares: counting its own generations on workers
//! (`--router-track-*`), waiting in its queue (`--router-queue-threshold`), sharing predictions
//! with its replicas (`--router-replica-sync`) and counting KV events towards the next snapshot
//! (`--router-snapshot-threshold`).

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Instant;

use tritium_backend_api::kv::block_hashes;
use tritium_backend_api::llm::{GenerateError, Priority};
use tritium_worker::WorkerError;

use super::{Member, PromptBlocks, Router, active, queue};
use crate::events::{LoadChange, WorkerEvent};

/// Other replicas' requests a router counts at most.
pub const MAX_MIRRORED: usize = 100_000;
/// How often requests whose end never came are looked for.
const SWEEP_EVERY: std::time::Duration = std::time::Duration::from_secs(1);

impl Router {
    /// Counts a generation of `model` with this `prompt` on `member` (when the router tracks load),
    /// with what routing already learned about the prompt there (`known`), else looked up now;
    /// the returned guard follows its tokens and takes it off when dropped.
    pub(super) fn track(
        &self,
        member: &Member,
        model: &str,
        prompt: &[u32],
        known: Option<PromptBlocks>,
    ) -> Option<active::ActiveRequest> {
        if !self.options.tracking.any() {
            return None;
        }
        let PromptBlocks { hashes, cached } = known.unwrap_or_else(|| {
            let hashes = block_hashes(prompt, self.options.kv_block_size);
            let overlaps = match self.options.kv_events {
                true => self.kv.lock().overlaps(model, &hashes),
                false => self.predicted.lock().overlaps(model, &hashes, Instant::now()),
            };
            let cached = overlaps.get(member.id.as_ref()).copied().unwrap_or(0);
            PromptBlocks { hashes, cached }
        });
        let new_tokens = prompt.len().saturating_sub(cached * self.options.kv_block_size) as u64;
        Some(self.active.start_shared(&member.id, model, hashes, new_tokens))
    }

    /// For a model remote workers serve as a LoRA adapter: the model it adapts and its path.
    pub fn remote_adapter_of(&self, name: &str) -> Option<(String, String)> {
        self.remote_models.adapter_of(name)
    }

    /// The config a remote worker described for `name` (the first one found), if any serves it.
    pub fn remote_config(&self, name: &str) -> Option<tritium_proto::inference::ModelConfig> {
        self.remote_models.config_of(name)
    }

    /// For a model whose workers take OpenAI requests as they came: the routes it serves.
    pub fn text_input(&self, name: &str) -> Option<crate::discovery::dynamo_target::TextApis> {
        self.remote_models.text_input(name)
    }

    /// The workers in other processes serving `model` now, with their ids, in id order.
    pub fn remote_workers_serving(&self, model: &str) -> Vec<(Arc<str>, Arc<crate::remote::RemoteWorker>)> {
        let table = self.table.load();
        let Some(route) = table.get(model) else { return Vec::new() };
        let mut workers: Vec<_> = route
            .iter()
            .filter(|member| !member.local)
            .filter_map(|member| Some((Arc::clone(&member.id), self.remote_models.client(&member.id)?)))
            .collect();
        workers.sort_by(|a, b| a.0.cmp(&b.0));
        workers
    }

    /// Counts a KV event applied to the index; every `--router-snapshot-threshold` of them a
    /// snapshot is due.
    pub(crate) fn kv_event_applied(&self) {
        let threshold = self.options.snapshot_threshold;
        if self.counters.kv_events_since_snapshot.fetch_add(1, Ordering::Relaxed) + 1 >= threshold {
            self.counters.kv_events_since_snapshot.store(0, Ordering::Relaxed);
            self.snapshot_due.notify_one();
        }
    }

    /// Publishes this router's predictions and the load of its requests from now on through `out`
    /// (`--router-replica-sync`).
    pub fn publish_replica_events(&self, out: tokio::sync::mpsc::Sender<crate::events::WorkerEvent>) {
        let router = self.replica_id.clone();
        let load_out = out.clone();
        self.active.observe(Box::new(move |request, change| {
            let change = match change {
                active::Change::Started { worker, model, blocks, prefill_tokens } => LoadChange::Started {
                    worker: worker.to_string(),
                    model: model.to_string(),
                    blocks: blocks.to_vec(),
                    prefill_tokens,
                },
                active::Change::Prefilled => LoadChange::Prefilled,
                active::Change::Ended => LoadChange::Ended,
            };
            let event = WorkerEvent::ReplicaLoad { router: router.clone(), request, change };
            if load_out.try_send(event).is_err() {
                tracing::debug!("the replica-sync publisher is behind; a load change was not shared");
            }
        }));
        let _ = self.replica_out.set(out);
    }

    /// Another replica's request, started, prefilled or ended: counted here as this router's own
    /// are (own ones come back and are skipped). Ones whose end never came (their router died) are
    /// forgotten after `--router-ttl-secs`; at most [`MAX_MIRRORED`] are held.
    pub(crate) fn replica_load(&self, from: &str, request: u64, change: LoadChange) {
        if !self.options.replica_sync || from == self.replica_id {
            return;
        }
        let now = Instant::now();
        let mut mirrored = self.mirrored.lock();
        // A sweep walks every mirrored request: once a second, not on every event.
        if now.duration_since(mirrored.swept) >= SWEEP_EVERY {
            let ttl = self.options.prediction_ttl;
            mirrored.requests.retain(|_, (started, _)| now.duration_since(*started) < ttl);
            mirrored.swept = now;
        }
        let mirrored = &mut mirrored.requests;
        let key = (from.to_string(), request);
        match change {
            LoadChange::Started { worker, model, blocks, prefill_tokens } => {
                let Some(id) = self.members.lock().get_key_value(worker.as_str()).map(|(id, _)| Arc::clone(id)) else { return };
                if mirrored.len() >= MAX_MIRRORED {
                    return;
                }
                let counted = self.active.start(&id, &model, blocks, prefill_tokens);
                mirrored.insert(key, (now, counted));
            }
            LoadChange::Prefilled => {
                if let Some((_, counted)) = mirrored.get_mut(&key) {
                    counted.token();
                }
            }
            LoadChange::Ended => {
                mirrored.remove(&key);
            }
        }
    }

    /// Tells the other replicas that `worker` was sent these blocks; dropped when the publisher
    /// is behind (a prediction is a hint, and a full queue means the event plane is down).
    pub(super) fn share_routing(&self, worker: &Arc<str>, model: &str, blocks: &[tritium_backend_api::kv::BlockHash]) {
        let Some(out) = self.replica_out.get() else { return };
        let event = crate::events::WorkerEvent::Routed {
            router: self.replica_id.clone(),
            worker: worker.to_string(),
            model: model.to_string(),
            blocks: blocks.to_vec(),
        };
        if out.try_send(event).is_err() {
            tracing::debug!("the replica-sync publisher is behind; a prediction was not shared");
        }
    }

    /// Another replica's routing decision: predicted here too (own ones come back and are skipped).
    pub(crate) fn replica_routed(&self, from: &str, worker: &str, model: &str, blocks: &[tritium_backend_api::kv::BlockHash]) {
        if !self.options.replica_sync || self.options.kv_events || from == self.replica_id {
            return;
        }
        // Only workers this router knows: a name from elsewhere must not grow its index.
        let Some(id) = self.members.lock().get_key_value(worker).map(|(id, _)| Arc::clone(id)) else { return };
        self.predicted.lock().routed(&id, model, blocks, Instant::now());
    }

    /// Waits in the router's queue while every worker of `model` is full (see [`queue`]); the
    /// guard is to be dropped once the request is counted on its worker.
    pub(crate) async fn wait_for_room(
        &self,
        model: &str,
        prompt_tokens: usize,
        priority: Priority,
    ) -> Result<Option<queue::Admitted<'_>>, WorkerError> {
        let Some(queue) = &self.queue else { return Ok(None) };
        let threshold = queue.options().threshold;
        let full = |model: &str| self.all_full(model, threshold);
        queue.admit(model, prompt_tokens, priority, full).await.map(Some).map_err(|message| WorkerError::Generate {
            model: model.to_string(),
            source: GenerateError::Unavailable { model: model.to_string(), message },
        })
    }

    /// Whether every worker of `model` has more of this router's prompt tokens to prefill than
    /// `threshold` times what one of its engine steps prefills. A worker whose step size is not
    /// known yet (no load report) or in this process has room.
    fn all_full(&self, model: &str, threshold: f64) -> bool {
        let table = self.table.load();
        let Some(route) = table.get(model).filter(|route| !route.is_empty()) else { return false };
        let loads = self.loads.lock();
        route.iter().all(|member| {
            let capacity = loads.get(&(member.id.to_string(), model.to_string())).map_or(0, |r| r.max_batched_tokens);
            !member.local && capacity > 0 && self.active.prefill_tokens_on(&member.id) as f64 > threshold * capacity as f64
        })
    }

    /// Requests waiting in the router's queue now, and since start.
    pub fn queue_counts(&self) -> (usize, u64) {
        self.queue.as_ref().map_or((0, 0), queue::RouterQueue::counts)
    }

    /// The load this router tracks (for the busy thresholds and tests).
    pub fn active_load(&self) -> &Arc<active::ActiveLoad> {
        &self.active
    }
}
