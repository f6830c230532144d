//! LoRA adapters loaded and unloaded at run time, shared by vLLM's HTTP routes and the worker
//! plane's `LoadAdapter`/`UnloadAdapter`: into this process's engines (from inside `--lora-dir`),
//! or forwarded to every remote worker serving the base model, all or nothing.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tritium_backend_api::llm::LanguageModel;
use tritium_worker::{ModelRepository, WorkerError};

use crate::remote::RemoteWorker;

/// How long a frontend waits for an adapter its workers loaded (or unloaded) to show in its own
/// models, so the next request finds it.
const SETTLE_WITHIN: Duration = Duration::from_secs(15);

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
    fn invalid(message: impl Into<String>, param: Option<&'static str>) -> Refusal {
        Refusal::Invalid { message: message.into(), param }
    }

    fn not_found(message: impl Into<String>, param: Option<&'static str>) -> Refusal {
        Refusal::NotFound { message: message.into(), param }
    }

    /// What a worker's refusal means here, named after the worker.
    fn from_worker(worker: &str, error: WorkerError) -> Refusal {
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

/// Loads `request` on every worker in `workers` (those serving its base model), all or nothing:
/// after a refusal, the workers that had loaded it unload it again. Then waits until the
/// repository serves the adapter (the workers registered it).
pub async fn load_on_workers(
    repository: &ModelRepository,
    workers: Vec<(Arc<str>, Arc<RemoteWorker>)>,
    base: &str,
    request: &LoadAdapter,
) -> Result<(), Refusal> {
    let mut loaded: Vec<&(Arc<str>, Arc<RemoteWorker>)> = Vec::new();
    for entry in &workers {
        let (id, worker) = entry;
        let call = tritium_proto::worker::LoadAdapterRequest {
            base_model: base.to_string(),
            name: request.name.clone(),
            path: request.path.clone(),
            load_inplace: request.inplace,
        };
        if let Err(error) = worker.load_adapter(call).await {
            for (id, worker) in loaded {
                if let Err(e) = worker.unload_adapter(&request.name).await {
                    tracing::warn!(worker = %id, adapter = %request.name, "unloading after a failed load elsewhere failed: {e}");
                }
            }
            return Err(Refusal::from_worker(id, error));
        }
        loaded.push(entry);
    }
    settle(repository, &request.name, true).await;
    Ok(())
}

/// Unloads adapter `name` from every worker in `workers`: `Ok(false)` when none held it.
pub async fn unload_on_workers(
    repository: &ModelRepository,
    workers: Vec<(Arc<str>, Arc<RemoteWorker>)>,
    name: &str,
) -> Result<bool, Refusal> {
    let mut found = false;
    for (id, worker) in &workers {
        found |= worker.unload_adapter(name).await.map_err(|e| Refusal::from_worker(id, e))?;
    }
    if found {
        settle(repository, name, false).await;
    }
    Ok(found)
}

/// Waits (bounded) until the repository serves `name` or no longer does.
async fn settle(repository: &ModelRepository, name: &str, served: bool) {
    let mut changes = repository.subscribe();
    let deadline = tokio::time::Instant::now() + SETTLE_WITHIN;
    while repository.resolve(name, None).is_ok() != served {
        match tokio::time::timeout_at(deadline, changes.changed()).await {
            Ok(Ok(())) => {}
            Ok(Err(_)) => return,
            Err(_) => {
                tracing::warn!(adapter = %name, "the workers' change did not reach this frontend within {SETTLE_WITHIN:?}");
                return;
            }
        }
    }
}

/// `path` (relative to `dir`, or absolute) when it resolves to something inside `dir`.
fn inside(dir: &Path, path: &str) -> Option<PathBuf> {
    let root = dir.canonicalize().ok()?;
    let resolved = root.join(path).canonicalize().ok()?;
    resolved.starts_with(&root).then_some(resolved)
}
