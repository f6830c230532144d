//! Triton's dynamic batcher (`dynamic_batching { }`), written once for every backend: requests
//! for one model version wait in a queue and are stacked along the batch dimension, up to
//! `max_batch_size`, so that one backend call answers many. A batch is formed when an instance is
//! free; it takes the first waiting request (by priority level, then arrival) and the compatible
//! ones behind it (same input names, types and per-row shapes but for ragged inputs, same custom
//! parameters), executes
//! at once when it is full, of a preferred size, or followed by a request that cannot join it,
//! and otherwise waits for more up to `max_queue_delay_microseconds` after its first request came.
//! At most the model's instance count of batches run at once. The backend gets the batch's inputs
//! as [`RaggedBatching::assemble`] lays them out (stacked; ragged inputs concatenated; batch
//! inputs added).
//!
//! Priority levels and queue policies (bounds, timeouts that reject or delay) are the
//! [`crate::priority_queue`]'s; with `preserve_ordering`, a batch's responses wait until those of
//! every earlier batch have gone.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc, oneshot};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tritium_proto::ErrorCode;
use tritium_proto::inference::ModelConfig;
use tritium_proto::inference::model_config::SchedulingChoice;
use tritium_tensor::Tensor;

use crate::params::RequestOptions;
use crate::priority_queue::{Levels, PriorityQueue, Queued};
use crate::ragged::RaggedBatching;
use crate::rate_limiter::ModelRates;
pub use crate::reply::{BatchAnswer, BatchShare, Execution, StreamEnd};

/// What a request whose timeout passed in the queue is answered (Triton's words).
const QUEUE_TIMEOUT: &str = "Request timeout expired";

/// Whether `error` is the answer of a request whose timeout passed in the queue.
pub(crate) fn is_queue_timeout(error: &BackendError) -> bool {
    matches!(error, BackendError::Refused { code: ErrorCode::Unavailable, message } if message == QUEUE_TIMEOUT)
}
use crate::reply::{Queue, Reply, stopped};
use crate::scheduler_limits::instance_count;
use tritium_backend_api::is_reserved;
use tritium_backend_api::request::Parameters;
use tritium_backend_api::{Backend, BackendError, BackendRequest, Responder, StreamedRequest};

struct Pending {
    inputs: Vec<Tensor>,
    parameters: Parameters,
    id: String,
    requested_outputs: Vec<String>,
    rows: i64,
    level: usize,
    arrived: Instant,
    deadline: Option<Instant>,
    cancel: Option<CancellationToken>,
    reply: Reply,
}

impl Queued for Pending {
    fn level(&self) -> usize {
        self.level
    }
    fn deadline(&self) -> Option<Instant> {
        self.deadline
    }
}

#[derive(Debug, Clone, PartialEq)]
struct Policy {
    max_batch_size: i64,
    preferred: Vec<i64>,
    max_delay: Duration,
    levels: Levels,
    preserve_ordering: bool,
    instances: usize,
}

pub struct DynamicBatcher {
    policy: Policy,
    backend: Arc<dyn Backend>,
    ragged: Arc<RaggedBatching>,
    /// Requests waiting at each priority level, against its `max_queue_size`.
    queued: Arc<[AtomicUsize]>,
    /// The model's instances in the server's rate limiter, when it is on.
    rates: Option<ModelRates>,
    /// Started by the first request, on the runtime that serves it.
    sender: OnceLock<mpsc::UnboundedSender<Pending>>,
}

impl DynamicBatcher {
    /// A batcher when `config` asks for one and the model batches; an error when its
    /// `dynamic_batching` cannot be served as written.
    /// `default_max_queue` bounds a priority level whose policy sets no `max_queue_size`;
    /// `ragged` is the model's [`RaggedBatching`].
    pub fn for_config(
        config: &ModelConfig,
        backend: &Arc<dyn Backend>,
        ragged: &Arc<RaggedBatching>,
        default_max_queue: usize,
    ) -> Result<Option<DynamicBatcher>, String> {
        let Some(SchedulingChoice::DynamicBatching(batching)) = &config.scheduling_choice else { return Ok(None) };
        if config.max_batch_size <= 0 {
            return Ok(None);
        }
        let levels = Levels::from_config(batching, default_max_queue)?;
        let queued = levels.policies.iter().map(|_| AtomicUsize::new(0)).collect();
        let policy = Policy {
            max_batch_size: i64::from(config.max_batch_size),
            preferred: batching.preferred_batch_size.iter().map(|&p| i64::from(p)).collect(),
            max_delay: Duration::from_micros(batching.max_queue_delay_microseconds),
            levels,
            preserve_ordering: batching.preserve_ordering,
            instances: instance_count(config),
        };
        Ok(Some(DynamicBatcher {
            policy,
            backend: Arc::clone(backend),
            ragged: Arc::clone(ragged),
            queued,
            rates: None,
            sender: OnceLock::new(),
        }))
    }

    /// Each batch waits for its instance's resources in the rate limiter before it executes.
    pub(crate) fn with_rates(self, rates: Option<ModelRates>) -> DynamicBatcher {
        DynamicBatcher { rates, ..self }
    }

    /// Queues one request of `rows` rows at the level its `priority` names, and waits for its
    /// share of a batch's outputs.
    pub async fn submit(&self, request: BackendRequest, rows: i64, options: &RequestOptions) -> BatchAnswer {
        self.submit_share(request, rows, options).await
    }
}

impl Queue for DynamicBatcher {
    /// Puts a request in its level's queue; the reply back when the queue is full or the batcher
    /// has stopped.
    fn enqueue(
        &self,
        request: BackendRequest,
        rows: i64,
        options: &RequestOptions,
        reply: Reply,
    ) -> Result<(), (BackendError, Reply)> {
        let level = self.policy.levels.level_of(options.priority);
        let policy = &self.policy.levels.policies[level];
        if self.queued[level].fetch_add(1, Ordering::AcqRel) >= policy.max_size {
            self.queued[level].fetch_sub(1, Ordering::AcqRel);
            return Err((BackendError::QueueFull, reply));
        }
        let arrived = Instant::now();
        let pending = Pending {
            inputs: request.inputs,
            parameters: request.parameters,
            id: request.id,
            requested_outputs: request.requested_outputs,
            rows,
            level,
            arrived,
            deadline: policy.deadline(arrived, options.timeout_us),
            cancel: request.cancel,
            reply,
        };
        let sender = self.sender.get_or_init(|| {
            let (sender, receiver) = mpsc::unbounded_channel();
            let scheduler = Scheduler {
                policy: self.policy.clone(),
                backend: Arc::clone(&self.backend),
                ragged: Arc::clone(&self.ragged),
                queued: Arc::clone(&self.queued),
                rates: self.rates.clone(),
            };
            tokio::spawn(scheduler.run(receiver));
            sender
        });
        if let Err(unsent) = sender.send(pending) {
            self.queued[level].fetch_sub(1, Ordering::AcqRel);
            return Err((stopped(), unsent.0.reply));
        }
        Ok(())
    }
}

struct Scheduler {
    policy: Policy,
    backend: Arc<dyn Backend>,
    ragged: Arc<RaggedBatching>,
    queued: Arc<[AtomicUsize]>,
    rates: Option<ModelRates>,
}

/// Where the scheduler's loop stands.
struct Loop {
    waiting: PriorityQueue<Pending>,
    instance: Option<OwnedSemaphorePermit>,
    open: bool,
    /// Fires once every earlier batch has answered (with `preserve_ordering`).
    previous_answered: Option<oneshot::Receiver<()>>,
}

impl Scheduler {
    /// Forms batches until every sender is gone (the model version was unloaded) and the queue
    /// has drained.
    async fn run(self, mut arrivals: mpsc::UnboundedReceiver<Pending>) {
        let instances = Arc::new(Semaphore::new(self.policy.instances));
        let mut state =
            Loop { waiting: PriorityQueue::new(&self.policy.levels), instance: None, open: true, previous_answered: None };
        loop {
            while let Ok(pending) = arrivals.try_recv() {
                state.waiting.push(pending);
            }
            self.tidy(&mut state.waiting);
            if state.waiting.is_empty() {
                if !state.open {
                    return;
                }
                match arrivals.recv().await {
                    Some(pending) => state.waiting.push(pending),
                    None => state.open = false,
                }
                continue;
            }
            let expiry = state.waiting.next_deadline();
            let sleep_until = |at: Option<Instant>| async move {
                match at {
                    Some(at) => tokio::time::sleep_until(at).await,
                    None => std::future::pending().await,
                }
            };
            if state.instance.is_none() {
                tokio::select! {
                    permit = Arc::clone(&instances).acquire_owned() => match permit {
                        Ok(permit) => state.instance = Some(permit),
                        Err(_) => return,
                    },
                    arrival = arrivals.recv(), if state.open => match arrival {
                        Some(pending) => state.waiting.push(pending),
                        None => state.open = false,
                    },
                    () = sleep_until(expiry) => {}
                }
                continue;
            }
            let (count, rows) = self.batch_len(&state.waiting);
            // A request behind the batch that cannot join it (another shape, or no room) means
            // waiting cannot make this batch bigger: it goes now, as Triton's does.
            let blocked = count < state.waiting.len();
            let ready = blocked || rows >= self.policy.max_batch_size || self.policy.preferred.contains(&rows);
            let first_arrived = state.waiting.iter().next().map_or_else(Instant::now, |p| p.arrived);
            let delay_over = first_arrived + self.policy.max_delay;
            if ready || !state.open || Instant::now() >= delay_over {
                self.dispatch(&mut state, count);
                continue;
            }
            let wake = expiry.map_or(delay_over, |e| e.min(delay_over));
            tokio::select! {
                arrival = arrivals.recv() => match arrival {
                    Some(pending) => state.waiting.push(pending),
                    None => state.open = false,
                },
                () = tokio::time::sleep_until(wake) => {}
            }
        }
    }

    /// Drops requests whose clients have gone and answers those whose timeout rejects them.
    fn tidy(&self, waiting: &mut PriorityQueue<Pending>) {
        let mut gone = vec![0usize; self.queued.len()];
        for pending in waiting.remove_unkept(|p| !p.reply.is_closed(p.cancel.as_ref())) {
            gone[pending.level] += 1;
            pending.reply.refuse(BackendError::Cancelled);
        }
        for pending in waiting.expire(Instant::now()) {
            gone[pending.level] += 1;
            pending.reply.refuse(BackendError::refused(ErrorCode::Unavailable, QUEUE_TIMEOUT));
        }
        for (level, count) in gone.into_iter().enumerate() {
            self.queued[level].fetch_sub(count, Ordering::AcqRel);
        }
    }

    /// Starts the first `count` waiting requests as one batch on the instance held.
    fn dispatch(&self, state: &mut Loop, count: usize) {
        let batch = state.waiting.take(count);
        for pending in &batch {
            self.queued[pending.level].fetch_sub(1, Ordering::AcqRel);
        }
        let instance = state.instance.take();
        let (after, answered) = if self.policy.preserve_ordering {
            let (answered, next) = oneshot::channel();
            (state.previous_answered.replace(next), Some(answered))
        } else {
            (None, None)
        };
        let backend = Arc::clone(&self.backend);
        let ragged = Arc::clone(&self.ragged);
        let rates = self.rates.clone();
        tokio::spawn(async move {
            let mut batch = batch;
            let resources = match &rates {
                Some(rates) => {
                    let grant = rates.acquire(None).await;
                    // Requests whose clients went away while the batch waited for resources do not run.
                    let (gone, kept): (Vec<_>, Vec<_>) = batch.into_iter().partition(|p| p.reply.is_closed(p.cancel.as_ref()));
                    for pending in gone {
                        pending.reply.refuse(BackendError::Cancelled);
                    }
                    batch = kept;
                    Some(grant)
                }
                None => None,
            };
            if batch.is_empty() {
                drop((resources, instance));
                if let Some(previous) = after {
                    let _ = previous.await;
                }
                if let Some(answered) = answered {
                    let _ = answered.send(());
                }
                return;
            }
            if batch.iter().any(|p| matches!(p.reply, Reply::Stream(_))) {
                // A decoupled model's responses go out as it sends them: there is no order to keep.
                execute_streams(backend.as_ref(), &ragged, batch).await;
                drop(resources);
                drop(instance);
                if let Some(answered) = answered {
                    let _ = answered.send(());
                }
                return;
            }
            let answers = execute(backend.as_ref(), &ragged, &mut batch).await;
            drop(resources);
            drop(instance);
            if let Some(previous) = after {
                // An earlier batch whose task ended without answering still releases this one.
                let _ = previous.await;
            }
            for (pending, answer) in batch.into_iter().zip(answers) {
                if let Reply::Share(reply) = pending.reply {
                    let _ = reply.send(answer);
                }
            }
            if let Some(answered) = answered {
                let _ = answered.send(());
            }
        });
    }

    /// How many requests from the head share one batch, and their rows: compatible with the
    /// head, in order, within `max_batch_size` rows.
    fn batch_len(&self, waiting: &PriorityQueue<Pending>) -> (usize, i64) {
        let mut waiting = waiting.iter();
        let Some(head) = waiting.next() else { return (0, 0) };
        let (mut count, mut rows) = (1, head.rows);
        for pending in waiting {
            let fits = rows + pending.rows <= self.policy.max_batch_size;
            if !fits
                || !self.ragged.compatible(&head.inputs, &pending.inputs)
                || !same_custom_parameters(&head.parameters, &pending.parameters)
            {
                break;
            }
            rows += pending.rows;
            count += 1;
        }
        (count, rows)
    }
}

/// Whether two requests carry the same parameters of their own (Triton's reserved ones, such as
/// `priority` and `timeout`, may differ within a batch: the backend sees one set).
fn same_custom_parameters(a: &Parameters, b: &Parameters) -> bool {
    let custom = |p: &'_ Parameters| p.iter().filter(|(key, _)| !is_reserved(key)).cloned().collect::<Vec<_>>();
    a == b || custom(a) == custom(b)
}

/// Runs one batch: every request's share of the outputs, or the batch's error for each.
async fn execute(backend: &dyn Backend, ragged: &RaggedBatching, batch: &mut [Pending]) -> Vec<BatchAnswer> {
    if backend.takes_request_lists() {
        return execute_list(backend, batch).await;
    }
    let started = Instant::now();
    let rows: Vec<i64> = batch.iter().map(|p| p.rows).collect();
    let requests: Vec<Vec<Tensor>> = batch.iter_mut().map(|p| std::mem::take(&mut p.inputs)).collect();
    let scatter = ragged.scatter(&requests);
    let inputs = ragged.assemble(requests);
    let parameters = batch.last_mut().map(|p| std::mem::take(&mut p.parameters)).unwrap_or_default();
    let stacked = Instant::now();
    let outputs = match inputs {
        Ok(inputs) => {
            let request = BackendRequest {
                inputs,
                parameters,
                cancel: None,
                id: String::new(),
                requested_outputs: Vec::new(),
                trace: None,
            };
            let mut responder = Responder::single();
            match backend.execute(request, &mut responder).await {
                Ok(()) => responder.take_single().ok_or(BackendError::NoResponse),
                Err(error) => Err(error),
            }
        }
        Err(message) => Err(BackendError::failed(ErrorCode::InvalidArg, message)),
    };
    let inferred = Instant::now();
    let parts = outputs.and_then(|outputs| {
        ragged.split(outputs, &rows, &scatter).map_err(|message| BackendError::failed(ErrorCode::Internal, message))
    });
    let execution = Execution {
        batch_size: rows.iter().map(|&r| u64::try_from(r).unwrap_or(0)).sum(),
        compute_input: stacked - started,
        compute_infer: inferred - stacked,
        compute_output: inferred.elapsed(),
    };
    let share = |index: usize, pending: &Pending, outputs| {
        let waited = started.saturating_duration_since(pending.arrived);
        Ok(BatchShare { outputs, execution: (index == 0).then_some(execution), waited })
    };
    match parts {
        Ok(parts) => parts.into_iter().zip(batch.iter()).enumerate().map(|(i, (outputs, p))| share(i, p, Ok(outputs))).collect(),
        Err(error) => {
            let (code, message) = (error.code(), error.to_string());
            batch.iter().enumerate().map(|(i, p)| share(i, p, Err(BackendError::failed(code, message.clone())))).collect()
        }
    }
}

/// Runs a batch of a decoupled model's requests, each streaming to its own responder (a backend
/// that stacks gets each request laid out as a batch of its own).
async fn execute_streams(backend: &dyn Backend, ragged: &RaggedBatching, batch: Vec<Pending>) {
    let started = Instant::now();
    let batch_size = batch.iter().map(|p| u64::try_from(p.rows).unwrap_or(0)).sum();
    let mut starts = Vec::with_capacity(batch.len());
    let mut requests = Vec::with_capacity(batch.len());
    for pending in batch {
        let Reply::Stream(stream) = pending.reply else {
            pending.reply.refuse(BackendError::failed(ErrorCode::Internal, "a plain request in a decoupled batch"));
            continue;
        };
        let inputs = match ragged.for_one(backend, pending.inputs) {
            Ok(inputs) => inputs,
            Err(error) => {
                let _ = stream.started.send((None, Duration::ZERO));
                let _ = stream.done.send((stream.responder, Err(error)));
                continue;
            }
        };
        starts.push((stream.started, started.saturating_duration_since(pending.arrived)));
        let request = BackendRequest {
            inputs,
            parameters: pending.parameters,
            cancel: pending.cancel,
            id: pending.id,
            requested_outputs: pending.requested_outputs,
            trace: None,
        };
        requests.push(StreamedRequest { request, responder: stream.responder, done: stream.done });
    }
    backend.execute_streams(requests).await;
    let execution =
        Execution { batch_size, compute_input: Duration::ZERO, compute_infer: started.elapsed(), compute_output: Duration::ZERO };
    for (index, (start, waited)) in starts.into_iter().enumerate() {
        let _ = start.send(((index == 0).then_some(execution), waited));
    }
}

/// Runs one batch as a list of requests, each answered on its own.
async fn execute_list(backend: &dyn Backend, batch: &mut [Pending]) -> Vec<BatchAnswer> {
    let started = Instant::now();
    let requests = batch
        .iter_mut()
        .map(|p| BackendRequest {
            inputs: std::mem::take(&mut p.inputs),
            parameters: std::mem::take(&mut p.parameters),
            cancel: None,
            id: std::mem::take(&mut p.id),
            requested_outputs: std::mem::take(&mut p.requested_outputs),
            trace: None,
        })
        .collect();
    let answers = backend.execute_list(requests).await;
    let execution = Execution {
        batch_size: batch.iter().map(|p| u64::try_from(p.rows).unwrap_or(0)).sum(),
        compute_input: Duration::ZERO,
        compute_infer: started.elapsed(),
        compute_output: Duration::ZERO,
    };
    let mut answers = answers.into_iter();
    batch
        .iter()
        .enumerate()
        .map(|(index, pending)| {
            let outputs = answers.next().unwrap_or(Err(BackendError::NoResponse));
            let waited = started.saturating_duration_since(pending.arrived);
            Ok(BatchShare { outputs, execution: (index == 0).then_some(execution), waited })
        })
        .collect()
}

#[cfg(test)]
#[path = "dynamic_batcher_tests.rs"]
mod tests;
