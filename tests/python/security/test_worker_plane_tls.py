"""TLS on the worker plane (issue 60) with Dynamo's `DYN_TCP_TLS_*` variables and the `--tcp-tls-*` options of
the same meaning, certificates made here by the `openssl` CLI: a mock-engine worker and a frontend sharing a
discovery folder serve over mutual TLS (with the worker token on top); a plaintext frontend, one without a client
certificate, one trusting another CA and one dialing a name the certificate does not carry are each refused in
the handshake, logged by name, while the worker stays up; an expired certificate is refused on either side; `--tcp-tls-server-name` and `--tcp-tls-insecure` make the
last two work; a peer that never finishes its handshake is let go after the deadline; the worker's certificate is
read again when its file changes; combinations that cannot work stop the process naming the variables."""

from __future__ import annotations

import pathlib
import shutil
import socket
import ssl

import pytest

from cluster import listed_models, wait_until
from helpers import finish_server, start_failure, start_server, start_worker, wait_for
from tls_certs import issue, issue_expired, plane_certificates

MODEL = "mock-llm"


@pytest.fixture(scope="module")
def certs(tmp_path_factory) -> pathlib.Path:
    return plane_certificates(tmp_path_factory.mktemp("plane-tls"))


def worker_tls(certs: pathlib.Path, cert: str = "worker", mutual: bool = True) -> dict[str, str]:
    """The worker's side, as Dynamo's variables."""
    env = {"DYN_TCP_TLS_CERT_PATH": str(certs / f"{cert}.pem"), "DYN_TCP_TLS_KEY_PATH": str(certs / f"{cert}.key")}
    if mutual:
        env["DYN_TCP_TLS_CLIENT_CA_CERT_PATH"] = str(certs / "ca.pem")
    return env


def frontend_tls(certs: pathlib.Path, ca: str = "ca", client_cert: bool = True) -> list[str]:
    """The frontend's side, as options."""
    flags = ["--tcp-tls-ca-cert-path", str(certs / f"{ca}.pem")]
    if client_cert:
        flags += ["--tcp-tls-client-cert-path", str(certs / "frontend.pem"), "--tcp-tls-client-key-path", str(certs / "frontend.key")]
    return flags


def discovery(folder: pathlib.Path) -> list[str]:
    return ["--discovery-backend", "file", "--discovery-dir", str(folder)]


def worker(folder: pathlib.Path, env: dict[str, str], *args: str):
    return start_worker(*discovery(folder), "--engine", "mock", "--model-name", MODEL, *args, env=env)


def completes(frontend) -> bool:
    import json
    import urllib.error
    import urllib.request

    body = json.dumps({"model": MODEL, "prompt": "hello", "max_tokens": 3}).encode()
    request = urllib.request.Request(frontend.http_url + "/v1/completions", data=body, headers={"content-type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=30) as answer:
            return answer.status == 200 and json.load(answer)["usage"]["completion_tokens"] == 3
    except urllib.error.HTTPError:
        return False


def test_mutual_tls_with_the_worker_token_serves(certs, tmp_path):
    token = ["--worker-token", "plane-secret"]
    w = worker(tmp_path, worker_tls(certs), *token)
    frontend = start_server(*discovery(tmp_path), *frontend_tls(certs), *token)
    try:
        wait_until(lambda: MODEL in listed_models(frontend), 30, "the worker's model listed over TLS")
        assert completes(frontend)
    finally:
        finish_server(frontend)
        finish_server(w)


@pytest.mark.parametrize(
    "frontend_side, worker_says, frontend_says",
    [
        (lambda c: [], "TLS handshake failed", None),
        # TLS 1.3: the client's side of the handshake ends before the worker checks its certificate.
        (lambda c: frontend_tls(c, client_cert=False), "TLS handshake failed", None),
        (lambda c: frontend_tls(c, ca="other-ca"), "TLS handshake failed", "invalid peer certificate: UnknownIssuer"),
    ],
    ids=["plaintext", "no-client-certificate", "unknown-ca"],
)
def test_a_peer_the_plane_cannot_trust_is_refused_in_the_handshake(certs, tmp_path, frontend_side, worker_says, frontend_says):
    w = worker(tmp_path, worker_tls(certs))
    frontend = start_server(*discovery(tmp_path), *frontend_side(certs))
    try:
        assert wait_for(lambda: worker_says in w.stderr(), timeout=30), w.stderr()[-2000:]
        if frontend_says:
            assert wait_for(lambda: frontend_says in frontend.stderr(), timeout=30), frontend.stderr()[-2000:]
        assert MODEL not in listed_models(frontend) and not completes(frontend)
        assert w.proc.poll() is None
    finally:
        finish_server(frontend)
        finish_server(w)


def test_an_expired_certificate_is_refused_on_either_side(certs, tmp_path):
    """A worker serving an expired certificate is refused by the frontend; a frontend presenting an expired client
    certificate is refused by the worker; each side logs why, and neither worker serves through it."""
    issue_expired(certs, "expired-worker", "extendedKeyUsage=serverAuth\nsubjectAltName=IP:127.0.0.1\n")
    issue_expired(certs, "expired-frontend", "extendedKeyUsage=clientAuth\n")
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    stale_worker = worker(tmp_path / "a", worker_tls(certs, cert="expired-worker", mutual=False))
    stale_client = ["--tcp-tls-ca-cert-path", str(certs / "ca.pem"), "--tcp-tls-client-cert-path", str(certs / "expired-frontend.pem"),
                    "--tcp-tls-client-key-path", str(certs / "expired-frontend.key")]  # fmt: skip
    good_worker = worker(tmp_path / "b", worker_tls(certs))
    frontends = [start_server(*discovery(tmp_path / "a"), *frontend_tls(certs)), start_server(*discovery(tmp_path / "b"), *stale_client)]
    try:
        assert wait_for(lambda: "invalid peer certificate: certificate expired" in frontends[0].stderr(), timeout=30), frontends[0].stderr()[-2000:]
        assert wait_for(lambda: "invalid peer certificate: certificate expired" in good_worker.stderr(), timeout=30), good_worker.stderr()[-2000:]
        assert not any(completes(frontend) for frontend in frontends)
        assert stale_worker.proc.poll() is None and good_worker.proc.poll() is None
    finally:
        for process in (*frontends, stale_worker, good_worker):
            finish_server(process)


def test_a_certificate_for_another_name_needs_the_server_name_option(certs, tmp_path):
    w = worker(tmp_path, worker_tls(certs, cert="named"))
    refused = start_server(*discovery(tmp_path), *frontend_tls(certs))
    named = start_server(*discovery(tmp_path), *frontend_tls(certs), "--tcp-tls-server-name", "worker.test")
    try:
        wait_until(lambda: MODEL in listed_models(named), 30, "the worker's model listed under its certificate's name")
        assert completes(named)
        assert wait_for(lambda: "certificate not valid for name" in refused.stderr(), timeout=30), refused.stderr()[-2000:]
        assert not completes(refused)
    finally:
        for process in (named, refused, w):
            finish_server(process)


def test_insecure_takes_any_certificate(certs, tmp_path):
    w = worker(tmp_path, worker_tls(certs, mutual=False))
    frontend = start_server(*discovery(tmp_path), env={"DYN_TCP_TLS_INSECURE": "1"})
    try:
        wait_until(lambda: MODEL in listed_models(frontend), 30, "the worker's model listed over unverified TLS")
        assert completes(frontend)
    finally:
        finish_server(frontend)
        finish_server(w)


def test_a_stalled_handshake_is_cut_at_the_deadline_and_the_worker_serves_on(certs, tmp_path):
    w = worker(tmp_path, worker_tls(certs, mutual=False), "--tcp-tls-handshake-timeout", "1")
    try:
        with socket.create_connection(("127.0.0.1", w.port), timeout=20) as stalled:
            assert stalled.recv(1) == b""  # closed by the worker, not by this timeout
        assert wait_for(lambda: "did not finish within 1s" in w.stderr(), timeout=10), w.stderr()[-2000:]
        assert peer_certificate_serial(certs, w.port)
    finally:
        finish_server(w)


def peer_certificate_serial(certs: pathlib.Path, port: int) -> int:
    context = ssl.create_default_context(cafile=str(certs / "ca.pem"))
    context.set_alpn_protocols(["h2"])
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
        with context.wrap_socket(raw, server_hostname="127.0.0.1") as tls:
            return int(tls.getpeercert()["serialNumber"], 16)


def test_the_worker_reads_a_rotated_certificate_without_a_restart(certs, tmp_path):
    live = tmp_path / "live"
    live.mkdir()
    (tmp_path / "discovery").mkdir()
    for suffix in ("pem", "key"):
        shutil.copy(certs / f"worker.{suffix}", live / f"cert.{suffix}")
    env = {"DYN_TCP_TLS_CERT_PATH": str(live / "cert.pem"), "DYN_TCP_TLS_KEY_PATH": str(live / "cert.key")}
    w = worker(tmp_path / "discovery", env)
    try:
        before = peer_certificate_serial(certs, w.port)
        # The key first, then the certificate: a half-written pair keeps the old one in use.
        shutil.copy(certs / "renewed.key", live / "cert.key")
        shutil.copy(certs / "renewed.pem", live / "cert.pem")
        assert wait_for(lambda: peer_certificate_serial(certs, w.port) != before, timeout=10)
        assert "the worker's TLS certificate was read again" in w.stderr()
    finally:
        finish_server(w)


def test_the_frontend_reads_a_rotated_client_certificate_without_a_restart(certs, tmp_path):
    """The frontend's client certificate is read again when its files change: rotated to one another CA signed,
    the next worker it dials refuses the handshake; rotated back, it is served, all without a restart."""
    issue(certs, "outsider", "extendedKeyUsage=clientAuth\n", ca="other-ca")
    live = tmp_path / "live"
    live.mkdir()
    (tmp_path / "discovery").mkdir()

    def present(who: str) -> None:
        # The key first, then the certificate: a half-written pair keeps the old one in use.
        shutil.copy(certs / f"{who}.key", live / "client.key")
        shutil.copy(certs / f"{who}.pem", live / "client.pem")

    present("frontend")
    client = ["--tcp-tls-ca-cert-path", str(certs / "ca.pem"), "--tcp-tls-client-cert-path", str(live / "client.pem"),
              "--tcp-tls-client-key-path", str(live / "client.key")]  # fmt: skip
    first = worker(tmp_path / "discovery", worker_tls(certs))
    frontend = start_server(*discovery(tmp_path / "discovery"), *client)
    second = None
    try:
        wait_until(lambda: completes(frontend), 30, "served over mutual TLS")
        finish_server(first)
        present("outsider")
        second = worker(tmp_path / "discovery", worker_tls(certs))
        wait_until(lambda: "TLS handshake failed" in second.stderr(), 30, "the next worker refusing the rotated certificate")
        assert not completes(frontend)
        assert "the client TLS certificate was read again" in frontend.stderr()
        present("frontend")
        wait_until(lambda: completes(frontend), 30, "served again once rotated back")
    finally:
        finish_server(frontend)
        if second:
            finish_server(second)


@pytest.mark.parametrize(
    "env, named",
    [
        ({"DYN_TCP_TLS_CERT_PATH": "/nonexistent/c.pem"}, "DYN_TCP_TLS_KEY_PATH"),
        ({"DYN_TCP_TLS_CLIENT_CA_CERT_PATH": "/nonexistent/ca.pem"}, "DYN_TCP_TLS_CERT_PATH"),
        ({"DYN_TCP_TLS_CA_CERT_PATH": "/nonexistent/ca.pem"}, "DYN_TCP_TLS_CA_CERT_PATH names /nonexistent/ca.pem"),
        ({"DYN_TCP_TLS_SERVER_NAME": "worker.test"}, "DYN_TCP_TLS_CA_CERT_PATH (or DYN_TCP_TLS_INSECURE)"),
    ],
)
def test_combinations_that_cannot_work_stop_the_process_naming_the_variables(env, named):
    assert named in start_failure(env=env)
