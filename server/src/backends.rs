//! The backends this server was built with (cargo features `llm`, `onnxruntime`, `python`, all on
//! by default) and the one place their registry is assembled, for `tritium serve` and
//! `tritium worker` alike: the built-ins, then each backend crate beside them.

use tritium_worker::BackendRegistry;

/// The backend crates' settings, resolved from the command line.
#[derive(Debug, Clone, Default)]
pub struct BackendsConfig {
    /// Bounds of every language model's engine (a model's config may override them).
    #[cfg(feature = "llm")]
    pub llm: tritium_llm::EngineOptions,
    /// The ONNX Runtime backend's library and defaults.
    #[cfg(feature = "onnxruntime")]
    pub onnxruntime: tritium_onnxruntime::OrtSettings,
    /// The Python backend's interpreter and bounds.
    #[cfg(feature = "python")]
    pub python: tritium_python::PythonSettings,
    /// The bounds of `backend: "engine_grpc"` models (the `--engine-grpc-*` options).
    pub engines: tritium_cluster::engines::EngineLimits,
}

/// The built-ins and every backend crate built in, then `extra` (a caller's own backends, which win
/// over a built-in of the same name).
pub fn backend_registry(config: &BackendsConfig, extra: BackendRegistry) -> BackendRegistry {
    let mut registry = tritium_worker::builtin_backends();
    #[cfg(feature = "llm")]
    tritium_llm::register(&mut registry, config.llm.clone());
    #[cfg(feature = "onnxruntime")]
    tritium_onnxruntime::register(&mut registry, config.onnxruntime.clone());
    #[cfg(feature = "python")]
    tritium_python::register(&mut registry, config.python.clone());
    tritium_cluster::engines::backend::register(&mut registry, config.engines);
    let _ = config;
    registry.extend(extra);
    registry
}

/// Stops what the backends keep running outside the process's threads (the Python backend's
/// stubs), before the process exits.
pub fn stop_all() {
    #[cfg(feature = "python")]
    tritium_python::stop_all();
}
