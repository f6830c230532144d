//! Triton's dynamic batcher (`dynamic_batching { }`), written once for every backend: requests
//! for one model version wait in a queue and are stacked along the batch dimension, up to
//! `max_batch_size`, so that one backend call answers many. A batch is formed when an instance is
//! free; it takes the oldest request and the compatible ones queued behind it (same input names,
//! types and per-row shapes), executes at once when it is full, of a preferred size, or followed
//! by a request that cannot join it, and otherwise waits for more up to
//! `max_queue_delay_microseconds` after its oldest request came.
//! At most the model's instance count of batches run at once.
//!
//! Not yet: priority levels and per-request queue timeouts.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use tokio::sync::{Semaphore, mpsc, oneshot};
use tokio::time::Instant;
use tritium_proto::ErrorCode;
use tritium_proto::inference::ModelConfig;
use tritium_proto::inference::model_config::SchedulingChoice;
use tritium_tensor::Tensor;

use crate::backend::{Backend, BackendError, BackendRequest, Responder};
use crate::batch_tensors::{compatible, split, stack};
use crate::request::Parameters;

/// Requests a batcher holds when the config sets no `max_queue_size`: beyond it, UNAVAILABLE.
pub const DEFAULT_MAX_QUEUE: usize = 4096;

/// A request's share of its batch.
#[derive(Debug)]
pub struct BatchShare {
    pub outputs: Vec<Tensor>,
    /// Whether this request carries its batch's execution (the first of each batch does), so
    /// executions are counted once per batch.
    pub carried_the_call: bool,
    /// How long it waited in the batcher's queue before its batch started.
    pub waited: Duration,
}

pub type BatchAnswer = Result<BatchShare, BackendError>;

struct Pending {
    inputs: Vec<Tensor>,
    parameters: Parameters,
    rows: i64,
    arrived: Instant,
    reply: oneshot::Sender<BatchAnswer>,
}

#[derive(Debug, Clone, PartialEq)]
struct Policy {
    max_batch_size: i64,
    preferred: Vec<i64>,
    max_delay: Duration,
    max_queue: usize,
    instances: usize,
}

pub struct DynamicBatcher {
    policy: Policy,
    backend: Arc<dyn Backend>,
    queued: Arc<AtomicUsize>,
    /// Started by the first request, on the runtime that serves it.
    sender: OnceLock<mpsc::UnboundedSender<Pending>>,
}

impl DynamicBatcher {
    /// A batcher when `config` asks for one and the model batches.
    pub fn for_config(config: &ModelConfig, backend: &Arc<dyn Backend>) -> Option<DynamicBatcher> {
        let Some(SchedulingChoice::DynamicBatching(batching)) = &config.scheduling_choice else { return None };
        if config.max_batch_size <= 0 {
            return None;
        }
        let max_queue = batching.default_queue_policy.as_ref().map_or(0, |p| p.max_queue_size as usize);
        let instances: i32 = config.instance_group.iter().map(|g| g.count.max(1)).sum();
        let policy = Policy {
            max_batch_size: i64::from(config.max_batch_size),
            preferred: batching.preferred_batch_size.iter().map(|&p| i64::from(p)).collect(),
            max_delay: Duration::from_micros(batching.max_queue_delay_microseconds),
            max_queue: if max_queue == 0 { DEFAULT_MAX_QUEUE } else { max_queue },
            instances: usize::try_from(instances).unwrap_or(1).max(1),
        };
        Some(DynamicBatcher {
            policy,
            backend: Arc::clone(backend),
            queued: Arc::new(AtomicUsize::new(0)),
            sender: OnceLock::new(),
        })
    }

    /// Queues one request of `rows` rows and waits for its share of a batch's outputs.
    pub async fn submit(&self, request: BackendRequest, rows: i64) -> BatchAnswer {
        if self.queued.fetch_add(1, Ordering::AcqRel) >= self.policy.max_queue {
            self.queued.fetch_sub(1, Ordering::AcqRel);
            return Err(BackendError::failed(ErrorCode::Unavailable, "Exceeds maximum queue size"));
        }
        let (reply, answer) = oneshot::channel();
        let pending = Pending { inputs: request.inputs, parameters: request.parameters, rows, arrived: Instant::now(), reply };
        let sender = self.sender.get_or_init(|| {
            let (sender, receiver) = mpsc::unbounded_channel();
            let scheduler =
                Scheduler { policy: self.policy.clone(), backend: Arc::clone(&self.backend), queued: Arc::clone(&self.queued) };
            tokio::spawn(scheduler.run(receiver));
            sender
        });
        let stopped = || BackendError::failed(ErrorCode::Unavailable, "the model's batcher has stopped");
        if sender.send(pending).is_err() {
            self.queued.fetch_sub(1, Ordering::AcqRel);
            return Err(stopped());
        }
        answer.await.map_err(|_| stopped())?
    }
}

struct Scheduler {
    policy: Policy,
    backend: Arc<dyn Backend>,
    queued: Arc<AtomicUsize>,
}

impl Scheduler {
    /// Forms batches until every sender is gone (the model version was unloaded).
    async fn run(self, mut arrivals: mpsc::UnboundedReceiver<Pending>) {
        let instances = Arc::new(Semaphore::new(self.policy.instances));
        let mut waiting: VecDeque<Pending> = VecDeque::new();
        loop {
            if waiting.is_empty() {
                match arrivals.recv().await {
                    Some(pending) => waiting.push_back(pending),
                    None => return,
                }
            }
            let Ok(instance) = Arc::clone(&instances).acquire_owned().await else { return };
            let mut open = true;
            loop {
                while let Ok(pending) = arrivals.try_recv() {
                    waiting.push_back(pending);
                }
                // Requests whose clients have gone leave the queue unrun.
                let before = waiting.len();
                waiting.retain(|p| !p.reply.is_closed());
                self.release(before - waiting.len());
                let Some(oldest) = waiting.front() else { break };
                let count = self.batch_len(&waiting);
                let rows: i64 = waiting.iter().take(count).map(|p| p.rows).sum();
                // A request behind the batch that cannot join it (another shape, or no room) means
                // waiting cannot make this batch bigger: it goes now, as Triton's does.
                let blocked = count < waiting.len();
                let ready = blocked || rows >= self.policy.max_batch_size || self.policy.preferred.contains(&rows);
                let deadline = oldest.arrived + self.policy.max_delay;
                if ready || !open || Instant::now() >= deadline {
                    break;
                }
                tokio::select! {
                    arrival = arrivals.recv() => match arrival {
                        Some(pending) => waiting.push_back(pending),
                        None => open = false,
                    },
                    () = tokio::time::sleep_until(deadline) => {}
                }
            }
            let count = self.batch_len(&waiting);
            if count == 0 {
                continue;
            }
            let batch: Vec<Pending> = waiting.drain(..count).collect();
            self.release(count);
            let backend = Arc::clone(&self.backend);
            tokio::spawn(async move {
                execute(backend.as_ref(), batch).await;
                drop(instance);
            });
        }
    }

    /// Gives back the queue places of requests that left the queue.
    fn release(&self, count: usize) {
        self.queued.fetch_sub(count, Ordering::AcqRel);
    }

    /// How many requests from the head share one batch: compatible with the head, in order, within
    /// `max_batch_size` rows.
    fn batch_len(&self, waiting: &VecDeque<Pending>) -> usize {
        let Some(head) = waiting.front() else { return 0 };
        let mut rows = 0;
        let mut count = 0;
        for pending in waiting {
            let fits = rows + pending.rows <= self.policy.max_batch_size;
            let same = count == 0 || (compatible(&head.inputs, &pending.inputs) && head.parameters == pending.parameters);
            if !fits || !same {
                break;
            }
            rows += pending.rows;
            count += 1;
        }
        count.max(1)
    }
}

/// Runs one batch and gives every request its rows of the outputs, or the batch's error.
async fn execute(backend: &dyn Backend, batch: Vec<Pending>) {
    let started = Instant::now();
    let rows: Vec<i64> = batch.iter().map(|p| p.rows).collect();
    let waited: Vec<Duration> = batch.iter().map(|p| started.saturating_duration_since(p.arrived)).collect();
    let mut replies = Vec::with_capacity(batch.len());
    let mut inputs = Vec::with_capacity(batch.len());
    let mut parameters = Parameters::default();
    for pending in batch {
        replies.push(pending.reply);
        inputs.push(pending.inputs);
        parameters = pending.parameters;
    }
    let request = BackendRequest { inputs: stack(inputs), parameters, cancel: None };
    let mut responder = Responder::single();
    let outputs = match backend.execute(request, &mut responder).await {
        Ok(()) => responder.take_single().ok_or(BackendError::NoResponse),
        Err(error) => Err(error),
    };
    let parts = outputs.and_then(|outputs| {
        if replies.len() == 1 {
            return Ok(vec![outputs]);
        }
        split(outputs, &rows).map_err(|message| BackendError::failed(ErrorCode::Internal, message))
    });
    match parts {
        Ok(parts) => {
            for (index, ((reply, outputs), waited)) in replies.into_iter().zip(parts).zip(waited).enumerate() {
                let _ = reply.send(Ok(BatchShare { outputs, carried_the_call: index == 0, waited }));
            }
        }
        Err(error) => {
            let (code, message) = (error.code(), error.to_string());
            for reply in replies {
                let _ = reply.send(Err(BackendError::failed(code, message.clone())));
            }
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::sync::Mutex;

    use async_trait::async_trait;
    use tokio::sync::{Notify, Semaphore};
    use tritium_proto::inference::{ModelDynamicBatching, ModelInstanceGroup, ModelQueuePolicy};

    use super::*;

    /// OUTPUT = INPUT + 1 (INT32); records each call's rows; with a `gate`, says it started and
    /// waits for a permit before answering.
    #[derive(Default)]
    struct Counter {
        calls: Mutex<Vec<i64>>,
        gate: Option<(Notify, Semaphore)>,
    }

    #[async_trait]
    impl Backend for Counter {
        async fn execute(&self, request: BackendRequest, responder: &mut Responder) -> Result<(), BackendError> {
            let input = request.input("INPUT")?;
            self.calls.lock().unwrap().push(input.shape[0]);
            if let Some((started, permits)) = &self.gate {
                started.notify_one();
                permits.acquire().await.unwrap().forget();
            }
            let plus_one: Vec<i32> = input.to_vec::<i32>()?.iter().map(|x| x + 1).collect();
            responder.send(vec![Tensor::from_slice("OUTPUT", input.shape.clone(), &plus_one)]).await
        }
    }

    fn config(max_batch_size: i32, delay_us: u64, max_queue_size: u32) -> ModelConfig {
        ModelConfig {
            name: "m".into(),
            max_batch_size,
            instance_group: vec![ModelInstanceGroup { count: 1, ..Default::default() }],
            scheduling_choice: Some(SchedulingChoice::DynamicBatching(ModelDynamicBatching {
                max_queue_delay_microseconds: delay_us,
                default_queue_policy: Some(ModelQueuePolicy { max_queue_size, ..Default::default() }),
                ..Default::default()
            })),
            ..Default::default()
        }
    }

    fn request(values: &[i32], width: i64) -> BackendRequest {
        let rows = values.len() as i64 / width;
        BackendRequest { inputs: vec![Tensor::from_slice("INPUT", vec![rows, width], values)], parameters: vec![], cancel: None }
    }

    #[tokio::test]
    async fn concurrent_requests_share_one_backend_call_and_get_their_own_rows() {
        let backend = Arc::new(Counter::default());
        let dynamic: Arc<dyn Backend> = backend.clone();
        let batcher = Arc::new(DynamicBatcher::for_config(&config(8, 60_000_000, 0), &dynamic).unwrap());
        let tasks: Vec<_> = (0..4)
            .map(|i| {
                let batcher = Arc::clone(&batcher);
                tokio::spawn(async move { batcher.submit(request(&[i * 10, i * 10 + 1, i * 10 + 2, i * 10 + 3], 2), 2).await })
            })
            .collect();
        let mut carried = 0;
        for (i, task) in tasks.into_iter().enumerate() {
            let BatchShare { outputs, carried_the_call: first, .. } = task.await.unwrap().unwrap();
            let i = i as i32;
            assert_eq!(outputs[0].shape, [2, 2]);
            assert_eq!(outputs[0].to_vec::<i32>().unwrap(), [i * 10 + 1, i * 10 + 2, i * 10 + 3, i * 10 + 4]);
            carried += usize::from(first);
        }
        assert_eq!(*backend.calls.lock().unwrap(), [8], "4 requests of 2 rows filled one batch of 8");
        assert_eq!(carried, 1, "one request carries the batch's execution");
    }

    #[tokio::test]
    async fn requests_of_other_shapes_wait_for_their_own_batch() {
        let backend = Arc::new(Counter::default());
        let dynamic: Arc<dyn Backend> = backend.clone();
        let batcher = Arc::new(DynamicBatcher::for_config(&config(8, 200_000, 0), &dynamic).unwrap());
        let wide = {
            let b = Arc::clone(&batcher);
            tokio::spawn(async move { b.submit(request(&[1, 2, 3], 3), 1).await })
        };
        let narrow = {
            let b = Arc::clone(&batcher);
            tokio::spawn(async move { b.submit(request(&[7, 8], 2), 1).await })
        };
        assert_eq!(wide.await.unwrap().unwrap().outputs[0].to_vec::<i32>().unwrap(), [2, 3, 4]);
        assert_eq!(narrow.await.unwrap().unwrap().outputs[0].to_vec::<i32>().unwrap(), [8, 9]);
        assert_eq!(*backend.calls.lock().unwrap(), [1, 1]);
    }

    #[tokio::test]
    async fn a_full_queue_answers_unavailable_and_the_queued_requests_still_run() {
        let backend = Arc::new(Counter { gate: Some((Notify::new(), Semaphore::new(0))), ..Default::default() });
        let dynamic: Arc<dyn Backend> = backend.clone();
        let batcher = Arc::new(DynamicBatcher::for_config(&config(1, 0, 2), &dynamic).unwrap());
        let submit = |value: i32| {
            let b = Arc::clone(&batcher);
            tokio::spawn(async move { b.submit(request(&[value], 1), 1).await })
        };
        let running = submit(0);
        let (started, permits) = backend.gate.as_ref().unwrap();
        started.notified().await;
        let queued = [submit(1), submit(2)];
        while batcher.queued.load(Ordering::Acquire) < 2 {
            tokio::task::yield_now().await;
        }
        let refused = batcher.submit(request(&[3], 1), 1).await.unwrap_err();
        assert_eq!((refused.code(), refused.to_string().as_str()), (ErrorCode::Unavailable, "Exceeds maximum queue size"));
        permits.add_permits(3);
        assert_eq!(running.await.unwrap().unwrap().outputs[0].to_vec::<i32>().unwrap(), [1]);
        for (value, task) in (2..).zip(queued) {
            assert_eq!(task.await.unwrap().unwrap().outputs[0].to_vec::<i32>().unwrap(), [value]);
        }
        assert_eq!(*backend.calls.lock().unwrap(), [1, 1, 1]);
    }

    #[test]
    fn no_batcher_without_dynamic_batching_or_a_batch_dimension() {
        let backend: Arc<dyn Backend> = Arc::new(Counter::default());
        assert!(DynamicBatcher::for_config(&ModelConfig { max_batch_size: 8, ..Default::default() }, &backend).is_none());
        assert!(DynamicBatcher::for_config(&config(0, 0, 0), &backend).is_none());
        let batcher = DynamicBatcher::for_config(&config(8, 100, 0), &backend).unwrap();
        assert_eq!(batcher.policy.max_queue, DEFAULT_MAX_QUEUE);
        assert_eq!(batcher.policy.instances, 1);
    }
}
