"""Dynamo's frontend options under their own names and variables (issue 44), each observed through
real requests on a real `tritium serve`: where the HTTP port listens, whether the KServe gRPC port
is served, where metrics go, which router mode and KV routing run (mock-engine workers found
through file discovery), the Anthropic door, the preprocessing pool, its perf log and the
fastokens encoder (the real SmolLM2), every variable read with a flag beating it, and bad values
refused at start naming what is allowed."""

from __future__ import annotations

import json
import os
import pathlib
import re
import socket
import subprocess
import threading
import urllib.error
import urllib.request

import numpy as np
import openai
import pytest
import tritonclient.grpc as grpcclient

from cluster import listed_models, metric, start_nats, wait_until, workers_serving
from conftest import LLM_NAME, LLM_START_TIMEOUT, model_paths
from helpers import (
    READY_PREFIX,
    TritiumServer,
    bound_listener,
    finish_server,
    launch,
    start_failure,
    start_server,
    start_worker,
    tritium_bin,
)


def free_port() -> int:
    """A port nothing listens on now (the OS's pick), for options that take a port number."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def serve_on_grpc_fd(*args: str) -> TritiumServer:
    """`tritium serve` handed only its gRPC socket: HTTP and metrics bind what the options say."""
    grpc = bound_listener()
    return launch(["serve", "--grpc-listen-fd", str(grpc.fileno()), *args], [grpc], READY_PREFIX, 60)


def get(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            return response.status
    except urllib.error.HTTPError as error:
        return error.code


def post(url: str, body: dict) -> tuple[int, dict]:
    request = urllib.request.Request(url, data=json.dumps(body).encode(), headers={"content-type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read() or b"{}")


def test_the_http_port_and_host_come_from_dynamos_variables_and_a_flag_beats_them(monkeypatch):
    env_port, flag_port = free_port(), free_port()
    monkeypatch.setenv("DYN_HTTP_HOST", "127.0.0.1")
    monkeypatch.setenv("DYN_HTTP_PORT", str(env_port))
    server = serve_on_grpc_fd("--allow-metrics", "false")
    try:
        assert get(f"http://127.0.0.1:{env_port}/v2/health/ready") == 200
    finally:
        finish_server(server)
    server = serve_on_grpc_fd("--allow-metrics", "false", "--http-port", str(flag_port))
    try:
        assert get(f"http://127.0.0.1:{flag_port}/v2/health/ready") == 200
        with pytest.raises(urllib.error.URLError):
            urllib.request.urlopen(f"http://127.0.0.1:{env_port}/v2/health/ready", timeout=5)
    finally:
        finish_server(server)


def test_no_kserve_grpc_server_serves_http_without_a_grpc_port(monkeypatch):
    for how in (["--no-kserve-grpc-server"], ["--kserve-grpc-server", "--no-kserve-grpc-server"], []):
        if not how:
            monkeypatch.setenv("DYN_KSERVE_GRPC_SERVER", "false")
        server = start_server(*how)
        try:
            assert "grpc=" not in server.ready_line, server.ready_line
            assert get(f"{server.http_url}/v2/health/ready") == 200
            # The socket handed over for gRPC was closed: nothing answers there.
            with pytest.raises(ConnectionRefusedError):
                socket.create_connection(("127.0.0.1", server.port), timeout=5).close()
        finally:
            finish_server(server)
    monkeypatch.delenv("DYN_KSERVE_GRPC_SERVER")
    # The flag beats the variable.
    monkeypatch.setenv("DYN_KSERVE_GRPC_SERVER", "0")
    server = start_server("--kserve-grpc-server")
    try:
        assert grpcclient.InferenceServerClient(server.url).is_server_live()
    finally:
        finish_server(server)


def test_grpc_metrics_port_serves_the_metrics():
    """(DYN_GRPC_METRICS_PORT is read as the dump test shows: the harness keeps DYN_GRPC_* from servers.)"""
    port = free_port()
    grpc, http = bound_listener(), bound_listener()
    server = launch(
        ["serve", "--grpc-listen-fd", str(grpc.fileno()), "--http-listen-fd", str(http.fileno()), "--grpc-metrics-port", str(port)],
        [grpc, http],
        READY_PREFIX,
        60,
    )
    try:
        assert f"metrics=0.0.0.0:{port}" in server.ready_line, server.ready_line
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
            assert "nv_inference_request_success" in response.read().decode()
    finally:
        finish_server(server)


def test_router_mode_from_its_variable_and_the_flag_beating_it(monkeypatch):
    """`direct` mode makes a request name its worker, so the mode in force shows in the answer."""
    data = np.arange(16, dtype=np.float32)

    def infer(server: TritiumServer):
        tensor = grpcclient.InferInput("INPUT0", [16], "FP32")
        tensor.set_data_from_numpy(data)
        return grpcclient.InferenceServerClient(server.url).infer("identity", [tensor])

    for variable in ("DYN_ROUTER_MODE",):
        monkeypatch.setenv(variable, "direct")
        server = start_server()
        try:
            with pytest.raises(Exception, match="the router is in 'direct' mode"):
                infer(server)
        finally:
            finish_server(server)
        monkeypatch.delenv(variable)
    monkeypatch.setenv("DYN_ROUTER_MODE", "direct")
    server = start_server("--router-mode", "round-robin")
    try:
        np.testing.assert_array_equal(infer(server).as_numpy("OUTPUT0"), data)
    finally:
        finish_server(server)


def test_the_anthropic_door_follows_its_pair_of_flags_and_its_variable(monkeypatch):
    body = {"model": "mock-llm", "max_tokens": 4, "messages": [{"role": "user", "content": "hi"}]}
    cases = [([], {}, 404), (["--enable-anthropic-api"], {}, 200), (["--enable-anthropic-api", "--no-enable-anthropic-api"], {}, 404),
             ([], {"DYN_ENABLE_ANTHROPIC_API": "1"}, 200), (["--no-enable-anthropic-api"], {"DYN_ENABLE_ANTHROPIC_API": "true"}, 404)]  # fmt: skip
    for flags, env, status in cases:
        for name, value in env.items():
            monkeypatch.setenv(name, value)
        server = start_server("--engine", "mock", *flags)
        try:
            assert post(f"{server.http_url}/v1/messages", body)[0] == status, (flags, env)
        finally:
            finish_server(server)
        for name in env:
            monkeypatch.delenv(name)


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


def busy_and_probe(frontend: TritiumServer) -> tuple[str, str]:
    """Runs a long stream of PROMPT, sends PROMPT again while it runs, and returns the workers of the
    stream and of the second request."""
    client = openai.OpenAI(base_url=f"{frontend.http_url}/v1", api_key="none")
    nvext = {"nvext": {"extra_fields": ["worker_id"]}}
    started, stream_worker = threading.Event(), []

    def stream() -> None:
        chunks = client.completions.create(model="mock-llm", prompt=PROMPT, max_tokens=80, stream=True, extra_body=nvext)
        for chunk in chunks:
            started.set()
            if (chunk.model_extra or {}).get("nvext"):
                stream_worker.append(worker_of(chunk))
        started.set()

    thread = threading.Thread(target=stream)
    thread.start()
    assert started.wait(30), "the stream started"
    probe = client.completions.create(model="mock-llm", prompt=PROMPT, max_tokens=1, extra_body=nvext)
    thread.join(60)
    assert stream_worker, "the stream named its worker"
    return stream_worker[0], worker_of(probe)


def test_without_kv_events_the_router_predicts_cached_prefixes_and_load_aware_routes_by_load(file_cluster, monkeypatch):
    file_cluster.worker()
    file_cluster.worker()
    # No event plane: only the router's own prediction can know where PROMPT's blocks are.
    predicting = file_cluster.frontend("--router-mode", "kv", "--no-router-kv-events", "--router-ttl-secs", "600")
    client = openai.OpenAI(base_url=f"{predicting.http_url}/v1", api_key="none")
    nvext = {"nvext": {"extra_fields": ["worker_id"]}}
    first = worker_of(client.completions.create(model="mock-llm", prompt=PROMPT, max_tokens=1, extra_body=nvext))
    for _ in range(5):
        assert worker_of(client.completions.create(model="mock-llm", prompt=PROMPT, max_tokens=1, extra_body=nvext)) == first
    with urllib.request.urlopen(f"{predicting.http_url}/metrics", timeout=10) as response:
        assert metric(response.read().decode(), "tritium_router_kv_blocks_predicted") > 0
    # The predicted prefix outweighs the running stream's load: the second request joins it.
    stream, probe = busy_and_probe(predicting)
    assert probe == stream
    # Dynamo's load-aware preset (here from its variable) drops the overlap: the idle worker takes it.
    monkeypatch.setenv("DYN_ROUTER_LOAD_AWARE", "true")
    load_aware = file_cluster.frontend("--router-mode", "kv", "--no-router-kv-events", "--router-ttl-secs", "600")
    stream, probe = busy_and_probe(load_aware)
    assert probe != stream


def test_the_tracked_load_terms_price_a_running_stream(file_cluster):
    """A stream of PROMPT runs on one worker; the same prompt again goes where the router's price says.
    With --router-track-active-blocks, kv reuse makes the stream's blocks the new request's (join
    it); without reuse, and with the stream's output blocks counted, it is dearer than the idle
    worker (go elsewhere); without active-block tracking (Tritium's default) the reported-load
    score prefers the cached prefix (join it)."""
    file_cluster.worker()
    file_cluster.worker()
    predict = ["--router-mode", "kv", "--no-router-kv-events", "--router-ttl-secs", "600"]
    no_reuse = ["--no-router-assume-kv-reuse", "--router-track-output-blocks"]
    stream, probe = busy_and_probe(file_cluster.frontend(*predict, "--router-track-active-blocks"))
    assert probe == stream
    stream, probe = busy_and_probe(file_cluster.frontend(*predict, "--router-track-active-blocks", *no_reuse))
    assert probe != stream
    stream, probe = busy_and_probe(file_cluster.frontend(*predict, *no_reuse))
    assert probe == stream


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


def test_prefill_busy_thresholds_and_admission_control(file_cluster, tmp_path):
    """A worker prefilling a long prompt has more tokens waiting than the threshold: the next
    request is refused at once (503) while it prefills; --admission-control none lifts it."""
    nats = start_nats()
    try:
        events = ["--event-plane", "nats", "--nats-url", nats.address]
        file_cluster.worker(*SLOW_PREFILL, *events)
        status, body = second_while_first_prefills(file_cluster.frontend("--active-prefill-tokens-threshold", "10", workers=1))
        assert status == 503 and "too many prompt tokens waiting to be prefilled" in json.dumps(body), (status, body)
        relaxed = file_cluster.frontend("--active-prefill-tokens-threshold", "10", "--admission-control", "none", workers=1)
        assert second_while_first_prefills(relaxed)[0] == 200
        # The fraction is of the engine step's prefill budget (256 tokens), which the worker reports on the event plane.
        fraction = file_cluster.frontend("--active-prefill-tokens-threshold-frac", "0.05", *events, workers=1)
        reported = 'model="mock-llm"'
        wait_until(lambda: metric_or_zero(fraction, "tritium_llm_engine_kv_tokens_capacity", reported) > 0, 10, "a load report")
        status, body = second_while_first_prefills(fraction)
        assert status == 503, (status, body)
        roomy = file_cluster.frontend("--active-prefill-tokens-threshold-frac", "100", *events, workers=1)
        assert second_while_first_prefills(roomy)[0] == 200
    finally:
        file_cluster.stop()
        nats.stop()


@pytest.mark.parametrize(("policy", "expected"), [("fcfs", "BCD"), ("lcfs", "DCB"), ("wspt", "CDB")])
def test_the_router_queue_holds_requests_while_workers_are_full_and_lets_them_go_in_policy_order(
    file_cluster, policy, expected
):
    """One worker prefilling a long prompt is full under --router-queue-threshold 0; B (long), C
    (short) and D (medium) arrive in that order and wait in the router; each goes once the one
    before it has prefilled, in the policy's order."""
    nats = start_nats()
    try:
        events = ["--event-plane", "nats", "--nats-url", nats.address]
        file_cluster.worker(*SLOW_PREFILL, *events)
        frontend = file_cluster.frontend("--router-queue-threshold", "0", "--router-queue-policy", policy, *events, workers=1)
        wait_until(lambda: metric_or_zero(frontend, "tritium_llm_engine_kv_tokens_capacity", 'model="mock-llm"') > 0, 10, "a load report")
        done: list[str] = []

        def ask(name: str, prompt: str) -> threading.Thread:
            def run() -> None:
                status, _ = post(f"{frontend.http_url}/v1/completions", {"model": "mock-llm", "prompt": prompt, "max_tokens": 1})
                done.append(name if status == 200 else f"{name}:{status}")

            thread = threading.Thread(target=run)
            thread.start()
            return thread

        before = routed(frontend)
        threads = [ask("A", SLOW_PROMPT)]
        wait_until(lambda: routed(frontend) > before, 10, "A routed")
        for waiting, (name, prompt) in enumerate([("B", "word " * 40), ("C", "hi"), ("D", "word " * 10)], start=1):
            threads.append(ask(name, prompt))
            wait_until(lambda n=waiting: metric_or_zero(frontend, "tritium_router_queue_waiting") == n, 10, f"{name} queued")
        for thread in threads:
            thread.join(60)
        assert "".join(done) == "A" + expected, done
        assert metric_or_zero(frontend, "tritium_router_queued_total") == 3
    finally:
        file_cluster.stop()
        nats.stop()


def test_router_replicas_share_their_predictions_with_replica_sync(file_cluster):
    """Without KV events each router only knows where it sent prompts itself; with
    --router-replica-sync a prompt warmed through one frontend goes to the same worker through
    another. Six prompts: each lands where the first frontend sent it (by chance: 1 in 64)."""
    nats = start_nats()
    try:
        events = ["--event-plane", "nats", "--nats-url", nats.address]
        file_cluster.worker(*events)
        file_cluster.worker(*events)
        predict = ["--router-mode", "kv", "--no-router-kv-events", "--router-ttl-secs", "600", "--router-replica-sync", *events]
        first, second = file_cluster.frontend(*predict), file_cluster.frontend(*predict)
        nvext = {"nvext": {"extra_fields": ["worker_id"]}}

        def worker_for(frontend: TritiumServer, prompt: str) -> str:
            client = openai.OpenAI(base_url=f"{frontend.http_url}/v1", api_key="none")
            return worker_of(client.completions.create(model="mock-llm", prompt=prompt, max_tokens=1, extra_body=nvext))

        prompts = [f"Topic {i}: " + "a shared prefix worth keeping. " * 8 for i in range(6)]
        warmed = [worker_for(first, prompt) for prompt in prompts]
        predicted = lambda f: metric_or_zero(f, "tritium_router_kv_blocks_predicted")  # noqa: E731
        wait_until(lambda: predicted(second) >= predicted(first) > 0, 10, "the second router to hear the first's predictions")
        assert [worker_for(second, prompt) for prompt in prompts] == warmed
    finally:
        file_cluster.stop()
        nats.stop()


@pytest.mark.parametrize("plane", ["nats", "zmq", "unset"])
def test_kv_events_reach_the_index_over_each_event_plane_and_number_of_event_threads(file_cluster, plane):
    """Workers' KV events reach the frontend over NATS, over ZeroMQ (each worker's PUB socket found
    through discovery), and over ZeroMQ when no plane is named (Dynamo's default with file
    discovery); they are applied by --router-event-threads tasks: with 1 and with 8 the index
    fills and a repeated prompt goes back to the worker holding it."""
    nats = start_nats() if plane == "nats" else None
    try:
        events = {"nats": ["--event-plane", "nats", "--nats-url", nats.address] if nats else [],
                  "zmq": ["--event-plane", "zmq"], "unset": []}[plane]  # fmt: skip
        file_cluster.worker(*events)
        file_cluster.worker(*events)
        nvext = {"nvext": {"extra_fields": ["worker_id"]}}
        for threads in ("1", "8"):
            frontend = file_cluster.frontend("--router-mode", "kv", "--router-event-threads", threads, *events)
            client = openai.OpenAI(base_url=f"{frontend.http_url}/v1", api_key="none")
            prompt = f"{plane} threads {threads}: " + "a prefix the workers will announce. " * 10
            first = worker_of(client.completions.create(model="mock-llm", prompt=prompt, max_tokens=1, extra_body=nvext))
            wait_until(lambda f=frontend: metric_or_zero(f, "tritium_router_kv_blocks_indexed") > 0, 10, "KV events indexed")
            for _ in range(4):
                again = client.completions.create(model="mock-llm", prompt=prompt, max_tokens=1, extra_body=nvext)
                assert worker_of(again) == first
            assert metric_or_zero(frontend, "tritium_router_prompt_blocks_cached_total") > 0
    finally:
        file_cluster.stop()
        if nats:
            nats.stop()


def test_device_aware_weighted_gives_an_accelerator_worker_its_ratio_of_the_streams(file_cluster, monkeypatch):
    """A CPU worker and an accelerator worker (--device-class); with DYN_ENCODER_CUDA_TO_CPU_RATIO=4,
    ten overlapping streams split about 8 to 2 (least-loaded would split them 5 to 5)."""
    cpu = file_cluster.worker("--device-class", "cpu", "--worker-id", "cpu-worker")
    accelerator = file_cluster.worker("--device-class", "accelerator", "--worker-id", "gpu-worker")
    del cpu, accelerator
    monkeypatch.setenv("DYN_ENCODER_CUDA_TO_CPU_RATIO", "4")
    frontend = file_cluster.frontend("--router-mode", "device-aware-weighted")
    client = openai.OpenAI(base_url=f"{frontend.http_url}/v1", api_key="none")
    nvext = {"nvext": {"extra_fields": ["worker_id"]}}
    served: list[str] = []
    started = threading.Semaphore(0)

    def stream(i: int) -> None:
        chunks = client.completions.create(model="mock-llm", prompt=f"stream {i}", max_tokens=50, stream=True, extra_body=nvext)
        for chunk in chunks:
            started.release()
            if (chunk.model_extra or {}).get("nvext"):
                served.append(worker_of(chunk))

    threads = []
    for i in range(10):
        threads.append(threading.Thread(target=stream, args=(i,)))
        threads[-1].start()
        assert started.acquire(timeout=30), "each stream starts before the next is sent"
    for thread in threads:
        thread.join(60)
    assert len(served) == 10, served
    assert served.count("gpu-worker") >= 7 and served.count("cpu-worker") >= 1, served


def test_without_an_event_plane_no_kv_event_reaches_the_frontend(file_cluster):
    """The contrast: with --event-plane none the frontend's index stays empty."""
    file_cluster.worker("--event-plane", "none")
    frontend = file_cluster.frontend("--router-mode", "kv", "--event-plane", "none", workers=1)
    client = openai.OpenAI(base_url=f"{frontend.http_url}/v1", api_key="none")
    for _ in range(3):
        client.completions.create(model="mock-llm", prompt="a prefix nobody announces. " * 10, max_tokens=1)
    assert metric_or_zero(frontend, "tritium_router_kv_blocks_indexed") == 0


def test_a_frontend_restores_the_kv_index_from_the_snapshot_and_reset_states_starts_empty(file_cluster):
    """The first frontend writes its KV index to the discovery folder after every KV event
    (--router-snapshot-threshold 1); a frontend started afterwards knows where the prompts are
    cached before any new event and routes them there; --router-reset-states starts empty and
    deletes the snapshot."""
    nats = start_nats()
    try:
        events = ["--event-plane", "nats", "--nats-url", nats.address]
        file_cluster.worker(*events)
        file_cluster.worker(*events)
        kv = ["--router-mode", "kv", *events]
        first = file_cluster.frontend(*kv, "--router-snapshot-threshold", "1")
        nvext = {"nvext": {"extra_fields": ["worker_id"]}}

        def worker_for(frontend: TritiumServer, prompt: str) -> str:
            client = openai.OpenAI(base_url=f"{frontend.http_url}/v1", api_key="none")
            return worker_of(client.completions.create(model="mock-llm", prompt=prompt, max_tokens=1, extra_body=nvext))

        prompts = [f"Snapshot {i}: " + "the workers cache this prefix. " * 8 for i in range(6)]
        cached = [worker_for(first, prompt) for prompt in prompts]
        document = file_cluster.folder / "tritium" / "router-kv-snapshot.document"

        def stored_blocks() -> int:
            try:
                return sum(len(entry["blocks"]) for entry in json.loads(document.read_text())["entries"])
            except (OSError, ValueError):
                return -1

        indexed = lambda f: metric_or_zero(f, "tritium_router_kv_blocks_indexed")  # noqa: E731
        wait_until(lambda: stored_blocks() > 0 and stored_blocks() >= indexed(first) > 0, 10, "the snapshot to hold the index")
        later = file_cluster.frontend(*kv)
        assert indexed(later) > 0, "restored before any new event"
        assert [worker_for(later, prompt) for prompt in prompts] == cached
        fresh = file_cluster.frontend(*kv, "--router-reset-states")
        assert indexed(fresh) == 0 and not document.exists()
    finally:
        file_cluster.stop()
        nats.stop()


def metric_or_zero(frontend: TritiumServer, name: str, labels: str = "") -> float:
    with urllib.request.urlopen(f"{frontend.http_url}/metrics", timeout=10) as response:
        text = response.read().decode()
    try:
        return metric(text, name, labels)
    except Exception:
        return 0.0


def test_without_decode_fallback_decode_workers_wait_for_a_prefill_worker(file_cluster):
    file_cluster.worker("--disaggregation-mode", "decode")
    body = {"model": "mock-llm", "prompt": "hello", "max_tokens": 2}
    fallback = file_cluster.frontend(workers=1)
    assert post(f"{fallback.http_url}/v1/completions", body)[0] == 200
    strict = file_cluster.frontend("--no-decode-fallback", workers=1)
    status, answer = post(f"{strict.http_url}/v1/completions", body)
    assert status == 503 and "no prefill worker is up" in json.dumps(answer), (status, answer)


def perf_lines(server: TritiumServer) -> list[str]:
    return [line for line in server.stderr().splitlines() if "preprocess timing" in line]


def test_fastokens_preprocess_workers_and_debug_perf_on_the_real_model():
    gguf, _ = model_paths()
    model = ["--model-path", str(gguf), "--model-name", LLM_NAME]
    fast = start_server(*model, "--tokenizer", "fastokens", "--no-tokenizer-fallback", "--dyn-preprocess-workers", "2",
                        "--dyn-debug-perf", timeout=LLM_START_TIMEOUT)  # fmt: skip
    plain = start_server(*model, timeout=LLM_START_TIMEOUT)
    try:
        texts = ["Hello, world!", "naïve café 日本語 😀 1234567890", "def f(x):\n    return x ** 2\n", "a.a.a.a 11 222 3333 " * 50]
        for text in texts:
            answers = [post(f"{server.http_url}/tokenize", {"model": LLM_NAME, "prompt": text}) for server in (fast, plain)]
            assert answers[0] == answers[1] and answers[0][0] == 200, (text, answers)
        messages = [{"role": "user", "content": "What is 2 + 2?"}]
        status, _ = post(f"{fast.http_url}/tokenize", {"model": LLM_NAME, "messages": messages})
        assert status == 200
        lines = perf_lines(fast)
        tokenized = [line for line in lines if "tokenize (fastokens)" in line]
        rendered = [line for line in lines if "chat_template" in line]
        assert len(tokenized) >= len(texts) and rendered, lines
        assert all('thread="tritium-preprocess-' in line and "pooled=true" in line for line in tokenized + rendered), lines
        assert not perf_lines(plain)
    finally:
        finish_server(fast)
        finish_server(plain)


def test_without_a_pool_debug_perf_times_steps_where_they_run(monkeypatch):
    monkeypatch.setenv("DYN_DEBUG_PERF", "1")
    server = start_server("--engine", "mock")
    try:
        assert post(f"{server.http_url}/tokenize", {"model": "mock-llm", "prompt": "hello there"})[0] == 200
        lines = perf_lines(server)
        assert lines and all("pooled=false" in line and "tritium-preprocess" not in line for line in lines), lines
    finally:
        finish_server(server)


def test_the_readme_table_of_dynamos_options_matches_the_server():
    """Every option the README's table says Tritium takes is in `tritium serve --help` and every
    variable it names is read; the ones it says are not yet taken are refused."""
    readme = (pathlib.Path(__file__).resolve().parents[2] / "README.md").read_text()
    section = readme.split("### Dynamo's frontend options", 1)[1].split("\n## ", 1)[0]
    rows = [line.split(" | ") for line in section.splitlines() if line.startswith("| ") and not line.startswith("| Dynamo option")]
    rows = [row for row in rows if len(row) == 3 and not row[0].startswith("|---")]
    assert len(rows) >= 35, len(rows)
    help_text = subprocess.run([str(tritium_bin()), "serve", "--help"], capture_output=True, text=True, timeout=60).stdout
    aliases = (pathlib.Path(__file__).resolve().parents[2] / "server" / "src" / "config" / "env_alias.rs").read_text()
    for options, variables, behaviour in rows:
        flags = [flag for flag in re.findall(r"--[a-z0-9-]+", options) if not flag.endswith("-")]
        for flag in flags:
            if behaviour.startswith("not yet"):
                assert f"{flag} " not in help_text and f"{flag}\n" not in help_text, f"{flag} is said not to be taken"
            else:
                assert re.search(rf"{re.escape(flag)}[ ,=<\]\n]", help_text), f"{flag} is said to be taken but is not in --help"
        for variable in re.findall(r"`((?:DYN|ETCD|NATS)_[A-Z_]+[A-Z])`", options + variables + behaviour):
            assert f"env: {variable}" in help_text or f'"{variable}"' in aliases, f"{variable} is read by no option"


# Every variable the frontend reads for a Dynamo option, with a value it accepts.
VARIABLES = {
    "DYN_HTTP_HOST": ("http-host", "127.0.0.1"),
    "DYN_HTTP_PORT": ("http-port", "8123"),
    "DYN_HTTP_GRACEFUL_SHUTDOWN_TIMEOUT_SECS": ("exit-timeout-secs", "7"),
    "DYN_HTTP_BODY_LIMIT_MB": ("http-body-limit-mb", "9"),
    "DYN_TLS_CERT_PATH": ("tls-cert-path", "/c.pem"),
    "DYN_TLS_KEY_PATH": ("tls-key-path", "/k.pem"),
    "DYN_TLS_CLIENT_CA_CERT_PATH": ("tls-client-ca-cert-path", "/ca.pem"),
    "DYN_ROUTER_MODE": ("router-mode", "power-of-two"),
    "DYN_ENCODER_CUDA_TO_CPU_RATIO": ("non-cpu-to-cpu-ratio", "4"),
    "DYN_ROUTER_LOAD_AWARE": ("load-aware", "false"),
    "DYN_ROUTER_KV_OVERLAP_SCORE_CREDIT": ("router-kv-overlap-score-credit", "0.5"),
    "DYN_ROUTER_TEMPERATURE": ("router-temperature", "0.25"),
    "DYN_ROUTER_USE_KV_EVENTS": ("router-kv-events", "0"),
    "DYN_ROUTER_TTL_SECS": ("router-ttl-secs", "30"),
    "DYN_ROUTER_REPLICA_SYNC": ("router-replica-sync", "true"),
    "DYN_ROUTER_EVENT_THREADS": ("router-event-threads", "2"),
    "DYN_ROUTER_SNAPSHOT_THRESHOLD": ("router-snapshot-threshold", "500"),
    "DYN_ROUTER_RESET_STATES": ("router-reset-states", "true"),
    "DYN_ROUTER_PREFILL_LOAD_MODEL": ("router-prefill-load-model", "none"),
    "DYN_AIS_BACKEND": ("ais-backend", "vllm"),
    "DYN_ROUTER_TRACK_ACTIVE_BLOCKS": ("router-track-active-blocks", "false"),
    "DYN_ROUTER_TRACK_OUTPUT_BLOCKS": ("router-track-output-blocks", "true"),
    "DYN_ROUTER_ASSUME_KV_REUSE": ("router-assume-kv-reuse", "0"),
    "DYN_ROUTER_TRACK_PREFILL_TOKENS": ("router-track-prefill-tokens", "1"),
    "DYN_ROUTER_PREFILL_LOAD_SCALE": ("router-prefill-load-scale", "1.5"),
    "DYN_MIGRATION_LIMIT": ("migration-limit", "2"),
    "DYN_ACTIVE_DECODE_BLOCKS_THRESHOLD": ("active-decode-blocks-threshold", "0.9"),
    "DYN_ACTIVE_PREFILL_TOKENS_THRESHOLD": ("active-prefill-tokens-threshold", "100"),
    "DYN_ACTIVE_PREFILL_TOKENS_THRESHOLD_FRAC": ("active-prefill-tokens-threshold-frac", "0.5"),
    "DYN_ADMISSION_CONTROL": ("admission-control", "none"),
    "DYN_DECODE_FALLBACK": ("decode-fallback", "false"),
    "DYN_ROUTER_QUEUE_THRESHOLD": ("router-queue-threshold", "0.5"),
    "DYN_ROUTER_QUEUE_POLICY": ("router-queue-policy", "wspt"),
    "DYN_NAMESPACE": ("namespace", "blue"),
    "DYN_NAMESPACE_PREFIX": ("namespace-prefix", "bl"),
    "DYN_MODEL_NAME": ("model-name", "m"),
    "DYN_MODEL_PATH": ("model-path", "/m.gguf"),
    "DYN_KV_CACHE_BLOCK_SIZE": ("kv-cache-block-size", "32"),
    "DYN_DISCOVERY_BACKEND": ("discovery-backend", "file"),
    "DYN_FILE_KV": ("discovery-dir", "/kv"),
    "ETCD_ENDPOINTS": ("etcd-endpoints", "http://e:2379"),
    "DYN_EVENT_PLANE": ("event-plane", "nats"),
    "DYN_EVENT_PLANE_HOST": ("event-plane-host", "127.0.0.1"),
    "NATS_SERVER": ("nats-url", "nats://n:4222"),
    "DYN_REQUEST_PLANE": ("request-plane", "tcp"),
    "DYN_KSERVE_GRPC_SERVER": ("kserve-grpc-server", "true"),
    "DYN_GRPC_METRICS_PORT": ("metrics-port", "8788"),
    "DYN_METRICS_PREFIX": ("metrics-prefix", "edge"),
    "DYN_DUMP_CONFIG_TO": None,
    "DYN_ENABLE_ANTHROPIC_API": ("enable-anthropic-api", "1"),
    "DYN_CHAT_PROCESSOR": ("dyn-chat-processor", "dynamo"),
    "DYN_DEBUG_PERF": ("dyn-debug-perf", "true"),
    "DYN_PREPROCESS_WORKERS": ("dyn-preprocess-workers", "3"),
    "DYN_TOKENIZER": ("tokenizer", "fastokens"),
    "DYN_TOKENIZER_FALLBACK": ("tokenizer-fallback", "false"),
    "DYN_INTERACTIVE": ("interactive", "false"),
}


def dump_with(tmp_path, env: dict[str, str], *flags: str) -> dict:
    """The options `tritium serve FLAGS` resolves under `env` (the dump is written before it starts,
    so the server's own fate does not matter)."""
    dump = tmp_path / "dump.json"
    dump.unlink(missing_ok=True)
    base = {k: v for k, v in os.environ.items() if not k.startswith(("TRITIUM_", "DYN_")) and k not in ("ETCD_ENDPOINTS", "NATS_SERVER")}
    proc = subprocess.Popen([str(tritium_bin()), "serve", *flags], env={**base, **env, "DYN_DUMP_CONFIG_TO": str(dump)},
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    try:
        wait_until(lambda: dump.is_file() and dump.stat().st_size > 0, 30, "the dump")
    finally:
        proc.kill()
        proc.wait(timeout=10)
    return json.loads(dump.read_text())["options"]


def test_every_variable_is_read_and_a_flag_beats_it(tmp_path):
    env = {name: option[1] for name, option in VARIABLES.items() if option}
    options = dump_with(tmp_path, env)
    for name, option in VARIABLES.items():
        if option is None:
            continue
        key, value = option
        got = options[key]
        expected = [value] if key in ("model-name", "model-path", "etcd-endpoints") else value
        assert got["source"] == "environment" and got["env"] == name and got["value"] == expected, (name, got)
    flags = dump_with(tmp_path, env, "--router-mode", "kv", "--no-router-kv-events", "--namespace", "green", "--http-port", "9")
    assert flags["router-mode"] == {"value": "kv", "source": "command_line", "env": "DYN_ROUTER_MODE"}
    assert flags["no-router-kv-events"]["source"] == "command_line"
    assert flags["namespace"]["value"] == "green" and flags["http-port"]["value"] == "9"
    # Tritium's earlier variable still sets an option, and Dynamo's beats it.
    old = dump_with(tmp_path, {"TRITIUM_NAMESPACE": "old"})
    assert old["namespace"] == {"value": "old", "source": "environment", "env": "TRITIUM_NAMESPACE"}
    both = dump_with(tmp_path, {"TRITIUM_NAMESPACE": "old", "DYN_NAMESPACE": "new"})
    assert both["namespace"]["value"] == "new"


@pytest.mark.parametrize(
    ("args", "fragments"),
    [
        (["--router-mode", "xyz"], ["round-robin", "power-of-two", "least-loaded", "kv", "direct", "device-aware-weighted"]),
        (["--non-cpu-to-cpu-ratio", "0"], ["--non-cpu-to-cpu-ratio must be at least 1"]),
        (["--router-temperature", "-1"], ["--router-temperature must be a finite number >= 0"]),
        (["--router-kv-overlap-score-credit", "2"], ["--router-kv-overlap-score-credit must be in [0, 1]"]),
        (["--router-ttl-secs", "0"], ["--router-ttl-secs must be in"]),
        (["--router-prefill-load-scale", "-2"], ["--router-prefill-load-scale must be a finite number >= 0"]),
        (["--admission-control", "strict"], ["token-capacity", "none"]),
        (["--router-replica-sync"], ["--event-plane nats"]),
        (["--router-prefill-load-model", "aic"], ["performance database"]),
        (["--aic-backend", "vllm"], ["--ais-backend configures --router-prefill-load-model ais"]),
        (["--router-queue-policy", "xyz"], ["fcfs", "wspt", "lcfs"]),
        (["--router-queue-threshold", "-1"], ["--router-queue-threshold must be a number >= 0"]),
        (["--active-prefill-tokens-threshold", "many"], ["is not a token count (or None)"]),
        (["--discovery-backend", "kubernetes"], ["Kubernetes discovery", "etcd"]),
        (["--event-plane", "zmq"], ["--event-plane zmq finds publishers through discovery"]),
        (["--request-plane", "nats"], ["NATS request plane", "tcp"]),
        (["--dyn-chat-processor", "vllm"], ["vLLM", "'dynamo'"]),
        (["--tokenizer", "basetenkenizer"], ["default or fastokens"]),
        (["--tokenizer", "sentencepiece"], ["default", "fastokens"]),
        (["--load-aware=perhaps"], ["--load-aware"]),
        (["--discovery-backend", "etcd"], ["needs --etcd-endpoints (or ETCD_ENDPOINTS)"]),
        (["--event-plane", "nats"], ["needs --nats-url (or NATS_SERVER)"]),
        (["--tls-cert-path", "/c.pem"], ["--tls-key-path"]),
        (["--dyn-preprocess-workers", "100000"], ["--dyn-preprocess-workers must be at most"]),
    ],
)
def test_bad_values_are_refused_at_start_naming_what_is_allowed(args, fragments):
    failure = start_failure(*args)
    for fragment in fragments:
        assert fragment in failure, (args, fragment, failure[-2000:])
