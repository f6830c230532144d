//! LoRA adapters served as models of their own. Locally, every door resolves an adapter's name
//! to its base model's version ([`resolve_served`]) and runs it there with the adapter named. A
//! worker registers each adapter of its language models under the adapter's name and describes it
//! with its base model's config and card, so frontends route an adapter's requests only to
//! workers that hold it; the worker runs them on the base model's engine with the adapter named.

use std::sync::Arc;

use tritium_worker::{ModelRepository, ModelVersion, WorkerError};

/// The served language model holding a LoRA adapter named `name`, when no model has that name.
pub(crate) fn adapter_base(repository: &ModelRepository, name: &str) -> Option<String> {
    // One lookup for the usual case, a model's own name (ModelReady asks this on every call).
    if repository.model(name).is_some() {
        return None;
    }
    repository.served_models().iter().find_map(|model| {
        let engine = model.latest()?.language_model()?;
        engine.adapters().iter().any(|adapter| adapter.name == name).then(|| model.name.clone())
    })
}

/// The version a request for `name` (`version`, or the latest) runs on: the model's own, or for
/// a LoRA adapter its base model's (the adapter has no versions of its own; `version` numbers the
/// base's). The error is the model's when neither exists.
pub(crate) fn resolve_served(
    repository: &ModelRepository,
    name: &str,
    version: Option<i64>,
) -> Result<Arc<ModelVersion>, WorkerError> {
    match repository.resolve(name, version) {
        Ok(resolved) => Ok(resolved),
        Err(error) => match adapter_base(repository, name) {
            Some(base) => repository.resolve(&base, version),
            None => Err(error),
        },
    }
}

/// A local language model's LoRA adapter, served as a model of its own.
pub(crate) struct LocalAdapter {
    pub name: String,
    /// Where it was read from.
    pub path: String,
    /// The version of the model it adapts.
    pub base: Arc<ModelVersion>,
}

/// Each adapter of the local language models (one no model shares its name).
pub(crate) fn local_adapters(repository: &ModelRepository) -> Vec<LocalAdapter> {
    let models = repository.local_models();
    let mut adapters = Vec::new();
    for model in &models {
        let Some(version) = model.latest() else { continue };
        let Some(engine) = version.language_model() else { continue };
        for adapter in engine.adapters() {
            if models.iter().all(|m| m.name != adapter.name) {
                adapters.push(LocalAdapter { name: adapter.name, path: adapter.path, base: Arc::clone(version) });
            }
        }
    }
    adapters
}

/// The names a worker registers: its models, then its adapters.
pub(crate) fn served_names(repository: &ModelRepository) -> Vec<String> {
    let mut names: Vec<String> = repository.local_models().iter().map(|m| m.name.clone()).collect();
    names.extend(local_adapters(repository).into_iter().map(|adapter| adapter.name));
    names
}
