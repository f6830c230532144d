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
    /// is an error, as for folders). A repository that cannot be listed is logged and adds
    /// nothing new (what it served stays), so the others still serve. In explicit and on-demand
    /// mode only the models asked for at start or pinned (and the models their ensembles are made
    /// of) are copied; the others are listed by name and copied when they load.
    pub(super) fn add_remote_sources(&self, sources: &mut Vec<ModelSource>) -> Result<(), WorkerError> {
        let options = &self.options;
        let lazy = matches!(options.control_mode, ControlMode::Explicit | ControlMode::OnDemand);
        let copy_all = !lazy || options.startup_models.iter().any(|m| m == "*");
        let mut wanted: Vec<String> = options.startup_models.clone();
        wanted.extend(options.on_demand.pinned.iter().cloned());
        let mut remote_sources: Vec<ModelSource> = Vec::new();
        let mut listed: Vec<(usize, RemoteModel)> = Vec::new();
        let mut unlisted = false;
        for (index, remote) in options.remote.iter().enumerate() {
            match remote.list() {
                Ok(models) => listed.extend(models.into_iter().map(|m| (index, m))),
                Err(e) => {
                    tracing::error!("model repository {}: {e}", remote.location());
                    unlisted = true;
                }
            }
        }
        if unlisted {
            // A repository that cannot be listed now (a network failure) keeps its models: what
            // is served and listed nowhere else stays as it is, unchanged for poll.
            for model in self.local_models() {
                let elsewhere = sources.iter().any(|s| s.name == model.name) || listed.iter().any(|(_, m)| m.name == model.name);
                if !elsewhere {
                    remote_sources.push(unfetched(&model.name, model.fingerprint));
                }
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
        if self.unserved.lock().get(&model.name).and_then(|u| u.fingerprint) == Some(model.fingerprint) {
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

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};

    use parking_lot::Mutex;

    use super::*;
    use crate::registry::{ModelState, RepositoryOptions};

    const IDENTITY: &str = "backend: \"identity\"\nmax_batch_size: 0\n\
        input [ { name: \"INPUT0\", data_type: TYPE_FP32, dims: [ -1 ] } ]\n\
        output [ { name: \"OUTPUT0\", data_type: TYPE_FP32, dims: [ -1 ] } ]\n";

    /// An in-memory object store: each model is its versions (or the error its copy fails with).
    #[derive(Debug, Default)]
    struct Fake {
        models: Mutex<BTreeMap<String, Result<Vec<i64>, String>>>,
        list_error: Mutex<Option<String>>,
        healthy: AtomicBool,
        root: Option<tempfile::TempDir>,
    }

    impl Fake {
        fn new(models: &[(&str, Result<Vec<i64>, String>)]) -> Arc<Fake> {
            let fake = Fake { root: Some(tempfile::tempdir().unwrap()), healthy: AtomicBool::new(true), ..Fake::default() };
            fake.models.lock().extend(models.iter().map(|(n, v)| (n.to_string(), v.clone())));
            Arc::new(fake)
        }

        fn fingerprint(versions: &Result<Vec<i64>, String>) -> u64 {
            match versions {
                Ok(v) => v.iter().map(|v| *v as u64 + 1).product::<u64>() + v.len() as u64,
                Err(e) => e.len() as u64 + 1000,
            }
        }
    }

    impl RemoteRepository for Fake {
        fn location(&self) -> &str {
            "fake://bucket/models"
        }

        fn list(&self) -> Result<Vec<RemoteModel>, String> {
            let error = self.list_error.lock().clone();
            self.healthy.store(error.is_none(), Ordering::Relaxed);
            if let Some(error) = error {
                return Err(error);
            }
            let models = self.models.lock();
            Ok(models.iter().map(|(name, v)| RemoteModel { name: name.clone(), fingerprint: Fake::fingerprint(v) }).collect())
        }

        fn sync(&self, name: &str) -> Result<Option<SyncedModel>, String> {
            let Some(versions) = self.models.lock().get(name).cloned() else { return Ok(None) };
            let fingerprint = Fake::fingerprint(&versions);
            let versions = versions.map_err(|e| format!("fake://bucket/models: {e}"))?;
            let dir = self.root.as_ref().unwrap().path().join(name).join(fingerprint.to_string()).join(name);
            for version in &versions {
                std::fs::create_dir_all(dir.join(version.to_string())).unwrap();
            }
            std::fs::write(dir.join("config.pbtxt"), IDENTITY).unwrap();
            Ok(Some(SyncedModel { dir, fingerprint }))
        }

        fn healthy(&self) -> bool {
            self.healthy.load(Ordering::Relaxed)
        }
    }

    fn open(fake: &Arc<Fake>, control_mode: ControlMode, startup: &[&str]) -> Arc<ModelRepository> {
        let options = RepositoryOptions {
            remote: vec![Arc::clone(fake) as Arc<dyn RemoteRepository>],
            control_mode,
            startup_models: startup.iter().map(|s| s.to_string()).collect(),
            ..RepositoryOptions::default()
        };
        ModelRepository::open(options, crate::builtin_backends()).unwrap()
    }

    fn state(repository: &ModelRepository, name: &str) -> Vec<(Option<i64>, Option<ModelState>, String)> {
        let rows = repository.index(false).unwrap().into_iter().filter(|r| r.name == name);
        rows.map(|r| (r.version, r.state, r.reason)).collect()
    }

    #[test]
    fn none_mode_loads_the_copies_and_reports_failed_ones() {
        let fake = Fake::new(&[("good", Ok(vec![1])), ("bad", Err("object 'x' is too large".into()))]);
        let repository = open(&fake, ControlMode::None, &[]);
        assert!(repository.is_ready("good", Some(1)));
        let bad = state(&repository, "bad");
        assert_eq!(bad.len(), 1, "{bad:?}");
        assert_eq!(bad[0].1, Some(ModelState::Unavailable));
        assert!(bad[0].2.contains("fake://bucket/models: object 'x' is too large"), "{bad:?}");
        assert!(!repository.all_ready(), "a model the server was asked to serve failed");
        assert!(repository.model("builtin").is_none() && repository.model("identity").is_none(), "no built-ins");
    }

    #[test]
    fn poll_follows_changes_and_a_failed_listing_keeps_what_is_served() {
        let fake = Fake::new(&[("changing", Ok(vec![1])), ("leaving", Ok(vec![1]))]);
        let repository = open(&fake, ControlMode::Poll, &[]);
        assert!(repository.is_ready("changing", Some(1)) && repository.is_ready("leaving", None));
        {
            let mut models = fake.models.lock();
            models.insert("changing".into(), Ok(vec![1, 2]));
            models.remove("leaving");
            models.insert("arriving".into(), Ok(vec![3]));
        }
        repository.poll().unwrap();
        assert!(repository.is_ready("changing", Some(2)) && !repository.is_ready("changing", Some(1)));
        assert!(repository.is_ready("arriving", Some(3)) && !repository.is_ready("leaving", None));
        assert!(repository.all_ready());
        *fake.list_error.lock() = Some("the endpoint is unreachable".into());
        repository.poll().unwrap();
        assert!(!repository.all_ready(), "a repository that cannot be listed makes the server not ready");
        assert!(repository.is_ready("changing", Some(2)) && repository.is_ready("arriving", None), "and keeps its models");
        *fake.list_error.lock() = None;
        repository.poll().unwrap();
        assert!(repository.all_ready() && repository.is_ready("changing", Some(2)));
    }

    #[test]
    fn explicit_mode_copies_at_load() {
        let fake = Fake::new(&[("first", Ok(vec![1])), ("second", Ok(vec![1]))]);
        let repository = open(&fake, ControlMode::Explicit, &["first"]);
        assert!(repository.is_ready("first", None) && !repository.is_ready("second", None));
        let root = fake.root.as_ref().unwrap().path();
        assert!(root.join("first").exists() && !root.join("second").exists(), "only what is loaded is copied");
        assert_eq!(state(&repository, "second"), vec![(None, None, String::new())]);
        repository.load("second", None).unwrap();
        assert!(repository.is_ready("second", Some(1)));
        repository.unload("second").unwrap();
        assert!(!repository.is_ready("second", None));
        assert!(repository.load("absent", None).is_err());
    }

    #[tokio::test]
    async fn on_demand_mode_copies_pinned_models_at_start_and_the_others_at_first_use() {
        let fake = Fake::new(&[("pinned", Ok(vec![1])), ("later", Ok(vec![1])), ("never", Ok(vec![1]))]);
        let options = RepositoryOptions {
            remote: vec![Arc::clone(&fake) as Arc<dyn RemoteRepository>],
            control_mode: ControlMode::OnDemand,
            on_demand: crate::registry::on_demand::OnDemandOptions {
                max_loaded_models: Some(2),
                pinned: vec!["pinned".into()],
                ..Default::default()
            },
            ..RepositoryOptions::default()
        };
        let repository = ModelRepository::open(options, crate::builtin_backends()).unwrap();
        let root = fake.root.as_ref().unwrap().path();
        assert!(repository.is_ready("pinned", None));
        assert!(!root.join("later").exists() && !root.join("never").exists(), "nothing else is copied at start");
        let names: Vec<String> = repository.index(false).unwrap().into_iter().map(|r| r.name).collect();
        assert!(names.contains(&"later".to_string()) && names.contains(&"never".to_string()), "{names:?}");
        let held = repository.ensure_loaded("later", std::time::Duration::from_secs(30)).await.unwrap();
        assert!(held.is_some() && repository.is_ready("later", Some(1)));
        assert!(root.join("later").exists() && !root.join("never").exists());
    }
}
