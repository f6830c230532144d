"""Per-key model allow-lists (`models=A|B` in the API key file, issue 60): a key held to a list reaches only those
models, on every door and with the real clients (OpenAI's and Anthropic's SDKs, tritonclient over HTTP and gRPC,
gRPC streams); another model is refused 403 / `PERMISSION_DENIED` in the door's shape, the same whether it exists or
not, before any model work; calls that reach every model (the repository index, statistics of all) are refused; the
model listing shows only the key's models; a key without a list reaches everything."""

from __future__ import annotations

import json
import queue
import urllib.error
import urllib.request

import anthropic
import numpy as np
import openai
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from helpers import finish_server, start_server

TEAM = {"authorization": "Bearer k-team"}


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    keys = tmp_path_factory.mktemp("keys") / "keys"
    keys.write_text("team:k-team:rps=1000,models=llama\nall:k-all\n")
    server = start_server("--engine", "mock", "--model-name", "llama", "--model-name", "qwen", "--api-key-file", str(keys))
    yield server
    finish_server(server)


def post(url: str, body: dict, headers: dict[str, str]) -> tuple[int, dict]:
    request = urllib.request.Request(url, data=json.dumps(body).encode(), headers={"content-type": "application/json", **headers})
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def completions_served(server) -> int:
    """Completions the metrics count, to show a refused request did no model work."""
    with urllib.request.urlopen(server.metrics_url, timeout=10) as response:
        text = response.read().decode()
    return sum(int(float(line.rsplit(" ", 1)[1])) for line in text.splitlines()
               if line.startswith("tritium_llm_requests_total{") and 'outcome="success"' in line)  # fmt: skip


def test_the_openai_and_anthropic_doors_serve_the_keys_models_only(server):
    client = openai.OpenAI(base_url=server.http_url + "/v1", api_key="k-team", max_retries=0)
    assert [m.id for m in client.models.list().data] == ["llama"]
    answer = client.chat.completions.create(model="llama", messages=[{"role": "user", "content": "hi"}], max_tokens=3)
    assert answer.usage.completion_tokens == 3
    before = completions_served(server)
    for model in ("qwen", "no-such-model"):
        with pytest.raises(openai.PermissionDeniedError, match=f"API key 'team' may not use model '{model}'") as refused:
            client.completions.create(model=model, prompt="hi", max_tokens=3)
        assert refused.value.body["code"] == "model_not_allowed"
    with pytest.raises(openai.PermissionDeniedError, match="names no model"):
        client.post("/chat/completions", body={"messages": [{"role": "user", "content": "hi"}]}, cast_to=object)
    assert completions_served(server) == before, "a refused request did no model work"
    claude = anthropic.Anthropic(base_url=server.http_url, api_key="k-team", max_retries=0)
    with pytest.raises(anthropic.PermissionDeniedError, match="may not use model 'qwen'") as refused:
        claude.messages.create(model="qwen", max_tokens=3, messages=[{"role": "user", "content": "hi"}])
    assert refused.value.body["error"]["type"] == "permission_error"
    everything = openai.OpenAI(base_url=server.http_url + "/v1", api_key="k-all", max_retries=0)
    assert {m.id for m in everything.models.list().data} == {"llama", "qwen"}
    assert everything.completions.create(model="qwen", prompt="hi", max_tokens=2).usage.completion_tokens == 2


def test_kserve_over_http_names_the_model_in_its_path(server):
    client = httpclient.InferenceServerClient(server.http_url.removeprefix("http://"))
    assert client.is_model_ready("llama", headers=TEAM)
    assert client.get_model_metadata("llama", headers=TEAM)["name"] == "llama"
    for call in (lambda: client.get_model_metadata("qwen", headers=TEAM), lambda: client.get_model_config("qwen", headers=TEAM),
                 lambda: client.load_model("qwen", headers=TEAM)):  # fmt: skip
        with pytest.raises(InferenceServerException, match="may not use model 'qwen'"):
            call()
    with pytest.raises(InferenceServerException, match="the repository index is refused"):
        client.get_model_repository_index(headers=TEAM)
    with pytest.raises(InferenceServerException, match="statistics of every model"):
        client.get_inference_statistics(headers=TEAM)
    status, body = post(server.http_url + "/v2/models/qwen/generate", {"text_input": "hi", "max_tokens": 2}, TEAM)
    assert status == 403 and body == {"error": "API key 'team' may not use model 'qwen'"}
    status, body = post(server.http_url + "/v2/models/llama/generate", {"text_input": "hi", "max_tokens": 2}, TEAM)
    assert status == 200 and body["model_name"] == "llama", body


def test_grpc_calls_and_stream_requests_are_checked_one_by_one(server):
    with grpcclient.InferenceServerClient(server.url) as client:
        assert client.is_model_ready("llama", headers=TEAM)
        with pytest.raises(InferenceServerException, match="may not use model 'qwen'") as refused:
            client.get_model_metadata("qwen", headers=TEAM)
        assert refused.value.status() == "StatusCode.PERMISSION_DENIED"
        with pytest.raises(InferenceServerException, match="RepositoryIndex is refused"):
            client.get_model_repository_index(headers=TEAM)
        text = grpcclient.InferInput("text_input", [1], "BYTES")
        text.set_data_from_numpy(np.array([b"hi"], dtype=object))
        with pytest.raises(InferenceServerException, match="may not use model 'qwen'"):
            client.infer("qwen", [text], headers=TEAM)
        answers: queue.Queue = queue.Queue()
        client.start_stream(callback=lambda result, error: answers.put((result, error)), headers=TEAM)
        try:
            client.async_stream_infer("qwen", [text], request_id="refused")
            client.async_stream_infer("llama", [text], request_id="served")
            first_result, first_error = answers.get(timeout=30)
            assert first_result is None and "may not use model 'qwen'" in str(first_error)
            result, error = answers.get(timeout=30)
            assert error is None and result.get_response().id == "served", error
        finally:
            client.stop_stream()
