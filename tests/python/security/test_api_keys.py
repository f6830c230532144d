"""API keys (`--api-key`, `--api-key-file`) on every door of a real server, with the real clients: OpenAI's and
Anthropic's SDKs, tritonclient over HTTP and gRPC (their headers), gRPC on the HTTP port; the health probes open;
a wrong key and a missing one answered alike, before any model work; the key file re-read when it changes."""

from __future__ import annotations

import json
import urllib.error
import urllib.request

import anthropic
import numpy as np
import openai
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient

from helpers import finish_server, start_server, wait_for

REFUSAL = "Invalid or missing API key"


@pytest.fixture
def keyed(tmp_path):
    key_file = tmp_path / "keys"
    key_file.write_text("# operators\nalice:k-alice\n")
    server = start_server("--api-key", "k-flag", "--api-key-file", str(key_file))
    yield server, key_file
    finish_server(server)


def get(url: str, headers: dict[str, str] | None = None) -> tuple[int, str]:
    request = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()


def identity_inputs(module):
    tensor = module.InferInput("INPUT0", [16], "FP32")
    tensor.set_data_from_numpy(np.arange(16, dtype=np.float32))
    return [tensor]


def inferences(server) -> int:
    with grpcclient.InferenceServerClient(server.url) as client:
        stats = client.get_inference_statistics("identity", headers={"authorization": "Bearer k-flag"}, as_json=True)
    return int(stats["model_stats"][0]["inference_count"] or 0)


def test_openai_and_anthropic_clients_need_a_key(keyed):
    server, _ = keyed
    base = server.http_url + "/v1"
    assert openai.OpenAI(base_url=base, api_key="k-flag").models.list().object == "list"
    assert openai.OpenAI(base_url=base, api_key="k-alice").models.list().object == "list"
    with pytest.raises(openai.AuthenticationError, match=REFUSAL):
        openai.OpenAI(base_url=base, api_key="wrong").models.list()
    with pytest.raises(openai.AuthenticationError) as wrong:
        openai.OpenAI(base_url=base, api_key="wrong").completions.create(model="identity", prompt="x", max_tokens=1)
    assert wrong.value.body["code"] == "invalid_api_key"
    # A good key reaches the route (no such language model here: 404), a wrong one never does.
    claude = anthropic.Anthropic(base_url=server.http_url, api_key="k-alice", max_retries=0)
    with pytest.raises(anthropic.NotFoundError):
        claude.messages.create(model="no-such-model", max_tokens=4, messages=[{"role": "user", "content": "hi"}])
    with pytest.raises(anthropic.AuthenticationError, match=REFUSAL):
        anthropic.Anthropic(base_url=server.http_url, api_key="k-bad", max_retries=0).messages.create(
            model="no-such-model", max_tokens=4, messages=[{"role": "user", "content": "hi"}]
        )


def test_kserve_over_http_and_grpc_needs_a_key_and_refusals_cost_no_model_work(keyed):
    server, _ = keyed
    key = {"authorization": "Bearer k-flag"}
    with httpclient.InferenceServerClient(server.http_url.removeprefix("http://")) as client:
        # (tritonclient.http adds its own entries to the headers it is given: a copy.)
        assert client.infer("identity", identity_inputs(httpclient), headers=dict(key)).as_numpy("OUTPUT0").shape == (16,)
        with pytest.raises(Exception, match=REFUSAL):
            client.infer("identity", identity_inputs(httpclient))
    for url in (server.url, server.http_url.removeprefix("http://")):  # the gRPC port, and gRPC on the HTTP port
        with grpcclient.InferenceServerClient(url) as client:
            assert client.infer("identity", identity_inputs(grpcclient), headers=key).as_numpy("OUTPUT0").shape == (16,)
            assert client.is_server_live() and client.is_server_ready(), "the probes stay open"
            for headers in (None, {"authorization": "Bearer wrong"}, {"authorization": "k-flag"}):
                with pytest.raises(grpcclient.InferenceServerException) as refused:
                    client.infer("identity", identity_inputs(grpcclient), headers=headers)
                assert refused.value.status() == "StatusCode.UNAUTHENTICATED" and refused.value.message() == REFUSAL
            with pytest.raises(grpcclient.InferenceServerException, match=REFUSAL):
                client.get_model_repository_index()
    assert inferences(server) == 3, "the refused calls ran nothing"


def test_health_is_open_and_the_wrong_and_missing_keys_are_answered_alike(keyed):
    server, _ = keyed
    for path in ("/v2/health/ready", "/v2/health/live", "/health", "/live"):
        assert get(server.http_url + path)[0] == 200, path
    missing = get(server.http_url + "/v2/models/identity")
    wrong = get(server.http_url + "/v2/models/identity", {"authorization": "Bearer nope"})
    assert missing == wrong and missing[0] == 401 and json.loads(missing[1]) == {"error": REFUSAL}, (missing, wrong)
    assert get(server.http_url + "/v2/models/identity", {"x-api-key": "k-alice"})[0] == 200
    assert "k-flag" not in server.stderr() and "k-alice" not in server.stderr(), "keys never reach the log"
    metrics = get(server.metrics_url)[1]
    assert 'tritium_api_key_requests_total{key="alice",outcome="served"} 1' in metrics, metrics
    assert 'tritium_api_key_requests_total{key="",outcome="refused"} 2' in metrics, metrics
    assert "k-alice" not in metrics


def test_the_key_file_is_reread_when_it_changes(keyed):
    server, key_file = keyed
    url = server.http_url + "/v2/models/identity"
    assert get(url, {"authorization": "Bearer k-alice"})[0] == 200
    key_file.write_text("bob:k-bob\n")
    assert wait_for(lambda: get(url, {"authorization": "Bearer k-bob"})[0] == 200, 30), "the new key was never taken"
    assert get(url, {"authorization": "Bearer k-alice"})[0] == 401, "a key taken out of the file is refused"
    key_file.write_text("broken line with spaces\n")
    assert not wait_for(lambda: get(url, {"authorization": "Bearer k-bob"})[0] != 200, 3), "a bad file keeps the keys in force"
    assert "broken line" not in server.stderr(), "the file's contents are not echoed"


def test_a_keys_request_rate_is_held_with_429_and_retry_after(tmp_path):
    key_file = tmp_path / "keys"
    # Half a request a second: the second request within two seconds is held, however slow the machine.
    key_file.write_text("metered:k-metered:rps=0.5\nfree:k-free\n")
    server = start_server("--api-key-file", str(key_file))
    try:
        url = server.http_url + "/v2/models/identity"
        statuses = [get(url, {"authorization": "Bearer k-metered"})[0] for _ in range(5)]
        assert statuses[0] == 200 and 429 in statuses, statuses
        request = urllib.request.Request(url, headers={"authorization": "Bearer k-metered"})
        with pytest.raises(urllib.error.HTTPError) as limited:
            for _ in range(5):
                urllib.request.urlopen(request, timeout=30).close()
        assert limited.value.code == 429 and int(limited.value.headers["Retry-After"]) >= 1
        assert "'metered' is over its 0.5 requests per second" in limited.value.read().decode()
        assert all(get(url, {"authorization": "Bearer k-free"})[0] == 200 for _ in range(5)), "another key is not held back"
        with grpcclient.InferenceServerClient(server.url) as client:
            with pytest.raises(grpcclient.InferenceServerException) as exhausted:
                for _ in range(5):
                    client.get_model_metadata("identity", headers={"authorization": "Bearer k-metered"})
        assert exhausted.value.status() == "StatusCode.RESOURCE_EXHAUSTED", exhausted.value
    finally:
        finish_server(server)


def test_a_key_file_that_cannot_be_read_stops_the_server_naming_it(tmp_path):
    from helpers import start_failure

    message = start_failure("--api-key-file", str(tmp_path / "absent"))
    assert "API key file" in message and "cannot be read" in message, message
