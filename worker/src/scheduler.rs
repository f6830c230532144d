//! Which of Triton's schedulers runs a model version's requests: none (each request is its own
//! backend call), the dynamic batcher, or the sequence batcher. Written once, used by every
//! backend; the backend only ever sees the batches.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use tritium_proto::inference::ModelConfig;
use tritium_proto::inference::model_config::SchedulingChoice;

use crate::dynamic_batcher::{BatchAnswer, BatchShare, DynamicBatcher};
use crate::params::RequestOptions;
use crate::ragged::RaggedBatching;
use crate::rate_limiter::ModelRates;
use crate::reply::{Queue, StreamEnd, StreamWait};
use crate::scheduler_limits::SchedulerLimits;
use crate::sequence::SequenceBatcher;
use tritium_backend_api::{Backend, BackendError, BackendRequest, Responder};
use tritium_repository::model_files::read_model_file;

pub(crate) enum Scheduler {
    /// Every request is its own backend call, laid out as a batch of one when the model has
    /// ragged or batch inputs.
    Direct(Arc<RaggedBatching>),
    /// [`Scheduler::Direct`] with the rate limiter on: each call first waits for an instance
    /// whose resources are free.
    Limited(Arc<RaggedBatching>, ModelRates),
    Dynamic(DynamicBatcher),
    Sequence(SequenceBatcher),
}

impl Scheduler {
    /// The scheduler `config` asks for; an error when it cannot be served as written.
    /// `ragged` is the model's [`RaggedBatching`]; `model_dir` holds the `initial_state` files
    /// of a sequence model's states.
    pub(crate) fn for_config(
        config: &ModelConfig,
        backend: &Arc<dyn Backend>,
        ragged: &Arc<RaggedBatching>,
        model_dir: Option<&Path>,
        limits: SchedulerLimits,
    ) -> Result<Scheduler, String> {
        match &config.scheduling_choice {
            Some(SchedulingChoice::DynamicBatching(_)) => {
                Ok(DynamicBatcher::for_config(config, backend, ragged, limits.max_queue_size)?
                    .map_or_else(|| Scheduler::Direct(Arc::clone(ragged)), Scheduler::Dynamic))
            }
            Some(SchedulingChoice::SequenceBatching(batching)) => {
                let read = |file: &str, size: usize| read_initial_state(model_dir, file, size);
                Ok(Scheduler::Sequence(SequenceBatcher::for_config(config, batching, backend, ragged, limits, &read)?))
            }
            _ => Ok(Scheduler::Direct(Arc::clone(ragged))),
        }
    }

    /// Every execution waits for its instance's resources in the rate limiter (`None`: off).
    pub(crate) fn with_rates(self, rates: Option<ModelRates>) -> Scheduler {
        match (self, rates) {
            (Scheduler::Direct(ragged), Some(rates)) => Scheduler::Limited(ragged, rates),
            (Scheduler::Dynamic(batcher), rates) => Scheduler::Dynamic(batcher.with_rates(rates)),
            (Scheduler::Sequence(batcher), rates) => Scheduler::Sequence(batcher.with_rates(rates)),
            (scheduler, _) => scheduler,
        }
    }

    pub(crate) fn is_direct(&self) -> bool {
        matches!(self, Scheduler::Direct(_) | Scheduler::Limited(..))
    }

    /// Runs one request of `rows` rows through the scheduler.
    pub(crate) async fn run(
        &self,
        backend: &dyn Backend,
        request: BackendRequest,
        rows: i64,
        options: &RequestOptions,
    ) -> BatchAnswer {
        match self {
            Scheduler::Direct(ragged) => {
                let outputs = ragged.run_one(backend, request).await;
                Ok(BatchShare { outputs, execution: None, waited: Duration::ZERO })
            }
            Scheduler::Limited(ragged, rates) => {
                let asked = Instant::now();
                let resources = rates.acquire(None).await;
                // Waiting for resources is waiting in the queue.
                let waited = asked.elapsed();
                let outputs = ragged.run_one(backend, request).await;
                drop(resources);
                Ok(BatchShare { outputs, execution: None, waited })
            }
            Scheduler::Dynamic(batcher) => batcher.submit(request, rows, options).await,
            Scheduler::Sequence(batcher) => batcher.submit(request, rows, options).await,
        }
    }

    /// Starts one request of a decoupled model, its responses going to `responder`: a batcher
    /// queues it before this returns, so the requests of one stream keep their order.
    /// [`Scheduler::stream_end`] then runs it to the end of its stream.
    pub(crate) fn start_stream(
        &self,
        backend: &dyn Backend,
        request: BackendRequest,
        responder: Responder,
        rows: i64,
        options: &RequestOptions,
    ) -> StreamStart {
        let queued = match self {
            Scheduler::Dynamic(batcher) => batcher.enqueue_stream(request, rows, options, responder),
            Scheduler::Sequence(batcher) => batcher.enqueue_stream(request, rows, options, responder),
            Scheduler::Direct(ragged) | Scheduler::Limited(ragged, _) => {
                let rates = match self {
                    Scheduler::Limited(_, rates) => Some(rates.clone()),
                    _ => None,
                };
                return match ragged.for_one(backend, request.inputs) {
                    Ok(inputs) => StreamStart::Now(BackendRequest { inputs, ..request }, responder, rates),
                    Err(error) => StreamStart::Ended(StreamEnd {
                        responder: Some(responder),
                        result: Err(error),
                        execution: None,
                        waited: Duration::ZERO,
                    }),
                };
            }
        };
        match queued {
            Ok(wait) => StreamStart::Queued(wait),
            Err(end) => StreamStart::Ended(end),
        }
    }

    /// Waits for the end of a stream [`Scheduler::start_stream`] started, running it first when
    /// no batcher does.
    pub(crate) async fn stream_end(backend: &dyn Backend, start: StreamStart) -> StreamEnd {
        match start {
            StreamStart::Queued(wait) => wait.end().await,
            StreamStart::Ended(end) => end,
            StreamStart::Now(request, mut responder, rates) => {
                let asked = Instant::now();
                let resources = match (&rates, request.cancel.clone()) {
                    (Some(rates), Some(cancel)) => tokio::select! {
                        grant = rates.acquire(None) => Some(grant),
                        // A client that goes away while its stream waits for resources leaves the queue.
                        () = cancel.cancelled() => {
                            let waited = asked.elapsed();
                            let result = Err(BackendError::Cancelled);
                            return StreamEnd { responder: Some(responder), result, execution: None, waited };
                        }
                    },
                    (Some(rates), None) => Some(rates.acquire(None).await),
                    (None, _) => None,
                };
                let waited = asked.elapsed();
                let result = backend.execute(request, &mut responder).await;
                drop(resources);
                StreamEnd { responder: Some(responder), result, execution: None, waited }
            }
        }
    }
}

/// A decoupled request as [`Scheduler::start_stream`] left it.
pub(crate) enum StreamStart {
    /// In a batcher's queue.
    Queued(StreamWait),
    /// To run now, on its own (laid out as a batch of one where the model needs it), once the
    /// rate limiter, when on, gives it an instance.
    Now(BackendRequest, Responder, Option<ModelRates>),
    /// Refused before it was queued.
    Ended(StreamEnd),
}

/// Reads `initial_state/<file>` of the model folder: a plain name (no folder, no `..`), at most
/// `size` bytes beyond what its dims need (BYTES states have no fixed size; they get 1 MiB more).
fn read_initial_state(model_dir: Option<&Path>, file: &str, size: usize) -> Result<Bytes, String> {
    let plain = Path::new(file).file_name().is_some_and(|name| name == file) && file != "..";
    if !plain {
        return Err(format!("initial_state data_file '{file}' must be a file name inside the model's initial_state folder"));
    }
    read_model_file(model_dir, "initial_state", file, size.saturating_add(1 << 20))
        .map_err(|e| format!("initial_state data_file: {e}"))
}
