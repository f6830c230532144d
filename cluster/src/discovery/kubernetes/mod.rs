//! Discovery through the Kubernetes API (`--discovery-backend kubernetes`), following Dynamo 1.x:
//! no etcd, no leases of our own.
//!
//! - A worker writes one `DynamoWorkerMetadata` object (`nvidia.com/v1alpha1`) named after its
//!   pod, owned by the pod so Kubernetes deletes it with the pod. Its `spec.data` holds the
//!   process's worker records under [`view::WORKERS_FIELD`], by `{namespace}/{id}`; every change
//!   rewrites it with a server-side apply.
//! - Frontends watch those objects and the EndpointSlices labelled for Dynamo discovery
//!   ([`SLICE_SELECTOR`]; Dynamo's operator labels the Service, Kubernetes copies the labels to
//!   its slices). A worker is up while its pod is ready there: a crashed worker is let go when its
//!   readiness probe fails (a gRPC probe on the worker port, which serves `grpc.health.v1`), not
//!   after a lease TTL, so `--lease-ttl-secs` plays no part.
//! - Shared documents (the routers' snapshot) are more such objects, `tritium-doc-…`, under
//!   the RBAC Dynamo's operator already grants (get, list, watch, patch, delete on them).
//!
//! kube's watcher does the list-then-watch protocol: resource versions, bookmarks, re-listing
//! after `410 Gone`, backing off while the API server is away.

mod view;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use parking_lot::Mutex;
use std::time::Duration;

use async_trait::async_trait;
use base64::Engine as _;
use futures::{Stream, StreamExt};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::{Api, ApiResource, DeleteParams, DynamicObject, GroupVersionKind, Patch, PatchParams};
use kube::runtime::WatchStreamExt;
use kube::runtime::watcher::{self, Event};
use serde_json::{Value, json};
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;

use super::{Discovery, DiscoveryError, DiscoveryEvent, NamespaceScope, WorkerInstance, check_document, check_segment};
use view::{Listed, View, WORKERS_FIELD};

const GROUP: &str = "nvidia.com";
const VERSION: &str = "v1alpha1";
const KIND: &str = "DynamoWorkerMetadata";
const PLURAL: &str = "dynamoworkermetadatas";
/// The EndpointSlices whose ready pods count (Dynamo's labels).
pub const SLICE_SELECTOR: &str = "nvidia.com/dynamo-discovery-backend=kubernetes,nvidia.com/dynamo-discovery-enabled=true";
/// Who owns the fields Tritium applies.
const FIELD_MANAGER: &str = "tritium";
/// Where a document object keeps its bytes.
const DOCUMENT_FIELD: &str = "tritium_document";
const WATCH_BUFFER: usize = 256;
/// How long `connect` waits for the first complete listing of both collections.
const FIRST_LIST_WITHIN: Duration = Duration::from_secs(10);
/// The longest any single API call may take.
const CALL_TIMEOUT: Duration = Duration::from_secs(10);
/// Retrying a failed registration write.
const RETRY_START: Duration = Duration::from_millis(500);
const RETRY_MAX: Duration = Duration::from_secs(10);

/// `--discovery-backend kubernetes`'s settings: the pod this process runs in (Dynamo's
/// `POD_NAME`, `POD_UID`, `POD_NAMESPACE`, from the Downward API).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KubernetesConfig {
    /// The Kubernetes namespace to register and watch in (default: the kubeconfig's, else the
    /// service account's).
    pub namespace: Option<String>,
    /// Needed to register a worker: its metadata object is named after the pod.
    pub pod_name: Option<String>,
    /// Makes the pod the object's owner, so deleting the pod deletes it.
    pub pod_uid: Option<String>,
}

pub struct KubeDiscovery {
    shared: Arc<Shared>,
    stop: CancellationToken,
}

struct Shared {
    objects: Api<DynamicObject>,
    kube_namespace: String,
    scope: NamespaceScope,
    config: KubernetesConfig,
    events: broadcast::Sender<DiscoveryEvent>,
    /// What the watchers have delivered, and the workers that were up after the last change.
    view: Mutex<(View, BTreeMap<String, WorkerInstance>)>,
    /// This process's records, by `{namespace}/{id}`: the whole of its object's `spec.data`.
    registered: tokio::sync::Mutex<BTreeMap<String, WorkerInstance>>,
    /// Whether the last write of `registered` failed, and the wake-up of the task retrying it.
    unpublished: AtomicBool,
    retry: tokio::sync::Notify,
}

impl std::fmt::Debug for KubeDiscovery {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KubeDiscovery")
            .field("namespace", &self.shared.kube_namespace)
            .field("scope", &self.shared.scope)
            .field("pod", &self.shared.config.pod_name)
            .finish_non_exhaustive()
    }
}

fn unavailable(what: &str, error: impl std::fmt::Display) -> DiscoveryError {
    DiscoveryError::Unavailable(format!("Kubernetes API: {what}: {error}"))
}

fn is_not_found(error: &kube::Error) -> bool {
    matches!(error, kube::Error::Api(response) if response.code == 404)
}

async fn call<T>(what: &str, call: impl Future<Output = Result<T, kube::Error>>) -> Result<T, DiscoveryError> {
    match tokio::time::timeout(CALL_TIMEOUT, call).await {
        Ok(result) => result.map_err(|e| unavailable(what, e)),
        Err(_) => Err(unavailable(what, format!("no answer within {CALL_TIMEOUT:?}"))),
    }
}

impl KubeDiscovery {
    /// Connects with the kubeconfig (`$KUBECONFIG`, `~/.kube/config`) or, inside a pod, its
    /// service account; returns once both collections are listed, so `instances` is complete.
    pub async fn connect(config: &KubernetesConfig, scope: &NamespaceScope) -> Result<KubeDiscovery, DiscoveryError> {
        scope.check()?;
        let kube_config = kube::Config::infer().await.map_err(|e| {
            unavailable(
                "no cluster to talk to (neither a kubeconfig in $KUBECONFIG or ~/.kube/config, nor a pod's service account)",
                e,
            )
        })?;
        let kube_namespace = config.namespace.clone().unwrap_or_else(|| kube_config.default_namespace.clone());
        let client = kube::Client::try_from(kube_config).map_err(|e| unavailable("building the client", e))?;
        let resource = ApiResource::from_gvk_with_plural(&GroupVersionKind::gvk(GROUP, VERSION, KIND), PLURAL);
        let objects = Api::<DynamicObject>::namespaced_with(client.clone(), &kube_namespace, &resource);
        let slices = Api::<EndpointSlice>::namespaced(client, &kube_namespace);
        let shared = Arc::new(Shared {
            objects: objects.clone(),
            kube_namespace,
            scope: scope.clone(),
            config: config.clone(),
            events: broadcast::channel(WATCH_BUFFER).0,
            view: Mutex::new(Default::default()),
            registered: tokio::sync::Mutex::new(BTreeMap::new()),
            unpublished: AtomicBool::new(false),
            retry: tokio::sync::Notify::new(),
        });
        let stop = CancellationToken::new();
        let (listed_tx, mut listed) = tokio::sync::mpsc::channel::<Result<&'static str, String>>(8);
        let metadata_stream = watcher(objects, watcher::Config::default());
        tokio::spawn(follow(Arc::clone(&shared), metadata_stream, Collection::Metadata, listed_tx.clone(), stop.clone()));
        let slice_stream = watcher(slices, watcher::Config::default().labels(SLICE_SELECTOR));
        tokio::spawn(follow(Arc::clone(&shared), slice_stream, Collection::Slices, listed_tx, stop.clone()));

        let mut pending = vec!["the DynamoWorkerMetadata objects", "the EndpointSlices"];
        let mut last_error = None;
        let deadline = tokio::time::Instant::now() + FIRST_LIST_WITHIN;
        while !pending.is_empty() {
            match tokio::time::timeout_at(deadline, listed.recv()).await {
                Ok(Some(Ok(done))) => pending.retain(|p| *p != done),
                Ok(Some(Err(error))) => last_error = Some(error),
                Ok(None) | Err(_) => {
                    stop.cancel();
                    let why = last_error.unwrap_or_else(|| format!("no answer within {FIRST_LIST_WITHIN:?}"));
                    return Err(unavailable(
                        &format!("listing {} in namespace {}", pending.join(" and "), shared.kube_namespace),
                        why,
                    ));
                }
            }
        }
        tokio::spawn(republish(Arc::clone(&shared), stop.clone()));
        tracing::info!(namespace = %shared.kube_namespace, "Kubernetes discovery listed workers and EndpointSlices");
        Ok(KubeDiscovery { shared, stop })
    }
}

impl KubeDiscovery {
    /// The instance id Dynamo gives the process of this pod: its name hashed as Dynamo 1.6.1
    /// hashes it (std's SipHash with zero keys, 53 bits so it survives a JSON number).
    pub fn dynamo_instance_id(&self) -> Result<u64, String> {
        use std::hash::{Hash, Hasher};
        let pod = self.shared.pod().map_err(|e| e.to_string())?;
        let mut hasher = std::hash::DefaultHasher::new();
        pod.hash(&mut hasher);
        Ok(hasher.finish() & 0x001F_FFFF_FFFF_FFFF)
    }

    /// Writes a Dynamo process's records (bucket, key, JSON) into this pod's metadata object,
    /// as a Dynamo worker does, owned by the pod.
    pub async fn apply_dynamo_records(&self, records: &[(&str, String, Vec<u8>)]) -> Result<(), String> {
        let mut data = serde_json::Map::new();
        for (_, field) in view::DYNAMO_FIELDS {
            data.insert(field.to_string(), json!({}));
        }
        data.insert("event_sources".into(), json!({}));
        for (bucket, key, bytes) in records {
            let field = view::DYNAMO_FIELDS
                .iter()
                .find(|(known, _)| known == bucket)
                .map(|(_, field)| *field)
                .ok_or_else(|| format!("no Kubernetes field holds Dynamo's bucket '{bucket}'"))?;
            let record: Value = serde_json::from_slice(bytes).map_err(|e| format!("a Dynamo record is not JSON: {e}"))?;
            if let Some(entries) = data.get_mut(field).and_then(Value::as_object_mut) {
                entries.insert(key.clone(), record);
            }
        }
        let pod = self.shared.pod().map_err(|e| e.to_string())?;
        self.shared.apply(pod, Value::Object(data), true).await.map_err(|e| e.to_string())
    }

    /// Removes this pod's metadata object (a clean shutdown).
    pub async fn remove_dynamo_records(&self) -> Result<(), String> {
        let pod = self.shared.pod().map_err(|e| e.to_string())?;
        self.shared.delete(pod).await.map_err(|e| e.to_string())
    }

    /// The records of Dynamo's `bucket` (`v1/instances`, `v1/mdc`, `v1/event_channels`) that
    /// Dynamo processes keep in their pods' metadata objects, while those pods are ready.
    pub fn dynamo_records(&self, bucket: &str) -> Vec<(String, Vec<u8>)> {
        self.shared.view.lock().0.dynamo_records(bucket)
    }
}

impl Drop for KubeDiscovery {
    fn drop(&mut self) {
        // Like a crash, the records stay: the pod's readiness (and its deletion) decides.
        self.stop.cancel();
    }
}

/// Writes this process's records again after a failed write, backing off, until one succeeds.
async fn republish(shared: Arc<Shared>, stop: CancellationToken) {
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            () = shared.retry.notified() => {}
        }
        let mut backoff = RETRY_START;
        while shared.unpublished.load(Ordering::Acquire) {
            tokio::select! {
                () = stop.cancelled() => return,
                () = tokio::time::sleep(backoff) => {}
            }
            let registered = shared.registered.lock().await;
            match shared.publish_or_retry(&registered).await {
                Ok(()) => tracing::info!("Kubernetes discovery: this process's workers are registered again"),
                Err(e) => tracing::warn!("Kubernetes discovery: registering again failed (retrying): {e}"),
            }
            backoff = (backoff * 2).min(RETRY_MAX);
        }
    }
}

/// A watcher's stream of events, retrying with kube's backoff.
fn watcher<K>(api: Api<K>, config: watcher::Config) -> impl Stream<Item = Result<Event<K>, watcher::Error>> + Send
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug + Send + 'static,
{
    watcher::watcher(api, config).default_backoff()
}

#[derive(Debug, Clone, Copy)]
enum Collection {
    Metadata,
    Slices,
}

impl Collection {
    fn name(self) -> &'static str {
        match self {
            Collection::Metadata => "the DynamoWorkerMetadata objects",
            Collection::Slices => "the EndpointSlices",
        }
    }
}

/// What one object contributes to the view.
enum Entry {
    Metadata(Option<Listed>),
    Slice(std::collections::HashSet<view::ReadyPod>),
}

trait Watched: kube::Resource + Clone + Send + 'static {
    fn entry(&self, scope: &NamespaceScope) -> Entry;
}

impl Watched for DynamicObject {
    fn entry(&self, scope: &NamespaceScope) -> Entry {
        Entry::Metadata(serde_json::to_value(self).ok().and_then(|value| view::listed(&value, scope)))
    }
}

impl Watched for EndpointSlice {
    fn entry(&self, _: &NamespaceScope) -> Entry {
        Entry::Slice(view::ready_pods(self))
    }
}

/// Applies one collection's events to the view until `stop`, announcing each complete listing
/// (and, until then, errors) on `listed`.
async fn follow<K: Watched>(
    shared: Arc<Shared>,
    stream: impl Stream<Item = Result<Event<K>, watcher::Error>> + Send,
    collection: Collection,
    listed: tokio::sync::mpsc::Sender<Result<&'static str, String>>,
    stop: CancellationToken,
) {
    let mut stream = std::pin::pin!(stream);
    // A re-listing is collected whole, then replaces what was known (objects missing from it
    // were deleted meanwhile).
    let mut relisting: Option<Vec<K>> = None;
    loop {
        let event = tokio::select! {
            () = stop.cancelled() => return,
            event = stream.next() => event,
        };
        let event = match event {
            None => return,
            Some(Ok(event)) => event,
            Some(Err(error)) => {
                let message = explain(collection, &error);
                tracing::warn!("Kubernetes discovery: {message}");
                let _ = listed.try_send(Err(message));
                continue;
            }
        };
        match event {
            Event::Init => relisting = Some(Vec::new()),
            Event::InitApply(object) => relisting.get_or_insert_with(Vec::new).push(object),
            Event::InitDone => {
                let objects = relisting.take().unwrap_or_default();
                shared.change(|view| {
                    match collection {
                        Collection::Metadata => view.metadata.clear(),
                        Collection::Slices => view.slices.clear(),
                    }
                    for object in &objects {
                        insert(view, object, &shared.scope);
                    }
                });
                let _ = listed.try_send(Ok(collection.name()));
            }
            Event::Apply(object) => shared.change(|view| insert(view, &object, &shared.scope)),
            Event::Delete(object) => shared.change(|view| {
                // Names are unique per kind only: a slice may share a metadata object's name.
                let name = object.meta().name.clone().unwrap_or_default();
                match collection {
                    Collection::Metadata => view.metadata.remove(&name).map(drop),
                    Collection::Slices => view.slices.remove(&name).map(drop),
                };
            }),
        }
    }
}

fn insert<K: Watched>(view: &mut View, object: &K, scope: &NamespaceScope) {
    let name = object.meta().name.clone().unwrap_or_default();
    match object.entry(scope) {
        Entry::Metadata(Some(listed)) => {
            view.metadata.insert(name, listed);
        }
        Entry::Metadata(None) => {
            view.metadata.remove(&name);
        }
        Entry::Slice(ready) => {
            view.slices.insert(name, ready);
        }
    }
}

/// A watcher error, with what to do about the usual ones.
fn explain(collection: Collection, error: &watcher::Error) -> String {
    let text = error.to_string();
    let hint = match collection {
        Collection::Metadata if text.contains("404") => {
            " (is the DynamoWorkerMetadata CRD installed? deploy/kubernetes-discovery/crd.yaml defines it)"
        }
        _ if text.contains("403") => {
            " (the service account needs get, list and watch on it: deploy/kubernetes-discovery/rbac.yaml)"
        }
        _ => "",
    };
    format!("watching {}: {text}{hint}", collection.name())
}

impl Shared {
    /// Applies `change` to the view and announces the workers it brought up or down.
    fn change(&self, change: impl FnOnce(&mut View)) {
        let mut guard = self.view.lock();
        let (view, up_before) = &mut *guard;
        change(view);
        let up_after = view.up();
        let (up, down) = view::changes(up_before, &up_after);
        *up_before = up_after;
        drop(guard);
        for instance in up {
            let _ = self.events.send(DiscoveryEvent::Up(instance));
        }
        for id in down {
            let _ = self.events.send(DiscoveryEvent::Down { id });
        }
    }

    fn pod(&self) -> Result<&str, DiscoveryError> {
        self.config.pod_name.as_deref().ok_or_else(|| DiscoveryError::Invalid {
            what: "POD_NAME",
            value: String::new(),
            reason: "must name this pod (set it from the Downward API, with POD_UID and POD_NAMESPACE): a worker \
                     registers in a DynamoWorkerMetadata object named after its pod",
        })
    }

    /// Writes this process's object as `data` says, owned by its pod when the uid is known.
    async fn apply(&self, name: &str, data: Value, owned_by_pod: bool) -> Result<(), DiscoveryError> {
        let mut metadata = json!({"name": name, "namespace": self.kube_namespace});
        if let (true, Some(pod), Some(uid)) = (owned_by_pod, &self.config.pod_name, &self.config.pod_uid) {
            metadata["ownerReferences"] = json!([{
                "apiVersion": "v1", "kind": "Pod", "name": pod, "uid": uid, "controller": false, "blockOwnerDeletion": false,
            }]);
        }
        let object =
            json!({"apiVersion": format!("{GROUP}/{VERSION}"), "kind": KIND, "metadata": metadata, "spec": {"data": data}});
        let params = PatchParams::apply(FIELD_MANAGER).force();
        call(&format!("writing {KIND} {name}"), self.objects.patch(name, &params, &Patch::Apply(&object))).await.map(drop)
    }

    async fn delete(&self, name: &str) -> Result<(), DiscoveryError> {
        match tokio::time::timeout(CALL_TIMEOUT, self.objects.delete(name, &DeleteParams::default())).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) if is_not_found(&e) => Ok(()),
            Ok(Err(e)) => Err(unavailable(&format!("deleting {KIND} {name}"), e)),
            Err(_) => Err(unavailable(&format!("deleting {KIND} {name}"), format!("no answer within {CALL_TIMEOUT:?}"))),
        }
    }

    /// Writes the records in `registered` (deleting the object once none is left).
    async fn publish(&self, registered: &BTreeMap<String, WorkerInstance>) -> Result<(), DiscoveryError> {
        let pod = self.pod()?;
        if registered.is_empty() {
            return self.delete(pod).await;
        }
        let records: serde_json::Map<String, Value> = registered
            .iter()
            .map(|(key, instance)| Ok((key.clone(), serde_json::to_value(instance).map_err(|e| unavailable("encoding", e))?)))
            .collect::<Result<_, DiscoveryError>>()?;
        self.apply(pod, json!({ WORKERS_FIELD: records }), true).await
    }

    /// [`Shared::publish`]; on failure the retry task takes over.
    async fn publish_or_retry(&self, registered: &BTreeMap<String, WorkerInstance>) -> Result<(), DiscoveryError> {
        let published = self.publish(registered).await;
        self.unpublished.store(published.is_err(), Ordering::Release);
        if published.is_err() {
            self.retry.notify_one();
        }
        published
    }

    /// The object a document of this namespace lives in: a valid Kubernetes name, distinct per
    /// (namespace, document).
    fn document_object(&self, name: &str) -> String {
        document_object_name(&self.scope.own, name)
    }
}

/// `tritium-doc-{readable part}-{hash}`: lowercase letters, digits and dashes, at most 63 bytes.
fn document_object_name(namespace: &str, name: &str) -> String {
    let readable: String = format!("{namespace}-{name}")
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c.to_ascii_lowercase() } else { '-' })
        .take(32)
        .collect();
    // FNV-1a: the name must not change between builds or processes (std's hasher may).
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in namespace.bytes().chain([0]).chain(name.bytes()) {
        hash = (hash ^ u64::from(byte)).wrapping_mul(0x0000_0100_0000_01b3);
    }
    format!("tritium-doc-{}-{hash:016x}", readable.trim_matches('-'))
}

#[async_trait]
impl Discovery for KubeDiscovery {
    /// A write that fails is retried in the background until it succeeds (or the next change).
    async fn register(&self, instance: WorkerInstance) -> Result<(), DiscoveryError> {
        check_segment("worker id", &instance.id)?;
        self.shared.pod()?;
        let key = format!("{}/{}", self.shared.scope.own, instance.id);
        let mut registered = self.shared.registered.lock().await;
        registered.insert(key, instance);
        self.shared.publish_or_retry(&registered).await
    }

    async fn deregister(&self, id: &str) -> Result<(), DiscoveryError> {
        let key = format!("{}/{}", self.shared.scope.own, id);
        let mut registered = self.shared.registered.lock().await;
        if registered.remove(&key).is_none() {
            return Ok(());
        }
        self.shared.publish_or_retry(&registered).await
    }

    async fn instances(&self) -> Result<Vec<WorkerInstance>, DiscoveryError> {
        Ok(self.shared.view.lock().1.values().cloned().collect())
    }

    fn watch(&self) -> broadcast::Receiver<DiscoveryEvent> {
        self.shared.events.subscribe()
    }

    async fn put_document(&self, name: &str, bytes: Vec<u8>) -> Result<(), DiscoveryError> {
        check_document(name, Some(&bytes))?;
        let object = self.shared.document_object(name);
        let data = json!({ DOCUMENT_FIELD: {
            "namespace": self.shared.scope.own,
            "name": name,
            "base64": base64::engine::general_purpose::STANDARD.encode(&bytes),
        }});
        self.shared.apply(&object, data, false).await
    }

    async fn get_document(&self, name: &str) -> Result<Option<Vec<u8>>, DiscoveryError> {
        check_document(name, None)?;
        let object_name = self.shared.document_object(name);
        let Some(object) = call(&format!("reading {KIND} {object_name}"), self.shared.objects.get_opt(&object_name)).await?
        else {
            return Ok(None);
        };
        let document = object.data.get("spec").and_then(|s| s.get("data")).and_then(|d| d.get(DOCUMENT_FIELD));
        let encoded = document.and_then(|d| d.get("base64")).and_then(Value::as_str).ok_or_else(|| {
            DiscoveryError::Unavailable(format!("{KIND} {object_name} holds no document (someone else's object?)"))
        })?;
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(encoded)
            .map_err(|e| DiscoveryError::Unavailable(format!("{KIND} {object_name}: the document does not decode: {e}")))?;
        check_document(name, Some(&bytes))?;
        Ok(Some(bytes))
    }

    async fn delete_document(&self, name: &str) -> Result<(), DiscoveryError> {
        check_document(name, None)?;
        self.shared.delete(&self.shared.document_object(name)).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn document_objects_have_valid_distinct_stable_names() {
        let a = document_object_name("prod", "router-kv-index");
        assert_eq!(a, document_object_name("prod", "router-kv-index"));
        assert_ne!(a, document_object_name("prod-router", "kv-index"), "the separator is part of the hash");
        assert!(a.starts_with("tritium-doc-prod-router-kv-index-"), "{a}");
        let long = document_object_name(&"Ü".repeat(100), &"x.Y_z".repeat(100));
        for name in [&a, &long] {
            assert!(name.len() <= 63, "{name}");
            assert!(name.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-'), "{name}");
        }
    }
}
