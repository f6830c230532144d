"""A token- or password-protected NATS, an etcd with authentication on and an etcd with mutual TLS, joined with
Dynamo's own credential variables (`NATS_AUTH_TOKEN`, `NATS_AUTH_USERNAME`/`_PASSWORD`, `ETCD_AUTH_USERNAME`/
`_PASSWORD`, `ETCD_AUTH_CA`, `ETCD_AUTH_CLIENT_CERT`/`_KEY`; certificates made by the `openssl` CLI) by real
`tritium serve` and `tritium worker` processes: with the right credentials the cluster serves; with wrong ones
the process stops at start naming the service and the variable, never the secret."""

from __future__ import annotations

import pathlib
import shutil
import socket
import subprocess

import numpy as np
import pytest
import tritonclient.grpc as grpcclient

from cluster import etcd_gateway as etcd_call, start_etcd, start_nats, wait_until, workers_serving
from helpers import finish_server, start_failure, start_server, start_worker

pytestmark = [pytest.mark.nats, pytest.mark.etcd]


def identity_answers(url: str) -> bool:
    data = np.arange(16, dtype=np.float32)
    tensor = grpcclient.InferInput("INPUT0", [16], "FP32")
    tensor.set_data_from_numpy(data)
    with grpcclient.InferenceServerClient(url) as client:
        return bool(np.array_equal(client.infer("identity", [tensor]).as_numpy("OUTPUT0"), data))


def model_known(url: str) -> bool:
    with grpcclient.InferenceServerClient(url) as client:
        return client.is_model_ready("identity")


def cluster_serves(flags: list[str], env: dict[str, str]) -> None:
    """A worker and a frontend started with `flags` and credentials `env` find each other and serve identity."""
    worker = start_worker(*flags, env=env)
    frontend = start_server(*flags, env=env)
    try:
        wait_until(lambda: workers_serving(frontend, "identity") >= 1, 60, "the worker joined the frontend")
        # The router may count the worker a moment before the model's record reaches the doors.
        wait_until(lambda: model_known(frontend.url), 30, "the worker's model known to the frontend")
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


def openssl(*args: str) -> None:
    if shutil.which("openssl") is None:
        pytest.fail("the `openssl` command is needed to make the test certificates (Debian package openssl)")
    subprocess.run(["openssl", *args], check=True, capture_output=True, timeout=60)


def make_certificates(folder: pathlib.Path) -> None:
    """A test CA, a server certificate for 127.0.0.1 and a client certificate, both signed by it."""
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    openssl("req", "-x509", *ec, "-keyout", str(folder / "ca.key"), "-out", str(folder / "ca.pem"), "-days", "2", "-subj", "/CN=test-ca")
    for who, extension in (("server", "subjectAltName=IP:127.0.0.1"), ("client", "extendedKeyUsage=clientAuth")):
        openssl("req", *ec, "-keyout", str(folder / f"{who}.key"), "-out", str(folder / f"{who}.csr"), "-subj", f"/CN={who}")
        extra = folder / f"{who}.ext"
        extra.write_text(extension + "\n")
        openssl("x509", "-req", "-in", str(folder / f"{who}.csr"), "-CA", str(folder / "ca.pem"), "-CAkey", str(folder / "ca.key"),
                "-CAcreateserial", "-out", str(folder / f"{who}.pem"), "-days", "2", "-extfile", str(extra))  # fmt: skip


def test_an_etcd_with_mutual_tls_is_joined_with_the_etcd_tls_variables(tmp_path):
    make_certificates(tmp_path)
    etcd = start_etcd(tls=(str(tmp_path / "server.pem"), str(tmp_path / "server.key"), str(tmp_path / "ca.pem")))
    try:
        assert etcd.address.startswith("https://"), etcd.address
        flags = ["--discovery-backend", "etcd", "--etcd-endpoints", etcd.address, "--namespace", "secured-etcd-tls"]
        # A client with no certificate of the CA's is turned away, the variables named.
        refused = start_failure(*flags, env={"ETCD_AUTH_CA": str(tmp_path / "ca.pem")})
        assert "ETCD_AUTH_CA" in refused, refused
        good = {"ETCD_AUTH_CA": str(tmp_path / "ca.pem"), "ETCD_AUTH_CLIENT_CERT": str(tmp_path / "client.pem"),
                "ETCD_AUTH_CLIENT_KEY": str(tmp_path / "client.key")}  # fmt: skip
        cluster_serves(flags, good)
    finally:
        etcd.stop()

