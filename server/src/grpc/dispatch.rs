//! Where a decoded KServe request runs, shared by ModelInfer and ModelStreamInfer: a language
//! model goes through the LLM frontend, anything else to the router. In the single-process
//! default the model is resolved once, here, and run directly: no routing, no second lookup.
//! The routed and language-model futures are boxed: they are large, and inline they would double
//! the size of every in-process request's future, which tonic moves and boxes per request.

use std::sync::Arc;

use tritium_worker::{InferOutcome, InferenceRequest, InferenceResponse, ModelVersion, WorkerClient};

use super::service::GrpcState;
use crate::error::ServerError;

enum Target {
    /// The in-process worker alone serves the model; this is the version to run.
    Local(Arc<ModelVersion>),
    Language,
    Routed,
}

fn target(state: &GrpcState, request: &InferenceRequest) -> Result<Target, ServerError> {
    // The same lookup, and so the same error, as the in-process worker would make.
    if let Some(resolved) = state.router.resolve_sole_local(&request.model_name, request.model_version) {
        let model = resolved?;
        return Ok(if model.is_language_model() { Target::Language } else { Target::Local(model) });
    }
    Ok(if state.llm.is_language_model(&request.model_name, request.model_version) { Target::Language } else { Target::Routed })
}

async fn language(state: &GrpcState, request: InferenceRequest, stream_call: bool) -> Result<InferOutcome, ServerError> {
    let hint = crate::routing::hint_of(&request.parameters);
    crate::routing::WORKER_HINT.scope(hint, state.llm.infer_kserve(request, stream_call)).await
}

/// A ModelInfer request: exactly one response.
pub async fn unary(state: &GrpcState, request: InferenceRequest) -> Result<InferenceResponse, ServerError> {
    match target(state, &request)? {
        Target::Local(model) => Ok(model.infer_unary(request).await?),
        Target::Routed => Ok(Box::pin(state.router.infer(request)).await?),
        Target::Language => match Box::pin(language(state, request, false)).await? {
            InferOutcome::Single(response) => Ok(response),
            InferOutcome::Stream(_) => Err(ServerError::Internal("a unary call got a stream".into())),
        },
    }
}

/// A ModelStreamInfer request: one response, or a stream of them from a decoupled model.
pub async fn streamed(state: &GrpcState, request: InferenceRequest) -> Result<InferOutcome, ServerError> {
    match target(state, &request)? {
        Target::Local(model) => Ok(model.infer_any(request).await?),
        Target::Routed => Ok(Box::pin(state.router.infer_stream(request)).await?),
        Target::Language => Box::pin(language(state, request, true)).await,
    }
}
