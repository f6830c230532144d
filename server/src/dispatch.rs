//! Where a decoded KServe request runs, shared by ModelInfer and ModelStreamInfer. The request is
//! validated here, once, against the version it resolves to (a local model's, or a remote
//! model's stand-in); then a language model goes through the LLM frontend and anything else to
//! the router. In the single-process default the validated version is run directly: no routing,
//! no second lookup.
//! The routed and language-model futures are boxed: they are large, and inline they would double
//! the size of every in-process request's future, which tonic moves and boxes per request.

use std::sync::Arc;

use tritium_backend_api::trace::scoped;
use tritium_worker::registry::on_demand::InUse;
use tritium_worker::{InferOutcome, InferenceRequest, InferenceResponse, ModelVersion, ValidInferRequest, WorkerClient};

use crate::error::ServerError;
use crate::state::ServerState;

/// A request that passed validation, and where it runs.
pub(crate) struct Admitted {
    request: ValidInferRequest,
    target: Target,
}

enum Target {
    /// The in-process worker alone serves the model: run it on the version it was checked against.
    Local,
    Language,
    Routed,
}

/// Validates a request (version resolution included) and picks where it runs. Its errors are the
/// request's own (unknown model, wrong inputs), which a stream reports in-band even in
/// `triton_grpc_error` mode, as Triton does.
///
/// `model` is the version the request names when the door has resolved it already; otherwise it
/// is resolved here. Either way a tensor request is checked against the version it runs on and
/// is not looked up again in this process (a worker process checks again what it receives: a
/// process boundary is a trust boundary). A language model's generation is routed by name and
/// version, token ids only, and the worker that runs it, in this process or another, resolves it
/// there.
pub(crate) fn admit(
    state: &ServerState,
    request: InferenceRequest,
    model: Option<Arc<ModelVersion>>,
) -> Result<Admitted, ServerError> {
    let valid = match model {
        Some(version) => version.validate(request)?,
        // A LoRA adapter's requests are checked against its base model's version.
        None => state.repository.resolve_served(&request.model_name, request.model_version)?
            .validate(request)?,
    };
    let target = if valid.model().is_language_model() {
        Target::Language
    } else if state.router.serves_only_locally(valid.model_name(), state.repository.as_ref()) {
        Target::Local
    } else {
        Target::Routed
    };
    Ok(Admitted { request: valid, target })
}

/// In on-demand mode, loads the model a request names before it is resolved: one load shared with
/// every concurrent request for it, waited on at most `--model-load-timeout-secs`, run on a
/// blocking thread. Nothing in the other modes. Hold what it returns until the request is done:
/// the model is not evicted meanwhile.
pub(crate) async fn load_on_demand(state: &ServerState, name: &str) -> Result<Option<InUse>, ServerError> {
    Ok(state.repository.ensure_loaded(name, state.load_timeout).await?)
}

async fn language(state: &ServerState, request: ValidInferRequest, stream_call: bool) -> Result<InferOutcome, ServerError> {
    let trace = request.request().trace.clone();
    scoped(trace, state.llm.infer_kserve(request, stream_call)).await
}

/// A ModelInfer request: exactly one response.
pub async fn unary(
    state: &ServerState,
    request: InferenceRequest,
    model: Option<Arc<ModelVersion>>,
) -> Result<InferenceResponse, ServerError> {
    let Admitted { request, target } = admit(state, request, model)?;
    match target {
        Target::Local => Ok(ModelVersion::run_unary(request).await?),
        Target::Routed => {
            let trace = request.request().trace.clone();
            Ok(Box::pin(scoped(trace, state.router.infer(request))).await?)
        }
        Target::Language => match Box::pin(language(state, request, false)).await? {
            InferOutcome::Single(response) => Ok(response),
            InferOutcome::Stream(_) => Err(ServerError::Internal("a unary call got a stream".into())),
        },
    }
}

/// A ModelStreamInfer request, admitted: one response, or a stream of them from a decoupled model.
pub(crate) async fn streamed(state: &ServerState, admitted: Admitted) -> Result<InferOutcome, ServerError> {
    let Admitted { request, target } = admitted;
    match target {
        Target::Local => Ok(ModelVersion::run_any(request).await?),
        Target::Routed => {
            let trace = request.request().trace.clone();
            Ok(Box::pin(scoped(trace, state.router.infer_stream(request))).await?)
        }
        Target::Language => Box::pin(language(state, request, true)).await,
    }
}
