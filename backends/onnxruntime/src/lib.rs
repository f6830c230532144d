//! Tritium's ONNX Runtime backend: Triton's `onnxruntime` models (`platform: "onnxruntime_onnx"`,
//! `<version>/model.onnx`) served as Triton serves them, through the `ort` crate with ONNX
//! Runtime loaded at run time (`scripts/install-onnxruntime.sh` installs the library of the pinned
//! PyPI wheel).
//!
//! - Config auto-complete from the model's signature, Triton's load-time checks and wording.
//! - `instance_group`: each instance its own session running one request at a time on the
//!   blocking pool (2 CPU instances by default, as in Triton), the most recently idle first; a
//!   request with no other run in flight may take a solo session with a spinning pool instead.
//! - Triton's model parameters (threads, execution mode, arena, graph optimization level).
//! - Inputs are views over the request's bytes; outputs keep ONNX Runtime's buffers.
//!
//! It implements the worker's [`BackendFactory`]; batching belongs to the schedulers in front.

mod autocomplete;
mod convert;
mod instances;
mod library;
mod options;
mod session;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use async_trait::async_trait;
use tritium_backend_api::config_params::BackendSettings;
use tritium_backend_api::{
    Backend, BackendContext, BackendError, BackendFactory, BackendRegistry, BackendRequest, Engine, Responder,
};
use tritium_proto::inference::ModelConfig;
use tritium_proto::inference::model_config::SchedulingChoice;
use tritium_proto::inference::model_instance_group::Kind;

pub use autocomplete::{Signature, TensorSpec};
pub use library::{INSTALLED_LIBRARY, LIBRARY_ENV};
pub use options::parse_bool;

use crate::instances::{Instances, RunSettings};
use crate::options::SessionSettings;
use crate::session::Device;

/// The backend name in `config.pbtxt`.
pub const BACKEND: &str = "onnxruntime";
/// Triton's platform name for the same backend.
pub const PLATFORM: &str = "onnxruntime_onnx";
/// The model file a version folder holds unless `default_model_filename` says otherwise.
pub const MODEL_FILE: &str = "model.onnx";
/// Triton's default for `--backend-config=onnxruntime,default-max-batch-size=N`.
pub const DEFAULT_MAX_BATCH_SIZE: i32 = 4;
/// The default of `--backend-config=onnxruntime,solo-session-max-byte-size=N`.
pub const DEFAULT_SOLO_SESSION_MAX_BYTES: u64 = 256 << 20;
/// Instances of a CPU group that gives no count, as Triton's onnxruntime backend has.
const DEFAULT_CPU_INSTANCES: i32 = 2;

/// The server-wide settings of the backend.
#[derive(Debug, Clone)]
pub struct OrtSettings {
    /// `--onnxruntime-library`; else `$ORT_DYLIB_PATH`, else the installed library.
    pub library: Option<PathBuf>,
    /// The `max_batch_size` auto-complete gives a model that can batch.
    pub default_max_batch_size: i32,
    /// `--backend-config=onnxruntime,thread-spinning=<bool>`: whether the shared intra-op pool's
    /// threads spin between runs (ONNX Runtime's default) or block (ours).
    pub thread_spinning: bool,
    /// `--backend-config=onnxruntime,solo-session-max-byte-size=N`: a CPU model on the shared pool
    /// whose files (the folder of its model file, external data included) hold at most N bytes
    /// also opens a session of its own for requests that run alone (see `instances`); 0: none.
    /// A bigger model's runs are long enough that a thread wake-up per parallel section does not
    /// matter, and its memory would.
    pub solo_session_max_bytes: u64,
}

impl OrtSettings {
    /// The settings `--backend-config=onnxruntime,...` gives (Triton's keys
    /// `default-max-batch-size`, ours `thread-spinning` and `solo-session-max-byte-size`), with
    /// `library` from `--onnxruntime-library`, else `$ORT_DYLIB_PATH`.
    pub fn from_backend_config(settings: &BackendSettings, library: Option<PathBuf>) -> Result<OrtSettings, String> {
        let defaults = OrtSettings::default();
        Ok(OrtSettings {
            library: library.or_else(|| std::env::var_os(LIBRARY_ENV).map(PathBuf::from)),
            default_max_batch_size: settings.number(BACKEND, "default-max-batch-size", defaults.default_max_batch_size)?,
            thread_spinning: settings.flag(BACKEND, "thread-spinning", defaults.thread_spinning)?,
            solo_session_max_bytes: settings.number(BACKEND, "solo-session-max-byte-size", defaults.solo_session_max_bytes)?,
        })
    }
}

impl Default for OrtSettings {
    fn default() -> Self {
        OrtSettings {
            library: None,
            default_max_batch_size: DEFAULT_MAX_BATCH_SIZE,
            thread_spinning: false,
            solo_session_max_bytes: DEFAULT_SOLO_SESSION_MAX_BYTES,
        }
    }
}

/// Registers the backend under both of its names.
pub fn register(registry: &mut BackendRegistry, settings: OrtSettings) {
    let factory = OnnxRuntimeFactory { settings: Arc::new(settings) };
    registry.register(BACKEND, factory.clone());
    registry.register(PLATFORM, factory);
}

#[derive(Debug, Clone)]
pub struct OnnxRuntimeFactory {
    settings: Arc<OrtSettings>,
}

impl BackendFactory for OnnxRuntimeFactory {
    fn model_filename(&self) -> Option<&'static str> {
        Some(MODEL_FILE)
    }

    fn auto_complete_config(&self, config: &mut ModelConfig, model_dir: Option<&Path>) -> Result<(), String> {
        fill_names(config);
        if !config.input.is_empty() && !config.output.is_empty() {
            return Ok(());
        }
        let model_dir = model_dir.ok_or_else(|| "an ONNX model needs a model folder to auto-complete its config".to_string())?;
        let path = session::newest_model_file(model_dir, config)?;
        let environment = library::environment(self.settings.library.as_deref(), self.settings.thread_spinning)?;
        let probe = session::open(&environment, &path, &SessionSettings::from_config(config)?, Device::Cpu)?;
        autocomplete::complete(config, &session::signature(&probe)?, self.settings.default_max_batch_size)
    }

    fn complete_config(&self, config: &mut ModelConfig, _model_dir: Option<&Path>) -> Result<(), String> {
        fill_names(config);
        normalize_instance_groups(config)
    }

    fn create(&self, context: &BackendContext<'_>) -> Result<Engine, String> {
        let config = context.config;
        let version_dir = context
            .version_dir
            .ok_or_else(|| format!("unable to find the version folder {} of model '{}'", context.version, context.model_name))?;
        let path = session::model_file(version_dir, config)?;
        let settings = SessionSettings::from_config(config)?;
        tritium_backend_api::warn_unread_parameters(context.model_name, "ONNX Runtime", config, &options::READ_PARAMETERS);
        let environment = library::environment(self.settings.library.as_deref(), self.settings.thread_spinning)?;
        let mut sessions = Vec::new();
        let mut all_on_cpu = true;
        for group in &config.instance_group {
            let device = device_of(config, group)?;
            all_on_cpu &= device == Device::Cpu;
            for _ in 0..group.count {
                sessions.push(session::open(&environment, &path, &settings, device)?);
            }
        }
        let solo = if all_on_cpu && settings.shares_the_pool() && self.wants_solo_session(context, &path) {
            Some(session::open_solo(&environment, &path, &settings)?)
        } else {
            None
        };
        let first = sessions.first().ok_or_else(|| format!("model '{}' has no instances", context.model_name))?;
        autocomplete::check(config, &session::signature(first)?)?;
        // The sequence batcher's state outputs are fetched too: it keeps them for the next request.
        let state_outputs = match &config.scheduling_choice {
            Some(SchedulingChoice::SequenceBatching(batching)) => batching.state.iter().map(|s| s.output_name.clone()).collect(),
            _ => Vec::new(),
        };
        let run = RunSettings {
            outputs: config.output.iter().map(|o| o.name.clone()).chain(state_outputs).collect(),
            arena_shrinkage: settings.arena_shrinkage.clone(),
        };
        let instances = Instances::start(sessions, solo, &run)?;
        Ok(Engine::tensors(OnnxModel { instances }))
    }
}

impl OnnxRuntimeFactory {
    /// Whether the model's files (those in the folder of its model file, external data included)
    /// fit `solo_session_max_bytes`.
    fn wants_solo_session(&self, context: &BackendContext<'_>, path: &Path) -> bool {
        let bound = self.settings.solo_session_max_bytes;
        if bound == 0 {
            return false;
        }
        let bytes = path.parent().map_or(0, session::folder_bytes);
        if bytes > bound {
            tracing::info!(
                model = context.model_name,
                version = context.version,
                "no solo session: the model's files hold {bytes} bytes, over solo-session-max-byte-size {bound}"
            );
        }
        bytes <= bound
    }
}

/// What Triton fills in for every ONNX model, auto-complete or not.
fn fill_names(config: &mut ModelConfig) {
    if config.platform.is_empty() {
        config.platform = PLATFORM.to_string();
    }
    if config.backend.is_empty() {
        config.backend = BACKEND.to_string();
    }
    if config.default_model_filename.is_empty() {
        config.default_model_filename = MODEL_FILE.to_string();
    }
}

/// Triton's instance-group normalization: one group named after the model when there is none,
/// `<model>_<index>` for unnamed groups, 2 CPU instances where no count is given, AUTO as CPU.
fn normalize_instance_groups(config: &mut ModelConfig) -> Result<(), String> {
    if config.instance_group.is_empty() {
        config
            .instance_group
            .push(tritium_proto::inference::ModelInstanceGroup { name: config.name.clone(), ..Default::default() });
    }
    let model = config.name.clone();
    for (index, group) in config.instance_group.iter_mut().enumerate() {
        if group.name.is_empty() {
            group.name = format!("{model}_{index}");
        }
        match Kind::try_from(group.kind) {
            Ok(Kind::Gpu) if !cfg!(feature = "cuda") => {
                return Err(format!(
                    "instance group {} of model {model} has kind KIND_GPU but server does not support GPUs",
                    group.name
                ));
            }
            Ok(Kind::Gpu) => {}
            Ok(Kind::Cpu | Kind::Auto) => group.kind = Kind::Cpu as i32,
            _ => return Err(format!("instance group {} of model {model} has a kind this backend cannot run", group.name)),
        }
        if !group.gpus.is_empty() && group.kind == Kind::Cpu as i32 {
            return Err(format!(
                "instance group {} of model {model} has kind KIND_CPU but specifies one or more GPUs",
                group.name
            ));
        }
        if group.count < 1 {
            group.count = if group.kind == Kind::Cpu as i32 { DEFAULT_CPU_INSTANCES } else { 1 };
        }
    }
    Ok(())
}

fn device_of(config: &ModelConfig, group: &tritium_proto::inference::ModelInstanceGroup) -> Result<Device, String> {
    if group.kind != Kind::Gpu as i32 {
        return Ok(Device::Cpu);
    }
    #[cfg(feature = "cuda")]
    {
        let _ = config;
        Ok(Device::Gpu(group.gpus.first().copied().unwrap_or(0)))
    }
    #[cfg(not(feature = "cuda"))]
    Err(format!("instance group {} of model {} has kind KIND_GPU but server does not support GPUs", group.name, config.name))
}

/// A loaded ONNX model version.
struct OnnxModel {
    instances: Instances,
}

#[async_trait]
impl Backend for OnnxModel {
    async fn execute(&self, request: BackendRequest, responder: &mut Responder) -> Result<(), BackendError> {
        let outputs = self.instances.run(request.inputs).await?;
        responder.send(outputs).await
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use tritium_proto::inference::ModelInstanceGroup;

    use super::*;

    #[test]
    fn instance_groups_are_normalized_as_triton_does() {
        let mut config = ModelConfig { name: "m".into(), ..Default::default() };
        normalize_instance_groups(&mut config).unwrap();
        assert_eq!(config.instance_group.len(), 1);
        let group = &config.instance_group[0];
        assert_eq!((group.name.as_str(), group.kind, group.count), ("m", Kind::Cpu as i32, DEFAULT_CPU_INSTANCES));

        let mut config = ModelConfig {
            name: "m".into(),
            instance_group: vec![ModelInstanceGroup { count: 3, kind: Kind::Cpu as i32, ..Default::default() }],
            ..Default::default()
        };
        normalize_instance_groups(&mut config).unwrap();
        assert_eq!((config.instance_group[0].name.as_str(), config.instance_group[0].count), ("m_0", 3));
    }

    #[cfg(not(feature = "cuda"))]
    #[test]
    fn a_gpu_group_is_refused_without_gpu_support() {
        let mut config = ModelConfig {
            name: "m".into(),
            instance_group: vec![ModelInstanceGroup { name: "g".into(), kind: Kind::Gpu as i32, ..Default::default() }],
            ..Default::default()
        };
        let error = normalize_instance_groups(&mut config).unwrap_err();
        assert_eq!(error, "instance group g of model m has kind KIND_GPU but server does not support GPUs");
    }
}
