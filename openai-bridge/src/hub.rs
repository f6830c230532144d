//! The narrow trait the bridge runs over: what the server offers the OpenAI routes and the
//! text pipeline (its models, their preprocessors, token-level generation and embedding).

use std::sync::Arc;

use async_trait::async_trait;
use tokio_util::sync::CancellationToken;
use tritium_backend_api::llm::{GenerateRequest, ModelKind, OpenAiApi, OpenAiChunks, OpenAiRequest, TokenStream};
use tritium_backend_api::trace::RequestTrace;
use tritium_backend_api::trace_context::TraceContext;

use crate::BridgeError;
use crate::preprocess::Preprocessor;
use crate::text_models::{TextModel, TokenRows};

/// A model the hub serves.
#[derive(Debug, Clone, PartialEq)]
pub struct HubModel {
    pub name: String,
    pub kind: ModelKind,
    /// Seconds since the Unix epoch, for `created`.
    pub created: u64,
    /// For a LoRA adapter: the model it adapts, and where it was read from.
    pub adapter_of: Option<(String, String)>,
}

/// What the routes need from the server: its models, their preprocessors, and token-level
/// generation and embedding.
#[async_trait]
pub trait LlmHub: Send + Sync + 'static {
    fn models(&self) -> Vec<HubModel>;
    /// [`BridgeError::ModelNotFound`] when the model is not served.
    fn preprocessor(&self, model: &str) -> Result<Arc<Preprocessor>, BridgeError>;
    /// Loads `model` when the server loads models on first use (on-demand mode) and marks it
    /// used, before its card is asked for; hubs that load nothing on demand do nothing.
    async fn load_on_demand(&self, model: &str) -> Result<(), BridgeError> {
        let _ = model;
        Ok(())
    }
    async fn generate(&self, model: &str, request: GenerateRequest) -> Result<TokenStream, BridgeError>;
    /// Generates on the worker named `worker` (`nvext.backend_instance_id`).
    async fn generate_on(&self, model: &str, worker: &str, request: GenerateRequest) -> Result<TokenStream, BridgeError> {
        let _ = request;
        Err(BridgeError::Unsupported { model: model.to_owned(), what: format!("routing to the named worker '{worker}'") })
    }
    /// Generates a request of agent session `session` (Dynamo's `x-dynamo-session-id` and the
    /// agents' session headers), which a router may keep on one worker; by default as
    /// [`Self::generate`].
    async fn generate_in_session(&self, model: &str, session: &str, request: GenerateRequest) -> Result<TokenStream, BridgeError> {
        let _ = session;
        self.generate(model, request).await
    }
    /// A trace for one request to `model` when the server's sampler picks it (`caller`: the
    /// caller's `traceparent`, whose trace the request continues); `None` (the default) when
    /// tracing is off or the request is not sampled.
    fn trace(&self, model: &str, caller: Option<TraceContext>) -> Option<RequestTrace> {
        let _ = (model, caller);
        None
    }
    async fn embed(&self, model: &str, inputs: Vec<Vec<u32>>) -> Result<Vec<Vec<f32>>, BridgeError>;
    /// Cancelled when the server's grace period for requests in flight ends: every request still
    /// running then ends with [`BridgeError::ShuttingDown`] (an error event on a stream, 503
    /// otherwise), so that none is cut without a word when the process exits.
    fn hard_stop(&self) -> Option<&CancellationToken> {
        None
    }
    /// Whether `model`'s workers take OpenAI requests as the client sent them (a Dynamo worker
    /// with text input): the routes forward those and relay the worker's chunks, with no
    /// templating or tokenizing of their own.
    fn takes_text(&self, model: &str) -> bool {
        let _ = model;
        false
    }
    /// Forwards `request` (as the client sent it to `api`) to a worker of a text-input model,
    /// the one `worker` names when it names one (else, for a request of an agent `session`,
    /// the one the router keeps the session on).
    async fn generate_openai(
        &self,
        model: &str,
        worker: Option<&str>,
        session: Option<&str>,
        api: OpenAiApi,
        request: OpenAiRequest,
    ) -> Result<OpenAiChunks, BridgeError> {
        let _ = (worker, session, request);
        Err(BridgeError::Unsupported { model: model.to_owned(), what: format!("requests forwarded as they came to {}", api.path()) })
    }
    /// `model` when it is a text scorer or classifier (a tensor model its config serves so).
    fn text_model(&self, model: &str) -> Option<Arc<TextModel>> {
        let _ = model;
        None
    }
    /// The text task (`openai_task`) of a model only remote workers serve, whose tokenizer this
    /// frontend does not hold.
    fn remote_text_task(&self, model: &str) -> Option<String> {
        let _ = model;
        None
    }
    /// Runs a text scorer or classifier on token rows: its first output, one vector per row.
    async fn run_text_model(&self, model: &str, rows: TokenRows) -> Result<Vec<Vec<f32>>, BridgeError> {
        let _ = rows;
        Err(BridgeError::Unsupported { model: model.to_owned(), what: "scoring or classifying texts".into() })
    }
    /// Embeds on the worker named `worker`.
    async fn embed_on(&self, model: &str, worker: &str, inputs: Vec<Vec<u32>>) -> Result<Vec<Vec<f32>>, BridgeError> {
        let _ = inputs;
        Err(BridgeError::Unsupported { model: model.to_owned(), what: format!("routing to the named worker '{worker}'") })
    }
}
