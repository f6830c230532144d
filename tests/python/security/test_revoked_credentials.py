"""A credential revoked while running (issue 60, item 3) shows as not-ready, naming the service, instead of a hang
or a healthy-looking process with its planes cut: a NATS token the server stops taking (its configuration
reloaded with another), an etcd user deleted. ServerReady, `/v2/health/ready` and `/health` answer not ready
(`/health` naming the service under `problems`, never the secret); when NATS takes the process back, it is ready
again."""

from __future__ import annotations

import json
import signal
import socket
import urllib.error
import urllib.request

import pytest
import tritonclient.grpc as grpcclient

from cluster import etcd_gateway as gateway, start_etcd, start_nats, wait_until
from helpers import finish_server, start_server

pytestmark = [pytest.mark.nats, pytest.mark.etcd]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def health(server) -> tuple[int, dict]:
    try:
        with urllib.request.urlopen(server.http_url + "/health", timeout=10) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def readiness(server) -> tuple[bool, bool, bool]:
    """ServerReady, `/v2/health/ready` and `/health`, asked one after the other (a change may land between them, so
    callers wait for all three to agree)."""
    with grpcclient.InferenceServerClient(server.url) as client:
        grpc_ready = client.is_server_ready()
    try:
        with urllib.request.urlopen(server.http_url + "/v2/health/ready", timeout=10) as response:
            http_ready = response.status == 200
    except urllib.error.HTTPError:
        http_ready = False
    status, _ = health(server)
    return grpc_ready, http_ready, status == 200


def ready_everywhere(server) -> bool:
    return readiness(server) == (True, True, True)


def not_ready_anywhere(server) -> bool:
    return readiness(server) == (False, False, False)


def test_a_nats_token_revoked_while_running_makes_the_frontend_not_ready_until_it_is_taken_back(tmp_path):
    config = tmp_path / "nats.conf"
    config.write_text('authorization { token: "first-s3cret" }\n')
    nats = start_nats(False, "-c", str(config))
    try:
        flags = ["--discovery-backend", "file", "--discovery-dir", str(tmp_path / "store"), "--event-plane", "nats",
                 "--request-plane", "nats", "--nats-url", nats.address, "--namespace", "revoked"]  # fmt: skip
        frontend = start_server(*flags, env={"NATS_AUTH_TOKEN": "first-s3cret"})
        try:
            assert ready_everywhere(frontend)
            config.write_text('authorization { token: "second-s3cret" }\n')
            nats.proc.send_signal(signal.SIGHUP)
            wait_until(lambda: not_ready_anywhere(frontend), 30, "the frontend not ready once NATS refuses its token")
            status, body = health(frontend)
            assert status == 503 and body["status"] == "not ready", body
            problems = " ".join(body["problems"])
            assert "NATS" in problems and "authorization violation" in problems, body
            assert "s3cret" not in json.dumps(body) and "s3cret" not in frontend.stderr()
            config.write_text('authorization { token: "first-s3cret" }\n')
            nats.proc.send_signal(signal.SIGHUP)
            wait_until(lambda: ready_everywhere(frontend), 60, "the frontend ready again once NATS takes it back")
        finally:
            finish_server(frontend)
    finally:
        nats.stop()


def test_an_etcd_user_deleted_while_running_makes_the_frontend_not_ready(tmp_path):
    etcd = start_etcd(free_port())
    try:
        gateway(etcd, "/v3/auth/role/add", {"name": "root"})
        gateway(etcd, "/v3/auth/user/add", {"name": "root", "password": "root-pw"})
        gateway(etcd, "/v3/auth/user/grant", {"user": "root", "role": "root"})
        gateway(etcd, "/v3/auth/user/add", {"name": "tritium", "password": "tritium-pw"})
        gateway(etcd, "/v3/auth/user/grant", {"user": "tritium", "role": "root"})
        gateway(etcd, "/v3/auth/enable", {})
        flags = ["--discovery-backend", "etcd", "--etcd-endpoints", etcd.address, "--namespace", "revoked-etcd",
                 "--lease-ttl-secs", "2"]  # fmt: skip
        frontend = start_server(*flags, env={"ETCD_AUTH_USERNAME": "tritium", "ETCD_AUTH_PASSWORD": "tritium-pw"})
        try:
            assert ready_everywhere(frontend)
            root = gateway(etcd, "/v3/auth/authenticate", {"name": "root", "password": "root-pw"})["token"]
            gateway(etcd, "/v3/auth/user/delete", {"name": "tritium"}, token=root)
            wait_until(lambda: not_ready_anywhere(frontend), 30, "the frontend not ready once etcd refuses its user")
            status, body = health(frontend)
            problems = " ".join(body["problems"])
            assert status == 503 and "etcd (discovery)" in problems, body
            assert "tritium-pw" not in json.dumps(body) and "tritium-pw" not in frontend.stderr()
        finally:
            finish_server(frontend)
    finally:
        etcd.stop()
