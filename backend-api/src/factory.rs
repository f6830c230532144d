//! How backends are found and built: a [`BackendFactory`] per backend name in the
//! [`BackendRegistry`] a model repository picks from by `config.backend`, called with a
//! [`BackendContext`] when a model version loads, returning an [`Engine`].

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Weak};

use tritium_proto::inference::ModelConfig;

use crate::backend::Backend;
use crate::config_params::{ConfigParams, config_parameter};
use crate::engine::Engine;
use crate::host::Host;

/// What a factory knows when it builds a backend for one model version.
#[derive(Debug)]
pub struct BackendContext<'a> {
    pub model_name: &'a str,
    pub version: i64,
    pub config: &'a ModelConfig,
    /// The version folder, when the model came from a repository on disk.
    pub version_dir: Option<&'a Path>,
    /// The model folder, when the model came from a repository on disk (relative paths in the
    /// config's parameters are relative to it).
    pub model_dir: Option<&'a Path>,
    /// The server that hosts the model, for backends that call other models (Triton's
    /// business-logic scripting) or load them.
    pub host: Weak<dyn Host>,
}

/// Builds a backend instance for a model version.
pub trait BackendFactory: Send + Sync + 'static {
    fn create(&self, context: &BackendContext<'_>) -> Result<Engine, String>;

    /// Fills in what a `config.pbtxt` for this backend may leave out (inputs, outputs, the
    /// transaction policy), before the config is checked. `model_dir` is the model folder, if any.
    fn complete_config(&self, config: &mut ModelConfig, model_dir: Option<&Path>) -> Result<(), String> {
        let _ = (config, model_dir);
        Ok(())
    }

    /// Triton's auto-complete, run before [`BackendFactory::complete_config`] unless
    /// `--disable-auto-complete-config`: fills the inputs, outputs, batching and defaults the
    /// config leaves out from the model file itself, and fails when they contradict it.
    fn auto_complete_config(&self, config: &mut ModelConfig, model_dir: Option<&Path>) -> Result<(), String> {
        let _ = (config, model_dir);
        Ok(())
    }

    /// The file (in a version folder) that marks a model of this backend, such as `model.onnx`:
    /// a folder without `config.pbtxt` is served by the backend whose file it holds.
    fn model_filename(&self) -> Option<&'static str> {
        None
    }
}

impl<F> BackendFactory for F
where
    F: Fn(&BackendContext<'_>) -> Result<Engine, String> + Send + Sync + 'static,
{
    fn create(&self, context: &BackendContext<'_>) -> Result<Engine, String> {
        self(context)
    }
}

/// Backend factories by the name a `config.pbtxt` gives in `backend` (or `platform`).
#[derive(Clone, Default)]
pub struct BackendRegistry {
    factories: HashMap<String, Arc<dyn BackendFactory>>,
}

impl std::fmt::Debug for BackendRegistry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut names: Vec<_> = self.factories.keys().collect();
        names.sort();
        f.debug_struct("BackendRegistry").field("backends", &names).finish()
    }
}

impl BackendRegistry {
    pub fn register(&mut self, name: impl Into<String>, factory: impl BackendFactory) -> &mut Self {
        self.factories.insert(name.into(), Arc::new(factory));
        self
    }

    /// Registers a backend that needs nothing from its config: one shared instance.
    pub fn register_instance(&mut self, name: impl Into<String>, backend: Arc<dyn Backend>) -> &mut Self {
        self.register(name, move |_: &BackendContext<'_>| Ok(Engine::Tensors(Arc::clone(&backend))))
    }

    /// Adds every factory of `other`, replacing those of the same name.
    pub fn extend(&mut self, other: BackendRegistry) {
        self.factories.extend(other.factories);
    }

    /// Whether a backend is registered under `name`.
    pub fn contains(&self, name: &str) -> bool {
        self.factories.contains_key(name)
    }

    pub fn get(&self, name: &str) -> Option<&Arc<dyn BackendFactory>> {
        self.factories.get(name)
    }

    /// The config of a model folder without `config.pbtxt`: the backend whose model file one of
    /// its version folders holds (the newest first), everything else left to auto-complete. Of
    /// names sharing one factory (a backend and its Triton platform name), the first in order.
    pub fn config_from_model_files(&self, name: &str, dir: &Path, versions: &[i64]) -> Result<ModelConfig, String> {
        let mut names: Vec<&String> = self.factories.keys().collect();
        names.sort();
        let recognize = |version_dir: PathBuf| {
            names.iter().find_map(|backend| {
                let file = self.factories[*backend].model_filename()?;
                version_dir.join(file).exists().then(|| backend.to_string())
            })
        };
        let backend = versions.iter().rev().find_map(|version| recognize(dir.join(version.to_string()))).ok_or_else(|| {
            "the model folder has no config.pbtxt, and none of its version folders holds a model file a backend \
             recognizes (such as 1/model.onnx)"
                .to_string()
        })?;
        Ok(ModelConfig { name: name.to_string(), backend, ..ModelConfig::default() })
    }
}

impl BackendContext<'_> {
    /// A `parameters { key: .. value { string_value: .. } }` entry of the config.
    pub fn parameter(&self, key: &str) -> Option<&str> {
        config_parameter(self.config, key)
    }

    /// Typed reads of the config's parameters.
    pub fn params(&self) -> ConfigParams<'_> {
        ConfigParams::of(self.config)
    }
}
