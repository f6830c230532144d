"""Dynamo 1.6.1 on Kubernetes (`DYN_DISCOVERY_BACKEND=kubernetes`): workers write their records into
their pods' DynamoWorkerMetadata objects (here in the fake API server, fake_kube.py, which real Dynamo
processes use unchanged), and a worker is served while its pod is ready in a labelled EndpointSlice.
Tritium's frontend, started as Dynamo's is there (`--discovery-backend kubernetes`), serves Dynamo's
echo worker as Dynamo's frontend does; and `tritium worker --worker-protocol dynamo` registers in that
layout so that Dynamo's frontend serves it."""

from __future__ import annotations

import pytest

from deployment import Deployment, assert_same_answers, http, models_at, tiny_model, wait_until  # noqa: F401 - tiny_model: fixture
from fake_kube import FakeKube
from helpers import start_server, start_worker

pytestmark = [pytest.mark.dynamo, pytest.mark.kubernetes]
START = 90


def pod_env(kube: FakeKube, kubeconfig, pod: str) -> dict[str, str]:
    """What Dynamo's operator gives a pod: the Downward API's names, and the API server."""
    return {"DYN_DISCOVERY_BACKEND": "kubernetes", "KUBECONFIG": str(kubeconfig), "POD_NAME": pod,
            "POD_NAMESPACE": kube.namespace, "POD_UID": f"uid-{pod}"}  # fmt: skip


@pytest.fixture(scope="module")
def kube_deployment(tmp_path_factory, tiny_model):
    folder = tmp_path_factory.mktemp("dynamo-kube")
    kube = FakeKube()
    kubeconfig = kube.kubeconfig(folder)
    deployment = Deployment(folder, tiny_model, namespace="kubeinterop")
    deployment.echo("echo", env=pod_env(kube, kubeconfig, "pod-echo"))
    wait_until(lambda: kube.get("dynamoworkermetadatas", "pod-echo") is not None, START, "the echo worker's metadata object")
    flags = ["--discovery-backend", "kubernetes", "--request-plane", "tcp", "--namespace", "kubeinterop", "--router-mode", "round-robin"]
    tritium = start_server(*flags, env={"KUBECONFIG": str(kubeconfig), "DYN_TCP_RESPONSE_STREAM_HOST": "127.0.0.1"})
    deployment.tritium.append(tritium)
    port = __import__("deployment").free_port()
    argv = ["-m", "dynamo.frontend", "--http-host", "127.0.0.1", "--http-port", str(port), *flags]
    deployment._spawn("frontend", argv, pod_env(kube, kubeconfig, "pod-frontend"))
    yield kube, kubeconfig, deployment, tritium, f"http://127.0.0.1:{port}"
    deployment.stop()
    kube.stop()


def test_a_worker_is_served_while_its_pod_is_ready_and_answers_as_by_dynamo(kube_deployment):
    kube, _, _, tritium, dynamo = kube_deployment
    assert "echo" not in models_at(tritium.http_url), "no pod is ready yet: nothing is served"
    kube.set_slice("echo-slice", {"pod-echo": True, "pod-frontend": True})
    for base in (tritium.http_url, dynamo):
        wait_until(lambda: "echo" in models_at(base), START, f"echo listed at {base}")
    assert_same_answers(tritium.http_url, dynamo, "/v1/completions", {"model": "echo", "prompt": "hello there", "max_tokens": 5})
    assert_same_answers(tritium.http_url, dynamo, "/v1/chat/completions", {"model": "echo", "messages": [{"role": "user", "content": "hi"}]})
    # The pod's readiness probe fails: it is let go, as Dynamo's frontend lets it go.
    kube.set_slice("echo-slice", {"pod-echo": False, "pod-frontend": True})
    wait_until(lambda: "echo" not in models_at(tritium.http_url), START, "echo no longer listed once its pod is not ready")
    status, _ = http("POST", tritium.http_url + "/v1/completions", {"model": "echo", "prompt": "x", "max_tokens": 2})
    assert status == 404


def test_dynamos_frontend_serves_a_tritium_worker_registered_in_the_kubernetes_layout(kube_deployment):
    kube, kubeconfig, deployment, tritium, dynamo = kube_deployment
    env = {"KUBECONFIG": str(kubeconfig), "DYN_NAMESPACE": "kubeinterop", "DYN_TCP_RPC_HOST": "127.0.0.1"}
    worker = start_worker("--worker-protocol", "dynamo", "--discovery-backend", "kubernetes", "--pod-name", "pod-tritium",
                          "--pod-uid", "uid-pod-tritium", "--engine", "mock", "--model-name", "kube-mock", env=env)  # fmt: skip
    deployment.tritium.append(worker)
    record = kube.get("dynamoworkermetadatas", "pod-tritium")
    assert record is not None and record["metadata"]["ownerReferences"][0]["uid"] == "uid-pod-tritium", record
    assert any(key.startswith("kubeinterop/") for key in record["spec"]["data"]["model_cards"]), record
    kube.set_slice("tritium-slice", {"pod-tritium": True})
    for base in (dynamo, tritium.http_url):
        wait_until(lambda: "kube-mock" in models_at(base), START, f"kube-mock listed at {base}")
    body = {"model": "kube-mock", "prompt": "count", "max_tokens": 4}
    for base in (dynamo, tritium.http_url):
        status, answer = http("POST", base + "/v1/completions", body)
        assert status == 200 and answer["usage"]["completion_tokens"] == 4, answer
    deployment.tritium.remove(worker)
    assert worker.stop() == 0
    assert kube.get("dynamoworkermetadatas", "pod-tritium") is None, "a clean stop removes its object"
