//! LoRA adapters served as models of their own: the facts every level asks of a repository, and
//! loading and unloading one in this process's engines at run time (from inside `--lora-dir`). A
//! door resolves an adapter's name to its base model's version ([`ModelRepository::resolve_served`])
//! and runs it there with the adapter named. A worker registers each adapter of its language
//! models under the adapter's name ([`ModelRepository::served_names`]) and describes it with its
//! base model's config and card, so frontends route an adapter's requests only to workers that
//! hold it; the worker runs them on the base model's engine with the adapter named.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use tritium_backend_api::WorkerError;
use tritium_backend_api::llm::LanguageModel;

use super::ModelRepository;
use crate::model::ModelVersion;

/// A local language model's LoRA adapter, served as a model of its own.
#[derive(Debug)]
pub struct LocalAdapter {
    pub name: String,
    /// Where it was read from.
    pub path: String,
    /// The seed its KV block hashes chain from (the engine's `AdapterInfo::kv_seed`).
    pub kv_seed: u64,
    /// The version of the model it adapts.
    pub base: Arc<ModelVersion>,
}

impl ModelRepository {
    /// The served language model holding a LoRA adapter named `name`, when no model has that name.
    pub fn adapter_base(&self, name: &str) -> Option<String> {
        // One lookup for the usual case, a model's own name (ModelReady asks this on every call).
        if self.model(name).is_some() {
            return None;
        }
        self.served_models().iter().find_map(|model| {
            let engine = model.latest()?.language_model()?;
            engine.adapters().iter().any(|adapter| adapter.name == name).then(|| model.name.clone())
        })
    }

    /// The version a request for `name` (`version`, or the latest) runs on: the model's own, or for
    /// a LoRA adapter its base model's (the adapter has no versions of its own; `version` numbers
    /// the base's). The error is the model's when neither exists.
    pub fn resolve_served(&self, name: &str, version: Option<i64>) -> Result<Arc<ModelVersion>, WorkerError> {
        match self.resolve(name, version) {
            Ok(resolved) => Ok(resolved),
            Err(error) => match self.adapter_base(name) {
                Some(base) => self.resolve(&base, version),
                None => Err(error),
            },
        }
    }

    /// Each adapter of the local language models (one no model shares its name).
    pub fn local_adapters(&self) -> Vec<LocalAdapter> {
        let models = self.local_models();
        let mut adapters = Vec::new();
        for model in &models {
            let Some(version) = model.latest() else { continue };
            let Some(engine) = version.language_model() else { continue };
            for adapter in engine.adapters() {
                if models.iter().all(|m| m.name != adapter.name) {
                    adapters.push(LocalAdapter {
                        name: adapter.name,
                        path: adapter.path,
                        kv_seed: adapter.kv_seed,
                        base: Arc::clone(version),
                    });
                }
            }
        }
        adapters
    }

    /// The names a worker registers: its models, then its adapters.
    pub fn served_names(&self) -> Vec<String> {
        let mut names: Vec<String> = self.local_models().iter().map(|m| m.name.clone()).collect();
        names.extend(self.local_adapters().into_iter().map(|adapter| adapter.name));
        names
    }
}

/// A load, as vLLM's route and the worker plane take it.
#[derive(Debug, Clone)]
pub struct LoadAdapter {
    pub name: String,
    pub path: String,
    pub base: Option<String>,
    pub inplace: bool,
}

/// Why a load or unload was refused; nothing changed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    NotFound {
        message: String,
        param: Option<&'static str>,
    },
    Invalid {
        message: String,
        param: Option<&'static str>,
    },
    /// A worker could not be reached, or failed.
    Unavailable(String),
}

impl Refusal {
    pub fn invalid(message: impl Into<String>, param: Option<&'static str>) -> Refusal {
        Refusal::Invalid { message: message.into(), param }
    }

    pub fn not_found(message: impl Into<String>, param: Option<&'static str>) -> Refusal {
        Refusal::NotFound { message: message.into(), param }
    }

    /// What a worker's refusal means here, named after the worker.
    pub fn from_worker(worker: &str, error: WorkerError) -> Refusal {
        use tritium_proto::ErrorCode;
        match error {
            WorkerError::Failed { code: ErrorCode::NotFound, message } => {
                Refusal::not_found(format!("worker '{worker}': {message}"), None)
            }
            WorkerError::Failed { code: ErrorCode::InvalidArg, message } => {
                Refusal::invalid(format!("worker '{worker}': {message}"), None)
            }
            other => Refusal::Unavailable(format!("worker '{worker}': {other}")),
        }
    }

    pub fn message(&self) -> &str {
        match self {
            Refusal::NotFound { message, .. } | Refusal::Invalid { message, .. } | Refusal::Unavailable(message) => message,
        }
    }
}

/// The language model an adapter is for: the one named among `bases`, or the only one.
pub fn choose_base(bases: &[String], named: Option<&str>) -> Result<String, Refusal> {
    match (named, bases) {
        (Some(base), _) if bases.iter().any(|b| b == base) => Ok(base.to_string()),
        (Some(base), _) => Err(Refusal::not_found(format!("The model `{base}` does not exist."), Some("base_model_name"))),
        (None, [only]) => Ok(only.clone()),
        (None, _) => Err(Refusal::invalid(
            "several language models are served: name the one to adapt in base_model_name",
            Some("base_model_name"),
        )),
    }
}

/// Checks a load's names before anything is read: both given, and the adapter's not a model's.
pub fn check_names(request: &LoadAdapter, models: &[String]) -> Result<(), Refusal> {
    if request.name.is_empty() || request.path.is_empty() {
        return Err(Refusal::invalid("Both 'lora_name' and 'lora_path' must be provided.", None));
    }
    if models.contains(&request.name) {
        return Err(Refusal::invalid(format!("'{}' names a served model", request.name), Some("lora_name")));
    }
    Ok(())
}

/// Loads `request` into `engine`, from inside `dir` (`--lora-dir`; without one, loading at run
/// time is off), and tells the repository's subscribers (discovery lists adapters as models).
pub async fn load_into(
    repository: &ModelRepository,
    engine: Arc<dyn LanguageModel>,
    dir: Option<&Path>,
    request: &LoadAdapter,
) -> Result<(), Refusal> {
    let dir = dir.ok_or_else(|| {
        Refusal::not_found("loading LoRA adapters at run time is off: start the server with --lora-dir DIR", None)
    })?;
    let path = inside(dir, &request.path).ok_or_else(|| {
        Refusal::invalid(format!("lora_path must name an adapter inside --lora-dir, got '{}'", request.path), Some("lora_path"))
    })?;
    let (name, inplace) = (request.name.clone(), request.inplace);
    let loaded = tokio::task::spawn_blocking(move || {
        if inplace {
            engine.unload_adapter(&name)?;
        }
        engine.load_adapter(&name, &path)
    })
    .await;
    match loaded {
        Ok(Ok(_)) => {
            repository.announce_change();
            Ok(())
        }
        Ok(Err(e)) => Err(Refusal::invalid(e.to_string(), None)),
        Err(e) => Err(Refusal::Unavailable(format!("loading the adapter stopped: {e}"))),
    }
}

/// Unloads adapter `name` from whichever local language model holds it: `Ok(false)` if none.
pub fn unload_local(repository: &ModelRepository, name: &str) -> Result<bool, Refusal> {
    for model in repository.local_models() {
        let Some(engine) = model.latest().and_then(|v| v.language_model()) else { continue };
        match engine.unload_adapter(name) {
            Ok(true) => {
                repository.announce_change();
                return Ok(true);
            }
            Ok(false) => {}
            Err(e) => return Err(Refusal::invalid(e.to_string(), None)),
        }
    }
    Ok(false)
}

/// `path` (relative to `dir`, or absolute) when it resolves to something inside `dir`.
fn inside(dir: &Path, path: &str) -> Option<PathBuf> {
    let root = dir.canonicalize().ok()?;
    let resolved = root.join(path).canonicalize().ok()?;
    resolved.starts_with(&root).then_some(resolved)
}
