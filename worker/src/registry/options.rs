//! The registry's options: the model control mode, where the models come from, and the bounds and
//! shared services (rate limiter, response cache) every model it loads gets.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use super::on_demand;
use super::remote::RemoteRepository;
use crate::scheduler_limits::SchedulerLimits;

/// Triton's `--model-control-mode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ControlMode {
    /// Load everything at start; no load or unload later.
    #[default]
    None,
    /// Load what `--load-model` names at start; clients load and unload.
    Explicit,
    /// Load everything and follow changes to the repository.
    Poll,
    /// Load each model at its first request, within limits (see [`on_demand`]); clients load and
    /// unload as in explicit mode.
    OnDemand,
}

#[derive(Debug, Clone)]
pub struct RepositoryOptions {
    /// Repository folders; empty (and no `remote`) means the built-in repository.
    pub paths: Vec<PathBuf>,
    /// Repositories in object stores, read through a local copy of each model.
    pub remote: Vec<Arc<dyn RemoteRepository>>,
    pub control_mode: ControlMode,
    /// Models to load at start in explicit mode; `*` loads all.
    pub startup_models: Vec<String>,
    pub poll_interval: Duration,
    /// Models declared outside any repository folder (`tritium serve --model-path`), each a name
    /// and the text of its `config.pbtxt`. With none of these and no paths, the built-in
    /// repository is served.
    pub declared: Vec<DeclaredModel>,
    /// Serve the built-in repository when there are no paths and no declared models. A frontend
    /// that only fronts remote workers turns this off.
    pub builtins: bool,
    /// The server's rate limiter, shared by every model's executions (off by default).
    pub rate_limiter: Arc<crate::rate_limiter::RateLimiter>,
    /// Triton's auto-complete: a backend fills in what `config.pbtxt` leaves out from the model
    /// file, and a folder with no `config.pbtxt` is served by the backend whose model file it
    /// holds. `--disable-auto-complete-config` turns it off.
    pub auto_complete_config: bool,
    /// Bounds of every model's dynamic and sequence batcher.
    pub scheduler_limits: SchedulerLimits,
    /// The response cache (`--cache-config`), for the models whose config enables it.
    pub response_cache: Option<Arc<dyn crate::response_cache::ResponseCache>>,
    /// The limits and pins of on-demand mode.
    pub on_demand: on_demand::OnDemandOptions,
}

/// A model given by its config alone, with no repository folder.
#[derive(Debug, Clone, PartialEq)]
pub struct DeclaredModel {
    pub name: String,
    pub config_text: String,
}

impl Default for RepositoryOptions {
    fn default() -> Self {
        RepositoryOptions {
            paths: Vec::new(),
            remote: Vec::new(),
            control_mode: ControlMode::None,
            startup_models: Vec::new(),
            poll_interval: Duration::from_secs(15),
            declared: Vec::new(),
            builtins: true,
            rate_limiter: Arc::default(),
            auto_complete_config: true,
            scheduler_limits: SchedulerLimits::default(),
            response_cache: None,
            on_demand: on_demand::OnDemandOptions::default(),
        }
    }
}
