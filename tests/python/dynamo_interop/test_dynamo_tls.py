"""Dynamo's TCP planes under TLS (issue 60, item 2): every process of a deployment is given the same
`DYN_TCP_TLS_*` variables Dynamo 1.6.1 takes (a certificate, its key and a CA; with client certificates
required, mutual TLS), and Tritium's frontend serves a Dynamo worker over them (the request plane it dials and
the response streams that call home to it), Dynamo's own frontend serves `tritium worker --worker-protocol
dynamo` over them, and both frontends answer alike. A peer the plane cannot trust is refused in the handshake,
logged, and the worker serves on."""

from __future__ import annotations

import pytest

import tls_certs
from deployment import Deployment, assert_same_answers, http, models_at, tiny_model, wait_until  # noqa: F401 - tiny_model: fixture
from helpers import finish_server, start_server

pytestmark = pytest.mark.dynamo
START = 90
BODY = {"model": "", "prompt": "sealed planes carry the same words", "max_tokens": 6}


@pytest.fixture(scope="module")
def certs(tmp_path_factory):
    folder = tls_certs.plane_certificates(tmp_path_factory.mktemp("dynamo-certs"))
    # One identity for every process, as one set of variables for a whole deployment needs: it serves and dials.
    tls_certs.issue(folder, "peer", "extendedKeyUsage=serverAuth,clientAuth\nsubjectAltName=IP:127.0.0.1\n")
    tls_certs.issue(folder, "stranger", "extendedKeyUsage=serverAuth,clientAuth\nsubjectAltName=IP:127.0.0.1\n", ca="other-ca")
    return folder


def mutual_tls(certs, who: str = "peer", ca: str = "ca") -> dict[str, str]:
    """Dynamo's variables for mutual TLS on both of its TCP planes, as `who` trusting `ca`."""
    return {
        "DYN_TCP_TLS_CERT_PATH": str(certs / f"{who}.pem"),
        "DYN_TCP_TLS_KEY_PATH": str(certs / f"{who}.key"),
        "DYN_TCP_TLS_CA_CERT_PATH": str(certs / f"{ca}.pem"),
        "DYN_TCP_TLS_CLIENT_CERT_PATH": str(certs / f"{who}.pem"),
        "DYN_TCP_TLS_CLIENT_KEY_PATH": str(certs / f"{who}.key"),
        "DYN_TCP_TLS_CLIENT_CA_CERT_PATH": str(certs / f"{ca}.pem"),
    }


@pytest.fixture(scope="module")
def sealed(tmp_path_factory, tiny_model, certs):
    """A deployment whose every process runs mutual TLS on Dynamo's planes: Dynamo's echo worker, `tritium worker
    --worker-protocol dynamo` (the mock engine), and both frontends, each listing both workers."""
    deployment = Deployment(tmp_path_factory.mktemp("dynamo-tls"), tiny_model, namespace="sealed")
    deployment.shared_env = mutual_tls(certs)
    deployment.echo("echo")
    deployment.tritium_worker("--engine", "mock", "--model-name", "tritium-mock", "--mock-decode-ms-per-step", "1")
    tritium = deployment.tritium_frontend()
    dynamo = deployment.dynamo_frontend()
    for base in (tritium.http_url, dynamo):
        wait_until(lambda: {"echo", "tritium-mock"} <= set(models_at(base)), START, f"both workers listed at {base}")
    yield deployment, tritium, dynamo
    deployment.stop()


@pytest.mark.parametrize("model", ["echo", "tritium-mock"])
@pytest.mark.parametrize("path", ["/v1/completions", "/v1/chat/completions"])
def test_both_frontends_answer_alike_over_mutual_tls(sealed, model, path):
    """Dynamo's worker behind Tritium's frontend and Tritium's worker behind Dynamo's, on sealed planes: the same
    text, finish reason and usage from both frontends, streamed and not."""
    _, tritium, dynamo = sealed
    body = BODY | {"model": model}
    if path == "/v1/chat/completions":
        body = {"model": model, "messages": [{"role": "user", "content": BODY["prompt"]}], "max_tokens": 6}
    assert_same_answers(tritium.http_url, dynamo, path, body)


def test_the_planes_really_are_under_tls(sealed):
    """Dynamo's worker says its request plane is under TLS with client certificates required, so Tritium's
    frontend could only have reached it over mutual TLS; Tritium's own processes warn of nothing lopsided."""
    deployment, tritium, _ = sealed
    echo = next(p for p in deployment.dynamo if "echo-echo" in p.log_path.name)
    assert "TLS enabled with mutual authentication" in echo.log()
    for process in deployment.tritium:
        assert "Dynamo planes:" not in process.stderr(), process.stderr()[-2000:]


@pytest.mark.parametrize("who,ca,says", [
    (None, None, None),  # in clear: the workers' TLS listeners take no frames from it
    ("stranger", "other-ca", "UnknownIssuer"),  # a certificate from another CA, trusting another CA
])  # fmt: skip
def test_a_frontend_the_plane_cannot_trust_gets_nothing_and_the_workers_serve_on(sealed, certs, who, ca, says):
    """A frontend in clear, or one holding another CA's certificate, reaches neither worker: its requests fail,
    the refusal is logged; the trusted frontend is served as before."""
    deployment, tritium, _ = sealed
    flags, env = deployment.frontend_options()
    env = {k: v for k, v in env.items() if not k.startswith("DYN_TCP_TLS_")}
    if who:
        env |= mutual_tls(certs, who, ca)
    worker = next(p for p in deployment.tritium if p is not tritium)
    refusals = worker.stderr().count("Dynamo request plane: a TLS handshake failed")
    outsider = start_server(*flags, env=env)
    try:
        wait_until(lambda: {"echo", "tritium-mock"} <= set(models_at(outsider.http_url)), START, "both workers listed")
        for model in ("echo", "tritium-mock"):
            status, answer = http("POST", outsider.http_url + "/v1/completions", BODY | {"model": model})
            assert status >= 500, answer
        log = outsider.stderr()
    finally:
        finish_server(outsider)
    if says:
        assert says in log, log[-3000:]
    assert worker.stderr().count("Dynamo request plane: a TLS handshake failed") > refusals, worker.stderr()[-3000:]
    for model in ("echo", "tritium-mock"):
        status, answer = http("POST", tritium.http_url + "/v1/completions", BODY | {"model": model})
        assert status == 200, answer
