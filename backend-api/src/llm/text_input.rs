//! JSON the frontend relays between a client or a worker and Dynamo's workers without reading
//! it: OpenAI requests for models whose workers take them as the client sent them (Dynamo's
//! text-input workers, `model_input: Text`; the frontend neither templates nor tokenizes for
//! them, it forwards the request and relays the chunk objects), and a prefill worker's handoff
//! to its decode worker.

use serde_json::Value as Json;
use tokio::sync::mpsc;

use super::GenerateError;

/// An OpenAI request body as the client sent it (a JSON object).
pub type OpenAiRequest = Json;

/// What a prefill worker hands its decode worker when the two move the KV blocks between
/// themselves and the frontend only relays (Dynamo's `prefill_result` and the prefill worker's
/// instance id).
pub type PrefillHandoff = Json;

/// The OpenAI route a forwarded request came in on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OpenAiApi {
    /// `/v1/chat/completions`: the worker answers with `chat.completion.chunk` objects.
    Chat,
    /// `/v1/completions`: the worker answers with `text_completion` chunks.
    Completions,
    /// `/v1/embeddings`: the worker answers with embedding lists, folded into one.
    Embeddings,
    /// `/v1/classify` (and `/classify`): the worker answers with classification lists.
    Classify,
    /// `/v1/rerank`: the worker answers with lists of scored documents.
    Rerank,
}

impl OpenAiApi {
    pub fn path(self) -> &'static str {
        match self {
            OpenAiApi::Chat => "/v1/chat/completions",
            OpenAiApi::Completions => "/v1/completions",
            OpenAiApi::Embeddings => "/v1/embeddings",
            OpenAiApi::Classify => "/v1/classify",
            OpenAiApi::Rerank => "/v1/rerank",
        }
    }
}

/// The chunk objects of one forwarded request, in order. Dropping it tells the worker to stop.
pub struct OpenAiChunks {
    receiver: mpsc::Receiver<Result<Json, GenerateError>>,
    /// Kept until the answer is dropped (a router's session lease).
    held: Vec<Box<dyn std::any::Any + Send + Sync>>,
}

impl OpenAiChunks {
    pub fn new(receiver: mpsc::Receiver<Result<Json, GenerateError>>) -> OpenAiChunks {
        OpenAiChunks { receiver, held: Vec::new() }
    }

    /// The same answer, keeping `hold` until it is dropped.
    pub fn holding(mut self, hold: impl std::any::Any + Send + Sync) -> OpenAiChunks {
        self.held.push(Box::new(hold));
        self
    }

    /// The next chunk; `None` once the worker completed its answer.
    pub async fn next(&mut self) -> Option<Result<Json, GenerateError>> {
        self.receiver.recv().await
    }
}

impl std::fmt::Debug for OpenAiChunks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OpenAiChunks").finish_non_exhaustive()
    }
}
