//! Triton's sequence batcher (`sequence_batching { }`) for stateful models, written once for
//! every backend.
//!
//! A request names its sequence with the `sequence_id` parameter and marks the first and last
//! with `sequence_start` / `sequence_end`. The requests of one sequence run one at a time, in the
//! order they came; those of different sequences share batches. A sequence holds a slot from its
//! first request until its end or until it has been idle `max_sequence_idle_microseconds`; more
//! sequences than slots wait in a backlog. With `direct`, a slot is one row of one instance's
//! batches for the sequence's lifetime, and a batch carries a not-READY row for each slot before
//! the last with work; with `oldest`, a batch takes the oldest requests of up to
//! `max_batch_size` sequences among `max_candidate_sequences`.
//!
//! The batcher fills the control inputs (START, END, READY, CORRID) of every row, and keeps each
//! sequence's implicit state: the backend reads it as the state's input, writes the next value
//! as its output, and the client sees neither.
//!
//! A backend that stacks gets a batch's rows stacked (ragged inputs laid out by the model's
//! [`RaggedBatching`]); one that takes lists (Triton's python backend) gets one request per row,
//! not-READY rows included. A decoupled model's rows each stream to their own client: the
//! instance takes the next batch once the model has taken this one, a sequence's next request
//! runs once its previous stream has ended, and the state is the last value of the state output
//! its responses carried.
//!
//! One task per model owns every sequence, so nothing is locked: requests arrive on a channel in
//! the order the transport read them, and finished batches come back on another.

mod rows;
mod settings;
#[cfg(test)]
mod tests;

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};

use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tritium_proto::ErrorCode;
use tritium_proto::inference::{ModelConfig, ModelSequenceBatching};
use tritium_tensor::Tensor;

use crate::params::{RequestOptions, SequenceId};
use crate::ragged::RaggedBatching;
use crate::rate_limiter::ModelRates;
use crate::reply::{BatchAnswer, Queue, Reply, stopped};
use crate::scheduler_limits::SchedulerLimits;
use rows::{Batch, Finished, Row};
use settings::{SequenceSettings, Strategy};
use tritium_backend_api::request::Parameters;
use tritium_backend_api::{Backend, BackendError, BackendRequest};

pub struct SequenceBatcher {
    settings: Arc<SequenceSettings>,
    backend: Arc<dyn Backend>,
    limits: SchedulerLimits,
    queued: Arc<AtomicUsize>,
    /// The model's instances in the server's rate limiter, when it is on.
    rates: Option<ModelRates>,
    /// Started by the first request, on the runtime that serves it.
    sender: OnceLock<mpsc::UnboundedSender<Pending>>,
}

/// One request waiting for its turn in its sequence.
struct Pending {
    id: SequenceId,
    start: bool,
    end: bool,
    inputs: Vec<Tensor>,
    parameters: Parameters,
    request_id: String,
    requested_outputs: Vec<String>,
    cancel: Option<CancellationToken>,
    arrived: Instant,
    reply: Reply,
}

impl SequenceBatcher {
    pub(crate) fn for_config(
        config: &ModelConfig,
        batching: &ModelSequenceBatching,
        backend: &Arc<dyn Backend>,
        ragged: &Arc<RaggedBatching>,
        limits: SchedulerLimits,
        read_initial_state: &dyn Fn(&str, usize) -> Result<bytes::Bytes, String>,
    ) -> Result<SequenceBatcher, String> {
        let settings = SequenceSettings::from_config(config, batching, ragged, read_initial_state)?;
        Ok(SequenceBatcher {
            settings: Arc::new(settings),
            backend: Arc::clone(backend),
            limits,
            queued: Arc::new(AtomicUsize::new(0)),
            rates: None,
            sender: OnceLock::new(),
        })
    }

    /// Each batch waits for its instance's resources in the rate limiter before it executes.
    pub(crate) fn with_rates(self, rates: Option<ModelRates>) -> SequenceBatcher {
        SequenceBatcher { rates, ..self }
    }

    /// Queues one request behind the earlier requests of its sequence and waits for its answer.
    /// The request joins the queue before the first await, so requests read in order from one
    /// stream keep that order.
    pub async fn submit(&self, request: BackendRequest, rows: i64, options: &RequestOptions) -> BatchAnswer {
        self.submit_share(request, rows, options).await
    }
}

impl Queue for SequenceBatcher {
    /// Puts a request in its sequence's queue; the reply back when the request is refused.
    fn enqueue(
        &self,
        request: BackendRequest,
        rows: i64,
        options: &RequestOptions,
        reply: Reply,
    ) -> Result<(), (BackendError, Reply)> {
        let model = &self.settings.model;
        let invalid = |message: String| BackendError::refused(ErrorCode::InvalidArg, message);
        if rows > 1 {
            let message =
                format!("inference request to model '{model}' must specify batch-size 1 due to requirements of sequence batcher");
            return Err((invalid(message), reply));
        }
        let Some(id) = options.sequence_id.clone() else {
            let message = format!("inference request to model '{model}' must specify a non-zero or non-empty correlation ID");
            return Err((invalid(message), reply));
        };
        if let Err(message) = self.settings.check_correlation_id(&id) {
            return Err((invalid(message), reply));
        }
        if self.queued.fetch_add(1, Ordering::AcqRel) >= self.limits.max_queue_size {
            self.queued.fetch_sub(1, Ordering::AcqRel);
            return Err((BackendError::QueueFull, reply));
        }
        let pending = Pending {
            id,
            start: options.sequence_start,
            end: options.sequence_end,
            inputs: request.inputs,
            parameters: request.parameters,
            request_id: request.id,
            requested_outputs: request.requested_outputs,
            cancel: request.cancel,
            arrived: Instant::now(),
            reply,
        };
        let sender = self.sender.get_or_init(|| {
            let (sender, receiver) = mpsc::unbounded_channel();
            tokio::spawn(Scheduler::new(self).run(receiver));
            sender
        });
        if let Err(unsent) = sender.send(pending) {
            self.queued.fetch_sub(1, Ordering::AcqRel);
            return Err((stopped(), unsent.0.reply));
        }
        Ok(())
    }
}

/// One live sequence.
struct Sequence {
    queue: VecDeque<Pending>,
    /// The state its next request reads (replaced by the initial state when that request starts
    /// the sequence).
    state: Vec<Tensor>,
    slot: Option<usize>,
    running: bool,
    /// False once its END request has come: a later request must start it again.
    accepting: bool,
    idle_since: Instant,
}

struct Scheduler {
    settings: Arc<SequenceSettings>,
    backend: Arc<dyn Backend>,
    queued: Arc<AtomicUsize>,
    rates: Option<ModelRates>,
    max_sequences: usize,
    sequences: HashMap<SequenceId, Sequence>,
    slots: Vec<Option<SequenceId>>,
    backlog: VecDeque<SequenceId>,
    /// Per instance: whether a batch of it is running.
    busy: Vec<bool>,
    /// When the first idle sequence may be due for release. Every model's sequences share one
    /// idle timeout, so a sequence that goes idle is due after every one idle before it: the
    /// sequences are scanned only when this passes, not on every request.
    idle_check: Option<Instant>,
    finished: (mpsc::UnboundedSender<Finished>, mpsc::UnboundedReceiver<Finished>),
}

impl Scheduler {
    fn new(batcher: &SequenceBatcher) -> Scheduler {
        let settings = Arc::clone(&batcher.settings);
        Scheduler {
            backend: Arc::clone(&batcher.backend),
            queued: Arc::clone(&batcher.queued),
            rates: batcher.rates.clone(),
            max_sequences: batcher.limits.max_sequences,
            sequences: HashMap::new(),
            slots: vec![None; settings.slots],
            backlog: VecDeque::new(),
            busy: vec![false; settings.instances],
            idle_check: None,
            finished: mpsc::unbounded_channel(),
            settings,
        }
    }

    /// Runs until every sender is gone (the model version was unloaded) and nothing is left.
    async fn run(mut self, mut arrivals: mpsc::UnboundedReceiver<Pending>) {
        let mut open = true;
        loop {
            // Everything that has come goes in before batches form, so a batch sees all of it.
            while let Ok(finished) = self.finished.1.try_recv() {
                self.finish(finished);
            }
            while let Ok(pending) = arrivals.try_recv() {
                self.arrive(pending);
            }
            let now = Instant::now();
            if self.idle_check.is_some_and(|at| at <= now) {
                self.release_idle(now);
                self.idle_check = self.next_idle();
            }
            let delayed = self.start_batches(now);
            if !open && self.sequences.values().all(|s| s.queue.is_empty()) && !self.busy.contains(&true) {
                return;
            }
            let wake = [delayed, self.idle_check].into_iter().flatten().min();
            let sleep = async move {
                match wake {
                    Some(at) => tokio::time::sleep_until(at).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                biased;
                Some(finished) = self.finished.1.recv() => self.finish(finished),
                arrival = arrivals.recv(), if open => match arrival {
                    Some(pending) => self.arrive(pending),
                    None => open = false,
                },
                () = sleep => {}
            }
        }
    }

    fn refuse(&self, pending: Pending, code: ErrorCode, message: String) {
        self.queued.fetch_sub(1, Ordering::AcqRel);
        pending.reply.refuse(BackendError::refused(code, message));
    }

    fn arrive(&mut self, pending: Pending) {
        let accepting = self.sequences.get(&pending.id).is_some_and(|s| s.accepting);
        if !pending.start && !accepting {
            let message = format!(
                "inference request for sequence {} to model '{}' must specify the START flag on the first request of the sequence",
                pending.id, self.settings.model
            );
            return self.refuse(pending, ErrorCode::InvalidArg, message);
        }
        if !self.sequences.contains_key(&pending.id) && self.sequences.len() >= self.max_sequences {
            let message = format!("model '{}' already holds its limit of {} sequences", self.settings.model, self.max_sequences);
            return self.refuse(pending, ErrorCode::Unavailable, message);
        }
        let id = pending.id.clone();
        let sequence = self.sequences.entry(id.clone()).or_insert_with(|| Sequence {
            queue: VecDeque::new(),
            state: Vec::new(),
            slot: None,
            running: false,
            accepting: true,
            idle_since: pending.arrived,
        });
        sequence.accepting = !pending.end;
        sequence.queue.push_back(pending);
        if sequence.slot.is_none() && !self.backlog.contains(&id) {
            match self.slots.iter().position(Option::is_none) {
                Some(free) => self.occupy(free, id),
                None => self.backlog.push_back(id),
            }
        }
    }

    fn occupy(&mut self, slot: usize, id: SequenceId) {
        if let Some(sequence) = self.sequences.get_mut(&id) {
            sequence.slot = Some(slot);
            self.slots[slot] = Some(id);
        }
    }

    /// Ends a sequence and gives its slot to the first sequence of the backlog.
    fn release(&mut self, id: &SequenceId) {
        let Some(sequence) = self.sequences.remove(id) else { return };
        for pending in sequence.queue {
            self.refuse(pending, ErrorCode::Unavailable, "the sequence was released".to_string());
        }
        let Some(slot) = sequence.slot else {
            self.backlog.retain(|waiting| waiting != id);
            return;
        };
        self.slots[slot] = None;
        if let Some(next) = self.backlog.pop_front() {
            self.occupy(slot, next);
        }
    }

    /// Releases the sequences idle for longer than `max_sequence_idle_microseconds`.
    fn release_idle(&mut self, now: Instant) {
        let idle = self.settings.idle;
        let expired: Vec<SequenceId> = self
            .sequences
            .iter()
            .filter(|(_, s)| s.queue.is_empty() && !s.running && s.idle_since + idle <= now)
            .map(|(id, _)| id.clone())
            .collect();
        for id in expired {
            tracing::debug!(model = %self.settings.model, sequence = %id, "idle sequence released");
            self.release(&id);
        }
    }

    fn next_idle(&self) -> Option<Instant> {
        let idle = self.settings.idle;
        self.sequences.values().filter(|s| s.queue.is_empty() && !s.running).map(|s| s.idle_since + idle).min()
    }

    /// Starts a batch on every free instance that has work; returns when to look again for a
    /// batch waiting out its `max_queue_delay_microseconds`.
    fn start_batches(&mut self, now: Instant) -> Option<Instant> {
        let mut wake: Option<Instant> = None;
        for instance in 0..self.busy.len() {
            if self.busy[instance] {
                continue;
            }
            let rows = match self.settings.strategy {
                Strategy::Direct => self.direct_rows(instance),
                Strategy::Oldest => self.oldest_rows(),
            };
            let real: Vec<&SequenceId> = rows.iter().flatten().collect();
            if real.is_empty() {
                continue;
            }
            let settings = &self.settings;
            let full = match settings.strategy {
                Strategy::Direct => real.len() as f32 >= settings.minimum_utilization * settings.max_rows as f32,
                Strategy::Oldest => real.len() >= settings.max_rows || settings.preferred.contains(&real.len()),
            };
            let first_arrived = real.iter().filter_map(|id| self.head(id)).map(|p| p.arrived).min().unwrap_or(now);
            let go_at = first_arrived + settings.max_delay;
            if !full && go_at > now {
                wake = Some(wake.map_or(go_at, |w| w.min(go_at)));
                continue;
            }
            self.dispatch(instance, rows);
        }
        wake
    }

    fn head(&self, id: &SequenceId) -> Option<&Pending> {
        self.sequences.get(id).and_then(|s| s.queue.front())
    }

    /// Whether a sequence has a request that can run now.
    fn ready(&self, id: &SequenceId) -> bool {
        self.sequences.get(id).is_some_and(|s| !s.running && !s.queue.is_empty())
    }

    /// `direct`: one row per slot of `instance`, up to the last slot with work; `None` where a
    /// slot has none (or a request that cannot share this batch).
    fn direct_rows(&self, instance: usize) -> Vec<Option<SequenceId>> {
        let per_instance = self.settings.max_rows;
        let lane = &self.slots[instance * per_instance..(instance + 1) * per_instance];
        let mut first: Option<&Pending> = None;
        let mut rows: Vec<Option<SequenceId>> = lane
            .iter()
            .map(|slot| {
                let id = slot.as_ref().filter(|id| self.ready(id))?;
                let head = self.head(id)?;
                match first {
                    Some(first) if !self.settings.shareable(&first.inputs, &head.inputs) => None,
                    _ => {
                        first.get_or_insert(head);
                        Some(id.clone())
                    }
                }
            })
            .collect();
        while rows.last().is_some_and(Option::is_none) {
            rows.pop();
        }
        rows
    }

    /// `oldest`: the ready candidates whose requests came first, up to a batch, that can share it.
    fn oldest_rows(&self) -> Vec<Option<SequenceId>> {
        let mut ready: Vec<(&Pending, &SequenceId)> =
            self.slots.iter().flatten().filter(|id| self.ready(id)).filter_map(|id| Some((self.head(id)?, id))).collect();
        ready.sort_by_key(|(head, _)| head.arrived);
        let Some(&(first, _)) = ready.first() else { return Vec::new() };
        ready
            .into_iter()
            .filter(|(head, _)| self.settings.shareable(&first.inputs, &head.inputs))
            .take(self.settings.max_rows)
            .map(|(_, id)| Some(id.clone()))
            .collect()
    }

    /// Takes the head request of every sequence in `rows` and runs them as one batch.
    fn dispatch(&mut self, instance: usize, rows: Vec<Option<SequenceId>>) {
        let initial = self.settings.initial_states();
        let mut batch_rows = Vec::with_capacity(rows.len());
        for row in rows {
            let Some(sequence) = row.as_ref().and_then(|id| self.sequences.get_mut(id)) else {
                batch_rows.push(Row::Empty);
                continue;
            };
            let Some(pending) = sequence.queue.pop_front() else {
                batch_rows.push(Row::Empty);
                continue;
            };
            self.queued.fetch_sub(1, Ordering::AcqRel);
            sequence.running = true;
            let state = if pending.start || sequence.state.is_empty() { initial.clone() } else { sequence.state.clone() };
            batch_rows.push(Row::Request { id: pending.id.clone(), state, pending: rows::Request::from(pending) });
        }
        self.busy[instance] = true;
        let batch = Batch { instance, rows: batch_rows };
        let (settings, backend, finished) = (Arc::clone(&self.settings), Arc::clone(&self.backend), self.finished.0.clone());
        let rates = self.rates.clone();
        tokio::spawn(async move {
            let mut batch = batch;
            let resources = match &rates {
                Some(rates) => {
                    let asked = Instant::now();
                    let grant = rates.acquire(Some(instance)).await;
                    // Waiting for resources is waiting in the queue.
                    for row in &mut batch.rows {
                        if let Row::Request { pending, .. } = row {
                            pending.waited += asked.elapsed();
                        }
                    }
                    Some(grant)
                }
                None => None,
            };
            batch.execute(&settings, backend.as_ref(), &finished).await;
            drop(resources);
        });
    }

    fn finish(&mut self, finished: Finished) {
        if let Some(instance) = finished.instance {
            self.busy[instance] = false;
        }
        let now = Instant::now();
        for (id, state, ended) in finished.sequences {
            let Some(sequence) = self.sequences.get_mut(&id) else { continue };
            sequence.running = false;
            sequence.idle_since = now;
            self.idle_check.get_or_insert(now + self.settings.idle);
            if let Some(state) = state {
                sequence.state = state;
            }
            if ended && sequence.queue.is_empty() && !sequence.accepting {
                self.release(&id);
            }
        }
    }
}

impl From<Pending> for rows::Request {
    fn from(pending: Pending) -> Self {
        rows::Request {
            start: pending.start,
            end: pending.end,
            inputs: pending.inputs,
            parameters: pending.parameters,
            id: pending.request_id,
            requested_outputs: pending.requested_outputs,
            cancel: pending.cancel,
            waited: pending.arrived.elapsed(),
            reply: pending.reply,
        }
    }
}
