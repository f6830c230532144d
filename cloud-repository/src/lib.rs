//! Model repositories in object stores: `--model-repository s3://bucket/path` (and
//! `s3://http://HOST:PORT/bucket/path` for S3-compatible servers), `gs://bucket/path` and
//! `as://account/container/path`, in Triton's forms, with the credentials Triton and the cloud
//! SDKs read ([`credentials`]).
//!
//! A model is copied into a local cache folder before it loads ([`sync`]), so the registry, every
//! backend and the file-confinement rules see an ordinary model folder. [`CloudRepository`]
//! implements the registry's [`RemoteRepository`]; its calls block the caller (the registry's
//! lifecycle is synchronous) while the requests run on a small runtime of this crate's own.
//!
//! ```no_run
//! use tritium_cloud_repository::{CloudEnvironment, CloudOptions, open_repositories};
//! let repositories = open_repositories(
//!     &["s3://http://127.0.0.1:9000/models/repo".to_string()],
//!     &CloudOptions::default(),
//!     &CloudEnvironment::from_process(),
//! )
//! .expect("a well-formed location");
//! for model in repositories[0].list().unwrap_or_default() {
//!     println!("{}", model.name);
//! }
//! ```

pub mod credentials;
mod gcs;
pub mod location;
mod store;
pub mod sync;

use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use parking_lot::Mutex;
use tritium_worker::{RemoteModel, RemoteRepository, SyncedModel};

pub use credentials::CloudEnvironment;
pub use location::{Location, LocationError, is_url};
pub use sync::Limits;

/// The cache folder and the bounds of every cloud repository.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CloudOptions {
    /// Where models are copied; `None`: a private (0700) temporary folder removed at exit.
    pub cache_dir: Option<PathBuf>,
    /// Bounds of one model's copy.
    pub limits: Limits,
}

impl Default for CloudOptions {
    fn default() -> Self {
        CloudOptions { cache_dir: None, limits: Limits { max_bytes: 64 << 30, max_objects: 10_000 } }
    }
}

/// Opens every location (the order of `--model-repository`). A malformed location or an unusable
/// cache folder is an error; missing credentials are not (the repository then fails to list, with
/// that reason, and the others serve).
pub fn open_repositories(
    urls: &[String],
    options: &CloudOptions,
    env: &CloudEnvironment,
) -> Result<Vec<Arc<dyn RemoteRepository>>, String> {
    let locations = urls.iter().map(|u| location::parse(u)).collect::<Result<Vec<_>, _>>().map_err(|e| e.to_string())?;
    if locations.is_empty() {
        return Ok(Vec::new());
    }
    let cache = Arc::new(Cache::new(options.cache_dir.as_deref())?);
    let io = Arc::new(Io::new()?);
    let mut repositories: Vec<Arc<dyn RemoteRepository>> = Vec::with_capacity(locations.len());
    for (index, location) in locations.into_iter().enumerate() {
        let client = store::connect(&location, env).map_err(|e| format!("{location}: {e}"));
        let root = cache.path().join(format!("repository-{index}"));
        repositories.push(Arc::new(CloudRepository {
            location,
            client,
            root,
            limits: options.limits,
            io: Arc::clone(&io),
            healthy: AtomicBool::new(true),
            _cache: Arc::clone(&cache),
        }));
    }
    Ok(repositories)
}

/// One repository in an object store.
pub struct CloudRepository {
    location: Location,
    /// The client, or why there is none (missing credentials): the error every call returns.
    client: Result<store::Client, String>,
    /// This repository's part of the cache folder.
    root: PathBuf,
    limits: Limits,
    io: Arc<Io>,
    healthy: AtomicBool,
    _cache: Arc<Cache>,
}

impl std::fmt::Debug for CloudRepository {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The client holds credentials: only the location is shown.
        f.debug_struct("CloudRepository").field("location", &self.location.url).field("root", &self.root).finish()
    }
}

impl CloudRepository {
    fn client(&self) -> Result<&store::Client, String> {
        self.client.as_ref().map_err(Clone::clone)
    }

    fn fail(&self, what: &str, error: &object_store::Error, secrets: &[String]) -> String {
        format!("{}: {what}: {}", self.location, store::describe(error, secrets))
    }

    fn model_prefix(&self, name: &str) -> String {
        if self.location.prefix.is_empty() { name.to_string() } else { format!("{}/{name}", self.location.prefix) }
    }

    /// The model's objects, checked against the bounds.
    async fn entries(
        objects: &store::Objects,
        prefix: String,
        limits: Limits,
    ) -> Result<Result<Vec<sync::Entry>, String>, object_store::Error> {
        let listed = objects.list(&prefix).await?;
        Ok(sync::entries(&prefix, listed, limits))
    }
}

impl RemoteRepository for CloudRepository {
    fn location(&self) -> &str {
        &self.location.url
    }

    fn list(&self) -> Result<Vec<RemoteModel>, String> {
        let result = self.list_models();
        self.healthy.store(result.is_ok(), Ordering::Relaxed);
        result
    }

    fn sync(&self, name: &str) -> Result<Option<SyncedModel>, String> {
        let client = self.client()?;
        let (objects, secrets) = (client.objects.clone(), client.secrets.clone());
        let prefix = self.model_prefix(name);
        let (limits, model_root, model) = (self.limits, self.root.join(name), name.to_string());
        let copied = self.io.run(async move {
            let entries = match Self::entries(&objects, prefix, limits).await {
                Ok(Ok(entries)) => entries,
                Ok(Err(reason)) => return Ok(Err(reason)),
                Err(e) => return Err(("listing the model's objects", e)),
            };
            if entries.is_empty() {
                return Ok(Ok(None));
            }
            let fingerprint = sync::fingerprint(&entries);
            match sync::copy_model(&objects, &model_root, &model, &entries, limits).await {
                Ok(dir) => Ok(Ok(Some(SyncedModel { dir, fingerprint }))),
                Err(reason) => Ok(Err(reason)),
            }
        })?;
        match copied {
            Ok(Ok(synced)) => Ok(synced),
            Ok(Err(reason)) => Err(format!("copying model '{name}' from {}: {}", self.location, store::scrub(&reason, &secrets))),
            Err((what, e)) => Err(self.fail(what, &e, &secrets)),
        }
    }

    fn healthy(&self) -> bool {
        self.healthy.load(Ordering::Relaxed)
    }
}

impl CloudRepository {
    /// The model folders directly under the location, each with the fingerprint of its objects
    /// (a model whose objects cannot be listed or break a bound gets a fingerprint of its error,
    /// so its load fails with that error, once).
    fn list_models(&self) -> Result<Vec<RemoteModel>, String> {
        let client = self.client()?;
        let (objects, secrets) = (client.objects.clone(), client.secrets.clone());
        let location = self.location.prefix.clone();
        let limits = self.limits;
        let listed = self.io.run(async move {
            let mut models = Vec::new();
            for folder in objects.folders(&location).await? {
                let Some(name) = folder.filename().filter(|n| plain_name(n)).map(str::to_string) else { continue };
                let prefix = if location.is_empty() { name.clone() } else { format!("{location}/{name}") };
                let fingerprint = match Self::entries(&objects, prefix, limits).await {
                    Ok(Ok(entries)) => sync::fingerprint(&entries),
                    Ok(Err(reason)) => text_fingerprint(&reason),
                    Err(e) => text_fingerprint(&e.to_string()),
                };
                models.push(RemoteModel { name, fingerprint });
            }
            Ok::<_, object_store::Error>(models)
        })?;
        listed.map_err(|e| self.fail("listing the repository", &e, &secrets))
    }
}

fn text_fingerprint(text: &str) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    text.hash(&mut hasher);
    hasher.finish()
}

/// A model folder's name: one plain, visible path component.
fn plain_name(name: &str) -> bool {
    !name.is_empty() && !name.starts_with('.') && !name.contains(['/', '\\', '\0']) && name != ".."
}

/// The cache folder: the operator's (created 0700 if missing, kept) or a private temporary one
/// (removed when the last repository goes, at exit).
enum Cache {
    Given(PathBuf),
    Temporary(tempfile::TempDir),
}

impl Cache {
    fn new(given: Option<&Path>) -> Result<Cache, String> {
        let failed = |what: &str, e: std::io::Error| format!("--cloud-cache-dir: {what}: {e}");
        match given {
            Some(dir) => {
                let mut builder = std::fs::DirBuilder::new();
                builder.recursive(true);
                #[cfg(unix)]
                std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
                builder.create(dir).map_err(|e| failed(&dir.display().to_string(), e))?;
                Ok(Cache::Given(dir.to_path_buf()))
            }
            None => {
                let mut builder = tempfile::Builder::new();
                builder.prefix("tritium-cloud-");
                // Owner only: the copies may be private models.
                #[cfg(unix)]
                builder.permissions(std::os::unix::fs::PermissionsExt::from_mode(0o700));
                builder.tempdir().map(Cache::Temporary).map_err(|e| failed("a temporary folder", e))
            }
        }
    }

    fn path(&self) -> &Path {
        match self {
            Cache::Given(dir) => dir,
            Cache::Temporary(dir) => dir.path(),
        }
    }
}

/// The runtime the object-store requests run on. The registry calls from plain threads and from
/// inside the server's runtime alike, so a call hands its future over and waits on a channel
/// (never `block_on` inside a runtime).
struct Io {
    runtime: Mutex<Option<tokio::runtime::Runtime>>,
    handle: tokio::runtime::Handle,
}

impl Io {
    fn new() -> Result<Io, String> {
        // reqwest's rustls takes the process's provider: ring, as the rest of the server.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("tritium-cloud")
            .enable_all()
            .build()
            .map_err(|e| format!("the object-store client's runtime: {e}"))?;
        let handle = runtime.handle().clone();
        Ok(Io { runtime: Mutex::new(Some(runtime)), handle })
    }

    fn run<T: Send + 'static>(&self, future: impl Future<Output = T> + Send + 'static) -> Result<T, String> {
        let (done, wait) = std::sync::mpsc::sync_channel(1);
        self.handle.spawn(async move {
            let _ = done.send(future.await);
        });
        wait.recv().map_err(|_| "the object-store client stopped".to_string())
    }
}

impl Drop for Io {
    fn drop(&mut self) {
        // Dropped wherever the last repository goes, possibly inside another runtime.
        if let Some(runtime) = self.runtime.lock().take() {
            runtime.shutdown_background();
        }
    }
}
