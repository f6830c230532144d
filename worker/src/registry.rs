//! The model registry: which models and versions are served, their lifecycle under Triton's
//! model control modes (`none`, `explicit`, `poll`, and `on-demand`: see [`on_demand`]), and the
//! repository index.
//!
//! The request path reads an immutable snapshot (`ArcSwap`), so loads and unloads never block
//! inference; lifecycle changes are serialized by one mutex.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::{Arc, Weak};

use arc_swap::ArcSwap;
use parking_lot::Mutex;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tritium_proto::inference::ModelConfig;

mod adapters;
mod build;
mod declare;
pub mod on_demand;
mod options;
mod overrides;
mod remote;
mod requests;

pub use adapters::{LoadAdapter, LocalAdapter, Refusal, check_names, choose_base, load_into, unload_local};
pub use options::{ControlMode, DeclaredModel, RepositoryOptions};
pub use overrides::{FileOverride, MAX_OVERRIDE_BYTES, MAX_OVERRIDE_FILES, OverrideFolder};
pub use remote::{RemoteModel, RemoteRepository, SyncedModel};

use crate::model::ModelVersion;
use build::{load_order, with_composing_models};
use tritium_backend_api::BackendRegistry;
use tritium_backend_api::error::WorkerError;
use tritium_repository::{self as repository, ModelSource};

/// The ready versions of one model.
#[derive(Debug)]
pub struct ServedModel {
    pub name: String,
    pub config: Arc<ModelConfig>,
    /// Ready versions, ascending.
    pub versions: BTreeMap<i64, Arc<ModelVersion>>,
    fingerprint: u64,
    /// The private copy of the model's files a load sent (`file:` overrides), kept while served.
    files: Option<Arc<OverrideFolder>>,
}

impl ServedModel {
    /// A model assembled by hand rather than loaded from a repository folder: e.g. the frontend's
    /// stand-in for a model that workers in other processes serve.
    pub fn new(name: String, config: Arc<ModelConfig>, versions: BTreeMap<i64, Arc<ModelVersion>>) -> ServedModel {
        ServedModel { name, config, versions, fingerprint: 0, files: None }
    }

    fn with_files(mut self, files: Arc<OverrideFolder>) -> ServedModel {
        self.files = Some(files);
        self
    }

    pub fn latest(&self) -> Option<&Arc<ModelVersion>> {
        self.versions.values().next_back()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ModelState {
    Ready,
    Unavailable,
    Loading,
    Unloading,
}

impl ModelState {
    pub fn as_str(self) -> &'static str {
        match self {
            ModelState::Ready => "READY",
            ModelState::Unavailable => "UNAVAILABLE",
            ModelState::Loading => "LOADING",
            ModelState::Unloading => "UNLOADING",
        }
    }
}

/// One row of the repository index.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IndexEntry {
    pub name: String,
    pub version: Option<i64>,
    /// `None` for a model present in the repository and never loaded.
    pub state: Option<ModelState>,
    pub reason: String,
}

/// What is known of a model that is not (or no longer) served.
#[derive(Debug, Clone)]
struct Unserved {
    versions: Vec<i64>,
    reason: String,
    /// The repository state that failed to load, so polling does not retry it unchanged.
    fingerprint: Option<u64>,
    /// A model the server was configured to serve failed: the server is not ready. A client's
    /// failed load request does not make the whole server unready.
    blocks_readiness: bool,
}

/// Who asked for a load, which decides whether its failure makes the server unready.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum LoadCause {
    Configuration,
    Client,
}

const BUILTIN_MODELS: &[(&str, &str)] = &[
    ("identity", include_str!("../models/identity.pbtxt")),
    ("identity_batch", include_str!("../models/identity_batch.pbtxt")),
    ("add_sub", include_str!("../models/add_sub.pbtxt")),
    ("repeat", include_str!("../models/repeat.pbtxt")),
    ("dense", include_str!("../models/dense.pbtxt")),
    ("accumulate", include_str!("../models/accumulate.pbtxt")),
    ("add_sub_twice", include_str!("../models/add_sub_twice.pbtxt")),
];

/// A map looked up by model name on every request: foldhash, not SipHash, since its keys are the
/// models the operator configured (a client's name is only looked up, never inserted).
pub type ByName<V> = HashMap<String, V, foldhash::fast::RandomState>;

#[derive(Debug)]
pub struct ModelRepository {
    /// Unique in the process: the versions it builds carry it, so a request checked against one
    /// of them needs no second lookup to run here.
    id: u64,
    options: RepositoryOptions,
    backends: BackendRegistry,
    served: ArcSwap<ByName<Arc<ServedModel>>>,
    /// Models workers in other processes serve, shown beside the local ones; a local model of
    /// the same name wins.
    remote: ArcSwap<ByName<Arc<ServedModel>>>,
    unserved: Mutex<BTreeMap<String, Unserved>>,
    /// Repository states that failed to reload while an older load kept serving.
    rejected: Mutex<HashMap<String, u64>>,
    lifecycle: Mutex<()>,
    loading: crate::load_gate::LoadGate,
    changes: watch::Sender<u64>,
    on_demand: on_demand::OnDemand,
    /// Models declared after start ([`ModelRepository::declare`]), beside `options.declared`.
    declared_later: Mutex<Vec<DeclaredModel>>,
    /// This repository, for the ensembles it serves (they run their steps on it).
    me: Weak<ModelRepository>,
}

impl ModelRepository {
    /// Opens the repository and loads the models its control mode asks for at start. Models that
    /// fail to load are reported in the index with their reason; the others are served.
    pub fn open(options: RepositoryOptions, backends: BackendRegistry) -> Result<Arc<ModelRepository>, WorkerError> {
        static NEXT_ID: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
        let repository = Arc::new_cyclic(|me| ModelRepository {
            id: NEXT_ID.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
            me: me.clone(),
            on_demand: on_demand::OnDemand::new(options.on_demand.clone()),
            declared_later: Mutex::new(Vec::new()),
            options,
            backends,
            served: ArcSwap::from_pointee(ByName::default()),
            remote: ArcSwap::from_pointee(ByName::default()),
            unserved: Mutex::new(BTreeMap::new()),
            rejected: Mutex::new(HashMap::new()),
            lifecycle: Mutex::new(()),
            loading: Default::default(),
            changes: watch::channel(0).0,
        });
        let sources = load_order(repository.sources()?);
        let on_demand = repository.options.control_mode == ControlMode::OnDemand;
        let load_all = !(repository.options.control_mode == ControlMode::Explicit || on_demand)
            || repository.options.startup_models.iter().any(|m| m == "*");
        let mut wanted = repository.options.startup_models.clone();
        wanted.extend(repository.options.on_demand.pinned.iter().cloned());
        let startup = with_composing_models(&sources, wanted.clone());
        let guard = repository.lifecycle.lock();
        for source in sources {
            let wanted = load_all || startup.contains(&source.name);
            if wanted {
                if let Err(e) = repository.load_source(&source, None, LoadCause::Configuration) {
                    tracing::error!(model = %source.name, "failed to load: {e}");
                }
            } else {
                repository.mark_unserved(&source.name, source.versions.clone(), String::new(), None, false);
            }
        }
        if repository.options.control_mode == ControlMode::Explicit || on_demand {
            for name in &wanted {
                if name != "*" && !repository.is_served(name) && !repository.unserved.lock().contains_key(name) {
                    return Err(WorkerError::LoadFailed {
                        name: name.clone(),
                        reason: "no model of that name in the model repository".to_string(),
                    });
                }
            }
        }
        drop(guard);
        Ok(repository)
    }

    /// A counter that moves on every change of the served models, for health and discovery.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.changes.subscribe()
    }

    /// Tells subscribers that what a model serves changed without a load or unload (a LoRA
    /// adapter loaded into its engine, which discovery lists as a model of its own).
    pub fn announce_change(&self) {
        self.changes.send_modify(|n| *n += 1);
    }

    /// The served model of that name, local or remote.
    pub fn model(&self, name: &str) -> Option<Arc<ServedModel>> {
        if let Some(local) = self.served.load().get(name) {
            return Some(Arc::clone(local));
        }
        self.remote.load().get(name).cloned()
    }

    /// Every served model, local and remote, by name.
    pub fn served_models(&self) -> Vec<Arc<ServedModel>> {
        let local = self.served.load();
        let mut models: Vec<_> = local.values().cloned().collect();
        models.extend(self.remote.load().values().filter(|m| !local.contains_key(&m.name)).cloned());
        models.sort_by(|a, b| a.name.cmp(&b.name));
        models
    }

    /// The models this process loaded itself (what an in-process worker registers in discovery).
    pub fn local_models(&self) -> Vec<Arc<ServedModel>> {
        let mut models: Vec<_> = self.served.load().values().cloned().collect();
        models.sort_by(|a, b| a.name.cmp(&b.name));
        models
    }

    /// Replaces the models served by workers in other processes.
    pub fn set_remote_models(&self, models: Vec<Arc<ServedModel>>) {
        let next: ByName<Arc<ServedModel>> = models.into_iter().map(|m| (m.name.clone(), m)).collect();
        let current = self.remote.load();
        // Stand-ins are rebuilt on every discovery change; only new or changed versions count.
        let same = |a: &ServedModel, b: &ServedModel| {
            a.versions.len() == b.versions.len()
                && a.versions.iter().zip(&b.versions).all(|((va, ma), (vb, mb))| va == vb && Arc::ptr_eq(ma, mb))
        };
        let unchanged =
            current.len() == next.len() && next.iter().all(|(name, model)| current.get(name).is_some_and(|c| same(c, model)));
        if !unchanged {
            self.remote.store(Arc::new(next));
            self.changes.send_modify(|n| *n += 1);
        }
    }

    fn is_served(&self, name: &str) -> bool {
        self.served.load().contains_key(name)
    }

    /// True when every model the repository was asked to serve is ready.
    pub fn all_ready(&self) -> bool {
        !self.unserved.lock().values().any(|u| u.blocks_readiness) && self.remotes_healthy()
    }

    /// The version a request asks for (`None`: the latest ready one), with Triton's errors.
    pub fn resolve(&self, name: &str, version: Option<i64>) -> Result<Arc<ModelVersion>, WorkerError> {
        // Looked up inside the maps' guards: the request path clones only the version's `Arc`.
        let pick = |model: &ServedModel| match version {
            None => model.latest().cloned().ok_or_else(|| WorkerError::NoAvailableVersions { name: name.to_string() }),
            Some(v) => {
                model.versions.get(&v).cloned().ok_or_else(|| WorkerError::VersionNotFound { name: name.to_string(), version: v })
            }
        };
        if let Some(local) = self.served.load().get(name) {
            return pick(local);
        }
        if let Some(remote) = self.remote.load().get(name) {
            return pick(remote);
        }
        // A model that was loaded once (or failed to) has no available versions; one that sits
        // in the repository never loaded is as unknown as one that does not exist.
        let known = self.unserved.lock().get(name).is_some_and(|u| !u.reason.is_empty());
        Err(if known {
            WorkerError::NoAvailableVersions { name: name.to_string() }
        } else {
            WorkerError::ModelNotFound { name: name.to_string() }
        })
    }

    /// Whether a model (and version) can take requests; unknown ones are simply not ready.
    pub fn is_ready(&self, name: &str, version: Option<i64>) -> bool {
        self.resolve(name, version).is_ok_and(|model| model.is_ready())
    }

    /// Loads or reloads a model (explicit mode). `config_json` replaces the model's
    /// `config.pbtxt`, as Triton's `config` load parameter does, within the rules of
    /// [`ModelRepository::check_override`]. The model is built outside the lifecycle lock, so a
    /// slow load holds up neither other loads nor unloads; loads of one model follow each other.
    pub fn load(&self, name: &str, config_json: Option<&str>) -> Result<(), WorkerError> {
        if !self.clients_control() {
            return Err(WorkerError::ModelControlDisabled);
        }
        let not_polled =
            || WorkerError::LoadFailed { name: name.to_string(), reason: "failed to poll from model repository".to_string() };
        let source = self.find_source(name)?.ok_or_else(not_polled)?;
        self.check_budget(&source)?;
        if let Some(json) = config_json {
            // Triton's answer to an override that is not JSON: the model cannot be polled.
            repository::parse_config_json(json).map_err(|_| not_polled())?;
            self.check_override(&source, json)?;
        }
        self.load_composing_models(&source, config_json, 0)?;
        let _loading = self.loading.enter(name);
        let built = self.build(&source, config_json);
        let _guard = self.lifecycle.lock();
        self.settle(&source, built, LoadCause::Client)
    }

    /// A client's config override may only describe the model folder it loads: not a built-in or
    /// command-line model (they have no folder), no file outside the folder, no other backend (an
    /// override that names none keeps the model's own, as Triton works it out from the folder).
    fn check_override(&self, source: &ModelSource, json: &str) -> Result<(), WorkerError> {
        let failed = |reason: String| WorkerError::LoadFailed { name: source.name.clone(), reason };
        if source.dir.as_os_str().is_empty() {
            return Err(failed(
                "the model is built in or declared on the command line; its config cannot be overridden".to_string(),
            ));
        }
        let Some(config) = source.config_with_override(Some(json))? else { return Ok(()) };
        tritium_repository::model_files::check_override_paths(&config).map_err(failed)?;
        let backend = |c: &ModelConfig| if c.backend.is_empty() { c.platform.clone() } else { c.backend.clone() };
        if let Some(own) = source.config()?
            && !backend(&config).is_empty()
            && backend(&own) != backend(&config)
        {
            return Err(failed(format!(
                "a config override may not change the model's backend ('{}' to '{}')",
                backend(&own),
                backend(&config)
            )));
        }
        Ok(())
    }

    /// Unloads a model (explicit mode); unknown names are fine, as in Triton.
    pub fn unload(&self, name: &str) -> Result<(), WorkerError> {
        if !self.clients_control() {
            return Err(WorkerError::ModelControlDisabled);
        }
        let _guard = self.lifecycle.lock();
        self.remove_served(name, "unloaded", on_demand::UnloadCause::Explicit);
        Ok(())
    }

    /// The repository index: every model in the repositories and every served one.
    pub fn index(&self, ready_only: bool) -> Result<Vec<IndexEntry>, WorkerError> {
        let mut rows = Vec::new();
        for model in self.served_models() {
            // As in Triton, the index lists the repository: a model loaded from a load's files
            // alone is served but not listed.
            if model.files.is_some() && !self.in_repository(&model.name) {
                continue;
            }
            for &version in model.versions.keys() {
                rows.push(IndexEntry {
                    name: model.name.clone(),
                    version: Some(version),
                    state: Some(ModelState::Ready),
                    reason: String::new(),
                });
            }
        }
        if !ready_only {
            for (name, unserved) in self.unserved.lock().iter() {
                if unserved.reason.is_empty() {
                    rows.push(IndexEntry { name: name.clone(), version: None, state: None, reason: String::new() });
                } else if unserved.versions.is_empty() {
                    rows.push(IndexEntry {
                        name: name.clone(),
                        version: None,
                        state: Some(ModelState::Unavailable),
                        reason: unserved.reason.clone(),
                    });
                }
                for &version in &unserved.versions {
                    if !unserved.reason.is_empty() {
                        rows.push(IndexEntry {
                            name: name.clone(),
                            version: Some(version),
                            state: Some(ModelState::Unavailable),
                            reason: unserved.reason.clone(),
                        });
                    }
                }
            }
        }
        rows.sort_by(|a, b| (&a.name, a.version).cmp(&(&b.name, b.version)));
        Ok(rows)
    }

    /// Brings the served models in line with the repository folders (poll mode).
    pub fn poll(&self) -> Result<(), WorkerError> {
        let _guard = self.lifecycle.lock();
        let sources = load_order(self.sources()?);
        for source in &sources {
            let current = self.model(&source.name).map(|m| m.fingerprint);
            let failed = self.unserved.lock().get(&source.name).and_then(|u| u.fingerprint);
            let rejected = self.rejected.lock().get(&source.name).copied();
            let changed = ![current, failed, rejected].contains(&Some(source.fingerprint));
            if changed && let Err(e) = self.load_source(source, None, LoadCause::Configuration) {
                tracing::error!(model = %source.name, "failed to reload: {e}");
            }
        }
        for model in self.served_models() {
            if !sources.iter().any(|s| s.name == model.name) {
                self.remove_served(&model.name, "removed from the model repository", on_demand::UnloadCause::Poll);
            }
        }
        Ok(())
    }

    /// In poll mode, re-reads the repository every `poll_interval` until `stop` is cancelled.
    pub fn spawn_poller(self: &Arc<Self>, stop: CancellationToken) -> Option<tokio::task::JoinHandle<()>> {
        if self.options.control_mode != ControlMode::Poll {
            return None;
        }
        let repository = Arc::clone(self);
        Some(tokio::spawn(async move {
            let mut ticker = tokio::time::interval(repository.options.poll_interval);
            ticker.tick().await;
            loop {
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = ticker.tick() => {}
                }
                let repository = Arc::clone(&repository);
                let polled = tokio::task::spawn_blocking(move || repository.poll()).await;
                if let Ok(Err(e)) = polled {
                    tracing::error!("model repository poll failed: {e}");
                }
            }
        }))
    }

    fn sources(&self) -> Result<Vec<ModelSource>, WorkerError> {
        let options = &self.options;
        let mut sources = if !options.paths.is_empty() || !options.remote.is_empty() {
            let mut sources = repository::scan_repositories(&options.paths)?;
            self.add_remote_sources(&mut sources)?;
            sources
        } else if options.declared.is_empty() && options.builtins {
            BUILTIN_MODELS.iter().map(|(name, text)| builtin_source(name, text)).collect()
        } else {
            Vec::new()
        };
        for declared in &options.declared {
            if sources.iter().any(|s| s.name == declared.name) {
                return Err(WorkerError::LoadFailed {
                    name: declared.name.clone(),
                    reason: "a model of that name is declared twice (or is also in the repository)".to_string(),
                });
            }
            sources.push(builtin_source(&declared.name, &declared.config_text));
        }
        sources.extend(self.declared_later.lock().iter().map(|d| builtin_source(&d.name, &d.config_text)));
        Ok(sources)
    }

    fn find_source(&self, name: &str) -> Result<Option<ModelSource>, WorkerError> {
        let options = &self.options;
        if let Some(declared) = options.declared.iter().find(|d| d.name == name) {
            return Ok(Some(builtin_source(&declared.name, &declared.config_text)));
        }
        if let Some(declared) = self.declared_later.lock().iter().find(|d| d.name == name) {
            return Ok(Some(builtin_source(&declared.name, &declared.config_text)));
        }
        if options.paths.is_empty() && options.remote.is_empty() {
            if !options.declared.is_empty() || !options.builtins {
                return Ok(None);
            }
            return Ok(BUILTIN_MODELS.iter().find(|(n, _)| *n == name).map(|(n, text)| builtin_source(n, text)));
        }
        match repository::find_model(&options.paths, name)? {
            Some(source) => Ok(Some(source)),
            None => self.find_remote_source(name),
        }
    }

    /// Builds every selected version of a model and swaps it in. Call with the lifecycle lock.
    fn load_source(&self, source: &ModelSource, config_json: Option<&str>, cause: LoadCause) -> Result<(), WorkerError> {
        self.settle(source, self.build(source, config_json), cause)
    }

    /// Swaps a built model in, or records why it failed. Call with the lifecycle lock.
    fn settle(&self, source: &ModelSource, built: Result<ServedModel, WorkerError>, cause: LoadCause) -> Result<(), WorkerError> {
        match built {
            Ok(model) => {
                let mut next = ByName::clone(&self.served.load());
                next.insert(source.name.clone(), Arc::new(model));
                self.served.store(Arc::new(next));
                self.unserved.lock().remove(&source.name);
                self.rejected.lock().remove(&source.name);
                self.changes.send_modify(|n| *n += 1);
                tracing::info!(model = %source.name, "loaded");
                self.on_loaded(&source.name, &source.dir);
                Ok(())
            }
            Err(e) if self.is_served(&source.name) => {
                // A failed reload leaves the loaded model as it was, as Triton documents; the
                // failed state is remembered so polling does not retry it unchanged.
                tracing::error!(model = %source.name, "reload failed, the loaded model stays: {e}");
                self.rejected.lock().insert(source.name.clone(), source.fingerprint);
                Err(e)
            }
            Err(e) => {
                self.mark_unserved(
                    &source.name,
                    source.versions.clone(),
                    e.to_string(),
                    Some(source.fingerprint),
                    cause == LoadCause::Configuration,
                );
                Err(e)
            }
        }
    }

    fn remove_served(&self, name: &str, reason: &str, cause: on_demand::UnloadCause) {
        let current = self.served.load();
        let Some(model) = current.get(name) else { return };
        let versions: Vec<i64> = model.versions.keys().copied().collect();
        // A model that came from a load's files alone leaves nothing behind in the index. Marked
        // before it leaves `served`, so a lookup always finds it in one or the other.
        let files_only = model.files.is_some() && !self.in_repository(name);
        if !reason.is_empty() && !files_only {
            self.mark_unserved(name, versions, reason.to_string(), None, false);
        }
        let mut next = ByName::clone(&current);
        next.remove(name);
        self.served.store(Arc::new(next));
        self.rejected.lock().remove(name);
        self.changes.send_modify(|n| *n += 1);
        self.on_unloaded(name, cause);
        tracing::info!(model = %name, "unloaded");
    }

    /// Whether clients load and unload models (explicit and on-demand modes).
    fn clients_control(&self) -> bool {
        matches!(self.options.control_mode, ControlMode::Explicit | ControlMode::OnDemand)
    }

    /// Whether the repository (or the built-in set) holds a model of this name.
    fn in_repository(&self, name: &str) -> bool {
        self.find_source(name).ok().flatten().is_some()
    }

    fn mark_unserved(&self, name: &str, versions: Vec<i64>, reason: String, fingerprint: Option<u64>, blocks_readiness: bool) {
        self.unserved.lock().insert(name.to_string(), Unserved { versions, reason, fingerprint, blocks_readiness });
    }
}

fn builtin_source(name: &str, text: &str) -> ModelSource {
    ModelSource {
        name: name.to_string(),
        dir: PathBuf::new(),
        config_text: Some(text.to_string()),
        versions: vec![1],
        fingerprint: 0,
    }
}
