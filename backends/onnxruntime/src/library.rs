//! Finding and loading `libonnxruntime.so` once per process. Nothing of ONNX Runtime is touched
//! before the first ONNX model loads, so a server without ONNX models needs no library; a missing
//! one is an error naming the install script, never a panic (every `ort` call panics when no
//! library is loaded, so none is made before this succeeds).

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use ort::environment::Environment;
use parking_lot::Mutex;

/// Where `scripts/install-onnxruntime.sh` puts the library, relative to the project folder.
pub const INSTALLED_LIBRARY: &str = ".tools/onnxruntime/lib/libonnxruntime.so";
/// The environment variable `ort` itself reads, which the server's config reads too.
pub const LIBRARY_ENV: &str = "ORT_DYLIB_PATH";

static ENVIRONMENT: OnceLock<Environment> = OnceLock::new();
/// Serializes first loads: ONNX Runtime allows one environment per process, ever.
static LOADING: Mutex<()> = Mutex::new(());

/// The process's ONNX Runtime environment, loading the library on first use: `explicit`
/// (`--onnxruntime-library`, or `$ORT_DYLIB_PATH` as the server's config reads it) if given, else
/// the installed default. `spinning` lets the shared pool's threads spin between runs. A failed
/// load is not remembered, so installing the library and loading the model again works.
pub fn environment(explicit: Option<&Path>, spinning: bool) -> Result<Environment, String> {
    if let Some(environment) = ENVIRONMENT.get() {
        return Ok(environment.clone());
    }
    let _loading = LOADING.lock();
    if let Some(environment) = ENVIRONMENT.get() {
        return Ok(environment.clone());
    }
    let candidates = candidates(explicit);
    let path = candidates.iter().find(|p| p.is_file()).ok_or_else(|| missing(&candidates))?;
    let builder =
        ort::init_from(path).map_err(|e| format!("cannot load ONNX Runtime from '{}': {}", path.display(), describe(&e)))?;
    let failed = |e: ort::Error| format!("cannot start ONNX Runtime from '{}': {}", path.display(), e.message());
    // One intra-op pool (a thread per core) for every session that sets no threads of its own:
    // instances of a model, and models, share the cores instead of each spinning up a pool per
    // session (2 instances x 2 threads on 2 cores ran the CNN at 0.73x of Triton at c=16).
    // Its threads block rather than spin between runs unless `spinning`: on 2 cores the spin took
    // CPU from the server and the client between requests (the CNN: 5 % more infer/s at c=16 and
    // 10 % less CPU per request at c=1 without it).
    let pool = ort::environment::GlobalThreadPoolOptions::default()
        .with_intra_threads(0)
        .and_then(|pool| pool.with_spin_control(spinning))
        .map_err(failed)?;
    let environment = builder.with_name("tritium").with_telemetry(false).with_global_thread_pool(pool).build().map_err(failed)?;
    // ONNX Runtime prints its own errors in colour to stderr; ours carry them to the client.
    environment.set_log_level(ort::logging::LogLevel::Fatal);
    tracing::info!(library = %path.display(), "ONNX Runtime loaded");
    Ok(ENVIRONMENT.get_or_init(|| environment).clone())
}

/// The paths tried, in order: the one given, else the installed library beside the working
/// folder and beside the binary (`target/<profile>/tritium` in a checkout).
fn candidates(explicit: Option<&Path>) -> Vec<PathBuf> {
    if let Some(path) = explicit {
        return vec![path.to_path_buf()];
    }
    let mut candidates = vec![PathBuf::from(INSTALLED_LIBRARY)];
    if let Ok(binary) = std::env::current_exe() {
        candidates.extend(binary.ancestors().skip(1).take(3).map(|dir| dir.join(INSTALLED_LIBRARY)));
    }
    candidates
}

fn missing(candidates: &[PathBuf]) -> String {
    let tried: Vec<String> = candidates.iter().map(|p| format!("'{}'", p.display())).collect();
    format!(
        "the ONNX Runtime library was not found (tried {}); install it with `bash scripts/install-onnxruntime.sh`, or give \
         its path with --onnxruntime-library or {LIBRARY_ENV}",
        tried.join(", ")
    )
}

/// `LoadDynamicError`'s own text says only "dlopen failed"; the loader's reason is its source.
fn describe(error: &ort::LoadDynamicError) -> String {
    let mut text = error.to_string();
    let mut source = std::error::Error::source(error);
    while let Some(cause) = source {
        text.push_str(&format!(": {cause}"));
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_given_path_is_the_only_one_tried_else_the_installed_places() {
        let flag = PathBuf::from("/opt/ort/libonnxruntime.so");
        assert_eq!(candidates(Some(&flag)), [flag]);
        let defaults = candidates(None);
        assert_eq!(defaults[0], PathBuf::from(INSTALLED_LIBRARY));
        assert!(defaults[1..].iter().all(|p| p.ends_with(INSTALLED_LIBRARY)));
    }

    #[test]
    fn a_missing_library_names_the_install_script_and_what_was_tried() {
        let message = missing(&[PathBuf::from("/nowhere/libonnxruntime.so")]);
        assert!(message.contains("bash scripts/install-onnxruntime.sh"), "{message}");
        assert!(message.contains("'/nowhere/libonnxruntime.so'"), "{message}");
        assert!(message.contains("--onnxruntime-library"), "{message}");
    }
}
