//! Where a request queued in a batcher gets its answer: a plain request its share of a batch's
//! outputs, a decoupled one its own stream. Shared by the dynamic and the sequence batcher.

use std::time::Duration;

use tokio::sync::oneshot;
use tokio_util::sync::CancellationToken;
use tritium_proto::ErrorCode;
use tritium_tensor::Tensor;

use crate::params::RequestOptions;
use tritium_backend_api::{BackendError, BackendRequest, Responder};

/// How long the backend took over one batch, in Triton's three compute phases.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Execution {
    pub batch_size: u64,
    pub compute_input: Duration,
    pub compute_infer: Duration,
    pub compute_output: Duration,
}

/// A request's share of a batch the backend ran: its outputs, or the error the execution ended
/// with for it (an execution that failed is still counted, as Triton counts it).
#[derive(Debug)]
pub struct BatchShare {
    pub outputs: Result<Vec<Tensor>, BackendError>,
    /// The batch's execution, on the share of the request that carries it (the first of each
    /// batch), so executions are counted once per batch.
    pub execution: Option<Execution>,
    /// How long it waited in the batcher's queue before its batch started.
    pub waited: Duration,
}

pub type BatchAnswer = Result<BatchShare, BackendError>;

pub(crate) enum Reply {
    /// A plain request: its share of the batch's outputs.
    Share(oneshot::Sender<BatchAnswer>),
    /// A decoupled request: its responses go to its responder as the model sends them.
    Stream(StreamReply),
}

pub(crate) struct StreamReply {
    pub(crate) responder: Responder,
    pub(crate) done: oneshot::Sender<(Responder, Result<(), BackendError>)>,
    /// The batch's execution (on the first request of each batch) and the time waited, once the
    /// model has taken the batch.
    pub(crate) started: oneshot::Sender<(Option<Execution>, Duration)>,
}

/// The waiting side of a [`Reply::Stream`].
pub(crate) struct StreamWait {
    ended: oneshot::Receiver<(Responder, Result<(), BackendError>)>,
    began: oneshot::Receiver<(Option<Execution>, Duration)>,
}

/// How a decoupled request's stream ended, after going through the batcher.
pub struct StreamEnd {
    /// `None` only when the batcher stopped with the request inside.
    pub responder: Option<Responder>,
    pub result: Result<(), BackendError>,
    pub execution: Option<Execution>,
    pub waited: Duration,
}

impl Reply {
    /// A decoupled request's reply, and what waits for its end.
    pub(crate) fn stream(responder: Responder) -> (Reply, StreamWait) {
        let (done, ended) = oneshot::channel();
        let (started, began) = oneshot::channel();
        (Reply::Stream(StreamReply { responder, done, started }), StreamWait { ended, began })
    }

    /// Whether nobody waits for the answer any more.
    pub(crate) fn is_closed(&self, cancel: Option<&CancellationToken>) -> bool {
        match self {
            Reply::Share(reply) => reply.is_closed(),
            Reply::Stream(stream) => stream.done.is_closed() || cancel.is_some_and(CancellationToken::is_cancelled),
        }
    }

    /// Answers with `error`, before the request ran.
    pub(crate) fn refuse(self, error: BackendError) {
        match self {
            Reply::Share(reply) => drop(reply.send(Err(error))),
            Reply::Stream(stream) => {
                let _ = stream.started.send((None, Duration::ZERO));
                let _ = stream.done.send((stream.responder, Err(error)));
            }
        }
    }

    /// The end of a request that never got into the queue.
    pub(crate) fn unqueued(self, error: BackendError) -> StreamEnd {
        let responder = match self {
            Reply::Stream(stream) => Some(stream.responder),
            Reply::Share(_) => None,
        };
        StreamEnd { responder, result: Err(error), execution: None, waited: Duration::ZERO }
    }
}

impl StreamWait {
    /// Waits for the end of the stream.
    pub(crate) async fn end(self) -> StreamEnd {
        let (responder, result) = match self.ended.await {
            Ok((responder, result)) => (Some(responder), result),
            Err(_) => (None, Err(stopped())),
        };
        let (execution, waited) = self.began.await.unwrap_or((None, Duration::ZERO));
        StreamEnd { responder, result, execution, waited }
    }
}

/// A batcher's queue, as its callers use it: a request goes in before the call returns (so the
/// requests of one stream keep their order), or comes back with why not.
pub(crate) trait Queue {
    /// Puts a request in the queue; the reply back with the reason when it is refused.
    fn enqueue(
        &self,
        request: BackendRequest,
        rows: i64,
        options: &RequestOptions,
        reply: Reply,
    ) -> Result<(), (BackendError, Reply)>;

    /// Queues a plain request and waits for its share of a batch's outputs: every batcher's
    /// `submit`. The request joins the queue before the first await, so requests read in order
    /// from one stream keep that order.
    async fn submit_share(&self, request: BackendRequest, rows: i64, options: &RequestOptions) -> BatchAnswer {
        let (reply, answer) = oneshot::channel();
        self.enqueue(request, rows, options, Reply::Share(reply)).map_err(|(error, _)| error)?;
        answer.await.map_err(|_| stopped())?
    }

    /// Queues a request of a decoupled model (its responses go to `responder` once it runs);
    /// what waits for the end of its stream, or that end when the request was refused.
    fn enqueue_stream(
        &self,
        request: BackendRequest,
        rows: i64,
        options: &RequestOptions,
        responder: Responder,
    ) -> Result<StreamWait, StreamEnd> {
        let (reply, wait) = Reply::stream(responder);
        match self.enqueue(request, rows, options, reply) {
            Ok(()) => Ok(wait),
            Err((error, reply)) => Err(reply.unqueued(error)),
        }
    }
}

/// A batcher's answer when its task has gone with the request inside.
pub(crate) fn stopped() -> BackendError {
    BackendError::failed(ErrorCode::Unavailable, "the model's batcher has stopped")
}
