//! The Python backend's server-wide settings: `--python-interpreter` and Triton's
//! `--backend-config=python,<setting>=<value>` keys `stub-timeout-seconds` (30) and our
//! `shm-region-byte-size` (64 MiB per instance, half for inputs, half for outputs),
//! `packed-env-max-byte-size` (8 GiB) and `packed-env-max-entries` (200000), the bounds of what an
//! `EXECUTION_ENV_PATH` archive may unpack to, and `execute-timeout-seconds` (0: none), how long
//! one `execute` may run before its stub is ended and started again (a model's
//! `execute_timeout_seconds` parameter overrides it).

use std::path::PathBuf;
use std::time::Duration;

use tritium_backend_api::config_params::BackendSettings;

use crate::{BACKEND, EnvLimits, PythonSettings};

/// The smallest region: room for a few small tensors each way.
const MIN_REGION_BYTES: usize = 64 << 10;

impl PythonSettings {
    /// The settings `--backend-config=python,...` gives, with `interpreter` from
    /// `--python-interpreter`.
    pub fn from_backend_config(settings: &BackendSettings, interpreter: Option<PathBuf>) -> Result<PythonSettings, String> {
        let defaults = PythonSettings::default();
        let number = |key: &str| settings.optional_number::<u64>(BACKEND, key);
        let stub_timeout = number("stub-timeout-seconds")?.map_or(defaults.stub_timeout, Duration::from_secs);
        if stub_timeout.is_zero() {
            return Err("--backend-config=python,stub-timeout-seconds must be at least 1".to_string());
        }
        let region_bytes = match number("shm-region-byte-size")? {
            None => defaults.region_bytes,
            Some(bytes) => usize::try_from(bytes)
                .ok()
                .filter(|&b| b >= MIN_REGION_BYTES)
                .ok_or_else(|| format!("--backend-config=python,shm-region-byte-size must be at least {MIN_REGION_BYTES}"))?,
        };
        let at_least_one = |key: &str, default: u64| -> Result<u64, String> {
            match number(key)? {
                None => Ok(default),
                Some(0) => Err(format!("--backend-config=python,{key} must be at least 1")),
                Some(n) => Ok(n),
            }
        };
        let packed_env = EnvLimits {
            max_bytes: at_least_one("packed-env-max-byte-size", defaults.packed_env.max_bytes)?,
            max_entries: at_least_one("packed-env-max-entries", defaults.packed_env.max_entries)?,
        };
        let execute_timeout = execute_timeout(settings.optional_number::<f64>(BACKEND, "execute-timeout-seconds")?)
            .map_err(|why| format!("--backend-config=python,execute-timeout-seconds {why}"))?;
        Ok(PythonSettings { interpreter, region_bytes, stub_timeout, packed_env, execute_timeout })
    }
}

/// An execute timeout in seconds (decimals allowed; 0 for none).
pub(crate) fn execute_timeout(seconds: Option<f64>) -> Result<Option<Duration>, String> {
    match seconds {
        None => Ok(None),
        Some(0.0) => Ok(None),
        Some(s) => Duration::try_from_secs_f64(s).map(Some).map_err(|_| format!("must be a number of seconds, not {s}")),
    }
}
