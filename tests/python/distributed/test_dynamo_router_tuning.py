"""Dynamo's router tuning options, each observed through real requests to mock-engine workers
behind a discovery folder: the softmax temperature, the prefill load scale, the queue's bound, the
event plane's bind address and the workers' KV block size (issue 44)."""

from __future__ import annotations

import threading

import openai

from cluster import wait_until
from dynamo_cluster import (  # noqa: F401 (file_cluster and nats_events are fixtures)
    NVEXT_WORKER,
    PROMPT,
    SLOW_PREFILL,
    busy_and_probe,
    file_cluster,
    metric_or_zero,
    nats_events,
    post,
    routed,
    worker_of,
)


def workers_of(frontend, prompt: str, times: int) -> list[str]:
    client = openai.OpenAI(base_url=f"{frontend.http_url}/v1", api_key="none")
    return [worker_of(client.completions.create(model="mock-llm", prompt=prompt, max_tokens=1, extra_body=NVEXT_WORKER))
            for _ in range(times)]  # fmt: skip


def test_router_temperature_samples_workers_where_zero_always_takes_the_best(file_cluster):
    """A prompt cached on one worker (its KV events over ZeroMQ): at temperature 0 every repeat goes
    there; at --router-temperature 1000 the scores' softmax is near uniform, so 24 repeats reach both
    workers (all on one by chance: 2 in 2^24)."""
    file_cluster.worker()
    file_cluster.worker()
    # Both up before the prompt is cached: each hears the workers' events from then on.
    greedy = file_cluster.frontend("--router-mode", "kv")
    hot = file_cluster.frontend("--router-mode", "kv", "--router-temperature", "1000")
    first = workers_of(greedy, PROMPT, 1)[0]
    for frontend in (greedy, hot):
        wait_until(lambda f=frontend: metric_or_zero(f, "tritium_router_kv_blocks_indexed") > 0, 10, "the prompt's blocks indexed")
    assert set(workers_of(greedy, PROMPT, 8)) == {first}
    assert len(set(workers_of(hot, PROMPT, 24))) == 2


def test_router_prefill_load_scale_weighs_uncached_prompt_blocks_against_blocks_held(file_cluster):
    """A stream of PROMPT holds its blocks, and its output's, on one worker; PROMPT again costs
    nothing to prefill there and all its blocks on the idle worker. Without kv reuse the busy worker
    would hold more blocks than the idle one would prefill: at scale 1 the idle worker is cheaper; at
    --router-prefill-load-scale 10 prefilling costs more than blocks held, and the request joins
    the stream's worker."""
    file_cluster.worker()
    file_cluster.worker()
    priced = ["--router-mode", "kv", "--no-router-kv-events", "--router-ttl-secs", "600", "--router-track-active-blocks",
              "--no-router-assume-kv-reuse", "--router-track-output-blocks"]  # fmt: skip
    stream, probe = busy_and_probe(file_cluster.frontend(*priced, "--router-prefill-load-scale", "1"))
    assert probe != stream
    stream, probe = busy_and_probe(file_cluster.frontend(*priced, "--router-prefill-load-scale", "10"))
    assert probe == stream


def test_router_queue_max_requests_refuses_what_does_not_fit(nats_events, file_cluster):
    """One worker prefilling a long prompt is full (--router-queue-threshold 0): the next request
    waits in the router's queue, which holds one (--router-queue-max-requests 1); the one after is
    refused with 503, and the waiting one is served once there is room."""
    file_cluster.worker(*SLOW_PREFILL, *nats_events)
    frontend = file_cluster.frontend("--router-queue-threshold", "0", "--router-queue-max-requests", "1", *nats_events, workers=1)
    wait_until(lambda: metric_or_zero(frontend, "tritium_llm_engine_kv_tokens_capacity", 'model="mock-llm"') > 0, 10, "a load report")
    answers: dict[str, tuple[int, dict]] = {}

    def ask(name: str, prompt: str) -> threading.Thread:
        body = {"model": "mock-llm", "prompt": prompt, "max_tokens": 1}
        thread = threading.Thread(target=lambda: answers.__setitem__(name, post(f"{frontend.http_url}/v1/completions", body)))
        thread.start()
        return thread

    before = routed(frontend)
    first = ask("first", "alpha " * 60)
    wait_until(lambda: routed(frontend) > before, 10, "the first routed")
    waiting = ask("waiting", "bravo " * 8)
    wait_until(lambda: metric_or_zero(frontend, "tritium_router_queue_waiting") == 1, 10, "one request queued")
    status, body = post(f"{frontend.http_url}/v1/completions", {"model": "mock-llm", "prompt": "charlie", "max_tokens": 1})
    assert status == 503 and "the router's queue is full (1 requests wait" in str(body), (status, body)
    for thread in (first, waiting):
        thread.join(60)
    assert answers["first"][0] == 200 and answers["waiting"][0] == 200, answers


def test_event_plane_host_and_the_workers_kv_cache_block_size(file_cluster):
    """Workers bind their ZeroMQ event socket on --event-plane-host (127.0.0.2, still loopback) and
    advertise it; with --kv-cache-block-size 32 on the workers and the frontend, the index holds one
    block per 32 prompt tokens and a repeated prompt is found cached (hashes of 16-token blocks
    would match nothing the frontend looks up)."""
    plane = ["--event-plane", "zmq", "--event-plane-host", "127.0.0.2"]
    file_cluster.worker(*plane, "--kv-cache-block-size", "32")
    file_cluster.worker(*plane, "--kv-cache-block-size", "32")
    # Dot-files are records being rewritten (each refresh writes a temporary file, then renames it).
    records = "".join(p.read_text() for p in file_cluster.folder.rglob("*") if p.is_file() and not p.name.startswith("."))
    assert records.count('"events":"tcp://127.0.0.2:') == 2, records
    frontend = file_cluster.frontend("--router-mode", "kv", "--event-plane", "zmq", "--kv-cache-block-size", "32")
    client = openai.OpenAI(base_url=f"{frontend.http_url}/v1", api_key="none")
    prompt = "Block sizes agree. " * 20
    answer = client.completions.create(model="mock-llm", prompt=prompt, max_tokens=1, extra_body=NVEXT_WORKER)
    tokens = answer.usage.prompt_tokens
    wait_until(lambda: metric_or_zero(frontend, "tritium_router_kv_blocks_indexed") > 0, 10, "KV events over ZeroMQ")
    indexed = metric_or_zero(frontend, "tritium_router_kv_blocks_indexed")
    assert indexed in (tokens // 32, (tokens + 1) // 32), (indexed, tokens)
    again = client.completions.create(model="mock-llm", prompt=prompt, max_tokens=1, extra_body=NVEXT_WORKER)
    assert worker_of(again) == worker_of(answer)
    assert metric_or_zero(frontend, "tritium_router_prompt_blocks_cached_total") >= tokens // 32
