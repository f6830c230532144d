//! What Kubernetes discovery knows, and which workers are up: the pure part, from the objects
//! the watchers deliver. A worker is up when a DynamoWorkerMetadata object lists it and its pod
//! is ready in one of the labelled EndpointSlices (Dynamo's rule: readiness comes from the pod's
//! probe, presence from the metadata object).

use std::collections::{BTreeMap, HashMap, HashSet};

use serde_json::Value;

use super::super::{NamespaceScope, WorkerInstance};

/// Where a metadata object keeps Tritium's worker records, by `{namespace}/{worker id}`.
pub(super) const WORKERS_FIELD: &str = "tritium_workers";

/// The workers one metadata object lists, and the pod they run in.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct Listed {
    pub pod: String,
    pub workers: Vec<(String, WorkerInstance)>,
}

/// The pod a metadata object belongs to (its owning Pod, else its own name, as Dynamo names it)
/// and its worker records in the watched namespaces; `None` for an object without any (another
/// program's, or a shared document).
pub(super) fn listed(object: &Value, scope: &NamespaceScope) -> Option<Listed> {
    let metadata = object.get("metadata")?;
    let name = metadata.get("name")?.as_str()?;
    let owner = metadata
        .get("ownerReferences")
        .and_then(Value::as_array)
        .and_then(|owners| owners.iter().find(|o| o.get("kind").and_then(Value::as_str) == Some("Pod"))?.get("name")?.as_str());
    let records = object.get("spec")?.get("data")?.get(WORKERS_FIELD)?.as_object()?;
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
    Some(Listed { pod: owner.unwrap_or(name).to_string(), workers })
}

/// The pods an EndpointSlice says are ready.
pub(super) fn ready_pods(slice: &k8s_openapi::api::discovery::v1::EndpointSlice) -> HashSet<String> {
    slice
        .endpoints
        .iter()
        .filter(|endpoint| endpoint.conditions.as_ref().and_then(|c| c.ready).unwrap_or(false))
        .filter_map(|endpoint| endpoint.target_ref.as_ref())
        .filter(|target| target.kind.as_deref().is_none_or(|kind| kind == "Pod"))
        .filter_map(|target| target.name.clone())
        .collect()
}

/// Both watched collections, by object name.
#[derive(Debug, Default)]
pub(super) struct View {
    pub metadata: HashMap<String, Listed>,
    pub slices: HashMap<String, HashSet<String>>,
}

impl View {
    /// The workers up now, by id.
    pub fn up(&self) -> BTreeMap<String, WorkerInstance> {
        let ready: HashSet<&str> = self.slices.values().flatten().map(String::as_str).collect();
        let mut up = BTreeMap::new();
        for listed in self.metadata.values() {
            if !ready.contains(listed.pod.as_str()) {
                continue;
            }
            for (_, instance) in &listed.workers {
                up.insert(instance.id.clone(), instance.clone());
            }
        }
        up
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
