//! A worker's LoRA adapters, served as models of their own: a worker registers each adapter of
//! its language models under the adapter's name and describes it with its base model's config and
//! card, so frontends route an adapter's requests only to workers that hold it; the worker runs
//! them on the base model's engine with the adapter named.

use std::sync::Arc;

use tritium_worker::{ModelRepository, ModelVersion};

/// Each adapter of the local language models (one no model shares its name), with the version of
/// the model it adapts.
pub(crate) fn local_adapters(repository: &ModelRepository) -> Vec<(String, Arc<ModelVersion>)> {
    let models = repository.local_models();
    let mut adapters = Vec::new();
    for model in &models {
        let Some(version) = model.latest() else { continue };
        let Some(engine) = version.language_model() else { continue };
        for adapter in engine.adapters() {
            if models.iter().all(|m| m.name != adapter.name) {
                adapters.push((adapter.name, Arc::clone(version)));
            }
        }
    }
    adapters
}

/// The names a worker registers: its models, then its adapters.
pub(crate) fn served_names(repository: &ModelRepository) -> Vec<String> {
    let mut names: Vec<String> = repository.local_models().iter().map(|m| m.name.clone()).collect();
    names.extend(local_adapters(repository).into_iter().map(|(name, _)| name));
    names
}
