"""A token- or password-protected NATS and an etcd with authentication on, joined with Dynamo's own credential
variables (`NATS_AUTH_TOKEN`, `NATS_AUTH_USERNAME`/`_PASSWORD`, `ETCD_AUTH_USERNAME`/`_PASSWORD`) by real
`tritium serve` and `tritium worker` processes: with the right credentials the cluster serves; with wrong ones
the process stops at start naming the service and the variable, never the secret."""

from __future__ import annotations

import json
import socket
import urllib.error
import urllib.request

import numpy as np
import pytest
import tritonclient.grpc as grpcclient

from cluster import start_etcd, start_nats, wait_until, workers_serving
from helpers import finish_server, start_failure, start_server, start_worker

pytestmark = [pytest.mark.nats, pytest.mark.etcd]


def etcd_call(etcd, path: str, body: dict) -> dict:
    """etcd's JSON gateway (there is no etcdctl here), retried while etcd is still electing its leader (503)."""
    request = urllib.request.Request(etcd.address + path, data=json.dumps(body).encode(), headers={"content-type": "application/json"})
    answer: dict = {}

    def answered() -> bool:
        nonlocal answer
        try:
            with urllib.request.urlopen(request, timeout=30) as response:
                answer = json.loads(response.read())
                return True
        except urllib.error.HTTPError as error:
            if error.code != 503:
                raise
            return False

    wait_until(answered, 30, f"etcd answering {path}")
    return answer


def identity_answers(url: str) -> bool:
    data = np.arange(16, dtype=np.float32)
    tensor = grpcclient.InferInput("INPUT0", [16], "FP32")
    tensor.set_data_from_numpy(data)
    with grpcclient.InferenceServerClient(url) as client:
        return bool(np.array_equal(client.infer("identity", [tensor]).as_numpy("OUTPUT0"), data))


def cluster_serves(flags: list[str], env: dict[str, str]) -> None:
    """A worker and a frontend started with `flags` and credentials `env` find each other and serve identity."""
    worker = start_worker(*flags, env=env)
    frontend = start_server(*flags, env=env)
    try:
        wait_until(lambda: workers_serving(frontend, "identity") >= 1, 60, "the worker joined the frontend")
        assert identity_answers(frontend.url)
    finally:
        finish_server(frontend)
        finish_server(worker)


def test_a_token_protected_nats_carries_events_and_requests_with_natss_own_variable(tmp_path):
    nats = start_nats(False, "--auth", "nats-s3cret")
    try:
        store = tmp_path / "store"
        flags = ["--discovery-backend", "file", "--discovery-dir", str(store), "--event-plane", "nats", "--request-plane", "nats",
                 "--nats-url", nats.address, "--namespace", "secured"]  # fmt: skip
        good, bad = {"NATS_AUTH_TOKEN": "nats-s3cret"}, {"NATS_AUTH_TOKEN": "wrong-token"}
        message = start_failure(*flags, env=bad)
        assert "NATS_AUTH_TOKEN" in message and "wrong-token" not in message, message
        cluster_serves(flags, good)
    finally:
        nats.stop()


def test_a_password_protected_nats_is_joined_with_the_username_and_password_variables():
    nats = start_nats(False, "--user", "tritium", "--pass", "nats-pw")
    try:
        flags = ["--discovery-backend", "file", "--event-plane", "nats", "--nats-url", nats.address]
        half = start_failure(*flags, env={"NATS_AUTH_USERNAME": "tritium"})
        assert "NATS_AUTH_USERNAME and NATS_AUTH_PASSWORD go together" in half, half
        wrong = start_failure(*flags, env={"NATS_AUTH_USERNAME": "tritium", "NATS_AUTH_PASSWORD": "nope"})
        assert "NATS_AUTH_PASSWORD" in wrong and "nope" not in wrong, wrong
        server = start_server(*flags, env={"NATS_AUTH_USERNAME": "tritium", "NATS_AUTH_PASSWORD": "nats-pw"})
        finish_server(server)
    finally:
        nats.stop()


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_an_etcd_with_authentication_is_joined_with_the_etcd_variables():
    etcd = start_etcd(free_port())
    try:
        etcd_call(etcd, "/v3/auth/role/add", {"name": "root"})
        etcd_call(etcd, "/v3/auth/user/add", {"name": "root", "password": "etcd-pw"})
        etcd_call(etcd, "/v3/auth/user/grant", {"user": "root", "role": "root"})
        etcd_call(etcd, "/v3/auth/enable", {})
        flags = ["--discovery-backend", "etcd", "--etcd-endpoints", etcd.address, "--namespace", "secured-etcd"]
        wrong = start_failure(*flags, env={"ETCD_AUTH_USERNAME": "root", "ETCD_AUTH_PASSWORD": "wrong-pw"})
        assert "ETCD_AUTH_USERNAME" in wrong and "wrong-pw" not in wrong, wrong
        good = {"ETCD_AUTH_USERNAME": "root", "ETCD_AUTH_PASSWORD": "etcd-pw"}
        cluster_serves(flags, good)
    finally:
        etcd.stop()
