//! The [`Backend`] trait: how a model turns validated input tensors into output tensors, what it
//! is given (a [`BackendRequest`]) and where its answers go (a [`Responder`]).
//!
//! A backend sees only tensors that already match its config (datatype, shape, batch, byte
//! size), so it can index them without checks of its own.

use std::sync::Arc;

use async_trait::async_trait;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tritium_tensor::Tensor;

use crate::error::BackendError;
use crate::first_response::FirstResponseClock;
use crate::request::{InferenceResponse, Parameters};
use crate::stream::StreamItem;

/// Runs the requests of one model version.
///
/// ```
/// use async_trait::async_trait;
/// use tritium_tensor::Tensor;
/// use tritium_backend_api::{Backend, BackendError, BackendRequest, Responder};
///
/// /// Doubles every FP32 element of INPUT0.
/// struct Doubler;
///
/// #[async_trait]
/// impl Backend for Doubler {
///     async fn execute(&self, request: BackendRequest, responder: &mut Responder) -> Result<(), BackendError> {
///         let input = request.input("INPUT0")?;
///         let doubled: Vec<f32> = input.to_vec::<f32>()?.iter().map(|x| x * 2.0).collect();
///         responder.send(vec![Tensor::from_slice("OUTPUT0", input.shape.clone(), &doubled)]).await
///     }
/// }
/// ```
#[async_trait]
pub trait Backend: Send + Sync + 'static {
    /// Answers one request through `responder`: exactly once for a plain model, any number of
    /// times for a decoupled one. Returning ends the request.
    async fn execute(&self, request: BackendRequest, responder: &mut Responder) -> Result<(), BackendError>;

    /// Whether the backend can take requests now (ModelReady): false, for instance, while a
    /// crashed instance's process is started again. Called on every readiness check: cheap.
    fn is_ready(&self) -> bool {
        true
    }

    /// Whether the dynamic batcher hands this backend its batches as lists of requests
    /// ([`Backend::execute_list`]) instead of stacking them along the batch dimension into one
    /// request: Triton's python backend gives a model's `execute` the requests one by one.
    fn takes_request_lists(&self) -> bool {
        false
    }

    /// Answers the requests of one batch, each with its own outputs or error, in order. The
    /// default runs them one after another.
    async fn execute_list(&self, requests: Vec<BackendRequest>) -> Vec<Result<Vec<Tensor>, BackendError>> {
        let mut answers = Vec::with_capacity(requests.len());
        for request in requests {
            let mut responder = Responder::single();
            let answer = match self.execute(request, &mut responder).await {
                Ok(()) => responder.take_single().ok_or(BackendError::NoResponse),
                Err(error) => Err(error),
            };
            answers.push(answer);
        }
        answers
    }

    /// Runs a dynamic batch of a decoupled model: each request streams its responses to its own
    /// responder and reports its end on its `done`. Returns once the model can take another
    /// batch, which may be before every request has ended. The default runs the requests
    /// concurrently through [`Backend::execute`] and returns when all have ended.
    async fn execute_streams(&self, requests: Vec<StreamedRequest>) {
        futures::future::join_all(requests.into_iter().map(|streamed| async move {
            let StreamedRequest { request, mut responder, done } = streamed;
            let result = self.execute(request, &mut responder).await;
            let _ = done.send((responder, result));
        }))
        .await;
    }
}

/// One decoupled request of a dynamic batch ([`Backend::execute_streams`]).
pub struct StreamedRequest {
    pub request: BackendRequest,
    pub responder: Responder,
    /// Where the request's end goes, with its responder, once its last response has been sent.
    pub done: tokio::sync::oneshot::Sender<(Responder, Result<(), BackendError>)>,
}

/// A validated request as a backend sees it.
#[derive(Debug)]
pub struct BackendRequest {
    pub inputs: Vec<Tensor>,
    pub parameters: Parameters,
    /// Cancelled when the client goes away; long-running backends should check it through
    /// [`BackendRequest::cancelled`]. `None` where only dropping the call cancels it (a plain
    /// model's request, whose future is dropped with the call): that saves a token per request.
    pub cancel: Option<CancellationToken>,
    /// The client's request id (empty when it gave none).
    pub id: String,
    /// The outputs the client asked for (empty: all of them); the worker keeps only those, so
    /// most backends compute every output and ignore this.
    pub requested_outputs: Vec<String>,
    /// The request's trace when it is sampled (`None` for a batch of several requests): an
    /// ensemble or a BLS call makes its calls child traces of it.
    pub trace: Option<crate::trace::RequestTrace>,
}

impl BackendRequest {
    /// Resolves when the request is cancelled; never, for one only dropping can cancel.
    pub async fn cancelled(&self) {
        match &self.cancel {
            Some(token) => token.cancelled().await,
            None => std::future::pending().await,
        }
    }

    /// The input called `name`; optional inputs may be absent.
    pub fn input(&self, name: &str) -> Result<&Tensor, BackendError> {
        self.inputs.iter().find(|t| t.name == name).ok_or_else(|| BackendError::MissingInput { name: name.to_string() })
    }

    pub fn optional_input(&self, name: &str) -> Option<&Tensor> {
        self.inputs.iter().find(|t| t.name == name)
    }
}

/// Where a backend puts its responses.
#[derive(Debug)]
pub struct Responder {
    inner: ResponderKind,
    /// A sequence model's implicit states, kept from the responses instead of sent.
    states: Option<Box<StateCapture>>,
}

/// The state outputs of a decoupled sequence model's responses: each response that carries one
/// replaces the value kept, and the client never sees it.
#[derive(Debug)]
struct StateCapture {
    names: Vec<String>,
    latest: Vec<Option<Tensor>>,
}

#[derive(Debug)]
enum ResponderKind {
    Single(Option<Vec<Tensor>>),
    Stream(StreamTarget),
}

/// Gives a response's outputs the shapes the model's config names (Triton's output `reshape`):
/// the core applies it to the responses a stream sends, which it does not see go out.
pub trait OutputShapes: Send + Sync + std::fmt::Debug {
    fn reshape(&self, outputs: &mut [Tensor]);
}

/// Where the responses of one decoupled request go, and what they are labelled with.
#[derive(Debug)]
pub struct StreamTarget {
    pub sender: mpsc::Sender<StreamItem>,
    pub model_name: Arc<str>,
    pub model_version: i64,
    pub id: String,
    pub requested_outputs: Vec<String>,
    /// A response marked final has gone: nothing may follow it.
    pub finished: bool,
    /// Read at the first response, when the first-response histogram is on.
    pub first_response: Option<FirstResponseClock>,
    /// The model's output reshapes, when it has any.
    pub output_shapes: Option<Arc<dyn OutputShapes>>,
}

impl Responder {
    #[doc(hidden)] // the core's schedulers' side of the responder
    pub fn single() -> Responder {
        Responder { inner: ResponderKind::Single(None), states: None }
    }

    #[doc(hidden)] // the core's schedulers' side of the responder
    pub fn stream(target: StreamTarget) -> Responder {
        Responder { inner: ResponderKind::Stream(target), states: None }
    }

    /// From now on, outputs named in `output_names` are kept (the latest of each) rather than
    /// sent; [`Responder::take_states`] hands them over.
    #[doc(hidden)] // the core's schedulers' side of the responder
    pub fn capture_states(&mut self, output_names: Vec<String>) {
        let latest = output_names.iter().map(|_| None).collect();
        self.states = Some(Box::new(StateCapture { names: output_names, latest }));
    }

    /// The latest value of each captured state output, in the order given to
    /// [`Responder::capture_states`] (`None` where no response carried it).
    #[doc(hidden)] // the core's schedulers' side of the responder
    pub fn take_states(&mut self) -> Vec<Option<Tensor>> {
        self.states.take().map(|capture| capture.latest).unwrap_or_default()
    }

    /// Sends one response. For a decoupled model this waits while the client is slow to read,
    /// and fails with [`BackendError::Cancelled`] once it has gone.
    pub async fn send(&mut self, outputs: Vec<Tensor>) -> Result<(), BackendError> {
        self.send_marked(outputs, false).await
    }

    /// Sends a decoupled request's last response, marked final itself (Triton's
    /// `send(response, flags=FINAL)`): no empty final response follows it. For a plain model,
    /// the same as [`Responder::send`].
    pub async fn send_final(&mut self, outputs: Vec<Tensor>) -> Result<(), BackendError> {
        self.send_marked(outputs, true).await
    }

    /// Whether the last response has been sent with [`Responder::send_final`].
    #[doc(hidden)] // the core's schedulers' side of the responder
    pub fn sent_final(&self) -> bool {
        matches!(&self.inner, ResponderKind::Stream(target) if target.finished)
    }

    async fn send_marked(&mut self, mut outputs: Vec<Tensor>, is_final: bool) -> Result<(), BackendError> {
        if let Some(capture) = &mut self.states {
            let mut sent = Vec::with_capacity(outputs.len());
            for output in outputs {
                match capture.names.iter().position(|name| *name == output.name) {
                    Some(index) => capture.latest[index] = Some(output),
                    None => sent.push(output),
                }
            }
            outputs = sent;
        }
        match &mut self.inner {
            ResponderKind::Single(slot @ None) => {
                *slot = Some(outputs);
                Ok(())
            }
            ResponderKind::Single(Some(_)) => Err(BackendError::ExtraResponse),
            ResponderKind::Stream(target) => {
                if let Some(shapes) = &target.output_shapes {
                    shapes.reshape(&mut outputs);
                }
                let response = InferenceResponse {
                    model_name: Arc::clone(&target.model_name),
                    model_version: target.model_version,
                    id: target.id.clone(),
                    outputs: select_outputs(outputs, &target.requested_outputs),
                    is_final,
                    parameters: Vec::new(),
                };
                target.finished |= is_final;
                if let Some(clock) = target.first_response.take() {
                    clock.stop();
                }
                target.sender.send(StreamItem::Response(response)).await.map_err(|_| BackendError::Cancelled)
            }
        }
    }

    /// The first-response clock of a stream that has sent nothing yet.
    #[doc(hidden)] // the core's schedulers' side of the responder
    pub fn unanswered_clock(&mut self) -> Option<FirstResponseClock> {
        match &mut self.inner {
            ResponderKind::Stream(target) => target.first_response.take(),
            ResponderKind::Single(_) => None,
        }
    }

    #[doc(hidden)] // the core's schedulers' side of the responder
    pub fn take_single(&mut self) -> Option<Vec<Tensor>> {
        match &mut self.inner {
            ResponderKind::Single(slot) => slot.take(),
            ResponderKind::Stream(_) => None,
        }
    }
}

/// Keeps the outputs a request asked for, in the backend's order; all of them when it asked for none.
pub fn select_outputs(outputs: Vec<Tensor>, requested: &[String]) -> Vec<Tensor> {
    // Clients that name outputs mostly name them all, in the model's order.
    let all_in_order = || outputs.len() == requested.len() && outputs.iter().zip(requested).all(|(o, r)| o.name == *r);
    if requested.is_empty() || all_in_order() {
        return outputs;
    }
    outputs.into_iter().filter(|o| requested.iter().any(|r| r == &o.name)).collect()
}
