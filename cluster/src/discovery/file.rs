//! Discovery through a shared folder, for several processes on one machine and no service to run.
//! Each worker is a file `{dir}/{namespace}/{id}.json` that its process rewrites every TTL/3; a
//! file not rewritten for a whole TTL belongs to a process that died and is ignored. Watchers
//! poll the folder (with a namespace prefix, every namespace folder starting with it) and diff
//! what they see.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::io::ErrorKind;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Once};
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use tokio::sync::{Mutex, broadcast};
use tokio_util::sync::CancellationToken;

use super::{
    Discovery, DiscoveryError, DiscoveryEvent, MAX_DOCUMENT_BYTES, NamespaceScope, WorkerInstance, check_document, check_segment,
    check_ttl,
};

/// Events a watcher may fall behind by before it must list again.
const WATCH_BUFFER: usize = 256;
const POLL_MIN: Duration = Duration::from_millis(50);
const POLL_MAX: Duration = Duration::from_millis(500);
const RECORD_SUFFIX: &str = ".json";

/// Makes temporary file names unique within this process.
static TEMP_COUNTER: AtomicU64 = AtomicU64::new(0);

#[derive(Debug)]
pub struct FileDiscovery {
    shared: Arc<Shared>,
    poll_started: Once,
    /// Stops the poller and every refresher; cancelled on drop.
    stop: CancellationToken,
}

#[derive(Debug)]
struct Shared {
    /// Holds one folder per namespace.
    dir: PathBuf,
    /// `{dir}/{namespace}`, where this process's records go.
    folder: PathBuf,
    scope: NamespaceScope,
    ttl: Duration,
    events: broadcast::Sender<DiscoveryEvent>,
    /// This process's workers, by id. Held while writing or removing their files, so a refresher
    /// cannot bring back a file that `deregister` just removed.
    registrations: Mutex<HashMap<String, Registration>>,
}

#[derive(Debug)]
struct Registration {
    record: WorkerInstance,
    stop: CancellationToken,
}

/// The live records in the folder, and the files that could not be read as one.
struct Listing {
    live: BTreeMap<String, WorkerInstance>,
    unreadable: Vec<(PathBuf, String)>,
}

impl FileDiscovery {
    /// Records go in `{dir}/{namespace}/`, created on first registration.
    pub fn new(dir: PathBuf, scope: &NamespaceScope, lease_ttl: Duration) -> Result<FileDiscovery, DiscoveryError> {
        scope.check()?;
        check_ttl(lease_ttl)?;
        let shared = Shared {
            folder: dir.join(&scope.own),
            dir,
            scope: scope.clone(),
            ttl: lease_ttl,
            events: broadcast::channel(WATCH_BUFFER).0,
            registrations: Mutex::new(HashMap::new()),
        };
        Ok(FileDiscovery { shared: Arc::new(shared), poll_started: Once::new(), stop: CancellationToken::new() })
    }
}

impl Drop for FileDiscovery {
    fn drop(&mut self) {
        // Files are left behind, as after a crash; they go stale within the TTL.
        self.stop.cancel();
    }
}

#[async_trait]
impl Discovery for FileDiscovery {
    /// Writes the record. If that fails the error is returned, but the registration is kept and
    /// the refresher keeps trying.
    async fn register(&self, instance: WorkerInstance) -> Result<(), DiscoveryError> {
        check_segment("worker id", &instance.id)?;
        let mut registrations = self.shared.registrations.lock().await;
        let result = self.shared.write(&instance).await;
        match registrations.get_mut(&instance.id) {
            Some(registration) => registration.record = instance,
            None => {
                let stop = self.stop.child_token();
                let id = instance.id.clone();
                tokio::spawn(refresh(Arc::clone(&self.shared), id.clone(), stop.clone()));
                registrations.insert(id, Registration { record: instance, stop });
            }
        }
        result
    }

    async fn deregister(&self, id: &str) -> Result<(), DiscoveryError> {
        let mut registrations = self.shared.registrations.lock().await;
        let Some(registration) = registrations.remove(id) else { return Ok(()) };
        registration.stop.cancel();
        let path = self.shared.path(id);
        match tokio::fs::remove_file(&path).await {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(()),
            Err(e) => Err(unavailable(&path, "remove", e)),
        }
    }

    async fn instances(&self) -> Result<Vec<WorkerInstance>, DiscoveryError> {
        let listing = self.shared.list().await?;
        for (path, why) in &listing.unreadable {
            tracing::warn!(path = %path.display(), "skipping a worker record: {why}");
        }
        Ok(listing.live.into_values().collect())
    }

    /// `{dir}/{namespace}/{name}.document`, written beside and renamed over, as records are.
    async fn put_document(&self, name: &str, bytes: Vec<u8>) -> Result<(), DiscoveryError> {
        check_document(name, Some(&bytes))?;
        let folder = &self.shared.folder;
        tokio::fs::create_dir_all(folder).await.map_err(|e| unavailable(folder, "create", e))?;
        let n = TEMP_COUNTER.fetch_add(1, Ordering::Relaxed);
        let temp = folder.join(format!(".{name}.{}.{n}.tmp", std::process::id()));
        if let Err(e) = tokio::fs::write(&temp, &bytes).await {
            let _ = tokio::fs::remove_file(&temp).await;
            return Err(unavailable(&temp, "write", e));
        }
        let path = self.shared.document_path(name);
        if let Err(e) = tokio::fs::rename(&temp, &path).await {
            let _ = tokio::fs::remove_file(&temp).await;
            return Err(unavailable(&path, "rename onto", e));
        }
        Ok(())
    }

    async fn get_document(&self, name: &str) -> Result<Option<Vec<u8>>, DiscoveryError> {
        check_document(name, None)?;
        let path = self.shared.document_path(name);
        match tokio::fs::metadata(&path).await {
            Ok(meta) if meta.len() > MAX_DOCUMENT_BYTES as u64 => {
                return Err(DiscoveryError::Unavailable(format!("{} is over {MAX_DOCUMENT_BYTES} bytes", path.display())));
            }
            Ok(_) => {}
            Err(e) if e.kind() == ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(unavailable(&path, "read", e)),
        }
        match tokio::fs::read(&path).await {
            Ok(bytes) => Ok(Some(bytes)),
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(None),
            Err(e) => Err(unavailable(&path, "read", e)),
        }
    }

    async fn delete_document(&self, name: &str) -> Result<(), DiscoveryError> {
        check_document(name, None)?;
        let path = self.shared.document_path(name);
        match tokio::fs::remove_file(&path).await {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(()),
            Err(e) => Err(unavailable(&path, "remove", e)),
        }
    }

    fn watch(&self) -> broadcast::Receiver<DiscoveryEvent> {
        let receiver = self.shared.events.subscribe();
        self.poll_started.call_once(|| match tokio::runtime::Handle::try_current() {
            Ok(runtime) => drop(runtime.spawn(poll(Arc::clone(&self.shared), self.stop.clone()))),
            Err(_) => tracing::error!("FileDiscovery::watch called outside a tokio runtime; no events will come"),
        });
        receiver
    }
}

fn unavailable(path: &Path, what: &str, e: std::io::Error) -> DiscoveryError {
    DiscoveryError::Unavailable(format!("{what} {}: {e}", path.display()))
}

impl Shared {
    fn path(&self, id: &str) -> PathBuf {
        self.folder.join(format!("{id}{RECORD_SUFFIX}"))
    }

    fn document_path(&self, name: &str) -> PathBuf {
        self.folder.join(format!("{name}.document"))
    }

    /// Writes the record to a temporary file beside it, then renames it over the old one, so
    /// readers see the old record or the new one, never half of one.
    async fn write(&self, record: &WorkerInstance) -> Result<(), DiscoveryError> {
        let json =
            serde_json::to_vec(record).map_err(|e| DiscoveryError::Unavailable(format!("encoding worker {}: {e}", record.id)))?;
        tokio::fs::create_dir_all(&self.folder).await.map_err(|e| unavailable(&self.folder, "create", e))?;
        let n = TEMP_COUNTER.fetch_add(1, Ordering::Relaxed);
        // A leading dot keeps listings from taking it for a record.
        let temp = self.folder.join(format!(".{}.{}.{n}.tmp", record.id, std::process::id()));
        if let Err(e) = tokio::fs::write(&temp, &json).await {
            let _ = tokio::fs::remove_file(&temp).await;
            return Err(unavailable(&temp, "write", e));
        }
        let path = self.path(&record.id);
        if let Err(e) = tokio::fs::rename(&temp, &path).await {
            let _ = tokio::fs::remove_file(&temp).await;
            return Err(unavailable(&path, "rename onto", e));
        }
        Ok(())
    }

    /// Every record of the watched namespaces rewritten within the TTL.
    async fn list(&self) -> Result<Listing, DiscoveryError> {
        let mut listing = Listing { live: BTreeMap::new(), unreadable: Vec::new() };
        if self.scope.watch_prefix.is_none() {
            self.list_folder(&self.folder, &mut listing).await?;
            return Ok(listing);
        }
        let mut namespaces = match tokio::fs::read_dir(&self.dir).await {
            Ok(entries) => entries,
            Err(e) if e.kind() == ErrorKind::NotFound => return Ok(listing),
            Err(e) => return Err(unavailable(&self.dir, "list", e)),
        };
        while let Some(entry) = namespaces.next_entry().await.map_err(|e| unavailable(&self.dir, "list", e))? {
            let name = entry.file_name();
            let Some(namespace) = name.to_str() else { continue };
            if check_segment("namespace", namespace).is_ok() && self.scope.watches(namespace) {
                self.list_folder(&entry.path(), &mut listing).await?;
            }
        }
        Ok(listing)
    }

    /// Adds the records in one namespace's folder to `listing`.
    async fn list_folder(&self, folder: &Path, listing: &mut Listing) -> Result<(), DiscoveryError> {
        let mut entries = match tokio::fs::read_dir(folder).await {
            Ok(entries) => entries,
            // Nobody has registered yet, or the namespace's last worker just left.
            Err(e) if matches!(e.kind(), ErrorKind::NotFound | ErrorKind::NotADirectory) => return Ok(()),
            Err(e) => return Err(unavailable(folder, "list", e)),
        };
        let now = SystemTime::now();
        while let Some(entry) = entries.next_entry().await.map_err(|e| unavailable(folder, "list", e))? {
            let name = entry.file_name();
            let Some(id) = name.to_str().and_then(|name| name.strip_suffix(RECORD_SUFFIX)) else { continue };
            if check_segment("worker id", id).is_err() {
                continue;
            }
            let path = entry.path();
            // Files may vanish between listing and reading: their worker just left.
            let modified = match entry.metadata().await.and_then(|metadata| metadata.modified()) {
                Ok(modified) => modified,
                Err(e) if e.kind() == ErrorKind::NotFound => continue,
                Err(e) => {
                    listing.unreadable.push((path, e.to_string()));
                    continue;
                }
            };
            // A clock step can put the time of writing in the future; count that as fresh.
            if now.duration_since(modified).is_ok_and(|age| age > self.ttl) {
                continue;
            }
            let bytes = match tokio::fs::read(&path).await {
                Ok(bytes) => bytes,
                Err(e) if e.kind() == ErrorKind::NotFound => continue,
                Err(e) => {
                    listing.unreadable.push((path, e.to_string()));
                    continue;
                }
            };
            match serde_json::from_slice::<WorkerInstance>(&bytes) {
                Ok(instance) if instance.id == id => {
                    listing.live.insert(instance.id.clone(), instance);
                }
                Ok(instance) => listing.unreadable.push((path, format!("holds worker {:?}", instance.id))),
                Err(e) => listing.unreadable.push((path, e.to_string())),
            }
        }
        Ok(())
    }
}

/// Rewrites one worker's file every TTL/3 until `stop`. Rewriting rather than touching the
/// modification time also brings the file back if something removed it.
async fn refresh(shared: Arc<Shared>, id: String, stop: CancellationToken) {
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(shared.ttl / 3) => {}
        }
        let registrations = shared.registrations.lock().await;
        if stop.is_cancelled() {
            return;
        }
        let Some(registration) = registrations.get(&id) else { return };
        if let Err(e) = shared.write(&registration.record).await {
            tracing::warn!(worker = %id, "refreshing the worker record failed: {e}");
        }
    }
}

/// Lists the folder every min(TTL/4, 500 ms) (at least every 50 ms) and sends what changed.
/// It starts from nothing, so the first pass announces every live worker as `Up`.
async fn poll(shared: Arc<Shared>, stop: CancellationToken) {
    let period = (shared.ttl / 4).clamp(POLL_MIN, POLL_MAX);
    let mut tick = tokio::time::interval(period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut known: BTreeMap<String, WorkerInstance> = BTreeMap::new();
    let mut warned: HashSet<PathBuf> = HashSet::new();
    let mut failing = false;
    loop {
        tokio::select! {
            biased;
            _ = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        let listing = match shared.list().await {
            Ok(listing) => listing,
            Err(e) => {
                if !failing {
                    tracing::warn!("polling worker records failed: {e}");
                }
                failing = true;
                continue;
            }
        };
        failing = false;
        // Warn once per bad file, not on every pass.
        let unreadable: HashSet<PathBuf> = listing.unreadable.iter().map(|(path, _)| path.clone()).collect();
        for (path, why) in &listing.unreadable {
            if !warned.contains(path) {
                tracing::warn!(path = %path.display(), "skipping a worker record: {why}");
            }
        }
        warned = unreadable;
        for id in known.keys().filter(|id| !listing.live.contains_key(*id)) {
            let _ = shared.events.send(DiscoveryEvent::Down { id: id.clone() });
        }
        for (id, instance) in &listing.live {
            if known.get(id) != Some(instance) {
                let _ = shared.events.send(DiscoveryEvent::Up(instance.clone()));
            }
        }
        known = listing.live;
    }
}
