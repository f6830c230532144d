//! What Kubernetes discovery knows, and which workers are up: the pure part, from the objects
//! the watchers deliver. A worker is up when a DynamoWorkerMetadata object lists it and its pod
//! is ready in one of the labelled EndpointSlices (Dynamo's rule: readiness comes from the pod's
//! probe, presence from the metadata object).

use std::collections::{BTreeMap, HashMap, HashSet};

use serde_json::Value;

use super::super::{NamespaceScope, WorkerInstance};

/// Where a metadata object keeps Tritium's worker records, by `{namespace}/{worker id}`.
pub(super) const WORKERS_FIELD: &str = "tritium_workers";

/// Where a Dynamo process's metadata object keeps the records of each of Dynamo's buckets
/// (`spec.data.{field}`, by the record's key), as Dynamo 1.6.1 writes them.
pub(crate) const DYNAMO_FIELDS: [(&str, &str); 3] =
    [("v1/instances", "endpoints"), ("v1/mdc", "model_cards"), ("v1/event_channels", "event_channels")];

/// The workers one metadata object lists, and the pod they run in; for a Dynamo process's
/// object, its records by bucket (key, the record as JSON bytes).
#[derive(Debug, Clone, PartialEq)]
pub(super) struct Listed {
    pub pod: String,
    /// The owning pod's uid, when the object names one: a pod of the same name made later (a
    /// StatefulSet's replacement) is another pod, whose readiness does not make these records live.
    pub pod_uid: Option<String>,
    pub workers: Vec<(String, WorkerInstance)>,
    pub dynamo: Vec<(&'static str, String, Vec<u8>)>,
}

/// The pod a metadata object belongs to (its owning Pod, else its own name, as Dynamo names it)
/// and its worker records in the watched namespaces; `None` for an object without any (another
/// program's, or a shared document).
pub(super) fn listed(object: &Value, scope: &NamespaceScope) -> Option<Listed> {
    let metadata = object.get("metadata")?;
    let name = metadata.get("name")?.as_str()?;
    let owner_ref = metadata
        .get("ownerReferences")
        .and_then(Value::as_array)
        .and_then(|owners| owners.iter().find(|o| o.get("kind").and_then(Value::as_str) == Some("Pod")));
    let owner = owner_ref.and_then(|o| o.get("name")?.as_str());
    let pod_uid = owner_ref.and_then(|o| o.get("uid")?.as_str()).map(str::to_owned);
    let data = object.get("spec")?.get("data")?;
    let dynamo = dynamo_records(name, data);
    let records = match data.get(WORKERS_FIELD).and_then(Value::as_object) {
        Some(records) => records,
        None if dynamo.is_empty() => return None,
        None => &serde_json::Map::new(),
    };
    let mut workers = Vec::new();
    for (key, record) in records {
        let Some((namespace, _)) = key.split_once('/') else { continue };
        if !scope.watches(namespace) {
            continue;
        }
        match serde_json::from_value::<WorkerInstance>(record.clone()) {
            Ok(instance) => workers.push((namespace.to_string(), instance)),
            Err(e) => tracing::warn!(object = name, key, "a worker record that does not parse is skipped: {e}"),
        }
    }
    Some(Listed { pod: owner.unwrap_or(name).to_string(), pod_uid, workers, dynamo })
}

/// A Dynamo process's records in its object's `spec.data`, each at most a store record's bound
/// (the namespace is the Dynamo view's to filter: the key starts with it).
fn dynamo_records(object: &str, data: &Value) -> Vec<(&'static str, String, Vec<u8>)> {
    let mut records = Vec::new();
    for (bucket, field) in DYNAMO_FIELDS {
        let Some(entries) = data.get(field).and_then(Value::as_object) else { continue };
        for (key, record) in entries.iter().take(super::super::dynamo_target::MAX_RECORDS) {
            match serde_json::to_vec(record) {
                Ok(bytes) if bytes.len() as u64 <= super::super::dynamo_target::MAX_RECORD_BYTES => {
                    records.push((bucket, key.clone(), bytes));
                }
                _ => tracing::warn!(object, key, "a Dynamo record over the size a record may have is skipped"),
            }
        }
    }
    records
}

/// A ready pod: its name, and its uid when the slice gives it.
pub(super) type ReadyPod = (String, Option<String>);

/// The pods an EndpointSlice says are ready.
pub(super) fn ready_pods(slice: &k8s_openapi::api::discovery::v1::EndpointSlice) -> HashSet<ReadyPod> {
    slice
        .endpoints
        .iter()
        .filter(|endpoint| endpoint.conditions.as_ref().and_then(|c| c.ready).unwrap_or(false))
        .filter_map(|endpoint| endpoint.target_ref.as_ref())
        .filter(|target| target.kind.as_deref().is_none_or(|kind| kind == "Pod"))
        .filter_map(|target| Some((target.name.clone()?, target.uid.clone())))
        .collect()
}

/// Both watched collections, by object name.
#[derive(Debug, Default)]
pub(super) struct View {
    pub metadata: HashMap<String, Listed>,
    pub slices: HashMap<String, HashSet<ReadyPod>>,
}

impl View {
    /// Whether the pod that owns `listed` is ready in some slice (the same pod, when both sides
    /// give its uid).
    fn ready(&self, listed: &Listed) -> bool {
        self.slices.values().flatten().any(|(name, uid)| {
            *name == listed.pod && (uid.is_none() || listed.pod_uid.is_none() || *uid == listed.pod_uid)
        })
    }
}

impl View {
    /// The workers up now, by id.
    pub fn up(&self) -> BTreeMap<String, WorkerInstance> {
        let mut up = BTreeMap::new();
        for listed in self.metadata.values() {
            if !self.ready(listed) {
                continue;
            }
            for (_, instance) in &listed.workers {
                up.insert(instance.id.clone(), instance.clone());
            }
        }
        up
    }
}

impl View {
    /// The Dynamo records of `bucket` whose pods are ready now, as (key, bytes).
    pub fn dynamo_records(&self, bucket: &str) -> Vec<(String, Vec<u8>)> {
        self.metadata
            .values()
            .filter(|listed| self.ready(listed))
            .flat_map(|listed| listed.dynamo.iter())
            .filter(|(of, _, _)| *of == bucket)
            .map(|(_, key, bytes)| (key.clone(), bytes.clone()))
            .collect()
    }
}

/// What changed from `before` to `after`: workers that appeared or changed, then ids that left.
pub(super) fn changes(
    before: &BTreeMap<String, WorkerInstance>,
    after: &BTreeMap<String, WorkerInstance>,
) -> (Vec<WorkerInstance>, Vec<String>) {
    let up = after.iter().filter(|(id, instance)| before.get(*id) != Some(*instance)).map(|(_, i)| i.clone()).collect();
    let down = before.keys().filter(|id| !after.contains_key(*id)).cloned().collect();
    (up, down)
}

#[cfg(test)]
mod tests {
    use k8s_openapi::api::core::v1::ObjectReference;
    use k8s_openapi::api::discovery::v1::{Endpoint, EndpointConditions, EndpointSlice};
    use serde_json::json;

    use super::*;
    use crate::discovery::WorkerAddress;

    fn worker(id: &str) -> WorkerInstance {
        WorkerInstance {
            id: id.into(),
            address: WorkerAddress::Grpc(format!("http://{id}:8011")),
            models: vec!["m".into()],
            mode: Default::default(),
            events: None,
            device: Default::default(),
        }
    }

    fn object(name: &str, owner: Option<&str>, workers: &[(&str, &WorkerInstance)]) -> Value {
        let records: serde_json::Map<String, Value> =
            workers.iter().map(|(key, w)| (key.to_string(), serde_json::to_value(w).expect("a record encodes"))).collect();
        let owners: Vec<Value> =
            owner.iter().map(|pod| json!({"apiVersion": "v1", "kind": "Pod", "name": pod, "uid": "u"})).collect();
        json!({"metadata": {"name": name, "ownerReferences": owners}, "spec": {"data": {WORKERS_FIELD: records}}})
    }

    fn slice(ready: &[(&str, bool)]) -> EndpointSlice {
        EndpointSlice {
            endpoints: ready
                .iter()
                .map(|(pod, ready)| Endpoint {
                    conditions: Some(EndpointConditions { ready: Some(*ready), ..Default::default() }),
                    target_ref: Some(ObjectReference {
                        kind: Some("Pod".into()),
                        name: Some(pod.to_string()),
                        ..Default::default()
                    }),
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        }
    }

    #[test]
    fn a_worker_is_up_when_listed_and_its_pod_ready() {
        let scope = NamespaceScope::own("prod");
        let (a, b, other) = (worker("a"), worker("b"), worker("c"));
        let mut view = View::default();
        let listed_a =
            listed(&object("pod-a", Some("pod-a"), &[("prod/a", &a), ("staging/c", &other)]), &scope).expect("records listed");
        assert_eq!(listed_a.workers, vec![("prod".to_string(), a.clone())], "another namespace's record is not watched");
        view.metadata.insert("pod-a".into(), listed_a);
        view.metadata.insert("pod-b".into(), listed(&object("pod-b", None, &[("prod/b", &b)]), &scope).expect("records listed"));
        assert!(view.up().is_empty(), "no pod is ready yet");
        view.slices.insert("s1".into(), ready_pods(&slice(&[("pod-a", true), ("pod-b", false)])));
        assert_eq!(view.up().keys().collect::<Vec<_>>(), ["a"]);
        view.slices.insert("s2".into(), ready_pods(&slice(&[("pod-b", true)])));
        assert_eq!(view.up().keys().collect::<Vec<_>>(), ["a", "b"], "readiness in any slice counts");
        view.metadata.remove("pod-a");
        assert_eq!(view.up().keys().collect::<Vec<_>>(), ["b"], "no metadata, not up");
    }

    #[test]
    fn objects_without_records_and_bad_records_are_skipped() {
        let scope = NamespaceScope { own: "prod".into(), watch_prefix: Some(String::new()) };
        assert_eq!(listed(&json!({"metadata": {"name": "doc"}, "spec": {"data": {"tritium_document": {}}}}), &scope), None);
        let bad = json!({"metadata": {"name": "p"}, "spec": {"data": {WORKERS_FIELD: {"prod/x": {"id": 3}, "nokey": {}}}}});
        assert_eq!(listed(&bad, &scope).expect("records listed").workers, vec![]);
    }

    #[test]
    fn a_dynamo_processs_records_are_listed_by_bucket_while_its_pod_is_ready() {
        let scope = NamespaceScope::own("prod");
        let data = json!({"endpoints": {"ns/c/e/1f": {"type": "Endpoint"}}, "model_cards": {"ns/c/e/1f": {"type": "Model"}},
                          "event_channels": {}, "event_sources": {}});
        let object = json!({"metadata": {"name": "pod-d", "ownerReferences": [{"kind": "Pod", "name": "pod-d"}]}, "spec": {"data": data}});
        let listed_d = listed(&object, &scope).expect("a Dynamo process's object is listed");
        assert!(listed_d.workers.is_empty());
        let mut view = View::default();
        view.metadata.insert("pod-d".into(), listed_d);
        assert!(view.dynamo_records("v1/instances").is_empty(), "its pod is not ready yet");
        view.slices.insert("s".into(), ready_pods(&slice(&[("pod-d", true)])));
        let endpoints = view.dynamo_records("v1/instances");
        assert_eq!(endpoints.len(), 1);
        assert_eq!(endpoints[0].0, "ns/c/e/1f");
        assert_eq!(serde_json::from_slice::<Value>(&endpoints[0].1).expect("JSON"), json!({"type": "Endpoint"}));
        assert_eq!(view.dynamo_records("v1/mdc").len(), 1);
        assert!(view.dynamo_records("v1/event_channels").is_empty());
        assert!(view.up().is_empty(), "no Tritium worker in it");
    }

    #[test]
    fn records_of_an_earlier_pod_of_the_same_name_are_not_live() {
        let scope = NamespaceScope::own("prod");
        let object = |uid: &str| json!({"metadata": {"name": "pod-s", "ownerReferences": [{"kind": "Pod", "name": "pod-s", "uid": uid}]},
                                         "spec": {"data": {"endpoints": {"ns/c/e/1": {}}}}});
        let mut view = View::default();
        view.metadata.insert("pod-s".into(), listed(&object("uid-old"), &scope).expect("listed"));
        let mut ready = slice(&[("pod-s", true)]);
        ready.endpoints[0].target_ref.as_mut().expect("a target").uid = Some("uid-new".into());
        view.slices.insert("s".into(), ready_pods(&ready));
        assert!(view.dynamo_records("v1/instances").is_empty(), "the ready pod is another one");
        view.metadata.insert("pod-s".into(), listed(&object("uid-new"), &scope).expect("listed"));
        assert_eq!(view.dynamo_records("v1/instances").len(), 1);
    }

    #[test]
    fn changes_name_new_changed_and_gone_workers() {
        let before: BTreeMap<_, _> = [("a".to_string(), worker("a")), ("b".to_string(), worker("b"))].into();
        let mut moved = worker("b");
        moved.models.push("n".into());
        let after: BTreeMap<_, _> = [("b".to_string(), moved.clone()), ("c".to_string(), worker("c"))].into();
        let (up, down) = changes(&before, &after);
        assert_eq!(up, vec![moved, worker("c")]);
        assert_eq!(down, vec!["a".to_string()]);
    }
}
