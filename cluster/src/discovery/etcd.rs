//! Discovery in etcd. Each worker is one key, `/{namespace}/workers/{id}`, holding its JSON
//! record and attached to a lease the registering process keeps alive. A process that dies stops
//! renewing, etcd deletes the key when the lease runs out, and watchers see the delete. A watch
//! on a namespace prefix covers `/{prefix}` and keeps the keys whose namespace starts with it.

use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use etcd_client::{Client, ConnectOptions, EventType, GetOptions, PutOptions, WatchOptions, WatchStream};
use tokio::sync::{Mutex, broadcast};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::health::PlaneHealth;

use super::{
    Discovery, DiscoveryError, DiscoveryEvent, MAX_DOCUMENT_BYTES, NamespaceScope, WorkerInstance, check_document, check_segment,
    check_ttl,
};

/// Events a watcher may fall behind by before it must list again.
const WATCH_BUFFER: usize = 256;
/// The longest any single etcd call may take; a balanced channel with no reachable endpoint
/// would otherwise wait forever.
const CALL_TIMEOUT: Duration = Duration::from_secs(5);
const BACKOFF_START: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(2);
/// HTTP/2 pings notice a dead connection under an idle watch. etcd refuses pings more often
/// than every 5 s by default, so stay well above that.
const PING_INTERVAL: Duration = Duration::from_secs(10);
const PING_TIMEOUT: Duration = Duration::from_secs(5);
/// Lease id meaning "no lease yet": etcd never grants 0.
const NO_LEASE: i64 = 0;

pub struct EtcdDiscovery {
    shared: Arc<Shared>,
    /// Stops the watch and every keep-alive; cancelled on drop.
    stop: CancellationToken,
}

struct Shared {
    client: Client,
    endpoints: String,
    /// `/{namespace}/workers/`, where this process's records go.
    prefix: String,
    /// The keys listed and watched: `prefix`, or `/{namespace prefix}`.
    watched: String,
    scope: NamespaceScope,
    ttl: Duration,
    events: broadcast::Sender<DiscoveryEvent>,
    registrations: Mutex<HashMap<String, Registration>>,
    /// Told when etcd refuses (or takes back) this process's credentials.
    health: PlaneHealth,
}

/// How this plane is named in health answers.
const PLANE: &str = "etcd (discovery)";

struct Registration {
    lease: Arc<Mutex<Lease>>,
    stop: CancellationToken,
}

/// The lease a record lives under, and the latest record, to put again under a new lease when
/// the old one is lost.
struct Lease {
    id: i64,
    ttl: Duration,
    record: WorkerInstance,
    /// Whether etcd holds `record` under `id`; if not, the keep-alive task puts it again.
    stored: bool,
}

/// A failed etcd call, with whether it failed because the lease no longer exists.
struct Failure {
    message: String,
    lease_not_found: bool,
}

impl From<Failure> for DiscoveryError {
    fn from(failure: Failure) -> DiscoveryError {
        DiscoveryError::Unavailable(failure.message)
    }
}

impl EtcdDiscovery {
    /// Connects to etcd and starts watching the scope's workers; fails if etcd does not answer.
    pub async fn connect(
        endpoints: &[String],
        scope: &NamespaceScope,
        lease_ttl: Duration,
    ) -> Result<EtcdDiscovery, DiscoveryError> {
        Self::connect_reporting(endpoints, scope, lease_ttl, PlaneHealth::default()).await
    }

    /// [`EtcdDiscovery::connect`], telling `health` when etcd refuses the process's credentials
    /// while running (checked on every call, and by a cheap read once per lease TTL, since a watch
    /// already open may outlive a revoked user).
    pub async fn connect_reporting(
        endpoints: &[String],
        scope: &NamespaceScope,
        lease_ttl: Duration,
        health: PlaneHealth,
    ) -> Result<EtcdDiscovery, DiscoveryError> {
        scope.check()?;
        check_ttl(lease_ttl)?;
        let joined = endpoints.join(",");
        if endpoints.is_empty() {
            return Err(DiscoveryError::Invalid { what: "etcd endpoints", value: joined, reason: "none given" });
        }
        let options = ConnectOptions::new()
            .with_connect_timeout(CALL_TIMEOUT)
            .with_keep_alive(PING_INTERVAL, PING_TIMEOUT)
            .with_keep_alive_while_idle(false);
        let (options, used) = crate::credentials::etcd_options_from_env(options)
            .map_err(|reason| DiscoveryError::Unavailable(format!("etcd at {joined}: {reason}")))?;
        let client = match tokio::time::timeout(CALL_TIMEOUT, Client::connect(endpoints, Some(options))).await {
            Ok(Ok(client)) => client,
            Ok(Err(e)) => return Err(DiscoveryError::Unavailable(format!("etcd at {joined}: connect: {e}{}", used.hint()))),
            Err(_) => return Err(DiscoveryError::Unavailable(format!("etcd at {joined}: connect: timed out"))),
        };
        let shared = Arc::new(Shared {
            client,
            endpoints: joined,
            prefix: format!("/{}/workers/", scope.own),
            watched: match &scope.watch_prefix {
                Some(prefix) => format!("/{prefix}"),
                None => format!("/{}/workers/", scope.own),
            },
            scope: scope.clone(),
            ttl: lease_ttl,
            events: broadcast::channel(WATCH_BUFFER).0,
            registrations: Mutex::new(HashMap::new()),
            health,
        });
        // Watching from the start means anyone who subscribes after `connect` misses nothing, and
        // doubles as the check that etcd answers (and takes the credentials: TLS ones are first
        // offered here, so a refusal names them).
        let stream = shared.open_watch().await.map_err(|e| match e {
            DiscoveryError::Unavailable(reason) => DiscoveryError::Unavailable(format!("{reason}{}", used.hint())),
            other => other,
        })?;
        let stop = CancellationToken::new();
        tokio::spawn(follow(Arc::clone(&shared), stream, stop.clone()));
        Ok(EtcdDiscovery { shared, stop })
    }
}

impl Drop for EtcdDiscovery {
    fn drop(&mut self) {
        // Registrations are not revoked: like a crash, their leases run out within the TTL.
        self.stop.cancel();
    }
}

impl fmt::Debug for EtcdDiscovery {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EtcdDiscovery")
            .field("endpoints", &self.shared.endpoints)
            .field("prefix", &self.shared.prefix)
            .field("watched", &self.shared.watched)
            .field("ttl", &self.shared.ttl)
            .finish_non_exhaustive()
    }
}

#[async_trait]
impl Discovery for EtcdDiscovery {
    /// Puts the record under this id's lease, granting one the first time. If etcd cannot be
    /// reached the error is returned but the registration is kept and retried in the background.
    async fn register(&self, instance: WorkerInstance) -> Result<(), DiscoveryError> {
        check_segment("worker id", &instance.id)?;
        let mut registrations = self.shared.registrations.lock().await;
        if let Some(registration) = registrations.get(&instance.id) {
            let mut lease = registration.lease.lock().await;
            lease.record = instance;
            lease.stored = false;
            return self.shared.put_record(&mut lease).await;
        }
        let id = instance.id.clone();
        let lease = Lease { id: NO_LEASE, ttl: self.shared.ttl, record: instance, stored: false };
        let lease = Arc::new(Mutex::new(lease));
        let result = self.shared.put_record(&mut *lease.lock().await).await;
        let stop = self.stop.child_token();
        tokio::spawn(keep_alive(Arc::clone(&self.shared), Arc::clone(&lease), stop.clone()));
        registrations.insert(id, Registration { lease, stop });
        result
    }

    async fn deregister(&self, id: &str) -> Result<(), DiscoveryError> {
        let Some(registration) = self.shared.registrations.lock().await.remove(id) else {
            return Ok(());
        };
        // Cancelled before taking the lease lock, so the keep-alive task, which checks after
        // taking it, cannot grant a new lease once we revoke.
        registration.stop.cancel();
        let lease = registration.lease.lock().await;
        if lease.id == NO_LEASE {
            return Ok(());
        }
        let mut client = self.shared.client.clone();
        match self.shared.call("revoke lease", client.lease_revoke(lease.id)).await {
            Ok(_) => Ok(()),
            Err(failure) if failure.lease_not_found => Ok(()),
            // Nothing renews the lease any more, so the record still goes within the TTL.
            Err(failure) => Err(failure.into()),
        }
    }

    async fn instances(&self) -> Result<Vec<WorkerInstance>, DiscoveryError> {
        let mut client = self.shared.client.clone();
        let listing = client.get(self.shared.watched.as_str(), Some(GetOptions::new().with_prefix()));
        let response = self.shared.call("list workers", listing).await?;
        Ok(response.kvs().iter().filter_map(|kv| self.shared.parse(kv.key(), kv.value())).collect())
    }

    /// Under `/{namespace}/documents/{name}`, with no lease: it outlives the process.
    async fn put_document(&self, name: &str, bytes: Vec<u8>) -> Result<(), DiscoveryError> {
        check_document(name, Some(&bytes))?;
        let mut client = self.shared.client.clone();
        let put = client.put(self.shared.document_key(name), bytes, None);
        self.shared.call("put document", put).await.map(drop).map_err(DiscoveryError::from)
    }

    async fn get_document(&self, name: &str) -> Result<Option<Vec<u8>>, DiscoveryError> {
        check_document(name, None)?;
        let mut client = self.shared.client.clone();
        let get = client.get(self.shared.document_key(name), None);
        let response = self.shared.call("get document", get).await.map_err(DiscoveryError::from)?;
        Ok(response.kvs().first().map(|kv| kv.value().to_vec()).filter(|v| v.len() <= MAX_DOCUMENT_BYTES))
    }

    async fn delete_document(&self, name: &str) -> Result<(), DiscoveryError> {
        check_document(name, None)?;
        let mut client = self.shared.client.clone();
        let delete = client.delete(self.shared.document_key(name), None);
        self.shared.call("delete document", delete).await.map(drop).map_err(DiscoveryError::from)
    }

    fn watch(&self) -> broadcast::Receiver<DiscoveryEvent> {
        self.shared.events.subscribe()
    }
}

impl Shared {
    /// Runs one etcd call under [`CALL_TIMEOUT`], naming the endpoints and what was tried on failure.
    async fn call<T>(&self, what: &str, call: impl Future<Output = Result<T, etcd_client::Error>>) -> Result<T, Failure> {
        let outcome = tokio::time::timeout(CALL_TIMEOUT, call).await;
        if let Ok(answered) = &outcome {
            self.health.etcd_outcome(PLANE, answered);
        }
        match outcome {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(e)) => {
                let lease_not_found = match &e {
                    etcd_client::Error::GRpcStatus(status) => status.code() == tonic::Code::NotFound,
                    // etcd-client's own word for a keep-alive answered with TTL 0.
                    etcd_client::Error::LeaseKeepAliveError(message) => message.contains("not found"),
                    _ => false,
                };
                Err(Failure { message: format!("etcd at {}: {what}: {e}", self.endpoints), lease_not_found })
            }
            Err(_) => Err(Failure {
                message: format!("etcd at {}: {what}: no answer within {CALL_TIMEOUT:?}", self.endpoints),
                lease_not_found: false,
            }),
        }
    }

    fn key(&self, id: &str) -> String {
        format!("{}{id}", self.prefix)
    }

    fn document_key(&self, name: &str) -> String {
        format!("/{}/documents/{name}", self.scope.own)
    }

    /// The worker id of a watched key `/{namespace}/workers/{id}`; `None` for other keys (another
    /// namespace past the prefix, or not a worker record).
    fn worker_id<'k>(&self, key: &'k str) -> Option<&'k str> {
        let (namespace, rest) = key.strip_prefix('/')?.split_once('/')?;
        let id = rest.strip_prefix("workers/")?;
        (self.scope.watches(namespace) && check_segment("worker id", id).is_ok()).then_some(id)
    }

    /// The record under `key`, if it is a watched worker key, well formed and matching its key.
    fn parse(&self, key: &[u8], value: &[u8]) -> Option<WorkerInstance> {
        let key = String::from_utf8_lossy(key);
        let id = self.worker_id(&key)?;
        match serde_json::from_slice::<WorkerInstance>(value) {
            Ok(instance) if instance.id == id => Some(instance),
            Ok(instance) => {
                tracing::warn!(%key, id = %instance.id, "skipping a worker record whose id does not match its key");
                None
            }
            Err(e) => {
                tracing::warn!(%key, "skipping a worker record that does not parse: {e}");
                None
            }
        }
    }

    /// Puts the latest record under its lease, replacing the lease first if etcd lost it.
    async fn put_record(&self, lease: &mut Lease) -> Result<(), DiscoveryError> {
        if lease.id == NO_LEASE {
            return self.replace_lease(lease).await;
        }
        match self.put(&lease.record, lease.id).await {
            Ok(()) => {
                lease.stored = true;
                Ok(())
            }
            Err(failure) if failure.lease_not_found => self.replace_lease(lease).await,
            Err(failure) => Err(failure.into()),
        }
    }

    async fn replace_lease(&self, lease: &mut Lease) -> Result<(), DiscoveryError> {
        // etcd leases are whole seconds.
        let seconds = self.ttl.as_secs() + u64::from(self.ttl.subsec_nanos() > 0);
        let mut client = self.client.clone();
        let granted = self.call("grant lease", client.lease_grant(seconds as i64, None)).await?;
        lease.id = granted.id();
        // etcd may raise a short TTL to its minimum.
        lease.ttl = Duration::from_secs(granted.ttl().max(1) as u64);
        lease.stored = false;
        self.put(&lease.record, lease.id).await?;
        lease.stored = true;
        Ok(())
    }

    async fn put(&self, record: &WorkerInstance, lease: i64) -> Result<(), Failure> {
        let value = match serde_json::to_vec(record) {
            Ok(value) => value,
            Err(e) => {
                return Err(Failure { message: format!("encoding worker {}: {e}", record.id), lease_not_found: false });
            }
        };
        let mut client = self.client.clone();
        let put = client.put(self.key(&record.id), value, Some(PutOptions::new().with_lease(lease)));
        self.call("put worker record", put).await.map(drop)
    }

    /// A watch on the prefix that etcd has confirmed it created.
    async fn open_watch(&self) -> Result<WatchStream, DiscoveryError> {
        let mut client = self.client.clone();
        let options = WatchOptions::new().with_prefix();
        let mut stream = self.call("watch workers", client.watch(self.watched.as_str(), Some(options))).await?;
        match self.call("watch workers", stream.message()).await? {
            Some(response) if response.created() && !response.canceled() => Ok(stream),
            Some(response) => Err(DiscoveryError::Unavailable(format!(
                "etcd at {}: watch workers: not created: {}",
                self.endpoints,
                response.cancel_reason()
            ))),
            None => Err(DiscoveryError::Unavailable(format!("etcd at {}: watch workers: stream closed", self.endpoints))),
        }
    }

    /// Turns watch responses into events until the stream breaks; returns why.
    async fn forward(&self, stream: &mut WatchStream) -> String {
        loop {
            let response = match stream.message().await {
                Ok(Some(response)) => response,
                Ok(None) => return "stream closed".to_string(),
                Err(e) => {
                    self.health.etcd_error(PLANE, &e);
                    return e.to_string();
                }
            };
            if response.canceled() {
                return format!("cancelled by etcd: {}", response.cancel_reason());
            }
            for event in response.events() {
                let Some(kv) = event.kv() else { continue };
                let event = match event.event_type() {
                    EventType::Put => match self.parse(kv.key(), kv.value()) {
                        Some(instance) => DiscoveryEvent::Up(instance),
                        None => continue,
                    },
                    EventType::Delete => {
                        let key = String::from_utf8_lossy(kv.key());
                        let Some(id) = self.worker_id(&key) else { continue };
                        DiscoveryEvent::Down { id: id.to_string() }
                    }
                };
                // No watcher is not an error.
                let _ = self.events.send(event);
            }
        }
    }
}

/// Keeps the one watch on the prefix running, re-opening it with backoff when it breaks and then
/// telling watchers to list again, since changes in between were not seen.
async fn follow(shared: Arc<Shared>, mut stream: WatchStream, stop: CancellationToken) {
    let checking = Arc::clone(&shared);
    let check_stop = stop.clone();
    tokio::spawn(async move {
        loop {
            tokio::select! {
                _ = check_stop.cancelled() => return,
                _ = tokio::time::sleep(checking.ttl) => {}
            }
            let mut client = checking.client.clone();
            let options = GetOptions::new().with_prefix().with_count_only();
            let _ = checking.call("check the credentials", client.get(checking.watched.as_str(), Some(options))).await;
        }
    });
    loop {
        let broke = tokio::select! {
            biased;
            _ = stop.cancelled() => return,
            broke = shared.forward(&mut stream) => broke,
        };
        tracing::warn!(endpoints = %shared.endpoints, "etcd watch broke ({broke}); reconnecting");
        let mut backoff = BACKOFF_START;
        stream = loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(backoff) => {}
            }
            backoff = (backoff * 2).min(BACKOFF_MAX);
            match shared.open_watch().await {
                Ok(stream) => break stream,
                Err(e) => tracing::debug!("re-opening the etcd watch failed: {e}"),
            }
        };
        tracing::info!(endpoints = %shared.endpoints, "etcd watch re-established");
        let _ = shared.events.send(DiscoveryEvent::Resync);
    }
}

/// How a keep-alive session ended.
enum Renewal {
    /// The lease is gone, or may be: replace it.
    Lost,
    /// The connection broke; the lease may still be alive.
    Broken(String),
    /// `register` replaced the lease; renew the new one.
    Replaced,
}

/// Keeps one registration's lease alive until `stop`. When the lease is lost (etcd answers TTL 0,
/// or nothing was renewed for a whole TTL) it grants a new one and puts the latest record again,
/// so a worker cut off from etcd comes back by itself.
async fn keep_alive(shared: Arc<Shared>, lease: Arc<Mutex<Lease>>, stop: CancellationToken) {
    let mut backoff = BACKOFF_START;
    let mut last_renewed = Instant::now();
    loop {
        let (id, ttl) = {
            let lease = lease.lock().await;
            (lease.id, lease.ttl)
        };
        let renewed_before = last_renewed;
        let renewal = tokio::select! {
            biased;
            _ = stop.cancelled() => return,
            renewal = renew(&shared, &lease, id, ttl, &mut last_renewed) => renewal,
        };
        if last_renewed != renewed_before {
            backoff = BACKOFF_START;
        }
        match renewal {
            Renewal::Replaced => continue,
            Renewal::Broken(why) if last_renewed.elapsed() < ttl => {
                tracing::debug!("keeping lease {id:x} alive failed: {why}");
            }
            Renewal::Lost | Renewal::Broken(_) => {
                let mut lease = lease.lock().await;
                if stop.is_cancelled() {
                    return;
                }
                if lease.id != id {
                    continue;
                }
                tracing::info!(worker = %lease.record.id, "etcd lease {id:x} lost; registering again");
                match shared.replace_lease(&mut lease).await {
                    Ok(()) => {
                        last_renewed = Instant::now();
                        backoff = BACKOFF_START;
                        continue;
                    }
                    Err(e) => tracing::warn!(worker = %lease.record.id, "registering again failed: {e}"),
                }
            }
        }
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(backoff) => {}
        }
        backoff = (backoff * 2).min(BACKOFF_MAX);
    }
}

/// One keep-alive stream for lease `id`, renewing every TTL/3 until something goes wrong.
async fn renew(shared: &Shared, lease: &Mutex<Lease>, id: i64, ttl: Duration, last_renewed: &mut Instant) -> Renewal {
    if id == NO_LEASE {
        return Renewal::Lost;
    }
    let mut client = shared.client.clone();
    let (mut keeper, mut responses) = match shared.call("keep lease alive", client.lease_keep_alive(id)).await {
        Ok(pair) => pair,
        Err(failure) if failure.lease_not_found => return Renewal::Lost,
        Err(failure) => return Renewal::Broken(failure.message),
    };
    *last_renewed = Instant::now();
    let mut tick = tokio::time::interval_at(Instant::now() + ttl / 3, ttl / 3);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {
                if last_renewed.elapsed() >= ttl {
                    return Renewal::Lost;
                }
                let mut lease = lease.lock().await;
                if lease.id != id {
                    return Renewal::Replaced;
                }
                if !lease.stored {
                    if let Err(e) = shared.put_record(&mut lease).await {
                        tracing::debug!(worker = %lease.record.id, "putting the record again failed: {e}");
                    }
                    if lease.id != id {
                        return Renewal::Replaced;
                    }
                }
                drop(lease);
                if let Err(e) = keeper.keep_alive().await {
                    return Renewal::Broken(e.to_string());
                }
            }
            response = responses.message() => match response {
                Ok(Some(response)) if response.ttl() > 0 => *last_renewed = Instant::now(),
                Ok(Some(_)) => return Renewal::Lost,
                Ok(None) => return Renewal::Broken("keep-alive stream closed".to_string()),
                Err(e) => return Renewal::Broken(e.to_string()),
            },
        }
    }
}
