//! Building a model version from its source: the backend its config names (or an ensemble of
//! served models), its scheduler and warmup; and the order a repository loads its models in.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::{Arc, Weak};

use tritium_proto::inference::ModelConfig;

use super::{LoadCause, ModelRepository, ServedModel};
use crate::ensemble::{ENSEMBLE_PLATFORM, EnsembleBackend, Steps, composing_models};
use crate::model::{ModelVersion, tensor_face};
use crate::ragged::RaggedBatching;
use crate::scheduler::Scheduler;
use crate::schema::ModelSchema;
use crate::warmup;
use tritium_backend_api::error::WorkerError;
use tritium_backend_api::{BackendContext, Engine};
use tritium_repository::{self as repository, ModelSource};

impl ModelRepository {
    /// Loads the composing models of an ensemble that are not served yet (as Triton does when a
    /// client loads an ensemble), ensembles within it too, up to a nesting bound.
    pub(super) fn load_composing_models(
        &self,
        source: &ModelSource,
        config_json: Option<&str>,
        depth: usize,
    ) -> Result<(), WorkerError> {
        const MAX_NESTING: usize = 8;
        let Ok(Some(config)) = source.config_with_override(config_json) else { return Ok(()) };
        for composing in composing_models(&config) {
            if composing == source.name || self.is_served(&composing) || depth >= MAX_NESTING {
                continue;
            }
            let Some(inner) = self.find_source(&composing)? else { continue };
            self.load_composing_models(&inner, None, depth + 1)?;
            let _loading = self.loading.enter(&composing);
            let built = self.build(&inner, None);
            let _guard = self.lifecycle.lock();
            // A composing model that fails is reported by its own index entry; the ensemble's
            // load then names it as not available.
            let _ = self.settle(&inner, built, LoadCause::Client);
        }
        Ok(())
    }

    pub(super) fn build(&self, source: &ModelSource, config_json: Option<&str>) -> Result<ServedModel, WorkerError> {
        let name = source.name.as_str();
        let failed = |reason: String| WorkerError::LoadFailed { name: name.to_string(), reason };
        let model_dir = (!source.dir.as_os_str().is_empty()).then_some(source.dir.as_path());
        let auto_complete = self.options.auto_complete_config;
        let mut config = match source.config_with_override(config_json)? {
            Some(config) => config,
            None if auto_complete => {
                self.backends.config_from_model_files(name, &source.dir, &source.versions).map_err(failed)?
            }
            None => return Err(failed("the model folder has no config.pbtxt".to_string())),
        };
        if config_json.is_some() && config.backend.is_empty() && config.platform.is_empty() {
            // An override that names no backend keeps the model's own, or the one its files show.
            let own = match source.config()? {
                Some(own) => Some(own),
                None => self.backends.config_from_model_files(name, &source.dir, &source.versions).ok(),
            };
            if let Some(own) = own {
                config.backend = own.backend;
                config.platform = own.platform;
            }
        }
        // The config as written: a field Tritium would ignore fails the load, or a warning names it.
        repository::audit_fields(name, &config)?;
        if config.platform == ENSEMBLE_PLATFORM {
            return self.build_ensemble(source, config);
        }
        let backend_name = if config.backend.is_empty() { config.platform.clone() } else { config.backend.clone() };
        let factory = self.backends.get(&backend_name).ok_or_else(|| failed(format!("unknown backend '{backend_name}'")))?;
        if auto_complete {
            factory.auto_complete_config(&mut config, model_dir).map_err(failed)?;
            config = repository::normalize_config(name, config)?;
        }
        factory.complete_config(&mut config, model_dir).map_err(failed)?;
        repository::fill_core_defaults(&mut config);
        if let Some(reason) = crate::response_cache::refusal(&config) {
            return Err(failed(reason));
        }
        let config = Arc::new(config);
        let versions = source.select_versions(&config)?;
        let schema = ModelSchema::from_config(&config).and_then(|s| s.with_labels(&config, model_dir)).map_err(failed)?;
        let ragged = Arc::new(RaggedBatching::from_config(&config).map_err(failed)?);
        let text_task = crate::text_task::TextTask::from_config(&config, model_dir).map_err(failed)?.map(Arc::new);
        let mut served = BTreeMap::new();
        for version in versions {
            // Before the engine starts: an instance the limiter can never run fails the load.
            let rates =
                self.options.rate_limiter.register(&config).map_err(|e| crate::rate_limiter::load_refused(name, version, e))?;
            let version_dir = (!source.dir.as_os_str().is_empty()).then(|| source.dir.join(version.to_string()));
            let context = BackendContext {
                model_name: name,
                version,
                config: &config,
                version_dir: version_dir.as_deref().filter(|p: &&Path| p.exists()),
                model_dir,
                host: self.me.clone(),
            };
            let engine = factory.create(&context).map_err(failed)?;
            if let Some(reason) = scheduler_fields_a_model_engine_ignores(&engine, &config) {
                return Err(failed(reason));
            }
            let backend = tensor_face(&engine, name);
            warmup::run(&config, model_dir, backend.as_ref(), &ragged).map_err(failed)?;
            let scheduler = Scheduler::for_config(&config, &backend, &ragged, model_dir, self.options.scheduler_limits)
                .map_err(failed)?
                .with_rates(rates);
            let mut model =
                ModelVersion::scheduled(Arc::clone(&config), version, schema.clone(), engine, backend, scheduler, self.id);
            model.cache = self.response_cache_for(&config);
            model.text_task = text_task.clone();
            served.insert(version, Arc::new(model));
        }
        Ok(ServedModel { name: name.to_string(), config, versions: served, fingerprint: source.fingerprint, files: None })
    }

    /// An ensemble: its steps checked against the models served now, one backend per version.
    fn build_ensemble(&self, source: &ModelSource, config: ModelConfig) -> Result<ServedModel, WorkerError> {
        let name = source.name.as_str();
        let failed = |reason: String| WorkerError::LoadFailed { name: name.to_string(), reason };
        if let Some(reason) = crate::response_cache::refusal(&config) {
            return Err(failed(reason));
        }
        let config = Arc::new(config);
        let model_dir = (!source.dir.as_os_str().is_empty()).then_some(source.dir.as_path());
        let schema = ModelSchema::from_config(&config).and_then(|s| s.with_labels(&config, model_dir)).map_err(failed)?;
        let mut served = BTreeMap::new();
        for version in source.select_versions(&config)? {
            // Triton's class and wording for an ensemble whose graph cannot be served.
            let refused = |reason: String| WorkerError::Failed {
                code: tritium_proto::ErrorCode::InvalidArg,
                message: format!("load failed for model '{name}': {reason}"),
            };
            let steps: Weak<dyn Steps> = self.me.clone();
            let engine = Engine::tensors(EnsembleBackend::new(&config, self, steps).map_err(refused)?);
            let mut model = ModelVersion::new(Arc::clone(&config), version, schema.clone(), engine);
            model.owner = self.id;
            model.cache = self.response_cache_for(&config);
            served.insert(version, Arc::new(model));
        }
        Ok(ServedModel { name: name.to_string(), config, versions: served, fingerprint: source.fingerprint, files: None })
    }
}

impl ModelRepository {
    /// The server's response cache (`--cache-config`), if it has one.
    pub fn response_cache(&self) -> Option<&Arc<dyn crate::response_cache::ResponseCache>> {
        self.options.response_cache.as_ref()
    }

    /// The server's response cache when `config` enables it (a model that enables it on a server
    /// without one runs uncached, as in Triton).
    fn response_cache_for(&self, config: &ModelConfig) -> Option<Arc<dyn crate::response_cache::ResponseCache>> {
        let enabled = config.response_cache.as_ref().is_some_and(|c| c.enable);
        if enabled && self.options.response_cache.is_none() {
            tracing::info!(model = %config.name, "response_cache is enabled but the server has no --cache-config; responses are not cached");
        }
        self.options.response_cache.clone().filter(|_| enabled)
    }
}

/// The models `wanted` names and, for each ensemble among them, its composing models (and
/// theirs, for ensembles of ensembles): what an explicit start loads.
pub(super) fn with_composing_models(sources: &[ModelSource], mut wanted: Vec<String>) -> Vec<String> {
    let mut next = 0;
    while next < wanted.len() {
        let config = sources.iter().find(|s| s.name == wanted[next]).and_then(|s| s.config().ok().flatten());
        for composing in config.as_ref().map(composing_models).unwrap_or_default() {
            if !wanted.contains(&composing) {
                wanted.push(composing);
            }
        }
        next += 1;
    }
    wanted
}

/// `sources` in the order to load them: plain models first, then each ensemble after the
/// ensembles it is made of.
pub(super) fn load_order(sources: Vec<ModelSource>) -> Vec<ModelSource> {
    let composing = |source: &ModelSource| match source.config() {
        Ok(Some(config)) if config.platform == ENSEMBLE_PLATFORM => Some(composing_models(&config)),
        _ => None,
    };
    let (mut ensembles, plain): (Vec<_>, Vec<_>) =
        sources.into_iter().map(|s| (composing(&s), s)).partition(|(steps, _)| steps.is_some());
    let mut ordered: Vec<ModelSource> = plain.into_iter().map(|(_, s)| s).collect();
    while !ensembles.is_empty() {
        let waits_for = |steps: &Option<Vec<String>>, pending: &[(Option<Vec<String>>, ModelSource)]| {
            steps.iter().flatten().any(|step| pending.iter().any(|(_, other)| &other.name == step))
        };
        let next = (0..ensembles.len()).find(|&i| !waits_for(&ensembles[i].0, &ensembles)).unwrap_or(0);
        ordered.push(ensembles.remove(next).1);
    }
    ordered
}

/// The refusal of a language or embedding model's config that sets the fields of Triton's
/// schedulers: its engine batches requests continuously (or embeds each call) in one instance,
/// so `dynamic_batching`, `sequence_batching`, more than one instance or an instance's
/// `rate_limiter` would be accepted and do nothing (and the limiter would count instances that
/// never run through it). `None` for tensor models, and for a language model's single instance.
fn scheduler_fields_a_model_engine_ignores(engine: &Engine, config: &ModelConfig) -> Option<String> {
    let kind = match engine {
        Engine::Tensors(_) => return None,
        Engine::Language(_) => "a language model, whose engine batches its requests continuously",
        Engine::Embedding(_) => "an embedding model, whose engine embeds each call as it comes",
    };
    use tritium_proto::inference::model_config::SchedulingChoice;
    let mut fields = Vec::new();
    match &config.scheduling_choice {
        Some(SchedulingChoice::DynamicBatching(_)) => fields.push("dynamic_batching"),
        Some(SchedulingChoice::SequenceBatching(_)) => fields.push("sequence_batching"),
        _ => {}
    }
    let instances: i64 = config.instance_group.iter().map(|group| i64::from(group.count.max(1))).sum();
    if instances > 1 {
        fields.push("instance_group.count (more than one instance)");
    }
    if config.instance_group.iter().any(|group| group.rate_limiter.is_some()) {
        fields.push("instance_group.rate_limiter");
    }
    (!fields.is_empty()).then(|| {
        format!("'{}' is {kind} in one instance: {} would do nothing for it; remove them", config.name, fields.join(", "))
    })
}
