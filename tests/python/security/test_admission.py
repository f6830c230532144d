"""Admission control (Dynamo's busy threshold) with the real SmolLM2: once a running sequence holds
more of the KV cache than the model's threshold, the next request is refused at once with 503 and
`Retry-After` (counted in the metrics) instead of queueing; `POST /busy_threshold` changes the model's
threshold at run time and `GET /busy_threshold` reports it.
"""

from __future__ import annotations

import http.client
import json
import threading
import time
import urllib.parse
import urllib.request

import pytest

from conftest import LLM_NAME, LLM_START_TIMEOUT, model_paths
from helpers import finish_server, start_server

pytestmark = pytest.mark.llm  # SmolLM2 through model_paths()


@pytest.fixture(scope="module")
def busy_server():
    gguf, _ = model_paths()
    # 256 KV positions (16 blocks) and a 5 % threshold: a running sequence's first block is over it.
    server = start_server(
        "--model-path", str(gguf), "--model-name", LLM_NAME, "--llm-max-kv-tokens", "256",
        "--active-decode-blocks-threshold", "0.05", timeout=LLM_START_TIMEOUT,
    )
    yield server
    finish_server(server)


def request(server, method: str, path: str, body: dict | None = None) -> tuple[int, dict, dict]:
    url = urllib.parse.urlsplit(server.http_url)
    conn = http.client.HTTPConnection(url.hostname, url.port, timeout=120)
    try:
        conn.request(method, path, body=json.dumps(body) if body is not None else None, headers={"content-type": "application/json"})
        reply = conn.getresponse()
        data = reply.read()
        return reply.status, dict(reply.getheaders()), json.loads(data) if data else {}
    finally:
        conn.close()


def completion(max_tokens: int) -> dict:
    return {"model": LLM_NAME, "prompt": "Once upon a time", "max_tokens": max_tokens, "temperature": 0, "nvext": {"ignore_eos": True}}


def wait_until_running(server) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        with urllib.request.urlopen(server.http_url + "/metrics", timeout=10) as reply:
            text = reply.read().decode()
        if any(line.startswith("tritium_llm_engine_running_sequences") and not line.rstrip().endswith(" 0") for line in text.splitlines()):
            return
        time.sleep(0.05)
    pytest.fail("the long request never started running")


def rejected_busy(server) -> int:
    with urllib.request.urlopen(server.http_url + "/metrics", timeout=10) as reply:
        for line in reply.read().decode().splitlines():
            if line.startswith("tritium_router_rejected_busy_total"):
                return int(float(line.split()[-1]))
    raise AssertionError("no tritium_router_rejected_busy_total in /metrics")


def test_a_busy_model_refuses_with_503_and_retry_after_until_its_threshold_rises(busy_server):
    status, _, thresholds = request(busy_server, "GET", "/busy_threshold")
    assert status == 200 and thresholds["default_active_decode_blocks_threshold"] == 0.05, thresholds

    long_reply: dict = {}
    runner = threading.Thread(target=lambda: long_reply.update(zip(("status", "headers", "body"), request(busy_server, "POST", "/v1/completions", completion(200)))))
    runner.start()
    try:
        wait_until_running(busy_server)
        before = rejected_busy(busy_server)
        status, headers, body = request(busy_server, "POST", "/v1/completions", completion(4))
        assert status == 503, (status, body)
        assert headers.get("retry-after") == "1", headers
        assert "busy" in body["error"]["message"], body
        assert rejected_busy(busy_server) == before + 1

        status, _, body = request(busy_server, "POST", "/busy_threshold", {"model": LLM_NAME, "active_decode_blocks_threshold": 1.0})
        assert (status, body) == (200, {"model": LLM_NAME, "active_decode_blocks_threshold": 1.0})
        status, _, body = request(busy_server, "POST", "/v1/completions", completion(4))
        assert status == 200 and body["usage"]["completion_tokens"] == 4, (status, body)
    finally:
        runner.join(timeout=300)
    assert long_reply.get("status") == 200, long_reply

    status, _, body = request(busy_server, "POST", "/busy_threshold", {"model": LLM_NAME, "active_decode_blocks_threshold": None})
    assert (status, body["active_decode_blocks_threshold"]) == (200, 0.05)
    for bad in ({"model": LLM_NAME, "active_decode_blocks_threshold": 2}, {"model": LLM_NAME, "threshold": 0.5}, {"nope": 1}):
        status, _, body = request(busy_server, "POST", "/busy_threshold", bad)
        assert status == 400 and "error" in body, (bad, status, body)
    # Only served language models take a threshold: the table cannot grow with made-up names.
    for model in ("no-such-model", "identity"):
        status, _, body = request(busy_server, "POST", "/busy_threshold", {"model": model, "active_decode_blocks_threshold": 0.5})
        assert status == 404 and "is not a language model served here" in body["error"], (model, status, body)
    status, _, thresholds = request(busy_server, "GET", "/busy_threshold")
    assert [t["model"] for t in thresholds["thresholds"]] == [], thresholds

    # A worker the request names must serve the model; the others are not listed.
    body = {**completion(2), "nvext": {"backend_instance_id": "no-such-worker"}}
    status, _, reply = request(busy_server, "POST", "/v1/completions", body)
    assert status == 400 and "does not serve model" in reply["error"]["message"], (status, reply)
