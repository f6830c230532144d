//! What a backend may ask of the server that hosts it: run a request on another model (Triton's
//! business-logic scripting), ask whether a model is ready, load or unload one. The core's model
//! repository implements it; a backend gets it through [`crate::BackendContext::host`] and never
//! sees the repository itself.

use async_trait::async_trait;

use crate::error::WorkerError;
use crate::request::InferenceRequest;
use crate::stream::InferOutcome;

#[async_trait]
pub trait Host: Send + Sync + 'static {
    /// Checks `request` against the model it names and runs it through that model's scheduler.
    async fn infer(&self, request: InferenceRequest) -> Result<InferOutcome, WorkerError>;

    /// Runs `request` as [`Host::infer`] does, telling apart a request refused before it ran (the
    /// outer error: no such model, a malformed request) from one whose run failed (the inner
    /// error: the model's execution, its scheduler's queue), as Triton's BLS words them apart.
    async fn infer_run(&self, request: InferenceRequest) -> Result<Result<InferOutcome, WorkerError>, WorkerError> {
        self.infer(request).await.map(Ok)
    }

    /// Whether `model` (at `version`, or its latest) is loaded and ready.
    fn is_ready(&self, model: &str, version: Option<i64>) -> bool;

    /// Loads (or reloads) `model`, with `config_json` in place of its config when given.
    fn load(&self, model: &str, config_json: Option<&str>) -> Result<(), WorkerError>;

    fn unload(&self, model: &str) -> Result<(), WorkerError>;

    /// Loads `model` made of `files` (Triton's `file:` load parameters: a path inside the model's
    /// folder and its bytes) with `config_json`, which they need; without files, as [`Host::load`].
    fn load_files(&self, model: &str, config_json: Option<&str>, files: Vec<(String, Vec<u8>)>) -> Result<(), WorkerError> {
        if files.is_empty() {
            return self.load(model, config_json);
        }
        Err(WorkerError::Failed {
            code: tritium_proto::ErrorCode::Unsupported,
            message: format!("failed to load '{model}': this server cannot load a model from files"),
        })
    }
}

/// A host reference that never upgrades, for a backend built outside a server (tests, tools).
pub fn no_host() -> std::sync::Weak<dyn Host> {
    std::sync::Weak::<NoHost>::new()
}

/// Stands behind [`no_host`]'s reference, which never upgrades, so nothing reaches it; it still
/// answers as a server that is gone would.
struct NoHost;

#[async_trait]
impl Host for NoHost {
    async fn infer(&self, request: InferenceRequest) -> Result<InferOutcome, WorkerError> {
        Err(WorkerError::ModelNotFound { name: request.model_name })
    }

    fn is_ready(&self, _: &str, _: Option<i64>) -> bool {
        false
    }

    fn load(&self, model: &str, _: Option<&str>) -> Result<(), WorkerError> {
        Err(WorkerError::ModelNotFound { name: model.to_string() })
    }

    fn unload(&self, model: &str) -> Result<(), WorkerError> {
        Err(WorkerError::ModelNotFound { name: model.to_string() })
    }
}
