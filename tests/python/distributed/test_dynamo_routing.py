"""Dynamo's router options observed through where requests go: mock-engine workers found through a
discovery folder (and NATS or ZeroMQ for events), frontends with each option, and the worker each
request names in `nvext.worker_id` (issue 44)."""

from __future__ import annotations

import json
import threading
import urllib.request

import openai
import pytest

from cluster import metric, start_nats, wait_until
from dynamo_cluster import (  # noqa: F401 (file_cluster is a fixture)
    PROMPT,
    SLOW_PREFILL,
    busy_and_probe,
    file_cluster,
    nats_events,
    stream_in_background,
    worker_for,
    metric_or_zero,
    post,
    routed,
    second_while_first_prefills,
    worker_of,
)


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
    worker (go elsewhere); with --no-router-track-active-blocks (Tritium's own score) the
    reported-load score prefers the cached prefix (join it)."""
    file_cluster.worker()
    file_cluster.worker()
    predict = ["--router-mode", "kv", "--no-router-kv-events", "--router-ttl-secs", "600"]
    no_reuse = ["--no-router-assume-kv-reuse", "--router-track-output-blocks"]
    stream, probe = busy_and_probe(file_cluster.frontend(*predict, "--router-track-active-blocks"))
    assert probe == stream
    stream, probe = busy_and_probe(file_cluster.frontend(*predict, "--router-track-active-blocks", *no_reuse))
    assert probe != stream
    stream, probe = busy_and_probe(file_cluster.frontend(*predict, "--no-router-track-active-blocks", *no_reuse))
    assert probe == stream
    # Dynamo 1.6.1's default tracks active blocks: the same price as asking for it.
    stream, probe = busy_and_probe(file_cluster.frontend(*predict, *no_reuse))
    assert probe != stream



def test_prefill_busy_thresholds_and_admission_control(nats_events, file_cluster, tmp_path):
    """A worker prefilling a long prompt has more tokens waiting than the threshold: the next
    request is refused at once (503) while it prefills; --admission-control none lifts it."""
    events = nats_events
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


@pytest.mark.parametrize(("policy", "expected"), [("fcfs", "BCD"), ("lcfs", "DCB"), ("wspt", "CDB")])
def test_the_router_queue_holds_requests_while_workers_are_full_and_lets_them_go_in_policy_order(
    nats_events, file_cluster, policy, expected
):
    """One worker prefilling a long prompt is full under --router-queue-threshold 0; B (long), C
    (short) and D (medium) arrive in that order and wait in the router; each goes once the one
    before it has prefilled, in the policy's order. The prompts share no block, so none of them is
    found in the prefix cache (which would leave no prefill to wait for)."""
    events = nats_events
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
    threads = [ask("A", "alpha " * 50)]
    wait_until(lambda: routed(frontend) > before, 10, "A routed")
    for waiting, (name, prompt) in enumerate([("B", "bravo " * 33), ("C", "hi"), ("D", "delta " * 8)], start=1):
        threads.append(ask(name, prompt))
        wait_until(lambda n=waiting: metric_or_zero(frontend, "tritium_router_queue_waiting") == n, 10, f"{name} queued")
    for thread in threads:
        thread.join(60)
    # A's own answer may come back just after the first request it let go (C is 2 tokens long).
    assert "A" in done and "".join(name for name in done if name != "A") == expected, done
    assert metric_or_zero(frontend, "tritium_router_queued_total") == 3


def test_router_replicas_share_their_predictions_with_replica_sync(nats_events, file_cluster):
    """Without KV events each router only knows where it sent prompts itself; with
    --router-replica-sync a prompt warmed through one frontend goes to the same worker through
    another. Six prompts: each lands where the first frontend sent it (by chance: 1 in 64)."""
    events = nats_events
    file_cluster.worker(*events)
    file_cluster.worker(*events)
    predict = ["--router-mode", "kv", "--no-router-kv-events", "--router-ttl-secs", "600", "--router-replica-sync", *events]
    first, second = file_cluster.frontend(*predict), file_cluster.frontend(*predict)
    prompts = [f"Topic {i}: " + "a shared prefix worth keeping. " * 8 for i in range(6)]
    warmed = [worker_for(first, prompt) for prompt in prompts]
    predicted = lambda f: metric_or_zero(f, "tritium_router_kv_blocks_predicted")  # noqa: E731
    wait_until(lambda: predicted(second) >= predicted(first) > 0, 10, "the second router to hear the first's predictions")
    assert [worker_for(second, prompt) for prompt in prompts] == warmed


def test_replica_sync_shares_the_load_of_running_requests(nats_events, file_cluster):
    """A long stream through one frontend is load the other frontend counts too: with
    --router-replica-sync and --load-aware, three requests through the second frontend all go to
    the worker the stream is not on (each by chance: 1 in 8 for the three)."""
    events = nats_events
    file_cluster.worker(*events)
    file_cluster.worker(*events)
    shared = ["--load-aware", "--router-replica-sync", *events]
    first, second = file_cluster.frontend(*shared), file_cluster.frontend(*shared)
    nvext = {"nvext": {"extra_fields": ["worker_id"]}}
    thread, stream_worker = stream_in_background(first, PROMPT, 120)
    client = openai.OpenAI(base_url=f"{second.http_url}/v1", api_key="none")
    probes = [worker_of(client.completions.create(model="mock-llm", prompt="short", max_tokens=1, extra_body=nvext)) for _ in range(3)]
    thread.join(60)
    assert stream_worker and all(probe != stream_worker[0] for probe in probes), (stream_worker, probes)


@pytest.mark.parametrize("plane", [pytest.param("nats", marks=pytest.mark.nats), "zmq", "unset"])
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


def test_a_frontend_restores_the_kv_index_from_the_snapshot_and_reset_states_starts_empty(nats_events, file_cluster):
    """The first frontend writes its KV index to the discovery folder after every KV event
    (--router-snapshot-threshold 1); a frontend started afterwards knows where the prompts are
    cached before any new event and routes them there; --router-reset-states starts empty and
    deletes the snapshot."""
    events = nats_events
    file_cluster.worker(*events)
    file_cluster.worker(*events)
    kv = ["--router-mode", "kv", *events]
    first = file_cluster.frontend(*kv, "--router-snapshot-threshold", "1")
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


def test_without_decode_fallback_decode_workers_wait_for_a_prefill_worker(file_cluster):
    file_cluster.worker("--disaggregation-mode", "decode")
    body = {"model": "mock-llm", "prompt": "hello", "max_tokens": 2}
    fallback = file_cluster.frontend(workers=1)
    assert post(f"{fallback.http_url}/v1/completions", body)[0] == 200
    strict = file_cluster.frontend("--no-decode-fallback", workers=1)
    status, answer = post(f"{strict.http_url}/v1/completions", body)
    assert status == 503 and "no prefill worker is up" in json.dumps(answer), (status, answer)
