//! The dispatch seam between the frontend and the engines: [`WorkerClient`], implemented here by
//! the in-process [`LocalWorker`] and later by a client of remote worker processes.

use std::sync::Arc;

use async_trait::async_trait;
use tritium_backend_api::llm::{GenerateRequest, PrefillSource, TokenStream};
use tritium_backend_api::{InferOutcome, InferenceResponse, WorkerError};

use crate::model::ModelVersion;
use crate::model::ValidInferRequest;
use crate::registry::ModelRepository;

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

    /// [`generate`](WorkerClient::generate) for a caller that keeps the request (a router that may
    /// try another worker, or move the stream): a client that only reads it (a Dynamo worker's,
    /// which writes it to the wire) takes no copy of a long prompt.
    async fn generate_borrowed(&self, model: &str, request: &GenerateRequest) -> Result<TokenStream, WorkerError> {
        self.generate(model, request.clone()).await
    }

    /// [`generate`](WorkerClient::generate) on a decode worker that takes the prompt's KV blocks
    /// from `prefill` (disaggregated serving); clients that cannot pass it on run a plain generate.
    async fn generate_with_prefill(
        &self,
        model: &str,
        request: GenerateRequest,
        prefill: PrefillSource,
    ) -> Result<TokenStream, WorkerError> {
        let _ = prefill;
        self.generate(model, request).await
    }

    /// A prefill worker's part of a disaggregated generation whose KV blocks the workers move
    /// between themselves (Dynamo's): the prompt is computed here, and what the decode worker
    /// needs to take it over comes back.
    async fn prefill_handoff(
        &self,
        model: &str,
        request: &GenerateRequest,
    ) -> Result<tritium_backend_api::llm::PrefillHandoff, WorkerError> {
        let _ = request;
        Err(WorkerError::NotLanguageModel { model: model.to_string() })
    }

    /// [`generate`](WorkerClient::generate) on a decode worker that takes the prompt over from a
    /// prefill worker's `handoff`; clients that cannot take it run a plain generate.
    async fn generate_from_handoff(
        &self,
        model: &str,
        request: GenerateRequest,
        handoff: tritium_backend_api::llm::PrefillHandoff,
    ) -> Result<TokenStream, WorkerError> {
        let _ = handoff;
        self.generate(model, request).await
    }

    /// Embeds tokenized inputs with an embedding model.
    async fn embed(&self, model: &str, inputs: Vec<Vec<u32>>) -> Result<Vec<Vec<f32>>, WorkerError> {
        let _ = inputs;
        Err(WorkerError::NotEmbeddingModel { model: model.to_string() })
    }

    /// Sends an OpenAI request as the client sent it to a model whose worker takes text (see
    /// [`OpenAiChunks`]); the worker's chunk objects come back.
    async fn generate_openai(
        &self,
        model: &str,
        api: tritium_backend_api::llm::OpenAiApi,
        request: tritium_backend_api::llm::OpenAiRequest,
    ) -> Result<tritium_backend_api::llm::OpenAiChunks, WorkerError> {
        let _ = (api, request);
        Err(WorkerError::NotLanguageModel { model: model.to_string() })
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
