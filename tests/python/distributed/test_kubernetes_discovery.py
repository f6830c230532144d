"""`--discovery-backend kubernetes` against a fake API server (fake_kube.py; no real cluster runs
here): workers write DynamoWorkerMetadata objects owned by their pods, frontends follow them and
the EndpointSlices' readiness, as Dynamo 1.x does."""

from __future__ import annotations

import openai
import pytest

from cluster import listed_models, wait_until, workers_serving
from dynamo_cluster import NVEXT_WORKER, worker_of
from fake_kube import FakeKube
from helpers import finish_server, start_failure, start_server, start_worker

pytestmark = pytest.mark.kubernetes  # every test runs fake_kube.py's API server


@pytest.fixture
def kube(tmp_path, monkeypatch):
    api = FakeKube()
    monkeypatch.setenv("KUBECONFIG", str(api.kubeconfig(tmp_path)))
    yield api
    api.stop()


def mock_worker(pod: str, *args: str):
    return start_worker("--discovery-backend", "kubernetes", "--pod-name", pod, "--pod-uid", f"uid-{pod}", "--worker-id", pod,
                        "--engine", "mock", "--model-name", "mock-llm", "--mock-decode-ms-per-step", "5", *args)  # fmt: skip


def serving(frontend) -> int:
    return workers_serving(frontend, "mock-llm")


def test_workers_are_up_while_listed_and_ready_and_follow_the_api_through_a_relist(kube):
    started = []
    try:
        started += [mock_worker("pod-a"), mock_worker("pod-b")]
        record = kube.get("dynamoworkermetadatas", "pod-a")
        assert record is not None, "the worker wrote its pod's object"
        assert record["metadata"]["ownerReferences"][0] == {"apiVersion": "v1", "kind": "Pod", "name": "pod-a", "uid": "uid-pod-a",
                                                           "controller": False, "blockOwnerDeletion": False}  # fmt: skip
        entry = record["spec"]["data"]["tritium_workers"]["tritium/pod-a"]
        assert entry["models"] == ["mock-llm"] and entry["id"] == "pod-a"

        frontend = start_server("--discovery-backend", "kubernetes", "--router-mode", "direct")
        started.append(frontend)
        assert serving(frontend) == 0 and "mock-llm" not in listed_models(frontend), "no pod is ready yet"
        # An EndpointSlice without Dynamo's labels is not watched.
        kube.set_slice("unrelated", {"pod-a": True, "pod-b": True}, labels={"app": "other"})
        kube.set_slice("workers-1", {"pod-a": True, "pod-b": True})
        wait_until(lambda: serving(frontend) == 2, 20, "both ready workers serving")
        wait_until(lambda: "mock-llm" in listed_models(frontend), 20, "mock-llm listed")
        client = openai.OpenAI(base_url=f"{frontend.http_url}/v1", api_key="none")
        for pod in ("pod-a", "pod-b"):
            answer = client.completions.create(model="mock-llm", prompt="Hi", max_tokens=2, extra_body=NVEXT_WORKER,
                                               extra_headers={"x-tritium-worker": pod})  # fmt: skip
            assert worker_of(answer) == pod

        kube.set_slice("workers-1", {"pod-a": True, "pod-b": False})
        wait_until(lambda: serving(frontend) == 1, 20, "the unready worker let go")

        # History compacted: the frontend's watches get 410 Gone, list again and go on following.
        kube.compact()
        kube.set_slice("workers-1", {"pod-a": True, "pod-b": True})
        wait_until(lambda: serving(frontend) == 2, 20, "the worker back after the re-list")

        # Deleting the pod collects its object.
        kube.delete_pod("pod-b")
        wait_until(lambda: serving(frontend) == 1, 20, "the deleted pod's worker gone")

        # A worker leaving deregisters: its object is deleted.
        leaving = started.pop(0)
        finish_server(leaving)
        wait_until(lambda: kube.get("dynamoworkermetadatas", "pod-a") is None, 10, "pod-a's object deleted")
        wait_until(lambda: serving(frontend) == 0, 20, "no worker left")
    finally:
        for process in reversed(started):
            finish_server(process)


def test_the_router_snapshot_is_a_document_object(kube):
    started = []
    try:
        started.append(mock_worker("pod-a"))
        kube.set_slice("workers-1", {"pod-a": True})
        frontend = start_server("--discovery-backend", "kubernetes", "--router-mode", "kv", "--router-snapshot-threshold", "1")
        started.append(frontend)
        wait_until(lambda: serving(frontend) == 1, 20, "the worker serving")
        wait_until(lambda: "mock-llm" in listed_models(frontend), 20, "mock-llm listed")
        client = openai.OpenAI(base_url=f"{frontend.http_url}/v1", api_key="none")
        client.completions.create(model="mock-llm", prompt="Snapshot me " * 20, max_tokens=2)
        documents = lambda: [n for n in kube.names("dynamoworkermetadatas") if n.startswith("tritium-doc-tritium-")]  # noqa: E731
        wait_until(lambda: bool(documents()), 20, "the snapshot written")
        stored = kube.get("dynamoworkermetadatas", documents()[0])["spec"]["data"]["tritium_document"]
        assert stored["namespace"] == "tritium" and stored["base64"], stored.keys()
        assert "ownerReferences" not in stored, "a document belongs to no pod"
    finally:
        for process in reversed(started):
            finish_server(process)


def test_pod_namespace_beats_the_kubeconfigs_namespace(tmp_path, monkeypatch):
    """The kubeconfig's context names a namespace the server does not serve; --pod-namespace
    (POD_NAMESPACE) names the one it does, and the worker's object is written there."""
    api = FakeKube()
    try:
        monkeypatch.setenv("KUBECONFIG", str(api.kubeconfig(tmp_path, namespace="elsewhere")))
        worker = mock_worker("pod-a", "--pod-namespace", api.namespace)
        try:
            assert api.get("dynamoworkermetadatas", "pod-a") is not None
        finally:
            finish_server(worker)
    finally:
        api.stop()


def exit_failure(*args: str) -> str:
    """The failure text (with the stderr) of a server that exits once it tries its discovery, before
    its ready line (which comes only once the cluster's planes are joined)."""
    return start_failure(*args)


def test_no_cluster_a_cluster_without_the_crd_and_a_worker_outside_a_pod_are_refused(tmp_path, monkeypatch):
    monkeypatch.setenv("KUBECONFIG", str(tmp_path / "absent"))
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    failure = exit_failure("--discovery-backend", "kubernetes")
    assert "no cluster to talk to" in failure and "kubeconfig" in failure, failure[-2000:]

    api = FakeKube(crd_installed=False)
    try:
        monkeypatch.setenv("KUBECONFIG", str(api.kubeconfig(tmp_path)))
        failure = exit_failure("--discovery-backend", "kubernetes")
        assert "DynamoWorkerMetadata" in failure and "deploy/kubernetes-discovery/crd.yaml" in failure, failure[-2000:]
    finally:
        api.stop()
    api = FakeKube()
    try:
        monkeypatch.setenv("KUBECONFIG", str(api.kubeconfig(tmp_path)))
        with pytest.raises(pytest.fail.Exception) as failure:
            finish_server(start_worker("--discovery-backend", "kubernetes", "--engine", "mock", timeout=30))
        assert "POD_NAME" in str(failure.value), str(failure.value)[-2000:]
    finally:
        api.stop()
