//! The [`Backend`] trait: how a model turns validated input tensors into output tensors, and the
//! registry of backend factories a model repository picks from by `config.backend`.
//!
//! A backend sees only tensors that already match its config (datatype, shape, batch, byte
//! size), so it can index them without checks of its own.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Weak};

use async_trait::async_trait;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tritium_proto::ErrorCode;
use tritium_proto::inference::ModelConfig;
use tritium_tensor::{Tensor, TensorError};

use crate::config_params::{ConfigParams, config_parameter};
use crate::engine::Engine;
use crate::first_response::FirstResponseClock;
use crate::host::Host;
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

#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    #[error("input '{name}' is missing")]
    MissingInput { name: String },
    #[error("{0}")]
    Tensor(#[from] TensorError),
    #[error("a model that is not decoupled sent more than one response")]
    ExtraResponse,
    #[error("the model sent no response")]
    NoResponse,
    #[error("the request was cancelled")]
    Cancelled,
    #[error("{message}")]
    Failed { code: ErrorCode, message: String },
    /// An error whose message is whole as it is, not prefixed with the model: a scheduler's
    /// refusal before any backend ran (a timeout in the queue, a sequence's rules), worded as
    /// Triton words it, or an ensemble step's error, which names the ensemble itself.
    #[error("{message}")]
    Refused { code: ErrorCode, message: String },
    /// The scheduler's queue is full (UNAVAILABLE).
    #[error("Exceeds maximum queue size")]
    QueueFull,
}

impl BackendError {
    pub fn code(&self) -> ErrorCode {
        match self {
            BackendError::MissingInput { .. } | BackendError::Tensor(_) => ErrorCode::InvalidArg,
            BackendError::ExtraResponse | BackendError::NoResponse => ErrorCode::Internal,
            BackendError::Cancelled => ErrorCode::Cancelled,
            BackendError::Failed { code, .. } | BackendError::Refused { code, .. } => *code,
            BackendError::QueueFull => ErrorCode::Unavailable,
        }
    }

    pub fn failed(code: ErrorCode, message: impl Into<String>) -> BackendError {
        BackendError::Failed { code, message: message.into() }
    }

    pub fn refused(code: ErrorCode, message: impl Into<String>) -> BackendError {
        BackendError::Refused { code, message: message.into() }
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
}

impl Responder {
    pub fn single() -> Responder {
        Responder { inner: ResponderKind::Single(None), states: None }
    }

    pub fn stream(target: StreamTarget) -> Responder {
        Responder { inner: ResponderKind::Stream(target), states: None }
    }

    /// From now on, outputs named in `output_names` are kept (the latest of each) rather than
    /// sent; [`Responder::take_states`] hands them over.
    pub fn capture_states(&mut self, output_names: Vec<String>) {
        let latest = output_names.iter().map(|_| None).collect();
        self.states = Some(Box::new(StateCapture { names: output_names, latest }));
    }

    /// The latest value of each captured state output, in the order given to
    /// [`Responder::capture_states`] (`None` where no response carried it).
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
    pub fn unanswered_clock(&mut self) -> Option<FirstResponseClock> {
        match &mut self.inner {
            ResponderKind::Stream(target) => target.first_response.take(),
            ResponderKind::Single(_) => None,
        }
    }

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

/// What a factory knows when it builds a backend for one model version.
#[derive(Debug)]
pub struct BackendContext<'a> {
    pub model_name: &'a str,
    pub version: i64,
    pub config: &'a ModelConfig,
    /// The version folder, when the model came from a repository on disk.
    pub version_dir: Option<&'a Path>,
    /// The model folder, when the model came from a repository on disk (relative paths in the
    /// config's parameters are relative to it).
    pub model_dir: Option<&'a Path>,
    /// The server that hosts the model, for backends that call other models (Triton's
    /// business-logic scripting) or load them.
    pub host: Weak<dyn Host>,
}

/// Builds a backend instance for a model version.
pub trait BackendFactory: Send + Sync + 'static {
    fn create(&self, context: &BackendContext<'_>) -> Result<Engine, String>;

    /// Fills in what a `config.pbtxt` for this backend may leave out (inputs, outputs, the
    /// transaction policy), before the config is checked. `model_dir` is the model folder, if any.
    fn complete_config(&self, config: &mut ModelConfig, model_dir: Option<&Path>) -> Result<(), String> {
        let _ = (config, model_dir);
        Ok(())
    }

    /// Triton's auto-complete, run before [`BackendFactory::complete_config`] unless
    /// `--disable-auto-complete-config`: fills the inputs, outputs, batching and defaults the
    /// config leaves out from the model file itself, and fails when they contradict it.
    fn auto_complete_config(&self, config: &mut ModelConfig, model_dir: Option<&Path>) -> Result<(), String> {
        let _ = (config, model_dir);
        Ok(())
    }

    /// The file (in a version folder) that marks a model of this backend, such as `model.onnx`:
    /// a folder without `config.pbtxt` is served by the backend whose file it holds.
    fn model_filename(&self) -> Option<&'static str> {
        None
    }
}

impl<F> BackendFactory for F
where
    F: Fn(&BackendContext<'_>) -> Result<Engine, String> + Send + Sync + 'static,
{
    fn create(&self, context: &BackendContext<'_>) -> Result<Engine, String> {
        self(context)
    }
}

/// Backend factories by the name a `config.pbtxt` gives in `backend` (or `platform`).
#[derive(Clone, Default)]
pub struct BackendRegistry {
    factories: HashMap<String, Arc<dyn BackendFactory>>,
}

impl std::fmt::Debug for BackendRegistry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut names: Vec<_> = self.factories.keys().collect();
        names.sort();
        f.debug_struct("BackendRegistry").field("backends", &names).finish()
    }
}

impl BackendRegistry {
    pub fn register(&mut self, name: impl Into<String>, factory: impl BackendFactory) -> &mut Self {
        self.factories.insert(name.into(), Arc::new(factory));
        self
    }

    /// Registers a backend that needs nothing from its config: one shared instance.
    pub fn register_instance(&mut self, name: impl Into<String>, backend: Arc<dyn Backend>) -> &mut Self {
        self.register(name, move |_: &BackendContext<'_>| Ok(Engine::Tensors(Arc::clone(&backend))))
    }

    /// Adds every factory of `other`, replacing those of the same name.
    pub fn extend(&mut self, other: BackendRegistry) {
        self.factories.extend(other.factories);
    }

    /// Whether a backend is registered under `name`.
    pub fn contains(&self, name: &str) -> bool {
        self.factories.contains_key(name)
    }

    pub fn get(&self, name: &str) -> Option<&Arc<dyn BackendFactory>> {
        self.factories.get(name)
    }

    /// The config of a model folder without `config.pbtxt`: the backend whose model file one of
    /// its version folders holds (the newest first), everything else left to auto-complete. Of
    /// names sharing one factory (a backend and its Triton platform name), the first in order.
    pub fn config_from_model_files(&self, name: &str, dir: &Path, versions: &[i64]) -> Result<ModelConfig, String> {
        let mut names: Vec<&String> = self.factories.keys().collect();
        names.sort();
        let recognize = |version_dir: PathBuf| {
            names.iter().find_map(|backend| {
                let file = self.factories[*backend].model_filename()?;
                version_dir.join(file).exists().then(|| backend.to_string())
            })
        };
        let backend = versions.iter().rev().find_map(|version| recognize(dir.join(version.to_string()))).ok_or_else(|| {
            "the model folder has no config.pbtxt, and none of its version folders holds a model file a backend \
             recognizes (such as 1/model.onnx)"
                .to_string()
        })?;
        Ok(ModelConfig { name: name.to_string(), backend, ..ModelConfig::default() })
    }
}

impl BackendContext<'_> {
    /// A `parameters { key: .. value { string_value: .. } }` entry of the config.
    pub fn parameter(&self, key: &str) -> Option<&str> {
        config_parameter(self.config, key)
    }

    /// Typed reads of the config's parameters.
    pub fn params(&self) -> ConfigParams<'_> {
        ConfigParams::of(self.config)
    }
}
