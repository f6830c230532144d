//! The dispatch seam between the frontend and the engines: [`WorkerClient`], implemented here by
//! the in-process [`LocalWorker`] and later by a client of remote worker processes.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use async_trait::async_trait;
use futures::Stream;
use tokio::sync::mpsc;
use tokio_util::sync::{CancellationToken, DropGuard};

use crate::error::WorkerError;
use crate::llm::{GenerateRequest, TokenStream};
use crate::model::ModelVersion;
use crate::registry::ModelRepository;
use crate::request::InferenceResponse;
use crate::valid::ValidInferRequest;

/// One event of a streamed request.
#[derive(Debug)]
pub enum StreamItem {
    Response(InferenceResponse),
    /// The request finished; nothing follows.
    Complete,
    /// The request failed; nothing follows.
    Error(WorkerError),
}

/// The responses of one streamed request. Dropping it cancels the request.
#[derive(Debug)]
pub struct ResponseStream {
    receiver: mpsc::Receiver<StreamItem>,
    _cancel_on_drop: DropGuard,
}

impl ResponseStream {
    /// Responses arriving on `receiver`; dropping the stream cancels `cancel`.
    pub fn new(receiver: mpsc::Receiver<StreamItem>, cancel: CancellationToken) -> ResponseStream {
        ResponseStream { receiver, _cancel_on_drop: cancel.drop_guard() }
    }

    /// A stream holding one response, then the end; how a plain model answers on a stream.
    pub fn single(response: InferenceResponse) -> ResponseStream {
        let (sender, receiver) = mpsc::channel(2);
        // Capacity 2 holds both items, so these sends cannot fail.
        let _ = sender.try_send(StreamItem::Response(response));
        let _ = sender.try_send(StreamItem::Complete);
        ResponseStream::new(receiver, CancellationToken::new())
    }
}

impl Stream for ResponseStream {
    type Item = StreamItem;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<StreamItem>> {
        self.receiver.poll_recv(cx)
    }
}

/// How a request is to be answered.
#[derive(Debug)]
pub enum InferOutcome {
    Single(InferenceResponse),
    Stream(ResponseStream),
}

/// Runs inference requests somewhere: in this process or in a worker process.
#[async_trait]
pub trait WorkerClient: Send + Sync + std::fmt::Debug + 'static {
    /// A unary call: plain models only (decoupled ones answer [`WorkerError::DecoupledUnary`]).
    async fn infer(&self, request: ValidInferRequest) -> Result<InferenceResponse, WorkerError>;
    /// A streaming call: plain models answer once, decoupled ones any number of times.
    async fn infer_stream(&self, request: ValidInferRequest) -> Result<InferOutcome, WorkerError>;

    /// Starts a generation on a language model (token ids in, token ids out).
    async fn generate(&self, model: &str, request: GenerateRequest) -> Result<TokenStream, WorkerError> {
        let _ = request;
        Err(WorkerError::NotLanguageModel { model: model.to_string() })
    }

    /// [`generate`](WorkerClient::generate) on a decode worker that takes the prompt's KV blocks
    /// from `prefill` (disaggregated serving); clients that cannot pass it on run a plain generate.
    async fn generate_with_prefill(
        &self,
        model: &str,
        request: GenerateRequest,
        prefill: crate::llm::PrefillSource,
    ) -> Result<TokenStream, WorkerError> {
        let _ = prefill;
        self.generate(model, request).await
    }

    /// Embeds tokenized inputs with an embedding model.
    async fn embed(&self, model: &str, inputs: Vec<Vec<u32>>) -> Result<Vec<Vec<f32>>, WorkerError> {
        let _ = inputs;
        Err(WorkerError::NotEmbeddingModel { model: model.to_string() })
    }

    /// The in-process repository this client runs every request on, if it is one: a caller that
    /// has resolved the model there can run it directly.
    fn local_repository(&self) -> Option<&Arc<ModelRepository>> {
        None
    }
}

/// Runs requests on the models of an in-process [`ModelRepository`], with no socket between.
#[derive(Debug, Clone)]
pub struct LocalWorker {
    repository: Arc<ModelRepository>,
}

impl LocalWorker {
    pub fn new(repository: Arc<ModelRepository>) -> LocalWorker {
        LocalWorker { repository }
    }
}

#[async_trait]
impl WorkerClient for LocalWorker {
    async fn infer(&self, request: ValidInferRequest) -> Result<InferenceResponse, WorkerError> {
        ModelVersion::run_unary(self.repository.adopt(request)?).await
    }

    async fn infer_stream(&self, request: ValidInferRequest) -> Result<InferOutcome, WorkerError> {
        ModelVersion::run_any(self.repository.adopt(request)?).await
    }

    fn local_repository(&self) -> Option<&Arc<ModelRepository>> {
        Some(&self.repository)
    }

    async fn generate(&self, model: &str, request: GenerateRequest) -> Result<TokenStream, WorkerError> {
        let version = self.repository.resolve(model, request.model_version)?;
        let engine = version.language_model().ok_or_else(|| WorkerError::NotLanguageModel { model: model.to_string() })?;
        engine.generate(request).map_err(|source| WorkerError::Generate { model: model.to_string(), source })
    }

    async fn embed(&self, model: &str, inputs: Vec<Vec<u32>>) -> Result<Vec<Vec<f32>>, WorkerError> {
        let version = self.repository.resolve(model, None)?;
        let embedder = version.embedding_model().ok_or_else(|| WorkerError::NotEmbeddingModel { model: model.to_string() })?;
        embedder.embed(inputs).await.map_err(|source| WorkerError::Generate { model: model.to_string(), source })
    }
}
