//! Model repositories that are not local folders (object stores: `s3://`, `gs://`, `as://`).
//!
//! The registry lists their models and has a model's objects copied to a local folder before it
//! loads, so every backend and the file-confinement rules see an ordinary model folder. The
//! object-store clients live in their own crate (`tritium-cloud-repository`), which implements
//! [`RemoteRepository`]; the server hands them in through `RepositoryOptions::remote`.

use std::collections::{BTreeSet, VecDeque};
use std::fmt;
use std::path::PathBuf;

use tritium_backend_api::error::WorkerError;
use tritium_repository::{self as repository, ModelSource};

use super::{ControlMode, ModelRepository};
use crate::ensemble::composing_models;

/// One model of a remote repository, as its listing shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RemoteModel {
    pub name: String,
    /// Changes when any of the model's objects changes (key, size, entity tag).
    pub fingerprint: u64,
}

/// A model's objects, copied into a local folder named after the model.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SyncedModel {
    pub dir: PathBuf,
    /// The fingerprint of the objects copied (as [`RemoteModel::fingerprint`] computes it).
    pub fingerprint: u64,
}

/// A model repository the registry reads through a local copy. Errors are sentences that name
/// the repository's location and never carry a credential.
pub trait RemoteRepository: Send + Sync + fmt::Debug {
    /// The repository as the operator wrote it (`s3://bucket/path`), for errors and logs.
    fn location(&self) -> &str;
    /// The models under the repository's path.
    fn list(&self) -> Result<Vec<RemoteModel>, String>;
    /// Copies model `name`'s objects into its own local folder (reusing an earlier copy of the
    /// same objects); `Ok(None)` when the repository has no such model.
    fn sync(&self, name: &str) -> Result<Option<SyncedModel>, String>;
    /// False while the repository's last listing failed: the server is then not ready.
    fn healthy(&self) -> bool;
}

impl ModelRepository {
    /// The models of the remote repositories, appended to `sources` (a name in two repositories
    /// is an error, as for folders). A repository that cannot be listed is logged and left out,
    /// so the others still serve. In explicit mode only the models asked for at start (and the
    /// models their ensembles are made of) are copied; the others are listed by name.
    pub(super) fn add_remote_sources(&self, sources: &mut Vec<ModelSource>) -> Result<(), WorkerError> {
        let options = &self.options;
        let copy_all = options.control_mode != ControlMode::Explicit || options.startup_models.iter().any(|m| m == "*");
        let wanted: Vec<String> = options.startup_models.clone();
        let mut remote_sources: Vec<ModelSource> = Vec::new();
        let mut listed: Vec<(usize, RemoteModel)> = Vec::new();
        for (index, remote) in options.remote.iter().enumerate() {
            match remote.list() {
                Ok(models) => listed.extend(models.into_iter().map(|m| (index, m))),
                Err(e) => tracing::error!("model repository {}: {e}", remote.location()),
            }
        }
        let mut seen = BTreeSet::new();
        for (_, model) in &listed {
            let clash = sources.iter().any(|s| s.name == model.name);
            if clash || !seen.insert(model.name.clone()) {
                return Err(WorkerError::LoadFailed {
                    name: model.name.clone(),
                    reason: "a model of that name is in more than one model repository".to_string(),
                });
            }
        }
        // Copied in the order they are wanted, so an ensemble's composing models join the queue.
        let mut queue: VecDeque<String> =
            if copy_all { listed.iter().map(|(_, m)| m.name.clone()).collect() } else { wanted.into() };
        let mut done = BTreeSet::new();
        while let Some(name) = queue.pop_front() {
            if !done.insert(name.clone()) {
                continue;
            }
            let Some((index, model)) = listed.iter().find(|(_, m)| m.name == name) else { continue };
            if let Some(source) = self.remote_source(&*options.remote[*index], model) {
                if let Ok(Some(config)) = source.config() {
                    queue.extend(composing_models(&config));
                }
                remote_sources.push(source);
            }
        }
        // Models not copied are listed by name (an explicit load copies them).
        for (_, model) in listed.iter().filter(|(_, m)| !done.contains(&m.name)) {
            remote_sources.push(unfetched(&model.name, model.fingerprint));
        }
        sources.extend(remote_sources);
        sources.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(())
    }

    /// One listed model as a source: unchanged and served, or failed before with these very
    /// objects, it is not copied again; a copy that fails is recorded as the model's load error.
    fn remote_source(&self, remote: &dyn RemoteRepository, model: &RemoteModel) -> Option<ModelSource> {
        let served = self.model(&model.name).map(|m| m.fingerprint);
        if served == Some(model.fingerprint) {
            return Some(unfetched(&model.name, model.fingerprint));
        }
        if self.lock_unserved().get(&model.name).and_then(|u| u.fingerprint) == Some(model.fingerprint) {
            return None;
        }
        match self.synced_source(remote, &model.name) {
            Ok(Some(source)) => Some(source),
            Ok(None) => None,
            Err(e) => {
                tracing::error!(model = %model.name, "{e}");
                if let Some(fingerprint) = served {
                    // A failed reload leaves the loaded model as it was.
                    return Some(unfetched(&model.name, fingerprint));
                }
                self.mark_unserved(&model.name, Vec::new(), e.to_string(), Some(model.fingerprint), true);
                None
            }
        }
    }

    /// The model of that name from the first remote repository that has it, copied.
    pub(super) fn find_remote_source(&self, name: &str) -> Result<Option<ModelSource>, WorkerError> {
        for remote in &self.options.remote {
            if let Some(source) = self.synced_source(&**remote, name)? {
                return Ok(Some(source));
            }
        }
        Ok(None)
    }

    fn synced_source(&self, remote: &dyn RemoteRepository, name: &str) -> Result<Option<ModelSource>, WorkerError> {
        if !repository::is_plain_name(name) {
            return Ok(None);
        }
        let failed = |reason: String| WorkerError::LoadFailed { name: name.to_string(), reason };
        let Some(synced) = remote.sync(name).map_err(failed)? else { return Ok(None) };
        let Some(parent) = synced.dir.parent().filter(|_| synced.dir.file_name().is_some_and(|n| n == name)) else {
            return Err(failed(format!("{}: the local copy is not a folder named after the model", remote.location())));
        };
        let source = repository::find_model(&[parent.to_path_buf()], name)?;
        Ok(source.map(|source| ModelSource { fingerprint: synced.fingerprint, ..source }))
    }

    /// Whether every remote repository's last listing succeeded.
    pub(super) fn remotes_healthy(&self) -> bool {
        self.options.remote.iter().all(|r| r.healthy())
    }
}

/// A remote model known by name only: not copied yet, or served and unchanged.
fn unfetched(name: &str, fingerprint: u64) -> ModelSource {
    ModelSource { name: name.to_string(), dir: PathBuf::new(), config_text: None, versions: Vec::new(), fingerprint }
}
