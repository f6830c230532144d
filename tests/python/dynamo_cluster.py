"""Helpers of the Dynamo-option tests: HTTP calls, mock-engine workers and frontends sharing a
discovery folder, and the requests whose routing the tests observe."""

from __future__ import annotations

import json
import threading
import urllib.error
import urllib.request

import openai
import pytest

from cluster import listed_models, metric, start_nats, wait_until, workers_serving
from helpers import TritiumServer, finish_server, needs, start_server, start_worker


def post(url: str, body: dict) -> tuple[int, dict]:
    request = urllib.request.Request(url, data=json.dumps(body).encode(), headers={"content-type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read() or b"{}")


class FileCluster:
    """Mock-engine workers and frontends sharing a discovery folder (no external service)."""

    def __init__(self, folder) -> None:
        self.folder = folder
        self.started: list[TritiumServer] = []

    def worker(self, *args: str) -> TritiumServer:
        worker = start_worker("--discovery-backend", "file", "--discovery-dir", str(self.folder), "--engine", "mock",
                              "--model-name", "mock-llm", "--mock-decode-ms-per-step", "20", *args)  # fmt: skip
        self.started.append(worker)
        return worker

    def frontend(self, *args: str, workers: int = 2) -> TritiumServer:
        frontend = start_server("--discovery-backend", "file", "--discovery-dir", str(self.folder), *args)
        self.started.append(frontend)
        wait_until(lambda: workers_serving(frontend, "mock-llm") == workers, 20, f"{workers} workers serving mock-llm")
        # Routed to is not yet described: the model is served once it is listed.
        wait_until(lambda: "mock-llm" in listed_models(frontend), 20, "mock-llm listed")
        return frontend

    def stop(self) -> None:
        started, self.started = self.started, []
        for process in reversed(started):
            finish_server(process)


@pytest.fixture
def file_cluster(tmp_path):
    cluster = FileCluster(tmp_path / "discovery")
    yield cluster
    cluster.stop()


PROMPT = "Tell me about routing. " + " ".join(f"fact {i} is about the cache" for i in range(40))


def worker_of(answer) -> str:
    return answer.model_extra["nvext"]["worker_id"]["decode_worker_id"]


NVEXT_WORKER = {"nvext": {"extra_fields": ["worker_id"]}}


def worker_for(frontend: TritiumServer, prompt: str) -> str:
    """The worker a one-token completion of `prompt` through `frontend` ran on."""
    client = openai.OpenAI(base_url=f"{frontend.http_url}/v1", api_key="none")
    return worker_of(client.completions.create(model="mock-llm", prompt=prompt, max_tokens=1, extra_body=NVEXT_WORKER))


def stream_in_background(frontend: TritiumServer, prompt: str, max_tokens: int) -> tuple[threading.Thread, list[str]]:
    """Starts a stream of `prompt` through `frontend` and returns once its first token is out: the
    thread running it, and a list that gets the stream's worker when it ends."""
    client = openai.OpenAI(base_url=f"{frontend.http_url}/v1", api_key="none")
    started, worker = threading.Event(), []

    def stream() -> None:
        chunks = client.completions.create(model="mock-llm", prompt=prompt, max_tokens=max_tokens, stream=True, extra_body=NVEXT_WORKER)
        for chunk in chunks:
            started.set()
            if (chunk.model_extra or {}).get("nvext"):
                worker.append(worker_of(chunk))
        started.set()

    thread = threading.Thread(target=stream)
    thread.start()
    assert started.wait(30), "the stream started"
    return thread, worker


def busy_and_probe(frontend: TritiumServer) -> tuple[str, str]:
    """Runs a long stream of PROMPT, sends PROMPT again while it runs, and returns the workers of the
    stream and of the second request."""
    thread, stream_worker = stream_in_background(frontend, PROMPT, 80)
    client = openai.OpenAI(base_url=f"{frontend.http_url}/v1", api_key="none")
    probe = client.completions.create(model="mock-llm", prompt=PROMPT, max_tokens=1, extra_body=NVEXT_WORKER)
    thread.join(60)
    assert stream_worker, "the stream named its worker"
    return stream_worker[0], worker_of(probe)


@pytest.fixture
@needs("nats")
def nats_events():
    """A real NATS server for the test, as the options that put a process on it."""
    nats = start_nats()
    yield ["--event-plane", "nats", "--nats-url", nats.address]
    nats.stop()



# 300 tokens for the mock engine's byte tokenizer: 1.5 s to prefill at 5 ms a token.
SLOW_PROMPT = "word " * 60
SLOW_PREFILL = ["--mock-prefill-us-per-token", "5000"]


def routed(frontend: TritiumServer) -> float:
    with urllib.request.urlopen(f"{frontend.http_url}/metrics", timeout=10) as response:
        return metric(response.read().decode(), "tritium_router_requests_total")


def second_while_first_prefills(frontend: TritiumServer) -> tuple[int, dict]:
    """Starts a long prompt (slow to prefill on the mock worker) and, once it is routed, sends
    another: the second's status and body."""
    before = routed(frontend)
    body = {"model": "mock-llm", "prompt": SLOW_PROMPT, "max_tokens": 1}
    answers: list = []
    first = threading.Thread(target=lambda: answers.append(post(f"{frontend.http_url}/v1/completions", body)))
    first.start()
    wait_until(lambda: routed(frontend) > before or bool(answers), 10, "the first request routed")
    assert not answers, f"the first request ended before it was seen routed: {answers}"
    answer = post(f"{frontend.http_url}/v1/completions", {**body, "prompt": "short"})
    first.join(60)
    return answer



def metric_or_zero(frontend: TritiumServer, name: str, labels: str = "") -> float:
    with urllib.request.urlopen(f"{frontend.http_url}/metrics", timeout=10) as response:
        text = response.read().decode()
    try:
        return metric(text, name, labels)
    except Exception:
        return 0.0


