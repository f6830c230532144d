//! Tritium's Python backend: Triton's `backend: "python"` models, a user's `model.py` with its
//! `TritonPythonModel` class, run unchanged.
//!
//! - Each model instance is a stub process (`python/tritium_python_stub.py` under the model's
//!   interpreter) that imports `model.py` and our own `triton_python_backend_utils`; a crash or a
//!   hang in user code never takes the server down, and a dead stub is started again.
//! - Control messages travel on a Unix socket; tensor bytes through a shared-memory region per
//!   instance (`region.rs`), read by numpy in place.
//! - Requests reach `execute` as lists when the dynamic batcher groups them; decoupled models
//!   stream their responses from any thread; BLS requests and model control come back to the
//!   server's repository (`services.rs`).
//!
//! It implements the worker's [`BackendFactory`]; batching belongs to the schedulers in front.

mod backend_config;
mod binary;
mod files;
mod frame;
mod model;
mod packed_env;
mod pool;
mod process;
mod region;
mod services;
mod stub;
mod wire;
mod writer;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde_json::json;
use tritium_backend_api::{
    BackendContext, BackendFactory, BackendRegistry, Engine, config_parameter, config_to_json, parse_config_json,
};
use tritium_proto::inference::ModelConfig;
use tritium_proto::inference::model_config::SchedulingChoice;
use tritium_proto::inference::model_instance_group::Kind;

use crate::model::PythonModel;
pub use crate::packed_env::EnvLimits;
pub use crate::pool::stop_all;
use crate::pool::{Instances, Launcher};
use crate::services::{Services, TraceRegistry};
use crate::stub::{Stub, StubSpec};

/// The backend name in `config.pbtxt`.
pub const BACKEND: &str = "python";
/// The model file a version folder holds unless `default_model_filename` says otherwise.
pub const MODEL_FILE: &str = "model.py";
/// The config parameter naming a model's own Python environment (Triton's).
pub const EXECUTION_ENV_PATH: &str = "EXECUTION_ENV_PATH";
/// The config parameter bounding one `execute` of this model, in seconds (0: none), over
/// `--backend-config=python,execute-timeout-seconds`.
pub const EXECUTE_TIMEOUT_SECONDS: &str = "execute_timeout_seconds";

/// The server-wide settings of the backend.
#[derive(Debug, Clone)]
pub struct PythonSettings {
    /// `--python-interpreter`; else `python3` on PATH.
    pub interpreter: Option<PathBuf>,
    /// Bytes of each instance's shared-memory region (half for inputs, half for outputs); larger
    /// tensors travel through the socket.
    pub region_bytes: usize,
    /// How long a stub may take to start, and its model's `finalize`.
    pub stub_timeout: Duration,
    /// What an `EXECUTION_ENV_PATH` archive may unpack to.
    pub packed_env: EnvLimits,
    /// How long one `execute` may run before its stub is ended and started again (`None`: no limit).
    pub execute_timeout: Option<Duration>,
}

impl Default for PythonSettings {
    fn default() -> Self {
        PythonSettings {
            interpreter: None,
            region_bytes: 64 << 20,
            stub_timeout: Duration::from_secs(30),
            packed_env: EnvLimits::default(),
            execute_timeout: None,
        }
    }
}

pub fn register(registry: &mut BackendRegistry, settings: PythonSettings) {
    registry.register(BACKEND, PythonFactory { settings: Arc::new(settings) });
}

#[derive(Debug, Clone)]
pub struct PythonFactory {
    settings: Arc<PythonSettings>,
}

impl PythonFactory {
    fn interpreter(&self, config: &ModelConfig, model_dir: Option<&Path>) -> Result<PathBuf, String> {
        let Some(env) = config_parameter(config, EXECUTION_ENV_PATH).filter(|p| !p.is_empty()) else {
            return Ok(self.settings.interpreter.clone().unwrap_or_else(|| PathBuf::from("python3")));
        };
        let model_dir = model_dir.ok_or("EXECUTION_ENV_PATH needs a model folder")?;
        let path = env.replace("$$TRITON_MODEL_DIRECTORY", &model_dir.to_string_lossy());
        let path = PathBuf::from(path);
        let path = if path.is_absolute() { path } else { model_dir.join(path) };
        let resolved = path.canonicalize().map_err(|e| format!("EXECUTION_ENV_PATH '{env}': {e}"))?;
        let folder = model_dir.canonicalize().map_err(|e| e.to_string())?;
        if !resolved.starts_with(&folder) {
            return Err(format!("EXECUTION_ENV_PATH '{env}' must lie inside the model's folder"));
        }
        let resolved = if resolved.is_dir() {
            resolved
        } else if packed_env::is_packed(&resolved) {
            packed_env::unpacked(&resolved, &self.settings.packed_env)
                .map_err(|why| format!("EXECUTION_ENV_PATH '{env}': {why}"))?
        } else {
            return Err(format!(
                "EXECUTION_ENV_PATH '{env}' must be a folder holding a Python environment (bin/python3) or a .tar.gz of one"
            ));
        };
        let python = resolved.join("bin").join("python3");
        if !python.exists() {
            return Err(format!("EXECUTION_ENV_PATH '{env}' has no bin/python3"));
        }
        Ok(python)
    }

    fn spec(&self, config: &ModelConfig, model_dir: Option<&Path>, name: &str) -> Result<StubSpec, String> {
        Ok(StubSpec {
            interpreter: self.interpreter(config, model_dir)?,
            stub_dir: files::stub_dir()?,
            region_bytes: self.settings.region_bytes,
            timeout: self.settings.stub_timeout,
            name: name.to_string(),
        })
    }
}

/// The model file of the newest version folder that has one (for auto-complete).
fn newest_model_file(model_dir: &Path, config: &ModelConfig) -> Option<PathBuf> {
    let file = model_filename(config);
    let mut versions: Vec<i64> = std::fs::read_dir(model_dir)
        .ok()?
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .filter(|v: &i64| *v >= 0)
        .collect();
    versions.sort_unstable();
    versions.into_iter().rev().map(|v| model_dir.join(v.to_string()).join(file)).find(|p| p.is_file())
}

fn model_filename(config: &ModelConfig) -> &str {
    if config.default_model_filename.is_empty() { MODEL_FILE } else { &config.default_model_filename }
}

/// Whether a model.py defines `auto_complete_config` (only then is a stub started for it).
fn defines_auto_complete(path: &Path) -> bool {
    const MAX_SCAN: u64 = 8 << 20;
    let Ok(file) = std::fs::File::open(path) else { return false };
    let mut text = String::new();
    let _ = std::io::Read::read_to_string(&mut std::io::Read::take(file, MAX_SCAN), &mut text);
    text.contains("auto_complete_config")
}

impl BackendFactory for PythonFactory {
    fn model_filename(&self) -> Option<&'static str> {
        Some(MODEL_FILE)
    }

    fn auto_complete_config(&self, config: &mut ModelConfig, model_dir: Option<&Path>) -> Result<(), String> {
        let Some(model_dir) = model_dir else { return Ok(()) };
        let Some(model_file) = newest_model_file(model_dir, config) else { return Ok(()) };
        if !defines_auto_complete(&model_file) {
            return Ok(());
        }
        let spec = self.spec(config, Some(model_dir), &format!("{}_auto_complete", config.name))?;
        let stub = Stub::start(&spec, Services::new(tritium_backend_api::no_host()))?;
        let current = config_to_json(config).map_err(|e| e.to_string())?;
        let answer = stub.call(json!({"op": "auto_complete", "config": current, "model_file": model_file}), Some(spec.timeout));
        stub.stop();
        let answer = answer.map_err(|why| format!("auto-complete-config of model '{}' failed: {why}", config.name))?;
        let completed = answer.get("config").map(|c| c.to_string()).unwrap_or_default();
        *config = parse_config_json(&completed)
            .map_err(|e| format!("auto-complete-config of model '{}' returned an invalid config: {e}", config.name))?;
        Ok(())
    }

    fn complete_config(&self, config: &mut ModelConfig, _model_dir: Option<&Path>) -> Result<(), String> {
        if config.backend.is_empty() {
            config.backend = BACKEND.to_string();
        }
        if config.default_model_filename.is_empty() {
            config.default_model_filename = MODEL_FILE.to_string();
        }
        // Triton's python backend gives a dynamic batcher without preferred sizes the largest one.
        if let Some(SchedulingChoice::DynamicBatching(batching)) = &mut config.scheduling_choice
            && batching.preferred_batch_size.is_empty()
            && config.max_batch_size > 0
        {
            batching.preferred_batch_size.push(config.max_batch_size);
        }
        for group in &config.instance_group {
            if group.kind == Kind::Gpu as i32 {
                return Err(format!(
                    "instance group {} of model {} has kind KIND_GPU but server does not support GPUs",
                    group.name, config.name
                ));
            }
        }
        Ok(())
    }

    fn create(&self, context: &BackendContext<'_>) -> Result<Engine, String> {
        let config = context.config;
        let version_dir = context
            .version_dir
            .ok_or_else(|| format!("unable to find the version folder {} of model '{}'", context.version, context.model_name))?;
        let model_file = version_dir.join(model_filename(config));
        if !model_file.is_file() {
            return Err(format!("unable to find '{}' for model '{}'", model_file.display(), context.model_name));
        }
        let decoupled = config.model_transaction_policy.as_ref().is_some_and(|p| p.decoupled);
        let model_config = config_to_json(config).map_err(|e| e.to_string())?.to_string();
        let model_repository = context.model_dir.map(|d| d.to_string_lossy().into_owned()).unwrap_or_default();
        let init = json!({
            "op": "init",
            "model_file": model_file,
            "decoupled": decoupled,
            "args": {
                "model_config": model_config,
                "model_instance_kind": "CPU",
                "model_instance_name": "",
                "model_instance_device_id": "0",
                "model_repository": model_repository,
                "model_version": context.version.to_string(),
                "model_name": context.model_name,
            },
        });
        let names = config
            .instance_group
            .iter()
            .flat_map(|group| (0..group.count.max(1)).map(move |index| format!("{}_{index}", group.name)))
            .collect();
        let traces = TraceRegistry::default();
        let launcher = Launcher {
            spec: self.spec(config, context.model_dir, context.model_name)?,
            init,
            services: Services::new(context.host.clone()).with_traces(traces.clone()),
        };
        let execute_timeout = match config_parameter(config, EXECUTE_TIMEOUT_SECONDS).filter(|p| !p.trim().is_empty()) {
            None => self.settings.execute_timeout,
            Some(value) => {
                let seconds = value.trim().parse::<f64>().map_err(|_| {
                    format!(
                        "parameter '{EXECUTE_TIMEOUT_SECONDS}' of model '{}': '{value}' is not a number of seconds",
                        context.model_name
                    )
                })?;
                backend_config::execute_timeout(Some(seconds))
                    .map_err(|why| format!("parameter '{EXECUTE_TIMEOUT_SECONDS}' of model '{}' {why}", context.model_name))?
            }
        };
        let instances = Instances::start(names, launcher)?;
        Ok(Engine::tensors(PythonModel::new(config, decoupled, instances, execute_timeout, traces)))
    }
}
