//! Opening a model file as an ONNX Runtime session and reading its signature.

use std::path::{Path, PathBuf};

use ort::environment::Environment;
use ort::session::Session;
use ort::session::builder::SessionBuilder;
use ort::value::ValueType;
use tritium_backend_api::model_files::resolve_model_file;
use tritium_proto::inference::ModelConfig;

use crate::MODEL_FILE;
use crate::autocomplete::{Signature, TensorSpec};
use crate::convert::datatype_of;
use crate::options::SessionSettings;

/// Where a session runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Device {
    Cpu,
    #[cfg_attr(not(feature = "cuda"), allow(dead_code))]
    Gpu(i32),
}

/// The model file of a version folder: `default_model_filename` (or `model.onnx`); a folder of
/// that name (a model with external data) holds `model.onnx`.
pub fn model_file(version_dir: &Path, config: &ModelConfig) -> Result<PathBuf, String> {
    let name = if config.default_model_filename.is_empty() { MODEL_FILE } else { config.default_model_filename.as_str() };
    let path = resolve_model_file(Some(version_dir), name)
        .map_err(|why| format!("unable to find the model file of version folder '{}': {why}", version_dir.display()))?;
    if path.is_dir() {
        return resolve_model_file(Some(&path), MODEL_FILE).map_err(|why| format!("the model folder '{name}': {why}"));
    }
    Ok(path)
}

/// The newest numeric version folder of `model_dir` that holds the model file.
pub fn newest_model_file(model_dir: &Path, config: &ModelConfig) -> Result<PathBuf, String> {
    let mut versions: Vec<i64> = std::fs::read_dir(model_dir)
        .map_err(|_| format!("cannot list the model folder '{}'", model_dir.display()))?
        .filter_map(|entry| entry.ok()?.file_name().to_str()?.parse::<i64>().ok())
        .filter(|v| *v >= 0)
        .collect();
    versions.sort_unstable();
    let mut last_error = format!("the model folder '{}' has no version folder", model_dir.display());
    for version in versions.iter().rev() {
        match model_file(&model_dir.join(version.to_string()), config) {
            Ok(path) => return Ok(path),
            Err(e) => last_error = e,
        }
    }
    Err(last_error)
}

/// Opens `path` with `settings` on `device`.
pub fn open(environment: &Environment, path: &Path, settings: &SessionSettings, device: Device) -> Result<Session, String> {
    let failed = |e: ort::Error| format!("onnx runtime error: cannot load '{}': {}", path.display(), e.message());
    let builder = Session::builder(environment).map_err(failed)?;
    let builder = settings.apply(builder).map_err(failed)?;
    let mut builder = with_device(builder, device).map_err(failed)?;
    builder.commit_from_file(path).map_err(failed)
}

/// Opens `path` on the CPU with an intra-op pool of its own whose threads spin while a run is in
/// progress and stop when it returns (`session.force_spinning_stop`), for requests that run alone.
pub fn open_solo(environment: &Environment, path: &Path, settings: &SessionSettings) -> Result<Session, String> {
    let failed = |e: ort::Error| format!("onnx runtime error: cannot load '{}': {}", path.display(), e.message());
    let builder = settings.apply(Session::builder(environment).map_err(failed)?).map_err(failed)?;
    let mut builder = spinning_while_running(builder).map_err(failed)?;
    builder.commit_from_file(path).map_err(failed)
}

/// The bytes of the regular files directly in `folder` (unreadable entries count as empty).
pub fn folder_bytes(folder: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(folder) else { return 0 };
    entries
        .filter_map(Result::ok)
        .filter_map(|entry| entry.metadata().ok())
        .filter(std::fs::Metadata::is_file)
        .fold(0u64, |total, metadata| total.saturating_add(metadata.len()))
}

fn spinning_while_running(builder: SessionBuilder) -> ort::Result<SessionBuilder> {
    Ok(builder
        .with_independent_thread_pool()?
        .with_intra_op_spinning(true)?
        .with_config_entry("session.force_spinning_stop", "1")?)
}

#[cfg(feature = "cuda")]
fn with_device(builder: SessionBuilder, device: Device) -> ort::Result<SessionBuilder> {
    match device {
        Device::Cpu => Ok(builder),
        Device::Gpu(id) => {
            Ok(builder.with_execution_providers([ort::ep::CUDA::default().with_device_id(id).build().error_on_failure()])?)
        }
    }
}

#[cfg(not(feature = "cuda"))]
fn with_device(builder: SessionBuilder, _device: Device) -> ort::Result<SessionBuilder> {
    Ok(builder)
}

/// The session's inputs and outputs; a non-tensor or a type KServe cannot carry is an error.
pub fn signature(session: &Session) -> Result<Signature, String> {
    let spec = |outlet: &ort::value::Outlet| -> Result<TensorSpec, String> {
        let name = outlet.name().to_string();
        match outlet.dtype() {
            ValueType::Tensor { ty, shape, .. } => {
                let datatype = datatype_of(*ty)
                    .ok_or_else(|| format!("model tensor '{name}' has element type {ty}, which KServe cannot carry"))?;
                let dims = shape.iter().map(|&d| if d < 0 { -1 } else { d }).collect();
                Ok(TensorSpec { name, datatype, dims })
            }
            other => Err(format!("Unsupported ONNX Type '{other}' for I/O '{name}', expected 'ONNX_TYPE_TENSOR'.")),
        }
    };
    Ok(Signature {
        inputs: session.inputs().iter().map(spec).collect::<Result<_, _>>()?,
        outputs: session.outputs().iter().map(spec).collect::<Result<_, _>>()?,
    })
}
